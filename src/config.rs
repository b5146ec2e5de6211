//! Typed configuration: defaults, TOML file, `STRATA_<SECTION>__<KEY>` environment
//! overrides, and validation.
//!
//! Two layers, as in ripgrep's low-level/high-level args: [`Config`] is the raw,
//! serde-shaped file (every section `deny_unknown_fields`, so a typo is an error that
//! names the key), and [`Settings`] is the validated runtime view built from it once
//! (time zone parsed, clock resolved, cross-field rules checked). The engine only ever
//! sees `Settings`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A configuration problem, always naming the key and saying what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist (pass an existing file to --config, or omit it to use the defaults)")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid config key `{key}`: {message}")]
    Key { key: &'static str, message: String },
}

fn key_err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub windows: WindowsConfig,
    pub segments: SegmentsConfig,
    pub value_tiers: ValueTiersConfig,
    pub lifecycle: LifecycleConfig,
    pub churn: ChurnConfig,
    pub predict: PredictConfig,
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
}

/// `[predict]`: the BG/NBD and Gamma-Gamma models (README "Predictions").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    /// `expected_purchases` counts purchase days over this many days ahead.
    pub horizon_days: u32,
    /// `clv` is the expected spend over this many days ahead.
    pub clv_horizon_days: u32,
    /// Refit at the first recalibration of each period of this many days (a fixed
    /// calendar from Monday 1970-01-05: with 7, at the week's first recalibration).
    pub refit_every_days: u32,
    /// No fit before this many customers have a repeat purchase day.
    pub min_repeat_customers: u64,
    /// Discount `clv` at this annual rate (e.g. 0.1), in 30-day steps; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annual_discount_rate: Option<f64>,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            horizon_days: 90,
            clv_horizon_days: 365,
            refit_every_days: 7,
            min_repeat_customers: 100,
            annual_discount_rate: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// Event clock for `replay`/`demo`, wall clock for `run`.
    Auto,
    /// The as-of day is the day of the largest event time seen so far.
    Event,
    /// The as-of day is today (in `timezone`).
    Wall,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub clock: ClockMode,
    /// IANA zone that defines calendar days.
    pub timezone: String,
    pub state_dir: PathBuf,
    /// W: the RFM window, in days (SPEC §3; a year is the classic RFM horizon).
    pub window_days: u32,
    pub recalibrate_every_days: u32,
    /// Messages larger than this are bad events (`too_large`). 64 KiB: events are a few
    /// hundred bytes; anything near this is a producer bug.
    pub max_event_bytes: usize,
    /// With the wall clock, events stamped further than this in the future are bad
    /// (`future_timestamp`). One hour absorbs producer clock drift.
    pub max_future_skew_seconds: u64,
    /// Customers kept decoded in memory (write-back cache). Bounds RSS: a decoded
    /// customer of a year's history is ~1.2 KiB (1k: ~1.2 MiB). Past it, changed
    /// customers wait for their batch's write encoded in the record cache. Small
    /// on purpose: every change is also encoded into the record cache, and
    /// decoding a held record is cheaper than the memory misses of a decoded cache
    /// larger than the CPU's caches (1M-customer replay: 8k ×1.14 the CPU of 1k,
    /// 50k slower still and ~90 MiB larger; BENCHMARKS.md).
    pub customer_cache: usize,
    /// Customer records kept in memory as stored (encoded, ~260 bytes for a year's
    /// history), MiB: a customer the decoded cache let go is decoded from memory
    /// instead of read back from RocksDB. Past it, records are read from the store.
    pub record_cache_mb: usize,
    /// RocksDB block cache, MiB.
    pub block_cache_mb: usize,
    /// RocksDB memtable size per column family, MiB.
    pub write_buffer_mb: usize,
    /// Events per committed batch (one atomic RocksDB write) of a partition in
    /// `replay`. A customer changed several times in a batch is written once, so
    /// larger batches write less (200k against 50k: ~15 % less CPU for a replay of
    /// 1M customers, BENCHMARKS.md); but a batch's write goes into RocksDB's
    /// memtables whole (a 200k batch of a 1M population is ~25 MB, past a
    /// partition's 4 MB memtables): it bounds RSS beside the caches.
    pub batch_events: usize,
    /// With the event clock, an event more than this many days after the stream
    /// clock is bad (`future_timestamp`): one event stamped in the year 9999 would
    /// otherwise move the clock there (walking every day on the way) and turn every
    /// later event into a late one. A year and a day lets a stream resume after a
    /// year's pause.
    pub max_event_clock_jump_days: u32,
    /// Partitions of a replay's state (one RocksDB each under
    /// `<state_dir>/partitions/<p>`, customers placed by Kafka's murmur2 partitioner,
    /// as `run` lays its state out), applied side by side on every core. The
    /// customer cache, block cache and memtables are shared out among them.
    pub partitions: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            clock: ClockMode::Auto,
            timezone: "UTC".into(),
            state_dir: PathBuf::from("./strata-state"),
            window_days: 365,
            recalibrate_every_days: 1,
            max_event_bytes: 64 * 1024,
            max_future_skew_seconds: 3600,
            customer_cache: 1_000,
            record_cache_mb: 256,
            block_cache_mb: 64,
            write_buffer_mb: 32,
            batch_events: 200_000,
            max_event_clock_jump_days: 366,
            partitions: 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    pub interactions_days: u32,
    pub complaints_days: u32,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            interactions_days: 30,
            complaints_days: 90,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    Mean,
    Fixed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentsConfig {
    pub thresholds: ThresholdMode,
    pub recency_days: u32,
    pub frequency: u32,
    pub monetary: f64,
}

impl Default for SegmentsConfig {
    fn default() -> Self {
        Self {
            thresholds: ThresholdMode::Mean,
            recency_days: 30,
            frequency: 4,
            monetary: 1000.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMethod {
    Pareto,
    Fixed,
    /// Pareto shares over predicted `clv` instead of window monetary.
    Clv,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueTiersConfig {
    pub method: ValueMethod,
    pub high_share: f64,
    pub medium_share: f64,
    pub high_min_monetary: f64,
    pub medium_min_monetary: f64,
}

impl Default for ValueTiersConfig {
    fn default() -> Self {
        Self {
            method: ValueMethod::Pareto,
            high_share: 0.8,
            medium_share: 0.95,
            high_min_monetary: 5000.0,
            medium_min_monetary: 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    pub lapsed_after_days: u32,
    pub super_min_frequency: u32,
    pub super_min_monetary: f64,
    /// `retail` (stages new → first_purchase → repeat → super, lapsed) or
    /// `high_ticket`, where customers without a purchase are `prospect`, or `intent`
    /// within `intent_days` of an interaction whose `action` is an intent action.
    pub path: LifecyclePath,
    pub intent_actions: Vec<String>,
    pub intent_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecyclePath {
    Retail,
    HighTicket,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            lapsed_after_days: 180,
            super_min_frequency: 12,
            super_min_monetary: 0.0,
            path: LifecyclePath::Retail,
            intent_actions: ["inquiry", "quote", "trial", "add_to_cart"]
                .map(String::from)
                .to_vec(),
            intent_days: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnConfig {
    pub overdue: bool,
    pub overdue_min_days: u32,
    pub overdue_factor: f64,
    pub first_purchase_overdue_days: u32,
    pub complaints: bool,
    pub complaint_threshold: u32,
    pub spend_drop: bool,
    pub drop_window_days: u32,
    pub drop_ratio: f64,
    pub p_alive: bool,
    pub p_alive_below: f64,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        Self {
            overdue: true,
            overdue_min_days: 14,
            overdue_factor: 3.0,
            first_purchase_overdue_days: 60,
            complaints: true,
            complaint_threshold: 2,
            spend_drop: true,
            drop_window_days: 90,
            drop_ratio: 0.5,
            p_alive: true,
            p_alive_below: 0.3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub processing_guarantee: Guarantee,
    pub topics: TopicsConfig,
    /// The three input topics are bound to their event type: a message without `type`
    /// is that type, one with another `type` is `type_mismatch`. Off: `type` required.
    pub bind_topic_types: bool,
    /// Most messages taken from the consumer in one round of the loop. A
    /// partition's batch (one atomic state write) applies everything queued for
    /// it by the time a worker takes it: when behind, several rounds' worth, up to
    /// 10 × this (at least 100,000), where polling stops. Larger batches amortise
    /// the write and the producer flush and write each customer once; smaller
    /// ones lower output latency.
    pub max_batch_events: usize,
    /// How long a batch waits for more messages before it is processed, ms, while
    /// they keep coming: a batch that holds any is processed as soon as nothing
    /// more is fetched and the broker has nothing more (not behind), so this
    /// bounds a round when catching up and idles the loop when there is nothing.
    pub batch_wait_ms: u64,
    /// How long a partition waits for an input topic that has more to fetch before
    /// applying the other inputs' events without it (Kafka Streams'
    /// `max.task.idle.ms`), counted on time spent waiting inside `poll`. Longer
    /// keeps event-time order across the three topics through slow fetches; shorter
    /// keeps one stalled topic from delaying the others.
    pub max_idle_ms: u64,
    /// Worker threads that parse and apply partitions' batches and send their
    /// outputs (Kafka Streams' `num.stream.threads`; partitions share nothing),
    /// while the loop goes on polling and publishing. 0: one per CPU core.
    pub threads: usize,
    /// Used for the producer's `transactional.id` with `exactly_once`
    /// (`<group_id>-<instance_id>`); must be stable across restarts of one instance
    /// and unique in the group. Default: the `HOSTNAME` variable (a StatefulSet pod
    /// name), else the host name.
    pub instance_id: String,
    /// Compare each message's key with its event's `customer_id`: a message keyed
    /// by another customer (or not keyed) would be applied on the wrong partition,
    /// splitting the customer in two; it is dead-lettered as `key_mismatch`
    /// (`missing_key`) instead. Off for topics keyed otherwise on purpose.
    pub check_keys: bool,
    /// How long the state dir of a partition this instance no longer owns is kept
    /// (Kafka Streams' `state.cleanup.delay.ms`): reassigned within it, the
    /// partition opens without a restore; after it, the dir is deleted.
    pub state_cleanup_delay_ms: u64,
    /// A dead letter carries at most this many bytes of the original message in
    /// `raw` (cut at a character boundary, with `raw_truncated: true`), so that it
    /// fits the dead-letter topic's `max.message.bytes` (1 MB by default) even
    /// escaped as JSON. The default keeps whole every message the parser accepts by
    /// size (`engine.max_event_bytes`).
    pub dead_letter_max_raw_bytes: usize,
    /// How often each partition counts its segment summary (a scan of its
    /// customers against the thresholds in force) and publishes it on the stats
    /// topic (key `segments/<p>`) for `GET /v1/segments`: the summary is at most
    /// this much (plus one batch) behind the partition's state. 0: never.
    pub segments_interval_ms: u64,
    /// Passed through to librdkafka verbatim (`security.protocol`, `sasl.*`, ...).
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "strata".into(),
            processing_guarantee: Guarantee::AtLeastOnce,
            topics: TopicsConfig::default(),
            bind_topic_types: true,
            max_batch_events: 10_000,
            batch_wait_ms: 50,
            max_idle_ms: 5_000,
            threads: 0,
            instance_id: String::new(),
            check_keys: true,
            state_cleanup_delay_ms: 600_000,
            dead_letter_max_raw_bytes: 64 * 1024,
            segments_interval_ms: 60_000,
            client: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub purchases: String,
    pub interactions: String,
    pub complaints: String,
    pub tier_changes: String,
    pub churn_warnings: String,
    pub dead_letter: String,
    /// Compacted changelog of every state partition (created if missing).
    pub changelog: String,
    /// Compacted topic of per-partition population summaries (created if missing).
    pub stats: String,
    /// Compacted topic of every customer's current tiers, churn state and RFM
    /// figures, keyed by `customer_id` (created compacted if missing).
    pub customer_tiers: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            purchases: "purchases".into(),
            interactions: "interactions".into(),
            complaints: "complaints".into(),
            tier_changes: "tier_changes".into(),
            churn_warnings: "churn_warnings".into(),
            dead_letter: "strata_dead_letter".into(),
            changelog: "strata_changelog".into(),
            stats: "strata_stats".into(),
            customer_tiers: "strata_customer_tiers".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// When set, `/v1/*` requires `Authorization: Bearer <token>`. Never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The base URL other instances send clients to for customers of this instance's
    /// partitions (`GET /v1/customers/{id}` answers 307 with it). Default:
    /// `http://<listen>`, with the host name when `listen` binds every interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// A client must send a request's whole header within this time (slowloris);
    /// connections serve one request each.
    pub header_read_timeout_ms: u64,
    /// A request is answered within this time or gets 503 (a lookup stuck behind a
    /// busy disk must not hold its connection).
    pub request_timeout_ms: u64,
    /// Connections served at once; more are answered 503 and closed, so a flood
    /// cannot exhaust file descriptors or memory.
    pub max_connections: usize,
    /// Longer request paths get 414 (no customer id is longer than 128
    /// characters).
    pub max_path_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9898".into(),
            token: None,
            advertised_address: None,
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            max_connections: 256,
            max_path_bytes: 2_048,
        }
    }
}

impl HttpConfig {
    /// `advertised_address`, or the one derived from `listen` and the host name.
    pub fn advertised(&self) -> String {
        if let Some(a) = &self.advertised_address {
            return a.trim_end_matches('/').to_string();
        }
        match self.listen.rsplit_once(':') {
            Some(("0.0.0.0" | "[::]" | "::" | "", port)) => {
                format!(
                    "http://{}:{port}",
                    host_name().unwrap_or_else(|| "localhost".into())
                )
            }
            _ => format!("http://{}", self.listen),
        }
    }
}

/// `$HOSTNAME`, else `/etc/hostname`.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

impl Config {
    /// Defaults, then the TOML file (if given), then `STRATA_<SECTION>__<KEY>` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Config variables are exactly STRATA_<SECTION>__<KEY>; others (STRATA_LOG, the
        // log filter) are not config. librdkafka properties are dotted, which no
        // variable name can nest through: those under KAFKA__CLIENT__ are taken
        // apart below.
        fig = fig.merge(
            Env::prefixed("STRATA_")
                .filter(|k| k.as_str().contains("__") && client_property(k.as_str()).is_none())
                .split("__"),
        );
        let mut config = fig
            .extract::<Config>()
            .map_err(|e| ConfigError::Invalid(figment_message(e)))?;
        for (name, value) in std::env::vars_os() {
            let (Some(name), Ok(value)) = (name.to_str(), value.into_string()) else {
                continue;
            };
            if let Some(key) = name.strip_prefix("STRATA_").and_then(client_property) {
                config.kafka.client.insert(key, value);
            }
        }
        Ok(config)
    }

    /// The configuration as `config check` prints it: `http.token` and every
    /// `[kafka.client]` property whose name holds `password`, `secret`, `key` or
    /// `jaas` replaced by `"***"`.
    pub fn redacted(&self) -> Config {
        const HIDDEN: &str = "***";
        let mut c = self.clone();
        if c.http.token.is_some() {
            c.http.token = Some(HIDDEN.into());
        }
        for (k, v) in c.kafka.client.iter_mut() {
            let k = k.to_ascii_lowercase();
            if ["password", "secret", "key", "jaas"]
                .iter()
                .any(|s| k.contains(s))
            {
                *v = HIDDEN.into();
            }
        }
        c
    }
}

/// The librdkafka property a `STRATA_`-less variable name sets, if it is one:
/// `KAFKA__CLIENT__SASL_PASSWORD` → `sasl.password` (lower case, `_` and `.` both
/// standing for librdkafka's dots; no string property has an underscore).
fn client_property(var: &str) -> Option<String> {
    let rest = var
        .get(..15)
        .filter(|p| p.eq_ignore_ascii_case("KAFKA__CLIENT__"))
        .map(|_| &var[15..])?;
    (!rest.is_empty()).then(|| rest.to_ascii_lowercase().replace('_', "."))
}

/// figment reports several errors at once; list every one with its key and source.
fn figment_message(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(
                    |m| match &e.metadata.as_ref().and_then(|m| m.source.clone()) {
                        Some(src) => format!(" (from {} {})", m.name, src),
                        None => format!(" (from {})", m.name),
                    },
                )
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{}", e.kind, source)
            } else {
                format!("key `{}`: {}{}", key, e.kind, source)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which clock defines the as-of day once `auto` is resolved for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Event,
    Wall,
}

/// The validated runtime configuration the engine and shells use.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub tz: Tz,
    pub clock: Clock,
    pub window_days: i32,
    /// Days of day-buckets a customer keeps: the longest look-back any figure or rule
    /// needs (W, 2 × drop window, interaction and complaint windows).
    pub retention_days: i32,
    pub segment_fixed_monetary_micros: u64,
    pub high_min_micros: u64,
    pub medium_min_micros: u64,
    pub super_min_micros: u64,
    /// `http.advertised_address`, resolved once (see [`HttpConfig::advertised`]).
    pub advertised_address: String,
}

/// Amounts are kept as integer micro-units so sums are exact and order-independent.
pub const MICROS: f64 = 1_000_000.0;

/// The largest amount accepted (an event's `amount`, a configured threshold), in
/// currency units: 10¹² in micro-units stays far inside u64, so sums stay exact.
pub const MAX_AMOUNT: f64 = 1e12;

pub fn to_micros(amount: f64) -> u64 {
    (amount * MICROS).round() as u64
}

impl Settings {
    /// Validate `raw`; `default_clock` is what `auto` means for the command at hand.
    pub fn new(raw: Config, default_clock: Clock) -> Result<Settings, ConfigError> {
        let tz: Tz = raw.engine.timezone.parse().map_err(|_| {
            key_err(
                "engine.timezone",
                format!(
                    "{:?} is not an IANA time zone name (e.g. \"UTC\", \"Asia/Shanghai\")",
                    raw.engine.timezone
                ),
            )
        })?;
        let e = &raw.engine;
        let positive = |key: &'static str, v: u32| {
            if v == 0 {
                Err(key_err(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("engine.window_days", e.window_days)?;
        positive("engine.recalibrate_every_days", e.recalibrate_every_days)?;
        positive("windows.interactions_days", raw.windows.interactions_days)?;
        positive("lifecycle.intent_days", raw.lifecycle.intent_days)?;
        if raw.lifecycle.intent_actions.iter().any(|a| a.is_empty()) {
            return Err(key_err(
                "lifecycle.intent_actions",
                "must not contain an empty action",
            ));
        }
        positive("windows.complaints_days", raw.windows.complaints_days)?;
        positive("churn.drop_window_days", raw.churn.drop_window_days)?;
        positive("churn.complaint_threshold", raw.churn.complaint_threshold)?;
        if e.window_days > 36_600 {
            return Err(key_err(
                "engine.window_days",
                "must be at most 36600 (100 years)",
            ));
        }
        if e.max_event_bytes < 64 {
            return Err(key_err("engine.max_event_bytes", "must be at least 64"));
        }
        if e.customer_cache == 0 {
            return Err(key_err("engine.customer_cache", "must be at least 1"));
        }
        if e.batch_events == 0 {
            return Err(key_err("engine.batch_events", "must be at least 1"));
        }
        positive(
            "engine.max_event_clock_jump_days",
            e.max_event_clock_jump_days,
        )?;
        if !(1..=1024).contains(&e.partitions) {
            return Err(key_err(
                "engine.partitions",
                format!("must be between 1 and 1024, got {}", e.partitions),
            ));
        }
        let v = &raw.value_tiers;
        let share = |key: &'static str, x: f64| {
            if !(x > 0.0 && x <= 1.0) {
                Err(key_err(key, format!("must be in (0, 1], got {x}")))
            } else {
                Ok(())
            }
        };
        share("value_tiers.high_share", v.high_share)?;
        share("value_tiers.medium_share", v.medium_share)?;
        if v.high_share > v.medium_share {
            return Err(key_err(
                "value_tiers.high_share",
                format!(
                    "must not exceed value_tiers.medium_share ({} > {})",
                    v.high_share, v.medium_share
                ),
            ));
        }
        let money = |key: &'static str, x: f64| {
            if !(x.is_finite() && (0.0..=MAX_AMOUNT).contains(&x)) {
                Err(key_err(
                    key,
                    format!("must be a finite amount in [0, {MAX_AMOUNT:e}], got {x}"),
                ))
            } else {
                Ok(())
            }
        };
        money("value_tiers.high_min_monetary", v.high_min_monetary)?;
        money("value_tiers.medium_min_monetary", v.medium_min_monetary)?;
        money("segments.monetary", raw.segments.monetary)?;
        money(
            "lifecycle.super_min_monetary",
            raw.lifecycle.super_min_monetary,
        )?;
        if v.method == ValueMethod::Fixed && v.high_min_monetary < v.medium_min_monetary {
            return Err(key_err(
                "value_tiers.high_min_monetary",
                "must be at least value_tiers.medium_min_monetary",
            ));
        }
        let c = &raw.churn;
        if !(c.overdue_factor.is_finite() && c.overdue_factor >= 0.0) {
            return Err(key_err(
                "churn.overdue_factor",
                "must be a finite number ≥ 0",
            ));
        }
        if !(c.drop_ratio > 0.0 && c.drop_ratio <= 1.0) {
            return Err(key_err(
                "churn.drop_ratio",
                format!("must be in (0, 1], got {}", c.drop_ratio),
            ));
        }
        if !(c.p_alive_below > 0.0 && c.p_alive_below < 1.0) {
            return Err(key_err(
                "churn.p_alive_below",
                format!("must be in (0, 1), got {}", c.p_alive_below),
            ));
        }
        let pr = &raw.predict;
        positive("predict.horizon_days", pr.horizon_days)?;
        positive("predict.clv_horizon_days", pr.clv_horizon_days)?;
        positive("predict.refit_every_days", pr.refit_every_days)?;
        if pr.min_repeat_customers == 0 {
            return Err(key_err(
                "predict.min_repeat_customers",
                "must be at least 1",
            ));
        }
        if let Some(r) = pr.annual_discount_rate {
            if !(r.is_finite() && r >= 0.0) {
                return Err(key_err(
                    "predict.annual_discount_rate",
                    format!("must be a finite rate ≥ 0 (0.1 is 10 %), got {r}"),
                ));
            }
        }
        if raw.kafka.brokers.trim().is_empty() {
            return Err(key_err("kafka.brokers", "must not be empty"));
        }
        if raw.kafka.group_id.trim().is_empty() {
            return Err(key_err("kafka.group_id", "must not be empty"));
        }
        if raw.kafka.max_batch_events == 0 {
            return Err(key_err("kafka.max_batch_events", "must be at least 1"));
        }
        if raw.kafka.dead_letter_max_raw_bytes < 64 {
            return Err(key_err(
                "kafka.dead_letter_max_raw_bytes",
                "must be at least 64",
            ));
        }
        {
            let h = &raw.http;
            let at_least = |key: &'static str, v: u64, min: u64| {
                if v < min {
                    Err(key_err(key, format!("must be at least {min}")))
                } else {
                    Ok(())
                }
            };
            at_least("http.header_read_timeout_ms", h.header_read_timeout_ms, 1)?;
            at_least("http.request_timeout_ms", h.request_timeout_ms, 1)?;
            at_least("http.max_connections", h.max_connections as u64, 1)?;
            at_least("http.max_path_bytes", h.max_path_bytes as u64, 64)?;
        }
        {
            let t = &raw.kafka.topics;
            let names = [
                ("kafka.topics.purchases", &t.purchases),
                ("kafka.topics.interactions", &t.interactions),
                ("kafka.topics.complaints", &t.complaints),
                ("kafka.topics.tier_changes", &t.tier_changes),
                ("kafka.topics.churn_warnings", &t.churn_warnings),
                ("kafka.topics.dead_letter", &t.dead_letter),
                ("kafka.topics.changelog", &t.changelog),
                ("kafka.topics.stats", &t.stats),
            ];
            for (i, (key, name)) in names.iter().enumerate() {
                if name.trim().is_empty() {
                    return Err(key_err(key, "must not be empty"));
                }
                // Inputs, changelog and stats must be distinct from everything.
                if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                    if !(key.ends_with("churn_warnings") && other.ends_with("tier_changes")) {
                        return Err(key_err(
                            key,
                            format!("names the same topic {name:?} as {other}"),
                        ));
                    }
                }
            }
        }
        if raw
            .http
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(key_err("http.token", "must not be empty when set"));
        }
        if let Some(a) = &raw.http.advertised_address {
            let rest = a
                .strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"));
            if rest
                .is_none_or(|r| r.trim_matches('/').is_empty() || r.contains(char::is_whitespace))
            {
                return Err(key_err(
                    "http.advertised_address",
                    format!("{a:?} is not a base URL like \"http://strata-0.strata:9898\""),
                ));
            }
        }
        let clock = match e.clock {
            ClockMode::Auto => default_clock,
            ClockMode::Event => Clock::Event,
            ClockMode::Wall => Clock::Wall,
        };
        let window_days = e.window_days as i32;
        let retention_days = [
            window_days,
            2 * c.drop_window_days as i32,
            raw.windows.interactions_days as i32,
            raw.windows.complaints_days as i32,
            raw.lifecycle.intent_days as i32,
        ]
        .into_iter()
        .max()
        .unwrap();
        Ok(Settings {
            tz,
            clock,
            window_days,
            retention_days,
            segment_fixed_monetary_micros: to_micros(raw.segments.monetary),
            high_min_micros: to_micros(v.high_min_monetary),
            medium_min_micros: to_micros(v.medium_min_monetary),
            super_min_micros: to_micros(raw.lifecycle.super_min_monetary),
            advertised_address: raw.http.advertised(),
            raw,
        })
    }

    /// Defaults only: handy for tests and benches.
    pub fn defaults() -> Settings {
        Settings::new(Config::default(), Clock::Event).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(s.window_days, 365);
        assert_eq!(s.retention_days, 365);
        assert_eq!(s.raw.churn.drop_window_days, 90);
        assert_eq!(s.raw.value_tiers.high_share, 0.8);
        assert_eq!(s.tz, chrono_tz::UTC);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = Config::default();
        c.engine.timezone = "Mars/Olympus".into();
        let e = Settings::new(c, Clock::Event).unwrap_err().to_string();
        assert!(e.contains("engine.timezone"), "{e}");

        let mut c = Config::default();
        c.value_tiers.high_share = 0.99;
        let e = Settings::new(c, Clock::Event).unwrap_err().to_string();
        assert!(e.contains("value_tiers.high_share"), "{e}");

        let mut c = Config::default();
        c.http.advertised_address = Some("strata-0:9898".into());
        let e = Settings::new(c, Clock::Event).unwrap_err().to_string();
        assert!(e.contains("http.advertised_address"), "{e}");
    }

    #[test]
    fn advertised_address_defaults_from_listen() {
        let mut h = HttpConfig {
            listen: "127.0.0.1:9000".into(),
            ..HttpConfig::default()
        };
        assert_eq!(h.advertised(), "http://127.0.0.1:9000");
        h.listen = "0.0.0.0:9000".into();
        assert!(h.advertised().ends_with(":9000") && !h.advertised().contains("0.0.0.0"));
        h.advertised_address = Some("https://strata-1.strata.ns.svc:9898/".into());
        assert_eq!(h.advertised(), "https://strata-1.strata.ns.svc:9898");
    }

    #[test]
    fn redaction_hides_the_token_and_secret_client_properties() {
        let mut c = Config::default();
        c.http.token = Some("t0ken".into());
        for (k, v) in [
            ("sasl.password", "pw"),
            ("sasl.oauthbearer.client.secret", "s"),
            ("ssl.key.password", "kp"),
            ("sasl.jaas.config", "j"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "strata"),
        ] {
            c.kafka.client.insert(k.into(), v.into());
        }
        let r = c.redacted();
        assert_eq!(r.http.token.as_deref(), Some("***"));
        let shown: Vec<(&str, &str)> = r
            .kafka
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("sasl.jaas.config", "***"),
                ("sasl.oauthbearer.client.secret", "***"),
                ("sasl.password", "***"),
                ("sasl.username", "strata"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.key.password", "***"),
            ]
        );
        let text = toml::to_string(&r).unwrap();
        for secret in ["t0ken", "\"pw\"", "\"kp\""] {
            assert!(!text.contains(secret), "{secret} printed: {text}");
        }
        // The original is untouched.
        assert_eq!(c.http.token.as_deref(), Some("t0ken"));
    }

    #[test]
    fn client_variables_name_dotted_librdkafka_properties() {
        assert_eq!(
            client_property("KAFKA__CLIENT__SASL_PASSWORD").as_deref(),
            Some("sasl.password")
        );
        assert_eq!(
            client_property("kafka__client__sasl.mechanism").as_deref(),
            Some("sasl.mechanism")
        );
        assert_eq!(
            client_property("KAFKA__CLIENT__MESSAGE_TIMEOUT_MS").as_deref(),
            Some("message.timeout.ms")
        );
        assert_eq!(client_property("KAFKA__CLIENT__"), None);
        assert_eq!(client_property("KAFKA__BROKERS"), None);
        assert_eq!(client_property("ENGINE__WINDOW_DAYS"), None);
    }

    #[test]
    fn retention_covers_the_spend_drop_look_back() {
        let mut c = Config::default();
        c.engine.window_days = 30;
        let s = Settings::new(c, Clock::Event).unwrap();
        assert_eq!(s.retention_days, 180);
    }
}
