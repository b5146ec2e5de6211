//! The JSON Schemas in `schemas/` and the code agree: the parser accepts exactly the
//! events the input schemas accept (for what a schema can express), and every output
//! and dump object the binary writes validates against its schema.

use serde_json::{json, Value};

use strata::config::Settings;
use strata::event::{parse_event, ParseContext};

use crate::util::*;

pub(crate) fn validator(name: &str) -> jsonschema::Validator {
    schema(name)
}

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_file(&format!("schemas/{name}.schema.json"))).unwrap();
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&s)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

/// (event, comment). Sizes, UTF-8 and non-JSON are outside what a schema can say.
fn corpus() -> Vec<Value> {
    let base = |t: &str| json!({"event_id": "e1", "customer_id": "c1", "type": t, "ts": "2026-11-20T10:00:00Z"});
    let with = |t: &str, k: &str, v: Value| {
        let mut b = base(t);
        b[k] = v;
        b
    };
    let without = |t: &str, k: &str| {
        let mut b = base(t);
        if t == "purchase" {
            b["amount"] = json!(1.5);
        }
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let mut c = vec![
        with("purchase", "amount", json!(19.99)),
        with("purchase", "amount", json!(0)),
        with("purchase", "amount", json!(-0.01)),
        with("purchase", "amount", json!("19.99")),
        with("purchase", "amount", json!(2e12)),
        with("purchase", "amount", Value::Null),
        base("purchase"),
        base("interaction"),
        base("complaint"),
        base("refund"),
        with("complaint", "severity", json!("high")),
        with("complaint", "severity", json!("low")),
        with("complaint", "severity", json!("urgent")),
        with("complaint", "severity", json!(3)),
        with("complaint", "category", json!("delivery")),
        with("complaint", "category", json!(["x"])),
        with("interaction", "channel", json!("app")),
        with("interaction", "channel", json!(7)),
        with("interaction", "action", Value::Null),
        with("interaction", "ts", json!("2026-11-20T18:00:00+08:00")),
        with("interaction", "ts", json!("2026-11-20T10:00:00.123-05:30")),
        with("interaction", "ts", json!(1763632800000i64)),
        with("interaction", "ts", json!(-1000)),
        with("interaction", "ts", json!("2026-11-20T10:00:00")),
        with("interaction", "ts", json!("2026-11-20")),
        with("interaction", "ts", json!("2026-13-20T10:00:00Z")),
        with("interaction", "ts", json!(1.5)),
        with("interaction", "ts", json!(true)),
        with("interaction", "ts", Value::Null),
        with("interaction", "event_id", json!("")),
        with("interaction", "event_id", json!("x".repeat(128))),
        with("interaction", "event_id", json!("x".repeat(129))),
        with("interaction", "event_id", json!("客户".repeat(64))),
        with("interaction", "customer_id", json!(42)),
        with("interaction", "type", json!(1)),
        with("purchase", "currency", json!("CNY")),
        with("purchase", "order_id", json!({"id": 1})),
        with("interaction", "unknown_extra", json!({"anything": [1, 2]})),
        json!([1, 2]),
        json!("purchase"),
        json!(null),
    ];
    for k in ["event_id", "customer_id", "type", "ts", "amount"] {
        c.push(without("purchase", k));
    }
    for (i, v) in c.iter_mut().enumerate() {
        // Purchases in the corpus need an amount unless the case is about it.
        if v["type"] == "purchase" && v.get("amount").is_none() && i < 6 {
            v["amount"] = json!(1);
        }
    }
    c
}

#[test]
fn parser_and_input_schemas_agree() {
    let validators = [
        ("purchase", schema("purchase")),
        ("interaction", schema("interaction")),
        ("complaint", schema("complaint")),
    ];
    let ctx = ParseContext::for_files(&Settings::defaults());
    let mut accepted = 0;
    for ev in corpus() {
        let by_schema = validators.iter().any(|(_, v)| v.is_valid(&ev));
        let line = ev.to_string();
        let by_parser = parse_event(line.as_bytes(), &ctx);
        assert_eq!(
            by_schema,
            by_parser.is_ok(),
            "disagreement on {line}: schema says {by_schema}, parser says {by_parser:?}"
        );
        accepted += by_schema as usize;
    }
    assert!(accepted >= 10, "the corpus must hold good events too");
}

#[test]
fn outputs_and_dumps_validate() {
    let outs = [
        ("tier_changed", schema("tier_changed")),
        ("churn_warning", schema("churn_warning")),
        ("churn_recovered", schema("churn_recovered")),
    ];
    let dump_schema = schema("state_dump");
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "g.jsonl",
        &["--customers", "400", "--days", "240", "--seed", "21"],
    );
    let state = tmp.path().join("state");
    let (outputs, _, _) = replay(&state, &[&gen], &[]);
    let mut seen = std::collections::BTreeSet::new();
    for o in &outputs {
        let t = o["type"].as_str().unwrap();
        let (_, v) = outs
            .iter()
            .find(|(n, _)| *n == t)
            .unwrap_or_else(|| panic!("unknown output type {t}"));
        let errors: Vec<String> = v.iter_errors(o).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{o} does not match its schema: {errors:?}"
        );
        seen.insert(t.to_string());
    }
    assert_eq!(
        seen.len(),
        3,
        "the stream should produce all three output types: {seen:?}"
    );
    let d = dump(&state, Some("2026-12-31"), &[]);
    assert!(!d.is_empty());
    for r in &d {
        let errors: Vec<String> = dump_schema.iter_errors(r).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{r} does not match state_dump: {errors:?}"
        );
    }
}
