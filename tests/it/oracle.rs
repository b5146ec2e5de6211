//! The oracle: replay a messy stream, then compare `state dump --as-of` customer by
//! customer with every figure, score, tier and churn rule recomputed here, naively,
//! from the raw events (SPEC §1, §3, §4 with default config). Nothing here calls
//! engine code: days come from chrono with a fixed offset, money is integer cents,
//! means are floating-point, scores are counted by brute force. The predictions
//! (P(alive), expected purchases, spend, CLV and the `p_alive` rule) use the
//! parameters `strata model show` reports, with the papers' closed forms written
//! out here (the 2F1 series summed in place).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::util::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Purchase(i64),
    /// `intent`: the action is one of the default `lifecycle.intent_actions`.
    Interaction {
        intent: bool,
    },
    Complaint {
        high: bool,
    },
}

#[derive(Clone, Debug)]
struct Ev {
    customer: String,
    id: String,
    kind: Kind,
    day: i64,
}

fn epoch_day(d: NaiveDate) -> i64 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days()
}

fn day_str(day: i64) -> String {
    (NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(day)).to_string()
}

/// The day of a `ts` value in a zone with a fixed UTC offset (UTC, Asia/Shanghai).
fn day_of(ts: &Value, offset_hours: i32) -> i64 {
    let utc: DateTime<Utc> = match ts {
        Value::String(s) => DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc),
        Value::Number(n) => Utc.timestamp_millis_opt(n.as_i64().unwrap()).unwrap(),
        _ => panic!("ts {ts}"),
    };
    let off = FixedOffset::east_opt(offset_hours * 3600).unwrap();
    epoch_day(utc.with_timezone(&off).date_naive())
}

fn to_ev(v: &Value, offset_hours: i32) -> Ev {
    let kind = match v["type"].as_str().unwrap() {
        "purchase" => Kind::Purchase((v["amount"].as_f64().unwrap() * 100.0).round() as i64),
        "interaction" => Kind::Interaction {
            intent: ["inquiry", "quote", "trial", "add_to_cart"]
                .contains(&v["action"].as_str().unwrap_or("")),
        },
        "complaint" => Kind::Complaint {
            high: v["severity"].as_str() == Some("high"),
        },
        t => panic!("type {t}"),
    };
    Ev {
        customer: v["customer_id"].as_str().unwrap().to_string(),
        id: v["event_id"].as_str().unwrap().to_string(),
        kind,
        day: day_of(&v["ts"], offset_hours),
    }
}

#[derive(Debug, Clone)]
struct Figs {
    recency: Option<i64>,
    frequency: i64,
    monetary: i64,
    lifetime_purchases: i64,
    lifetime_monetary: i64,
    first: Option<i64>,
    last: Option<i64>,
    purchase_days: i64,
    mip: Option<f64>,
    interactions: i64,
    complaints: i64,
    high_complaints: i64,
    drop_recent: i64,
    drop_prev: i64,
    /// Cents spent on the first purchase day.
    first_day_spend: i64,
    /// An intent interaction in the last 30 days (`lifecycle.intent_days`).
    intent: bool,
}

/// The parameters in force, as `strata model show` prints them.
pub struct Params {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
    gg: Option<(f64, f64, f64)>,
}

/// `strata model show` of a state dir: `None` when no model is fitted.
pub fn model_show(state: &std::path::Path, env: &[(&str, &str)]) -> Option<Params> {
    let mut cmd = strata();
    cmd.args(["model", "show", "--state-dir"]).arg(state);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no model is fitted"), "{err}");
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = |o: &Value, k: &str| o[k].as_f64().unwrap();
    let bg = &v["bgnbd"];
    let gg = &v["gamma_gamma"];
    Some(Params {
        r: f(bg, "r"),
        alpha: f(bg, "alpha"),
        a: f(bg, "a"),
        b: f(bg, "b"),
        gg: (!gg.is_null()).then(|| (f(gg, "p"), f(gg, "q"), f(gg, "gamma"))),
    })
}

/// Σₖ (a)ₖ(b)ₖ/(c)ₖ zᵏ/k!, term by term until the terms stop mattering.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for k in 0..10_000_000 {
        let k = k as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum
}

/// (p_alive, expected purchases in 90 days, expected spend, CLV over 365 days) of
/// a customer with x repeat purchase days, the last t_x after the first, T days
/// since the first and mean repeat spend `m` (Fader, Hardie & Lee 2005 eq. 10 and
/// note 021; Fader & Hardie note 025).
fn predictions(p: &Params, x: f64, t_x: f64, t: f64, m: f64) -> [f64; 4] {
    let Params { r, alpha, a, b, .. } = *p;
    let odds = if x > 0.0 {
        a / (b + x - 1.0) * ((alpha + t) / (alpha + t_x)).powf(r + x)
    } else {
        0.0
    };
    let p_alive = 1.0 / (1.0 + odds);
    let e = |h: f64| {
        (a + b + x - 1.0) / (a - 1.0)
            * (1.0
                - ((alpha + t) / (alpha + t + h)).powf(r + x)
                    * hyp2f1(r + x, b + x, a + b + x - 1.0, h / (alpha + t + h)))
            / (1.0 + odds)
    };
    let (gp, gq, gg) = p.gg.unwrap();
    let spend = gp * (gg + x * m) / (gp * x + gq - 1.0);
    [p_alive, e(90.0), spend, e(365.0) * spend]
}
fn in_window(day: i64, as_of: i64, w: i64) -> bool {
    day <= as_of && day > as_of - w
}

fn figures(evs: &[&Ev], as_of: i64, w: i64) -> Figs {
    let mut days = std::collections::BTreeSet::new();
    let mut f = Figs {
        recency: None,
        frequency: 0,
        monetary: 0,
        lifetime_purchases: 0,
        lifetime_monetary: 0,
        first: None,
        last: None,
        purchase_days: 0,
        mip: None,
        interactions: 0,
        complaints: 0,
        high_complaints: 0,
        drop_recent: 0,
        drop_prev: 0,
        first_day_spend: 0,
        intent: false,
    };
    for e in evs {
        match e.kind {
            Kind::Purchase(c) => {
                days.insert(e.day);
                f.lifetime_purchases += 1;
                f.lifetime_monetary += c;
                if in_window(e.day, as_of, w) {
                    f.frequency += 1;
                    f.monetary += c;
                }
                if in_window(e.day, as_of, 90) {
                    f.drop_recent += c;
                }
                if in_window(e.day, as_of - 90, 90) {
                    f.drop_prev += c;
                }
            }
            Kind::Interaction { intent } => {
                f.interactions += in_window(e.day, as_of, 30) as i64;
                f.intent |= intent && in_window(e.day, as_of, 30);
            }
            Kind::Complaint { high } => {
                if in_window(e.day, as_of, 90) {
                    f.complaints += 1;
                    f.high_complaints += high as i64;
                }
            }
        }
    }
    f.purchase_days = days.len() as i64;
    f.first = days.iter().next().copied();
    for e in evs {
        if let (Kind::Purchase(c), Some(first)) = (e.kind, f.first) {
            if e.day == first {
                f.first_day_spend += c;
            }
        }
    }
    f.last = days.iter().next_back().copied();
    f.recency = days.range(..=as_of).next_back().map(|d| as_of - d);
    if f.purchase_days >= 2 {
        f.mip = Some((f.last.unwrap() - f.first.unwrap()) as f64 / (f.purchase_days - 1) as f64);
    }
    f
}

/// Expected dump objects for every customer, default config, with the models
/// `model` in force.
fn expected(events: &[Ev], as_of: i64, model: Option<&Params>) -> BTreeMap<String, Value> {
    expected_w(events, as_of, 365, model)
}

/// Expected dump objects with window W = `w` days, other settings default.
fn expected_w(
    events: &[Ev],
    as_of: i64,
    w: i64,
    model: Option<&Params>,
) -> BTreeMap<String, Value> {
    expected_path(events, as_of, w, model, false)
}

/// The same, on the `high_ticket` lifecycle path when `high_ticket`.
fn expected_path(
    events: &[Ev],
    as_of: i64,
    w: i64,
    model: Option<&Params>,
    high_ticket: bool,
) -> BTreeMap<String, Value> {
    let mut seen = HashSet::new();
    let mut by_customer: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in events {
        if seen.insert((e.customer.clone(), e.id.clone())) {
            by_customer.entry(&e.customer).or_default().push(e);
        }
    }
    let figs: BTreeMap<&str, Figs> = by_customer
        .iter()
        .map(|(c, evs)| (*c, figures(evs, as_of, w)))
        .collect();
    let buyers: Vec<&Figs> = figs.values().filter(|f| f.recency.is_some()).collect();
    let n = buyers.len() as f64;
    let mean_r = buyers
        .iter()
        .map(|f| f.recency.unwrap() as f64)
        .sum::<f64>()
        / n;
    let mean_f = buyers.iter().map(|f| f.frequency as f64).sum::<f64>() / n;
    let mean_m = buyers.iter().map(|f| f.monetary as f64).sum::<f64>() / n;
    let score = |worse: usize| 1 + (5 * worse) / buyers.len();
    // Pareto cut-offs.
    let mut desc: Vec<i64> = figs
        .values()
        .map(|f| f.monetary)
        .filter(|&m| m > 0)
        .collect();
    desc.sort_unstable_by(|a, b| b.cmp(a));
    let total: i64 = desc.iter().sum();
    let cutoff = |share: f64| {
        let mut run = 0i64;
        for &m in &desc {
            run += m;
            if run as f64 >= share * total as f64 {
                return Some(m);
            }
        }
        None
    };
    let (high_cut, med_cut) = (cutoff(0.8), cutoff(0.95));

    let mut out = BTreeMap::new();
    for (c, f) in &figs {
        let (r_score, f_score, m_score, segment) = match f.recency {
            None => (Value::Null, Value::Null, Value::Null, "none".to_string()),
            Some(r) => {
                let rs = score(buyers.iter().filter(|b| b.recency.unwrap() > r).count());
                let fs = score(buyers.iter().filter(|b| b.frequency < f.frequency).count());
                let ms = score(buyers.iter().filter(|b| b.monetary < f.monetary).count());
                let rh = r as f64 <= mean_r;
                let fh = f.frequency as f64 >= mean_f;
                let mh = f.monetary as f64 >= mean_m;
                let seg = match (rh, fh, mh) {
                    (true, true, true) => "important_value",
                    (true, false, true) => "important_develop",
                    (false, true, true) => "important_keep",
                    (false, false, true) => "important_retain",
                    (true, true, false) => "general_value",
                    (true, false, false) => "general_develop",
                    (false, true, false) => "general_keep",
                    (false, false, false) => "general_retain",
                };
                (json!(rs), json!(fs), json!(ms), seg.to_string())
            }
        };
        let value = if f.monetary == 0 {
            "low"
        } else if high_cut.is_some_and(|h| f.monetary >= h) {
            "high"
        } else if med_cut.is_some_and(|m| f.monetary >= m) {
            "medium"
        } else {
            "low"
        };
        let lifecycle = match f.recency {
            None if high_ticket && f.intent => "intent",
            None if high_ticket => "prospect",
            None => "new",
            Some(r) if r >= 180 => "lapsed",
            Some(_) if f.frequency >= 12 => "super",
            Some(_) if f.lifetime_purchases >= 2 => "repeat",
            Some(_) => "first_purchase",
        };
        let mut risk = Vec::new();
        if f.complaints >= 2 || (f.high_complaints > 0 && value == "high") {
            risk.push("complaints");
        }
        if let Some(r) = f.recency {
            let limit = if f.purchase_days >= 2 {
                (14f64).max(3.0 * f.mip.unwrap())
            } else {
                60.0
            };
            if r as f64 > limit {
                risk.push("overdue");
            }
        }
        let mut predicted = [Value::Null, Value::Null, Value::Null, Value::Null];
        if let (Some(p), Some(first), Some(last)) = (model, f.first, f.last) {
            let x = (f.purchase_days - 1) as f64;
            let m = if x > 0.0 {
                (f.lifetime_monetary - f.first_day_spend) as f64 / 100.0 / x
            } else {
                0.0
            };
            let v = predictions(p, x, (last - first) as f64, (as_of - first) as f64, m);
            if x > 0.0 && v[0] < 0.3 {
                risk.push("p_alive");
            }
            predicted = v.map(|v| json!(v));
        }
        if f.drop_prev > 0 && (f.drop_recent as f64) < 0.5 * f.drop_prev as f64 {
            risk.push("spend_drop");
        }
        let [p_alive, expected_purchases, expected_avg_spend, clv] = predicted;
        out.insert(
            c.to_string(),
            json!({
                "customer_id": c,
                "as_of": day_str(as_of),
                "recency_days": f.recency,
                "frequency": f.frequency,
                "monetary": f.monetary as f64 / 100.0,
                "lifetime_purchases": f.lifetime_purchases,
                "lifetime_monetary": f.lifetime_monetary as f64 / 100.0,
                "first_purchase_day": f.first.map(day_str),
                "last_purchase_day": f.last.map(day_str),
                "purchase_days": f.purchase_days,
                "mean_interpurchase_days": f.mip,
                "recent_interactions": f.interactions,
                "recent_complaints": f.complaints,
                "r_score": r_score,
                "f_score": f_score,
                "m_score": m_score,
                "rfm_segment": segment,
                "value_tier": value,
                "lifecycle": lifecycle,
                "churn_risk": risk,
                "p_alive": p_alive,
                "expected_purchases": expected_purchases,
                "expected_avg_spend": expected_avg_spend,
                "clv": clv,
            }),
        );
    }
    out
}

fn close(k: &str, a: &Value, b: &Value) -> bool {
    // Predictions to 1e-9 relative; money and means to 1e-6.
    let predicted = ["p_alive", "expected_purchases", "expected_avg_spend", "clv"].contains(&k);
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if predicted => (x - y).abs() <= 1e-9 * y.abs().max(1e-300),
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
        _ => a == b,
    }
}

fn compare(dump: &[Value], want: &BTreeMap<String, Value>) {
    assert_eq!(dump.len(), want.len(), "customer count");
    let mut mismatches = Vec::new();
    for got in dump {
        let id = got["customer_id"].as_str().unwrap();
        let exp = want
            .get(id)
            .unwrap_or_else(|| panic!("unexpected customer {id}"));
        for (k, v) in exp.as_object().unwrap() {
            if !close(k, &got[k], v) {
                mismatches.push(format!("{id}.{k}: got {} want {}", got[k], v));
            }
        }
        assert_eq!(
            got.as_object().unwrap().len(),
            exp.as_object().unwrap().len(),
            "field set of {id}: {got}"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(20)]
    );
}

/// Bad lines, each with the reason it must be rejected with.
pub fn bad_lines() -> Vec<(String, &'static str)> {
    vec![
        (r#"{"event_id":"x1","customer_id":"c1","type":"purchase","ts":"2026-01-01T00:00:00Z","amount":-5}"#.into(), "negative_amount"),
        (r#"{"event_id":"x2","type":"purchase","ts":"2026-01-01T00:00:00Z","amount":5}"#.into(), "missing_field:customer_id"),
        (r#"{"customer_id":"c1","type":"interaction","ts":"2026-01-01T00:00:00Z"}"#.into(), "missing_field:event_id"),
        (r#"{"event_id":"x4","customer_id":"c1","type":"purchase","ts":"yesterday","amount":5}"#.into(), "bad_timestamp"),
        (r#"{"event_id":"x5","customer_id":"c1","type":"refund","ts":"2026-01-01T00:00:00Z"}"#.into(), "unknown_type"),
        (r#"{"event_id":"x6","customer_id":"c1","type":"purchase","ts":"2026-01-01T00:00:00Z","amount":"12.5"}"#.into(), "wrong_type:amount"),
        (r#"{"event_id":"x7","customer_id":"c1","type":"purchase","ts":"2026-01-01T00:00:00Z"}"#.into(), "missing_field:amount"),
        (r#"{"event_id":"x8","customer_id":"c1","type":"purch"#.into(), "invalid_json"),
        (r#"["not","an","object"]"#.into(), "not_an_object"),
        (r#"{"event_id":"x10","customer_id":"c1","type":"complaint","ts":"2026-01-01T00:00:00Z","severity":"critical"}"#.into(), "invalid_severity"),
        (r#"{"event_id":"x11","customer_id":"c1","ts":"2026-01-01T00:00:00Z"}"#.into(), "missing_field:type"),
        (format!(r#"{{"event_id":"x12","customer_id":"c1","type":"interaction","ts":"2026-01-01T00:00:00Z","blob":"{}"}}"#, "a".repeat(70_000)), "too_large"),
        (format!(r#"{{"event_id":"{}","customer_id":"c1","type":"interaction","ts":0}}"#, "e".repeat(129)), "invalid_length:event_id"),
    ]
}

struct Stream {
    lines: Vec<String>,
    good: Vec<Ev>,
    bad: Vec<&'static str>,
    events: usize,
}

/// Make a clean time-ordered stream messy: mixed timestamp forms, shuffled within
/// days, some events a few days late, duplicates, bad lines.
fn messy(clean: Vec<Value>, offset_hours: i32, seed: u64) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let off = FixedOffset::east_opt(8 * 3600).unwrap();
    let mut values: Vec<Value> = clean
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            let t = DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap();
            match i % 10 {
                3 => v["ts"] = json!(t.with_timezone(&off).to_rfc3339()),
                7 => v["ts"] = json!(t.timestamp_millis()),
                _ => {}
            }
            v
        })
        .collect();
    // Shuffle within each day.
    let mut i = 0;
    while i < values.len() {
        let d = day_of(&values[i]["ts"], offset_hours);
        let mut j = i;
        while j < values.len() && day_of(&values[j]["ts"], offset_hours) == d {
            j += 1;
        }
        values[i..j].shuffle(&mut rng);
        i = j;
    }
    // 1 % of events arrive up to ~3 days' worth of lines late.
    let len = values.len();
    for _ in 0..len / 100 {
        let from = rng.gen_range(0..len - 1);
        let to = (from + rng.gen_range(1..600)).min(len - 1);
        let v = values.remove(from);
        values.insert(to, v);
    }
    let good: Vec<Ev> = values.iter().map(|v| to_ev(v, offset_hours)).collect();
    let mut lines: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    // 3 % redelivered later, byte for byte.
    for _ in 0..lines.len() * 3 / 100 {
        let from = rng.gen_range(0..lines.len());
        let to = (from + rng.gen_range(1..5000)).min(lines.len());
        let l = lines[from].clone();
        lines.insert(to, l);
    }
    let events = lines.len();
    let mut bad = Vec::new();
    let kinds = bad_lines();
    for k in 0..(lines.len() / 400) {
        let (line, reason) = &kinds[k % kinds.len()];
        let at = rng.gen_range(0..lines.len());
        lines.insert(at, line.clone());
        bad.push(*reason);
    }
    Stream {
        events: events + bad.len(),
        lines,
        good,
        bad,
    }
}

fn check_dead_letters(dead: &[Value], want: &[&'static str]) {
    let mut got: Vec<String> = dead
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(dead
        .iter()
        .all(|d| d["raw"].is_string() && d["line"].as_u64().unwrap() > 0));
}

#[test]
fn generated_stream_matches_the_oracle() {
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "gen.jsonl",
        &[
            "--customers",
            "5000",
            "--days",
            "365",
            "--seed",
            "11",
            "--start",
            "2025-06-01",
        ],
    );
    let clean = read_json_lines(&gen);
    let stream = messy(clean, 0, 5);
    assert!(stream.events >= 50_000, "only {} events", stream.events);
    let input = tmp.path().join("messy.jsonl");
    write_lines(&input, &stream.lines);
    let state = tmp.path().join("state");
    let (outputs, dead, stderr) = replay(&state, &[&input], &[]);
    check_dead_letters(&dead, &stream.bad);
    assert!(!outputs.is_empty());
    assert!(stderr.contains("duplicate"), "{stderr}");

    let last = stream.good.iter().map(|e| e.day).max().unwrap();
    let model = model_show(&state, &[]);
    assert!(model.is_some(), "fitted: over 100 repeat customers");
    for as_of in [last, last + 45, last + 200] {
        let d = day_str(as_of);
        compare(
            &dump(&state, Some(&d), &[]),
            &expected(&stream.good, as_of, model.as_ref()),
        );
    }
    // Without --as-of the dump is at the stored stream clock.
    compare(
        &dump(&state, None, &[]),
        &expected(&stream.good, last, model.as_ref()),
    );
}

/// CDNOW: 69,659 real purchases of 23,570 customers (1997-01 .. 1998-06), from the
/// `lifetimes` package, in a shop on Shanghai time.
#[test]
fn cdnow_real_transactions_match_the_oracle_in_shanghai() {
    let text = std::fs::read_to_string(repo_file("tests/data/CDNOW_master.txt")).unwrap();
    let mut clean = Vec::new();
    // Header line first; columns: customer id, YYYYMMDD, number of CDs, dollars.
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let date = NaiveDate::parse_from_str(cols[1], "%Y%m%d").unwrap();
        let secs = (i as u32 * 7919) % 86_400;
        let local = date
            .and_hms_opt(secs / 3600, (secs / 60) % 60, secs % 60)
            .unwrap();
        let t = FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .from_local_datetime(&local)
            .unwrap();
        // Stored as UTC ("Z"): a purchase before 08:00 Shanghai time is on the
        // previous UTC day, which must not matter.
        clean.push(json!({
            "event_id": format!("cdnow-{i}"),
            "customer_id": format!("cd{}", cols[0]),
            "type": "purchase",
            "ts": t.with_timezone(&Utc).to_rfc3339(),
            "amount": cols[3].parse::<f64>().unwrap(),
        }));
    }
    clean.sort_by_key(|v| DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap());
    let stream = messy(clean, 8, 9);
    let tmp = tempdir();
    let input = tmp.path().join("cdnow.jsonl");
    write_lines(&input, &stream.lines);
    let state = tmp.path().join("state");
    let env = [("STRATA_ENGINE__TIMEZONE", "Asia/Shanghai")];
    let (_, dead, _) = replay(&state, &[&input], &env);
    check_dead_letters(&dead, &stream.bad);
    let model = model_show(&state, &env);
    assert!(model.is_some());
    for as_of in ["1998-06-30", "1998-10-15"] {
        let day = epoch_day(NaiveDate::parse_from_str(as_of, "%Y-%m-%d").unwrap());
        compare(
            &dump(&state, Some(as_of), &env),
            &expected(&stream.good, day, model.as_ref()),
        );
    }
}

/// A 90-day window is shorter than the spend-drop rule's 180-day look-back: the
/// engine must keep enough history for both. Same messy stream, W = 90.
#[test]
fn short_window_matches_the_oracle() {
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "gen.jsonl",
        &[
            "--customers",
            "1500",
            "--days",
            "300",
            "--seed",
            "12",
            "--start",
            "2025-03-01",
        ],
    );
    let stream = messy(read_json_lines(&gen), 0, 6);
    let input = tmp.path().join("messy.jsonl");
    write_lines(&input, &stream.lines);
    let state = tmp.path().join("state");
    let env = [("STRATA_ENGINE__WINDOW_DAYS", "90")];
    let (_, dead, _) = replay(&state, &[&input], &env);
    check_dead_letters(&dead, &stream.bad);
    let model = model_show(&state, &env);
    let last = stream.good.iter().map(|e| e.day).max().unwrap();
    for as_of in [last, last + 30, last + 120] {
        let d = day_str(as_of);
        compare(
            &dump(&state, Some(&d), &env),
            &expected_w(&stream.good, as_of, 90, model.as_ref()),
        );
    }
}

/// `lifecycle.path = "high_ticket"`: customers without a purchase are `prospect`,
/// `intent` for 30 days after an interaction whose action is an intent action, then
/// `prospect` again by the timer alone; purchasers follow the retail stages. The
/// generated stream plus 400 prospects of its own (interactions only, some with
/// intent actions), against the oracle at the clock and after it; the fall-backs
/// published by the timer on the day computed here.
#[test]
fn high_ticket_lifecycle_matches_the_oracle() {
    let tmp = tempdir();
    let gen = generate(tmp.path(), "gen.jsonl", 1500, 200, 21, "2025-04-01");
    let mut lines: Vec<Value> = read_json_lines(&gen);
    let first = lines.iter().map(|v| day_of(&v["ts"], 0)).min().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let actions = ["view", "search", "quote", "inquiry", "trial", "click"];
    for i in 0..400 {
        for k in 0..rng.gen_range(1..5) {
            let day = first + rng.gen_range(0..200);
            lines.push(json!({
                "event_id": format!("x{i}-{k}"),
                "customer_id": format!("x{i:04}"),
                "type": "interaction",
                "ts": format!("{}T{:02}:00:00Z", day_str(day), rng.gen_range(0..24)),
                "action": actions[rng.gen_range(0..actions.len())],
            }));
        }
    }
    lines.sort_by_key(|v| v["ts"].as_str().unwrap().to_string());
    let input = tmp.path().join("high_ticket.jsonl");
    write_lines(
        &input,
        &lines.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
    );
    let events: Vec<Ev> = lines.iter().map(|v| to_ev(v, 0)).collect();
    let env = [("STRATA_LIFECYCLE__PATH", "high_ticket")];
    let state = tmp.path().join("state");
    let (outputs, dead, _) = replay(&state, &[&input], &env);
    assert!(dead.is_empty());
    let model = model_show(&state, &env);
    let last = events.iter().map(|e| e.day).max().unwrap();
    let mut stages = BTreeMap::new();
    for as_of in [last, last + 12, last + 45] {
        let want = expected_path(&events, as_of, 365, model.as_ref(), true);
        for v in want.values() {
            *stages
                .entry((as_of, v["lifecycle"].as_str().unwrap().to_string()))
                .or_insert(0) += 1;
        }
        compare(&dump(&state, Some(&day_str(as_of)), &env), &want);
    }
    for stage in ["prospect", "intent", "first_purchase", "repeat"] {
        assert!(
            stages
                .get(&(last, stage.to_string()))
                .is_some_and(|&n| n > 10),
            "{stage}: {stages:?}"
        );
    }
    assert!(
        !stages.contains_key(&(last, "new".to_string())),
        "no `new` on this path"
    );

    // Each intent episode of a crafted prospect ends on the day its last intent
    // interaction leaves the 30-day window, published by the timer (when the
    // stream's clock got there).
    let mut want_fallbacks = Vec::new();
    let mut by_customer: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.customer.starts_with('x')) {
        if let Kind::Interaction { intent: true } = e.kind {
            by_customer.entry(&e.customer).or_default().push(e.day);
        }
    }
    for (c, mut days) in by_customer {
        days.sort();
        days.dedup();
        for (i, d) in days.iter().enumerate() {
            let ends = d + 30;
            let renewed = days.get(i + 1).is_some_and(|n| *n < ends);
            if !renewed && ends <= last {
                want_fallbacks.push((c.to_string(), day_str(ends)));
            }
        }
    }
    let got_fallbacks: Vec<(String, String)> = outputs
        .iter()
        .filter(|o| {
            o["type"] == "tier_changed" && o["customer_id"].as_str().unwrap().starts_with('x')
        })
        .filter(|o| o["from"]["lifecycle"] == "intent" && o["to"]["lifecycle"] == "prospect")
        .map(|o| {
            assert_eq!(o["cause_event_id"], "timer", "{o}");
            (
                o["customer_id"].as_str().unwrap().to_string(),
                o["as_of"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        want_fallbacks.len() > 50,
        "{} fall-backs",
        want_fallbacks.len()
    );
    let mut got_sorted = got_fallbacks.clone();
    got_sorted.sort();
    want_fallbacks.sort();
    assert_eq!(got_sorted, want_fallbacks);
}
