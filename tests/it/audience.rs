//! Audiences: `state summary` and `state dump --where` against the dump as the
//! reference; the in-force view behind `GET /v1/customers/{id}` against the tiers
//! the engine published; export pages against the in-force view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use strata::audience::{self, Cursor, Filter};
use strata::config::{Clock, Config, Settings};
use strata::store::rocks::RocksStore;
use strata::store::Union;

use crate::util::*;

/// The summary, added up here from the dump objects: customers and monetary per
/// tier (in micro-units, as strata adds them), customers at risk and by reason.
pub(crate) fn summary_of(dump: &[Value]) -> Value {
    let mut cells: BTreeMap<(String, String), (u64, i128)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut at_risk = 0;
    for d in dump {
        let micros = (d["monetary"].as_f64().unwrap() * 1e6).round() as i128;
        for dim in ["rfm_segment", "value_tier", "lifecycle"] {
            let c = cells
                .entry((dim.into(), d[dim].as_str().unwrap().into()))
                .or_default();
            c.0 += 1;
            c.1 += micros;
        }
        let risk = d["churn_risk"].as_array().unwrap();
        at_risk += !risk.is_empty() as u64;
        for r in risk {
            *reasons.entry(r.as_str().unwrap().into()).or_default() += 1;
        }
    }
    let mut dims = serde_json::Map::new();
    for ((dim, tier), (n, micros)) in cells {
        dims.entry(dim)
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()
            .unwrap()
            .insert(
                tier,
                serde_json::json!({"customers": n, "monetary": micros as f64 / 1e6}),
            );
    }
    serde_json::json!({"customers": dump.len(), "dimensions": dims, "at_risk": {"customers": at_risk, "by_reason": reasons}})
}

/// `want`'s every number is in `got` (which also lists the empty tiers, as zeros).
pub(crate) fn assert_summary_covers(got: &Value, want: &Value) {
    assert_eq!(got["customers"], want["customers"]);
    assert_eq!(got["at_risk"]["customers"], want["at_risk"]["customers"]);
    for (reason, n) in want["at_risk"]["by_reason"].as_object().unwrap() {
        assert_eq!(&got["at_risk"]["by_reason"][reason], n, "{reason}");
    }
    let mut listed = 0;
    for (dim, tiers) in got["dimensions"].as_object().unwrap() {
        for (tier, cell) in tiers.as_object().unwrap() {
            listed += 1;
            let w = &want["dimensions"][dim][tier];
            if w.is_null() {
                assert_eq!(cell["customers"], 0, "{dim}/{tier}");
                continue;
            }
            assert_eq!(cell["customers"], w["customers"], "{dim}/{tier}");
            let (g, w) = (
                cell["monetary"].as_f64().unwrap(),
                w["monetary"].as_f64().unwrap(),
            );
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{dim}/{tier}: {g} vs {w}"
            );
        }
    }
    assert_eq!(listed, 9 + 3 + 7, "every tier listed, empty ones too");
}

#[test]
fn summary_and_where_are_the_dump_added_up_and_filtered() {
    let tmp = tempdir();
    let file = generate(tmp.path(), "g.jsonl", 800, 240, 5, "2025-01-01");
    let state = tmp.path().join("state");
    replay(&state, &[&file], &[]);
    for as_of in [None, Some("2025-06-15")] {
        let d = dump(&state, as_of, &[]);
        let mut cmd = strata();
        cmd.args(["state", "summary", "--state-dir"]).arg(&state);
        if let Some(day) = as_of {
            cmd.args(["--as-of", day]);
        }
        let got: Value = serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap();
        assert_eq!(got["as_of"], d[0]["as_of"]);
        assert_summary_covers(&got, &summary_of(&d));
    }

    let d = dump(&state, None, &[]);
    let filtered = |wheres: &[&str]| {
        let mut cmd = strata();
        cmd.args(["state", "dump", "--state-dir"]).arg(&state);
        for w in wheres {
            cmd.args(["--where", w]);
        }
        json_lines(&run_ok(&mut cmd).stdout)
    };
    let mut nonempty = 0;
    for wheres in [
        &["rfm_segment=important_retain"][..],
        &["value_tier=high"],
        &["lifecycle=repeat"],
        &["churn_risk=overdue"],
        &["churn_risk=overdue", "value_tier=high"],
    ] {
        let want: Vec<&Value> = d
            .iter()
            .filter(|r| {
                wheres.iter().all(|w| {
                    let (dim, tier) = w.split_once('=').unwrap();
                    match &r[dim] {
                        Value::Array(a) => a.iter().any(|v| v == tier),
                        v => v == tier,
                    }
                })
            })
            .collect();
        let got = filtered(wheres);
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{wheres:?}");
        assert!(want.len() < d.len(), "{wheres:?} leaves customers out");
        nonempty += !want.is_empty() as usize;
    }
    assert!(nonempty >= 4, "the filters select customers");

    // A wrong filter names what would be right.
    let o = strata()
        .args(["state", "dump", "--where", "rfm_segment=vip", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("important_retain"),
        "{err}"
    );
}

/// A replay's state dir: one store per partition, read as one.
fn open(state: &Path) -> (Arc<Settings>, Union<RocksStore>) {
    let s = Arc::new(Settings::new(Config::load(None).unwrap(), Clock::Event).unwrap());
    let n = s.raw.engine.partitions as i32;
    let stores = (0..n)
        .map(|p| RocksStore::open(&strata::cluster::partition_dir(state, p), 16, 8).unwrap())
        .collect();
    (s, Union(stores))
}

/// With population thresholds (means, Pareto), recalibrated daily: every
/// customer's in-force answer has the tiers of their last `tier_changed`, and an
/// export pages through exactly the customers whose answer is in the tier.
#[test]
fn in_force_answers_are_the_published_tiers_and_exports_page_through_them() {
    let tmp = tempdir();
    let file = generate(tmp.path(), "g.jsonl", 1500, 200, 11, "2025-02-01");
    let state = tmp.path().join("state");
    let (outs, _, _) = replay(&state, &[&file], &[]);
    let mut published: BTreeMap<String, Value> = BTreeMap::new();
    for o in outs.iter().filter(|o| o["type"] == "tier_changed") {
        published.insert(o["customer_id"].as_str().unwrap().into(), o["to"].clone());
    }
    let exact = dump(&state, None, &[]);
    let (s, store) = open(&state);
    let mut differs_from_exact = 0;
    let mut answers = Vec::new();
    for e in &exact {
        let id = e["customer_id"].as_str().unwrap();
        let r = audience::get_in_force(&store, &s, id).unwrap().unwrap();
        let v = serde_json::to_value(&r).unwrap();
        for dim in ["rfm_segment", "value_tier", "lifecycle"] {
            assert_eq!(v[dim], published[id][dim], "{id} {dim}");
        }
        assert_eq!(v["as_of"], e["as_of"], "evaluated at the stored clock");
        differs_from_exact +=
            (v["rfm_segment"] != e["rfm_segment"] || v["value_tier"] != e["value_tier"]) as usize;
        answers.push(v);
    }
    assert_eq!(answers.len(), published.len());
    eprintln!(
        "{differs_from_exact} of {} customers are tiered otherwise by the exact dump",
        exact.len()
    );
    assert!(audience::get_in_force(&store, &s, "nobody")
        .unwrap()
        .is_none());

    // Exports: small pages, each cursor asked twice (stable), every customer of
    // the tier exactly once, in id order.
    for (dim, tier) in [
        ("rfm_segment", "important_value"),
        ("value_tier", "medium"),
        ("churn_risk", "overdue"),
    ] {
        let f = Filter::new(dim, tier).unwrap();
        let want: Vec<String> = answers
            .iter()
            .filter(|v| match &v[dim] {
                Value::Array(a) => a.iter().any(|x| x == tier),
                x => x == tier,
            })
            .map(|v| v["customer_id"].as_str().unwrap().to_string())
            .collect();
        assert!(!want.is_empty(), "{dim}={tier} has customers");
        let stores = [(0, &store)];
        let (mut got, mut cursor, mut pages) = (Vec::new(), None::<Cursor>, 0);
        loop {
            let page = audience::page(&stores, &s, &f, cursor.as_ref(), 13).unwrap();
            let again = audience::page(&stores, &s, &f, cursor.as_ref(), 13).unwrap();
            assert_eq!(page.customers, again.customers);
            assert!(page.customers.len() <= 13);
            got.extend(page.customers.iter().map(|r| r.customer_id.clone()));
            pages += 1;
            match page.next {
                Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(got, want, "{dim}={tier}");
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), got.len());
        assert!(pages >= want.len() / 13, "{pages} pages");
    }
}
