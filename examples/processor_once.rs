//! The processor bench's work done once, for instruction counts that do not
//! drift with the machine (`benches/engine.rs`'s `processor/rocksdb`: 20,000
//! generated customers over 60 days through `Processor` over RocksDB):
//!
//! ```sh
//! cargo build --release --example processor_once
//! valgrind --tool=callgrind target/release/examples/processor_once
//! NOMODEL=1 valgrind --tool=callgrind target/release/examples/processor_once   # no model fitted
//! ```

use std::sync::Arc;

use strata::config::Settings;
use strata::event::{parse_event, Event, ParseContext};
use strata::gen::{generate, GenArgs};
use strata::processor::Processor;
use strata::store::rocks::RocksStore;

fn main() {
    let mut s = Settings::defaults();
    if std::env::var_os("NOMODEL").is_some() {
        s.raw.predict.min_repeat_customers = u64::MAX;
    }
    let s = Arc::new(s);
    let ctx = ParseContext::for_files(&s);
    let mut data = Vec::new();
    let args = GenArgs {
        customers: 20_000,
        days: 60,
        seed: 1,
        start: 20_000,
    };
    generate(&args, &mut data).expect("generating into memory");
    let events: Vec<Event> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_event(l, &ctx).expect("generated events are valid"))
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let started = std::time::Instant::now();
    let store = RocksStore::open(dir.path(), 64, 32).expect("a store");
    let mut p = Processor::open(s, store).expect("a processor");
    let mut outputs = 0;
    for ev in &events {
        p.process(ev).expect("applied");
        outputs += p.take_outputs().len();
    }
    p.flush().expect("written");
    eprintln!(
        "{} events, {outputs} outputs, {:.3} s",
        events.len(),
        started.elapsed().as_secs_f64()
    );
}
