//! Partitioned replay (`engine.partitions`): the same outputs per customer, the same
//! dump and summary as one store, population statistics exact (means, Pareto
//! cut-offs, the model fit, CLV cut-offs), a deterministic output file, the layout
//! `run` keeps.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use strata::store::rocks::RocksStore;
use strata::store::{Cf, Store};

use crate::util::*;

/// Each customer's outputs in the order they were written.
fn per_customer(outs: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in outs {
        m.entry(o["customer_id"].as_str().unwrap().to_string())
            .or_default()
            .push(serde_json::to_string(o).unwrap());
    }
    m
}

/// The summary's figures (stderr's two lines without the timing).
fn summary_figures(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("replayed ") || l.starts_with("customers: "))
        .map(|l| match l.split_once(" in ") {
            Some((head, rest)) if l.starts_with("replayed ") => {
                format!("{head} {}", rest.split_once("): ").map_or("", |x| x.1))
            }
            _ => l.to_string(),
        })
        .collect()
}

fn replay_with(
    dir: &Path,
    tag: &str,
    input: &Path,
    partitions: u32,
    env: &[(&str, &str)],
) -> (Vec<Value>, Vec<Value>, String) {
    let n = partitions.to_string();
    let mut env = env.to_vec();
    env.push(("STRATA_ENGINE__PARTITIONS", &n));
    let state = dir.join(tag);
    let (outs, dead, stderr) = replay(&state, &[input], &env);
    assert!(dead.is_empty());
    (outs, dump(&state, None, &env), stderr)
}

fn assert_same_as_one_store(env: &[(&str, &str)], customers: u32, days: u32, seed: u32) {
    let tmp = tempdir();
    let input = generate(tmp.path(), "g.jsonl", customers, days, seed, "2024-03-01");
    let (one, one_dump, one_err) = replay_with(tmp.path(), "one", &input, 1, env);
    assert!(!one.is_empty() && !one_dump.is_empty());
    for n in [8, 3] {
        let (outs, d, err) = replay_with(tmp.path(), &format!("p{n}"), &input, n, env);
        assert_eq!(outs.len(), one.len(), "{n} partitions: output count");
        let (a, b) = (per_customer(&one), per_customer(&outs));
        assert_eq!(a.len(), b.len());
        for (id, seq) in &a {
            assert_eq!(Some(seq), b.get(id), "{n} partitions: outputs of {id}");
        }
        assert_eq!(d, one_dump, "{n} partitions: the dump");
        assert_eq!(summary_figures(&err), summary_figures(&one_err));
    }
}

/// Population thresholds (means, Pareto), recalibrated daily; events of the first
/// day under live means; the model fitted weekly over the merged partitions.
#[test]
fn partitioned_replay_equals_one_store() {
    assert_same_as_one_store(
        &[
            ("STRATA_PREDICT__MIN_REPEAT_CUSTOMERS", "40"),
            ("STRATA_PREDICT__REFIT_EVERY_DAYS", "7"),
        ],
        2500,
        150,
        21,
    );
}

/// Value tiers by predicted CLV: cut-offs over every partition's customers.
#[test]
fn partitioned_replay_with_clv_tiers_equals_one_store() {
    assert_same_as_one_store(
        &[
            ("STRATA_PREDICT__MIN_REPEAT_CUSTOMERS", "40"),
            ("STRATA_VALUE_TIERS__METHOD", "clv"),
            ("STRATA_ENGINE__RECALIBRATE_EVERY_DAYS", "5"),
        ],
        1500,
        120,
        5,
    );
}

/// The output file is the same bytes for the same input; customers are placed as
/// Kafka's default partitioner places their keys (the layout `run` keeps, so a
/// replayed state dir can seed a `run`).
#[test]
fn partitioned_replay_is_deterministic_and_laid_out_as_run() {
    let tmp = tempdir();
    let input = generate(tmp.path(), "g.jsonl", 1200, 90, 8, "2024-06-01");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    replay(&a, &[&input], &[]);
    replay(&b, &[&input], &[]);
    let bytes = |s: &str| std::fs::read(tmp.path().join(format!("{s}.out.jsonl"))).unwrap();
    assert!(!bytes("a").is_empty());
    assert_eq!(bytes("a"), bytes("b"));
    let mut total = 0;
    for p in 0..8 {
        let store = RocksStore::open(&strata::cluster::partition_dir(&a, p), 8, 4).unwrap();
        let mut n = 0;
        store
            .scan(Cf::Customers, &[], None, &mut |k, _| {
                assert_eq!(strata::cluster::partition_of(k, 8), p);
                n += 1;
                Ok(true)
            })
            .unwrap();
        assert!(n > 0, "partition {p} holds customers");
        total += n;
    }
    assert_eq!(total, dump(&a, None, &[]).len());
}

/// A state dir of another partition count is refused with the key to set; one
/// written as a single store by an earlier strata goes on as one partition.
#[test]
fn partition_layouts_are_checked_and_the_earlier_one_goes_on() {
    let tmp = tempdir();
    let input = generate(tmp.path(), "g.jsonl", 800, 80, 3, "2024-06-01");
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let (f1, f2) = (tmp.path().join("1.jsonl"), tmp.path().join("2.jsonl"));
    write_lines(&f1, first);
    write_lines(&f2, second);

    let state = tmp.path().join("state");
    replay(&state, &[&f1], &[]);
    let o = strata()
        .args(["replay", "--input"])
        .arg(&f2)
        .arg("--state-dir")
        .arg(&state)
        .args(["--out", "/dev/null"])
        .env("STRATA_ENGINE__PARTITIONS", "4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("holds 8 partitions") && err.contains("engine.partitions"),
        "{err}"
    );

    // The earlier layout: one store at the top of the state dir.
    let one = [("STRATA_ENGINE__PARTITIONS", "1")];
    let old = tmp.path().join("old");
    replay(&tmp.path().join("seed"), &[&f1], &one);
    std::fs::rename(tmp.path().join("seed").join("partitions").join("0"), &old).unwrap();
    let (_, _, stderr) = replay(&old, &[&f2], &[]);
    let whole = tmp.path().join("whole");
    replay(&whole, &[&f1, &f2], &one);
    assert!(old.join("CURRENT").exists() && !old.join("partitions").exists());
    assert_eq!(dump(&old, None, &[]), dump(&whole, None, &[]), "{stderr}");
}
