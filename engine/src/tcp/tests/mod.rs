//! TCP engine tests, in smoltcp's style: per-state factories, segment templates, and the
//! `send!` / `recv!` / `recv_nothing!` macros, with exact segments in and out.

use super::*;
use crate::wire::tcp::{flags::*, SackBlock, TcpOptions, TcpRepr, Timestamps};

mod active;

mod interop;
mod options;
mod passive;
mod probes;
mod recovery_timers;
mod reliability;
mod security;

pub(crate) const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub(crate) const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(crate) const LPORT: u16 = 80;
pub(crate) const RPORT: u16 = 49500;
/// Our ISN (fixed through `Tcp::test_isn`).
pub(crate) const LOCAL_SEQ: u32 = 10_000;
/// The peer's ISN.
pub(crate) const REMOTE_SEQ: u32 = 50_000;
pub(crate) const SECRET: [u8; 32] = [7; 32];

/// A segment from the peer (to be adjusted with `..SEND_TEMPL`).
pub(crate) const SEND_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: RPORT,
    dst_port: LPORT,
    seq: 0,
    ack: 0,
    flags: ACK,
    window: 256,
    urgent: 0,
    options: TcpOptions::NONE,
    payload: &[],
};

/// A segment we send (to be adjusted with `..RECV_TEMPL`).
pub(crate) const RECV_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: LPORT,
    dst_port: RPORT,
    seq: 0,
    ack: 0,
    flags: ACK,
    window: 64,
    urgent: 0,
    options: TcpOptions::NONE,
    payload: &[],
};

/// Options of our SYN-ACK in the default test configuration.
pub(crate) const MSS_ONLY: TcpOptions = TcpOptions {
    mss: Some(1460),
    ..TcpOptions::NONE
};

/// The test configuration: 64-byte buffers, no window scale / SACK / timestamps, immediate
/// ACKs, one ephemeral port (80), no cookies unless a test asks.
pub(crate) fn cfg() -> TcpConfig {
    TcpConfig {
        max_flows: 8,
        send_buf: 64,
        recv_buf: 64,
        window_scale: false,
        sack: false,
        timestamps: false,
        delayed_ack_ms: 0,
        ephemeral_first: LPORT,
        ephemeral_last: LPORT,
        syn_cookies: SynCookies::Never,
        max_events: 64,
        ..TcpConfig::default()
    }
}

/// An engine under test with its virtual clock (milliseconds).
pub(crate) struct T {
    pub(crate) tcp: Tcp,
    pub(crate) now: Instant,
}

impl T {
    pub(crate) fn new(cfg: TcpConfig) -> Self {
        let mut tcp = Tcp::new(cfg, SECRET);
        tcp.test_isn = Some(LOCAL_SEQ);
        tcp.test_ts_offset = Some(0);
        T {
            tcp,
            now: Instant::ZERO,
        }
    }

    pub(crate) fn at(&mut self, ms: u64) {
        self.now = Instant::from_millis(ms);
        self.tcp.handle_timeout(self.now);
    }

    /// Hands `repr` (from REMOTE to LOCAL) to the engine.
    pub(crate) fn send(&mut self, repr: &TcpRepr<'_>) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf, REMOTE.octets(), LOCAL.octets())
            .unwrap();
        self.tcp.handle_segment(self.now, REMOTE, LOCAL, &buf);
    }

    /// The next segment the engine sends, checked (addresses, checksum) and parsed.
    pub(crate) fn recv<'b>(&mut self, buf: &'b mut [u8; 2048]) -> Option<TcpRepr<'b>> {
        let t = self.tcp.poll_transmit(self.now, &mut buf[..])?;
        assert_eq!((t.src, t.dst), (LOCAL, REMOTE), "addresses");
        let seg: &'b [u8] = &buf[..t.len];
        assert!(
            crate::wire::checksum::verify_transport(LOCAL.octets(), REMOTE.octets(), 6, seg),
            "checksum"
        );
        Some(TcpRepr::parse_bytes(seg).expect("we emit valid segments"))
    }

    pub(crate) fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.tcp.poll_event()).collect()
    }
}

macro_rules! send {
    ($t:expr, $repr:expr) => {
        $t.send(&$repr)
    };
    ($t:expr, time $ms:expr, $repr:expr) => {{
        $t.at($ms);
        $t.send(&$repr)
    }};
}

macro_rules! recv {
    ($t:expr, [$($repr:expr),* $(,)?]) => {{
        $( recv!($t, $repr); )*
        recv_nothing!($t);
    }};
    ($t:expr, time $ms:expr, $repr:expr) => {{
        $t.at($ms);
        recv!($t, $repr)
    }};
    ($t:expr, $repr:expr) => {{
        let mut buf = [0u8; 2048];
        let got = $t.recv(&mut buf).map(|r| r.to_owned_seg());
        assert_eq!(got, Some($crate::tcp::tests::OwnedSeg::from(&$repr)), "segment sent");
    }};
}

macro_rules! recv_nothing {
    ($t:expr) => {{
        let mut buf = [0u8; 2048];
        let got = $t.recv(&mut buf).map(|r| r.to_owned_seg());
        assert_eq!(got, None, "nothing should be sent");
    }};
    ($t:expr, time $ms:expr) => {{
        $t.at($ms);
        recv_nothing!($t)
    }};
}

pub(crate) use {recv, recv_nothing, send};

/// An owned copy of a segment, for comparisons outliving the transmit buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedSeg {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) flags: String,
    pub(crate) window: u16,
    pub(crate) options: TcpOptions,
    pub(crate) payload: Vec<u8>,
}

fn flag_names(f: u8) -> String {
    let names = [
        (SYN, "SYN"),
        (ACK, "ACK"),
        (FIN, "FIN"),
        (RST, "RST"),
        (PSH, "PSH"),
        (URG, "URG"),
    ];
    names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

impl From<&TcpRepr<'_>> for OwnedSeg {
    fn from(r: &TcpRepr<'_>) -> Self {
        OwnedSeg {
            src_port: r.src_port,
            dst_port: r.dst_port,
            seq: r.seq,
            ack: if r.flags & ACK != 0 { r.ack } else { 0 },
            flags: flag_names(r.flags),
            window: r.window,
            options: r.options,
            payload: r.payload.to_vec(),
        }
    }
}

pub(crate) trait ToOwnedSeg {
    fn to_owned_seg(&self) -> OwnedSeg;
}

impl ToOwnedSeg for TcpRepr<'_> {
    fn to_owned_seg(&self) -> OwnedSeg {
        OwnedSeg::from(self)
    }
}

// ---- factories -------------------------------------------------------------------------

pub(crate) fn tcp_listen_with(cfg: TcpConfig) -> T {
    let mut t = T::new(cfg);
    t.tcp.listen(LPORT).unwrap();
    t
}

pub(crate) fn tcp_listen() -> T {
    tcp_listen_with(cfg())
}

pub(crate) fn syn() -> TcpRepr<'static> {
    TcpRepr {
        flags: SYN,
        seq: REMOTE_SEQ,
        ack: 0,
        ..SEND_TEMPL
    }
}

pub(crate) fn tcp_syn_received() -> T {
    let mut t = tcp_listen();
    send!(t, syn());
    recv!(
        t,
        TcpRepr {
            flags: SYN | ACK,
            seq: LOCAL_SEQ,
            ack: REMOTE_SEQ + 1,
            options: MSS_ONLY,
            ..RECV_TEMPL
        }
    );
    t
}

/// Established (passive), the `Accepted` event consumed.
pub(crate) fn tcp_established() -> (T, ConnId) {
    let mut t = tcp_syn_received();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    let ev = t.events();
    let conn = match ev.as_slice() {
        [Event::Accepted {
            conn,
            listen_port: LPORT,
        }] => *conn,
        other => panic!("expected Accepted, got {other:?}"),
    };
    assert_eq!(t.tcp.state(conn), Some(State::Established));
    recv_nothing!(t);
    (t, conn)
}

/// CLOSE_WAIT: the peer's FIN received and acknowledged.
pub(crate) fn tcp_close_wait() -> (T, ConnId) {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 2,
            window: 63,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::CloseWait));
    assert_eq!(
        t.events(),
        vec![Event::Readable { conn: c }, Event::PeerClosed { conn: c }]
    );
    (t, c)
}

/// LAST_ACK: CLOSE_WAIT, then our FIN sent.
pub(crate) fn tcp_last_ack() -> (T, ConnId) {
    let (mut t, c) = tcp_close_wait();
    t.tcp.close(c).unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: FIN | ACK,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 2,
            window: 63,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::LastAck));
    (t, c)
}

/// FIN_WAIT_1: established, then our FIN sent.
pub(crate) fn tcp_fin_wait_1() -> (T, ConnId) {
    let (mut t, c) = tcp_established();
    t.tcp.shutdown(c).unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: FIN | ACK,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::FinWait1));
    (t, c)
}

/// FIN_WAIT_2: our FIN acknowledged.
pub(crate) fn tcp_fin_wait_2() -> (T, ConnId) {
    let (mut t, c) = tcp_fin_wait_1();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.state(c), Some(State::FinWait2));
    (t, c)
}

/// CLOSING: our FIN sent, the peer's FIN received before the ACK of ours.
pub(crate) fn tcp_closing() -> (T, ConnId) {
    let (mut t, c) = tcp_fin_wait_1();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 2,
            ack: REMOTE_SEQ + 2,
            window: 63,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::Closing));
    (t, c)
}

/// TIME_WAIT (entered from FIN_WAIT_2 at t = 0).
pub(crate) fn tcp_time_wait() -> (T, ConnId) {
    let (mut t, c) = tcp_fin_wait_2();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 2,
            ack: REMOTE_SEQ + 2,
            window: 63,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::TimeWait));
    t.events();
    (t, c)
}

/// SYN_SENT (active open to REMOTE:RPORT from LOCAL:80).
pub(crate) fn tcp_syn_sent_with(cfg: TcpConfig) -> (T, ConnId) {
    let mut t = T::new(cfg);
    let c = t
        .tcp
        .connect(t.now, LOCAL, SocketAddrV4::new(REMOTE, RPORT))
        .unwrap();
    assert_eq!(t.tcp.state(c), Some(State::SynSent));
    (t, c)
}

pub(crate) fn our_syn() -> TcpRepr<'static> {
    TcpRepr {
        flags: SYN,
        seq: LOCAL_SEQ,
        ack: 0,
        options: MSS_ONLY,
        ..RECV_TEMPL
    }
}

pub(crate) fn tcp_syn_sent() -> (T, ConnId) {
    let (mut t, c) = tcp_syn_sent_with(cfg());
    recv!(t, [our_syn()]);
    (t, c)
}

/// Established (active), the `Connected` event consumed.
pub(crate) fn tcp_established_active() -> (T, ConnId) {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: SYN | ACK,
            seq: REMOTE_SEQ,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.events(), vec![Event::Connected { conn: c }]);
    assert_eq!(t.tcp.state(c), Some(State::Established));
    (t, c)
}
