//! A process's partitions applied side by side (`strata replay`), with population
//! statistics as exact as one store's.
//!
//! Customers are placed by Kafka's murmur2 partitioner ([`partition_of`]), one
//! [`Processor`] (and one RocksDB) per partition, the layout `strata run` keeps.
//! Partitions share nothing between clock moves: a customer's figures, tiers and
//! timers are its own, and the thresholds in force change only at a recalibration.
//! So the stream is cut at every move of the stream clock:
//!
//! 1. the events up to the next clock move are applied, each partition's on a worker
//!    thread (in input order within the partition);
//! 2. every partition moves its clock, firing its timers (on the workers);
//! 3. when a recalibration is due, the thresholds are computed once over all
//!    partitions — summed population sums, the exact Pareto cut-offs (the bucket
//!    holding a cut-off is read from every partition), one model fit over the merged
//!    histograms, CLV cut-offs over every customer — and each partition re-evaluates
//!    its customers against them (on the workers).
//!
//! Before the first recalibration the live means are in force; those events are
//! applied one at a time in input order, each partition told the others' sums, so
//! they see the same means as a single store would.
//!
//! Each customer's outputs come in the order one store would give them. The
//! outputs of one clock move are written partition by partition, so the output file
//! is the same for the same input and configuration.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::cluster::partition_of;
use crate::config::{Settings, ValueMethod};
use crate::day::Day;
use crate::event::Event;
use crate::output::Output;
use crate::policy::{self, Thresholds};
use crate::population::Population;
use crate::predict::model::{Histogram, Model};
use crate::processor::{exact_pareto_cutoffs, fit_population, Counters, Processor};
use crate::replay::ReplayError;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Outputs buffered for the output file are written once they pass this size even
/// in the middle of a day (deterministically: sizes are a function of the input).
const SPILL_BYTES: usize = 32 << 20;

pub struct Partitions<S: Store> {
    parts: Vec<Processor<S>>,
    settings: Arc<Settings>,
    threads: usize,
    /// Each partition's outputs not yet written, as JSON lines.
    buffered: Vec<Vec<u8>>,
    metrics: Arc<Metrics>,
}

/// The settings one of `n` partitions runs with: the customer and record caches
/// shared out.
pub fn partition_settings(s: &Settings, n: usize) -> Arc<Settings> {
    let mut s = s.clone();
    s.raw.engine.customer_cache = (s.raw.engine.customer_cache / n).max(1);
    s.raw.engine.record_cache_mb /= n;
    Arc::new(s)
}

impl<S: Store + Send> Partitions<S> {
    /// Open over one store per partition (in partition order), bringing partitions
    /// left apart by an interrupted run to the same clock and thresholds.
    pub fn open(
        settings: Arc<Settings>,
        stores: Vec<S>,
        metrics: Arc<Metrics>,
        out: &mut dyn Write,
    ) -> Result<Self, StoreError> {
        let n = stores.len().max(1);
        let ps = partition_settings(&settings, n);
        let batch = ps.raw.engine.batch_events;
        let parts = stores
            .into_iter()
            .enumerate()
            .map(|(k, st)| {
                let mut p = Processor::open_partition(ps.clone(), st)?;
                p.stagger_batches(batch * k / n);
                Ok(p)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(parts.len());
        let mut me = Partitions {
            buffered: vec![Vec::new(); parts.len()],
            parts,
            settings,
            threads,
            metrics,
        };
        if let Some(clock) = me.clock() {
            let apart = me.parts.iter().any(|p| p.clock() != Some(clock))
                || me
                    .parts
                    .windows(2)
                    .any(|w| w[0].thresholds_day() != w[1].thresholds_day())
                || me.parts.iter().any(|p| p.recalibration_pending().is_some());
            if apart {
                me.each(|p, _| p.advance_days(clock).map(|_| ()))?;
                me.recalibrate(clock)?;
                me.each(|p, _| p.end_advance())?;
                me.write(out)
                    .map_err(|e| StoreError::Backend(format!("cannot write the output: {e}")))?;
            }
        }
        Ok(me)
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn parts(&self) -> &[Processor<S>] {
        &self.parts
    }

    /// The stream clock (every partition's once they are in step).
    pub fn clock(&self) -> Option<Day> {
        self.parts.iter().filter_map(|p| p.clock()).max()
    }

    /// The population summary of all partitions together.
    pub fn population(&self) -> Population {
        let mut it = self.parts.iter();
        let first = it
            .next()
            .map(|p| p.population().clone())
            .unwrap_or_default();
        it.fold(first, |m, p| m.merged(p.population()))
    }

    /// The models in force.
    pub fn model(&self) -> Option<Model> {
        self.parts.first().and_then(|p| p.model())
    }

    /// All partitions' counters together (a recalibration counted once).
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for p in &self.parts {
            c.add_partition(&p.counters);
        }
        c
    }

    fn partition(&self, id: &str) -> usize {
        partition_of(id.as_bytes(), self.parts.len() as i32) as usize
    }

    /// Run `f` on every partition (with its output buffer), on the worker threads.
    fn each(
        &mut self,
        f: impl Fn(&mut Processor<S>, &mut Vec<u8>) -> Result<(), StoreError> + Sync,
    ) -> Result<(), StoreError> {
        let metrics = self.metrics.clone();
        let jobs: Vec<_> = self
            .parts
            .iter_mut()
            .zip(self.buffered.iter_mut())
            .collect();
        parallel(jobs, self.threads, |(p, buf)| {
            f(p, buf)?;
            take_outputs(p, buf, &metrics);
            Ok(())
        })
    }

    /// Move every partition's clock to `day` (recalibrating when due); outputs of
    /// the clock move before are written first.
    pub fn advance_to(&mut self, day: Day, out: &mut dyn Write) -> Result<(), ReplayError> {
        if self.clock().is_some_and(|c| day <= c) {
            return Ok(());
        }
        self.write(out).map_err(out_err)?;
        let moved = Mutex::new(false);
        self.each(|p, _| {
            let m = p.advance_days(day)?;
            *moved.lock().unwrap() |= m;
            Ok(())
        })?;
        if !moved.into_inner().unwrap() {
            return Ok(());
        }
        if self.parts[0].recalibration_due(day) {
            self.recalibrate(day)?;
        }
        self.each(|p, _| p.end_advance())?;
        Ok(())
    }

    /// A recalibration on `day` over all partitions (see the module docs).
    fn recalibrate(&mut self, day: Day) -> Result<(), StoreError> {
        let s = self.settings.clone();
        let merged = self.population();
        let parts = &self.parts;
        let (high, medium) = exact_pareto_cutoffs(&s, &merged, &mut |lo, hi| {
            let mut v = Vec::new();
            for p in parts {
                v.extend(p.monetary_in(lo, hi)?);
            }
            Ok(v)
        })?;
        let mut new = merged.thresholds(high, medium);
        let mut refit = None;
        // Counted before merging (and only when a refit is due): until there are
        // enough repeat customers, the merge (a few hundred thousand rows) would be
        // made every period for nothing.
        let enough = || {
            let repeat: u64 = self
                .parts
                .iter()
                .map(|p| p.histogram().repeat_customers(day))
                .sum();
            repeat >= s.raw.predict.min_repeat_customers
        };
        if self.parts.iter().any(|p| p.refit_due(day)) && enough() {
            let mut h = Histogram::default();
            for p in &self.parts {
                h.merge(p.histogram());
            }
            let previous = self.parts[0].current_model().copied();
            if let Some((m, secs)) = fit_population(&h, day, &s, previous.as_ref()) {
                for (i, p) in self.parts.iter_mut().enumerate() {
                    p.keep_refit((i == 0).then_some(secs));
                }
                refit = Some(m);
            }
        }
        new.model = refit.or(self.parts[0].current_model().copied());
        if s.raw.value_tiers.method == ValueMethod::Clv && new.model.is_some() {
            let mut values = Vec::new();
            for p in &mut self.parts {
                values.extend(p.clv_values(day, &new)?);
            }
            (new.pareto_high, new.pareto_medium) = policy::pareto_cutoffs(values, &s);
        }
        self.each(|p, _| p.recalibrate_to(day, new.clone(), refit))
    }

    /// Apply parsed events (input order, each valid), moving the clock as they go.
    pub fn process(&mut self, events: &[Event], out: &mut dyn Write) -> Result<(), ReplayError> {
        let mut i = 0;
        while i < events.len() {
            let day = events[i].day;
            if self.clock().is_none_or(|c| day > c) {
                self.advance_to(day, out)?;
            }
            let clock = self.clock().expect("the clock moved to the event");
            let j = i + events[i..].iter().take_while(|e| e.day <= clock).count();
            if self.parts[0].recalibrated() {
                self.apply(&events[i..j])?;
            } else {
                self.apply_live(&events[i..j])?;
            }
            i = j;
        }
        if self.buffered.iter().map(Vec::len).sum::<usize>() > SPILL_BYTES {
            self.write(out).map_err(out_err)?;
        }
        Ok(())
    }

    /// Events within one clock day, partitions side by side.
    fn apply(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let mut by_part: Vec<Vec<&Event>> = vec![Vec::new(); self.parts.len()];
        for ev in events {
            by_part[self.partition(&ev.customer_id)].push(ev);
        }
        let metrics = self.metrics.clone();
        let mut jobs: Vec<_> = self
            .parts
            .iter_mut()
            .zip(self.buffered.iter_mut())
            .zip(by_part)
            .filter(|(_, evs)| !evs.is_empty())
            .collect();
        // The longest first, so that the last to finish is a short one.
        jobs.sort_by_key(|(_, evs)| std::cmp::Reverse(evs.len()));
        parallel(jobs, self.threads, |((p, buf), evs)| {
            let handles = p.prefetch(evs.iter().map(|e| e.customer_id.as_str()))?;
            // Outputs taken every 1,024 events, not after each: their metrics
            // are counted per call (labelled series lookups).
            for (i, (ev, &h)) in evs.iter().zip(&handles).enumerate() {
                p.hint_ahead(&handles, i);
                p.process_known(ev, h)?;
                if i % 1024 == 1023 {
                    take_outputs(p, buf, &metrics);
                }
            }
            take_outputs(p, buf, &metrics);
            Ok(())
        })
    }

    /// Events before the first recalibration, one at a time: the live means in
    /// force cover every partition's customers, as in one store.
    fn apply_live(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let mut sums: Vec<Thresholds> = self
            .parts
            .iter()
            .map(|p| p.population().thresholds(None, None))
            .collect();
        for ev in events {
            let k = self.partition(&ev.customer_id);
            let mut others = Thresholds::default();
            for (_, t) in sums.iter().enumerate().filter(|&(i, _)| i != k) {
                others.purchasers += t.purchasers;
                others.sum_last_day += t.sum_last_day;
                others.sum_frequency += t.sum_frequency;
                others.sum_micros += t.sum_micros;
            }
            let p = &mut self.parts[k];
            p.set_live_peers(Some(others));
            p.process(ev)?;
            take_outputs(p, &mut self.buffered[k], &self.metrics);
            sums[k] = p.population().thresholds(None, None);
        }
        for p in &mut self.parts {
            p.set_live_peers(None);
        }
        Ok(())
    }

    /// Write every partition's buffered outputs, partition by partition.
    pub fn write(&mut self, out: &mut dyn Write) -> io::Result<()> {
        for b in &mut self.buffered {
            out.write_all(b)?;
            b.clear();
        }
        Ok(())
    }

    /// Write every partition's state (and the buffered outputs), one partition at a
    /// time: a write holds its batch twice over (the batch, then RocksDB's write
    /// batch and the memtable it fills), and here every partition has one at once —
    /// side by side, the end of a 1M replay was its peak of memory.
    pub fn flush(&mut self, out: &mut dyn Write) -> Result<(), ReplayError> {
        let threads = std::mem::replace(&mut self.threads, 1);
        let flushed = self.each(|p, _| p.flush());
        self.threads = threads;
        flushed?;
        self.write(out).map_err(out_err)?;
        Ok(())
    }
}

fn out_err(source: io::Error) -> ReplayError {
    ReplayError::Output {
        what: "the output".into(),
        source,
    }
}

fn take_outputs<S: Store>(p: &mut Processor<S>, buf: &mut Vec<u8>, metrics: &Metrics) {
    let outputs: Vec<Output> = p.take_outputs();
    if outputs.is_empty() {
        return;
    }
    metrics.observe_written(outputs.iter());
    for o in outputs {
        o.write_json(buf);
        buf.push(b'\n');
    }
}

/// Run `f` on every job, on up to `threads` threads (this one among them); the
/// first error stops the others' next jobs and is returned.
fn parallel<T: Send>(
    jobs: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<(), StoreError> + Sync,
) -> Result<(), StoreError> {
    if threads <= 1 || jobs.len() <= 1 {
        return jobs.into_iter().try_for_each(f);
    }
    let n = threads.min(jobs.len());
    let queue = Mutex::new(jobs.into_iter());
    let error: Mutex<Option<StoreError>> = Mutex::new(None);
    let work = || loop {
        if error.lock().unwrap().is_some() {
            break;
        }
        let Some(job) = queue.lock().unwrap().next() else {
            break;
        };
        if let Err(e) = f(job) {
            error.lock().unwrap().get_or_insert(e);
            break;
        }
    };
    std::thread::scope(|sc| {
        for _ in 1..n {
            sc.spawn(work);
        }
        work();
    });
    match error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
