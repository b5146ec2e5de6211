//! The processor drives the pure [`Engine`] over a [`Store`]: it owns the stream
//! clock, a write-back cache of customer state, the timer calendar, the secondary
//! indexes and the daily recalibration, and turns each batch of work into one atomic
//! store write.
//!
//! Every shell (replay files, the demo, the Kafka service) feeds events through
//! [`Processor::process`] and takes outputs from [`Processor::take_outputs`]; the order
//! of work is the same everywhere, which is what makes replay an oracle for production.
//!
//! When the clock moves from day c to day d > c:
//! 1. nothing is written (timer and index entries that moved since the last write
//!    are read from the cache, see [`Cache`]);
//! 2. for each day c+1 ..= d in turn, the population window slides and every timer due
//!    that day fires (cause `"timer"`, as-of that day);
//! 3. if a recalibration is due (`recalibrate_every_days`), new thresholds are taken
//!    from the incremental population sums (means) and a walk down the monetary index
//!    (Pareto cut-offs); only the customers whose figure lies between an old and a new
//!    threshold can change tier, and the `by_*` indexes list exactly those, so only they
//!    are re-evaluated (cause `"recalibration"`);
//! 4. then the event that moved the clock is applied.
//!
//! Thresholds are frozen between recalibrations: every event of an as-of day is
//! compared with the same thresholds, whatever order the day's events arrive in.
//! Before the first recalibration (the stream's first day) the live means are used.
//!
//! A flush writes dirty customers, archived event ids and the meta records in one
//! batch (timers and indexes live in memory, [`crate::derived`]), so a crash leaves the store at a batch boundary.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::config::Settings;
use crate::config::{ThresholdMode, ValueMethod};
use crate::customer::{CustomerState, Indexed};
use crate::day::Day;
use crate::derived::{Derived, Index};
use crate::engine::{event_hash, Applied, Effects, Engine};
use crate::event::Event;
use crate::output::{Cause, CustomerTiers, Output, OutputType};
use crate::policy::{self, Thresholds, ThresholdsBuilder};
use crate::population::{bucket_range, decode_thresholds, encode_thresholds, Population};
use crate::predict::model::{self, Histogram, Inputs};
use crate::predict::watch::{self, Watch};
use crate::store::codec::{decode_customer, dedupe_key, encode_customer};
use crate::store::records::{Lookup, Records};
use crate::store::{Batch, Cf, Store, StoreError};

pub const META_POPULATION: &[u8] = b"population";
pub const META_THRESHOLDS: &[u8] = b"thresholds";
/// The partition's model histogram as of its last refit, put in the batch of that
/// refit for the flush hook (the Kafka shell publishes it on the stats topic; a
/// shell without a hook, replay, never gets it). It is not read back: `open`
/// rebuilds the histogram from the customer records.
pub const META_MODEL_HISTOGRAM: &[u8] = b"model_histogram";
/// Tier transitions of one as-of day: `transitions/<YYYY-MM-DD>` → JSON
/// `{"<dimension>/<from>><to>": count}` (every `tier_changed` with a `from`, per
/// changed dimension), kept for [`TRANSITION_DAYS`] days, for `strata report`.
pub const META_TRANSITIONS: &[u8] = b"transitions/";
pub const TRANSITION_DAYS: Day = 60;

/// The meta key of a day's transition counts.
pub fn transitions_key(day: Day) -> Vec<u8> {
    let mut k = META_TRANSITIONS.to_vec();
    k.extend_from_slice(crate::day::format_day(day).as_bytes());
    k
}

/// Counters for the replay summary and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub applied: u64,
    pub duplicates: u64,
    /// Applied events older than the retention horizon (lifetime figures only).
    pub late: u64,
    pub outputs: rustc_hash::FxHashMap<OutputType, u64>,
    pub timers_fired: u64,
    pub recalibrations: u64,
    /// Customers re-evaluated by recalibrations (found through the indexes).
    pub recalibration_visits: u64,
    /// Model fits, and the seconds the last one took.
    pub model_fits: u64,
    pub last_fit_seconds: f64,
    /// Repeat customers by P(alive) decile, counted in each refit's pass.
    pub p_alive_deciles: [u64; 10],
}

impl Counters {
    /// Add another partition's counters (of the same process, recalibrating
    /// together: a recalibration counts once, as in one store).
    pub fn add_partition(&mut self, o: &Counters) {
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.late += o.late;
        for (t, n) in &o.outputs {
            *self.outputs.entry(*t).or_default() += n;
        }
        self.timers_fired += o.timers_fired;
        self.recalibrations = self.recalibrations.max(o.recalibrations);
        self.recalibration_visits += o.recalibration_visits;
        self.model_fits += o.model_fits;
        self.last_fit_seconds = self.last_fit_seconds.max(o.last_fit_seconds);
        for (a, b) in self.p_alive_deciles.iter_mut().zip(&o.p_alive_deciles) {
            *a += b;
        }
    }
}

/// What [`Processor::audit`] found; both must be zero.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Customers whose published tiers differ from a fresh evaluation.
    pub tier_mismatches: u64,
    /// Incremental population sums (or the model histogram) differing from a
    /// scan (0 or 1).
    pub population_drift: u64,
    /// Timer and index entries missing from, or extra in, the derived column
    /// families ([`DERIVED`]) against what the customer records say.
    pub derived_mismatches: u64,
    /// Model groups whose members or crossing day differ from the records and
    /// the model in force, and customers below the `p_alive` threshold whose
    /// episode does not hold the rule (see [`watch`]).
    pub watch_mismatches: u64,
    /// Customer records held in memory ([`Records`]) that differ from the stored
    /// ones or are not stored, stored records missing while every record should be
    /// held, and stored customers without an id handle (loads take those for new).
    pub held_mismatches: u64,
}

/// Called by [`Processor::flush`] with the batch about to be written and the outputs
/// produced since the last write. The Kafka shell adds consumed offsets, moves the
/// outputs into an outbox and copies the batch to its changelog, all in the same
/// atomic write. Without a hook, outputs stay until [`Processor::take_outputs`].
/// Also handed the batch's [`CustomerTiers`] records, when they are kept
/// ([`Processor::keep_customer_tiers`]).
pub type FlushHook = Box<dyn FnMut(&mut Batch, &mut Vec<Output>, &mut Vec<CustomerTiers>) + Send>;

/// One cached customer.
struct Slot {
    /// The customer's handle in the partition's derived state (its id is
    /// `derived.ids.name(handle)`).
    handle: u32,
    state: CustomerState,
    /// Changed, and its new record is only here: `records` refused it (see
    /// [`Processor::record`]); written from the cache at the next flush.
    dirty: bool,
}

impl Slot {
    fn new(handle: u32, state: CustomerState) -> Slot {
        Slot {
            handle,
            state,
            dirty: false,
        }
    }
}

/// The write-back cache: slots in load order, found by the customer's handle, so
/// the dirty customers are a list of slot numbers. Slot numbers are valid until
/// the next trim (trims come with writes and spills, when every slot is clean).
#[derive(Default)]
struct Cache {
    /// Each handle's slot number when it was loaded, counted from the first slot
    /// ever loaded (wrapping): minus `base`, its position now. An entry whose slot
    /// was trimmed since is stale, told apart by the slot's handle (a handle has at
    /// most one slot), so a trim clears nothing here.
    at: Vec<u32>,
    slots: VecDeque<Slot>,
    /// Slots trimmed so far (wrapping).
    base: u32,
}

impl Cache {
    /// Hint `handle`'s entry in `at`, then (`near`) its slot ([`crate::hint`]).
    #[inline]
    fn hint(&self, handle: u32, near: bool) {
        if !near {
            crate::hint::prefetch_at(&self.at, handle as usize);
        } else if let Some(slot) = self
            .position(handle)
            .and_then(|p| self.slots.get(p as usize))
        {
            // The slot it had, if still there (`find` would read the slot).
            crate::hint::prefetch(slot);
        }
    }

    /// Where `handle`'s slot is if it is still loaded (stale otherwise: `find`).
    fn position(&self, handle: u32) -> Option<u32> {
        Some(self.at.get(handle as usize)?.wrapping_sub(self.base))
    }

    fn find(&self, handle: u32) -> Option<u32> {
        let pos = self.position(handle)?;
        (self.slots.get(pos as usize)?.handle == handle).then_some(pos)
    }

    fn insert(&mut self, slot: Slot) -> u32 {
        let pos = self.slots.len() as u32;
        let h = slot.handle as usize;
        if h >= self.at.len() {
            self.at.resize(h + 1, 0);
        }
        self.at[h] = self.base.wrapping_add(pos);
        self.slots.push_back(slot);
        pos
    }

    /// Forget the slot inserted last (a new customer whose event was a duplicate).
    fn pop(&mut self) {
        self.slots.pop_back();
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Keep the `keep` slots loaded last (all of them clean).
    fn trim(&mut self, keep: usize) {
        let excess = self.slots.len().saturating_sub(keep);
        self.slots.drain(..excess);
        self.base = self.base.wrapping_add(excess as u32);
    }
}

impl<S: Store> Drop for Processor<S> {
    fn drop(&mut self) {
        if let Some((gauge, reported)) = &self.timers_gauge {
            gauge.sub(*reported);
        }
    }
}

pub struct Processor<S: Store> {
    settings: Arc<Settings>,
    store: S,
    cache: Cache,
    /// Dirty slots (changes `records` could not hold), each once, in the order
    /// they became dirty.
    dirty: Vec<u32>,
    /// The timer calendar and recalibration indexes, in memory ([`Derived`]).
    derived: Derived,
    /// The stored customer records, encoded, in memory (within a budget).
    records: Records,
    /// A record being encoded (`encode_customer` clears it first).
    scratch: Vec<u8>,
    pending: Batch,
    pending_archive: rustc_hash::FxHashSet<Vec<u8>>,
    pop: Population,
    /// Thresholds of the last recalibration, and its day.
    current: Thresholds,
    current_day: Option<Day>,
    outputs: Vec<Output>,
    since_flush: usize,
    /// Events counted toward the first batch before any (`stagger_batches`).
    head_start: usize,
    /// The clock, population or thresholds changed since the last write.
    meta_dirty: bool,
    /// The thresholds stored in the last write, with their day: during a recalibration
    /// these stay the previous ones, so a crash mid-pass is resumed by `open`.
    persisted: Option<(Day, Thresholds)>,
    pub counters: Counters,
    hook: Option<FlushHook>,
    /// Where the merged population summaries of the other partitions of a cluster
    /// come from, asked at each recalibration: thresholds cover them too (SPEC §3).
    /// `None` outside a cluster.
    peers: Option<PeerSource>,
    /// The model histogram of this partition's customers (every purchaser, lifetime
    /// figures), kept with every purchase.
    hist: Histogram,
    /// A refit happened since the last write: the next write hands the hook the
    /// histogram ([`META_MODEL_HISTOGRAM`]).
    histogram_due: bool,
    /// The repeat customers by model group and the days the groups' P(alive)
    /// crosses the `p_alive` threshold (see [`watch`]); kept with `hist`.
    watch: Watch,
    /// The other partitions' merged model histograms (a cluster), asked at a refit.
    model_peers: Option<ModelPeerSource>,
    /// `customer_tiers` records since the last write (`None`: not kept).
    customer_tiers: Option<Vec<CustomerTiers>>,
    /// A gauge the pending timers are added to at every write, with the count
    /// last added (see [`report_timers_to`](Self::report_timers_to)).
    timers_gauge: Option<(prometheus::IntGauge, i64)>,
    /// Fits shared with this process's other partitions (a cluster instance).
    fit_share: Option<FitShare>,
    /// Tier transitions per day since the last write (added to the stored counts
    /// at the write), and the day transitions were last pruned to.
    /// Keyed (dimension, from, to), named as the stored `"<dimension>/<from>><to>"`.
    transitions:
        BTreeMap<Day, rustc_hash::FxHashMap<(&'static str, &'static str, &'static str), u64>>,
    transitions_pruned: Option<Day>,
    /// The population sums of a process's other partitions, before the first
    /// recalibration (a partitioned replay sets them before each event of the
    /// first day, so live means cover every partition).
    live_peers: Option<Thresholds>,
}

/// The other partitions' merged population summary, as of now.
pub type PeerSource = Box<dyn Fn() -> Option<Population> + Send>;

/// The other partitions' merged model histograms, as of their last refits.
pub type ModelPeerSource = Box<dyn Fn() -> Option<Histogram> + Send>;

/// The latest fit made by any partition of this process (a cluster instance): a
/// partition whose refit is due takes it, instead of fitting the same
/// cluster-wide population again, when it was fitted in the same refit period
/// as its day or a later one (catching up, the partitions' clocks are weeks
/// apart: a fit per partition per period made a year's backlog 8 × 52 fits).
/// Periods are a fixed calendar ([`model::refit_period`]), so an instance fits at
/// most once per period whatever order its partitions reach it in.
pub type FitShare = std::sync::Arc<std::sync::Mutex<Option<model::Model>>>;

/// What `open` rebuilds from every stored customer: the model histogram, each
/// repeat customer's model group (ids by group, in key order), and the derived
/// state (timers and indexes).
pub fn scan_model(
    store: &dyn Store,
    derived: &mut Derived,
    records: &mut Records,
) -> Result<(Histogram, BTreeMap<watch::Group, Vec<u32>>), StoreError> {
    let mut h = Histogram::default();
    let mut groups: BTreeMap<watch::Group, Vec<u32>> = BTreeMap::new();
    store.scan(Cf::Customers, &[], None, &mut |k, v| {
        let c = decode(k, v)?;
        let id = std::str::from_utf8(k).map_err(|_| {
            corrupt(
                k,
                crate::store::codec::CodecError("customer key is not UTF-8"),
            )
        })?;
        let handle = derived.ids.intern(id);
        records.put(handle, v);
        derived.move_timer(handle, None, c.timer);
        derived.move_index(handle, None, c.indexed);
        if let Some(i) = Inputs::of(&c, None) {
            h.count(&i, true);
            if let Some(g) = watch::group_of(&i) {
                groups.entry(g).or_default().push(handle);
            }
        }
        Ok(true)
    })?;
    Ok((h, groups))
}

/// What the watch schedules with: the model in force, while the `p_alive` rule
/// is on.
fn watch_rule<'a>(s: &Settings, model: Option<&'a model::Model>) -> watch::Rule<'a> {
    watch::Rule {
        model: model.filter(|_| s.raw.churn.p_alive),
        threshold: s.raw.churn.p_alive_below,
    }
}

/// The column families strata wrote before it kept a customer's timer and index
/// entries in memory ([`crate::derived`]); still opened (RocksDB opens every
/// column family a store has), never written, emptied at open, left out of the
/// changelog.
pub const DERIVED: [Cf; 4] = [Cf::Timers, Cf::ByLastDay, Cf::ByFrequency, Cf::ByMonetary];

/// Delete what an earlier strata wrote to the [`DERIVED`] column families (once:
/// an empty store costs four seeks).
fn clear_derived(store: &dyn Store) -> Result<(), StoreError> {
    for cf in DERIVED {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        store.scan(cf, &[], None, &mut |k, _| {
            keys.push(k.to_vec());
            Ok(true)
        })?;
        for chunk in keys.chunks(20_000) {
            let mut b = Batch::default();
            for k in chunk {
                b.delete(cf, k.clone());
            }
            store.write(b)?;
        }
    }
    Ok(())
}

/// Decode the meta records [`Processor::open`] reads (population summary,
/// thresholds): a store another codec version wrote fails here.
pub fn check_meta(store: &dyn Store) -> Result<(), StoreError> {
    if let Some(b) = store.get(Cf::Meta, META_POPULATION)? {
        Population::decode(&b).map_err(|e| corrupt(META_POPULATION, e))?;
    }
    if let Some(b) = store.get(Cf::Meta, META_THRESHOLDS)? {
        decode_thresholds(&b).map_err(|e| corrupt(META_THRESHOLDS, e))?;
    }
    Ok(())
}

/// The Pareto walk: purchasers by window monetary, biggest first; the monetary of
/// the first customer at which the running total reaches each share. The monetary
/// histogram says which bucket holds a cut-off and the total above it;
/// `in_bucket(lo, hi, above, target)` finds the cut-off inside that bucket.
fn pareto_walk(
    s: &Settings,
    merged: &Population,
    in_bucket: &mut dyn FnMut(u64, u64, u128, f64) -> Result<Option<u64>, StoreError>,
) -> Result<(Option<u64>, Option<u64>), StoreError> {
    let vt = &s.raw.value_tiers;
    let hist = &merged.monetary_hist;
    let total: u128 = hist.values().map(|(_, sum)| *sum).sum();
    if vt.method != ValueMethod::Pareto || total == 0 {
        return Ok((None, None));
    }
    let mut walk = |target: f64| -> Result<Option<u64>, StoreError> {
        let mut above: u128 = 0;
        for (&b, &(_, sum)) in hist.iter().rev() {
            if ((above + sum) as f64) < target {
                above += sum;
                continue;
            }
            let (lo, hi) = bucket_range(b);
            if lo == 0 {
                break; // zero spend never holds a cut-off
            }
            return in_bucket(lo, hi, above, target);
        }
        Ok(None)
    };
    Ok((
        walk(vt.high_share * total as f64)?,
        walk(vt.medium_share * total as f64)?,
    ))
}

/// Exact Pareto cut-offs over several partitions' purchasers: [`pareto_walk`] with
/// the bucket holding a cut-off read from every partition (`values_in(lo, hi)`).
pub(crate) fn exact_pareto_cutoffs(
    s: &Settings,
    merged: &Population,
    values_in: &mut dyn FnMut(u64, u64) -> Result<Vec<u64>, StoreError>,
) -> Result<(Option<u64>, Option<u64>), StoreError> {
    pareto_walk(s, merged, &mut |lo, hi, above, target| {
        let mut values = values_in(lo, hi)?;
        values.sort_unstable_by(|a, b| b.cmp(a));
        let mut running = above;
        for m in values {
            running += m as u128;
            if running as f64 >= target {
                return Ok(Some(m));
            }
        }
        Ok(None)
    })
}

/// Fit the models on a population histogram as of `day` (warm-started from
/// `previous`), with the seconds it took; `None` when the population is too small
/// yet or the fit fails (logged: the parameters in force stay).
pub(crate) fn fit_population(
    h: &Histogram,
    day: Day,
    s: &Settings,
    previous: Option<&model::Model>,
) -> Option<(model::Model, f64)> {
    let started = std::time::Instant::now();
    match model::refit(h, day, s.raw.predict.min_repeat_customers, previous) {
        Ok(m) => Some((m, started.elapsed().as_secs_f64())),
        // Not enough repeat customers yet: no fit, nothing to say.
        Err(crate::predict::FitError::TooFew { .. }) => None,
        Err(e) => {
            tracing::warn!(day = %crate::day::format_day(day), error = %e, "The model fit failed; the parameters in force stay.");
            None
        }
    }
}

fn corrupt(key: &[u8], e: crate::store::codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source: e,
    }
}

/// The customer record `value` stored under `key`.
fn decode(key: &[u8], value: &[u8]) -> Result<CustomerState, StoreError> {
    decode_customer(value).map_err(|e| corrupt(key, e))
}

impl<S: Store> Processor<S> {
    /// Open one partition of a process that recalibrates its partitions together
    /// ([`crate::partitions`]): as [`open`](Self::open), but a pending recalibration
    /// is left to the caller ([`recalibration_pending`](Self::recalibration_pending)).
    pub fn open_partition(settings: Arc<Settings>, store: S) -> Result<Self, StoreError> {
        let pop = match store.get(Cf::Meta, META_POPULATION)? {
            Some(b) => Population::decode(&b).map_err(|e| corrupt(META_POPULATION, e))?,
            None => Population::default(),
        };
        let (current_day, current) = match store.get(Cf::Meta, META_THRESHOLDS)? {
            Some(b) => {
                let (d, t) = decode_thresholds(&b).map_err(|e| corrupt(META_THRESHOLDS, e))?;
                (Some(d), t)
            }
            None => (None, Thresholds::default()),
        };
        let record_budget = settings.raw.engine.record_cache_mb << 20;
        let mut p = Processor {
            settings,
            store,
            cache: Cache::default(),
            dirty: Vec::new(),
            derived: Derived::default(),
            records: Records::new(record_budget),
            scratch: Vec::with_capacity(256),
            pending: Batch::default(),
            pending_archive: Default::default(),
            pop,
            current,
            current_day,
            outputs: Vec::new(),
            since_flush: 0,
            head_start: 0,
            meta_dirty: false,
            persisted: None,
            counters: Counters::default(),
            hook: None,
            peers: None,
            hist: Histogram::default(),
            histogram_due: false,
            watch: Watch::default(),
            model_peers: None,
            customer_tiers: None,
            timers_gauge: None,
            fit_share: None,
            transitions: BTreeMap::new(),
            transitions_pruned: None,
            live_peers: None,
        };
        clear_derived(&p.store)?;
        let (hist, groups) = scan_model(&p.store, &mut p.derived, &mut p.records)?;
        p.hist = hist;
        if let Some(today) = p.pop.clock {
            let rule = watch_rule(&p.settings, p.current.model.as_ref());
            for (g, handles) in groups {
                for h in handles {
                    p.watch.insert(h, g, rule, today);
                }
            }
        }
        p.persisted = p.current_day.map(|d| (d, p.current.clone()));
        Ok(p)
    }

    /// Open over a store, resuming its clock, population and thresholds.
    pub fn open(settings: Arc<Settings>, store: S) -> Result<Self, StoreError> {
        let mut p = Self::open_partition(settings, store)?;
        // A recalibration is due but was not completed (a crash mid-pass, after part
        // of it was written): run it again. Re-evaluating customers it already did
        // publishes nothing new.
        if let Some(clock) = p.recalibration_pending() {
            p.recalibrate(clock)?;
        }
        Ok(p)
    }

    /// The clock, when a recalibration is due at it but was not completed.
    pub fn recalibration_pending(&self) -> Option<Day> {
        let (clock, day) = (self.pop.clock?, self.current_day?);
        (clock - day >= self.settings.raw.engine.recalibrate_every_days as Day).then_some(clock)
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

    /// Thresholds in force now: the last recalibration's, or before the first one the
    /// live means.
    pub fn thresholds(&self) -> Thresholds {
        match self.current_day {
            Some(_) => self.current.clone(),
            None => self.live_thresholds(),
        }
    }

    /// The live means (before the first recalibration), with the other partitions'
    /// sums when a partitioned replay gave them.
    fn live_thresholds(&self) -> Thresholds {
        let mut t = self.pop.thresholds(None, None);
        if let Some(o) = &self.live_peers {
            t.purchasers += o.purchasers;
            t.sum_last_day += o.sum_last_day;
            t.sum_frequency += o.sum_frequency;
            t.sum_micros += o.sum_micros;
        }
        t
    }

    /// See [`live_thresholds`](Self::live_thresholds).
    pub(crate) fn set_live_peers(&mut self, peers: Option<Thresholds>) {
        self.live_peers = peers;
    }

    /// The day of the last recalibration.
    pub fn thresholds_day(&self) -> Option<Day> {
        self.current_day
    }

    /// Whether a recalibration has happened (thresholds are no longer live).
    pub fn recalibrated(&self) -> bool {
        self.current_day.is_some()
    }

    /// The models in force (`None` before the first fit).
    pub fn model(&self) -> Option<model::Model> {
        self.current.model
    }

    /// Keep a [`CustomerTiers`] record of every customer whose outputs are
    /// published, for the flush hook (the Kafka shell's `customer_tiers` topic).
    pub fn keep_customer_tiers(&mut self) {
        self.customer_tiers.get_or_insert_with(Vec::new);
    }

    /// Add this processor's pending timers to `gauge` (shared by the partitions of
    /// an instance: each adds the change at every write and takes its count back
    /// when dropped).
    pub fn report_timers_to(&mut self, gauge: prometheus::IntGauge) {
        let n = self.derived.timers_len() as i64;
        gauge.add(n);
        self.timers_gauge = Some((gauge, n));
    }

    /// Count `events` toward the first batch: partitions fed the same stream reach
    /// `engine.batch_events` together, and their writes then fill RocksDB's
    /// memtables all at once; offset by a fraction each, they take turns.
    pub fn stagger_batches(&mut self, events: usize) {
        self.head_start = events;
    }

    /// See [`FlushHook`].
    pub fn set_flush_hook(&mut self, hook: FlushHook) {
        self.hook = Some(hook);
    }

    /// Make the next [`flush`](Self::flush) write even if no state changed (the shell
    /// has progress of its own to record, e.g. offsets past bad or duplicate events).
    pub fn mark_dirty(&mut self) {
        self.meta_dirty = true;
    }

    /// The other partitions' population summaries, merged; used by the next
    /// recalibration.
    pub fn set_peers(&mut self, peers: PeerSource) {
        self.peers = Some(peers);
    }

    /// The other partitions' model histograms, merged; used by the next refit.
    pub fn set_model_peers(&mut self, peers: ModelPeerSource) {
        self.model_peers = Some(peers);
    }

    /// Share fits with the other partitions of this process (see [`FitShare`]).
    pub fn set_fit_share(&mut self, share: FitShare) {
        self.fit_share = Some(share);
    }

    /// This partition's model histogram.
    pub fn histogram(&self) -> &Histogram {
        &self.hist
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// The cache slot of a customer, read from the store if need be (`None`: an
    /// unknown customer). `handle`: the id's handle when the caller has it.
    fn load(&mut self, id: &str, handle: Option<u32>) -> Result<Option<u32>, StoreError> {
        // Every stored customer has a handle (interned at open or when first
        // processed): an id without one is a new customer.
        match handle.or_else(|| self.handle(id)) {
            Some(handle) => self.load_known(handle),
            None => Ok(None),
        }
    }

    /// [`load`](Self::load) by handle.
    fn load_known(&mut self, handle: u32) -> Result<Option<u32>, StoreError> {
        if let Some(i) = self.cache.find(handle) {
            return Ok(Some(i));
        }
        // The id (the store's key) only when needed: for a held record, only
        // an error names it (looked up, it is one more miss to memory).
        let key = || self.derived.ids.bytes(handle);
        let state = match self.records.lookup(handle) {
            Lookup::Held(b) => decode_customer(b).map_err(|e| corrupt(key(), e))?,
            Lookup::Absent => return Ok(None),
            Lookup::Unknown => match self.store.get(Cf::Customers, key())? {
                Some(b) => decode(key(), &b)?,
                None => return Ok(None),
            },
        };
        Ok(Some(self.cache.insert(Slot::new(handle, state))))
    }

    /// Warm the cache for a batch of customer ids with one multi-get. Returns each
    /// id's handle (`None`: not known yet), for [`process_known`](Self::process_known).
    pub fn prefetch<'i>(
        &mut self,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> Result<Vec<Option<u32>>, StoreError> {
        let handles: Vec<Option<u32>> = ids.into_iter().map(|id| self.handle(id)).collect();
        self.warm(handles.iter().flatten().copied())?;
        Ok(handles)
    }

    /// A customer's handle (`None`: a customer this partition has not seen).
    pub fn handle(&self, id: &str) -> Option<u32> {
        self.derived.ids.get(id)
    }

    /// Hint the memory an event of customer `handle` will read, two or so events
    /// before it is applied: its entries by handle (cache, records, indexes). At a
    /// million customers each is a miss to main memory otherwise
    /// ([`crate::hint`]). Changes nothing.
    #[inline]
    pub fn hint_far(&self, handle: u32) {
        self.cache.hint(handle, false);
        self.records.hint_slot(handle);
        self.derived.hint(handle);
    }

    /// Then, an event or so before: what those entries point to (its held record,
    /// its cache slot).
    #[inline]
    pub fn hint_near(&self, handle: u32) {
        self.cache.hint(handle, true);
        self.records.hint_record(handle);
    }

    /// [`hint_far`](Self::hint_far) and [`hint_near`](Self::hint_near) for the
    /// events after event `i` of a run of events by customer handle.
    #[inline]
    pub fn hint_ahead(&self, handles: &[Option<u32>], i: usize) {
        if let Some(&Some(h)) = handles.get(i + 2) {
            self.hint_far(h);
        }
        if let Some(&Some(h)) = handles.get(i + 1) {
            self.hint_near(h);
        }
    }

    /// Warm the cache for a batch of known customers (handles): the ones whose
    /// records are not held in memory (past the records' budget) are read with
    /// one multi-get. Held records are decoded as their events come
    /// (`load_known`), so that the state is in the CPU's caches when applied.
    pub fn warm(&mut self, handles: impl IntoIterator<Item = u32>) -> Result<(), StoreError> {
        let mut want: Vec<u32> = Vec::new();
        for handle in handles {
            if self.cache.find(handle).is_some() {
                continue;
            }
            if self.records.lookup(handle) == Lookup::Unknown {
                want.push(handle);
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        self.derived.sort_by_id(&mut want);
        let ids = &self.derived.ids;
        let keys: Vec<&[u8]> = want.iter().map(|&h| ids.bytes(h)).collect();
        let got = self.store.multi_get(Cf::Customers, &keys)?;
        for ((&handle, key), v) in want.iter().zip(keys).zip(got) {
            if let Some(b) = v {
                let state = decode(key, &b)?;
                self.cache.insert(Slot::new(handle, state));
            }
        }
        Ok(())
    }

    fn record(&mut self, i: u32, fx: Effects) {
        for o in &fx.outputs {
            *self.counters.outputs.entry(o.kind).or_default() += 1;
        }
        let slot = &mut self.cache.slots[i as usize];
        if let (Some(kept), Some(last), Some(tiers)) = (
            &mut self.customer_tiers,
            fx.outputs.last(),
            slot.state.published,
        ) {
            kept.push(CustomerTiers::after(
                last,
                tiers,
                slot.state.episode.as_ref(),
            ));
        }
        let day = self.pop.clock.unwrap_or_default();
        for o in &fx.outputs {
            if let crate::output::Body::TierChanged {
                changed,
                from: Some(from),
                to,
                ..
            } = &o.body
            {
                let counts = self.transitions.entry(day).or_default();
                for dim in changed {
                    let (a, b) = match *dim {
                        "rfm_segment" => (from.rfm_segment.as_str(), to.rfm_segment.as_str()),
                        "value_tier" => (from.value_tier.as_str(), to.value_tier.as_str()),
                        _ => (from.lifecycle.as_str(), to.lifecycle.as_str()),
                    };
                    *counts.entry((dim, a, b)).or_default() += 1;
                }
            }
        }
        self.outputs.extend(fx.outputs);
        for h in fx.archive {
            let k = dedupe_key(self.derived.ids.name(slot.handle), h);
            self.pending_archive.insert(k.clone());
            self.pending.put(Cf::Dedupe, k, Vec::new());
        }
        if let Some((old, new)) = fx.index_moved {
            self.pop
                .on_index_move(old.map(|i| i.micros), new.map(|i| i.micros));
            self.derived.move_index(slot.handle, old, new);
        }
        if let Some((old, new)) = fx.timer_moved {
            self.derived.move_timer(slot.handle, old, new);
        }
        // Encoded now, while the state is in the CPU's caches: held in `records`
        // until the write, so the slot stays clean and the decoded cache can let
        // it go. (Encoded at a spill instead, long after, the encode waited on
        // memory for each of the state's lists.) A record the budget refuses
        // leaves the slot dirty: it is written from the cache.
        if !slot.dirty {
            encode_customer(&slot.state, &mut self.scratch);
            if !self.records.put_unwritten(slot.handle, &self.scratch) {
                slot.dirty = true;
                self.dirty.push(i);
            }
        }
    }

    /// Apply one validated event (advancing the clock first if it is a later day).
    pub fn process(&mut self, ev: &Event) -> Result<Applied, StoreError> {
        self.process_known(ev, None)
    }

    /// [`process`](Self::process), with the customer's handle when the caller has
    /// it (from [`prefetch`](Self::prefetch) or [`handle`](Self::handle)); `None`:
    /// look it up.
    pub fn process_known(
        &mut self,
        ev: &Event,
        handle: Option<u32>,
    ) -> Result<Applied, StoreError> {
        match self.pop.clock {
            None => self.advance_to(ev.day)?,
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
            archived =
                self.pending_archive.contains(&k) || self.store.get(Cf::Dedupe, &k)?.is_some();
        }
        let (i, is_new) = match self.load(&ev.customer_id, handle)? {
            Some(i) => (i, false),
            None => {
                let handle = self.derived.ids.intern(&ev.customer_id);
                let slot = Slot::new(handle, CustomerState::default());
                (self.cache.insert(slot), true)
            }
        };
        let thresholds = match self.current_day {
            Some(_) => None,
            None => Some(self.live_thresholds()),
        };
        let slot = &mut self.cache.slots[i as usize];
        let inputs_before = match ev.kind {
            crate::event::EventKind::Purchase { .. } => Some(Inputs::of(&slot.state, None)),
            _ => None,
        };
        let mut fx = Effects::default();
        let applied = engine.apply_event(
            &mut slot.state,
            is_new,
            ev,
            archived,
            clock,
            thresholds.as_ref().unwrap_or(&self.current),
            &mut self.pop,
            &mut fx,
        );
        match applied {
            Applied::Duplicate => {
                self.counters.duplicates += 1;
                if is_new {
                    self.cache.pop();
                }
                return Ok(applied);
            }
            Applied::Applied => {
                self.counters.applied += 1;
                if ev.day < horizon {
                    self.counters.late += 1;
                }
                if let Some(before) = inputs_before {
                    let slot = &self.cache.slots[i as usize];
                    let (after, handle) = (Inputs::of(&slot.state, None), slot.handle);
                    if before != after {
                        let rule = watch_rule(&settings, self.current.model.as_ref());
                        if let Some(b) = before {
                            self.hist.count(&b, false);
                            if let Some(g) = watch::group_of(&b) {
                                self.watch.remove(handle, g);
                            }
                        }
                        if let Some(a) = after {
                            self.hist.count(&a, true);
                            if let Some(g) = watch::group_of(&a) {
                                self.watch.insert(handle, g, rule, clock);
                            }
                        }
                    }
                }
            }
        }
        self.record(i, fx);
        self.since_flush += 1;
        // A cache over its cap is trimmed (the changed customers' records wait in
        // `records`) until the batch is due (`spill`).
        let e = &self.settings.raw.engine;
        if self.since_flush + self.head_start >= e.batch_events {
            self.flush()?;
        } else if self.cache.len() > e.customer_cache {
            self.spill()?;
        }
        Ok(applied)
    }

    fn horizon(&self, clock: Day) -> Day {
        clock - self.settings.retention_days + 1
    }

    /// Move the stream (or wall) clock forward to `day`: fire timers of every day on
    /// the way, then recalibrate if due.
    pub fn advance_to(&mut self, day: Day) -> Result<(), StoreError> {
        if !self.advance_days(day)? {
            return Ok(());
        }
        if self.recalibration_due(day) {
            self.recalibrate(day)?;
        }
        self.end_advance()
    }

    /// The first part of [`advance_to`](Self::advance_to): move the clock day by day,
    /// firing each day's timers. False when nothing more is to be done (the clock
    /// was already there, or it starts here).
    pub(crate) fn advance_days(&mut self, day: Day) -> Result<bool, StoreError> {
        let Some(start) = self.pop.clock else {
            let h = self.horizon(day);
            self.pop.advance(day, self.settings.window_days, h);
            self.meta_dirty = true;
            return Ok(false);
        };
        if day <= start {
            return Ok(false);
        }
        for d in start + 1..=day {
            let h = self.horizon(d);
            self.pop.advance(d, self.settings.window_days, h);
            self.fire_timers(d)?;
        }
        Ok(true)
    }

    /// Whether the clock moving to `day` recalibrates.
    pub(crate) fn recalibration_due(&self, day: Day) -> bool {
        let every = self.settings.raw.engine.recalibrate_every_days as Day;
        self.current_day.is_none_or(|c| day - c >= every)
    }

    /// The last part of [`advance_to`](Self::advance_to).
    pub(crate) fn end_advance(&mut self) -> Result<(), StoreError> {
        self.meta_dirty = true;
        self.flush_if_full()
    }

    fn fire_timers(&mut self, day: Day) -> Result<(), StoreError> {
        // Timers of earlier days were consumed when the clock passed them.
        let mut due: Vec<u32> = Vec::new();
        self.derived.due(day, &mut due);
        // Customers whose P(alive) crosses the `p_alive` threshold today.
        self.watch.due(day, &mut due);
        if due.is_empty() {
            return Ok(());
        }
        // In key order, as the store holds them.
        self.derived.sort_by_id(&mut due);
        let settings = self.settings.clone();
        let engine = Engine::new(&settings);
        let thresholds = self.thresholds();
        let horizon = engine.horizon(day);
        for chunk in due.chunks(4096) {
            self.warm(chunk.iter().copied())?;
            for &handle in chunk {
                self.fire(handle, day, horizon, &engine, &thresholds)?;
            }
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// One customer's timer (or watch) is due on `day`: evaluate it there.
    fn fire(
        &mut self,
        handle: u32,
        day: Day,
        horizon: Day,
        engine: &Engine,
        thresholds: &Thresholds,
    ) -> Result<(), StoreError> {
        self.counters.timers_fired += 1;
        let Some(i) = self.load_known(handle)? else {
            return Ok(()); // an id without a record (cannot be: entries follow records)
        };
        let slot = &mut self.cache.slots[i as usize];
        let mut fx = Effects::default();
        fx.archive.extend(slot.state.prune(horizon));
        // The fired timer is consumed; evaluate schedules the next one.
        if slot.state.timer == Some(day) {
            slot.state.timer = None;
            self.derived.move_timer(slot.handle, Some(day), None);
        }
        engine.evaluate(
            &mut slot.state,
            self.derived.ids.name(handle),
            day,
            Cause::Timer,
            false,
            thresholds,
            &mut fx,
        );
        self.record(i, fx);
        Ok(())
    }

    /// Pareto cut-offs: walking purchasers by window monetary, biggest first, the
    /// monetary of the first customer at which the running total reaches each share.
    /// The monetary histogram says which bucket holds the cut-off and the total above
    /// it, so only that bucket's index entries are read.
    ///
    /// With peers (a cluster), the other partitions' customers are known only through
    /// their histograms: the cut-off is then the lower bound of the merged histogram's
    /// bucket that holds it (at most 1/16 below the exact figure; ties go up).
    fn pareto_cutoffs(
        &self,
        merged: &Population,
        peers: Option<&Population>,
    ) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let approximate = peers.is_some_and(|p| p.purchasers > 0);
        pareto_walk(&self.settings, merged, &mut |lo, hi, above, target| {
            if approximate {
                return Ok(Some(lo));
            }
            let mut running = above;
            for m in self.derived.monetary_desc(lo, hi) {
                running += m as u128;
                if running as f64 >= target {
                    return Ok(Some(m));
                }
            }
            Ok(None)
        })
    }

    /// The window monetary figures of this partition's purchasers in `lo..=hi`,
    /// largest first (a Pareto walk's bucket, see [`exact_pareto_cutoffs`]).
    pub(crate) fn monetary_in(&self, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        Ok(self.derived.monetary_desc(lo, hi))
    }

    /// New thresholds as of `day`; re-evaluate every customer they can move.
    pub fn recalibrate(&mut self, day: Day) -> Result<(), StoreError> {
        let peers = self.peers.as_ref().and_then(|source| source());
        let merged = match &peers {
            Some(p) => self.pop.merged(p),
            None => self.pop.clone(),
        };
        let (high, medium) = self.pareto_cutoffs(&merged, peers.as_ref())?;
        let mut new = merged.thresholds(high, medium);
        let refit = self.refit(day);
        new.model = refit.or(self.current.model);
        // Value tiers over predicted CLV: cut-offs over every customer's CLV today
        // (this partition's customers: a cluster does not merge them), and every
        // customer evaluated again, since CLV moves with the calendar.
        let by_clv = self.settings.raw.value_tiers.method == ValueMethod::Clv;
        if by_clv && new.model.is_some() {
            let values = self.clv_values(day, &new)?;
            (new.pareto_high, new.pareto_medium) = policy::pareto_cutoffs(values, &self.settings);
        }
        self.recalibrate_to(day, new, refit)
    }

    /// Every customer's predicted CLV as of `day` under `t` (for `value_tiers.method
    /// = "clv"` cut-offs); writes first, so the store holds every customer.
    pub(crate) fn clv_values(&mut self, day: Day, t: &Thresholds) -> Result<Vec<u64>, StoreError> {
        self.flush()?;
        let s = self.settings.clone();
        let mut values = Vec::new();
        self.store.scan(Cf::Customers, &[], None, &mut |k, v| {
            let c = decode(k, v)?;
            values.extend(policy::clv_micros(&c.figures(day, &s), t, &s));
            Ok(true)
        })?;
        Ok(values)
    }

    /// The second half of a recalibration: put `new` in force as of `day` (`refit`:
    /// the model fitted for it, if one was) and re-evaluate every customer it can
    /// move.
    pub(crate) fn recalibrate_to(
        &mut self,
        day: Day,
        new: Thresholds,
        refit: Option<model::Model>,
    ) -> Result<(), StoreError> {
        let by_clv = self.settings.raw.value_tiers.method == ValueMethod::Clv;
        let old = std::mem::replace(&mut self.current, new.clone());
        let prev_day = self.current_day;
        // Value tiers by CLV move with every customer's prediction: all are
        // evaluated again. (A refit alone moves P(alive): the watch knows whom it
        // puts below the `p_alive` threshold today.)
        let first =
            self.current_day.is_none() || old.purchasers == 0 || (by_clv && new.model.is_some());
        self.current_day = Some(day);
        self.counters.recalibrations += 1;

        let mut visit: HashSet<u32> = HashSet::new();
        if let Some(m) = &refit {
            let mut newly = Vec::new();
            let rule = watch_rule(&self.settings, Some(m));
            self.watch.reschedule(rule, day, &mut newly);
            visit.extend(newly);
            let deciles = self.watch.p_alive_deciles(m, day);
            for (a, b) in self.counters.p_alive_deciles.iter_mut().zip(deciles) {
                *a += b;
            }
        }
        if first {
            // Every stored customer has a handle (interned at open).
            let ids = &self.derived.ids;
            self.store.scan(Cf::Customers, &[], None, &mut |k, _| {
                visit.extend(std::str::from_utf8(k).ok().and_then(|id| ids.get(id)));
                Ok(true)
            })?;
            // and those not written yet
            let slots = &self.cache.slots;
            visit.extend(self.dirty.iter().map(|&i| slots[i as usize].handle));
            visit.extend(self.records.unwritten().iter().copied());
        } else if new.purchasers > 0 {
            // A figure x is "high" iff x·n ≥ Σ ⇔ x ≥ ⌈Σ/n⌉ (x an integer). Its side can
            // only change for min(t_old, t_new) ≤ x < max(t_old, t_new).
            let ceil = |sum: i128, n: u64| -((-sum).div_euclid(n as i128));
            let flips = |index: Index, a: i128, b: i128, visit: &mut HashSet<u32>| {
                if a != b {
                    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                    self.derived
                        .customers_in(index, clamp(a.min(b)), clamp(a.max(b) - 1), visit);
                }
            };
            if self.settings.raw.segments.thresholds == ThresholdMode::Mean {
                let (n0, n1) = (old.purchasers, new.purchasers);
                flips(
                    Index::LastDay,
                    ceil(old.sum_last_day as i128, n0),
                    ceil(new.sum_last_day as i128, n1),
                    &mut visit,
                );
                flips(
                    Index::Frequency,
                    ceil(old.sum_frequency as i128, n0),
                    ceil(new.sum_frequency as i128, n1),
                    &mut visit,
                );
                flips(
                    Index::Monetary,
                    ceil(old.sum_micros as i128, n0),
                    ceil(new.sum_micros as i128, n1),
                    &mut visit,
                );
            }
            // Fixed recency: R is high while last purchase day ≥ as-of − recency_days,
            // a bound that moves with the calendar: customers whose last purchase day
            // it passed since the previous recalibration turn R-low.
            if self.settings.raw.segments.thresholds == ThresholdMode::Fixed {
                if let Some(prev) = prev_day {
                    let r = self.settings.raw.segments.recency_days as i128;
                    flips(
                        Index::LastDay,
                        prev as i128 - r,
                        day as i128 - r,
                        &mut visit,
                    );
                }
            }
            // A missing cut-off means "nobody": as if it were above every figure.
            let cut = |c: Option<u64>| c.map_or(i64::MAX as i128, |v| v as i128);
            flips(
                Index::Monetary,
                cut(old.pareto_high),
                cut(new.pareto_high),
                &mut visit,
            );
            flips(
                Index::Monetary,
                cut(old.pareto_medium),
                cut(new.pareto_medium),
                &mut visit,
            );
        }

        let settings = self.settings.clone();
        let engine = Engine::new(&settings);
        let mut handles: Vec<u32> = visit.into_iter().collect();
        self.derived.sort_by_id(&mut handles);
        self.counters.recalibration_visits += handles.len() as u64;
        for chunk in handles.chunks(4096) {
            self.warm(chunk.iter().copied())?;
            for &handle in chunk {
                let Some(i) = self.load_known(handle)? else {
                    continue;
                };
                let mut fx = Effects::default();
                engine.evaluate(
                    &mut self.cache.slots[i as usize].state,
                    self.derived.ids.name(handle),
                    day,
                    Cause::Recalibration,
                    false,
                    &new,
                    &mut fx,
                );
                if !fx.outputs.is_empty() || fx.timer_moved.is_some() || fx.index_moved.is_some() {
                    self.record(i, fx);
                }
            }
            self.flush_if_full()?;
        }
        self.persisted = Some((day, new));
        self.meta_dirty = true;
        self.flush_if_full()
    }

    /// A new fit of the models if one is due on `day` (none yet, or the last is
    /// from an earlier refit period) and the population allows it.
    fn refit(&mut self, day: Day) -> Option<model::Model> {
        if !self.refit_due(day) {
            return None;
        }
        let every = self.settings.raw.predict.refit_every_days;
        let shared = self
            .fit_share
            .as_ref()
            .and_then(|s| *s.lock().unwrap())
            .filter(|m| model::refit_period(m.fitted_on, every) >= model::refit_period(day, every));
        if let Some(m) = shared {
            // Another partition here fitted the cluster's population in this
            // refit period, or a later one (partitions' clocks differ by what each
            // has consumed; the one furthest on fits, those behind take its
            // parameters, which move little in a period). This partition's
            // histogram still goes out for the other instances' refits.
            self.keep_refit(None);
            return Some(m);
        }
        let mut h = self.hist.clone();
        if let Some(p) = self.model_peers.as_ref().and_then(|source| source()) {
            h.merge(&p);
        }
        let m = fit_population(&h, day, &self.settings, self.current.model.as_ref())?;
        if let Some(s) = &self.fit_share {
            let mut latest = s.lock().unwrap();
            if latest.is_none_or(|l| l.fitted_on < m.0.fitted_on) {
                *latest = Some(m.0);
            }
        }
        self.keep_refit(Some(m.1));
        Some(m.0)
    }

    /// Whether a refit is due on `day`: no fit yet, or the last one was made in
    /// an earlier refit period ([`model::refit_period`]).
    pub(crate) fn refit_due(&self, day: Day) -> bool {
        let every = self.settings.raw.predict.refit_every_days;
        self.current.model.is_none_or(|m| {
            model::refit_period(day, every) > model::refit_period(m.fitted_on, every)
        })
    }

    /// Record a refit this partition takes part in: its histogram is stored (the
    /// other instances' refits read it), and `seconds` counts a fit made here.
    pub(crate) fn keep_refit(&mut self, seconds: Option<f64>) {
        if let Some(secs) = seconds {
            self.counters.last_fit_seconds = secs;
            self.counters.model_fits += 1;
        }
        self.histogram_due = true;
    }

    /// The models in force (what a refit warm-starts from).
    pub(crate) fn current_model(&self) -> Option<&model::Model> {
        self.current.model.as_ref()
    }

    /// Flush (which also trims the cache) when the cache is over its cap or the batch
    /// is full. Long passes (a recalibration, a day's timers) call this, so the cache
    /// stays bounded by configuration however many customers they visit.
    fn flush_if_full(&mut self) -> Result<(), StoreError> {
        let e = &self.settings.raw.engine;
        if self.dirty.len() + self.records.unwritten().len() >= e.batch_events {
            self.flush()?;
        } else if self.cache.len() > e.customer_cache {
            self.spill()?;
        }
        Ok(())
    }

    /// Check the incremental machinery against brute force (tests and debugging):
    /// re-evaluate every customer at the clock with the thresholds in force,
    /// recompute the population sums with a scan, and compare the timer and index
    /// entries with those the customer records imply. Changes nothing. Tiers are checked
    /// once thresholds are frozen: on the stream's first day they are the live means,
    /// which move with every event, and the first recalibration re-evaluates everyone.
    pub fn audit(&mut self) -> Result<Audit, StoreError> {
        self.flush()?;
        let mut audit = Audit::default();
        let Some(clock) = self.pop.clock else {
            return Ok(audit);
        };
        let s = &*self.settings;
        let t = self.thresholds();
        let frozen = self.current_day.is_some();
        let mut b = ThresholdsBuilder::default();
        let mut hist = Histogram::default();
        let mut groups: BTreeMap<watch::Group, Vec<u32>> = BTreeMap::new();
        let rule = watch_rule(s, t.model.as_ref());
        // The derived entries each record implies: (handle, timer, indexed).
        let mut derived: Vec<(u32, Option<Day>, Option<Indexed>)> = Vec::new();
        let (ids, records) = (&self.derived.ids, &self.records);
        let mut held = 0;
        self.store.scan(Cf::Customers, &[], None, &mut |k, v| {
            let c = decode(k, v)?;
            let id = String::from_utf8_lossy(k);
            let handle = ids.get(&id);
            // Every stored customer has a handle; what is held is what is stored;
            // while every record is held, none is missing.
            match handle.map(|h| records.lookup(h)) {
                Some(Lookup::Held(b)) if b == v => held += 1,
                Some(Lookup::Unknown) => {}
                _ => audit.held_mismatches += 1,
            }
            match handle {
                Some(h) => derived.push((h, c.timer, c.indexed)),
                None if c.timer.is_some() || c.indexed.is_some() => {
                    audit.derived_mismatches += 1;
                }
                None => {}
            }
            if let Some(i) = Inputs::of(&c, None) {
                hist.count(&i, true);
                if let Some(g) = watch::group_of(&i) {
                    match handle {
                        Some(h) => groups.entry(g).or_default().push(h),
                        None => audit.watch_mismatches += 1,
                    }
                }
            }
            let f = c.figures(clock, s);
            if let (Some(m), Some(i)) = (rule.model, f.model_inputs) {
                let flagged = c
                    .episode
                    .is_some_and(|e| e.reasons.contains(policy::Rule::PAlive));
                if i.x >= 1 && m.p_alive(&i, clock) < rule.threshold && !flagged {
                    audit.watch_mismatches += 1;
                }
            }
            b.add(f.recency_days, f.frequency, f.monetary_micros);
            if frozen && c.published != Some(policy::tiers(&f, &t, s)) {
                audit.tier_mismatches += 1;
            }
            Ok(true)
        })?;
        audit.derived_mismatches += self.derived.audit(derived.into_iter());
        // Nothing held that is not stored.
        audit.held_mismatches += (self.records.len() - held) as u64;
        for handles in groups.values_mut() {
            handles.sort_unstable();
        }
        audit.watch_mismatches += self.watch.audit(&groups, rule, clock);
        let exact = b.build(s, clock);
        let live = self.pop.thresholds(None, None);
        let hist_total: u128 = self.pop.monetary_hist.values().map(|(_, m)| *m).sum();
        let hist_count: u64 = self.pop.monetary_hist.values().map(|(n, _)| *n).sum();
        if (
            exact.purchasers,
            exact.sum_last_day,
            exact.sum_frequency,
            exact.sum_micros,
        ) != (
            live.purchasers,
            live.sum_last_day,
            live.sum_frequency,
            live.sum_micros,
        ) || (hist_count, hist_total) != (exact.purchasers, exact.sum_micros)
            || hist != self.hist
        {
            audit.population_drift = 1;
        }
        Ok(audit)
    }

    /// Add the transitions since the last write to the stored counts of their
    /// days; once a day, delete the days older than [`TRANSITION_DAYS`].
    fn write_transitions(&mut self, batch: &mut Batch) -> Result<(), StoreError> {
        let keep_from = self.pop.clock.map(|c| c - TRANSITION_DAYS + 1);
        for (day, new) in std::mem::take(&mut self.transitions) {
            if keep_from.is_some_and(|k| day < k) {
                // Already older than what is kept (a write after a long clock move).
                continue;
            }
            let key = transitions_key(day);
            let mut counts: BTreeMap<String, u64> = match self.store.get(Cf::Meta, &key)? {
                Some(b) => serde_json::from_slice(&b).map_err(|_| {
                    corrupt(
                        &key,
                        crate::store::codec::CodecError("unreadable transitions"),
                    )
                })?,
                None => BTreeMap::new(),
            };
            for ((dim, a, b), n) in new {
                *counts.entry(format!("{dim}/{a}>{b}")).or_default() += n;
            }
            batch.put(
                Cf::Meta,
                key,
                serde_json::to_vec(&counts).expect("counts serialise"),
            );
        }
        if let Some(clock) = self.pop.clock {
            if self.transitions_pruned != Some(clock) {
                self.transitions_pruned = Some(clock);
                let mut old = Vec::new();
                self.store.scan(
                    Cf::Meta,
                    META_TRANSITIONS,
                    Some(&transitions_key(keep_from.unwrap_or(clock))),
                    &mut |k, _| {
                        old.push(k.to_vec());
                        Ok(true)
                    },
                )?;
                for k in old {
                    batch.delete(Cf::Meta, k);
                }
            }
        }
        Ok(())
    }

    /// The decoded cache is over its cap before the batch is due: let it go back
    /// under its cap without a write — the changed customers' new records wait in
    /// `records` (encoded at each change, [`record`](Self::record)), so the batch
    /// still gathers each customer's changes into one record. A changed customer
    /// whose record the budget refused (full of unwritten records) is only in the
    /// cache (a dirty slot): then it is a write.
    fn spill(&mut self) -> Result<(), StoreError> {
        if !self.dirty.is_empty() {
            return self.flush();
        }
        let cap = self.settings.raw.engine.customer_cache;
        self.cache.trim(cap * 3 / 4);
        Ok(())
    }

    /// Bound the record cache to `bytes` (`engine.record_cache_mb` is in MiB; tests
    /// and benchmarks use budgets of a few records). Writes first, so that every
    /// held record is stored.
    pub fn set_record_budget(&mut self, bytes: usize) -> Result<(), StoreError> {
        self.flush()?;
        self.records.set_budget(bytes);
        Ok(())
    }

    /// Write everything pending in one atomic batch and trim the cache.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut batch = std::mem::take(&mut self.pending);
        // The records encoded at each change first. (A customer whose record the
        // budget refused at a later change is no longer held: its dirty slot is
        // written from the cache below.)
        // (`written`: in this batch from here on, they may be let go for room.)
        // Each copy is a few dozen bytes, each of its reads (the record, the id)
        // a miss to memory: hinted some customers ahead ([`crate::hint`]).
        let written = self.records.written();
        for (k, &h) in written.iter().enumerate() {
            if let Some(&far) = written.get(k + 16) {
                self.records.hint_slot(far);
                self.derived.ids.hint(far, false);
            }
            if let Some(&near) = written.get(k + 8) {
                self.records.hint_record(near);
                self.derived.ids.hint(near, true);
            }
            if let Lookup::Held(b) = self.records.lookup(h) {
                batch.put(Cf::Customers, self.derived.ids.bytes(h), b);
            }
        }
        for i in self.dirty.drain(..) {
            let slot = &mut self.cache.slots[i as usize];
            encode_customer(&slot.state, &mut self.scratch);
            self.records.put(slot.handle, &self.scratch);
            batch.put(
                Cf::Customers,
                self.derived.ids.bytes(slot.handle),
                &self.scratch,
            );
            slot.dirty = false;
        }
        if batch.is_empty() && self.since_flush == 0 && !self.meta_dirty && self.outputs.is_empty()
        {
            return Ok(());
        }
        self.write_transitions(&mut batch)?;
        let mut meta = Vec::new();
        self.pop.encode(&mut meta);
        batch.put(Cf::Meta, META_POPULATION, meta);
        if let Some((d, current)) = &self.persisted {
            let mut t = Vec::new();
            encode_thresholds(*d, current, &mut t);
            batch.put(Cf::Meta, META_THRESHOLDS, t);
        }
        if let Some(hook) = &mut self.hook {
            if std::mem::take(&mut self.histogram_due) {
                let mut buf = Vec::new();
                self.hist.encode(&mut buf);
                batch.put(Cf::Meta, META_MODEL_HISTOGRAM, buf);
            }
            let mut none = Vec::new();
            let tiers = self.customer_tiers.as_mut().unwrap_or(&mut none);
            hook(&mut batch, &mut self.outputs, tiers);
        }
        self.store.write(batch)?;
        if let Some((gauge, reported)) = &mut self.timers_gauge {
            let n = self.derived.timers_len() as i64;
            gauge.add(n - *reported);
            *reported = n;
        }
        self.pending_archive.clear();
        self.since_flush = 0;
        self.head_start = 0;
        self.meta_dirty = false;
        let cap = self.settings.raw.engine.customer_cache;
        if self.cache.len() > cap {
            // Every slot is clean now; keep the 3/4 of the cap loaded last.
            self.cache.trim(cap * 3 / 4);
        }
        Ok(())
    }
}
