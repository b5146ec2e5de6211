//! What the whole process knows of the cluster, shared by the Kafka shell, the HTTP
//! endpoints, the demo and the CLI: which state partitions this instance owns and
//! their stores ([`Status`]), where a customer lives ([`partition_of`], Kafka's
//! default partitioner), who owns each partition (announced on the stats topic), and
//! where a partition's state is kept on disk ([`partition_dir`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::store::rocks::RocksStore;

/// What the HTTP endpoints see of the service.
#[derive(Default)]
pub struct Status {
    /// Consuming: the group assigned partitions (or none) and startup is done.
    pub running: bool,
    pub assigned: BTreeSet<i32>,
    pub restoring: BTreeSet<i32>,
    /// Stores of the assigned partitions, for `GET /v1/customers/{id}`.
    pub stores: BTreeMap<i32, Arc<RocksStore>>,
    /// The input topics' partition count (0 until startup checked them).
    pub partitions: i32,
    /// Each partition's owner as last announced on the stats topic: its advertised
    /// HTTP address (`http.advertised_address`).
    pub owners: BTreeMap<i32, String>,
    /// Each partition's segment summary as last published on the stats topic
    /// (`kafka.segments_interval_ms`), for `GET /v1/segments`.
    pub segments: BTreeMap<i32, crate::audience::PartitionSummary>,
    /// Partitions taking no events: the changelog refuses one of their records.
    pub blocked: BTreeSet<i32>,
    /// Records have waited more than 10 s for the broker (an outage).
    pub delivery_stalled: bool,
    /// The cluster did not answer the last metadata probe (every 5 s).
    pub broker_unreachable: bool,
}

impl Status {
    /// `GET /readyz`: consuming, no partition being opened or restored or blocked,
    /// the cluster answering and outputs reaching it.
    pub fn ready(&self) -> bool {
        self.running
            && self.restoring.is_empty()
            && self.blocked.is_empty()
            && !self.delivery_stalled
            && !self.broker_unreachable
    }
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// The partition Kafka's default partitioner (Java clients; librdkafka's
/// `murmur2_random`, which `gen --topic` uses) gives a keyed record:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// The stats-topic key under which partition p's owner announces itself.
pub fn owner_key(p: i32) -> String {
    format!("owner/{p}")
}

/// The state dir of partition p.
pub fn partition_dir(state_dir: &Path, p: i32) -> PathBuf {
    state_dir.join("partitions").join(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::{partition_of, Status};

    #[test]
    fn ready_only_when_consuming_restored_unblocked_and_delivering() {
        let ready = |f: &dyn Fn(&mut Status)| {
            let mut s = Status {
                running: true,
                ..Status::default()
            };
            f(&mut s);
            s.ready()
        };
        assert!(ready(&|_| {}));
        assert!(!ready(&|s| s.running = false), "starting up or stopping");
        assert!(!ready(&|s| {
            s.restoring.insert(3);
        }));
        assert!(!ready(&|s| {
            s.blocked.insert(1);
        }));
        assert!(
            !ready(&|s| s.delivery_stalled = true),
            "outputs wait for the broker"
        );
        assert!(
            !ready(&|s| s.broker_unreachable = true),
            "the broker is away"
        );
        assert!(ready(&|s| {
            s.assigned.insert(1);
        }));
    }

    /// Our partitioner agrees with librdkafka's murmur2 (the one producers use) on
    /// keys of every length class and on customer-id-like keys.
    #[test]
    fn partition_of_matches_librdkafka_murmur2() {
        let mut keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("C{i:06}").into_bytes()).collect();
        keys.extend((0..64).map(|n| (0..n).map(|i| (i * 37 + n) as u8).collect()));
        keys.push("客户-上海-0042".as_bytes().to_vec());
        for key in &keys {
            for n in [1, 3, 8, 24, 1000] {
                // SAFETY: the murmur2 partitioner reads only `key`; the topic and the
                // opaques are unused by it.
                let theirs = unsafe {
                    rdkafka::bindings::rd_kafka_msg_partitioner_murmur2(
                        std::ptr::null(),
                        key.as_ptr().cast(),
                        key.len(),
                        n,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(partition_of(key, n), theirs, "key {key:?}, {n} partitions");
            }
        }
    }
}
