//! The processor drives the pure [`Engine`] over a [`Store`]: it owns the stream
//! clock, a write-back cache of customer state, the timer calendar and the daily
//! recalibration, and turns each batch of work into one atomic store write.
//!
//! Every shell (replay files, the demo, the Kafka service) feeds events through
//! [`Processor::process`] and takes outputs from [`Processor::take_outputs`]; the order
//! of work is the same everywhere, which is what makes replay an oracle for production.
//!
//! When the clock moves from day c to day d > c:
//! 1. the batch in hand is flushed;
//! 2. for each day c+1 ..= d in turn, the window sums slide and every timer due that
//!    day fires (cause `"timer"`, as-of that day);
//! 3. if a recalibration is due (`recalibrate_every_days`), quintile breaks and Pareto
//!    cut-offs are recomputed from a scan of all customers as of d, and every customer
//!    is re-evaluated against them (cause `"recalibration"`);
//! 4. then the event that moved the clock is applied.
//!
//! A flush writes dirty customers, timer moves, archived event ids and the meta
//! records (clock, population, thresholds) in one batch, so a crash leaves the store at
//! a batch boundary.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::Settings;
use crate::customer::CustomerState;
use crate::day::Day;
use crate::engine::{event_hash, Applied, Effects, Engine};
use crate::event::Event;
use crate::output::{Cause, Output, OutputType};
use crate::policy::{Thresholds, ThresholdsBuilder};
use crate::population::{decode_thresholds, encode_thresholds, Population};
use crate::store::codec::{decode_customer, decode_timer_key, dedupe_key, encode_customer, timer_key};
use crate::store::{Batch, Cf, Store, StoreError};

const META_POPULATION: &[u8] = b"population";
const META_THRESHOLDS: &[u8] = b"thresholds";

/// Counters for the replay summary and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub applied: u64,
    pub duplicates: u64,
    /// Applied events older than the retention horizon (lifetime figures only).
    pub late: u64,
    pub outputs: HashMap<OutputType, u64>,
    pub timers_fired: u64,
    pub recalibrations: u64,
    /// Recalibrations that found the incremental sums off (must stay 0).
    pub population_drift: u64,
}

struct Slot {
    state: CustomerState,
    dirty: bool,
}

pub struct Processor<S: Store> {
    settings: Arc<Settings>,
    store: S,
    cache: HashMap<String, Slot>,
    dirty: Vec<String>,
    pending: Batch,
    pending_archive: HashSet<Vec<u8>>,
    pop: Population,
    calibrated: Thresholds,
    calibrated_day: Option<Day>,
    outputs: Vec<Output>,
    since_flush: usize,
    pub counters: Counters,
}

fn corrupt(key: &[u8], e: crate::store::codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source: e,
    }
}

impl<S: Store> Processor<S> {
    /// Open over a store, resuming its clock, population and thresholds.
    pub fn open(settings: Arc<Settings>, store: S) -> Result<Self, StoreError> {
        let pop = match store.get(Cf::Meta, META_POPULATION)? {
            Some(b) => Population::decode(&b).map_err(|e| corrupt(META_POPULATION, e))?,
            None => Population::default(),
        };
        let (calibrated_day, calibrated) = match store.get(Cf::Meta, META_THRESHOLDS)? {
            Some(b) => {
                let (d, t) = decode_thresholds(&b).map_err(|e| corrupt(META_THRESHOLDS, e))?;
                (Some(d), t)
            }
            None => (None, Thresholds::default()),
        };
        Ok(Processor {
            settings,
            store,
            cache: HashMap::new(),
            dirty: Vec::new(),
            pending: Batch::default(),
            pending_archive: HashSet::new(),
            pop,
            calibrated,
            calibrated_day,
            outputs: Vec::new(),
            since_flush: 0,
            counters: Counters::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream clock (as-of day), if any event was ever applied.
    pub fn clock(&self) -> Option<Day> {
        self.pop.clock
    }

    pub fn population(&self) -> &Population {
        &self.pop
    }

    /// Thresholds in force now: live means with the last calibrated breaks.
    pub fn thresholds(&self) -> Thresholds {
        self.pop.thresholds(&self.calibrated)
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    fn load(&mut self, id: &str) -> Result<Option<&mut Slot>, StoreError> {
        if !self.cache.contains_key(id) {
            match self.store.get(Cf::Customers, id.as_bytes())? {
                Some(b) => {
                    let state = decode_customer(&b).map_err(|e| corrupt(id.as_bytes(), e))?;
                    self.cache.insert(id.to_string(), Slot { state, dirty: false });
                }
                None => return Ok(None),
            }
        }
        Ok(self.cache.get_mut(id))
    }

    /// Warm the cache for a batch of customer ids with one multi-get.
    pub fn prefetch<'i>(&mut self, ids: impl IntoIterator<Item = &'i str>) -> Result<(), StoreError> {
        let mut want: Vec<&str> = ids.into_iter().filter(|id| !self.cache.contains_key(*id)).collect();
        want.sort_unstable();
        want.dedup();
        if want.is_empty() {
            return Ok(());
        }
        let keys: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
        for (id, v) in want.iter().zip(self.store.multi_get(Cf::Customers, &keys)?) {
            if let Some(b) = v {
                let state = decode_customer(&b).map_err(|e| corrupt(id.as_bytes(), e))?;
                self.cache.insert(id.to_string(), Slot { state, dirty: false });
            }
        }
        Ok(())
    }

    fn record(&mut self, id: &str, fx: Effects) {
        for o in &fx.outputs {
            *self.counters.outputs.entry(o.kind).or_default() += 1;
        }
        self.outputs.extend(fx.outputs);
        for h in fx.archive {
            let k = dedupe_key(id, h);
            self.pending_archive.insert(k.clone());
            self.pending.put(Cf::Dedupe, k, Vec::new());
        }
        if let Some((old, new)) = fx.timer_moved {
            if let Some(d) = old {
                self.pending.delete(Cf::Timers, timer_key(d, id));
            }
            if let Some(d) = new {
                self.pending.put(Cf::Timers, timer_key(d, id), Vec::new());
            }
        }
        let slot = self.cache.get_mut(id).expect("recorded customers are cached");
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id.to_string());
        }
    }

    /// Apply one validated event (advancing the clock first if it is a later day).
    pub fn process(&mut self, ev: &Event) -> Result<Applied, StoreError> {
        match self.pop.clock {
            None => {
                let h = self.horizon(ev.day);
                self.pop.advance(ev.day, self.settings.window_days, h);
            }
            Some(c) if ev.day > c => self.advance_to(ev.day)?,
            Some(_) => {}
        }
        let clock = self.pop.clock.unwrap();
        let settings = self.settings.clone();
        let engine = Engine::new(&settings);
        let horizon = engine.horizon(clock);

        // Events older than the horizon may be redeliveries of ids already archived.
        let mut archived = false;
        if ev.day < horizon {
            let k = dedupe_key(&ev.customer_id, event_hash(&ev.event_id));
            archived = self.pending_archive.contains(&k) || self.store.get(Cf::Dedupe, &k)?.is_some();
        }
        let is_new = self.load(&ev.customer_id)?.is_none();
        if is_new {
            self.cache.insert(
                ev.customer_id.clone(),
                Slot {
                    state: CustomerState::default(),
                    dirty: false,
                },
            );
        }
        let slot = self.cache.get_mut(&ev.customer_id).unwrap();
        let mut fx = Effects::default();
        let applied = engine.apply_event(
            &mut slot.state,
            is_new,
            ev,
            archived,
            clock,
            &self.calibrated,
            &mut self.pop,
            &mut fx,
        );
        match applied {
            Applied::Duplicate => {
                self.counters.duplicates += 1;
                if is_new {
                    self.cache.remove(&ev.customer_id);
                }
                return Ok(applied);
            }
            Applied::Applied => {
                self.counters.applied += 1;
                if ev.day < horizon {
                    self.counters.late += 1;
                }
            }
        }
        self.record(&ev.customer_id, fx);
        self.since_flush += 1;
        if self.since_flush >= self.settings.raw.engine.batch_events {
            self.flush()?;
        }
        Ok(applied)
    }

    fn horizon(&self, clock: Day) -> Day {
        clock - self.settings.retention_days + 1
    }

    /// Move the stream (or wall) clock forward to `day`: fire timers of every day on
    /// the way, then recalibrate if due.
    pub fn advance_to(&mut self, day: Day) -> Result<(), StoreError> {
        let Some(start) = self.pop.clock else {
            let h = self.horizon(day);
            self.pop.advance(day, self.settings.window_days, h);
            return Ok(());
        };
        if day <= start {
            return Ok(());
        }
        self.flush()?;
        for d in start + 1..=day {
            let h = self.horizon(d);
            self.pop.advance(d, self.settings.window_days, h);
            self.fire_timers(d)?;
        }
        let every = self.settings.raw.engine.recalibrate_every_days as Day;
        if self.calibrated_day.is_none_or(|c| day - c >= every) {
            self.recalibrate(day)?;
        }
        self.flush()
    }

    fn fire_timers(&mut self, day: Day) -> Result<(), StoreError> {
        let mut due = Vec::new();
        self.store.scan(Cf::Timers, &[], &mut |k, _| {
            let (d, id) = decode_timer_key(k).map_err(|e| corrupt(k, e))?;
            if d > day {
                return Ok(false);
            }
            due.push((d, id));
            Ok(true)
        })?;
        if due.is_empty() {
            return Ok(());
        }
        let settings = self.settings.clone();
        let engine = Engine::new(&settings);
        let thresholds = self.pop.thresholds(&self.calibrated);
        let horizon = engine.horizon(day);
        for (d, id) in due {
            self.counters.timers_fired += 1;
            let Some(slot) = self.load(&id)? else {
                // A timer without its customer: drop it.
                self.pending.delete(Cf::Timers, timer_key(d, &id));
                continue;
            };
            let mut fx = Effects::default();
            fx.archive.extend(slot.state.prune(horizon));
            // The fired key is consumed; evaluate schedules the next one.
            if slot.state.timer == Some(d) {
                slot.state.timer = None;
            }
            engine.evaluate(&mut slot.state, &id, day, Cause::Timer, false, &thresholds, &mut fx);
            self.pending.delete(Cf::Timers, timer_key(d, &id));
            self.record(&id, fx);
        }
        self.flush()
    }

    /// Recompute breaks and cut-offs from all customers as of `day`, then re-evaluate
    /// everyone against them.
    pub fn recalibrate(&mut self, day: Day) -> Result<(), StoreError> {
        self.flush()?;
        let settings = self.settings.clone();
        let s = &*settings;
        let mut builder = ThresholdsBuilder::default();
        self.store.scan(Cf::Customers, &[], &mut |k, v| {
            let c = decode_customer(v).map_err(|e| corrupt(k, e))?;
            let f = c.figures(day, s);
            builder.add(f.recency_days, f.frequency, f.monetary_micros);
            Ok(true)
        })?;
        self.calibrated = builder.build(s);
        self.calibrated_day = Some(day);
        self.counters.recalibrations += 1;
        let thresholds = self.pop.thresholds(&self.calibrated);
        // The incremental sums must equal the scan's; if they ever drift (a bug), say
        // so and use the exact ones.
        let live = (thresholds.purchasers, thresholds.sum_recency, thresholds.sum_frequency, thresholds.sum_micros);
        let exact = (
            self.calibrated.purchasers,
            self.calibrated.sum_recency,
            self.calibrated.sum_frequency,
            self.calibrated.sum_micros,
        );
        let thresholds = if live != exact {
            self.counters.population_drift += 1;
            tracing::error!(?live, ?exact, day, "Incremental population sums drifted from the scan; using the scan's.");
            self.calibrated.clone()
        } else {
            thresholds
        };

        let engine = Engine::new(s);
        let cache = &mut self.cache;
        let mut changed: Vec<(String, CustomerState, Effects)> = Vec::new();
        self.store.scan(Cf::Customers, &[], &mut |k, v| {
            let id = std::str::from_utf8(k).map_err(|_| StoreError::Backend("customer key is not UTF-8".into()))?;
            let mut fx = Effects::default();
            let mut state = match cache.get(id) {
                Some(slot) => slot.state.clone(),
                None => decode_customer(v).map_err(|e| corrupt(k, e))?,
            };
            let before = (state.published, state.episode, state.timer);
            engine.evaluate(&mut state, id, day, Cause::Recalibration, false, &thresholds, &mut fx);
            if before != (state.published, state.episode, state.timer) {
                changed.push((id.to_string(), state, fx));
            }
            Ok(true)
        })?;
        for (id, state, fx) in changed {
            match self.cache.get_mut(&id) {
                Some(slot) => slot.state = state,
                None => {
                    self.cache.insert(id.clone(), Slot { state, dirty: false });
                }
            }
            self.record(&id, fx);
            if self.dirty.len() >= self.settings.raw.engine.batch_events {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Write everything pending in one atomic batch and trim the cache.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut batch = std::mem::take(&mut self.pending);
        let mut buf = Vec::with_capacity(256);
        for id in self.dirty.drain(..) {
            if let Some(slot) = self.cache.get_mut(&id) {
                encode_customer(&slot.state, &mut buf);
                batch.put(Cf::Customers, id.into_bytes(), buf.clone());
                slot.dirty = false;
            }
        }
        if batch.is_empty() && self.since_flush == 0 {
            return Ok(());
        }
        let mut meta = Vec::new();
        self.pop.encode(&mut meta);
        batch.put(Cf::Meta, META_POPULATION.to_vec(), meta);
        if let Some(d) = self.calibrated_day {
            let mut t = Vec::new();
            encode_thresholds(d, &self.calibrated, &mut t);
            batch.put(Cf::Meta, META_THRESHOLDS.to_vec(), t);
        }
        self.store.write(batch)?;
        self.pending_archive.clear();
        self.since_flush = 0;
        let cap = self.settings.raw.engine.customer_cache;
        if self.cache.len() > cap {
            // Every slot is clean now; drop arbitrary ones down to 3/4 of the cap.
            let excess = self.cache.len() - cap * 3 / 4;
            let victims: Vec<String> = self.cache.keys().take(excess).cloned().collect();
            for v in victims {
                self.cache.remove(&v);
            }
        }
        Ok(())
    }
}
