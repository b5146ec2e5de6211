//! Command line (SPEC §6). Each subcommand loads and validates the config once, then
//! calls one library entry point.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use strata::config::{Clock, Config, Settings};
use strata::day::{format_day, parse_day};
use strata::demo::{demo, DemoArgs};
use strata::dump;
use strata::gen::{generate, GenArgs};
use strata::replay::{open_store, replay, ReplayArgs};
use strata::store::rocks::RocksStore;
use strata::store::Union;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Real-time customer tiering (RFM, value tiers, lifecycle) and churn alerts"
)]
struct Cli {
    /// Log format on stderr: "text" or "json".
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The service: Kafka in, Kafka out, HTTP for operations (SPEC §6, §7).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run JSON Lines files through the engine; outputs as JSON Lines.
    Replay {
        /// Input file (JSON Lines); `-` is stdin. Repeatable; read in order.
        #[arg(long = "input", short = 'i', required = true)]
        inputs: Vec<PathBuf>,
        /// Output events go here (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Bad lines go here with their reason (default: <state-dir>/dead_letter.jsonl, appended).
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Generate a realistic population, run it, print what is published. No Kafka needed.
    Demo {
        #[arg(long, default_value_t = 2000)]
        customers: u64,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the state here (default: a temporary dir, removed afterwards).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Keep serving /metrics (on http.listen) after the run, until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Also write the analyst report (see `strata report`) to this HTML file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One self-contained HTML page of the population at a day: RFM grid, Pareto
    /// curve, lifecycle funnel, churn risk, score distributions, transitions.
    Report {
        #[command(flatten)]
        at: StateAt,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Inspect stored customer state.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Synthetic workload generator (seeded, reproducible), JSON Lines.
    Gen {
        #[arg(long)]
        customers: u64,
        #[arg(long)]
        days: u32,
        #[arg(long)]
        seed: u64,
        /// First day, YYYY-MM-DD (UTC).
        #[arg(long, default_value = "2025-11-21")]
        start: String,
        /// Output file (default: stdout).
        #[arg(long, conflicts_with = "topic")]
        out: Option<PathBuf>,
        /// Produce to Kafka instead (kafka.brokers); `{type}` is replaced by each
        /// event's type: `--topic '{type}s'` fills the default input topics.
        #[arg(long)]
        topic: Option<String>,
        /// Configuration for --topic (brokers, [kafka.client]).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The predictive models (BG/NBD, Gamma-Gamma): fit them, show those in force.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

/// A state dir evaluated at a day: `state dump`, `state get`, `model fit`.
#[derive(clap::Args)]
struct StateAt {
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// YYYY-MM-DD; default: the stored stream clock.
    #[arg(long)]
    as_of: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fit both models on the stored population as of a day; print the parameters
    /// as JSON (alpha in days, gamma in money). Changes nothing.
    Fit {
        #[command(flatten)]
        at: StateAt,
    },
    /// The parameters in force (the engine's last fit), as JSON.
    Show {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// One JSON object per customer, every figure evaluated exactly at the as-of day.
    Dump {
        #[command(flatten)]
        at: StateAt,
        /// Only the customers in this tier: DIM=TIER, DIM one of rfm_segment,
        /// value_tier, lifecycle, churn_risk (e.g. rfm_segment=important_retain,
        /// churn_risk=overdue). Repeated: customers in all of them.
        #[arg(long = "where", value_name = "DIM=TIER")]
        filters: Vec<strata::audience::Filter>,
    },
    /// Customers and monetary per tier of each dimension, and customers at risk by
    /// reason: the dump's figures added up (one JSON object).
    Summary {
        #[command(flatten)]
        at: StateAt,
    },
    /// The same object for one customer.
    Get {
        customer_id: String,
        #[command(flatten)]
        at: StateAt,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values as TOML.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn settings(config: Option<&PathBuf>, clock: Clock) -> Result<Arc<Settings>> {
    let raw = Config::load(config.map(|p| p.as_path()))?;
    Ok(Arc::new(Settings::new(raw, clock)?))
}

fn init_logging(format: &str) -> Result<()> {
    match format {
        "text" => strata::telemetry::init_logging(false),
        "json" => strata::telemetry::init_logging(true),
        other => bail!("--log-format must be \"text\" or \"json\", got {other:?}"),
    }
    Ok(())
}

fn as_of_day(arg: Option<&String>, store_clock: Option<i32>) -> Result<Option<i32>> {
    match arg {
        Some(s) => Ok(Some(parse_day(s).with_context(|| {
            format!("--as-of {s:?} is not a date: use YYYY-MM-DD")
        })?)),
        None => Ok(store_clock),
    }
}

fn state_dir(arg: Option<PathBuf>, s: &Settings) -> PathBuf {
    arg.unwrap_or_else(|| s.raw.engine.state_dir.clone())
}

/// The stores of a state dir: one (replay, demo) or one per partition (`run`).
fn open_stores(s: &Settings, dir: &std::path::Path) -> Result<Vec<RocksStore>> {
    let parts = dir.join("partitions");
    if parts.is_dir() {
        let mut stores = Vec::new();
        // `<p>` only: stores moved aside as unreadable (`<p>.corrupt-<time>`) are
        // not the partition's state.
        let mut entries: Vec<(i64, PathBuf)> = std::fs::read_dir(&parts)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("CURRENT").exists())
            .filter_map(|e| Some((e.file_name().to_str()?.parse::<i64>().ok()?, e.path())))
            .collect();
        entries.sort();
        for (_, path) in entries {
            stores.push(open_store(s, &path)?);
        }
        return Ok(stores);
    }
    if !dir.join("CURRENT").exists() {
        bail!(
            "{} is not a strata state dir (no RocksDB files there): pass --state-dir, or run `strata replay` first",
            dir.display()
        );
    }
    Ok(vec![open_store(s, dir)?])
}

type OpenState = (Arc<Settings>, Union<RocksStore>, Option<i32>, PathBuf);

/// Settings, the opened state dir, and the as-of day (`--as-of`, else the stored
/// clock; `None` when nothing was ever applied).
fn open_state(at: StateAt) -> Result<OpenState> {
    let s = settings(at.config.as_ref(), Clock::Event)?;
    let dir = state_dir(at.state_dir, &s);
    let stores = open_stores(&s, &dir)?;
    let day = as_of_day(at.as_of.as_ref(), dump::latest_clock(&stores)?)?;
    Ok((s, Union(stores), day, dir))
}

fn execute(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Run { .. }) {
        crate::huge_pages_off();
    }
    match cli.command {
        Command::Run { config } => {
            let s = settings(config.as_ref(), Clock::Wall)?;
            let shutdown = Arc::new(std::sync::atomic::AtomicBool::new(false));
            strata::service::run(s, shutdown)?;
        }
        Command::Replay {
            inputs,
            out,
            dead_letter,
            state_dir: dir,
            config,
        } => {
            let s = settings(config.as_ref(), Clock::Event)?;
            let dir = state_dir(dir, &s);
            let summary = replay(
                s,
                ReplayArgs {
                    inputs,
                    out,
                    dead_letter,
                    state_dir: dir,
                },
            )?;
            summary.print_human(&mut io::stderr())?;
        }
        Command::Demo {
            customers,
            days,
            seed,
            state_dir,
            serve,
            report,
            config,
        } => {
            let s = settings(config.as_ref(), Clock::Event)?;
            let start = strata::day::today(s.tz) - days as i32;
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            demo(
                s,
                DemoArgs {
                    gen: GenArgs {
                        customers,
                        days,
                        seed,
                        start,
                    },
                    state_dir,
                    serve,
                    report,
                },
                &mut out,
            )?;
        }
        Command::Report { at, out } => {
            let (s, store, day, dir) = open_state(at)?;
            let Some(day) = day else {
                bail!(
                    "nothing was ever applied in {}: no report to write",
                    dir.display()
                );
            };
            let d = strata::report::write(&store, &s, day, &out)?;
            eprintln!(
                "wrote {} ({} customers as of {})",
                out.display(),
                d.tally.customers,
                strata::day::format_day(day)
            );
        }
        Command::State { command } => match command {
            StateCommand::Dump { at, filters } => {
                let (s, store, day, _) = open_state(at)?;
                let Some(day) = day else {
                    return Ok(()); // nothing was ever applied: an empty dump
                };
                let stdout = io::stdout();
                let mut out = BufWriter::new(stdout.lock());
                dump::dump(&store, &s, day, &mut |r| {
                    if !filters.iter().all(|f| f.matches(&r)) {
                        return Ok(());
                    }
                    serde_json::to_writer(&mut out, &r)?;
                    out.write_all(b"\n")
                })?;
                out.flush().ok();
            }
            StateCommand::Summary { at } => {
                let (s, store, day, _) = open_state(at)?;
                let mut tally = strata::audience::Tally::default();
                if let Some(day) = day {
                    dump::dump(&store, &s, day, &mut |r| {
                        tally.add(&r);
                        Ok(())
                    })?;
                }
                println!("{}", serde_json::to_string_pretty(&tally.to_json(day))?);
            }
            StateCommand::Get { customer_id, at } => {
                let (s, store, day, dir) = open_state(at)?;
                match day
                    .map(|d| dump::get(&store, &s, &customer_id, d))
                    .transpose()?
                    .flatten()
                {
                    Some(r) => println!("{}", serde_json::to_string(&r)?),
                    None => bail!("customer {customer_id:?} is not in {}", dir.display()),
                }
            }
        },
        Command::Gen {
            customers,
            days,
            seed,
            start,
            out,
            topic,
            config,
        } => {
            let start = parse_day(&start)
                .with_context(|| format!("--start {start:?} is not a date: use YYYY-MM-DD"))?;
            let args = GenArgs {
                customers,
                days,
                seed,
                start,
            };
            let stats = match (out, topic) {
                (_, Some(topic)) => {
                    let s = settings(config.as_ref(), Clock::Event)?;
                    let mut buf = Vec::new();
                    let stats = generate(&args, &mut buf)?;
                    let n =
                        strata::gen::topic::produce_lines(&s, &mut io::Cursor::new(buf), &topic)?;
                    eprintln!("produced {n} events to {topic}");
                    stats
                }
                (Some(p), None) => {
                    let f = std::fs::File::create(&p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    generate(&args, &mut BufWriter::with_capacity(1 << 20, f))?
                }
                (None, None) => {
                    let stdout = io::stdout();
                    generate(&args, &mut BufWriter::with_capacity(1 << 20, stdout.lock()))?
                }
            };
            eprintln!(
                "generated {} events ({} purchases, {} interactions, {} complaints) from {} to {}",
                stats.events,
                stats.purchases,
                stats.interactions,
                stats.complaints,
                format_day(start),
                format_day(start + days as i32 - 1)
            );
        }
        Command::Model { command } => match command {
            ModelCommand::Fit { at } => {
                let (s, store, day, dir) = open_state(at)?;
                let Some(day) = day else {
                    bail!("{} holds no events yet: nothing to fit", dir.display());
                };
                let h = dump::histogram_at(&store, day)?;
                let m = strata::predict::model::fit(&h, day, s.raw.predict.min_repeat_customers)
                    .with_context(|| format!("cannot fit the models as of {}", format_day(day)))?;
                println!("{}", m.to_json());
            }
            ModelCommand::Show {
                state_dir: dir,
                config,
            } => {
                let (_, store, _, dir) = open_state(StateAt {
                    state_dir: dir,
                    as_of: None,
                    config,
                })?;
                match dump::stored_model(&store)? {
                    Some(m) => println!("{}", m.to_json()),
                    None => bail!(
                        "no model is fitted in {} yet: the engine fits at the first recalibration with predict.min_repeat_customers repeat customers (`strata model fit` fits one without storing it)",
                        dir.display()
                    ),
                }
            }
        },
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let s = settings(config.as_ref(), Clock::Wall)?;
            print!("{}", toml::to_string_pretty(&s.raw.redacted())?);
            eprintln!("config is valid");
        }
    }
    Ok(())
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log_format) {
        eprintln!("error: {e:#}");
        return 2;
    }
    match execute(cli) {
        Ok(()) => 0,
        Err(e) => {
            // A closed pipe (`strata state dump | head`) is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return 0;
            }
            eprintln!("error: {e:#}");
            1
        }
    }
}
