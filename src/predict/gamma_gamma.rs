//! The Gamma-Gamma model of spend (Fader & Hardie, "The Gamma-Gamma model of
//! monetary value", note 025): a customer's spend per transaction is Gamma(p, ν)
//! around their own mean, with ν ~ Gamma(q, γ) across customers. From x repeat
//! transactions of mean m it gives the customer's expected spend per transaction,
//! a weighted average of m and the population mean: p·(γ + x·m)/(p·x + q − 1).

use serde::{Deserialize, Serialize};

use super::special::ln_gamma;
use super::{max_likelihood, FitError};

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
struct Grouped {
    xs: Vec<f64>,
    /// (index into `xs`, mean, ln mean, weight).
    rows: Vec<(usize, f64, f64, f64)>,
}

impl Grouped {
    fn new(data: &[Spend]) -> Grouped {
        let mut xs: Vec<f64> = data.iter().map(|s| s.x).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let rows = data
            .iter()
            .map(|s| {
                (
                    xs.partition_point(|&x| x < s.x),
                    s.mean,
                    s.mean.ln(),
                    s.weight,
                )
            })
            .collect();
        Grouped { xs, rows }
    }

    fn log_likelihood(&self, m: &GammaGamma) -> f64 {
        let GammaGamma { p, q, gamma } = *m;
        let base = -ln_gamma(q) + q * gamma.ln();
        let per_x: Vec<f64> = self
            .xs
            .iter()
            .map(|&x| base + ln_gamma(p * x + q) - ln_gamma(p * x) + p * x * x.ln())
            .collect();
        let mut sum = 0.0;
        for &(xi, mean, ln_mean, w) in &self.rows {
            let x = self.xs[xi];
            sum +=
                w * (per_x[xi] + (p * x - 1.0) * ln_mean - (p * x + q) * (x * mean + gamma).ln());
        }
        sum
    }
}

/// Maximum-likelihood parameters over the customers with x ≥ 1 and a positive mean
/// (the others carry no information about spend variation).
pub fn fit(data: &[Spend]) -> Result<Fit, FitError> {
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
    let start = [1.0, 1.0, mean.max(1e-6)];
    let best = max_likelihood(&|v| g.log_likelihood(&model(v)), customers, &start)?;
    let params = model(&best);
    Ok(Fit {
        log_likelihood: params.log_likelihood(&data),
        params,
        customers,
    })
}
