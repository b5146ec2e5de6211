//! Helpers: run the binary, read JSON Lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn strata() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    // Tests must not pick up a developer's STRATA_* overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("STRATA_") {
            c.env_remove(k);
        }
    }
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("strata runs");
    assert!(
        out.status.success(),
        "strata failed: {:?}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

pub fn read_json_lines(path: &Path) -> Vec<Value> {
    json_lines(&std::fs::read(path).unwrap_or_default())
}

/// `strata replay` over `inputs` into `state`; returns (outputs, dead letters, stderr).
pub fn replay(
    state: &Path,
    inputs: &[&Path],
    extra_env: &[(&str, &str)],
) -> (Vec<Value>, Vec<Value>, String) {
    let dir = state.parent().unwrap();
    let tag = state.file_name().unwrap().to_string_lossy().to_string();
    let out = dir.join(format!("{tag}.out.jsonl"));
    let dl = dir.join(format!("{tag}.dead.jsonl"));
    let mut cmd = strata();
    cmd.arg("replay")
        .arg("--state-dir")
        .arg(state)
        .arg("--out")
        .arg(&out)
        .arg("--dead-letter")
        .arg(&dl);
    for i in inputs {
        cmd.arg("--input").arg(i);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let o = run_ok(&mut cmd);
    (
        read_json_lines(&out),
        read_json_lines(&dl),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `strata state dump` as a list of objects (in key order).
pub fn dump(state: &Path, as_of: Option<&str>, extra_env: &[(&str, &str)]) -> Vec<Value> {
    let mut cmd = strata();
    cmd.arg("state").arg("dump").arg("--state-dir").arg(state);
    if let Some(d) = as_of {
        cmd.arg("--as-of").arg(d);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    json_lines(&run_ok(&mut cmd).stdout)
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

/// A temporary directory, removed afterwards unless `STRATA_TEST_KEEP` is set (then
/// its path is printed: instance logs, configs and state stay for a post-mortem).
pub fn tempdir() -> tempfile::TempDir {
    let mut t = tempfile::tempdir().unwrap();
    if std::env::var_os("STRATA_TEST_KEEP").is_some() {
        eprintln!("keeping {}", t.path().display());
        t.disable_cleanup(true);
    }
    t
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `strata gen ARGS --out DIR/NAME`; returns the file's path.
pub fn gen_file(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    run_ok(strata().arg("gen").args(args).arg("--out").arg(&path));
    path
}

/// `strata gen` of `customers` over `days` from `start` (seeded) into `dir/name`.
pub fn generate(
    dir: &Path,
    name: &str,
    customers: u32,
    days: u32,
    seed: u32,
    start: &str,
) -> PathBuf {
    let (c, d, sd) = (customers.to_string(), days.to_string(), seed.to_string());
    let args = [
        "--customers",
        &c,
        "--days",
        &d,
        "--seed",
        &sd,
        "--start",
        start,
    ];
    gen_file(dir, name, &args)
}
