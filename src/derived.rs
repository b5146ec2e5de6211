//! A partition's derived state, kept in memory: the timer calendar and the three
//! recalibration indexes, over customer ids interned to 4-byte handles.
//!
//! Everything here follows from the customer records alone — a record carries its
//! customer's timer day ([`CustomerState::timer`](crate::customer::CustomerState))
//! and the figures it is indexed under (`indexed`) — so it is never written:
//! [`crate::processor::Processor::open`] rebuilds it with the one scan of the
//! customers it already makes (the model histogram), as a restore did before,
//! and the processor moves a customer's entries as soon as its state moves them.
//! A write is then the customer records (and dedupe archive and meta records)
//! alone: a purchase used to cost the store a record, three index moves (a delete
//! and a put each) and a timer move.
//!
//! Memory: an id and a handle per customer of the partition (its string, ~8
//! bytes of hash table) and four ordered-set entries of 8–16 bytes; about
//! 100 bytes a customer, ~100 MB for a million (README, "Derived state in memory").
//!
//! Invariant ([`crate::processor::Processor::audit`] checks it): the timer and
//! index entries are exactly those the customers' current states imply —
//! written or not.

use std::collections::{BTreeSet, HashSet};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::customer::Indexed;
use crate::day::Day;

/// Customer ids interned to handles (0, 1, 2, … in the order first seen).
#[derive(Debug, Default)]
pub struct Ids {
    names: Vec<Box<str>>,
    table: HashTable<u32>,
}

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl Ids {
    pub fn get(&self, id: &str) -> Option<u32> {
        self.table
            .find(hash(id), |&h| &*self.names[h as usize] == id)
            .copied()
    }

    /// The handle of `id`, given one if it has none.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(h) = self.get(id) {
            return h;
        }
        let h = self.names.len() as u32;
        self.names.push(id.into());
        let names = &self.names;
        self.table
            .insert_unique(hash(id), h, |&x| hash(&names[x as usize]));
        h
    }

    pub fn name(&self, h: u32) -> &str {
        &self.names[h as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The figures a recalibration looks customers up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// Last purchase day (recency).
    LastDay,
    /// Window purchase count.
    Frequency,
    /// Window monetary, micro-units.
    Monetary,
}

#[derive(Debug, Default)]
pub struct Derived {
    pub ids: Ids,
    timers: BTreeSet<(Day, u32)>,
    by_last_day: BTreeSet<(Day, u32)>,
    by_frequency: BTreeSet<(u32, u32)>,
    by_monetary: BTreeSet<(u64, u32)>,
}

impl Derived {
    /// Move customer `h`'s timer from `old` to `new`.
    pub fn move_timer(&mut self, h: u32, old: Option<Day>, new: Option<Day>) {
        if old == new {
            return;
        }
        if let Some(d) = old {
            self.timers.remove(&(d, h));
        }
        if let Some(d) = new {
            self.timers.insert((d, h));
        }
    }

    /// Move customer `h`'s index entries from `old` to `new` (only the figures that
    /// changed: a timer's window expiry leaves the last purchase day where it was).
    pub fn move_index(&mut self, h: u32, old: Option<Indexed>, new: Option<Indexed>) {
        fn one<T: Ord + Copy>(
            set: &mut BTreeSet<(T, u32)>,
            h: u32,
            old: Option<T>,
            new: Option<T>,
        ) {
            if old != new {
                if let Some(v) = old {
                    set.remove(&(v, h));
                }
                if let Some(v) = new {
                    set.insert((v, h));
                }
            }
        }
        one(
            &mut self.by_last_day,
            h,
            old.map(|i| i.last_day),
            new.map(|i| i.last_day),
        );
        one(
            &mut self.by_frequency,
            h,
            old.map(|i| i.frequency),
            new.map(|i| i.frequency),
        );
        one(
            &mut self.by_monetary,
            h,
            old.map(|i| i.micros),
            new.map(|i| i.micros),
        );
    }

    /// The customers whose timer is due on `day`.
    pub fn due(&self, day: Day, into: &mut Vec<String>) {
        into.extend(
            self.timers
                .range((day, 0)..=(day, u32::MAX))
                .map(|&(_, h)| self.ids.name(h).to_string()),
        );
    }

    /// The customers whose `index` figure lies in `lo..=hi`.
    pub fn customers_in(&self, index: Index, lo: i64, hi: i64, into: &mut HashSet<String>) {
        let handles: Box<dyn Iterator<Item = u32>> = match index {
            Index::LastDay => Box::new(handles_in(&self.by_last_day, lo, hi)),
            Index::Frequency => Box::new(handles_in(&self.by_frequency, lo, hi)),
            Index::Monetary => Box::new(handles_in(&self.by_monetary, lo, hi)),
        };
        into.extend(handles.map(|h| self.ids.name(h).to_string()));
    }

    /// The window monetary figures of purchasers in `lo..=hi`, largest first.
    pub fn monetary_desc(&self, lo: u64, hi: u64) -> impl Iterator<Item = u64> + '_ {
        (lo <= hi)
            .then(|| self.by_monetary.range((lo, 0)..=(hi, u32::MAX)))
            .into_iter()
            .flat_map(|r| r.rev().map(|&(m, _)| m))
    }

    /// Scheduled re-evaluations.
    pub fn timers_len(&self) -> usize {
        self.timers.len()
    }

    /// Compare with the entries the customers' states imply (`want`: handle,
    /// timer, indexed, for every customer): the number of entries missing or
    /// extra.
    pub fn audit(&self, want: impl Iterator<Item = (u32, Option<Day>, Option<Indexed>)>) -> u64 {
        let mut fresh = Derived::default();
        for (h, t, i) in want {
            fresh.move_timer(h, None, t);
            fresh.move_index(h, None, i);
        }
        fn diff<T: Ord>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> u64 {
            a.symmetric_difference(b).count() as u64
        }
        diff(&self.timers, &fresh.timers)
            + diff(&self.by_last_day, &fresh.by_last_day)
            + diff(&self.by_frequency, &fresh.by_frequency)
            + diff(&self.by_monetary, &fresh.by_monetary)
    }
}

/// The handles in `set` whose figure lies in `lo..=hi` (bounds outside `T`'s range
/// clamped; a range wholly outside it is empty).
fn handles_in<T: Ord + Copy + TryFrom<i64> + Bounded>(
    set: &BTreeSet<(T, u32)>,
    lo: i64,
    hi: i64,
) -> impl Iterator<Item = u32> + '_ {
    let clamp = |v: i64| T::try_from(v).map_err(|_| v < 0);
    let range = match (clamp(lo), clamp(hi)) {
        _ if lo > hi => None,
        (Err(false), _) | (_, Err(true)) => None, // above or below every figure
        (lo, hi) => Some((lo.unwrap_or(T::MIN), hi.unwrap_or(T::MAX))),
    };
    range
        .map(|(lo, hi)| set.range((lo, 0)..=(hi, u32::MAX)))
        .into_iter()
        .flatten()
        .map(|&(_, h)| h)
}

trait Bounded {
    const MIN: Self;
    const MAX: Self;
}

impl Bounded for i32 {
    const MIN: i32 = i32::MIN;
    const MAX: i32 = i32::MAX;
}

impl Bounded for u32 {
    const MIN: u32 = 0;
    const MAX: u32 = u32::MAX;
}

impl Bounded for u64 {
    const MIN: u64 = 0;
    const MAX: u64 = u64::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_intern_once() {
        let mut ids = Ids::default();
        let a = ids.intern("a");
        let b = ids.intern("顾客-b");
        assert_ne!(a, b);
        assert_eq!(ids.intern("a"), a);
        assert_eq!(ids.get("顾客-b"), Some(b));
        assert_eq!(ids.get("c"), None);
        assert_eq!(ids.name(b), "顾客-b");
        for i in 0..10_000 {
            ids.intern(&format!("c{i}"));
        }
        assert_eq!(ids.get("c777").map(|h| ids.name(h)), Some("c777"));
        assert_eq!(ids.len(), 10_002);
    }

    /// Moves keep one entry per customer; ranges are inclusive and clamp.
    #[test]
    fn moves_and_ranges() {
        let mut d = Derived::default();
        let (a, b) = (d.ids.intern("a"), d.ids.intern("b"));
        let ix = |last_day, frequency, micros| Indexed {
            last_day,
            frequency,
            micros,
        };
        d.move_index(a, None, Some(ix(10, 2, 500)));
        d.move_index(b, None, Some(ix(12, 5, 900)));
        d.move_index(a, Some(ix(10, 2, 500)), Some(ix(11, 3, 700)));
        d.move_timer(a, None, Some(40));
        d.move_timer(a, Some(40), Some(41));
        d.move_timer(b, None, Some(41));
        let mut due = Vec::new();
        d.due(41, &mut due);
        due.sort();
        assert_eq!(due, ["a", "b"]);
        d.due(40, &mut due);
        assert_eq!(due.len(), 2);
        let mut set = HashSet::new();
        d.customers_in(Index::LastDay, 11, 11, &mut set);
        assert_eq!(set, HashSet::from(["a".to_string()]));
        set.clear();
        d.customers_in(Index::Frequency, -5, i64::MAX, &mut set);
        assert_eq!(set.len(), 2);
        set.clear();
        d.customers_in(Index::Monetary, 701, 900, &mut set);
        assert_eq!(set, HashSet::from(["b".to_string()]));
        assert_eq!(
            d.monetary_desc(0, u64::MAX).collect::<Vec<_>>(),
            vec![900, 700]
        );
        assert_eq!(d.monetary_desc(900, 700).count(), 0, "an empty range");
        let want = [
            (a, Some(41), Some(ix(11, 3, 700))),
            (b, Some(41), Some(ix(12, 5, 900))),
        ];
        assert_eq!(d.audit(want.into_iter()), 0);
        // b's timer and its three index entries are not wanted.
        assert_eq!(d.audit(want[..1].iter().copied()), 4);
    }

    /// A range wholly below or above a figure's type is empty, not clamped onto
    /// its smallest or largest value.
    #[test]
    fn ranges_outside_the_type_are_empty() {
        let mut d = Derived::default();
        let z = d.ids.intern("z");
        let ix = Indexed {
            last_day: 0,
            frequency: 0,
            micros: 0,
        };
        d.move_index(z, None, Some(ix));
        let mut set = HashSet::new();
        d.customers_in(Index::Frequency, -5, -1, &mut set);
        d.customers_in(Index::Monetary, i64::MIN, -1, &mut set);
        d.customers_in(Index::LastDay, i64::MAX - 1, i64::MAX, &mut set);
        assert!(set.is_empty(), "{set:?}");
        d.customers_in(Index::Frequency, -5, 0, &mut set);
        assert_eq!(set, HashSet::from(["z".to_string()]));
    }
}
