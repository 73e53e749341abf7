//! A hashed timing wheel: O(1) arm and cancel, one intrusive list per slot.
//!
//! Each connection has at most one entry (its earliest deadline). Deadlines are rounded up to
//! the next tick, so a timer never fires early and at most one tick late. Entries further than
//! one turn ahead stay in their slot and are skipped until their turn comes.

use crate::time::Instant;

const NIL: u32 = u32::MAX;
/// Tick length in microseconds.
pub(crate) const TICK_US: u64 = 1000;
/// Slots (a power of two): one turn of the wheel is `SLOTS` ticks.
const SLOTS: usize = 4096;

#[derive(Debug)]
pub(crate) struct Wheel {
    head: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Deadline tick of each entry; 0 when not armed.
    tick: Vec<u64>,
    occupied: Vec<u64>,
    /// Last tick processed by [`Wheel::expire`].
    current: u64,
    armed: usize,
}

impl Wheel {
    /// A wheel for entries `0..n`.
    pub(crate) fn new(n: usize) -> Self {
        Wheel {
            head: vec![NIL; SLOTS],
            next: vec![NIL; n],
            prev: vec![NIL; n],
            tick: vec![0; n],
            occupied: vec![0; SLOTS / 64],
            current: 0,
            armed: 0,
        }
    }

    /// The tick at or after `t`.
    fn tick_of(t: Instant) -> u64 {
        t.as_micros().div_ceil(TICK_US)
    }

    /// Number of armed entries.
    #[cfg(test)]
    pub(crate) fn armed(&self) -> usize {
        self.armed
    }

    /// Arms (or moves) entry `i` for `at`; `Instant::MAX` cancels.
    pub(crate) fn set(&mut self, i: u32, at: Instant) {
        if at == Instant::MAX {
            self.cancel(i);
            return;
        }
        let t = Self::tick_of(at).max(self.current + 1);
        if self.tick[i as usize] == t {
            return;
        }
        self.cancel(i);
        let s = (t as usize) & (SLOTS - 1);
        let h = self.head[s];
        self.next[i as usize] = h;
        self.prev[i as usize] = NIL;
        if h != NIL {
            self.prev[h as usize] = i;
        }
        self.head[s] = i;
        self.tick[i as usize] = t;
        self.occupied[s / 64] |= 1 << (s % 64);
        self.armed += 1;
    }

    /// Cancels entry `i` (no-op when not armed).
    pub(crate) fn cancel(&mut self, i: u32) {
        let t = self.tick[i as usize];
        if t == 0 {
            return;
        }
        let s = (t as usize) & (SLOTS - 1);
        let (p, n) = (self.prev[i as usize], self.next[i as usize]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head[s] = n;
            if n == NIL {
                self.occupied[s / 64] &= !(1 << (s % 64));
            }
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
        self.tick[i as usize] = 0;
        self.armed -= 1;
    }

    /// The earliest time worth waking at: the next occupied slot's tick (an entry there may
    /// belong to a later turn, which costs one spurious wakeup per turn).
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        if self.armed == 0 {
            return None;
        }
        let start = self.current + 1;
        let mut k = 0u64;
        while k < SLOTS as u64 {
            let s = ((start + k) as usize) & (SLOTS - 1);
            let bit = s % 64;
            let word = self.occupied[s / 64] >> bit;
            if word == 0 {
                k += 64 - bit as u64;
                continue;
            }
            k += word.trailing_zeros() as u64;
            if k >= SLOTS as u64 {
                break;
            }
            return Some(Instant::from_micros((start + k) * TICK_US));
        }
        Some(Instant::from_micros((start + SLOTS as u64) * TICK_US))
    }

    /// Advances to `now`, pushing every entry whose deadline passed into `out` (unarmed).
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<u32>) {
        let now_tick = now.as_micros() / TICK_US;
        if now_tick <= self.current {
            return;
        }
        let span = (now_tick - self.current).min(SLOTS as u64);
        for k in 1..=span {
            let s = ((self.current + k) as usize) & (SLOTS - 1);
            if self.occupied[s / 64] & (1 << (s % 64)) == 0 {
                continue;
            }
            let mut i = self.head[s];
            while i != NIL {
                let n = self.next[i as usize];
                if self.tick[i as usize] <= now_tick {
                    self.cancel(i);
                    out.push(i);
                }
                i = n;
            }
        }
        self.current = now_tick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let mut w = Wheel::new(4);
        w.set(0, Instant::from_micros(1500)); // tick 2
        w.set(1, Instant::from_millis(3));
        assert_eq!(w.next_wakeup(), Some(Instant::from_millis(2)));
        let mut out = vec![];
        w.expire(Instant::from_micros(1999), &mut out);
        assert!(out.is_empty());
        w.expire(Instant::from_millis(2), &mut out);
        assert_eq!(out, vec![0]);
        assert_eq!(w.next_wakeup(), Some(Instant::from_millis(3)));
        w.cancel(1);
        assert_eq!(w.next_wakeup(), None);
        assert_eq!(w.armed(), 0);
    }

    #[test]
    fn far_timers_survive_turns_and_rearm_moves() {
        let mut w = Wheel::new(4);
        w.set(2, Instant::from_millis(10_000)); // 2+ turns ahead
        w.set(3, Instant::from_millis(5));
        w.set(3, Instant::from_millis(7)); // moved
        let mut out = vec![];
        w.expire(Instant::from_millis(6), &mut out);
        assert!(out.is_empty());
        w.expire(Instant::from_millis(7), &mut out);
        assert_eq!(out, vec![3]);
        out.clear();
        for t in (8..10_000).step_by(997) {
            w.expire(Instant::from_millis(t), &mut out);
        }
        assert!(out.is_empty());
        assert!(w.next_wakeup().is_some());
        w.expire(Instant::from_millis(10_000), &mut out);
        assert_eq!(out, vec![2]);
    }

    #[test]
    fn big_jump_fires_everything_due() {
        let mut w = Wheel::new(3);
        w.set(0, Instant::from_millis(1));
        w.set(1, Instant::from_millis(5000));
        w.set(2, Instant::from_millis(9000));
        let mut out = vec![];
        w.expire(Instant::from_millis(6000), &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1]);
    }
}
