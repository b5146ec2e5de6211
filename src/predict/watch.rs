//! The days on which customers' P(alive) falls below the `p_alive` churn
//! threshold, kept per model group instead of per customer.
//!
//! P(alive) at a day depends only on the model in force and the customer's
//! (x, first purchase day, t_x): customers with the same three numbers — a
//! *group*, the rows of the model histogram — cross the threshold on the same
//! day. So the watch keeps, for every group with x ≥ 1, its members and the day
//! it crosses, and a calendar of those days. When the clock reaches a day, the
//! members of the groups crossing that day are evaluated (as a timer would); when
//! the model is refitted, every group's day is computed again and only the members
//! of groups that the new parameters put below the threshold *today* (and the old
//! ones did not) are evaluated (cause `"recalibration"`). The customers' own
//! timers do not carry the crossing, so a refit moves no customer's timer and
//! writes nothing: before, a refit evaluated (and rewrote) every purchaser.
//!
//! Invariant: a group whose day is on or before the clock is below the threshold
//! under the model in force, and every member has been evaluated since it was
//! (on that day, at the refit that put it there, or at the purchase that made it a
//! member), so its episode holds `p_alive`. A group's day after the clock is the
//! first day it will be below, and it is in the calendar under that day.
//!
//! Nothing here is stored: [`crate::processor::Processor::open`] rebuilds the
//! members from the customer records (the scan that rebuilds the histogram) and
//! the days from the stored model. Members are the customers' 4-byte handles in
//! the partition's [`crate::derived::Ids`]. Memory: a handle per repeat customer,
//! and an entry per group.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::model::{Inputs, Model};
use crate::day::Day;

/// (x, first purchase day, t_x), x ≥ 1.
pub type Group = (u32, Day, i32);

/// The day of a group that never crosses (or while no model is in force).
pub const NEVER: Day = Day::MAX;

#[derive(Debug, Default)]
struct Entry {
    /// The first day the group is below the threshold (see the module invariant).
    crossing: Day,
    /// Customer handles ([`crate::derived::Ids`]).
    members: SmallVec<[u32; 4]>,
}

/// What the watch computes crossing days with: the model in force and the
/// threshold, or nothing (no model yet, or the rule switched off).
#[derive(Debug, Clone, Copy)]
pub struct Rule<'a> {
    pub model: Option<&'a Model>,
    pub threshold: f64,
}

impl Rule<'_> {
    /// The first day on or after `from` on which the group is below the
    /// threshold; [`NEVER`] without a model or when it never is.
    fn crossing(&self, g: Group, from: Day) -> Day {
        let Some(m) = self.model else { return NEVER };
        let i = Inputs {
            x: g.0,
            first: g.1,
            t_x: g.2,
            spend: None,
        };
        m.p_alive_below_from(&i, self.threshold, from)
            .unwrap_or(NEVER)
    }
}

#[derive(Debug, Default)]
pub struct Watch {
    groups: FxHashMap<Group, Entry>,
    calendar: BTreeMap<Day, Vec<Group>>,
}

/// The group of a customer with these model inputs (`None` for x = 0: P(alive)
/// is 1 until a repeat purchase day).
pub fn group_of(i: &Inputs) -> Option<Group> {
    (i.x >= 1).then_some((i.x, i.first, i.t_x))
}

impl Watch {
    /// Add a customer to a group on day `today` (a purchase put it there, or
    /// `open` found it); a new group gets its crossing day from `today` on.
    pub fn insert(&mut self, h: u32, g: Group, rule: Rule<'_>, today: Day) {
        let e = self.groups.entry(g).or_insert_with(|| {
            let crossing = rule.crossing(g, today);
            if crossing > today && crossing != NEVER {
                self.calendar.entry(crossing).or_default().push(g);
            }
            Entry {
                crossing,
                members: SmallVec::new(),
            }
        });
        e.members.push(h);
    }

    /// Take a customer out of a group (a purchase moved it on). An emptied group
    /// is forgotten; its calendar entry is skipped when its day comes.
    pub fn remove(&mut self, h: u32, g: Group) {
        if let Some(e) = self.groups.get_mut(&g) {
            if let Some(k) = e.members.iter().position(|&m| m == h) {
                e.members.swap_remove(k);
            }
            if e.members.is_empty() {
                self.groups.remove(&g);
            }
        }
    }

    /// The customers whose group crosses on `day` (called once per day as the
    /// clock passes it; the calendar forgets the day).
    pub fn due(&mut self, day: Day, into: &mut Vec<u32>) {
        // Days before `day` were passed already (a clock never moves back).
        while let Some((&d, _)) = self.calendar.first_key_value() {
            if d > day {
                break;
            }
            let groups = self
                .calendar
                .pop_first()
                .map(|(_, g)| g)
                .unwrap_or_default();
            if d < day {
                continue;
            }
            for g in groups {
                if let Some(e) = self.groups.get(&g).filter(|e| e.crossing == day) {
                    into.extend_from_slice(&e.members);
                }
            }
        }
    }

    /// The model or threshold changed on `today` (a refit, or a model coming in
    /// force): every group's day again, the calendar anew. Returns the customers
    /// of the groups the new rule puts below the threshold today and the old one
    /// did not (the refit evaluates them, cause `"recalibration"`).
    pub fn reschedule(&mut self, rule: Rule<'_>, today: Day, newly: &mut Vec<u32>) {
        self.calendar.clear();
        for (&g, e) in self.groups.iter_mut() {
            let was_below = e.crossing <= today;
            e.crossing = rule.crossing(g, today);
            if e.crossing > today {
                if e.crossing != NEVER {
                    self.calendar.entry(e.crossing).or_default().push(g);
                }
            } else if !was_below {
                newly.extend_from_slice(&e.members);
            }
        }
    }

    /// Repeat customers (with a group) by decile of P(alive) on `day`.
    pub fn p_alive_deciles(&self, m: &Model, day: Day) -> [u64; 10] {
        let mut d = [0u64; 10];
        for (&(x, first, t_x), e) in &self.groups {
            let i = Inputs {
                x,
                first,
                t_x,
                spend: None,
            };
            let p = m.p_alive(&i, day);
            d[((p * 10.0) as usize).min(9)] += e.members.len() as u64;
        }
        d
    }

    /// Customers watched.
    pub fn len(&self) -> usize {
        self.groups.values().map(|e| e.members.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Check against a fresh computation (the processor's audit): the members
    /// are exactly `want` (group → sorted handles), and every group's day is what the
    /// rule gives on `today` — the first day below when after `today`, or
    /// `today` itself below when on or before it. Returns the mismatches.
    pub fn audit(&self, want: &BTreeMap<Group, Vec<u32>>, rule: Rule<'_>, today: Day) -> u64 {
        let mut bad = 0;
        for (g, ids) in want {
            let Some(e) = self.groups.get(g) else {
                bad += ids.len() as u64;
                continue;
            };
            let mut have = e.members.to_vec();
            have.sort_unstable();
            if &have != ids {
                bad += 1;
            }
            let now = rule.crossing(*g, today);
            let ok = if e.crossing > today {
                e.crossing == now
                    && (now == NEVER || self.calendar.get(&now).is_some_and(|gs| gs.contains(g)))
            } else {
                now == today
            };
            if !ok {
                bad += 1;
            }
        }
        bad + self.groups.keys().filter(|g| !want.contains_key(g)).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::bgnbd::BgNbd;

    fn model() -> Model {
        Model {
            fitted_on: 0,
            customers: 10,
            bgnbd: BgNbd {
                r: 0.25,
                alpha: 30.0,
                a: 0.8,
                b: 2.5,
            },
            log_likelihood: 0.0,
            gamma_gamma: None,
        }
    }

    fn p(m: &Model, g: Group, day: Day) -> f64 {
        m.p_alive(
            &Inputs {
                x: g.0,
                first: g.1,
                t_x: g.2,
                spend: None,
            },
            day,
        )
    }

    /// Members come out on the first day their group is below the threshold,
    /// once; a customer that moved to another group does not.
    #[test]
    fn members_are_due_on_the_crossing_day() {
        let m = model();
        let rule = Rule {
            model: Some(&m),
            threshold: 0.3,
        };
        let mut w = Watch::default();
        let (g1, g2) = ((1, 100, 5), (3, 100, 40));
        let (a, b, c, moved) = (1, 2, 3, 4);
        w.insert(a, g1, rule, 105);
        w.insert(b, g1, rule, 105);
        w.insert(c, g2, rule, 140);
        w.insert(moved, g2, rule, 140);
        w.remove(moved, g2);
        let mut seen: BTreeMap<Day, Vec<u32>> = BTreeMap::new();
        for day in 141..2000 {
            let mut due = Vec::new();
            w.due(day, &mut due);
            if !due.is_empty() {
                due.sort();
                seen.insert(day, due);
            }
        }
        let first_below = |g: Group| (100..).find(|&d| p(&m, g, d) < 0.3).unwrap();
        let want: BTreeMap<Day, Vec<u32>> =
            [(first_below(g1), vec![a, b]), (first_below(g2), vec![c])]
                .into_iter()
                .collect();
        assert_eq!(seen, want);
    }

    /// A refit that moves a group's day before today lists its members (once);
    /// one that moves it later schedules it there; the audit agrees each time.
    #[test]
    fn a_refit_lists_the_newly_below() {
        let old = model();
        let mut faster = model();
        faster.bgnbd.b = 0.6; // a/(b+x−1) larger: P(alive) falls sooner
        let rule = |m| Rule {
            model: Some(m),
            threshold: 0.3,
        };
        let g = (1, 0, 10);
        let mut w = Watch::default();
        let a = 7;
        w.insert(a, g, rule(&old), 10);
        let when_old = w.groups[&g].crossing;
        let when_new = (0..).find(|&d| p(&faster, g, d) < 0.3).unwrap();
        assert!(when_new < when_old);
        let today = when_new + 1;
        let want: BTreeMap<Group, Vec<u32>> = [(g, vec![a])].into();
        assert_eq!(w.audit(&want, rule(&old), today), 0);
        let mut newly = Vec::new();
        w.reschedule(rule(&faster), today, &mut newly);
        assert_eq!(newly, vec![a]);
        assert_eq!(w.audit(&want, rule(&faster), today), 0);
        // Already below: a second refit with the same parameters lists nobody.
        let mut again = Vec::new();
        w.reschedule(rule(&faster), today + 1, &mut again);
        assert!(again.is_empty());
        // Back to the slower model: pending again, on its day.
        w.reschedule(rule(&old), today + 1, &mut again);
        assert!(again.is_empty());
        assert_eq!(w.groups[&g].crossing, when_old);
        let mut due = Vec::new();
        w.due(when_old, &mut due);
        assert_eq!(due, vec![a]);
        // Without a model nothing is scheduled.
        w.reschedule(
            Rule {
                model: None,
                threshold: 0.3,
            },
            today,
            &mut again,
        );
        assert!(again.is_empty() && w.calendar.is_empty());
    }
}
