//! `strata demo`: the embedded default. Generates a realistic synthetic population,
//! runs it through the same processor and engine as `replay` in a local state dir,
//! prints every output event on stdout and a summary with the tier populations on
//! stderr. Needs no Kafka.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::SharedStatus;
use crate::config::Settings;
use crate::dump;
use crate::gen::{generate, GenArgs};
use crate::http::AppState;
use crate::partitions::Partitions;
use crate::replay::{open_store, run, ReplayError, Source, Summary};
use crate::telemetry::Metrics;

pub struct DemoArgs {
    pub gen: GenArgs,
    /// Kept after the run when given; otherwise a temporary dir removed at the end.
    pub state_dir: Option<PathBuf>,
    /// Keep serving `/metrics` (and `/v1/customers/{id}`) after the run, until
    /// Ctrl-C.
    pub serve: bool,
    /// Write the analyst report (`strata report`) of the run's state here.
    pub report: Option<PathBuf>,
}

/// The demo's HTTP server: its runtime, its stop signal, and its task.
type Http = (
    tokio::runtime::Runtime,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// The HTTP endpoints on `http.listen` for the demo: a busy port only costs the
/// endpoints (with a warning), never the demo.
fn start_http(
    settings: &Arc<Settings>,
    metrics: Arc<Metrics>,
    status: SharedStatus,
) -> Option<Http> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listen = settings.raw.http.listen.clone();
    let state = AppState {
        settings: settings.clone(),
        metrics,
        status,
    };
    let h = rt.spawn(async move {
        crate::http::serve(&listen, state, async {
            rx.await.ok();
        })
        .await
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    if h.is_finished() {
        if let Ok(Err(e)) = rt.block_on(h) {
            tracing::warn!(error = %e, "The demo runs without its HTTP endpoints.");
        }
        return None;
    }
    Some((rt, tx, h))
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
        let store = Arc::new(open_store(&settings, &dir).map_err(ReplayError::from)?);
        let metrics = Arc::new(Metrics::new());
        let status = SharedStatus::default();
        {
            let mut st = status.lock().unwrap();
            st.running = true;
            st.assigned.insert(0);
            st.stores.insert(0, store.clone());
        }
        let http = start_http(&settings, metrics.clone(), status.clone());
        // One partition: the demo's HTTP server answers from the one store.
        let mut parts =
            Partitions::open(settings.clone(), vec![store.clone()], metrics.clone(), out)
                .map_err(ReplayError::from)?;
        let len = data.len() as u64;
        let source = Source {
            name: "demo".into(),
            reader: Box::new(Cursor::new(std::mem::take(&mut data))),
            len: Some(len),
        };
        let mut dead = io::sink();
        let summary = run(&mut parts, vec![source], out, &mut dead)?;
        summary.print_human(&mut io::stderr())?;
        if let Some(as_of) = parts.clock() {
            let mut seg: BTreeMap<&str, u64> = BTreeMap::new();
            let mut val: BTreeMap<&str, u64> = BTreeMap::new();
            let mut life: BTreeMap<&str, u64> = BTreeMap::new();
            let mut at_risk = 0u64;
            dump::dump(store.as_ref(), &settings, as_of, &mut |r| {
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
            if let Some(path) = &args.report {
                crate::report::write(store.as_ref(), &settings, as_of, path)?;
                eprintln!("demo: wrote the report {}", path.display());
            }
        }
        if let Some((rt, stop, server)) = http {
            if args.serve {
                eprintln!(
                    "demo: serving http://{}/metrics and /v1/customers/{{id}}; Ctrl-C to stop",
                    settings.raw.http.listen
                );
                rt.block_on(async {
                    tokio::signal::ctrl_c().await.ok();
                });
            }
            // The server's own shutdown: requests in hand finish (2 s at most).
            stop.send(()).ok();
            rt.block_on(server).ok();
        }
        status.lock().unwrap().stores.clear();
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
