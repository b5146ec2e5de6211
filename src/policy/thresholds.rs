//! Population thresholds: the means, quintile break points and Pareto cut-offs that
//! the relative tiers compare a customer with.
//!
//! Exact definitions (documented in README "Figures"):
//! - means over customers with at least one purchase, kept as integer sums (`n`,
//!   Σlast-purchase-day, Σfrequency, Σmonetary in micro-units) so comparisons never
//!   round. Recency ≤ mean recency ⇔ last day · n ≥ Σ last days, which does not move
//!   as the calendar turns, so one set of thresholds holds for a whole as-of day;
//! - score = 1 + ⌊5·b/n⌋, where b is the number of purchasers strictly worse on that
//!   figure (higher recency, lower frequency, lower monetary). Ties share a score. It
//!   is stored as the four break points at which the score steps up;
//! - Pareto cut-offs as in SPEC §1, over window monetary, descending.

use crate::config::Settings;

/// Thresholds as of one day. `purchasers == 0` means "no population yet".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub purchasers: u64,
    /// Σ of purchasers' last purchase days (days since 1970-01-01).
    pub sum_last_day: i64,
    pub sum_frequency: u64,
    pub sum_micros: u128,
    /// Score steps: score = 1 + #{k : x is strictly better than break[k]}.
    pub r_breaks: Vec<i32>,
    pub f_breaks: Vec<u32>,
    pub m_breaks: Vec<u64>,
    pub pareto_high: Option<u64>,
    pub pareto_medium: Option<u64>,
    /// The predictive models in force (`None` until the first fit).
    pub model: Option<crate::predict::model::Model>,
}

fn count_better<T: PartialOrd>(breaks: &[T], better: impl Fn(&T) -> bool) -> u8 {
    1 + breaks.iter().filter(|b| better(b)).count() as u8
}

impl Thresholds {
    pub fn r_score(&self, recency: i32) -> u8 {
        count_better(&self.r_breaks, |b| recency < *b)
    }
    pub fn f_score(&self, frequency: u32) -> u8 {
        count_better(&self.f_breaks, |b| frequency > *b)
    }
    pub fn m_score(&self, micros: u64) -> u8 {
        count_better(&self.m_breaks, |b| micros > *b)
    }
}

/// Collects every purchaser's (recency, frequency, monetary) and builds exact thresholds.
/// Memory: 16 bytes per purchaser while building.
#[derive(Debug, Default)]
pub struct ThresholdsBuilder {
    recency: Vec<i32>,
    frequency: Vec<u32>,
    monetary: Vec<u64>,
}

/// Break k (1..=4) of an ascending "worse first" order: the value at rank ⌈k·n/5⌉.
/// b ≥ ⌈k·n/5⌉ ⇔ x is strictly better than that value.
fn breaks<T: Copy>(sorted_worse_first: &[T]) -> Vec<T> {
    let n = sorted_worse_first.len();
    if n == 0 {
        return Vec::new();
    }
    (1..=4)
        .map(|k| sorted_worse_first[(k * n).div_ceil(5) - 1])
        .collect()
}

/// Pareto cut-off: walking customers by monetary descending, the monetary of the first
/// customer at which the running total reaches `share` of the total.
fn pareto_cutoff(desc: &[u64], total: u128, share: f64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let target = share * total as f64;
    let mut running: u128 = 0;
    for &m in desc {
        running += m as u128;
        if running as f64 >= target {
            return Some(m);
        }
    }
    desc.last().copied()
}

/// Pareto cut-offs (`value_tiers.high_share`, `medium_share`) over any figure, e.g.
/// every customer's predicted `clv` in micro-units (`value_tiers.method = "clv"`).
pub fn pareto_cutoffs(mut values: Vec<u64>, s: &Settings) -> (Option<u64>, Option<u64>) {
    values.retain(|&v| v > 0);
    values.sort_unstable_by(|a, b| b.cmp(a));
    let total: u128 = values.iter().map(|&v| v as u128).sum();
    let vt = &s.raw.value_tiers;
    (
        pareto_cutoff(&values, total, vt.high_share),
        pareto_cutoff(&values, total, vt.medium_share),
    )
}

impl ThresholdsBuilder {
    /// Add one customer's figures; customers without a purchase (`recency == None`) are
    /// not part of the population.
    pub fn add(&mut self, recency: Option<i32>, frequency: u32, monetary_micros: u64) {
        if let Some(r) = recency {
            self.recency.push(r);
            self.frequency.push(frequency);
            self.monetary.push(monetary_micros);
        }
    }

    pub fn build(mut self, s: &Settings, as_of: i32) -> Thresholds {
        let n = self.recency.len() as u64;
        let sum_recency: i64 = self.recency.iter().map(|&r| r as i64).sum();
        let sum_frequency = self.frequency.iter().map(|&f| f as u64).sum();
        let sum_micros: u128 = self.monetary.iter().map(|&m| m as u128).sum();
        // Recency: worse = larger, so sort descending.
        self.recency.sort_unstable_by(|a, b| b.cmp(a));
        self.frequency.sort_unstable();
        self.monetary.sort_unstable();
        let m_breaks = breaks(&self.monetary);
        self.monetary.reverse();
        let vt = &s.raw.value_tiers;
        Thresholds {
            purchasers: n,
            sum_last_day: n as i64 * as_of as i64 - sum_recency,
            sum_frequency,
            sum_micros,
            r_breaks: breaks(&self.recency),
            f_breaks: breaks(&self.frequency),
            m_breaks,
            pareto_high: pareto_cutoff(&self.monetary, sum_micros, vt.high_share),
            pareto_medium: pareto_cutoff(&self.monetary, sum_micros, vt.medium_share),
            model: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintile_scores_are_percent_ranks() {
        let s = Settings::defaults();
        let mut b = ThresholdsBuilder::default();
        for i in 1..=10u32 {
            b.add(Some(i as i32), i, i as u64 * 10);
        }
        let t = b.build(&s, 100);
        // 10 customers: two per quintile.
        assert_eq!(
            (1..=10).map(|f| t.f_score(f)).collect::<Vec<_>>(),
            [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        );
        assert_eq!(
            (1..=10).map(|r| t.r_score(r)).collect::<Vec<_>>(),
            [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
        );
        // Ties share the score of b = strictly-worse count.
        let mut b = ThresholdsBuilder::default();
        for f in [1, 1, 1, 1, 2] {
            b.add(Some(0), f, 0);
        }
        let t = b.build(&s, 100);
        assert_eq!((t.f_score(1), t.f_score(2)), (1, 5));
    }

    #[test]
    fn pareto_ties_at_the_cutoff_all_go_up() {
        let s = Settings::defaults();
        let mut b = ThresholdsBuilder::default();
        // total 1000; 80% is reached at the 3rd customer (500+200+100 = 800).
        for m in [500, 200, 100, 100, 50, 50] {
            b.add(Some(1), 1, m);
        }
        let t = b.build(&s, 100);
        assert_eq!(t.pareto_high, Some(100));
        // 95%: 950 reached at the 5th (900+50).
        assert_eq!(t.pareto_medium, Some(50));
    }
}
