//! Opening a state partition (Kafka Streams' changelog reader and state manager):
//! keep the local state when it is the changelog's latest, else restore it from
//! the changelog — whole batches only; the processor's open rebuilds what is
//! derived from it (timers and indexes, in memory).
//!
//! This runs on a thread of its own ([`open`], handed to a pool by the task
//! manager), so the loop goes on polling while a partition restores: the member
//! stays in the group however long a restore takes (Kafka Streams polls between
//! restore batches since KIP-429), other partitions keep being applied, and a
//! revocation or SIGTERM stops the restore between two records.
//!
//! A restore is complete only once its `kafka.restoring` flag (local only) is
//! deleted, in a write after the last restored batch: a partition found with the
//! flag is restored again, however current its marker looks. A local store that
//! cannot be opened or read (corruption, a codec version from a newer release) is
//! moved aside (`partitions/<p>.corrupt-<time>`) and the
//! partition restored; it never stops the instance.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::changelog::{self, Marker, Restorer, MARKER_KEY, PUBLISHED_KEY};
use super::clients::{self, transient};
use super::task::{model_peers_of, peers_of, Partition, PeerStats};
use super::{broker, events, KafkaError};
use crate::cluster::partition_dir;
use crate::config::{Guarantee, Settings};
use crate::store::codec::decode_customer;
use crate::store::rocks::RocksStore;
use crate::store::{Batch, Cf, Store, StoreError};
use crate::telemetry::Metrics;

/// Meta key present while a restore is under way (local only, never replicated:
/// `kafka.` keys other than the marker are not).
pub const RESTORING_KEY: &[u8] = b"kafka.restoring";

/// What to do with a partition's local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// It is the changelog's latest (or ahead of it, with the unpublished rest in
    /// its outbox): open it as it is.
    Keep,
    /// Missing, behind, written by another owner since, or a restore that never
    /// finished: replace it with the changelog's state.
    Restore,
}

/// The keep-or-restore decision. `local` and `published`: the local state's last
/// written and last acknowledged markers; `tail`: the changelog's last marker
/// (`None` when its last records hold none); `changelog_empty`; `restoring`: the
/// local state carries the flag of an unfinished restore.
pub fn plan(
    local: Option<&Marker>,
    published: Option<&Marker>,
    tail: Option<&Marker>,
    changelog_empty: bool,
    restoring: bool,
) -> Plan {
    if restoring {
        return Plan::Restore;
    }
    if changelog_empty {
        return Plan::Keep;
    }
    let Some(cl) = tail else {
        return Plan::Restore;
    };
    let same = |m: Option<&Marker>| m.is_some_and(|m| m.same_batch(cl));
    // This process's own writes, some not on the changelog yet: the changelog's
    // last batch is one of ours, at or before the local one, and after the last
    // one known published (else the changelog went on without us).
    let within = local.is_some_and(|l| {
        l.nonce == cl.nonce && cl.seq <= l.seq && published.is_none_or(|pb| pb.seq < cl.seq)
    });
    if same(local) || same(published) || within {
        Plan::Keep
    } else {
        Plan::Restore
    }
}

/// The changelog reader's context: "end of partition" is how it knows it is done,
/// not an error worth a log line.
struct ReaderCtx(Arc<Metrics>);

impl ClientContext for ReaderCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            events::ClientError {
                client: "changelog_reader",
                error: &error,
                reason,
            }
            .emit(&self.0);
        }
    }
}

impl ConsumerContext for ReaderCtx {}

/// Sees each changelog record: (key, value or `None` for a tombstone).
type RecordVisitor<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), OpenError>;

/// Reads one changelog partition (no group).
pub struct ChangelogReader {
    consumer: BaseConsumer<ReaderCtx>,
    topic: String,
}

impl ChangelogReader {
    pub fn new(
        config: &ClientConfig,
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        Ok(ChangelogReader {
            consumer: config
                .create_with_context(ReaderCtx(metrics))
                .map_err(broker("cannot create a changelog reader"))?,
            topic: topic.to_string(),
        })
    }

    /// The first offset of a partition of any topic (where an input with no
    /// stored offset starts).
    pub fn low_watermark(&self, topic: &str, p: i32) -> Result<i64, KafkaError> {
        Ok(self
            .consumer
            .fetch_watermarks(topic, p, Duration::from_secs(15))
            .map_err(broker("cannot read input offsets"))?
            .0)
    }

    /// Visit records of partition p to its end (the last `from_end` records, or
    /// all); returns whether any record was read. The end is where the broker says
    /// "end of partition" (not ListOffsets, which some Kafka-compatible brokers answer
    /// inexactly: it only picks where to start). Stops when `cancel` is set.
    fn read(
        &self,
        p: i32,
        from_end: Option<i64>,
        cancel: &AtomicBool,
        f: RecordVisitor<'_>,
    ) -> Result<bool, OpenError> {
        let (lo, hi) = self
            .consumer
            .fetch_watermarks(&self.topic, p, Duration::from_secs(15))
            .map_err(broker("cannot read the changelog's offsets"))?;
        if hi <= lo {
            // Empty (a new partition): nothing to wait for the end of. Exact even on
            // brokers whose "latest" is inexact: a record makes it pass `lo`.
            return Ok(false);
        }
        let start = match from_end {
            Some(n) => (hi - n).max(lo),
            None => lo,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(start.max(0)))
            .map_err(broker("changelog offset"))?;
        self.consumer
            .assign(&tpl)
            .map_err(broker("cannot read the changelog"))?;
        let mut any = false;
        let mut deadline = Instant::now() + Duration::from_secs(600);
        let result = loop {
            if cancel.load(Ordering::Relaxed) {
                break Err(OpenError::Cancelled);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    any = true;
                    deadline = Instant::now() + Duration::from_secs(600);
                    if let Some(k) = m.key() {
                        if let Err(e) = f(k, m.payload()) {
                            break Err(e);
                        }
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break Ok(any),
                // A broker of the cluster is unreachable (maybe not even this
                // partition's leader): librdkafka reconnects; the deadline bounds it.
                Some(Err(e)) if transient(&e) => {}
                Some(Err(e)) => {
                    break Err(KafkaError::Broker(format!("reading the changelog: {e}")).into())
                }
                None if Instant::now() > deadline => {
                    break Err(KafkaError::Broker(format!(
                        "reading changelog partition {p} made no progress for 10 minutes; check the broker"
                    ))
                    .into())
                }
                None => {}
            }
        };
        self.consumer.unassign().ok();
        result
    }
}

/// Why an open did not finish.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Revoked, or the service is stopping: nothing to report.
    #[error("cancelled")]
    Cancelled,
    /// The local state cannot be read (moved aside and restored by [`open`]).
    #[error("{0}")]
    Corrupt(StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> OpenError {
        match e {
            // The lock of a store still open (in this process, or another one using
            // the same state dir) is not corruption: retry later.
            StoreError::Backend(m) if m.contains("lock") || m.contains("LOCK") => {
                OpenError::Kafka(KafkaError::Store(StoreError::Backend(m)))
            }
            e => OpenError::Corrupt(e),
        }
    }
}

/// Everything opening partition `p` needs.
pub struct OpenJob {
    pub partition: i32,
    /// Which open of the partition this is (see the task manager).
    pub generation: u64,
    pub settings: Arc<Settings>,
    pub inputs: Vec<String>,
    pub nonce: u64,
    pub metrics: Arc<Metrics>,
    pub peers: PeerStats,
    /// Set on revocation or shutdown.
    pub cancel: Arc<AtomicBool>,
}

/// A partition ready to consume: where each input resumes.
pub struct Opened {
    pub part: Partition,
    pub offsets: Vec<i64>,
}

fn open_store(s: &Settings, dir: &Path) -> Result<Arc<RocksStore>, StoreError> {
    Ok(Arc::new(RocksStore::open(
        dir,
        (s.raw.engine.block_cache_mb / 4).max(8),
        (s.raw.engine.write_buffer_mb / 4).max(4),
    )?))
}

/// Where a corrupt store of partition p is moved.
fn corrupt_dir(dir: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!("{name}.corrupt-{stamp}"))
}

/// What the local state says, read without trusting it: every decode failure is
/// [`OpenError::Corrupt`].
struct Local {
    store: Arc<RocksStore>,
    marker: Option<Marker>,
    published: Option<Marker>,
    restoring: bool,
}

fn inspect(s: &Settings, dir: &Path) -> Result<Local, OpenError> {
    let store = open_store(s, dir)?;
    let marker = |k: &[u8]| -> Result<Option<Marker>, OpenError> {
        match store.get(Cf::Meta, k)? {
            None => Ok(None),
            Some(b) => Marker::decode(&b).map(Some).ok_or_else(|| {
                OpenError::Corrupt(StoreError::Corrupt {
                    key: format!("meta/{}", String::from_utf8_lossy(k)),
                    source: crate::store::codec::CodecError("unreadable batch marker"),
                })
            }),
        }
    };
    let (local, published) = (marker(MARKER_KEY)?, marker(PUBLISHED_KEY)?);
    let restoring = store.get(Cf::Meta, RESTORING_KEY)?.is_some();
    // The meta records the processor decodes at open, and the first customer: a
    // store of another codec version fails here, not mid-stream.
    crate::processor::check_meta(&*store)?;
    let mut first = Ok(());
    store.scan(Cf::Customers, &[], None, &mut |k, v| {
        first = decode_customer(v)
            .map(|_| ())
            .map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(k).into_owned(),
                source: e,
            });
        Ok(false)
    })?;
    first?;
    Ok(Local {
        store,
        marker: local,
        published,
        restoring,
    })
}

/// Move a partition's unreadable state dir aside; the partition then opens empty
/// (and restores).
pub fn move_aside(
    dir: &Path,
    partition: i32,
    why: &dyn std::fmt::Display,
    metrics: &Metrics,
) -> Result<(), KafkaError> {
    let to = corrupt_dir(dir);
    std::fs::rename(dir, &to).map_err(|e| {
        KafkaError::Store(StoreError::Backend(format!(
            "cannot move the unreadable state dir {} aside: {e} (delete it by hand)",
            dir.display()
        )))
    })?;
    events::StoreCorrupt {
        partition,
        error: why,
        moved_to: &to,
    }
    .emit(metrics);
    Ok(())
}

/// Open (or restore) partition `job.partition` and make it ready to consume.
pub fn open(job: &OpenJob) -> Result<Opened, OpenError> {
    let dir = partition_dir(&job.settings.raw.engine.state_dir, job.partition);
    match open_dir(job, &dir) {
        Err(OpenError::Corrupt(e)) => {
            move_aside(&dir, job.partition, &e, &job.metrics)?;
            open_dir(job, &dir).map_err(|e| match e {
                // The changelog's own records do not decode (a newer release wrote
                // them?): nothing here can fix that; retried later.
                OpenError::Corrupt(e) => OpenError::Kafka(KafkaError::Store(e)),
                e => e,
            })
        }
        r => r,
    }
}

fn open_dir(job: &OpenJob, dir: &Path) -> Result<Opened, OpenError> {
    let (s, p) = (&job.settings, job.partition);
    let started = Instant::now();
    let eos = s.raw.kafka.processing_guarantee == Guarantee::ExactlyOnce;
    let reader = ChangelogReader::new(
        &clients::changelog_reader(s, eos),
        &s.raw.kafka.topics.changelog,
        job.metrics.clone(),
    )?;
    let local = inspect(s, dir)?;
    // The changelog's last whole batch (its marker is the batch's last record),
    // and the keys of the records after it: a round its writer never finished.
    let mut tail: Option<Marker> = None;
    let mut orphans = Vec::new();
    let has_records = reader.read(p, Some(4096), &job.cancel, &mut |k, v| {
        if let Some((cf, key)) = changelog::parse_changelog_key(k) {
            if changelog::is_marker(cf, key) {
                tail = v.and_then(Marker::decode);
                orphans.clear();
            } else {
                orphans.push((cf, key.to_vec()));
            }
        }
        Ok(())
    })?;
    let decision = plan(
        local.marker.as_ref(),
        local.published.as_ref(),
        tail.as_ref(),
        !has_records,
        local.restoring,
    );
    let store = match decision {
        Plan::Keep => {
            // Under exactly_once a batch's changelog records and outputs commit in
            // one transaction: outbox batches up to the changelog's last
            // (committed) marker were published, and sending them again would
            // duplicate them. Under at_least_once whatever the outbox holds is
            // simply sent again (re-published outputs keep their event_id).
            if let Some(cl) = tail.as_ref().filter(|_| eos) {
                drop_published_outbox(&local.store, cl)?;
            }
            tracing::info!(
                partition = p,
                "Partition state is current; no restore needed."
            );
            local.store
        }
        Plan::Restore => {
            tracing::info!(
                partition = p,
                "Restoring partition state from the changelog."
            );
            drop(local);
            std::fs::remove_dir_all(dir).ok();
            let store = open_store(s, dir)?;
            let records;
            (orphans, records) = restore(job, &reader, &store)?;
            tracing::info!(
                partition = p,
                records,
                seconds = started.elapsed().as_secs_f64(),
                "Restored partition state from the changelog."
            );
            store
        }
    };
    job.metrics.add_population(&store, 1)?;
    let opened = ready(job, &reader, store.clone(), orphans);
    if opened.is_err() {
        job.metrics.add_population(&store, -1).ok();
    }
    opened
}

/// The outbox entries of batches up to the changelog's last marker (exactly_once:
/// committed with it).
fn drop_published_outbox(store: &RocksStore, cl: &Marker) -> Result<(), StoreError> {
    let mut b = Batch::default();
    store.scan(Cf::Outbox, &[], None, &mut |k, v| {
        let batch_seq = changelog::unpack(v).and_then(|e| {
            changelog::entry_records(&e)
                .next()
                .flatten()
                .map(|r| r.batch_seq)
        });
        if batch_seq.is_some_and(|s| s <= cl.seq) {
            b.delete(Cf::Outbox, k);
        }
        Ok(true)
    })?;
    if !b.is_empty() {
        store.write(b)?;
    }
    Ok(())
}

/// The keys of the records after the changelog's last marker.
type Orphans = Vec<(Cf, Vec<u8>)>;

/// Replace an empty store's contents with the changelog's whole batches; returns
/// the keys of the records after the last marker (an unfinished round) and the
/// number of records read.
fn restore(
    job: &OpenJob,
    reader: &ChangelogReader,
    store: &Arc<RocksStore>,
) -> Result<(Orphans, u64), OpenError> {
    let mut flag = Batch::default();
    flag.put(Cf::Meta, RESTORING_KEY, Vec::new());
    store.write(flag)?;
    let mut r = Restorer::default();
    let metrics = job.metrics.clone();
    reader.read(job.partition, None, &job.cancel, &mut |k, v| {
        metrics.restore_records.inc();
        fail::fail_point!("restore.record");
        if let Some(b) = r.push(k, v) {
            store.write(b)?;
        }
        Ok(())
    })?;
    let mut b = r.finish();
    if let Some(m) = &r.last_marker {
        b.put(Cf::Meta, PUBLISHED_KEY, m.encode());
    }
    store.write(b)?;
    // A crash from here on leaves the flag: the partition is restored again.
    fail::fail_point!("restore.before_rebuild", |_| Err(OpenError::Kafka(
        KafkaError::Broker("failpoint restore.before_rebuild".into())
    )));
    let mut done = Batch::default();
    done.delete(Cf::Meta, RESTORING_KEY);
    store.write(done)?;
    Ok((std::mem::take(&mut r.orphans), r.records))
}

/// Open the partition's processor over its store, republish what an unfinished
/// round left on the changelog, and find where each input resumes.
fn ready(
    job: &OpenJob,
    reader: &ChangelogReader,
    store: Arc<RocksStore>,
    orphans: Orphans,
) -> Result<Opened, OpenError> {
    let p = job.partition;
    let mut part = Partition::open(
        job.settings.clone(),
        p,
        store,
        job.nonce,
        job.inputs.len(),
        job.metrics.clone(),
    )?;
    let stats = job.peers.clone();
    let model_stats = stats.clone();
    part.proc.set_peers(Box::new(move || peers_of(&stats, p)));
    part.proc
        .set_fit_share(job.peers.lock().unwrap().fit.clone());
    part.proc
        .set_model_peers(Box::new(move || model_peers_of(&model_stats, p)));
    if !orphans.is_empty() {
        tracing::info!(
            partition = p,
            records = orphans.len(),
            "The changelog ends with a round its writer never finished; publishing those keys' restored values over it."
        );
        part.republish(orphans)?;
    }
    // One write at once (marker and population summary): the next publish round
    // then has records, and this instance's ownership announcement rides with it
    // even if the partition stays idle.
    part.commit()?;
    let mut offsets = Vec::with_capacity(job.inputs.len());
    for t in &job.inputs {
        offsets.push(match part.next_offset(t) {
            Some(o) => o,
            None => reader.low_watermark(t, p)?,
        });
    }
    Ok(Opened { part, offsets })
}

#[cfg(test)]
mod tests {
    use super::{plan, Plan};
    use crate::kafka::changelog::Marker;

    fn m(seq: u64, nonce: u64) -> Marker {
        Marker {
            seq,
            nonce,
            offsets: Default::default(),
        }
    }

    /// Every case of the keep-or-restore decision.
    #[test]
    fn the_restore_plan() {
        use Plan::*;
        let (a, b) = (1, 2); // two writers (process lives)
        type Case = (
            &'static str,
            Option<Marker>,
            Option<Marker>,
            Option<Marker>,
            bool,
            bool,
            Plan,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // name, local, published, changelog tail, changelog empty, restoring, plan
            ("new partition, nothing anywhere",        None,           None,          None,          true,  false, Keep),
            ("local state, empty changelog",           Some(m(5, a)),  None,          None,          true,  false, Keep),
            ("no local state, changelog has batches",  None,           None,          Some(m(5, a)), false, false, Restore),
            ("local is the changelog's last batch",    Some(m(5, a)),  Some(m(5, a)), Some(m(5, a)), false, false, Keep),
            ("ahead: later batches not published yet", Some(m(7, a)),  Some(m(5, a)), Some(m(5, a)), false, false, Keep),
            ("ahead, changelog between",               Some(m(7, a)),  Some(m(4, a)), Some(m(6, a)), false, false, Keep),
            ("ahead, nothing published yet",           Some(m(7, a)),  None,          Some(m(6, a)), false, false, Keep),
            ("another writer went on since",           Some(m(7, a)),  Some(m(5, a)), Some(m(9, b)), false, false, Restore),
            ("behind another writer's batches",        Some(m(3, a)),  Some(m(3, a)), Some(m(4, b)), false, false, Restore),
            ("changelog past what we wrote",           Some(m(5, a)),  Some(m(5, a)), Some(m(6, a)), false, false, Restore),
            ("changelog older than what was published",Some(m(7, a)),  Some(m(6, a)), Some(m(5, a)), false, false, Restore),
            ("tail read found no marker",              Some(m(5, a)),  Some(m(5, a)), None,          false, false, Restore),
            ("an unfinished restore",                  Some(m(5, a)),  Some(m(5, a)), Some(m(5, a)), false, true,  Restore),
            ("an unfinished restore, empty changelog", Some(m(5, a)),  None,          None,          true,  true,  Restore),
        ];
        for (name, local, published, tail, empty, restoring, want) in cases {
            assert_eq!(
                plan(
                    local.as_ref(),
                    published.as_ref(),
                    tail.as_ref(),
                    empty,
                    restoring
                ),
                want,
                "{name}"
            );
        }
    }
}
