//! The operations surface: HTTP endpoints, metrics against known input, the
//! dashboard and alert rules against a live `/metrics`, and the Kubernetes manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::{free_port, http_get, metric_sum};
use crate::util::{repo_file, run_ok, strata, tempdir};

/// Every metric a dashboard panel or an alert rule uses is one a live `strata run`
/// exports (the Kafka tests call this with their instance's `/metrics`), so a renamed
/// metric cannot silently break a panel.
pub fn assert_dashboard_and_alerts_use_live_metrics(metrics: &str) {
    let live = exported(metrics);
    let exprs: Vec<String> = exprs_in_dashboard()
        .into_iter()
        .chain(exprs_in_alerts())
        .collect();
    assert!(exprs.len() > 20, "the dashboard and rules have queries");
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                live.contains(&name),
                "{name} (in `{expr}`) is not exported by strata run; exported: {live:?}"
            );
        }
    }
}

/// Metric names a PromQL expression uses (histogram series map to their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("strata_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let mut name = expr[start..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                // The histograms: durations, and P(alive).
                if base.ends_with("_seconds") || base == "strata_p_alive" {
                    name = base.to_string();
                }
            }
        }
        out.insert(name);
        i = end;
    }
    out
}

/// Families a live exposition declares (`# TYPE name kind`).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn exprs_in_dashboard() -> Vec<String> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/strata-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

fn alert_rules(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_file(path)).unwrap()).unwrap()
}

fn exprs_in_alerts() -> Vec<String> {
    let a = alert_rules("deploy/prometheus/alerts.yml");
    let mut out = Vec::new();
    for g in a["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn demo_serves_exact_metrics_and_the_customer_endpoint() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("fixed.toml");
    std::fs::write(
        &cfg,
        format!(
            "[segments]\nthresholds = \"fixed\"\n[value_tiers]\nmethod = \"fixed\"\n[http]\nlisten = \"{addr}\"\ntoken = \"s3cret\"\n"
        ),
    )
    .unwrap();
    let mut child = strata()
        .args([
            "demo",
            "--customers",
            "400",
            "--days",
            "120",
            "--seed",
            "4",
            "--serve",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr until the demo says it is serving; keep the generated counts.
    let mut counts = BTreeMap::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the demo did not start serving");
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the demo ended early"
        );
        if let Some(rest) = line.strip_prefix("demo: generated ") {
            // "N events (P purchases, I interactions, C complaints) for …"
            let nums: Vec<f64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(4)
                .map(|s| s.parse().unwrap())
                .collect();
            counts.insert("purchase", nums[1]);
            counts.insert("interaction", nums[2]);
            counts.insert("complaint", nums[3]);
        }
        if line.contains("serving http://") {
            break;
        }
    }
    let (code, metrics) = http_get(&addr, "/metrics", None).unwrap();
    assert_eq!(code, 200);
    for (t, n) in &counts {
        assert_eq!(
            metric_sum(&metrics, "strata_events_consumed_total", &[("type", t)]),
            *n,
            "events of type {t}"
        );
    }
    assert_eq!(
        metric_sum(&metrics, "strata_events_rejected_total", &[]),
        0.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "strata_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The demo exports every family the service does but the Kafka-only ones.
    let live = exported(&metrics);
    for name in [
        "strata_events_rejected_total",
        "strata_customers",
        "strata_tier_transitions_total",
        "strata_churn_warnings_total",
    ] {
        assert!(live.contains(name), "{name}");
    }

    // /readyz, /healthz, /v1/customers with and without the token.
    assert_eq!(http_get(&addr, "/healthz", None).unwrap().0, 200);
    assert_eq!(http_get(&addr, "/readyz", None).unwrap().0, 200);
    assert_eq!(
        http_get(&addr, "/v1/customers/c0000001", None).unwrap().0,
        401
    );
    assert_eq!(
        http_get(&addr, "/v1/customers/c0000001", Some("wrong"))
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        http_get(&addr, "/v1/customers/nobody", Some("s3cret"))
            .unwrap()
            .0,
        404
    );
    let (code, body) = http_get(&addr, "/v1/customers/c0000001", Some("s3cret")).unwrap();
    assert_eq!(code, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();

    // /v1/segments and the exports: the same token; the demo's one store counted
    // on the spot; compared with `state summary` and `state dump --where` below.
    assert_eq!(http_get(&addr, "/v1/segments", None).unwrap().0, 401);
    let (code, segments) = http_get(&addr, "/v1/segments", Some("s3cret")).unwrap();
    assert_eq!(code, 200, "{segments}");
    let path = "/v1/segments/rfm_segment/general_retain/customers?limit=7";
    assert_eq!(http_get(&addr, path, None).unwrap().0, 401);
    let mut exported_ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let (code, body) = http_get(&addr, &p, Some("s3cret")).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        for r in v["customers"].as_array().unwrap() {
            exported_ids.push(r["customer_id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        http_get(
            &addr,
            "/v1/segments/value_tier/high/customers?limit=0",
            Some("s3cret")
        )
        .unwrap()
        .0,
        400
    );

    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(child.wait().unwrap().success());

    // The endpoint returns exactly the dump object.
    let got = run_ok(
        strata()
            .args(["state", "get", "c0000001", "--state-dir"])
            .arg(&state)
            .arg("--config")
            .arg(&cfg),
    );
    let mut want: Value = serde_json::from_slice(&got.stdout).unwrap();
    // The endpoint evaluates against the thresholds in force (O(1)): with fixed
    // thresholds every figure and tier is the exact dump's; the scores use the
    // quintile breaks of the last recalibration, the dump's those of its day.
    let mut served_figures = served.clone();
    for k in ["r_score", "f_score", "m_score"] {
        let v = served[k].as_u64().unwrap();
        assert!((1..=5).contains(&v), "{k} {v}");
        served_figures[k] = Value::Null;
        want[k] = Value::Null;
    }
    assert_eq!(served_figures, want);
    let summary: Value = serde_json::from_slice(
        &run_ok(
            strata()
                .args(["state", "summary", "--state-dir"])
                .arg(&state)
                .arg("--config")
                .arg(&cfg),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&segments).unwrap(), summary);
    let high: Vec<String> = crate::util::json_lines(
        &run_ok(
            strata()
                .args([
                    "state",
                    "dump",
                    "--where",
                    "rfm_segment=general_retain",
                    "--state-dir",
                ])
                .arg(&state)
                .arg("--config")
                .arg(&cfg),
        )
        .stdout,
    )
    .iter()
    .map(|v| v["customer_id"].as_str().unwrap().to_string())
    .collect();
    assert!(high.len() > 7, "several pages");
    assert_eq!(exported_ids, high);

    // Tier populations equal the dump's, tier by tier (fixed thresholds: the
    // published tiers are the exact ones at the clock).
    let dump = run_ok(
        strata()
            .args(["state", "dump", "--state-dir"])
            .arg(&state)
            .arg("--config")
            .arg(&cfg),
    );
    let mut pops: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut at_risk = 0.0;
    for l in String::from_utf8_lossy(&dump.stdout).lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        for d in ["rfm_segment", "value_tier", "lifecycle"] {
            *pops
                .entry((d.to_string(), v[d].as_str().unwrap().to_string()))
                .or_default() += 1.0;
        }
        at_risk += (!v["churn_risk"].as_array().unwrap().is_empty()) as i32 as f64;
    }
    assert!(pops.len() > 6);
    for ((d, t), n) in &pops {
        assert_eq!(
            metric_sum(
                &metrics,
                "strata_customers",
                &[("dimension", d), ("tier", t)]
            ),
            *n,
            "strata_customers{{dimension={d},tier={t}}}"
        );
    }
    assert!(at_risk > 0.0 && metric_sum(&metrics, "strata_customers_at_risk", &[]) > 0.0);
}

#[test]
fn readyz_is_503_while_a_partition_restores() {
    let settings = Arc::new(strata::config::Settings::defaults());
    let status = strata::cluster::SharedStatus::default();
    let state = strata::http::AppState {
        settings,
        metrics: Arc::new(strata::telemetry::Metrics::new()),
        status: status.clone(),
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listen = addr.clone();
    rt.spawn(async move {
        strata::http::serve(&listen, state, async {
            rx.await.ok();
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&addr, "/healthz", None).is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not consuming yet.
    assert_eq!(http_get(&addr, "/readyz", None).unwrap().0, 503);
    {
        let mut st = status.lock().unwrap();
        st.running = true;
        st.assigned.insert(0);
        st.restoring.insert(2);
    }
    let (code, body) = http_get(&addr, "/readyz", None).unwrap();
    assert_eq!(code, 503);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["restoring"], serde_json::json!([2]));
    {
        let mut st = status.lock().unwrap();
        st.restoring.clear();
        st.assigned.insert(2);
    }
    let (code, body) = http_get(&addr, "/readyz", None).unwrap();
    assert_eq!(code, 200, "{body}");
    tx.send(()).ok();
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let dir = repo_file("deploy/kubernetes");
    let builtin = [
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "statefulset.yaml",
        "pdb.yaml",
    ];
    let out = std::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(builtin.iter().map(|f| dir.join(f)))
        .output()
        .unwrap_or_else(|e| panic!("python3 is missing ({e}): run scripts/setup --test"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate failed (installed? run scripts/setup --test): {text}"
    );
    assert_eq!(
        text.matches(" passed for resource ").count(),
        builtin.len(),
        "{text}"
    );

    // The Prometheus Operator resources (CRDs, no schema in the validator): the rule
    // resource carries exactly the alert file's groups; the monitor scrapes the port
    // the StatefulSet names.
    let rule = alert_rules("deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(rule["spec"], alert_rules("deploy/prometheus/alerts.yml"));
    let pm = alert_rules("deploy/kubernetes/podmonitor.yaml");
    let ss = alert_rules("deploy/kubernetes/statefulset.yaml");
    let port = &ss["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"];
    assert_eq!(&pm["spec"]["podMetricsEndpoints"][0]["port"], port);
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        ss["spec"]["selector"]["matchLabels"]
    );
    // The ConfigMap's TOML is a valid strata configuration.
    let cm = alert_rules("deploy/kubernetes/configmap.yaml");
    let toml_text = cm["data"]["strata.toml"].as_str().unwrap();
    let tmp = tempdir();
    let path = tmp.path().join("strata.toml");
    std::fs::write(&path, toml_text).unwrap();
    run_ok(strata().args(["config", "check", "--config"]).arg(&path));
}
