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
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("apply_event (2k customers, 120 days)", |b| {
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
                        &t,
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

criterion_group!(benches, parse, engine_step, processor);
criterion_main!(benches);
