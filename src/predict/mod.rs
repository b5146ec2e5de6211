//! Predictive models of the customer base, fitted on the population:
//! [`bgnbd`] — BG/NBD, P(alive) and expected purchases — and [`gamma_gamma`] —
//! expected spend per purchase day. Pure functions of the population's
//! histories; the likelihoods — with their gradients and Hessians — are written
//! here, maximised by Newton's method ([`newton`]) with argmin's Nelder-Mead as
//! the fallback; log-gamma is libm's, 2F1 a power series ([`special`]).
//! [`model`] connects them to customer state: the population histogram a fit
//! reads, the parameters in force, each customer's figures and the day its
//! P(alive) crosses the churn threshold.

// Vectors and matrices of 3 or 4 parameters, indexed as in the formulas.
#![allow(clippy::needless_range_loop)]

pub mod bgnbd;
pub mod gamma_gamma;
pub mod model;
pub mod special;
pub mod watch;

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

/// A function's value with its gradient and Hessian at one point (the
/// likelihoods compute all three in one pass over their rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub value: f64,
    pub grad: Vec<f64>,
    pub hess: Vec<Vec<f64>>,
}

impl Local {
    pub fn zero(n: usize) -> Local {
        Local {
            value: 0.0,
            grad: vec![0.0; n],
            hess: vec![vec![0.0; n]; n],
        }
    }

    fn is_finite(&self) -> bool {
        self.value.is_finite()
            && self.grad.iter().all(|v| v.is_finite())
            && self.hess.iter().flatten().all(|v| v.is_finite())
    }
}

/// Parameters are searched within e^±`BOUND`: a population whose likelihood rises
/// without bound along some direction (no dropout seen yet: a → 0; spend with no
/// variation within customers: p → ∞) stops there instead of walking the
/// optimizer out to overflow.
const BOUND: f64 = 25.0;

/// The maximum-likelihood parameters: `ll` gives the log-likelihood of a
/// parameter vector over `customers` customers, with its gradient and Hessian in
/// the parameters. The search runs over the parameters' logarithms (they are all
/// positive) from `start`, on the mean negative log-likelihood: Newton's method
/// ([`newton`]), and Nelder-Mead ([`minimize`]) from its result should it fail.
pub fn max_likelihood(
    ll: &dyn Fn(&[f64]) -> Local,
    customers: f64,
    start: &[f64],
) -> Result<Vec<f64>, FitError> {
    let n = start.len();
    let cost = |logs: &[f64]| -> Option<Local> {
        if logs.iter().any(|v| v.abs() > BOUND + 1e-9) {
            return None;
        }
        let p: Vec<f64> = logs.iter().map(|v| v.exp()).collect();
        let l = ll(&p);
        // d/dθᵢ = pᵢ ∂/∂pᵢ; d²/dθᵢdθⱼ = pᵢpⱼ ∂²/∂pᵢ∂pⱼ + δᵢⱼ pᵢ ∂/∂pᵢ; negated, per customer.
        let mut c = Local::zero(n);
        c.value = -l.value / customers;
        for i in 0..n {
            c.grad[i] = -p[i] * l.grad[i] / customers;
            for j in 0..n {
                c.hess[i][j] = -p[i] * p[j] * l.hess[i][j] / customers;
            }
            c.hess[i][i] += c.grad[i];
        }
        c.is_finite().then_some(c)
    };
    let start: Vec<f64> = start.iter().map(|v| v.ln().clamp(-BOUND, BOUND)).collect();
    let best = match newton(&cost, &start) {
        Some(best) => best,
        None => {
            tracing::debug!("Newton's method did not settle; Nelder-Mead takes over.");
            let value = |logs: &[f64]| cost(logs).map_or(f64::INFINITY, |c| c.value);
            minimize(&value, start)?
        }
    };
    Ok(best.iter().map(|v| v.exp()).collect())
}

/// Minimize a smooth function within [−`BOUND`, `BOUND`]ⁿ from `start` by Newton's
/// method with Levenberg–Marquardt damping: each step solves (H + λI)·δ = −g on
/// the coordinates not held at a bound (a coordinate at a bound whose gradient
/// points outward stays there), is clipped to the box, and is taken only if it
/// lowers `f`; λ shrinks after a success and grows after a failure, so steps are
/// Newton's near the minimum (quadratic convergence: a refit from last week's
/// parameters settles in a few passes over the data) and gradient-like far from
/// it. A degenerate population's likelihood keeps rising along a ridge out to a
/// bound (no dropout yet: a → 0; no spread of spend within customers: p → ∞),
/// where each Newton step moves the same distance the same way: after two such
/// steps the step is doubled while `f` goes on falling, so the search reaches the
/// bound in a few passes instead of one unit of log-parameter per pass.
/// Stops when the free gradient's largest component is under 1e-10 (`f` is a
/// mean per customer: far below any parameter's sampling error), or when no step
/// lowers `f` any more (the floor of floating point). `None` when `f` is not
/// finite at the start or the search does not settle in 200 steps.
///
/// Written here rather than taken from argmin: its trust-region solver has no
/// gradient-based stopping rule (it runs to its iteration cap), and `f` gives the
/// value, gradient and Hessian together from one pass over the rows.
pub fn newton(f: &dyn Fn(&[f64]) -> Option<Local>, start: &[f64]) -> Option<Vec<f64>> {
    let n = start.len();
    let mut x = start.to_vec();
    let mut here = f(&x)?;
    let mut lambda = 0.0f64;
    let mut last_step: Option<Vec<f64>> = None;
    let clip = |v: f64| v.clamp(-BOUND, BOUND);
    for _ in 0..200 {
        let free: Vec<usize> = (0..n)
            .filter(|&i| {
                let g = here.grad[i];
                !((x[i] >= BOUND && g < 0.0) || (x[i] <= -BOUND && g > 0.0))
            })
            .collect();
        let worst = free.iter().map(|&i| here.grad[i].abs()).fold(0.0, f64::max);
        if worst < 1e-10 {
            return Some(x);
        }
        // The free coordinates' Hessian and descent direction, damped below.
        let h = free
            .iter()
            .map(|&i| free.iter().map(|&j| here.hess[i][j]).collect::<Vec<f64>>())
            .collect::<Vec<_>>();
        let g: Vec<f64> = free.iter().map(|&i| -here.grad[i]).collect();
        let mut moved = None;
        while lambda < 1e12 {
            if let Some(d) = solve_damped(h.clone(), g.clone(), lambda) {
                // What the quadratic model says the step gains: below what f's
                // rounding can show, there is nothing left to find.
                let gain: f64 = (0..d.len())
                    .map(|k| {
                        d[k] * g[k] - 0.5 * d[k] * (0..d.len()).map(|l| h[k][l] * d[l]).sum::<f64>()
                    })
                    .sum();
                if gain < 1e-12 * here.value.abs().max(1.0) {
                    return Some(x);
                }
                let mut next = x.clone();
                for (k, &i) in free.iter().enumerate() {
                    next[i] = clip(x[i] + d[k]);
                }
                if let Some(there) = f(&next).filter(|t| t.value < here.value) {
                    moved = Some((next, there));
                    lambda /= 4.0;
                    if lambda < 1e-9 {
                        lambda = 0.0;
                    }
                    break;
                }
            }
            // Not a descent (or H + λI not positive definite): lean towards the
            // gradient.
            let scale = free
                .iter()
                .map(|&i| here.hess[i][i].abs())
                .fold(0.0, f64::max);
            lambda = (lambda * 10.0).max(1e-4 * scale.max(1e-12));
        }
        let Some((mut next, mut there)) = moved else {
            // No step lowers f: as close as floating point gets.
            return Some(x);
        };
        // A run of steps of about the same length in about the same direction is
        // a ridge out to a bound (f ≈ c + A·e^(−u) along it: Newton's step is 1 in
        // u, forever): double the step while f goes on falling.
        let step: Vec<f64> = next.iter().zip(&x).map(|(a, b)| a - b).collect();
        if last_step.as_ref().is_some_and(|p| straight_on(p, &step)) {
            // As far as the box allows along the step (not clipped coordinate by
            // coordinate, which would leave the ridge).
            let room = next
                .iter()
                .zip(&step)
                .filter(|(_, d)| d.abs() > 0.0)
                .map(|(v, d)| {
                    if *d > 0.0 {
                        (BOUND - v) / d
                    } else {
                        (-BOUND - v) / d
                    }
                })
                .fold(f64::INFINITY, f64::min);
            let base = next.clone();
            let mut k = 1.0;
            while k < room {
                k = (k * 2.0f64).min(room);
                let far: Vec<f64> = base
                    .iter()
                    .zip(&step)
                    .map(|(v, d)| clip(v + k * d))
                    .collect();
                match f(&far).filter(|t| t.value < there.value) {
                    Some(t) => (next, there) = (far, t),
                    None => break,
                }
            }
        }
        last_step = Some(next.iter().zip(&x).map(|(a, b)| a - b).collect());
        (x, here) = (next, there);
    }
    None
}

/// Whether `step` goes on from `last` (cosine over 0.99, at least half as long).
fn straight_on(last: &[f64], step: &[f64]) -> bool {
    let dot: f64 = last.iter().zip(step).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let (a, b) = (norm(last), norm(step));
    a > 0.0 && b > 0.0 && dot / (a * b) > 0.99 && b > 0.5 * a
}

/// Solve (A + λI)·x = b for a symmetric A by Cholesky; `None` unless A + λI is
/// positive definite.
fn solve_damped(mut a: Vec<Vec<f64>>, b: Vec<f64>, lambda: f64) -> Option<Vec<f64>> {
    let n = b.len();
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += lambda;
    }
    // A = L·Lᵀ in place (lower triangle).
    for j in 0..n {
        let mut d = a[j][j];
        for k in 0..j {
            d -= a[j][k] * a[j][k];
        }
        if !d.is_finite() || d <= 0.0 {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..n {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            a[i][j] = s / d;
        }
    }
    let mut y = b;
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i][k] * y[k];
        }
        y[i] /= a[i][i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k][i] * y[k];
        }
        y[i] /= a[i][i];
    }
    Some(y)
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

    /// The tabulated likelihoods (rearranged against cancellation) equal the
    /// plain per-customer sums, and their gradients and Hessians (what Newton's
    /// method steps on) equal central differences of those, on the CDNOW sample
    /// around points near and far from the fit.
    #[test]
    fn gradients_and_hessians_match_differences() {
        fn check(
            name: &str,
            value: &dyn Fn(&[f64]) -> f64,
            local: &dyn Fn(&[f64]) -> super::Local,
            at: &[f64],
        ) {
            let l = local(at);
            assert!(
                ((l.value - value(at)) / l.value).abs() < 1e-12,
                "{name} value"
            );
            let n = at.len();
            // Central differences with Richardson's extrapolation (error O(h⁴)):
            // (4·D(h/2) − D(h)) / 3.
            let diff = |f: &dyn Fn(&[f64]) -> Vec<f64>, i: usize| -> Vec<f64> {
                let d = |h: f64| {
                    let (mut up, mut down) = (at.to_vec(), at.to_vec());
                    up[i] += h;
                    down[i] -= h;
                    let (u, v) = (f(&up), f(&down));
                    u.iter()
                        .zip(v)
                        .map(|(a, b)| (a - b) / (2.0 * h))
                        .collect::<Vec<f64>>()
                };
                let h = 1e-3 * at[i];
                let (big, small) = (d(h), d(h / 2.0));
                big.iter()
                    .zip(small)
                    .map(|(b, s)| (4.0 * s - b) / 3.0)
                    .collect()
            };
            for i in 0..n {
                let d = diff(&|p| vec![value(p)], i)[0];
                let scale = l.grad[i].abs().max(1.0);
                assert!(
                    (d - l.grad[i]).abs() < 1e-6 * scale,
                    "{name} ∂{i}: {d} vs {}",
                    l.grad[i]
                );
                let row = diff(&|p| local(p).grad, i);
                for j in 0..n {
                    let scale = l.hess[i][j].abs().max(1.0);
                    assert!(
                        (row[j] - l.hess[i][j]).abs() < 1e-6 * scale,
                        "{name} ∂{i}∂{j}: {} vs {}",
                        row[j],
                        l.hess[i][j]
                    );
                    assert_eq!(l.hess[i][j], l.hess[j][i], "{name} symmetric");
                }
            }
        }
        let rows = cdnow();
        let histories: Vec<History> = rows.iter().map(|(h, _)| *h).collect();
        let g = bgnbd::Grouped::new(&histories);
        let bg = |p: &[f64]| BgNbd {
            r: p[0],
            alpha: p[1],
            a: p[2],
            b: p[3],
        };
        for at in [[0.243, 4.414, 0.793, 2.426], [1.5, 20.0, 0.05, 9.0]] {
            check(
                "bgnbd",
                &|p| bg(p).log_likelihood(&histories),
                &|p| g.local(&bg(p)),
                &at,
            );
        }
        let spends: Vec<Spend> = rows
            .iter()
            .filter(|(h, _)| h.x > 0.0)
            .map(|(h, zbar)| Spend {
                x: h.x,
                mean: *zbar,
                weight: 1.0,
            })
            .collect();
        let gg = |p: &[f64]| GammaGamma {
            p: p[0],
            q: p[1],
            gamma: p[2],
        };
        for at in [[6.25, 3.74, 15.44], [0.8, 12.0, 300.0]] {
            check(
                "gamma_gamma",
                &|p| gg(p).log_likelihood(&spends),
                &|p| gamma_gamma::local_grouped(&spends, &gg(p)),
                &at,
            );
        }
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
