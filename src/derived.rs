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
//! Memory: an id and a handle per customer of the partition (its string with 8
//! bytes of header, an 8-byte offset, ~9 bytes of hash table) and four entries of
//! 8–16 bytes, each with its 4-byte position ([`Grouped`]); about 100 bytes a
//! customer, ~100 MB for a million (README, "Derived state in memory").
//!
//! Invariant ([`crate::processor::Processor::audit`] checks it): the timer and
//! index entries are exactly those the customers' current states imply —
//! written or not.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::customer::Indexed;
use crate::day::Day;

/// Customer ids interned to handles (0, 1, 2, … in the order first seen).
///
/// The ids live in one arena, each entry its handle, its length and its bytes
/// together, and the hash table holds entries' offsets: a lookup reads the table
/// and one entry (with a table of handles and a `Box<str>` per id it read a name
/// slot and the string besides — a cache miss each at a million customers).
#[derive(Debug, Default)]
pub struct Ids {
    /// `[handle: u32 LE][len: u32 LE][id bytes]` per id, in handle order.
    arena: Vec<u8>,
    /// Each handle's entry offset in `arena`.
    at: Vec<u64>,
    table: HashTable<u64>,
}

fn hash(id: &[u8]) -> u64 {
    FxBuildHasher.hash_one(id)
}

/// The (handle, id bytes) of the arena entry at `off`.
fn entry(arena: &[u8], off: u64) -> (u32, &[u8]) {
    let o = off as usize;
    let word = |i: usize| u32::from_le_bytes(arena[i..i + 4].try_into().unwrap());
    let len = word(o + 4) as usize;
    (word(o), &arena[o + 8..o + 8 + len])
}

impl Ids {
    pub fn get(&self, id: &str) -> Option<u32> {
        let arena = &self.arena;
        self.table
            .find(hash(id.as_bytes()), |&off| {
                entry(arena, off).1 == id.as_bytes()
            })
            .map(|&off| entry(arena, off).0)
    }

    /// The handle of `id`, given one if it has none.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(h) = self.get(id) {
            return h;
        }
        let h = self.at.len() as u32;
        let off = self.arena.len() as u64;
        self.arena.extend_from_slice(&h.to_le_bytes());
        self.arena
            .extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.arena.extend_from_slice(id.as_bytes());
        self.at.push(off);
        let arena = &self.arena;
        self.table
            .insert_unique(hash(id.as_bytes()), off, |&o| hash(entry(arena, o).1));
        h
    }

    pub fn name(&self, h: u32) -> &str {
        // Only `&str`s go in (`intern`).
        std::str::from_utf8(self.bytes(h)).expect("ids are strings")
    }

    /// The id of `h` as the store's key (no UTF-8 check: for sorts and lookups).
    pub fn bytes(&self, h: u32) -> &[u8] {
        entry(&self.arena, self.at[h as usize]).1
    }

    /// Hint where `h`'s id is: its offset, then (`near`) its bytes
    /// ([`crate::hint`]).
    #[inline]
    pub fn hint(&self, h: u32, near: bool) {
        if !near {
            crate::hint::prefetch_at(&self.at, h as usize);
        } else if let Some(&off) = self.at.get(h as usize) {
            crate::hint::prefetch_at(&self.arena, off as usize);
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
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
    timers: Grouped<Day>,
    by_last_day: Grouped<Day>,
    by_frequency: Grouped<u32>,
    by_monetary: Grouped<u64>,
}

impl Derived {
    /// Hint customer `h`'s entries by handle in the timer calendar and the
    /// indexes ([`crate::hint`]): an event moves them.
    #[inline]
    pub fn hint(&self, h: u32) {
        for pos in [
            &self.timers.pos,
            &self.by_last_day.pos,
            &self.by_frequency.pos,
            &self.by_monetary.pos,
        ] {
            crate::hint::prefetch_at(pos, h as usize);
        }
    }

    /// Move customer `h`'s timer from `old` to `new`.
    pub fn move_timer(&mut self, h: u32, old: Option<Day>, new: Option<Day>) {
        self.timers.relocate(h, old, new);
    }

    /// Move customer `h`'s index entries from `old` to `new` (only the figures that
    /// changed: a timer's window expiry leaves the last purchase day where it was).
    pub fn move_index(&mut self, h: u32, old: Option<Indexed>, new: Option<Indexed>) {
        self.by_last_day
            .relocate(h, old.map(|i| i.last_day), new.map(|i| i.last_day));
        self.by_frequency
            .relocate(h, old.map(|i| i.frequency), new.map(|i| i.frequency));
        self.by_monetary
            .relocate(h, old.map(|i| i.micros), new.map(|i| i.micros));
    }

    /// The customers (handles) whose timer is due on `day`.
    pub fn due(&self, day: Day, into: &mut Vec<u32>) {
        into.extend(self.timers.in_range(day, day).map(|(_, h)| h));
    }

    /// The customers (handles) whose `index` figure lies in `lo..=hi`.
    pub fn customers_in(&self, index: Index, lo: i64, hi: i64, into: &mut HashSet<u32>) {
        let mut handles = Vec::new();
        match index {
            Index::LastDay => self.by_last_day.handles_in(lo, hi, &mut handles),
            Index::Frequency => self.by_frequency.handles_in(lo, hi, &mut handles),
            Index::Monetary => self.by_monetary.handles_in(lo, hi, &mut handles),
        }
        into.extend(handles);
    }

    /// Customers (handles) in the store's order: by id, byte by byte.
    pub fn sort_by_id(&self, handles: &mut Vec<u32>) {
        handles.sort_unstable_by(|&a, &b| self.ids.bytes(a).cmp(self.ids.bytes(b)));
        handles.dedup();
    }

    /// The window monetary figures of purchasers in `lo..=hi`, largest first.
    pub fn monetary_desc(&self, lo: u64, hi: u64) -> Vec<u64> {
        let mut m: Vec<u64> = self.by_monetary.in_range(lo, hi).map(|(m, _)| m).collect();
        m.sort_unstable_by(|a, b| b.cmp(a));
        m
    }

    /// Scheduled re-evaluations.
    pub fn timers_len(&self) -> usize {
        self.timers.len
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
        self.timers.differences(&fresh.timers)
            + self.by_last_day.differences(&fresh.by_last_day)
            + self.by_frequency.differences(&fresh.by_frequency)
            + self.by_monetary.differences(&fresh.by_monetary)
    }
}

/// Where a handle without an entry is in [`Grouped::pos`].
const NONE: u32 = u32::MAX;

/// One figure's entries (value, customer handle), at most one per customer,
/// grouped by a coarse, order-keeping key of the value ([`Figure::group`]). A move
/// is a swap-remove from one group's vector and a push onto another's, O(1) with
/// the entry's position kept per handle; the `BTreeSet<(value, handle)>` this
/// replaces walked and rebalanced several levels of nodes for each of a move's
/// remove and insert (~10 % of a replay's CPU for the four sets). A range read
/// visits the groups that overlap the range and filters: in no particular order.
#[derive(Debug)]
struct Grouped<T> {
    groups: BTreeMap<i64, Vec<(T, u32)>>,
    /// Each handle's index in its group's vector, `NONE` without an entry.
    pos: Vec<u32>,
    len: usize,
}

impl<T> Default for Grouped<T> {
    fn default() -> Self {
        Grouped {
            groups: BTreeMap::new(),
            pos: Vec::new(),
            len: 0,
        }
    }
}

/// A figure a [`Grouped`] files customers under.
trait Figure: Copy + Ord + TryFrom<i64> + Bounded {
    /// The group of a value: `a ≤ b ⇒ group(a) ≤ group(b)`.
    fn group(self) -> i64;
}

impl Figure for i32 {
    fn group(self) -> i64 {
        self as i64 // days: a group per day
    }
}

impl Figure for u32 {
    fn group(self) -> i64 {
        self as i64 // counts: a group per count
    }
}

impl Figure for u64 {
    /// Money: 16 groups per power of two (below 16, one per value).
    fn group(self) -> i64 {
        if self < 16 {
            return self as i64;
        }
        let bits = 63 - self.leading_zeros() as i64;
        bits * 16 + ((self >> (bits - 4)) & 15) as i64
    }
}

impl<T: Figure> Grouped<T> {
    fn relocate(&mut self, h: u32, old: Option<T>, new: Option<T>) {
        if old == new {
            return;
        }
        if let Some(v) = old {
            self.remove(h, v);
        }
        if let Some(v) = new {
            self.insert(h, v);
        }
    }

    fn insert(&mut self, h: u32, v: T) {
        let hi = h as usize;
        if self.pos.len() <= hi {
            self.pos.resize(hi + 1, NONE);
        }
        debug_assert_eq!(self.pos[hi], NONE, "a second entry for handle {h}");
        let list = self.groups.entry(v.group()).or_default();
        self.pos[hi] = list.len() as u32;
        list.push((v, h));
        self.len += 1;
    }

    /// Remove `(v, h)`; nothing if that is not `h`'s entry.
    fn remove(&mut self, h: u32, v: T) {
        let Some(&p) = self.pos.get(h as usize) else {
            return;
        };
        let g = v.group();
        let Some(list) = self.groups.get_mut(&g) else {
            return;
        };
        if p == NONE || list.get(p as usize) != Some(&(v, h)) {
            return;
        }
        list.swap_remove(p as usize);
        if let Some(&(_, moved)) = list.get(p as usize) {
            self.pos[moved as usize] = p;
        }
        if list.is_empty() {
            self.groups.remove(&g); // a timer day that has passed, a figure left
        } else if list.capacity() > 64 && list.len() < list.capacity() / 4 {
            // A day's last-purchase group fills on its day and drains as its
            // customers buy again: without this, every day kept room for all of
            // that day's buyers (+50 MB at 1M customers).
            list.shrink_to(list.len() * 2);
        }
        self.pos[h as usize] = NONE;
        self.len -= 1;
    }

    /// The entries with a value in `lo..=hi`.
    fn in_range(&self, lo: T, hi: T) -> impl Iterator<Item = (T, u32)> + '_ {
        (lo <= hi)
            .then(|| self.groups.range(lo.group()..=hi.group()))
            .into_iter()
            .flatten()
            .flat_map(|(_, list)| list.iter().copied())
            .filter(move |&(v, _)| lo <= v && v <= hi)
    }

    /// The handles whose value lies in `lo..=hi` (bounds outside `T`'s range
    /// clamped; a range wholly outside it is empty).
    fn handles_in(&self, lo: i64, hi: i64, into: &mut Vec<u32>) {
        let clamp = |v: i64| T::try_from(v).map_err(|_| v < 0);
        let range = match (clamp(lo), clamp(hi)) {
            _ if lo > hi => None,
            (Err(false), _) | (_, Err(true)) => None, // above or below every figure
            (lo, hi) => Some((lo.unwrap_or(T::MIN), hi.unwrap_or(T::MAX))),
        };
        if let Some((lo, hi)) = range {
            into.extend(self.in_range(lo, hi).map(|(_, h)| h));
        }
    }

    /// Entries in one and not the other (for the audit).
    fn differences(&self, other: &Grouped<T>) -> u64 {
        let all = |g: &Grouped<T>| -> BTreeSet<(T, u32)> {
            g.groups.values().flatten().copied().collect()
        };
        all(self).symmetric_difference(&all(other)).count() as u64
    }
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
        // Every id found again under its own handle after the table grew; prefixes,
        // the empty id and a long one are ids of their own.
        let long = "x".repeat(70_000);
        let (e, l) = (ids.intern(""), ids.intern(&long));
        assert_eq!((ids.name(e), ids.name(l)), ("", long.as_str()));
        for i in 0..10_000 {
            let id = format!("c{i}");
            let h = ids.get(&id).expect("interned");
            assert_eq!((h, ids.name(h)), (i + 2, id.as_str()));
        }
        assert_eq!(ids.get("c1000").map(|h| ids.name(h)), Some("c1000"));
        assert_eq!(ids.get("c10000"), None);
        assert_eq!(ids.get(&long[1..]), None);
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
        assert_eq!(due, [a, b]);
        d.due(40, &mut due);
        assert_eq!(due.len(), 2);
        let mut set = HashSet::new();
        d.customers_in(Index::LastDay, 11, 11, &mut set);
        assert_eq!(set, HashSet::from([a]));
        set.clear();
        d.customers_in(Index::Frequency, -5, i64::MAX, &mut set);
        assert_eq!(set.len(), 2);
        set.clear();
        d.customers_in(Index::Monetary, 701, 900, &mut set);
        assert_eq!(set, HashSet::from([b]));
        assert_eq!(d.monetary_desc(0, u64::MAX), vec![900, 700]);
        assert!(d.monetary_desc(900, 700).is_empty(), "an empty range");
        let want = [
            (a, Some(41), Some(ix(11, 3, 700))),
            (b, Some(41), Some(ix(12, 5, 900))),
        ];
        assert_eq!(d.audit(want.into_iter()), 0);
        // b's timer and its three index entries are not wanted.
        assert_eq!(d.audit(want[..1].iter().copied()), 4);
    }

    /// Random moves against the ordered set `Grouped` replaced: the same entries
    /// after every move, the same answers to range reads (money spanning many
    /// groups, values around group edges, moves within a group), removes of
    /// entries not there ignored.
    #[test]
    fn grouped_matches_an_ordered_set() {
        let mut g: Grouped<u64> = Grouped::default();
        let mut model: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut now: Vec<Option<u64>> = vec![None; 300];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..20_000 {
            let h = (next() % 300) as u32;
            let r = next();
            let v = match r % 5 {
                0 => None,
                4 => Some(now[h as usize].map_or(1_000, |m| m + r % 7)), // mostly in its group
                1 => Some(r >> 60),                                      // 0..15: a group per value
                2 => Some((1 << (r % 40)) + r % 3),                      // around powers of two
                _ => Some(r % 5_000_000_000),
            };
            let old = now[h as usize];
            g.relocate(h, old, v);
            if old != v {
                if let Some(o) = old {
                    model.remove(&(o, h));
                }
                if let Some(n) = v {
                    model.insert((n, h));
                }
                now[h as usize] = v;
            }
            // A remove of an entry that is not there changes nothing.
            g.remove(h, v.map_or(3, |n| n + 1));
            if step % 1000 == 0 || step == 19_999 {
                let all: BTreeSet<(u64, u32)> = g.groups.values().flatten().copied().collect();
                assert_eq!(all, model, "step {step}");
                assert_eq!(g.len, model.len());
                for (lo, hi) in [
                    (0, u64::MAX),
                    (16, 31),
                    (1 << 20, (1 << 21) - 1),
                    (5, 70_000),
                ] {
                    let mut got: Vec<(u64, u32)> = g.in_range(lo, hi).collect();
                    got.sort();
                    let want: Vec<(u64, u32)> =
                        model.range((lo, 0)..=(hi, u32::MAX)).copied().collect();
                    assert_eq!(got, want, "{lo}..={hi} at step {step}");
                }
            }
        }
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
        assert_eq!(set, HashSet::from([z]));
    }

    /// Handles sorted as the store orders keys (by the id's bytes, not by when
    /// the id was interned), each once.
    #[test]
    fn sort_by_id_is_the_store_order() {
        let mut d = Derived::default();
        let names = ["b", "顾客", "a", "ab", "B", "", "a\u{0}"];
        let hs: Vec<u32> = names.iter().map(|n| d.ids.intern(n)).collect();
        let mut got: Vec<u32> = hs.iter().chain(&hs).rev().copied().collect();
        d.sort_by_id(&mut got);
        let got: Vec<&str> = got.iter().map(|&h| d.ids.name(h)).collect();
        let mut want = names.to_vec();
        want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(got, want);
    }
}
