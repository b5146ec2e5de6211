//! The three input topics as the loop sees them: one consumer each, where each
//! state partition resumes, and the idle clock the event-time merge waits on.
//!
//! The group member fetches purchases; interactions and complaints each have a
//! *feeder* consumer (same settings, never subscribed: partition p of its topic is
//! assigned and unassigned with the lead's partition p). One consumer's fetch
//! requests hold every partition, and a broker may fill a response with one topic's
//! backlog (tansu serves the topics one after another), starving the event-time
//! merge; three fetch side by side. The loop polls them round-robin without waiting
//! and waits a little on the group member (whose poll serves the rebalance
//! callbacks) when none has a message.
//!
//! Offsets may skip (transaction markers of upstream transactional producers, a
//! compacted input): the next record delivered is the next to apply. A message
//! below the next offset was applied already and is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::clients::cached_high_watermark;
use super::rebalance::{cooperative, release, take, Ctx};
use super::task::Msg;
use super::{broker, KafkaError};
use crate::telemetry::Metrics;

/// Whether a partition may apply its other inputs without waiting for input `i`:
/// the input has nothing more to fetch (its high watermark is not past the next
/// offset), or it has waited `max_idle` of consumer waiting with an empty queue,
/// or the partition holds so much (`crowded`) that it must not wait.
///
/// `waited`: how long the queue has been empty while the broker had more, on the
/// consumer-waiting clock (`None`: it is not waiting).
pub fn input_caught_up(
    next: i64,
    high_watermark: Option<i64>,
    waited: Option<Duration>,
    max_idle: Duration,
    crowded: bool,
) -> bool {
    let nothing_more = high_watermark.is_some_and(|h| next >= h);
    nothing_more || waited.is_some_and(|w| w >= max_idle || crowded)
}

/// One message taken from an input: (input index, partition, message).
pub type Polled = (usize, i32, Msg);

/// Messages polled one after another share a read of the wall clock for their
/// `polled` stamp (`strata_record_e2e_latency_seconds`), at most this many: a read
/// per message was ~2 % of the loop thread, the busiest at 1M customers. Read again
/// after a waiting poll and at each round, so a stamp is late by at most the time
/// 64 messages take to poll (well under a millisecond while catching up).
const STAMP_EVERY: u32 = 64;

pub struct Inputs {
    pub topics: Vec<String>,
    /// The group member: it consumes the lead (purchases) input.
    lead: BaseConsumer<Ctx>,
    /// One consumer per other input.
    feeders: Vec<BaseConsumer<Ctx>>,
    /// Next offset to apply per (input index, partition) of the partitions
    /// assigned here.
    next: BTreeMap<(usize, i32), i64>,
    /// When (on the `polled` clock) each (input, partition) began waiting with an
    /// empty queue for records the broker has.
    waiting_since: BTreeMap<(usize, i32), Duration>,
    /// Time spent waiting inside `poll`: the clock an input's idleness is measured
    /// on, so that the loop's own work (a restore, a long publish) never makes an
    /// input look idle while its records sit in librdkafka's queue.
    polled: Duration,
    /// Round-robin position, and how many consumers in a row had nothing.
    turn: usize,
    empty: usize,
    /// The wall clock (epoch ms) messages are stamped with at poll, and how many
    /// were stamped since it was read: see [`STAMP_EVERY`].
    now_ms: i64,
    stamped: u32,
    /// Offsets last committed to the group, to commit only what moved.
    hinted: BTreeMap<(String, i32), i64>,
    metrics: Arc<Metrics>,
}

impl Inputs {
    pub fn new(
        topics: Vec<String>,
        lead: BaseConsumer<Ctx>,
        feeders: Vec<BaseConsumer<Ctx>>,
        metrics: Arc<Metrics>,
    ) -> Inputs {
        Inputs {
            topics,
            lead,
            feeders,
            next: BTreeMap::new(),
            waiting_since: BTreeMap::new(),
            polled: Duration::ZERO,
            turn: 0,
            empty: 0,
            now_ms: 0,
            stamped: 0,
            hinted: BTreeMap::new(),
            metrics,
        }
    }

    /// The group member.
    pub fn lead(&self) -> &BaseConsumer<Ctx> {
        &self.lead
    }

    /// The consumer that fetches input `i`.
    fn consumer(&self, i: usize) -> &BaseConsumer<Ctx> {
        match i {
            0 => &self.lead,
            _ => &self.feeders[i - 1],
        }
    }

    /// Start fetching partition p of every input at `offsets` (one per input).
    pub fn assign(&mut self, p: i32, offsets: &[i64]) -> Result<(), KafkaError> {
        for (i, (t, &o)) in self.topics.iter().zip(offsets).enumerate() {
            self.next.insert((i, p), o);
            if i == 0 && !cooperative(&self.lead) {
                continue; // below: the whole assignment at once
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(t, p, Offset::Offset(o))
                .map_err(broker("offset"))?;
            match i {
                0 => take(&self.lead, &tpl),
                _ => self.feeders[i - 1].incremental_assign(&tpl),
            }
            .map_err(broker("cannot assign the input partitions"))?;
        }
        if !cooperative(&self.lead) {
            self.assign_lead_whole()?;
        }
        Ok(())
    }

    /// Under the eager protocol an assignment is always whole: assign every lead
    /// partition here, each at the next offset to apply (where it is; fetched but
    /// unpolled messages are fetched again).
    fn assign_lead_whole(&self) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (&(i, p), &o) in &self.next {
            if i == 0 {
                tpl.add_partition_offset(&self.topics[0], p, Offset::Offset(o))
                    .map_err(broker("offset"))?;
            }
        }
        take(&self.lead, &tpl).map_err(broker("cannot assign the input partitions"))
    }

    /// Stop fetching partitions `ps` of every input and forget where they were.
    pub fn unassign(&mut self, ps: &[i32]) {
        if ps.is_empty() {
            return;
        }
        for &p in ps {
            for i in 0..self.topics.len() {
                self.next.remove(&(i, p));
                self.waiting_since.remove(&(i, p));
            }
        }
        self.hinted.retain(|(_, q), _| !ps.contains(q));
        if cooperative(&self.lead) {
            // Normally the revocation callback released the lead already; not when
            // the revocation overtook an assignment the loop had not applied yet,
            // nor when the loop gives a partition up by itself.
            let mut lead = TopicPartitionList::new();
            for &p in ps {
                lead.add_partition(&self.topics[0], p);
            }
            if let Err(e) = release(&self.lead, &lead, false) {
                tracing::warn!(error = %e, partitions = ?ps, "Could not release input partitions.");
            }
        } else if let Err(e) = self.assign_lead_whole() {
            tracing::warn!(error = %e, partitions = ?ps, "Could not release input partitions.");
        }
        for (f, t) in self.feeders.iter().zip(&self.topics[1..]) {
            let mut tpl = TopicPartitionList::new();
            for &p in ps {
                tpl.add_partition(t, p);
            }
            if let Err(e) = f.incremental_unassign(&tpl) {
                tracing::warn!(error = %e, partitions = ?ps, topic = %t, "Could not release input partitions.");
            }
        }
    }

    /// The next stamp reads the wall clock again (a loop round starts: time may
    /// have passed since the last message).
    pub fn restamp(&mut self) {
        self.stamped = 0;
    }

    /// The next message of any input (round-robin, without waiting); once none has
    /// one, waits until `deadline` (at most 1 ms) on the group member. `Ok(None)`:
    /// nothing now. Messages of partitions not assigned here, or below the next
    /// offset, are dropped.
    pub fn poll(&mut self, deadline: Instant) -> Result<Option<Polled>, KafkaError> {
        let inputs = 1 + self.feeders.len();
        loop {
            let k = self.turn;
            self.turn = (self.turn + 1) % inputs;
            let waits = k == 0 && self.empty >= inputs;
            let r = if waits {
                // Only a waiting poll reads the clock (twice per message otherwise,
                // for nothing).
                let t0 = Instant::now();
                let wait = deadline.saturating_duration_since(t0);
                let r = self.lead.poll(wait.min(Duration::from_millis(1)));
                self.polled += t0.elapsed();
                self.stamped = 0;
                r
            } else {
                // The field, not `consumer()`: the message borrows it alone.
                match k {
                    0 => &self.lead,
                    _ => &self.feeders[k - 1],
                }
                .poll(Duration::ZERO)
            };
            // An error counts as nothing polled (it does not reset the count of
            // empty polls), so a consumer that reports one at every call cannot
            // keep the loop here past its deadline.
            let m = match r {
                Some(Ok(m)) => m,
                other => {
                    if let Some(Err(e)) = other {
                        super::events::ConsumerError { error: &e }.emit(&self.metrics);
                    }
                    self.empty += 1;
                    if waits {
                        return Ok(None);
                    }
                    continue;
                }
            };
            self.empty = 0;
            let Some(i) = self.topics.iter().position(|t| t == m.topic()) else {
                continue;
            };
            let p = m.partition();
            let Some(next) = self.next.get_mut(&(i, p)) else {
                tracing::trace!(partition = p, "Dropped a message of a partition not owned.");
                continue; // not ours (any more)
            };
            if m.offset() < *next {
                // Cannot happen with fetching started at the stored offset; never
                // apply a message twice if it does.
                tracing::debug!(
                    topic = m.topic(),
                    partition = p,
                    offset = m.offset(),
                    expected = *next,
                    "Dropped a message already applied."
                );
                continue;
            }
            // Offsets may skip (transaction markers, compacted input topics).
            *next = m.offset() + 1;
            if self.stamped == 0 {
                self.now_ms = chrono::Utc::now().timestamp_millis();
            }
            self.stamped = (self.stamped + 1) % STAMP_EVERY;
            let msg = Msg::new(
                m.offset(),
                m.key().map(|k| k.to_vec()),
                m.payload().unwrap_or_default().to_vec(),
            )
            .stamped(m.timestamp().to_millis(), self.now_ms);
            return Ok(Some((i, p, msg)));
        }
    }

    /// The group member's poll without taking messages for long: serves the
    /// rebalance callbacks and the group session while the loop cannot take more
    /// (see [`Inputs::poll`] for what it does with one it gets).
    pub fn keep_alive(&mut self) -> Result<Option<Polled>, KafkaError> {
        self.empty = 1 + self.feeders.len();
        self.turn = 0;
        // (A waiting poll: it reads the clock again for the next stamp.)
        self.poll(Instant::now())
    }

    /// Which inputs of partition p have nothing more to fetch now, or waited long
    /// enough ([`input_caught_up`]); `empty[i]`: whether its queue `i` is empty.
    pub fn caught_up(
        &mut self,
        p: i32,
        empty: &[bool],
        crowded: bool,
        max_idle: Duration,
    ) -> Vec<bool> {
        (0..self.topics.len())
            .map(|i| {
                let next = self.next.get(&(i, p)).copied().unwrap_or(0);
                let hw = cached_high_watermark(self.consumer(i), &self.topics[i], p);
                let waiting = empty[i] && hw.is_none_or(|h| next < h);
                let waited = if waiting {
                    let since = *self.waiting_since.entry((i, p)).or_insert(self.polled);
                    Some(self.polled - since)
                } else {
                    self.waiting_since.remove(&(i, p));
                    None
                };
                let caught = input_caught_up(next, hw, waited, max_idle, crowded);
                if waited.is_some() && caught {
                    tracing::debug!(
                        partition = p,
                        topic = %self.topics[i],
                        crowded,
                        "Input idle: applying the other inputs without waiting for it."
                    );
                }
                caught
            })
            .collect()
    }

    /// Whether the broker holds records of an input partition here that are not
    /// polled yet (librdkafka's cached high watermarks: no round trip).
    pub fn behind(&self) -> bool {
        self.next.iter().any(|(&(i, p), &next)| {
            cached_high_watermark(self.consumer(i), &self.topics[i], p).is_some_and(|h| next < h)
        })
    }

    /// Messages behind the high watermark, per (topic, partition) assigned here.
    pub fn lags(&self) -> Vec<(&str, i32, i64)> {
        self.next
            .iter()
            .filter_map(|(&(i, p), &next)| {
                let hw = cached_high_watermark(self.consumer(i), &self.topics[i], p)?;
                Some((self.topics[i].as_str(), p, (hw - next).max(0)))
            })
            .collect()
    }

    /// Stop (or resume) fetching partition p of every input: its state cannot take
    /// events now (a blocked changelog) and must not queue them in memory meanwhile.
    /// Fetching resumes at the next offset to apply.
    pub fn pause(&self, p: i32, paused: bool) {
        for (i, t) in self.topics.iter().enumerate() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(t, p);
            let c = self.consumer(i);
            let r = if paused {
                c.pause(&tpl)
            } else {
                c.resume(&tpl)
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, partition = p, topic = %t, "Could not pause or resume an input partition.");
            }
        }
    }

    /// Commit `offsets` (topic, partition, next offset) to the group, those that
    /// moved: a progress hint for lag dashboards only, committed after the work
    /// they cover is written and published.
    pub fn commit_hint(&mut self, offsets: impl IntoIterator<Item = (String, i32, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, p, o) in offsets {
            if self.hinted.insert((topic.clone(), p), o) != Some(o) {
                tpl.add_partition_offset(&topic, p, Offset::Offset(o)).ok();
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.lead.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "Offset commit (progress hint) failed.");
            }
        }
    }

    /// Leave the group (shutdown).
    pub fn leave(&self) {
        self.lead.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::input_caught_up;
    use std::time::Duration;

    #[test]
    fn an_input_is_waited_for_while_the_broker_has_more_until_it_idled() {
        let idle = Duration::from_secs(5);
        let s = Duration::from_secs;
        // Nothing more to fetch: caught up, whether waiting or not.
        assert!(input_caught_up(10, Some(10), None, idle, false));
        assert!(input_caught_up(11, Some(10), None, idle, false));
        // The broker has more and the queue is not empty (not waiting): the merge
        // orders what is queued; not caught up.
        assert!(!input_caught_up(3, Some(10), None, idle, false));
        // Waiting with an empty queue: until it waited max_idle.
        assert!(!input_caught_up(3, Some(10), Some(s(4)), idle, false));
        assert!(input_caught_up(3, Some(10), Some(s(5)), idle, false));
        // A crowded partition does not wait at all.
        assert!(input_caught_up(
            3,
            Some(10),
            Some(Duration::ZERO),
            idle,
            true
        ));
        // No high watermark known yet (nothing fetched): waited for the same way.
        assert!(!input_caught_up(0, None, Some(s(1)), idle, false));
        assert!(input_caught_up(0, None, Some(s(6)), idle, false));
        assert!(!input_caught_up(0, None, None, idle, false));
    }
}
