//! The AF_XDP port: UMEM, the four rings, and an account of every frame.
//!
//! One [`Port`] serves one (interface, queue) pair from one worker thread. It owns a [`Backend`]
//! (the UMEM frame memory and the fill, completion, RX and TX rings) and a [`FrameLedger`] that
//! knows, for every UMEM frame, where it is. It implements [`crate::device::Device`]: received
//! frames are lent to the stack in place and, if the stack rewrote one into a reply, that very
//! frame goes to the TX ring (zero copy).
//!
//! Two backends:
//! - [`mem::MemBackend`], always compiled, simulates the kernel side of the rings in memory with
//!   fault knobs (starved fill ring, slow consumer, TX ring full with a completion backlog,
//!   invalid descriptors). The ring logic and the frame accounting are tested against it
//!   without root.
//! - `xdp::XskBackend` (feature `xdp`) binds a real AF_XDP socket with xsk-rs, zero-copy when the
//!   driver can and copy mode otherwise. It never loads an XDP program: ours (loaded with aya)
//!   owns the `XskMap`, into which the daemon registers `Port::fd()`.
//!
//! # Frame life
//!
//! ```text
//!          refill            the kernel writes a packet, posts it on RX         receive
//!  Free ────────────► Fill ────────────────────────────────────────────► Rx ───────► Stack
//!   │ ▲                 ▲                                                              │
//!   │ │                 └─────────────────── Verdict::Drop ────────────────────────────┤
//!   │ │                                                                                │
//!   │ │        the kernel sends it, posts it on the completion ring   Verdict::         │
//!   │ └─── Completion ◄──────────────────────────────────────── Tx ◄── Transmit(n) ────┤
//!   │                                                                                  │
//!   └──► Stack (transmit lends a free frame, the closure answers Some(n)) ─────────────┘
//! ```
//!
//! Frames never wait in the transient locations (Rx, Stack, Completion) between port calls.
//! Receive keeps the fill ring topped up to `frame_count - tx_reserve` frames; transmit may use
//! any free frame the fill ring does not need.

mod ledger;
pub mod mem;
#[cfg(test)]
mod tests;
#[cfg(feature = "xdp")]
pub mod xdp;

pub use ledger::{FrameLedger, LedgerError, Location};
#[cfg(feature = "xdp")]
pub use xdp::XskBackend;

use core::time::Duration;
use std::io;

use serde::Deserialize;

use crate::device::{Device, Verdict, BATCH};

/// Most frames in one UMEM (4 GiB of 4096-byte frames would be absurd for one queue).
pub const MAX_FRAMES: u32 = 1 << 20;
/// Most bytes of UMEM for one port.
pub const MAX_UMEM_BYTES: u64 = 1 << 30;
/// Largest ring the configuration accepts.
pub const MAX_RING: u32 = 1 << 21;
/// Bytes the kernel reserves at the start of every frame for XDP programs (`XDP_PACKET_HEADROOM`).
pub const XDP_HEADROOM: u32 = 256;

/// Whether to bind the socket in zero-copy mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopy {
    /// Try zero-copy; if the driver refuses (veth always does), log it and use copy mode.
    #[default]
    Auto,
    /// Zero-copy or fail.
    Required,
    /// Copy mode only.
    Off,
}

/// Configuration of one AF_XDP port (`[xsk]` in the daemon's configuration file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct XskConfig {
    /// Frames in the UMEM (default 4096).
    pub frame_count: u32,
    /// Bytes per frame: 2048 or 4096 (default 4096). The first [`XDP_HEADROOM`] bytes of each
    /// frame are the kernel's headroom; the rest holds one Ethernet frame.
    pub frame_size: u32,
    /// RX ring size, a power of two (default 2048).
    pub rx_size: u32,
    /// TX ring size, a power of two (default 2048).
    pub tx_size: u32,
    /// Fill ring size, a power of two ≥ `frame_count`; default: the next power of two ≥
    /// `frame_count`, so that every frame fits in it.
    pub fill_size: Option<u32>,
    /// Completion ring size, a power of two ≥ `frame_count`; default as `fill_size`.
    pub comp_size: Option<u32>,
    /// Zero-copy bind: `"auto"` (default), `"required"` or `"off"`.
    pub zero_copy: ZeroCopy,
    /// Bind with `XDP_USE_NEED_WAKEUP` and only make a syscall when the kernel asks for one
    /// (default true).
    pub need_wakeup: bool,
    /// Spin on the rings instead of sleeping in `ppoll(2)`: [`Port::wait`] returns at once
    /// (default false).
    pub busy_poll: bool,
    /// Most frames read from the RX ring per `receive` call, 1..=64 (default 64).
    pub batch: usize,
    /// Frames kept out of the fill ring so that the engine can originate packets (SYNs, ARP
    /// requests, retransmissions) even when reception is idle; default `frame_count / 4`. Must
    /// be below `frame_count`.
    pub tx_reserve: Option<u32>,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 4096,
            frame_size: 4096,
            rx_size: 2048,
            tx_size: 2048,
            fill_size: None,
            comp_size: None,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            busy_poll: false,
            batch: BATCH,
            tx_reserve: None,
        }
    }
}

impl XskConfig {
    /// Fill ring size, resolving the default.
    pub fn fill_ring_size(&self) -> u32 {
        self.fill_size
            .unwrap_or_else(|| self.frame_count.max(1).next_power_of_two())
    }

    /// Completion ring size, resolving the default.
    pub fn comp_ring_size(&self) -> u32 {
        self.comp_size
            .unwrap_or_else(|| self.frame_count.max(1).next_power_of_two())
    }

    /// Frames kept out of the fill ring, resolving the default.
    pub fn tx_reserve_frames(&self) -> u32 {
        self.tx_reserve.unwrap_or(self.frame_count / 4)
    }

    /// Checks every limit; the error names the field and what to set it to.
    pub fn validate(&self) -> Result<(), XskError> {
        let bad = |field: &'static str, value: u64, reason: &'static str| {
            Err(XskError::Config {
                field,
                value,
                reason,
            })
        };
        if self.frame_count == 0 || self.frame_count > MAX_FRAMES {
            return bad(
                "frame_count",
                self.frame_count.into(),
                "must be between 1 and 1048576 (default 4096)",
            );
        }
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return bad(
                "frame_size",
                self.frame_size.into(),
                "must be 2048 or 4096 (AF_XDP aligned chunks; default 4096)",
            );
        }
        if u64::from(self.frame_count) * u64::from(self.frame_size) > MAX_UMEM_BYTES {
            return bad(
                "frame_count",
                self.frame_count.into(),
                "frame_count * frame_size exceeds 1 GiB of UMEM; lower frame_count",
            );
        }
        for (field, v) in [("rx_size", self.rx_size), ("tx_size", self.tx_size)] {
            if !v.is_power_of_two() || v > MAX_RING {
                return bad(
                    field,
                    v.into(),
                    "must be a power of two between 1 and 2097152 (default 2048)",
                );
            }
        }
        for (field, v) in [
            ("fill_size", self.fill_ring_size()),
            ("comp_size", self.comp_ring_size()),
        ] {
            if !v.is_power_of_two() || v > MAX_RING {
                return bad(
                    field,
                    v.into(),
                    "must be a power of two (leave it unset to size it from frame_count)",
                );
            }
            if v < self.frame_count {
                return bad(
                    field,
                    v.into(),
                    "must be at least frame_count so that every frame fits in the ring \
                     (leave it unset to size it from frame_count)",
                );
            }
        }
        if self.batch == 0 || self.batch > BATCH {
            return bad("batch", self.batch as u64, "must be between 1 and 64");
        }
        if self.tx_reserve_frames() >= self.frame_count {
            return bad(
                "tx_reserve",
                self.tx_reserve_frames().into(),
                "must be below frame_count, or the fill ring gets no frame to receive into",
            );
        }
        Ok(())
    }
}

/// Errors of the AF_XDP port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XskError {
    /// A configuration value is out of range.
    #[error("invalid [xsk] configuration: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        reason: &'static str,
    },
    /// The backend's UMEM does not match the configuration it is used with.
    #[error(
        "AF_XDP backend has {backend_frames} frames of {backend_size} bytes but the \
         configuration says {frames} of {size}; build the backend from the same XskConfig"
    )]
    LayoutMismatch {
        /// Frames in the backend's UMEM.
        backend_frames: u32,
        /// Frame size of the backend's UMEM.
        backend_size: u32,
        /// Frames in the configuration.
        frames: u32,
        /// Frame size in the configuration.
        size: u32,
    },
    /// The interface name cannot be an interface name.
    #[error("`{ifname}` is not a valid interface name (1 to 15 bytes, no NUL, no '/', no space)")]
    InterfaceName {
        /// The name given.
        ifname: String,
    },
    /// The UMEM could not be created.
    #[error(
        "cannot create the UMEM ({frames} frames of {frame_size} bytes): {source}; raise the \
         locked-memory limit (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in the systemd \
         unit) or lower xsk.frame_count"
    )]
    Umem {
        /// Frames requested.
        frames: u32,
        /// Frame size requested.
        frame_size: u32,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The socket could not be bound.
    #[error(
        "cannot bind an AF_XDP socket to {ifname} queue {queue} in {mode} mode: {source}; check \
         that the interface exists and has that queue (`ethtool -l {ifname}`), that no other \
         AF_XDP socket is bound to it, and that the daemon runs as root (or with CAP_NET_ADMIN, \
         CAP_NET_RAW and CAP_BPF)"
    )]
    Bind {
        /// Interface.
        ifname: String,
        /// Queue index.
        queue: u32,
        /// `"zero-copy"` or `"copy"`.
        mode: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Zero-copy was required but the driver refused it.
    #[error(
        "zero-copy bind failed on {ifname} queue {queue} ({source}) and xsk.zero_copy = \
         \"required\"; this driver has no AF_XDP zero-copy support (veth never has): set \
         xsk.zero_copy = \"auto\" or \"off\""
    )]
    ZeroCopyUnsupported {
        /// Interface.
        ifname: String,
        /// Queue index.
        queue: u32,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A syscall on the socket failed.
    #[error("AF_XDP {op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The frame accounting found a discrepancy.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A ring descriptor as a backend stores it.
pub trait RingDesc: Copy + Default + core::fmt::Debug {
    /// Byte offset in the UMEM of the packet (or, on the fill and completion rings, of the frame).
    fn addr(&self) -> u64;
    /// Packet length in bytes (0 on the fill and completion rings).
    fn len(&self) -> usize;
    /// Whether the length is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The UMEM geometry of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemLayout {
    /// Frames in the UMEM.
    pub frame_count: u32,
    /// Bytes per frame (a power of two).
    pub frame_size: u32,
    /// Offset of the packet in a frame the port hands out for transmission (and where the
    /// kernel writes received packets).
    pub headroom: u32,
    /// Fill ring size.
    pub fill_size: u32,
}

/// Kernel-side counters of a socket (`XDP_STATISTICS`), or their simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Received packets dropped for other reasons.
    pub rx_dropped: u64,
    /// Received packets dropped because of an invalid descriptor.
    pub rx_invalid_descs: u64,
    /// Transmit descriptors the kernel rejected as invalid.
    pub tx_invalid_descs: u64,
    /// Received packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// The UMEM and the four rings, seen from user space.
///
/// Ring operations take and return prefixes: `fill(d)` posts the first `k` descriptors of `d`
/// and returns `k` (fewer than asked only if the ring is full), `rx(out)` fills the first `k`
/// entries of `out`. A backend never blocks except in [`Backend::wait`].
pub trait Backend {
    /// The backend's descriptor type.
    type Desc: RingDesc;

    /// The UMEM geometry.
    fn layout(&self) -> UmemLayout;
    /// The descriptor of frame `frame` for the fill ring or for an originated packet: packet at
    /// `frame * frame_size + headroom`, length 0. `frame < frame_count`.
    fn desc(&self, frame: u32) -> Self::Desc;
    /// The bytes from `desc.addr()` to the end of its frame. The port only passes descriptors it
    /// has validated; an out-of-range one gives an empty slice.
    fn frame_mut(&mut self, desc: &Self::Desc) -> &mut [u8];
    /// Sets the packet length of a descriptor about to be transmitted (≤ the frame's bytes).
    fn set_len(&mut self, desc: &mut Self::Desc, len: usize);

    /// Free slots in the fill ring (exact when the answer is below `max`, which it never exceeds
    /// by more than the ring size).
    fn fill_free(&mut self, max: u32) -> u32;
    /// Posts frames on the fill ring.
    fn fill(&mut self, descs: &[Self::Desc]) -> usize;
    /// Whether the kernel asks for a wakeup to go on using the fill ring.
    fn fill_needs_wakeup(&self) -> bool;
    /// Reads completed transmissions.
    fn complete(&mut self, out: &mut [Self::Desc]) -> usize;
    /// Reads received packets.
    fn rx(&mut self, out: &mut [Self::Desc]) -> usize;
    /// Free slots in the TX ring, as [`Backend::fill_free`].
    fn tx_free(&mut self, max: u32) -> u32;
    /// Posts packets on the TX ring.
    fn tx(&mut self, descs: &[Self::Desc]) -> usize;
    /// Whether the kernel asks for a wakeup to transmit.
    fn tx_needs_wakeup(&self) -> bool;
    /// Whether the socket is in copy mode (TX then only progresses in `sendto`).
    fn copy_mode(&self) -> bool;

    /// Kicks transmission (`sendto(MSG_DONTWAIT)`).
    fn wake_tx(&mut self) -> io::Result<()>;
    /// Kicks reception (`poll` with a zero timeout).
    fn wake_rx(&mut self) -> io::Result<()>;
    /// Sleeps until the RX ring has something or `timeout` passes; `Ok(true)` if readable.
    fn wait(&mut self, timeout: Duration) -> io::Result<bool>;
    /// The kernel's counters for this socket.
    fn kernel_stats(&self) -> io::Result<KernelStats>;
}

/// Counters of one port (plain integers, owned by its worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received and lent to the stack.
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames posted on the TX ring (in-place replies and originated).
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Times a refill found the fill ring empty (the kernel may have dropped packets; see
    /// [`KernelStats::rx_fill_ring_empty_descs`] for the kernel's own count).
    pub fill_ring_empty: u64,
    /// Times the TX ring had no room for a batch (or part of one).
    pub tx_ring_full: u64,
    /// In-place replies dropped because the TX ring was full (their frame went back to the fill
    /// ring). Originated packets are never dropped this way: they are not lent without room.
    pub tx_ring_full_drops: u64,
    /// RX descriptors rejected: out of the UMEM, crossing their frame's end, or naming a frame
    /// that was not handed to the kernel for reception.
    pub invalid_rx_descs: u64,
    /// Completion descriptors rejected: out of the UMEM or naming a frame not being sent.
    pub invalid_comp_descs: u64,
    /// `Verdict::Transmit(n)` or `Some(n)` with `n` zero or larger than the buffer (dropped).
    pub bad_lengths: u64,
    /// Syscalls to kick reception (fill ring need_wakeup).
    pub rx_wakeups: u64,
    /// Syscalls to kick transmission.
    pub tx_wakeups: u64,
    /// Failed wakeup syscalls (transient errors such as `EAGAIN` are not failures).
    pub wakeup_errors: u64,
    /// Calls to `ppoll(2)` from [`Port::wait`].
    pub waits: u64,
}

impl PortStats {
    /// All syscalls made on the fast path (RX and TX wakeups; waits not included).
    pub fn wakeups(&self) -> u64 {
        self.rx_wakeups + self.tx_wakeups
    }
}

/// Marks a batch slot whose descriptor was rejected.
const INVALID: u32 = u32::MAX;
/// Marks a batch slot whose frame is ours but whose descriptor is bad: recycle, do not lend.
const RECYCLE: u32 = 1 << 31;

/// One AF_XDP socket (or its in-memory double) with its frame accounting.
pub struct Port<B: Backend> {
    backend: B,
    ledger: FrameLedger,
    /// Free frames (indices), LIFO so that recently used frames are reused while cache-warm.
    free: Vec<u32>,
    layout: UmemLayout,
    batch: usize,
    /// Frames the fill ring should hold.
    fill_target: u32,
    need_wakeup: bool,
    busy_poll: bool,
    primed: bool,
    stats: PortStats,
    rx: [B::Desc; BATCH],
    rx_frames: [u32; BATCH],
    tx: [B::Desc; BATCH],
    tx_frames: [u32; BATCH],
    aux: [B::Desc; BATCH],
    aux_frames: [u32; BATCH],
}

impl<B: Backend> core::fmt::Debug for Port<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Port")
            .field("layout", &self.layout)
            .field("ledger", &format_args!("{}", self.ledger))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Port<B> {
    /// A port over `backend`, configured by `cfg` (the one the backend was built from). Fills
    /// the fill ring at once so that the kernel can receive.
    pub fn with_backend(backend: B, cfg: &XskConfig) -> Result<Self, XskError> {
        cfg.validate()?;
        let layout = backend.layout();
        if layout.frame_count != cfg.frame_count || layout.frame_size != cfg.frame_size {
            return Err(XskError::LayoutMismatch {
                backend_frames: layout.frame_count,
                backend_size: layout.frame_size,
                frames: cfg.frame_count,
                size: cfg.frame_size,
            });
        }
        let mut free = Vec::with_capacity(layout.frame_count as usize);
        free.extend((0..layout.frame_count).rev());
        let mut port = Port {
            backend,
            ledger: FrameLedger::new(layout.frame_count),
            free,
            layout,
            batch: cfg.batch,
            fill_target: cfg.frame_count - cfg.tx_reserve_frames(),
            need_wakeup: cfg.need_wakeup,
            busy_poll: cfg.busy_poll,
            primed: false,
            stats: PortStats::default(),
            rx: [B::Desc::default(); BATCH],
            rx_frames: [0; BATCH],
            tx: [B::Desc::default(); BATCH],
            tx_frames: [0; BATCH],
            aux: [B::Desc::default(); BATCH],
            aux_frames: [0; BATCH],
        };
        port.refill();
        port.kick_rx();
        Ok(port)
    }

    /// The port's counters.
    pub fn stats(&self) -> &PortStats {
        &self.stats
    }

    /// The frame accounting.
    pub fn ledger(&self) -> &FrameLedger {
        &self.ledger
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The UMEM geometry.
    pub fn layout(&self) -> UmemLayout {
        self.layout
    }

    /// Frames currently on the free list.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> Result<KernelStats, XskError> {
        self.backend.kernel_stats().map_err(|source| XskError::Io {
            op: "getsockopt(XDP_STATISTICS)",
            source,
        })
    }

    /// [`FrameLedger::check_idle`] plus the free list: its length is the ledger's free count and
    /// every frame on it is marked free, once. One pass over the frames.
    pub fn check(&self) -> Result<(), LedgerError> {
        self.ledger.check_idle()?;
        let free = self.ledger.count(Location::Free);
        let listed = self.free.len() as u32;
        if listed != free {
            return Err(LedgerError::FreeListMismatch {
                listed,
                free,
                frame: INVALID,
            });
        }
        let mut seen = vec![false; self.layout.frame_count as usize];
        for &f in &self.free {
            let ok = self.ledger.location(f) == Some(Location::Free)
                && !core::mem::replace(&mut seen[f as usize], true);
            if !ok {
                return Err(LedgerError::FreeListMismatch {
                    listed,
                    free,
                    frame: f,
                });
            }
        }
        Ok(())
    }

    /// Sleeps until the RX ring has frames or `timeout` passes (`ppoll(2)` on the socket), unless
    /// `busy_poll` is set, in which case it returns at once. `Ok(true)` if frames may be ready.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, XskError> {
        if self.busy_poll {
            return Ok(true);
        }
        self.stats.waits += 1;
        self.backend
            .wait(timeout)
            .map_err(|source| XskError::Io { op: "poll", source })
    }

    /// Frame index of a descriptor, if it lies inside the UMEM with its whole length inside its
    /// frame.
    #[inline]
    fn frame_of(&self, addr: u64, len: usize) -> Option<u32> {
        let size = u64::from(self.layout.frame_size);
        let frame = addr / size;
        let offset = addr % size;
        if frame >= u64::from(self.layout.frame_count) || offset + len as u64 > size {
            return None;
        }
        Some(frame as u32)
    }

    /// Reads the completion ring and returns completed frames to the free list.
    fn reap(&mut self) {
        // Bounded: the completion ring cannot hold more than the UMEM's frames, plus whatever
        // garbage a broken kernel posts, which one pass per call is enough to drain eventually.
        let mut rounds = self.layout.frame_count as usize / BATCH + 2;
        while rounds > 0 {
            rounds -= 1;
            let n = self.backend.complete(&mut self.aux);
            if n == 0 {
                break;
            }
            for i in 0..n {
                let addr = self.aux[i].addr();
                let size = u64::from(self.layout.frame_size);
                let frame = addr / size;
                if frame >= u64::from(self.layout.frame_count)
                    || !self
                        .ledger
                        .try_transfer(frame as u32, Location::Tx, Location::Completion)
                {
                    self.stats.invalid_comp_descs += 1;
                    continue;
                }
                let frame = frame as u32;
                self.ledger
                    .transfer(frame, Location::Completion, Location::Free);
                self.free.push(frame);
            }
            if n < BATCH {
                break;
            }
        }
    }

    /// Tops the fill ring up to `fill_target` frames from the free list, then kicks the kernel
    /// if it asked for it.
    fn refill(&mut self) {
        let fill_size = self.layout.fill_size;
        let room = self.backend.fill_free(fill_size);
        if room >= fill_size && self.primed {
            self.stats.fill_ring_empty += 1;
        }
        self.primed = true;
        let deficit = self
            .fill_target
            .saturating_sub(self.ledger.count(Location::Fill));
        let mut want = (deficit as usize).min(self.free.len()).min(room as usize);
        while want > 0 {
            let k = want.min(BATCH);
            for i in 0..k {
                let frame = self.free.pop().unwrap_or(INVALID);
                debug_assert_ne!(frame, INVALID);
                self.aux_frames[i] = frame;
                self.aux[i] = self.backend.desc(frame);
            }
            let posted = self.backend.fill(&self.aux[..k]);
            for i in 0..posted {
                self.ledger
                    .transfer(self.aux_frames[i], Location::Free, Location::Fill);
            }
            if posted < k {
                // The ring said it had room; put the rest back and stop.
                self.free.extend_from_slice(&self.aux_frames[posted..k]);
                break;
            }
            want -= k;
        }
    }

    /// Kicks reception if the kernel asked for it (need_wakeup) and the fill ring has frames.
    fn kick_rx(&mut self) {
        if self.need_wakeup
            && self.backend.fill_needs_wakeup()
            && self.backend.fill_free(self.layout.fill_size) < self.layout.fill_size
        {
            self.stats.rx_wakeups += 1;
            if self.backend.wake_rx().is_err() {
                self.stats.wakeup_errors += 1;
            }
        }
    }

    /// Posts `self.tx[..n]` (frames in [`Location::Stack`]) on the TX ring; returns how many the
    /// ring took. The caller decides what becomes of the rest (still in `Stack`).
    fn post_tx(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let posted = self.backend.tx(&self.tx[..n]);
        for i in 0..posted {
            self.ledger
                .transfer(self.tx_frames[i], Location::Stack, Location::Tx);
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += self.tx[i].len() as u64;
        }
        if posted < n {
            self.stats.tx_ring_full += 1;
        }
        posted
    }

    /// Posts `self.aux[..n]` (frames in [`Location::Stack`]) back on the fill ring; what the
    /// ring does not take goes to the free list.
    fn post_fill(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let posted = self.backend.fill(&self.aux[..n]);
        for i in 0..n {
            let frame = self.aux_frames[i];
            if i < posted {
                self.ledger.transfer(frame, Location::Stack, Location::Fill);
            } else {
                self.ledger.transfer(frame, Location::Stack, Location::Free);
                self.free.push(frame);
            }
        }
    }
}

impl Port<mem::MemBackend> {
    /// The simulated kernel, to inject packets, run its transmit path and set fault knobs.
    ///
    /// Only the in-memory backend is reachable mutably: the rings of a real socket are driven by
    /// the port alone, which is what keeps its frames out of the kernel's way.
    pub fn backend_mut(&mut self) -> &mut mem::MemBackend {
        &mut self.backend
    }
}

impl<B: Backend> Device for Port<B> {
    fn frame_capacity(&self) -> usize {
        (self.layout.frame_size - self.layout.headroom) as usize
    }

    fn receive<F>(&mut self, max: usize, mut handle: F) -> usize
    where
        F: FnMut(&mut [u8], usize) -> Verdict,
    {
        self.reap();
        self.refill();
        let want = max.min(self.batch);
        if want == 0 {
            self.kick_rx();
            return 0;
        }
        let n = self.backend.rx(&mut self.rx[..want]);

        // Validate the whole batch first: a frame named twice in one batch is caught here.
        for i in 0..n {
            let d = self.rx[i];
            let slot = match self.frame_of(d.addr(), d.len()) {
                Some(frame)
                    if self
                        .ledger
                        .try_transfer(frame, Location::Fill, Location::Rx) =>
                {
                    frame
                }
                Some(_) => INVALID,
                None => {
                    // Out of its frame. If it still names a frame we handed the kernel, the
                    // frame is ours again: recycle it rather than lose it.
                    let frame = d.addr() / u64::from(self.layout.frame_size);
                    if frame < u64::from(self.layout.frame_count)
                        && self
                            .ledger
                            .try_transfer(frame as u32, Location::Fill, Location::Rx)
                    {
                        self.stats.invalid_rx_descs += 1;
                        frame as u32 | RECYCLE
                    } else {
                        INVALID
                    }
                }
            };
            if slot == INVALID {
                self.stats.invalid_rx_descs += 1;
            }
            self.rx_frames[i] = slot;
        }

        let mut ntx = 0;
        let mut nfill = 0;
        let mut lent = 0;
        for i in 0..n {
            let slot = self.rx_frames[i];
            if slot == INVALID {
                continue;
            }
            let frame = slot & !RECYCLE;
            self.ledger.transfer(frame, Location::Rx, Location::Stack);
            let mut verdict = Verdict::Drop;
            if slot & RECYCLE == 0 {
                let len = self.rx[i].len();
                let buf = self.backend.frame_mut(&self.rx[i]);
                let cap = buf.len();
                lent += 1;
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += len as u64;
                verdict = handle(buf, len);
                if let Verdict::Transmit(k) = verdict {
                    if k == 0 || k > cap {
                        self.stats.bad_lengths += 1;
                        verdict = Verdict::Drop;
                    }
                }
            }
            match verdict {
                Verdict::Transmit(k) => {
                    let mut d = self.rx[i];
                    self.backend.set_len(&mut d, k);
                    self.tx[ntx] = d;
                    self.tx_frames[ntx] = frame;
                    ntx += 1;
                }
                Verdict::Drop => {
                    self.aux[nfill] = self.backend.desc(frame);
                    self.aux_frames[nfill] = frame;
                    nfill += 1;
                }
            }
        }

        let posted = self.post_tx(ntx);
        // Replies the TX ring could not take: their frames go back to the fill ring.
        for i in posted..ntx {
            let frame = self.tx_frames[i];
            self.stats.tx_ring_full_drops += 1;
            self.aux[nfill] = self.backend.desc(frame);
            self.aux_frames[nfill] = frame;
            nfill += 1;
        }
        self.post_fill(nfill);
        self.kick_rx();
        lent
    }

    fn transmit<F>(&mut self, max: usize, mut fill: F) -> usize
    where
        F: FnMut(&mut [u8]) -> Option<usize>,
    {
        self.reap();
        let mut queued = 0;
        // Frames lent, sent or not: `max` bounds the closure's calls, so that a closure that
        // keeps answering a bad length cannot spin.
        let mut lent = 0;
        let mut done = false;
        while !done && lent < max {
            // Free frames the fill ring does not need to reach its target.
            let deficit =
                self.fill_target
                    .saturating_sub(self.ledger.count(Location::Fill)) as usize;
            let spare = self.free.len().saturating_sub(deficit);
            let want = (max - lent).min(BATCH).min(spare);
            if want == 0 {
                break;
            }
            let room = self.backend.tx_free(want as u32) as usize;
            let want = want.min(room);
            if want == 0 {
                self.stats.tx_ring_full += 1;
                break;
            }
            let mut n = 0;
            for _ in 0..want {
                let Some(frame) = self.free.pop() else { break };
                lent += 1;
                self.ledger.transfer(frame, Location::Free, Location::Stack);
                let mut d = self.backend.desc(frame);
                let buf = self.backend.frame_mut(&d);
                let cap = buf.len();
                match fill(buf) {
                    Some(k) if k > 0 && k <= cap => {
                        self.backend.set_len(&mut d, k);
                        self.tx[n] = d;
                        self.tx_frames[n] = frame;
                        n += 1;
                        continue;
                    }
                    Some(_) => self.stats.bad_lengths += 1,
                    None => done = true,
                }
                self.ledger.transfer(frame, Location::Stack, Location::Free);
                self.free.push(frame);
                if done {
                    break;
                }
            }
            let posted = self.post_tx(n);
            // The ring said it had room, so this should not happen; never lose the frames.
            for i in posted..n {
                let frame = self.tx_frames[i];
                self.stats.tx_ring_full_drops += 1;
                self.ledger.transfer(frame, Location::Stack, Location::Free);
                self.free.push(frame);
            }
            queued += posted;
            if posted < n {
                break;
            }
        }
        queued
    }

    fn flush(&mut self) {
        self.reap();
        if self.ledger.count(Location::Tx) == 0 {
            return;
        }
        if !self.need_wakeup || self.backend.copy_mode() || self.backend.tx_needs_wakeup() {
            self.stats.tx_wakeups += 1;
            if self.backend.wake_tx().is_err() {
                self.stats.wakeup_errors += 1;
            }
        }
    }
}
