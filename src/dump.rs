//! `state dump` / `state get`: every customer evaluated exactly at one as-of day.
//!
//! Two passes over the store: the first collects every customer's figures at the day
//! and builds exact population thresholds (means, quintile breaks, Pareto cut-offs);
//! the second evaluates each customer against them. The result depends only on the
//! applied events and the day, never on the order events arrived in or on when the
//! streaming thresholds were last recalibrated.

use serde::Serialize;

use crate::config::Settings;
use crate::customer::{CustomerState, Figures};
use crate::day::{format_day, Day};
use crate::output::money;
use crate::policy::{self, Lifecycle, Segment, Thresholds, ThresholdsBuilder, ValueTier};
use crate::population::Population;
use crate::store::codec::decode_customer;
use crate::store::{Cf, Store, StoreError};

/// The state-dump object (SPEC §6), also served by `GET /v1/customers/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DumpRecord {
    pub customer_id: String,
    pub as_of: String,
    pub recency_days: Option<i32>,
    pub frequency: u32,
    pub monetary: f64,
    pub lifetime_purchases: u64,
    pub lifetime_monetary: f64,
    pub first_purchase_day: Option<String>,
    pub last_purchase_day: Option<String>,
    pub purchase_days: u32,
    pub mean_interpurchase_days: Option<f64>,
    pub recent_interactions: u32,
    pub recent_complaints: u32,
    pub r_score: Option<u8>,
    pub f_score: Option<u8>,
    pub m_score: Option<u8>,
    pub rfm_segment: Segment,
    pub value_tier: ValueTier,
    pub lifecycle: Lifecycle,
    pub churn_risk: Vec<&'static str>,
}

pub fn record(id: &str, f: &Figures, t: &Thresholds, s: &Settings) -> DumpRecord {
    let tiers = policy::tiers(f, t, s);
    let scores = policy::scores(f, t);
    DumpRecord {
        customer_id: id.to_string(),
        as_of: format_day(f.as_of),
        recency_days: f.recency_days,
        frequency: f.frequency,
        monetary: money(f.monetary_micros),
        lifetime_purchases: f.lifetime_purchases,
        lifetime_monetary: money(f.lifetime_micros),
        first_purchase_day: f.first_purchase_day.map(format_day),
        last_purchase_day: f.last_purchase_day.map(format_day),
        purchase_days: f.purchase_days,
        mean_interpurchase_days: f.mean_interpurchase_days,
        recent_interactions: f.recent_interactions,
        recent_complaints: f.recent_complaints,
        r_score: scores.map(|s| s.0),
        f_score: scores.map(|s| s.1),
        m_score: scores.map(|s| s.2),
        rfm_segment: tiers.rfm_segment,
        value_tier: tiers.value_tier,
        lifecycle: tiers.lifecycle,
        churn_risk: policy::churn_rules(f, tiers.value_tier, s).names(),
    }
}

/// The stored stream clock, if anything was ever applied.
pub fn stored_clock<S: Store>(store: &S) -> Result<Option<Day>, StoreError> {
    Ok(match store.get(Cf::Meta, b"population")? {
        Some(b) => {
            Population::decode(&b)
                .map_err(|e| StoreError::Corrupt {
                    key: "meta/population".into(),
                    source: e,
                })?
                .clock
        }
        None => None,
    })
}

/// The latest stored clock of several partitions' stores: the day a dump of all of
/// them is evaluated at by default.
pub fn latest_clock<S: Store>(stores: &[S]) -> Result<Option<Day>, StoreError> {
    let mut latest = None;
    for s in stores {
        latest = latest.max(stored_clock(s)?);
    }
    Ok(latest)
}

fn scan_states<S: Store>(
    store: &S,
    from: &[u8],
    f: &mut dyn FnMut(&str, CustomerState) -> bool,
) -> Result<(), StoreError> {
    store.scan(Cf::Customers, from, None, &mut |k, v| {
        let id = std::str::from_utf8(k)
            .map_err(|_| StoreError::Backend("customer key is not UTF-8".into()))?;
        let c = decode_customer(v).map_err(|e| StoreError::Corrupt {
            key: id.to_string(),
            source: e,
        })?;
        Ok(f(id, c))
    })
}

/// Exact thresholds over the whole stored population as of `as_of`.
pub fn exact_thresholds<S: Store>(
    store: &S,
    s: &Settings,
    as_of: Day,
) -> Result<Thresholds, StoreError> {
    let mut b = ThresholdsBuilder::default();
    scan_states(store, &[], &mut |_, c| {
        let f = c.figures(as_of, s);
        b.add(f.recency_days, f.frequency, f.monetary_micros);
        true
    })?;
    Ok(b.build(s, as_of))
}

/// Every customer, in key order.
pub fn dump<S: Store>(
    store: &S,
    s: &Settings,
    as_of: Day,
    emit: &mut dyn FnMut(DumpRecord) -> std::io::Result<()>,
) -> Result<u64, DumpError> {
    let t = exact_thresholds(store, s, as_of)?;
    let mut n = 0;
    let mut io_err = None;
    scan_states(store, &[], &mut |id, c| {
        n += 1;
        match emit(record(id, &c.figures(as_of, s), &t, s)) {
            Ok(()) => true,
            Err(e) => {
                io_err = Some(e);
                false
            }
        }
    })?;
    match io_err {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(n),
        Some(e) => Err(DumpError::Io(e)),
        None => Ok(n),
    }
}

/// One customer, evaluated against the whole population.
pub fn get<S: Store>(
    store: &S,
    s: &Settings,
    id: &str,
    as_of: Day,
) -> Result<Option<DumpRecord>, StoreError> {
    let Some(b) = store.get(Cf::Customers, id.as_bytes())? else {
        return Ok(None);
    };
    let c = decode_customer(&b).map_err(|e| StoreError::Corrupt {
        key: id.to_string(),
        source: e,
    })?;
    let t = exact_thresholds(store, s, as_of)?;
    Ok(Some(record(id, &c.figures(as_of, s), &t, s)))
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the dump: {0}")]
    Io(std::io::Error),
}
