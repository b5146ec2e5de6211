//! The faults beyond `kill -9` that a production cluster meets (README
//! "Guarantees", fault table), one test each: the process stays up where it must,
//! the final state equals the oracle's, no output `event_id` is lost, and none is
//! published more than twice.
//!
//! Crash and delay injection uses fail points (the `fail` crate, compiled in by the
//! `failpoints` feature that the tests enable; `FAILPOINTS` names them per process).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::{brokers, http_get, metric_sum, produce, read_topic, PrivateBroker, Strata};
use crate::kafka::{
    assert_outputs_cover_oracle, assigned, global_dump, last_day, serial, sorted_dump,
    split_at_day, split_lines, wait_for, Setup, FIXED,
};
use crate::util::{dump, replay, strata, tempdir, write_lines};

fn metric(s: &Strata, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.get("/metrics")
        .map(|(_, m)| metric_sum(&m, name, labels))
        .unwrap_or(0.0)
}

fn consumed(s: &Strata) -> f64 {
    metric(s, "strata_events_consumed_total", &[])
}

fn alive(s: &mut Strata) -> bool {
    s.child.try_wait().unwrap().is_none()
}

/// No output was published more than twice (a healthy one is published once, or
/// twice when a fault interrupts its round).
fn assert_at_most_twice(run: &[(String, Value)]) {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, v) in run {
        *n.entry(v["event_id"].as_str().unwrap()).or_default() += 1;
    }
    let worst = n.iter().max_by_key(|(_, c)| **c).map(|(id, c)| (*id, *c));
    assert!(
        worst.is_none_or(|(_, c)| c <= 2),
        "an output was published more than twice: {worst:?}"
    );
}

/// The whole check after a run: outputs cover the oracle, none more than twice,
/// the state equals one replay of everything.
fn assert_oracle(s: &Setup, file: &Path, state: &Path) {
    let (oracle, _) = s.oracle();
    let run = s.outputs();
    assert_outputs_cover_oracle(&run, &oracle);
    assert_at_most_twice(&run);
    let day = last_day(file);
    assert_eq!(sorted_dump(state, &day), global_dump(s, file, &day));
}

/// Fault 1: Started with no broker reachable, the service waits and retries (a log line
/// and a metric per attempt; /healthz 200, /readyz 503); then a 90 s outage in the
/// middle of applying a stream is ridden out: the process stays up, /readyz is 503
/// meanwhile, and it resumes by itself, losing nothing.
#[test]
fn a_broker_outage_is_ridden_out() {
    let _serial = serial();
    let tmp = tempdir();
    let mut broker = PrivateBroker::new(tmp.path());
    broker.start();
    let s = Setup::on(broker.addr(), &[2, 2, 2]);
    let file = s.generate(600, 240, 21, "2026-01-01");
    // The later part is purchases only (one topic: its partitions apply in offset
    // order whenever they arrive, so the oracle's order holds).
    let (early, late) = split_at_day(&file, "2026-07-01");
    let late_parts = split_lines(&late, 3);
    let early_n = s.produce_file(&early) as f64;
    broker.stop();
    let cfg = s.config("a");
    let mut a = Strata::start(&cfg, s.dir.path(), "a");
    wait_for(
        "two attempts to reach the cluster",
        Duration::from_secs(60),
        &[&a],
        || metric(&a, "strata_kafka_connect_retries_total", &[]) >= 2.0,
    );
    assert!(alive(&mut a), "waits for the cluster instead of exiting");
    assert_eq!(a.get("/healthz").unwrap().0, 200);
    assert_eq!(a.get("/readyz").unwrap().0, 503);
    assert!(
        a.log_text()
            .matches("Cannot reach the Kafka cluster")
            .count()
            >= 2,
        "a log line per attempt"
    );
    broker.start();
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    assert_eq!(consumed(&a), early_n);

    // The broker dies while the late purchases are being applied and published.
    s.produce_file(&late_parts[0]);
    wait_for(
        "the late purchases to be applied",
        Duration::from_secs(60),
        &[&a],
        || consumed(&a) > early_n,
    );
    broker.stop();
    let down = Instant::now();
    let mut not_ready = false;
    while down.elapsed() < Duration::from_secs(90) {
        assert!(alive(&mut a), "died during the outage:\n{}", a.log_text());
        if let Some((code, body)) = a.get("/readyz") {
            not_ready |= code == 503;
            if code == 503 {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["ready"], false);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(not_ready, "/readyz was 503 during the outage");
    broker.start();
    s.produce_file(&late_parts[1]);
    s.produce_file(&late_parts[2]);
    s.wait_caught_up(Duration::from_secs(240), &mut [&mut a]);
    wait_for("/readyz 200 again", Duration::from_secs(60), &[&a], || {
        a.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert!(a.terminate(), "exits 0 on SIGTERM");
    assert_oracle(&s, &file, &s.state("a"));
}

/// Fault 2: Records that can never be delivered: a 900 KB poison input's dead letter is
/// cut to `kafka.dead_letter_max_raw_bytes` (`raw_truncated`) and delivered; a
/// customer record larger than the producer may send to the changelog blocks its
/// partition alone (reported: ERROR naming topic, partition, key and size;
/// `strata_records_undeliverable_total`; `/readyz` lists it) while the other
/// partition goes on; raising the limit (here: restarting with the default)
/// unblocks it, and everything ends as the oracle says, nothing published more
/// than twice.
#[test]
fn a_record_that_can_never_be_delivered_blocks_its_partition_alone() {
    let _serial = serial();
    let s = Setup::new(&[2, 2, 2]);
    let file = s.generate(400, 120, 23, "2026-01-01");
    let (early, late) = split_at_day(&file, "2026-04-01");
    // A whale on partition 0: enough purchases that its record outgrows 24 KB.
    let whale = (0..)
        .map(|i| format!("whale-{i}"))
        .find(|id| strata::cluster::partition_of(id.as_bytes(), 2) == 0)
        .unwrap();
    // Stamped after every early event and before the late ones, so that the
    // purchases topic stays in event-time order (what the oracle assumes).
    let whale_lines: Vec<String> = (0..2500)
        .map(|i| {
            format!(
                r#"{{"event_id":"w{i}","customer_id":"{whale}","type":"purchase","ts":"2026-03-31T23:59:{:02}.{:03}Z","amount":{}.25}}"#,
                i / 50,
                (i % 50) * 20,
                10 + i % 7
            )
        })
        .collect();
    let whale_file = s.dir.path().join("whale.jsonl");
    write_lines(&whale_file, &whale_lines);
    // The stream as the oracle sees it: early, the whale, then the late purchases.
    let all = s.dir.path().join("all.jsonl");
    let text = [&early, &whale_file, &late]
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<String>();
    std::fs::write(&all, text).unwrap();

    s.produce_file(&early);
    let cfg = s.config("a");
    let limited = [
        ("STRATA_KAFKA__CLIENT__MESSAGE_MAX_BYTES", "24000"),
        ("STRATA_KAFKA__DEAD_LETTER_MAX_RAW_BYTES", "2000"),
    ];
    let mut a = Strata::start_env(&cfg, s.dir.path(), "a1", &limited);
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);

    // A 900 KB poison message, mostly control characters (six bytes each once
    // escaped in the dead letter's JSON).
    let poison = format!(
        r#"{{"event_id":"poison","customer_id":"{whale}","type":"purchase","pad":"{}"}}"#,
        "\u{1}".repeat(900_000)
    );
    produce(
        brokers(),
        &[(
            s.inputs[0].clone(),
            Some(whale.clone()),
            poison.into_bytes(),
        )],
    );
    s.produce_file(&whale_file);
    wait_for(
        "partition 0 to be blocked",
        Duration::from_secs(60),
        &[&a],
        || {
            a.get("/readyz").is_some_and(|(code, body)| {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                code == 503 && v["blocked"] == serde_json::json!([0])
            })
        },
    );
    assert_eq!(metric(&a, "strata_partitions_blocked", &[]), 1.0);
    assert!(
        metric(
            &a,
            "strata_records_undeliverable_total",
            &[("destination", "changelog")]
        ) >= 1.0
    );
    let log = a.log_text();
    let report = log
        .lines()
        .find(|l| l.contains("A record cannot be delivered, ever") && l.contains("changelog"))
        .unwrap_or_else(|| panic!("no ERROR report:\n{log}"));
    for field in ["topic=", "partition=0", "key=", "bytes="] {
        assert!(report.contains(field), "{field} in {report}");
    }
    assert!(report.contains(&whale), "names the key: {report}");
    // The other partition goes on: its late purchases are applied.
    s.produce_file(&late);
    let p1_done = || {
        let ends = crate::broker::end_offsets(brokers(), &s.inputs[0]);
        let committed = read_committed_offsets(&s, &s.inputs[0]);
        committed.get(&1) == ends.get(&1)
    };
    wait_for(
        "partition 1 to apply everything",
        Duration::from_secs(60),
        &[&a],
        p1_done,
    );
    assert!(alive(&mut a));
    // The poison's dead letter, cut to size.
    let dead: Vec<Value> = read_topic(brokers(), &s.dead_letter, false)
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
        .collect();
    let p = dead
        .iter()
        .find(|v| v["reason"] == "too_large")
        .expect("the poison's dead letter was delivered");
    assert_eq!(p["raw_truncated"], true);
    assert!(p["raw"].as_str().unwrap().len() <= 2000);
    assert!(
        a.terminate(),
        "a blocked partition does not hold up the shutdown"
    );

    // With the default limit the whale's record fits: the partition resumes.
    let mut a = Strata::start(&cfg, s.dir.path(), "a2");
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    wait_for("/readyz 200", Duration::from_secs(30), &[&a], || {
        a.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert!(a.terminate());
    let (oracle, _) = s.oracle();
    let run = s.outputs();
    assert_outputs_cover_oracle(&run, &oracle);
    assert_at_most_twice(&run);
    let day = last_day(&all);
    assert_eq!(
        sorted_dump(&s.state("a"), &day),
        global_dump(&s, &all, &day)
    );
}

/// The group's committed offsets of one topic, by partition.
fn read_committed_offsets(s: &Setup, topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.broker)
        .set("group.id", &s.group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .map(|t| {
            t.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Audit every partition store of a `run` state dir (the processor's brute-force
/// check, including the timers and indexes derived from the customer records).
fn audit_partitions(state: &Path) {
    use strata::processor::{Audit, Processor};
    let settings = std::sync::Arc::new(
        strata::config::Settings::new(
            {
                let mut c = strata::config::Config::default();
                c.engine.clock = strata::config::ClockMode::Event;
                c.segments.thresholds = strata::config::ThresholdMode::Fixed;
                c.value_tiers.method = strata::config::ValueMethod::Fixed;
                c.predict.min_repeat_customers = 1_000_000_000;
                c
            },
            strata::config::Clock::Event,
        )
        .unwrap(),
    );
    let mut n = 0;
    for e in std::fs::read_dir(state.join("partitions"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let store = strata::store::rocks::RocksStore::open(&e.path(), 8, 4).unwrap();
        let mut p = Processor::open(settings.clone(), store).unwrap();
        assert_eq!(
            p.audit().unwrap(),
            Audit::default(),
            "{}",
            e.path().display()
        );
        n += 1;
    }
    assert!(n > 0);
}

/// Whether a partition store still carries the flag of an unfinished restore.
fn restoring_flag(dir: &Path) -> bool {
    use strata::store::{Cf, Store};
    let store = strata::store::rocks::RocksStore::open(dir, 8, 4).unwrap();
    store.get(Cf::Meta, b"kafka.restoring").unwrap().is_some()
}

/// Fault 3: A crash between a restore's last changelog record and the rebuilt timers
/// and indexes: the partition is restored again at the next start (its marker
/// looks current, but the restore never completed), the processor's audit passes,
/// and silent customers' timers fire as the oracle's do.
#[test]
fn a_crash_during_restore_restores_again() {
    let _serial = serial();
    let s = Setup::new(&[2, 2, 2]);
    let file = s.generate(500, 200, 25, "2026-01-01");
    let (early, late) = split_at_day(&file, "2026-06-01");
    s.produce_file(&early);
    let mut a = Strata::start(&s.config("a"), s.dir.path(), "a");
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    assert!(a.terminate());
    // A newcomer restores both partitions and crashes before rebuilding.
    let cfg = s.config("b");
    let mut b = Strata::start_env(
        &cfg,
        s.dir.path(),
        "b1",
        &[("FAILPOINTS", "restore.before_rebuild=panic")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the fail point was not reached:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the injected crash");
    let parts = s.state("b").join("partitions");
    let flagged: Vec<PathBuf> = std::fs::read_dir(&parts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| restoring_flag(p))
        .collect();
    assert!(
        !flagged.is_empty(),
        "the crash left a partition mid-restore"
    );
    // The next life restores it again, then applies the late purchases on top.
    let mut b = Strata::start(&cfg, s.dir.path(), "b2");
    wait_for(
        "the restart to be ready",
        Duration::from_secs(60),
        &[&b],
        || b.get("/readyz").is_some_and(|(c, _)| c == 200) && assigned(&b).len() == 2,
    );
    assert!(
        metric(&b, "strata_restore_records_total", &[]) > 0.0,
        "restored again"
    );
    s.produce_file(&late);
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut b]);
    assert!(b.terminate());
    for p in &flagged {
        assert!(!restoring_flag(p), "{} completed its restore", p.display());
    }
    audit_partitions(&s.state("b"));
    assert_oracle(&s, &file, &s.state("b"));
}

/// Fault 4: A restore longer than `max.poll.interval.ms` (10 s here; every changelog
/// record slowed by a fail point): the loop polls meanwhile, so the member stays
/// in the group, nothing is restored twice, and SIGTERM during a restore stops the
/// process within 10 s.
#[test]
fn a_restore_longer_than_the_poll_interval_keeps_the_member() {
    let _serial = serial();
    let s = Setup::new(&[2, 2, 2]);
    let file = s.generate(1500, 200, 27, "2026-01-01");
    s.produce_file(&file);
    let mut a = Strata::start(&s.config("a"), s.dir.path(), "a");
    s.wait_caught_up(Duration::from_secs(180), &mut [&mut a]);
    assert!(a.terminate());
    let changelog = format!("{}-changelog", s.group.trim_end_matches("-group"));
    let records = read_topic(brokers(), &changelog, false).len() as f64;
    // 6 ms per record, two restores side by side: well over 10 s.
    let ms = (2.0 * 15_000.0 / records).ceil().max(6.0) as u64;
    let slow = format!("restore.record=sleep({ms})");
    let env = [
        ("FAILPOINTS", slow.as_str()),
        ("STRATA_KAFKA__CLIENT__MAX_POLL_INTERVAL_MS", "10000"),
    ];
    let started = Instant::now();
    let b = Strata::start_env(&s.config("b"), s.dir.path(), "b", &env);
    wait_for(
        "the slow restore to finish",
        Duration::from_secs(180),
        &[&b],
        || b.get("/readyz").is_some_and(|(c, _)| c == 200) && assigned(&b).len() == 2,
    );
    assert!(
        started.elapsed() > Duration::from_secs(12),
        "the restore outlasted max.poll.interval.ms ({:?})",
        started.elapsed()
    );
    let restored = metric(&b, "strata_restore_records_total", &[]);
    let log = b.log_text();
    assert!(
        !log.to_lowercase().contains("maximum poll interval"),
        "the member left the group:\n{log}"
    );
    assert!(
        restored <= records * 1.1,
        "restored {restored} records of a changelog of {records}: once, not twice"
    );
    assert!(restored >= records * 0.9);
    assert!(b.terminate());
    // SIGTERM in the middle of a restore.
    let c = Strata::start_env(&s.config("c"), s.dir.path(), "c", &env);
    wait_for(
        "a restore under way",
        Duration::from_secs(60),
        &[&c],
        || metric(&c, "strata_restore_records_total", &[]) > 10.0,
    );
    let t0 = Instant::now();
    assert!(c.terminate(), "exits 0 on SIGTERM during a restore");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        t0.elapsed()
    );
    let day = last_day(&file);
    assert_eq!(
        sorted_dump(&s.state("b"), &day),
        global_dump(&s, &file, &day)
    );
}

/// Fault 5: Messages keyed by another customer, or not keyed, are dead letters
/// (`key_mismatch`, `missing_key`), so no customer is split across partitions;
/// `kafka.check_keys = false` applies them.
#[test]
fn mis_keyed_messages_are_dead_lettered() {
    let _serial = serial();
    let s = Setup::new(&[2, 2, 2]);
    let ev = |i: u32, c: &str| {
        format!(
            r#"{{"event_id":"e{i}","customer_id":"{c}","ts":"2026-03-{:02}T10:00:00Z","amount":{}.5}}"#,
            1 + i % 28,
            10 + i
        )
    };
    let mut recs: Vec<(String, Option<String>, Vec<u8>)> = (0..30)
        .map(|i| {
            let c = format!("c{}", i % 6);
            (s.inputs[0].clone(), Some(c.clone()), ev(i, &c).into_bytes())
        })
        .collect();
    // B's event keyed as A's (another partition), and two without a usable key.
    let (a_id, b_id) = {
        let ids: Vec<String> = (0..).map(|i| format!("k{i}")).take(50).collect();
        let a = ids
            .iter()
            .find(|i| strata::cluster::partition_of(i.as_bytes(), 2) == 0)
            .unwrap()
            .clone();
        let b = ids
            .iter()
            .find(|i| strata::cluster::partition_of(i.as_bytes(), 2) == 1)
            .unwrap()
            .clone();
        (a, b)
    };
    recs.push((
        s.inputs[0].clone(),
        Some(a_id.clone()),
        ev(100, &b_id).into_bytes(),
    ));
    recs.push((s.inputs[0].clone(), None, ev(101, "c1").into_bytes()));
    recs.push((
        s.inputs[0].clone(),
        Some(String::new()),
        ev(102, "c2").into_bytes(),
    ));
    produce(brokers(), &recs);
    let mut a = Strata::start(&s.config("a"), s.dir.path(), "a");
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    let metrics = a.get("/metrics").unwrap().1;
    assert!(a.terminate());
    let mut reasons: Vec<(String, String)> = read_topic(brokers(), &s.dead_letter, false)
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            let raw: Value = serde_json::from_str(v["raw"].as_str().unwrap()).unwrap();
            (
                v["reason"].as_str().unwrap().to_string(),
                raw["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("key_mismatch".to_string(), "e100".to_string()),
            ("missing_key".to_string(), "e101".to_string()),
            ("missing_key".to_string(), "e102".to_string()),
        ]
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "strata_events_rejected_total",
            &[("reason", "key_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "strata_events_rejected_total",
            &[("reason", "missing_key")]
        ),
        2.0
    );
    assert_eq!(
        metric_sum(&metrics, "strata_events_consumed_total", &[]),
        30.0
    );
    // The state is that of the well-keyed events alone; B was never applied.
    let good: Vec<String> = recs[..30]
        .iter()
        .map(|(_, _, v)| {
            String::from_utf8(v.clone())
                .unwrap()
                .replacen('{', r#"{"type":"purchase","#, 1)
        })
        .collect();
    let file = s.dir.path().join("good.jsonl");
    write_lines(&file, &good);
    let oracle = s.dir.path().join("good-replay");
    replay(&oracle, &[&file], FIXED);
    let run = sorted_dump(&s.state("a"), "2026-03-28");
    assert!(!run.iter().any(|c| c["customer_id"] == b_id.as_str()));
    assert_eq!(run, sorted_dump(&oracle, "2026-03-28"));
    // Checks off: the same messages are applied.
    let b = Strata::start_env(
        &s.config("b"),
        s.dir.path(),
        "b",
        &[
            ("STRATA_KAFKA__CHECK_KEYS", "false"),
            // A service of its own: its group, changelog and stats.
            ("STRATA_KAFKA__GROUP_ID", &format!("{}-unchecked", s.group)),
            (
                "STRATA_KAFKA__TOPICS__DEAD_LETTER",
                &format!("{}-unchecked-dead", s.group),
            ),
            (
                "STRATA_KAFKA__TOPICS__CHANGELOG",
                &format!("{}-unchecked-changelog", s.group),
            ),
            (
                "STRATA_KAFKA__TOPICS__STATS",
                &format!("{}-unchecked-stats", s.group),
            ),
        ],
    );
    wait_for(
        "all 33 events consumed",
        Duration::from_secs(60),
        &[&b],
        || consumed(&b) == 33.0,
    );
    assert!(b.terminate());
}

/// Corrupt partition 0's store the way a newer release would have written it (a
/// customer record of an unknown codec version), and make partition 1's unopenable
/// (its RocksDB CURRENT file garbage).
fn corrupt_stores(state: &Path) {
    use strata::store::{Batch, Cf, Store};
    let p0 = state.join("partitions").join("0");
    let store = strata::store::rocks::RocksStore::open(&p0, 8, 4).unwrap();
    let mut b = Batch::default();
    b.put(Cf::Customers, b"c-from-the-future", vec![99, 1, 2, 3]);
    // The first key of the scan at open.
    b.put(Cf::Customers, b"!first", vec![99]);
    store.write(b).unwrap();
    drop(store);
    std::fs::write(
        state.join("partitions").join("1").join("CURRENT"),
        b"garbage\n",
    )
    .unwrap();
}

/// Fault 6: A partition store that cannot be opened or read is moved aside
/// (`partitions/<p>.corrupt-<time>`, an ERROR) and restored from the changelog,
/// instead of crash-looping the instance; and the state dir of a partition handed
/// to another instance is deleted `kafka.state_cleanup_delay_ms` later.
#[test]
fn a_corrupt_store_is_moved_aside_and_a_released_one_cleaned_up() {
    let _serial = serial();
    let mut s = Setup::new(&[2, 2, 2]);
    s.session_timeout_ms = 30_000;
    let file = s.generate(500, 200, 29, "2026-01-01");
    let (early, late) = split_at_day(&file, "2026-06-01");
    let late_parts = split_lines(&late, 2);
    s.produce_file(&early);
    let cfg = s.config("a");
    let mut a = Strata::start(&cfg, s.dir.path(), "a1");
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    assert!(a.terminate());
    corrupt_stores(&s.state("a"));
    s.produce_file(&late_parts[0]);
    let cleanup = [("STRATA_KAFKA__STATE_CLEANUP_DELAY_MS", "3000")];
    let mut a = Strata::start_env(&cfg, s.dir.path(), "a2", &cleanup);
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    assert!(alive(&mut a));
    assert_eq!(metric(&a, "strata_partitions_corrupt_total", &[]), 2.0);
    let moved: Vec<String> = std::fs::read_dir(s.state("a").join("partitions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(
        moved.iter().any(|n| n.starts_with("0.corrupt-"))
            && moved.iter().any(|n| n.starts_with("1.corrupt-"))
    );
    let errors = a
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("unreadable: moved aside"))
        .count();
    assert_eq!(errors, 2);
    // A second instance takes a partition over: A's dir of it goes after 3 s.
    let b = Strata::start_env(&s.config("b"), s.dir.path(), "b", &cleanup);
    wait_for(
        "the group to split the partitions",
        Duration::from_secs(90),
        &[&a, &b],
        || assigned(&a).len() == 1 && assigned(&b).len() == 1,
    );
    let gone = assigned(&b)[0];
    let kept = assigned(&a)[0];
    wait_for(
        "the released dir to be deleted",
        Duration::from_secs(60),
        &[&a],
        || {
            !s.state("a")
                .join("partitions")
                .join(gone.to_string())
                .exists()
        },
    );
    assert!(s
        .state("a")
        .join("partitions")
        .join(kept.to_string())
        .exists());
    assert!(metric(&a, "strata_state_dirs_removed_total", &[]) >= 1.0);
    s.produce_file(&late_parts[1]);
    let mut b = b;
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a, &mut b]);
    assert!(a.terminate() && b.terminate());
    let combined = crate::kafka::combine(&s, &[("a", vec![kept]), ("b", vec![gone])]);
    let (oracle, _) = s.oracle();
    let run = s.outputs();
    assert_outputs_cover_oracle(&run, &oracle);
    assert_at_most_twice(&run);
    let day = last_day(&file);
    assert_eq!(sorted_dump(&combined, &day), global_dump(&s, &file, &day));
    // `state dump` of a dir holding moved-aside stores reads the live one only.
    let ids: Vec<String> = dump(&s.state("a"), Some(&day), FIXED)
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.is_empty());
    assert!(
        ids.iter()
            .all(|id| strata::cluster::partition_of(id.as_bytes(), 2) as i64 == kept),
        "customers of the moved-aside stores were dumped"
    );
}

/// Fault 7: An event stamped in the year 9999 would move the event clock there for good;
/// it is a `future_timestamp` dead letter, in replay and in run alike, and the rest
/// is applied as if it had never come.
#[test]
fn the_event_clock_cannot_jump_to_the_year_9999() {
    let _serial = serial();
    let s = Setup::new(&[2, 2, 2]);
    let file = s.generate(300, 120, 31, "2026-01-01");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let bogus = r#"{"event_id":"bogus","customer_id":"c-bogus","type":"purchase","ts":"9999-12-31T00:00:00Z","amount":5}"#;
    let mut with: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    with.insert(lines.len() / 2, bogus.to_string());
    let poisoned = s.dir.path().join("with-bogus.jsonl");
    write_lines(&poisoned, &with);
    // replay
    let t0 = Instant::now();
    let (_, dead, _) = replay(&s.dir.path().join("r"), &[&poisoned], FIXED);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "no walk over millions of days"
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "future_timestamp");
    let day = last_day(&file);
    assert_eq!(
        sorted_dump(&s.dir.path().join("r"), &day),
        global_dump(&s, &file, &day)
    );
    // run
    s.produce_file(&poisoned);
    let mut a = Strata::start(&s.config("a"), s.dir.path(), "a");
    s.wait_caught_up(Duration::from_secs(120), &mut [&mut a]);
    let metrics = a.get("/metrics").unwrap().1;
    assert!(a.terminate());
    assert_eq!(
        metric_sum(
            &metrics,
            "strata_events_rejected_total",
            &[("reason", "future_timestamp")]
        ),
        1.0
    );
    let dead = read_topic(brokers(), &s.dead_letter, false);
    assert_eq!(dead.len(), 1);
    assert_oracle_without_dead(&s, &file, &day);
}

fn assert_oracle_without_dead(s: &Setup, file: &Path, day: &str) {
    assert_eq!(sorted_dump(&s.state("a"), day), global_dump(s, file, day));
}

/// Fault 8: `config check` never prints secrets: the token and `[kafka.client]`
/// passwords, secrets, keys and JAAS configs show as "***"; dotted librdkafka
/// properties are set from the environment with `_` for `.`.
#[test]
fn secrets_are_never_printed_and_env_names_dotted_properties() {
    let dir = tempdir();
    let cfg = dir.path().join("strata.toml");
    std::fs::write(
        &cfg,
        r#"
[http]
token = "s3cret-token"
[kafka.client]
"security.protocol" = "SASL_SSL"
"sasl.username" = "strata"
"sasl.password" = "file-password"
"ssl.key.password" = "key-password"
"sasl.jaas.config" = "jaas-secret"
"#,
    )
    .unwrap();
    let out = strata()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .env("STRATA_KAFKA__CLIENT__SASL_PASSWORD", "env-password")
        .env("STRATA_KAFKA__CLIENT__MESSAGE_TIMEOUT_MS", "1234")
        .env(
            "STRATA_KAFKA__CLIENT__SASL_OAUTHBEARER_CLIENT_SECRET",
            "oauth-secret",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    for secret in [
        "s3cret-token",
        "file-password",
        "env-password",
        "key-password",
        "jaas-secret",
        "oauth-secret",
    ] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
    let v: toml::Value = toml::from_str(&text).unwrap();
    let client = &v["kafka"]["client"];
    assert_eq!(v["http"]["token"].as_str(), Some("***"));
    for k in [
        "sasl.password",
        "ssl.key.password",
        "sasl.jaas.config",
        "sasl.oauthbearer.client.secret",
    ] {
        assert_eq!(client[k].as_str(), Some("***"), "{k}");
    }
    assert_eq!(client["sasl.username"].as_str(), Some("strata"));
    assert_eq!(
        client["message.timeout.ms"].as_str(),
        Some("1234"),
        "set from the environment"
    );
    assert!(client.get("message_timeout_ms").is_none() && client.get("sasl").is_none());
}

/// A raw HTTP/1.1 connection to `addr`.
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until the server closes (or the read times out): what it sent.
fn read_all(mut s: TcpStream) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = s.read_to_end(&mut buf).is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// Fault 9: A slow or flooding HTTP client cannot hold the service: a connection that
/// does not send its header in time is closed, connections over the cap are
/// answered 503, an over-long path 414, and shutdown does not wait for them.
#[test]
fn slow_and_flooding_http_clients_cannot_hold_the_service() {
    let dir = tempdir();
    let port = crate::broker::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = strata()
        .args(["demo", "--customers", "50", "--days", "30", "--serve"])
        .env("STRATA_HTTP__LISTEN", &addr)
        .env("STRATA_HTTP__MAX_CONNECTIONS", "4")
        .env("STRATA_HTTP__HEADER_READ_TIMEOUT_MS", "700")
        .env("STRATA_HTTP__MAX_PATH_BYTES", "256")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&addr, "/healthz", None).is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "the demo did not serve");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Four idle connections fill the cap: a fifth is answered 503 at once.
    let idle: Vec<TcpStream> = (0..4).map(|_| connect(&addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (reply, _) = read_all(connect(&addr));
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("http.max_connections"));
    // They send nothing: closed after the header timeout, and the service serves.
    let t0 = Instant::now();
    for s in idle {
        let (_, closed) = read_all(s);
        assert!(closed, "an idle connection was closed by the server");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed after the header timeout ({:?})",
        t0.elapsed()
    );
    assert_eq!(http_get(&addr, "/healthz", None).unwrap().0, 200);
    // A header trickling in a byte at a time is cut off too.
    let mut slow = connect(&addr);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"X").is_err() {
            cut = true;
            break;
        }
    }
    let (got, _) = read_all(slow);
    assert!(
        cut || !got.contains("200 OK"),
        "a slowloris header was served: {got}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // An over-long path.
    let long = format!("/v1/customers/{}", "x".repeat(400));
    assert_eq!(http_get(&addr, &long, None).unwrap().0, 414);
    // Shutdown with slow clients connected.
    let _held: Vec<TcpStream> = (0..4).map(|_| connect(&addr)).collect();
    unsafe {
        libc::kill(demo.id() as i32, libc::SIGINT);
    }
    let t0 = Instant::now();
    loop {
        if let Some(st) = demo.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "shutdown waited for slow clients"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
