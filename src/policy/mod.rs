//! Tier and churn policy: pure functions from a customer's [`Figures`] and the
//! population [`Thresholds`] to segments, scores, value tier, lifecycle stage and the
//! active churn rules (SPEC §1 and §4). Nothing here keeps state or does IO.

mod thresholds;

pub use thresholds::{pareto_cutoffs, Thresholds, ThresholdsBuilder};

use serde::Serialize;

use crate::config::{Settings, ThresholdMode, ValueMethod};
use crate::customer::Figures;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    None,
    ImportantValue,
    ImportantDevelop,
    ImportantKeep,
    ImportantRetain,
    GeneralValue,
    GeneralDevelop,
    GeneralKeep,
    GeneralRetain,
}

impl Segment {
    pub const ALL: [Segment; 9] = [
        Segment::None,
        Segment::ImportantValue,
        Segment::ImportantDevelop,
        Segment::ImportantKeep,
        Segment::ImportantRetain,
        Segment::GeneralValue,
        Segment::GeneralDevelop,
        Segment::GeneralKeep,
        Segment::GeneralRetain,
    ];

    pub fn from_rfm(r_high: bool, f_high: bool, m_high: bool) -> Segment {
        match (r_high, f_high, m_high) {
            (true, true, true) => Segment::ImportantValue,
            (true, false, true) => Segment::ImportantDevelop,
            (false, true, true) => Segment::ImportantKeep,
            (false, false, true) => Segment::ImportantRetain,
            (true, true, false) => Segment::GeneralValue,
            (true, false, false) => Segment::GeneralDevelop,
            (false, true, false) => Segment::GeneralKeep,
            (false, false, false) => Segment::GeneralRetain,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Segment::None => "none",
            Segment::ImportantValue => "important_value",
            Segment::ImportantDevelop => "important_develop",
            Segment::ImportantKeep => "important_keep",
            Segment::ImportantRetain => "important_retain",
            Segment::GeneralValue => "general_value",
            Segment::GeneralDevelop => "general_develop",
            Segment::GeneralKeep => "general_keep",
            Segment::GeneralRetain => "general_retain",
        }
    }

    pub fn is_important(self) -> bool {
        matches!(
            self,
            Segment::ImportantValue
                | Segment::ImportantDevelop
                | Segment::ImportantKeep
                | Segment::ImportantRetain
        )
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Segment> {
        Segment::ALL.get(c as usize).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueTier {
    Low,
    Medium,
    High,
}

impl ValueTier {
    pub const ALL: [ValueTier; 3] = [ValueTier::Low, ValueTier::Medium, ValueTier::High];

    pub fn as_str(self) -> &'static str {
        match self {
            ValueTier::Low => "low",
            ValueTier::Medium => "medium",
            ValueTier::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    // The discriminant is the code a stored record holds: new stages go last.
    New,
    FirstPurchase,
    Repeat,
    Super,
    Lapsed,
    /// `lifecycle.path = "high_ticket"`: no purchase yet.
    Prospect,
    /// `high_ticket`: no purchase yet, an intent interaction within `intent_days`.
    Intent,
}

impl Lifecycle {
    /// In code order (see the discriminant).
    pub const ALL: [Lifecycle; 7] = [
        Lifecycle::New,
        Lifecycle::FirstPurchase,
        Lifecycle::Repeat,
        Lifecycle::Super,
        Lifecycle::Lapsed,
        Lifecycle::Prospect,
        Lifecycle::Intent,
    ];

    /// In funnel order (陌生 → 潜在 → 意向 → 首单 → 复购 → 超级, then lapsed): what
    /// summaries and the report list.
    pub const FUNNEL: [Lifecycle; 7] = [
        Lifecycle::Prospect,
        Lifecycle::Intent,
        Lifecycle::New,
        Lifecycle::FirstPurchase,
        Lifecycle::Repeat,
        Lifecycle::Super,
        Lifecycle::Lapsed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::New => "new",
            Lifecycle::FirstPurchase => "first_purchase",
            Lifecycle::Repeat => "repeat",
            Lifecycle::Super => "super",
            Lifecycle::Lapsed => "lapsed",
            Lifecycle::Prospect => "prospect",
            Lifecycle::Intent => "intent",
        }
    }
}

/// The three tier dimensions a `tier_changed` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tiers {
    pub rfm_segment: Segment,
    pub value_tier: ValueTier,
    pub lifecycle: Lifecycle,
}

/// Churn rule ids (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    // The discriminant is the bit stored in a customer record's episode: fixed.
    Complaints = 0,
    Overdue = 1,
    SpendDrop = 2,
    PAlive = 3,
}

impl Rule {
    /// Sorted by id, so reason lists come out sorted.
    pub const ALL: [Rule; 4] = [
        Rule::Complaints,
        Rule::Overdue,
        Rule::PAlive,
        Rule::SpendDrop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Complaints => "complaints",
            Rule::Overdue => "overdue",
            Rule::PAlive => "p_alive",
            Rule::SpendDrop => "spend_drop",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A small set of [`Rule`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleSet(pub u8);

impl RuleSet {
    pub fn insert(&mut self, r: Rule) {
        self.0 |= r.bit();
    }
    pub fn contains(self, r: Rule) -> bool {
        self.0 & r.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn union(self, o: RuleSet) -> RuleSet {
        RuleSet(self.0 | o.0)
    }
    pub fn is_subset(self, o: RuleSet) -> bool {
        self.0 & !o.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Rule> {
        Rule::ALL.into_iter().filter(move |r| self.contains(*r))
    }
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Rule::as_str).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// RFM segment (SPEC §1). `none` without a purchase as of the day.
pub fn segment(f: &Figures, t: &Thresholds, s: &Settings) -> Segment {
    let Some(r) = f.recency_days else {
        return Segment::None;
    };
    match s.raw.segments.thresholds {
        ThresholdMode::Fixed => {
            let c = &s.raw.segments;
            Segment::from_rfm(
                r as i64 <= c.recency_days as i64,
                f.frequency >= c.frequency,
                f.monetary_micros >= s.segment_fixed_monetary_micros,
            )
        }
        ThresholdMode::Mean => {
            // Compare with the mean without dividing: x ≤ sum/n  ⇔  x·n ≤ sum, exact.
            // Recency ≤ mean recency ⇔ last purchase day · n ≥ Σ last purchase days.
            let n = t.purchasers.max(1) as i128;
            let last = (f.as_of - r) as i128;
            Segment::from_rfm(
                last * n >= t.sum_last_day as i128,
                f.frequency as i128 * n >= t.sum_frequency as i128,
                f.monetary_micros as i128 * n >= t.sum_micros as i128,
            )
        }
    }
}

/// Predicted `clv` in micro-units under the models in force (`None` without a
/// purchase, a fit, or a spend model).
pub fn clv_micros(f: &Figures, t: &Thresholds, s: &Settings) -> Option<u64> {
    let (m, i) = (t.model.as_ref()?, f.model_inputs?);
    let clv = m.predict(&i, f.as_of, &s.raw.predict).clv?;
    Some((clv.max(0.0) * 1e6).round() as u64)
}

/// Value tier (SPEC §1): Pareto cut-offs or fixed minimums over window monetary, or
/// (`value_tiers.method = "clv"`) Pareto cut-offs over predicted `clv`; zero is
/// always `low`.
pub fn value_tier(f: &Figures, t: &Thresholds, s: &Settings) -> ValueTier {
    let m = match s.raw.value_tiers.method {
        ValueMethod::Clv => clv_micros(f, t, s).unwrap_or(0),
        _ => f.monetary_micros,
    };
    if m == 0 {
        return ValueTier::Low;
    }
    let (high, medium) = match s.raw.value_tiers.method {
        ValueMethod::Fixed => (Some(s.high_min_micros), Some(s.medium_min_micros)),
        ValueMethod::Pareto | ValueMethod::Clv => (t.pareto_high, t.pareto_medium),
    };
    if high.is_some_and(|c| m >= c) {
        ValueTier::High
    } else if medium.is_some_and(|c| m >= c) {
        ValueTier::Medium
    } else {
        ValueTier::Low
    }
}

/// Lifecycle stage (SPEC §1), first match wins.
pub fn lifecycle(f: &Figures, s: &Settings) -> Lifecycle {
    let c = &s.raw.lifecycle;
    let Some(r) = f.recency_days else {
        return match (c.path, f.last_intent_day) {
            (crate::config::LifecyclePath::Retail, _) => Lifecycle::New,
            (_, Some(_)) => Lifecycle::Intent,
            (_, None) => Lifecycle::Prospect,
        };
    };
    if r as i64 >= c.lapsed_after_days as i64 {
        Lifecycle::Lapsed
    } else if f.frequency >= c.super_min_frequency && f.monetary_micros >= s.super_min_micros {
        Lifecycle::Super
    } else if f.lifetime_purchases >= 2 {
        Lifecycle::Repeat
    } else {
        Lifecycle::FirstPurchase
    }
}

pub fn tiers(f: &Figures, t: &Thresholds, s: &Settings) -> Tiers {
    Tiers {
        rfm_segment: segment(f, t, s),
        value_tier: value_tier(f, t, s),
        lifecycle: lifecycle(f, s),
    }
}

/// The overdue threshold in days for this customer, if the rule applies at all.
pub fn overdue_threshold(f: &Figures, s: &Settings) -> Option<f64> {
    let c = &s.raw.churn;
    if !c.overdue {
        return None;
    }
    match f.purchase_days {
        0 => None,
        1 => Some(c.first_purchase_overdue_days as f64),
        _ => {
            let mip = f.mean_interpurchase_days.unwrap_or(0.0);
            Some((c.overdue_min_days as f64).max(c.overdue_factor * mip))
        }
    }
}

/// P(alive) at `f.as_of` under the models in force, for a customer the `p_alive`
/// rule looks at (x ≥ 1: without a repeat purchase day P(alive) is 1).
pub fn p_alive(f: &Figures, t: &Thresholds) -> Option<f64> {
    let (m, i) = (t.model.as_ref()?, f.model_inputs?);
    (i.x >= 1).then(|| m.p_alive(&i, f.as_of))
}

/// Active churn rules as of `f.as_of` (SPEC §4, and `p_alive`: README "Predictions").
pub fn churn_rules(f: &Figures, value: ValueTier, t: &Thresholds, s: &Settings) -> RuleSet {
    let c = &s.raw.churn;
    let mut set = RuleSet::default();
    if c.p_alive && p_alive(f, t).is_some_and(|p| p < c.p_alive_below) {
        set.insert(Rule::PAlive);
    }
    if let (Some(limit), Some(r)) = (overdue_threshold(f, s), f.recency_days) {
        if r as f64 > limit {
            set.insert(Rule::Overdue);
        }
    }
    if c.complaints
        && (f.recent_complaints >= c.complaint_threshold
            || (f.recent_high_complaints > 0 && value == ValueTier::High))
    {
        set.insert(Rule::Complaints);
    }
    if c.spend_drop
        && f.drop_previous_micros > 0
        && (f.drop_recent_micros as f64) < c.drop_ratio * f.drop_previous_micros as f64
    {
        set.insert(Rule::SpendDrop);
    }
    set
}

pub fn severity(t: &Tiers) -> Severity {
    if t.value_tier == ValueTier::High || t.rfm_segment.is_important() {
        Severity::High
    } else if t.value_tier == ValueTier::Medium {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// RFM scores 1–5, `None` without a purchase.
pub fn scores(f: &Figures, t: &Thresholds) -> Option<(u8, u8, u8)> {
    let r = f.recency_days?;
    Some((
        t.r_score(r),
        t.f_score(f.frequency),
        t.m_score(f.monetary_micros),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figs(recency: Option<i32>, freq: u32, monetary: u64) -> Figures {
        Figures {
            recency_days: recency,
            frequency: freq,
            monetary_micros: monetary,
            lifetime_purchases: freq as u64,
            purchase_days: freq,
            ..Figures::default()
        }
    }

    #[test]
    fn segments_follow_the_table() {
        assert_eq!(
            Segment::from_rfm(true, false, true).as_str(),
            "important_develop"
        );
        assert_eq!(
            Segment::from_rfm(false, true, false).as_str(),
            "general_keep"
        );
        for s in Segment::ALL {
            assert_eq!(Segment::from_code(s.code()), Some(s));
        }
    }

    #[test]
    fn mean_thresholds_compare_inclusively() {
        let s = Settings::defaults();
        let mut b = ThresholdsBuilder::default();
        b.add(Some(10), 2, 100);
        b.add(Some(20), 4, 300);
        let t = b.build(&s, 100);
        // Means: recency 15, frequency 3, monetary 200.
        let at = |r, f, m| Figures {
            as_of: 100,
            ..figs(Some(r), f, m)
        };
        assert_eq!(segment(&at(15, 3, 200), &t, &s), Segment::ImportantValue);
        assert_eq!(segment(&at(16, 2, 199), &t, &s), Segment::GeneralRetain);
        assert_eq!(segment(&figs(None, 0, 0), &t, &s), Segment::None);
    }

    #[test]
    fn fixed_thresholds_and_fixed_value_tiers() {
        let mut c = crate::config::Config::default();
        c.segments.thresholds = ThresholdMode::Fixed;
        c.value_tiers.method = ValueMethod::Fixed;
        let s = Settings::new(c, crate::config::Clock::Event).unwrap();
        let t = Thresholds::default();
        let m = |x: f64| crate::config::to_micros(x);
        // recency ≤ 30, frequency ≥ 4, monetary ≥ 1000 are "high".
        assert_eq!(
            segment(&figs(Some(30), 4, m(1000.0)), &t, &s),
            Segment::ImportantValue
        );
        assert_eq!(
            segment(&figs(Some(31), 4, m(999.99)), &t, &s),
            Segment::GeneralKeep
        );
        assert_eq!(
            value_tier(&figs(Some(1), 1, m(5000.0)), &t, &s),
            ValueTier::High
        );
        assert_eq!(
            value_tier(&figs(Some(1), 1, m(4999.99)), &t, &s),
            ValueTier::Medium
        );
        assert_eq!(
            value_tier(&figs(Some(1), 1, m(1000.0)), &t, &s),
            ValueTier::Medium
        );
        assert_eq!(
            value_tier(&figs(Some(1), 1, m(999.0)), &t, &s),
            ValueTier::Low
        );
        assert_eq!(value_tier(&figs(Some(1), 1, 0), &t, &s), ValueTier::Low);
    }

    #[test]
    fn switched_off_rules_never_fire() {
        let mut c = crate::config::Config::default();
        c.churn.overdue = false;
        c.churn.complaints = false;
        c.churn.spend_drop = false;
        let s = Settings::new(c, crate::config::Clock::Event).unwrap();
        let mut f = figs(Some(400), 2, 1);
        f.mean_interpurchase_days = Some(1.0);
        f.recent_complaints = 9;
        f.drop_previous_micros = 100;
        assert!(churn_rules(&f, ValueTier::High, &Thresholds::default(), &s).is_empty());
        let d = Settings::defaults();
        assert_eq!(
            churn_rules(&f, ValueTier::High, &Thresholds::default(), &d).names(),
            vec!["complaints", "overdue", "spend_drop"]
        );
    }

    #[test]
    fn severity_follows_tiers() {
        let t = |rfm_segment, value_tier| Tiers {
            rfm_segment,
            value_tier,
            lifecycle: Lifecycle::Repeat,
        };
        assert_eq!(
            severity(&t(Segment::GeneralValue, ValueTier::High)),
            Severity::High
        );
        assert_eq!(
            severity(&t(Segment::ImportantRetain, ValueTier::Low)),
            Severity::High
        );
        assert_eq!(
            severity(&t(Segment::GeneralKeep, ValueTier::Medium)),
            Severity::Medium
        );
        assert_eq!(
            severity(&t(Segment::GeneralKeep, ValueTier::Low)),
            Severity::Low
        );
    }

    #[test]
    fn lifecycle_first_match_wins() {
        let s = Settings::defaults();
        assert_eq!(lifecycle(&figs(None, 0, 0), &s), Lifecycle::New);
        assert_eq!(lifecycle(&figs(Some(180), 20, 5), &s), Lifecycle::Lapsed);
        assert_eq!(lifecycle(&figs(Some(3), 12, 5), &s), Lifecycle::Super);
        assert_eq!(lifecycle(&figs(Some(3), 2, 5), &s), Lifecycle::Repeat);
        assert_eq!(
            lifecycle(&figs(Some(3), 1, 5), &s),
            Lifecycle::FirstPurchase
        );
    }

    #[test]
    fn overdue_uses_the_larger_of_floor_and_factor() {
        let s = Settings::defaults();
        let mut f = figs(Some(31), 2, 10);
        f.mean_interpurchase_days = Some(10.0);
        assert_eq!(overdue_threshold(&f, &s), Some(30.0));
        assert!(churn_rules(&f, ValueTier::Low, &Thresholds::default(), &s).contains(Rule::Overdue));
        f.recency_days = Some(30);
        assert!(
            !churn_rules(&f, ValueTier::Low, &Thresholds::default(), &s).contains(Rule::Overdue)
        );
        f.mean_interpurchase_days = Some(2.0);
        assert_eq!(overdue_threshold(&f, &s), Some(14.0));
    }
}
