//! Every kind of bad line lands in the dead letter with its reason, and the good
//! events around it behave exactly as if it were not there.

use crate::oracle::bad_lines;
use crate::util::*;

#[test]
fn bad_lines_go_to_the_dead_letter_and_change_nothing() {
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "g.jsonl",
        &["--customers", "200", "--days", "90", "--seed", "8"],
    );
    let good: Vec<String> = std::fs::read_to_string(&gen)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let bad = bad_lines();
    let mut mixed = Vec::new();
    let mut expected = Vec::new();
    let step = good.len() / (bad.len() + 1);
    for (i, line) in good.iter().enumerate() {
        if i % step == step / 2 && i / step < bad.len() {
            let (b, reason) = &bad[i / step];
            mixed.push(b.clone());
            expected.push((mixed.len() as u64, *reason));
        }
        mixed.push(line.clone());
    }
    // Also an invalid UTF-8 line and a blank line (blank lines are skipped, not bad).
    let mut bytes = mixed.join("\n").into_bytes();
    bytes.extend_from_slice(b"\n{\"event_id\":\"\xff\xfe\"}\n\n");
    expected.push((mixed.len() as u64 + 1, "invalid_utf8"));
    let input = tmp.path().join("mixed.jsonl");
    std::fs::write(&input, bytes).unwrap();

    let (out_mixed, dead, stderr) = replay(&tmp.path().join("mixed"), &[&input], &[]);
    let got: Vec<(u64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = expected.iter().map(|(l, r)| (*l, r.to_string())).collect();
    assert_eq!(got, want);
    for d in &dead {
        assert_eq!(d["source"], input.display().to_string());
        assert!(!d["detail"].as_str().unwrap().is_empty());
    }
    assert!(
        stderr.contains(&format!("{} bad", expected.len())),
        "{stderr}"
    );

    let (out_good, dead_good, _) = replay(&tmp.path().join("good"), &[&gen], &[]);
    assert!(dead_good.is_empty());
    assert_eq!(out_mixed, out_good, "bad lines must not change any output");
    assert_eq!(
        dump(&tmp.path().join("mixed"), None, &[]),
        dump(&tmp.path().join("good"), None, &[])
    );
}
