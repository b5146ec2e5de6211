//! The models in the engine: what a fit reads from the population (a mergeable
//! histogram), the fitted parameters in force (stored with the thresholds, so a
//! restart or a restore does not refit), and each customer's figures.
//!
//! Definitions (README "Predictions"), all in days, at an as-of day d:
//! - x = purchase days ≤ d, minus one (repeat purchase days); t_x = last − first
//!   purchase day; T = d − first purchase day;
//! - spend per repeat purchase day = (lifetime spend − spend on the first purchase
//!   day) / x, for x ≥ 1 (the Gamma-Gamma input; `lifetimes` uses the same
//!   convention, a day's purchases summed as one transaction).

use rustc_hash::FxHashMap;

use serde::Serialize;

use super::bgnbd::{self, BgNbd};
use super::gamma_gamma::{self, GammaGamma, Spend};
use super::FitError;
use super::History;
use crate::config::PredictConfig;
use crate::customer::CustomerState;
use crate::day::Day;
use crate::store::codec::{put_ivarint, put_uvarint, CodecError, Reader};

/// One customer's model inputs as of a day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    pub x: u32,
    pub t_x: i32,
    pub first: Day,
    /// Spend per repeat purchase day (money, not micros), for x ≥ 1 when known.
    pub spend: Option<f64>,
}

impl Inputs {
    /// `None` without a purchase on or before `as_of` (`None`: the latest day).
    /// The spend uses lifetime figures, so it is left out for an as-of before the
    /// last purchase day (strata does not keep per-day spend beyond the retention).
    pub fn of(c: &CustomerState, as_of: Option<Day>) -> Option<Inputs> {
        let upto = match as_of {
            None => c.purchase_days.len(),
            Some(d) => c.purchase_days.partition_point(|&p| p <= d),
        };
        if upto == 0 {
            return None;
        }
        let first = c.purchase_days[0];
        let x = (upto - 1) as u32;
        let spend = match (x, c.first_day_micros) {
            (0, _) | (_, None) => None,
            _ if upto < c.purchase_days.len() => None,
            (x, Some(f)) => Some(c.lifetime_micros.saturating_sub(f) as f64 / 1e6 / x as f64),
        };
        Some(Inputs {
            x,
            t_x: c.purchase_days[upto - 1] - first,
            first,
            spend,
        })
    }
}

/// Spend buckets of the histogram: 1,024 per power of two, so a bucket's middle is
/// within 0.034 % of every amount in it.
const SPEND_STEPS: f64 = 1024.0;

fn spend_bucket(m: f64) -> i32 {
    (m.log2() * SPEND_STEPS).floor() as i32
}

fn spend_of_bucket(b: i32) -> f64 {
    ((b as f64 + 0.5) / SPEND_STEPS).exp2()
}

/// What a fit needs of a population, mergeable across partitions by adding
/// counts: customers by (x, first purchase day, t_x) — T follows from the as-of
/// day — and repeat customers by (x, spend bucket). Hash maps (kept with every
/// purchase); whatever reads them in order sorts the keys first, so a fit and
/// an encoding do not depend on the order counts were made in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub bg: FxHashMap<(u32, Day, i32), u64>,
    pub gg: FxHashMap<(u32, i32), u64>,
}

/// A histogram key as one integer in the same order (sorting integers is a
/// fraction of sorting tuples: a refit sorts every row).
trait Packed: Copy {
    fn packed(self) -> u128;
}

/// An `i32` as a `u32` in the same order.
fn ordered(v: i32) -> u128 {
    (v as u32 ^ 0x8000_0000) as u128
}

impl Packed for (u32, Day, i32) {
    fn packed(self) -> u128 {
        (self.0 as u128) << 64 | ordered(self.1) << 32 | ordered(self.2)
    }
}

impl Packed for (u32, i32) {
    fn packed(self) -> u128 {
        (self.0 as u128) << 32 | ordered(self.1)
    }
}

/// A map's entries in key order.
fn sorted<K: Packed, V: Copy>(m: &FxHashMap<K, V>) -> Vec<(K, V)> {
    let mut v: Vec<(u128, K, V)> = m.iter().map(|(k, v)| (k.packed(), *k, *v)).collect();
    v.sort_unstable_by_key(|e| e.0);
    v.into_iter().map(|(_, k, v)| (k, v)).collect()
}

impl Histogram {
    /// Count a customer in (`add`) or out of the histogram.
    pub fn count(&mut self, i: &Inputs, add: bool) {
        fn bump<K: std::hash::Hash + Eq>(m: &mut FxHashMap<K, u64>, k: K, add: bool) {
            if add {
                *m.entry(k).or_default() += 1;
            } else if let std::collections::hash_map::Entry::Occupied(mut e) = m.entry(k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        bump(&mut self.bg, (i.x, i.first, i.t_x), add);
        if let Some(m) = i.spend.filter(|&m| m > 0.0 && i.x >= 1) {
            bump(&mut self.gg, (i.x, spend_bucket(m)), add);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (k, n) in &other.bg {
            *self.bg.entry(*k).or_default() += n;
        }
        for (k, n) in &other.gg {
            *self.gg.entry(*k).or_default() += n;
        }
    }

    /// Customers with a repeat purchase day whose first purchase is on or before `as_of`.
    pub fn repeat_customers(&self, as_of: Day) -> u64 {
        self.bg
            .iter()
            .filter(|((x, first, _), _)| *x >= 1 && *first <= as_of)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        put_uvarint(out, self.bg.len() as u64);
        for ((x, first, t_x), n) in sorted(&self.bg) {
            put_uvarint(out, x as u64);
            put_ivarint(out, first as i64);
            put_uvarint(out, t_x as u64);
            put_uvarint(out, n);
        }
        put_uvarint(out, self.gg.len() as u64);
        for ((x, b), n) in sorted(&self.gg) {
            put_uvarint(out, x as u64);
            put_ivarint(out, b as i64);
            put_uvarint(out, n);
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Histogram, CodecError> {
        let mut r = Reader::new(buf);
        if r.u8()? != 1 {
            return Err(CodecError("unknown model histogram version"));
        }
        let mut h = Histogram::default();
        for _ in 0..r.uvarint()? {
            let k = (r.u32()?, r.day()?, r.u32()? as i32);
            h.bg.insert(k, r.uvarint()?);
        }
        for _ in 0..r.uvarint()? {
            let k = (r.u32()?, r.day()?);
            h.gg.insert(k, r.uvarint()?);
        }
        if !r.is_empty() {
            return Err(CodecError("trailing bytes"));
        }
        Ok(h)
    }
}

/// A Gamma-Gamma fit and the repeat customers it covers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpendModel {
    #[serde(flatten)]
    pub params: GammaGamma,
    pub customers: u64,
}

/// The parameters in force: fitted on `fitted_on` over `customers` customers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub fitted_on: Day,
    pub customers: u64,
    pub bgnbd: BgNbd,
    pub log_likelihood: f64,
    /// `None` when the spend model could not be fitted (no repeat spend, or the
    /// optimizer failed): spend figures are then null.
    pub gamma_gamma: Option<SpendModel>,
}

/// The refit period a day falls in: `predict.refit_every_days`-day periods on a
/// fixed calendar, counted from Monday 1970-01-05 (day 4), so with the default 7
/// a period is a Monday-to-Sunday week. The model is refitted at the first
/// recalibration of a period (and at the first with enough repeat customers):
/// every partition and every instance of a cluster refits in the same periods,
/// whatever day its clock reached first.
pub fn refit_period(day: Day, every_days: u32) -> i64 {
    (day as i64 - 4).div_euclid(every_days.max(1) as i64)
}

/// Fit both models to the population of `h` as of `as_of`.
pub fn fit(h: &Histogram, as_of: Day, min_repeat_customers: u64) -> Result<Model, FitError> {
    refit(h, as_of, min_repeat_customers, None)
}

/// A warm start's log-parameters are brought within ±this (see [`refit`]).
const WARM_START_WITHIN: f64 = 8.0;

/// [`fit`] starting from the parameters of `previous` (the engine's weekly
/// refit: the population moved little, the optimizer settles in a few steps).
///
/// A degenerate previous fit (no dropout seen yet: a → 0; spend with no spread
/// within customers: p → ∞, γ → 0) lies on a plateau where the likelihood's
/// slope is below what floating point shows, and Newton's method started there
/// would stay there even when the new data has a maximum inside. So the start
/// is brought back within e^±8 first (for Gamma-Gamma along its ridge, p·γ
/// kept), where the slope is plain: the search walks back out if the
/// population is still degenerate, or on to the maximum inside.
pub fn refit(
    h: &Histogram,
    as_of: Day,
    min_repeat_customers: u64,
    previous: Option<&Model>,
) -> Result<Model, FitError> {
    let have = h.repeat_customers(as_of);
    if have < min_repeat_customers {
        return Err(FitError::TooFew {
            have,
            need: min_repeat_customers,
        });
    }
    // The two models are fitted independently of each other: Gamma-Gamma's on a
    // thread of its own beside BG/NBD's (a recalibration waits for the fit on
    // one core otherwise), each exactly as it would be alone.
    let (bg, gamma_gamma) = std::thread::scope(|scope| {
        let spend = scope.spawn(|| fit_spend(h, previous));
        let bg = fit_purchases(h, as_of, previous);
        let spend = spend
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (bg, spend)
    });
    let bg = bg?;
    Ok(Model {
        fitted_on: as_of,
        customers: bg.customers as u64,
        bgnbd: bg.params,
        log_likelihood: bg.log_likelihood,
        gamma_gamma,
    })
}

/// BG/NBD's fit of [`refit`].
fn fit_purchases(
    h: &Histogram,
    as_of: Day,
    previous: Option<&Model>,
) -> Result<bgnbd::Fit, FitError> {
    let histories: Vec<History> = sorted(&h.bg)
        .into_iter()
        // A customer whose last purchase is after the day (a cluster peer's
        // histogram from further on in event time) has t_x > T, outside the
        // model: its row is left out rather than fitted as nonsense.
        .filter(|((_, first, t_x), _)| first + t_x <= as_of)
        .map(|((x, first, t_x), n)| History {
            x: x as f64,
            t_x: t_x as f64,
            t: (as_of - first) as f64,
            weight: n as f64,
        })
        .collect();
    let grouped = bgnbd::Grouped::new(&histories);
    let start = previous.map(|m| BgNbd {
        r: within(m.bgnbd.r),
        alpha: within(m.bgnbd.alpha),
        a: within(m.bgnbd.a),
        b: within(m.bgnbd.b),
    });
    bgnbd::fit_grouped(&grouped, start.as_ref())
}

/// Gamma-Gamma's fit of [`refit`]; `None` when it cannot be fitted.
fn fit_spend(h: &Histogram, previous: Option<&Model>) -> Option<SpendModel> {
    let spends: Vec<Spend> = sorted(&h.gg)
        .into_iter()
        .map(|((x, b), n)| Spend {
            x: x as f64,
            mean: spend_of_bucket(b),
            weight: n as f64,
        })
        .collect();
    let spend_start = previous.and_then(|m| m.gamma_gamma).map(|g| {
        let GammaGamma { p, q, gamma } = g.params;
        // Down the ridge p → ∞, γ → 0 with p·γ (the spend scale) kept.
        let p_in = within(p);
        GammaGamma {
            p: p_in,
            q: within(q),
            gamma: within(gamma * p / p_in),
        }
    });
    gamma_gamma::fit_from(&spends, spend_start.as_ref())
        .ok()
        .map(|f| SpendModel {
            params: f.params,
            customers: f.customers as u64,
        })
}

/// A warm start's log-parameter brought within ±[`WARM_START_WITHIN`].
fn within(v: f64) -> f64 {
    v.clamp((-WARM_START_WITHIN).exp(), WARM_START_WITHIN.exp())
}

/// One customer's predicted figures at an as-of day.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prediction {
    pub p_alive: Option<f64>,
    pub expected_purchases: Option<f64>,
    pub expected_avg_spend: Option<f64>,
    pub clv: Option<f64>,
}

impl Model {
    /// P(alive) of a customer with these inputs at `as_of`.
    pub fn p_alive(&self, i: &Inputs, as_of: Day) -> f64 {
        self.bgnbd
            .p_alive(i.x as f64, i.t_x as f64, (as_of - i.first) as f64)
    }

    /// The figures of a customer with these inputs at `as_of` (≥ its first purchase).
    pub fn predict(&self, i: &Inputs, as_of: Day, s: &PredictConfig) -> Prediction {
        let (x, t_x, t) = (i.x as f64, i.t_x as f64, (as_of - i.first) as f64);
        let m = &self.bgnbd;
        let expected = |h: f64| m.expected_purchases(h, x, t_x, t);
        let horizon = s.clv_horizon_days as f64;
        let spend = self.gamma_gamma.and_then(|g| match (i.x, i.spend) {
            (0, _) => g.params.expected_spend(0.0, 0.0),
            (_, Some(mean)) => g.params.expected_spend(x, mean),
            _ => None,
        });
        let clv = spend.and_then(|avg| match s.annual_discount_rate {
            None | Some(0.0) => expected(horizon).map(|e| e * avg),
            Some(rate) => {
                // Each 30-day step's expected purchases, discounted to today from
                // the step's end.
                let (mut sum, mut before, mut k) = (0.0, 0.0, 1.0);
                while (k - 1.0) * 30.0 < horizon {
                    let end = (k * 30.0f64).min(horizon);
                    let upto = expected(end)?;
                    sum += (upto - before) * avg / (1.0 + rate).powf(end / 365.0);
                    before = upto;
                    k += 1.0;
                }
                Some(sum)
            }
        });
        Prediction {
            p_alive: Some(self.p_alive(i, as_of)),
            expected_purchases: expected(s.horizon_days as f64),
            expected_avg_spend: spend,
            clv,
        }
    }

    /// The first day on or after `from` on which a customer with these inputs (and
    /// no further purchase) has P(alive) below `threshold`: `None` for x = 0
    /// (P(alive) stays 1). P(alive) falls with T; the crossing solves
    /// (r+x)·ln((α+T)/(α+t_x)) > ln((1−θ)/θ) − ln(a/(b+x−1)) for T, then checks
    /// the integer days around it with the same function the rule uses.
    pub fn p_alive_below_from(&self, i: &Inputs, threshold: f64, from: Day) -> Option<Day> {
        if i.x == 0 {
            return None;
        }
        let BgNbd { r, alpha, a, b } = self.bgnbd;
        let (x, t_x) = (i.x as f64, i.t_x as f64);
        let below = |day: Day| self.p_alive(i, day) < threshold;
        let k = ((1.0 - threshold) / threshold).ln() - (a / (b + x - 1.0)).ln();
        let t = (alpha + t_x) * (k / (r + x)).exp() - alpha;
        if !t.is_finite() || t > 1e7 {
            return below(from).then_some(from);
        }
        // Below from the first whole T past t; checked with the rule's own
        // function (rounding can put t a hair either side of the day).
        let mut day = (i.first + t.floor() as Day + 1).max(from);
        if below(day) && (day == from || !below(day - 1)) {
            return Some(day);
        }
        while day > from && below(day - 1) {
            day -= 1;
        }
        while !below(day) {
            day += 1;
        }
        Some(day)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        put_ivarint(out, self.fitted_on as i64);
        put_uvarint(out, self.customers);
        let f = |out: &mut Vec<u8>, v: f64| out.extend_from_slice(&v.to_bits().to_le_bytes());
        let m = &self.bgnbd;
        for v in [m.r, m.alpha, m.a, m.b, self.log_likelihood] {
            f(out, v);
        }
        match &self.gamma_gamma {
            None => out.push(0),
            Some(g) => {
                out.push(1);
                for v in [g.params.p, g.params.q, g.params.gamma] {
                    f(out, v);
                }
                put_uvarint(out, g.customers);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Model, CodecError> {
        if r.u8()? != 1 {
            return Err(CodecError("unknown model record version"));
        }
        let fitted_on = r.day()?;
        let customers = r.uvarint()?;
        let mut f = || -> Result<f64, CodecError> { Ok(f64::from_bits(r.fixed_u64()?)) };
        let bgnbd = BgNbd {
            r: f()?,
            alpha: f()?,
            a: f()?,
            b: f()?,
        };
        let log_likelihood = f()?;
        let gamma_gamma = if r.u8()? == 1 {
            let mut f = || -> Result<f64, CodecError> { Ok(f64::from_bits(r.fixed_u64()?)) };
            let params = GammaGamma {
                p: f()?,
                q: f()?,
                gamma: f()?,
            };
            Some(SpendModel {
                params,
                customers: r.uvarint()?,
            })
        } else {
            None
        };
        Ok(Model {
            fitted_on,
            customers,
            bgnbd,
            log_likelihood,
            gamma_gamma,
        })
    }

    /// `strata model fit` / `model show`'s JSON (α in days, γ in money).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "as_of": crate::day::format_day(self.fitted_on),
            "customers": self.customers,
            "bgnbd": {
                "r": self.bgnbd.r,
                "alpha": self.bgnbd.alpha,
                "a": self.bgnbd.a,
                "b": self.bgnbd.b,
                "log_likelihood": self.log_likelihood,
            },
            "gamma_gamma": self.gamma_gamma,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            fitted_on: 100,
            customers: 10,
            bgnbd: BgNbd {
                r: 0.25,
                alpha: 30.0,
                a: 0.8,
                b: 2.5,
            },
            log_likelihood: -5.0,
            gamma_gamma: Some(SpendModel {
                params: GammaGamma {
                    p: 6.0,
                    q: 3.7,
                    gamma: 15.0,
                },
                customers: 4,
            }),
        }
    }

    #[test]
    fn the_crossing_day_is_the_first_day_below() {
        let m = model();
        for (x, t_x) in [(1, 0), (1, 30), (3, 50), (12, 200), (40, 300)] {
            let i = Inputs {
                x,
                t_x,
                first: 1000,
                spend: None,
            };
            for theta in [0.05, 0.3, 0.7, 0.95] {
                let from = 1000 + t_x;
                let d = m.p_alive_below_from(&i, theta, from).unwrap();
                let p = |day: Day| m.bgnbd.p_alive(x as f64, t_x as f64, (day - 1000) as f64);
                assert!(p(d) < theta, "{x} {t_x} {theta}: below on {d}");
                assert!(
                    d == from || p(d - 1) >= theta,
                    "{x} {t_x} {theta}: not before"
                );
            }
        }
        let never = Inputs {
            x: 0,
            t_x: 0,
            first: 0,
            spend: None,
        };
        assert_eq!(m.p_alive_below_from(&never, 0.3, 5), None);
    }

    #[test]
    fn model_and_histogram_round_trip() {
        let m = model();
        let mut buf = Vec::new();
        m.encode(&mut buf);
        assert_eq!(Model::decode(&mut Reader::new(&buf)).unwrap(), m);
        let mut h = Histogram::default();
        let i = Inputs {
            x: 2,
            t_x: 9,
            first: -4,
            spend: Some(12.5),
        };
        h.count(&i, true);
        h.count(&i, true);
        h.count(&Inputs { x: 0, ..i }, true);
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(Histogram::decode(&buf).unwrap(), h);
        h.count(&i, false);
        h.count(&i, false);
        assert_eq!(h.bg.len(), 1);
        assert!(h.gg.is_empty());
    }

    /// Packed keys sort as the tuples do (signs and widths included).
    #[test]
    fn packed_keys_keep_the_order() {
        let mut keys: Vec<(u32, Day, i32)> = Vec::new();
        for x in [0u32, 1, 7, u32::MAX] {
            for first in [i32::MIN, -5, 0, 3, i32::MAX] {
                for t_x in [0, 1, 400, i32::MAX] {
                    keys.push((x, first, t_x));
                }
            }
        }
        let mut by_tuple = keys.clone();
        by_tuple.sort();
        keys.sort_by_key(|k| k.packed());
        assert_eq!(keys, by_tuple);
        let mut pairs: Vec<(u32, i32)> = vec![(2, -1), (1, 5), (2, i32::MIN), (1, -7), (0, 0)];
        let mut by_tuple = pairs.clone();
        by_tuple.sort();
        pairs.sort_by_key(|k| k.packed());
        assert_eq!(pairs, by_tuple);
    }

    #[test]
    fn spend_buckets_are_fine() {
        for m in [0.01, 1.0, 15.37, 999.99, 123_456.0] {
            let back = spend_of_bucket(spend_bucket(m));
            assert!(((back - m) / m).abs() < 3.4e-4, "{m} → {back}");
        }
    }
}
