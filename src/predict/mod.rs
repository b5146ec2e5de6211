//! Predictive models of the customer base, fitted on the population:
//! [`bgnbd`] — BG/NBD, P(alive) and expected purchases — and [`gamma_gamma`] —
//! expected spend per purchase day. Pure functions of the population's
//! histories; the likelihoods are written here, the optimizer is argmin's
//! Nelder-Mead, log-gamma is libm's, 2F1 a power series ([`special`]).
//! [`model`] connects them to customer state: the population histogram a fit
//! reads, the parameters in force, each customer's figures and the day its
//! P(alive) crosses the churn threshold.

pub mod bgnbd;
pub mod gamma_gamma;
pub mod model;
pub mod special;

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;

/// One customer's purchase history in the model's terms, or a group of identical
/// ones (`weight` customers): x repeat purchases, the last t_x after the first,
/// observed for T (`t`) since the first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
    pub weight: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("no customer to fit the model on")]
    NoData,
    #[error("{have} customers with a repeat purchase day, the fit needs predict.min_repeat_customers = {need}")]
    TooFew { have: u64, need: u64 },
    #[error("the optimizer failed: {0}")]
    Optimizer(String),
}

struct Objective<'a>(&'a dyn Fn(&[f64]) -> f64);

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok((self.0)(p))
    }
}

/// The maximum-likelihood parameters: `ll` is the log-likelihood of a parameter
/// vector over `customers` customers; the search runs over the parameters'
/// logarithms (they are all positive) from `start`, on the mean negative
/// log-likelihood (infinite where `ll` is not finite).
pub fn max_likelihood(
    ll: &dyn Fn(&[f64]) -> f64,
    customers: f64,
    start: &[f64],
) -> Result<Vec<f64>, FitError> {
    let nll = |logs: &[f64]| {
        // Parameters within e^±25: a population whose likelihood rises without
        // bound along some direction (no dropout seen yet: a → 0) stops there
        // instead of walking the optimizer out to overflow.
        if logs.iter().any(|v| v.abs() > 25.0) {
            return f64::INFINITY;
        }
        let params: Vec<f64> = logs.iter().map(|v| v.exp()).collect();
        let v = ll(&params);
        if v.is_finite() {
            -v / customers
        } else {
            f64::INFINITY
        }
    };
    let start = start.iter().map(|v| v.ln()).collect();
    Ok(minimize(&nll, start)?.iter().map(|v| v.exp()).collect())
}

/// Minimize `f` from `start`: Nelder-Mead (a simplex of steps of 0.5 around the
/// point, stopped when its values' standard deviation is under 1e-8 — `f` is a
/// mean per customer, so that is far below a parameter's sampling error), restarted
/// from its best point until a run improves the value by less than 1e-9 (a simplex
/// can collapse before the minimum; a fresh one does not).
/// At most 5 runs of 2,000 iterations: real populations settle in a few hundred; a
/// degenerate one (its likelihood rising toward a bound) stops there.
pub fn minimize(f: &dyn Fn(&[f64]) -> f64, start: Vec<f64>) -> Result<Vec<f64>, FitError> {
    let (mut best, mut value) = (start.clone(), f(&start));
    if !value.is_finite() {
        return Err(FitError::Optimizer(
            "the start is not a finite point".into(),
        ));
    }
    for _ in 0..5 {
        let mut simplex = vec![best.clone()];
        for i in 0..best.len() {
            let mut v = best.clone();
            v[i] += 0.5;
            simplex.push(v);
        }
        let solver = NelderMead::new(simplex)
            .with_sd_tolerance(1e-8)
            .map_err(|e| FitError::Optimizer(e.to_string()))?;
        let res = Executor::new(Objective(f), solver)
            .configure(|s| s.max_iters(2_000))
            .run()
            .map_err(|e| FitError::Optimizer(e.to_string()))?;
        let state = res.state();
        let (Some(p), c) = (state.get_best_param(), state.get_best_cost()) else {
            return Err(FitError::Optimizer("no best point".into()));
        };
        let improved = value - c;
        if c < value {
            (best, value) = (p.clone(), c);
        }
        // Settled, or at the bound of the search (see `max_likelihood`): a
        // degenerate population gains nothing from another run along its ridge.
        if improved.abs() < 1e-9 || best.iter().any(|v| v.abs() > 24.0) {
            break;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::bgnbd::{self, BgNbd};
    use super::gamma_gamma::{self, GammaGamma, Spend};
    use super::History;

    /// `lifetimes`' CDNOW calibration summary (Fader, Hardie & Lee 2005): 2,357
    /// customers, time in weeks; with the mean repeat transaction value `zbar`.
    fn cdnow() -> Vec<(History, f64)> {
        include_str!("../../tests/data/cdnow_customers_summary_with_transactions.csv")
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
                let h = History {
                    x: f[1],
                    t_x: f[2],
                    t: f[3],
                    weight: 1.0,
                };
                (h, f[4])
            })
            .collect()
    }

    fn within(got: f64, want: f64, rel: f64) -> bool {
        ((got - want) / want).abs() <= rel
    }

    /// The published BG/NBD fit of the CDNOW sample: r = 0.243, α = 4.414 (weeks),
    /// a = 0.793, b = 2.426, LL = −9582.4 (Fader, Hardie & Lee 2005), to 0.5 %.
    #[test]
    fn bgnbd_reproduces_the_published_cdnow_fit() {
        let data: Vec<History> = cdnow().into_iter().map(|(h, _)| h).collect();
        assert_eq!(data.len(), 2357);
        let f = bgnbd::fit(&data).unwrap();
        let p = f.params;
        for (name, got, want) in [
            ("r", p.r, 0.243),
            ("alpha", p.alpha, 4.414),
            ("a", p.a, 0.793),
            ("b", p.b, 2.426),
            ("log_likelihood", f.log_likelihood, -9582.4),
        ] {
            assert!(within(got, want, 0.005), "{name}: {got} vs {want}");
        }
        // It is a maximum: moving any parameter lowers the likelihood.
        for i in 0..4 {
            for step in [0.99, 1.01] {
                let mut v = [p.r, p.alpha, p.a, p.b];
                v[i] *= step;
                let q = BgNbd {
                    r: v[0],
                    alpha: v[1],
                    a: v[2],
                    b: v[3],
                };
                assert!(q.log_likelihood(&data) < f.log_likelihood);
            }
        }
    }

    /// The published Gamma-Gamma fit over the 946 repeat customers: p = 6.25,
    /// q = 3.74, γ = 15.44 (Fader & Hardie, note 025), to 0.5 %.
    #[test]
    fn gamma_gamma_reproduces_the_published_cdnow_fit() {
        let data: Vec<Spend> = cdnow()
            .into_iter()
            .map(|(h, zbar)| Spend {
                x: h.x,
                mean: zbar,
                weight: 1.0,
            })
            .collect();
        let f = gamma_gamma::fit(&data).unwrap();
        assert_eq!(f.customers, 946.0);
        let p = f.params;
        for (name, got, want) in [
            ("p", p.p, 6.25),
            ("q", p.q, 3.74),
            ("gamma", p.gamma, 15.44),
        ] {
            assert!(within(got, want, 0.005), "{name}: {got} vs {want}");
        }
        // The conditional mean shrinks a customer's own mean toward the
        // population's p·γ/(q−1), less so with more transactions.
        let population = p.p * p.gamma / (p.q - 1.0);
        assert!((p.expected_spend(0.0, 0.0).unwrap() - population).abs() < 1e-9);
        let one = p.expected_spend(1.0, 100.0).unwrap();
        let many = p.expected_spend(20.0, 100.0).unwrap();
        assert!(population < one && one < many && many < 100.0);
    }

    /// Weights count customers: a group of k identical histories is the same as k
    /// copies (what a compressed histogram of the population relies on).
    #[test]
    fn weights_count_customers() {
        let m = BgNbd {
            r: 0.3,
            alpha: 30.0,
            a: 0.8,
            b: 2.4,
        };
        let h = History {
            x: 3.0,
            t_x: 40.0,
            t: 200.0,
            weight: 1.0,
        };
        let copies = vec![h; 7];
        let grouped = [History { weight: 7.0, ..h }];
        let (a, b) = (m.log_likelihood(&copies), m.log_likelihood(&grouped));
        assert!(((a - b) / a).abs() < 1e-12);
        let g = GammaGamma {
            p: 6.0,
            q: 3.7,
            gamma: 15.0,
        };
        let s = Spend {
            x: 2.0,
            mean: 30.0,
            weight: 1.0,
        };
        let (a, b) = (
            g.log_likelihood(&[s; 5]),
            g.log_likelihood(&[Spend { weight: 5.0, ..s }]),
        );
        assert!(((a - b) / a).abs() < 1e-12);
    }

    /// P(alive) and the conditional expectation equal the paper's formulas
    /// computed here directly (no logs, the 2F1 series summed in place), and
    /// behave as they must: P(alive) is 1 without a repeat purchase, falls as time
    /// passes without one; expected purchases grow with the horizon.
    #[test]
    fn per_customer_figures_follow_the_formulas() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793 + 1.0,
            b: 2.426,
        };
        let direct_p_alive = |x: f64, t_x: f64, t: f64| {
            1.0 / (1.0 + m.a / (m.b + x - 1.0) * ((m.alpha + t) / (m.alpha + t_x)).powf(m.r + x))
        };
        let direct_2f1 = |a: f64, b: f64, c: f64, z: f64| {
            let (mut s, mut term) = (1.0, 1.0);
            for k in 0..100_000 {
                let k = k as f64;
                term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
                s += term;
                if term.abs() < 1e-18 * s {
                    break;
                }
            }
            s
        };
        let direct_e = |t: f64, x: f64, t_x: f64, big_t: f64| {
            let z = t / (m.alpha + big_t + t);
            let first = (m.a + m.b + x - 1.0) / (m.a - 1.0);
            let second = 1.0
                - ((m.alpha + big_t) / (m.alpha + big_t + t)).powf(m.r + x)
                    * direct_2f1(m.r + x, m.b + x, m.a + m.b + x - 1.0, z);
            let den = 1.0
                + if x > 0.0 {
                    m.a / (m.b + x - 1.0) * ((m.alpha + big_t) / (m.alpha + t_x)).powf(m.r + x)
                } else {
                    0.0
                };
            first * second / den
        };
        let rel = |a: f64, b: f64| ((a - b) / b).abs();
        for (x, t_x, t) in [
            (1.0, 2.0, 38.0),
            (2.0, 30.4, 38.9),
            (7.0, 35.0, 39.0),
            (20.0, 10.0, 50.0),
        ] {
            assert!(rel(m.p_alive(x, t_x, t), direct_p_alive(x, t_x, t)) < 1e-12);
            for horizon in [1.0, 13.0, 39.0] {
                let got = m.expected_purchases(horizon, x, t_x, t).unwrap();
                assert!(
                    rel(got, direct_e(horizon, x, t_x, t)) < 1e-9,
                    "{x} {t_x} {t} {horizon}"
                );
            }
        }
        assert_eq!(m.p_alive(0.0, 0.0, 30.0), 1.0);
        assert!(m.p_alive(3.0, 10.0, 20.0) > m.p_alive(3.0, 10.0, 40.0));
        assert!(
            m.expected_purchases(10.0, 3.0, 10.0, 20.0)
                < m.expected_purchases(20.0, 3.0, 10.0, 20.0)
        );
        // a < 1 (the CDNOW fit): the formula holds, both factors turn negative.
        let below = BgNbd { a: 0.793, ..m };
        let e = below.expected_purchases(39.0, 2.0, 30.4, 38.9).unwrap();
        let first = (below.a + below.b + 1.0) / (below.a - 1.0);
        let z = 39.0 / (below.alpha + 38.9 + 39.0);
        let second = 1.0
            - ((below.alpha + 38.9) / (below.alpha + 77.9)).powf(below.r + 2.0)
                * direct_2f1(below.r + 2.0, below.b + 2.0, below.a + below.b + 1.0, z);
        let den = 1.0
            + below.a / (below.b + 1.0)
                * ((below.alpha + 38.9) / (below.alpha + 30.4)).powf(below.r + 2.0);
        assert!(e > 0.0 && rel(e, first * second / den) < 1e-9, "{e}");
        assert_eq!(
            BgNbd { a: 1.0, ..m }.expected_purchases(10.0, 1.0, 1.0, 5.0),
            None
        );
    }
}
