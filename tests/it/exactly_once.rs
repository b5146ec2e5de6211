//! `processing_guarantee = "exactly_once"` against librdkafka's mock cluster (the
//! test broker has no transactions): outputs, changelog records and consumed offsets
//! go in one transaction per round. A transaction that fails is aborted: its records
//! reach the log behind an abort marker, and the outbox sends them again in the next
//! transaction, so each output is committed exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use strata::config::{Clock, Config, Guarantee, Settings};
use strata::kafka::SharedStatus;
use strata::telemetry::Metrics;

use crate::broker::{produce, read_topic};
use crate::util::{gen_file, replay, tempdir};

#[test]
fn transactions_commit_each_output_once_and_an_aborted_one_is_sent_again() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let inputs = ["purchases", "interactions", "complaints"];
    for t in inputs {
        mock.create_topic(t, 2, 1).unwrap();
    }
    for t in [
        "tier_changes",
        "churn_warnings",
        "strata_dead_letter",
        "strata_changelog",
        "strata_stats",
    ] {
        mock.create_topic(t, 2, 1).unwrap();
    }
    let dir = tempdir();
    let file = gen_file(
        dir.path(),
        "events.jsonl",
        &[
            "--customers",
            "400",
            "--days",
            "120",
            "--seed",
            "3",
            "--start",
            "2026-01-01",
        ],
    );
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
    produce(&brokers, &recs);

    // The first transaction fails when its consumed offsets are added: it must be
    // aborted, and everything sent in it must stay invisible.
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
    );

    let mut raw = Config::default();
    raw.engine.clock = strata::config::ClockMode::Event;
    raw.engine.state_dir = dir.path().join("state");
    raw.segments.thresholds = strata::config::ThresholdMode::Fixed;
    raw.value_tiers.method = strata::config::ValueMethod::Fixed;
    raw.kafka.brokers = brokers.clone();
    raw.kafka.group_id = "eos".into();
    raw.kafka.processing_guarantee = Guarantee::ExactlyOnce;
    raw.kafka.instance_id = "t1".into();
    raw.kafka.max_batch_events = 300;
    // Full batches even on a loaded machine, so the failing (first) transaction
    // surely carries outputs.
    raw.kafka.batch_wait_ms = 3000;
    // The mock cluster's group coordinator speaks the classic protocol.
    raw.kafka
        .client
        .insert("partition.assignment.strategy".into(), "range".into());
    let settings = Arc::new(Settings::new(raw, Clock::Event).unwrap());
    let metrics = Arc::new(Metrics::new());
    let status = SharedStatus::default();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (s, m, st, stop) = (
            settings.clone(),
            metrics.clone(),
            status.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || strata::kafka::run(s, st, m, stop))
    };

    // Caught up: every event consumed and nothing left to publish, for a while.
    // (The mock cluster does not keep offsets committed inside transactions, so the
    // group's offsets cannot tell; strata's own are in its state.)
    let total = recs.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stable = 0;
    while stable < 5 {
        let consumed: u64 = ["purchase", "interaction", "complaint"]
            .iter()
            .map(|t| metrics.events_consumed.with_label_values(&[t]).get())
            .sum();
        if consumed == total && metrics.outbox_pending.get() == 0 {
            stable += 1;
        } else {
            stable = 0;
        }
        assert!(!worker.is_finished(), "the service stopped early");
        assert!(
            Instant::now() < deadline,
            "the service did not catch up ({consumed} of {total})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().unwrap();
    assert!(
        metrics.transactions_aborted.get() >= 1,
        "the injected failure aborted a transaction"
    );

    // The oracle: each partition's inputs merged in event-time order, replayed.
    let mut oracle_ids = std::collections::BTreeMap::new();
    let mut per_part: std::collections::BTreeMap<i32, Vec<(i64, usize, i64, String)>> =
        Default::default();
    for (idx, t) in inputs.iter().enumerate() {
        for r in read_topic(&brokers, t, true) {
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
    ];
    for (p, mut lines) in per_part {
        lines.sort_by_key(|l| (l.0, l.1, l.2));
        let f = dir.path().join(format!("p{p}.jsonl"));
        crate::util::write_lines(&f, &lines.into_iter().map(|l| l.3).collect::<Vec<_>>());
        let (outs, _, _) = replay(&dir.path().join(format!("oracle-{p}")), &[&f], &fixed);
        for o in outs {
            oracle_ids.insert(o["event_id"].as_str().unwrap().to_string(), o);
        }
    }

    // librdkafka's mock broker writes abort markers but never reports aborted
    // transactions to fetchers (its Fetch response lists none), so a read_committed
    // consumer sees aborted records there; a real broker hides them. So the log's
    // structure is checked: per partition, the aborted transaction is a prefix whose
    // records all reappear later, and what follows it — what read_committed consumers
    // of a real broker see — is exactly the oracle's outputs, each once.
    assert!(oracle_ids.len() > 200);
    let mut visible = Vec::new();
    let mut aborted: Vec<String> = Vec::new();
    for t in ["tier_changes", "churn_warnings"] {
        let mut by_part: std::collections::BTreeMap<i32, Vec<(i64, Value)>> = Default::default();
        for r in read_topic(&brokers, t, false) {
            let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            by_part.entry(r.partition).or_default().push((r.offset, v));
        }
        for (_, mut recs) in by_part {
            recs.sort_by_key(|r| r.0);
            let mut first: std::collections::BTreeMap<String, i64> = Default::default();
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
    let visible_ids: std::collections::BTreeSet<&str> = visible
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
