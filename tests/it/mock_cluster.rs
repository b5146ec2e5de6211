//! `strata run` against librdkafka's mock cluster, for what the test broker cannot
//! do: transactions (`exactly_once`: outputs, changelog records and consumed offsets
//! in one transaction per round; a failed transaction is aborted and its outbox sent
//! again, so each output is committed exactly once), and a partial outage (one broker
//! down) under `at_least_once`, where a batch must not reach the changelog before its
//! outputs are delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use strata::cluster::SharedStatus;
use strata::config::{Clock, Config, Guarantee, Settings};
use strata::kafka::changelog::parse_changelog_key;
use strata::kafka::KafkaError;
use strata::store::Cf;
use strata::telemetry::Metrics;

use crate::broker::{produce, read_topic};
use crate::util::{generate, replay, tempdir};

const INPUTS: [&str; 3] = ["purchases", "interactions", "complaints"];
const OUTPUTS: [&str; 6] = [
    "tier_changes",
    "churn_warnings",
    "strata_dead_letter",
    "strata_changelog",
    "strata_stats",
    "strata_customer_tiers",
];

/// A mock cluster with every topic (2 partitions), a generated stream produced to
/// the inputs, and a config for it. Returns (cluster, temp dir, events produced, config).
fn setup(
    brokers: i32,
    guarantee: Guarantee,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    tempfile::TempDir,
    u64,
    Config,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(brokers).unwrap();
    for t in INPUTS.iter().chain(&OUTPUTS) {
        mock.create_topic(t, 2, 1).unwrap();
    }
    let dir = tempdir();
    let file = generate(dir.path(), "events.jsonl", 400, 120, 3, "2026-01-01");
    let text = std::fs::read_to_string(&file).unwrap();
    let recs: Vec<_> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let t = format!("{}s", v["type"].as_str().unwrap());
            (
                t,
                v["customer_id"].as_str().map(String::from),
                l.as_bytes().to_vec(),
            )
        })
        .collect();
    produce(&mock.bootstrap_servers(), &recs);

    let mut raw = Config::default();
    raw.engine.clock = strata::config::ClockMode::Event;
    raw.engine.state_dir = dir.path().join("state");
    raw.segments.thresholds = strata::config::ThresholdMode::Fixed;
    raw.value_tiers.method = strata::config::ValueMethod::Fixed;
    raw.predict.min_repeat_customers = 1_000_000_000;
    raw.kafka.brokers = mock.bootstrap_servers();
    raw.kafka.group_id = "mock".into();
    raw.kafka.processing_guarantee = guarantee;
    raw.kafka.instance_id = "t1".into();
    raw.kafka.max_batch_events = 300;
    // The mock cluster's group coordinator speaks the classic protocol.
    raw.kafka
        .client
        .insert("partition.assignment.strategy".into(), "range".into());
    (mock, dir, recs.len() as u64, raw)
}

/// `strata run` on a thread: (metrics, stop flag, the thread).
type Running = (
    Arc<Metrics>,
    Arc<AtomicBool>,
    JoinHandle<Result<(), KafkaError>>,
);

fn start(raw: Config) -> Running {
    let settings = Arc::new(Settings::new(raw, Clock::Event).unwrap());
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (m, stop) = (metrics.clone(), stop.clone());
        std::thread::spawn(move || strata::kafka::run(settings, SharedStatus::default(), m, stop))
    };
    (metrics, stop, worker)
}

fn consumed(metrics: &Metrics) -> u64 {
    ["purchase", "interaction", "complaint"]
        .iter()
        .map(|t| metrics.events_consumed.with_label_values(&[t]).get())
        .sum()
}

/// Wait until every event was consumed and nothing is left to publish, for a while
/// (the mock cluster does not keep offsets committed inside transactions, so the
/// group's offsets cannot tell; strata's own are in its state); then stop.
fn finish((metrics, stop, worker): Running, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stable = 0;
    while stable < 5 {
        let n = consumed(&metrics);
        if n == total && metrics.outbox_pending.get() == 0 {
            stable += 1;
        } else {
            stable = 0;
        }
        if worker.is_finished() {
            panic!("the service stopped early: {:?}", worker.join().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "the service did not catch up ({n} of {total})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().unwrap();
}

/// The oracle's outputs by event_id: each partition's inputs merged in event-time
/// order, replayed.
fn oracle(brokers: &str, dir: &std::path::Path) -> BTreeMap<String, Value> {
    let mut oracle_ids = BTreeMap::new();
    let mut per_part: BTreeMap<i32, Vec<(i64, usize, i64, String)>> = Default::default();
    for (idx, t) in INPUTS.iter().enumerate() {
        for r in read_topic(brokers, t, true) {
            let line = String::from_utf8(r.value.unwrap()).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            per_part
                .entry(r.partition)
                .or_default()
                .push((ts, idx, r.offset, line));
        }
    }
    let fixed = [
        ("STRATA_SEGMENTS__THRESHOLDS", "fixed"),
        ("STRATA_VALUE_TIERS__METHOD", "fixed"),
        ("STRATA_PREDICT__MIN_REPEAT_CUSTOMERS", "1000000000"),
    ];
    for (p, mut lines) in per_part {
        lines.sort_by_key(|l| (l.0, l.1, l.2));
        let f = dir.join(format!("p{p}.jsonl"));
        crate::util::write_lines(&f, &lines.into_iter().map(|l| l.3).collect::<Vec<_>>());
        let (outs, _, _) = replay(&dir.join(format!("oracle-{p}")), &[&f], &fixed);
        for o in outs {
            oracle_ids.insert(o["event_id"].as_str().unwrap().to_string(), o);
        }
    }
    assert!(oracle_ids.len() > 200);
    oracle_ids
}

#[test]
fn transactions_commit_each_output_once_and_an_aborted_one_is_sent_again() {
    let (mock, dir, total, mut raw) = setup(1, Guarantee::ExactlyOnce);
    let brokers = mock.bootstrap_servers();
    // Full batches even on a loaded machine, so the failing (first) transaction
    // surely carries outputs.
    raw.kafka.batch_wait_ms = 3000;
    // The first transaction fails when its consumed offsets are added: it must be
    // aborted, and everything sent in it must stay invisible.
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
    );
    let running = start(raw);
    let metrics = running.0.clone();
    finish(running, total);
    assert!(
        metrics.transactions_aborted.get() >= 1,
        "the injected failure aborted a transaction"
    );
    let oracle_ids = oracle(&brokers, dir.path());
    // librdkafka's mock broker writes abort markers but never reports aborted
    // transactions to fetchers (its Fetch response lists none), so a read_committed
    // consumer sees aborted records there; a real broker hides them. So the log's
    // structure is checked: per partition, the aborted transaction is a prefix whose
    // records all reappear later, and what follows it — what read_committed consumers
    // of a real broker see — is exactly the oracle's outputs, each once.
    let mut visible = Vec::new();
    let mut aborted: Vec<String> = Vec::new();
    for t in ["tier_changes", "churn_warnings"] {
        let mut by_part: BTreeMap<i32, Vec<(i64, Value)>> = Default::default();
        for r in read_topic(&brokers, t, false) {
            let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            by_part.entry(r.partition).or_default().push((r.offset, v));
        }
        for (_, mut recs) in by_part {
            recs.sort_by_key(|r| r.0);
            let mut first: BTreeMap<String, i64> = Default::default();
            let mut prefix_end = -1;
            for (o, v) in &recs {
                let id = v["event_id"].as_str().unwrap().to_string();
                if let Some(&f) = first.get(&id) {
                    prefix_end = prefix_end.max(f);
                } else {
                    first.insert(id, *o);
                }
            }
            for (o, v) in recs {
                if o <= prefix_end {
                    let id = v["event_id"].as_str().unwrap();
                    assert!(
                        first[id] == o,
                        "a record of the aborted prefix is itself a duplicate"
                    );
                    aborted.push(id.to_string());
                } else {
                    visible.push(v);
                }
            }
        }
    }
    assert!(
        !aborted.is_empty(),
        "the aborted transaction had sent outputs"
    );
    let visible_ids: BTreeSet<&str> = visible
        .iter()
        .map(|v| v["event_id"].as_str().unwrap())
        .collect();
    for id in &aborted {
        assert!(
            visible_ids.contains(id.as_str()),
            "aborted output {id} was sent again"
        );
    }
    assert_eq!(
        visible.len(),
        oracle_ids.len(),
        "each output committed exactly once"
    );
    for v in &visible {
        assert_eq!(Some(v), oracle_ids.get(v["event_id"].as_str().unwrap()));
    }
}

/// Under at_least_once a batch goes to the changelog only once its outputs are
/// acknowledged: an instance that takes a partition over restores it from the
/// changelog without the old owner's outbox, so a batch there whose outputs never
/// arrived would be lost for good. Here the output topics' leader (broker 2) is down
/// while the changelog's (broker 1) is up: nothing may reach the changelog until
/// broker 2 is back, and then every output arrives.
#[test]
fn at_least_once_changelog_waits_for_the_outputs() {
    let (mock, dir, total, mut raw) = setup(2, Guarantee::AtLeastOnce);
    let brokers = mock.bootstrap_servers();
    for t in INPUTS.iter().chain(&OUTPUTS[2..]) {
        for p in 0..2 {
            mock.partition_leader(t, p, Some(1)).unwrap();
        }
    }
    for t in &OUTPUTS[..2] {
        for p in 0..2 {
            mock.partition_leader(t, p, Some(2)).unwrap();
        }
    }
    mock.coordinator(MockCoordinator::Group("mock".into()), 1)
        .unwrap();
    // Undeliverable records fail after 2 s (they stay in the outbox).
    raw.kafka
        .client
        .insert("message.timeout.ms".into(), "2000".into());
    mock.broker_down(2).unwrap();
    let running = start(raw);
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&running.0) < total / 2 {
        if running.2.is_finished() {
            panic!("the service stopped early: {:?}", running.2.join().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {total} consumed with broker 2 down",
            consumed(&running.0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Several publish rounds fail meanwhile.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        running.0.outbox_pending.get() > 0,
        "outputs wait in the outbox"
    );
    // What the changelog may hold by now: the batches without events (the marker
    // and population summary each partition writes when it is opened).
    let applied = |recs: &[crate::broker::Rec]| {
        recs.iter()
            .filter(|r| {
                let key = r.key.as_deref().unwrap_or_default();
                parse_changelog_key(key).is_some_and(|(cf, _)| cf == Cf::Customers)
            })
            .count()
    };
    let early = applied(&read_topic(&brokers, "strata_changelog", false));
    assert_eq!(
        early, 0,
        "customer records reached the changelog while their batches' outputs could not"
    );
    mock.broker_up(2).unwrap();
    finish(running, total);
    assert!(applied(&read_topic(&brokers, "strata_changelog", false)) > 0);
    let oracle_ids = oracle(&brokers, dir.path());
    let mut seen = BTreeSet::new();
    for t in &OUTPUTS[..2] {
        for r in read_topic(&brokers, t, false) {
            let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            let id = v["event_id"].as_str().unwrap().to_string();
            assert_eq!(
                Some(&v),
                oracle_ids.get(&id),
                "published {id} as the oracle did"
            );
            seen.insert(id);
        }
    }
    assert_eq!(seen.len(), oracle_ids.len(), "every output was delivered");
}
