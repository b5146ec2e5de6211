//! `strata gen`: a seeded, reproducible synthetic workload.
//!
//! Each customer gets a profile drawn from the seed: a join day (40 % are already
//! customers on day 0), a purchase rate (log-normal, so a few buy often and most
//! rarely: Poisson-like arrivals with exponential gaps), a spend scale (Pareto, so a
//! small share of customers brings most of the revenue), an interaction rate, a
//! complaint rate (5 % are unhappy and complain ten times as often), and for a quarter
//! of them a day on which they go silent for good; a tenth spend less and less. Events
//! come out in time order, merged across customers through a heap, so memory is
//! O(customers), not O(events). [`topic`] produces the stream to Kafka (`--topic`).

pub mod topic;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::day::{rfc3339_utc, Day};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone)]
pub struct GenArgs {
    pub customers: u64,
    pub days: u32,
    pub seed: u64,
    /// First day (days since 1970-01-01, UTC).
    pub start: Day,
}

struct Profile {
    rates: [f64; 3],
    spend_scale: f64,
    decay_from: Option<i64>,
    silent_at: i64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GenStats {
    pub events: u64,
    pub purchases: u64,
    pub interactions: u64,
    pub complaints: u64,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn exp_gap_ms(rng: &mut ChaCha8Rng, rate_per_day: f64) -> i64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    ((-u.ln() / rate_per_day) * DAY_MS as f64) as i64 + 1
}

fn profile(rng: &mut ChaCha8Rng, start: i64, end: i64) -> (Profile, i64) {
    let span = end - start;
    let join = if rng.gen_bool(0.4) {
        start
    } else {
        start + rng.gen_range(0..span)
    };
    let purchase = (0.017f64.ln() + 0.9 * normal(rng)).exp().min(0.6);
    let interaction = 0.6 * purchase + 0.004;
    let unhappy = rng.gen_bool(0.05);
    let complaint = if unhappy { 0.01 } else { 0.0008 };
    // Pareto(x_m = 15, α = 1.6), capped.
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let spend_scale = (15.0 / u.powf(1.0 / 1.6)).min(5000.0);
    let silent_at = if rng.gen_bool(0.25) {
        join + rng.gen_range(0..(end - join).max(1))
    } else {
        i64::MAX
    };
    let decay_from = rng
        .gen_bool(0.1)
        .then(|| join + rng.gen_range(0..(end - join).max(1)));
    (
        Profile {
            rates: [purchase, interaction, complaint],
            spend_scale,
            decay_from,
            silent_at,
        },
        join,
    )
}

const CHANNELS: [&str; 4] = ["app", "web", "store", "mini_program"];
const ACTIONS: [&str; 4] = ["view", "click", "add_to_cart", "search"];
const CATEGORIES: [&str; 4] = ["delivery", "quality", "service", "billing"];

/// Write `args.customers` customers' events over `args.days` days as JSON Lines.
pub fn generate(args: &GenArgs, out: &mut dyn Write) -> io::Result<GenStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let start = args.start as i64 * DAY_MS;
    let end = start + args.days as i64 * DAY_MS;
    let mut profiles = Vec::with_capacity(args.customers as usize);
    // Heap of (next event time, customer, stream) — min first.
    let mut heap = BinaryHeap::with_capacity(args.customers as usize * 3);
    for c in 0..args.customers {
        let (p, join) = profile(&mut rng, start, end);
        for (stream, &rate) in p.rates.iter().enumerate() {
            let t = join + exp_gap_ms(&mut rng, rate);
            if t < end && t < p.silent_at {
                heap.push(Reverse((t, c as u32, stream as u8)));
            }
        }
        profiles.push(p);
    }
    let mut stats = GenStats::default();
    let mut line = String::with_capacity(256);
    while let Some(Reverse((t, c, stream))) = heap.pop() {
        let p = &profiles[c as usize];
        stats.events += 1;
        let id = format!("g{}-{}", args.seed, stats.events);
        let ts = rfc3339_utc(t - t % 1000);
        line.clear();
        use std::fmt::Write as _;
        match stream {
            0 => {
                stats.purchases += 1;
                let mut amount = p.spend_scale * (0.4 * normal(&mut rng)).exp();
                if let Some(d) = p.decay_from {
                    if t > d {
                        amount *= (-((t - d) as f64) / (60.0 * DAY_MS as f64)).exp();
                    }
                }
                let cents = (amount * 100.0).round().max(1.0) as u64;
                let _ = write!(
                    line,
                    r#"{{"event_id":"{id}","customer_id":"c{c:07}","type":"purchase","ts":"{ts}","amount":{}.{:02},"currency":"CNY","order_id":"o{}"}}"#,
                    cents / 100,
                    cents % 100,
                    stats.events
                );
            }
            1 => {
                stats.interactions += 1;
                let _ = write!(
                    line,
                    r#"{{"event_id":"{id}","customer_id":"c{c:07}","type":"interaction","ts":"{ts}","channel":"{}","action":"{}"}}"#,
                    CHANNELS[rng.gen_range(0..4)],
                    ACTIONS[rng.gen_range(0..4)]
                );
            }
            _ => {
                stats.complaints += 1;
                let r: f64 = rng.gen();
                let sev = if r < 0.5 {
                    "low"
                } else if r < 0.85 {
                    "medium"
                } else {
                    "high"
                };
                let _ = write!(
                    line,
                    r#"{{"event_id":"{id}","customer_id":"c{c:07}","type":"complaint","ts":"{ts}","severity":"{sev}","category":"{}"}}"#,
                    CATEGORIES[rng.gen_range(0..4)]
                );
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        let next = t + exp_gap_ms(&mut rng, p.rates[stream as usize]);
        if next < end && next < p.silent_at {
            heap.push(Reverse((next, c, stream)));
        }
    }
    out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_time_ordered() {
        let args = GenArgs {
            customers: 200,
            days: 60,
            seed: 7,
            start: 20_000,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        let sa = generate(&args, &mut a).unwrap();
        generate(&args, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(sa.purchases > 0 && sa.interactions > 0);
        let ts: Vec<String> = String::from_utf8(a)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    }
}
