//! Rebalances. The group member subscribes to the purchases topic only; its
//! consumer context hands each assignment and revocation of purchases partition p
//! to the loop as a [`Change`]. The callback does not assign: the loop opens state
//! partition p (restoring it if need be, [`super::task_manager`]) and then assigns
//! partition p of all three inputs at the offsets stored in the state (librdkafka
//! waits for that call and keeps heartbeating meanwhile). Revoked partitions are
//! released at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

use crate::telemetry::Metrics;

#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Assigned(Vec<i32>),
    /// `lost`: the group gave them away without this member (its session expired,
    /// e.g. the broker was unreachable): nothing can be handed over any more.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
    },
}

/// Consumer context: hands each assignment of the lead (purchases) topic to the
/// loop, which assigns the same partitions of every input once their state is
/// ready; releases revoked partitions of every input at once.
pub struct Ctx {
    lead: String,
    metrics: Arc<Metrics>,
    changes: Mutex<Vec<Change>>,
    /// Whether `changes` has any (read for every message polled: no lock).
    changed: AtomicBool,
}

impl Ctx {
    pub fn new(lead: &str, metrics: Arc<Metrics>) -> Ctx {
        Ctx {
            lead: lead.to_string(),
            metrics,
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
        }
    }

    fn push(&self, change: Change) {
        self.changes.lock().unwrap().push(change);
        self.changed.store(true, Ordering::Release);
    }

    /// Whether changes are waiting (no lock).
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// The changes since the last call, in order.
    pub fn take(&self) -> Vec<Change> {
        self.changed.store(false, Ordering::Release);
        std::mem::take(&mut *self.changes.lock().unwrap())
    }
}

impl ClientContext for Ctx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::events::ClientError {
            client: "consumer",
            error: &error,
            reason,
        }
        .emit(&self.metrics);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.lead)
            .map(|e| e.partition())
            .collect();
        // The other inputs are the feeders' (see `super::inputs`).
        let mut full = TopicPartitionList::new();
        for p in &parts {
            full.add_partition(&self.lead, *p);
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = ?parts, "Partitions assigned.");
                if parts.is_empty() {
                    // Nothing to open: complete the rebalance here.
                    if let Err(e) = take(c, &full) {
                        tracing::error!(error = %e, "Could not complete the rebalance.");
                    }
                } else {
                    // The loop assigns them once their state is open.
                    self.push(Change::Assigned(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = c.assignment_lost();
                tracing::info!(partitions = ?parts, lost, "Partitions revoked.");
                self.push(Change::Revoked {
                    partitions: parts,
                    lost,
                });
                // Only what the loop has assigned (a revocation can overtake an
                // assignment not yet applied; closing the partition releases those).
                if let Err(e) = release(c, &full, true) {
                    tracing::warn!(error = %e, "Could not release revoked partitions.");
                }
            }
            other => tracing::error!(error = ?other, "Rebalance failed."),
        }
    }
}

/// Whether the group's protocol is cooperative (assignments change partition by
/// partition) rather than eager (every assignment is whole).
pub fn cooperative<C: ConsumerContext>(c: &BaseConsumer<C>) -> bool {
    matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative)
}

/// Start fetching `tpl` (at its offsets): added to the assignment under the
/// cooperative protocol; under the eager one an assignment is always whole (it
/// follows a revocation of everything).
pub fn take<C: ConsumerContext>(c: &BaseConsumer<C>, tpl: &TopicPartitionList) -> KafkaResult<()> {
    if cooperative(c) {
        c.incremental_assign(tpl)
    } else {
        c.assign(tpl)
    }
}

/// Stop fetching those of `tpl` that are assigned (everything under the eager
/// protocol, which only ever revokes everything). A revocation callback must
/// answer even when none is (`completes_rebalance`); elsewhere nothing is done then.
pub fn release<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    completes_rebalance: bool,
) -> KafkaResult<()> {
    let held = c.assignment()?;
    let mut mine = TopicPartitionList::new();
    for e in tpl.elements() {
        if held.find_partition(e.topic(), e.partition()).is_some() {
            mine.add_partition(e.topic(), e.partition());
        }
    }
    if mine.count() == 0 && !completes_rebalance {
        Ok(())
    } else if cooperative(c) {
        c.incremental_unassign(&mine)
    } else {
        c.unassign()
    }
}
