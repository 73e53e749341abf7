//! Congestion control: slow start (with HyStart++, RFC 9406) and congestion avoidance with
//! NewReno (RFC 5681) or CUBIC (RFC 9438). Loss recovery itself (fast retransmit, NewReno partial ACKs, RFC 6582) is driven
//! by the connection; this module owns `cwnd` and `ssthresh`. With BBR ([`super::bbr`]) the
//! window comes from a model of the path instead, and loss does not shrink it.

use super::bbr::{AckSample, Bbr};
use super::config::Congestion;
use crate::time::Instant;

/// CUBIC's multiplicative decrease factor (RFC 9438 §4.6).
const BETA: f64 = 0.7;
/// CUBIC's scaling constant (RFC 9438 §5).
const C: f64 = 0.4;
pub(crate) const MAX_CWND: u32 = 1 << 30;

#[derive(Debug, Clone)]
pub(crate) struct Cc {
    algo: Congestion,
    mss: u32,
    /// Congestion window, bytes.
    pub(crate) cwnd: u32,
    /// Slow start threshold, bytes.
    pub(crate) ssthresh: u32,
    /// NewReno congestion avoidance byte counter (RFC 5681 §3.1, appropriate byte counting).
    acc: u32,
    /// CUBIC: window before the last reduction, in segments.
    w_max: f64,
    /// CUBIC: time to reach `w_max` again, seconds.
    k: f64,
    /// CUBIC: start of the current avoidance epoch.
    epoch: Option<Instant>,
    /// CUBIC: Reno-friendly estimate, segments.
    w_est: f64,
    /// CUBIC: fractional window, segments.
    cwnd_f: f64,
    /// The initial window, bytes (BBR grows past its target until this much is delivered).
    initial: u32,
    /// BBR's model, with BBR only: boxed so that the other algorithms' connections do not
    /// carry (and reset) its 200 bytes; the box stays with the connection slot
    /// ([`Cc::reuse_bbr`]), so it is allocated once per slot, not per connection.
    pub(crate) bbr: Option<Box<Bbr>>,
    /// HyStart++ (RFC 9406), slow start's exit before the queue overflows.
    hs: HyStart,
}

/// HyStart++ (RFC 9406): in slow start, the minimum RTT of each round's first samples; when it
/// grows by a threshold (an eighth of the last round's, between 4 and 16 ms) a queue is
/// building, and slow start turns conservative (a quarter of the growth), then ends after
/// five such rounds, before the queue overflows. A round whose minimum falls back below the
/// baseline resumes slow start.
#[derive(Debug, Clone, Copy)]
struct HyStart {
    /// The round ends when this is acknowledged (`None`: before the first).
    window_end: Option<u32>,
    last_min_us: u64,
    cur_min_us: u64,
    samples: u32,
    /// Conservative slow start: its baseline minimum RTT and the rounds spent in it.
    css: Option<(u64, u32)>,
}

impl Default for HyStart {
    fn default() -> Self {
        HyStart {
            window_end: None,
            last_min_us: u64::MAX,
            cur_min_us: u64::MAX,
            samples: 0,
            css: None,
        }
    }
}

/// RTT samples per round before a decision (RFC 9406 `N_RTT_SAMPLE`).
const HS_SAMPLES: u32 = 8;
/// Bounds of the RTT growth that means a queue (RFC 9406 `MIN_RTT_THRESH`, `MAX_RTT_THRESH`).
const HS_MIN_THRESH_US: u64 = 4_000;
const HS_MAX_THRESH_US: u64 = 16_000;
/// Conservative slow start: growth divisor and rounds (`CSS_GROWTH_DIVISOR`, `CSS_ROUNDS`).
const HS_CSS_DIVISOR: u32 = 4;
const HS_CSS_ROUNDS: u32 = 5;

impl Cc {
    /// Initial state: `initial` segments of `mss` bytes, unbounded ssthresh.
    pub(crate) fn new(algo: Congestion, mss: u32, initial: u32) -> Self {
        let mss = mss.max(1);
        Cc {
            algo,
            mss,
            cwnd: initial.max(1).saturating_mul(mss),
            ssthresh: u32::MAX,
            acc: 0,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            w_est: 0.0,
            cwnd_f: 0.0,
            initial: initial.max(1).saturating_mul(mss),
            bbr: None,
            hs: HyStart::default(),
        }
    }

    /// With BBR, a fresh model in `spare` (the slot's box from its previous connection) or a
    /// new box the first time.
    pub(crate) fn reuse_bbr(&mut self, spare: Option<Box<Bbr>>) {
        if self.is_bbr() {
            let mut b = spare.unwrap_or_default();
            *b = Bbr::default();
            self.bbr = Some(b);
        }
    }

    /// True with BBR: the connection reports every acknowledgment to [`Cc::on_delivery`].
    #[inline]
    pub(crate) fn is_bbr(&self) -> bool {
        self.algo == Congestion::Bbr
    }

    /// BBR: an acknowledgment (cumulative or SACK, in recovery or not) updates the model and
    /// sets the window.
    pub(crate) fn on_delivery(&mut self, s: &AckSample) {
        if let Some(b) = &mut self.bbr {
            self.cwnd = b.on_ack(s, self.cwnd, self.mss, self.initial);
        }
    }

    /// BBR: loss recovery starts with `inflight` bytes in the network (packet conservation,
    /// see [`super::bbr`]), or ends. Nothing for the other algorithms.
    pub(crate) fn bbr_recovery(&mut self, now: Instant, start: bool, inflight: u32) {
        if let Some(b) = &mut self.bbr {
            self.cwnd = if start {
                b.enter_recovery(now, self.cwnd, inflight, self.mss)
            } else {
                b.exit_recovery(self.cwnd)
            };
        }
    }

    /// SACK loss recovery (RFC 6675 §5) starts or ends: the window is `ssthresh` (BBR keeps
    /// its own).
    pub(crate) fn sack_recovery_window(&mut self) {
        if !self.is_bbr() {
            self.cwnd = self.ssthresh;
        }
    }

    /// Sets the segment size (after option negotiation), keeping the window in segments.
    pub(crate) fn set_mss(&mut self, mss: u32) {
        let mss = mss.max(1);
        let segs = (self.cwnd / self.mss).max(1);
        self.initial = (self.initial / self.mss).max(1).saturating_mul(mss);
        self.mss = mss;
        self.cwnd = segs.saturating_mul(mss).min(MAX_CWND);
    }

    /// True while HyStart++ may end slow start: the initial one, not BBR.
    #[inline]
    pub(crate) fn hystart_active(&self) -> bool {
        !self.is_bbr() && self.ssthresh == u32::MAX
    }

    /// In slow start: an acknowledgment up to `ack`, with `snd_nxt` the next byte to send and
    /// an RTT sample if it gave one, for HyStart++ (call before [`Cc::on_ack`]).
    ///
    /// Only the initial slow start (`ssthresh` still at its initial, infinite value) uses it,
    /// as RFC 9406 §4.3 asks: later ones stop at the `ssthresh` a loss set. It needs
    /// `HS_SAMPLES` RTT samples per round: every ACK gives one, from its timestamp echo or,
    /// without timestamps, from the send time of the latest segment it covers.
    pub(crate) fn slow_start_sample(&mut self, ack: u32, snd_nxt: u32, rtt_us: Option<u64>) {
        if !self.hystart_active() || self.cwnd >= self.ssthresh {
            return;
        }
        let h = &mut self.hs;
        if h.window_end.is_none_or(|end| super::seq::ge(ack, end)) {
            if let Some((_, rounds)) = &mut h.css {
                *rounds += 1;
                if *rounds >= HS_CSS_ROUNDS {
                    // RFC 9406 §4.2: enough rounds of a growing queue: slow start ends.
                    self.ssthresh = self.cwnd;
                    h.css = None;
                }
            }
            h.last_min_us = h.cur_min_us;
            h.cur_min_us = u64::MAX;
            h.samples = 0;
            h.window_end = Some(snd_nxt);
        }
        let Some(rtt) = rtt_us else { return };
        h.cur_min_us = h.cur_min_us.min(rtt);
        h.samples += 1;
        if h.samples < HS_SAMPLES || h.last_min_us == u64::MAX {
            return;
        }
        match h.css {
            None => {
                let thresh = (h.last_min_us / 8).clamp(HS_MIN_THRESH_US, HS_MAX_THRESH_US);
                if h.cur_min_us >= h.last_min_us.saturating_add(thresh) {
                    h.css = Some((h.cur_min_us, 0));
                }
            }
            // The RTT came back down: the growth was a spurious, slow start resumes.
            Some((baseline, _)) if h.cur_min_us < baseline => h.css = None,
            Some(_) => {}
        }
    }

    /// New data acknowledged outside recovery.
    pub(crate) fn on_ack(&mut self, now: Instant, acked: u32, srtt_us: u32) {
        if self.is_bbr() {
            return;
        }
        if self.cwnd < self.ssthresh {
            // Slow start with appropriate byte counting: L = 8·SMSS in the initial one, as
            // RFC 9406 §4.3 recommends for a sender that does not pace (a stretch ACK after a
            // lost one still counts), a quarter of that in HyStart++'s conservative phase;
            // L = 2·SMSS after a loss (RFC 3465).
            let l = if self.ssthresh == u32::MAX { 8 } else { 2 };
            let mut inc = acked.min(l * self.mss);
            if self.hs.css.is_some() {
                inc /= HS_CSS_DIVISOR;
            }
            self.cwnd = self.cwnd.saturating_add(inc).min(MAX_CWND);
            return;
        }
        match self.algo {
            Congestion::Bbr => {}
            Congestion::NewReno => {
                self.acc = self.acc.saturating_add(acked);
                if self.acc >= self.cwnd {
                    self.acc -= self.cwnd;
                    self.cwnd = self.cwnd.saturating_add(self.mss).min(MAX_CWND);
                }
            }
            Congestion::Cubic => self.cubic_ack(now, acked, srtt_us),
        }
    }

    fn cubic_ack(&mut self, now: Instant, acked: u32, srtt_us: u32) {
        let mss = self.mss as f64;
        let cwnd = self.cwnd as f64 / mss;
        let epoch = match self.epoch {
            Some(e) => e,
            None => {
                self.epoch = Some(now);
                if cwnd < self.w_max {
                    self.k = ((self.w_max - cwnd) / C).cbrt();
                } else {
                    self.k = 0.0;
                    self.w_max = cwnd;
                }
                self.w_est = cwnd;
                self.cwnd_f = cwnd;
                now
            }
        };
        let t = (now - epoch).as_secs_f64() + srtt_us as f64 / 1e6;
        let target = (C * (t - self.k).powi(3) + self.w_max).clamp(cwnd, 1.5 * cwnd);
        let segs = acked as f64 / mss;
        // Reno-friendly region (RFC 9438 §4.3).
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * segs / cwnd.max(1.0);
        if self.cwnd_f < cwnd {
            self.cwnd_f = cwnd;
        }
        if target < self.w_est {
            self.cwnd_f = self.w_est;
        } else {
            self.cwnd_f += (target - cwnd) / cwnd.max(1.0) * segs;
        }
        self.cwnd = ((self.cwnd_f * mss) as u32).clamp(self.mss, MAX_CWND);
    }

    /// A loss detected by duplicate ACKs or SACK: sets `ssthresh` (and CUBIC's state) from the
    /// data in flight; the caller inflates `cwnd` for recovery.
    pub(crate) fn on_loss(&mut self, flight: u32) {
        // Slow start is over, and HyStart++ with it: later slow starts end at the ssthresh
        // set here (RFC 9406 §4.3).
        self.hs = HyStart::default();
        match self.algo {
            Congestion::Bbr => {}
            Congestion::NewReno => {
                self.ssthresh = (flight / 2).max(2 * self.mss);
            }
            Congestion::Cubic => {
                let cwnd = self.cwnd as f64 / self.mss as f64;
                // Fast convergence (RFC 9438 §4.7).
                self.w_max = if cwnd < self.w_max {
                    cwnd * (1.0 + BETA) / 2.0
                } else {
                    cwnd
                };
                self.ssthresh = ((self.cwnd as f64 * BETA) as u32).max(2 * self.mss);
                self.epoch = None;
            }
        }
        self.acc = 0;
    }

    /// A retransmission timeout: loss as above, then one segment (RFC 5681 §3.1). When the
    /// segment was already resent by the timer (`repeated`), ssthresh is held constant.
    pub(crate) fn on_rto(&mut self, flight: u32, repeated: bool) {
        if let Some(b) = &mut self.bbr {
            b.on_rto(self.cwnd, flight);
        }
        if !repeated {
            self.on_loss(flight);
        }
        self.cwnd = self.mss;
    }

    /// Fast recovery entered: `cwnd = ssthresh + 3·SMSS` (RFC 5681 §3.2 step 4).
    pub(crate) fn enter_recovery(&mut self) {
        if self.is_bbr() {
            return;
        }
        self.cwnd = self.ssthresh.saturating_add(3 * self.mss);
    }

    /// A further duplicate ACK in recovery: inflate by one segment.
    pub(crate) fn inflate(&mut self) {
        if self.is_bbr() {
            return;
        }
        self.cwnd = self.cwnd.saturating_add(self.mss).min(MAX_CWND);
    }

    /// A partial ACK in recovery (RFC 6582 §3.2 step 5): deflate by the amount acknowledged,
    /// add back one segment if at least one was acknowledged.
    pub(crate) fn partial_ack(&mut self, acked: u32) {
        if self.is_bbr() {
            return;
        }
        self.cwnd = self.cwnd.saturating_sub(acked);
        if acked >= self.mss {
            self.cwnd = self.cwnd.saturating_add(self.mss);
        }
        self.cwnd = self.cwnd.max(self.mss);
    }

    /// Full ACK ending recovery (RFC 6582 §3.2 step 3, option 1).
    pub(crate) fn exit_recovery(&mut self, flight: u32) {
        if self.is_bbr() {
            return;
        }
        self.cwnd = self
            .ssthresh
            .min(flight.max(self.mss) + self.mss)
            .max(self.mss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_newreno_avoidance() {
        let mut c = Cc::new(Congestion::NewReno, 1000, 10);
        assert_eq!(c.cwnd, 10_000);
        c.on_ack(Instant::ZERO, 1000, 0);
        assert_eq!(c.cwnd, 11_000);
        // Appropriate byte counting in the initial slow start: L = 8 SMSS (RFC 9406 §4.3).
        c.on_ack(Instant::ZERO, 10_000, 0);
        assert_eq!(c.cwnd, 19_000);
        c.cwnd = 13_000;
        c.on_loss(13_000);
        assert_eq!(c.ssthresh, 6500);
        c.enter_recovery();
        assert_eq!(c.cwnd, 9500);
        c.inflate();
        assert_eq!(c.cwnd, 10_500);
        c.partial_ack(2000);
        assert_eq!(c.cwnd, 9500);
        c.exit_recovery(4000);
        assert_eq!(c.cwnd, 5000);
        // Avoidance: one SMSS per cwnd of acknowledged bytes.
        c.cwnd = 6500;
        for _ in 0..6 {
            c.on_ack(Instant::ZERO, 1000, 0);
        }
        assert_eq!(c.cwnd, 6500);
        c.on_ack(Instant::ZERO, 1000, 0);
        assert_eq!(c.cwnd, 7500);
        c.on_rto(7500, false);
        assert_eq!((c.cwnd, c.ssthresh), (1000, 3750));
        // Slow start after a loss: ABC caps at 2 SMSS (RFC 3465).
        c.on_ack(Instant::ZERO, 5000, 0);
        assert_eq!(c.cwnd, 3000);
    }

    #[test]
    fn cubic_reduces_by_beta_and_regrows_to_wmax() {
        let mut c = Cc::new(Congestion::Cubic, 1000, 100);
        c.ssthresh = 50_000; // in avoidance
        c.on_loss(100_000);
        assert_eq!(c.ssthresh, 70_000);
        c.cwnd = c.ssthresh;
        // K = cbrt(100 * 0.3 / 0.4) ≈ 4.217 s: the window is back near w_max then.
        let mut now = Instant::ZERO;
        let mut at_k = 0;
        for ms in (0..8000).step_by(10) {
            now = Instant::from_millis(ms);
            c.on_ack(now, 7000, 10_000);
            if ms == 4200 {
                at_k = c.cwnd;
            }
        }
        assert!((95_000..=105_000).contains(&at_k), "cwnd at K: {at_k}");
        assert!(c.cwnd > 105_000, "convex growth past w_max: {}", c.cwnd);
        let _ = now;
    }

    /// Slow start over rounds of `cwnd` bytes, `rtt(round)` each ACK's RTT, one ACK per two
    /// segments of 1000 bytes; returns the rounds run before slow start ended (or `max`).
    /// (HyStart++'s own rounds end a couple of ACKs into these: it marks SND.NXT.)
    fn slow_start_rounds(c: &mut Cc, max: u32, rtt: impl Fn(u32) -> u64) -> u32 {
        let mut seq = 0u32;
        for round in 0..max {
            if c.cwnd >= c.ssthresh {
                return round;
            }
            let window = c.cwnd;
            let end = seq.wrapping_add(window);
            let mut acked = 0;
            while acked < window {
                acked += 2000;
                // Each ACK lets out twice what it acknowledged (slow start): SND.NXT runs ahead.
                let snd_nxt = end.wrapping_add(2 * acked);
                c.slow_start_sample(seq.wrapping_add(acked), snd_nxt, Some(rtt(round)));
                c.on_ack(Instant::ZERO, 2000, 10_000);
            }
            seq = end;
        }
        max
    }

    #[test]
    fn hystart_ends_slow_start_when_a_queue_builds() {
        // 10 ms of path, and from round 6 a queue: 6 ms more (over the 4 ms threshold).
        let mut c = Cc::new(Congestion::Cubic, 1000, 10);
        let rounds = slow_start_rounds(&mut c, 40, |r| if r < 6 { 10_000 } else { 16_000 });
        // Conservative slow start from round 6, then five rounds at a quarter of the growth.
        assert!(
            (10..=13).contains(&rounds),
            "slow start ended after {rounds} rounds"
        );
        // ssthresh is the window where slow start ended (avoidance may have added a little).
        assert!(c.ssthresh != u32::MAX && c.cwnd >= c.ssthresh);
        assert!(c.cwnd - c.ssthresh < 100_000, "{} {}", c.cwnd, c.ssthresh);
        // Without HyStart++ the window would have doubled every one of those rounds.
        assert!(c.cwnd < (10_000u32 << rounds) / 16, "cwnd {}", c.cwnd);
        eprintln!("slow start ended after {rounds} rounds at {} bytes", c.cwnd);
    }

    #[test]
    fn hystart_leaves_a_steady_rtt_alone_and_resumes_after_a_spurious_rise() {
        let mut c = Cc::new(Congestion::NewReno, 1000, 10);
        assert_eq!(slow_start_rounds(&mut c, 12, |_| 10_000), 12);
        assert_eq!(c.ssthresh, u32::MAX, "still in slow start");
        assert_eq!(c.cwnd, 10_000 << 12, "doubling every round");
        // A rise for one round (conservative), then the RTT is back: slow start again.
        let mut c = Cc::new(Congestion::Cubic, 1000, 10);
        let rounds = slow_start_rounds(
            &mut c,
            9,
            |r| if r == 4 || r == 5 { 20_000 } else { 10_000 },
        );
        assert_eq!(rounds, 9);
        assert!(c.hs.css.is_none());
        assert_eq!(c.ssthresh, u32::MAX);
        // It did turn conservative for a while: less than pure doubling.
        assert!(c.cwnd < 10_000 << 9, "cwnd {}", c.cwnd);
    }

    #[test]
    fn hystart_only_in_the_initial_slow_start() {
        // After a timeout, slow start runs up to the ssthresh the loss set, whatever the RTT
        // does (RFC 9406 §4.3): a queue that builds does not end it earlier.
        let mut c = Cc::new(Congestion::Cubic, 1000, 10);
        c.cwnd = 200_000;
        c.on_rto(200_000, false);
        let ssthresh = c.ssthresh;
        assert_eq!((c.cwnd, ssthresh), (1000, 140_000));
        let rounds = slow_start_rounds(&mut c, 40, |r| 10_000 + 10_000 * r as u64);
        assert!(c.hs.css.is_none(), "no conservative phase after a loss");
        assert_eq!(
            c.ssthresh, ssthresh,
            "slow start ended at the loss's ssthresh"
        );
        assert!(
            c.cwnd >= ssthresh && rounds <= 9,
            "{rounds} rounds, cwnd {}",
            c.cwnd
        );
    }
}
