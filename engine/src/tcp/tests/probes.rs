//! Regressions found by the differential probes against the Linux kernel
//! (`tests/netns_probes.rs`): each test pins the behaviour the probe showed to differ.

use super::*;

/// Passive open with the peer's SYN carrying `mss`, completed; the app sends `n` bytes with
/// Nagle off and the peer's window wide open. Returns the payload sizes sent.
fn segment_sizes(mss: Option<u16>, n: usize) -> Vec<usize> {
    let mut t = tcp_listen_with(TcpConfig {
        send_buf: 2048,
        ..cfg()
    });
    send!(
        t,
        TcpRepr {
            options: TcpOptions {
                mss,
                ..TcpOptions::NONE
            },
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    assert!(t.recv(&mut buf).is_some(), "SYN-ACK");
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 65535,
            ..SEND_TEMPL
        }
    );
    let c = match t.events().as_slice() {
        [Event::Accepted { conn, .. }] => *conn,
        other => panic!("expected Accepted, got {other:?}"),
    };
    t.tcp.set_nodelay(c, true).unwrap();
    assert_eq!(t.tcp.send(c, &vec![5u8; n]), Ok(n));
    let mut sizes = Vec::new();
    while let Some(r) = t.recv(&mut buf) {
        sizes.push(r.payload.len());
    }
    sizes
}

/// RFC 9293 §3.7.1 (MUST-16): the effective send MSS is the smaller of the peer's MSS and what
/// the path allows. Linux honours an MSS down to 48 (`tcp_min_snd_mss`, its guard against the
/// SACK-panic family, CVE-2019-11479); the engine used a floor of 64, so a peer announcing 48
/// got segments larger than it asked for.
#[test]
fn test_peer_mss_48_is_honoured() {
    assert_eq!(segment_sizes(Some(48), 100), vec![48, 48, 4]);
}

/// Below 48 the floor holds (as Linux): never absurdly small segments.
#[test]
fn test_tiny_peer_mss_is_floored_at_48() {
    for mss in [1, 8, 47] {
        assert_eq!(segment_sizes(Some(mss), 100), vec![48, 48, 4], "MSS {mss}");
    }
}

/// An MSS option of 0 is treated as absent, so the RFC 9293 §3.7.1 default of 536 applies
/// (MUST-15), as Linux does (`tcp_parse_options` ignores a zero MSS).
#[test]
fn test_peer_mss_0_means_default_536() {
    assert_eq!(segment_sizes(Some(0), 600), vec![536, 64]);
    assert_eq!(segment_sizes(None, 600), vec![536, 64]);
}

/// RFC 9293 §3.10.7.4: the RST bit is checked (second) before the SYN bit (fourth), and "if the
/// RST bit is set and the sequence number exactly matches the next expected sequence number
/// (RCV.NXT), then TCP endpoints MUST reset the connection". A segment with SYN and RST (and
/// everything else) at RCV.NXT was dropped as malformed; Linux resets, and so do we now.
#[test]
fn test_established_syn_rst_at_rcv_nxt_resets() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            flags: SYN | RST | ACK | FIN | PSH | URG,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"abc",
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::Reset
        }]
    );
    assert_eq!(t.tcp.state(c), None);
}

/// SYN+RST in window but not at RCV.NXT: an RST that does not match exactly gets a challenge
/// ACK (RFC 5961 §3.2), and the connection lives on.
#[test]
fn test_established_syn_rst_in_window_gets_challenge_ack() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            flags: SYN | RST,
            seq: REMOTE_SEQ + 10,
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
    assert_eq!(t.tcp.state(c), Some(State::Established));
}

/// Without a connection SYN+RST is still dropped as malformed and never answered (as Linux:
/// a listener discards it, a closed port never answers an RST).
#[test]
fn test_syn_rst_without_connection_dropped() {
    let mut t = tcp_listen();
    send!(
        t,
        TcpRepr {
            flags: SYN | RST,
            ..syn()
        }
    );
    send!(
        t,
        TcpRepr {
            flags: SYN | RST,
            dst_port: LPORT + 1,
            ..syn()
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.stats().drops_malformed, 2);
}
