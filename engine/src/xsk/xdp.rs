//! The real backend: an AF_XDP socket and its UMEM, through xsk-rs (feature `xdp`).
//!
//! The socket is bound with `XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD`: libxdp must not load its
//! default XDP program, because ours (loaded with aya) owns the `XskMap`; the daemon registers
//! [`Port::fd`] there under the queue index. Zero-copy is tried first when configured
//! ([`ZeroCopy::Auto`]); drivers without it (veth, most virtual NICs) answer `EOPNOTSUPP` and the
//! socket is bound in copy mode instead.
//!
//! Every `unsafe` block here is a call into xsk-rs whose contract is about frame ownership: a
//! frame handed to the fill or TX ring must not be touched until it comes back on the RX or
//! completion ring. The port's [`FrameLedger`](super::FrameLedger) enforces exactly that, and
//! every descriptor from the kernel is range-checked before its frame is touched.
#![allow(unsafe_code)]

use core::time::Duration;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::socket::SocketCreateError;
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::{
    Backend, KernelStats, Port, RingDesc, UmemLayout, XskConfig, XskError, ZeroCopy, XDP_HEADROOM,
};

impl RingDesc for FrameDesc {
    #[inline]
    fn addr(&self) -> u64 {
        FrameDesc::addr(self) as u64
    }
    #[inline]
    fn len(&self) -> usize {
        self.lengths().data()
    }
}

/// An AF_XDP socket bound to one interface queue, with its own UMEM. Made by [`Port::new`],
/// which alone drives its rings.
#[derive(Debug)]
pub struct XskBackend {
    // Declared (and so dropped) before the UMEM: every queue holds a handle on the socket, which
    // must go before the UMEM it was created from.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// The descriptor xsk-rs made for each frame (packet at `frame * frame_size + headroom`).
    frames: Vec<FrameDesc>,
    layout: UmemLayout,
    umem_len: u64,
    zero_copy: bool,
    ifname: String,
    queue: u32,
    umem: Umem,
}

fn os_error(e: &SocketCreateError) -> Option<i32> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
}

fn errno_name(e: &SocketCreateError) -> String {
    match os_error(e) {
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP".into(),
        Some(libc::EBUSY) => "EBUSY".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::ENODEV) => "ENODEV".into(),
        Some(libc::EPERM) => "EPERM".into(),
        Some(n) => io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    }
}

fn boxed(e: SocketCreateError) -> Box<dyn std::error::Error + Send + Sync> {
    // Keep the errno in the message: SocketCreateError's own text is only the step that failed.
    let errno = errno_name(&e);
    format!("{e} ({errno})").into()
}

impl XskBackend {
    /// Creates a UMEM of `cfg.frame_count` frames and binds an AF_XDP socket on `ifname` queue
    /// `queue`. Needs root (or CAP_NET_ADMIN + CAP_NET_RAW, and CAP_IPC_LOCK or a high enough
    /// `RLIMIT_MEMLOCK`).
    ///
    /// Crate-private on purpose: the [`Backend`] methods are safe to call only for frames the
    /// caller owns, and only a [`Port`] (built with [`Port::new`]) keeps that account.
    pub(crate) fn bind(ifname: &str, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        cfg.validate()?;
        let bad_name = ifname.is_empty()
            || ifname.len() > 15
            || ifname
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
        let iface: Option<Interface> = if bad_name { None } else { ifname.parse().ok() };
        let Some(iface) = iface else {
            return Err(XskError::InterfaceName {
                ifname: ifname.to_string(),
            });
        };

        let cfg_err = |field: &'static str, value: u32, reason: &'static str| XskError::Config {
            field,
            value: value.into(),
            reason,
        };
        let pow2 = "must be a power of two";
        let umem_cfg = UmemConfig::builder()
            .frame_size(
                FrameSize::new(cfg.frame_size)
                    .map_err(|_| cfg_err("frame_size", cfg.frame_size, "must be 2048 or 4096"))?,
            )
            .fill_queue_size(
                QueueSize::new(cfg.fill_ring_size())
                    .map_err(|_| cfg_err("fill_size", cfg.fill_ring_size(), pow2))?,
            )
            .comp_queue_size(
                QueueSize::new(cfg.comp_ring_size())
                    .map_err(|_| cfg_err("comp_size", cfg.comp_ring_size(), pow2))?,
            )
            .frame_headroom(0)
            .build()
            .map_err(|_| cfg_err("frame_size", cfg.frame_size, "must be 2048 or 4096"))?;
        let rx_size =
            QueueSize::new(cfg.rx_size).map_err(|_| cfg_err("rx_size", cfg.rx_size, pow2))?;
        let tx_size =
            QueueSize::new(cfg.tx_size).map_err(|_| cfg_err("tx_size", cfg.tx_size, pow2))?;
        let count = NonZeroU32::new(cfg.frame_count)
            .ok_or_else(|| cfg_err("frame_count", 0, "must be at least 1"))?;

        let (umem, frames) = Umem::new(umem_cfg, count, false).map_err(|e| XskError::Umem {
            frames: cfg.frame_count,
            frame_size: cfg.frame_size,
            source: Box::new(e),
        })?;

        let wake = if cfg.need_wakeup {
            BindFlags::XDP_USE_NEED_WAKEUP
        } else {
            BindFlags::empty()
        };
        let attempt = |mode: BindFlags| {
            let sock_cfg = SocketConfig::builder()
                .rx_queue_size(rx_size)
                .tx_queue_size(tx_size)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(mode | wake)
                .build();
            // SAFETY: the UMEM is not shared: it was created above for this socket alone, so no
            // other socket is bound with it to this (interface, queue) pair. Program loading is
            // inhibited in any case, which is what the contract asks for when sharing. After a
            // failed attempt xsk-rs keeps the UMEM's saved fill/completion rings for a retry.
            unsafe { Socket::new(sock_cfg, &umem, &iface, queue) }
        };
        let bind_err = |mode: &'static str| {
            move |e: SocketCreateError| XskError::Bind {
                ifname: ifname.to_string(),
                queue,
                mode,
                source: boxed(e),
            }
        };
        let (queues, zero_copy) = match cfg.zero_copy {
            ZeroCopy::Off => (
                attempt(BindFlags::XDP_COPY).map_err(bind_err("copy"))?,
                false,
            ),
            ZeroCopy::Required => match attempt(BindFlags::XDP_ZEROCOPY) {
                Ok(q) => (q, true),
                Err(e) if os_error(&e) == Some(libc::EOPNOTSUPP) => {
                    return Err(XskError::ZeroCopyUnsupported {
                        ifname: ifname.to_string(),
                        queue,
                        source: boxed(e),
                    })
                }
                Err(e) => return Err(bind_err("zero-copy")(e)),
            },
            ZeroCopy::Auto => match attempt(BindFlags::XDP_ZEROCOPY) {
                Ok(q) => (q, true),
                // No such interface, no permission, queue taken: copy mode would fail the same.
                Err(e)
                    if matches!(
                        os_error(&e),
                        Some(libc::ENODEV | libc::EPERM | libc::EACCES | libc::EBUSY)
                    ) =>
                {
                    return Err(bind_err("zero-copy")(e))
                }
                Err(e) => {
                    tracing::info!(
                        "zero-copy bind failed on {ifname} queue {queue} ({}); using copy mode",
                        errno_name(&e)
                    );
                    (
                        attempt(BindFlags::XDP_COPY).map_err(bind_err("copy"))?,
                        false,
                    )
                }
            },
        };
        let (tx, rx, fq_cq) = queues;
        let Some((fq, cq)) = fq_cq else {
            return Err(XskError::Bind {
                ifname: ifname.to_string(),
                queue,
                mode: if zero_copy { "zero-copy" } else { "copy" },
                source: "xsk-rs returned no fill/completion queue for an unshared UMEM".into(),
            });
        };
        tracing::info!(
            "AF_XDP socket bound on {ifname} queue {queue}: {} mode, {} frames of {} bytes, \
             need_wakeup {}",
            if zero_copy { "zero-copy" } else { "copy" },
            cfg.frame_count,
            cfg.frame_size,
            cfg.need_wakeup
        );
        Ok(XskBackend {
            rx,
            tx,
            fq,
            cq,
            frames,
            layout: UmemLayout {
                frame_count: cfg.frame_count,
                frame_size: cfg.frame_size,
                headroom: XDP_HEADROOM,
                fill_size: cfg.fill_ring_size(),
            },
            umem_len: u64::from(cfg.frame_count) * u64::from(cfg.frame_size),
            zero_copy,
            ifname: ifname.to_string(),
            queue,
            umem,
        })
    }

    /// The socket's file descriptor, to register in the XDP program's `XskMap`.
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Whether the socket was bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The queue index.
    pub fn queue(&self) -> u32 {
        self.queue
    }
}

impl Backend for XskBackend {
    type Desc = FrameDesc;

    fn layout(&self) -> UmemLayout {
        self.layout
    }

    #[inline]
    fn desc(&self, frame: u32) -> FrameDesc {
        self.frames[frame as usize]
    }

    #[inline]
    fn frame_mut(&mut self, desc: &FrameDesc) -> &mut [u8] {
        if desc.addr() as u64 >= self.umem_len {
            return &mut [];
        }
        let mut d = *desc;
        let (ptr, len) = {
            // SAFETY: `d.addr()` lies inside this UMEM (checked above), so xsk-rs builds the
            // slice from that address to the end of its frame, inside the mapping. The port
            // only asks for frames it owns (read from the RX ring, or free and about to be
            // lent), so neither the kernel nor any other slice accesses it meanwhile.
            let mut data = unsafe { self.umem.data_mut(&mut d) };
            data.cursor().set_pos(usize::MAX); // the whole frame, not just the packet
            let s = data.contents_mut();
            (s.as_mut_ptr(), s.len())
        };
        // SAFETY: the same bytes xsk-rs just lent (`ptr..ptr + len`, inside the UMEM mapping,
        // which `self.umem` keeps alive), re-borrowed for as long as `&mut self` is held, so no
        // other access can overlap it.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    #[inline]
    fn set_len(&mut self, desc: &mut FrameDesc, len: usize) {
        if desc.addr() as u64 >= self.umem_len {
            return;
        }
        // SAFETY: in range (checked above) and owned by user space, as for `frame_mut`; the
        // slice lives only for this statement, which records the packet length in `desc`.
        unsafe { self.umem.data_mut(desc) }.cursor().set_pos(len);
    }

    #[inline]
    fn fill_free(&mut self, max: u32) -> u32 {
        self.fq.nb_free(max).min(max)
    }

    #[inline]
    fn fill(&mut self, descs: &[FrameDesc]) -> usize {
        let n = (self.fq.nb_free(descs.len() as u32) as usize).min(descs.len());
        // SAFETY: the descriptors name frames of this UMEM (made by `desc`) that the port's
        // ledger holds as free or lent-and-returned: none is on the TX ring or in use.
        unsafe { self.fq.produce(&descs[..n]) }
    }

    #[inline]
    fn fill_needs_wakeup(&self) -> bool {
        self.fq.needs_wakeup()
    }

    #[inline]
    fn complete(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: only writes addresses into `out`; the port range-checks each one against the
        // ledger before touching its frame.
        unsafe { self.cq.consume(out) }
    }

    #[inline]
    fn rx(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: as for `complete`.
        unsafe { self.rx.consume(out) }
    }

    #[inline]
    fn tx_free(&mut self, max: u32) -> u32 {
        self.tx.nb_free(max).min(max)
    }

    #[inline]
    fn tx(&mut self, descs: &[FrameDesc]) -> usize {
        let n = (self.tx.nb_free(descs.len() as u32) as usize).min(descs.len());
        // SAFETY: frames of this UMEM, owned by user space per the ledger and no longer lent to
        // the stack (its closure has returned); they are not touched again until completed.
        unsafe { self.tx.produce(&descs[..n]) }
    }

    #[inline]
    fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    fn copy_mode(&self) -> bool {
        !self.zero_copy
    }

    fn wake_tx(&mut self) -> io::Result<()> {
        self.tx.wakeup()
    }

    fn wake_rx(&mut self) -> io::Result<()> {
        self.fq.wakeup(self.rx.fd_mut(), 0)
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        // ppoll(2), not poll(2): a timeout of microseconds (a paced connection's next segment)
        // sleeps that long on a high-resolution timer instead of a whole millisecond.
        let mut pfd = libc::pollfd {
            fd: self.rx.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call (nfds = 1), `ts` a
        // valid timespec, and a null signal mask keeps the thread's own; ppoll only reads `ts`
        // and writes `pfd.revents`. No frame is involved.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(r > 0)
    }

    fn kernel_stats(&self) -> io::Result<KernelStats> {
        let s = self.rx.fd().xdp_statistics()?;
        Ok(KernelStats {
            rx_dropped: s.rx_dropped(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: s.tx_ring_empty_descs(),
        })
    }
}

impl Port<XskBackend> {
    /// Binds an AF_XDP socket on `ifname` queue `queue` and primes its fill ring.
    pub fn new(ifname: &str, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        let backend = XskBackend::bind(ifname, queue, cfg)?;
        Port::with_backend(backend, cfg)
    }

    /// The same as [`Port::new`].
    pub fn open(ifname: &str, queue: u32, cfg: &XskConfig) -> Result<Self, XskError> {
        Self::new(ifname, queue, cfg)
    }

    /// The socket's file descriptor, to register in the `XskMap` under this queue's index.
    pub fn fd(&self) -> RawFd {
        self.backend().fd()
    }

    /// Whether the socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.backend().zero_copy()
    }
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Port<XskBackend>>();
}
