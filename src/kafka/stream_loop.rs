//! The loop (Kafka Streams' `StreamThread`): one round is a sequence of named
//! phases, each delegating to the part of the shell that owns the decision.
//!
//! ```text
//! round:
//!   rebalance()   Ctx's changes → TaskManager::close (after reap + settle) / assign
//!   restore()     TaskManager::install: opened partitions get their inputs assigned
//!   poll()        Inputs::poll → Partition::enqueue (or staged while on a worker)
//!   process()     TaskManager ready partitions → Pool → apply_batch (worker):
//!                 Partition::drain → Processor → write → AtLeastOnce::send_new
//!   publish()     Publisher::publish (AtLeastOnce | ExactlyOnce); its wait for
//!                 acknowledgements ends when a worker gives a partition back
//!   commit()      Inputs::commit_hint (group offsets, a progress hint)
//!   punctuate()   blocked partitions paused, readiness, gauges, state dir cleanup
//! ```
//!
//! Startup waits for the cluster ([`connect`]), retrying with a log line and
//! `strata_kafka_connect_retries_total` per attempt (Kafka Streams' `task.timeout.ms`
//! habit); only a topology an operator must fix stops it. Shutdown stops polling,
//! cancels restores, finishes the batch in hand, publishes (for a bounded time),
//! commits and leaves the group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{Producer, ThreadedProducer};

use super::clients;
use super::events;
use super::inputs::Inputs;
use super::pool::Pool;
use super::publish::{AtLeastOnce, ExactlyOnce, PCtx, Publisher, Round, Sent, Sink};
use super::rebalance::{Change, Ctx};
use super::task::{Partition, PeerStats};
use super::task_manager::TaskManager;
use super::{broker, stats, topics, KafkaError};
use crate::cluster::SharedStatus;
use crate::config::{Clock, Guarantee, Settings};
use crate::event::{parse_event, EventType, ParseContext};
use crate::store::StoreError;
use crate::telemetry::Metrics;

/// How long publishing may go on at a revocation or shutdown before the partition
/// is let go anyway (the outbox keeps what is unpublished; whoever opens the
/// partition next publishes it or applies its events again).
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// A partition handed to a worker: which of its inputs have nothing more to fetch
/// now (`caught`), the wall-clock day, the parse contexts of the moment.
struct Job {
    part: Partition,
    caught: Vec<bool>,
    today: Option<crate::day::Day>,
    contexts: Vec<ParseContext>,
}

/// A partition a worker gives back, with what it sent of its outbox
/// (at_least_once).
type Done = (Partition, Result<Option<Sent>, KafkaError>);

struct StreamLoop {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    inputs: Inputs,
    tasks: TaskManager,
    publisher: Box<dyn Publisher>,
    /// The worker threads applying partitions (out of `tasks.parts` meanwhile).
    pool: Pool<Job, Done>,
    /// `kafka.threads`, 0 resolved to the number of cores.
    threads: usize,
    contexts: Vec<ParseContext>,
    gauges_at: Instant,
}

impl StreamLoop {
    /// One round: see the module docs.
    fn round(&mut self) -> Result<(), KafkaError> {
        self.rebalance()?;
        self.restore()?;
        let polled = self.poll()?;
        // Not behind (the broker has nothing more): this round's outputs go out in
        // this round (latency); behind, applying overlaps the next poll and publish
        // (throughput). A round that ends at `batch_wait_ms` with records still on
        // the broker is behind too.
        let caught_up = polled < self.settings.raw.kafka.max_batch_events && !self.inputs.behind();
        self.process(caught_up)?;
        if caught_up {
            self.reap(true)?;
        }
        self.publish()?;
        self.commit();
        self.punctuate();
        Ok(())
    }

    /// Apply the group's changes: release revoked partitions (their work finished
    /// and published first, unless the assignment was lost), start opening
    /// assigned ones.
    fn rebalance(&mut self) -> Result<(), KafkaError> {
        for change in self.inputs.lead().context().take() {
            match change {
                Change::Revoked { partitions, lost } => {
                    // Finish the batches in hand; hand over a changelog that holds
                    // everything published.
                    self.reap(true)?;
                    if !lost {
                        self.settle(SETTLE_MAX)?;
                    }
                    for &p in &partitions {
                        self.publisher.forget(p);
                    }
                    self.tasks.close(&partitions, &mut self.inputs);
                }
                Change::Assigned(ps) => self.tasks.assign(ps),
            }
        }
        Ok(())
    }

    /// Partitions whose open or restore finished start consuming.
    fn restore(&mut self) -> Result<(), KafkaError> {
        self.tasks.install(&mut self.inputs)?;
        Ok(())
    }

    /// Take up to `max_batch_events` messages, waiting at most `batch_wait_ms` — or
    /// until nothing more is there, once something was taken.
    fn poll(&mut self) -> Result<usize, KafkaError> {
        let full = self.full();
        while self.tasks.staged.values().map(Vec::len).sum::<usize>() >= full
            && self.pool.outstanding() > 0
        {
            // Busy partitions are far behind what is fetched: wait for one back
            // (its staged messages join its queue) and keep the workers fed.
            self.reap_one()?;
            self.process(false)?;
            self.keep_alive()?;
        }
        let (wait, max) = {
            let k = &self.settings.raw.kafka;
            (k.batch_wait_ms, k.max_batch_events)
        };
        let deadline = Instant::now() + Duration::from_millis(wait);
        self.inputs.restamp();
        let mut n = 0;
        while n < max {
            // A rebalance happens inside poll: apply it before routing more messages.
            if self.inputs.lead().context().changed() {
                self.rebalance()?;
            }
            // The clock is read only when nothing came (a read per message was
            // ~2 % of this thread).
            let Some(polled) = self.inputs.poll(deadline)? else {
                // Caught up (nothing more fetched, nothing more on the broker):
                // what was polled goes now rather than at the deadline — small
                // rounds when not behind (latency), full ones when catching up.
                if Instant::now() >= deadline || (n > 0 && !self.inputs.behind()) {
                    break;
                }
                // Nothing fetched yet: keep the workers fed meanwhile.
                self.process(false)?;
                continue;
            };
            self.route(polled);
            n += 1;
            if n % 1024 == 0 {
                // A worker that finished gets its next partition now, not at the
                // end of the round.
                self.process(false)?;
            }
        }
        Ok(n)
    }

    /// Queue a polled message with its partition (or stage it while the partition
    /// is on a worker).
    fn route(&mut self, (i, p, msg): super::inputs::Polled) {
        if let Some(part) = self.tasks.parts.get_mut(&p) {
            part.enqueue(i, &self.inputs.topics[i], msg);
        } else if self.tasks.is_open(p) {
            self.tasks.staged.entry(p).or_default().push((i, msg));
        }
    }

    /// Serve the group (rebalance callbacks, session) while the loop waits for
    /// workers; a message that comes is routed as any.
    fn keep_alive(&mut self) -> Result<(), KafkaError> {
        if let Some(polled) = self.inputs.keep_alive()? {
            self.route(polled);
        }
        Ok(())
    }

    /// Hand the partitions that can apply something to the workers, most queued
    /// first, and take back those the workers finished. A worker parses, applies,
    /// writes, and then sends its partition's new outputs, dead letters and summary
    /// (not under exactly_once, where only the loop's transaction sends); the loop
    /// meanwhile goes on polling and publishing.
    ///
    /// Behind, at most two partitions per worker are out at once (one being applied,
    /// one waiting for it): the others go on queueing what is polled for them, so a
    /// partition's drain takes everything queued by the time a worker is free for it
    /// (big drains write each customer once). With `all` (caught up), every ready
    /// partition goes, so this round's outputs leave in this round.
    fn process(&mut self, all: bool) -> Result<(), KafkaError> {
        self.reap(false)?;
        let room = match all {
            true => usize::MAX,
            false => (2 * self.threads).saturating_sub(self.pool.outstanding()),
        };
        if room == 0 {
            return Ok(());
        }
        let today = self.today();
        for (p, caught) in self.ready(today).into_iter().take(room) {
            let part = self
                .tasks
                .parts
                .remove(&p)
                .expect("ready partitions are here");
            self.pool.submit(Job {
                part,
                caught,
                today,
                contexts: self.contexts.clone(),
            });
        }
        Ok(())
    }

    /// Apply every partition that can apply something, on this thread (shutdown).
    fn process_here(&mut self) -> Result<(), KafkaError> {
        self.reap(true)?;
        let today = self.today();
        for (p, caught) in self.ready(today) {
            let part = self
                .tasks
                .parts
                .get_mut(&p)
                .expect("ready partitions are here");
            let r = apply_batch(
                part,
                &self.inputs.topics,
                &self.contexts,
                &caught,
                today,
                &self.metrics,
            );
            if let Err(e) = r {
                tracing::error!(error = %e, partition = p, "Could not apply the partition's last batch; it is applied again at the next start.");
            }
        }
        Ok(())
    }

    /// Take back the partitions whose worker finished (all of them, waiting, with
    /// `wait`), with the messages polled for them meanwhile.
    fn reap(&mut self, wait: bool) -> Result<(), KafkaError> {
        let done = self.pool.collect(wait);
        self.returned(done)
    }

    /// Wait until a worker gives a partition back (none when none is out), and
    /// take back every other finished one.
    fn reap_one(&mut self) -> Result<(), KafkaError> {
        let done = self.pool.collect_one();
        self.returned(done)
    }

    fn returned(&mut self, done: Vec<Done>) -> Result<(), KafkaError> {
        for (mut part, r) in done {
            let p = part.id;
            for (i, msg) in self.tasks.staged.remove(&p).unwrap_or_default() {
                part.enqueue(i, &self.inputs.topics[i], msg);
            }
            self.tasks.parts.insert(p, part);
            match r {
                Ok(sent) => sent.into_iter().for_each(|s| self.publisher.adopt(s)),
                // A store that cannot be read or written here: restore the
                // partition from the changelog rather than stop (and crash-loop)
                // the instance.
                Err(KafkaError::Store(e)) => {
                    let why = KafkaError::Store(e);
                    self.publisher.forget(p);
                    self.tasks.reopen(p, &why, &mut self.inputs)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Today on the wall clock, when the clock is the wall clock.
    fn today(&mut self) -> Option<crate::day::Day> {
        if self.settings.clock != Clock::Wall {
            return None;
        }
        let (now, skew) = (
            chrono::Utc::now().timestamp_millis(),
            self.settings.raw.engine.max_future_skew_seconds,
        );
        for c in &mut self.contexts {
            c.set_now(now, skew);
        }
        Some(crate::day::today(self.settings.tz))
    }

    /// The partitions here that can apply something now — queued messages in
    /// event-time order as far as it is certain, or a wall-clock day to turn — most
    /// queued first, each with which of its inputs have nothing more to fetch (or
    /// waited long enough). Paused (blocked) partitions take nothing.
    fn ready(&mut self, today: Option<crate::day::Day>) -> Vec<(i32, Vec<bool>)> {
        let max_idle = Duration::from_millis(self.settings.raw.kafka.max_idle_ms);
        // A partition holding this many queued messages stops waiting for an empty
        // input (bounds memory when one input's fetching lags far behind).
        let full = self.full();
        let mut ready = Vec::new();
        for (&p, part) in &self.tasks.parts {
            if self.tasks.is_paused(p) {
                continue;
            }
            let empty: Vec<bool> = part.queues.iter().map(|q| q.is_empty()).collect();
            let c = self
                .inputs
                .caught_up(p, &empty, part.queued() >= full, max_idle);
            let day_turns = today.is_some_and(|d| part.proc.clock().is_none_or(|c| c < d));
            if day_turns || part.ready(&|i| c[i]) || part.segments_due() {
                ready.push((part.queued(), p, c));
            }
        }
        ready.sort_by_key(|r| std::cmp::Reverse(r.0));
        ready.into_iter().map(|(_, p, c)| (p, c)).collect()
    }

    /// Queued (and staged) messages at which a partition stops waiting for an empty
    /// input and polling stops until busy partitions are back.
    fn full(&self) -> usize {
        (10 * self.settings.raw.kafka.max_batch_events).max(100_000)
    }

    /// One publishing round over the partitions on the loop (exactly_once: all of
    /// them, after waiting for the workers).
    fn publish(&mut self) -> Result<(), KafkaError> {
        if self.publisher.needs_all_parts() {
            self.reap(true)?;
        }
        let group = match self.publisher.needs_all_parts() {
            true => Some(
                self.inputs
                    .lead()
                    .group_metadata()
                    .ok_or_else(|| KafkaError::Broker("no consumer group metadata".into()))?,
            ),
            false => None,
        };
        let mut parts = self.tasks.parts.values();
        let pool = &self.pool;
        self.publisher.publish(Round {
            parts: &mut parts,
            announce: &mut self.tasks.announce,
            address: &self.settings.advertised_address,
            group,
            interrupt: &|| pool.any_finished(),
        })
    }

    /// Publish everything not yet published, for at most `max` (a revocation,
    /// shutdown).
    fn settle(&mut self, max: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + max;
        loop {
            self.publish()?;
            if self.publisher.settled(None) {
                return Ok(());
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    seconds = max.as_secs(),
                    "Outputs could not all be delivered in time; the outbox keeps them and sends them at the next start."
                );
                return Ok(());
            }
            self.keep_alive()?;
        }
    }

    /// The group's committed offsets: a progress hint for lag dashboards only
    /// (exactly_once commits them inside the transaction).
    fn commit(&mut self) {
        if self.publisher.needs_all_parts() {
            return;
        }
        let offsets: Vec<(String, i32, i64)> = self
            .tasks
            .parts
            .iter()
            .flat_map(|(p, part)| {
                part.marker()
                    .offsets
                    .into_iter()
                    .map(move |(t, o)| (t, *p, o))
            })
            .collect();
        self.inputs.commit_hint(offsets);
    }

    /// What the loop does between rounds on its own clock: blocked partitions'
    /// inputs paused, readiness, gauges, state dir cleanup.
    fn punctuate(&mut self) {
        let blocked = self.publisher.blocked();
        self.tasks.pause_blocked(&blocked, &self.inputs);
        let stalled = self.publisher.stalled();
        {
            let mut st = self.status.lock().unwrap();
            st.blocked = blocked;
            st.delivery_stalled = stalled;
        }
        self.metrics.delivery_stalled.set(stalled as i64);
        self.metrics.outbox_pending.set(
            self.tasks
                .outboxes
                .values()
                .map(|o| o.unpublished() as i64)
                .sum(),
        );
        self.tasks.clean_state_dirs();
        if self.gauges_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.gauges_at = Instant::now();
        for (t, p, lag) in self.inputs.lags() {
            self.metrics
                .consumer_lag
                .with_label_values(&[t, &p.to_string()])
                .set(lag);
        }
        let outboxes = &self.tasks.outboxes;
        let sum = |name: &str| -> i64 {
            outboxes
                .values()
                .map(|o| o.store().property(name) as i64)
                .sum()
        };
        self.metrics
            .rocksdb_live_data
            .set(sum("rocksdb.estimate-live-data-size"));
        self.metrics
            .rocksdb_pending_compaction
            .set(sum("rocksdb.estimate-pending-compaction-bytes"));
        self.metrics
            .rocksdb_block_cache
            .set(outboxes.values().map(|o| o.store().memory().1 as i64).sum());
    }

    /// Stop: finish the batch in hand, write, publish, commit.
    fn shutdown(&mut self) -> Result<(), KafkaError> {
        tracing::info!("Shutting down: finishing the batch in hand.");
        self.tasks.cancel_opens();
        self.process_here()?;
        self.settle(SETTLE_MAX)?;
        self.commit();
        Ok(())
    }
}

/// The clients, once the cluster answered and the topics are as strata needs them.
struct Connected {
    lead: BaseConsumer<Ctx>,
    feeders: Vec<BaseConsumer<Ctx>>,
    producer: ThreadedProducer<PCtx>,
    partitions: usize,
}

fn try_connect(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    topics_in: &[String],
) -> Result<Connected, KafkaError> {
    let k = &settings.raw.kafka;
    let eos = k.processing_guarantee == Guarantee::ExactlyOnce;
    let cc = clients::input_consumer(settings, eos);
    let lead: BaseConsumer<Ctx> = cc
        .create_with_context(Ctx::new(&topics_in[0], metrics.clone()))
        .map_err(broker("cannot create the consumer (check [kafka.client])"))?;
    let feeders = topics_in[1..]
        .iter()
        .map(|_| {
            cc.create_with_context(Ctx::new(&topics_in[0], metrics.clone()))
                .map_err(broker("cannot create the consumer (check [kafka.client])"))
        })
        .collect::<Result<Vec<BaseConsumer<Ctx>>, _>>()?;
    let partitions = topics::check_copartitioned(&lead, topics_in)?;
    topics::ensure_topics(
        &clients::client_config(settings),
        &lead,
        &k.topics,
        partitions,
    )?;
    let producer: ThreadedProducer<PCtx> = clients::producer(settings, eos)
        .create_with_context(PCtx {
            metrics: metrics.clone(),
        })
        .map_err(broker("cannot create the producer (check [kafka.client])"))?;
    if eos {
        producer
            .init_transactions(Duration::from_secs(30))
            .map_err(broker("cannot initialise transactions (does the broker support them? use processing_guarantee = \"at_least_once\" otherwise)"))?;
    }
    Ok(Connected {
        lead,
        feeders,
        producer,
        partitions,
    })
}

/// Reach the cluster, retrying until it answers (or `shutdown`: `None`). Only a
/// topology an operator must fix (missing or mis-partitioned input topics) is an
/// error.
fn connect(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    topics_in: &[String],
    shutdown: &AtomicBool,
) -> Result<Option<Connected>, KafkaError> {
    let mut wait = Duration::from_secs(1);
    for attempt in 1.. {
        match try_connect(settings, metrics, topics_in) {
            Ok(c) => return Ok(Some(c)),
            Err(e @ KafkaError::Topology(_)) => return Err(e),
            Err(e) => {
                events::BrokerUnreachable {
                    attempt,
                    error: &e,
                    retry_in: wait,
                }
                .emit(metrics);
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if shutdown.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    unreachable!()
}

/// Run the service until `shutdown` is set (SIGTERM/SIGINT in the binary).
pub fn run(
    settings: Arc<Settings>,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) -> Result<(), KafkaError> {
    let k = &settings.raw.kafka;
    let t = &k.topics;
    let topics_in = vec![
        t.purchases.clone(),
        t.interactions.clone(),
        t.complaints.clone(),
    ];
    let Some(Connected {
        lead,
        feeders,
        producer,
        partitions,
    }) = connect(&settings, &metrics, &topics_in, &shutdown)?
    else {
        tracing::info!("Stopped before the Kafka cluster was reached.");
        return Ok(());
    };
    status.lock().unwrap().partitions = partitions as i32;
    tracing::info!(partitions, topics = ?topics_in, "Input topics are co-partitioned.");

    let peers: PeerStats = Arc::default();
    let stop_stats = Arc::new(AtomicBool::new(false));
    let stats_thread = stats::spawn(
        clients::stats_reader(&settings),
        t.stats.clone(),
        partitions,
        peers.clone(),
        status.clone(),
        stop_stats.clone(),
        metrics.clone(),
    )?;

    let contexts = EventType::ALL
        .into_iter()
        .map(|ty| {
            let mut c = ParseContext::for_files(&settings);
            if k.bind_topic_types {
                c.bound_type = Some(ty);
            }
            c
        })
        .collect();
    let producer = Arc::new(producer);
    let threads = match k.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let publisher: Box<dyn Publisher> = match k.processing_guarantee {
        Guarantee::ExactlyOnce => Box::new(ExactlyOnce::new(
            producer.clone(),
            t.clone(),
            metrics.clone(),
        )),
        Guarantee::AtLeastOnce => Box::new(AtLeastOnce::new(
            producer.clone(),
            t.clone(),
            metrics.clone(),
        )),
    };
    let pool = {
        let (topics_in, metrics, topics, sink) = (
            topics_in.clone(),
            metrics.clone(),
            t.clone(),
            publisher
                .workers_send()
                .then(|| producer.clone() as Arc<dyn Sink>),
        );
        Pool::new("strata-apply", threads, move |job: Job| {
            let Job {
                mut part,
                caught,
                today,
                contexts,
            } = job;
            let r = apply_batch(&mut part, &topics_in, &contexts, &caught, today, &metrics)
                .and_then(|()| match &sink {
                    // Under exactly_once only the loop's transaction sends.
                    None => Ok(None),
                    Some(sink) => AtLeastOnce::send_new(&part, &**sink, &topics),
                });
            (part, r)
        })
        .map_err(|e| KafkaError::Broker(format!("cannot start a thread: {e}")))?
    };
    let tasks = TaskManager::new(
        settings.clone(),
        metrics.clone(),
        status.clone(),
        topics_in.clone(),
        peers,
        threads,
    )?;
    let inputs = Inputs::new(topics_in.clone(), lead, feeders, metrics.clone());
    let mut sl = StreamLoop {
        settings: settings.clone(),
        metrics,
        status: status.clone(),
        inputs,
        tasks,
        publisher,
        pool,
        threads,
        contexts,
        gauges_at: Instant::now(),
    };
    sl.inputs
        .lead()
        .subscribe(&[topics_in[0].as_str()])
        .map_err(broker("cannot subscribe"))?;
    status.lock().unwrap().running = true;
    tracing::info!(group = %k.group_id, guarantee = ?k.processing_guarantee, "Consuming.");

    let result = (|| -> Result<(), KafkaError> {
        while !shutdown.load(Ordering::Relaxed) {
            sl.round()?;
        }
        sl.shutdown()
    })();
    status.lock().unwrap().running = false;
    sl.inputs.leave();
    sl.rebalance().ok();
    stop_stats.store(true, Ordering::Relaxed);
    stats_thread.join().ok();
    if result.is_ok() {
        tracing::info!("Left the group; stopped.");
    }
    result
}

/// One partition's share of a round: advance the wall clock, apply what the
/// partition can (`caught[i]`: input i has nothing more to fetch now), write it.
fn apply_batch(
    part: &mut Partition,
    inputs: &[String],
    contexts: &[ParseContext],
    caught: &[bool],
    today: Option<crate::day::Day>,
    metrics: &Metrics,
) -> Result<(), KafkaError> {
    if let Some(today) = today {
        part.proc.advance_to(today)?;
    }
    let before = part.proc.counters.clone();
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    tracing::trace!(
        partition = part.id,
        ?caught,
        queued = part.queued(),
        "Draining."
    );
    // Counted here and added to the metrics every 1,024 (each labelled lookup
    // hashes and locks) and at the end.
    let mut consumed = [0u64; 3];
    let parse = |i: usize, raw: &[u8]| parse_event(raw, &contexts[i]);
    let lag = metrics.event_lag.local();
    // The applied records' (Kafka timestamp, polled), observed once written.
    let mut times = Vec::new();
    let n = part.drain(inputs, &parse, &|i| caught[i], &mut |ev, msg| {
        times.extend(msg.times);
        let ty = ev.kind.event_type();
        consumed[ty as usize] += 1;
        if consumed[ty as usize] == 1024 {
            metrics.consumed(ty, std::mem::take(&mut consumed[ty as usize]));
        }
        lag.observe(((now - ev.ts_millis) as f64 / 1000.0).max(0.0));
    });
    lag.flush();
    for ty in EventType::ALL {
        metrics.consumed(ty, consumed[ty as usize]);
    }
    let n = n.map_err(store_error)?;
    if n > 0 {
        part.commit().map_err(store_error)?;
    } else if part.segments_due() {
        part.publish_segments().map_err(store_error)?;
    }
    metrics.record_counters(&before, &part.proc.counters, part.proc.model().as_ref());
    if !times.is_empty() {
        let written = chrono::Utc::now().timestamp_millis();
        let [polled_h, written_h] = metrics.record_e2e.each_ref().map(|h| h.local());
        // A producer's clock ahead of this host's counts as no latency.
        let seconds = |from: i64, to: i64| ((to - from) as f64 / 1000.0).max(0.0);
        for (t, polled) in times {
            polled_h.observe(seconds(t, polled));
            written_h.observe(seconds(t, written));
        }
    }
    if n > 0 {
        metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn store_error(e: StoreError) -> KafkaError {
    KafkaError::Store(e)
}
