//! Input events: parse and validate one message (a Kafka value or a replay line) into a
//! typed [`Event`], or reject it with a machine-readable [`Reason`].
//!
//! Parsing borrows from the input, so a good event costs one pass over its bytes plus
//! one small parse per field: a flat object without escapes (nearly every event) is
//! scanned by hand ([`scan`]); anything else goes through `serde_json` + `RawValue`,
//! which also words what is wrong with bad JSON. Rejection is data, not an error:
//! the caller writes it to the dead letter and goes on (SPEC §2).

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

/// The fields of an event object, each as its JSON text (`"c1"`, `19.99`, `null`):
/// from [`scan`], or from `serde_json` (its `Deserialize`) when the scan declines.
#[derive(Default)]
struct Fields<'a> {
    event_id: Option<&'a str>,
    customer_id: Option<&'a str>,
    kind: Option<&'a str>,
    ts: Option<&'a str>,
    amount: Option<&'a str>,
    currency: Option<&'a str>,
    order_id: Option<&'a str>,
    channel: Option<&'a str>,
    action: Option<&'a str>,
    severity: Option<&'a str>,
    category: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// The field named `key`, with its name; `None`: not one we read.
    fn slot(&mut self, key: &str) -> Option<(&'static str, &mut Option<&'a str>)> {
        Some(match key {
            "event_id" => ("event_id", &mut self.event_id),
            "customer_id" => ("customer_id", &mut self.customer_id),
            "type" => ("type", &mut self.kind),
            "ts" => ("ts", &mut self.ts),
            "amount" => ("amount", &mut self.amount),
            "currency" => ("currency", &mut self.currency),
            "order_id" => ("order_id", &mut self.order_id),
            "channel" => ("channel", &mut self.channel),
            "action" => ("action", &mut self.action),
            "severity" => ("severity", &mut self.severity),
            "category" => ("category", &mut self.category),
            _ => return None,
        })
    }
}

/// What a derived `Deserialize` of the fields as `Option<&RawValue>` would do: each
/// field's value borrowed as its JSON text, other keys skipped, a field given twice
/// refused (`duplicate field`).
impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Fields<'de>, M::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let Some((name, slot)) = f.slot(&key) else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value::<&'de RawValue>()?.get());
                }
                Ok(f)
            }
        }
        d.deserialize_map(Object)
    }
}

/// JSON's whitespace from `i` on; the index after it.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string without escapes or control characters at `i`: its contents' range and
/// the index after its closing quote.
fn scan_string(b: &[u8], i: usize) -> Option<(std::ops::Range<usize>, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let len = b[start..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    let end = start + len;
    (b[end] == b'"').then_some((start..end, end + 1))
}

/// Digits from `i` on (`at_least_one`: else `None`); the index after them.
fn scan_digits(b: &[u8], i: usize, at_least_one: bool) -> Option<usize> {
    let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    (n > 0 || !at_least_one).then_some(i + n)
}

/// A JSON number, string or literal at `i` (not an array or object); the index
/// after it.
fn scan_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => scan_string(b, i).map(|(_, end)| end),
        b'-' | b'0'..=b'9' => {
            let mut j = i + usize::from(b[i] == b'-');
            j = match b.get(j)? {
                b'0' => j + 1,
                b'1'..=b'9' => scan_digits(b, j, true)?,
                _ => return None,
            };
            if b.get(j) == Some(&b'.') {
                j = scan_digits(b, j + 1, true)?;
            }
            if let Some(b'e' | b'E') = b.get(j) {
                j += 1;
                if let Some(b'+' | b'-') = b.get(j) {
                    j += 1;
                }
                j = scan_digits(b, j, true)?;
            }
            Some(j)
        }
        c => {
            let lit: &[u8] = match c {
                b't' => b"true",
                b'f' => b"false",
                b'n' => b"null",
                _ => return None,
            };
            b[i..].starts_with(lit).then_some(i + lit.len())
        }
    }
}

/// The fast way through an event: a flat object whose keys and string values have
/// no escapes, as events nearly always are, in one pass with no allocation.
/// `None` for anything else — escapes, nested values, a field given twice,
/// malformed JSON — which `serde_json` then parses (and names what is wrong):
/// what this accepts, serde accepts the same way.
fn scan(text: &str) -> Option<Fields<'_>> {
    let b = text.as_bytes();
    let mut f = Fields::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key, after) = scan_string(b, i)?;
            i = skip_ws(b, after);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let end = scan_value(b, i)?;
            if let Some((_, slot)) = f.slot(&text[key]) {
                if slot.is_some() {
                    return None; // serde: "duplicate field"
                }
                *slot = Some(&text[i..end]);
            }
            i = skip_ws(b, end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(f)
}

/// JSON `null` counts as absent.
fn present(v: Option<&str>) -> Option<&str> {
    v.filter(|r| *r != "null")
}

/// The contents of a JSON string (`text` is one, quotes included): borrowed when
/// it has no escapes.
fn json_string(text: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    if !text.contains('\\') {
        // A valid JSON string without escapes is its contents between quotes.
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<Cow<str>>(text)
}

fn string_field<'a>(
    v: Option<&'a str>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match present(v) {
        None => Ok(None),
        Some(raw) if raw.starts_with('"') => json_string(raw)
            .map(Some)
            .map_err(|e| reject(Reason::InvalidJson, format!("field {name}: {e}"))),
        Some(_) => Err(reject(
            Reason::WrongType(name),
            format!("field {name} must be a string"),
        )),
    }
}

fn id_field(v: Option<&str>, name: &'static str) -> Result<String, Rejection> {
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

fn parse_ts(v: Option<&str>) -> Result<i64, Rejection> {
    let text =
        present(v).ok_or_else(|| reject(Reason::MissingField("ts"), "field ts is required"))?;
    let ms = if text.starts_with('"') {
        let s = json_string(text).map_err(|e| reject(Reason::BadTimestamp, format!("ts: {e}")))?;
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

fn parse_amount(v: Option<&str>, max: f64) -> Result<u64, Rejection> {
    let text = present(v)
        .ok_or_else(|| reject(Reason::MissingField("amount"), "purchase needs an amount"))?;
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
    parse_event_with(bytes, ctx, true)
}

/// [`parse_event`]; `fast`: try [`scan`] before `serde_json` (the tests compare
/// the two ways).
fn parse_event_with(bytes: &[u8], ctx: &ParseContext, fast: bool) -> Result<Event, Rejection> {
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
    let raw = match fast.then(|| scan(text)).flatten() {
        Some(fields) => fields,
        None => serde_json::from_str::<Fields>(text)
            .map_err(|e| reject(Reason::InvalidJson, e.to_string()))?,
    };
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

    /// The hand scan and `serde_json` agree on every input: the same event or the
    /// same rejection, whether the scan took the line or declined it.
    #[test]
    fn the_scan_agrees_with_serde() {
        let c = ctx();
        let agree = |line: &[u8]| {
            assert_eq!(
                parse_event_with(line, &c, true),
                parse_event_with(line, &c, false),
                "{}",
                String::from_utf8_lossy(line)
            );
        };
        let mut data = Vec::new();
        let args = crate::gen::GenArgs {
            customers: 1_000,
            days: 30,
            seed: 3,
            start: 20_000,
        };
        crate::gen::generate(&args, &mut data).unwrap();
        let lines: Vec<&[u8]> = data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert!(lines.len() > 100);
        for l in &lines {
            // The generator's lines are what the scan is for.
            assert!(scan(std::str::from_utf8(l).unwrap()).is_some());
            agree(l);
        }
        let cases = [
            r#" { "event_id" : "e" , "customer_id":"c","type":"interaction","ts":0 } "#,
            "{\"event_id\":\"e\",\t\"customer_id\":\"c\",\r\n\"type\":\"interaction\",\"ts\":0}",
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0,"ts":1}"#,
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0,"x":1,"x":2}"#,
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0,"x":{"a":[1]}}"#,
            r#"{"event_id":"e\u0031","customer_id":"c\n","type":"interaction","ts":0}"#,
            r#"{"event_\u0069d":"e","customer_id":"c","type":"interaction","ts":0}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":01}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":1.}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":-0.0e+0}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":1E5}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":-}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":true}"#,
            r#"{"event_id":"e","customer_id":"c","type":"purchase","ts":0,"amount":nul}"#,
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0,}"#,
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0} x"#,
            r#"{"event_id":"e","customer_id":"c","type":"interaction","ts":0}}"#,
            r#"{"event_id":null,"customer_id":"c","type":"interaction","ts":0}"#,
            r#"{}"#,
            r#"{"#,
            "{\"event_id\":\"e\u{1}\",\"customer_id\":\"c\",\"type\":\"interaction\",\"ts\":0}",
            r#"{"event_id":"é","customer_id":"客户","type":"complaint","ts":"2026-11-20T10:00:00Z"}"#,
        ];
        for case in cases {
            agree(case.as_bytes());
        }
        // Each of some lines with a piece of JSON syntax put in, swapped in or
        // taken out at every position.
        let pieces = [
            "\"", "\\", "{", "}", "[", ",", ":", " ", "-", ".", "e", "0", "n", "t", "\u{1}", "é",
        ];
        for l in lines.iter().step_by(lines.len() / 12) {
            let l = std::str::from_utf8(l).unwrap();
            for (p, ch) in l.char_indices() {
                let (head, tail) = (&l[..p], &l[p + ch.len_utf8()..]);
                agree(format!("{head}{tail}").as_bytes());
                for piece in pieces {
                    agree(format!("{head}{piece}{ch}{tail}").as_bytes());
                    agree(format!("{head}{piece}{tail}").as_bytes());
                }
            }
        }
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
