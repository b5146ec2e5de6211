//! The file shell: JSON Lines in, JSON Lines out, through the same processor and
//! engine as the Kafka service.
//!
//! Lines are read in chunks; each chunk is parsed, its customers are fetched from the
//! store with one multi-get, and its events are processed in file order. Bad lines go
//! to the dead-letter file with their reason, source and line number, and processing
//! goes on. Blank lines are skipped (not events).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::{Clock, Settings};
use crate::event::{check_clock_jump, parse_event, Event, ParseContext};
use crate::output::{Output, OutputType};
use crate::processor::Processor;
use crate::store::rocks::RocksStore;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("cannot write {what}: {source}")]
    Output { what: String, source: io::Error },
}

/// One dead-letter record.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub reason: String,
    pub detail: &'a str,
    pub source: &'a str,
    pub line: u64,
    pub raw: &'a str,
}

/// Totals printed at the end of a replay.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub events_read: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub late: u64,
    pub bad: u64,
    pub bad_by_reason: BTreeMap<String, u64>,
    pub customers: u64,
    pub outputs: BTreeMap<&'static str, u64>,
    pub timers_fired: u64,
    pub recalibrations: u64,
    pub recalibration_visits: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

impl Summary {
    pub fn print_human(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(
            w,
            "replayed {} events in {:.2}s ({:.0} events/s): {} applied, {} duplicate, {} bad, {} late (lifetime only)",
            self.events_read, self.seconds, self.events_per_second, self.applied, self.duplicates, self.bad, self.late
        )?;
        for (r, n) in &self.bad_by_reason {
            writeln!(w, "  bad {r}: {n}")?;
        }
        writeln!(
            w,
            "customers: {}; outputs: {} tier_changed, {} churn_warning, {} churn_recovered; timers fired: {}; recalibrations: {} ({} customers re-evaluated)",
            self.customers,
            self.outputs.get("tier_changed").unwrap_or(&0),
            self.outputs.get("churn_warning").unwrap_or(&0),
            self.outputs.get("churn_recovered").unwrap_or(&0),
            self.timers_fired,
            self.recalibrations,
            self.recalibration_visits
        )
    }
}

/// Where a replay's events come from: a named reader and its size when known.
pub struct Source {
    pub name: String,
    pub reader: Box<dyn Read>,
    pub len: Option<u64>,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, ReplayError> {
        if path == Path::new("-") {
            return Ok(Source {
                name: "-".into(),
                reader: Box::new(io::stdin()),
                len: None,
            });
        }
        let err = |source| ReplayError::Input {
            path: path.display().to_string(),
            source,
        };
        let f = File::open(path).map_err(err)?;
        let len = f.metadata().map_err(err)?.len();
        Ok(Source {
            name: path.display().to_string(),
            reader: Box::new(f),
            len: Some(len),
        })
    }
}

fn progress(total: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
            )
            .unwrap(),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bytes} read {msg}").unwrap()),
    };
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

const CHUNK: usize = 4096;

/// Run sources through a processor; write outputs and dead letters.
pub fn run<S: Store>(
    proc: &mut Processor<S>,
    sources: Vec<Source>,
    out: &mut dyn Write,
    dead: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    run_with_metrics(proc, sources, out, dead, &Metrics::new())
}

/// [`run`], counting into `metrics` as the Kafka service does (an output counts as
/// published when it is written).
pub fn run_with_metrics<S: Store>(
    proc: &mut Processor<S>,
    sources: Vec<Source>,
    out: &mut dyn Write,
    dead: &mut dyn Write,
    metrics: &Metrics,
) -> Result<Summary, ReplayError> {
    metrics.add_population(proc.store(), 1)?;
    let counters_before = proc.counters.clone();
    let started = Instant::now();
    let mut ctx = ParseContext::for_files(proc.settings());
    let wall = proc.settings().clock == Clock::Wall;
    // The stream clock as it will be when the next parsed event is processed (the
    // largest event day so far): an event too far after it is bad
    // (`engine.max_event_clock_jump_days`).
    let mut clock = proc.clock();
    let max_jump = proc.settings().raw.engine.max_event_clock_jump_days;
    let total = sources.iter().map(|s| s.len).sum::<Option<u64>>();
    let pb = progress(total);
    let mut sum = Summary::default();
    let out_err = |what: &str| {
        let what = what.to_string();
        move |source| ReplayError::Output { what, source }
    };
    for src in sources {
        let mut reader = BufReader::with_capacity(1 << 20, src.reader);
        let mut line_no = 0u64;
        let mut eof = false;
        while !eof {
            // With the wall clock the as-of day is today, and events from the future
            // (beyond the allowed skew) are bad.
            if wall {
                let s = proc.settings();
                ctx.set_now(
                    chrono::Utc::now().timestamp_millis(),
                    s.raw.engine.max_future_skew_seconds,
                );
                let today = crate::day::today(s.tz);
                proc.advance_to(today)?;
                let outputs = proc.take_outputs();
                metrics.observe_written(outputs.iter());
                write_outputs(out, outputs).map_err(out_err("the output"))?;
            }
            // Read and parse one chunk.
            let mut events: Vec<Event> = Vec::with_capacity(CHUNK);
            let mut buf = Vec::with_capacity(256);
            while events.len() < CHUNK {
                buf.clear();
                let n =
                    reader
                        .read_until(b'\n', &mut buf)
                        .map_err(|source| ReplayError::Input {
                            path: src.name.clone(),
                            source,
                        })?;
                if n == 0 {
                    eof = true;
                    break;
                }
                pb.inc(n as u64);
                line_no += 1;
                let mut line = &buf[..];
                while let [rest @ .., b'\n' | b'\r'] = line {
                    line = rest;
                }
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                sum.events_read += 1;
                let parsed = parse_event(line, &ctx).and_then(|ev| {
                    if !wall {
                        check_clock_jump(clock, &ev, max_jump)?;
                        clock = clock.max(Some(ev.day));
                    }
                    Ok(ev)
                });
                match parsed {
                    Ok(ev) => {
                        metrics.consumed(ev.kind.event_type(), 1);
                        events.push(ev)
                    }
                    Err(rej) => {
                        metrics.rejected(&rej.reason.to_string());
                        sum.bad += 1;
                        *sum.bad_by_reason.entry(rej.reason.to_string()).or_default() += 1;
                        let raw = String::from_utf8_lossy(line);
                        let dl = DeadLetter {
                            reason: rej.reason.to_string(),
                            detail: &rej.detail,
                            source: &src.name,
                            line: line_no,
                            raw: &raw,
                        };
                        serde_json::to_writer(&mut *dead, &dl)
                            .map_err(io::Error::from)
                            .and_then(|_| dead.write_all(b"\n"))
                            .map_err(out_err("the dead-letter file"))?;
                    }
                }
            }
            proc.prefetch(events.iter().map(|e| e.customer_id.as_str()))?;
            for ev in &events {
                proc.process(ev)?;
                let outputs = proc.take_outputs();
                metrics.observe_written(outputs.iter());
                write_outputs(out, outputs).map_err(out_err("the output"))?;
            }
        }
    }
    proc.flush()?;
    metrics.record_counters(&counters_before, &proc.counters, proc.model().as_ref());
    pb.finish_and_clear();
    let c = &proc.counters;
    sum.applied = c.applied;
    sum.duplicates = c.duplicates;
    sum.late = c.late;
    sum.timers_fired = c.timers_fired;
    sum.recalibrations = c.recalibrations;
    sum.recalibration_visits = c.recalibration_visits;
    for t in OutputType::ALL {
        sum.outputs
            .insert(t.as_str(), *c.outputs.get(&t).unwrap_or(&0));
    }
    sum.customers = proc.population().customers;
    sum.seconds = started.elapsed().as_secs_f64();
    sum.events_per_second = sum.events_read as f64 / sum.seconds.max(1e-9);
    out.flush().map_err(out_err("the output"))?;
    dead.flush().map_err(out_err("the dead-letter file"))?;
    Ok(sum)
}

pub fn write_outputs(out: &mut dyn Write, outputs: Vec<Output>) -> io::Result<()> {
    for o in outputs {
        serde_json::to_writer(&mut *out, &o)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `strata replay`: open the state dir, run the inputs, print the summary.
pub struct ReplayArgs {
    pub inputs: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    pub dead_letter: Option<PathBuf>,
    pub state_dir: PathBuf,
}

fn create(path: &Path, append: bool) -> Result<Box<dyn Write>, ReplayError> {
    if path == Path::new("-") {
        return Ok(Box::new(BufWriter::new(io::stdout())));
    }
    let f = File::options()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .map_err(|source| ReplayError::Output {
            what: path.display().to_string(),
            source,
        })?;
    Ok(Box::new(BufWriter::with_capacity(1 << 20, f)))
}

pub fn open_store(settings: &Settings, dir: &Path) -> Result<RocksStore, StoreError> {
    RocksStore::open(
        dir,
        settings.raw.engine.block_cache_mb,
        settings.raw.engine.write_buffer_mb,
    )
}

pub fn replay(settings: Arc<Settings>, args: ReplayArgs) -> Result<Summary, ReplayError> {
    let sources = args
        .inputs
        .iter()
        .map(|p| Source::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let store = open_store(&settings, &args.state_dir)?;
    let mut proc = Processor::open(settings, store)?;
    let mut out = create(args.out.as_deref().unwrap_or(Path::new("-")), false)?;
    let dl_path = args
        .dead_letter
        .clone()
        .unwrap_or_else(|| args.state_dir.join("dead_letter.jsonl"));
    let mut dead = create(&dl_path, args.dead_letter.is_none())?;
    let summary = run(&mut proc, sources, &mut out, &mut dead)?;
    let (memtables, block_cache, table_readers) = proc.store().memory();
    tracing::debug!(
        memtables,
        block_cache,
        table_readers,
        "RocksDB memory at the end of the replay."
    );
    Ok(summary)
}
