//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy
//! way"): while alive a customer buys at a Poisson rate λ ~ Gamma(r, α); after each
//! purchase they drop out with probability p ~ Beta(a, b). From a customer's
//! history — x repeat purchases, the last at t_x, observed for T since the first
//! (one unit of time throughout: strata uses days) — it gives the probability the
//! customer is still alive and the purchases to expect.

use serde::{Deserialize, Serialize};

use super::special::{hyp2f1, ln_gamma, log_sum_exp};
use super::{max_likelihood, FitError, History};

/// The four population parameters (α in the unit of t_x and T).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

impl BgNbd {
    /// One history's log-likelihood (the paper's equation 7, in logs; Hardie's note
    /// 004 for the numerics).
    pub fn log_likelihood_one(&self, h: &History) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = h.x;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
        let a3 = -(r + x) * (alpha + h.t).ln();
        let rest = if x > 0.0 {
            let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (h.t_x + alpha).ln();
            log_sum_exp(a3, a4)
        } else {
            a3
        };
        a1 + a2 + rest
    }

    /// The weighted sum over histories.
    pub fn log_likelihood(&self, data: &[History]) -> f64 {
        data.iter()
            .map(|h| h.weight * self.log_likelihood_one(h))
            .sum()
    }

    /// P(alive | x, t_x, T) (Hardie's note 021): 1 without a repeat purchase,
    /// else 1 / (1 + a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)).
    pub fn p_alive(&self, x: f64, t_x: f64, t: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let BgNbd { r, alpha, a, b } = *self;
        let ln_odds = (a / (b + x - 1.0)).ln() + (r + x) * ((alpha + t) / (alpha + t_x)).ln();
        1.0 / (1.0 + ln_odds.exp())
    }

    /// Expected purchases in the next `horizon`, given the history (equation 10):
    ///
    /// ((a+b+x−1)/(a−1)) · [1 − ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; t/(α+T+t))]
    /// / [1 + 1{x>0} · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)]
    ///
    /// Valid for any a > 0 but a = 1, where both factors of the numerator vanish
    /// (for a < 1 both are negative: the paper's CDNOW fit has a = 0.793): `None`
    /// there, and when 2F1 does not settle or the result is not finite.
    pub fn expected_purchases(&self, horizon: f64, x: f64, t_x: f64, t: f64) -> Option<f64> {
        let BgNbd { r, alpha, a, b } = *self;
        if a == 1.0 {
            return None;
        }
        let z = horizon / (alpha + t + horizon);
        let f = hyp2f1(r + x, b + x, a + b + x - 1.0, z)?;
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - ((alpha + t) / (alpha + t + horizon)).powf(r + x) * f;
        let odds = if x > 0.0 {
            a / (b + x - 1.0) * ((alpha + t) / (alpha + t_x)).powf(r + x)
        } else {
            0.0
        };
        let e = first * second / (1.0 + odds);
        e.is_finite().then_some(e)
    }
}

/// A fit: the parameters, the log-likelihood there, and the customers it covers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub params: BgNbd,
    pub log_likelihood: f64,
    pub customers: f64,
}

/// Histories with their values tabulated once: the distinct x, T and t_x values,
/// and each history as indexes into them. A log-likelihood then costs the
/// log-gammas once per distinct x and the logarithms once per distinct T and t_x
/// (a population has a few hundred of each in days), plus a log-sum-exp per row.
pub struct Grouped {
    xs: Vec<f64>,
    ts: Vec<f64>,
    txs: Vec<f64>,
    rows: Vec<(u32, u32, u32, f64)>,
    pub customers: f64,
    pub mean_t: f64,
}

fn table(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

fn index(table: &[f64], v: f64) -> u32 {
    table.partition_point(|&t| t < v) as u32
}

impl Grouped {
    pub fn new(data: &[History]) -> Grouped {
        let data: Vec<&History> = data.iter().filter(|h| h.weight > 0.0).collect();
        let xs = table(data.iter().map(|h| h.x));
        let ts = table(data.iter().map(|h| h.t));
        let txs = table(data.iter().map(|h| h.t_x));
        let rows = data
            .iter()
            .map(|h| {
                (
                    index(&xs, h.x),
                    index(&ts, h.t),
                    index(&txs, h.t_x),
                    h.weight,
                )
            })
            .collect();
        let customers: f64 = data.iter().map(|h| h.weight).sum();
        let mean_t = data.iter().map(|h| h.weight * h.t).sum::<f64>() / customers.max(1.0);
        Grouped {
            xs,
            ts,
            txs,
            rows,
            customers,
            mean_t,
        }
    }

    /// Σ weight · [`BgNbd::log_likelihood_one`], tabulated.
    pub fn log_likelihood(&self, m: &BgNbd) -> f64 {
        let BgNbd { r, alpha, a, b } = *m;
        let base = -ln_gamma(r) + r * alpha.ln() + ln_gamma(a + b) - ln_gamma(b);
        let per_x: Vec<(f64, f64, f64)> = self
            .xs
            .iter()
            .map(|&x| {
                let c1 = base + ln_gamma(r + x) + ln_gamma(b + x) - ln_gamma(a + b + x);
                let c4 = if x > 0.0 {
                    a.ln() - (b + x - 1.0).ln()
                } else {
                    f64::NAN
                };
                (c1, c4, r + x)
            })
            .collect();
        let lt: Vec<f64> = self.ts.iter().map(|&t| (alpha + t).ln()).collect();
        let ltx: Vec<f64> = self.txs.iter().map(|&t| (alpha + t).ln()).collect();
        let mut sum = 0.0;
        for &(xi, ti, txi, w) in &self.rows {
            let (c1, c4, rx) = per_x[xi as usize];
            let a3 = -rx * lt[ti as usize];
            let rest = if c4.is_nan() {
                a3
            } else {
                log_sum_exp(a3, c4 - rx * ltx[txi as usize])
            };
            sum += w * (c1 + rest);
        }
        sum
    }
}

/// Maximum-likelihood parameters over `data` (Nelder-Mead over the parameters'
/// logarithms, restarted from its best point until it no longer improves).
pub fn fit(data: &[History]) -> Result<Fit, FitError> {
    fit_grouped(&Grouped::new(data), None)
}

/// The fit from `start` (e.g. the previous fit's parameters: a refit a week
/// later settles in far fewer steps), else from r = 1, α = mean T, a = b = 1.
pub fn fit_grouped(g: &Grouped, start: Option<&BgNbd>) -> Result<Fit, FitError> {
    if g.customers <= 0.0 {
        return Err(FitError::NoData);
    }
    let model = |p: &[f64]| BgNbd {
        r: p[0],
        alpha: p[1],
        a: p[2],
        b: p[3],
    };
    // Start from r = 1, α = mean T, a = b = 1: the right scale for α whatever the
    // unit of time.
    let from = match start {
        Some(m) => [m.r, m.alpha, m.a, m.b],
        None => [1.0, g.mean_t.max(1e-3), 1.0, 1.0],
    };
    let best = max_likelihood(&|p| g.log_likelihood(&model(p)), g.customers, &from)?;
    let params = model(&best);
    Ok(Fit {
        log_likelihood: g.log_likelihood(&params),
        params,
        customers: g.customers,
    })
}
