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
