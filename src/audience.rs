//! Audiences: what marketing reads of the state (README "Audiences").
//!
//! - [`get_in_force`]: one customer evaluated against the thresholds the engine
//!   publishes with (the stored ones), at the stored clock: one read of the customer
//!   and two of the partition's meta records, whatever the population's size. Its
//!   tiers are the customer's last published `tier_changed.to`.
//! - [`Tally`]: a segment summary (customers and monetary per tier of each
//!   dimension, customers at risk by reason); mergeable, so a cluster's summary is
//!   the sum of its partitions'. [`summarize_in_force`] counts one partition the way
//!   the engine sees it; `strata state summary` counts the exact dump.
//! - [`Filter`]: `DIM=TIER` (`rfm_segment=important_retain`, `churn_risk=overdue`),
//!   for `state dump --where` and the export endpoint, which pages ([`page`])
//!   through one tier of this instance's partitions with a stable [`Cursor`].
//!
//! [`dump`](crate::dump) stays the exact reference: it re-derives thresholds from
//! the whole stored population at the as-of day.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Settings;
use crate::day::{format_day, Day};
use crate::dump::{load_customer, record, scan_states, DumpRecord};
use crate::output::money;
use crate::policy::{Lifecycle, Rule, Segment, Thresholds, ValueTier};
use crate::population::{decode_thresholds, Population};
use crate::processor::{META_POPULATION, META_THRESHOLDS};
use crate::store::{Cf, Store, StoreError};

/// The dimensions a summary counts and a filter selects on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    RfmSegment,
    ValueTier,
    Lifecycle,
    /// A customer is in tier `r` when churn rule `r` holds for them.
    ChurnRisk,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::RfmSegment,
        Dimension::ValueTier,
        Dimension::Lifecycle,
        Dimension::ChurnRisk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::RfmSegment => "rfm_segment",
            Dimension::ValueTier => "value_tier",
            Dimension::Lifecycle => "lifecycle",
            Dimension::ChurnRisk => "churn_risk",
        }
    }

    /// Every tier name of the dimension, in the order summaries list them.
    pub fn tiers(self) -> Vec<&'static str> {
        match self {
            Dimension::RfmSegment => Segment::ALL.iter().map(|s| s.as_str()).collect(),
            Dimension::ValueTier => ValueTier::ALL.iter().map(|s| s.as_str()).collect(),
            Dimension::Lifecycle => Lifecycle::FUNNEL.iter().map(|s| s.as_str()).collect(),
            Dimension::ChurnRisk => Rule::ALL.iter().map(|s| s.as_str()).collect(),
        }
    }
}

impl FromStr for Dimension {
    type Err = String;
    fn from_str(s: &str) -> Result<Dimension, String> {
        Dimension::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown dimension {s:?}: use one of {}",
                    Dimension::ALL.map(|d| d.as_str()).join(", ")
                )
            })
    }
}

/// One dimension's tier: the customers a `--where` or an export selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub dimension: Dimension,
    pub tier: &'static str,
}

impl Filter {
    pub fn new(dimension: &str, tier: &str) -> Result<Filter, String> {
        let dimension: Dimension = dimension.parse()?;
        let tiers = dimension.tiers();
        let tier = tiers.iter().copied().find(|t| *t == tier).ok_or_else(|| {
            format!(
                "unknown {} {tier:?}: use one of {}",
                dimension.as_str(),
                tiers.join(", ")
            )
        })?;
        Ok(Filter { dimension, tier })
    }

    pub fn matches(&self, r: &DumpRecord) -> bool {
        match self.dimension {
            Dimension::RfmSegment => r.rfm_segment.as_str() == self.tier,
            Dimension::ValueTier => r.value_tier.as_str() == self.tier,
            Dimension::Lifecycle => r.lifecycle.as_str() == self.tier,
            Dimension::ChurnRisk => r.churn_risk.contains(&self.tier),
        }
    }
}

impl FromStr for Filter {
    type Err = String;
    /// `DIM=TIER`.
    fn from_str(s: &str) -> Result<Filter, String> {
        let (d, t) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not DIM=TIER (e.g. rfm_segment=important_retain)"))?;
        Filter::new(d, t)
    }
}

/// Customers and monetary (micro-units) of one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub customers: u64,
    pub micros: u128,
}

/// A segment summary: per dimension and tier, the customers in it and the sum of
/// their `monetary`; customers with at least one churn rule holding, and per rule.
/// Every tier is listed, with zeros where nobody is. Sums and counts only, so
/// partitions' tallies add up to the cluster's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub customers: u64,
    /// "dimension/tier" → cell; `churn_risk` tiers are the rules.
    pub cells: BTreeMap<String, Cell>,
    pub at_risk: u64,
}

impl Tally {
    pub fn add(&mut self, r: &DumpRecord) {
        self.customers += 1;
        let micros = (r.monetary * 1e6).round() as u128;
        for (d, tier) in [
            (Dimension::RfmSegment, r.rfm_segment.as_str()),
            (Dimension::ValueTier, r.value_tier.as_str()),
            (Dimension::Lifecycle, r.lifecycle.as_str()),
        ] {
            let c = self
                .cells
                .entry(format!("{}/{tier}", d.as_str()))
                .or_default();
            c.customers += 1;
            c.micros += micros;
        }
        for reason in &r.churn_risk {
            let c = self
                .cells
                .entry(format!("churn_risk/{reason}"))
                .or_default();
            c.customers += 1;
            c.micros += micros;
        }
        if !r.churn_risk.is_empty() {
            self.at_risk += 1;
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.customers += o.customers;
        self.at_risk += o.at_risk;
        for (k, c) in &o.cells {
            let m = self.cells.entry(k.clone()).or_default();
            m.customers += c.customers;
            m.micros += c.micros;
        }
    }

    /// The summary object (README "Audiences"): `{"as_of", "customers",
    /// "dimensions": {dim: {tier: {"customers", "monetary"}}}, "at_risk":
    /// {"customers", "by_reason"}}`.
    pub fn to_json(&self, as_of: Option<Day>) -> Value {
        let cell = |d: Dimension, t: &str| {
            self.cells
                .get(&format!("{}/{t}", d.as_str()))
                .copied()
                .unwrap_or_default()
        };
        let mut dims = serde_json::Map::new();
        for d in [
            Dimension::RfmSegment,
            Dimension::ValueTier,
            Dimension::Lifecycle,
        ] {
            let tiers: serde_json::Map<String, Value> = d
                .tiers()
                .into_iter()
                .map(|t| {
                    let c = cell(d, t);
                    (
                        t.to_string(),
                        json!({"customers": c.customers, "monetary": money_wide(c.micros)}),
                    )
                })
                .collect();
            dims.insert(d.as_str().into(), Value::Object(tiers));
        }
        let by_reason: serde_json::Map<String, Value> = Dimension::ChurnRisk
            .tiers()
            .into_iter()
            .map(|t| {
                (
                    t.to_string(),
                    json!(cell(Dimension::ChurnRisk, t).customers),
                )
            })
            .collect();
        json!({
            "as_of": as_of.map(format_day),
            "customers": self.customers,
            "dimensions": dims,
            "at_risk": {"customers": self.at_risk, "by_reason": by_reason},
        })
    }
}

/// Micro-units to money, beyond u64 (a tier's sum over many customers).
fn money_wide(micros: u128) -> f64 {
    match u64::try_from(micros) {
        Ok(m) => money(m),
        Err(_) => micros as f64 / 1e6,
    }
}

/// The thresholds a partition's engine evaluates with now, and its clock: the
/// stored thresholds of the last recalibration (cluster-wide in a cluster), or
/// before the first one the live means — what `Processor::thresholds` gives.
/// `None` when nothing was ever applied.
pub fn in_force<S: Store>(store: &S) -> Result<Option<(Day, Thresholds)>, StoreError> {
    let corrupt = |key: &str, e| StoreError::Corrupt {
        key: key.into(),
        source: e,
    };
    let Some(b) = store.get(Cf::Meta, META_POPULATION)? else {
        return Ok(None);
    };
    let pop = Population::decode(&b).map_err(|e| corrupt("meta/population", e))?;
    let Some(clock) = pop.clock else {
        return Ok(None);
    };
    let t = match store.get(Cf::Meta, META_THRESHOLDS)? {
        Some(b) => {
            decode_thresholds(&b)
                .map_err(|e| corrupt("meta/thresholds", e))?
                .1
        }
        None => pop.thresholds(None, None),
    };
    Ok(Some((clock, t)))
}

/// One customer of one partition's store, as the engine sees them now.
pub fn get_in_force<S: Store>(
    store: &S,
    s: &Settings,
    id: &str,
) -> Result<Option<DumpRecord>, StoreError> {
    let Some(c) = load_customer(store, id)? else {
        return Ok(None);
    };
    let Some((clock, t)) = in_force(store)? else {
        return Ok(None);
    };
    Ok(Some(record(id, &c.figures(clock, s), &t, s)))
}

/// Visit every customer of one partition's store as the engine sees them now,
/// from after `after` (a key) until `f` returns false.
fn scan_in_force<S: Store>(
    store: &S,
    s: &Settings,
    after: Option<&[u8]>,
    f: &mut dyn FnMut(DumpRecord) -> bool,
) -> Result<Option<Day>, StoreError> {
    let Some((clock, t)) = in_force(store)? else {
        return Ok(None);
    };
    scan_states(store, after.unwrap_or(&[]), &mut |id, c| {
        after == Some(id.as_bytes()) || f(record(id, &c.figures(clock, s), &t, s))
    })?;
    Ok(Some(clock))
}

/// One partition's summary as its engine sees it (the thresholds in force at its
/// clock), with that clock.
pub fn summarize_in_force<S: Store>(
    store: &S,
    s: &Settings,
) -> Result<Option<(Day, Tally)>, StoreError> {
    let mut t = Tally::default();
    let clock = scan_in_force(store, s, None, &mut |r| {
        t.add(&r);
        true
    })?;
    Ok(clock.map(|c| (c, t)))
}

/// A partition's summary as published on the stats topic (key `segments/<p>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub partition: i32,
    pub as_of: Day,
    /// Wall-clock milliseconds when it was counted.
    pub counted_at_ms: i64,
    pub tally: Tally,
}

/// Where an export page ends: the partition and the last customer id listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub partition: i32,
    pub after: Vec<u8>,
}

impl Cursor {
    /// `<partition>.<hex of the last id>`: opaque to clients, stable across
    /// requests (ids are visited in key order within a partition).
    pub fn encode(&self) -> String {
        let hex: String = self.after.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.partition)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (p, hex) = s.split_once('.')?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let after = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Cursor {
            partition: p.parse().ok()?,
            after,
        })
    }
}

/// One page of an export.
#[derive(Debug, Default)]
pub struct Page {
    pub customers: Vec<DumpRecord>,
    /// Where the next page starts; `None` after the last customer.
    pub next: Option<Cursor>,
}

/// Up to `limit` customers of `filter`'s tier from `stores` (partition, store),
/// visited by partition then id, starting after `cursor`. A cursor whose partition
/// is not among `stores` any more (a rebalance) resumes at the next one listed.
pub fn page<S: Store>(
    stores: &[(i32, S)],
    s: &Settings,
    filter: &Filter,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let limit = limit.max(1);
    let mut page = Page::default();
    for (p, store) in stores {
        let after = match cursor {
            Some(c) if c.partition > *p => continue,
            Some(c) if c.partition == *p => Some(c.after.as_slice()),
            _ => None,
        };
        let mut last = None;
        scan_in_force(store, s, after, &mut |r| {
            if page.customers.len() == limit {
                return false;
            }
            if filter.matches(&r) {
                last = Some(r.customer_id.clone().into_bytes());
                page.customers.push(r);
            }
            true
        })?;
        if page.customers.len() == limit {
            // Full: the next page goes on after the last one listed (possibly
            // finding the rest of this partition empty).
            page.next = last.map(|after| Cursor {
                partition: *p,
                after,
            });
            return Ok(page);
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_what_is_wrong() {
        let f: Filter = "rfm_segment=important_retain".parse().unwrap();
        assert_eq!(f.tier, "important_retain");
        assert!("churn_risk=overdue".parse::<Filter>().is_ok());
        let e = "rfm_segment=vip".parse::<Filter>().unwrap_err();
        assert!(e.contains("important_value"), "{e}");
        let e = "segment=x".parse::<Filter>().unwrap_err();
        assert!(e.contains("rfm_segment"), "{e}");
        assert!("rfm_segment".parse::<Filter>().is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            partition: 7,
            after: "c\u{e9}42".as_bytes().to_vec(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "7", "x.00", "7.0", "7.zz"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
