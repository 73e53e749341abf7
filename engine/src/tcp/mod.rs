//! TCP (RFC 9293), sans-IO: one [`Tcp`] engine per worker, fed segments and time, asked for
//! segments to send and for the next deadline.
//!
//! - Connections live in a preallocated slab (`max_flows`) found through a flow table keyed by a
//!   SipHash-1-3 of the 4-tuple under the engine secret; handles ([`ConnId`]) carry a generation
//!   so a stale handle gets [`TcpError::InvalidConn`], never another flow.
//! - Timers (retransmission, persist, delayed ACK, keepalive, TIME_WAIT, FIN_WAIT_2) sit on a
//!   hashed timing wheel: one entry per connection, O(1) arm and cancel.
//! - Buffers are rings recycled through pools: no allocation per connection once warm, none per
//!   segment ever.
//! - ISNs follow RFC 6528; SYN cookies (RFC 4987) take over when a listener's SYN backlog or the
//!   flow table is full; RFC 5961 challenge ACKs are rate-limited per connection; segments to
//!   closed ports get a rate-limited RST.
//! - Options: MSS (clamped by the MTU), window scale, timestamps with PAWS and RTT samples
//!   (RFC 7323), SACK both ways (RFC 2018, a simplified RFC 6675 scoreboard for retransmits).
//! - RFC 6298 RTO with Karn's rule and backoff; NewReno (RFC 5681, RFC 6582), CUBIC
//!   (RFC 9438) or BBR v1 with pacing; delayed ACK, Nagle, SWS avoidance, zero-window persist, keepalive.
//!
//! The application sees [`Event`]s: `Accepted`, `Connected`, `Readable`, `Writable`,
//! `PeerClosed` and finally `Closed` (once per connection the application knows of, when it
//! enters TIME_WAIT or is deleted, whichever comes first).

mod bbr;
mod buf;
mod cc;
pub mod config;
mod conn;
pub(crate) mod hash;
pub mod rss;
mod seq;
mod table;
mod wheel;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::time::Instant;
use crate::wire::tcp::{self as wire, flags, TcpOptions, TcpRepr, Timestamps};

pub use config::{Congestion, Keepalive, SynCookies, TcpConfig};

use buf::{Pool, RingBuf};
use conn::{Conn, Disp, Env, NOT_PACED};
use hash::Keys;
use table::{FlowKey, FlowTable};
use wheel::Wheel;

/// A handle to a connection: slab index plus generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    idx: u32,
    gen: u32,
}

impl ConnId {
    /// The slab index (stable for the connection's life; reused afterwards).
    pub fn index(self) -> u32 {
        self.idx
    }
}

/// The connection states of RFC 9293 §3.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No connection (a free slot).
    Closed,
    /// Waiting for a SYN (listeners are not connections here; kept for completeness).
    Listen,
    /// SYN sent, waiting for SYN-ACK.
    SynSent,
    /// SYN received and SYN-ACK sent, waiting for the ACK.
    SynReceived,
    /// Open: data flows both ways.
    Established,
    /// We closed; our FIN is not yet acknowledged.
    FinWait1,
    /// We closed and our FIN is acknowledged; waiting for the peer's FIN.
    FinWait2,
    /// The peer closed; we may still send.
    CloseWait,
    /// Both closed at once; waiting for the ACK of our FIN.
    Closing,
    /// The peer closed, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both closed; waiting 2·MSL for stray segments.
    TimeWait,
}

impl State {
    /// All states, in the order of [`TcpStats::flows_by_state`].
    pub const ALL: [State; 11] = [
        State::Closed,
        State::Listen,
        State::SynSent,
        State::SynReceived,
        State::Established,
        State::FinWait1,
        State::FinWait2,
        State::CloseWait,
        State::Closing,
        State::LastAck,
        State::TimeWait,
    ];
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides closed (FIN both ways).
    Normal,
    /// The peer sent an acceptable RST.
    Reset,
    /// The peer answered our SYN with RST (nobody listening).
    Refused,
    /// Retransmissions exhausted (`max_retries` / `max_syn_retries`), or FIN_WAIT_2 timed out.
    Timeout,
    /// Keepalive probes went unanswered.
    KeepaliveTimeout,
    /// The peer's window stayed closed for `persist_timeout_ms` without it taking any data:
    /// the connection was reset.
    PersistTimeout,
    /// The application called [`Tcp::abort`] (or closed with unread data).
    Aborted,
}

/// What the engine tells the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A passive connection completed its handshake on `listen_port`.
    Accepted {
        /// The new connection.
        conn: ConnId,
        /// The listening port it arrived on.
        listen_port: u16,
    },
    /// An active connection (from [`Tcp::connect`]) is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// New data can be read with [`Tcp::recv`] (sent once until the application reads).
    Readable {
        /// The connection.
        conn: ConnId,
    },
    /// Send buffer space freed after a short [`Tcp::send`].
    Writable {
        /// The connection.
        conn: ConnId,
    },
    /// The peer sent FIN: after the buffered data, `recv` returns `Ok(0)`.
    PeerClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection ended; its handle is dead, or in TIME_WAIT, where `state` answers and
    /// `recv` returns the data still unread.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// A segment written by [`Tcp::poll_transmit`]: `len` bytes at the start of the buffer, to be
/// sent in an IPv4 packet from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Source address (ours).
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Segment length (TCP header + payload).
    pub len: usize,
}

/// Errors of the application interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The handle is stale (the connection ended) or was never valid.
    #[error("unknown or closed connection handle: drop it, the connection has ended")]
    InvalidConn,
    /// The operation does not fit the connection's state (e.g. `send` after `shutdown`).
    #[error("operation not allowed in this connection state (check `state()` first)")]
    InvalidState,
    /// Nothing to read yet; wait for `Readable`.
    #[error("no data available yet: wait for a Readable event")]
    WouldBlock,
    /// The port already has a listener.
    #[error("port already listening: choose another port or stop the existing listener")]
    AddrInUse,
    /// Port 0 cannot be listened on or connected to.
    #[error("port 0 is not a valid port: give a port between 1 and 65535")]
    InvalidPort,
    /// `max_listeners` reached.
    #[error("too many listeners: raise tcp.max_listeners")]
    TooManyListeners,
    /// `max_flows` reached.
    #[error("flow table full: raise tcp.max_flows or close connections")]
    TableFull,
    /// Every ephemeral port to this destination is in use.
    #[error(
        "no free ephemeral port for this destination: widen tcp.ephemeral_first..ephemeral_last"
    )]
    NoEphemeralPort,
}

/// Counters (plain `u64`, per worker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments handed to `handle_segment`.
    pub segments_in: u64,
    /// Segments written by `poll_transmit`.
    pub segments_out: u64,
    /// Retransmitted segments (timeout, fast retransmit, SACK holes).
    pub retransmits: u64,
    /// Retransmission timeouts fired.
    pub rto_fired: u64,
    /// Fast retransmits (third duplicate ACK, or SACK showing SND.UNA lost).
    pub fast_retransmits: u64,
    /// Tail loss probes sent (RFC 8985 §7) instead of waiting for the RTO.
    pub tail_loss_probes: u64,
    /// Retransmissions found lost again from SACK information (and resent before the RTO).
    pub lost_retransmits: u64,
    /// Recovery probes: in SACK recovery, no ACK for 2·SRTT, so the first hole went again
    /// before the RTO (once per recovery episode).
    pub recovery_probes: u64,
    /// Recoveries started by the reordering timer (SACK showed later data delivered, SND.UNA
    /// stayed missing for SRTT/4), RFC 8985 §6.2.
    pub reorder_timeouts: u64,
    /// RSTs sent (closed ports, bad ACKs, aborts).
    pub rsts_sent: u64,
    /// Acceptable RSTs received.
    pub rsts_received: u64,
    /// RSTs not sent because of `rst_rate`.
    pub rsts_rate_limited: u64,
    /// SYN cookies sent (SYN-ACKs without state).
    pub syn_cookies_sent: u64,
    /// ACKs whose SYN cookie validated (connection created).
    pub syn_cookies_validated: u64,
    /// ACKs to a listener whose cookie did not validate.
    pub syn_cookies_failed: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Challenge ACKs suppressed by `challenge_ack_limit`.
    pub challenge_acks_limited: u64,
    /// Segments dropped by PAWS (RFC 7323).
    pub paws_drops: u64,
    /// Malformed segments (bad header or options, port 0, SYN with RST and no connection).
    pub drops_malformed: u64,
    /// Segments to a port with no listener and no flow.
    pub drops_no_listener: u64,
    /// SYNs dropped: backlog full and cookies off.
    pub drops_syn_backlog: u64,
    /// Handshake-completing ACKs dropped because the accept backlog was full.
    pub drops_accept_backlog: u64,
    /// SYNs dropped because the flow table is full (cookies off).
    pub drops_table_full: u64,
    /// Segments outside the receive window (answered with an ACK unless RST).
    pub drops_out_of_window: u64,
    /// Out-of-order segments dropped for lack of reassembly ranges or buffer.
    pub drops_ooo: u64,
    /// Stateless replies dropped because `max_control` was reached.
    pub drops_control_full: u64,
    /// Events dropped because `max_events` was reached.
    pub events_dropped: u64,
    /// Connections established passively.
    pub passive_opens: u64,
    /// Connections established actively.
    pub active_opens: u64,
    /// Connections closed by timeout (retransmissions, keepalive or persist).
    pub timeouts: u64,
    /// Of those, connections reset because the peer's window stayed closed for
    /// `persist_timeout_ms` (sockstress).
    pub persist_timeouts: u64,
    /// Closing connections that skipped TIME_WAIT because `max_time_wait` was reached.
    pub time_wait_overflow: u64,
    /// TIME_WAIT connections reused by a new SYN.
    pub time_wait_reused: u64,
    /// Connections per state, indexed like [`State::ALL`].
    pub flows_by_state: [u64; 11],
}

impl TcpStats {
    /// Connections currently in `state`.
    pub fn flows(&self, state: State) -> u64 {
        self.flows_by_state[state as usize]
    }
    /// Connections in TIME_WAIT.
    pub fn time_wait(&self) -> u64 {
        self.flows(State::TimeWait)
    }
}

/// A listening port and its backlogs.
#[derive(Debug, Clone, Copy)]
struct Listener {
    port: u16,
    syn_rcvd: u32,
    accept_pending: u32,
}

/// A stateless segment waiting for `poll_transmit` (RST, cookie SYN-ACK).
#[derive(Debug, Clone, Copy)]
struct Ctl {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: TcpOptions,
}

/// Most state changes waiting for [`Tcp::poll_state_change`].
#[cfg(feature = "trace")]
const STATE_LOG: usize = 256;

/// MSS values a SYN cookie can encode (2 bits), as Linux's table.
const COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];
/// Cookie counter period: 64 s.
const COOKIE_PERIOD_US: u64 = 64_000_000;
/// Cookies older than this many periods are refused.
const COOKIE_MAX_AGE: u32 = 2;

/// The TCP engine of one worker.
pub struct Tcp {
    cfg: TcpConfig,
    keys: Keys,
    conns: Vec<Conn>,
    free: Vec<u32>,
    table: FlowTable,
    wheel: Wheel,
    expired: Vec<u32>,
    /// The slots of the connections whose data pacing holds back (each knows its place,
    /// `Conn::paced_at`, and leaves when freed, so the list never holds more than
    /// `max_flows` and never grows past its first allocation), and the earliest time one of
    /// them may send. Off the timer wheel: pacing gaps are microseconds, the wheel's tick a
    /// millisecond.
    paced: Vec<u32>,
    pace_next: Instant,
    txq: VecDeque<(u32, u32)>,
    events: VecDeque<Event>,
    ctl: VecDeque<Ctl>,
    listeners: Vec<Listener>,
    stats: TcpStats,
    tx_pool: Pool,
    rx_pool: Pool,
    rst_tokens: u32,
    rst_refill: Instant,
    last_cookie: Option<Instant>,
    port_seq: u32,
    /// Ephemeral ports only where the NIC steers the replies to this worker's queue.
    steering: Option<rss::RssSteering>,
    /// Connections whose state changes are reported to the trace ([`Tcp::set_trace_filter`]).
    #[cfg(feature = "trace")]
    trace: Option<crate::trace::TraceFilter>,
    #[cfg(feature = "trace")]
    state_log: VecDeque<crate::trace::StateChange>,
    /// Tests: fixed ISN instead of RFC 6528's.
    #[cfg(test)]
    pub(crate) test_isn: Option<u32>,
    /// Tests: fixed timestamp offset.
    #[cfg(test)]
    pub(crate) test_ts_offset: Option<u32>,
}

impl Tcp {
    /// A new engine. `secret` keys ISNs, timestamp offsets, SYN cookies, the flow hash and port
    /// selection: draw it from a CSPRNG, the same for every worker is fine.
    pub fn new(cfg: TcpConfig, secret: [u8; 32]) -> Self {
        let mut cfg = cfg;
        cfg.max_flows = cfg.max_flows.clamp(1, u32::MAX as usize / 4);
        cfg.ooo_max_ranges = if cfg.ooo_max_ranges == 0 {
            // Segments carry 12 bytes of timestamps when the peer offers them.
            buf::ranges_for(
                cfg.recv_buf,
                (cfg.effective_mss() as usize).saturating_sub(12),
            )
        } else {
            cfg.ooo_max_ranges.clamp(1, buf::MAX_RANGES)
        };
        cfg.send_buf = cfg.send_buf.max(1);
        cfg.recv_buf = cfg.recv_buf.max(1);
        if cfg.ephemeral_last < cfg.ephemeral_first {
            cfg.ephemeral_last = cfg.ephemeral_first;
        }
        // Times beyond ~30 years would overflow microsecond arithmetic.
        const MAX_MS: u64 = 1 << 40;
        for v in [
            &mut cfg.time_wait_ms,
            &mut cfg.fin_wait2_timeout_ms,
            &mut cfg.delayed_ack_ms,
            &mut cfg.rto_min_ms,
            &mut cfg.rto_max_ms,
            &mut cfg.rto_initial_ms,
        ] {
            *v = (*v).min(MAX_MS);
        }
        cfg.rto_min_ms = cfg.rto_min_ms.max(1);
        cfg.rto_max_ms = cfg.rto_max_ms.max(cfg.rto_min_ms);
        if let Some(k) = cfg.keepalive.as_mut() {
            k.idle_ms = k.idle_ms.clamp(1, MAX_MS);
            k.interval_ms = k.interval_ms.clamp(1, MAX_MS);
        }
        let n = cfg.max_flows;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Conn::default());
        }
        let prealloc = cfg.prealloc_buffers.min(n);
        let mut stats = TcpStats::default();
        stats.flows_by_state[State::Closed as usize] = n as u64;
        Tcp {
            keys: Keys::new(&secret),
            conns,
            free: (0..n as u32).rev().collect(),
            table: FlowTable::new(n),
            wheel: Wheel::new(n),
            expired: Vec::with_capacity(n),
            paced: Vec::with_capacity(n),
            pace_next: Instant::MAX,
            txq: VecDeque::with_capacity(n),
            events: VecDeque::with_capacity(cfg.max_events.min(1 << 16)),
            ctl: VecDeque::with_capacity(cfg.max_control.min(1 << 16)),
            listeners: Vec::with_capacity(cfg.max_listeners),
            stats,
            tx_pool: Pool::new(cfg.send_buf, prealloc),
            rx_pool: Pool::new(cfg.recv_buf, prealloc),
            rst_tokens: cfg.rst_rate,
            rst_refill: Instant::ZERO,
            last_cookie: None,
            port_seq: 0,
            steering: None,
            #[cfg(feature = "trace")]
            trace: None,
            #[cfg(feature = "trace")]
            state_log: VecDeque::new(),
            cfg,
            #[cfg(test)]
            test_isn: None,
            #[cfg(test)]
            test_ts_offset: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// Starts listening on `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), TcpError> {
        if port == 0 {
            return Err(TcpError::InvalidPort);
        }
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(TcpError::AddrInUse);
        }
        if self.listeners.len() >= self.cfg.max_listeners {
            return Err(TcpError::TooManyListeners);
        }
        self.listeners.push(Listener {
            port,
            syn_rcvd: 0,
            accept_pending: 0,
        });
        Ok(())
    }

    /// Stops listening on `port` (existing connections are not touched). Returns whether it was
    /// listening.
    pub fn unlisten(&mut self, port: u16) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| l.port != port);
        before != self.listeners.len()
    }

    fn listener(&mut self, port: u16) -> Option<&mut Listener> {
        self.listeners.iter_mut().find(|l| l.port == port)
    }

    /// From now on, [`Tcp::connect`] chooses only ephemeral ports whose replies the NIC steers
    /// to this worker's queue (`None`: any port).
    pub fn set_steering(&mut self, steering: Option<rss::RssSteering>) {
        self.steering = steering;
    }

    /// Opens a connection from `local` (an ephemeral port is chosen: with steering, one whose
    /// replies land on this worker's queue) to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        local: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Result<ConnId, TcpError> {
        if remote.port() == 0 {
            return Err(TcpError::InvalidPort);
        }
        if self.free.is_empty() {
            return Err(TcpError::TableFull);
        }
        // RFC 6056 algorithm 3: a keyed offset per destination plus a global counter.
        let (first, last) = (
            self.cfg.ephemeral_first as u32,
            self.cfg.ephemeral_last as u32,
        );
        let count = last - first + 1;
        let laddr = u32::from(local);
        let raddr = u32::from(*remote.ip());
        let offset = self.keys.port.tuple(laddr, 0, raddr, remote.port(), 0) as u32;
        let mut chosen = None;
        for i in 0..count {
            let port =
                (first + (offset.wrapping_add(self.port_seq).wrapping_add(i)) % count) as u16;
            if port == 0 || self.listeners.iter().any(|l| l.port == port) {
                continue;
            }
            if let Some(s) = &self.steering {
                if !s.replies_here(local, port, remote) {
                    continue;
                }
            }
            let key = FlowKey {
                laddr,
                lport: port,
                raddr,
                rport: remote.port(),
            };
            if self.lookup(&key).is_none() {
                self.port_seq = self.port_seq.wrapping_add(i + 1);
                chosen = Some(key);
                break;
            }
        }
        let key = chosen.ok_or(TcpError::NoEphemeralPort)?;
        let hash = self.flow_hash(&key);
        let idx = self.create(now, key, hash, 0).ok_or(TcpError::TableFull)?;
        let ts_offset = self.ts_offset(&key);
        let c = &mut self.conns[idx as usize];
        c.open_active(&self.cfg, now, ts_offset);
        c.visible = true;
        self.set_state(idx, State::SynSent);
        self.schedule(idx);
        self.sync_timer(idx);
        Ok(self.conns[idx as usize].id)
    }

    /// Handles a received segment addressed to us. `segment` is the TCP header and payload,
    /// checksum already verified by the caller; `src` and `dst` come from the IPv4 header.
    pub fn handle_segment(&mut self, now: Instant, src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) {
        self.stats.segments_in += 1;
        let seg = match TcpRepr::parse_bytes(segment) {
            Ok(s) => s,
            Err(_) => {
                self.stats.drops_malformed += 1;
                return;
            }
        };
        if seg.src_port == 0 || seg.dst_port == 0 {
            self.stats.drops_malformed += 1;
            return;
        }
        let key = FlowKey {
            laddr: u32::from(dst),
            lport: seg.dst_port,
            raddr: u32::from(src),
            rport: seg.src_port,
        };
        let hash = self.flow_hash(&key);
        let mut isn_hint = None;
        if let Some(idx) = self.find(hash, &key) {
            let c = &self.conns[idx as usize];
            let is_syn = seg.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN;
            if c.state == State::TimeWait && is_syn && c.time_wait_reusable(&seg) {
                // RFC 6191 / Linux: a new SYN above the old sequence space (or with a newer
                // timestamp) reuses the 4-tuple; the new ISN jumps past the old window.
                isn_hint = Some(c.snd_nxt.wrapping_add(65535 + 2));
                self.stats.time_wait_reused += 1;
                self.free_conn(idx, None);
            } else {
                self.conn_segment(now, idx, &seg);
                return;
            }
        }
        // SYN with RST: a connection checks the RST first (RFC 9293 §3.10.7.4); without one
        // it is malformed (Linux too never answers it).
        if seg.has(flags::SYN | flags::RST) {
            self.stats.drops_malformed += 1;
            return;
        }
        if self.listeners.iter().any(|l| l.port == seg.dst_port) {
            self.listen_segment(now, key, hash, &seg, isn_hint);
        } else {
            self.closed_port(now, key, &seg);
        }
    }

    /// True when [`Self::poll_transmit`] may have a segment (false: it certainly has none).
    #[inline]
    pub fn may_transmit(&self) -> bool {
        !self.ctl.is_empty() || !self.txq.is_empty()
    }

    /// Writes the next segment to send at the start of `buf` (TCP header and payload, checksum
    /// filled in). `buf` should hold at least the MSS plus 60 bytes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(c) = self.ctl.pop_front() {
            rewind(&mut self.ctl);
            let repr = TcpRepr {
                src_port: c.sport,
                dst_port: c.dport,
                seq: c.seq,
                ack: c.ack,
                flags: c.flags,
                window: c.window,
                urgent: 0,
                options: c.options,
                payload: &[],
            };
            if let Ok(len) = repr.emit(buf, c.src.octets(), c.dst.octets()) {
                self.stats.segments_out += 1;
                if c.flags & flags::RST != 0 {
                    self.stats.rsts_sent += 1;
                }
                return Some(Transmit {
                    src: c.src,
                    dst: c.dst,
                    len,
                });
            }
        }
        while let Some((idx, gen)) = self.txq.pop_front() {
            rewind(&mut self.txq);
            let c = &mut self.conns[idx as usize];
            if c.id.gen != gen || !c.in_txq {
                continue;
            }
            c.in_txq = false;
            let mut env = Env::new(&self.cfg, &mut self.stats, now);
            let out = c.output(&mut env, buf);
            if let Some(len) = out {
                let (src, dst) = (Ipv4Addr::from(c.key.laddr), Ipv4Addr::from(c.key.raddr));
                wire::fill_checksum(&mut buf[..len], src.octets(), dst.octets());
                self.stats.segments_out += 1;
                if c.wants_output() {
                    c.in_txq = true;
                    self.txq.push_back((idx, gen));
                }
                self.note_paced(idx);
                self.sync_timer(idx);
                return Some(Transmit { src, dst, len });
            }
            self.note_paced(idx);
            self.sync_timer(idx);
        }
        None
    }

    /// When [`Self::handle_timeout`] should next be called (`None`: no timer armed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.poll_timers(), self.poll_pacing()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the timer wheel next has something due (pacing aside).
    pub fn poll_timers(&self) -> Option<Instant> {
        self.wheel.next_wakeup()
    }

    /// When a connection that pacing holds back may send ([`Tcp::handle_pacing`]).
    pub fn poll_pacing(&self) -> Option<Instant> {
        (self.pace_next != Instant::MAX).then_some(self.pace_next)
    }

    /// Lets the connections that pacing held back send again once their time has come (cheap
    /// when none is due: call it every batch).
    #[inline]
    pub fn handle_pacing(&mut self, now: Instant) {
        if now >= self.pace_next {
            self.release_paced(now);
        }
    }

    #[inline(never)]
    fn release_paced(&mut self, now: Instant) {
        let mut next = Instant::MAX;
        let mut i = 0;
        while i < self.paced.len() {
            let idx = self.paced[i];
            let c = &mut self.conns[idx as usize];
            if c.pace_wait == Instant::MAX {
                // Released by its own output meanwhile.
                self.unpace(idx);
                continue;
            }
            if c.pace_wait <= now {
                c.pace_wait = Instant::MAX;
                self.unpace(idx);
                if self.conns[idx as usize].wants_output() {
                    self.schedule(idx);
                }
                continue;
            }
            next = next.min(c.pace_wait);
            i += 1;
        }
        self.pace_next = next;
    }

    /// Takes slot `idx` off the paced list (if it is on it), in constant time.
    fn unpace(&mut self, idx: u32) {
        let at = core::mem::replace(&mut self.conns[idx as usize].paced_at, NOT_PACED);
        if at == NOT_PACED {
            return;
        }
        self.paced.swap_remove(at as usize);
        if let Some(&moved) = self.paced.get(at as usize) {
            self.conns[moved as usize].paced_at = at;
        }
    }

    /// After output: a connection that pacing now holds back joins the paced list.
    #[inline]
    fn note_paced(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        if c.pace_wait != Instant::MAX {
            self.pace_next = self.pace_next.min(c.pace_wait);
            if c.paced_at == NOT_PACED {
                c.paced_at = self.paced.len() as u32;
                self.paced.push(idx);
            }
        }
    }

    /// Runs every timer due at `now` (pacing included, see [`Tcp::handle_pacing`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_pacing(now);
        let mut expired = core::mem::take(&mut self.expired);
        expired.clear();
        self.wheel.expire(now, &mut expired);
        for &idx in &expired {
            let c = &mut self.conns[idx as usize];
            c.wheel_at = Instant::MAX; // the wheel has unarmed it
            if c.state == State::Closed {
                continue;
            }
            let old = c.state;
            let mut env = Env::new(&self.cfg, &mut self.stats, now);
            let d = c.on_timer(&mut env);
            self.after(now, idx, old, d);
        }
        self.expired = expired;
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        rewind(&mut self.events);
        if let Event::Accepted { listen_port, .. } = e {
            if let Some(l) = self.listener(listen_port) {
                l.accept_pending = l.accept_pending.saturating_sub(1);
            }
        }
        Some(e)
    }

    /// Queues `data` for sending; returns how much fit in the send buffer (a short count means a
    /// `Writable` event follows when space frees up).
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        let idx = self.check(conn)?;
        let c = &mut self.conns[idx as usize];
        if !c.can_send() {
            return Err(TcpError::InvalidState);
        }
        let n = c.tx.push(data);
        if n < data.len() {
            c.want_writable = true;
        }
        if n > 0 {
            self.schedule(idx);
        }
        Ok(n)
    }

    /// Reads received data into `buf`. `Ok(0)` means the peer closed and everything was read;
    /// [`TcpError::WouldBlock`] means nothing has arrived yet.
    pub fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        let idx = self.check(conn)?;
        let c = &mut self.conns[idx as usize];
        let n = c.rx.pop(buf);
        c.readable_signaled = false;
        if c.state == State::TimeWait && c.rx.is_empty() && c.rx.capacity() > 0 {
            self.rx_pool.put(c.rx.take());
            let c = &self.conns[idx as usize];
            return if n == 0 && !buf.is_empty() && !c.peer_fin {
                Err(TcpError::WouldBlock)
            } else {
                Ok(n)
            };
        }
        if n == 0 {
            if buf.is_empty() {
                return Ok(0);
            }
            return if c.peer_fin {
                Ok(0)
            } else {
                Err(TcpError::WouldBlock)
            };
        }
        if c.window_update_due() {
            c.ack_now = true;
            self.schedule(idx);
        }
        Ok(n)
    }

    /// Bytes waiting to be read.
    pub fn recv_available(&self, conn: ConnId) -> Result<usize, TcpError> {
        let idx = self.check(conn)?;
        Ok(self.conns[idx as usize].rx.len())
    }

    /// Free space in the send buffer. When it is 0, a `Writable` event follows once the peer's
    /// acknowledgments free some (as after a short `send`).
    pub fn send_capacity(&mut self, conn: ConnId) -> Result<usize, TcpError> {
        let idx = self.check(conn)?;
        let c = &mut self.conns[idx as usize];
        let free = c.tx.free();
        if free == 0 {
            // The caller will wait for room: tell it when there is some.
            c.want_writable = true;
        }
        Ok(free)
    }

    /// Closes the write side: a FIN follows the queued data. Reading goes on.
    pub fn shutdown(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.check(conn)?;
        let now_state = self.conns[idx as usize].state;
        let new = match now_state {
            State::Established | State::SynReceived => State::FinWait1,
            State::CloseWait => State::LastAck,
            State::SynSent => {
                self.free_conn(idx, Some(CloseReason::Aborted));
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.conns[idx as usize].fin_queued = true;
        self.set_state(idx, new);
        self.schedule(idx);
        self.sync_timer(idx);
        Ok(())
    }

    /// Begins a graceful stop of the whole engine: stops listening (a new SYN gets RST) and
    /// shuts every open connection down for writing, as [`Tcp::shutdown`] does: FIN after its
    /// queued data. Returns how many connections it shut down; [`Tcp::open_flows`] then counts
    /// down as the peers close their side.
    pub fn shutdown_all(&mut self) -> usize {
        self.listeners.clear();
        let mut n = 0;
        for idx in 0..self.conns.len() {
            let c = &self.conns[idx];
            if matches!(
                c.state,
                State::Established | State::SynReceived | State::CloseWait
            ) && self.shutdown(c.id).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Connections not yet closed, TIME_WAIT aside: what a graceful stop waits for.
    pub fn open_flows(&self) -> u64 {
        State::ALL
            .iter()
            .filter(|s| !matches!(s, State::Closed | State::Listen | State::TimeWait))
            .map(|s| self.stats.flows(*s))
            .sum()
    }

    /// Closes the connection: FIN after the queued data, and no more reading. With unread data
    /// the connection is aborted with RST instead (as Linux, RFC 2525 §2.17).
    pub fn close(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.check(conn)?;
        if !self.conns[idx as usize].rx.is_empty() {
            return self.abort(conn);
        }
        self.conns[idx as usize].orphan = true;
        self.shutdown(conn)?;
        if let Ok(idx) = self.check(conn) {
            let c = &mut self.conns[idx as usize];
            if c.state == State::FinWait2 {
                c.state_at = c.last_rx.add_millis(self.cfg.fin_wait2_timeout_ms);
                self.sync_timer(idx);
            }
        }
        Ok(())
    }

    /// Closes after the data queued to send, like [`Tcp::close`], but discards what is unread
    /// instead of resetting: a server's lingering close (RFC 9112 §9.6). A response sent before
    /// the request was read to the end (413, 400, `Connection: close` with more pipelined)
    /// reaches the client; what it still sends is acknowledged and dropped until it closes or
    /// the FIN-WAIT-2 timeout ends the connection.
    pub fn finish(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.check(conn)?;
        let c = &mut self.conns[idx as usize];
        let unread = c.rx.len();
        c.rx.discard(unread);
        self.close(conn)
    }

    /// Resets the connection (RST to the peer) and forgets it.
    pub fn abort(&mut self, conn: ConnId) -> Result<(), TcpError> {
        let idx = self.check(conn)?;
        let c = &self.conns[idx as usize];
        if !matches!(c.state, State::SynSent | State::TimeWait) {
            self.push_rst(idx);
        }
        self.free_conn(idx, Some(CloseReason::Aborted));
        Ok(())
    }

    /// Queues an RST (with ACK) for connection `idx`, at `SND.NXT`.
    fn push_rst(&mut self, idx: u32) {
        let c = &self.conns[idx as usize];
        let ctl = Ctl {
            src: Ipv4Addr::from(c.key.laddr),
            dst: Ipv4Addr::from(c.key.raddr),
            sport: c.key.lport,
            dport: c.key.rport,
            seq: c.snd_nxt,
            ack: c.rcv_nxt,
            flags: flags::RST | flags::ACK,
            window: 0,
            options: TcpOptions::NONE,
        };
        self.push_ctl(ctl);
    }

    /// Disables (`true`) or enables Nagle's algorithm.
    pub fn set_nodelay(&mut self, conn: ConnId, on: bool) -> Result<(), TcpError> {
        let idx = self.check(conn)?;
        self.conns[idx as usize].nodelay = on;
        if on {
            self.schedule(idx);
        }
        Ok(())
    }

    /// The connection's state; `None` for a stale handle.
    pub fn state(&self, conn: ConnId) -> Option<State> {
        self.check(conn).ok().map(|i| self.conns[i as usize].state)
    }

    /// The connection's local and remote endpoints.
    pub fn endpoints(&self, conn: ConnId) -> Result<(SocketAddrV4, SocketAddrV4), TcpError> {
        let idx = self.check(conn)?;
        let k = self.conns[idx as usize].key;
        Ok((
            SocketAddrV4::new(Ipv4Addr::from(k.laddr), k.lport),
            SocketAddrV4::new(Ipv4Addr::from(k.raddr), k.rport),
        ))
    }

    // ---- internals ----

    fn check(&self, id: ConnId) -> Result<u32, TcpError> {
        match self.conns.get(id.idx as usize) {
            Some(c) if c.id.gen == id.gen && c.state != State::Closed => Ok(id.idx),
            _ => Err(TcpError::InvalidConn),
        }
    }

    fn flow_hash(&self, k: &FlowKey) -> u64 {
        self.keys.table.tuple(k.laddr, k.lport, k.raddr, k.rport)
    }

    fn find(&self, hash: u64, key: &FlowKey) -> Option<u32> {
        let conns = &self.conns;
        self.table.find(hash, |i| conns[i as usize].key == *key)
    }

    fn lookup(&self, key: &FlowKey) -> Option<u32> {
        self.find(self.flow_hash(key), key)
    }

    /// RFC 6528: ISN = M + F(4-tuple, secret), M a 4 µs clock.
    fn isn(&self, now: Instant, k: &FlowKey) -> u32 {
        #[cfg(test)]
        if let Some(i) = self.test_isn {
            return i;
        }
        ((now.as_micros() / 4) as u32)
            .wrapping_add(self.keys.isn.tuple(k.laddr, k.lport, k.raddr, k.rport, 0) as u32)
    }

    /// RFC 7323 §5.4: a per-connection random timestamp offset.
    fn ts_offset(&self, k: &FlowKey) -> u32 {
        #[cfg(test)]
        if let Some(o) = self.test_ts_offset {
            return o;
        }
        self.keys.isn.tuple(k.laddr, k.lport, k.raddr, k.rport, 1) as u32
    }

    /// Takes a free slot for `key`, with buffers; `None` when the table is full.
    fn create(&mut self, now: Instant, key: FlowKey, hash: u64, listen_port: u16) -> Option<u32> {
        let idx = self.free.pop()?;
        let iss = self.isn(now, &key);
        let c = &mut self.conns[idx as usize];
        let gen = c.id.gen.wrapping_add(1);
        c.reset(&self.cfg, now);
        c.id = ConnId { idx, gen };
        c.key = key;
        c.hash = hash;
        c.listen_port = listen_port;
        c.iss = iss;
        c.snd_una = iss;
        c.snd_nxt = iss;
        c.snd_max = iss;
        c.tx = RingBuf::new(self.tx_pool.get());
        c.rx = RingBuf::new(self.rx_pool.get());
        self.table.insert(hash, idx);
        Some(idx)
    }

    fn set_state(&mut self, idx: u32, new: State) {
        let c = &mut self.conns[idx as usize];
        let old = c.state;
        if old == new {
            return;
        }
        c.state = new;
        self.stats.flows_by_state[old as usize] -= 1;
        self.stats.flows_by_state[new as usize] += 1;
        #[cfg(feature = "trace")]
        if let Some(f) = &self.trace {
            let k = c.key;
            if f.matches(k.laddr, k.lport, k.raddr, k.rport) && self.state_log.len() < STATE_LOG {
                self.state_log.push_back(crate::trace::StateChange {
                    laddr: k.laddr,
                    lport: k.lport,
                    raddr: k.raddr,
                    rport: k.rport,
                    from: old,
                    to: new,
                    at: Instant::ZERO,
                });
            }
        }
    }

    /// Reports the state changes of the connections `filter` matches to
    /// [`Tcp::poll_state_change`] (`None`: none, the default).
    #[cfg(feature = "trace")]
    pub fn set_trace_filter(&mut self, filter: Option<crate::trace::TraceFilter>) {
        self.trace = filter;
        self.state_log.clear();
    }

    /// The next state change of a connection the trace filter matches (`at` is left for the
    /// caller to stamp). At most 256 wait; more are not recorded.
    #[cfg(feature = "trace")]
    pub fn poll_state_change(&mut self) -> Option<crate::trace::StateChange> {
        self.state_log.pop_front()
    }

    fn free_conn(&mut self, idx: u32, reason: Option<CloseReason>) {
        let c = &mut self.conns[idx as usize];
        if c.state == State::Closed {
            return;
        }
        let old = c.state;
        if c.visible && !c.reported_closed {
            let reason = reason.unwrap_or(CloseReason::Normal);
            if matches!(
                reason,
                CloseReason::Timeout | CloseReason::KeepaliveTimeout | CloseReason::PersistTimeout
            ) {
                self.stats.timeouts += 1;
            }
            if reason == CloseReason::PersistTimeout {
                self.stats.persist_timeouts += 1;
            }
            c.reported_closed = true;
            let id = c.id;
            push_event(
                &mut self.events,
                &self.cfg,
                &mut self.stats,
                Event::Closed { conn: id, reason },
            );
        }
        let c = &mut self.conns[idx as usize];
        let (hash, lport, passive) = (c.hash, c.listen_port, c.listen_port != 0);
        self.tx_pool.put(c.tx.take());
        self.rx_pool.put(c.rx.take());
        c.in_txq = false;
        c.id.gen = c.id.gen.wrapping_add(1);
        self.unpace(idx);
        self.table.remove(hash, idx);
        // The slot's wheel entry stays (lazy timers): it fires once more, finds the slot
        // closed or its new connection's deadlines not due, and is re-armed as needed.
        if passive && old == State::SynReceived {
            if let Some(l) = self.listener(lport) {
                l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
            }
        }
        self.set_state(idx, State::Closed);
        self.free.push(idx);
    }

    fn schedule(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        if !c.in_txq && c.state != State::Closed {
            c.in_txq = true;
            self.txq.push_back((idx, c.id.gen));
        }
    }

    fn sync_timer(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let at = if c.state == State::Closed {
            Instant::MAX
        } else {
            c.next_deadline()
        };
        // Lazy: the wheel entry only ever moves earlier. A later deadline (or none) leaves it
        // where it is; when it fires, `handle_timeout` finds nothing due and this re-arms it at
        // the real deadline. Most timers (RTO, delayed ACK) are cancelled or pushed back long
        // before they fire, so this saves a wheel update per segment for at most one early
        // wakeup per connection and deadline.
        if at < c.wheel_at {
            c.wheel_at = at;
            self.wheel.set(idx, at);
        }
    }

    fn push_ctl(&mut self, c: Ctl) {
        if self.ctl.len() >= self.cfg.max_control {
            self.stats.drops_control_full += 1;
            return;
        }
        self.ctl.push_back(c);
    }

    /// After input or a timer: apply the connection's disposition and state change.
    fn after(&mut self, now: Instant, idx: u32, old: State, d: Disp) {
        match d {
            Disp::Free => return self.free_conn(idx, None),
            Disp::Close(r) => {
                if r == CloseReason::PersistTimeout {
                    // Tell the peer (it may be a legitimate client that stopped reading).
                    self.push_rst(idx);
                }
                return self.free_conn(idx, Some(r));
            }
            Disp::Keep => {}
        }
        let c = &mut self.conns[idx as usize];
        let new = c.state;
        // Conn changes `state` itself; mirror the change in the per-state counters.
        if old != new {
            c.state = old;
            self.set_state(idx, new);
            let c = &mut self.conns[idx as usize];
            let id = c.id;
            if old == State::SynReceived && c.listen_port != 0 {
                let lport = c.listen_port;
                c.visible = true;
                self.stats.passive_opens += 1;
                if let Some(l) = self.listener(lport) {
                    l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
                    l.accept_pending += 1;
                }
                push_event(
                    &mut self.events,
                    &self.cfg,
                    &mut self.stats,
                    Event::Accepted {
                        conn: id,
                        listen_port: lport,
                    },
                );
            } else if matches!(old, State::SynSent | State::SynReceived)
                && !matches!(new, State::SynSent | State::SynReceived)
                && c.listen_port == 0
            {
                self.stats.active_opens += 1;
                push_event(
                    &mut self.events,
                    &self.cfg,
                    &mut self.stats,
                    Event::Connected { conn: id },
                );
            }
            if new == State::TimeWait && self.enter_time_wait(now, idx) {
                return;
            }
        }
        self.flush_notify(idx);
        if self.conns[idx as usize].wants_output() {
            self.schedule(idx);
        }
        self.sync_timer(idx);
    }

    /// The connection just entered TIME_WAIT: arm its timer, return its buffers, tell the
    /// application. True when it was freed instead (too many in TIME_WAIT).
    #[inline(never)]
    fn enter_time_wait(&mut self, now: Instant, idx: u32) -> bool {
        if self.stats.time_wait() > self.cfg.max_time_wait as u64 {
            self.stats.time_wait_overflow += 1;
            self.flush_notify(idx);
            // The peer's FIN still gets its ACK.
            let c = &self.conns[idx as usize];
            let (k, seq, ack) = (c.key, c.snd_nxt, c.rcv_nxt);
            self.reply_rst(k, seq, ack, flags::ACK);
            self.free_conn(idx, Some(CloseReason::Normal));
            return true;
        }
        let c = &mut self.conns[idx as usize];
        c.state_at = now.add_millis(self.cfg.time_wait_ms);
        // Buffers go back to the pool now, but unread data stays readable.
        self.tx_pool.put(c.tx.take());
        if c.rx.is_empty() {
            self.rx_pool.put(c.rx.take());
        }
        self.flush_notify(idx);
        let c = &mut self.conns[idx as usize];
        if c.visible && !c.reported_closed {
            c.reported_closed = true;
            let id = c.id;
            push_event(
                &mut self.events,
                &self.cfg,
                &mut self.stats,
                Event::Closed {
                    conn: id,
                    reason: CloseReason::Normal,
                },
            );
        }
        false
    }

    fn flush_notify(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let bits = core::mem::take(&mut c.notify);
        if bits == 0 || !c.visible || c.orphan {
            return;
        }
        let conn = c.id;
        if bits & conn::N_READABLE != 0 {
            push_event(
                &mut self.events,
                &self.cfg,
                &mut self.stats,
                Event::Readable { conn },
            );
        }
        if bits & conn::N_WRITABLE != 0 {
            push_event(
                &mut self.events,
                &self.cfg,
                &mut self.stats,
                Event::Writable { conn },
            );
        }
        if bits & conn::N_PEER_CLOSED != 0 {
            push_event(
                &mut self.events,
                &self.cfg,
                &mut self.stats,
                Event::PeerClosed { conn },
            );
        }
    }

    fn conn_segment(&mut self, now: Instant, idx: u32, seg: &TcpRepr<'_>) {
        let c = &self.conns[idx as usize];
        let old = c.state;
        let accept_room = old != State::SynReceived
            || c.listen_port == 0
            || self
                .listeners
                .iter()
                .find(|l| l.port == c.listen_port)
                .is_none_or(|l| l.accept_pending < self.cfg.accept_backlog);
        let c = &mut self.conns[idx as usize];
        let mut env = Env::new(&self.cfg, &mut self.stats, now);
        env.accept_room = accept_room;
        let d = c.input(&mut env, seg);
        let reply = env.reply_rst.take();
        let (k, flush) = (c.key, c.ack_flush);
        if let Some(seq) = reply {
            self.reply_rst(k, seq, 0, flags::RST);
        }
        if flush {
            self.flush_ack(now, idx);
        }
        self.after(now, idx, old, d);
    }

    /// An ACK for every second full segment and for every out-of-order one now, in the order
    /// the segments came (RFC 5681 §4.2), not one for a whole batch: a batch of 64 segments
    /// would otherwise get a single stretch ACK, and losing it would cost the sender a whole
    /// flight's feedback; with holes, each ACK names the latest segment's block first (RFC 2018
    /// §4). Not with data of ours waiting to carry it.
    fn flush_ack(&mut self, now: Instant, idx: u32) {
        let c = &mut self.conns[idx as usize];
        c.ack_flush = false;
        if c.wants_output_data()
            || !matches!(
                c.state,
                State::Established | State::FinWait1 | State::FinWait2
            )
            || self.ctl.len() >= self.cfg.max_control
        {
            return;
        }
        let (seq, ack, window, options) = if c.asm.is_empty() || !c.sack_ok {
            let (seq, ack, window, ts) = c.take_pure_ack(&self.cfg, now);
            let options = TcpOptions {
                timestamps: ts,
                ..TcpOptions::NONE
            };
            (seq, ack, window, options)
        } else {
            c.take_sack_ack(&self.cfg, now)
        };
        let k = c.key;
        self.push_ctl(Ctl {
            src: Ipv4Addr::from(k.laddr),
            dst: Ipv4Addr::from(k.raddr),
            sport: k.lport,
            dport: k.rport,
            seq,
            ack,
            flags: flags::ACK,
            window,
            options,
        });
    }

    /// Queues a stateless segment (RST, or a last ACK) for the 4-tuple `k`.
    fn reply_rst(&mut self, k: FlowKey, seq: u32, ack: u32, fl: u8) {
        self.push_ctl(Ctl {
            src: Ipv4Addr::from(k.laddr),
            dst: Ipv4Addr::from(k.raddr),
            sport: k.lport,
            dport: k.rport,
            seq,
            ack,
            flags: fl,
            window: 0,
            options: TcpOptions::NONE,
        });
    }

    /// RFC 9293 §3.10.7.1: a segment for a port with no listener and no connection.
    #[cold]
    #[inline(never)]
    fn closed_port(&mut self, now: Instant, key: FlowKey, seg: &TcpRepr<'_>) {
        self.stats.drops_no_listener += 1;
        if seg.has(flags::RST) {
            return;
        }
        // Token bucket: `rst_rate` per second, bursts up to `rst_rate`.
        let elapsed = now.as_micros().saturating_sub(self.rst_refill.as_micros());
        let add = elapsed.saturating_mul(self.cfg.rst_rate as u64) / 1_000_000;
        if add > 0 {
            self.rst_tokens = (self.rst_tokens as u64 + add).min(self.cfg.rst_rate as u64) as u32;
            self.rst_refill = now;
        }
        if self.rst_tokens == 0 {
            self.stats.rsts_rate_limited += 1;
            return;
        }
        self.rst_tokens -= 1;
        if seg.has(flags::ACK) {
            self.reply_rst(key, seg.ack, 0, flags::RST);
        } else {
            self.reply_rst(
                key,
                0,
                seg.seq.wrapping_add(seg.seq_len()),
                flags::RST | flags::ACK,
            );
        }
    }

    /// RFC 9293 §3.10.7.2: a segment for a listening port.
    fn listen_segment(
        &mut self,
        now: Instant,
        key: FlowKey,
        hash: u64,
        seg: &TcpRepr<'_>,
        isn_hint: Option<u32>,
    ) {
        if seg.has(flags::RST) {
            return;
        }
        if seg.has(flags::ACK) {
            if !seg.has(flags::SYN) && self.cookies_recent(now) {
                match self.cookie_accept(now, key, hash, seg) {
                    Ok(idx) => return self.conn_segment(now, idx, seg),
                    // A valid cookie but no room: drop, the peer retransmits (as Linux).
                    Err(true) => return,
                    Err(false) => self.stats.syn_cookies_failed += 1,
                }
            }
            self.reply_rst(key, seg.ack, 0, flags::RST);
            return;
        }
        if !seg.has(flags::SYN) {
            return;
        }
        let mode = self.cfg.syn_cookies;
        let backlog_full = self
            .listeners
            .iter()
            .find(|l| l.port == key.lport)
            .is_some_and(|l| l.syn_rcvd >= self.cfg.syn_backlog);
        let table_full = self.free.is_empty();
        if mode == SynCookies::Always || ((backlog_full || table_full) && mode == SynCookies::Auto)
        {
            self.send_cookie(now, key, seg);
            return;
        }
        if backlog_full {
            self.stats.drops_syn_backlog += 1;
            return;
        }
        let Some(idx) = self.create(now, key, hash, key.lport) else {
            self.stats.drops_table_full += 1;
            return;
        };
        if let Some(isn) = isn_hint {
            let c = &mut self.conns[idx as usize];
            c.iss = isn;
            c.snd_una = isn;
            c.snd_nxt = isn;
            c.snd_max = isn;
        }
        let ts_offset = match (self.cfg.timestamps, seg.options.timestamps) {
            (true, Some(_)) => self.ts_offset(&key),
            _ => 0,
        };
        self.conns[idx as usize].open_passive(&self.cfg, now, seg, ts_offset);
        if let Some(l) = self.listener(key.lport) {
            l.syn_rcvd += 1;
        }
        self.set_state(idx, State::SynReceived);
        self.schedule(idx);
        self.sync_timer(idx);
    }

    fn cookies_recent(&self, now: Instant) -> bool {
        match self.cfg.syn_cookies {
            SynCookies::Never => false,
            SynCookies::Always => true,
            SynCookies::Auto => self.last_cookie.is_some_and(|t| {
                now.as_micros().saturating_sub(t.as_micros())
                    < COOKIE_PERIOD_US * COOKIE_MAX_AGE as u64
            }),
        }
    }

    fn cookie_hash(&self, k: &FlowKey, count: u32) -> u32 {
        self.keys
            .cookie
            .tuple(k.laddr, k.lport, k.raddr, k.rport, count) as u32
    }

    /// The cookie ISN (Linux layout): `H1 + peer ISN + (count << 24) + (H2(count) + mss) mod 2^24`.
    fn cookie_isn(&self, now: Instant, k: &FlowKey, peer_isn: u32, mss_idx: u32) -> u32 {
        let count = (now.as_micros() / COOKIE_PERIOD_US) as u32;
        self.cookie_hash(k, u32::MAX)
            .wrapping_add(peer_isn)
            .wrapping_add(count << 24)
            .wrapping_add(self.cookie_hash(k, count).wrapping_add(mss_idx) & 0x00ff_ffff)
    }

    /// Checks a cookie; returns the MSS index.
    #[cold]
    #[inline(never)]
    fn cookie_check(&self, now: Instant, k: &FlowKey, peer_isn: u32, cookie: u32) -> Option<u32> {
        let count = (now.as_micros() / COOKIE_PERIOD_US) as u32;
        let c = cookie
            .wrapping_sub(self.cookie_hash(k, u32::MAX))
            .wrapping_sub(peer_isn);
        let age = count.wrapping_sub(c >> 24) & 0xff;
        if age > COOKIE_MAX_AGE {
            return None;
        }
        let then = count.wrapping_sub(age);
        let mss_idx = c.wrapping_sub(self.cookie_hash(k, then)) & 0x00ff_ffff;
        (mss_idx < COOKIE_MSS.len() as u32).then_some(mss_idx)
    }

    #[cold]
    #[inline(never)]
    fn send_cookie(&mut self, now: Instant, key: FlowKey, seg: &TcpRepr<'_>) {
        let peer_mss = seg.options.mss.unwrap_or(536).min(self.cfg.effective_mss());
        let mss_idx = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let isn = self.cookie_isn(now, &key, seg.seq, mss_idx);
        let mut options = TcpOptions {
            mss: Some(COOKIE_MSS[mss_idx as usize]),
            ..TcpOptions::NONE
        };
        // Window scale and SACK survive only inside the timestamp (as Linux).
        if let (true, Some(ts)) = (self.cfg.timestamps, seg.options.timestamps) {
            // The peer's shift (0xf: none) and SACK-permitted in the low 5 bits of TSval.
            let peer_ws = match (self.cfg.window_scale, seg.options.window_scale) {
                (true, Some(w)) => w as u32,
                _ => 0xf,
            };
            let sack = (self.cfg.sack && seg.options.sack_permitted) as u32;
            let tsnow = (now.as_millis() as u32).wrapping_add(self.ts_offset(&key));
            let mut val = (tsnow & !0x1f) | (sack << 4) | peer_ws;
            // Never ahead of the clock (as Linux): the connection's later segments carry the
            // real clock, and a smaller TSval than the SYN-ACK's fails the peer's PAWS check.
            if (val.wrapping_sub(tsnow) as i32) > 0 {
                val = val.wrapping_sub(0x20);
            }
            options.timestamps = Some(Timestamps { val, ecr: ts.val });
            options.sack_permitted = sack == 1;
            if peer_ws != 0xf {
                options.window_scale = Some(self.cfg.window_shift());
            }
        }
        self.stats.syn_cookies_sent += 1;
        self.last_cookie = Some(now);
        self.push_ctl(Ctl {
            src: Ipv4Addr::from(key.laddr),
            dst: Ipv4Addr::from(key.raddr),
            sport: key.lport,
            dport: key.rport,
            seq: isn,
            ack: seg.seq.wrapping_add(1),
            flags: flags::SYN | flags::ACK,
            window: self.cfg.recv_buf.min(65535) as u16,
            options,
        });
    }

    /// Validates a cookie ACK and creates the connection (in SYN_RECEIVED, completed by this
    /// very ACK). `Err(true)`: valid but no room (accept backlog or table full).
    #[cold]
    #[inline(never)]
    fn cookie_accept(
        &mut self,
        now: Instant,
        key: FlowKey,
        hash: u64,
        seg: &TcpRepr<'_>,
    ) -> Result<u32, bool> {
        let peer_isn = seg.seq.wrapping_sub(1);
        let iss = seg.ack.wrapping_sub(1);
        let mss_idx = self.cookie_check(now, &key, peer_isn, iss).ok_or(false)?;
        let room = self
            .listeners
            .iter()
            .find(|l| l.port == key.lport)
            .is_some_and(|l| l.accept_pending < self.cfg.accept_backlog);
        if !room {
            self.stats.drops_accept_backlog += 1;
            return Err(true);
        }
        let ts_offset = self.ts_offset(&key);
        let Some(idx) = self.create(now, key, hash, key.lport) else {
            self.stats.drops_table_full += 1;
            return Err(true);
        };
        self.stats.syn_cookies_validated += 1;
        let c = &mut self.conns[idx as usize];
        c.iss = iss;
        c.snd_una = iss;
        c.snd_max = iss.wrapping_add(1);
        c.snd_nxt = iss.wrapping_add(1);
        let (ws, sack, ts) = match (self.cfg.timestamps, seg.options.timestamps) {
            (true, Some(t)) => {
                let ws = t.ecr & 0xf;
                (
                    if ws == 0xf { None } else { Some(ws as u8) },
                    t.ecr & 0x10 != 0,
                    Some(t),
                )
            }
            _ => (None, false, None),
        };
        c.open_from_cookie(
            &self.cfg,
            now,
            seg,
            COOKIE_MSS[mss_idx as usize],
            ws,
            sack,
            ts,
            ts_offset,
        );
        if let Some(l) = self.listener(key.lport) {
            l.syn_rcvd += 1; // balanced when it leaves SYN_RECEIVED
        }
        self.set_state(idx, State::SynReceived);
        Ok(idx)
    }
}

/// Once a queue is drained, starts it again at the front of its storage: a queue that is
/// filled and drained over and over then stays in the same few cache lines instead of
/// walking its whole capacity (65,536 events are 1 MiB), one cold line every few entries.
#[inline]
fn rewind<T>(q: &mut VecDeque<T>) {
    if q.is_empty() {
        // `clear` on an empty deque only resets its start index.
        q.clear();
    }
}

fn push_event(events: &mut VecDeque<Event>, cfg: &TcpConfig, stats: &mut TcpStats, e: Event) {
    // `Closed` is what lets the application release what it holds for a connection (a TLS
    // session, a slot): it is never dropped. At most one per connection that ends, so the
    // queue stays bounded (`max_events` + `max_flows`).
    let limit = match e {
        Event::Closed { .. } => cfg.max_events.saturating_add(cfg.max_flows),
        _ => cfg.max_events,
    };
    if events.len() >= limit {
        stats.events_dropped += 1;
        return;
    }
    events.push_back(e);
}
