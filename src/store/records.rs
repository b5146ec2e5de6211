//! A partition's stored customer records, also kept in memory as stored (encoded),
//! so that loading a customer the decoded cache let go is a decode, not a RocksDB
//! read.
//!
//! At a million customers the decoded cache (`engine.customer_cache`) holds a
//! fifth of them, and every other customer an event touches was read back from
//! RocksDB: a multi-get through the memtables, the block index, a block read and
//! its LZ4 decompression — 20 % of a 1M replay's CPU (BENCHMARKS.md). An encoded
//! record is ~260 bytes for a year's history, a fifth of its decoded form (~1.2
//! KiB), so the whole population fits in memory where the decoded one does not.
//!
//! Entries are by customer handle ([`crate::derived::Ids`]), filled by the scan
//! `open` already makes and at every write with the bytes written: an entry is
//! always the record the store holds, or the one the next write will store (every
//! change is encoded here at once, `Processor::record`). Memory is bounded by a
//! budget (`engine.record_cache_mb`): a written record that would exceed it is not
//! kept, and from then on a customer without an entry is asked of the store. While
//! no record was ever refused or let go (`complete`), a customer without an entry
//! is known not to be stored, and not even asked.
//!
//! A record not written yet ([`Records::put_unwritten`]) must be held until the
//! write: it makes room by letting written ones go (a sweep, CLOCK-like, over the
//! slots), which the store still has. So a full budget does not force a write
//! every time the decoded cache is full, and a replay's batches stay at
//! `engine.batch_events` however large the population.

/// What the records know of one customer.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Its stored record.
    Held(&'a [u8]),
    /// It has no stored record.
    Absent,
    /// Not kept here: ask the store.
    Unknown,
}

/// Bytes an entry costs beyond its record: the slot's pointer and length.
const SLOT: usize = std::mem::size_of::<Option<Box<[u8]>>>();

#[derive(Debug)]
pub struct Records {
    held: Vec<Option<Box<[u8]>>>,
    /// Bytes held: records and slots.
    bytes: usize,
    budget: usize,
    /// Every stored record is held (none was ever refused for the budget or let
    /// go for room).
    complete: bool,
    /// Held records not written yet (never let go), as a bit per slot and a list.
    unwritten: Vec<u64>,
    unwritten_list: Vec<u32>,
    /// Where the next sweep for room starts.
    hand: usize,
}

impl Records {
    /// Records kept within `budget` bytes (0: none kept, every lookup asks the store).
    pub fn new(budget: usize) -> Records {
        Records {
            held: Vec::new(),
            bytes: 0,
            budget,
            complete: budget > 0,
            unwritten: Vec::new(),
            unwritten_list: Vec::new(),
            hand: 0,
        }
    }

    pub fn lookup(&self, handle: u32) -> Lookup<'_> {
        match self.held.get(handle as usize) {
            Some(Some(b)) => Lookup::Held(b),
            _ if self.complete => Lookup::Absent,
            _ => Lookup::Unknown,
        }
    }

    /// Hint `handle`'s slot ([`crate::hint`]): the first step of reading its
    /// record an event or two ahead.
    #[inline]
    pub fn hint_slot(&self, handle: u32) {
        crate::hint::prefetch_at(&self.held, handle as usize);
    }

    /// Hint the bytes of `handle`'s record, if held (its slot hinted before).
    #[inline]
    pub fn hint_record(&self, handle: u32) {
        if let Some(Some(b)) = self.held.get(handle as usize) {
            crate::hint::prefetch_bytes(b, 8);
        }
    }

    /// `record` is now `handle`'s record, as the store holds it (or as the write
    /// under way stores it). False: not kept, for the budget (nor any older record
    /// of it).
    pub fn put(&mut self, handle: u32, record: &[u8]) -> bool {
        self.hold(handle, record, false)
    }

    /// `record` is now `handle`'s record, to be written at the next flush
    /// ([`Records::written`]): held until then, room made by letting written
    /// records go. False: not kept (the budget is full of unwritten records).
    pub fn put_unwritten(&mut self, handle: u32, record: &[u8]) -> bool {
        if !self.hold(handle, record, true) {
            return false;
        }
        let (word, bit) = (handle as usize / 64, 1u64 << (handle % 64));
        if word >= self.unwritten.len() {
            self.unwritten.resize(word + 1, 0);
        }
        if self.unwritten[word] & bit == 0 {
            self.unwritten[word] |= bit;
            self.unwritten_list.push(handle);
        }
        true
    }

    /// Customers whose held record is not written yet (each once, in the order first changed).
    pub fn unwritten(&self) -> &[u32] {
        &self.unwritten_list
    }

    /// The unwritten records go into the write under way: they may be let go from
    /// now on. Returns their customers.
    pub fn written(&mut self) -> Vec<u32> {
        for &h in &self.unwritten_list {
            self.unwritten[h as usize / 64] &= !(1u64 << (h % 64));
        }
        std::mem::take(&mut self.unwritten_list)
    }

    fn is_unwritten(&self, h: usize) -> bool {
        self.unwritten
            .get(h / 64)
            .is_some_and(|w| w & (1u64 << (h % 64)) != 0)
    }

    /// Let written records go, sweeping on from the last sweep, until `need` more
    /// bytes fit (never `keep`'s); false if they cannot.
    fn make_room(&mut self, need: usize, keep: usize) -> bool {
        let n = self.held.len();
        let mut seen = 0;
        while self.bytes + need > self.budget && seen < n {
            let i = self.hand % n;
            self.hand = i + 1;
            seen += 1;
            if i == keep || self.is_unwritten(i) {
                continue;
            }
            if let Some(b) = self.held[i].take() {
                self.bytes -= b.len();
                self.complete = false;
            }
        }
        self.bytes + need <= self.budget
    }

    fn hold(&mut self, handle: u32, record: &[u8], evict: bool) -> bool {
        let h = handle as usize;
        if h >= self.held.len() {
            let grow = h + 1 - self.held.len();
            if self.bytes + grow * SLOT > self.budget && !(evict && self.make_room(grow * SLOT, h))
            {
                self.complete = false;
                return false;
            }
            self.held.resize_with(h + 1, || None);
            self.bytes += grow * SLOT;
        }
        let old = self.held[h].as_ref().map_or(0, |b| b.len());
        if self.bytes - old + record.len() > self.budget
            && !(evict && self.make_room(record.len().saturating_sub(old), h))
        {
            // Over the budget: not kept (nor the stale one).
            self.bytes -= old;
            self.held[h] = None;
            self.complete = false;
            return false;
        }
        self.bytes = self.bytes - old + record.len();
        match &mut self.held[h] {
            // Same length (a customer's record rarely changes size): reuse it.
            // (Resized in place instead, jemalloc's `rallocx` cost more than the
            // new allocation: 3.4 % of a 1M replay.)
            Some(b) if b.len() == record.len() => b.copy_from_slice(record),
            e => *e = Some(record.into()),
        }
        true
    }

    /// A new budget. Past it, nothing is held any more (and the cache is no longer
    /// complete). Only while every held record is also stored.
    pub fn set_budget(&mut self, budget: usize) {
        if self.bytes > budget {
            self.held = Vec::new();
            self.bytes = 0;
            self.complete = false;
        }
        self.budget = budget;
    }

    /// Bytes held (records and their slots).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.held.iter().filter(|e| e.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stored record is held.
    pub fn complete(&self) -> bool {
        self.complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_held_is_the_last_record_put() {
        let mut r = Records::new(1 << 20);
        assert_eq!(r.lookup(3), Lookup::Absent);
        r.put(3, b"abc");
        r.put(0, b"x");
        assert_eq!(r.lookup(3), Lookup::Held(b"abc"));
        r.put(3, b"xyz");
        assert_eq!(r.lookup(3), Lookup::Held(b"xyz"));
        r.put(3, b"longer");
        assert_eq!(r.lookup(3), Lookup::Held(b"longer"));
        assert_eq!(r.lookup(1), Lookup::Absent);
        assert_eq!(r.bytes(), 4 * SLOT + 1 + 6);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn past_the_budget_records_are_asked_of_the_store() {
        // Room for two slots and 10 bytes.
        let mut r = Records::new(2 * SLOT + 10);
        r.put(0, b"12345");
        r.put(1, b"12345");
        assert!(r.complete());
        // A third slot does not fit: customer 2 is unknown from now on, and so is
        // any customer without an entry.
        assert!(!r.put(2, b"1"));
        assert!(!r.complete());
        assert_eq!(r.lookup(2), Lookup::Unknown);
        assert_eq!(r.lookup(0), Lookup::Held(b"12345"));
        // A record that grows past the budget is dropped, never left stale.
        assert!(!r.put(1, b"123456"));
        assert_eq!(r.lookup(1), Lookup::Unknown);
        assert!(r.bytes() <= 2 * SLOT + 10);
        // Its room is taken again by a record that fits.
        assert!(r.put(1, b"1234"));
        assert_eq!(r.lookup(1), Lookup::Held(b"1234"));
    }

    #[test]
    fn unwritten_records_let_written_ones_go_and_are_never_let_go() {
        // Room for four slots and 12 bytes.
        let mut r = Records::new(4 * SLOT + 12);
        assert!(r.put(0, b"aaaa"));
        assert!(r.put(1, b"bbbb"));
        assert!(r.put(2, b"cccc"));
        assert!(r.complete());
        // Full: a written record is refused ...
        assert!(!r.put(3, b"dddd"));
        assert_eq!(r.lookup(3), Lookup::Unknown);
        // ... an unwritten one lets a written one go (which the store has).
        assert!(r.put_unwritten(3, b"DDDD"));
        assert_eq!(r.lookup(3), Lookup::Held(b"DDDD"));
        let held = |r: &Records| {
            (0..3)
                .filter(|&h| matches!(r.lookup(h), Lookup::Held(_)))
                .count()
        };
        assert_eq!(held(&r), 2);
        assert!(!r.complete());
        // Unwritten ones are never let go: with the rest unwritten too, there is no
        // room left for another.
        let gone = (0..3).find(|&h| r.lookup(h) == Lookup::Unknown).unwrap();
        for h in 0..3 {
            if let Lookup::Held(b) = r.lookup(h) {
                let b = b.to_vec();
                assert!(r.put_unwritten(h, &b));
            }
        }
        assert!(!r.put_unwritten(gone, b"EEEE"));
        assert_eq!(r.lookup(3), Lookup::Held(b"DDDD"));
        assert_eq!(held(&r), 2);
        // Once written, they may go again.
        assert_eq!(r.unwritten().len(), 3);
        r.written();
        assert!(r.put_unwritten(gone, b"EEEE"));
        assert_eq!(r.lookup(gone), Lookup::Held(b"EEEE"));
        assert_eq!(held(&r), 2);
        assert!(r.bytes() <= 4 * SLOT + 12);
    }

    #[test]
    fn no_budget_holds_nothing() {
        let mut r = Records::new(0);
        r.put(0, b"a");
        assert_eq!(r.lookup(0), Lookup::Unknown);
        assert_eq!(r.bytes(), 0);
    }
}
