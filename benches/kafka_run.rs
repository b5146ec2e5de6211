//! Whole-service benchmark of `strata run` against tansu (BENCHMARKS.md):
//!
//! 1. start tansu (memory storage) on a free loopback port, create the three input
//!    topics with 8 partitions, produce `STRATA_BENCH_CUSTOMERS` customers × 365 days
//!    of `strata gen` events (default 200k customers ≈ 2.1M events);
//! 2. raw consume rate: one librdkafka consumer reads every input partition to the
//!    end and discards the messages; with the CPU this process spent meanwhile per
//!    message (a floor for any consumer of the topics through librdkafka);
//! 3. `strata run` (event clock, `at_least_once`) from an empty state dir until the
//!    group's committed offsets reach the ends (asked every 100 ms): events/s from
//!    process start, and sustained — from the first event consumed (its
//!    `/metrics`, every 50 ms) to the end, without the startup (state, topic
//!    checks, group join) — with its ratio to (2);
//!    Meanwhile a client asks `GET /v1/customers/{id}` for random generated ids,
//!    200 a second (one connection each, as the server serves one request per
//!    connection): p50/p99/max of the answers found (200), over the whole run and
//!    over its last third (when most customers are stored), with the count stored;
//! 4. restore rate: a second instance with an empty state dir takes every partition
//!    over and restores it from the changelog (records/s from its log);
//! 5. latency at a steady rate: with that instance caught up, `STRATA_BENCH_RATE`
//!    purchases/s (default 500) of new customers for 20 s, each yielding one
//!    `tier_changed`; event-to-output latency = when a consumer of `tier_changes`
//!    receives the output (matched by `cause_event_id`) minus when the event was
//!    handed to the producer (p50/p99/max; the producer lingers 5 ms, its
//!    client's default, `STRATA_BENCH_LINGER_MS` sets another), and the CPU seconds
//!    the instance and the broker spent in that window; where it goes: split at
//!    strata's producer (the output's timestamp), the bench's produce requests
//!    until acknowledged, and the instance's own histograms over the phase (batch
//!    durations, `strata_record_e2e_latency_seconds` at poll and once written);
//!    `STRATA_BENCH_SETTLE_S` waits that long after the restore before it starts
//!    (default 0: right after, as an operator's instance that just took partitions
//!    over).
//!
//! `cargo bench --bench kafka_run` (tansu must be installed: `scripts/setup --test`).
//! 3b. the peer (benches/peer/app.py, Quix Streams, when `benches/peer/setup` made
//!    its venv): the same topics from the start, until its group's committed
//!    offsets reach the ends: events/s and CPU per million events beside strata's,
//!    and the CPU per event that 20x the peer's events per CPU second would leave
//!    strata, beside the raw consume's (2);
//!
//! `STRATA_BENCH_ONLY_RUN=1` stops after (3b), for quicker experiments;
//! `STRATA_BENCH_BIN` runs another `strata` binary (A/B comparisons of two builds).
//! Under `cargo test` it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;
const INPUTS: [&str; 3] = ["purchases", "interactions", "complaints"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `strata` binary built with the bench, or `STRATA_BENCH_BIN` (to compare
/// two builds run after run on the same broker and machine).
fn strata_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRATA_BENCH_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("strata")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// CPU time (user + system) a process has used so far, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Every input partition read to its end by one consumer (phase 2).
struct RawConsume {
    /// Messages read.
    n: u64,
    /// Seconds it took.
    secs: f64,
    /// CPU seconds this process spent meanwhile (the consumer's own threads and
    /// librdkafka's: nothing else of the bench runs then).
    cpu: Option<f64>,
    /// The offset at the end of every input partition.
    ends: BTreeMap<(String, i32), i64>,
}

fn consume_all(brokers: &str) -> RawConsume {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in INPUTS {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut ends = BTreeMap::new();
    let mut eof = 0;
    let mut n = 0u64;
    let start = Instant::now();
    let cpu0 = cpu_seconds(std::process::id());
    while eof < INPUTS.len() * PARTITIONS as usize {
        match c.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                n += 1;
                std::hint::black_box(m.payload());
                ends.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    let cpu = cpu0
        .zip(cpu_seconds(std::process::id()))
        .map(|(a, b)| b - a);
    RawConsume {
        n,
        secs: start.elapsed().as_secs_f64(),
        cpu,
        ends,
    }
}

/// Whether `c`'s group has committed offsets at every input partition's end.
fn committed_done(c: &BaseConsumer, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in ends.keys() {
        tpl.add_partition(t, *p);
    }
    let Ok(c) = c.committed_offsets(tpl, Duration::from_secs(10)) else {
        return false;
    };
    ends.iter().all(|((t, p), e)| {
        c.find_partition(t, *p)
            .is_some_and(|x| x.offset() == Offset::Offset(*e))
    })
}

/// A config for one instance; returns it with the instance's HTTP address.
fn config(dir: &Path, brokers: &str, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.toml"));
    // STRATA_BENCH_FETCH_WAIT_MS: librdkafka's fetch.wait.max.ms for strata's
    // consumer (to see how much of the latency is the broker's long poll).
    let client = std::env::var("STRATA_BENCH_FETCH_WAIT_MS")
        .map(|ms| format!("[kafka.client]\n\"fetch.wait.max.ms\" = \"{ms}\"\n"))
        .unwrap_or_default();
    let http = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &path,
        format!(
            "[engine]\nclock = \"event\"\nstate_dir = \"{}\"\n[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"bench\"\n{client}[http]\nlisten = \"{http}\"\n",
            dir.join(name).display(),
        ),
    )
    .unwrap();
    (path, http)
}

/// One `GET path` on its own connection: the status and how long the answer took.
fn timed_get(http: &str, path: &str) -> Option<(u16, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, t.elapsed()))
}

/// The instance's `/metrics` text (`None`: not serving yet).
fn metrics(http: &str) -> Option<String> {
    let mut s = TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// The sum of the samples whose line starts with `prefix` and contains `also`.
fn sum_of(text: &str, prefix: &str, also: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(also))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of `strata_customers{dimension="value_tier"}`: customers stored.
fn stored_customers(http: &str) -> Option<f64> {
    Some(sum_of(
        &metrics(http)?,
        "strata_customers{",
        "dimension=\"value_tier\"",
    ))
}

/// A histogram's cumulative buckets, (upper bound, count), in a `/metrics` text,
/// from the line prefix of its buckets up to `le` (e.g.
/// `strata_batch_duration_seconds_bucket{`).
fn buckets(text: &str, prefix: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (_, rest) = rest.split_once("le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_string(), count.parse().ok()?))
        })
        .collect()
}

/// How many observations of a histogram between two scrapes were above each of
/// `bounds` (of its bucket bounds), as "> b s: n" parts.
fn above(before: &[(String, f64)], after: &[(String, f64)], bounds: &[&str]) -> String {
    let total = after.last().map_or(0.0, |l| l.1) - before.last().map_or(0.0, |l| l.1);
    let parts: Vec<String> = after
        .iter()
        .zip(before)
        .filter(|(a, _)| bounds.contains(&a.0.as_str()))
        .map(|(a, b)| format!("> {} s: {:.0}", a.0, total - (a.1 - b.1)))
        .collect();
    format!("{total:.0}; {}", parts.join(", "))
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        at(0.5),
        at(0.99),
        at(1.0),
        v.len()
    )
}

/// `strata_events_consumed_total` of the instance at `http` (`None`: not serving yet).
fn consumed(http: &str) -> Option<f64> {
    Some(sum_of(&metrics(http)?, "strata_events_consumed_total", ""))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let customers: u64 = std::env::var("STRATA_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let home = PathBuf::from(std::env::var("HOME").unwrap());
    let tansu = Killed(
        Command::new(home.join(".cargo/bin/tansu"))
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{brokers}"),
                "--advertised-listener-url",
                &format!("tcp://{brokers}"),
                // The memory engine (fastest, so the ratio reflects strata's cost):
                // it mishandles a fetch from inside a record batch (see the tests'
                // broker.rs), which no phase here does — each starts a fresh group
                // at offset 0 and reads to the end without restarting.
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (scripts/setup --test)"),
    );
    while TcpStream::connect(&brokers).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = INPUTS
        .iter()
        // An explicit retention: the peer (Quix Streams) reads it from the topics'
        // configs to derive its changelogs', and tansu lists only configs it was given.
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1"))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap();

    let t0 = Instant::now();
    let st = Command::new(strata_bin())
        .args([
            "gen",
            "--customers",
            &customers.to_string(),
            "--days",
            "365",
            "--seed",
            "1",
            "--start",
            "2025-01-01",
            "--topic",
            "{type}s",
        ])
        .env("STRATA_KAFKA__BROKERS", &brokers)
        .status()
        .unwrap();
    assert!(st.success());
    eprintln!("produced in {:.1}s", t0.elapsed().as_secs_f64());

    let raw_consume = consume_all(&brokers);
    let RawConsume {
        n,
        secs,
        cpu: raw_cpu,
        ref ends,
    } = raw_consume;
    let raw = n as f64 / secs;
    println!("raw librdkafka consume: {n} messages in {secs:.2}s = {raw:.0} msg/s");
    if let Some(cpu) = raw_cpu {
        // A floor for any consumer of these topics through librdkafka (strata, the
        // peer's confluent-kafka): what taking the messages alone costs.
        println!(
            "raw librdkafka consume CPU: {cpu:.1} s = {:.2} µs per message",
            cpu * 1e6 / n as f64
        );
    }

    let (cfg, http) = config(dir.path(), &brokers, "a");
    let t1 = Instant::now();
    let broker_before = cpu_seconds(tansu.0.id());
    let a = Killed(
        Command::new(strata_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("STRATA_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    // When the first events were consumed: the last look at /metrics (every 50 ms)
    // that still saw none. What comes before is startup (opening the state, the
    // co-partition check, joining the group), not throughput.
    let stop_gets = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gets = {
        let (http, stop) = (http.clone(), stop_gets.clone());
        std::thread::spawn(move || {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let mut out: Vec<(Instant, u16, Duration)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = rng.gen_range(0..customers);
                if let Some((code, took)) = timed_get(&http, &format!("/v1/customers/c{id:07}")) {
                    out.push((Instant::now(), code, took));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            out
        })
    };
    let http_a = http.clone();
    let first = std::thread::spawn(move || {
        let mut none_at = Instant::now();
        loop {
            let t = Instant::now();
            match consumed(&http) {
                Some(c) if c > 0.0 => return none_at,
                _ => none_at = t,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // One client for the group's committed offsets, asked every 100 ms.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench")
        .create()
        .unwrap();
    while !committed_done(&group, ends) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = Instant::now();
    stop_gets.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = gets.join().unwrap();
    let last_third = t1 + (done - t1) * 2 / 3;
    let found = |after: Instant| {
        answers
            .iter()
            .filter(|(at, code, _)| *code == 200 && *at >= after)
            .map(|(_, _, d)| *d)
            .collect::<Vec<_>>()
    };
    println!(
        "GET /v1/customers/{{id}} while run consumes: {} asked ({} found); found, whole run: {}; last third: {}; {} customers stored at the end",
        answers.len(),
        found(t1).len(),
        percentiles(found(t1)),
        percentiles(found(last_third)),
        stored_customers(&http_a).unwrap_or(f64::NAN)
    );
    let run_secs = (done - t1).as_secs_f64();
    let rate = n as f64 / run_secs;
    let startup = (first.join().unwrap() - t1).as_secs_f64();
    let sustained = n as f64 / (run_secs - startup);
    println!(
        "strata run: {n} events in {run_secs:.1}s = {rate:.0} events/s from process start (ratio {:.3})",
        rate / raw
    );
    println!(
        "strata run, sustained: {startup:.1}s of startup before the first event, then {:.1}s = {sustained:.0} events/s (ratio to raw consume {:.3})",
        run_secs - startup,
        sustained / raw
    );
    // CPU per event: steadier than the rate on a shared machine (and the rate's
    // ceiling when the cores are busy).
    let mut cpu_seconds_per_million = f64::NAN;
    if let (Some(cpu), Some(b0), Some(b1)) = (
        cpu_seconds(a.0.id()),
        broker_before,
        cpu_seconds(tansu.0.id()),
    ) {
        cpu_seconds_per_million = cpu * 1e6 / n as f64;
        println!(
            "strata run CPU: {cpu:.1} s user+system = {:.1} µs per event (the broker meanwhile: {:.1} s)",
            cpu * 1e6 / n as f64,
            b1 - b0
        );
    }
    // Leave the group cleanly (SIGTERM), so the next instance is assigned at once.
    unsafe {
        libc::kill(a.0.id() as i32, libc::SIGTERM);
    }
    let mut a = a;
    a.0.wait().ok();
    if let Some(python) = peer_python() {
        peer(
            &python,
            dir.path(),
            &brokers,
            &raw_consume,
            rate,
            cpu_seconds_per_million,
        );
    }
    if std::env::var_os("STRATA_BENCH_ONLY_RUN").is_some() {
        return;
    }

    // Restore: a fresh instance takes all partitions over from the changelog.
    let (cfg, b_http) = config(dir.path(), &brokers, "b");
    let mut b = Command::new(strata_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("STRATA_LOG", "strata=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(b.stderr.take().unwrap()).lines();
    let (mut records, mut secs, mut restored) = (0u64, 0f64, 0);
    for line in lines.by_ref() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "Restored partition state from the changelog." {
            records += f["records"].as_u64().unwrap_or(0);
            secs += f["seconds"].as_f64().unwrap_or(0.0);
            restored += 1;
            if restored == PARTITIONS {
                break;
            }
        }
    }
    println!(
        "changelog restore: {records} records in {secs:.1}s = {:.0} records/s ({restored} partitions)",
        records as f64 / secs.max(1e-9)
    );
    // Keep draining b's log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let b = Killed(b);
    let settle: u64 = std::env::var("STRATA_BENCH_SETTLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(settle));
    let cpu = || (cpu_seconds(b.0.id()), cpu_seconds(tansu.0.id()));
    // The instance's own view meanwhile: how long its batches took (apply and
    // write one partition's batch), and each record's time from its Kafka timestamp
    // (the bench's producer) to strata's poll and to its batch written.
    let histograms = [
        "strata_batch_duration_seconds_bucket{",
        "strata_record_e2e_latency_seconds_bucket{at=\"polled\"",
        "strata_record_e2e_latency_seconds_bucket{at=\"written\"",
    ];
    let scrape = || {
        let text = metrics(&b_http).unwrap_or_default();
        histograms.map(|h| buckets(&text, h))
    };
    let (before, hist_before) = (cpu(), scrape());
    latency(&brokers);
    if let ((Some(s0), Some(t0)), (Some(s1), Some(t1))) = (before, cpu()) {
        println!(
            "during the latency phase (settled {settle} s first): strata {:.1} CPU-s, the broker {:.1} CPU-s",
            s1 - s0,
            t1 - t0
        );
    }
    let hist_after = scrape();
    for (i, what) in [
        "batches",
        "records, Kafka timestamp to polled",
        "records, Kafka timestamp to written",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "the instance during the latency phase, {what}: {}",
            above(
                &hist_before[i],
                &hist_after[i],
                &["0.008", "0.016", "0.032", "0.064", "0.128"]
            )
        );
    }
    drop(b);
}

/// The peer's interpreter: `STRATA_BENCH_PEER_PYTHON`, else benches/peer/.venv
/// when `benches/peer/setup` made it; `None` (or `STRATA_BENCH_NO_PEER`) skips the
/// peer.
fn peer_python() -> Option<PathBuf> {
    if std::env::var_os("STRATA_BENCH_NO_PEER").is_some() {
        return None;
    }
    if let Some(p) = std::env::var_os("STRATA_BENCH_PEER_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/.venv/bin/python");
    venv.exists().then_some(venv)
}

/// Phase 3b: the peer (benches/peer/app.py, Quix Streams) over the same topics,
/// from its own group's start until its committed offsets reach the ends; events/s
/// and CPU per million events side by side with strata's.
fn peer(
    python: &Path,
    dir: &Path,
    brokers: &str,
    raw: &RawConsume,
    strata_rate: f64,
    strata_cpu_per_million: f64,
) {
    let (n, ends) = (raw.n, &raw.ends);
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/app.py");
    let t0 = Instant::now();
    let p = Killed(
        Command::new(python)
            .arg(&app)
            .args([
                brokers,
                "peer",
                &dir.join("peer-state").display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("peer.log")).unwrap())
            .spawn()
            .expect("the peer's python"),
    );
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "peer")
        .create()
        .unwrap();
    let mut cpu = 0.0;
    while !committed_done(&group, ends) {
        cpu = cpu_seconds(p.0.id()).unwrap_or(cpu);
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    cpu = cpu_seconds(p.0.id()).unwrap_or(cpu);
    drop(p);
    let rate = n as f64 / secs;
    let per_million = cpu * 1e6 / n as f64;
    println!(
        "peer (Quix Streams, benches/peer/app.py): {n} events in {secs:.1}s = {rate:.0} events/s from process start; CPU {cpu:.1} s = {per_million:.1} s per million events"
    );
    println!(
        "strata / peer: {:.1}x the events/s; events per CPU second: strata {:.0}, peer {:.0} ({:.1}x)",
        strata_rate / rate,
        1e6 / strata_cpu_per_million,
        1e6 / per_million,
        per_million / strata_cpu_per_million,
    );
    if let Some(raw_us) = raw.cpu.map(|c| c * 1e6 / n as f64) {
        // What 20x the peer's events per CPU second would leave strata for
        // everything, against what consuming alone costs.
        println!(
            "20x the peer's events per CPU second = {:.2} µs of CPU per event for all of strata's work; raw librdkafka consume alone: {raw_us:.2} µs ({:.1}x the peer's events per CPU second)",
            per_million / 20.0,
            per_million / raw_us,
        );
    }
}

/// Phase 5: steady-rate event-to-output latency (see the module docs).
fn latency(brokers: &str) {
    let rate: u64 = std::env::var("STRATA_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let total = rate * 20;
    // When each event was handed to the producer: a monotonic instant for the
    // latency, and the wall clock for its split at strata's producer.
    let sent: Arc<Mutex<HashMap<String, (Instant, f64)>>> = Arc::default();
    let outputs: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-latency")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("tier_changes", p, Offset::End)
            .unwrap();
    }
    outputs.assign(&tpl).unwrap();
    // Let the consumer reach the ends before the first event is sent.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) {
        outputs.poll(Duration::from_millis(100));
    }
    let reader = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            // (whole latency, the part until strata handed the output to its
            // producer — the output's CreateTime), in seconds.
            let mut lat = Vec::with_capacity(total as usize);
            let mut last = Instant::now();
            while (lat.len() as u64) < total && last.elapsed() < Duration::from_secs(60) {
                let Some(Ok(m)) = outputs.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = Instant::now();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or(&[]))
                else {
                    continue;
                };
                let cause = v["cause_event_id"].as_str().unwrap_or_default();
                if let Some((at, wall)) = sent.lock().unwrap().remove(cause) {
                    let created = m.timestamp().to_millis().unwrap_or_default() as f64 / 1e3;
                    lat.push((now.duration_since(at).as_secs_f64(), created - wall));
                    last = now;
                }
            }
            lat
        })
    };
    // The upstream producer with its client's default linger, 5 ms (librdkafka's,
    // and the Java producer's since Kafka 4.0), inside the measured latency: the
    // clock starts when the event is handed to it. `STRATA_BENCH_LINGER_MS=0` sends
    // each event in its own request, 1,000 a second, which saturates tansu's
    // produce handling (BENCHMARKS.md, stop 38).
    let linger = std::env::var("STRATA_BENCH_LINGER_MS").unwrap_or_else(|_| "5".into());
    let producer: BaseProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", &linger)
        .set("partitioner", "murmur2_random")
        .create_with_context(Acks::default())
        .unwrap();
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (id, customer) = (format!("lat-{i}"), format!("lat{i:07}"));
        let line = format!(
            r#"{{"event_id":"{id}","customer_id":"{customer}","type":"purchase","ts":"2025-12-31T12:00:00Z","amount":50.0,"currency":"CNY","order_id":"{id}"}}"#
        );
        let at = Instant::now();
        sent.lock().unwrap().insert(id, (at, wall_seconds()));
        producer
            .send(
                BaseRecord::with_opaque_to("purchases", Box::new(at))
                    .key(&customer)
                    .payload(&line),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let mut both = reader.join().unwrap();
    assert!(
        !both.is_empty(),
        "no output arrived for the steady-rate events"
    );
    both.sort_by(|a, b| a.0.total_cmp(&b.0));
    let lat: Vec<f64> = both.iter().map(|l| l.0).collect();
    let q = |v: &[f64], x: f64| v[((v.len() as f64 * x) as usize).min(v.len() - 1)] * 1000.0;
    println!(
        "latency at {rate} events/s for 20 s: {} of {total} outputs; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        q(&lat, 0.5),
        q(&lat, 0.99),
        q(&lat, 1.0)
    );
    // Where it goes: until strata's producer took the output (the input hop and
    // strata), and after (its linger, the output hop, the bench's consumer); for
    // all outputs and for the slowest 1 %.
    let split = |part: &[(f64, f64)]| {
        let mut to: Vec<f64> = part.iter().map(|l| l.1).collect();
        let mut after: Vec<f64> = part.iter().map(|l| l.0 - l.1).collect();
        to.sort_by(f64::total_cmp);
        after.sort_by(f64::total_cmp);
        format!(
            "until strata's producer p50 {:.0} / p99 {:.0} ms, after p50 {:.0} / p99 {:.0} ms",
            q(&to, 0.5),
            q(&to, 0.99),
            q(&after, 0.5),
            q(&after, 0.99)
        )
    };
    let slowest = &both[both.len() - both.len().div_ceil(100)..];
    println!(
        "latency split (ms clocks): all: {}; slowest 1 %: {}",
        split(&both),
        split(slowest)
    );
    // The input hop's first half: until the broker acknowledged the event.
    let mut acks = std::mem::take(&mut *producer.context().0.lock().unwrap());
    acks.sort_by(f64::total_cmp);
    if !acks.is_empty() {
        println!(
            "the bench's produce requests, until acknowledged: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            q(&acks, 0.5),
            q(&acks, 0.99),
            q(&acks, 1.0)
        );
    }
}

/// The bench producer's acknowledgements: seconds from each send.
#[derive(Default)]
struct Acks(Mutex<Vec<f64>>);

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, sent: Box<Instant>) {
        if r.is_ok() {
            self.0.lock().unwrap().push(sent.elapsed().as_secs_f64());
        }
    }
}

fn wall_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
