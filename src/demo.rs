//! `strata demo`: the embedded default. Generates a realistic synthetic population,
//! runs it through the same processor and engine as `replay` in a local state dir,
//! prints every output event on stdout and a summary with the tier populations on
//! stderr. Needs no Kafka.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Settings;
use crate::dump;
use crate::gen::{generate, GenArgs};
use crate::processor::Processor;
use crate::replay::{open_store, run, ReplayError, Source, Summary};

pub struct DemoArgs {
    pub gen: GenArgs,
    /// Kept after the run when given; otherwise a temporary dir removed at the end.
    pub state_dir: Option<PathBuf>,
}

pub fn demo(
    settings: Arc<Settings>,
    args: DemoArgs,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let mut data = Vec::new();
    let stats = generate(&args.gen, &mut data)?;
    eprintln!(
        "demo: generated {} events ({} purchases, {} interactions, {} complaints) for {} customers over {} days",
        stats.events, stats.purchases, stats.interactions, stats.complaints, args.gen.customers, args.gen.days
    );
    let (dir, temporary) = match &args.state_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("strata-demo-{}", std::process::id())),
            true,
        ),
    };
    let result = (|| -> anyhow::Result<Summary> {
        let store = open_store(&settings, &dir).map_err(ReplayError::from)?;
        let mut proc = Processor::open(settings.clone(), store).map_err(ReplayError::from)?;
        let len = data.len() as u64;
        let source = Source {
            name: "demo".into(),
            reader: Box::new(Cursor::new(std::mem::take(&mut data))),
            len: Some(len),
        };
        let mut dead = io::sink();
        let summary = run(&mut proc, vec![source], out, &mut dead)?;
        summary.print_human(&mut io::stderr())?;
        if let Some(as_of) = proc.clock() {
            let mut seg: BTreeMap<&str, u64> = BTreeMap::new();
            let mut val: BTreeMap<&str, u64> = BTreeMap::new();
            let mut life: BTreeMap<&str, u64> = BTreeMap::new();
            let mut at_risk = 0u64;
            dump::dump(proc.store(), &settings, as_of, &mut |r| {
                *seg.entry(r.rfm_segment.as_str()).or_default() += 1;
                *val.entry(r.value_tier.as_str()).or_default() += 1;
                *life.entry(r.lifecycle.as_str()).or_default() += 1;
                at_risk += (!r.churn_risk.is_empty()) as u64;
                Ok(())
            })?;
            eprintln!("population as of {}:", crate::day::format_day(as_of));
            eprintln!("  rfm_segment: {seg:?}");
            eprintln!("  value_tier:  {val:?}");
            eprintln!("  lifecycle:   {life:?}");
            eprintln!("  at churn risk: {at_risk}");
        }
        Ok(summary)
    })();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "demo: state kept in {} (try `strata state dump --state-dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    result
}
