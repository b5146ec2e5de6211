//! Engine properties, checked on random small streams against the in-memory store
//! (fast, many cases) and once through the CLI on RocksDB.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use strata::config::Settings;
use strata::dump::{self, DumpRecord};
use strata::event::{ComplaintSeverity, Event, EventKind};
use strata::processor::{Audit, Processor};
use strata::store::MemStore;

use crate::util::*;

const DAY_MS: i64 = 86_400_000;

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        3 => (0u64..50_000).prop_map(|c| EventKind::Purchase { amount_micros: c * 10_000 }),
        1 => Just(EventKind::Interaction { intent: false }),
        1 => prop_oneof![Just(ComplaintSeverity::Low), Just(ComplaintSeverity::High)]
            .prop_map(|severity| EventKind::Complaint { severity }),
    ]
}

/// Up to 60 events of up to 5 customers over 430 days: spans more than the window, so
/// late events, pruning, timers and recalibrations all happen.
fn stream() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0u8..5, 0i32..430, kind(), 0i64..DAY_MS), 1..60).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (c, day, kind, ms))| Event {
                event_id: format!("e{i}"),
                customer_id: format!("c{c}"),
                kind,
                ts_millis: 20_000 * DAY_MS + day as i64 * DAY_MS + ms,
                day: 20_000 + day,
            })
            .collect()
    })
}

fn settings() -> Arc<Settings> {
    Arc::new(Settings::defaults())
}

/// Process `parts` one after another, each with a fresh processor over the same store
/// (like separate `strata replay` runs); return the processors' total new outputs.
fn run(store: &MemStore, parts: &[&[Event]]) -> usize {
    let mut outputs = 0;
    for part in parts {
        let mut p = Processor::open(settings(), store).unwrap();
        for e in *part {
            p.process(e).unwrap();
            outputs += p.take_outputs().len();
        }
        p.flush().unwrap();
        outputs += p.take_outputs().len();
        // The incremental machinery (population sums, monetary histogram, indexes that
        // steer recalibration) must agree with brute force.
        assert_eq!(
            p.audit().unwrap(),
            Audit::default(),
            "incremental state disagrees with a full scan"
        );
    }
    outputs
}

fn dumps(store: &MemStore) -> Vec<Vec<DumpRecord>> {
    let s = settings();
    let clock = dump::stored_clock(&store).unwrap().unwrap();
    [0, 1, 45, 200]
        .iter()
        .map(|d| {
            let mut v = Vec::new();
            dump::dump(&store, &s, clock + d, &mut |r| {
                v.push(r);
                Ok(())
            })
            .unwrap();
            v
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_order_gives_the_same_dump((events, shuffled) in stream().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))) {
        let a = MemStore::default();
        run(&a, &[&events]);
        let b = MemStore::default();
        run(&b, &[&shuffled]);
        prop_assert_eq!(dumps(&a), dumps(&b));
    }

    #[test]
    fn replaying_twice_changes_nothing(events in stream()) {
        let a = MemStore::default();
        run(&a, &[&events]);
        let before = dumps(&a);
        let again = run(&a, &[&events]);
        prop_assert_eq!(again, 0, "a second replay must publish nothing");
        prop_assert_eq!(dumps(&a), before);
    }

    #[test]
    fn two_halves_equal_the_whole(events in stream(), cut in 0.0f64..1.0) {
        let k = (events.len() as f64 * cut) as usize;
        let whole = MemStore::default();
        let n_whole = run(&whole, &[&events]);
        let split = MemStore::default();
        let n_split = run(&split, &[&events[..k], &events[k..]]);
        prop_assert_eq!(dumps(&whole), dumps(&split));
        prop_assert_eq!(n_whole, n_split, "the same outputs are published");
    }

    /// When the processor writes — after every few events, or once at the end —
    /// changes nothing: the same outputs in the same order and the same store,
    /// column family by column family.
    #[test]
    fn the_write_schedule_changes_nothing(events in stream(), every in 1usize..6) {
        use strata::store::Cf;
        let outputs = |store: &MemStore, batch_events: usize| {
            let mut raw = strata::config::Config::default();
            raw.engine.batch_events = batch_events;
            let s = Arc::new(Settings::new(raw, strata::config::Clock::Event).unwrap());
            let mut p = Processor::open(s, store).unwrap();
            let mut out = Vec::new();
            for e in &events {
                p.process(e).unwrap();
                out.extend(p.take_outputs().into_iter().map(|o| serde_json::to_string(&o).unwrap()));
            }
            p.flush().unwrap();
            out
        };
        let (often, once) = (MemStore::default(), MemStore::default());
        prop_assert_eq!(outputs(&often, every), outputs(&once, 1_000_000));
        for cf in Cf::ALL {
            prop_assert_eq!(all(&often, cf), all(&once, cf), "{:?}", cf);
        }
    }

    /// `strata_timers_pending`: processors sharing the gauge (the partitions of an
    /// instance) add their timers to it at every write and take them back when
    /// dropped; it equals the stored customer records that carry a timer.
    #[test]
    fn the_timers_gauge_counts_the_timers_of_the_partitions_held(
        events in stream(),
        cut in 0usize..100,
    ) {
        use strata::store::{Cf, Store};
        let timers = |store: &MemStore| {
            let mut n = 0i64;
            store
                .scan(Cf::Customers, &[], None, &mut |_, v| {
                    n += strata::store::codec::decode_customer(v).unwrap().timer.is_some() as i64;
                    Ok(true)
                })
                .unwrap();
            n
        };
        let gauge = prometheus::IntGauge::new("t", "t").unwrap();
        let (sa, sb) = (MemStore::default(), MemStore::default());
        let (ea, eb) = events.split_at(cut.min(events.len()));
        let mut a = Processor::open(settings(), &sa).unwrap();
        a.report_timers_to(gauge.clone());
        let mut b = Processor::open(settings(), &sb).unwrap();
        b.report_timers_to(gauge.clone());
        for (p, evs) in [(&mut a, ea), (&mut b, eb)] {
            for e in evs {
                p.process(e).unwrap();
            }
            p.flush().unwrap();
        }
        prop_assert_eq!(gauge.get(), timers(&sa) + timers(&sb));
        drop(a);
        prop_assert_eq!(gauge.get(), timers(&sb));
        // Reopened, a partition reports what it holds from the start.
        let mut a = Processor::open(settings(), &sa).unwrap();
        a.report_timers_to(gauge.clone());
        prop_assert_eq!(gauge.get(), timers(&sa) + timers(&sb));
        drop(a);
        drop(b);
        prop_assert_eq!(gauge.get(), 0);
    }

    /// The decoded cache and the record cache change nothing but speed: with a
    /// decoded cache of a customer or two (changed customers wait for the write
    /// encoded in the record cache) and record budgets from none to a few
    /// records (records refused mid-stream, loads then read the store), the outputs,
    /// the stored records and the audit (which checks every held record against the
    /// store) are those of the defaults, after every event and across reopenings.
    #[test]
    fn the_caches_change_nothing_but_speed(
        events in stream(),
        more in stream(),
        decoded in 1usize..4,
        budget in 0usize..1500,
    ) {
        use strata::store::Cf;
        type Seen = (Vec<String>, Vec<(Vec<u8>, Vec<u8>)>);
        let go = |small: bool| -> Result<Seen, TestCaseError> {
            let store = MemStore::default();
            let s = if small {
                let mut s = Settings::defaults();
                s.raw.engine.customer_cache = decoded;
                Arc::new(s)
            } else {
                settings()
            };
            let mut out = Vec::new();
            for part in [&events, &more] {
                let mut p = Processor::open(s.clone(), &store).unwrap();
                if small {
                    p.set_record_budget(budget).unwrap();
                }
                for e in part {
                    p.process(e).unwrap();
                    out.extend(p.take_outputs().into_iter().map(|o| serde_json::to_string(&o).unwrap()));
                }
                p.flush().unwrap();
                out.extend(p.take_outputs().into_iter().map(|o| serde_json::to_string(&o).unwrap()));
                prop_assert_eq!(p.audit().unwrap(), Audit::default());
            }
            Ok((out, all(&store, Cf::Customers)))
        };
        prop_assert_eq!(go(true)?, go(false)?);
    }

    /// The changelog carries only the replicated column families; the timer calendar
    /// and the recalibration indexes live in memory and are rebuilt from the customer
    /// records at open. A store restored from the replicated families must go on
    /// exactly as the original: the same outputs for the events that follow, the same
    /// store after them, a clean audit (run by `run`), and nothing in the derived
    /// column families (they are no longer written).
    #[test]
    fn a_restored_store_goes_on_as_the_original(events in stream(), more in stream()) {
        use strata::store::{Batch, Cf, Store};
        let a = MemStore::default();
        run(&a, &[&events]);
        let b = MemStore::default();
        let mut copy = Batch::default();
        for cf in Cf::ALL.into_iter().filter(|&cf| strata::kafka::changelog::replicated(cf)) {
            for (k, v) in all(&a, cf) {
                copy.put(cf, k, v);
            }
        }
        b.write(copy).unwrap();
        let outputs = |store: &MemStore| {
            let mut p = Processor::open(settings(), store).unwrap();
            let mut out = Vec::new();
            for e in &more {
                p.process(e).unwrap();
                out.extend(p.take_outputs().into_iter().map(|o| serde_json::to_string(&o).unwrap()));
            }
            p.flush().unwrap();
            out.extend(p.take_outputs().into_iter().map(|o| serde_json::to_string(&o).unwrap()));
            prop_assert_eq!(p.audit().unwrap(), Audit::default());
            Ok(out)
        };
        prop_assert_eq!(outputs(&a)?, outputs(&b)?);
        for cf in Cf::ALL {
            prop_assert_eq!(all(&a, cf), all(&b, cf), "{:?}", cf);
        }
        for cf in strata::processor::DERIVED {
            prop_assert!(all(&a, cf).is_empty(), "{:?} written", cf);
        }
    }
}

fn all(store: &MemStore, cf: strata::store::Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    use strata::store::Store;
    let mut out = Vec::new();
    store
        .scan(cf, &[], None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
    out
}

/// The same three properties through the binary, on RocksDB, with a real file.
#[test]
fn cli_replay_is_idempotent_and_splittable() {
    let tmp = tempdir();
    let gen = gen_file(
        tmp.path(),
        "g.jsonl",
        &["--customers", "300", "--days", "200", "--seed", "3"],
    );
    let lines: Vec<String> = std::fs::read_to_string(&gen)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let (a, b) = lines.split_at(lines.len() / 2);
    let first = tmp.path().join("first.jsonl");
    let second = tmp.path().join("second.jsonl");
    write_lines(&first, a);
    write_lines(&second, b);

    let whole = tmp.path().join("whole");
    let (out_whole, _, _) = replay(&whole, &[&gen], &[]);
    let dump_whole = dump(&whole, None, &[]);
    let (again, _, stderr) = replay(&whole, &[&gen], &[]);
    assert!(
        again.is_empty(),
        "second replay published {} events",
        again.len()
    );
    assert!(
        stderr.contains(&format!("0 applied, {} duplicate", lines.len())),
        "{stderr}"
    );
    assert_eq!(dump(&whole, None, &[]), dump_whole);

    let split = tmp.path().join("split");
    let (out1, _, _) = replay(&split, &[&first], &[]);
    let (out2, _, _) = replay(&split, &[&second], &[]);
    assert_eq!(dump(&split, None, &[]), dump_whole);
    let ids = |v: &[Value]| {
        v.iter()
            .map(|o| o["event_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut joined = ids(&out1);
    joined.extend(ids(&out2));
    assert_eq!(
        joined,
        ids(&out_whole),
        "same outputs with the same deterministic ids"
    );
}

/// At realistic scale, on RocksDB: the indexes that steer recalibration miss nobody.
/// Audited every few weeks of stream time.
#[test]
fn recalibration_misses_nobody_on_a_generated_year() {
    use strata::event::{parse_event, ParseContext};
    use strata::gen::{generate, GenArgs};
    use strata::store::rocks::RocksStore;

    let mut data = Vec::new();
    generate(
        &GenArgs {
            customers: 3000,
            days: 365,
            seed: 17,
            start: 20_000,
        },
        &mut data,
    )
    .unwrap();
    let tmp = tempdir();
    let s = settings();
    let store = RocksStore::open(tmp.path(), 8, 4).unwrap();
    let mut p = Processor::open(s.clone(), store).unwrap();
    let ctx = ParseContext::for_files(&s);
    let mut audits = 0;
    let mut last_audit = 20_000;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let ev = parse_event(line, &ctx).unwrap();
        p.process(&ev).unwrap();
        p.take_outputs();
        let clock = p.clock().unwrap();
        if clock - last_audit >= 23 {
            assert_eq!(p.audit().unwrap(), Audit::default(), "as of day {clock}");
            last_audit = clock;
            audits += 1;
        }
    }
    assert!(audits >= 10);
    assert!(p.counters.recalibration_visits > 0);
}

/// A crash after the clock's advance was written but before that day's recalibration
/// finished: reopening the store runs the recalibration again, and the audit holds.
#[test]
fn an_interrupted_recalibration_is_resumed_on_open() {
    use strata::population::Population;
    use strata::store::{Batch, Cf, Store};

    let store = MemStore::default();
    let evs: Vec<Event> = (0..40)
        .map(|i| Event {
            event_id: format!("e{i}"),
            customer_id: format!("c{}", i % 7),
            kind: EventKind::Purchase {
                amount_micros: (i as u64 % 5 + 1) * 1_000_000,
            },
            ts_millis: (20_000 + i as i64 / 4) * DAY_MS,
            day: 20_000 + i / 4,
        })
        .collect();
    run(&store, &[&evs]);
    // Move the stored clock one day on, as the first flush of the next day's work would.
    let mut pop =
        Population::decode(&store.get(Cf::Meta, b"population").unwrap().unwrap()).unwrap();
    let next = pop.clock.unwrap() + 1;
    pop.advance(next, 365, next - 364);
    let mut buf = Vec::new();
    pop.encode(&mut buf);
    let mut b = Batch::default();
    b.put(Cf::Meta, b"population", buf);
    store.write(b).unwrap();

    let mut p = Processor::open(settings(), &store).unwrap();
    assert_eq!(
        p.counters.recalibrations, 1,
        "open resumes the due recalibration"
    );
    assert_eq!(p.audit().unwrap(), Audit::default());
    let again = Processor::open(settings(), &store).unwrap();
    assert_eq!(again.counters.recalibrations, 0, "and only once");
}

/// `Processor::stagger_batches` (replay's partitions take turns at writing): a head
/// start brings the first write forward, and only the first.
#[test]
fn a_head_start_brings_only_the_first_write_forward() {
    use strata::store::{Cf, Store};
    let stored = |store: &MemStore| {
        let mut n = 0;
        store
            .scan(Cf::Customers, &[], None, &mut |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    };
    let purchase = |i: usize| Event {
        event_id: format!("e{i}"),
        customer_id: format!("c{i}"),
        kind: EventKind::Purchase {
            amount_micros: 1_000_000,
        },
        ts_millis: 20_000 * DAY_MS + 1,
        day: 20_000,
    };
    for (head, first, second) in [(0, 0, 10), (6, 4, 4), (6, 4, 14)] {
        let mut raw = strata::config::Config::default();
        raw.engine.batch_events = 10;
        let s = Arc::new(Settings::new(raw, strata::config::Clock::Event).unwrap());
        let store = MemStore::default();
        let mut p = Processor::open(s, &store).unwrap();
        p.stagger_batches(head);
        for i in 0..4 {
            p.process(&purchase(i)).unwrap();
        }
        assert_eq!(stored(&store), first, "head start {head}: after 4 events");
        // The next batch is a whole one: written after 10 more events, not before.
        let more = if second == 14 { 10 } else { 9 };
        for i in 4..4 + more {
            p.process(&purchase(i)).unwrap();
        }
        assert_eq!(
            stored(&store),
            second,
            "head start {head}: after {} events",
            4 + more
        );
    }
}
