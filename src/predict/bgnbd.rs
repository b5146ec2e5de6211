//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy
//! way"): while alive a customer buys at a Poisson rate λ ~ Gamma(r, α); after each
//! purchase they drop out with probability p ~ Beta(a, b). From a customer's
//! history — x repeat purchases, the last at t_x, observed for T since the first
//! (one unit of time throughout: strata uses days) — it gives the probability the
//! customer is still alive and the purchases to expect.

use serde::{Deserialize, Serialize};

use super::special::{digamma_ratio, hyp2f1, ln_gamma, ln_gamma_ratio, log_sum_exp, trigamma};
use super::{max_likelihood, FitError, History, Local};

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

/// The part of a history's log-likelihood that depends on x alone:
/// ln Γ(r+x)/Γ(r) + r·ln α + ln Γ(b+x)/Γ(b) − ln Γ(a+b+x)/Γ(a+b), each ratio
/// without the cancellation of two large log-gammas ([`ln_gamma_ratio`]: a fit
/// walking out to b → ∞ has them ~1e11 apart from a difference ~10).
fn c1(m: &BgNbd, x: f64) -> f64 {
    let BgNbd { r, alpha, a, b } = *m;
    ln_gamma_ratio(r, x) + r * alpha.ln() + ln_gamma_ratio(b, x) - ln_gamma_ratio(a + b, x)
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
    v.sort_unstable_by(f64::total_cmp);
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
        let per_x: Vec<(f64, f64, f64)> = self
            .xs
            .iter()
            .map(|&x| {
                let c1 = c1(m, x);
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

impl Grouped {
    /// [`log_likelihood`](Self::log_likelihood) with its gradient and Hessian in
    /// (r, α, a, b), in one pass. Each row is c₁(x) + ln(e^A₃ + e^A₄) with
    /// A₃ = −(r+x)·ln(α+T) and, for x > 0, A₄ = ln a − ln(b+x−1) − (r+x)·ln(α+t_x):
    /// the log-sum-exp's gradient is the weights w₃, w₄ (a softmax) over ∇A₃, ∇A₄,
    /// its Hessian w₃H₃ + w₄H₄ + w₃w₄(∇A₃−∇A₄)(∇A₃−∇A₄)ᵀ. c₁'s derivatives are
    /// digammas and trigammas, once per distinct x.
    pub fn local(&self, m: &BgNbd) -> Local {
        let BgNbd { r, alpha, a, b } = *m;
        let (ab, ln_alpha) = (a + b, alpha.ln());
        let (tr0, tab0, tb0) = (trigamma(r), trigamma(ab), trigamma(b));
        let mut out = Local::zero(4);
        // Per x: the weight of its rows, then c₁ and its derivatives times it.
        let mut wx = vec![0.0; self.xs.len()];
        for &(xi, _, _, w) in &self.rows {
            wx[xi as usize] += w;
        }
        for (&x, &w) in self.xs.iter().zip(&wx) {
            let d_ab = digamma_ratio(ab, x);
            let g = [
                ln_alpha + digamma_ratio(r, x),
                r / alpha,
                -d_ab,
                digamma_ratio(b, x) - d_ab,
            ];
            let (t_r, t_abx) = (trigamma(r + x) - tr0, tab0 - trigamma(ab + x));
            let h = [
                [t_r, 1.0 / alpha, 0.0, 0.0],
                [1.0 / alpha, -r / (alpha * alpha), 0.0, 0.0],
                [0.0, 0.0, t_abx, t_abx],
                [0.0, 0.0, t_abx, t_abx - tb0 + trigamma(b + x)],
            ];
            out.value += w * c1(m, x);
            for i in 0..4 {
                out.grad[i] += w * g[i];
                for j in 0..4 {
                    out.hess[i][j] += w * h[i][j];
                }
            }
        }
        let lt: Vec<(f64, f64)> = self
            .ts
            .iter()
            .map(|&t| ((alpha + t).ln(), 1.0 / (alpha + t)))
            .collect();
        let ltx: Vec<(f64, f64)> = self
            .txs
            .iter()
            .map(|&t| ((alpha + t).ln(), 1.0 / (alpha + t)))
            .collect();
        let per_x: Vec<(f64, f64, f64)> = self
            .xs
            .iter()
            .map(|&x| (r + x, a.ln() - (b + x - 1.0).ln(), 1.0 / (b + x - 1.0)))
            .collect();
        // Sums of the rows' terms: value; gradient in r, α, a, b; Hessian entries
        // rr, rα, αα, aa, ab, bb, ra, rb, αa, αb (the others are symmetric).
        let (mut v, mut g, mut h) = (0.0, [0.0f64; 4], [0.0f64; 10]);
        for &(xi, ti, txi, w) in &self.rows {
            let (rx, c4, inv_b) = per_x[xi as usize];
            let (l3, i3) = lt[ti as usize];
            let a3 = -rx * l3;
            let g3 = [-l3, -rx * i3];
            if self.xs[xi as usize] == 0.0 {
                v += w * a3;
                g[0] += w * g3[0];
                g[1] += w * g3[1];
                h[1] += w * -i3;
                h[2] += w * rx * i3 * i3;
                continue;
            }
            let (l4, i4) = ltx[txi as usize];
            let a4 = c4 - rx * l4;
            let g4 = [-l4, -rx * i4, 1.0 / a, -inv_b];
            // w₄ = e^A₄ / (e^A₃ + e^A₄), computed from the smaller exponent.
            let (hi, lo) = if a3 > a4 { (a3, a4) } else { (a4, a3) };
            let e = (lo - hi).exp();
            let w_lo = e / (1.0 + e);
            let w4 = if a4 > a3 { 1.0 - w_lo } else { w_lo };
            let w3 = 1.0 - w4;
            v += w * (hi + e.ln_1p());
            let d = [g3[0] - g4[0], g3[1] - g4[1], -g4[2], -g4[3]];
            let c = w3 * w4;
            g[0] += w * (w3 * g3[0] + w4 * g4[0]);
            g[1] += w * (w3 * g3[1] + w4 * g4[1]);
            g[2] += w * (w4 * g4[2]);
            g[3] += w * (w4 * g4[3]);
            // Second derivatives of A₃ (rα, αα) and A₄ (rα, αα, aa, bb).
            h[0] += w * c * d[0] * d[0];
            h[1] += w * (w3 * -i3 + w4 * -i4 + c * d[0] * d[1]);
            h[2] += w * (w3 * rx * i3 * i3 + w4 * rx * i4 * i4 + c * d[1] * d[1]);
            h[3] += w * (w4 * -(1.0 / (a * a)) + c * d[2] * d[2]);
            h[4] += w * c * d[2] * d[3];
            h[5] += w * (w4 * inv_b * inv_b + c * d[3] * d[3]);
            h[6] += w * c * d[0] * d[2];
            h[7] += w * c * d[0] * d[3];
            h[8] += w * c * d[1] * d[2];
            h[9] += w * c * d[1] * d[3];
        }
        out.value += v;
        for i in 0..4 {
            out.grad[i] += g[i];
        }
        let idx = [
            (0, 0, 0),
            (0, 1, 1),
            (1, 1, 2),
            (2, 2, 3),
            (2, 3, 4),
            (3, 3, 5),
        ];
        let off = [(0, 2, 6), (0, 3, 7), (1, 2, 8), (1, 3, 9)];
        for &(i, j, k) in idx.iter().chain(&off) {
            out.hess[i][j] += h[k];
            if i != j {
                out.hess[j][i] += h[k];
            }
        }
        out
    }
}

/// Maximum-likelihood parameters over `data` (Newton's method over the
/// parameters' logarithms, see [`max_likelihood`]).
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
    let best = max_likelihood(&|p| g.local(&model(p)), g.customers, &from)?;
    let params = model(&best);
    Ok(Fit {
        log_likelihood: g.log_likelihood(&params),
        params,
        customers: g.customers,
    })
}
