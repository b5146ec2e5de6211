//! The special functions the models need beyond `libm`'s log-gamma: Gauss's
//! hypergeometric function 2F1 (the BG/NBD conditional expectation), a
//! log-sum-exp, and the digamma and trigamma functions (the likelihoods'
//! gradients and Hessians).

/// 2F1(a, b; c; z) for 0 ≤ z < 1 by its power series, Σₖ (a)ₖ(b)ₖ/(c)ₖ zᵏ/k!,
/// summed until a term no longer changes the sum. For z > 1/2 with c − a − b > 0
/// it goes through Euler's transformation,
/// 2F1(a, b; c; z) = (1 − z)^(c−a−b) 2F1(c − a, c − b; c; z), whose terms fall off
/// faster there. `None` when the series does not settle in `MAX_TERMS` (the
/// caller's parameters are then far outside what a fit gives).
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&z) || c <= 0.0 && c.fract() == 0.0 {
        return None;
    }
    if z > 0.5 && c - a - b > 0.0 {
        // Not when c − a − b is huge (a fit at its bound, a, b ~ 1e9): its terms
        // overflow and (1 − z)^(c−a−b) underflows; the direct series converges.
        let euler = series(c - a, c - b, c, z).map(|s| s * (1.0 - z).powf(c - a - b));
        if let Some(v) = euler.filter(|v| v.is_finite() && *v > 0.0) {
            return Some(v);
        }
    }
    series(a, b, c, z)
}

const MAX_TERMS: usize = 1_000_000;

fn series(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for k in 0..MAX_TERMS {
        let k = k as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        let next = sum + term;
        if next == sum || !next.is_finite() {
            return next.is_finite().then_some(next);
        }
        sum = next;
    }
    None
}

/// ln(eˣ + eʸ) without overflow.
pub fn log_sum_exp(x: f64, y: f64) -> f64 {
    let m = x.max(y);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((x - m).exp() + (y - m).exp()).ln()
}

/// ln Γ(x), x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ln Γ(z + a) − ln Γ(z), z, a > 0, without the cancellation of subtracting two
/// log-gammas of a large z (a fit walking a ridge has z ~ 1e10: each log-gamma
/// ~ 2e11, the difference ~ 23, so the direct form keeps five digits). For
/// z ≥ 10 Stirling's series, arranged as (z − ½)·ln(1 + a/z) + a·ln(z + a) − a
/// plus the series' terms' difference; below, the direct form (small values).
pub fn ln_gamma_ratio(z: f64, a: f64) -> f64 {
    if z < 10.0 {
        return ln_gamma(z + a) - ln_gamma(z);
    }
    fn tail(w: f64) -> f64 {
        let z2 = 1.0 / (w * w);
        (1.0 / w) * (1.0 / 12.0 - z2 * (1.0 / 360.0 - z2 * (1.0 / 1260.0 - z2 / 1680.0)))
    }
    (z - 0.5) * (a / z).ln_1p() + a * (z + a).ln() - a + (tail(z + a) - tail(z))
}

/// ψ(z + a) − ψ(z), z, a > 0: for z ≥ 10 the asymptotic series' difference,
/// ln(1 + a/z) first (each ψ ~ ln z, the difference ~ a/z); below, directly.
pub fn digamma_ratio(z: f64, a: f64) -> f64 {
    if z < 10.0 {
        return digamma(z + a) - digamma(z);
    }
    fn tail(w: f64) -> f64 {
        let z2 = 1.0 / (w * w);
        0.5 / w
            + z2 * (1.0 / 12.0
                - z2 * (1.0 / 120.0 - z2 * (1.0 / 252.0 - z2 * (1.0 / 240.0 - z2 / 132.0))))
    }
    (a / z).ln_1p() - (tail(z + a) - tail(z))
}

/// ψ(x) = d ln Γ(x)/dx, x > 0: the recurrence ψ(x) = ψ(x + 1) − 1/x up to x ≥ 10,
/// then the asymptotic series ln x − 1/(2x) − Σ B₂ₖ/(2k x²ᵏ) (to x⁻¹², so the
/// error is below 1e-15 relative there).
pub fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let z = 1.0 / (x * x);
    let series = z
        * (1.0 / 12.0
            - z * (1.0 / 120.0 - z * (1.0 / 252.0 - z * (1.0 / 240.0 - z * (1.0 / 132.0)))));
    acc + x.ln() - 0.5 / x - series
}

/// ψ₁(x) = d² ln Γ(x)/dx², x > 0: ψ₁(x) = ψ₁(x + 1) + 1/x² up to x ≥ 10, then
/// 1/x + 1/(2x²) + Σ B₂ₖ/x²ᵏ⁺¹.
pub fn trigamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let z = 1.0 / (x * x);
    let series = (1.0 / x)
        * z
        * (1.0 / 6.0 - z * (1.0 / 30.0 - z * (1.0 / 42.0 - z * (1.0 / 30.0 - z * (5.0 / 66.0)))));
    acc + 1.0 / x + 0.5 * z + series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    /// Closed forms: 2F1(1, 1; 2; z) = −ln(1 − z)/z; 2F1(a, b; b; z) = (1 − z)^−a;
    /// 2F1(1/2, 1; 3/2; z²) = atanh(z)/z — on both sides of z = 1/2 (the series
    /// and the Euler transformation).
    #[test]
    fn hyp2f1_matches_closed_forms() {
        for z in [0.0, 0.01, 0.3, 0.5, 0.6, 0.9, 0.99] {
            let want = if z == 0.0 {
                1.0
            } else {
                -(1.0f64 - z).ln() / z
            };
            assert!(close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), want), "z {z}");
            assert!(close(
                hyp2f1(2.7, 1.3, 1.3, z).unwrap(),
                (1.0 - z).powf(-2.7)
            ));
            let s = z.sqrt();
            let want = if z == 0.0 { 1.0 } else { s.atanh() / s };
            assert!(close(hyp2f1(0.5, 1.0, 1.5, z).unwrap(), want), "z {z}");
            // Euler's transformation region with c − a − b > 0.
            let (a, b, c) = (0.4, 0.7, 3.1);
            let direct = series(a, b, c, z).unwrap();
            assert!(close(hyp2f1(a, b, c, z).unwrap(), direct), "z {z}");
        }
        // c − a − b huge (BG/NBD at its bound): the direct series, finite.
        let (a, b, c, z) = (3.0, 6.2e10, 6.3e10, 0.9);
        let v = hyp2f1(a, b, c, z).unwrap();
        assert!(close(v, series(a, b, c, z).unwrap()) && v.is_finite());
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), None);
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, -0.1), None);
    }

    #[test]
    fn log_sum_exp_and_ln_gamma() {
        assert!(close(log_sum_exp(1000.0, 1000.0), 1000.0 + 2f64.ln()));
        assert!(close(log_sum_exp(f64::NEG_INFINITY, 3.0), 3.0));
        assert!(close(ln_gamma(5.0), 24f64.ln()));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln()));
    }

    /// The ratio against the direct difference where that is exact enough, and
    /// against Σ ln(z + k) (lnΓ(z + n) / Γ(z) for an integer n) at huge z.
    #[test]
    fn ln_gamma_ratio_is_exact() {
        for (z, a) in [
            (0.3, 2.0),
            (9.9, 0.01),
            (10.0, 3.7),
            (57.5, 0.25),
            (1e3, 40.0),
        ] {
            let direct = ln_gamma(z + a) - ln_gamma(z);
            assert!(
                (ln_gamma_ratio(z, a) - direct).abs() < 1e-12 * direct.abs().max(1.0),
                "{z} {a}"
            );
        }
        for z in [12.5, 3e4, 7.2e9, 6.5e10] {
            for n in [1, 2, 7] {
                let sum: f64 = (0..n).map(|k| (z + k as f64).ln()).sum();
                assert!(
                    (ln_gamma_ratio(z, n as f64) - sum).abs() < 1e-13 * sum,
                    "{z} {n}"
                );
                // ψ(z + n) − ψ(z) = Σ 1/(z + k).
                let sum: f64 = (0..n).map(|k| 1.0 / (z + k as f64)).sum();
                assert!(
                    (digamma_ratio(z, n as f64) - sum).abs() < 1e-12 * sum,
                    "{z} {n}"
                );
            }
        }
        for (z, a) in [(0.3, 2.0), (10.0, 3.7), (57.5, 0.25)] {
            let direct = digamma(z + a) - digamma(z);
            assert!((digamma_ratio(z, a) - direct).abs() < 1e-12 * direct.abs().max(1.0));
        }
    }

    /// ψ(1) = −γ (Euler–Mascheroni), ψ(1/2) = −γ − 2 ln 2, ψ₁(1) = π²/6,
    /// ψ₁(1/2) = π²/2; the recurrences; and both against central differences of
    /// ln Γ and ψ from tiny to huge arguments (the fits' bounds are e^±25).
    #[test]
    fn digamma_and_trigamma() {
        let euler = 0.577_215_664_901_532_9;
        let pi2 = std::f64::consts::PI.powi(2);
        assert!(close(digamma(1.0), -euler));
        assert!(close(digamma(0.5), -euler - 2.0 * 2f64.ln()));
        assert!(close(trigamma(1.0), pi2 / 6.0));
        assert!(close(trigamma(0.5), pi2 / 2.0));
        for x in [0.013, 0.7, 3.3, 9.99, 10.0, 57.0, 1e5, 7e10] {
            assert!(close(digamma(x + 1.0), digamma(x) + 1.0 / x), "{x}");
            assert!(close(trigamma(x + 1.0), trigamma(x) - 1.0 / (x * x)), "{x}");
        }
        for x in [0.05, 0.9, 4.2, 12.5, 300.0] {
            let h = 1e-5 * x;
            let d = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(
                (d - digamma(x)).abs() < 1e-6 * digamma(x).abs().max(1.0),
                "{x}"
            );
            let t = (digamma(x + h) - digamma(x - h)) / (2.0 * h);
            assert!((t - trigamma(x)).abs() < 1e-6 * trigamma(x), "{x}");
        }
    }
}
