//! BBR congestion control, version 1 (draft-cardwell-iccrg-bbr-congestion-control-00), with
//! pacing: a model of the path (bottleneck bandwidth, minimum round-trip time) sets the sending
//! rate to a gain times the bottleneck bandwidth and the congestion window to a multiple of the
//! bandwidth-delay product; loss shrinks neither. Under random loss (a lossy radio link, a
//! policer's early drops) a loss-based algorithm cuts its window at every loss and never fills
//! the path; BBR keeps sending at the rate it measures.
//!
//! What this engine has of BBR, and what it leaves out:
//! - **Delivery rate**: one sample per round trip, the bytes delivered (cumulatively acknowledged
//!   plus SACKed) over the round's duration. A round ends when data sent after it began is
//!   delivered (the cumulative ACK or a SACK block passes what had been sent at its start), as
//!   Linux counts rounds: with ACKs processed a batch at a time, a count of bytes in flight
//!   would end a round at the first ACK after a batch that acknowledged everything. The
//!   bottleneck bandwidth is the maximum of the last [`BW_ROUNDS`] rounds' samples. A round in
//!   which the sender ran out of data (application-limited) counts only if it raises the
//!   estimate, and does not age the others out.
//! - **Minimum RTT**: from the timed segment (microseconds, Karn's rule), over a 10 s window.
//! - **States**: Startup (pacing and window gain 2/ln 2 until the bandwidth grew less than 25% in
//!   three rounds), Drain (pacing gain ln 2/2 until the flight is down to one BDP), ProbeBW
//!   (window gain 2; pacing gains cycling 5/4, 3/4, then six times 1, one phase per minimum RTT),
//!   ProbeRTT (4 segments for 200 ms and a round when the minimum RTT is 10 s old).
//! - **Pacing** ([`Bbr::pacing_rate`]): the connection spaces its data segments at the pacing
//!   rate, with at most [`PACING_BURST_US`] of credit so that a segment due between two batches
//!   does not lower the average rate, and never more than a round trip (1 ms at least) between
//!   two segments; held-back connections wait on a list of their own, not on the timer wheel,
//!   whose millisecond tick is too coarse for gaps of microseconds. Until the pipe is full the
//!   rate is at least the initial window per RTT times Startup's gain (before any RTT sample,
//!   nothing is paced); a retransmission timeout's resend is not held back.
//!   `TcpConfig::pacing = false` turns pacing off: the window alone limits BBR (the rest of
//!   the model, recovery included, is the same).
//! - **Loss**: fast recovery starts with packet conservation, as Linux's BBR: for its first
//!   round the window is what is in flight plus what each ACK delivers, so nothing beyond what
//!   left the network goes into it (a queue that overflowed drains, the retransmissions are not
//!   lost again); after that round the window grows back toward its target, and the window from
//!   before comes back when recovery ends. Loss itself never lowers the target. A
//!   retransmission timeout drops the window to one segment and restores the previous one once
//!   everything that was in flight has been delivered.
//! - **Not here**: long-term (policer) bandwidth sampling.
//! - **Small peer windows under heavy loss**: BBR keeps the peer's receive window full, so a
//!   peer with a window of a few segments advertises a zero window after nearly every flight;
//!   each lost window update then costs a persist timeout (at least the minimum RTO). CUBIC,
//!   whose window drops below the peer's after a loss, meets this far less often
//!   (`tests/snapshots/loss_matrix_bbr.txt`, 16 KiB column).

use crate::time::Instant;

/// Rounds the bandwidth filter remembers (BBR's `BtlBwFilterLen`).
pub(crate) const BW_ROUNDS: usize = 10;
/// The minimum RTT's lifetime before ProbeRTT (BBR's `MinRTTFilterLen`), microseconds.
const MIN_RTT_WINDOW_US: u64 = 10_000_000;
/// Time spent at the small window in ProbeRTT (BBR's `ProbeRTTDuration`), microseconds.
const PROBE_RTT_US: u64 = 200_000;
/// Startup's window gain, 2/ln 2, in 1/1000.
const HIGH_GAIN_MILLI: u64 = 2885;
/// ProbeBW's window gain, in 1/1000.
const PROBE_BW_GAIN_MILLI: u64 = 2000;
/// The smallest window, in segments (BBR's `MinPipeCwnd`).
const MIN_PIPE_SEGS: u32 = 4;
/// Segments added to the target window for delayed and aggregated ACKs.
const ACK_ALLOWANCE_SEGS: u64 = 3;
/// Drain's pacing gain, ln 2/2 (the inverse of Startup's), in 1/1000.
const DRAIN_PACING_GAIN_MILLI: u64 = 347;
/// ProbeBW's pacing gains, one phase per minimum RTT: probe for more, drain what the probe
/// queued, then cruise.
const PROBE_BW_PACING_MILLI: [u64; 8] = [1250, 750, 1000, 1000, 1000, 1000, 1000, 1000];
/// Credit a paced connection may bank, microseconds: a segment due between two batches goes at
/// the next one without lowering the average rate, and after a pause at most this much goes at
/// once.
pub(crate) const PACING_BURST_US: u64 = 250;

/// BBR's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// Exponential growth until the bandwidth stops growing.
    #[default]
    Startup,
    /// Down to one BDP in flight: the queue Startup built drains.
    Drain,
    /// Steady state: a window of two BDPs.
    ProbeBw,
    /// A small window for a while, to see the path's RTT without our queue.
    ProbeRtt,
}

/// What one acknowledgment tells the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckSample {
    /// Its arrival time.
    pub now: Instant,
    /// Data bytes newly cumulatively acknowledged.
    pub acked: u32,
    /// SACKed bytes above the cumulative acknowledgment now.
    pub sacked: u32,
    /// Bytes in flight after it.
    pub inflight: u32,
    /// The end of the highest data delivered: SND.UNA after it, or the right edge of the
    /// highest SACKed range above it.
    pub ack: u32,
    /// The highest sequence number sent so far (SND.MAX).
    pub snd_max: u32,
    /// An RTT sample from the timed segment, microseconds.
    pub rtt_us: Option<u64>,
    /// The sender has no more data to send: what it delivers says less than the path can.
    pub app_limited: bool,
}

/// BBR's model and state (kept inline in the connection: no allocation).
#[derive(Debug, Clone)]
pub(crate) struct Bbr {
    pub(crate) mode: Mode,
    /// Per-round delivery rate maxima, bytes per second, the current round's slot at
    /// `round % BW_ROUNDS`.
    bw: [u64; BW_ROUNDS],
    /// The bottleneck bandwidth estimate (the maximum of `bw`), bytes per second.
    pub(crate) btl_bw: u64,
    /// Round trips counted.
    pub(crate) round: u64,
    /// Cumulatively acknowledged data bytes, all time.
    acked_total: u64,
    /// `acked_total` plus SACKed bytes at the last acknowledgment.
    delivered: u64,
    /// The current round: its start, what was delivered then, and the delivery count that
    /// ends it.
    round_start: Instant,
    round_start_delivered: u64,
    /// The highest sequence number sent when the round began: an ACK beyond it ends the round
    /// (`None`: before the first).
    round_end_seq: Option<u32>,
    round_app_limited: bool,
    /// Minimum RTT, microseconds (`u64::MAX`: none yet), and when it was measured.
    pub(crate) min_rtt_us: u64,
    min_rtt_at: Instant,
    /// Startup's plateau detection.
    full_bw: u64,
    full_bw_rounds: u8,
    pub(crate) filled_pipe: bool,
    /// ProbeRTT: when it may end (`None`: the flight is not down to its window yet), and the
    /// round it must also see out.
    probe_rtt_done: Option<Instant>,
    probe_rtt_round: u64,
    /// The window before ProbeRTT or a retransmission timeout, restored after.
    prior_cwnd: u32,
    /// After a timeout: the delivery count at which `prior_cwnd` comes back (0: none).
    restore_at: u64,
    /// ProbeBW: the phase of [`PROBE_BW_PACING_MILLI`] and when it began.
    cycle: usize,
    cycle_start: Instant,
    /// In loss recovery: the window before it (restored after).
    recovery_prior: Option<u32>,
    /// Bytes the latest acknowledgment delivered (cumulatively acknowledged or SACKed).
    newly_delivered: u32,
    /// The initial window per the first RTT sample, times Startup's gain, bytes per second (0:
    /// no sample yet): the pacing rate's floor until the pipe is full.
    initial_rate: u64,
    /// The end of recovery's first round trip (one minimum RTT after it began), packet
    /// conservation until then (`None`: not conserving).
    conserve_until: Option<Instant>,
}

impl Default for Bbr {
    fn default() -> Self {
        Bbr {
            mode: Mode::Startup,
            bw: [0; BW_ROUNDS],
            btl_bw: 0,
            round: 0,
            acked_total: 0,
            delivered: 0,
            round_start: Instant::ZERO,
            round_start_delivered: 0,
            round_end_seq: None,
            round_app_limited: false,
            min_rtt_us: u64::MAX,
            min_rtt_at: Instant::ZERO,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            probe_rtt_done: None,
            probe_rtt_round: 0,
            prior_cwnd: 0,
            restore_at: 0,
            cycle: 0,
            cycle_start: Instant::ZERO,
            recovery_prior: None,
            newly_delivered: 0,
            initial_rate: 0,
            conserve_until: None,
        }
    }
}

impl Bbr {
    /// One bandwidth-delay product, bytes (`None` before the first RTT and rate samples).
    pub(crate) fn bdp(&self) -> Option<u64> {
        if self.btl_bw == 0 || self.min_rtt_us == u64::MAX {
            return None;
        }
        Some(self.btl_bw.saturating_mul(self.min_rtt_us) / 1_000_000)
    }

    /// The rate to pace data at, bytes per second: the mode's pacing gain times the bottleneck
    /// bandwidth; before the first bandwidth sample, `cwnd` per `srtt_us` times Startup's gain;
    /// `None` (do not pace) before any RTT sample.
    pub(crate) fn pacing_rate(&self, cwnd: u32, srtt_us: u64) -> Option<u64> {
        if self.btl_bw == 0 {
            if self.initial_rate > 0 {
                return Some(self.initial_rate);
            }
            return (srtt_us > 0).then(|| {
                let rate = u64::from(cwnd).saturating_mul(1_000_000) / srtt_us;
                (rate.saturating_mul(HIGH_GAIN_MILLI) / 1000).max(1)
            });
        }
        let gain = match self.mode {
            Mode::Startup => HIGH_GAIN_MILLI,
            Mode::Drain => DRAIN_PACING_GAIN_MILLI,
            Mode::ProbeBw => PROBE_BW_PACING_MILLI[self.cycle],
            Mode::ProbeRtt => 1000,
        };
        let rate = (self.btl_bw.saturating_mul(gain) / 1000).max(1);
        // Until the pipe is full, never below the initial window's rate (as Linux, whose
        // pacing rate only grows before then): a first estimate taken from a few small,
        // application-limited rounds must not pace a bulk transfer that follows at their rate.
        Some(if self.filled_pipe {
            rate
        } else {
            rate.max(self.initial_rate)
        })
    }

    /// ProbeBW's gain cycle: the next phase after a minimum RTT; the probing phase also waits
    /// until the flight reached 5/4 of a BDP (at most two minimum RTTs), the draining one ends
    /// early once the flight is down to one BDP.
    fn advance_cycle(&mut self, s: &AckSample) {
        let elapsed = s
            .now
            .as_micros()
            .saturating_sub(self.cycle_start.as_micros());
        let min_rtt = self.min_rtt_us;
        let bdp = self.bdp().unwrap_or(0);
        let inflight = u64::from(s.inflight);
        let next = match self.cycle {
            0 => elapsed > min_rtt && (inflight >= bdp * 5 / 4 || elapsed > 2 * min_rtt),
            1 => elapsed > min_rtt || inflight <= bdp,
            _ => elapsed > min_rtt,
        };
        if next {
            self.cycle = (self.cycle + 1) % PROBE_BW_PACING_MILLI.len();
            self.cycle_start = s.now;
        }
    }

    /// Enters ProbeBW at a phase that is not the draining one (the draft picks it at random;
    /// here it follows from the round count, so that simulations stay deterministic).
    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        const START: [usize; 7] = [0, 2, 3, 4, 5, 6, 7];
        self.cycle = START[(self.round % START.len() as u64) as usize];
        self.cycle_start = now;
    }

    /// Updates the model from an acknowledgment and returns the new congestion window.
    pub(crate) fn on_ack(&mut self, s: &AckSample, cwnd: u32, mss: u32, initial: u32) -> u32 {
        self.acked_total += u64::from(s.acked);
        // SACKed bytes count as delivered when they arrive; the cumulative ACK that covers
        // them later only moves them from one term to the other.
        let before = self.delivered;
        self.delivered = self.delivered.max(self.acked_total + u64::from(s.sacked));
        self.newly_delivered = (self.delivered - before).min(u64::from(u32::MAX)) as u32;
        self.round_app_limited |= s.app_limited;
        if let Some(rtt) = s.rtt_us {
            self.update_min_rtt(s.now, rtt);
            if self.initial_rate == 0 {
                // The initial window per RTT, times Startup's gain.
                let rate = u64::from(initial).saturating_mul(1_000_000) / self.min_rtt_us.max(1);
                self.initial_rate = (rate.saturating_mul(HIGH_GAIN_MILLI) / 1000).max(1);
            }
        }
        if self
            .round_end_seq
            .is_none_or(|end| super::seq::gt(s.ack, end))
        {
            self.end_round(s);
            self.round_end_seq = Some(s.snd_max);
        }
        self.update_mode(s, mss);
        self.window(s, cwnd, mss, initial)
    }

    fn update_min_rtt(&mut self, now: Instant, rtt: u64) {
        let expired = now.as_micros() > self.min_rtt_at.as_micros() + MIN_RTT_WINDOW_US;
        if rtt <= self.min_rtt_us || expired {
            self.min_rtt_us = rtt.max(1);
            self.min_rtt_at = now;
            if expired && self.mode != Mode::ProbeRtt && self.round > 0 {
                // The old minimum lapsed: the window shrinks for a while so that a fresh one
                // can be seen without our own queue in it.
                self.enter_probe_rtt();
            }
        }
    }

    fn end_round(&mut self, s: &AckSample) {
        let took = s
            .now
            .as_micros()
            .saturating_sub(self.round_start.as_micros());
        let got = self.delivered - self.round_start_delivered;
        if self.round > 0 && took > 0 && got > 0 {
            let rate = got.saturating_mul(1_000_000) / took;
            let slot = (self.round % BW_ROUNDS as u64) as usize;
            // A round that used the path replaces the sample of BW_ROUNDS rounds ago (so the
            // estimate follows the path down); an application-limited one may only raise it.
            if !self.round_app_limited {
                self.bw[slot] = rate;
            } else {
                self.bw[slot] = self.bw[slot].max(rate);
            }
            self.btl_bw = self.bw.iter().copied().max().unwrap_or(0);
            if !self.round_app_limited && !self.filled_pipe {
                // Startup ends when three rounds in a row grew the bandwidth by under 25%.
                if self.btl_bw >= self.full_bw.saturating_add(self.full_bw / 4) {
                    self.full_bw = self.btl_bw;
                    self.full_bw_rounds = 0;
                } else {
                    self.full_bw_rounds += 1;
                    if self.full_bw_rounds >= 3 {
                        self.filled_pipe = true;
                    }
                }
            }
        }
        self.round += 1;
        self.round_start = s.now;
        self.round_start_delivered = self.delivered;
        self.round_app_limited = s.app_limited;
    }

    fn update_mode(&mut self, s: &AckSample, mss: u32) {
        match self.mode {
            Mode::Startup if self.filled_pipe => self.mode = Mode::Drain,
            Mode::Drain if self.bdp().is_some_and(|b| u64::from(s.inflight) <= b) => {
                self.enter_probe_bw(s.now)
            }
            Mode::ProbeBw => self.advance_cycle(s),
            Mode::ProbeRtt => match self.probe_rtt_done {
                None if s.inflight <= MIN_PIPE_SEGS * mss => {
                    self.probe_rtt_done = Some(s.now.add_micros(PROBE_RTT_US));
                    self.probe_rtt_round = self.round + 1;
                }
                Some(done) if s.now >= done && self.round >= self.probe_rtt_round => {
                    // The minimum RTT just measured (or confirmed) is good for another window.
                    self.min_rtt_at = s.now;
                    self.probe_rtt_done = None;
                    if self.filled_pipe {
                        self.enter_probe_bw(s.now);
                    } else {
                        self.mode = Mode::Startup;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn enter_probe_rtt(&mut self) {
        self.mode = Mode::ProbeRtt;
        self.probe_rtt_done = None;
    }

    /// BBR's window: the gain times one BDP plus an ACK allowance; grows by what was delivered
    /// until it gets there (or without a bound before the pipe is full).
    fn window(&mut self, s: &AckSample, cwnd: u32, mss: u32, initial: u32) -> u32 {
        let floor = MIN_PIPE_SEGS * mss;
        if self.mode == Mode::ProbeRtt {
            self.prior_cwnd = self.prior_cwnd.max(cwnd);
            return cwnd.min(floor).max(floor);
        }
        if self.prior_cwnd > 0 && self.restore_at == 0 {
            // Back from ProbeRTT.
            let restored = cwnd.max(self.prior_cwnd);
            self.prior_cwnd = 0;
            return restored;
        }
        if let Some(until) = self.conserve_until {
            if s.now < until {
                // Packet conservation: what is still in flight plus what this ACK delivered,
                // SACKed bytes included (what the losses took out of the window stays out, as
                // Linux's `cwnd − losses`; each ACK lets out as much as it says arrived).
                let keep = s.inflight.saturating_add(self.newly_delivered);
                return keep.clamp(floor, super::cc::MAX_CWND);
            }
            self.conserve_until = None;
        }
        let mut cwnd = cwnd;
        if self.restore_at != 0 && self.delivered >= self.restore_at {
            // Everything in flight at the timeout has been delivered.
            cwnd = cwnd.max(self.prior_cwnd);
            self.restore_at = 0;
            self.prior_cwnd = 0;
        }
        let gain = match self.mode {
            Mode::Startup => HIGH_GAIN_MILLI,
            Mode::Drain => 1000,
            Mode::ProbeBw | Mode::ProbeRtt => PROBE_BW_GAIN_MILLI,
        };
        // Drain aims at one BDP exactly (with pacing off, the window is what drains the
        // queue; with it, Drain's low pacing gain as well); the others allow for ACKs that come
        // delayed or aggregated.
        let allowance = if self.mode == Mode::Drain {
            0
        } else {
            ACK_ALLOWANCE_SEGS * u64::from(mss)
        };
        let target = self.bdp().map(|b| {
            (b.saturating_mul(gain) / 1000 + allowance).min(u64::from(super::cc::MAX_CWND)) as u32
        });
        let grown = cwnd.saturating_add(s.acked);
        let cwnd = match target {
            Some(t) if self.filled_pipe => grown.min(t),
            Some(t) if cwnd < t => grown,
            Some(_) if self.delivered < u64::from(initial) => grown,
            Some(_) => cwnd,
            None => grown,
        };
        cwnd.clamp(floor, super::cc::MAX_CWND)
    }

    /// Loss recovery starts at `now` with `inflight` bytes in the network: packet conservation
    /// for a round trip. Returns the new window.
    pub(crate) fn enter_recovery(
        &mut self,
        now: Instant,
        cwnd: u32,
        inflight: u32,
        mss: u32,
    ) -> u32 {
        self.recovery_prior = Some(self.recovery_prior.unwrap_or(0).max(cwnd));
        if self.filled_pipe {
            return cwnd;
        }
        let rtt = if self.min_rtt_us == u64::MAX {
            0
        } else {
            self.min_rtt_us
        };
        self.conserve_until = Some(now.add_micros(rtt));
        inflight.max(mss)
    }

    /// Loss recovery ended: the window from before it comes back. Returns the new window.
    pub(crate) fn exit_recovery(&mut self, cwnd: u32) -> u32 {
        self.conserve_until = None;
        cwnd.max(self.recovery_prior.take().unwrap_or(0))
    }

    /// A retransmission timeout with `flight` bytes outstanding: one segment until what was in
    /// flight has been delivered, then the window from before (recovery, if any, is over).
    pub(crate) fn on_rto(&mut self, cwnd: u32, flight: u32) {
        self.conserve_until = None;
        let before = self.recovery_prior.take().unwrap_or(0);
        self.prior_cwnd = self.prior_cwnd.max(cwnd).max(before);
        self.restore_at = self.delivered + u64::from(flight).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    /// A path of `bw` bytes per second and `rtt_us` round trip: each call acknowledges one
    /// round's worth of a window of `cwnd` (at most the BDP's worth is delivered per round,
    /// the rest queues) and returns the new window.
    struct Path {
        now: Instant,
        bw: u64,
        rtt_us: u64,
        /// Bytes acknowledged so far (the sequence space, from 0).
        seq: u32,
    }

    impl Path {
        /// One round with a window of `cwnd`: the whole window is delivered, in one base RTT
        /// if it fits the BDP, else in the time the bottleneck takes (the rest queued).
        fn round(&mut self, b: &mut Bbr, cwnd: u32, app_limited: bool) -> u32 {
            let rtt = self.rtt_us.max(u64::from(cwnd) * 1_000_000 / self.bw);
            self.now = self.now.add_micros(rtt);
            self.seq = self.seq.wrapping_add(cwnd);
            ack(b, self.now, cwnd, cwnd, Some(rtt), app_limited, self.seq)
        }
    }

    /// An ACK up to `seq` (everything sent so far: the next window goes after it).
    fn ack(
        b: &mut Bbr,
        now: Instant,
        acked: u32,
        cwnd: u32,
        rtt_us: Option<u64>,
        app_limited: bool,
        seq: u32,
    ) -> u32 {
        b.on_ack(
            &AckSample {
                now,
                acked,
                sacked: 0,
                inflight: cwnd,
                ack: seq,
                snd_max: seq,
                rtt_us,
                app_limited,
            },
            cwnd,
            MSS,
            10 * MSS,
        )
    }

    /// A path of 10 MB/s and 10 ms (a BDP of 100,000 bytes), fresh.
    fn path() -> Path {
        Path {
            now: Instant::from_secs(1),
            bw: 10_000_000,
            rtt_us: 10_000,
            seq: 0,
        }
    }

    /// [`path`] after 40 rounds from the initial window: the model in ProbeBW, and its window.
    fn steady() -> (Path, Bbr, u32) {
        let (mut p, mut b, mut cwnd) = (path(), Bbr::default(), 10 * MSS);
        for _ in 0..40 {
            cwnd = p.round(&mut b, cwnd, false);
        }
        (p, b, cwnd)
    }

    #[test]
    fn startup_grows_then_settles_at_two_bdp() {
        let mut p = path();
        let mut b = Bbr::default();
        let mut cwnd = 10 * MSS;
        let mut rounds = 0;
        while b.mode == Mode::Startup && rounds < 40 {
            cwnd = p.round(&mut b, cwnd, false);
            rounds += 1;
        }
        assert!(
            b.filled_pipe,
            "startup found the plateau in {rounds} rounds"
        );
        assert!(rounds < 20, "{rounds} rounds");
        assert_eq!(b.min_rtt_us, 10_000);
        let bw_err = b.btl_bw.abs_diff(10_000_000);
        assert!(bw_err < 1_000_000, "bandwidth {}", b.btl_bw);
        for _ in 0..20 {
            cwnd = p.round(&mut b, cwnd, false);
        }
        assert_eq!(b.mode, Mode::ProbeBw);
        // 2 BDP + 3 segments of allowance, give or take the estimate's error.
        assert!(
            (190_000..=215_000).contains(&cwnd),
            "steady window {cwnd} for a BDP of 100,000"
        );
    }

    #[test]
    fn loss_does_not_shrink_the_window_a_timeout_does_until_delivered() {
        let (p, mut b, cwnd) = steady();
        let steady = cwnd;
        assert!(steady > 150_000, "{steady}");
        // Fast recovery: the window is the model's, loss or not (the connection keeps it).
        // A timeout with 150,000 bytes out: one segment until they are all delivered.
        b.on_rto(cwnd, 150_000);
        let mut now = p.now.add_micros(10_000);
        // The retransmission fills the hole: the ACK covers 100,000 of them, not all yet.
        let w = ack(
            &mut b,
            now,
            100_000,
            MSS,
            None,
            false,
            p.seq.wrapping_add(100_000),
        );
        assert!(w < steady, "restored early: {w}");
        assert!(w >= 100_000, "grows by what is delivered: {w}");
        now = now.add_micros(10_000);
        let w = ack(
            &mut b,
            now,
            50_000,
            w,
            None,
            false,
            p.seq.wrapping_add(150_000),
        );
        assert_eq!(w, steady, "the window from before the timeout");
    }

    #[test]
    fn app_limited_rounds_keep_the_estimate() {
        let (mut p, mut b, mut cwnd) = steady();
        let bw = b.btl_bw;
        // Thirty rounds in which the application sends little: the rate samples are low, but
        // they neither lower the estimate nor age the real ones out.
        for _ in 0..30 {
            p.round(&mut b, 5 * MSS, true);
        }
        assert_eq!(b.btl_bw, bw);
        // Rounds that use the path do age them: after ten rounds at half the rate the
        // estimate follows.
        p.bw /= 2;
        for _ in 0..12 {
            cwnd = p.round(&mut b, cwnd, false);
        }
        assert!(
            b.btl_bw < bw * 6 / 10,
            "estimate {} after the path halved from {bw}",
            b.btl_bw
        );
    }

    #[test]
    fn probe_rtt_after_ten_seconds_then_back() {
        let (mut p, mut b, mut cwnd) = steady();
        let steady = cwnd;
        // The standing queue of a 2-BDP window keeps every sample above the minimum: after
        // 10 s it lapses and ProbeRTT takes the window down to 4 segments.
        let mut saw_probe = false;
        for _ in 0..1000 {
            cwnd = p.round(&mut b, cwnd, false);
            if b.mode == Mode::ProbeRtt {
                saw_probe = true;
                assert!(cwnd <= MIN_PIPE_SEGS * MSS, "ProbeRTT window {cwnd}");
            } else if saw_probe {
                break;
            }
        }
        assert!(saw_probe, "no ProbeRTT in 1000 rounds");
        assert_eq!(b.mode, Mode::ProbeBw);
        assert!(cwnd >= steady, "window {cwnd} after ProbeRTT, was {steady}");
        assert_eq!(b.min_rtt_us, 10_000, "the minimum seen in ProbeRTT");
    }

    #[test]
    fn a_small_early_estimate_does_not_pace_startup_below_the_window_rate() {
        // A few small requests: application-limited rounds of 200 bytes a second.
        let mut b = Bbr::default();
        let mut now = Instant::from_secs(1);
        let mut seq = 0u32;
        for _ in 0..5 {
            now = now.add_micros(1_000_000);
            seq = seq.wrapping_add(200);
            let s = AckSample {
                now,
                acked: 200,
                sacked: 0,
                inflight: 0,
                ack: seq,
                snd_max: seq,
                rtt_us: Some(10_000),
                app_limited: true,
            };
            b.on_ack(&s, 10 * MSS, MSS, 10 * MSS);
        }
        assert!(b.btl_bw > 0 && b.btl_bw < 1_000, "estimate {}", b.btl_bw);
        assert!(!b.filled_pipe);
        // A bulk transfer follows: paced at the window's rate times Startup's gain at least
        // (10 segments per 10 ms RTT: 1 MB/s, times 2.885), not at 200 B/s.
        let rate = b.pacing_rate(10 * MSS, 10_000).unwrap();
        assert!(rate >= 2_800_000, "pacing rate {rate}");
        // Without an RTT sample, nothing is paced before the first bandwidth sample.
        assert_eq!(Bbr::default().pacing_rate(10 * MSS, 0), None);
    }

    #[test]
    fn conservation_lets_out_what_each_ack_delivers_sacked_bytes_included() {
        let (p, mut b, cwnd) = steady();
        // Recovery while still in Startup (a fresh model that has seen one RTT).
        let mut b2 = Bbr::default();
        b2.update_min_rtt(p.now, 10_000);
        let w = b2.enter_recovery(p.now, 100 * MSS, 60 * MSS, MSS);
        assert_eq!(w, 60 * MSS, "the window starts at what is in flight");
        // A duplicate ACK whose SACK block reports 3 segments: 3 more may go.
        let s = AckSample {
            now: p.now.add_micros(1_000),
            acked: 0,
            sacked: 3 * MSS,
            inflight: 57 * MSS,
            ack: 0,
            snd_max: 0,
            rtt_us: None,
            app_limited: false,
        };
        assert_eq!(b2.on_ack(&s, w, MSS, 10 * MSS), 60 * MSS);
        // After a round trip the window grows back, and recovery's end restores the old one.
        let s = AckSample {
            now: p.now.add_micros(20_000),
            sacked: 4 * MSS,
            inflight: 50 * MSS,
            ..s
        };
        let w = b2.on_ack(&s, 60 * MSS, MSS, 10 * MSS);
        assert!(w > 51 * MSS, "{w}");
        assert_eq!(b2.exit_recovery(w), 100 * MSS);
        // In ProbeBW (the pipe was full), recovery keeps the window: loss is not congestion.
        assert_eq!(b.enter_recovery(p.now, cwnd, 10 * MSS, MSS), cwnd);
    }
}
