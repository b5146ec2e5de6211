//! The command line: config loading and validation, env overrides, clear errors.

use crate::util::*;

fn stderr_of(cmd: &mut std::process::Command) -> (bool, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn config_check_prints_defaults_and_env_overrides() {
    let (ok, out, _) = stderr_of(strata().args(["config", "check"]));
    assert!(ok);
    assert!(out.contains("window_days = 365"), "{out}");
    assert!(out.contains("timezone = \"UTC\""), "{out}");
    let (ok, out, _) = stderr_of(
        strata()
            .args(["config", "check"])
            .env("STRATA_ENGINE__WINDOW_DAYS", "90")
            .env("STRATA_ENGINE__TIMEZONE", "Asia/Shanghai")
            .env("STRATA_KAFKA__TOPICS__PURCHASES", "orders"),
    );
    assert!(ok);
    assert!(out.contains("window_days = 90"), "{out}");
    assert!(out.contains("timezone = \"Asia/Shanghai\""), "{out}");
    assert!(out.contains("purchases = \"orders\""), "{out}");
}

#[test]
fn config_file_values_and_errors_name_the_key() {
    let tmp = tempdir();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "[churn]\noverdue_min_days = 21\n[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n",
    )
    .unwrap();
    let (ok, out, err) = stderr_of(strata().args(["config", "check", "--config"]).arg(&good));
    assert!(ok, "{err}");
    assert!(
        out.contains("overdue_min_days = 21") && out.contains("SASL_SSL"),
        "{out}"
    );

    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, "[engine]\nwindow_dayz = 30\n").unwrap();
    let (ok, _, err) = stderr_of(strata().args(["config", "check", "--config"]).arg(&typo));
    assert!(!ok);
    assert!(
        err.contains("window_dayz") && err.contains("engine"),
        "{err}"
    );

    let (ok, _, err) = stderr_of(
        strata()
            .args(["config", "check"])
            .env("STRATA_VALUE_TIERS__HIGH_SHARE", "1.5"),
    );
    assert!(!ok);
    assert!(err.contains("value_tiers.high_share"), "{err}");

    let (ok, _, err) = stderr_of(
        strata()
            .args(["config", "check"])
            .env("STRATA_ENGINE__WINDOW_DAYS", "many"),
    );
    assert!(!ok);
    assert!(err.contains("engine.window_days"), "{err}");

    let (ok, _, err) = stderr_of(
        strata()
            .args(["config", "check"])
            .env("STRATA_SEGMENTS__THRESHOLDS", "median"),
    );
    assert!(!ok);
    assert!(err.contains("segments.thresholds"), "{err}");

    let (ok, _, err) =
        stderr_of(strata().args(["config", "check", "--config", "/nonexistent/strata.toml"]));
    assert!(!ok);
    assert!(err.contains("/nonexistent/strata.toml"), "{err}");
}

#[test]
fn helpful_errors_for_missing_inputs_and_state() {
    let tmp = tempdir();
    let (ok, _, err) = stderr_of(
        strata()
            .args([
                "replay",
                "--input",
                "/nonexistent/events.jsonl",
                "--state-dir",
            ])
            .arg(tmp.path().join("s")),
    );
    assert!(!ok);
    assert!(err.contains("/nonexistent/events.jsonl"), "{err}");
    let (ok, _, err) = stderr_of(
        strata()
            .args(["state", "dump", "--state-dir"])
            .arg(tmp.path().join("nothing")),
    );
    assert!(!ok);
    assert!(err.contains("not a strata state dir"), "{err}");
    let (ok, _, err) = stderr_of(strata().args([
        "gen",
        "--customers",
        "1",
        "--days",
        "1",
        "--seed",
        "1",
        "--start",
        "tomorrow",
    ]));
    assert!(!ok);
    assert!(err.contains("YYYY-MM-DD"), "{err}");
}

#[test]
fn state_get_matches_the_dump_and_reads_stdin_replays() {
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "g.jsonl",
        &["--customers", "50", "--days", "60", "--seed", "4"],
    );
    let state = tmp.path().join("state");
    let o = run_ok(
        strata()
            .args(["replay", "--input", "-", "--state-dir"])
            .arg(&state)
            .stdin(std::fs::File::open(&gen).unwrap()),
    );
    assert!(
        !json_lines(&o.stdout).is_empty(),
        "outputs default to stdout"
    );
    let d = dump(&state, None, &[]);
    let first = &d[0];
    let id = first["customer_id"].as_str().unwrap();
    let g = run_ok(
        strata()
            .args(["state", "get", id, "--state-dir"])
            .arg(&state),
    );
    assert_eq!(&json_lines(&g.stdout)[0], first);
    let (ok, _, err) = stderr_of(
        strata()
            .args(["state", "get", "nobody", "--state-dir"])
            .arg(&state),
    );
    assert!(!ok && err.contains("nobody"), "{err}");
}

#[test]
fn demo_runs_without_kafka_and_prints_outputs() {
    let o = run_ok(strata().args(["demo", "--customers", "300", "--days", "120"]));
    let outs = json_lines(&o.stdout);
    assert!(outs.iter().any(|v| v["type"] == "tier_changed"));
    assert!(outs.iter().any(|v| v["type"] == "churn_warning"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("population as of") && err.contains("rfm_segment"),
        "{err}"
    );
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let path = repo_file("deploy/strata.example.toml");
    let (ok, out, err) = stderr_of(strata().args(["config", "check", "--config"]).arg(&path));
    assert!(ok, "{err}");
    // Every key the example sets is printed back with the same value (it lists the defaults).
    let (_, defaults, _) = stderr_of(strata().args(["config", "check"]));
    assert_eq!(
        out, defaults,
        "the example should hold exactly the defaults"
    );
}

/// With `clock = "wall"` the as-of day is today: figures age to today, and events
/// stamped beyond the allowed skew are `future_timestamp`.
#[test]
fn wall_clock_replay_uses_today_and_rejects_the_future() {
    let tmp = tempdir();
    let now = chrono::Utc::now();
    let lines = vec![
        serde_json::json!({"event_id": "a", "customer_id": "c", "type": "purchase", "amount": 5, "ts": (now - chrono::Duration::days(10)).to_rfc3339()}).to_string(),
        serde_json::json!({"event_id": "b", "customer_id": "c", "type": "purchase", "amount": 5, "ts": (now + chrono::Duration::hours(3)).to_rfc3339()}).to_string(),
    ];
    let input = tmp.path().join("in.jsonl");
    write_lines(&input, &lines);
    let env = [("STRATA_ENGINE__CLOCK", "wall")];
    let (_, dead, _) = replay(&tmp.path().join("state"), &[&input], &env);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "future_timestamp");
    let d = dump(&tmp.path().join("state"), None, &env);
    assert_eq!(d[0]["recency_days"], 10);
    assert_eq!(d[0]["as_of"], now.date_naive().to_string());
}

/// The wall clock moves the stored as-of day even when a replay brings no event.
#[test]
fn wall_clock_advance_is_persisted_without_events() {
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let old = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    let input = tmp.path().join("in.jsonl");
    write_lines(&input, &[serde_json::json!({"event_id": "a", "customer_id": "c", "type": "purchase", "amount": 5, "ts": old}).to_string()]);
    replay(&state, &[&input], &[]); // event clock: as-of is the event's day
    assert_eq!(dump(&state, None, &[])[0]["recency_days"], 0);
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let env = [("STRATA_ENGINE__CLOCK", "wall")];
    replay(&state, &[&empty], &env);
    assert_eq!(dump(&state, None, &env)[0]["recency_days"], 40);
}
