//! Timers: figures and warnings follow the calendar with no event from the customer.

use serde_json::{json, Value};

use crate::util::*;

fn purchase(id: &str, customer: &str, date: &str, amount: f64) -> String {
    json!({"event_id": id, "customer_id": customer, "type": "purchase", "ts": format!("{date}T12:00:00Z"), "amount": amount}).to_string()
}

fn date(day: i64) -> String {
    (chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Duration::days(day)).to_string()
}

/// Customer X buys on day 0 and day 10 and then goes quiet; three other customers buy
/// every day, which is all that moves the clock. X's mean gap is 10 days, so the
/// overdue limit is max(14, 3 × 10) = 30: the first as-of day with recency > 30 is
/// day 41. Exactly one churn_warning, from the timer, that day; X's purchase on day 60
/// then ends the episode.
#[test]
fn overdue_fires_from_the_timer_alone_then_recovers() {
    let mut lines = Vec::new();
    for day in 0..=70 {
        if day == 0 || day == 10 || day == 60 {
            lines.push(purchase(&format!("x-{day}"), "X", &date(day), 100.0));
        }
        for o in ["o1", "o2", "o3"] {
            lines.push(purchase(&format!("{o}-{day}"), o, &date(day), 1.0));
        }
    }
    let tmp = tempdir();
    let input = tmp.path().join("in.jsonl");
    write_lines(&input, &lines);
    let (outputs, _, _) = replay(&tmp.path().join("state"), &[&input], &[]);
    let x: Vec<&Value> = outputs.iter().filter(|o| o["customer_id"] == "X").collect();

    let warnings: Vec<&&Value> = x.iter().filter(|o| o["type"] == "churn_warning").collect();
    assert_eq!(warnings.len(), 1, "exactly one warning: {warnings:#?}");
    let w = warnings[0];
    assert_eq!(w["reasons"], json!(["overdue"]));
    assert_eq!(w["as_of"], date(41));
    assert_eq!(w["cause_event_id"], "timer");
    assert_eq!(w["ts"], format!("{}T00:00:00Z", date(41)));
    assert_eq!(w["rfm"]["recency_days"], 31);
    assert_eq!(w["triggers"]["overdue"]["threshold_days"], 30.0);
    assert_eq!(w["severity"], "high");

    let recovered: Vec<&&Value> = x
        .iter()
        .filter(|o| o["type"] == "churn_recovered")
        .collect();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["cause_event_id"], "x-60");
    assert_eq!(recovered[0]["reasons"], json!(["overdue"]));
    assert_eq!(recovered[0]["as_of"], date(60));
}

/// With no event at all from a customer, a purchase leaving the window changes their
/// tiers on the right day (window expiry), and lapsing happens on day 180.
#[test]
fn window_expiry_and_lapse_follow_the_calendar() {
    let mut lines = vec![purchase("y-0", "Y", &date(0), 50.0)];
    for day in 0..=370 {
        lines.push(purchase(&format!("o-{day}"), "O", &date(day), 1.0));
    }
    let tmp = tempdir();
    let input = tmp.path().join("in.jsonl");
    write_lines(&input, &lines);
    let state = tmp.path().join("state");
    let (outputs, _, _) = replay(&state, &[&input], &[]);
    let y: Vec<&Value> = outputs
        .iter()
        .filter(|o| o["customer_id"] == "Y" && o["type"] == "tier_changed")
        .collect();
    let lapsed = y
        .iter()
        .find(|o| o["to"]["lifecycle"] == "lapsed")
        .expect("Y lapses");
    assert_eq!(lapsed["as_of"], date(180));
    assert_eq!(lapsed["cause_event_id"], "timer");
    // The day-0 purchase leaves the 365-day window on day 365: frequency drops to 0.
    let expired = y
        .iter()
        .find(|o| o["rfm"]["frequency"] == 0)
        .expect("the purchase expires");
    assert_eq!(expired["as_of"], date(365));
    let d = dump(&state, None, &[]);
    let yd = d.iter().find(|r| r["customer_id"] == "Y").unwrap();
    assert_eq!(
        (yd["frequency"].as_u64(), yd["lifetime_purchases"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(yd["recency_days"], 370);
}
