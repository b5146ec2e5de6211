//! `state dump` / `state get`: every customer evaluated exactly at one as-of day.
//!
//! Two passes over the store: the first collects every customer's figures at the day
//! and builds exact population thresholds (means, quintile breaks, Pareto cut-offs);
//! the second evaluates each customer against them. The result depends only on the
//! applied events and the day, never on the order events arrived in or on when the
//! streaming thresholds were last recalibrated.

use serde::Serialize;

use crate::config::{Settings, ValueMethod};
use crate::customer::{CustomerState, Figures};
use crate::day::{format_day, Day};
use crate::output::money;
use crate::policy::{self, Lifecycle, Segment, Thresholds, ThresholdsBuilder, ValueTier};
use crate::population::{decode_thresholds, Population};
use crate::predict::model::{Histogram, Inputs, Model};
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
    /// Predictions (README "Predictions"): `null` without a purchase or a fit.
    pub p_alive: Option<f64>,
    pub expected_purchases: Option<f64>,
    pub expected_avg_spend: Option<f64>,
    pub clv: Option<f64>,
}

pub fn record(id: &str, f: &Figures, t: &Thresholds, s: &Settings) -> DumpRecord {
    let tiers = policy::tiers(f, t, s);
    let scores = policy::scores(f, t);
    let predicted = match (&t.model, f.model_inputs) {
        (Some(m), Some(i)) => m.predict(&i, f.as_of, &s.raw.predict),
        _ => Default::default(),
    };
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
        churn_risk: policy::churn_rules(f, tiers.value_tier, t, s).names(),
        p_alive: predicted.p_alive,
        expected_purchases: predicted.expected_purchases,
        expected_avg_spend: predicted.expected_avg_spend,
        clv: predicted.clv,
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

/// Every stored customer from `from` (inclusive), decoded, until `f` returns false.
pub(crate) fn scan_states<S: Store>(
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

/// The models in force in a store (`None` before the first fit).
pub fn stored_model<S: Store>(store: &S) -> Result<Option<Model>, StoreError> {
    Ok(match store.get(Cf::Meta, b"thresholds")? {
        Some(b) => {
            decode_thresholds(&b)
                .map_err(|e| StoreError::Corrupt {
                    key: "meta/thresholds".into(),
                    source: e,
                })?
                .1
                .model
        }
        None => None,
    })
}

/// Exact thresholds over the whole stored population as of `as_of`, with the
/// models in force (the predictions use the stored parameters: a dump never refits).
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
    let mut t = b.build(s, as_of);
    t.model = stored_model(store)?;
    if s.raw.value_tiers.method == ValueMethod::Clv {
        let mut values = Vec::new();
        scan_states(store, &[], &mut |_, c| {
            values.extend(policy::clv_micros(&c.figures(as_of, s), &t, s));
            true
        })?;
        (t.pareto_high, t.pareto_medium) = crate::policy::pareto_cutoffs(values, s);
    }
    Ok(t)
}

/// The model histogram of the stored population as of `as_of` (purchase days
/// after it left out), for `strata model fit`.
pub fn histogram_at<S: Store>(store: &S, as_of: Day) -> Result<Histogram, StoreError> {
    let mut h = Histogram::default();
    scan_states(store, &[], &mut |_, c| {
        if let Some(i) = Inputs::of(&c, Some(as_of)) {
            h.count(&i, true);
        }
        true
    })?;
    Ok(h)
}

/// Every customer, in key order.
pub fn dump<S: Store>(
    store: &S,
    s: &Settings,
    as_of: Day,
    emit: &mut dyn FnMut(DumpRecord) -> std::io::Result<()>,
) -> Result<u64, DumpError> {
    let t = exact_thresholds(store, s, as_of)?;
    dump_with(store, s, as_of, &t, emit)
}

/// [`dump`] with the exact thresholds already computed (`exact_thresholds`).
pub fn dump_with<S: Store>(
    store: &S,
    s: &Settings,
    as_of: Day,
    t: &Thresholds,
    emit: &mut dyn FnMut(DumpRecord) -> std::io::Result<()>,
) -> Result<u64, DumpError> {
    let mut n = 0;
    let mut io_err = None;
    scan_states(store, &[], &mut |id, c| {
        n += 1;
        match emit(record(id, &c.figures(as_of, s), t, s)) {
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
    let Some(c) = load_customer(store, id)? else {
        return Ok(None);
    };
    let t = exact_thresholds(store, s, as_of)?;
    Ok(Some(record(id, &c.figures(as_of, s), &t, s)))
}

/// One stored customer, decoded (`None`: unknown).
pub(crate) fn load_customer<S: Store>(
    store: &S,
    id: &str,
) -> Result<Option<CustomerState>, StoreError> {
    let Some(b) = store.get(Cf::Customers, id.as_bytes())? else {
        return Ok(None);
    };
    decode_customer(&b)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            key: id.to_string(),
            source: e,
        })
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the dump: {0}")]
    Io(std::io::Error),
}
