//! Retransmission (RFC 6298), reassembly, delayed ACK, Nagle, persist, keepalive, NewReno.

use super::*;

/// Handshake with a peer SYN advertising `mss` and window `window`; returns the connection.
pub(super) fn established_with(cfg: TcpConfig, mss: u16, window: u16) -> (T, ConnId) {
    let mut t = tcp_listen_with(cfg);
    send!(
        t,
        TcpRepr {
            options: TcpOptions {
                mss: Some(mss),
                ..TcpOptions::NONE
            },
            window,
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    assert!(t.recv(&mut buf).unwrap().has(SYN | ACK));
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window,
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    (t, conn)
}

/// A NewReno connection (4 KiB send buffer, no Nagle) whose peer offers MSS 100 and a 4096-byte
/// window, with `len` bytes of `i as u8` queued: the setup of the loss-recovery tests.
fn newreno_sender(len: u32) -> (T, ConnId, Vec<u8>) {
    let cf = TcpConfig {
        send_buf: 4096,
        congestion: Congestion::NewReno,
        ..cfg()
    };
    let (mut t, c) = established_with(cf, 100, 4096);
    t.tcp.set_nodelay(c, true).unwrap();
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    t.tcp.send(c, &data).unwrap();
    (t, c, data)
}

/// The peer's ACK of the first `n` bytes we sent, window 4096.
fn peer_ack(n: u32) -> TcpRepr<'static> {
    TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1 + n,
        window: 4096,
        ..SEND_TEMPL
    }
}

#[test]
fn test_established_rto_retransmit_with_backoff() {
    let (mut t, c) = tcp_established();
    t.tcp.send(c, b"abc").unwrap();
    let data = TcpRepr {
        flags: ACK | PSH,
        seq: LOCAL_SEQ + 1,
        ack: REMOTE_SEQ + 1,
        payload: b"abc",
        ..RECV_TEMPL
    };
    recv!(t, [data]);
    recv_nothing!(t, time 199);
    recv!(t, time 200, data);
    recv_nothing!(t, time 599);
    recv!(t, time 600, data);
    recv_nothing!(t, time 1399);
    recv!(t, time 1400, data);
    assert_eq!(t.tcp.stats().retransmits, 3);
    assert_eq!(t.tcp.stats().rto_fired, 3);
    // The ACK ends it, but an ACK of retransmitted data gives no RTT sample: the backoff
    // stays (Karn, RFC 6298 §5) until new data is acknowledged with one.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 4,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.conns[c.index() as usize].backoff, 3);
    t.tcp.send(c, b"d").unwrap();
    recv!(
        t,
        time 1500,
        TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 4,
            ack: REMOTE_SEQ + 1,
            payload: b"d",
            ..RECV_TEMPL
        }
    );
    send!(
        t,
        time 1510,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 5,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.conns[c.index() as usize].backoff, 0);
    recv_nothing!(t, time 10_000);
}

/// Data queued after a short segment went out and resent with it after a timeout (go-back
/// from SND.UNA) counts as sent: SND.MAX covers it, so the peer's ACK of all eight bytes is
/// taken. (The partial-ACK path below had that bug; this one did not.)
#[test]
fn test_rto_retransmission_does_not_reach_past_what_was_sent() {
    let (mut t, c) = tcp_established();
    t.tcp.send(c, b"abc").unwrap();
    let abc = TcpRepr {
        flags: ACK | PSH,
        seq: LOCAL_SEQ + 1,
        ack: REMOTE_SEQ + 1,
        payload: b"abc",
        ..RECV_TEMPL
    };
    recv!(t, [abc]);
    // Nagle holds the small second write while "abc" is unacknowledged; the timeout resends
    // from SND.UNA with it (go-back), as new data past SND.MAX.
    t.tcp.send(c, b"defgh").unwrap();
    recv_nothing!(t, time 199);
    recv!(
        t,
        time 200,
        TcpRepr {
            payload: b"abcdefgh",
            ..abc
        }
    );
    send!(
        t,
        time 220,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 9,
            ..SEND_TEMPL
        }
    );
    let conn = &t.tcp.conns[c.index() as usize];
    assert_eq!(
        conn.snd_una,
        LOCAL_SEQ + 9,
        "the ACK of all eight bytes is taken"
    );
    recv_nothing!(t, time 10_000);
}

/// A retransmission never reaches past SND.MAX: when the hole at SND.UNA is a short tail
/// segment and the application has queued more data since, the partial ACK's retransmission
/// carries the tail alone, and the queued data goes as new data (counted in SND.MAX). It used to
/// take the queued bytes along uncounted; the peer's ACK of them was then refused as
/// acknowledging unsent data and the transfer stalled for good (seen at 10% loss with 16 KiB
/// buffers).
#[test]
fn test_partial_ack_retransmission_stops_at_snd_max() {
    let (mut t, c, _) = newreno_sender(450);
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        assert!(t.recv(&mut buf).is_some());
    }
    recv_nothing!(t);
    let ack = peer_ack;
    // 0..100 arrived, 100..200 lost: three duplicates start recovery (recover = 450).
    send!(t, ack(100));
    for _ in 0..3 {
        send!(t, ack(100));
    }
    let s = t.recv(&mut buf).expect("fast retransmit");
    assert_eq!((s.seq, s.payload.len()), (LOCAL_SEQ + 101, 100));
    recv_nothing!(t);
    // The application queues 300 more bytes; then a partial ACK up to the 50-byte tail.
    let more: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    t.tcp.send(c, &more).unwrap();
    send!(t, ack(400));
    let mut sent = Vec::new();
    while let Some(s) = t.recv(&mut buf) {
        sent.push((s.seq.wrapping_sub(LOCAL_SEQ + 1), s.payload.len()));
    }
    assert_eq!(
        sent[0],
        (400, 50),
        "the tail alone is retransmitted: {sent:?}"
    );
    let conn = &t.tcp.conns[c.index() as usize];
    let highest = sent.iter().map(|&(o, n)| o + n as u32).max().unwrap_or(0);
    assert!(
        conn.snd_max.wrapping_sub(LOCAL_SEQ + 1) >= highest,
        "SND.MAX covers every byte sent: {sent:?}, SND.MAX at {}",
        conn.snd_max.wrapping_sub(LOCAL_SEQ + 1)
    );
    // The peer acknowledges everything sent: taken.
    send!(t, ack(highest));
    let conn = &t.tcp.conns[c.index() as usize];
    assert_eq!(conn.snd_una, LOCAL_SEQ + 1 + highest);
}

#[test]
fn test_established_retries_exhausted_closes_with_timeout() {
    let (mut t, c) = tcp_listen_with(TcpConfig {
        max_retries: 2,
        ..cfg()
    })
    .pipe(|mut t| {
        send!(t, syn());
        let mut buf = [0u8; 2048];
        t.recv(&mut buf).unwrap();
        send!(
            t,
            TcpRepr {
                seq: REMOTE_SEQ + 1,
                ack: LOCAL_SEQ + 1,
                ..SEND_TEMPL
            }
        );
        let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
            panic!()
        };
        (t, conn)
    });
    t.tcp.send(c, b"x").unwrap();
    let data = TcpRepr {
        flags: ACK | PSH,
        seq: LOCAL_SEQ + 1,
        ack: REMOTE_SEQ + 1,
        payload: b"x",
        ..RECV_TEMPL
    };
    recv!(t, [data]);
    recv!(t, time 200, data);
    recv!(t, time 600, data);
    t.at(1400);
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::Timeout
        }]
    );
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

#[test]
fn test_rtt_sample_sets_rto() {
    let mut t = tcp_listen_with(TcpConfig {
        rto_min_ms: 10,
        ..cfg()
    });
    send!(t, syn());
    t.recv(&mut [0u8; 2048]).unwrap();
    send!(t, time 100, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 1, ..SEND_TEMPL });
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    let k = &t.tcp.conns[c.index() as usize];
    // First sample R = 100 ms: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4·RTTVAR.
    assert_eq!(
        (k.srtt_us, k.rttvar_us, k.rto_us),
        (100_000, 50_000, 300_000)
    );
    t.tcp.send(c, b"abc").unwrap();
    t.recv(&mut [0u8; 2048]).unwrap();
    send!(t, time 300, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 4, ..SEND_TEMPL });
    let k = &t.tcp.conns[c.index() as usize];
    // R = 200 ms: RTTVAR = 3/4·50 + 1/4·|100 − 200| = 62.5, SRTT = 7/8·100 + 1/8·200 = 112.5.
    assert_eq!(
        (k.srtt_us, k.rttvar_us, k.rto_us),
        (112_500, 62_500, 362_500)
    );
}

#[test]
fn test_karn_no_sample_from_retransmitted_segment() {
    let (mut t, c) = tcp_established();
    t.tcp.send(c, b"abc").unwrap();
    t.recv(&mut [0u8; 2048]).unwrap();
    t.at(200);
    t.recv(&mut [0u8; 2048]).unwrap();
    send!(t, time 450, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 4, ..SEND_TEMPL });
    let k = &t.tcp.conns[c.index() as usize];
    assert_eq!((k.srtt_us, k.rto_us), (0, 200_000));
}

#[test]
fn test_established_ooo_reassembly() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 4,
            ack: LOCAL_SEQ + 1,
            payload: b"def",
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
    assert!(t.events().is_empty());
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"abc",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 7,
            window: 58,
            ..RECV_TEMPL
        }]
    );
    let mut b = [0u8; 16];
    assert_eq!(t.tcp.recv(c, &mut b), Ok(6));
    assert_eq!(&b[..6], b"abcdef");
}

#[test]
fn test_established_ooo_ranges_bounded() {
    let (mut t, c) = established_with(
        TcpConfig {
            ooo_max_ranges: 1,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 3,
            ack: LOCAL_SEQ + 1,
            payload: b"c",
            ..SEND_TEMPL
        }
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 5,
            ack: LOCAL_SEQ + 1,
            payload: b"e",
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.stats().drops_ooo, 1);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"ab",
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.recv_available(c), Ok(3));
}

#[test]
fn test_established_ooo_fin_before_data() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 4,
            ack: LOCAL_SEQ + 1,
            payload: b"def",
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
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"abc",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 8,
            window: 57,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::CloseWait));
}

#[test]
fn test_delayed_ack_fires_after_timeout() {
    let (mut t, _c) = established_with(
        TcpConfig {
            delayed_ack_ms: 40,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"abc",
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.poll_timeout(), Some(Instant::from_millis(40)));
    recv_nothing!(t, time 39);
    recv!(t, time 40, TcpRepr { seq: LOCAL_SEQ + 1, ack: REMOTE_SEQ + 4, window: 61, ..RECV_TEMPL });
}

#[test]
fn test_delayed_ack_every_second_full_segment() {
    let c = TcpConfig {
        delayed_ack_ms: 40,
        mss: 64,
        recv_buf: 256,
        ..cfg()
    };
    let (mut t, _c) = established_with(c, 64, 256);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: &[1; 64],
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 65,
            ack: LOCAL_SEQ + 1,
            payload: &[2; 64],
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 129,
            window: 128,
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_delayed_ack_piggybacks_on_response() {
    let (mut t, c) = established_with(
        TcpConfig {
            delayed_ack_ms: 40,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"req",
            ..SEND_TEMPL
        }
    );
    t.tcp.send(c, b"resp").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 4,
            window: 61,
            payload: b"resp",
            ..RECV_TEMPL
        }]
    );
    recv_nothing!(t, time 40);
}

#[test]
fn test_ooo_acked_immediately_despite_delayed_ack() {
    let (mut t, _c) = established_with(
        TcpConfig {
            delayed_ack_ms: 40,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 2,
            ack: LOCAL_SEQ + 1,
            payload: b"b",
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
    // Filling the hole is acknowledged at once too.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"a",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 3,
            window: 62,
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_nagle_holds_small_segment_until_ack() {
    let (mut t, c) = tcp_established();
    t.tcp.send(c, b"a").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"a",
            ..RECV_TEMPL
        }]
    );
    t.tcp.send(c, b"b").unwrap();
    t.tcp.send(c, b"c").unwrap();
    recv_nothing!(t);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 2,
            ack: REMOTE_SEQ + 1,
            payload: b"bc",
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_nodelay_sends_small_segments_at_once() {
    let (mut t, c) = tcp_established();
    t.tcp.set_nodelay(c, true).unwrap();
    t.tcp.send(c, b"a").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"a",
            ..RECV_TEMPL
        }]
    );
    t.tcp.send(c, b"b").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 2,
            ack: REMOTE_SEQ + 1,
            payload: b"b",
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_zero_window_persist_probes() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 0,
            ..SEND_TEMPL
        }
    );
    t.tcp.send(c, b"abc").unwrap();
    recv_nothing!(t);
    recv_nothing!(t, time 199);
    let probe = TcpRepr {
        seq: LOCAL_SEQ + 1,
        ack: REMOTE_SEQ + 1,
        payload: b"a",
        ..RECV_TEMPL
    };
    recv!(t, time 200, probe);
    recv_nothing!(t);
    // Still closed: the next probe backs off.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 0,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t, time 599);
    recv!(t, time 600, probe);
    // The window opens: everything goes.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 100,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: b"abc",
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.state(c), Some(State::Established));
}

/// The window closes with the ACK of everything in flight while more data waits (what a
/// reader that stops reading does): nothing is in flight and nothing can be sent, yet the
/// persist timer must be armed, or the connection would wait forever for a window update
/// that may be lost (found by the sockstress test over veth: no probe was ever sent).
#[test]
fn test_window_closed_by_the_ack_of_all_in_flight_arms_persist() {
    let (mut t, c) = established_with(cfg(), 536, 20);
    assert_eq!(t.tcp.send(c, &[b'x'; 30]).unwrap(), 30);
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            payload: &[b'x'; 20],
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        time 10,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 21,
            window: 0,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    recv_nothing!(t, time 209);
    recv!(
        t,
        time 210,
        TcpRepr {
            seq: LOCAL_SEQ + 21,
            ack: REMOTE_SEQ + 1,
            payload: b"x",
            ..RECV_TEMPL
        }
    );
}

/// Sockstress: the peer answers every probe with a zero window and never takes a byte. After
/// `persist_timeout_ms` of that the connection is reset (RST at SND.NXT) and reported
/// `PersistTimeout`; the probes before it back off as usual, and the last wait is cut short
/// to end exactly at the deadline.
#[test]
fn test_zero_window_forever_is_reset_at_the_persist_timeout() {
    let (mut t, c) = established_with(
        TcpConfig {
            persist_timeout_ms: 1000,
            ..cfg()
        },
        536,
        256,
    );
    let zero = TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1,
        window: 0,
        ..SEND_TEMPL
    };
    send!(t, zero);
    t.tcp.send(c, b"abc").unwrap();
    recv_nothing!(t);
    let probe = TcpRepr {
        seq: LOCAL_SEQ + 1,
        ack: REMOTE_SEQ + 1,
        payload: b"a",
        ..RECV_TEMPL
    };
    recv!(t, time 200, probe);
    send!(t, zero);
    recv_nothing!(t, time 599);
    recv!(t, time 600, probe);
    send!(t, zero);
    // The next probe would be at 1400 (backoff); the deadline (0 + 1000) comes first.
    recv_nothing!(t, time 999);
    assert_eq!(t.tcp.state(c), Some(State::Established));
    t.events();
    recv!(
        t,
        time 1000,
        TcpRepr {
            flags: RST | ACK,
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            window: 0,
            ..RECV_TEMPL
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.state(c), None);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::PersistTimeout
        }]
    );
    assert_eq!(t.tcp.stats().persist_timeouts, 1);
    assert_eq!(t.tcp.stats().timeouts, 1);
}

/// Progress restarts the persist clock: a peer that takes the probe byte is slow, not stuck;
/// with `persist_timeout_ms = 0` a closed window is waited on forever.
#[test]
fn test_persist_timeout_counts_from_the_last_progress_and_zero_disables_it() {
    let (mut t, c) = established_with(
        TcpConfig {
            persist_timeout_ms: 1000,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 0,
            ..SEND_TEMPL
        }
    );
    t.tcp.send(c, b"abc").unwrap();
    recv_nothing!(t);
    recv!(t, time 200, TcpRepr { seq: LOCAL_SEQ + 1, ack: REMOTE_SEQ + 1, payload: b"a", ..RECV_TEMPL });
    // At 900 the peer takes the probe byte, window still closed: the clock restarts at 900.
    send!(
        t,
        time 900,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            window: 0,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
    for ms in [1000, 1500, 1899] {
        t.at(ms);
        while t.recv(&mut [0u8; 2048]).is_some() {}
        assert_eq!(t.tcp.state(c), Some(State::Established), "at {ms} ms");
    }
    t.at(1900);
    let mut buf = [0u8; 2048];
    let rst = t
        .recv(&mut buf)
        .map(|r| r.to_owned_seg())
        .expect("RST at 1900");
    assert_eq!(rst.flags, "ACK|RST");
    assert_eq!(rst.seq, LOCAL_SEQ + 2);
    assert_eq!(t.tcp.state(c), None);

    // Disabled: probes for an hour of virtual time, never a reset.
    let (mut t, c) = established_with(
        TcpConfig {
            persist_timeout_ms: 0,
            ..cfg()
        },
        536,
        256,
    );
    let zero = TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1,
        window: 0,
        ..SEND_TEMPL
    };
    send!(t, zero);
    t.tcp.send(c, b"abc").unwrap();
    recv_nothing!(t);
    let mut probes = 0;
    for s in 1..=3600u64 {
        t.at(s * 1000);
        let mut buf = [0u8; 2048];
        while let Some(seg) = t.recv(&mut buf).map(|r| r.to_owned_seg()) {
            assert_eq!(
                (seg.flags.as_str(), seg.payload.len()),
                ("ACK", 1),
                "a probe"
            );
            probes += 1;
        }
        send!(t, zero);
    }
    assert_eq!(t.tcp.state(c), Some(State::Established));
    assert!(probes >= 30, "{probes} probes in an hour (rto_max 120 s)");
    assert_eq!(t.tcp.stats().persist_timeouts, 0);
}

#[test]
fn test_zero_window_probe_accepted_advances() {
    let (mut t, c) = tcp_established();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 0,
            ..SEND_TEMPL
        }
    );
    t.tcp.send(c, b"abc").unwrap();
    recv_nothing!(t);
    recv!(t, time 200, TcpRepr { seq: LOCAL_SEQ + 1, ack: REMOTE_SEQ + 1, payload: b"a", ..RECV_TEMPL });
    // The peer took the byte and opened a little.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            window: 10,
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: LOCAL_SEQ + 2,
            ack: REMOTE_SEQ + 1,
            payload: b"bc",
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_keepalive_probes_then_timeout() {
    let ka = Keepalive {
        idle_ms: 1000,
        interval_ms: 100,
        probes: 2,
    };
    let (mut t, c) = established_with(
        TcpConfig {
            keepalive: Some(ka),
            ..cfg()
        },
        536,
        256,
    );
    let probe = TcpRepr {
        seq: LOCAL_SEQ,
        ack: REMOTE_SEQ + 1,
        ..RECV_TEMPL
    };
    recv_nothing!(t, time 999);
    recv!(t, time 1000, probe);
    recv!(t, time 1100, probe);
    t.at(1200);
    recv_nothing!(t);
    assert_eq!(
        t.events(),
        vec![Event::Closed {
            conn: c,
            reason: CloseReason::KeepaliveTimeout
        }]
    );
}

#[test]
fn test_keepalive_answered_keeps_connection() {
    let ka = Keepalive {
        idle_ms: 1000,
        interval_ms: 100,
        probes: 2,
    };
    let (mut t, c) = established_with(
        TcpConfig {
            keepalive: Some(ka),
            ..cfg()
        },
        536,
        256,
    );
    let probe = TcpRepr {
        seq: LOCAL_SEQ,
        ack: REMOTE_SEQ + 1,
        ..RECV_TEMPL
    };
    recv!(t, time 1000, probe);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t, time 1999);
    recv!(t, time 2000, probe);
    assert_eq!(t.tcp.state(c), Some(State::Established));
}

#[test]
fn test_fast_retransmit_and_newreno_partial_ack() {
    let (mut t, c, data) = newreno_sender(500);
    for i in 0..5u32 {
        let fl = if i == 4 { ACK | PSH } else { ACK };
        let p = &data[100 * i as usize..100 * (i as usize + 1)];
        recv!(
            t,
            TcpRepr {
                flags: fl,
                seq: LOCAL_SEQ + 1 + 100 * i,
                ack: REMOTE_SEQ + 1,
                window: 64,
                payload: p,
                ..RECV_TEMPL
            }
        );
    }
    recv_nothing!(t);
    let ack = peer_ack;
    send!(t, ack(100));
    send!(t, ack(100));
    send!(t, ack(100));
    recv_nothing!(t);
    send!(t, ack(100)); // third duplicate
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 101,
            ack: REMOTE_SEQ + 1,
            payload: &data[100..200],
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.stats().fast_retransmits, 1);
    // Partial ACK: the next hole is retransmitted at once (RFC 6582).
    send!(t, ack(200));
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 201,
            ack: REMOTE_SEQ + 1,
            payload: &data[200..300],
            ..RECV_TEMPL
        }]
    );
    // Full ACK ends recovery.
    send!(t, ack(500));
    recv_nothing!(t);
    let k = &t.tcp.conns[c.index() as usize];
    assert!(!k.in_recovery);
    assert_eq!(k.cc.ssthresh, 200); // FlightSize 400 / 2
}

#[test]
fn test_sequence_numbers_wrap_around() {
    let mut t = tcp_listen();
    t.tcp.test_isn = Some(0xffff_fffe);
    let rseq = 0xffff_fffcu32;
    send!(t, TcpRepr { seq: rseq, ..syn() });
    recv!(
        t,
        [TcpRepr {
            flags: SYN | ACK,
            seq: 0xffff_fffe,
            ack: 0xffff_fffd,
            options: MSS_ONLY,
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        TcpRepr {
            seq: 0xffff_fffd,
            ack: 0xffff_ffff,
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    send!(
        t,
        TcpRepr {
            seq: 0xffff_fffd,
            ack: 0xffff_ffff,
            payload: b"abcdef",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: 0xffff_ffff,
            ack: 3,
            window: 58,
            ..RECV_TEMPL
        }]
    );
    t.tcp.send(c, b"xyz").unwrap();
    recv!(
        t,
        [TcpRepr {
            flags: ACK | PSH,
            seq: 0xffff_ffff,
            ack: 3,
            window: 58,
            payload: b"xyz",
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        TcpRepr {
            seq: 3,
            ack: 2,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.send_capacity(c), Ok(64));
    let mut b = [0u8; 8];
    assert_eq!(t.tcp.recv(c, &mut b), Ok(6));
    assert_eq!(&b[..6], b"abcdef");
}

/// Seeded fuzz of the receive path: random segments (in and out of order, duplicated,
/// overlapping, beyond the window) and random reads; the byte stream must come out exact.
#[test]
fn test_receive_path_fuzz_reassembles_exactly() {
    for seed in 1..40u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut t, c) = established_with(
            TcpConfig {
                recv_buf: 512,
                ooo_max_ranges: 4,
                ..cfg()
            },
            536,
            256,
        );
        let stream: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
            .collect();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let mut acked = 0usize;
        for _ in 0..20_000 {
            if got.len() == stream.len() {
                break;
            }
            // A segment somewhere around what the receiver acknowledged.
            let start = (acked + rnd(700) as usize)
                .saturating_sub(100)
                .min(stream.len() - 1);
            let len = (1 + rnd(200) as usize).min(stream.len() - start);
            let seg = TcpRepr {
                seq: REMOTE_SEQ + 1 + start as u32,
                ack: LOCAL_SEQ + 1,
                payload: &stream[start..start + len],
                ..SEND_TEMPL
            };
            send!(t, seg);
            while let Some(r) = t.recv(&mut buf) {
                acked = r.ack.wrapping_sub(REMOTE_SEQ + 1) as usize;
            }
            if rnd(3) == 0 {
                let mut b = [0u8; 300];
                if let Ok(n) = t.tcp.recv(c, &mut b[..1 + rnd(299) as usize]) {
                    got.extend_from_slice(&b[..n]);
                }
            }
        }
        let mut b = [0u8; 1024];
        while let Ok(n) = t.tcp.recv(c, &mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        let first = got.iter().zip(&stream).position(|(a, b)| a != b);
        assert_eq!(first, None, "seed {seed}: first wrong byte");
        assert!(got.len() > 5000, "seed {seed}: progress {}", got.len());
    }
}

#[test]
fn test_pure_ack_after_rto_uses_highest_sequence_sent() {
    let (mut t, c) = tcp_established();
    t.tcp.set_nodelay(c, true).unwrap();
    t.tcp.send(c, b"abc").unwrap();
    t.recv(&mut [0u8; 2048]).unwrap();
    t.tcp.send(c, b"def").unwrap();
    t.recv(&mut [0u8; 2048]).unwrap();
    // RTO: SND.NXT goes back to SND.UNA and "abcdef" is resent as one segment.
    recv!(t, time 200, TcpRepr { flags: ACK | PSH, seq: LOCAL_SEQ + 1, ack: REMOTE_SEQ + 1, payload: b"abcdef", ..RECV_TEMPL });
    // Data from the peer is acknowledged from SND.MAX, which the peer's window accepts.
    t.tcp.send(c, b"").unwrap();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"x",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 7,
            ack: REMOTE_SEQ + 2,
            window: 63,
            ..RECV_TEMPL
        }]
    );
}

/// After a hole is filled, the next in-order segments are acknowledged at once (Linux's
/// quick-ACK mode), not after the delayed-ACK timer: the sender is recovering, and a single
/// segment held for 40 ms stalls it.
#[test]
fn test_quickack_after_hole_filled() {
    let (mut t, _c) = established_with(
        TcpConfig {
            delayed_ack_ms: 40,
            ..cfg()
        },
        536,
        256,
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 2,
            ack: LOCAL_SEQ + 1,
            payload: b"b",
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
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"a",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 3,
            window: 62,
            ..RECV_TEMPL
        }]
    );
    // One small in-order segment: without the quick ACKs it would wait 40 ms.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 3,
            ack: LOCAL_SEQ + 1,
            payload: b"c",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 4,
            window: 61,
            ..RECV_TEMPL
        }]
    );
    // The quick ACKs run out after 16 in-order segments (the one that filled the hole among
    // them); then the delayed ACK is back.
    for i in 0..14u32 {
        send!(
            t,
            TcpRepr {
                seq: REMOTE_SEQ + 4 + i,
                ack: LOCAL_SEQ + 1,
                payload: b"d",
                ..SEND_TEMPL
            }
        );
        let mut buf = [0u8; 2048];
        assert!(t.recv(&mut buf).is_some(), "quick ACK {i}");
    }
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 18,
            ack: LOCAL_SEQ + 1,
            payload: b"e",
            ..SEND_TEMPL
        }
    );
    recv_nothing!(t);
}

/// Four full segments in one batch get two ACKs, one for every second segment, in order
/// (RFC 5681 §4.2), not one stretch ACK for the batch: a lost stretch ACK would cost the
/// sender the feedback of its whole flight.
#[test]
fn test_batch_of_full_segments_acked_every_second_segment() {
    let c = TcpConfig {
        delayed_ack_ms: 40,
        mss: 64,
        recv_buf: 512,
        ..cfg()
    };
    let (mut t, _c) = established_with(c, 64, 512);
    for i in 0..4u32 {
        send!(
            t,
            TcpRepr {
                seq: REMOTE_SEQ + 1 + 64 * i,
                ack: LOCAL_SEQ + 1,
                payload: &[i as u8; 64],
                ..SEND_TEMPL
            }
        );
    }
    recv!(
        t,
        [
            TcpRepr {
                seq: LOCAL_SEQ + 1,
                ack: REMOTE_SEQ + 129,
                window: 384,
                ..RECV_TEMPL
            },
            TcpRepr {
                seq: LOCAL_SEQ + 1,
                ack: REMOTE_SEQ + 257,
                window: 256,
                ..RECV_TEMPL
            }
        ]
    );
}

/// A BBR connection whose pacing holds data back is on the paced list exactly while it lives:
/// freeing it (here by `abort`) takes it off at once, so connections that come and go between
/// two release passes cannot pile stale entries up, and the list never grows past the
/// `max_flows` it reserved.
#[test]
fn paced_connections_leave_the_paced_list_when_freed() {
    let cf = TcpConfig {
        congestion: Congestion::Bbr,
        pacing: true,
        send_buf: 64 * 1024,
        ..cfg()
    };
    let mut t = tcp_listen_with(cf);
    let cap = t.tcp.paced.capacity();
    assert!(cap >= t.tcp.config().max_flows);
    let mut buf = [0u8; 2048];
    for round in 0..100u64 {
        // The handshake takes 10 ms (the first RTT sample), then 20 kB are queued at once:
        // pacing lets the first segments out and holds the rest back.
        t.at(round * 100);
        send!(t, syn());
        assert!(t.recv(&mut buf).unwrap().has(SYN | ACK));
        t.at(round * 100 + 10);
        send!(
            t,
            TcpRepr {
                seq: REMOTE_SEQ + 1,
                ack: LOCAL_SEQ + 1,
                window: 65535,
                ..SEND_TEMPL
            }
        );
        let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
            panic!("round {round}: no Accepted")
        };
        assert_eq!(t.tcp.send(conn, &[7u8; 20_000]).unwrap(), 20_000);
        let mut sent = 0;
        while t.recv(&mut buf).is_some() {
            sent += 1;
        }
        assert!(
            (1..13).contains(&sent),
            "round {round}: pacing let {sent} segments out at once"
        );
        assert_eq!(t.tcp.paced.as_slice(), &[conn.idx], "round {round}");
        assert_eq!(t.tcp.conns[conn.idx as usize].paced_at, 0);
        t.tcp.abort(conn).unwrap();
        assert!(t.recv(&mut buf).unwrap().has(RST));
        assert!(t.tcp.paced.is_empty(), "round {round}: {:?}", t.tcp.paced);
        assert_eq!(t.tcp.conns[conn.idx as usize].paced_at, NOT_PACED);
        t.events();
    }
    assert_eq!(t.tcp.paced.capacity(), cap, "the paced list reallocated");
}
