//! The Gamma-Gamma model of spend (Fader & Hardie, "The Gamma-Gamma model of
//! monetary value", note 025): a customer's spend per transaction is Gamma(p, ν)
//! around their own mean, with ν ~ Gamma(q, γ) across customers. From x repeat
//! transactions of mean m it gives the customer's expected spend per transaction,
//! a weighted average of m and the population mean: p·(γ + x·m)/(p·x + q − 1).

use serde::{Deserialize, Serialize};

use super::special::{digamma, digamma_ratio, ln_gamma, ln_gamma_ratio, trigamma};
use super::{max_likelihood, FitError, Local};

/// A customer's (or a group's) repeat transactions: how many, their mean spend, and
/// how many customers share them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spend {
    pub x: f64,
    pub mean: f64,
    pub weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
}

impl GammaGamma {
    /// One customer's log-likelihood of their mean spend (note 025, equation 1a).
    pub fn log_likelihood_one(&self, s: &Spend) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        let (x, m) = (s.x, s.mean);
        ln_gamma(p * x + q) - ln_gamma(p * x) - ln_gamma(q)
            + q * gamma.ln()
            + (p * x - 1.0) * m.ln()
            + p * x * x.ln()
            - (p * x + q) * (x * m + gamma).ln()
    }

    pub fn log_likelihood(&self, data: &[Spend]) -> f64 {
        data.iter()
            .map(|s| s.weight * self.log_likelihood_one(s))
            .sum()
    }

    /// E[spend per transaction | x, m]; the population mean p·γ/(q − 1) for a
    /// customer with no repeat transaction. `None` when q ≤ 1 (no finite mean).
    pub fn expected_spend(&self, x: f64, mean: f64) -> Option<f64> {
        let GammaGamma { p, q, gamma } = *self;
        (q > 1.0).then(|| p * (gamma + x * mean) / (p * x + q - 1.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub params: GammaGamma,
    pub log_likelihood: f64,
    /// Customers with at least one repeat transaction (the only ones it covers).
    pub customers: f64,
}

/// Spends with their logarithms and the distinct x values tabulated once: a
/// log-likelihood then costs the log-gammas once per distinct x and one logarithm
/// per row.
///
/// A row's term is arranged for a fit walking out along the ridge p → ∞, γ → 0
/// (spend with no spread within customers): (px − 1)·ln m + px·ln x − (px + q)·ln(xm + γ)
/// = −px·ln(1 + γ/(xm)) − ln m − q·ln(xm + γ), and the log-gammas' difference
/// comes from [`ln_gamma_ratio`]: written directly, terms of ~1e11 cancel to ~1.
struct Grouped {
    xs: Vec<f64>,
    /// (index into `xs`, x·m, ln m, ln(x·m), weight).
    rows: Vec<(usize, f64, f64, f64, f64)>,
}

impl Grouped {
    fn new(data: &[Spend]) -> Grouped {
        let mut xs: Vec<f64> = data.iter().map(|s| s.x).collect();
        xs.sort_unstable_by(f64::total_cmp);
        xs.dedup();
        let rows = data
            .iter()
            .map(|s| {
                let xm = s.x * s.mean;
                (
                    xs.partition_point(|&x| x < s.x),
                    xm,
                    s.mean.ln(),
                    xm.ln(),
                    s.weight,
                )
            })
            .collect();
        Grouped { xs, rows }
    }

    fn log_likelihood(&self, m: &GammaGamma) -> f64 {
        self.local(m).value
    }

    /// The log-likelihood with its gradient and Hessian in (p, q, γ), in one
    /// pass: per distinct x the log-gamma terms (digammas and trigammas of
    /// px + q, px, q), per row one logarithm, ln(1 + γ/(xm)).
    fn local(&self, m: &GammaGamma) -> Local {
        let GammaGamma { p, q, gamma } = *m;
        let ln_g = gamma.ln();
        let base = -ln_gamma(q) + q * ln_g;
        let (dq, tq) = (digamma(q), trigamma(q));
        let mut out = Local::zero(3);
        let mut wx = vec![0.0; self.xs.len()];
        for &(xi, _, _, _, w) in &self.rows {
            wx[xi] += w;
        }
        for (&x, &w) in self.xs.iter().zip(&wx) {
            let px = p * x;
            let v = base + ln_gamma_ratio(px, q);
            let d1 = digamma(px + q);
            let (t1, t0) = (trigamma(px + q), trigamma(px));
            let g = [x * digamma_ratio(px, q), d1 - dq + ln_g, q / gamma];
            let h = [
                [x * x * (t1 - t0), x * t1, 0.0],
                [x * t1, t1 - tq, 1.0 / gamma],
                [0.0, 1.0 / gamma, -q / (gamma * gamma)],
            ];
            out.value += w * v;
            for i in 0..3 {
                out.grad[i] += w * g[i];
                for j in 0..3 {
                    out.hess[i][j] += w * h[i][j];
                }
            }
        }
        for &(xi, xm, ln_m, ln_xm, w) in &self.rows {
            let x = self.xs[xi];
            let px = p * x;
            let l1 = (gamma / xm).ln_1p();
            let ln_den = ln_xm + l1;
            let inv = 1.0 / (xm + gamma);
            out.value += w * (-px * l1 - ln_m - q * ln_den);
            out.grad[0] -= w * x * l1;
            out.grad[1] -= w * ln_den;
            out.grad[2] -= w * (px + q) * inv;
            out.hess[0][2] -= w * x * inv;
            out.hess[1][2] -= w * inv;
            out.hess[2][2] += w * (px + q) * inv * inv;
        }
        out.hess[2][0] = out.hess[0][2];
        out.hess[2][1] = out.hess[1][2];
        out
    }
}

/// The tabulated log-likelihood with its gradient and Hessian (tests).
#[cfg(test)]
pub(crate) fn local_grouped(data: &[Spend], m: &GammaGamma) -> Local {
    Grouped::new(data).local(m)
}

/// Maximum-likelihood parameters over the customers with x ≥ 1 and a positive mean
/// (the others carry no information about spend variation).
pub fn fit(data: &[Spend]) -> Result<Fit, FitError> {
    fit_from(data, None)
}

/// [`fit`] from `start` (e.g. the previous fit's parameters), else from p = 1,
/// q = 1, γ = the mean spend.
pub fn fit_from(data: &[Spend], start: Option<&GammaGamma>) -> Result<Fit, FitError> {
    let data: Vec<Spend> = data
        .iter()
        .copied()
        .filter(|s| s.x >= 1.0 && s.mean > 0.0 && s.weight > 0.0)
        .collect();
    let customers: f64 = data.iter().map(|s| s.weight).sum();
    if customers <= 0.0 {
        return Err(FitError::NoData);
    }
    let g = Grouped::new(&data);
    let model = |v: &[f64]| GammaGamma {
        p: v[0],
        q: v[1],
        gamma: v[2],
    };
    let mean = data.iter().map(|s| s.weight * s.mean).sum::<f64>() / customers;
    let start = match start {
        Some(g) => [g.p, g.q, g.gamma],
        None => [1.0, 1.0, mean.max(1e-6)],
    };
    let best = max_likelihood(&|v| g.local(&model(v)), customers, &start)?;
    let params = model(&best);
    Ok(Fit {
        log_likelihood: g.log_likelihood(&params),
        params,
        customers,
    })
}
