//! Per-connection byte rings and the out-of-order range tracker.
//!
//! Buffers are allocated once and recycled through a pool, so a warm engine allocates nothing
//! per connection. Out-of-order data is written straight into the receive ring at its offset
//! past the in-order bytes; [`Assembler`] remembers which ranges are there.

use super::seq;

/// `i` modulo `cap` for `i < 2·cap` (every ring offset below is: `head < cap` plus at most `cap`),
/// without a division.
#[inline]
fn wrap(i: usize, cap: usize) -> usize {
    debug_assert!(i < 2 * cap);
    if i >= cap {
        i - cap
    } else {
        i
    }
}

/// A fixed-capacity byte ring.
#[derive(Debug, Default)]
pub(crate) struct RingBuf {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl RingBuf {
    /// A ring over `buf` (its length is the capacity).
    pub(crate) fn new(buf: Box<[u8]>) -> Self {
        RingBuf {
            buf,
            head: 0,
            len: 0,
        }
    }
    /// Returns the storage, emptying the ring.
    pub(crate) fn take(&mut self) -> Box<[u8]> {
        self.head = 0;
        self.len = 0;
        core::mem::take(&mut self.buf)
    }
    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// Bytes stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Free bytes.
    pub(crate) fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Copies `data` into the ring at `off` bytes past the stored bytes, without storing them
    /// (see [`Self::commit`]); returns how many fit.
    pub(crate) fn write_at(&mut self, off: usize, data: &[u8]) -> usize {
        let cap = self.buf.len();
        if off >= self.free() {
            return 0;
        }
        let n = data.len().min(self.free() - off);
        let start = wrap(self.head + self.len + off, cap);
        let first = n.min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        n
    }
    /// Stores `n` bytes previously written with [`Self::write_at`].
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        self.len += n.min(self.free());
    }
    /// Appends as much of `data` as fits; returns the count.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = self.write_at(0, data);
        self.commit(n);
        n
    }
    /// Copies bytes from `off` into `out` without removing them; returns the count.
    pub(crate) fn peek_at(&self, off: usize, out: &mut [u8]) -> usize {
        if off >= self.len {
            return 0;
        }
        let cap = self.buf.len();
        let n = out.len().min(self.len - off);
        let start = wrap(self.head + off, cap);
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }
    /// Removes up to `n` bytes from the front.
    pub(crate) fn discard(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        // `head` must not be reset when the ring empties: out-of-order bytes may sit past the
        // end, at offsets relative to `head + len`.
        self.head = wrap(self.head + n, self.buf.len());
        self.len -= n;
    }
    /// Moves bytes from the front into `out`; returns the count.
    pub(crate) fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = self.peek_at(0, out);
        self.discard(n);
        n
    }
}

/// Most out-of-order ranges any connection can track, each way.
pub(crate) const MAX_RANGES: usize = 4096;

/// Ranges needed to track every hole a window of `bytes` can have with segments of `mss`
/// bytes: one per two segments (a hole, then data), at least 16, at most [`MAX_RANGES`].
pub(crate) fn ranges_for(bytes: usize, mss: usize) -> usize {
    (bytes / (2 * mss.max(1)) + 1).clamp(16, MAX_RANGES)
}

/// Out-of-order ranges `[start, end)` in sequence space, sorted, disjoint, non-adjacent.
///
/// The ranges live on the heap: nothing until a connection first has data out of order, then
/// room for the limit at once. A connection slot keeps that room for its later connections
/// (see `Conn::reset`), so a steady exchange allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Assembler {
    ranges: Vec<(u32, u32)>,
    /// Index of the range holding the most recently received segment (reported first in SACK).
    last: usize,
}

impl Assembler {
    /// True when nothing is held out of order.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    /// The ranges, lowest first.
    #[inline]
    pub(crate) fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }
    /// Forgets everything (keeping the room).
    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
        self.last = 0;
    }

    /// Adds `[start, end)`, merging with neighbours. Fails (nothing changes) when it would need a
    /// range beyond `limit`.
    pub(crate) fn insert(&mut self, start: u32, end: u32, limit: usize) -> bool {
        let n = self.ranges.len();
        let limit = limit.clamp(1, MAX_RANGES);
        // First range whose end is at or past `start` (could merge or lies after).
        let i = self.ranges.partition_point(|r| seq::lt(r.1, start));
        // Ranges i..j overlap or touch [start, end).
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < n && seq::le(self.ranges[j].0, end) {
            if seq::lt(self.ranges[j].0, s) {
                s = self.ranges[j].0;
            }
            e = seq::max(e, self.ranges[j].1);
            j += 1;
        }
        if i == j {
            if n >= limit {
                return false;
            }
            if self.ranges.capacity() == n {
                // Room for the limit at once: one allocation per slot, not one per growth.
                self.ranges.reserve_exact(limit - n);
            }
            self.ranges.insert(i, (s, e));
        } else {
            self.ranges[i] = (s, e);
            self.ranges.drain(i + 1..j);
        }
        self.last = i;
        true
    }

    /// With in-order data now reaching `nxt`: removes and returns the end of the range that
    /// starts at or before `nxt` (the new in-order edge), dropping ranges entirely below it.
    pub(crate) fn advance(&mut self, nxt: u32) -> u32 {
        let mut edge = nxt;
        let mut k = 0;
        let n = self.ranges.len();
        while k < n && seq::le(self.ranges[k].0, edge) {
            edge = seq::max(edge, self.ranges[k].1);
            k += 1;
        }
        if k > 0 {
            self.ranges.drain(..k);
            self.last = self.last.saturating_sub(k);
        }
        edge
    }

    /// Writes up to `out.len()` SACK blocks: the most recent range first, then the others from
    /// the lowest (RFC 2018 §4). Returns the count.
    pub(crate) fn sack_blocks(&self, out: &mut [(u32, u32)]) -> usize {
        let n = self.ranges.len();
        if n == 0 || out.is_empty() {
            return 0;
        }
        let last = self.last.min(n - 1);
        out[0] = self.ranges[last];
        let mut k = 1;
        for (i, r) in self.ranges.iter().enumerate() {
            if k == out.len() {
                break;
            }
            if i != last {
                out[k] = *r;
                k += 1;
            }
        }
        k
    }
}

/// A stack of recycled buffers of one size.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    size: usize,
    free: Vec<Box<[u8]>>,
}

impl Pool {
    /// A pool of `size`-byte buffers with `prealloc` made now.
    pub(crate) fn new(size: usize, prealloc: usize) -> Self {
        let mut free = Vec::with_capacity(prealloc);
        for _ in 0..prealloc {
            free.push(vec![0u8; size].into_boxed_slice());
        }
        Pool { size, free }
    }
    /// A buffer: recycled, or allocated when the pool is empty.
    pub(crate) fn get(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }
    /// Returns a buffer (empty boxes are ignored).
    pub(crate) fn put(&mut self, b: Box<[u8]>) {
        if b.len() == self.size {
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn send_times_give_the_rtt_of_the_latest_segment_acked() {
        use crate::Instant;
        let t = Instant::from_micros;
        let mut s = SendTimes::default();
        s.push(u32::MAX - 99, t(1_000));
        s.push(900, t(2_000)); // across the sequence wrap
        s.push(2_000, t(3_000));
        assert_eq!(
            s.ack(u32::MAX - 200, t(5_000)),
            None,
            "covers no whole segment"
        );
        assert_eq!(
            s.ack(1_000, t(10_000)),
            Some(8_000),
            "the latest covered, sent at 2 ms"
        );
        assert_eq!(s.ack(2_000, t(10_500)), Some(7_500));
        assert_eq!(s.ack(2_000, t(11_000)), None, "nothing left");
        // At most SEND_TIMES are kept; the rest go untimed.
        for i in 0..40 {
            s.push(3_000 + i, t(11_000));
        }
        assert_eq!(s.q.len(), SEND_TIMES);
        assert_eq!(s.ack(3_000 + 39, t(12_000)), Some(1_000));
        // The microsecond clock kept modulo 2^32 (71 minutes).
        let edge = u64::from(u32::MAX) - 10;
        s.push(4_000, t(edge));
        assert_eq!(s.ack(4_000, t(edge + 30)), Some(30));
        // A retransmission forgets every send time (Karn).
        s.push(5_000, t(13_000));
        s.clear();
        assert_eq!(s.ack(5_000, t(14_000)), None);
    }

    use super::*;

    #[test]
    fn ring_wraps() {
        let mut r = RingBuf::new(vec![0; 8].into_boxed_slice());
        assert_eq!(r.push(b"abcdef"), 6);
        let mut o = [0u8; 4];
        assert_eq!(r.pop(&mut o), 4);
        assert_eq!(&o, b"abcd");
        assert_eq!(r.push(b"ghijklmn"), 6);
        assert_eq!(r.len(), 8);
        let mut o = [0u8; 8];
        assert_eq!(r.peek_at(1, &mut o), 7);
        assert_eq!(&o[..7], b"fghijkl");
        r.discard(3);
        assert_eq!(r.pop(&mut o), 5);
        assert_eq!(&o[..5], b"hijkl");
    }

    #[test]
    fn ring_write_at_then_commit() {
        let mut r = RingBuf::new(vec![0; 8].into_boxed_slice());
        r.push(b"xyz");
        r.discard(3);
        assert_eq!(r.write_at(3, b"DEFGHIJ"), 5); // only 5 fit past offset 3
        assert_eq!(r.write_at(0, b"ABC"), 3);
        r.commit(8);
        let mut o = [0u8; 8];
        r.pop(&mut o);
        assert_eq!(&o, b"ABCDEFGH");
        assert_eq!(r.write_at(8, b"a"), 0);
    }

    #[test]
    fn assembler_merges_and_advances() {
        let mut a = Assembler::default();
        assert!(a.insert(10, 20, 4));
        assert!(a.insert(30, 40, 4));
        assert!(a.insert(20, 25, 4)); // touches the first
        assert_eq!(a.ranges(), &[(10, 25), (30, 40)]);
        assert!(a.insert(50, 60, 4));
        assert!(a.insert(70, 80, 4));
        assert!(!a.insert(90, 95, 4)); // limit reached
        assert!(a.insert(24, 52, 4)); // bridges three
        assert_eq!(a.ranges(), &[(10, 60), (70, 80)]);
        assert_eq!(a.advance(5), 5);
        assert_eq!(a.advance(10), 60);
        assert_eq!(a.ranges(), &[(70, 80)]);
    }

    #[test]
    fn assembler_wraps_and_reports_latest_first() {
        let mut a = Assembler::default();
        assert!(a.insert(0xffff_fff0, 0xffff_fff8, 8));
        assert!(a.insert(0x10, 0x20, 8));
        assert!(a.insert(0xffff_fffc, 4, 8));
        assert_eq!(
            a.ranges(),
            &[(0xffff_fff0, 0xffff_fff8), (0xffff_fffc, 4), (0x10, 0x20)]
        );
        let mut out = [(0, 0); 3];
        assert_eq!(a.sack_blocks(&mut out), 3);
        assert_eq!(out[0], (0xffff_fffc, 4));
        assert_eq!(out[1], (0xffff_fff0, 0xffff_fff8));
        assert_eq!(a.advance(0xffff_fff0), 0xffff_fff8);
    }

    #[test]
    fn a_window_of_holes_is_tracked_whole() {
        // 2 MiB of 1448-byte segments, every other one lost: 724 ranges, all kept.
        let limit = ranges_for(2 << 20, 1448);
        assert_eq!(limit, 725);
        let mut a = Assembler::default();
        let base = 0xffff_0000u32; // across the wrap of the sequence space
        for k in 0..724u32 {
            let s = base.wrapping_add((2 * k + 1) * 1448);
            assert!(a.insert(s, s.wrapping_add(1448), limit), "range {k}");
        }
        assert_eq!(a.ranges().len(), 724);
        assert_eq!(a.ranges()[0].0, base.wrapping_add(1448));
        // One more distinct range is refused, a merge is not.
        let past = base.wrapping_add(2000 * 1448);
        assert!(!a.insert(past, past.wrapping_add(10), 724));
        assert!(a.insert(
            base.wrapping_add(2 * 1448),
            base.wrapping_add(3 * 1448),
            724
        ));
        assert_eq!(a.ranges().len(), 723);
        // The holes fill from the front: the in-order edge runs through every range.
        let mut edge = base;
        for k in 0..724u32 {
            let hole = base.wrapping_add(2 * k * 1448);
            if hole == edge {
                edge = a.advance(hole.wrapping_add(1448));
            }
        }
        assert!(a.is_empty());
        assert_eq!(edge, base.wrapping_add(1448 * 1448));
        // The room stays (no allocation for the next connection of the slot).
        let room = a.ranges.capacity();
        a.clear();
        assert_eq!(a.ranges.capacity(), room);
    }

    #[test]
    fn ranges_follow_the_window() {
        assert_eq!(ranges_for(64 * 1024, 1448), 23);
        assert_eq!(ranges_for(1, 1448), 16);
        assert_eq!(ranges_for(usize::MAX / 2, 1), MAX_RANGES);
    }
}

/// Most segments [`SendTimes`] remembers (a round needs 8 samples).
pub(crate) const SEND_TIMES: usize = 32;

/// When each data segment in flight was sent, oldest first, for an RTT sample on every ACK
/// without timestamps: HyStart++ needs several per round, and Karn's single timed segment
/// gives one per round trip. Entries are `(end sequence number, microseconds sent, modulo
/// 2^32)`; at most [`SEND_TIMES`] (beyond that, segments go untimed). A retransmission empties
/// it: an ACK after one could be for either transmission (Karn's rule).
///
/// Its room (256 bytes) is allocated when a slot takes its first connection and kept by the
/// slot ([`SendTimes::reset`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct SendTimes {
    q: std::collections::VecDeque<(u32, u32)>,
}

impl SendTimes {
    /// A new segment ending at `end`, sent at `at`.
    #[inline]
    pub(crate) fn push(&mut self, end: u32, at: crate::Instant) {
        if self.q.len() < SEND_TIMES {
            self.q.push_back((end, at.as_micros() as u32));
        }
    }

    /// An acknowledgment up to `ack` at `now`: forgets the segments it covers and returns the
    /// RTT of the last of them, in microseconds.
    #[inline]
    pub(crate) fn ack(&mut self, ack: u32, now: crate::Instant) -> Option<u64> {
        let mut last = None;
        while let Some(&(end, at)) = self.q.front() {
            if !seq::le(end, ack) {
                break;
            }
            last = Some(at);
            self.q.pop_front();
        }
        last.map(|at| u64::from((now.as_micros() as u32).wrapping_sub(at)))
    }

    /// Forgets everything (a retransmission, a new connection).
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.q.clear();
    }

    /// Empty, with its room allocated: called as a slot takes a new connection, so that a
    /// connection whose window grows in the middle of a steady exchange allocates nothing.
    pub(crate) fn reset(&mut self) {
        self.q.clear();
        if self.q.capacity() < SEND_TIMES {
            self.q.reserve_exact(SEND_TIMES);
        }
    }
}
