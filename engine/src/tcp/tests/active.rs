//! Active open (SYN_SENT), simultaneous open and close, half-close.

use super::*;

#[test]
fn test_syn_sent_syn_ack_establishes() {
    let (t, c) = tcp_established_active();
    assert_eq!(t.tcp.stats().active_opens, 1);
    assert_eq!(
        t.tcp.endpoints(c).unwrap().1,
        SocketAddrV4::new(REMOTE, RPORT)
    );
}

#[test]
fn test_syn_sent_rst_ack_refused() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: RST | ACK,
            seq: 0,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::Refused
        }]
    );
    assert_eq!(t.tcp.state(c), None);
}

#[test]
fn test_syn_sent_rst_without_ack_ignored() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: RST,
            seq: REMOTE_SEQ,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.state(c), Some(State::SynSent));
}

#[test]
fn test_syn_sent_bad_ack_gets_rst() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: SYN | ACK,
            seq: REMOTE_SEQ,
            ack: LOCAL_SEQ + 5,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: RST,
            seq: LOCAL_SEQ + 5,
            ack: 0,
            window: 0,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::SynSent));
    // An ACK of our ISN itself is no better.
    send!(
        t,
        TcpRepr {
            flags: ACK,
            seq: REMOTE_SEQ,
            ack: LOCAL_SEQ,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: RST,
            seq: LOCAL_SEQ,
            ack: 0,
            window: 0,
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_syn_sent_rst_with_bad_ack_ignored() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: RST | ACK,
            seq: 0,
            ack: LOCAL_SEQ + 9,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.state(c), Some(State::SynSent));
}

#[test]
fn test_syn_sent_syn_simultaneous_open() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: SYN,
            seq: REMOTE_SEQ,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: SYN | ACK,
            seq: LOCAL_SEQ,
            ack: REMOTE_SEQ + 1,
            options: MSS_ONLY,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::SynReceived));
    assert!(t.events().is_empty());
    // The peer's SYN-ACK (its SYN again, plus the ACK of ours).
    send!(
        t,
        TcpRepr {
            flags: SYN | ACK,
            seq: REMOTE_SEQ,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::Established));
    assert_eq!(t.events(), vec![Event::Connected { conn: c }]);
    t.tcp.send(c, b"hi").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"hi",
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_syn_sent_simultaneous_open_plain_ack() {
    let (mut t, c) = tcp_syn_sent();
    send!(
        t,
        TcpRepr {
            flags: SYN,
            seq: REMOTE_SEQ,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: SYN | ACK,
            seq: LOCAL_SEQ,
            ack: REMOTE_SEQ + 1,
            options: MSS_ONLY,
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::Established));
    assert_eq!(t.events(), vec![Event::Connected { conn: c }]);
}

#[test]
fn test_syn_sent_retransmits_then_times_out() {
    let (mut t, c) = tcp_syn_sent_with(TcpConfig {
        max_syn_retries: 2,
        ..cfg()
    });
    recv!(t, [our_syn()]);
    recv_nothing!(t, time 999);
    recv!(t, time 1000, our_syn());
    recv_nothing!(t, time 2999);
    recv!(t, time 3000, our_syn());
    recv_nothing!(t, time 6999);
    t.at(7000);
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::Timeout
        }]
    );
    assert_eq!(t.tcp.stats().timeouts, 1);
    assert_eq!(t.tcp.stats().retransmits, 2);
}

#[test]
fn test_syn_sent_shutdown_aborts_quietly() {
    let (mut t, c) = tcp_syn_sent();
    t.tcp.shutdown(c).unwrap();
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::Aborted
        }]
    );
}

#[test]
fn test_syn_sent_abort_sends_nothing() {
    let (mut t, c) = tcp_syn_sent();
    t.tcp.abort(c).unwrap();
    recv_nothing!(t);
    assert_eq!(t.tcp.state(c), None);
}

#[test]
fn test_syn_sent_queued_data_goes_with_first_ack() {
    let (mut t, c) = tcp_syn_sent();
    assert_eq!(t.tcp.send(c, b"early"), Ok(5));
    recv_nothing!(t);
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
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"early",
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_syn_sent_rtt_from_handshake() {
    let (mut t, c) = tcp_syn_sent();
    send!(t, time 50, TcpRepr { flags: SYN | ACK, seq: REMOTE_SEQ, ack: LOCAL_SEQ + 1, ..SEND_TEMPL });
    let conn = &t.tcp.conns[c.index() as usize];
    assert_eq!((conn.srtt_us, conn.rttvar_us), (50_000, 25_000));
    assert_eq!(conn.rto_us, 200_000); // 50 + 4·25 = 150 ms, clamped to rto_min
}

#[test]
fn test_connect_single_ephemeral_port_exhausted() {
    let (mut t, _c) = tcp_syn_sent();
    assert_eq!(
        t.tcp
            .connect(t.now, LOCAL, SocketAddrV4::new(REMOTE, RPORT)),
        Err(TcpError::NoEphemeralPort)
    );
    // Another destination port is a different 4-tuple.
    assert!(t
        .tcp
        .connect(t.now, LOCAL, SocketAddrV4::new(REMOTE, RPORT + 1))
        .is_ok());
    assert_eq!(
        t.tcp.connect(t.now, LOCAL, SocketAddrV4::new(REMOTE, 0)),
        Err(TcpError::InvalidPort)
    );
}

#[test]
fn test_connect_ports_spread_over_range() {
    let mut t = T::new(TcpConfig {
        ephemeral_first: 40000,
        ephemeral_last: 40999,
        max_flows: 64,
        ..cfg()
    });
    let mut ports = std::collections::HashSet::new();
    for i in 0..50 {
        let c = t
            .tcp
            .connect(t.now, LOCAL, SocketAddrV4::new(REMOTE, 443))
            .unwrap();
        let p = t.tcp.endpoints(c).unwrap().0.port();
        assert!((40000..=40999).contains(&p), "{i}: {p}");
        assert!(ports.insert(p), "port reused while in use");
    }
}

#[test]
fn test_established_simultaneous_close() {
    let (mut t, c) = tcp_established_active();
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
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 2,
            ack: LOCAL_SEQ + 2,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::TimeWait));
}

#[test]
fn test_half_close_keeps_receiving() {
    let (mut t, c) = tcp_established_active();
    t.tcp.send(c, b"request").unwrap();
    t.tcp.shutdown(c).unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH | FIN,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"request",
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 9,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::FinWait2));
    for (i, chunk) in [&b"resp"[..], b"onse"].iter().enumerate() {
        let s = REMOTE_SEQ + 1 + 4 * i as u32;
        send!(
            t,
            TcpRepr {
                seq: s,
                ack: LOCAL_SEQ + 9,
                payload: chunk,
                ..SEND_TEMPL
            }
        );
    }
    let mut b = [0u8; 16];
    assert_eq!(t.tcp.recv(c, &mut b), Ok(8));
    assert_eq!(&b[..8], b"response");
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 9,
            ack: LOCAL_SEQ + 9,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::TimeWait));
    assert_eq!(
        t.tcp.recv(c, &mut b),
        Err(TcpError::InvalidConn).or(Ok(0)).and(Ok(0))
    );
}
