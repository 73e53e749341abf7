//! TCP configuration: every limit of the engine, bounded and settable from the daemon's TOML.

use serde::Deserialize;

/// Congestion control algorithm.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438), the default as in Linux.
    #[default]
    Cubic,
    /// NewReno (RFC 5681, RFC 6582).
    #[value(name = "newreno")]
    NewReno,
    /// BBR version 1 (see the `bbr` module): paced at the bottleneck bandwidth it measures,
    /// with a window of two bandwidth-delay products that loss does not shrink. For lossy paths.
    Bbr,
}

/// When to answer a SYN with a SYN cookie (RFC 4987) instead of keeping state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// Only when the listener's SYN backlog (or the flow table) is full.
    #[default]
    Auto,
    /// For every SYN: the server keeps no state before the handshake completes.
    Always,
    /// Never: SYNs beyond the backlog are dropped.
    Never,
}

/// TCP keepalive (RFC 9293 §3.8.4). Off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Idle time before the first probe, in milliseconds.
    pub idle_ms: u64,
    /// Time between unanswered probes, in milliseconds.
    pub interval_ms: u64,
    /// Unanswered probes before the connection is closed with `CloseReason::KeepaliveTimeout`.
    pub probes: u32,
}

/// Configuration of one [`super::Tcp`] engine (one per worker). Every field has a default;
/// in TOML, give only the ones to change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// The MSS we advertise and the largest segment we send (further clamped by `mtu` − 40).
    pub mss: u16,
    /// Path MTU of the link (IPv4 + TCP headers + payload).
    pub mtu: u16,
    /// Most connections (all states, TIME_WAIT included); the flow table is preallocated for it.
    pub max_flows: usize,
    /// Most listening ports.
    pub max_listeners: usize,
    /// Per listener: most connections in SYN_RECEIVED before SYN cookies (or drops) take over.
    pub syn_backlog: u32,
    /// Per listener: most established connections whose `Accepted` event is not yet polled.
    pub accept_backlog: u32,
    /// Per-connection send buffer, in bytes.
    pub send_buf: usize,
    /// Per-connection receive buffer, in bytes (also the largest window advertised).
    pub recv_buf: usize,
    /// Out-of-order data kept per connection: most distinct ranges (at most 4096); 0, the
    /// default, allows one per two segments of `recv_buf`, every hole a full window can have.
    /// Data that would need a range beyond it is dropped and comes again. (The scoreboard of
    /// SACKed ranges of sent data follows `send_buf` the same way.)
    pub ooo_max_ranges: usize,
    /// First port of the ephemeral range used by `connect`.
    pub ephemeral_first: u16,
    /// Last port (inclusive) of the ephemeral range.
    pub ephemeral_last: u16,
    /// TIME_WAIT duration (2·MSL), in milliseconds.
    pub time_wait_ms: u64,
    /// Most connections in TIME_WAIT; beyond it, closing connections skip TIME_WAIT (as Linux).
    pub max_time_wait: usize,
    /// FIN_WAIT_2 timeout for connections the application has closed, in milliseconds.
    pub fin_wait2_timeout_ms: u64,
    /// Delayed ACK timeout in milliseconds (RFC 9293 §3.8.6.3: at most 500); 0 acks at once.
    pub delayed_ack_ms: u64,
    /// Lower bound of the retransmission timeout, in milliseconds.
    pub rto_min_ms: u64,
    /// Upper bound of the retransmission timeout, in milliseconds.
    pub rto_max_ms: u64,
    /// Initial retransmission timeout (RFC 6298: 1 s), in milliseconds.
    pub rto_initial_ms: u64,
    /// Retransmissions of data or FIN before the connection closes with `CloseReason::Timeout`.
    pub max_retries: u32,
    /// Retransmissions of a SYN or SYN-ACK before giving up.
    pub max_syn_retries: u32,
    /// Longest a connection may wait on a closed window (persisting: zero-window probes
    /// answered with a zero window, or not answered) without the peer taking any data, in
    /// milliseconds; then it is reset (`CloseReason::PersistTimeout`). Reclaims connections
    /// that never read (sockstress). 0: wait forever, as Linux without `TCP_USER_TIMEOUT`.
    pub persist_timeout_ms: u64,
    /// Keepalive; `None` (the default) disables it.
    pub keepalive: Option<Keepalive>,
    /// Congestion control.
    pub congestion: Congestion,
    /// Initial congestion window in segments (RFC 6928: 10).
    pub initial_cwnd: u32,
    /// With BBR: space data segments at BBR's pacing rate (true, the default) instead of sending
    /// whatever the window allows at once.
    pub pacing: bool,
    /// Offer and accept window scaling (RFC 7323); the shift follows from `recv_buf`.
    pub window_scale: bool,
    /// Offer and accept SACK (RFC 2018).
    pub sack: bool,
    /// Offer and accept timestamps (RFC 7323).
    pub timestamps: bool,
    /// SYN cookie policy.
    pub syn_cookies: SynCookies,
    /// Per connection: most challenge ACKs (RFC 5961) per second.
    pub challenge_ack_limit: u32,
    /// Most RSTs per second sent for segments to closed ports.
    pub rst_rate: u32,
    /// Most pending events (accept, readable, …) not yet polled; beyond it events are dropped
    /// and counted, except `Closed`, which the application needs to release what it holds
    /// (at most `max_flows` more).
    pub max_events: usize,
    /// Most pending stateless replies (RSTs, cookie SYN-ACKs) not yet transmitted.
    pub max_control: usize,
    /// Connections whose buffers are allocated when the engine is created (the rest are
    /// allocated on first use and recycled).
    pub prealloc_buffers: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            mss: 1460,
            mtu: 1500,
            max_flows: 16384,
            max_listeners: 64,
            syn_backlog: 1024,
            accept_backlog: 1024,
            send_buf: 64 * 1024,
            recv_buf: 64 * 1024,
            ooo_max_ranges: 0,
            ephemeral_first: 32768,
            ephemeral_last: 60999,
            time_wait_ms: 60_000,
            max_time_wait: 8192,
            fin_wait2_timeout_ms: 60_000,
            delayed_ack_ms: 40,
            rto_min_ms: 200,
            rto_max_ms: 120_000,
            rto_initial_ms: 1000,
            max_retries: 15,
            max_syn_retries: 5,
            persist_timeout_ms: 60_000,
            keepalive: None,
            congestion: Congestion::Cubic,
            initial_cwnd: 10,
            pacing: true,
            window_scale: true,
            sack: true,
            timestamps: true,
            syn_cookies: SynCookies::Auto,
            challenge_ack_limit: 10,
            rst_rate: 1000,
            max_events: 65536,
            max_control: 1024,
            prealloc_buffers: 0,
        }
    }
}

impl TcpConfig {
    /// The MSS we advertise: `mss` clamped by the MTU.
    pub fn effective_mss(&self) -> u16 {
        self.mss.min(self.mtu.saturating_sub(40)).max(64)
    }

    /// The window shift we offer: the smallest that lets `recv_buf` be advertised.
    pub fn window_shift(&self) -> u8 {
        let mut s = 0u8;
        while s < 14 && (self.recv_buf >> s) > 0xffff {
            s += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_some_fields() {
        let c: TcpConfig = toml::from_str(
            "mss = 1200\ncongestion = \"newreno\"\nsyn_cookies = \"always\"\n\
             [keepalive]\nidle_ms = 1000\ninterval_ms = 100\nprobes = 3\n",
        )
        .unwrap();
        assert_eq!(c.mss, 1200);
        assert_eq!(c.congestion, Congestion::NewReno);
        assert_eq!(c.syn_cookies, SynCookies::Always);
        assert_eq!(
            c.keepalive,
            Some(Keepalive {
                idle_ms: 1000,
                interval_ms: 100,
                probes: 3
            })
        );
        assert_eq!(c.recv_buf, TcpConfig::default().recv_buf);
        assert!(toml::from_str::<TcpConfig>("bogus = 1").is_err());
    }

    #[test]
    fn shift_and_mss() {
        let mut c = TcpConfig {
            recv_buf: 65535,
            ..TcpConfig::default()
        };
        assert_eq!(c.window_shift(), 0);
        c.recv_buf = 65536;
        assert_eq!(c.window_shift(), 1);
        c.recv_buf = 4 << 20;
        assert_eq!(c.window_shift(), 7);
        c.mtu = 1280;
        assert_eq!(c.effective_mss(), 1240);
    }
}
