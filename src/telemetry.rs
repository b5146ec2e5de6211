//! Metrics (Prometheus) and logging (tracing) — one registry per process.
//!
//! Names are part of the contract (README "Operating strata"): base units, counters
//! end in `_total`, labels are low-cardinality (event type, reason, tier, topic,
//! partition; never a customer). Every shell feeds the same metrics from the same
//! places: [`Metrics::record_counters`] from the processor's counters,
//! [`Metrics::observe_outputs`] from the outputs as they are published (replay: as
//! they are written), [`Metrics::consumed`] / [`Metrics::rejected`] from the parser's
//! verdicts. Tier populations start from a scan of the stored published tiers
//! ([`Metrics::add_population`]) and then follow the `tier_changed` events, so they
//! always equal the published state.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use rustc_hash::FxHashMap;

use crate::customer::CustomerState;
use crate::output::{Body, Output, OutputType};
use crate::predict::model::Model;
use crate::processor::Counters;
use crate::store::codec::decode_customer;
use crate::store::{Cf, Store, StoreError};

/// Counts by `N` static labels, keyed by the labels' addresses and lengths.
#[derive(Default)]
struct LabelCounts<const N: usize, V>(FxHashMap<[Address; N], ([&'static str; N], V)>);

/// A static label's address and length.
type Address = (usize, usize);

impl<const N: usize, V: Default> LabelCounts<N, V> {
    fn entry(&mut self, labels: [&'static str; N]) -> &mut V {
        let key = labels.map(|l| (l.as_ptr() as usize, l.len()));
        &mut self
            .0
            .entry(key)
            .or_insert_with(|| (labels, V::default()))
            .1
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub events_late: IntCounter,
    pub batch_duration: Histogram,
    pub event_lag: Histogram,
    /// `strata_record_e2e_latency_seconds{at="polled"}` and `{at="written"}`.
    pub record_e2e: [Histogram; 2],
    pub consumer_lag: IntGaugeVec,
    pub outputs_published: IntCounterVec,
    pub outbox_pending: IntGauge,
    /// Also the budget's count: [`crate::kafka`]'s outboxes keep unpublished
    /// entries in memory while the instance's total stays under its bound.
    pub outbox_kept_bytes: IntGauge,
    pub tier_transitions: IntCounterVec,
    pub customers: IntGaugeVec,
    pub churn_warnings: IntCounterVec,
    pub customers_at_risk: IntGauge,
    pub timers_pending: IntGauge,
    pub timers_fired: IntCounter,
    pub recalibrations: IntCounter,
    pub partitions_assigned: IntGauge,
    pub partitions_restoring: IntGauge,
    pub restore_records: IntCounter,
    pub transactions_aborted: IntCounter,
    pub rocksdb_live_data: IntGauge,
    pub rocksdb_block_cache: IntGauge,
    pub rocksdb_pending_compaction: IntGauge,
    pub build_info: IntGaugeVec,
    pub http_connections_rejected: IntCounter,
    pub records_undeliverable: IntCounterVec,
    pub records_resent: IntCounter,
    pub partitions_blocked: IntGauge,
    pub delivery_stalled: IntGauge,
    pub kafka_connect_retries: IntCounter,
    pub kafka_errors: IntCounterVec,
    pub partitions_corrupt: IntCounter,
    pub partition_open_failures: IntCounter,
    pub state_dirs_removed: IntCounter,
    pub model_fitted: IntGauge,
    pub model_parameter: prometheus::GaugeVec,
    pub model_fit_seconds: Histogram,
    pub p_alive: Histogram,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            events_consumed: counter_vec(&r, "strata_events_consumed_total", "Valid input events read, by type.", &["type"]),
            events_rejected: counter_vec(&r, "strata_events_rejected_total", "Bad input events sent to the dead letter, by reason.", &["reason"]),
            events_duplicate: counter(&r, "strata_events_duplicate_total", "Redelivered events recognised by event_id and applied no second time."),
            events_late: counter(&r, "strata_events_late_total", "Events older than the retention horizon (lifetime figures only)."),
            batch_duration: histogram(&r, "strata_batch_duration_seconds", "Time to apply and write one partition's batch.", prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap()),
            event_lag: histogram(&r, "strata_event_lag_seconds", "Processing time minus event time of applied events.", prometheus::exponential_buckets(0.01, 4.0, 14).unwrap()),
            record_e2e: {
                let h = prometheus::HistogramVec::new(
                    HistogramOpts::new("strata_record_e2e_latency_seconds", "From a valid input record's Kafka timestamp to when strata polled it (at=\"polled\") and to when its batch was written, outputs included (at=\"written\"; they are sent from there).")
                        .buckets(prometheus::exponential_buckets(0.001, 2.0, 18).unwrap()),
                    &["at"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                ["polled", "written"].map(|at| h.with_label_values(&[at]))
            },
            consumer_lag: gauge_vec(&r, "strata_consumer_lag", "Messages behind the high watermark, per input topic partition.", &["topic", "partition"]),
            outputs_published: counter_vec(&r, "strata_outputs_published_total", "Output events published (acknowledged by the broker; written, in replay), by type.", &["type"]),
            outbox_pending: gauge(&r, "strata_outbox_pending", "Outbox entries (written batches of outputs, dead letters and changelog copies) not yet published."),
            outbox_kept_bytes: gauge(&r, "strata_outbox_kept_bytes", "Bytes of unpublished outbox entries kept in memory for the publisher (at most 512 MiB an instance; beyond, entries are read back from RocksDB)."),
            tier_transitions: counter_vec(&r, "strata_tier_transitions_total", "Tier changes published, per dimension, from and to (\"none\" for a first appearance).", &["dimension", "from", "to"]),
            customers: gauge_vec(&r, "strata_customers", "Customers per published tier, per dimension.", &["dimension", "tier"]),
            churn_warnings: counter_vec(&r, "strata_churn_warnings_total", "Churn warnings published, per reason and severity.", &["reason", "severity"]),
            customers_at_risk: gauge(&r, "strata_customers_at_risk", "Customers in an open churn episode."),
            timers_pending: gauge(&r, "strata_timers_pending", "Scheduled re-evaluations (each customer's next timer, over the partitions owned here)."),
            timers_fired: counter(&r, "strata_timers_fired_total", "Timers fired as the calendar turned."),
            recalibrations: counter(&r, "strata_recalibrations_total", "Population threshold recalibrations."),
            partitions_assigned: gauge(&r, "strata_partitions_assigned", "State partitions this instance owns and consumes."),
            partitions_restoring: gauge(&r, "strata_partitions_restoring", "State partitions being opened or restored from the changelog."),
            restore_records: counter(&r, "strata_restore_records_total", "Changelog records read while restoring partitions."),
            transactions_aborted: counter(&r, "strata_transactions_aborted_total", "Kafka transactions aborted (exactly_once); their outbox is sent again."),
            rocksdb_live_data: gauge(&r, "strata_rocksdb_live_data_bytes", "RocksDB estimated live data size, all partitions."),
            rocksdb_block_cache: gauge(&r, "strata_rocksdb_block_cache_usage_bytes", "RocksDB block cache usage, all partitions."),
            rocksdb_pending_compaction: gauge(&r, "strata_rocksdb_pending_compaction_bytes", "RocksDB estimated bytes pending compaction, all partitions."),
            build_info: gauge_vec(&r, "strata_build_info", "Always 1; the version as a label.", &["version"]),
            records_undeliverable: counter_vec(&r, "strata_records_undeliverable_total", "Records the broker refuses for good (too large, not authorised, no such topic), by destination: outputs, dead letters and summaries are dropped; a changelog record blocks its partition.", &["destination"]),
            records_resent: counter(&r, "strata_records_resent_total", "Records sent again after a failed delivery (only those that failed)."),
            partitions_blocked: gauge(&r, "strata_partitions_blocked", "Partitions taking no events because the changelog refuses one of their records."),
            delivery_stalled: gauge(&r, "strata_delivery_stalled", "1 while records have waited more than 10 s for the broker (then /readyz is 503)."),
            kafka_connect_retries: counter(&r, "strata_kafka_connect_retries_total", "Failed attempts to reach the Kafka cluster at startup (each is retried)."),
            kafka_errors: counter_vec(&r, "strata_kafka_errors_total", "Errors librdkafka reported to a client (it retries), by client.", &["client"]),
            partitions_corrupt: counter(&r, "strata_partitions_corrupt_total", "Partition stores found unreadable, moved aside and restored from the changelog."),
            partition_open_failures: counter(&r, "strata_partition_open_failures_total", "Attempts to open or restore a partition that failed (each is retried)."),
            state_dirs_removed: counter(&r, "strata_state_dirs_removed_total", "State dirs of partitions no longer owned, deleted after kafka.state_cleanup_delay_ms."),
            http_connections_rejected: counter(&r, "strata_http_connections_rejected_total", "HTTP connections answered 503 and closed: http.max_connections were being served."),
            model_fitted: gauge(&r, "strata_model_fitted", "1 once the predictive models (BG/NBD, Gamma-Gamma) are fitted and in force."),
            model_parameter: {
                let g = prometheus::GaugeVec::new(Opts::new("strata_model_parameter", "The parameters in force (alpha in days, gamma in money), by model and name."), &["model", "name"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            model_fit_seconds: histogram(&r, "strata_model_fit_seconds", "Time one fit of both models took.", prometheus::exponential_buckets(0.001, 4.0, 10).unwrap()),
            p_alive: histogram(&r, "strata_p_alive", "P(alive) of every repeat customer, observed at each refit (increase over a refit period is the population's distribution).", (1..10).map(|k| k as f64 / 10.0).collect()),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start read 0 rather than "no data" on a
        // dashboard (and rate() over them works from the first scrape).
        for ty in crate::event::EventType::ALL {
            m.events_consumed.with_label_values(&[ty.as_str()]);
        }
        for reason in [
            "too_large",
            "invalid_utf8",
            "invalid_json",
            "not_an_object",
            "unknown_type",
            "type_mismatch",
            "bad_timestamp",
            "future_timestamp",
            "negative_amount",
            "invalid_amount",
            "invalid_severity",
            "key_mismatch",
            "missing_key",
        ] {
            m.events_rejected.with_label_values(&[reason]);
        }
        for ty in OutputType::ALL {
            m.outputs_published.with_label_values(&[ty.as_str()]);
        }
        for d in [
            "tier_changes",
            "churn_warnings",
            "dead_letter",
            "changelog",
            "stats",
        ] {
            m.records_undeliverable.with_label_values(&[d]);
        }
        // NaN until the first fit (strata_model_fitted says which).
        for (model, names) in [
            ("bgnbd", &["r", "alpha", "a", "b"][..]),
            ("gamma_gamma", &["p", "q", "gamma"][..]),
        ] {
            for n in names {
                m.model_parameter
                    .with_label_values(&[model, n])
                    .set(f64::NAN);
            }
        }
        for c in [
            "consumer",
            "producer",
            "changelog_reader",
            "stats_reader",
            "admin",
        ] {
            m.kafka_errors.with_label_values(&[c]);
        }
        m
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    pub fn consumed(&self, ty: crate::event::EventType, n: u64) {
        if n > 0 {
            self.events_consumed
                .with_label_values(&[ty.as_str()])
                .inc_by(n);
        }
    }

    pub fn rejected(&self, reason: &str) {
        // Field names are in the reason (`missing_field:ts`): bounded by the schema.
        self.events_rejected.with_label_values(&[reason]).inc();
    }

    /// Add what a processor counted between two snapshots; `model` is the one in
    /// force after.
    pub fn record_counters(&self, before: &Counters, after: &Counters, model: Option<&Model>) {
        let refitted = after.model_fits > before.model_fits;
        if refitted {
            self.model_fit_seconds.observe(after.last_fit_seconds);
            for (k, (&a, &b)) in after
                .p_alive_deciles
                .iter()
                .zip(&before.p_alive_deciles)
                .enumerate()
            {
                for _ in b..a {
                    self.p_alive.observe(k as f64 / 10.0 + 0.05);
                }
            }
        }
        // The parameters change only with a fit (or when a stored model comes in
        // force at open): not set again after every batch.
        let first_seen = model.is_some() && self.model_fitted.get() == 0;
        self.model_fitted.set(model.is_some() as i64);
        if let Some(m) = model.filter(|_| refitted || first_seen) {
            let g = &self.model_parameter;
            let b = &m.bgnbd;
            for (name, v) in [("r", b.r), ("alpha", b.alpha), ("a", b.a), ("b", b.b)] {
                g.with_label_values(&["bgnbd", name]).set(v);
            }
            if let Some(gg) = &m.gamma_gamma {
                let p = &gg.params;
                for (name, v) in [("p", p.p), ("q", p.q), ("gamma", p.gamma)] {
                    g.with_label_values(&["gamma_gamma", name]).set(v);
                }
            }
        }
        self.events_duplicate
            .inc_by(after.duplicates.saturating_sub(before.duplicates));
        self.events_late
            .inc_by(after.late.saturating_sub(before.late));
        self.timers_fired
            .inc_by(after.timers_fired.saturating_sub(before.timers_fired));
        self.recalibrations
            .inc_by(after.recalibrations.saturating_sub(before.recalibrations));
    }

    /// Outputs written with the state: transitions, populations, churn. (Published
    /// counts are added by the shell: on the broker's acknowledgement in `run`, by
    /// [`Metrics::observe_written`] in replay.) Counted here first and added once
    /// per label set: a labelled metric's lookup hashes its labels and takes a lock.
    pub fn observe_outputs<'a>(&self, outputs: impl IntoIterator<Item = &'a Output>) {
        // Counted by the labels' addresses: every label is a `&'static str` from an
        // `as_str` (a string compare per map level was 1.5 % of a replay's CPU).
        // Two addresses of one text would only be two entries adding to one series.
        let mut transitions = LabelCounts::<3, u64>::default();
        let mut customers = LabelCounts::<2, i64>::default();
        let mut warnings = LabelCounts::<2, u64>::default();
        let mut at_risk = 0i64;
        for o in outputs {
            match &o.body {
                Body::TierChanged { from, to, .. } => {
                    let dims = [
                        (
                            "rfm_segment",
                            from.map(|t| t.rfm_segment.as_str()),
                            to.rfm_segment.as_str(),
                        ),
                        (
                            "value_tier",
                            from.map(|t| t.value_tier.as_str()),
                            to.value_tier.as_str(),
                        ),
                        (
                            "lifecycle",
                            from.map(|t| t.lifecycle.as_str()),
                            to.lifecycle.as_str(),
                        ),
                    ];
                    for (dim, f, t) in dims {
                        if f == Some(t) {
                            continue;
                        }
                        *transitions.entry([dim, f.unwrap_or("none"), t]) += 1;
                        if let Some(f) = f {
                            *customers.entry([dim, f]) -= 1;
                        }
                        *customers.entry([dim, t]) += 1;
                    }
                }
                Body::ChurnWarning {
                    reasons, severity, ..
                } => {
                    for r in reasons {
                        *warnings.entry([*r, severity.as_str()]) += 1;
                    }
                    if o.opens_episode {
                        at_risk += 1;
                    }
                }
                Body::ChurnRecovered { .. } => {
                    debug_assert_eq!(o.kind, OutputType::ChurnRecovered);
                    at_risk -= 1;
                }
            }
        }
        for (labels, n) in transitions.0.into_values() {
            self.tier_transitions.with_label_values(&labels).inc_by(n);
        }
        for (labels, n) in customers.0.into_values() {
            self.customers.with_label_values(&labels).add(n);
        }
        for (labels, n) in warnings.0.into_values() {
            self.churn_warnings.with_label_values(&labels).inc_by(n);
        }
        self.customers_at_risk.add(at_risk);
    }

    /// Replay and demo: outputs count as published when written.
    pub fn observe_written<'a>(&self, outputs: impl IntoIterator<Item = &'a Output> + Clone) {
        // Counted first, each labelled series looked up once per call.
        let mut by_kind = [0u64; OutputType::ALL.len()];
        for o in outputs.clone() {
            by_kind[o.kind as usize] += 1; // declared in `ALL`'s order
        }
        for (k, n) in OutputType::ALL.iter().zip(by_kind) {
            if n > 0 {
                self.outputs_published
                    .with_label_values(&[k.as_str()])
                    .inc_by(n);
            }
        }
        self.observe_outputs(outputs);
    }

    /// Add (`sign` = 1) or remove (−1) a stored population's published tiers and
    /// open episodes: when a partition is opened or released.
    pub fn add_population<S: Store>(&self, store: &S, sign: i64) -> Result<(), StoreError> {
        let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        let mut at_risk = 0i64;
        store.scan(Cf::Customers, &[], None, &mut |k, v| {
            let c: CustomerState = decode_customer(v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(k).into_owned(),
                source: e,
            })?;
            if let Some(t) = c.published {
                *counts
                    .entry(("rfm_segment", t.rfm_segment.as_str()))
                    .or_default() += 1;
                *counts
                    .entry(("value_tier", t.value_tier.as_str()))
                    .or_default() += 1;
                *counts
                    .entry(("lifecycle", t.lifecycle.as_str()))
                    .or_default() += 1;
            }
            at_risk += c.episode.is_some() as i64;
            Ok(true)
        })?;
        for ((dim, tier), n) in counts {
            self.customers.with_label_values(&[dim, tier]).add(sign * n);
        }
        self.customers_at_risk.add(sign * at_risk);
        Ok(())
    }
}

/// Logs on stderr through `tracing`: human text on a terminal, JSON with
/// `--log-format json`; the filter comes from `STRATA_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours on a terminal only: a log file (a container's, a test's) reads as
    // plain `key=value` text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
