//! The special functions the models need beyond `libm`'s log-gamma: Gauss's
//! hypergeometric function 2F1 (the BG/NBD conditional expectation) and a
//! log-sum-exp.

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
}
