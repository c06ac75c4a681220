//! Allocation of slot ranges in `WEIR_LB_TABLE`. Freed ranges wait out a
//! grace period before reuse, so a packet that read a service's old range
//! never sees it rewritten for another service.

use std::time::{Duration, Instant};

const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Slab {
    capacity: u32,
    /// Free ranges (base, len), sorted by base, coalesced.
    free: Vec<(u32, u32)>,
    /// Freed ranges waiting for their grace period.
    quarantine: Vec<(Instant, u32, u32)>,
}

impl Slab {
    /// A slab of `capacity` slots, with `used` ranges already taken.
    pub fn new(capacity: u32, used: &[(u32, u32)]) -> Self {
        let mut used: Vec<(u32, u32)> = used.iter().copied().filter(|r| r.1 > 0).collect();
        used.sort();
        let mut free = Vec::new();
        let mut cursor = 0u32;
        for (base, len) in used {
            if base > cursor {
                free.push((cursor, base - cursor));
            }
            cursor = cursor.max(base.saturating_add(len));
        }
        if cursor < capacity {
            free.push((cursor, capacity - cursor));
        }
        Self { capacity, free, quarantine: Vec::new() }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots currently allocated (quarantined ones count as used).
    pub fn used(&self) -> u32 {
        self.capacity - self.free.iter().map(|r| r.1).sum::<u32>()
    }

    /// Slots free for allocation now (ranges past their grace period).
    pub fn free_now(&mut self) -> u32 {
        self.release_expired(Instant::now());
        self.free.iter().map(|r| r.1).sum()
    }

    /// Takes in the slots `[capacity, to)` of a table that grew to `to`.
    pub fn grow(&mut self, to: u32) {
        if to > self.capacity {
            let (base, len) = (self.capacity, to - self.capacity);
            self.capacity = to;
            self.insert_free(base, len);
        }
    }

    /// Allocates `len` contiguous slots; `None` when no range is large enough.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        self.release_expired(Instant::now());
        let i = self.free.iter().position(|r| r.1 >= len)?;
        let (base, flen) = self.free[i];
        if flen == len {
            self.free.remove(i);
        } else {
            self.free[i] = (base + len, flen - len);
        }
        Some(base)
    }

    /// Returns a range; it becomes reusable after the grace period.
    pub fn free(&mut self, base: u32, len: u32) {
        if len > 0 {
            self.quarantine.push((Instant::now(), base, len));
        }
    }

    /// Returns a range no frontend ever pointed at (a failed write): no
    /// packet can be reading it, so it is reusable at once.
    pub fn give_back(&mut self, base: u32, len: u32) {
        if len > 0 {
            self.insert_free(base, len);
        }
    }

    fn release_expired(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.quarantine.len() {
            if now.duration_since(self.quarantine[i].0) >= GRACE {
                let (_, base, len) = self.quarantine.swap_remove(i);
                self.insert_free(base, len);
            } else {
                i += 1;
            }
        }
    }

    fn insert_free(&mut self, base: u32, len: u32) {
        let pos = self.free.partition_point(|r| r.0 < base);
        self.free.insert(pos, (base, len));
        // Coalesce with neighbours.
        if pos + 1 < self.free.len() && self.free[pos].0 + self.free[pos].1 == self.free[pos + 1].0 {
            self.free[pos].1 += self.free[pos + 1].1;
            self.free.remove(pos + 1);
        }
        if pos > 0 && self.free[pos - 1].0 + self.free[pos - 1].1 == self.free[pos].0 {
            self.free[pos - 1].1 += self.free[pos].1;
            self.free.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_around_used_ranges() {
        let mut s = Slab::new(100, &[(10, 10), (50, 5)]);
        assert_eq!(s.alloc(10), Some(0));
        assert_eq!(s.alloc(25), Some(20));
        assert_eq!(s.alloc(40), Some(55));
        assert_eq!(s.alloc(10), None);
        assert_eq!(s.used(), 90, "two 5-slot gaps stay free");
    }

    #[test]
    fn freed_ranges_wait_out_the_grace_period_then_coalesce() {
        let mut s = Slab::new(30, &[]);
        let a = s.alloc(10).expect("a");
        let b = s.alloc(10).expect("b");
        s.free(a, 10);
        s.free(b, 10);
        assert_eq!(s.alloc(20), None, "quarantined ranges are not reused at once");
        s.release_expired(Instant::now() + GRACE);
        assert_eq!(s.alloc(30), Some(0), "neighbours coalesce");
    }

    #[test]
    fn a_grown_table_extends_its_last_free_range() {
        let mut s = Slab::new(30, &[(0, 20)]);
        assert_eq!(s.alloc(20), None);
        s.grow(64);
        assert_eq!((s.capacity(), s.used(), s.free_now()), (64, 20, 44));
        assert_eq!(s.alloc(44), Some(20), "the old tail and the new slots are one range");
        s.grow(32);
        assert_eq!(s.capacity(), 64, "a table never shrinks");
    }

    #[test]
    fn a_range_given_back_is_reusable_at_once() {
        let mut s = Slab::new(30, &[]);
        let a = s.alloc(20).expect("a");
        s.give_back(a, 20);
        assert_eq!((s.used(), s.alloc(30)), (0, Some(0)), "never published: no grace period");
    }
}
