//! Per-customer state: day buckets, lifetime figures, duplicate detection, and the
//! figures of SPEC §3 evaluated at any as-of day.
//!
//! Invariants:
//! - `buckets` is sorted by day, one per day with activity, and holds every day at or
//!   after the retention horizon (`clock − retention + 1`); older days are pruned, which
//!   is safe because no figure or rule looks further back than the retention.
//! - `purchase_days` is the sorted set of *all* days with a purchase (lifetime), so
//!   `purchase_days`, first/last day and the mean inter-purchase gap stay exact even for
//!   out-of-order events that arrive after their bucket was pruned. Typical customers
//!   have a few dozen entries; it is delta-encoded on disk.
//! - `seen` holds the 64-bit hashes of the `event_id`s applied on days inside the
//!   retention horizon, sorted by hash. Hashes of older events move to the store's
//!   dedupe column family (see `Engine`), so duplicate detection is exact forever while
//!   the hot state only carries the recent ones.

use crate::config::Settings;
use crate::day::Day;
use crate::event::{ComplaintSeverity, Event, EventKind};
use crate::policy::{RuleSet, Severity, Tiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    pub day: Day,
    pub purchases: u32,
    pub micros: u64,
    pub interactions: u32,
    pub complaints: u32,
    pub high_complaints: u32,
    /// Interactions whose action is an intent action (`lifecycle.intent_actions`).
    pub intents: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub hash: u64,
    pub day: Day,
}

/// The figures this customer is filed under in the store's index column families
/// (as of their latest evaluation): what lets a recalibration find exactly the
/// customers between an old and a new threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    pub last_day: Day,
    pub frequency: u32,
    pub micros: u64,
}

/// An open churn episode: the reasons warned about so far and the highest severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub reasons: RuleSet,
    pub severity: Severity,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomerState {
    pub lifetime_purchases: u64,
    pub lifetime_micros: u64,
    /// Spend on the first purchase day (all of that day's purchases): what separates
    /// the repeat spend the Gamma-Gamma model needs from the lifetime spend. `None`
    /// for a record written before strata kept it whose first day has left the
    /// buckets (codec v1).
    pub first_day_micros: Option<u64>,
    pub purchase_days: Vec<Day>,
    pub buckets: Vec<Bucket>,
    pub seen: Vec<Seen>,
    /// Tiers as last published in a `tier_changed` event.
    pub published: Option<Tiers>,
    pub episode: Option<Episode>,
    /// The day this customer's timer is due, mirrored in the timers column family.
    pub timer: Option<Day>,
    /// Mirrored in the `by_*` index column families; `None` without a purchase.
    pub indexed: Option<Indexed>,
}

/// Every figure of SPEC §3 at one as-of day. Money in integer micro-units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    pub as_of: Day,
    pub recency_days: Option<i32>,
    pub frequency: u32,
    pub monetary_micros: u64,
    pub lifetime_purchases: u64,
    pub lifetime_micros: u64,
    pub first_purchase_day: Option<Day>,
    pub last_purchase_day: Option<Day>,
    pub purchase_days: u32,
    pub mean_interpurchase_days: Option<f64>,
    pub recent_interactions: u32,
    pub recent_complaints: u32,
    pub recent_high_complaints: u32,
    /// The latest day ≤ as-of within `lifecycle.intent_days` with an intent
    /// interaction.
    pub last_intent_day: Option<Day>,
    /// Spend over the latest `drop_window_days` and over the same span before it.
    pub drop_recent_micros: u64,
    pub drop_previous_micros: u64,
    /// The predictive models' inputs (x, t_x, first day, repeat spend).
    pub model_inputs: Option<crate::predict::model::Inputs>,
}

/// `lo..=hi` as an inclusive day range ending at the as-of day.
fn within(day: Day, as_of: Day, days: i32) -> bool {
    day <= as_of && day > as_of - days
}

/// What applying one purchase did to the population-level sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseEffect {
    pub previous_last_day: Option<Day>,
    pub new_last_day: Day,
    /// Whether the purchase landed in a day bucket (inside the retention horizon).
    pub bucketed: bool,
}

impl CustomerState {
    pub fn has_seen(&self, hash: u64) -> bool {
        self.seen.binary_search_by_key(&hash, |s| s.hash).is_ok()
    }

    fn remember(&mut self, hash: u64, day: Day) {
        if let Err(i) = self.seen.binary_search_by_key(&hash, |s| s.hash) {
            self.seen.insert(i, Seen { hash, day });
        }
    }

    fn bucket_mut(&mut self, day: Day) -> &mut Bucket {
        let i = match self.buckets.binary_search_by_key(&day, |b| b.day) {
            Ok(i) => i,
            Err(i) => {
                self.buckets.insert(
                    i,
                    Bucket {
                        day,
                        ..Bucket::default()
                    },
                );
                i
            }
        };
        &mut self.buckets[i]
    }

    /// Apply a validated, not-duplicate event. `horizon` is the first day still kept in
    /// buckets; an older event only updates lifetime figures (SPEC §3). Returns the
    /// purchase effect for the population sums, and whether the event's id must go to
    /// the dedupe archive rather than the inline set.
    pub fn apply(&mut self, ev: &Event, hash: u64, horizon: Day) -> (Option<PurchaseEffect>, bool) {
        let bucketed = ev.day >= horizon;
        let mut effect = None;
        match ev.kind {
            EventKind::Purchase { amount_micros } => {
                let previous_last_day = self.purchase_days.last().copied();
                self.lifetime_purchases += 1;
                self.lifetime_micros = self.lifetime_micros.saturating_add(amount_micros);
                match self.purchase_days.first() {
                    Some(&first) if ev.day > first => {}
                    Some(&first) if ev.day == first => {
                        self.first_day_micros = self
                            .first_day_micros
                            .map(|m| m.saturating_add(amount_micros));
                    }
                    // A new first day (the first purchase, or an earlier late one).
                    _ => self.first_day_micros = Some(amount_micros),
                }
                if let Err(i) = self.purchase_days.binary_search(&ev.day) {
                    self.purchase_days.insert(i, ev.day);
                }
                if bucketed {
                    let b = self.bucket_mut(ev.day);
                    b.purchases += 1;
                    b.micros = b.micros.saturating_add(amount_micros);
                }
                effect = Some(PurchaseEffect {
                    previous_last_day,
                    new_last_day: *self.purchase_days.last().unwrap(),
                    bucketed,
                });
            }
            EventKind::Interaction { intent } if bucketed => {
                let b = self.bucket_mut(ev.day);
                b.interactions += 1;
                b.intents += intent as u32;
            }
            EventKind::Complaint { severity } if bucketed => {
                let b = self.bucket_mut(ev.day);
                b.complaints += 1;
                if severity == ComplaintSeverity::High {
                    b.high_complaints += 1;
                }
            }
            _ => {}
        }
        if bucketed {
            self.remember(hash, ev.day);
        }
        (effect, !bucketed)
    }

    /// Drop buckets and inline event hashes older than `horizon`; returns the hashes to
    /// archive.
    pub fn prune(&mut self, horizon: Day) -> Vec<u64> {
        let cut = self.buckets.partition_point(|b| b.day < horizon);
        self.buckets.drain(..cut);
        let mut archived = Vec::new();
        self.seen.retain(|s| {
            if s.day < horizon {
                archived.push(s.hash);
                false
            } else {
                true
            }
        });
        archived
    }

    /// All figures at `as_of`. Window figures count buckets on days ≤ `as_of`, so an
    /// as-of inside the retention horizon is exact.
    pub fn figures(&self, as_of: Day, s: &Settings) -> Figures {
        let w = s.window_days;
        let iw = s.raw.windows.interactions_days as i32;
        let cw = s.raw.windows.complaints_days as i32;
        let dw = s.raw.churn.drop_window_days as i32;
        let itw = s.raw.lifecycle.intent_days as i32;
        let mut f = Figures {
            as_of,
            lifetime_purchases: self.lifetime_purchases,
            lifetime_micros: self.lifetime_micros,
            purchase_days: self.purchase_days.len() as u32,
            first_purchase_day: self.purchase_days.first().copied(),
            last_purchase_day: self.purchase_days.last().copied(),
            model_inputs: crate::predict::model::Inputs::of(self, Some(as_of)),
            ..Figures::default()
        };
        let upto = self.purchase_days.partition_point(|&d| d <= as_of);
        if upto > 0 {
            f.recency_days = Some(as_of - self.purchase_days[upto - 1]);
        }
        if let (Some(first), Some(last)) = (f.first_purchase_day, f.last_purchase_day) {
            if f.purchase_days >= 2 {
                f.mean_interpurchase_days =
                    Some((last - first) as f64 / (f.purchase_days - 1) as f64);
            }
        }
        for b in &self.buckets {
            if b.day > as_of {
                break;
            }
            if within(b.day, as_of, w) {
                f.frequency += b.purchases;
                f.monetary_micros = f.monetary_micros.saturating_add(b.micros);
            }
            if within(b.day, as_of, iw) {
                f.recent_interactions += b.interactions;
            }
            if b.intents > 0 && within(b.day, as_of, itw) {
                f.last_intent_day = Some(b.day);
            }
            if within(b.day, as_of, cw) {
                f.recent_complaints += b.complaints;
                f.recent_high_complaints += b.high_complaints;
            }
            if within(b.day, as_of, dw) {
                f.drop_recent_micros = f.drop_recent_micros.saturating_add(b.micros);
            } else if within(b.day, as_of - dw, dw) {
                f.drop_previous_micros = f.drop_previous_micros.saturating_add(b.micros);
            }
        }
        f
    }

    /// Spend over the latest `dw` days and the `dw` days before, as of `day`.
    #[cfg(test)]
    fn drop_halves(&self, day: Day, dw: i32) -> (u64, u64) {
        let (mut recent, mut previous) = (0u64, 0u64);
        for b in self
            .buckets
            .iter()
            .filter(|b| b.purchases > 0 && b.day <= day)
        {
            if within(b.day, day, dw) {
                recent = recent.saturating_add(b.micros);
            } else if within(b.day, day - dw, dw) {
                previous = previous.saturating_add(b.micros);
            }
        }
        (recent, previous)
    }

    /// The next day after `as_of` on which something this customer's published events
    /// depend on can change with no new event from them:
    /// - a purchase leaves the W window (frequency and monetary: tiers, indexes);
    /// - the first day the spend-drop rule would turn on, as purchases move from the
    ///   recent half into the earlier one;
    /// - the overdue day; the lapse day.
    ///
    /// Windows closing over complaints or interactions, or a purchase leaving the
    /// earlier spend-drop half, can only turn a rule off, which publishes nothing (an
    /// episode ends with a purchase), so they need no timer; `state dump` computes those
    /// figures exactly at any day. Thresholds moving with the population are the
    /// recalibration's job.
    pub fn next_change(&self, f: &Figures, s: &Settings) -> Option<Day> {
        let dw = s.raw.churn.drop_window_days as i32;
        // Running spend over the purchase days, so that each half's spend is two
        // binary searches, not a walk over every bucket per candidate day. (Sums
        // of non-negative amounts: the total capped at u64::MAX is exactly what
        // adding them up saturating gives.)
        let mut spent: smallvec::SmallVec<[(Day, u128); 32]> = smallvec::SmallVec::new();
        if s.raw.churn.spend_drop {
            let mut total = 0u128;
            for b in self.buckets.iter().filter(|b| b.purchases > 0) {
                total += b.micros as u128;
                spent.push((b.day, total));
            }
        }
        let through = |d: Day| match spent.partition_point(|&(day, _)| day <= d) {
            0 => 0,
            i => spent[i - 1].1,
        };
        let between =
            |after: Day, upto: Day| (through(upto) - through(after)).min(u64::MAX as u128) as u64;
        // Spend over d−dw+1 … d, and over the dw days before those.
        self.next_change_by(f, s, &|d| (between(d - dw, d), between(d - 2 * dw, d - dw)))
    }

    /// [`Self::next_change`], with the spend-drop halves as of a day from `halves`.
    fn next_change_by(
        &self,
        f: &Figures,
        s: &Settings,
        halves: &dyn Fn(Day) -> (u64, u64),
    ) -> Option<Day> {
        let w = s.window_days;
        let dw = s.raw.churn.drop_window_days as i32;
        let as_of = f.as_of;
        let mut next: Option<Day> = None;
        let mut consider = |d: Day| {
            if d > as_of && next.is_none_or(|n| d < n) {
                next = Some(d);
            }
        };
        for b in self.buckets.iter().filter(|b| b.purchases > 0) {
            consider(b.day + w);
        }
        let c = &s.raw.churn;
        let drop_holds = |d: Day| {
            let (recent, previous) = halves(d);
            previous > 0 && (recent as f64) < c.drop_ratio * previous as f64
        };
        if c.spend_drop && !drop_holds(as_of) {
            // The rule's inputs only change on the days a purchase crosses a boundary;
            // buckets are in day order, so the first crossing day where it holds wins.
            if let Some(d) = self
                .buckets
                .iter()
                .filter(|b| b.purchases > 0 && b.day <= as_of)
                .map(|b| b.day + dw)
                .filter(|&d| d > as_of)
                .find(|&d| drop_holds(d))
            {
                consider(d);
            }
        }
        if let Some(last) = f.last_purchase_day {
            if let Some(limit) = crate::policy::overdue_threshold(f, s) {
                // recency > limit  ⇔  day ≥ last + ⌊limit⌋ + 1
                consider(last + limit.floor() as i32 + 1);
            }
            consider(last + s.raw.lifecycle.lapsed_after_days as i32);
        } else if let (crate::config::LifecyclePath::HighTicket, Some(d)) =
            (s.raw.lifecycle.path, f.last_intent_day)
        {
            // `intent` falls back to `prospect` when the interaction leaves the window.
            consider(d + s.raw.lifecycle.intent_days as i32);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(day: Day, kind: EventKind) -> Event {
        Event {
            event_id: format!("e{day}"),
            customer_id: "c".into(),
            kind,
            ts_millis: day as i64 * 86_400_000,
            day,
        }
    }

    #[test]
    fn window_edges_are_inclusive() {
        let s = Settings::defaults();
        let mut c = CustomerState::default();
        c.apply(&ev(100, EventKind::Purchase { amount_micros: 5 }), 1, 0);
        c.apply(&ev(464, EventKind::Purchase { amount_micros: 7 }), 2, 0);
        // As of 464 the window is 100..=464: both count.
        let f = c.figures(464, &s);
        assert_eq!(
            (f.frequency, f.monetary_micros, f.recency_days),
            (2, 12, Some(0))
        );
        // One day later day 100 has left.
        let f = c.figures(465, &s);
        assert_eq!((f.frequency, f.monetary_micros), (1, 7));
        assert_eq!(f.mean_interpurchase_days, Some(364.0));
        assert_eq!(c.next_change(&c.figures(464, &s), &s), Some(465));
    }

    /// The next change day, as first written: every candidate day's spend halves
    /// summed afresh from the buckets.
    fn next_change_reference(c: &CustomerState, f: &Figures, s: &Settings) -> Option<Day> {
        let dw = s.raw.churn.drop_window_days as i32;
        c.next_change_by(f, s, &|d| c.drop_halves(d, dw))
    }

    /// Random purchase histories (amounts up to 10^12, so sums saturate), every
    /// as-of day: the same next change day as the reference.
    #[test]
    fn next_change_agrees_with_the_reference() {
        use rand::{Rng, SeedableRng};
        let s = Settings::defaults();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..400 {
            let mut c = CustomerState::default();
            let (mut day, n) = (0, rng.gen_range(0..40));
            for i in 0..n {
                day += rng.gen_range(0..30);
                let amount_micros = match rng.gen_range(0..10) {
                    0 => 0,
                    1 => 1_000_000_000_000_000_000,
                    _ => rng.gen_range(1..500_000_000),
                };
                let kind = match rng.gen_range(0..4) {
                    0 => EventKind::Interaction { intent: false },
                    _ => EventKind::Purchase { amount_micros },
                };
                c.apply(&ev(day, kind), (round * 100 + i) as u64, 0);
            }
            for as_of in (0..=day + 400).step_by(3) {
                let f = c.figures(as_of, &s);
                assert_eq!(
                    c.next_change(&f, &s),
                    next_change_reference(&c, &f, &s),
                    "round {round}, as of {as_of}: {c:?}"
                );
            }
        }
    }

    #[test]
    fn timers_only_for_days_that_can_publish() {
        let s = Settings::defaults();
        let mut c = CustomerState::default();
        // 100 on day 0, 10 on day 60: on day 90 the 100 moves into the earlier half and
        // recent (10) < 0.5 × 100, so spend_drop turns on that day.
        c.apply(&ev(0, EventKind::Purchase { amount_micros: 100 }), 1, 0);
        c.apply(&ev(60, EventKind::Purchase { amount_micros: 10 }), 2, 0);
        c.apply(&ev(61, EventKind::Interaction { intent: false }), 3, 0);
        let f = c.figures(61, &s);
        // Overdue: mean gap 60 → limit 180 → day 241; lapse 240; expiry 365, 425.
        assert_eq!(c.next_change(&f, &s), Some(90));
        // With equal spends it first holds on day 150, when the recent half is empty.
        let mut d = CustomerState::default();
        d.apply(&ev(0, EventKind::Purchase { amount_micros: 100 }), 1, 0);
        d.apply(&ev(60, EventKind::Purchase { amount_micros: 100 }), 2, 0);
        assert_eq!(d.next_change(&d.figures(61, &s), &s), Some(150));
        // Without the rule, the next day is the lapse day (before overdue on 241).
        let mut c2 = crate::config::Config::default();
        c2.churn.spend_drop = false;
        let s2 = Settings::new(c2, crate::config::Clock::Event).unwrap();
        assert_eq!(d.next_change(&d.figures(61, &s2), &s2), Some(240));
    }

    #[test]
    fn old_events_only_touch_lifetime() {
        let s = Settings::defaults();
        let mut c = CustomerState::default();
        let (_, archive) = c.apply(&ev(10, EventKind::Purchase { amount_micros: 5 }), 1, 50);
        assert!(archive);
        assert!(c.buckets.is_empty() && c.seen.is_empty());
        let f = c.figures(400, &s);
        assert_eq!(
            (f.lifetime_purchases, f.frequency, f.purchase_days),
            (1, 0, 1)
        );
    }

    #[test]
    fn prune_moves_hashes_out() {
        let mut c = CustomerState::default();
        c.apply(&ev(10, EventKind::Interaction { intent: false }), 1, 0);
        c.apply(&ev(20, EventKind::Interaction { intent: false }), 2, 0);
        assert_eq!(c.prune(15), vec![1]);
        assert_eq!(c.buckets.len(), 1);
        assert!(c.has_seen(2) && !c.has_seen(1));
    }
}
