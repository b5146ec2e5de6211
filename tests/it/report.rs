//! `strata report`, seen as a person sees it: the page rendered by headless
//! Chromium (Debian's `chromium`, installed by `scripts/setup --test`), its DOM
//! after rendering compared with `strata state summary`, its transitions with the
//! `tier_changed` events the replay published, and a screenshot that shows charts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::*;

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = Command::new("which").arg(name).output() {
            if o.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            }
        }
    }
    panic!("no chromium on PATH: `scripts/setup --test` installs Debian's chromium");
}

/// Chromium, headless, on `page`: `--dump-dom` (the DOM after rendering) or
/// `--screenshot=FILE`.
fn headless(page: &Path, mode: &str) -> String {
    let o = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            mode,
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(
        o.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every `data-key="K"` element's text, from the rendered DOM.
fn shown(dom: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-key=\"") {
        rest = &rest[i + 10..];
        let key = &rest[..rest.find('"').unwrap()];
        let text_at = rest.find('>').unwrap() + 1;
        let text = &rest[text_at..text_at + rest[text_at..].find('<').unwrap()];
        assert!(
            out.insert(key.to_string(), text.trim().to_string())
                .is_none(),
            "{key} shown once"
        );
    }
    out
}

fn num(shown: &BTreeMap<String, String>, key: &str) -> f64 {
    shown
        .get(key)
        .unwrap_or_else(|| panic!("{key} not on the page"))
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {:?}", shown[key]))
}

#[test]
fn report_rendered_by_chromium_shows_the_summary() {
    let tmp = tempdir();
    let file = generate(tmp.path(), "g.jsonl", 1500, 240, 8, "2025-03-01");
    let state = tmp.path().join("state");
    let (outputs, _, _) = replay(&state, &[&file], &[]);
    let page = tmp.path().join("report.html");
    run_ok(
        strata()
            .args(["report", "--state-dir"])
            .arg(&state)
            .arg("--out")
            .arg(&page),
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "self-contained: nothing fetched, nothing run"
    );
    let summary: Value = serde_json::from_slice(
        &run_ok(
            strata()
                .args(["state", "summary", "--state-dir"])
                .arg(&state),
        )
        .stdout,
    )
    .unwrap();

    let dom = headless(&page, "--dump-dom");
    assert!(
        dom.contains("<svg id=\"rfm-grid\""),
        "the DOM is the rendered page"
    );
    let s = shown(&dom);
    assert_eq!(s["as_of"], summary["as_of"].as_str().unwrap());
    assert_eq!(num(&s, "customers"), summary["customers"].as_f64().unwrap());
    assert_eq!(
        num(&s, "at_risk/customers"),
        summary["at_risk"]["customers"].as_f64().unwrap()
    );
    for (dim, shows_monetary) in [
        ("rfm_segment", true),
        ("value_tier", true),
        ("lifecycle", false),
    ] {
        for (tier, cell) in summary["dimensions"][dim].as_object().unwrap() {
            let key = format!("{dim}/{tier}/customers");
            if dim == "lifecycle" && ["prospect", "intent"].contains(&tier.as_str()) {
                assert!(!s.contains_key(&key), "retail path: no {tier} stage drawn");
                continue;
            }
            assert_eq!(num(&s, &key), cell["customers"].as_f64().unwrap(), "{key}");
            if shows_monetary && tier != "none" {
                let got = num(&s, &format!("{dim}/{tier}/monetary"));
                let want = cell["monetary"].as_f64().unwrap();
                assert!((got - want).abs() < 0.006, "{dim}/{tier}: {got} vs {want}");
            }
        }
    }
    let purchasers = num(&s, "purchasers");
    for (reason, n) in summary["at_risk"]["by_reason"].as_object().unwrap() {
        let total = num(&s, &format!("at_risk/{reason}/customers"));
        assert_eq!(total, n.as_f64().unwrap(), "{reason}");
        let by_severity: f64 = ["high", "medium", "low"]
            .iter()
            .map(|sev| num(&s, &format!("at_risk/{reason}/{sev}")))
            .sum();
        assert_eq!(by_severity, total, "{reason}: severities add up");
    }
    for k in ["r", "f", "m"] {
        let n: f64 = (1..=5).map(|i| num(&s, &format!("score/{k}/{i}"))).sum();
        assert_eq!(n, purchasers, "every purchaser has an {k} score");
    }

    // Transitions of the last 30 days: the tier_changed events of those days, per
    // changed dimension, counted here from the replay's outputs.
    let day = summary["as_of"].as_str().unwrap();
    let end = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    let start = (end - chrono::Duration::days(29)).to_string();
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for o in outputs
        .iter()
        .filter(|o| o["type"] == "tier_changed" && !o["from"].is_null())
    {
        let as_of = o["as_of"].as_str().unwrap();
        if as_of < start.as_str() || as_of > day {
            continue;
        }
        for dim in o["changed"].as_array().unwrap() {
            let dim = dim.as_str().unwrap();
            let key = format!(
                "transition/{dim}/{}/{}",
                o["from"][dim].as_str().unwrap(),
                o["to"][dim].as_str().unwrap()
            );
            *want.entry(key).or_default() += 1.0;
        }
    }
    let got: BTreeMap<String, f64> = s
        .iter()
        .filter(|(k, _)| k.starts_with("transition/"))
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert!(want.len() > 10, "{} kinds of transition", want.len());
    assert_eq!(got, want);

    // What a person sees: a full-size screenshot with charts on it (many colours,
    // a good share of the page drawn), not a blank or an error page.
    let shot = tmp.path().join("report.png");
    headless(&page, &format!("--screenshot={}", shot.display()));
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 2400));
    let channels = info.line_size / info.width as usize;
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let drawn = pixels
        .iter()
        .filter(|p| p[..3].iter().any(|&c| c < 235))
        .count();
    let colours: std::collections::HashSet<[u8; 3]> = pixels
        .iter()
        .map(|p| [p[0] >> 3, p[1] >> 3, p[2] >> 3])
        .collect();
    assert!(
        drawn * 20 > pixels.len(),
        "{drawn} of {} pixels drawn",
        pixels.len()
    );
    assert!(colours.len() > 50, "{} colours", colours.len());
}

#[test]
fn demo_writes_a_report() {
    let tmp = tempdir();
    let page = tmp.path().join("demo.html");
    let o = run_ok(
        strata()
            .args(["demo", "--customers", "300", "--days", "90", "--report"])
            .arg(&page)
            .env("STRATA_HTTP__LISTEN", "127.0.0.1:0"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrote the report"), "{err}");
    let s = shown(&std::fs::read_to_string(&page).unwrap());
    assert!(num(&s, "customers") > 200.0);
}
