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
    /// `None` when a ≤ 1 (the expectation is infinite) or 2F1 does not settle.
    pub fn expected_purchases(&self, horizon: f64, x: f64, t_x: f64, t: f64) -> Option<f64> {
        let BgNbd { r, alpha, a, b } = *self;
        if a <= 1.0 {
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
        Some(first * second / (1.0 + odds))
    }
}

/// A fit: the parameters, the log-likelihood there, and the customers it covers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub params: BgNbd,
    pub log_likelihood: f64,
    pub customers: f64,
}

/// Maximum-likelihood parameters over `data` (Nelder-Mead over the parameters'
/// logarithms, restarted from its best point until it no longer improves).
pub fn fit(data: &[History]) -> Result<Fit, FitError> {
    let customers: f64 = data.iter().map(|h| h.weight).sum();
    if customers <= 0.0 {
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
    let mean_t = data.iter().map(|h| h.weight * h.t).sum::<f64>() / customers;
    let best = max_likelihood(
        &|p| model(p).log_likelihood(data),
        customers,
        &[1.0, mean_t.max(1e-3), 1.0, 1.0],
    )?;
    let params = model(&best);
    Ok(Fit {
        log_likelihood: params.log_likelihood(data),
        params,
        customers,
    })
}
