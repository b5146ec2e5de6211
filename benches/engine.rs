//! Criterion benchmarks: the parser, one pure engine step, and the processor over
//! RocksDB (events in, state + outputs out). Whole-run figures for `strata replay` are
//! in BENCHMARKS.md with the commands that reproduce them.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use strata::config::Settings;
use strata::customer::CustomerState;
use strata::engine::{Effects, Engine};
use strata::event::{parse_event, Event, ParseContext};
use strata::gen::{generate, GenArgs};
use strata::policy::Thresholds;
use strata::population::Population;
use strata::processor::Processor;
use strata::store::codec::{decode_customer, encode_customer};
use strata::store::rocks::RocksStore;

fn events(customers: u64, days: u32) -> Vec<Event> {
    let s = Settings::defaults();
    let ctx = ParseContext::for_files(&s);
    let mut data = Vec::new();
    generate(
        &GenArgs {
            customers,
            days,
            seed: 1,
            start: 20_000,
        },
        &mut data,
    )
    .unwrap();
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_event(l, &ctx).unwrap())
        .collect()
}

fn parse(c: &mut Criterion) {
    let s = Settings::defaults();
    let ctx = ParseContext::for_files(&s);
    let line = br#"{"event_id":"g1-123456","customer_id":"c0012345","type":"purchase","ts":"2026-11-20T18:00:00+08:00","amount":129.90,"currency":"CNY","order_id":"o123456"}"#;
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("purchase", |b| {
        b.iter(|| parse_event(black_box(line), &ctx).unwrap())
    });
    g.finish();
}

/// One event applied to an in-memory customer: the pure engine cost, no storage.
fn engine_step(c: &mut Criterion) {
    let s = Settings::defaults();
    let engine = Engine::new(&s);
    let evs = events(2_000, 120);
    let t = Thresholds {
        purchasers: 1000,
        sum_last_day: 1000 * 20_100,
        sum_frequency: 3000,
        sum_micros: 1000 * 300_000_000,
        pareto_high: Some(500_000_000),
        pareto_medium: Some(100_000_000),
        ..Thresholds::default()
    };
    // The same with the predictive models in force: P(alive) in the churn rules
    // and the day it crosses the threshold in every customer's timer.
    let tm = Thresholds {
        model: Some(strata::predict::model::Model {
            fitted_on: 20_000,
            customers: 2_000,
            bgnbd: strata::predict::bgnbd::BgNbd {
                r: 0.243,
                alpha: 30.9,
                a: 0.793,
                b: 2.426,
            },
            log_likelihood: 0.0,
            gamma_gamma: None,
        }),
        ..t.clone()
    };
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(evs.len() as u64));
    for (name, th) in [
        ("apply_event (2k customers, 120 days)", &t),
        ("apply_event with a model (2k customers, 120 days)", &tm),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || (vec![CustomerState::default(); 2_000], Population::default()),
                |(mut states, mut pop)| {
                    let mut fx = Effects::default();
                    for ev in &evs {
                        let i: usize = ev.customer_id[1..].parse().unwrap();
                        let clock = ev.day;
                        pop.advance(clock, 365, clock - 365);
                        engine.apply_event(
                            &mut states[i],
                            false,
                            ev,
                            false,
                            clock,
                            th,
                            &mut pop,
                            &mut fx,
                        );
                        fx.outputs.clear();
                    }
                    states
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The processor over RocksDB: cache, timers, recalibration, atomic batches.
fn processor(c: &mut Criterion) {
    let s = Arc::new(Settings::defaults());
    let evs = events(20_000, 60);
    let mut g = c.benchmark_group("processor");
    g.sample_size(10);
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("rocksdb (20k customers, 60 days)", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let store = RocksStore::open(dir.path(), 64, 32).unwrap();
                let mut p = Processor::open(s.clone(), store).unwrap();
                for ev in &evs {
                    p.process(ev).unwrap();
                    black_box(p.take_outputs());
                }
                p.flush().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// A Gamma(shape, 1) draw (Marsaglia & Tsang; shape < 1 through Gamma(shape + 1)·U^(1/shape)).
fn gamma(rng: &mut impl rand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.gen();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (u1, u2): (f64, f64) = (rng.gen(), rng.gen());
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * z).powi(3);
        let u: f64 = rng.gen();
        if v > 0.0 && u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// 1M customers drawn from the BG/NBD process itself (r 0.25, α 30 days, a 0.8,
/// b 2.4; first purchases spread over a year, observed to day 364) in the
/// engine's histogram; then one fit of both models.
fn model_fit(c: &mut Criterion) {
    use rand::{Rng, SeedableRng};
    use strata::predict::model::{fit, Histogram, Inputs};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut h = Histogram::default();
    let end = 364;
    for _ in 0..1_000_000 {
        let lambda = gamma(&mut rng, 0.25) / 30.0;
        let (xa, xb) = (gamma(&mut rng, 0.8), gamma(&mut rng, 2.4));
        let p = xa / (xa + xb);
        let first = rng.gen_range(0..=end);
        let (mut t, mut last, mut days) = (first as f64, first, 0u32);
        loop {
            if rng.gen::<f64>() < p {
                break;
            }
            t += -(1.0 - rng.gen::<f64>()).ln() / lambda;
            if t >= (end + 1) as f64 {
                break;
            }
            if t as i32 > last {
                last = t as i32;
                days += 1;
            }
        }
        let spend = (days > 0).then(|| 10.0 + 90.0 * rng.gen::<f64>());
        h.count(
            &Inputs {
                x: days,
                t_x: last - first,
                first,
                spend,
            },
            true,
        );
    }
    let m = fit(&h, end, 100).unwrap();
    eprintln!(
        "model fit over 1M simulated customers: {} histogram rows, {} spend rows; r {:.4} α {:.3} a {:.4} b {:.4}",
        h.bg.len(), h.gg.len(), m.bgnbd.r, m.bgnbd.alpha, m.bgnbd.a, m.bgnbd.b
    );
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.bench_function("fit_1m_customers", |b| {
        b.iter(|| black_box(fit(&h, end, 100).unwrap()))
    });
    g.finish();
}

/// Customer records as the processor reads and writes them at every event (2,000
/// customers after a year of generated events: their day buckets, purchase days and
/// event-id hashes).
fn codec(c: &mut Criterion) {
    let s = Settings::defaults();
    let engine = Engine::new(&s);
    let evs = events(2_000, 365);
    let t = Thresholds::default();
    let mut states = vec![CustomerState::default(); 2_000];
    let mut pop = Population::default();
    let mut fx = Effects::default();
    for ev in &evs {
        let i: usize = ev.customer_id[1..].parse().unwrap();
        pop.advance(ev.day, 365, ev.day - 365);
        engine.apply_event(
            &mut states[i],
            false,
            ev,
            false,
            ev.day,
            &t,
            &mut pop,
            &mut fx,
        );
        fx.outputs.clear();
    }
    let records: Vec<Vec<u8>> = states
        .iter()
        .map(|c| {
            let mut b = Vec::new();
            encode_customer(c, &mut b);
            b
        })
        .collect();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("decode_customer (2k customers, 365 days)", |b| {
        b.iter(|| {
            for r in &records {
                black_box(decode_customer(black_box(r)).unwrap());
            }
        })
    });
    g.bench_function("encode_customer (2k customers, 365 days)", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            for c in &states {
                encode_customer(black_box(c), &mut buf);
                black_box(&buf);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, parse, engine_step, processor, model_fit, codec);
criterion_main!(benches);
