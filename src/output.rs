//! Output events (SPEC §5) and their deterministic ids.
//!
//! An output's `event_id` is a 128-bit xxh3 hash of (customer, cause, type, as-of
//! day): the same input stream always yields the same ids, so a consumer can drop
//! re-published duplicates, and a crash that re-publishes an outbox entry re-publishes
//! it with the same id.

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::MICROS;
use crate::customer::Figures;
use crate::day::{format_day, rfc3339_utc, Day};
use crate::policy::{Severity, Tiers, ValueTier};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    // In `ALL`'s order: the discriminant indexes per-type counts.
    TierChanged,
    ChurnWarning,
    ChurnRecovered,
}

impl OutputType {
    pub const ALL: [OutputType; 3] = [
        OutputType::TierChanged,
        OutputType::ChurnWarning,
        OutputType::ChurnRecovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputType::TierChanged => "tier_changed",
            OutputType::ChurnWarning => "churn_warning",
            OutputType::ChurnRecovered => "churn_recovered",
        }
    }
}

/// The `rfm` object of every output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rfm {
    pub recency_days: Option<i32>,
    pub frequency: u32,
    pub monetary: f64,
}

pub fn money(micros: u64) -> f64 {
    micros as f64 / MICROS
}

impl From<&Figures> for Rfm {
    fn from(f: &Figures) -> Rfm {
        Rfm {
            recency_days: f.recency_days,
            frequency: f.frequency,
            monetary: money(f.monetary_micros),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverdueTrigger {
    pub recency_days: i32,
    pub threshold_days: f64,
    pub mean_interpurchase_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComplaintsTrigger {
    pub recent_complaints: u32,
    pub recent_high_severity: u32,
    pub threshold: u32,
    pub value_tier: ValueTier,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendDropTrigger {
    pub recent_monetary: f64,
    pub previous_monetary: f64,
    pub drop_ratio: f64,
}

/// The figures that triggered each active reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Triggers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complaints: Option<ComplaintsTrigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overdue: Option<OverdueTrigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_alive: Option<PAliveTrigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_drop: Option<SpendDropTrigger>,
}

/// The `p_alive` rule's figures: P(alive) under the models in force, the
/// threshold, and the model inputs in days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PAliveTrigger {
    pub p_alive: f64,
    pub threshold: f64,
    pub x: u32,
    pub t_x: i32,
    #[serde(rename = "T")]
    pub t: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    TierChanged {
        changed: Vec<&'static str>,
        from: Option<Tiers>,
        to: Tiers,
        rfm: Rfm,
    },
    ChurnWarning {
        reasons: Vec<&'static str>,
        severity: Severity,
        rfm: Rfm,
        triggers: Triggers,
    },
    ChurnRecovered {
        reasons: Vec<&'static str>,
        rfm: Rfm,
    },
}

/// A customer's membership now, for the compacted `customer_tiers` topic (Kafka
/// Streams' KTable convention: the latest record per `customer_id` is the customer's
/// current tiers, churn state and RFM figures). Written with every publish of the
/// customer's outputs, after them, by the Kafka shell only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerTiers {
    /// The outputs' cause's id, with type `customer_tiers` (deterministic).
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub customer_id: String,
    pub ts: String,
    pub as_of: String,
    pub cause_event_id: String,
    pub schema_version: u32,
    pub tiers: Tiers,
    pub churn: ChurnState,
    pub rfm: Rfm,
}

/// The customer's churn episode: open (`at_risk`) since a `churn_warning`, with its
/// reasons and severity, until a purchase ends it (`churn_recovered`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChurnState {
    pub at_risk: bool,
    pub reasons: Vec<&'static str>,
    pub severity: Option<Severity>,
}

impl CustomerTiers {
    /// The membership after `last`, the latest output of one evaluation (it has the
    /// evaluation's cause, day and RFM figures).
    pub fn after(last: &Output, tiers: Tiers, episode: Option<&crate::customer::Episode>) -> Self {
        let rfm = match &last.body {
            Body::TierChanged { rfm, .. }
            | Body::ChurnWarning { rfm, .. }
            | Body::ChurnRecovered { rfm, .. } => *rfm,
        };
        let mut key = last.event_id.clone().into_bytes();
        key.extend_from_slice(b"\0customer_tiers");
        CustomerTiers {
            event_id: format!("{:032x}", xxh3_128(&key)),
            kind: "customer_tiers",
            customer_id: last.customer_id.clone(),
            ts: last.ts.clone(),
            as_of: last.as_of.clone(),
            cause_event_id: last.cause_event_id.clone(),
            schema_version: SCHEMA_VERSION,
            tiers,
            churn: ChurnState {
                at_risk: episode.is_some(),
                reasons: episode.map(|e| e.reasons.names()).unwrap_or_default(),
                severity: episode.map(|e| e.severity),
            },
            rfm,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: OutputType,
    pub customer_id: String,
    pub ts: String,
    pub as_of: String,
    pub cause_event_id: String,
    pub schema_version: u32,
    #[serde(flatten)]
    pub body: Body,
    /// A `churn_warning` that opens an episode (not an escalation); for the
    /// `strata_customers_at_risk` gauge, not part of the event.
    #[serde(skip)]
    pub opens_episode: bool,
}

/// Why an output was produced: an input event, a timer, or a recalibration.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    Event { event_id: &'a str, ts_millis: i64 },
    Timer,
    Recalibration,
}

impl Cause<'_> {
    pub fn id(&self) -> &str {
        match self {
            Cause::Event { event_id, .. } => event_id,
            Cause::Timer => "timer",
            Cause::Recalibration => "recalibration",
        }
    }
}

pub fn output_id(customer_id: &str, cause: &str, kind: OutputType, as_of: Day) -> String {
    let mut key = Vec::with_capacity(customer_id.len() + cause.len() + 24);
    key.extend_from_slice(customer_id.as_bytes());
    key.push(0);
    key.extend_from_slice(cause.as_bytes());
    key.push(0);
    key.extend_from_slice(kind.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(&as_of.to_be_bytes());
    // 32 lowercase hex digits, written directly (`format!` was a tenth of an
    // output's cost).
    let h = xxh3_128(&key);
    let mut hex = [0u8; 32];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(h >> ((31 - i) * 4)) as usize & 0xf];
    }
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

impl Output {
    pub fn new(
        customer_id: &str,
        cause: Cause,
        ts_millis: i64,
        as_of: Day,
        kind: OutputType,
        body: Body,
    ) -> Output {
        Output {
            event_id: output_id(customer_id, cause.id(), kind, as_of),
            kind,
            customer_id: customer_id.to_string(),
            ts: rfc3339_utc(ts_millis),
            as_of: format_day(as_of),
            cause_event_id: cause.id().to_string(),
            schema_version: SCHEMA_VERSION,
            body,
            opens_episode: false,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outputs always serialize")
    }

    /// Append the output as JSON: byte for byte what `serde_json` writes for it
    /// (the derived `Serialize`, which `to_json` and the tests use), by hand for
    /// replay's `--out` and the outbox — field names as literals, plain strings
    /// copied without serde's per-byte escape table. `serde_json` serialization was
    /// 5 % of a replay's CPU.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event_id\":");
        json_str(out, &self.event_id);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"customer_id\":");
        json_str(out, &self.customer_id);
        out.extend_from_slice(b",\"ts\":");
        json_str(out, &self.ts);
        out.extend_from_slice(b",\"as_of\":");
        json_str(out, &self.as_of);
        out.extend_from_slice(b",\"cause_event_id\":");
        json_str(out, &self.cause_event_id);
        out.extend_from_slice(b",\"schema_version\":");
        json_serde(out, &self.schema_version);
        match &self.body {
            Body::TierChanged {
                changed,
                from,
                to,
                rfm,
            } => {
                out.extend_from_slice(b",\"changed\":");
                json_names(out, changed);
                out.extend_from_slice(b",\"from\":");
                match from {
                    Some(t) => json_tiers(out, t),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"to\":");
                json_tiers(out, to);
                json_rfm(out, rfm);
            }
            Body::ChurnWarning {
                reasons,
                severity,
                rfm,
                triggers,
            } => {
                out.extend_from_slice(b",\"reasons\":");
                json_names(out, reasons);
                out.extend_from_slice(b",\"severity\":\"");
                out.extend_from_slice(severity.as_str().as_bytes());
                out.push(b'"');
                json_rfm(out, rfm);
                out.extend_from_slice(b",\"triggers\":");
                json_serde(out, triggers); // rare enough for serde
            }
            Body::ChurnRecovered { reasons, rfm } => {
                out.extend_from_slice(b",\"reasons\":");
                json_names(out, reasons);
                json_rfm(out, rfm);
            }
        }
        out.push(b'}');
    }
}

/// A value as `serde_json` writes it (numbers: its integer and float formatting).
fn json_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("numbers serialize");
}

/// A JSON string: copied between quotes when nothing in it needs escaping (what
/// `serde_json` escapes: `"`, `\\` and control characters), else `serde_json`'s.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json_serde(out, s);
    }
}

/// A list of strings (rule and dimension names).
fn json_names(out: &mut Vec<u8>, names: &[&str]) {
    out.push(b'[');
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, n);
    }
    out.push(b']');
}

fn json_tiers(out: &mut Vec<u8>, t: &Tiers) {
    out.extend_from_slice(b"{\"rfm_segment\":\"");
    out.extend_from_slice(t.rfm_segment.as_str().as_bytes());
    out.extend_from_slice(b"\",\"value_tier\":\"");
    out.extend_from_slice(t.value_tier.as_str().as_bytes());
    out.extend_from_slice(b"\",\"lifecycle\":\"");
    out.extend_from_slice(t.lifecycle.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// `,"rfm":{…}`
fn json_rfm(out: &mut Vec<u8>, r: &Rfm) {
    out.extend_from_slice(b",\"rfm\":{\"recency_days\":");
    match r.recency_days {
        Some(d) => json_serde(out, &d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"frequency\":");
    json_serde(out, &r.frequency);
    out.extend_from_slice(b",\"monetary\":");
    json_serde(out, &r.monetary);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Lifecycle, Rule, Segment};
    use proptest::prelude::*;

    fn tiers(i: usize) -> Tiers {
        Tiers {
            rfm_segment: Segment::ALL[i % 9],
            value_tier: ValueTier::ALL[i % 3],
            lifecycle: Lifecycle::ALL[i % 7],
        }
    }

    proptest! {
        /// The hand-written JSON is `serde_json`'s, byte for byte: any strings
        /// (quotes, backslashes, control characters, any Unicode), any finite
        /// figures, every body and trigger shape.
        #[test]
        fn hand_written_json_is_serde_json(
            ids in proptest::array::uniform4(any::<String>()),
            recency in proptest::option::of(any::<i32>()),
            frequency in any::<u32>(),
            money in proptest::array::uniform4(any::<f64>().prop_filter("finite", |v| v.is_finite())),
            shape in 0usize..3,
            pick in 0usize..64,
            triggers in 0u8..16,
        ) {
            let rfm = Rfm { recency_days: recency, frequency, monetary: money[0] };
            let rules: Vec<&'static str> = Rule::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| pick >> i & 1 == 1)
                .map(|(_, r)| r.as_str())
                .collect();
            let body = match shape {
                0 => Body::TierChanged {
                    changed: ["rfm_segment", "value_tier", "lifecycle"][..pick % 4].to_vec(),
                    from: (pick % 5 != 0).then(|| tiers(pick)),
                    to: tiers(pick / 3),
                    rfm,
                },
                1 => Body::ChurnWarning {
                    reasons: rules,
                    severity: [Severity::Low, Severity::Medium, Severity::High][pick % 3],
                    rfm,
                    triggers: Triggers {
                        complaints: (triggers & 1 != 0).then_some(ComplaintsTrigger {
                            recent_complaints: frequency,
                            recent_high_severity: pick as u32,
                            threshold: 3,
                            value_tier: ValueTier::ALL[pick % 3],
                        }),
                        overdue: (triggers & 2 != 0).then_some(OverdueTrigger {
                            recency_days: recency.unwrap_or(-1),
                            threshold_days: money[1],
                            mean_interpurchase_days: (pick % 2 == 0).then_some(money[2]),
                        }),
                        p_alive: (triggers & 4 != 0).then_some(PAliveTrigger {
                            p_alive: money[3],
                            threshold: 0.3,
                            x: frequency,
                            t_x: pick as i32,
                            t: recency.unwrap_or(0),
                        }),
                        spend_drop: (triggers & 8 != 0).then_some(SpendDropTrigger {
                            recent_monetary: money[1],
                            previous_monetary: money[2],
                            drop_ratio: money[3],
                        }),
                    },
                },
                _ => Body::ChurnRecovered { reasons: rules, rfm },
            };
            let o = Output {
                event_id: ids[0].clone(),
                kind: [OutputType::TierChanged, OutputType::ChurnWarning, OutputType::ChurnRecovered][shape],
                customer_id: ids[1].clone(),
                ts: ids[2].clone(),
                as_of: "2025-12-31".into(),
                cause_event_id: ids[3].clone(),
                schema_version: SCHEMA_VERSION,
                body,
                opens_episode: pick % 2 == 0,
            };
            let mut mine = b"[".to_vec();
            o.write_json(&mut mine);
            let want = serde_json::to_string(&o).unwrap();
            prop_assert_eq!(mine[0], b'[', "appended, not overwritten");
            prop_assert_eq!(std::str::from_utf8(&mine[1..]).unwrap(), want);
        }
    }

    /// The hand-written hex is `format!("{:032x}")` of the same hash.
    #[test]
    fn output_ids_are_the_hash_in_hex() {
        for (c, cause, day) in [
            ("c1", "e1", 0),
            ("顾客", "timer", -3),
            ("", "recalibration", 20_000),
        ] {
            let mut key = Vec::new();
            key.extend_from_slice(c.as_bytes());
            key.push(0);
            key.extend_from_slice(cause.as_bytes());
            key.push(0);
            key.extend_from_slice(OutputType::TierChanged.as_str().as_bytes());
            key.push(0);
            key.extend_from_slice(&(day as Day).to_be_bytes());
            assert_eq!(
                output_id(c, cause, OutputType::TierChanged, day),
                format!("{:032x}", xxh3_128(&key))
            );
        }
    }
}
