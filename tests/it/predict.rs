//! Predictions on real data: the CDNOW sample replayed and fitted end to end
//! against the published parameters, the holdout period, the `p_alive` rule from
//! the timer alone, and a fit over merged partitions equal to a one-partition fit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDate;
use proptest::prelude::*;
use serde_json::{json, Value};

use strata::config::Settings;
use strata::event::{Event, EventKind};
use strata::predict::model::{self, Histogram};
use strata::processor::{Audit, Processor};
use strata::store::MemStore;

use crate::util::*;

/// CDNOW_sample.txt (the `lifetimes` wheel): customer, sample id, YYYYMMDD, CDs,
/// dollars. Returns (customer, day string, dollars) per line.
fn cdnow_sample() -> Vec<(String, NaiveDate, f64)> {
    std::fs::read_to_string(repo_file("tests/data/CDNOW_sample.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (
                c[0].to_string(),
                NaiveDate::parse_from_str(c[2], "%Y%m%d").unwrap(),
                c[4].parse().unwrap(),
            )
        })
        .collect()
}

/// The sample's purchases up to `end` as events, in time order (the file is by
/// customer), as a stream would deliver them.
fn cdnow_lines(rows: &[(String, NaiveDate, f64)], end: NaiveDate) -> Vec<String> {
    let mut ordered: Vec<(usize, &(String, NaiveDate, f64))> = rows.iter().enumerate().collect();
    ordered.sort_by_key(|(i, (_, d, _))| (*d, *i));
    ordered
        .into_iter()
        .filter(|(_, (_, d, _))| *d <= end)
        .map(|(i, (c, d, amount))| {
            json!({
                "event_id": format!("s{i}"),
                "customer_id": c,
                "type": "purchase",
                "ts": format!("{d}T12:00:00Z"),
                "amount": amount,
            })
            .to_string()
        })
        .collect()
}

fn fit_json(state: &std::path::Path, as_of: &str, env: &[(&str, &str)]) -> Value {
    let mut cmd = strata();
    cmd.args(["model", "fit", "--as-of", as_of, "--state-dir"])
        .arg(state);
    for (k, v) in env {
        cmd.env(k, v);
    }
    serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
}

fn within(got: f64, want: f64, rel: f64) -> bool {
    ((got - want) / want).abs() <= rel
}

/// Replay the sample's purchases up to 1997-09-30 (the paper's 39-week
/// calibration period), fit as of that day: r, a, b and α/7 (strata's α is in
/// days, the paper's in weeks) within 2 % of Fader, Hardie & Lee (2005). Then the
/// holdout: the expected repeat purchase days of 1997-10-01 … 1998-06-30 (273
/// days), summed over customers, against the actual ones (within 20 %).
#[test]
fn cdnow_sample_replayed_and_fitted_matches_the_paper() {
    let tmp = tempdir();
    let rows = cdnow_sample();
    let end = NaiveDate::from_ymd_opt(1997, 9, 30).unwrap();
    let lines = cdnow_lines(&rows, end);
    let input = tmp.path().join("calibration.jsonl");
    write_lines(&input, &lines);
    let state = tmp.path().join("state");
    replay(&state, &[&input], &[]);

    let fit = fit_json(&state, "1997-09-30", &[]);
    eprintln!("CDNOW sample, fit as of 1997-09-30: {fit}");
    assert_eq!(fit["customers"], 2357);
    assert_eq!(fit["as_of"], "1997-09-30");
    let bg = &fit["bgnbd"];
    let f = |k: &str| bg[k].as_f64().unwrap();
    for (name, got, want) in [
        ("r", f("r"), 0.243),
        ("alpha / 7", f("alpha") / 7.0, 4.414),
        ("a", f("a"), 0.793),
        ("b", f("b"), 2.426),
    ] {
        assert!(
            within(got, want, 0.02),
            "{name}: {got} vs the paper's {want}"
        );
    }
    let gg = &fit["gamma_gamma"];
    assert!(gg["customers"].as_u64().unwrap() > 900, "{gg}");
    for k in ["p", "q", "gamma"] {
        assert!(gg[k].as_f64().unwrap() > 0.0);
    }
    // `model show` has the engine's own fit (its last refit, at most
    // predict.refit_every_days before the clock), stored in the state.
    let show = run_ok(strata().args(["model", "show", "--state-dir"]).arg(&state));
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    let shown_r = shown["bgnbd"]["r"].as_f64().unwrap();
    assert!(within(shown_r, f("r"), 0.05), "{shown} vs {fit}");

    // Holdout.
    let env = [("STRATA_PREDICT__HORIZON_DAYS", "273")];
    let dumped = dump(&state, Some("1997-09-30"), &env);
    assert_eq!(dumped.len(), 2357);
    let predicted: f64 = dumped
        .iter()
        .map(|d| d["expected_purchases"].as_f64().unwrap())
        .sum();
    let holdout_end = NaiveDate::from_ymd_opt(1998, 6, 30).unwrap();
    let actual = rows
        .iter()
        .filter(|(_, d, _)| *d > end && *d <= holdout_end)
        .map(|(c, d, _)| (c.clone(), *d))
        .collect::<BTreeSet<_>>()
        .len() as f64;
    eprintln!(
        "holdout 1997-10-01…1998-06-30: expected {predicted:.1} repeat purchase days, actual {actual}"
    );
    // The model under-forecasts this holdout by 12–15 % (1,653 expected with the
    // exact 1997-09-30 fit, 1,598 with the engine's last refit on 1997-09-25,
    // against 1,882): README "Predictions".
    assert!(
        within(predicted, actual, 0.2),
        "expected {predicted} vs actual {actual}"
    );
}

/// A customer who bought twice and then went silent: the `p_alive` warning comes
/// from the timer alone on the first day P(alive) < 0.3 (computed here from the
/// parameters in force and the customer's history), and a purchase ends it.
#[test]
fn p_alive_fires_from_the_timer_on_the_day_it_crosses() {
    let tmp = tempdir();
    let stream_end = NaiveDate::from_ymd_opt(1998, 6, 30).unwrap();
    let mut lines = cdnow_lines(&cdnow_sample(), stream_end);
    let purchase = |id: &str, day: &str| {
        json!({"event_id": id, "customer_id": "silent", "type": "purchase",
               "ts": format!("{day}T10:00:00Z"), "amount": 40.0})
        .to_string()
    };
    // Added at their place in time (the lines are in time order).
    let insert = |lines: &mut Vec<String>, line: String| {
        let ts = |l: &str| serde_json::from_str::<Value>(l).unwrap()["ts"].to_string();
        let at = lines.partition_point(|l| ts(l) <= ts(&line));
        lines.insert(at, line);
    };
    insert(&mut lines, purchase("q1", "1997-05-01"));
    insert(&mut lines, purchase("q2", "1997-05-05"));
    // One fit (once 600 customers have a repeat purchase day: 1997-04-23 here),
    // never refitted: the crossing day is a function of it alone. Overdue and
    // spend drop off, so the customer's only reason is p_alive.
    let env = [
        ("STRATA_PREDICT__MIN_REPEAT_CUSTOMERS", "600"),
        ("STRATA_PREDICT__REFIT_EVERY_DAYS", "100000"),
        ("STRATA_CHURN__OVERDUE", "false"),
        ("STRATA_CHURN__SPEND_DROP", "false"),
    ];
    let run = |name: &str, lines: &[String]| {
        let input = tmp.path().join(format!("{name}.jsonl"));
        write_lines(&input, lines);
        let state = tmp.path().join(name);
        let (outputs, _, _) = replay(&state, &[&input], &env);
        (state, outputs)
    };
    let (state, outputs) = run("silent", &lines);
    let shown: Value = serde_json::from_slice(
        &run_ok(
            strata()
                .args(["model", "show", "--state-dir"])
                .arg(&state)
                .envs(env),
        )
        .stdout,
    )
    .unwrap();
    let fitted_on =
        NaiveDate::parse_from_str(shown["as_of"].as_str().unwrap(), "%Y-%m-%d").unwrap();
    let first = NaiveDate::from_ymd_opt(1997, 5, 1).unwrap();
    assert!(
        fitted_on < first,
        "fitted on {fitted_on}, before the customer's purchases"
    );
    let bg = &shown["bgnbd"];
    let (r, alpha, a, b) = (
        bg["r"].as_f64().unwrap(),
        bg["alpha"].as_f64().unwrap(),
        bg["a"].as_f64().unwrap(),
        bg["b"].as_f64().unwrap(),
    );
    // x = 1, t_x = 4.
    let p_alive = |t: f64| 1.0 / (1.0 + a / b * ((alpha + t) / (alpha + 4.0)).powf(r + 1.0));
    let crossing_t = (4..100_000).find(|&t| p_alive(t as f64) < 0.3).unwrap();
    let crossing = first + chrono::Duration::days(crossing_t);
    assert!(
        crossing + chrono::Duration::days(10) <= stream_end,
        "the stream must outlast the crossing ({crossing})"
    );
    let mine: Vec<&Value> = outputs
        .iter()
        .filter(|o| o["customer_id"] == "silent" && o["type"] != "tier_changed")
        .collect();
    let warnings: Vec<&&Value> = mine
        .iter()
        .filter(|o| o["type"] == "churn_warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{mine:#?}");
    let w = warnings[0];
    assert_eq!(w["as_of"], crossing.to_string(), "{w}");
    assert_eq!(w["cause_event_id"], "timer", "{w}");
    assert_eq!(w["reasons"], json!(["p_alive"]));
    let t = &w["triggers"]["p_alive"];
    assert_eq!(
        (
            t["x"].clone(),
            t["t_x"].clone(),
            t["T"].clone(),
            t["threshold"].clone()
        ),
        (json!(1), json!(4), json!(crossing_t), json!(0.3))
    );
    let p = t["p_alive"].as_f64().unwrap();
    assert!((p - p_alive(crossing_t as f64)).abs() < 1e-12 && p < 0.3);

    // The same stream with a purchase ten days after the crossing: recovered.
    let back = crossing + chrono::Duration::days(10);
    insert(&mut lines, purchase("q3", &back.to_string()));
    let (_, outputs) = run("recovers", &lines);
    let mine: Vec<&Value> = outputs
        .iter()
        .filter(|o| o["customer_id"] == "silent" && o["type"] != "tier_changed")
        .collect();
    let kinds: Vec<(&str, &str)> = mine
        .iter()
        .map(|o| (o["type"].as_str().unwrap(), o["as_of"].as_str().unwrap()))
        .collect();
    let (c, bk) = (crossing.to_string(), back.to_string());
    assert_eq!(
        &kinds[..2],
        &[
            ("churn_warning", c.as_str()),
            ("churn_recovered", bk.as_str())
        ],
        "{mine:#?}"
    );
}

/// Random populations split over 2–4 partitions (processors on their own stores,
/// customers dealt by id): the merged histograms equal the one-partition
/// histogram, and so the fit over them equals the one-partition fit (to 1e-6
/// relative, as a cluster's refit must).
fn population() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0u16..300, 0i32..400, 1u64..20_000), 200..900).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (c, day, cents))| Event {
                event_id: format!("e{i}"),
                customer_id: format!("c{c}"),
                kind: EventKind::Purchase {
                    amount_micros: cents * 10_000,
                },
                ts_millis: (20_000 + day as i64) * 86_400_000,
                day: 20_000 + day,
            })
            .collect()
    })
}

/// The processors keep histograms but never fit (the fits are the test's).
fn settings() -> Arc<Settings> {
    let mut s = Settings::defaults();
    s.raw.predict.min_repeat_customers = u64::MAX;
    Arc::new(s)
}

fn histogram_of(events: &[Event]) -> (Histogram, Audit) {
    let store = MemStore::default();
    let mut p = Processor::open(settings(), &store).unwrap();
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.day);
    for e in &sorted {
        p.process(e).unwrap();
    }
    p.flush().unwrap();
    (p.histogram().clone(), p.audit().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn merged_partitions_fit_as_one(events in population(), parts in 2usize..5) {
        let (single, audit) = histogram_of(&events);
        prop_assert_eq!(audit, Audit::default());
        let mut by_part: BTreeMap<usize, Vec<Event>> = BTreeMap::new();
        for e in &events {
            let p = e.customer_id.bytes().map(|b| b as usize).sum::<usize>() % parts;
            by_part.entry(p).or_default().push(e.clone());
        }
        let mut merged = Histogram::default();
        for evs in by_part.values() {
            let (h, audit) = histogram_of(evs);
            prop_assert_eq!(audit, Audit::default());
            merged.merge(&h);
        }
        prop_assert_eq!(&merged, &single);
        let as_of = events.iter().map(|e| e.day).max().unwrap();
        let one = model::fit(&single, as_of, 10);
        let all = model::fit(&merged, as_of, 10);
        match (one, all) {
            (Ok(a), Ok(b)) => {
                let rel = |x: f64, y: f64| ((x - y) / y).abs();
                for (x, y) in [
                    (a.bgnbd.r, b.bgnbd.r),
                    (a.bgnbd.alpha, b.bgnbd.alpha),
                    (a.bgnbd.a, b.bgnbd.a),
                    (a.bgnbd.b, b.bgnbd.b),
                    (a.log_likelihood, b.log_likelihood),
                ] {
                    prop_assert!(rel(x, y) < 1e-6, "{:?} vs {:?}", a, b);
                }
            }
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "one fit failed: {:?} / {:?}", a, b),
        }
    }
}

/// `value_tiers.method = "clv"`: every customer's value tier is the Pareto tier of
/// their predicted CLV among everyone's (the dump's own `clv` column, cut here).
#[test]
fn clv_value_tiers_are_pareto_over_predicted_clv() {
    let tmp = tempdir();
    let end = NaiveDate::from_ymd_opt(1997, 9, 30).unwrap();
    let input = tmp.path().join("calibration.jsonl");
    write_lines(&input, &cdnow_lines(&cdnow_sample(), end));
    let state = tmp.path().join("state");
    let env = [("STRATA_VALUE_TIERS__METHOD", "clv")];
    replay(&state, &[&input], &env);
    for as_of in ["1997-09-30", "1997-12-31"] {
        let dumped = dump(&state, Some(as_of), &env);
        let micros = |d: &Value| d["clv"].as_f64().map_or(0, |v| (v * 1e6).round() as u64);
        let mut desc: Vec<u64> = dumped.iter().map(micros).filter(|&m| m > 0).collect();
        desc.sort_unstable_by(|a, b| b.cmp(a));
        let total: u128 = desc.iter().map(|&m| m as u128).sum();
        let cut = |share: f64| {
            let mut run = 0u128;
            desc.iter()
                .copied()
                .find(|&m| {
                    run += m as u128;
                    run as f64 >= share * total as f64
                })
                .unwrap()
        };
        let (high, medium) = (cut(0.8), cut(0.95));
        let mut tiers = BTreeMap::new();
        for d in &dumped {
            let m = micros(d);
            let want = if m == 0 {
                "low"
            } else if m >= high {
                "high"
            } else if m >= medium {
                "medium"
            } else {
                "low"
            };
            assert_eq!(d["value_tier"], want, "{as_of}: {d}");
            *tiers.entry(want).or_insert(0) += 1;
        }
        assert!(tiers.len() == 3, "all three tiers occur: {tiers:?}");
    }
}

/// The parameters live in the state: a processor opened again over the same store
/// has them in force at once and fits nothing.
#[test]
fn parameters_survive_a_restart_without_a_refit() {
    let s = {
        let mut s = Settings::defaults();
        s.raw.predict.min_repeat_customers = 100;
        Arc::new(s)
    };
    let store = MemStore::default();
    let mut p = Processor::open(s.clone(), &store).unwrap();
    let end = NaiveDate::from_ymd_opt(1997, 9, 30).unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let mut rows: Vec<(String, NaiveDate, f64)> = cdnow_sample()
        .into_iter()
        .filter(|(_, d, _)| *d <= end)
        .collect();
    rows.sort_by_key(|(_, d, _)| *d);
    for (i, (c, d, amount)) in rows.iter().enumerate() {
        let day = (*d - epoch).num_days() as i32;
        p.process(&Event {
            event_id: format!("s{i}"),
            customer_id: c.clone(),
            kind: EventKind::Purchase {
                amount_micros: (amount * 1e6).round() as u64,
            },
            ts_millis: day as i64 * 86_400_000,
            day,
        })
        .unwrap();
    }
    p.flush().unwrap();
    let fitted = p.model().expect("fitted");
    assert!(p.counters.model_fits > 10);
    drop(p);
    let again = Processor::open(s, &store).unwrap();
    assert_eq!(again.model(), Some(fitted));
    assert_eq!(again.counters.model_fits, 0);
}
