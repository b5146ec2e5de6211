//! Incremental population statistics.
//!
//! The mean thresholds (SPEC §1) are kept exact after every event without a scan:
//! - Σrecency over purchasers at the clock = n·clock − Σ last_purchase_day;
//! - Σfrequency and Σmonetary over the window are running sums of a population-level
//!   day histogram, updated by every applied purchase and by the window sliding when
//!   the clock advances.
//!
//! Pareto cut-offs need the distribution; the recalibration walks the monetary index
//! for them (see `processor`). Everything here is a mergeable summary (sums and a day
//! histogram), so partitions' summaries can be added up across a cluster.

use std::collections::BTreeMap;

use crate::customer::PurchaseEffect;
use crate::day::Day;
use crate::policy::Thresholds;
use crate::store::codec::{put_ivarint, put_uvarint, CodecError, Reader};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Population {
    /// Known customers (any event ever).
    pub customers: u64,
    /// Customers with at least one purchase.
    pub purchasers: u64,
    pub sum_last_day: i64,
    /// The day the running window sums are evaluated at.
    pub clock: Option<Day>,
    pub window_purchases: u64,
    pub window_micros: u128,
    /// Purchases and spend per day, for days inside the retention horizon.
    pub daily: BTreeMap<Day, (u64, u64)>,
    /// Purchasers by window monetary: log-scale bucket → (customers, Σ micros). At most
    /// 1,025 buckets (16 per power of two), so bounded whatever the population.
    pub monetary_hist: BTreeMap<u16, (u64, u128)>,
}

/// Histogram bucket of an amount in micro-units: 0 alone, then 16 buckets per power
/// of two (each at most 1/16 of its lower bound wide).
pub fn bucket(m: u64) -> u16 {
    if m == 0 {
        return 0;
    }
    let e = 63 - m.leading_zeros();
    let mant = if e >= 4 {
        (m >> (e - 4)) & 0xF
    } else {
        (m << (4 - e)) & 0xF
    };
    (1 + e * 16 + mant as u32) as u16
}

/// The inclusive range of amounts in a bucket.
pub fn bucket_range(b: u16) -> (u64, u64) {
    if b == 0 {
        return (0, 0);
    }
    let e = (b as u32 - 1) / 16;
    let mant = (b as u64 - 1) % 16;
    if e >= 4 {
        let lo = (16 + mant) << (e - 4);
        (lo, lo + (1u64 << (e - 4)) - 1)
    } else {
        let lo = (16 + mant) >> (4 - e);
        (lo, lo)
    }
}

const VERSION: u8 = 1;

impl Population {
    pub fn on_new_customer(&mut self) {
        self.customers += 1;
    }

    pub fn on_purchase(&mut self, e: &PurchaseEffect, day: Day, micros: u64, window_days: i32) {
        match e.previous_last_day {
            None => {
                self.purchasers += 1;
                self.sum_last_day += e.new_last_day as i64;
            }
            Some(prev) => self.sum_last_day += (e.new_last_day - prev) as i64,
        }
        if e.bucketed {
            let d = self.daily.entry(day).or_default();
            d.0 += 1;
            d.1 = d.1.saturating_add(micros);
        }
        if let Some(clock) = self.clock {
            if day <= clock && day > clock - window_days {
                self.window_purchases += 1;
                self.window_micros += micros as u128;
            }
        }
    }

    /// A purchaser's window monetary moved from `old` to `new` (None: not a purchaser).
    pub fn on_index_move(&mut self, old: Option<u64>, new: Option<u64>) {
        if let Some(m) = old {
            let e = self.monetary_hist.entry(bucket(m)).or_default();
            e.0 -= 1;
            e.1 -= m as u128;
            if e.0 == 0 {
                self.monetary_hist.remove(&bucket(m));
            }
        }
        if let Some(m) = new {
            let e = self.monetary_hist.entry(bucket(m)).or_default();
            e.0 += 1;
            e.1 += m as u128;
        }
    }

    /// Move the clock to `day` (forward only), sliding the window sums and dropping
    /// histogram days before `horizon`.
    pub fn advance(&mut self, day: Day, window_days: i32, horizon: Day) {
        match self.clock {
            None => {
                self.clock = Some(day);
                let (p, m) = self.window_sums(day, window_days);
                self.window_purchases = p;
                self.window_micros = m;
            }
            Some(c) if day > c => {
                // Days c−W+1 .. day−W leave the window; days c+1 .. day enter it.
                if day - c >= window_days {
                    let (p, m) = self.window_sums(day, window_days);
                    self.window_purchases = p;
                    self.window_micros = m;
                } else {
                    for (_, (p, m)) in self.daily.range(c - window_days + 1..=day - window_days) {
                        self.window_purchases -= p;
                        self.window_micros -= *m as u128;
                    }
                    for (_, (p, m)) in self.daily.range(c + 1..=day) {
                        self.window_purchases += p;
                        self.window_micros += *m as u128;
                    }
                }
                self.clock = Some(day);
            }
            Some(_) => {}
        }
        self.daily = self.daily.split_off(&horizon);
    }

    fn window_sums(&self, day: Day, window_days: i32) -> (u64, u128) {
        self.daily
            .range(day - window_days + 1..=day)
            .fold((0, 0), |(p, m), (_, (dp, dm))| (p + dp, m + *dm as u128))
    }

    /// This summary plus another partition's (SPEC §3: statistics cover all partitions).
    /// Sums and histograms add; the clock and the day histogram stay this one's (they
    /// drive this partition's window sliding, not the thresholds).
    pub fn merged(&self, other: &Population) -> Population {
        let mut m = self.clone();
        m.customers += other.customers;
        m.purchasers += other.purchasers;
        m.sum_last_day += other.sum_last_day;
        m.window_purchases += other.window_purchases;
        m.window_micros += other.window_micros;
        for (b, (n, sum)) in &other.monetary_hist {
            let e = m.monetary_hist.entry(*b).or_default();
            e.0 += n;
            e.1 += sum;
        }
        m
    }

    /// Thresholds with the current means and the given Pareto cut-offs.
    pub fn thresholds(&self, pareto_high: Option<u64>, pareto_medium: Option<u64>) -> Thresholds {
        Thresholds {
            purchasers: self.purchasers,
            sum_last_day: self.sum_last_day,
            sum_frequency: self.window_purchases,
            sum_micros: self.window_micros,
            pareto_high,
            pareto_medium,
            ..Thresholds::default()
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_uvarint(out, self.customers);
        put_uvarint(out, self.purchasers);
        put_ivarint(out, self.sum_last_day);
        match self.clock {
            None => out.push(0),
            Some(c) => {
                out.push(1);
                put_ivarint(out, c as i64);
            }
        }
        put_uvarint(out, self.window_purchases);
        put_uvarint(out, (self.window_micros >> 64) as u64);
        put_uvarint(out, self.window_micros as u64);
        put_uvarint(out, self.daily.len() as u64);
        for (d, (p, m)) in &self.daily {
            put_ivarint(out, *d as i64);
            put_uvarint(out, *p);
            put_uvarint(out, *m);
        }
        put_uvarint(out, self.monetary_hist.len() as u64);
        for (b, (n, m)) in &self.monetary_hist {
            put_uvarint(out, *b as u64);
            put_uvarint(out, *n);
            put_uvarint(out, (*m >> 64) as u64);
            put_uvarint(out, *m as u64);
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Population, CodecError> {
        let mut r = Reader::new(buf);
        if r.u8()? != VERSION {
            return Err(CodecError("unknown population record version"));
        }
        let mut p = Population {
            customers: r.uvarint()?,
            purchasers: r.uvarint()?,
            sum_last_day: r.ivarint()?,
            ..Population::default()
        };
        if r.u8()? == 1 {
            p.clock = Some(r.day()?);
        }
        p.window_purchases = r.uvarint()?;
        let hi = r.uvarint()? as u128;
        p.window_micros = (hi << 64) | r.uvarint()? as u128;
        for _ in 0..r.uvarint()? {
            let d = r.day()?;
            p.daily.insert(d, (r.uvarint()?, r.uvarint()?));
        }
        for _ in 0..r.uvarint()? {
            let b = u16::try_from(r.uvarint()?).map_err(|_| CodecError("bucket out of range"))?;
            let n = r.uvarint()?;
            let hi = r.uvarint()? as u128;
            p.monetary_hist
                .insert(b, (n, (hi << 64) | r.uvarint()? as u128));
        }
        Ok(p)
    }
}

/// Calibrated thresholds persist with the day they were computed for.
pub fn encode_thresholds(day: Day, t: &Thresholds, out: &mut Vec<u8>) {
    out.push(VERSION);
    put_ivarint(out, day as i64);
    put_uvarint(out, t.purchasers);
    put_ivarint(out, t.sum_last_day);
    put_uvarint(out, t.sum_frequency);
    put_uvarint(out, (t.sum_micros >> 64) as u64);
    put_uvarint(out, t.sum_micros as u64);
    put_uvarint(out, t.r_breaks.len() as u64);
    for &b in &t.r_breaks {
        put_ivarint(out, b as i64);
    }
    put_uvarint(out, t.f_breaks.len() as u64);
    for &b in &t.f_breaks {
        put_uvarint(out, b as u64);
    }
    put_uvarint(out, t.m_breaks.len() as u64);
    for &b in &t.m_breaks {
        put_uvarint(out, b);
    }
    for c in [t.pareto_high, t.pareto_medium] {
        match c {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_uvarint(out, v);
            }
        }
    }
    // Written by strata ≥ issue 17 only when fitted; older records end before it.
    if let Some(m) = &t.model {
        m.encode(out);
    }
}

pub fn decode_thresholds(buf: &[u8]) -> Result<(Day, Thresholds), CodecError> {
    let mut r = Reader::new(buf);
    if r.u8()? != VERSION {
        return Err(CodecError("unknown thresholds record version"));
    }
    let day = r.day()?;
    let mut t = Thresholds {
        purchasers: r.uvarint()?,
        sum_last_day: r.ivarint()?,
        sum_frequency: r.uvarint()?,
        ..Thresholds::default()
    };
    let hi = r.uvarint()? as u128;
    t.sum_micros = (hi << 64) | r.uvarint()? as u128;
    for _ in 0..r.uvarint()? {
        t.r_breaks.push(r.day()?);
    }
    for _ in 0..r.uvarint()? {
        t.f_breaks.push(r.u32()?);
    }
    for _ in 0..r.uvarint()? {
        t.m_breaks.push(r.uvarint()?);
    }
    let mut opt = || -> Result<Option<u64>, CodecError> {
        Ok(if r.u8()? == 1 {
            Some(r.uvarint()?)
        } else {
            None
        })
    };
    t.pareto_high = opt()?;
    t.pareto_medium = opt()?;
    if !r.is_empty() {
        t.model = Some(crate::predict::model::Model::decode(&mut r)?);
    }
    if !r.is_empty() {
        return Err(CodecError("trailing bytes"));
    }
    Ok((day, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_amount_in_order() {
        let mut prev = 0;
        for m in (0..5000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX / 3, u64::MAX]) {
            let b = bucket(m);
            let (lo, hi) = bucket_range(b);
            assert!(lo <= m && m <= hi, "{m} in bucket {b} = {lo}..={hi}");
            assert!(b >= prev);
            prev = b;
        }
    }

    #[test]
    fn window_sums_slide_with_the_clock() {
        let mut p = Population::default();
        p.advance(10, 5, 0);
        let e = |prev, new| PurchaseEffect {
            previous_last_day: prev,
            new_last_day: new,
            bucketed: true,
        };
        p.on_purchase(&e(None, 8), 8, 100, 5);
        p.on_purchase(&e(Some(8), 10), 10, 50, 5);
        assert_eq!((p.window_purchases, p.window_micros), (2, 150));
        p.advance(12, 5, 0); // window 8..=12
        assert_eq!((p.window_purchases, p.window_micros), (2, 150));
        p.advance(13, 5, 0); // day 8 leaves
        assert_eq!((p.window_purchases, p.window_micros), (1, 50));
        p.advance(30, 5, 0);
        assert_eq!((p.window_purchases, p.window_micros), (0, 0));
        p.on_index_move(None, Some(1_000));
        p.on_index_move(None, Some(u64::MAX));
        let mut buf = Vec::new();
        p.encode(&mut buf);
        assert_eq!(Population::decode(&buf).unwrap(), p);
    }
}
