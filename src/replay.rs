//! The file shell: JSON Lines in, JSON Lines out, through the same processor and
//! engine as the Kafka service.
//!
//! Lines are read and parsed in chunks on a thread of their own, a chunk or two
//! ahead of the partitions (which are busy on every core meanwhile, or are in a
//! step only one core can do: a recalibration's merge and fit); each chunk's
//! customers are fetched from the store with one multi-get, and its events are
//! processed in file order. Bad lines go to the dead-letter file with their reason,
//! source and line number, and processing goes on. Blank lines are skipped (not
//! events).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::{Clock, Settings};
use crate::event::{check_clock_jump, parse_event, Event, ParseContext, Rejection};
use crate::output::{Output, OutputType};
use crate::partitions::Partitions;
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
    #[error("{0}")]
    Layout(String),
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
    pub reader: Box<dyn Read + Send>,
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

/// Events read and parsed at a time, per partition.
const CHUNK: usize = 4096;

/// One chunk of parsed lines, in file order: the good events, and the bad lines
/// with what their dead letters need.
struct Chunk {
    source: Arc<str>,
    events: Vec<Event>,
    bad: Vec<(u64, Rejection, String)>,
    /// Non-blank lines read.
    read: u64,
}

/// Read and parse `sources` on a thread of its own, `chunk` events at a time, at
/// most two chunks ahead of the receiver. An error ends the stream.
fn parse_ahead(
    sources: Vec<Source>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    mut clock: Option<crate::day::Day>,
    chunk: usize,
    pb: ProgressBar,
) -> Receiver<Result<Chunk, ReplayError>> {
    let (tx, rx) = sync_channel(2);
    std::thread::Builder::new()
        .name("replay-parse".into())
        .spawn(move || {
            let mut ctx = ParseContext::for_files(&settings);
            let wall = settings.clock == Clock::Wall;
            let max_jump = settings.raw.engine.max_event_clock_jump_days;
            for src in sources {
                let name: Arc<str> = src.name.into();
                let mut reader = BufReader::with_capacity(1 << 20, src.reader);
                let mut line_no = 0u64;
                let mut buf = Vec::with_capacity(256);
                let mut eof = false;
                while !eof {
                    // With the wall clock, events from the future (beyond the
                    // allowed skew) are bad.
                    if wall {
                        ctx.set_now(
                            chrono::Utc::now().timestamp_millis(),
                            settings.raw.engine.max_future_skew_seconds,
                        );
                    }
                    let mut c = Chunk {
                        source: name.clone(),
                        events: Vec::with_capacity(chunk),
                        bad: Vec::new(),
                        read: 0,
                    };
                    // Bytes read, told to the progress bar once per chunk (per
                    // line it was 1 % of a replay's CPU).
                    let mut bytes = 0u64;
                    while c.events.len() < chunk {
                        buf.clear();
                        let n = match reader.read_until(b'\n', &mut buf) {
                            Ok(n) => n,
                            Err(source) => {
                                let path = name.to_string();
                                let _ = tx.send(Err(ReplayError::Input { path, source }));
                                return;
                            }
                        };
                        if n == 0 {
                            eof = true;
                            break;
                        }
                        bytes += n as u64;
                        line_no += 1;
                        let mut line = &buf[..];
                        while let [rest @ .., b'\n' | b'\r'] = line {
                            line = rest;
                        }
                        if line.iter().all(|b| b.is_ascii_whitespace()) {
                            continue;
                        }
                        c.read += 1;
                        // The stream clock as it will be when this event is
                        // processed (the largest event day so far): an event too far
                        // after it is bad (`engine.max_event_clock_jump_days`).
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
                                c.events.push(ev)
                            }
                            Err(rej) => {
                                metrics.rejected(&rej.reason.to_string());
                                let raw = String::from_utf8_lossy(line).into_owned();
                                c.bad.push((line_no, rej, raw));
                            }
                        }
                    }
                    pb.inc(bytes);
                    if tx.send(Ok(c)).is_err() {
                        return; // the receiver stopped (an error there)
                    }
                }
            }
        })
        .expect("spawn the replay parser thread");
    rx
}

/// Run sources through a process's partitions; write outputs and dead letters.
pub fn run<S: Store + Send>(
    parts: &mut Partitions<S>,
    sources: Vec<Source>,
    out: &mut dyn Write,
    dead: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    let metrics = parts.metrics().clone();
    for p in parts.parts() {
        metrics.add_population(p.store(), 1)?;
    }
    let counters_before = parts.counters();
    let started = Instant::now();
    let settings = parts.settings().clone();
    let wall = settings.clock == Clock::Wall;
    let chunk = (CHUNK * parts.len()).min(1 << 16);
    let total = sources.iter().map(|s| s.len).sum::<Option<u64>>();
    let pb = progress(total);
    let mut sum = Summary::default();
    let out_err = |what: &str| {
        let what = what.to_string();
        move |source| ReplayError::Output { what, source }
    };
    let chunks = parse_ahead(
        sources,
        settings.clone(),
        metrics.clone(),
        parts.clock(),
        chunk,
        pb.clone(),
    );
    for c in chunks {
        let c = c?;
        // With the wall clock the as-of day is today.
        if wall {
            parts.advance_to(crate::day::today(settings.tz), out)?;
        }
        sum.events_read += c.read;
        for (line, rej, raw) in &c.bad {
            sum.bad += 1;
            *sum.bad_by_reason.entry(rej.reason.to_string()).or_default() += 1;
            let dl = DeadLetter {
                reason: rej.reason.to_string(),
                detail: &rej.detail,
                source: &c.source,
                line: *line,
                raw,
            };
            serde_json::to_writer(&mut *dead, &dl)
                .map_err(io::Error::from)
                .and_then(|_| dead.write_all(b"\n"))
                .map_err(out_err("the dead-letter file"))?;
        }
        parts.process(&c.events, out)?;
    }
    parts.flush(out)?;
    let c = parts.counters();
    metrics.record_counters(&counters_before, &c, parts.model().as_ref());
    pb.finish_and_clear();
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
    sum.customers = parts.population().customers;
    sum.seconds = started.elapsed().as_secs_f64();
    sum.events_per_second = sum.events_read as f64 / sum.seconds.max(1e-9);
    out.flush().map_err(out_err("the output"))?;
    dead.flush().map_err(out_err("the dead-letter file"))?;
    Ok(sum)
}

pub fn write_outputs(out: &mut dyn Write, outputs: Vec<Output>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    for o in outputs {
        buf.clear();
        o.write_json(&mut buf);
        buf.push(b'\n');
        out.write_all(&buf)?;
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

/// The stores of a replay's state dir: one per partition under `partitions/<p>`
/// (`engine.partitions`), the block cache and memtables shared out among them. A
/// state dir an earlier strata wrote as one store at its top goes on as one
/// partition.
pub fn open_stores(settings: &Settings, dir: &Path) -> Result<Vec<RocksStore>, ReplayError> {
    if dir.join("CURRENT").exists() {
        tracing::info!(state_dir = %dir.display(), "The state dir holds one store (an earlier layout): replaying into it as one partition.");
        return Ok(vec![open_store(settings, dir)?]);
    }
    let n = settings.raw.engine.partitions as usize;
    let parts = dir.join("partitions");
    let existing = std::fs::read_dir(&parts)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("CURRENT").exists())
                .count()
        })
        .unwrap_or(0);
    if existing != 0 && existing != n {
        return Err(ReplayError::Layout(format!(
            "{} holds {existing} partitions but engine.partitions is {n}: set engine.partitions = {existing} (or STRATA_ENGINE__PARTITIONS={existing}) to go on with it, or replay into a new state dir",
            dir.display()
        )));
    }
    let e = &settings.raw.engine;
    (0..n)
        .map(|p| {
            RocksStore::open(
                &crate::cluster::partition_dir(dir, p as i32),
                (e.block_cache_mb / n).max(8),
                (e.write_buffer_mb / n).max(4),
            )
            .map_err(ReplayError::from)
        })
        .collect()
}

pub fn replay(settings: Arc<Settings>, args: ReplayArgs) -> Result<Summary, ReplayError> {
    let sources = args
        .inputs
        .iter()
        .map(|p| Source::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let stores = open_stores(&settings, &args.state_dir)?;
    let mut out = create(args.out.as_deref().unwrap_or(Path::new("-")), false)?;
    let mut parts = Partitions::open(settings, stores, Arc::new(Metrics::new()), &mut out)?;
    let dl_path = args
        .dead_letter
        .clone()
        .unwrap_or_else(|| args.state_dir.join("dead_letter.jsonl"));
    let mut dead = create(&dl_path, args.dead_letter.is_none())?;
    let summary = run(&mut parts, sources, &mut out, &mut dead)?;
    for p in parts.parts() {
        let (memtables, block_cache, table_readers) = p.store().memory();
        tracing::debug!(
            memtables,
            block_cache,
            table_readers,
            "RocksDB memory of a partition at the end of the replay."
        );
    }
    Ok(summary)
}
