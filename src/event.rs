//! Input events: parse and validate one message (a Kafka value or a replay line) into a
//! typed [`Event`], or reject it with a machine-readable [`Reason`].
//!
//! Parsing borrows from the input (`serde_json` + `RawValue`), so a good event costs
//! one pass over its bytes plus one small parse per field. Rejection is data, not an
//! error: the caller writes it to the dead letter and goes on (SPEC §2).

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{to_micros, Settings, MAX_AMOUNT};
use crate::day::{day_of_millis, Day};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Purchase,
    Interaction,
    Complaint,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::Purchase,
        EventType::Interaction,
        EventType::Complaint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Purchase => "purchase",
            EventType::Interaction => "interaction",
            EventType::Complaint => "complaint",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "purchase" => Some(EventType::Purchase),
            "interaction" => Some(EventType::Interaction),
            "complaint" => Some(EventType::Complaint),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComplaintSeverity {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Amount in integer micro-units of the currency.
    Purchase {
        amount_micros: u64,
    },
    /// `intent`: its `action` is one of `lifecycle.intent_actions`.
    Interaction {
        intent: bool,
    },
    Complaint {
        severity: ComplaintSeverity,
    },
}

impl EventKind {
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::Purchase { .. } => EventType::Purchase,
            EventKind::Interaction { .. } => EventType::Interaction,
            EventKind::Complaint { .. } => EventType::Complaint,
        }
    }
}

/// A validated input event. Optional descriptive fields (`currency`, `channel`, ...)
/// are validated but not kept: no figure depends on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub customer_id: String,
    pub kind: EventKind,
    /// Event time, epoch milliseconds.
    pub ts_millis: i64,
    /// Calendar day of `ts_millis` in the configured zone.
    pub day: Day,
}

/// Why an input was rejected. `Display` gives the machine-readable reason string
/// (`missing_field:customer_id`, `negative_amount`, ...), which is also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField(&'static str),
    WrongType(&'static str),
    /// A string field outside its length rule (1–128 characters).
    InvalidLength(&'static str),
    UnknownType,
    /// `type` disagrees with the type the Kafka topic is bound to.
    TypeMismatch,
    BadTimestamp,
    FutureTimestamp,
    NegativeAmount,
    /// Not finite, or above the largest accepted amount ([`MAX_AMOUNT`]).
    InvalidAmount,
    InvalidSeverity,
    /// The Kafka message's key is not the event's `customer_id` (`kafka.check_keys`).
    KeyMismatch,
    /// The Kafka message has no key, or an empty one (`kafka.check_keys`).
    MissingKey,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TooLarge => f.write_str("too_large"),
            Reason::InvalidUtf8 => f.write_str("invalid_utf8"),
            Reason::InvalidJson => f.write_str("invalid_json"),
            Reason::NotAnObject => f.write_str("not_an_object"),
            Reason::MissingField(x) => write!(f, "missing_field:{x}"),
            Reason::WrongType(x) => write!(f, "wrong_type:{x}"),
            Reason::InvalidLength(x) => write!(f, "invalid_length:{x}"),
            Reason::UnknownType => f.write_str("unknown_type"),
            Reason::TypeMismatch => f.write_str("type_mismatch"),
            Reason::BadTimestamp => f.write_str("bad_timestamp"),
            Reason::FutureTimestamp => f.write_str("future_timestamp"),
            Reason::NegativeAmount => f.write_str("negative_amount"),
            Reason::InvalidAmount => f.write_str("invalid_amount"),
            Reason::InvalidSeverity => f.write_str("invalid_severity"),
            Reason::KeyMismatch => f.write_str("key_mismatch"),
            Reason::MissingKey => f.write_str("missing_key"),
        }
    }
}

/// A rejection: the reason plus a human sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// What the parser needs to know about where a message came from.
#[derive(Debug, Clone)]
pub struct ParseContext {
    pub tz: Tz,
    pub max_bytes: usize,
    /// Set when the source (a Kafka topic) is bound to one event type.
    pub bound_type: Option<EventType>,
    /// With the wall clock: "now" in epoch ms and the allowed skew.
    pub future_limit_millis: Option<i64>,
    /// `lifecycle.intent_actions`: interactions with one of these actions are intent.
    pub intent_actions: std::sync::Arc<[String]>,
}

impl ParseContext {
    /// Context for replay files: `type` is required, no future check (event clock).
    pub fn for_files(settings: &Settings) -> ParseContext {
        ParseContext {
            tz: settings.tz,
            max_bytes: settings.raw.engine.max_event_bytes,
            bound_type: None,
            future_limit_millis: None,
            intent_actions: settings.raw.lifecycle.intent_actions.clone().into(),
        }
    }
}

impl ParseContext {
    /// With the wall clock: events up to `now_millis` plus `skew_seconds` are
    /// accepted. The limit never moves back: a wall clock stepped backwards (NTP, a
    /// restored VM) must not make events that were acceptable a moment ago bad for
    /// good (a dead letter is not retried).
    pub fn set_now(&mut self, now_millis: i64, skew_seconds: u64) {
        let limit = now_millis.saturating_add(skew_seconds as i64 * 1000);
        self.future_limit_millis = Some(self.future_limit_millis.map_or(limit, |l| l.max(limit)));
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
    #[serde(borrow, default)]
    currency: Option<&'a RawValue>,
    #[serde(borrow, default)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    action: Option<&'a RawValue>,
    #[serde(borrow, default)]
    severity: Option<&'a RawValue>,
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
}

/// JSON `null` counts as absent.
fn present(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|r| r.get() != "null")
}

fn string_field<'a>(
    v: Option<&'a RawValue>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match present(v) {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('"') => serde_json::from_str::<Cow<'a, str>>(raw.get())
            .map(Some)
            .map_err(|e| reject(Reason::InvalidJson, format!("field {name}: {e}"))),
        Some(_) => Err(reject(
            Reason::WrongType(name),
            format!("field {name} must be a string"),
        )),
    }
}

fn id_field(v: Option<&RawValue>, name: &'static str) -> Result<String, Rejection> {
    let s = string_field(v, name)?.ok_or_else(|| {
        reject(
            Reason::MissingField(name),
            format!("field {name} is required"),
        )
    })?;
    let n = s.chars().count();
    if !(1..=128).contains(&n) {
        return Err(reject(
            Reason::InvalidLength(name),
            format!("field {name} must be 1-128 characters, got {n}"),
        ));
    }
    Ok(s.into_owned())
}

fn parse_ts(v: Option<&RawValue>) -> Result<i64, Rejection> {
    let raw =
        present(v).ok_or_else(|| reject(Reason::MissingField("ts"), "field ts is required"))?;
    let text = raw.get();
    let ms = if text.starts_with('"') {
        let s: Cow<str> = serde_json::from_str(text)
            .map_err(|e| reject(Reason::BadTimestamp, format!("ts: {e}")))?;
        // RFC 3339 proper: date and time joined by `T` (chrono would also take a space).
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(reject(
                Reason::BadTimestamp,
                format!("ts {s:?} is not RFC 3339 (YYYY-MM-DDThh:mm:ss with Z or an offset)"),
            ));
        }
        DateTime::parse_from_rfc3339(&s)
            .map_err(|e| {
                reject(
                    Reason::BadTimestamp,
                    format!("ts {s:?} is not RFC 3339 with an offset: {e}"),
                )
            })?
            .timestamp_millis()
    } else {
        // An integer, possibly written with an exponent or a zero fraction (JSON
        // Schema's notion of "integer", e.g. 1.7e12).
        match text.parse::<i64>() {
            Ok(v) => v,
            Err(_) => match text.parse::<f64>() {
                Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => x as i64,
                _ => {
                    return Err(reject(
                        Reason::BadTimestamp,
                        format!(
                            "ts {text} must be an RFC 3339 string or integer epoch milliseconds"
                        ),
                    ))
                }
            },
        }
    };
    if DateTime::from_timestamp_millis(ms).is_none() {
        return Err(reject(
            Reason::BadTimestamp,
            format!("ts {ms} is out of range"),
        ));
    }
    Ok(ms)
}

fn parse_amount(v: Option<&RawValue>, max: f64) -> Result<u64, Rejection> {
    let raw = present(v)
        .ok_or_else(|| reject(Reason::MissingField("amount"), "purchase needs an amount"))?;
    let text = raw.get();
    let first = text.as_bytes()[0];
    if !(first == b'-' || first.is_ascii_digit()) {
        return Err(reject(
            Reason::WrongType("amount"),
            "amount must be a number",
        ));
    }
    let x: f64 = text.parse().map_err(|_| {
        reject(
            Reason::InvalidAmount,
            format!("amount {text} is not a finite number"),
        )
    })?;
    if !x.is_finite() {
        return Err(reject(
            Reason::InvalidAmount,
            format!("amount {text} is not finite"),
        ));
    }
    if x < 0.0 {
        return Err(reject(
            Reason::NegativeAmount,
            format!("amount {text} is negative"),
        ));
    }
    if x > max {
        return Err(reject(
            Reason::InvalidAmount,
            format!("amount {text} exceeds the largest accepted amount {max:e}"),
        ));
    }
    Ok(to_micros(x))
}

/// Parse and validate one message.
pub fn parse_event(bytes: &[u8], ctx: &ParseContext) -> Result<Event, Rejection> {
    if bytes.len() > ctx.max_bytes {
        return Err(reject(
            Reason::TooLarge,
            format!(
                "{} bytes exceeds the limit of {} bytes",
                bytes.len(),
                ctx.max_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| reject(Reason::InvalidUtf8, format!("not UTF-8: {e}")))?;
    // Serde would also accept a JSON array as a struct (fields by position): insist on
    // an object first, and tell "valid JSON but not an object" apart from broken JSON.
    if !text.trim_start().starts_with('{') {
        let reason = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            Reason::NotAnObject
        } else {
            Reason::InvalidJson
        };
        return Err(reject(reason, "an event must be a JSON object"));
    }
    let raw: Raw =
        serde_json::from_str(text).map_err(|e| reject(Reason::InvalidJson, e.to_string()))?;
    let event_id = id_field(raw.event_id, "event_id")?;
    let customer_id = id_field(raw.customer_id, "customer_id")?;
    let ty = match string_field(raw.kind, "type")? {
        Some(s) => {
            let t = EventType::parse(&s).ok_or_else(|| {
                reject(
                    Reason::UnknownType,
                    format!("type {s:?} is not purchase, interaction or complaint"),
                )
            })?;
            if let Some(bound) = ctx.bound_type {
                if bound != t {
                    return Err(reject(
                        Reason::TypeMismatch,
                        format!("type {s:?} on a topic bound to {}", bound.as_str()),
                    ));
                }
            }
            t
        }
        None => ctx
            .bound_type
            .ok_or_else(|| reject(Reason::MissingField("type"), "field type is required"))?,
    };
    let ts_millis = parse_ts(raw.ts)?;
    if let Some(limit) = ctx.future_limit_millis {
        if ts_millis > limit {
            return Err(reject(
                Reason::FutureTimestamp,
                format!(
                    "ts is {} s past the allowed clock skew",
                    (ts_millis - limit) / 1000
                ),
            ));
        }
    }
    let kind = match ty {
        EventType::Purchase => {
            let amount_micros = parse_amount(raw.amount, MAX_AMOUNT)?;
            string_field(raw.currency, "currency")?;
            string_field(raw.order_id, "order_id")?;
            EventKind::Purchase { amount_micros }
        }
        EventType::Interaction => {
            string_field(raw.channel, "channel")?;
            let action = string_field(raw.action, "action")?;
            EventKind::Interaction {
                intent: action.is_some_and(|a| ctx.intent_actions.iter().any(|i| *i == a)),
            }
        }
        EventType::Complaint => {
            let severity = match string_field(raw.severity, "severity")?.as_deref() {
                None | Some("medium") => ComplaintSeverity::Medium,
                Some("low") => ComplaintSeverity::Low,
                Some("high") => ComplaintSeverity::High,
                Some(other) => {
                    return Err(reject(
                        Reason::InvalidSeverity,
                        format!("severity {other:?} is not low, medium or high"),
                    ))
                }
            };
            string_field(raw.category, "category")?;
            EventKind::Complaint { severity }
        }
    };
    let day = day_of_millis(ts_millis, ctx.tz)
        .ok_or_else(|| reject(Reason::BadTimestamp, "ts is out of range"))?;
    Ok(Event {
        event_id,
        customer_id,
        kind,
        ts_millis,
        day,
    })
}

/// A Kafka message must be keyed by its event's `customer_id` (SPEC §2): the key
/// chose the partition, and the partition owns the customer's state. One keyed
/// otherwise would be applied on another partition than the customer's other
/// events, splitting the customer in two.
pub fn check_key(key: Option<&[u8]>, ev: &Event) -> Result<(), Rejection> {
    match key {
        None | Some([]) => Err(reject(
            Reason::MissingKey,
            "the message has no key: key messages by customer_id",
        )),
        Some(k) if k != ev.customer_id.as_bytes() => Err(reject(
            Reason::KeyMismatch,
            format!(
                "the message key {:?} is not the customer_id {:?}: key messages by customer_id",
                String::from_utf8_lossy(&k[..k.len().min(160)]),
                ev.customer_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// With the event clock, an event more than `max_jump_days` after the stream clock
/// `clock` is a `future_timestamp`: it would move the clock there for good.
pub fn check_clock_jump(
    clock: Option<Day>,
    ev: &Event,
    max_jump_days: u32,
) -> Result<(), Rejection> {
    match clock {
        Some(c) if ev.day as i64 - c as i64 > max_jump_days as i64 => Err(reject(
            Reason::FutureTimestamp,
            format!(
                "ts is {} days after the stream clock {} (engine.max_event_clock_jump_days = {max_jump_days})",
                ev.day as i64 - c as i64,
                crate::day::format_day(c)
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_must_be_keyed_by_their_customer() {
        let ev = parse_event(
            br#"{"event_id":"e","customer_id":"B","type":"interaction","ts":0}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(check_key(Some(b"B"), &ev), Ok(()));
        assert_eq!(
            check_key(Some(b"A"), &ev).unwrap_err().reason,
            Reason::KeyMismatch
        );
        assert_eq!(
            check_key(Some(b"b"), &ev).unwrap_err().reason,
            Reason::KeyMismatch
        );
        assert_eq!(check_key(None, &ev).unwrap_err().reason, Reason::MissingKey);
        assert_eq!(
            check_key(Some(b""), &ev).unwrap_err().reason,
            Reason::MissingKey
        );
        assert_eq!(Reason::KeyMismatch.to_string(), "key_mismatch");
        assert_eq!(Reason::MissingKey.to_string(), "missing_key");
    }

    #[test]
    fn the_event_clock_cannot_jump_further_than_configured() {
        let at = |ts: &str| {
            parse_event(
                format!(r#"{{"event_id":"e","customer_id":"c","type":"interaction","ts":"{ts}"}}"#)
                    .as_bytes(),
                &ctx(),
            )
            .unwrap()
        };
        let clock = Some(crate::day::parse_day("2026-01-01").unwrap());
        // Up to the limit (inclusive), and anything without a clock, is accepted.
        assert!(check_clock_jump(clock, &at("2027-01-02T23:00:00Z"), 366).is_ok());
        assert!(check_clock_jump(None, &at("9999-12-31T00:00:00Z"), 366).is_ok());
        // The past is never a jump.
        assert!(check_clock_jump(clock, &at("1990-01-01T00:00:00Z"), 366).is_ok());
        let r = check_clock_jump(clock, &at("2027-01-03T00:00:00Z"), 366).unwrap_err();
        assert_eq!(r.reason, Reason::FutureTimestamp);
        assert!(r.detail.contains("367 days"), "{}", r.detail);
        let far = check_clock_jump(clock, &at("9999-12-31T00:00:00Z"), 366).unwrap_err();
        assert_eq!(far.reason, Reason::FutureTimestamp);
    }

    fn ctx() -> ParseContext {
        ParseContext {
            tz: chrono_tz::UTC,
            max_bytes: 1024,
            bound_type: None,
            future_limit_millis: None,
            intent_actions: vec!["quote".to_string()].into(),
        }
    }

    fn reason(line: &str) -> String {
        parse_event(line.as_bytes(), &ctx())
            .unwrap_err()
            .reason
            .to_string()
    }

    #[test]
    fn parses_a_purchase_with_offset_and_epoch_millis() {
        let a = parse_event(
            br#"{"event_id":"e1","customer_id":"c1","type":"purchase","ts":"2026-11-20T18:00:00+08:00","amount":19.99,"extra":[1]}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            a.kind,
            EventKind::Purchase {
                amount_micros: 19_990_000
            }
        );
        let b = parse_event(
            br#"{"event_id":"e1","customer_id":"c1","type":"purchase","ts":1795168800000,"amount":0}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(a.ts_millis, b.ts_millis);
        assert_eq!(a.day, b.day);
    }

    #[test]
    fn every_violation_has_its_reason() {
        assert_eq!(reason("{"), "invalid_json");
        assert_eq!(reason("[1,2]"), "not_an_object");
        assert_eq!(
            reason(r#"{"customer_id":"c","type":"interaction","ts":0}"#),
            "missing_field:event_id"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","type":"interaction","ts":0}"#),
            "missing_field:customer_id"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"","type":"interaction","ts":0}"#),
            "invalid_length:customer_id"
        );
        assert_eq!(
            reason(r#"{"event_id":7,"customer_id":"c","type":"interaction","ts":0}"#),
            "wrong_type:event_id"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","ts":0}"#),
            "missing_field:type"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"refund","ts":0}"#),
            "unknown_type"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"interaction"}"#),
            "missing_field:ts"
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":"2026-11-20 10:00"}"#
            ),
            "bad_timestamp"
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":"2026-11-20T10:00:00"}"#
            ),
            "bad_timestamp"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":1.5}"#),
            "bad_timestamp"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0}"#),
            "missing_field:amount"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":"5"}"#),
            "wrong_type:amount"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":-1}"#),
            "negative_amount"
        );
        assert_eq!(
            reason(r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":1e400}"#),
            "invalid_amount"
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"c","type":"complaint","ts":0,"severity":"urgent"}"#
            ),
            "invalid_severity"
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":1,"currency":5}"#
            ),
            "wrong_type:currency"
        );
        let big = format!(
            r#"{{"event_id":"e","customer_id":"c","type":"interaction","ts":0,"pad":"{}"}}"#,
            "x".repeat(2000)
        );
        assert_eq!(reason(&big), "too_large");
        assert_eq!(
            parse_event(b"{\"event_id\":\"\xff\"}", &ctx())
                .unwrap_err()
                .reason
                .to_string(),
            "invalid_utf8"
        );
    }

    #[test]
    fn bound_topics_need_no_type_but_must_agree() {
        let mut c = ctx();
        c.bound_type = Some(EventType::Interaction);
        assert!(parse_event(br#"{"event_id":"e","customer_id":"c","ts":0}"#, &c).is_ok());
        let r = parse_event(
            br#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":1}"#,
            &c,
        );
        assert_eq!(r.unwrap_err().reason, Reason::TypeMismatch);
    }

    #[test]
    fn future_events_are_rejected_with_the_wall_clock() {
        let mut c = ctx();
        c.future_limit_millis = Some(1_000);
        let r = parse_event(
            br#"{"event_id":"e","customer_id":"c","type":"interaction","ts":5000}"#,
            &c,
        );
        assert_eq!(r.unwrap_err().reason, Reason::FutureTimestamp);
    }

    #[test]
    fn a_wall_clock_stepped_back_does_not_reject_what_it_accepted() {
        let mut c = ctx();
        let ev = br#"{"event_id":"e","customer_id":"c","type":"interaction","ts":10000000}"#;
        c.set_now(9_000_000, 3600); // limit 12,600,000
        assert!(parse_event(ev, &c).is_ok());
        c.set_now(1_000_000, 3600); // stepped back by 8,000 s: the limit stays
        assert!(parse_event(ev, &c).is_ok());
        assert_eq!(c.future_limit_millis, Some(12_600_000));
        c.set_now(20_000_000, 0);
        assert_eq!(c.future_limit_millis, Some(20_000_000));
    }

    #[test]
    fn complaint_severity_defaults_to_medium() {
        let e = parse_event(
            br#"{"event_id":"e","customer_id":"c","type":"complaint","ts":0}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            e.kind,
            EventKind::Complaint {
                severity: ComplaintSeverity::Medium
            }
        );
    }
}
