//! A real Kafka-protocol broker for the integration tests: `tansu` (installed by
//! `scripts/setup`), started once per test binary on a free loopback port with
//! SQLite storage in a temporary directory, and killed when the test binary exits
//! (the kernel delivers SIGKILL to it when the thread that started it — which lives
//! as long as the process — goes away). Tests share it and use random topic and
//! group names.
//!
//! Not tansu's `memory://` engine: it answers a fetch from an offset inside a
//! record batch with the batches that *start* at or after that offset, so a
//! consumer positioned mid-batch (any restart or handover) silently skips the rest
//! of that batch, or gets nothing at all when it is the last one. Its SQLite engine
//! stores records one by one and answers as a Kafka broker does.
//!
//! Also: Kafka client helpers (create topics, produce, read a topic back, committed
//! offsets) and a `strata run` child process with its HTTP endpoints.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    for c in [
        home.join(".cargo/bin/tansu"),
        PathBuf::from("/usr/local/bin/tansu"),
    ] {
        if c.exists() {
            return c;
        }
    }
    panic!("the test broker `tansu` is not installed: run scripts/setup --test (it installs tansu 0.6.0 with cargo install)")
}

/// Bootstrap address of the shared broker.
pub fn brokers() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("strata-tansu-{port}.log"));
        let dir = broker_dir();
        let (tx, rx) = std::sync::mpsc::channel();
        let a = addr.clone();
        std::thread::Builder::new()
            .name("tansu".into())
            .spawn(move || {
                // Never waited on: it lives until the test process exits.
                #[allow(clippy::zombie_processes)]
                let child = spawn_tansu(&a, &dir, &log);
                tx.send(child.id()).unwrap();
                // Live as long as the process: the broker dies with this thread.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        rx.recv().unwrap();
        wait_serving(&addr);
        addr
    })
}

/// Start tansu on `addr` with its SQLite database in `dir`, logging to `log`. It
/// dies with the thread that started it (PR_SET_PDEATHSIG).
fn spawn_tansu(addr: &str, dir: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(tansu_binary());
    cmd.args([
        "broker",
        "--listener-url",
        &format!("tcp://{addr}"),
        "--advertised-listener-url",
        &format!("tcp://{addr}"),
        "--storage-engine",
        "sqlite://tansu.db",
    ])
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    // SAFETY: prctl in the child before exec; no allocation.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("start tansu")
}

/// Wait until the broker at `addr` answers metadata requests.
fn wait_serving(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    while c.fetch_metadata(None, Duration::from_secs(2)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not answer on {addr}");
    }
}

/// A broker of one test's own, which it can stop (kill -9) and start again on the
/// same port and database: a broker outage.
pub struct PrivateBroker {
    child: Option<Child>,
    addr: String,
    dir: PathBuf,
    log: PathBuf,
}

impl PrivateBroker {
    /// A new broker in `dir` (not started: see [`PrivateBroker::start`]).
    pub fn new(dir: &Path) -> PrivateBroker {
        let db = dir.join("tansu");
        std::fs::create_dir_all(&db).unwrap();
        PrivateBroker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            log: dir.join("tansu.log"),
            dir: db,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Start it (again) and wait until it serves.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(spawn_tansu(&self.addr, &self.dir, &self.log));
        wait_serving(&self.addr);
    }

    /// kill -9 it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory for the broker's database, named by this process; those of
/// earlier test processes that are gone are removed first.
fn broker_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("strata-tansu-db-") {
                if !Path::new("/proc").join(pid).exists() {
                    std::fs::remove_dir_all(e.path()).ok();
                }
            }
        }
    }
    let dir = tmp.join(format!("strata-tansu-db-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

/// A topic to create: name, partition count, topic configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let topics: Vec<TopicSpec> = topics.iter().map(|(t, p)| (*t, *p, &[][..])).collect();
    create_topics_with(brokers, &topics);
}

/// An admin client of `brokers` and a runtime to wait on its answers.
fn admin(brokers: &str) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (admin, rt)
}

/// Topics with these partition counts and topic configs.
pub fn create_topics_with(brokers: &str, topics: &[TopicSpec]) {
    let (admin, rt) = admin(brokers);
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p, configs)| {
            let mut n = NewTopic::new(t, *p, TopicReplication::Fixed(1));
            for (k, v) in configs.iter() {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// One config of a topic as the broker describes it (`None`: not listed; tansu lists
/// only configs set on the topic).
pub fn topic_config(brokers: &str, topic: &str, key: &str) -> Option<String> {
    let (admin, rt) = admin(brokers);
    let spec = rdkafka::admin::ResourceSpecifier::Topic(topic);
    let r = rt
        .block_on(admin.describe_configs([&spec], &AdminOptions::new()))
        .unwrap()
        .remove(0)
        .unwrap_or_else(|e| panic!("describe topic {topic}: {e}"));
    r.get(key).and_then(|e| e.value.clone())
}

/// Produce (topic, key, payload) in order, with Kafka's default (murmur2) partitioner.
pub fn produce(brokers: &str, records: &[(String, Option<String>, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (t, k, v) in records {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(t).payload(v.as_slice());
        if let Some(k) = k {
            r = r.key(k.as_str());
        }
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Every record of a topic, all partitions, read until the broker reports the end
/// of each. (tansu 0.6 answers ListOffsets "latest" with the last batch's base
/// offset + 1, not the end, so watermarks from it are not used to stop.)
pub fn read_topic(brokers: &str, topic: &str, read_committed: bool) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = std::collections::BTreeSet::new();
    while done.len() < parts as usize {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hh in h.iter() {
                        headers.insert(
                            hh.key.to_string(),
                            String::from_utf8_lossy(hh.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().map(|v| v.to_vec()),
                    headers,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            // A broker that is down (the mock cluster's outage test) is a transient
            // transport error: librdkafka reconnects on its own.
            Some(Err(e)) if strata::kafka::transient(&e) => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The end offset of every partition of a topic (read to the end, see `read_topic`).
pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut ends: BTreeMap<i32, i64> = (0..md.topics()[0].partitions().len() as i32)
        .map(|p| (p, 0))
        .collect();
    for r in read_topic(brokers, topic, false) {
        let e = ends.get_mut(&r.partition).unwrap();
        *e = (*e).max(r.offset + 1);
    }
    ends
}

/// Whether the group's committed offsets reached `ends` (topic → partition → end):
/// the service has applied, written and published everything.
pub fn caught_up(brokers: &str, group: &str, ends: &BTreeMap<String, BTreeMap<i32, i64>>) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (t, parts) in ends {
        for p in parts.keys() {
            tpl.add_partition(t, *p);
        }
    }
    let committed = match c.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("committed offsets of {group}: {e}");
            return false;
        }
    };
    if std::env::var("STRATA_TEST_VERBOSE").is_ok() {
        for (t, parts) in ends {
            for (p, hi) in parts {
                eprintln!(
                    "{t}/{p}: end {hi}, committed {:?}",
                    committed.find_partition(t, *p).map(|e| e.offset())
                );
            }
        }
    }
    ends.iter().all(|(t, parts)| {
        parts.iter().all(|(p, hi)| {
            *hi == 0
                || committed
                    .find_partition(t, *p)
                    .is_some_and(|e| e.offset() == Offset::Offset(*hi))
        })
    })
}

/// A `strata run` child process.
pub struct Strata {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Strata {
    pub fn start(config: &Path, dir: &Path, name: &str) -> Strata {
        Strata::start_env(config, dir, name, &[])
    }

    /// With environment overrides (`STRATA_<SECTION>__<KEY>`).
    pub fn start_env(config: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Strata {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = super::util::strata()
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("STRATA_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "STRATA_LOG",
                std::env::var("STRATA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Strata {
            child,
            http: format!("127.0.0.1:{port}"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http, path, None)
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A tiny HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    http_get_with_head(addr, path, bearer).map(|(code, _, body)| (code, body))
}

/// A tiny HTTP/1.1 GET: (status, response head, body).
pub fn http_get_with_head(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, head.to_string(), body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of a metric's samples in a Prometheus text exposition, filtered by labels.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let n = l.split(['{', ' ']).next().unwrap_or("");
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
