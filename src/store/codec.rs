//! Compact, versioned binary encoding of customer state and keys.
//!
//! Format v1 (first byte = version): LEB128 varints throughout, days zig-zag encoded
//! and delta-coded inside sorted lists. A typical customer with a dozen purchases is
//! well under 200 bytes. A record with an unknown version or a truncated body is a
//! corrupt store: the caller stops with a clear error rather than guessing.

use crate::customer::{Bucket, CustomerState, Episode, Indexed, Seen};
use crate::day::Day;
use crate::policy::{Lifecycle, RuleSet, Segment, Severity, Tiers, ValueTier};

pub const CUSTOMER_VERSION: u8 = 3;

#[derive(Debug, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CodecError(pub &'static str);

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.buf.split_first().ok_or(CodecError("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    #[inline]
    pub fn uvarint(&mut self) -> Result<u64, CodecError> {
        // Most figures (counts, day steps) fit one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(b as u64);
            }
        }
        self.uvarint_long()
    }

    #[inline(never)]
    fn uvarint_long(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError("varint too long"))
    }

    #[inline]
    pub fn ivarint(&mut self) -> Result<i64, CodecError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    #[inline]
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.uvarint()?).map_err(|_| CodecError("u32 out of range"))
    }

    #[inline]
    pub fn day(&mut self) -> Result<Day, CodecError> {
        i32::try_from(self.ivarint()?).map_err(|_| CodecError("day out of range"))
    }

    pub fn fixed_u64(&mut self) -> Result<u64, CodecError> {
        if self.buf.len() < 8 {
            return Err(CodecError("truncated"));
        }
        let (a, rest) = self.buf.split_at(8);
        self.buf = rest;
        Ok(u64::from_le_bytes(a.try_into().unwrap()))
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn segment_code(s: Segment) -> u8 {
    s.code()
}

fn value_code(v: ValueTier) -> u8 {
    v as u8
}

fn lifecycle_code(l: Lifecycle) -> u8 {
    l as u8
}

fn severity_code(s: Severity) -> u8 {
    s as u8
}

pub fn encode_customer(c: &CustomerState, out: &mut Vec<u8>) {
    encode_customer_as(c, out, CUSTOMER_VERSION)
}

/// The record as `version` wrote it (older versions for the tests that read them):
/// v2 added the first-day spend, v3 the intent interactions per day bucket.
fn encode_customer_as(c: &CustomerState, out: &mut Vec<u8>, version: u8) {
    out.clear();
    out.push(version);
    put_uvarint(out, c.lifetime_purchases);
    put_uvarint(out, c.lifetime_micros);
    match c.first_day_micros {
        _ if version < 2 => {}
        None => out.push(0),
        Some(m) => {
            out.push(1);
            put_uvarint(out, m);
        }
    }
    put_uvarint(out, c.purchase_days.len() as u64);
    let mut prev = 0i64;
    for (i, &d) in c.purchase_days.iter().enumerate() {
        if i == 0 {
            put_ivarint(out, d as i64);
        } else {
            put_uvarint(out, (d as i64 - prev) as u64);
        }
        prev = d as i64;
    }
    put_uvarint(out, c.buckets.len() as u64);
    for (i, b) in c.buckets.iter().enumerate() {
        if i == 0 {
            put_ivarint(out, b.day as i64);
        } else {
            put_uvarint(out, (b.day as i64 - prev) as u64);
        }
        prev = b.day as i64;
        put_uvarint(out, b.purchases as u64);
        put_uvarint(out, b.micros);
        put_uvarint(out, b.interactions as u64);
        put_uvarint(out, b.complaints as u64);
        put_uvarint(out, b.high_complaints as u64);
        if version >= 3 {
            put_uvarint(out, b.intents as u64);
        }
    }
    put_uvarint(out, c.seen.len() as u64);
    for s in &c.seen {
        out.extend_from_slice(&s.hash.to_le_bytes());
        put_ivarint(out, s.day as i64);
    }
    match c.published {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.push(segment_code(t.rfm_segment));
            out.push(value_code(t.value_tier));
            out.push(lifecycle_code(t.lifecycle));
        }
    }
    match c.episode {
        None => out.push(0),
        Some(e) => {
            out.push(1);
            out.push(e.reasons.0);
            out.push(severity_code(e.severity));
        }
    }
    match c.timer {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_ivarint(out, d as i64);
        }
    }
    match c.indexed {
        None => out.push(0),
        Some(i) => {
            out.push(1);
            put_ivarint(out, i.last_day as i64);
            put_uvarint(out, i.frequency as u64);
            put_uvarint(out, i.micros);
        }
    }
}

fn code<T: Copy>(all: &[T], c: u8) -> Result<T, CodecError> {
    all.get(c as usize)
        .copied()
        .ok_or(CodecError("unknown enum code"))
}

/// Lists are decoded with room for one more entry: a record is decoded to apply an
/// event, which usually adds a day bucket and an event id (a reallocation and copy
/// of the list otherwise).
pub fn decode_customer(buf: &[u8]) -> Result<CustomerState, CodecError> {
    let mut r = Reader::new(buf);
    let v = r.u8()?;
    if !(1..=CUSTOMER_VERSION).contains(&v) {
        return Err(CodecError("unknown customer record version"));
    }
    let mut c = CustomerState {
        lifetime_purchases: r.uvarint()?,
        lifetime_micros: r.uvarint()?,
        ..CustomerState::default()
    };
    if v >= 2 && r.u8()? == 1 {
        c.first_day_micros = Some(r.uvarint()?);
    }
    let n = r.uvarint()? as usize;
    c.purchase_days.reserve(n.min(4096) + 1);
    let mut prev: Day = 0;
    for i in 0..n {
        let d = if i == 0 {
            r.day()?
        } else {
            prev + r.u32()? as Day
        };
        c.purchase_days.push(d);
        prev = d;
    }
    let n = r.uvarint()? as usize;
    c.buckets.reserve(n.min(4096) + 1);
    for i in 0..n {
        let day = if i == 0 {
            r.day()?
        } else {
            prev + r.u32()? as Day
        };
        prev = day;
        c.buckets.push(Bucket {
            day,
            purchases: r.u32()?,
            micros: r.uvarint()?,
            interactions: r.u32()?,
            complaints: r.u32()?,
            high_complaints: r.u32()?,
            // Version 3 counts intent interactions; before, none were known.
            intents: if v >= 3 { r.u32()? } else { 0 },
        });
    }
    let n = r.uvarint()? as usize;
    c.seen.reserve(n.min(4096) + 1);
    for _ in 0..n {
        let hash = r.fixed_u64()?;
        let day = r.day()?;
        c.seen.push(Seen { hash, day });
    }
    if r.u8()? == 1 {
        c.published = Some(Tiers {
            rfm_segment: code(&Segment::ALL, r.u8()?)?,
            value_tier: code(&ValueTier::ALL, r.u8()?)?,
            lifecycle: code(&Lifecycle::ALL, r.u8()?)?,
        });
    }
    if r.u8()? == 1 {
        let reasons = RuleSet(r.u8()?);
        let severity = code(&[Severity::Low, Severity::Medium, Severity::High], r.u8()?)?;
        c.episode = Some(Episode { reasons, severity });
    }
    if r.u8()? == 1 {
        c.timer = Some(r.day()?);
    }
    if r.u8()? == 1 {
        c.indexed = Some(Indexed {
            last_day: r.day()?,
            frequency: r.u32()?,
            micros: r.uvarint()?,
        });
    }
    if !r.is_empty() {
        return Err(CodecError("trailing bytes"));
    }
    if v == 1 {
        // Version 1 did not keep the first day's spend: its bucket still has it
        // while the day is inside the retention.
        c.first_day_micros = c.purchase_days.first().and_then(|&d| {
            c.buckets
                .binary_search_by_key(&d, |b| b.day)
                .ok()
                .map(|i| c.buckets[i].micros)
        });
    }
    Ok(c)
}

/// Archived event-id hash key: `customer_id ++ 0x00 ++ hash BE`.
pub fn dedupe_key(customer_id: &str, hash: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(customer_id.len() + 9);
    k.extend_from_slice(customer_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&hash.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;

    #[test]
    fn customer_round_trips() {
        let mut reasons = RuleSet::default();
        reasons.insert(Rule::SpendDrop);
        let c = CustomerState {
            lifetime_purchases: 3,
            lifetime_micros: 12_345_678,
            first_day_micros: Some(7),
            purchase_days: vec![-5, 10, 20_000],
            buckets: vec![
                Bucket {
                    day: 10,
                    purchases: 1,
                    micros: 5,
                    interactions: 2,
                    complaints: 1,
                    high_complaints: 1,
                    intents: 1,
                },
                Bucket {
                    day: 20_000,
                    purchases: 2,
                    micros: 9,
                    ..Bucket::default()
                },
            ],
            seen: vec![
                Seen { hash: 1, day: 10 },
                Seen {
                    hash: u64::MAX,
                    day: 20_000,
                },
            ],
            published: Some(Tiers {
                rfm_segment: Segment::GeneralKeep,
                value_tier: ValueTier::Medium,
                lifecycle: Lifecycle::Lapsed,
            }),
            episode: Some(Episode {
                reasons,
                severity: Severity::High,
            }),
            timer: Some(-3),
            indexed: Some(Indexed {
                last_day: 20_000,
                frequency: 2,
                micros: 9,
            }),
        };
        let mut buf = Vec::new();
        encode_customer(&c, &mut buf);
        assert_eq!(decode_customer(&buf).unwrap(), c);
        assert!(decode_customer(&buf[..buf.len() - 1]).is_err());
        let mut bad = buf.clone();
        bad[0] = 9;
        assert!(decode_customer(&bad).is_err());

        // A version-2 record: no intent interaction known.
        let mut v2 = Vec::new();
        encode_customer_as(&c, &mut v2, 2);
        let mut no_intents = c.clone();
        no_intents.buckets.iter_mut().for_each(|b| b.intents = 0);
        assert_eq!(decode_customer(&v2).unwrap(), no_intents);

        // A version-1 record (no first-day spend): recovered from the first day's
        // bucket while it is kept, unknown once it is not.
        let v1 = |c: &CustomerState| {
            let mut b = Vec::new();
            encode_customer_as(c, &mut b, 1);
            b
        };
        let old = CustomerState {
            first_day_micros: None,
            ..no_intents.clone()
        };
        assert_eq!(
            decode_customer(&v1(&old)).unwrap(),
            old,
            "day −5 is no longer in the buckets"
        );
        let kept = CustomerState {
            purchase_days: vec![10, 20_000],
            ..old.clone()
        };
        assert_eq!(
            decode_customer(&v1(&kept)).unwrap().first_day_micros,
            Some(5)
        );
    }
}
