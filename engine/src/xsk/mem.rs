//! An in-memory double of the kernel side of an AF_XDP socket.
//!
//! [`MemBackend`] owns a UMEM (a `Vec<u8>`) and the four rings, and plays the kernel: it takes
//! frames from the fill ring to write injected packets into and posts them on the RX ring
//! ([`MemBackend::inject`]); it takes descriptors from the TX ring, hands their bytes to a sink
//! (a test's recorder, or another `MemBackend`'s `inject` to wire two ports back to back) and
//! posts the frames on the completion ring ([`MemBackend::kernel_tx`]).
//!
//! It keeps its own record of which frames the kernel holds, independent of the port's
//! [`FrameLedger`], and [`MemBackend::audit`] compares the two. Misuse by the port (posting a
//! frame the kernel already holds, an out-of-range or over-long descriptor) is counted in
//! [`MemStats::user_errors`] instead of corrupting the simulation.
//!
//! Fault knobs: a starved fill ring or a slow consumer arise from how the test drives it (and are
//! counted as [`MemStats::rx_no_fill`] and [`MemStats::rx_ring_full`]); [`MemKnobs`] limits how
//! many TX descriptors the kernel takes and how many completions it posts per step (a full TX ring
//! with a completion backlog) and simulates copy mode (TX only moves in a `sendto` kick, 32 frames
//! per kick) and the `need_wakeup` protocol; [`MemBackend::inject_bad_rx`] and
//! [`MemBackend::inject_bad_completion`] post invalid descriptors.

use core::time::Duration;
use std::collections::VecDeque;
use std::io;

use super::{
    Backend, FrameLedger, KernelStats, Location, RingDesc, UmemLayout, XskConfig, XskError,
    XDP_HEADROOM,
};

/// Frames the kernel sends per `sendto` in copy mode (`TX_BATCH_SIZE` in `net/xdp/xsk.c`).
pub const COPY_MODE_TX_BATCH: usize = 32;

/// A descriptor of the in-memory rings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemDesc {
    /// Byte offset in the UMEM.
    pub addr: u64,
    /// Packet length.
    pub len: u32,
}

impl RingDesc for MemDesc {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len as usize
    }
}

/// Behaviour of the simulated kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemKnobs {
    /// Offset of packets in their frame (the kernel's is [`XDP_HEADROOM`]).
    pub headroom: u32,
    /// Most TX descriptors the kernel takes per [`MemBackend::kernel_tx`] step.
    pub tx_per_step: usize,
    /// Most completions the kernel posts per step (the rest wait, sent but not completed).
    pub completions_per_step: usize,
    /// Copy mode: TX only progresses after a `sendto` kick, [`COPY_MODE_TX_BATCH`] frames per
    /// kick, and the TX ring always asks for a wakeup.
    pub copy_mode: bool,
}

impl Default for MemKnobs {
    fn default() -> Self {
        MemKnobs {
            headroom: XDP_HEADROOM,
            tx_per_step: usize::MAX,
            completions_per_step: usize::MAX,
            copy_mode: false,
        }
    }
}

/// Counters of the simulated kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Packets injected.
    pub injected: u64,
    /// Packets written into a fill frame and posted on the RX ring.
    pub rx_delivered: u64,
    /// Packets dropped because the fill ring was empty (or the kernel was asleep waiting for a
    /// fill-ring wakeup).
    pub rx_no_fill: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Packets dropped because they do not fit in a frame.
    pub rx_too_long: u64,
    /// Frames taken from the TX ring and given to the sink.
    pub tx_sent: u64,
    /// Bytes given to the sink.
    pub tx_bytes: u64,
    /// Frames posted on the completion ring.
    pub tx_completed: u64,
    /// Invalid RX descriptors posted by [`MemBackend::inject_bad_rx`].
    pub bad_rx_injected: u64,
    /// Invalid completions posted by [`MemBackend::inject_bad_completion`].
    pub bad_comp_injected: u64,
    /// Port misuse: a fill or TX descriptor naming a frame the kernel already holds, out of the
    /// UMEM, empty or past its frame's end. Always zero for a correct port.
    pub user_errors: u64,
    /// Fill-ring wakeups received (`poll`/`recvfrom`).
    pub rx_wakeups: u64,
    /// TX kicks received (`sendto`).
    pub tx_kicks: u64,
}

/// Kinds of invalid RX descriptor the simulated kernel can post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRx {
    /// An address beyond the UMEM.
    OutOfRange,
    /// A real fill frame, with a length running past the end of its frame. The frame is the
    /// port's again: it must recycle it.
    PastFrameEnd,
    /// A frame the kernel is transmitting (TX ring or in flight), not one it was given to
    /// receive into. Falls back to [`BadRx::OutOfRange`] when no frame is being transmitted.
    NotHandedOut,
    /// A copy of the last descriptor on the RX ring (falls back to [`BadRx::OutOfRange`] when
    /// the ring is empty). The port catches it only when both copies are read in the same
    /// batch: once the first copy has gone back to the fill ring, a duplicate is
    /// indistinguishable from a new packet.
    DuplicateOfLast,
}

/// Kinds of invalid completion the simulated kernel can post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadCompletion {
    /// An address beyond the UMEM.
    OutOfRange,
    /// A frame that was not sent (on the fill ring or owned by user space).
    NotSent,
}

/// What became of an injected packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Written into a fill frame and posted on the RX ring.
    Delivered,
    /// Dropped: no fill frame (or the kernel waits for a fill-ring wakeup).
    NoFillFrame,
    /// Dropped: RX ring full.
    RxRingFull,
    /// Dropped: larger than a frame.
    TooLong,
}

/// Who holds a frame, as the simulated kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Owner {
    /// User space (the port).
    User = 0,
    /// On the fill ring.
    FillRing = 1,
    /// Posted on the RX ring.
    RxRing = 2,
    /// On the TX ring.
    TxRing = 3,
    /// Taken from the TX ring, sent, completion not yet posted.
    InFlight = 4,
    /// Posted on the completion ring.
    CompRing = 5,
}

/// A disagreement between the simulated kernel and the port's ledger.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "kernel/port disagreement: port ledger {ledger}; kernel holds fill={fill} rx={rx} tx={tx} \
     in_flight={in_flight} comp={comp} and user space {user}"
)]
pub struct AuditError {
    /// The ledger, formatted.
    pub ledger: String,
    /// Frames on the fill ring.
    pub fill: u32,
    /// Frames on the RX ring.
    pub rx: u32,
    /// Frames on the TX ring.
    pub tx: u32,
    /// Frames sent, not completed.
    pub in_flight: u32,
    /// Frames on the completion ring.
    pub comp: u32,
    /// Frames user space holds.
    pub user: u32,
}

/// A bounded FIFO standing for one ring.
#[derive(Debug)]
struct Ring<T> {
    q: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    fn new(cap: u32) -> Self {
        Ring {
            q: VecDeque::with_capacity(cap as usize),
            cap: cap as usize,
        }
    }
    fn free(&self) -> usize {
        self.cap - self.q.len()
    }
    fn push(&mut self, v: T) -> bool {
        if self.q.len() >= self.cap {
            return false;
        }
        self.q.push_back(v);
        true
    }
    fn pop(&mut self) -> Option<T> {
        self.q.pop_front()
    }
}

/// The in-memory kernel side of one AF_XDP socket.
#[derive(Debug)]
pub struct MemBackend {
    layout: UmemLayout,
    knobs: MemKnobs,
    need_wakeup: bool,
    umem: Vec<u8>,
    owner: Vec<Owner>,
    fill: Ring<u64>,
    comp: Ring<(u64, bool)>,
    rx: Ring<(MemDesc, bool)>,
    tx: Ring<MemDesc>,
    in_flight: VecDeque<u64>,
    /// Copy mode: frames the kernel may still send from past kicks.
    kick_budget: usize,
    fill_wakeup: bool,
    tx_wakeup: bool,
    /// Rotating cursor for picking frames in fault injection.
    cursor: u32,
    stats: MemStats,
}

impl MemBackend {
    /// A simulated socket with the UMEM and rings `cfg` describes.
    pub fn new(cfg: &XskConfig, knobs: MemKnobs) -> Result<Self, XskError> {
        cfg.validate()?;
        if knobs.headroom >= cfg.frame_size {
            return Err(XskError::Config {
                field: "headroom",
                value: knobs.headroom.into(),
                reason: "the simulated headroom must leave room for a packet in the frame",
            });
        }
        let layout = UmemLayout {
            frame_count: cfg.frame_count,
            frame_size: cfg.frame_size,
            headroom: knobs.headroom,
            fill_size: cfg.fill_ring_size(),
        };
        Ok(MemBackend {
            layout,
            knobs,
            need_wakeup: cfg.need_wakeup,
            umem: vec![0; cfg.frame_count as usize * cfg.frame_size as usize],
            owner: vec![Owner::User; cfg.frame_count as usize],
            fill: Ring::new(cfg.fill_ring_size()),
            comp: Ring::new(cfg.comp_ring_size()),
            rx: Ring::new(cfg.rx_size),
            tx: Ring::new(cfg.tx_size),
            in_flight: VecDeque::with_capacity(cfg.frame_count as usize),
            kick_budget: 0,
            fill_wakeup: false,
            // Like the kernel, TX starts asleep until the first kick.
            tx_wakeup: cfg.need_wakeup,
            cursor: 0,
            stats: MemStats::default(),
        })
    }

    /// The simulated kernel's counters.
    pub fn stats(&self) -> &MemStats {
        &self.stats
    }

    /// The knobs, to change them between steps.
    pub fn knobs_mut(&mut self) -> &mut MemKnobs {
        &mut self.knobs
    }

    /// Who holds frame `frame`.
    pub fn owner(&self, frame: u32) -> Option<Owner> {
        self.owner.get(frame as usize).copied()
    }

    /// Descriptors waiting on the RX ring (real and invalid).
    pub fn rx_pending(&self) -> usize {
        self.rx.q.len()
    }

    /// Descriptors waiting on the TX ring.
    pub fn tx_pending(&self) -> usize {
        self.tx.q.len()
    }

    /// Frames sent whose completion is not posted yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn frame_of(&self, addr: u64) -> Option<u32> {
        let f = addr / u64::from(self.layout.frame_size);
        (f < u64::from(self.layout.frame_count)).then_some(f as u32)
    }

    /// A packet arrives from the wire: the kernel takes a fill frame, writes the packet at the
    /// frame's headroom and posts it on the RX ring.
    pub fn inject(&mut self, pkt: &[u8]) -> Injected {
        self.stats.injected += 1;
        let size = self.layout.frame_size as usize;
        let head = self.layout.headroom as usize;
        if pkt.len() > size - head {
            self.stats.rx_too_long += 1;
            return Injected::TooLong;
        }
        if self.rx.free() == 0 {
            self.stats.rx_ring_full += 1;
            return Injected::RxRingFull;
        }
        if self.need_wakeup && self.fill_wakeup {
            // Asleep until user space kicks: the driver does not look at the fill ring.
            self.stats.rx_no_fill += 1;
            return Injected::NoFillFrame;
        }
        let Some(addr) = self.fill.pop() else {
            self.stats.rx_no_fill += 1;
            if self.need_wakeup {
                self.fill_wakeup = true;
            }
            return Injected::NoFillFrame;
        };
        // The port only posts validated frames on the fill ring (see `fill`).
        let frame = (addr / size as u64) as usize;
        let start = frame * size + head;
        self.umem[start..start + pkt.len()].copy_from_slice(pkt);
        self.owner[frame] = Owner::RxRing;
        self.rx.push((
            MemDesc {
                addr: start as u64,
                len: pkt.len() as u32,
            },
            true,
        ));
        self.stats.rx_delivered += 1;
        Injected::Delivered
    }

    /// One step of the kernel's transmit path: takes up to `tx_per_step` descriptors from the TX
    /// ring (in copy mode, only as many as past kicks allow; with need_wakeup, nothing while
    /// asleep), gives each packet's bytes to `sink`, then posts up to `completions_per_step`
    /// completions. Returns the number of packets sent.
    pub fn kernel_tx<F: FnMut(&[u8])>(&mut self, mut sink: F) -> usize {
        let mut budget = self.knobs.tx_per_step;
        if self.knobs.copy_mode {
            budget = budget.min(self.kick_budget);
        } else if self.need_wakeup && self.tx_wakeup {
            budget = 0;
        }
        let mut sent = 0;
        while sent < budget {
            let Some(d) = self.tx.pop() else { break };
            sent += 1;
            let size = u64::from(self.layout.frame_size);
            let Some(frame) = self.frame_of(d.addr) else {
                self.stats.user_errors += 1;
                continue;
            };
            if self.owner[frame as usize] != Owner::TxRing {
                self.stats.user_errors += 1;
                continue;
            }
            self.owner[frame as usize] = Owner::InFlight;
            self.in_flight.push_back(d.addr);
            if d.len == 0 || d.addr % size + u64::from(d.len) > size {
                // The kernel rejects it; the simulation still completes the frame.
                self.stats.user_errors += 1;
                continue;
            }
            let start = d.addr as usize;
            sink(&self.umem[start..start + d.len as usize]);
            self.stats.tx_sent += 1;
            self.stats.tx_bytes += u64::from(d.len);
        }
        if self.knobs.copy_mode {
            self.kick_budget -= sent;
        } else if self.need_wakeup && sent > 0 && self.tx.q.is_empty() {
            // Drained the ring: the driver stops and asks for a kick next time.
            self.tx_wakeup = true;
        }
        let mut completed = 0;
        while completed < self.knobs.completions_per_step && self.comp.free() > 0 {
            let Some(addr) = self.in_flight.pop_front() else {
                break;
            };
            if let Some(frame) = self.frame_of(addr) {
                self.owner[frame as usize] = Owner::CompRing;
            }
            self.comp.push((addr, true));
            completed += 1;
            self.stats.tx_completed += 1;
        }
        sent
    }

    /// Picks a frame whose owner satisfies `pred`, scanning from a rotating cursor.
    fn pick(&mut self, pred: impl Fn(Owner) -> bool) -> Option<u32> {
        let n = self.layout.frame_count;
        for k in 0..n {
            let f = (self.cursor + k) % n;
            if pred(self.owner[f as usize]) {
                self.cursor = (f + 1) % n;
                return Some(f);
            }
        }
        None
    }

    /// Posts an invalid descriptor on the RX ring. Returns false if the RX ring is full (or, for
    /// [`BadRx::PastFrameEnd`], the fill ring is empty) and nothing was posted.
    pub fn inject_bad_rx(&mut self, kind: BadRx) -> bool {
        if self.rx.free() == 0 {
            return false;
        }
        let size = u64::from(self.layout.frame_size);
        let head = u64::from(self.layout.headroom);
        let beyond = u64::from(self.layout.frame_count) * size;
        let (desc, real) = match kind {
            BadRx::OutOfRange => (
                MemDesc {
                    addr: beyond + head,
                    len: 60,
                },
                false,
            ),
            BadRx::PastFrameEnd => {
                let Some(addr) = self.fill.pop() else {
                    return false;
                };
                let frame = addr / size;
                self.owner[frame as usize] = Owner::RxRing;
                (
                    MemDesc {
                        addr: frame * size + head,
                        len: (size - head + 1) as u32,
                    },
                    true,
                )
            }
            BadRx::NotHandedOut => {
                match self.pick(|o| matches!(o, Owner::TxRing | Owner::InFlight)) {
                    Some(f) => (
                        MemDesc {
                            addr: u64::from(f) * size + head,
                            len: 60,
                        },
                        false,
                    ),
                    None => (
                        MemDesc {
                            addr: beyond + head,
                            len: 60,
                        },
                        false,
                    ),
                }
            }
            BadRx::DuplicateOfLast => match self.rx.q.back() {
                Some(&(d, _)) => (d, false),
                None => (
                    MemDesc {
                        addr: beyond + head,
                        len: 60,
                    },
                    false,
                ),
            },
        };
        self.rx.push((desc, real));
        self.stats.bad_rx_injected += 1;
        true
    }

    /// Posts an invalid completion. Returns false if the completion ring is full.
    pub fn inject_bad_completion(&mut self, kind: BadCompletion) -> bool {
        if self.comp.free() == 0 {
            return false;
        }
        let size = u64::from(self.layout.frame_size);
        let addr = match kind {
            BadCompletion::OutOfRange => u64::from(self.layout.frame_count) * size + 7,
            BadCompletion::NotSent => {
                match self.pick(|o| matches!(o, Owner::User | Owner::FillRing)) {
                    Some(f) => u64::from(f) * size,
                    None => u64::from(self.layout.frame_count) * size,
                }
            }
        };
        self.comp.push((addr, false));
        self.stats.bad_comp_injected += 1;
        true
    }

    /// Frames held, per [`Owner`], indexed by the owner's value.
    pub fn owner_counts(&self) -> [u32; 6] {
        let mut c = [0u32; 6];
        for &o in &self.owner {
            c[o as usize] += 1;
        }
        c
    }

    /// Compares the kernel's view with the port's ledger, between port calls: frames the port
    /// handed over for reception are on the fill or RX ring, frames it handed over for
    /// transmission are on the TX ring, in flight or on the completion ring, and free frames are
    /// the ones the kernel does not hold.
    pub fn audit(&self, ledger: &FrameLedger) -> Result<(), AuditError> {
        let c = self.owner_counts();
        let [user, fill, rx, tx, in_flight, comp] = c;
        let ok = ledger.count(Location::Fill) == fill + rx
            && ledger.count(Location::Tx) == tx + in_flight + comp
            && ledger.count(Location::Free) == user
            && in_flight as usize == self.in_flight.len();
        if ok {
            Ok(())
        } else {
            Err(AuditError {
                ledger: ledger.to_string(),
                fill,
                rx,
                tx,
                in_flight,
                comp,
                user,
            })
        }
    }
}

impl Backend for MemBackend {
    type Desc = MemDesc;

    fn layout(&self) -> UmemLayout {
        self.layout
    }

    fn desc(&self, frame: u32) -> MemDesc {
        MemDesc {
            addr: u64::from(frame) * u64::from(self.layout.frame_size)
                + u64::from(self.layout.headroom),
            len: 0,
        }
    }

    fn frame_mut(&mut self, desc: &MemDesc) -> &mut [u8] {
        let size = u64::from(self.layout.frame_size);
        let Some(frame) = self.frame_of(desc.addr) else {
            return &mut [];
        };
        let end = (u64::from(frame) + 1) * size;
        &mut self.umem[desc.addr as usize..end as usize]
    }

    fn set_len(&mut self, desc: &mut MemDesc, len: usize) {
        desc.len = len as u32;
    }

    fn fill_free(&mut self, max: u32) -> u32 {
        (self.fill.free() as u32).min(max)
    }

    fn fill(&mut self, descs: &[MemDesc]) -> usize {
        for (i, d) in descs.iter().enumerate() {
            let owned = self
                .frame_of(d.addr)
                .filter(|&f| self.owner[f as usize] == Owner::User);
            let Some(frame) = owned else {
                self.stats.user_errors += 1;
                return i;
            };
            if !self.fill.push(d.addr) {
                return i;
            }
            self.owner[frame as usize] = Owner::FillRing;
        }
        descs.len()
    }

    fn fill_needs_wakeup(&self) -> bool {
        self.need_wakeup && self.fill_wakeup
    }

    fn complete(&mut self, out: &mut [MemDesc]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some((addr, real)) = self.comp.pop() else {
                break;
            };
            if real {
                if let Some(f) = self.frame_of(addr) {
                    self.owner[f as usize] = Owner::User;
                }
            }
            out[n] = MemDesc { addr, len: 0 };
            n += 1;
        }
        n
    }

    fn rx(&mut self, out: &mut [MemDesc]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some((d, real)) = self.rx.pop() else {
                break;
            };
            if real {
                if let Some(f) = self.frame_of(d.addr) {
                    self.owner[f as usize] = Owner::User;
                }
            }
            out[n] = d;
            n += 1;
        }
        n
    }

    fn tx_free(&mut self, max: u32) -> u32 {
        (self.tx.free() as u32).min(max)
    }

    fn tx(&mut self, descs: &[MemDesc]) -> usize {
        for (i, d) in descs.iter().enumerate() {
            let owned = self
                .frame_of(d.addr)
                .filter(|&f| self.owner[f as usize] == Owner::User);
            let Some(frame) = owned else {
                self.stats.user_errors += 1;
                return i;
            };
            if !self.tx.push(*d) {
                return i;
            }
            self.owner[frame as usize] = Owner::TxRing;
        }
        descs.len()
    }

    fn tx_needs_wakeup(&self) -> bool {
        self.knobs.copy_mode || (self.need_wakeup && self.tx_wakeup)
    }

    fn copy_mode(&self) -> bool {
        self.knobs.copy_mode
    }

    fn wake_tx(&mut self) -> io::Result<()> {
        self.stats.tx_kicks += 1;
        self.tx_wakeup = false;
        if self.knobs.copy_mode {
            self.kick_budget = (self.kick_budget + COPY_MODE_TX_BATCH).min(self.tx.cap);
        }
        Ok(())
    }

    fn wake_rx(&mut self) -> io::Result<()> {
        self.stats.rx_wakeups += 1;
        self.fill_wakeup = false;
        Ok(())
    }

    fn wait(&mut self, _timeout: Duration) -> io::Result<bool> {
        Ok(!self.rx.q.is_empty())
    }

    fn kernel_stats(&self) -> io::Result<KernelStats> {
        Ok(KernelStats {
            rx_dropped: self.stats.rx_too_long,
            rx_invalid_descs: 0,
            tx_invalid_descs: self.stats.user_errors,
            rx_ring_full: self.stats.rx_ring_full,
            rx_fill_ring_empty_descs: self.stats.rx_no_fill,
            tx_ring_empty_descs: 0,
        })
    }
}
