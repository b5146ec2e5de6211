//! strata's integration tests: one binary, modules listed here (ripgrep's layout).
//!
//! Tests that need the `strata` binary run it as a subprocess on temp dirs; tests of
//! engine properties drive the library over the in-memory store for speed.

/// The test broker (tansu) and Kafka client helpers.
mod broker;
mod util;

/// Audiences: segment summaries, `--where`, in-force answers, export pages.
mod audience;
/// Bad lines land in the dead letter with their reason; good ones are unaffected.
mod bad_lines;
/// Config file, env overrides, unknown keys; CLI errors.
mod cli;
/// The faults beyond kill -9: broker outage, undeliverable records, crash during
/// restore, restore longer than the poll interval, mis-keyed input, corrupt state,
/// clock jumps, secrets, HTTP limits (one test each).
mod faults;
/// `strata run` against the broker: end to end, crashes, cluster failover, poison
/// messages, co-partitioning.
mod kafka;
/// librdkafka's mock cluster: `exactly_once` transactions; publish order in an outage.
mod mock_cluster;
/// HTTP endpoints, exact metrics, dashboard and alerts against live metrics,
/// Kubernetes manifests.
mod ops;
/// Replays of a generated stream and of real CDNOW transactions, compared customer by
/// customer with figures recomputed here from the raw events.
mod oracle;
/// Partitioned replay: the same outputs per customer, dump and summary as one
/// store; a deterministic output file; the layout `run` keeps.
mod partitions;
/// Predictions: the CDNOW sample fitted end to end, holdout, the `p_alive` rule
/// from the timer, merged partitions fit as one.
mod predict;
/// Order independence, idempotent re-replay, split replay (proptest + CLI).
mod properties;
/// `strata report` rendered by headless Chromium: DOM against the summary,
/// transitions against the published events, a screenshot with charts.
mod report;
/// JSON Schemas agree with the parser; outputs and dumps validate.
mod schemas;
/// Timers: churn warnings and tier changes driven by the calendar alone.
mod timers;
