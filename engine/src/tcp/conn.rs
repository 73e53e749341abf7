//! One connection's transmission control block and its state machine (RFC 9293 §3.10).
//!
//! `input` handles a segment, `output` writes at most one segment, `on_timer` runs due timers.
//! The engine ([`super::Tcp`]) owns the slab, the flow table, the timer wheel, the events and
//! the per-state counters, and applies what these return.

use super::buf::{Assembler, RingBuf, SendTimes};
use super::cc::Cc;
use super::seq;
use super::table::FlowKey;
use super::{CloseReason, ConnId, State, TcpConfig, TcpStats};
use crate::time::Instant;
use crate::wire::tcp::{
    self as wire, flags, SackBlock, TcpOptions, TcpRepr, Timestamps, HEADER_LEN,
};

/// Event bits a connection raises for the engine to turn into [`super::Event`]s.
pub(crate) const N_READABLE: u8 = 1;
/// `Conn::paced_at` of a connection that is not on the paced list.
pub(crate) const NOT_PACED: u32 = u32::MAX;
pub(crate) const N_WRITABLE: u8 = 2;
pub(crate) const N_PEER_CLOSED: u8 = 4;

/// 24 days in microseconds: older timestamps are not used for PAWS (RFC 7323 §5.5).
const PAWS_IDLE_US: u64 = 24 * 24 * 3600 * 1_000_000;
/// Clock granularity G of RFC 6298 (one timer tick).
const CLOCK_G_US: u64 = 1000;
/// The longest pause pacing puts between two data segments: a round trip at most, and never
/// more than this, whatever a first RTT sample said.
const MAX_PACING_GAP_US: u64 = 1_000_000;

/// What the engine must do with the connection after an input or a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disp {
    /// Keep it.
    Keep,
    /// Delete it without telling the application (it never knew it, or already was told).
    Free,
    /// Delete it and report `Closed` with this reason.
    Close(CloseReason),
}

/// What a connection method may touch besides itself.
pub(crate) struct Env<'a> {
    pub(crate) cfg: &'a TcpConfig,
    pub(crate) stats: &'a mut TcpStats,
    pub(crate) now: Instant,
    /// SYN_RECEIVED only: the listener's accept backlog has room.
    pub(crate) accept_room: bool,
    /// Set to reply with `<SEQ=x><CTL=RST>`.
    pub(crate) reply_rst: Option<u32>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(cfg: &'a TcpConfig, stats: &'a mut TcpStats, now: Instant) -> Self {
        Env {
            cfg,
            stats,
            now,
            accept_room: true,
            reply_rst: None,
        }
    }
}

/// In-order segments acknowledged at once after an out-of-order one or a filled hole
/// (Linux's `TCP_MAX_QUICKACKS`).
const QUICKACKS: u8 = 16;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) state: State,
    pub(crate) key: FlowKey,
    pub(crate) hash: u64,
    /// The listening port for passive connections, 0 for active ones.
    pub(crate) listen_port: u16,
    /// The application holds a handle (accepted or connected).
    pub(crate) visible: bool,
    pub(crate) reported_closed: bool,
    /// The application called `close`: no more reads, no more events but `Closed`.
    pub(crate) orphan: bool,
    pub(crate) in_txq: bool,
    /// Where this connection is on `Tcp`'s list of connections pacing holds back
    /// ([`NOT_PACED`] when it is not on it).
    pub(crate) paced_at: u32,
    pub(crate) nodelay: bool,
    pub(crate) notify: u8,
    pub(crate) readable_signaled: bool,
    pub(crate) want_writable: bool,

    // Send sequence space (RFC 9293 §3.3.1).
    pub(crate) iss: u32,
    pub(crate) snd_una: u32,
    pub(crate) snd_nxt: u32,
    /// Highest sequence number sent + 1.
    pub(crate) snd_max: u32,
    pub(crate) snd_wnd: u32,
    pub(crate) snd_wl1: u32,
    pub(crate) snd_wl2: u32,
    pub(crate) max_snd_wnd: u32,
    pub(crate) snd_shift: u8,
    /// Payload bytes per segment (peer MSS, our MTU, minus the timestamp option).
    pub(crate) mss: usize,
    pub(crate) syn_acked: bool,
    pub(crate) fin_queued: bool,
    pub(crate) fin_acked: bool,
    pub(crate) tx: RingBuf,

    // Receive sequence space.
    pub(crate) irs: u32,
    pub(crate) rcv_nxt: u32,
    /// Right edge of the window we advertised (never moves left).
    pub(crate) rcv_adv: u32,
    pub(crate) rcv_shift: u8,
    pub(crate) rx: RingBuf,
    pub(crate) asm: Assembler,
    /// Sequence number of a FIN received out of order.
    pub(crate) rx_fin: Option<u32>,
    pub(crate) peer_fin: bool,

    // Options.
    pub(crate) ws_ok: bool,
    pub(crate) sack_ok: bool,
    pub(crate) ts_ok: bool,
    pub(crate) ts_recent: u32,
    pub(crate) ts_recent_at: Instant,
    pub(crate) ts_offset: u32,
    pub(crate) last_ack_sent: u32,

    // ACK policy.
    pub(crate) ack_now: bool,
    pub(crate) ack_at: Instant,
    pub(crate) unacked_bytes: u32,
    /// In-order segments still to be acknowledged at once after a loss showed (as Linux's
    /// quick-ACK mode): the sender is recovering, every ACK clocks it.
    pub(crate) quickacks: u8,
    /// Two full segments arrived since the last ACK: [`super::Tcp`] sends the ACK at once,
    /// not after the batch (see `Tcp::flush_ack`).
    pub(crate) ack_flush: bool,

    // RTT and retransmission (RFC 6298).
    pub(crate) srtt_us: u64,
    pub(crate) rttvar_us: u64,
    pub(crate) rto_us: u64,
    pub(crate) have_rtt: bool,
    pub(crate) backoff: u32,
    /// SND.UNA when the retransmission timer last fired (a further timeout of the same
    /// segment holds ssthresh).
    pub(crate) rto_una: u32,
    pub(crate) retries: u32,
    pub(crate) rtt_seq: u32,
    pub(crate) rtt_at: Option<Instant>,
    pub(crate) rtx_at: Instant,
    /// `rtx_at` is the persist (zero window / SWS override) timer.
    pub(crate) persist: bool,
    pub(crate) probe_pending: bool,
    /// Since when the connection has persisted without progress (`MAX`: not persisting);
    /// `persist_timeout_ms` after it the connection is reset.
    pub(crate) persist_since: Instant,

    // Other timers.
    pub(crate) state_at: Instant,
    pub(crate) ka_at: Instant,
    /// The deadline the timer wheel holds for this connection (`MAX`: none).
    pub(crate) wheel_at: Instant,
    pub(crate) ka_probes: u32,
    pub(crate) ka_probe_pending: bool,
    pub(crate) last_rx: Instant,

    // Congestion control and loss recovery.
    pub(crate) cc: Cc,
    pub(crate) dupacks: u32,
    pub(crate) in_recovery: bool,
    pub(crate) recover: u32,
    /// Retransmissions allowed by recent ACKs (fast retransmit, partial ACKs, SACK holes).
    pub(crate) rtx_budget: u32,
    /// RFC 6675 HighRxt: next hole retransmission starts at or after it.
    pub(crate) high_rxt: u32,
    /// SACKed ranges above `snd_una` (the scoreboard).
    pub(crate) sacked: Assembler,
    /// Send times of the segments in flight, without timestamps, in HyStart++'s slow start.
    pub(crate) send_times: SendTimes,
    /// SND.MAX when the latest retransmission was sent: SACKed data beyond it means the
    /// retransmissions still unacknowledged were lost (as RACK, RFC 8985 §6.1).
    pub(crate) rtx_snd_max: u32,
    /// `rtx_at` is a tail loss probe timeout (RFC 8985 §7), not the RTO.
    pub(crate) pto: bool,
    /// The probe timeout fired: send one probe segment.
    pub(crate) tlp_probe: bool,
    /// A probe is outstanding until SND.UNA reaches this (RFC 8985 `TLP.end_seq`).
    pub(crate) tlp_high: Option<u32>,
    /// This recovery episode's probe has been spent (see [`Conn::pto_delay`]).
    pub(crate) recovery_probed: bool,
    /// `rtx_at` is the reordering timer (see [`Conn::arm_reorder`]).
    pub(crate) reo_timer: bool,

    // RFC 5961 challenge ACK rate limit, per connection.
    pub(crate) chal_start: Instant,
    pub(crate) chal_count: u32,

    /// When the connection was created: a timestamp echo older than this is not one of ours.
    pub(crate) born: Instant,

    // Pacing (BBR, see `super::bbr::Bbr::pacing_rate`).
    /// The next data segment may go at or after this time.
    pub(crate) pace_at: Instant,
    /// Output was held back for pacing until then (`MAX`: not held); `Tcp::handle_pacing`
    /// schedules it again.
    pub(crate) pace_wait: Instant,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            id: ConnId { idx: 0, gen: 0 },
            state: State::Closed,
            key: FlowKey::default(),
            hash: 0,
            listen_port: 0,
            visible: false,
            reported_closed: false,
            orphan: false,
            in_txq: false,
            paced_at: NOT_PACED,
            nodelay: false,
            notify: 0,
            readable_signaled: false,
            want_writable: false,
            iss: 0,
            snd_una: 0,
            snd_nxt: 0,
            snd_max: 0,
            snd_wnd: 0,
            snd_wl1: 0,
            snd_wl2: 0,
            max_snd_wnd: 0,
            snd_shift: 0,
            mss: 536,
            syn_acked: false,
            fin_queued: false,
            fin_acked: false,
            tx: RingBuf::default(),
            irs: 0,
            rcv_nxt: 0,
            rcv_adv: 0,
            rcv_shift: 0,
            rx: RingBuf::default(),
            asm: Assembler::default(),
            rx_fin: None,
            peer_fin: false,
            ws_ok: false,
            sack_ok: false,
            ts_ok: false,
            ts_recent: 0,
            ts_recent_at: Instant::ZERO,
            ts_offset: 0,
            last_ack_sent: 0,
            ack_now: false,
            ack_at: Instant::MAX,
            unacked_bytes: 0,
            quickacks: 0,
            ack_flush: false,
            srtt_us: 0,
            rttvar_us: 0,
            rto_us: 1_000_000,
            have_rtt: false,
            backoff: 0,
            rto_una: 0,
            retries: 0,
            rtt_seq: 0,
            rtt_at: None,
            rtx_at: Instant::MAX,
            persist: false,
            probe_pending: false,
            persist_since: Instant::MAX,
            state_at: Instant::MAX,
            ka_at: Instant::MAX,
            wheel_at: Instant::MAX,
            ka_probes: 0,
            ka_probe_pending: false,
            last_rx: Instant::ZERO,
            cc: Cc::new(super::Congestion::Cubic, 536, 10),
            dupacks: 0,
            in_recovery: false,
            recover: 0,
            rtx_budget: 0,
            high_rxt: 0,
            sacked: Assembler::default(),
            send_times: SendTimes::default(),
            rtx_snd_max: 0,
            pto: false,
            tlp_probe: false,
            tlp_high: None,
            recovery_probed: false,
            reo_timer: false,
            chal_start: Instant::ZERO,
            born: Instant::ZERO,
            chal_count: 0,
            pace_at: Instant::ZERO,
            pace_wait: Instant::MAX,
        }
    }
}

impl Conn {
    /// Fresh state for a new connection (keeps the slot's generation and buffers are set by
    /// the caller).
    pub(crate) fn reset(&mut self, cfg: &TcpConfig, now: Instant) {
        let (id, wheel_at) = (self.id, self.wheel_at);
        let bbr = self.cc.bbr.take();
        // The slot keeps the room its range lists grew (no allocation per connection).
        let (mut asm, mut sacked) = (
            core::mem::take(&mut self.asm),
            core::mem::take(&mut self.sacked),
        );
        let mut send_times = core::mem::take(&mut self.send_times);
        asm.clear();
        sacked.clear();
        send_times.reset();
        *self = Conn::default();
        self.asm = asm;
        self.sacked = sacked;
        self.send_times = send_times;
        self.id = id;
        // The timer wheel may still hold an entry for this slot (see `Tcp::sync_timer`).
        self.wheel_at = wheel_at;
        self.mss = cfg.effective_mss() as usize;
        self.cc = Cc::new(cfg.congestion, self.mss as u32, cfg.initial_cwnd);
        self.cc.reuse_bbr(bbr);
        self.rto_us = cfg.rto_initial_ms * 1000;
        self.last_rx = now;
        self.chal_start = now;
        self.born = now;
    }

    fn set_options(&mut self, cfg: &TcpConfig, o: &TcpOptions) {
        // RFC 9293 §3.7.1: 536 without the option (a zero MSS counts as none, as in Linux);
        // floored at Linux's `tcp_min_snd_mss` (48) against absurdly small segments.
        let peer_mss = match o.mss {
            None | Some(0) => 536,
            Some(m) => m.max(48),
        };
        self.ws_ok = cfg.window_scale && o.window_scale.is_some();
        self.snd_shift = if self.ws_ok {
            o.window_scale.unwrap_or(0)
        } else {
            0
        };
        self.rcv_shift = if self.ws_ok { cfg.window_shift() } else { 0 };
        self.sack_ok = cfg.sack && o.sack_permitted;
        self.ts_ok = cfg.timestamps && o.timestamps.is_some();
        self.set_mss(cfg, peer_mss);
    }

    fn set_mss(&mut self, cfg: &TcpConfig, peer_mss: u16) {
        let m = peer_mss.min(cfg.effective_mss()) as usize;
        self.mss = if self.ts_ok { m - 12 } else { m }.max(32);
        self.cc.set_mss(self.mss as u32);
    }

    /// Passive open: a SYN arrived at a listener (RFC 9293 §3.10.7.2).
    pub(crate) fn open_passive(
        &mut self,
        cfg: &TcpConfig,
        now: Instant,
        seg: &TcpRepr<'_>,
        ts_offset: u32,
    ) {
        self.recover = self.iss;
        self.high_rxt = self.iss;
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.rcv_adv = self.rcv_nxt;
        self.set_options(cfg, &seg.options);
        if let (true, Some(ts)) = (self.ts_ok, seg.options.timestamps) {
            self.ts_recent = ts.val;
            self.ts_recent_at = now;
        }
        self.ts_offset = ts_offset;
        // The SYN's window is never scaled.
        self.snd_wnd = seg.window as u32;
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = self.iss;
    }

    /// Active open: a SYN is to be sent.
    pub(crate) fn open_active(&mut self, _cfg: &TcpConfig, _now: Instant, ts_offset: u32) {
        // RFC 6582 §3.2: `recover` starts at the initial send sequence number.
        self.recover = self.iss;
        self.high_rxt = self.iss;
        self.ts_offset = ts_offset;
    }

    /// A SYN cookie validated: the connection is created in SYN_RECEIVED with the SYN-ACK
    /// already sent, so the ACK that carried the cookie completes it.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    #[inline(never)]
    pub(crate) fn open_from_cookie(
        &mut self,
        cfg: &TcpConfig,
        now: Instant,
        seg: &TcpRepr<'_>,
        mss: u16,
        peer_ws: Option<u8>,
        sack: bool,
        ts: Option<Timestamps>,
        ts_offset: u32,
    ) {
        self.recover = self.iss;
        self.high_rxt = self.iss;
        self.irs = seg.seq.wrapping_sub(1);
        self.rcv_nxt = seg.seq;
        self.ws_ok = cfg.window_scale && peer_ws.is_some();
        self.snd_shift = if self.ws_ok { peer_ws.unwrap_or(0) } else { 0 };
        self.rcv_shift = if self.ws_ok { cfg.window_shift() } else { 0 };
        self.sack_ok = cfg.sack && sack;
        self.ts_ok = ts.is_some();
        if let Some(t) = ts {
            self.ts_recent = t.val;
            self.ts_recent_at = now;
        }
        self.set_mss(cfg, mss);
        self.ts_offset = ts_offset;
        self.rcv_adv = self.rcv_nxt.wrapping_add(cfg.recv_buf.min(65535) as u32);
        self.last_ack_sent = self.rcv_nxt;
        self.snd_wl1 = self.irs;
        self.snd_wl2 = self.iss;
    }

    /// The timestamp clock: milliseconds plus the per-connection offset.
    fn ts_now(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// The retransmission timeout with backoff, in microseconds.
    fn rto_now(&self, cfg: &TcpConfig) -> u64 {
        let us = self
            .rto_us
            .checked_shl(self.backoff.min(20))
            .unwrap_or(u64::MAX);
        us.min(cfg.rto_max_ms * 1000)
    }

    /// `send` is allowed: the write side is open.
    pub(crate) fn can_send(&self) -> bool {
        matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
        ) && !self.fin_queued
    }

    /// FIN_WAIT_2 timeout for orphaned connections.
    fn fin_wait2_timer(&mut self, cfg: &TcpConfig, now: Instant) {
        if self.orphan {
            self.state_at = now.add_millis(cfg.fin_wait2_timeout_ms);
        }
    }

    /// The earliest timer.
    pub(crate) fn next_deadline(&self) -> Instant {
        self.rtx_at
            .min(self.ack_at)
            .min(self.state_at)
            .min(self.ka_at)
    }

    /// Something may be sendable now (cheap, conservative).
    pub(crate) fn wants_output(&self) -> bool {
        if self.ack_now
            || self.probe_pending
            || self.ka_probe_pending
            || self.rtx_budget > 0
            || self.tlp_probe
        {
            return true;
        }
        if self.in_recovery && self.sack_ok {
            if self.pipe().saturating_add(self.mss as u32) > self.cc.cwnd {
                return false;
            }
            let start = seq::max(self.snd_una, self.high_rxt);
            if self.hole(start, self.tx.len()).is_some() {
                return true;
            }
        }
        match self.state {
            State::SynSent | State::SynReceived => self.snd_nxt == self.iss,
            State::Established
            | State::CloseWait
            | State::FinWait1
            | State::Closing
            | State::LastAck => {
                let off = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
                (off < self.tx.len() && self.snd_wnd as usize > off)
                    || (self.fin_queued && !self.fin_acked && off == self.tx.len())
            }
            _ => false,
        }
    }

    /// New data the window lets go now (it would carry an ACK).
    pub(crate) fn wants_output_data(&self) -> bool {
        let off = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
        off < self.tx.len() && self.snd_wnd as usize > off
    }

    /// After the application read: is a window update worth a segment?
    pub(crate) fn window_update_due(&self) -> bool {
        if !matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) {
            return false;
        }
        let max = 65535u32 << self.rcv_shift;
        let old = self.rcv_adv.wrapping_sub(self.rcv_nxt);
        let new = (self.rx.free() as u32).min(max);
        let mss = self.mss as u32;
        new >= old.saturating_add(mss.min(self.rx.capacity() as u32 / 2))
            && (new >= 2 * old || old < mss)
    }

    #[cold]
    #[inline(never)]
    fn challenge_ack(&mut self, env: &mut Env<'_>) {
        if env
            .now
            .as_micros()
            .saturating_sub(self.chal_start.as_micros())
            >= 1_000_000
        {
            self.chal_start = env.now;
            self.chal_count = 0;
        }
        if self.chal_count < env.cfg.challenge_ack_limit {
            self.chal_count += 1;
            self.ack_now = true;
            env.stats.challenge_acks += 1;
        } else {
            env.stats.challenge_acks_limited += 1;
        }
    }

    /// TIME_WAIT: may a new SYN reuse this 4-tuple? (RFC 6191; Linux's rule.)
    pub(crate) fn time_wait_reusable(&self, seg: &TcpRepr<'_>) -> bool {
        match (self.ts_ok, seg.options.timestamps) {
            (true, Some(ts)) => seq::gt(ts.val, self.ts_recent),
            _ => seq::gt(seg.seq, self.rcv_nxt),
        }
    }

    fn rtt_sample(&mut self, cfg: &TcpConfig, r: u64) {
        if !self.have_rtt {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
            self.have_rtt = true;
        } else {
            let d = self.srtt_us.abs_diff(r);
            self.rttvar_us = (3 * self.rttvar_us + d) / 4;
            self.srtt_us = (7 * self.srtt_us + r) / 8;
        }
        let rto = self.srtt_us + (4 * self.rttvar_us).max(CLOCK_G_US);
        self.rto_us = rto.clamp(cfg.rto_min_ms * 1000, cfg.rto_max_ms * 1000);
    }

    // ---------------------------------------------------------------- input

    /// A segment for this connection (RFC 9293 §3.10.7.3–4).
    pub(crate) fn input(&mut self, env: &mut Env<'_>, seg: &TcpRepr<'_>) -> Disp {
        if self.state == State::SynSent {
            return self.input_syn_sent(env, seg);
        }
        let now = env.now;
        let simultaneous;
        let seg = if self.state == State::SynReceived && seg.has(flags::SYN) && seg.seq == self.irs
        {
            if !seg.has(flags::ACK) && !seg.has(flags::RST) {
                // The peer retransmitted its SYN: our SYN-ACK was lost.
                if self.syn_acked {
                    return Disp::Keep;
                }
                self.snd_nxt = self.iss;
                return Disp::Keep;
            }
            // Simultaneous open: the peer's SYN-ACK; its SYN is old, its ACK is news.
            let mut s = *seg;
            s.seq = s.seq.wrapping_add(1);
            s.flags &= !flags::SYN;
            simultaneous = s;
            &simultaneous
        } else {
            seg
        };
        let rst = seg.has(flags::RST);
        let syn = seg.has(flags::SYN);
        let fin = seg.has(flags::FIN);
        let seg_len = seg.seq_len();

        // PAWS (RFC 7323 §5.3).
        if self.ts_ok && !rst {
            if let Some(ts) = seg.options.timestamps {
                let idle = now
                    .as_micros()
                    .saturating_sub(self.ts_recent_at.as_micros());
                if seq::lt(ts.val, self.ts_recent) && idle < PAWS_IDLE_US {
                    env.stats.paws_drops += 1;
                    self.ack_now = true;
                    return Disp::Keep;
                }
            }
        }

        // After the peer's FIN, a RST it sent in answer to a segment of ours that had not yet
        // acknowledged that FIN carries RCV.NXT − 1 (taken from that segment's ACK field, RFC
        // 9293 §3.10.7.1). It resets in CLOSE-WAIT, LAST-ACK and CLOSING, as Linux's
        // tcp_reset_check does; guessing it blind is as hard as guessing RCV.NXT.
        if rst
            && seg.seq == self.rcv_nxt.wrapping_sub(1)
            && matches!(
                self.state,
                State::CloseWait | State::LastAck | State::Closing
            )
        {
            env.stats.rsts_received += 1;
            return Disp::Close(CloseReason::Reset);
        }

        // Acceptability (RFC 9293 §3.10.7.4, first check).
        let wnd = self.rcv_adv.wrapping_sub(self.rcv_nxt);
        let acceptable = match (seg_len, wnd) {
            (0, 0) => seg.seq == self.rcv_nxt,
            (0, _) => seq::in_range(seg.seq, self.rcv_nxt, self.rcv_nxt.wrapping_add(wnd)),
            (_, 0) => false,
            (_, _) => {
                let end = self.rcv_nxt.wrapping_add(wnd);
                seq::in_range(seg.seq, self.rcv_nxt, end)
                    || seq::in_range(seg.seq.wrapping_add(seg_len - 1), self.rcv_nxt, end)
            }
        };
        // A zero window still takes ACKs, RSTs and FIN-less probes at RCV.NXT (RFC 9293).
        let zero_wnd_ok = wnd == 0 && seg.seq == self.rcv_nxt;
        if !acceptable && !zero_wnd_ok {
            if !rst {
                self.ack_now = true;
                if self.state == State::TimeWait && fin {
                    self.state_at = now.add_millis(env.cfg.time_wait_ms);
                }
            }
            env.stats.drops_out_of_window += 1;
            return Disp::Keep;
        }
        self.last_rx = now;
        self.ka_probes = 0;

        // RST (RFC 5961 §3.2: only an exact match resets).
        if rst {
            if seg.seq == self.rcv_nxt {
                env.stats.rsts_received += 1;
                return match self.state {
                    State::SynReceived if self.listen_port != 0 => Disp::Free,
                    State::TimeWait => Disp::Free,
                    State::SynReceived => Disp::Close(CloseReason::Refused),
                    _ => Disp::Close(CloseReason::Reset),
                };
            }
            self.challenge_ack(env);
            return Disp::Keep;
        }
        // SYN in a synchronized state (RFC 5961 §4.2).
        if syn {
            self.challenge_ack(env);
            return Disp::Keep;
        }
        if !seg.has(flags::ACK) {
            return Disp::Keep;
        }

        // Timestamps: remember the peer's clock (RFC 7323 §4.3).
        if let (true, Some(ts)) = (self.ts_ok, seg.options.timestamps) {
            // After 24 days idle TS.Recent is no longer valid (RFC 7323 §5.5): the next
            // TSval replaces it, whatever its value.
            let stale = now
                .as_micros()
                .saturating_sub(self.ts_recent_at.as_micros())
                >= PAWS_IDLE_US;
            if (stale || seq::ge(ts.val, self.ts_recent)) && seq::le(seg.seq, self.last_ack_sent) {
                self.ts_recent = ts.val;
                self.ts_recent_at = now;
            }
        }

        if self.state == State::SynReceived {
            if !(seq::lt(self.snd_una, seg.ack) && seq::le(seg.ack, self.snd_max)) {
                env.reply_rst = Some(seg.ack);
                return Disp::Keep;
            }
            if !env.accept_room {
                env.stats.drops_accept_backlog += 1;
                return Disp::Keep;
            }
            self.state = State::Established;
            self.snd_wnd = (seg.window as u32) << self.snd_shift;
            self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = seg.ack;
            self.arm_keepalive(env.cfg, now);
        }

        // RFC 5961 §5.2: ACK validity.
        if seq::gt(seg.ack, self.snd_max) {
            self.ack_now = true;
            return Disp::Keep;
        }
        if seq::lt(seg.ack, self.snd_una.wrapping_sub(self.max_snd_wnd)) {
            self.challenge_ack(env);
            return Disp::Keep;
        }
        if let Some(d) = self.process_ack(env, seg) {
            return d;
        }

        if !seg.payload.is_empty() {
            if matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                self.process_data(env, seg);
            } else {
                self.ack_now = true;
            }
        }
        if fin {
            let fin_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            if fin_seq == self.rcv_nxt {
                self.receive_fin(env);
            } else if seq::gt(fin_seq, self.rcv_nxt) && !self.peer_fin {
                self.rx_fin = Some(fin_seq);
                self.ack_now = true;
            }
        }
        Disp::Keep
    }

    #[cold]
    #[inline(never)]
    fn input_syn_sent(&mut self, env: &mut Env<'_>, seg: &TcpRepr<'_>) -> Disp {
        let now = env.now;
        let has_ack = seg.has(flags::ACK);
        if has_ack && (seq::le(seg.ack, self.iss) || seq::gt(seg.ack, self.snd_max)) {
            if !seg.has(flags::RST) {
                env.reply_rst = Some(seg.ack);
            }
            return Disp::Keep;
        }
        if seg.has(flags::RST) {
            if has_ack {
                env.stats.rsts_received += 1;
                return Disp::Close(CloseReason::Refused);
            }
            return Disp::Keep;
        }
        if !seg.has(flags::SYN) {
            return Disp::Keep;
        }
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.rcv_adv = self.rcv_nxt;
        self.set_options(env.cfg, &seg.options);
        if let (true, Some(ts)) = (self.ts_ok, seg.options.timestamps) {
            self.ts_recent = ts.val;
            self.ts_recent_at = now;
        }
        self.last_rx = now;
        self.snd_wnd = seg.window as u32;
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq;
        self.snd_wl2 = seg.ack;
        if has_ack {
            self.snd_una = seg.ack;
            self.syn_acked = true;
            if let Some(t) = self.rtt_at.take() {
                self.rtt_sample(env.cfg, now.as_micros().saturating_sub(t.as_micros()));
            }
            self.backoff = 0;
            self.retries = 0;
            self.rtx_at = Instant::MAX;
            self.state = State::Established;
            self.ack_now = true;
            self.arm_keepalive(env.cfg, now);
        } else {
            // Simultaneous open (RFC 9293 figure 8): answer with SYN-ACK.
            self.state = State::SynReceived;
            self.snd_nxt = self.iss;
        }
        Disp::Keep
    }

    /// Adds the segment's SACK blocks to the scoreboard; true when it learned something.
    #[cold]
    #[inline(never)]
    fn absorb_sack(&mut self, seg: &TcpRepr<'_>) -> bool {
        let before = self.sacked_bytes();
        for b in seg.options.sack_blocks() {
            if seq::lt(self.snd_una, b.left)
                && seq::lt(b.left, b.right)
                && seq::le(b.right, self.snd_max)
            {
                // Per segment of at least 536 bytes: a peer that negotiated a tiny MSS does
                // not get a scoreboard thousands of ranges long to walk on every ACK.
                let limit = super::buf::ranges_for(self.tx.capacity(), self.mss.max(536));
                self.sacked.insert(b.left, b.right, limit);
            }
        }
        self.sacked_bytes() != before
    }

    /// ACK processing; `Some` ends the connection.
    fn process_ack(&mut self, env: &mut Env<'_>, seg: &TcpRepr<'_>) -> Option<Disp> {
        let now = env.now;
        let ack = seg.ack;
        let wnd = (seg.window as u32) << self.snd_shift;
        let new_sack = self.sack_ok && seg.options.sack_len > 0 && self.absorb_sack(seg);
        // For BBR: data newly acknowledged, and an RTT sample in microseconds.
        let mut delivered = 0u32;
        let mut rtt_us = None;
        if seq::gt(ack, self.snd_una) {
            let mut acked = ack.wrapping_sub(self.snd_una) as usize;
            if !self.syn_acked {
                self.syn_acked = true;
                acked -= 1;
            }
            let data = acked.min(self.tx.len());
            delivered = data as u32;
            self.tx.discard(data);
            if acked > data && self.fin_queued {
                self.fin_acked = true;
            }
            self.snd_una = ack;
            if seq::lt(self.snd_nxt, ack) {
                self.snd_nxt = ack;
            }
            if seq::lt(self.high_rxt, ack) {
                self.high_rxt = ack;
            }
            self.sacked.advance(ack);
            self.retries = 0;
            // Outside recovery `recover` follows SND.UNA, so that after 2 GiB without a loss
            // it does not read as ahead of every ACK (serial arithmetic), which would keep
            // fast retransmit from ever starting again.
            if !self.in_recovery && seq::gt(ack, self.recover) {
                self.recover = ack;
            }
            // RTT: from the timestamp echo, else from the timed segment (Karn's rule).
            let mut sampled = false;
            let mut ack_rtt = None;
            if let (true, Some(ts)) = (self.ts_ok, seg.options.timestamps) {
                let d = self.ts_now(now).wrapping_sub(ts.ecr);
                // Only an echo of a TSval this connection sent: one older than the connection
                // (forged, or from a cookie's SYN-ACK) would set an RTT of up to 24 days, and
                // BBR would pace at a segment per RTT.
                let age_ms = now.as_millis().saturating_sub(self.born.as_millis());
                if ts.ecr != 0 && (d as i32) >= 0 && u64::from(d) <= age_ms {
                    self.rtt_sample(env.cfg, d as u64 * 1000);
                    sampled = true;
                    ack_rtt = Some(d as u64 * 1000);
                }
            }
            if let Some(t) = self.rtt_at {
                if seq::ge(ack, self.rtt_seq) {
                    self.rtt_at = None;
                    let r = now.as_micros().saturating_sub(t.as_micros());
                    rtt_us = Some(r);
                    if !sampled {
                        self.rtt_sample(env.cfg, r);
                        ack_rtt = Some(r);
                    }
                }
            }
            // Karn (RFC 6298 §5): the backed-off RTO stays until a valid RTT sample (an ACK of
            // retransmitted data alone gives none).
            if ack_rtt.is_some() {
                self.backoff = 0;
            }
            // Without timestamps, the latest segment this ACK covers gives the sample.
            let sent_rtt = if self.ts_ok {
                None
            } else {
                self.send_times.ack(ack, now)
            };
            if !self.in_recovery {
                self.cc
                    .slow_start_sample(ack, self.snd_nxt, sent_rtt.or(ack_rtt));
            }
            // Congestion control and recovery (RFC 5681, RFC 6582).
            if self.in_recovery {
                if seq::ge(ack, self.recover) {
                    self.in_recovery = false;
                    if self.sack_ok {
                        // RFC 6675: the window was kept at ssthresh through recovery.
                        self.cc.sack_recovery_window();
                    } else {
                        let flight = self.snd_max.wrapping_sub(self.snd_una);
                        self.cc.exit_recovery(flight);
                    }
                    self.cc.bbr_recovery(now, false, 0);
                    self.rtx_budget = 0;
                } else if !self.sack_ok {
                    // NewReno partial ACK (RFC 6582 §3.2 step 5).
                    self.cc.partial_ack(data as u32);
                    self.rtx_budget = self.rtx_budget.max(1);
                    self.high_rxt = self.snd_una;
                }
                // With SACK, `cwnd` stays at `ssthresh` and the pipe decides (RFC 6675 §5).
            } else {
                self.cc.on_ack(now, data as u32, self.srtt_us as u32);
            }
            self.dupacks = 0;
            self.persist = false;
            self.persist_since = Instant::MAX;
            self.probe_pending = false;
            if self.tlp_high.is_some_and(|h| seq::ge(ack, h)) {
                self.tlp_high = None;
            }
            self.reo_timer = false;
            if self.snd_max == self.snd_una || self.snd_nxt == self.snd_una {
                self.rtx_at = Instant::MAX;
                self.pto = false;
            } else {
                self.arm_pto_or_rto(env.cfg, now);
            }
            if self.want_writable && self.tx.free() > 0 {
                self.want_writable = false;
                self.notify |= N_WRITABLE;
            }
            if self.fin_acked {
                match self.state {
                    State::FinWait1 => {
                        self.state = State::FinWait2;
                        self.fin_wait2_timer(env.cfg, now);
                    }
                    State::Closing => self.state = State::TimeWait,
                    State::LastAck => return Some(Disp::Close(CloseReason::Normal)),
                    _ => {}
                }
            }
        } else if ack == self.snd_una
            && self.snd_max != self.snd_una
            && wnd > 0
            && !self.persist
            && ((seg.payload.is_empty() && !seg.has(flags::FIN) && wnd == self.snd_wnd) || new_sack)
        {
            // Duplicate ACK (RFC 5681 §2; with SACK, any ACK bringing new SACK information,
            // RFC 6675 §2). Not the answers to zero-window probes (the probe byte is the only
            // "outstanding data"): counted, they would start a fast retransmission into a
            // closed window.
            self.dupacks += 1;
            // RFC 6582 §3.2 step 2: not again before `recover` is acknowledged.
            if !self.in_recovery && self.dupacks >= 3 && seq::ge(ack, self.recover) {
                self.enter_recovery(env);
            } else if self.in_recovery && !self.sack_ok {
                self.cc.inflate();
            } else if self.in_recovery && self.pto && !self.recovery_probed {
                // The recovery probe waits for 2·SRTT of silence: this ACK restarts it.
                self.arm_pto_or_rto(env.cfg, now);
            }
        }
        if self.cc.is_bbr() && (delivered > 0 || new_sack) {
            self.bbr_delivery(now, delivered, rtt_us);
        }
        // Lost retransmissions: data sent after the latest retransmission has been SACKed while
        // retransmitted holes are still missing, so those were lost again; they go once more
        // instead of waiting for the RTO.
        if self.in_recovery && new_sack && seq::lt(self.snd_una, self.high_rxt) {
            if let Some(&(_, r)) = self.sacked.ranges().last() {
                if seq::gt(r, self.rtx_snd_max) {
                    self.high_rxt = self.snd_una;
                    env.stats.lost_retransmits += 1;
                }
            }
        }
        // RFC 6675 §5: with SACK, recovery also starts as soon as the scoreboard says SND.UNA
        // is lost, whatever the ACK (it may also have advanced SND.UNA or carried data).
        if self.sack_ok
            && !self.in_recovery
            && self.snd_max != self.snd_una
            && seq::ge(self.snd_una, self.recover)
            && seq::lt(self.snd_una, self.lost_edge())
        {
            self.enter_recovery(env);
        }
        if new_sack && !self.in_recovery {
            self.arm_reorder(now);
        }
        // Window update (RFC 9293 §3.10.7.4).
        if seq::lt(self.snd_wl1, seg.seq) || (self.snd_wl1 == seg.seq && seq::le(self.snd_wl2, ack))
        {
            self.snd_wnd = wnd;
            self.snd_wl1 = seg.seq;
            self.snd_wl2 = ack;
            self.max_snd_wnd = self.max_snd_wnd.max(wnd);
            if wnd > 0 && self.persist {
                self.persist = false;
                self.persist_since = Instant::MAX;
                self.probe_pending = false;
                self.rtx_at = Instant::MAX;
                self.backoff = 0;
            }
        }
        // The window closed on unsent data with nothing in flight: no ACK will come, so only
        // the persist timer can learn that it reopens (RFC 9293 §3.8.6.1). Nothing else arms
        // it here: the connection has nothing to transmit, `poll_transmit` does not visit it.
        if self.snd_wnd == 0
            && !self.persist
            && self.rtx_at == Instant::MAX
            && self.syn_acked
            && self.snd_nxt == self.snd_una
            && !self.tx.is_empty()
        {
            self.arm_persist(env.cfg, env.now);
        }
        None
    }

    /// RFC 8985 §6.2 in the small: SACK shows data above SND.UNA delivered, yet too little
    /// of it for RFC 6675 to call SND.UNA lost (fewer than three segments: a short flight, a
    /// tail). SND.UNA was sent before what was delivered, so once a reordering window
    /// (SRTT/4) has passed without it, it is lost: the timer enters recovery then, instead
    /// of a tail loss probe or the RTO doing it hundreds of round trips later.
    fn arm_reorder(&mut self, now: Instant) {
        let above = self
            .sacked
            .ranges()
            .first()
            .is_some_and(|&(l, _)| seq::gt(l, self.snd_una));
        if !self.sack_ok || !self.have_rtt || self.snd_max == self.snd_una || !above {
            return;
        }
        let at = now.add_micros((self.srtt_us / 4).max(CLOCK_G_US));
        if at <= self.rtx_at {
            self.rtx_at = at;
            self.reo_timer = true;
            self.pto = false;
        }
    }

    /// Fast retransmit and the start of loss recovery (RFC 5681 §3.2, RFC 6582, RFC 6675 §5).
    #[cold]
    #[inline(never)]
    fn enter_recovery(&mut self, env: &mut Env<'_>) {
        let flight = self.snd_max.wrapping_sub(self.snd_una);
        self.cc.on_loss(flight);
        if self.sack_ok {
            // RFC 6675 §5 step 4.2: cwnd = ssthresh, no inflation; the pipe counts what is
            // still in the network.
            self.cc.sack_recovery_window();
        } else {
            self.cc.enter_recovery();
        }
        let inflight = if self.sack_ok { self.pipe() } else { flight };
        self.cc.bbr_recovery(env.now, true, inflight);
        self.in_recovery = true;
        self.recovery_probed = false;
        self.reo_timer = false;
        self.recover = self.snd_max;
        self.high_rxt = self.snd_una;
        // The first segment goes unconditionally (RFC 6675 §5 step 4.3).
        self.rtx_budget = 1;
        self.rtt_at = None;
        self.tlp_probe = false;
        // The recovery probe replaces a pending tail loss probe or the RTO armed behind a
        // spent one (without SACK, a pending probe becomes the RTO).
        if self.pto || self.rtx_at == Instant::MAX || self.pto_delay(env.cfg).is_some() {
            self.arm_pto_or_rto(env.cfg, env.now);
        }
        env.stats.fast_retransmits += 1;
    }

    /// RFC 8985 §7.2: the probe timeout, when a tail loss probe may be scheduled (SACK in
    /// use, not in recovery, an RTT measured, no probe outstanding): 2·SRTT, plus the peer's
    /// delayed ACK time when a single segment is in flight, at most the RTO.
    ///
    /// In SACK recovery the same timeout, once per episode, is the recovery probe: when no ACK
    /// has come for 2·SRTT after the last one, the retransmissions (or every ACK for what was
    /// sent after them) were lost, and nothing else would say so before the RTO, which at
    /// its 200 ms floor is hundreds of round trips on a fast path. The probe resends the
    /// first hole (RFC 8985 §6.3 marks a retransmission lost by time, here with no later
    /// delivery to go by), without the RTO's collapse of the window; the RTO stays armed
    /// behind it. Unlike the tail loss probe it also runs once our FIN is queued (a server
    /// that closes after its response is in FIN-WAIT-1 for the whole transfer's tail).
    fn pto_delay(&self, cfg: &TcpConfig) -> Option<u64> {
        let recovery_probe = self.in_recovery && !self.recovery_probed;
        if !self.sack_ok
            || (self.in_recovery && !recovery_probe)
            || !self.have_rtt
            || (self.tlp_high.is_some() && !recovery_probe)
            || self.persist
            // Unlike RFC 8985 §7.2, the probe also runs in RTO recovery, after the timer's
            // resend: when that resend is lost, the probe repairs it a few SRTTs later instead
            // of the backed-off RTO. Measured (tests/faults.rs loss matrix, 10% loss): without
            // it goodput fell 8-46% in six of its eight cells. On a dead path it costs one
            // segment per backoff round.
            || !(matches!(self.state, State::Established | State::CloseWait)
                || (recovery_probe
                    && matches!(
                        self.state,
                        State::FinWait1 | State::Closing | State::LastAck
                    )))
        {
            return None;
        }
        let mut us = 2 * self.srtt_us;
        if self.snd_max.wrapping_sub(self.snd_una) <= self.mss as u32 {
            us += cfg.delayed_ack_ms * 1000;
        }
        let us = us.max(2 * CLOCK_G_US);
        Some(us.min(self.rto_now(cfg)))
    }

    /// Arms the retransmission timer: a tail loss probe when allowed, else the RTO.
    fn arm_pto_or_rto(&mut self, cfg: &TcpConfig, now: Instant) {
        match self.pto_delay(cfg) {
            Some(d) => {
                self.pto = true;
                self.rtx_at = now.add_micros(d);
            }
            None => {
                self.pto = false;
                self.rtx_at = now.add_micros(self.rto_now(cfg));
            }
        }
    }

    /// The highest segment sent (a tail loss probe resends it): `(seq, len, fin)`.
    #[cold]
    #[inline(never)]
    fn last_segment(&self, tx_len: usize) -> Option<(u32, usize, bool)> {
        let flight = self.snd_max.wrapping_sub(self.snd_una) as usize;
        let fin = self.fin_queued && flight == tx_len + 1;
        let data = flight - fin as usize;
        if data > tx_len {
            return None;
        }
        let len = data.min(self.mss);
        let s = self.snd_una.wrapping_add((data - len) as u32);
        (len > 0 || fin).then_some((s, len, fin))
    }

    /// RFC 6675 `IsLost`: every byte below the returned sequence number that is not SACKed is
    /// lost (DupThresh SACKed ranges, or more than (DupThresh − 1)·SMSS SACKed bytes, above it).
    /// `SND.UNA` when nothing is presumed lost.
    #[cold]
    #[inline(never)]
    pub(crate) fn lost_edge(&self) -> u32 {
        let mss = self.mss as u32;
        // Early retransmit (RFC 5827): with fewer than four segments outstanding and no new
        // data to send, DupThresh is one less than the segments outstanding.
        let segs = self.snd_max.wrapping_sub(self.snd_una).div_ceil(mss);
        let dup_thresh = if segs < 4 && !self.new_data_sendable(self.tx.len()) {
            segs.saturating_sub(1).max(1)
        } else {
            3
        };
        let thresh = (dup_thresh - 1) * mss;
        let mut bytes = 0u32;
        for (k, &(l, r)) in self.sacked.ranges().iter().rev().enumerate() {
            bytes = bytes.saturating_add(r.wrapping_sub(l));
            if k as u32 + 1 >= dup_thresh || bytes > thresh {
                return l;
            }
        }
        self.snd_una
    }

    /// RFC 6675 `SetPipe`: bytes presumed in the network. Every byte from SND.UNA to SND.MAX
    /// that is not SACKed counts once if not lost and once more if retransmitted (below
    /// HighRxt).
    #[cold]
    #[inline(never)]
    pub(crate) fn pipe(&self) -> u32 {
        let lost = self.lost_edge();
        let mut pipe = 0u32;
        let mut a = self.snd_una;
        let end = (self.snd_max, self.snd_max);
        for &(l, r) in self.sacked.ranges().iter().chain(core::iter::once(&end)) {
            if seq::lt(a, l) {
                let not_lost = seq::max(a, lost);
                if seq::lt(not_lost, l) {
                    pipe = pipe.saturating_add(l.wrapping_sub(not_lost));
                }
                let rtx_end = if seq::lt(self.high_rxt, l) {
                    self.high_rxt
                } else {
                    l
                };
                if seq::lt(a, rtx_end) {
                    pipe = pipe.saturating_add(rtx_end.wrapping_sub(a));
                }
            }
            a = seq::max(a, r);
        }
        pipe
    }

    /// Reports an acknowledgment to BBR's model: what it delivered, what is still in flight,
    /// and whether the sender is short of data (everything queued is sent and the window has
    /// room), which makes the round's rate a lower bound only.
    #[inline(never)]
    fn bbr_delivery(&mut self, now: Instant, acked: u32, rtt_us: Option<u64>) {
        let inflight = if self.sack_ok {
            self.pipe()
        } else {
            self.snd_max.wrapping_sub(self.snd_una)
        };
        let sent = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
        let app_limited = sent >= self.tx.len() && inflight < self.cc.cwnd;
        self.cc.on_delivery(&super::bbr::AckSample {
            now,
            acked,
            sacked: self.sacked_bytes(),
            inflight,
            // The highest byte delivered: the cumulative ACK, or above it the top of the
            // highest SACK block (a round may end in recovery, before the hole is repaired).
            ack: self
                .sacked
                .ranges()
                .last()
                .map_or(self.snd_una, |r| seq::max(self.snd_una, r.1)),
            snd_max: self.snd_max,
            rtt_us,
            app_limited,
        });
    }

    fn sacked_bytes(&self) -> u32 {
        self.sacked
            .ranges()
            .iter()
            .map(|r| r.1.wrapping_sub(r.0))
            .sum()
    }

    fn process_data(&mut self, env: &mut Env<'_>, seg: &TcpRepr<'_>) {
        let now = env.now;
        let mut seqn = seg.seq;
        let mut data = seg.payload;
        if seq::lt(seqn, self.rcv_nxt) {
            let d = self.rcv_nxt.wrapping_sub(seqn) as usize;
            if d >= data.len() {
                self.ack_now = true;
                return;
            }
            data = &data[d..];
            seqn = self.rcv_nxt;
        }
        // Trim to the advertised window.
        let room = self.rcv_adv.wrapping_sub(seqn) as usize;
        if data.len() > room {
            data = &data[..room];
        }
        if data.is_empty() {
            self.ack_now = true;
            return;
        }
        if self.orphan {
            // Nobody will read: take in-order data and drop it.
            if seqn == self.rcv_nxt {
                self.rcv_nxt = self.rcv_nxt.wrapping_add(data.len() as u32);
            }
            self.ack_now = true;
            return;
        }
        if seqn == self.rcv_nxt {
            let n = self.rx.write_at(0, data);
            let mut edge = self.rcv_nxt.wrapping_add(n as u32);
            if !self.asm.is_empty() {
                let e = self.asm.advance(edge);
                if e != edge {
                    edge = e;
                }
                // Filling a hole is acknowledged at once (RFC 5681 §4.2), and so are the
                // next segments, while the sender recovers.
                self.ack_now = true;
                self.quickacks = QUICKACKS;
            }
            let advance = edge.wrapping_sub(self.rcv_nxt) as usize;
            self.rx.commit(advance);
            self.rcv_nxt = edge;
            self.unacked_bytes = self.unacked_bytes.saturating_add(advance as u32);
            if advance > 0 && !self.readable_signaled {
                self.readable_signaled = true;
                self.notify |= N_READABLE;
            }
            if self.rx_fin == Some(self.rcv_nxt) {
                self.rx_fin = None;
                self.receive_fin(env);
            }
            // Every second full-sized segment is acknowledged at once (RFC 9293 §3.8.6.3): a
            // full segment carries the MSS less the timestamp option, when in use.
            let seg = env.cfg.effective_mss() as u32 - if self.ts_ok { 12 } else { 0 };
            let full = 2 * seg;
            if self.unacked_bytes >= full {
                self.ack_now = true;
                self.ack_flush = true;
            } else if env.cfg.delayed_ack_ms == 0 {
                self.ack_now = true;
            } else if self.quickacks > 0 {
                self.quickacks -= 1;
                self.ack_now = true;
            } else if self.ack_at == Instant::MAX {
                self.ack_at = now.add_millis(env.cfg.delayed_ack_ms);
            }
        } else {
            // Out of order: store in place, remember the range, ACK at once with SACK.
            let off = seqn.wrapping_sub(self.rcv_nxt) as usize;
            let n = self.rx.write_at(off, data);
            if n == 0
                || !self
                    .asm
                    .insert(seqn, seqn.wrapping_add(n as u32), env.cfg.ooo_max_ranges)
            {
                env.stats.drops_ooo += 1;
            }
            // Acknowledged at once, in the order the segments came, each ACK with this
            // segment's block first (RFC 5681 §4.2, RFC 2018 §4): one ACK for a whole batch
            // could name only three of the ranges it made, and the sender would take the
            // others for lost and send them again.
            self.ack_now = true;
            self.ack_flush = true;
            self.quickacks = QUICKACKS;
        }
    }

    fn receive_fin(&mut self, env: &mut Env<'_>) {
        if self.peer_fin {
            return;
        }
        self.peer_fin = true;
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        // A FIN taken at a zero window moves RCV.NXT past the right edge: the edge follows,
        // or the window would read as 2^32 − 1.
        if seq::lt(self.rcv_adv, self.rcv_nxt) {
            self.rcv_adv = self.rcv_nxt;
        }
        self.ack_now = true;
        self.notify |= N_PEER_CLOSED;
        if !self.readable_signaled {
            self.readable_signaled = true;
            self.notify |= N_READABLE;
        }
        self.ka_at = Instant::MAX;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                self.state = if self.fin_acked {
                    State::TimeWait
                } else {
                    State::Closing
                };
            }
            State::FinWait2 => self.state = State::TimeWait,
            State::TimeWait => self.state_at = env.now.add_millis(env.cfg.time_wait_ms),
            _ => {}
        }
    }

    fn arm_keepalive(&mut self, cfg: &TcpConfig, now: Instant) {
        if let Some(k) = cfg.keepalive {
            self.ka_at = now.add_millis(k.idle_ms);
        }
    }

    // ---------------------------------------------------------------- timers

    /// Runs the timers due at `env.now`.
    pub(crate) fn on_timer(&mut self, env: &mut Env<'_>) -> Disp {
        let now = env.now;
        if self.state_at <= now {
            self.state_at = Instant::MAX;
            match self.state {
                State::TimeWait => return Disp::Free,
                State::FinWait2 => return Disp::Close(CloseReason::Timeout),
                _ => {}
            }
        }
        if self.ack_at <= now {
            self.ack_at = Instant::MAX;
            self.ack_now = true;
        }
        if self.rtx_at <= now && self.reo_timer {
            // The reordering window passed (see `arm_reorder`): SND.UNA is lost.
            self.reo_timer = false;
            self.rtx_at = Instant::MAX;
            let above = self
                .sacked
                .ranges()
                .first()
                .is_some_and(|&(l, _)| seq::gt(l, self.snd_una));
            if !self.in_recovery && above && seq::ge(self.snd_una, self.recover) {
                env.stats.reorder_timeouts += 1;
                self.enter_recovery(env);
            }
            if self.rtx_at == Instant::MAX && self.snd_max != self.snd_una {
                self.rtx_at = now.add_micros(self.rto_now(env.cfg));
            }
        }
        if self.rtx_at <= now {
            self.rtx_at = Instant::MAX;
            if self.persist {
                let limit = env.cfg.persist_timeout_ms;
                if limit > 0 && self.persist_since.add_millis(limit) <= now {
                    // The peer has kept its window shut (answering our probes or not) for
                    // longer than allowed: reclaim the connection (sockstress).
                    return Disp::Close(CloseReason::PersistTimeout);
                }
                self.probe_pending = true;
                self.backoff = (self.backoff + 1).min(20);
            } else if self.pto && self.in_recovery {
                // Recovery probe (see `pto_delay`): the first hole goes again, once.
                self.pto = false;
                self.recovery_probed = true;
                self.high_rxt = self.snd_una;
                self.rtx_budget = self.rtx_budget.max(1);
                self.rtx_at = now.add_micros(self.rto_now(env.cfg));
                env.stats.recovery_probes += 1;
            } else if self.pto {
                // Tail loss probe (RFC 8985 §7.3): one segment to elicit an ACK (and SACK
                // blocks) instead of waiting for the RTO, which is armed behind it.
                self.pto = false;
                if self.snd_max != self.snd_una {
                    self.tlp_probe = true;
                    self.tlp_high = Some(self.snd_max);
                    self.rtx_at = now.add_micros(self.rto_now(env.cfg));
                    env.stats.tail_loss_probes += 1;
                }
            } else if self.snd_max != self.snd_una {
                let handshake = matches!(self.state, State::SynSent | State::SynReceived);
                let limit = if handshake {
                    env.cfg.max_syn_retries
                } else {
                    env.cfg.max_retries
                };
                self.retries += 1;
                if self.retries > limit {
                    return if self.state == State::SynReceived && self.listen_port != 0 {
                        Disp::Free
                    } else {
                        Disp::Close(CloseReason::Timeout)
                    };
                }
                env.stats.rto_fired += 1;
                // The resend goes at once (pacing resumes from it).
                self.pace_at = Instant::ZERO;
                // SND.UNA already resent by the timer: ssthresh is held (RFC 5681 §3.1).
                let repeated = self.backoff > 0 && self.rto_una == self.snd_una;
                self.rto_una = self.snd_una;
                self.backoff = (self.backoff + 1).min(20);
                if !handshake {
                    let flight = self.snd_max.wrapping_sub(self.snd_una);
                    self.cc.on_rto(flight, repeated);
                }
                self.in_recovery = false;
                self.dupacks = 0;
                self.rtx_budget = 0;
                self.tlp_probe = false;
                self.tlp_high = None;
                // Keep the scoreboard through one timeout (the resend skips SACKed data);
                // forget it on a second one in case the receiver reneged (RFC 2018 §8).
                if self.backoff > 1 {
                    self.sacked.clear();
                }
                self.recover = self.snd_max;
                self.high_rxt = self.snd_una;
                self.rtt_at = None;
                self.snd_nxt = if handshake { self.iss } else { self.snd_una };
                if !handshake && self.snd_wnd == 0 {
                    // The window shrank to zero over data in flight: the resend cannot go, and
                    // nothing would re-arm a timer. Probe it as a closed window (RFC 9293
                    // §3.8.6.1), so the persist timeout bounds how long the peer can hold us.
                    self.arm_persist(env.cfg, now);
                }
            }
        }
        if self.ka_at <= now {
            self.ka_at = Instant::MAX;
            if let (Some(k), State::Established | State::CloseWait) =
                (env.cfg.keepalive, self.state)
            {
                let idle = now.as_micros().saturating_sub(self.last_rx.as_micros());
                if self.snd_max != self.snd_una {
                    self.ka_at = now.add_millis(k.idle_ms);
                } else if idle >= k.idle_ms * 1000 {
                    if self.ka_probes >= k.probes {
                        return Disp::Close(CloseReason::KeepaliveTimeout);
                    }
                    self.ka_probes += 1;
                    self.ka_probe_pending = true;
                    self.ka_at = now.add_millis(k.interval_ms);
                } else {
                    self.ka_at = self.last_rx.add_millis(k.idle_ms);
                }
            }
        }
        Disp::Keep
    }

    // ---------------------------------------------------------------- output

    /// The window field to advertise, moving the right edge per receiver SWS avoidance.
    fn advertise(&mut self, cfg: &TcpConfig) -> u16 {
        let max = 65535u32 << self.rcv_shift;
        let free = (self.rx.free() as u32).min(max);
        let cand = self
            .rcv_nxt
            .wrapping_add((free >> self.rcv_shift) << self.rcv_shift);
        if seq::gt(cand, self.rcv_adv) {
            let inc = cand.wrapping_sub(self.rcv_adv);
            let cur = self.rcv_adv.wrapping_sub(self.rcv_nxt);
            let thresh = (self.rx.capacity() as u32 / 2).min(cfg.effective_mss() as u32);
            if inc >= thresh || cur == 0 && free >= thresh || free == max {
                self.rcv_adv = cand;
            }
        }
        (self.rcv_adv.wrapping_sub(self.rcv_nxt) >> self.rcv_shift).min(65535) as u16
    }

    /// Bytes of options the next data segment carries: timestamps (12 with padding) and, while
    /// out-of-order data is held, up to 3 or 4 SACK blocks.
    fn data_options_len(&self) -> usize {
        let ts = if self.ts_ok { 12 } else { 0 };
        let sack = if self.sack_ok && !self.asm.is_empty() {
            if self.ts_ok {
                28
            } else {
                36
            } // 2 + 8·n, padded to a multiple of 4
        } else {
            0
        };
        ts + sack
    }

    /// Largest payload for the next data segment in a buffer of `buf_len` bytes.
    fn max_payload(&self, buf_len: usize) -> usize {
        buf_len
            .saturating_sub(HEADER_LEN + self.data_options_len())
            .min(self.mss)
    }

    /// Writes a segment header for `seq`/`fl` with `len` payload bytes from send-buffer offset
    /// `off`; returns the segment length.
    fn emit(
        &mut self,
        env: &mut Env<'_>,
        buf: &mut [u8],
        seqn: u32,
        fl: u8,
        off: usize,
        len: usize,
    ) -> Option<usize> {
        let ts = self.ts_ok.then(|| Timestamps {
            val: self.ts_now(env.now),
            ecr: self.ts_recent,
        });
        let hl = if self.sack_ok && fl & flags::ACK != 0 && !self.asm.is_empty() {
            self.emit_sack_header(env, buf, seqn, fl, len, ts)?
        } else {
            // No SACK blocks (the common case): the header field by field.
            let window = self.advertise(env.cfg);
            let hl = HEADER_LEN + if ts.is_some() { 12 } else { 0 };
            if buf.len() < hl + len {
                return None;
            }
            let ack = if fl & flags::ACK != 0 {
                self.rcv_nxt
            } else {
                0
            };
            wire::write_header(
                buf,
                self.key.lport,
                self.key.rport,
                seqn,
                ack,
                fl,
                window,
                hl,
            );
            if let Some(t) = ts {
                wire::write_timestamps(&mut buf[HEADER_LEN..], t);
            }
            hl
        };
        if len > 0 {
            let n = self.tx.peek_at(off, &mut buf[hl..hl + len]);
            debug_assert_eq!(n, len);
            if self.cc.bbr.is_some() && env.cfg.pacing {
                self.pace(env.now, len);
            }
        }
        if fl & flags::ACK != 0 {
            self.ack_now = false;
            self.ack_at = Instant::MAX;
            self.unacked_bytes = 0;
            self.last_ack_sent = self.rcv_nxt;
        }
        Some(hl + len)
    }

    /// A pure ACK of everything received, as [`Conn::emit`] would write it without SACK
    /// blocks: (seq, ack, window, timestamps). Marks the ACK as sent.
    pub(crate) fn take_pure_ack(
        &mut self,
        cfg: &TcpConfig,
        now: Instant,
    ) -> (u32, u32, u16, Option<Timestamps>) {
        let ts = self.ts_ok.then(|| Timestamps {
            val: self.ts_now(now),
            ecr: self.ts_recent,
        });
        let window = self.advertise(cfg);
        self.ack_now = false;
        self.ack_at = Instant::MAX;
        self.unacked_bytes = 0;
        self.last_ack_sent = self.rcv_nxt;
        (self.ack_seq(), self.rcv_nxt, window, ts)
    }

    /// A pure ACK with SACK blocks (out-of-order data held), the block of the latest segment
    /// first: (seq, ack, window, options). Marks the ACK as sent.
    #[cold]
    #[inline(never)]
    pub(crate) fn take_sack_ack(
        &mut self,
        cfg: &TcpConfig,
        now: Instant,
    ) -> (u32, u32, u16, TcpOptions) {
        let (seqn, ack, window, ts) = self.take_pure_ack(cfg, now);
        (seqn, ack, window, self.sack_options(ts))
    }

    /// Timestamps `ts` and the SACK blocks of the out-of-order data held, the most recent
    /// first (three with timestamps, else four).
    fn sack_options(&self, ts: Option<Timestamps>) -> TcpOptions {
        let mut o = TcpOptions {
            timestamps: ts,
            ..TcpOptions::NONE
        };
        let mut blocks = [(0u32, 0u32); 4];
        let max = if self.ts_ok { 3 } else { 4 };
        let n = self.asm.sack_blocks(&mut blocks[..max]);
        for (i, b) in blocks[..n].iter().enumerate() {
            o.sack[i] = SackBlock {
                left: b.0,
                right: b.1,
            };
        }
        o.sack_len = n as u8;
        o
    }

    /// The header of a segment carrying SACK blocks (out-of-order data held); returns its
    /// length.
    #[cold]
    #[inline(never)]
    fn emit_sack_header(
        &mut self,
        env: &mut Env<'_>,
        buf: &mut [u8],
        seqn: u32,
        fl: u8,
        len: usize,
        ts: Option<Timestamps>,
    ) -> Option<usize> {
        let o = self.sack_options(ts);
        let window = self.advertise(env.cfg);
        let repr = TcpRepr {
            src_port: self.key.lport,
            dst_port: self.key.rport,
            seq: seqn,
            ack: if fl & flags::ACK != 0 {
                self.rcv_nxt
            } else {
                0
            },
            flags: fl,
            window,
            urgent: 0,
            options: o,
            payload: &[],
        };
        let hl = repr.header_len();
        if buf.len() < hl + len || hl > HEADER_LEN + 40 {
            return None;
        }
        repr.emit_header(buf).ok()
    }

    /// Arms the persist timer (the next probe, with backoff), no later than the persist
    /// timeout's deadline; the stall is timed from its first arming.
    fn arm_persist(&mut self, cfg: &TcpConfig, now: Instant) {
        self.persist = true;
        if self.persist_since == Instant::MAX {
            self.persist_since = now;
        }
        let mut at = now.add_micros(self.rto_now(cfg));
        if cfg.persist_timeout_ms > 0 {
            at = at.min(self.persist_since.add_millis(cfg.persist_timeout_ms));
        }
        self.rtx_at = at;
    }

    fn arm_rtx(&mut self, cfg: &TcpConfig, now: Instant) {
        if self.rtx_at == Instant::MAX || self.persist {
            self.persist = false;
            self.persist_since = Instant::MAX;
            self.arm_pto_or_rto(cfg, now);
        }
    }

    /// Bookkeeping after sending `[seqn, seqn + n)` of sequence space.
    fn sent(&mut self, env: &mut Env<'_>, seqn: u32, n: u32) {
        let end = seqn.wrapping_add(n);
        if seq::lt(seqn, self.snd_max) {
            env.stats.retransmits += 1;
            self.rtt_at = None;
            self.send_times.clear();
        } else {
            if self.rtt_at.is_none() {
                self.rtt_at = Some(env.now);
                self.rtt_seq = end;
            }
            // Timestamps give every ACK its RTT; without them, HyStart++ needs these, from a
            // window of 16 segments on (as Linux's HyStart: below, a short exchange would pay
            // for samples that cannot end its slow start).
            if !self.ts_ok && self.cc.hystart_active() && self.cc.cwnd >= 16 * self.mss as u32 {
                self.send_times.push(end, env.now);
            }
        }
        let new_data = seq::gt(end, self.snd_max);
        if new_data {
            self.snd_max = end;
        }
        if new_data && self.pto && !self.in_recovery {
            // RFC 8985 §7.2: the probe timeout restarts after new data is sent, and with it
            // its length (2·SRTT, without the delayed-ACK allowance of a single segment once
            // more than one is in flight).
            self.arm_pto_or_rto(env.cfg, env.now);
            return;
        }
        self.arm_rtx(env.cfg, env.now);
    }

    /// True when BBR's pacing holds data back at `env.now`; arms the wakeup for when it may go.
    #[inline]
    fn paced_out(&mut self, env: &Env<'_>) -> bool {
        if self.pace_at <= env.now || self.cc.bbr.is_none() || !env.cfg.pacing {
            return false;
        }
        self.pace_wait = self.pace_at;
        true
    }

    /// A data segment of `len` bytes left at `now`: the next may go `len` / rate later, after a
    /// credit of at most [`super::bbr::PACING_BURST_US`] (see [`super::bbr::Bbr::pacing_rate`]).
    #[inline(never)]
    fn pace(&mut self, now: Instant, len: usize) {
        let srtt = if self.have_rtt { self.srtt_us } else { 0 };
        let Some(rate) = self
            .cc
            .bbr
            .as_ref()
            .and_then(|b| b.pacing_rate(self.cc.cwnd, srtt))
        else {
            return;
        };
        let floor = now.as_micros().saturating_sub(super::bbr::PACING_BURST_US);
        let start = self.pace_at.as_micros().max(floor);
        // At most a round trip (smoothed or BBR's minimum, 1 ms at least): a rate far below
        // the path's never stalls the connection.
        let min_rtt = self.cc.bbr.as_ref().map_or(0, |b| b.min_rtt_us);
        let rtt = srtt.max(if min_rtt == u64::MAX { 0 } else { min_rtt });
        let gap =
            ((len as u64).saturating_mul(1_000_000) / rate).min(rtt.clamp(1000, MAX_PACING_GAP_US));
        self.pace_at = Instant::from_micros(start.saturating_add(gap));
        self.pace_wait = Instant::MAX;
    }

    /// Writes the next segment of this connection into `buf` (checksum left to the caller).
    pub(crate) fn output(&mut self, env: &mut Env<'_>, buf: &mut [u8]) -> Option<usize> {
        let now = env.now;
        let ack = flags::ACK;
        match self.state {
            State::SynSent | State::SynReceived if self.snd_nxt == self.iss => {
                return self.output_syn(env, buf);
            }
            State::SynSent | State::Closed | State::Listen => return None,
            State::SynReceived | State::TimeWait | State::FinWait2 | State::CloseWait
                if !self.data_state() =>
            {
                return if self.ack_now {
                    self.emit(env, buf, self.ack_seq(), ack, 0, 0)
                } else {
                    None
                };
            }
            _ => {}
        }
        if self.paced_out(env) {
            // Data waits for its pacing time (the timer is armed); an ACK owed goes now.
            return if self.ack_now {
                self.emit(env, buf, self.ack_seq(), ack, 0, 0)
            } else {
                None
            };
        }
        let tx_len = self.tx.len();
        // Retransmissions allowed by duplicate or partial ACKs (and SACK holes).
        if self.rtx_budget > 0 {
            self.rtx_budget -= 1;
            let start = if self.sack_ok {
                seq::max(self.snd_una, self.high_rxt)
            } else {
                self.snd_una
            };
            if let Some(h) = self.hole(start, tx_len) {
                return self.retransmit(env, buf, h, tx_len);
            }
        }
        // Tail loss probe: new data if the peer's window allows (cwnd notwithstanding), else
        // the last segment again (RFC 8985 §7.3).
        let mut probe_new = false;
        if self.tlp_probe {
            self.tlp_probe = false;
            if self.new_data_sendable(tx_len) && self.snd_nxt == self.snd_max {
                probe_new = true;
            } else if let Some(h) = self.last_segment(tx_len) {
                return self.retransmit(env, buf, h, tx_len);
            }
        }
        // SACK loss recovery (RFC 6675 §5 step (C)): send while `cwnd − pipe ≥ SMSS`, a lost
        // hole first (rule 1), else new data (rule 2), else any hole below the highest SACKed
        // byte (rule 3).
        let mut room = None;
        if self.in_recovery && self.sack_ok {
            let pipe = self.pipe();
            let free = self.cc.cwnd.saturating_sub(pipe);
            if free < self.mss as u32 {
                return if self.ack_now {
                    self.emit(env, buf, self.ack_seq(), ack, 0, 0)
                } else {
                    None
                };
            }
            room = Some(free as usize);
            let start = seq::max(self.snd_una, self.high_rxt);
            if let Some(h) = self.hole(start, tx_len) {
                if seq::lt(h.0, self.lost_edge()) || !self.new_data_sendable(tx_len) {
                    return self.retransmit(env, buf, h, tx_len);
                }
            }
        }
        if self.ka_probe_pending {
            self.ka_probe_pending = false;
            return self.emit(env, buf, self.snd_una.wrapping_sub(1), ack, 0, 0);
        }
        // After a timeout, resend what the scoreboard does not hold (RFC 6675 §5.1).
        let mut sack_limit = None;
        if self.sack_ok && seq::lt(self.snd_nxt, self.snd_max) {
            for &(l, r) in self.sacked.ranges() {
                if seq::le(l, self.snd_nxt) && seq::lt(self.snd_nxt, r) {
                    self.snd_nxt = r;
                } else if seq::gt(l, self.snd_nxt) {
                    sack_limit = Some(l.wrapping_sub(self.snd_nxt) as usize);
                    break;
                }
            }
        }
        let off = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
        if off <= tx_len {
            let avail = tx_len - off;
            let usable = match room {
                Some(r) => (self.snd_wnd as usize).saturating_sub(off).min(r),
                None => {
                    // Limited transmit (RFC 3042): the first two duplicate ACKs each let one
                    // new segment out beyond cwnd.
                    let extra = if self.in_recovery {
                        0
                    } else {
                        self.dupacks.min(2) * self.mss as u32
                    };
                    let cwnd = self.cc.cwnd.saturating_add(extra);
                    let usable = (self.snd_wnd.min(cwnd) as usize).saturating_sub(off);
                    if probe_new {
                        usable.max((self.snd_wnd as usize).saturating_sub(off).min(self.mss))
                    } else {
                        usable
                    }
                }
            };
            // A full segment: the MSS, or less when this segment's options and the buffer
            // leave less room (a full segment is never held back by Nagle).
            let full = self.max_payload(buf.len());
            let mut len = avail.min(usable).min(full);
            let retrans = seq::lt(self.snd_nxt, self.snd_max);
            if let (true, Some(l)) = (retrans, sack_limit) {
                len = len.min(l);
            }
            if self.probe_pending && avail > 0 && len == 0 && off == 0 {
                // Zero-window probe: one byte past the window; SND.NXT stays.
                self.probe_pending = false;
                let n = self.emit(env, buf, self.snd_nxt, ack, 0, 1)?;
                if seq::gt(self.snd_nxt.wrapping_add(1), self.snd_max) {
                    self.snd_max = self.snd_nxt.wrapping_add(1);
                }
                self.arm_persist(env.cfg, now);
                return Some(n);
            }
            let mut ok = len > 0
                && (retrans
                    || len == full
                    || (len == avail && (self.nodelay || off == 0 || self.fin_queued))
                    || (self.max_snd_wnd > 0 && len >= self.max_snd_wnd as usize / 2));
            if len > 0 && !ok && self.probe_pending {
                // SWS override timeout: send what the window allows.
                ok = true;
            }
            if !ok {
                len = 0;
            }
            let fin =
                self.fin_queued && !self.fin_acked && off + len == tx_len && (ok || avail == 0);
            if len > 0 || fin {
                self.probe_pending = false;
                let mut fl = ack;
                if fin {
                    fl |= flags::FIN;
                }
                if len > 0 && off + len == tx_len {
                    fl |= flags::PSH;
                }
                let seqn = self.snd_nxt;
                let n = self.emit(env, buf, seqn, fl, off, len)?;
                let used = len as u32 + fin as u32;
                self.snd_nxt = seqn.wrapping_add(used);
                self.sent(env, seqn, used);
                return Some(n);
            }
            // Stalled with data and nothing in flight: persist (zero window) or SWS override.
            if avail > 0 && off == 0 && self.rtx_at == Instant::MAX {
                self.arm_persist(env.cfg, now);
            }
        }
        if self.ack_now {
            let seqn = self.ack_seq();
            return self.emit(env, buf, seqn, ack, 0, 0);
        }
        None
    }

    /// Sequence number for a pure ACK: the highest sent, not `SND.NXT` (which a retransmission
    /// timeout pulls back, and which the peer would find below its window), bounded by the
    /// peer's window edge as Linux's `tcp_acceptable_seq`.
    fn ack_seq(&self) -> u32 {
        if !self.syn_acked {
            return self.snd_nxt;
        }
        let wnd_end = self.snd_una.wrapping_add(self.snd_wnd);
        if seq::ge(wnd_end, self.snd_max) {
            self.snd_max
        } else {
            seq::max(wnd_end, self.snd_nxt)
        }
    }

    /// Retransmits hole `(seq, len, fin)` (from [`Self::hole`]).
    #[cold]
    #[inline(never)]
    fn retransmit(
        &mut self,
        env: &mut Env<'_>,
        buf: &mut [u8],
        (s, len, fin): (u32, usize, bool),
        tx_len: usize,
    ) -> Option<usize> {
        let room = self.max_payload(buf.len());
        let (len, fin) = if len > room {
            (room, false)
        } else {
            (len, fin)
        };
        let off = s.wrapping_sub(self.snd_una) as usize;
        let mut fl = flags::ACK;
        if fin {
            fl |= flags::FIN;
        }
        if len > 0 && off + len == tx_len {
            fl |= flags::PSH;
        }
        let n = self.emit(env, buf, s, fl, off, len)?;
        let used = len as u32 + fin as u32;
        self.high_rxt = s.wrapping_add(used);
        self.rtx_snd_max = self.snd_max;
        env.stats.retransmits += 1;
        self.rtt_at = None;
        self.arm_rtx(env.cfg, env.now);
        Some(n)
    }

    /// New data (or a FIN) lies between SND.NXT and the peer's window.
    fn new_data_sendable(&self, tx_len: usize) -> bool {
        let off = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
        (off < tx_len && (self.snd_wnd as usize) > off)
            || (self.fin_queued && !self.fin_acked && off == tx_len)
    }

    /// States in which data or FIN may still be (re)sent.
    fn data_state(&self) -> bool {
        matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        ) || (self.fin_queued && !self.fin_acked && self.syn_acked)
    }

    /// The next segment to retransmit at or after `start`: the first byte not SACKed, up to the
    /// next SACKed range or one MSS; `(seq, len, fin)`.
    #[cold]
    #[inline(never)]
    fn hole(&self, start: u32, tx_len: usize) -> Option<(u32, usize, bool)> {
        let mut s = start;
        let mut limit = None;
        if self.sack_ok {
            for &(l, r) in self.sacked.ranges() {
                if seq::lt(s, l) {
                    limit = Some(l);
                    break;
                }
                s = seq::max(s, r);
            }
            // With SACK, only data below the highest SACKed byte counts as lost (RFC 6675);
            // the first retransmission (at SND.UNA) always goes.
            if limit.is_none() && s != self.snd_una {
                return None;
            }
        }
        let off = s.wrapping_sub(self.snd_una) as usize;
        if !seq::lt(s, self.snd_max) || off > tx_len {
            return None;
        }
        // Never past what was sent: data the application queued since is new data, sent (and
        // counted in SND.MAX) by the ordinary path. A "retransmission" reaching past SND.MAX
        // would put bytes on the wire that SND.MAX does not cover, and the peer's ACK of them
        // would then be refused as acknowledging unsent data, forever.
        let mut len = (tx_len - off)
            .min(self.mss)
            .min(self.snd_max.wrapping_sub(s) as usize);
        if let Some(l) = limit {
            len = len.min(l.wrapping_sub(s) as usize);
        }
        let fin = self.fin_queued
            && off + len == tx_len
            && seq::gt(self.snd_max, s.wrapping_add(len as u32));
        if len == 0 && !fin {
            return None;
        }
        Some((s, len, fin))
    }

    fn output_syn(&mut self, env: &mut Env<'_>, buf: &mut [u8]) -> Option<usize> {
        let cfg = env.cfg;
        let synack = self.state == State::SynReceived;
        let mut o = TcpOptions {
            mss: Some(cfg.effective_mss()),
            ..TcpOptions::NONE
        };
        let tsval = self.ts_now(env.now);
        if synack {
            if self.ws_ok {
                o.window_scale = Some(self.rcv_shift);
            }
            o.sack_permitted = self.sack_ok;
            if self.ts_ok {
                o.timestamps = Some(Timestamps {
                    val: tsval,
                    ecr: self.ts_recent,
                });
            }
        } else {
            if cfg.window_scale {
                o.window_scale = Some(cfg.window_shift());
            }
            o.sack_permitted = cfg.sack;
            if cfg.timestamps {
                o.timestamps = Some(Timestamps { val: tsval, ecr: 0 });
            }
        }
        let window = self.rx.free().min(65535) as u16;
        let fl = if synack {
            flags::SYN | flags::ACK
        } else {
            flags::SYN
        };
        let n = HEADER_LEN + o.len();
        if buf.len() < n {
            return None;
        }
        let ack = if synack { self.rcv_nxt } else { 0 };
        wire::write_header(
            buf,
            self.key.lport,
            self.key.rport,
            self.iss,
            ack,
            fl,
            window,
            n,
        );
        o.emit(&mut buf[HEADER_LEN..n]).ok()?;
        if synack {
            self.rcv_adv = seq::max(self.rcv_adv, self.rcv_nxt.wrapping_add(window as u32));
            self.last_ack_sent = self.rcv_nxt;
            self.ack_now = false;
            self.ack_at = Instant::MAX;
        }
        self.snd_nxt = self.iss.wrapping_add(1);
        let iss = self.iss;
        self.sent(env, iss, 1);
        Some(n)
    }
}
