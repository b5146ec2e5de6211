//! The state partitions of this instance as the group assigns and revokes them
//! (Kafka Streams' task manager): which are open here, being opened or restored
//! (on the restore pool, never on the loop), waiting to retry an open that failed,
//! and which state dirs on disk belong to nobody here any more.
//!
//! An open partition is in `parts` while on the loop, or out on a worker (its
//! [`Outbox`] stays in `outboxes`, so the gauges and the publisher still see it);
//! messages polled for it meanwhile wait in `staged`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events;
use super::inputs::Inputs;
use super::outbox::Outbox;
use super::pool::Pool;
use super::restore::{self, OpenError, OpenJob, Opened};
use super::task::{Msg, Partition, PeerStats};
use super::KafkaError;
use crate::cluster::{partition_dir, SharedStatus};
use crate::config::Settings;
use crate::telemetry::Metrics;

/// First wait before an open that failed is tried again; doubled up to a minute.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the state dirs are checked for ones to delete.
const CLEANUP_EVERY: Duration = Duration::from_secs(30);

/// A finished open: its partition and generation, and what came of it.
type OpenDone = (i32, u64, Result<Opened, OpenError>);

pub struct TaskManager {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    topics: Vec<String>,
    nonce: u64,
    peers: PeerStats,
    /// Open partitions on the loop (the others are on workers).
    pub parts: BTreeMap<i32, Partition>,
    /// The outboxes of every open partition, on the loop or on a worker.
    pub outboxes: BTreeMap<i32, Outbox>,
    /// Messages polled for a partition on a worker, queued when it is back.
    pub staged: BTreeMap<i32, Vec<(usize, Msg)>>,
    /// Partitions opened here whose ownership is still to be announced.
    pub announce: BTreeSet<i32>,
    /// Being opened or restored: each one's generation (a partition revoked while
    /// it opens and assigned again has a second open under way: only the latest
    /// counts) and cancel flag.
    opening: BTreeMap<i32, (u64, Arc<AtomicBool>)>,
    generation: u64,
    /// Assigned, to be opened again at this time (an open failed).
    retry: BTreeMap<i32, Instant>,
    /// The wait before the next try should the next open fail too.
    backoff: BTreeMap<i32, Duration>,
    restores: Pool<OpenJob, OpenDone>,
    /// When each partition was last released here (state dir cleanup).
    released: BTreeMap<i32, Instant>,
    started: Instant,
    cleaned_at: Instant,
    /// Partitions whose inputs are paused (their changelog is blocked).
    paused: BTreeSet<i32>,
}

impl TaskManager {
    pub fn new(
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        status: SharedStatus,
        topics: Vec<String>,
        peers: PeerStats,
        threads: usize,
    ) -> Result<TaskManager, KafkaError> {
        let restores = Pool::new("strata-restore", threads, |job: OpenJob| {
            let r = restore::open(&job);
            (job.partition, job.generation, r)
        })
        .map_err(|e| KafkaError::Broker(format!("cannot start a thread: {e}")))?;
        Ok(TaskManager {
            settings,
            metrics,
            status,
            topics,
            nonce: random_nonce(),
            peers,
            parts: BTreeMap::new(),
            outboxes: BTreeMap::new(),
            staged: BTreeMap::new(),
            announce: BTreeSet::new(),
            opening: BTreeMap::new(),
            generation: 0,
            retry: BTreeMap::new(),
            backoff: BTreeMap::new(),
            restores,
            released: BTreeMap::new(),
            started: Instant::now(),
            cleaned_at: Instant::now(),
            paused: BTreeSet::new(),
        })
    }

    /// Whether partition p is open here (on the loop or on a worker).
    pub fn is_open(&self, p: i32) -> bool {
        self.outboxes.contains_key(&p)
    }

    /// Start opening newly assigned partitions (on the restore pool).
    pub fn assign(&mut self, ps: Vec<i32>) {
        for p in ps {
            if self.is_open(p) || self.opening.contains_key(&p) {
                continue;
            }
            self.status.lock().unwrap().restoring.insert(p);
            self.metrics.partitions_restoring.inc();
            self.start_open(p);
        }
    }

    fn start_open(&mut self, p: i32) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.generation += 1;
        self.opening.insert(p, (self.generation, cancel.clone()));
        self.released.remove(&p);
        self.restores.submit(OpenJob {
            partition: p,
            generation: self.generation,
            settings: self.settings.clone(),
            inputs: self.topics.clone(),
            nonce: self.nonce,
            metrics: self.metrics.clone(),
            peers: self.peers.clone(),
            cancel,
        });
    }

    /// Take the partitions whose open finished (and start those due for a retry):
    /// assign their inputs at the stored offsets.
    pub fn install(&mut self, inputs: &mut Inputs) -> Result<(), KafkaError> {
        let now = Instant::now();
        let due: Vec<i32> = self
            .retry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(&p, _)| p)
            .collect();
        for p in due {
            self.retry.remove(&p);
            self.start_open(p);
        }
        for (p, generation, r) in self.restores.collect(false) {
            // The latest open of a partition still assigned; an earlier one's
            // result is dropped.
            let wanted = match self.opening.get(&p) {
                Some((g, cancel)) if *g == generation => {
                    let live = !cancel.load(Ordering::Relaxed);
                    self.opening.remove(&p);
                    live
                }
                _ => false,
            };
            match r {
                Ok(opened) if wanted => {
                    self.backoff.remove(&p);
                    self.opened(p, opened, inputs)?;
                }
                Ok(opened) => {
                    // Revoked while it opened.
                    self.metrics.add_population(&opened.part.store, -1).ok();
                }
                Err(OpenError::Cancelled) => {}
                Err(e) if wanted => {
                    let wait = self.backoff.get(&p).copied().unwrap_or(RETRY_FIRST);
                    let error = match e {
                        OpenError::Kafka(k) => k,
                        other => KafkaError::Broker(other.to_string()),
                    };
                    events::OpenFailed {
                        partition: p,
                        error: &error,
                        retry_in: wait,
                    }
                    .emit(&self.metrics);
                    self.retry.insert(p, Instant::now() + wait);
                    self.backoff.insert(p, (wait * 2).min(RETRY_MAX));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn opened(&mut self, p: i32, opened: Opened, inputs: &mut Inputs) -> Result<(), KafkaError> {
        let Opened { part, offsets } = opened;
        tracing::debug!(
            partition = p,
            ?offsets,
            "Assigning the inputs at the stored offsets."
        );
        inputs.assign(p, &offsets)?;
        self.outboxes.insert(p, part.outbox.clone());
        let store = part.store.clone();
        self.parts.insert(p, part);
        self.announce.insert(p);
        let mut st = self.status.lock().unwrap();
        st.restoring.remove(&p);
        st.assigned.insert(p);
        st.stores.insert(p, store);
        self.metrics.partitions_restoring.dec();
        self.metrics
            .partitions_assigned
            .set(st.assigned.len() as i64);
        Ok(())
    }

    /// Release partitions `ps`: stop opening them, or close them (the caller first
    /// took them back from their workers and handed over what they had to publish),
    /// and stop fetching their inputs.
    pub fn close(&mut self, ps: &[i32], inputs: &mut Inputs) {
        for &p in ps {
            self.close_one(p, inputs);
        }
        inputs.unassign(ps);
    }

    fn close_one(&mut self, p: i32, inputs: &mut Inputs) {
        if let Some((_, cancel)) = self.opening.remove(&p) {
            cancel.store(true, Ordering::Relaxed);
        }
        self.retry.remove(&p);
        self.backoff.remove(&p);
        if self.status.lock().unwrap().restoring.remove(&p) {
            self.metrics.partitions_restoring.dec();
        }
        self.outboxes.remove(&p);
        self.staged.remove(&p);
        self.announce.remove(&p);
        if self.paused.remove(&p) {
            inputs.pause(p, false);
        }
        if let Some(part) = self.parts.remove(&p) {
            if let Err(e) = self.metrics.add_population(&part.store, -1) {
                tracing::warn!(error = %e, partition = p, "Could not read the released partition's populations.");
            }
        }
        self.released.insert(p, Instant::now());
        let mut st = self.status.lock().unwrap();
        st.assigned.remove(&p);
        st.stores.remove(&p);
        self.metrics
            .partitions_assigned
            .set(st.assigned.len() as i64);
        tracing::info!(partition = p, "Released partition.");
    }

    /// Partition p's store failed while it was applied (`why`): close it, move
    /// its state aside and restore it from the changelog. Its unpublished outbox
    /// goes with it; the changelog's offsets are before that work, which is applied
    /// (and its outputs published, with the same ids) again.
    pub fn reopen(
        &mut self,
        p: i32,
        why: &KafkaError,
        inputs: &mut Inputs,
    ) -> Result<(), KafkaError> {
        self.close(&[p], inputs);
        let dir = partition_dir(&self.settings.raw.engine.state_dir, p);
        restore::move_aside(&dir, p, why, &self.metrics)?;
        self.assign(vec![p]);
        Ok(())
    }

    /// Pause the inputs of the partitions in `blocked` (their changelog refuses a
    /// record) and resume the others'.
    pub fn pause_blocked(&mut self, blocked: &BTreeSet<i32>, inputs: &Inputs) {
        for &p in blocked.difference(&self.paused.clone()) {
            if self.is_open(p) {
                inputs.pause(p, true);
                self.paused.insert(p);
            }
        }
        for p in self.paused.clone().difference(blocked) {
            inputs.pause(*p, false);
            self.paused.remove(p);
        }
    }

    /// Whether partition p takes no events now (its changelog is blocked).
    pub fn is_paused(&self, p: i32) -> bool {
        self.paused.contains(&p)
    }

    /// Delete the state dirs of partitions not open (or opening) here that were
    /// released, or last written, more than `kafka.state_cleanup_delay_ms` ago
    /// (Kafka Streams' `state.cleanup.delay.ms`); none before the process has run
    /// that long either, so a restart reuses its state.
    pub fn clean_state_dirs(&mut self) {
        let delay = Duration::from_millis(self.settings.raw.kafka.state_cleanup_delay_ms);
        let every = CLEANUP_EVERY.min(delay).max(Duration::from_secs(1));
        if self.cleaned_at.elapsed() < every || self.started.elapsed() < delay {
            return;
        }
        self.cleaned_at = Instant::now();
        let root = self.settings.raw.engine.state_dir.join("partitions");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue; // corrupt dirs moved aside stay for the operator
            };
            if self.is_open(p) || self.opening.contains_key(&p) || self.retry.contains_key(&p) {
                continue;
            }
            let idle = match self.released.get(&p) {
                Some(at) => at.elapsed() >= delay,
                None => modified_before(&e.path(), delay),
            };
            if idle {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(error = %err, dir = %e.path().display(), "Could not delete an unused state dir.");
                    continue;
                }
                self.released.remove(&p);
                events::StateDirRemoved { dir: &e.path() }.emit(&self.metrics);
            }
        }
    }

    /// Stop every open under way (shutdown); the pool joins its threads when
    /// dropped.
    pub fn cancel_opens(&mut self) {
        for (_, cancel) in self.opening.values() {
            cancel.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for TaskManager {
    /// Restores under way stop between two records (the pool then joins them).
    fn drop(&mut self) {
        self.cancel_opens();
    }
}

/// Whether nothing in `dir` (nor `dir` itself) changed within `age`.
fn modified_before(dir: &Path, age: Duration) -> bool {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e >= age)
    };
    old(dir)
        && std::fs::read_dir(dir)
            .map(|es| es.flatten().all(|e| old(&e.path())))
            .unwrap_or(true)
}

/// Random per process start: two instances never write the same (seq, nonce).
fn random_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    xxhash_rust::xxh3::xxh3_64(format!("{t}-{}", std::process::id()).as_bytes())
}
