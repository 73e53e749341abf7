//! The flow table: open addressing with linear probing over a preallocated array of slab
//! indices, keyed by a secret-keyed hash of the 4-tuple ([`super::hash::FlowHasher`]).
//! Deletion shifts entries back (no tombstones), so lookups stay short however long the engine
//! runs.

/// A connection's 4-tuple (addresses as big-endian `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct FlowKey {
    /// Our address.
    pub(crate) laddr: u32,
    /// Our port.
    pub(crate) lport: u16,
    /// The peer's address.
    pub(crate) raddr: u32,
    /// The peer's port.
    pub(crate) rport: u16,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Slab index + 1; 0 = empty.
    idx: u32,
    /// Low bits of the key's hash (the ideal position and a cheap filter).
    hash: u32,
}

#[derive(Debug)]
pub(crate) struct FlowTable {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
}

impl FlowTable {
    /// A table for up to `max` flows (load factor at most 1/2).
    pub(crate) fn new(max: usize) -> Self {
        let cap = (max.max(4) * 2).next_power_of_two();
        FlowTable {
            slots: vec![Slot { idx: 0, hash: 0 }; cap],
            mask: cap - 1,
            len: 0,
        }
    }

    /// Number of flows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Finds the flow with `hash` for which `is` (given a slab index) says the key matches.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let h = hash as u32;
        let mut i = h as usize & self.mask;
        loop {
            let s = self.slots[i];
            if s.idx == 0 {
                return None;
            }
            if s.hash == h && is(s.idx - 1) {
                return Some(s.idx - 1);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts slab index `idx` under `hash` (the caller checked it is absent and that the slab
    /// bound keeps the table at most half full).
    pub(crate) fn insert(&mut self, hash: u64, idx: u32) {
        debug_assert!(self.len < self.slots.len() / 2 + 1);
        let h = hash as u32;
        let mut i = h as usize & self.mask;
        while self.slots[i].idx != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            idx: idx + 1,
            hash: h,
        };
        self.len += 1;
    }

    /// Removes slab index `idx` stored under `hash`.
    pub(crate) fn remove(&mut self, hash: u64, idx: u32) {
        let h = hash as u32;
        let mut i = h as usize & self.mask;
        loop {
            let s = self.slots[i];
            if s.idx == 0 {
                return; // not present
            }
            if s.idx == idx + 1 {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        loop {
            let s = self.slots[j];
            if s.idx == 0 {
                break;
            }
            let ideal = s.hash as usize & self.mask;
            // Move `s` into the hole if its ideal position is not in (hole, j].
            if (j.wrapping_sub(ideal) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole] = Slot { idx: 0, hash: 0 };
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_with_collisions() {
        let mut t = FlowTable::new(8); // 16 slots
                                       // All hash to slot 3 (low bits) except one, forcing probe chains and wrap-around.
        let hashes = [3u64, 3 + 16, 3 + 32, 15, 3 + 48, 15 + 16];
        for (i, &h) in hashes.iter().enumerate() {
            t.insert(h, i as u32);
        }
        assert_eq!(t.len(), 6);
        for (i, &h) in hashes.iter().enumerate() {
            assert_eq!(t.find(h, |k| k == i as u32), Some(i as u32));
        }
        t.remove(hashes[1], 1);
        t.remove(hashes[3], 3);
        for (i, &h) in hashes.iter().enumerate() {
            let expect = if i == 1 || i == 3 {
                None
            } else {
                Some(i as u32)
            };
            assert_eq!(t.find(h, |k| k == i as u32), expect, "{i}");
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn churn_keeps_everything_findable() {
        let mut t = FlowTable::new(64);
        let mut live = std::collections::HashMap::new();
        let mut x = 12345u64;
        for step in 0..20_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let idx = (x >> 33) as u32 % 64;
            let h = (x >> 7) & 0xff; // many collisions
            if let Some(old) = live.remove(&idx) {
                t.remove(old, idx);
            } else {
                t.insert(h, idx);
                live.insert(idx, h);
            }
            if step % 97 == 0 {
                for (&i, &h) in &live {
                    assert_eq!(t.find(h, |k| k == i), Some(i));
                }
            }
        }
        assert_eq!(t.len(), live.len());
    }
}
