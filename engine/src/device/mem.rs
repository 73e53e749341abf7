//! An in-memory device: two queues of frames (to the stack, from the stack), an optional seeded
//! fault injector and an optional pcap writer. Tests and benchmarks use it without root.
//!
//! Buffers are recycled through a free list, so once warm a steady exchange allocates nothing.

use super::pcap::PcapWriter;
use super::{Device, Verdict};
use crate::time::Instant;
use std::collections::VecDeque;
use std::io::Write;

/// A small, fast, seeded PRNG (SplitMix64): deterministic fault patterns from a seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.below(1000) < per_mille as u64
    }
}

/// Faults applied to frames crossing a [`MemLink`] (probabilities in per mille).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Seed of the fault pattern.
    pub seed: u64,
    /// Frames dropped.
    pub drop: u32,
    /// Frames delivered twice.
    pub duplicate: u32,
    /// Frames held back and delivered after the next one.
    pub reorder: u32,
    /// Frames with one byte flipped past the Ethernet header (checksums must catch it).
    pub corrupt: u32,
}

/// What a fault injector did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames offered.
    pub offered: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames reordered.
    pub reordered: u64,
    /// Frames corrupted.
    pub corrupted: u64,
    /// Frames a [`Bottleneck`]'s full queue dropped (tail drop).
    pub queue_dropped: u64,
}

/// A bottleneck on a [`MemLink`]: frames leave at `rate` bytes per second through a drop-tail
/// queue of `queue` bytes, and arrive `delay` after they left. Congestion control meets a real
/// queue this way: a sender faster than `rate` fills the queue (the round trip grows) and then
/// loses frames, as at a router's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bottleneck {
    /// Service rate, bytes per second (whole frames: Ethernet header included).
    pub rate: u64,
    /// Bytes the queue holds beyond the frame being sent; a frame that does not fit is dropped.
    pub queue: usize,
    /// One-way propagation delay.
    pub delay: std::time::Duration,
}

/// The queue and wire of a [`Bottleneck`].
#[derive(Debug)]
struct Shaper {
    spec: Bottleneck,
    /// When the queue will have sent everything it holds, nanoseconds of virtual time.
    busy_until_ns: u64,
    /// Frames on their way, in arrival order: (arrival in nanoseconds, frame).
    line: VecDeque<(u64, Vec<u8>)>,
}

impl Shaper {
    /// Queues `frame` at `now_ns`; false when the queue is full (dropped).
    fn enqueue(&mut self, now_ns: u64, frame: &[u8]) -> bool {
        let rate = self.spec.rate.max(1) as u128;
        let backlog_ns = self.busy_until_ns.saturating_sub(now_ns) as u128;
        let backlog = (backlog_ns * rate / 1_000_000_000) as usize;
        if backlog > self.spec.queue {
            return false;
        }
        let start = self.busy_until_ns.max(now_ns);
        let serialize = (frame.len() as u128 * 1_000_000_000).div_ceil(rate) as u64;
        self.busy_until_ns = start + serialize;
        let arrival = self.busy_until_ns + self.spec.delay.as_nanos() as u64;
        self.line.push_back((arrival, frame.to_vec()));
        true
    }
}

/// A frame buffer and the length of the frame in it.
#[derive(Debug)]
struct Frame {
    buf: Box<[u8]>,
    len: usize,
}

/// An in-memory device.
pub struct MemDevice {
    frame_size: usize,
    /// Frames waiting to be received by the stack.
    rx: VecDeque<Frame>,
    /// Frames the stack sent, waiting to be taken.
    tx: VecDeque<Frame>,
    free: Vec<Box<[u8]>>,
    pcap: Option<PcapWriter<Box<dyn Write + Send>>>,
    clock: Instant,
    /// Buffers ever allocated: each is always in exactly one of rx, tx, free (or lent out).
    allocated: usize,
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice")
            .field("rx", &self.rx.len())
            .field("tx", &self.tx.len())
            .finish()
    }
}

impl MemDevice {
    /// A device with buffers of `frame_size` bytes.
    pub fn new(frame_size: usize) -> Self {
        MemDevice {
            frame_size,
            rx: VecDeque::with_capacity(256),
            tx: VecDeque::with_capacity(256),
            free: Vec::with_capacity(256),
            pcap: None,
            clock: Instant::ZERO,
            allocated: 0,
        }
    }

    /// Records every frame received and sent to `out` as pcap.
    pub fn with_pcap(mut self, out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        self.pcap = Some(PcapWriter::new(out, self.frame_size as u32)?);
        Ok(self)
    }

    /// Sets the time stamped on pcap records.
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = now;
    }

    fn buffer(&mut self) -> Box<[u8]> {
        self.free.pop().unwrap_or_else(|| {
            self.allocated += 1;
            vec![0u8; self.frame_size].into_boxed_slice()
        })
    }

    /// Buffers allocated so far (a steady exchange stops allocating).
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// True when every buffer ever allocated is in exactly one place: waiting to be received,
    /// sent and not yet taken, or free. A leaked or double-freed frame breaks the equality.
    pub fn conserved(&self) -> bool {
        self.rx.len() + self.tx.len() + self.free.len() == self.allocated
    }

    /// Queues `frame` for the stack to receive (truncated to the buffer size).
    pub fn inject(&mut self, frame: &[u8]) {
        let mut buf = self.buffer();
        let len = frame.len().min(buf.len());
        buf[..len].copy_from_slice(&frame[..len]);
        self.rx.push_back(Frame { buf, len });
    }

    /// Frames waiting to be received.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Frames sent and not yet taken.
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Takes the oldest frame the stack sent, as a new vector.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let f = self.tx.pop_front()?;
        let v = f.buf[..f.len].to_vec();
        self.free.push(f.buf);
        Some(v)
    }

    /// Takes every frame the stack sent.
    pub fn take_all(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.take()).collect()
    }

    /// Drops every frame sent (recycling the buffers).
    pub fn discard_tx(&mut self) -> usize {
        let n = self.tx.len();
        while let Some(f) = self.tx.pop_front() {
            self.free.push(f.buf);
        }
        n
    }

    fn capture(&mut self, buf: &[u8]) {
        if let Some(p) = &mut self.pcap {
            // Capture is best effort: a failing writer must not affect the data path.
            let _ = p.write(self.clock, buf);
        }
    }
}

impl Device for MemDevice {
    fn frame_capacity(&self) -> usize {
        self.frame_size
    }

    fn receive<F>(&mut self, max: usize, mut handle: F) -> usize
    where
        F: FnMut(&mut [u8], usize) -> Verdict,
    {
        let mut n = 0;
        while n < max {
            let Some(mut f) = self.rx.pop_front() else {
                break;
            };
            n += 1;
            if self.pcap.is_some() {
                self.capture(&f.buf[..f.len]);
            }
            match handle(&mut f.buf, f.len) {
                Verdict::Drop => self.free.push(f.buf),
                Verdict::Transmit(len) => {
                    let len = len.min(f.buf.len());
                    if self.pcap.is_some() {
                        self.capture(&f.buf[..len]);
                    }
                    self.tx.push_back(Frame { buf: f.buf, len });
                }
            }
        }
        n
    }

    fn transmit<F>(&mut self, max: usize, mut fill: F) -> usize
    where
        F: FnMut(&mut [u8]) -> Option<usize>,
    {
        let mut n = 0;
        while n < max {
            let mut buf = self.buffer();
            match fill(&mut buf) {
                Some(len) => {
                    let len = len.min(buf.len());
                    if self.pcap.is_some() {
                        self.capture(&buf[..len]);
                    }
                    self.tx.push_back(Frame { buf, len });
                    n += 1;
                }
                None => {
                    self.free.push(buf);
                    break;
                }
            }
        }
        n
    }
}

/// Moves frames from one device's transmit queue to another's receive queue, through a seeded
/// fault injector: a simulated wire.
#[derive(Debug)]
pub struct MemLink {
    faults: Faults,
    rng: SplitMix64,
    held: Option<Vec<u8>>,
    stats: FaultStats,
    shaper: Option<Shaper>,
}

impl MemLink {
    /// A link applying `faults`.
    pub fn new(faults: Faults) -> Self {
        MemLink {
            rng: SplitMix64::new(faults.seed),
            faults,
            held: None,
            stats: FaultStats::default(),
            shaper: None,
        }
    }

    /// The same link through `b`: frames that pass the fault injector queue at the bottleneck
    /// (move them with [`MemLink::carry_at`], which knows the time).
    pub fn with_bottleneck(mut self, b: Bottleneck) -> Self {
        self.shaper = Some(Shaper {
            spec: b,
            busy_until_ns: 0,
            line: VecDeque::new(),
        });
        self
    }

    /// Frames queued at the bottleneck or on the wire behind it.
    pub fn in_flight(&self) -> usize {
        self.shaper.as_ref().map_or(0, |s| s.line.len())
    }

    /// When the next frame behind the bottleneck arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        let s = self.shaper.as_ref()?;
        s.line
            .front()
            .map(|&(at, _)| Instant::from_micros(at.div_ceil(1000)))
    }

    /// At `now`: moves every frame `from` sent through the fault injector into the
    /// bottleneck's queue (or straight into `to` without one), then delivers to `to` the frames
    /// that have arrived by `now`. Returns frames delivered.
    pub fn carry_at(&mut self, now: Instant, from: &mut MemDevice, to: &mut MemDevice) -> usize {
        let Some(mut sh) = self.shaper.take() else {
            return self.carry(from, to);
        };
        let now_ns = now.as_micros() * 1000;
        let mut dropped = 0;
        self.carry_to(from, &mut |f| {
            if !sh.enqueue(now_ns, f) {
                dropped += 1;
            }
        });
        self.stats.queue_dropped += dropped;
        let mut delivered = 0;
        while sh.line.front().is_some_and(|&(at, _)| at <= now_ns) {
            if let Some((_, f)) = sh.line.pop_front() {
                to.inject(&f);
                delivered += 1;
            }
        }
        self.shaper = Some(sh);
        delivered
    }

    /// What the injector did so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Moves every frame `from` sent into `to`'s receive queue. Returns frames delivered.
    pub fn carry(&mut self, from: &mut MemDevice, to: &mut MemDevice) -> usize {
        self.carry_to(from, &mut |f| to.inject(f))
    }

    /// Passes every frame `from` sent through the fault injector to `deliver`.
    fn carry_to(&mut self, from: &mut MemDevice, deliver: &mut dyn FnMut(&[u8])) -> usize {
        let mut delivered = 0;
        while let Some(f) = from.tx.pop_front() {
            self.stats.offered += 1;
            let bytes_len = f.len;
            let mut buf = f.buf;
            if self.rng.chance(self.faults.drop) {
                self.stats.dropped += 1;
                from.free.push(buf);
                continue;
            }
            if self.rng.chance(self.faults.corrupt) && bytes_len > 14 {
                let at = 14 + self.rng.below((bytes_len - 14) as u64) as usize;
                buf[at] ^= 1 << self.rng.below(8);
                self.stats.corrupted += 1;
            }
            if self.rng.chance(self.faults.reorder) && self.held.is_none() {
                self.held = Some(buf[..bytes_len].to_vec());
                self.stats.reordered += 1;
                from.free.push(buf);
                continue;
            }
            let dup = self.rng.chance(self.faults.duplicate);
            deliver(&buf[..bytes_len]);
            delivered += 1;
            if dup {
                deliver(&buf[..bytes_len]);
                self.stats.duplicated += 1;
                delivered += 1;
            }
            if let Some(h) = self.held.take() {
                deliver(&h);
                delivered += 1;
            }
            from.free.push(buf);
        }
        delivered
    }

    /// Delivers a frame still held back for reordering (call when the sender goes quiet).
    pub fn flush(&mut self, to: &mut MemDevice) {
        if let Some(h) = self.held.take() {
            to.inject(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_verdicts_and_recycling() {
        let mut d = MemDevice::new(128);
        d.inject(&[1; 60]);
        d.inject(&[2; 60]);
        let n = d.receive(64, |buf, len| {
            if buf[0] == 1 {
                buf[0] = 9;
                Verdict::Transmit(len - 10)
            } else {
                Verdict::Drop
            }
        });
        assert_eq!(n, 2);
        assert_eq!(
            d.take_all(),
            vec![{
                let mut v = vec![1u8; 50];
                v[0] = 9;
                v
            }]
        );
        let sent = d.transmit(64, {
            let mut k = 0;
            move |buf| {
                k += 1;
                (k <= 3).then(|| {
                    buf[0] = k;
                    1
                })
            }
        });
        assert_eq!(sent, 3);
        assert_eq!(d.take_all(), vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn faults_are_seeded_and_counted() {
        let run = |seed| {
            let mut a = MemDevice::new(128);
            let mut b = MemDevice::new(128);
            let mut link = MemLink::new(Faults {
                seed,
                drop: 100,
                duplicate: 100,
                reorder: 100,
                corrupt: 100,
            });
            for i in 0..1000u32 {
                a.transmit(1, |buf| {
                    buf[..20].fill(0);
                    buf[16..20].copy_from_slice(&i.to_be_bytes());
                    Some(20)
                });
                link.carry(&mut a, &mut b);
            }
            link.flush(&mut b);
            (link.stats(), b.take_all().len(), b.rx_pending())
        };
        let (s, _, rx) = run(42);
        assert_eq!(run(42).0, s, "same seed, same faults");
        assert_ne!(run(43).0, s);
        assert_eq!(s.offered, 1000);
        for (what, v) in [
            ("drop", s.dropped),
            ("dup", s.duplicated),
            ("reorder", s.reordered),
            ("corrupt", s.corrupted),
        ] {
            assert!((50..160).contains(&v), "{what}: {v} of 1000 at 10%");
        }
        assert_eq!(rx as u64, s.offered - s.dropped + s.duplicated);
    }
}
