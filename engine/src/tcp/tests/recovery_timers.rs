//! Loss recovery and timers at their edges: a window shrunk over data in flight, `recover`
//! after 2 GiB, Karn's backoff, a repeated timeout, `high_rxt` of a
//! fresh connection, TS.Recent after 24 days. Each test failed before its fix (found by a
//! read-only review).

use super::*;

fn count_sent(t: &mut T) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while t.recv(&mut buf).is_some() {
        n += 1;
    }
    n
}

/// Established with a peer that offers MSS 100 and a 4096-byte window, 4 KiB send buffer,
/// congestion control `cc`, Nagle off.
fn mss100(cc: Congestion) -> (T, ConnId) {
    let cf = TcpConfig {
        send_buf: 4096,
        congestion: cc,
        ..cfg()
    };
    let (mut t, c) = super::reliability::established_with(cf, 100, 4096);
    t.tcp.set_nodelay(c, true).unwrap();
    (t, c)
}

/// The peer acknowledges `acked` of six bytes in flight with a zero window (shrinking it over
/// the rest), then stays silent for five minutes.
fn shut_window_over_flight(acked: u32) {
    let (mut t, c) = tcp_established();
    t.tcp.set_nodelay(c, true).unwrap();
    t.tcp.send(c, b"abcdef").unwrap();
    assert_eq!(count_sent(&mut t), 1);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1 + acked,
            window: 0,
            ..SEND_TEMPL
        }
    );
    assert_eq!(count_sent(&mut t), 0);
    let (mut sent, mut closed_at) = (0, None);
    for ms in (100..300_000).step_by(100) {
        t.at(ms);
        sent += count_sent(&mut t);
        if closed_at.is_none() && t.tcp.state(c).is_none() {
            closed_at = Some(ms);
        }
    }
    assert!(sent > 1, "acked {acked}: {sent} segments in five minutes");
    // The persist timeout (60 s) counts from the RTO at 200 ms.
    assert!(
        closed_at.is_some_and(|ms| (60_000..=60_500).contains(&ms)),
        "acked {acked}: closed at {closed_at:?} ms, next timer {:?}",
        t.tcp.poll_timeout()
    );
    assert!(t.events().contains(&Event::Closed {
        conn: c,
        reason: CloseReason::PersistTimeout
    }));
}

/// The peer shrinks its window to zero while data is in flight, then stays silent. The RTO
/// fires, pulls SND.NXT back and finds the window shut: the connection goes on probing (the
/// persist timer) until the persist timeout closes it (it sat with no timer at all: neither
/// max_retries nor persist_timeout_ms ever reclaimed it). Both with part of the data acked and
/// with none.
#[test]
fn a_window_shut_over_data_in_flight_is_probed_until_the_persist_timeout() {
    shut_window_over_flight(3);
    shut_window_over_flight(0);
}

/// RFC 5681 §3.1: when the segment the timer resends has already been resent by the timer,
/// ssthresh is held constant. (CUBIC computed it again from the one-segment window.)
#[test]
fn second_rto_of_the_same_segment_keeps_ssthresh() {
    let (mut t, c) = mss100(Congestion::Cubic);
    t.tcp.send(c, &[7u8; 1000]).unwrap();
    assert_eq!(count_sent(&mut t), 10);
    t.at(200);
    assert_eq!(count_sent(&mut t), 1, "first RTO");
    let first = t.tcp.conns[c.index() as usize].cc.ssthresh;
    t.at(600);
    assert_eq!(count_sent(&mut t), 1, "second RTO");
    let second = t.tcp.conns[c.index() as usize].cc.ssthresh;
    assert_eq!(
        second, first,
        "ssthresh after the 2nd RTO of the same segment"
    );
}

/// Five segments out, the first acknowledged, then the second twice (taking SND.UNA 200 bytes
/// on), then three duplicate ACKs: the fast retransmits counted. With `recover_behind`,
/// `recover` first put that far behind SND.UNA.
fn fast_retransmits_after_three_dupacks(recover_behind: Option<u32>) -> u64 {
    let (mut t, c) = mss100(Congestion::NewReno);
    if let Some(d) = recover_behind {
        let k = &mut t.tcp.conns[c.index() as usize];
        k.recover = k.snd_una.wrapping_sub(d);
    }
    t.tcp.send(c, &[7u8; 500]).unwrap();
    assert_eq!(count_sent(&mut t), 5);
    let ack = |n: u32| TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1 + n,
        window: 4096,
        ..SEND_TEMPL
    };
    send!(t, ack(100));
    send!(t, ack(200));
    count_sent(&mut t);
    for _ in 0..3 {
        send!(t, ack(200));
    }
    t.tcp.stats().fast_retransmits
}

/// After 2^31 bytes without a loss, `SND.UNA >= recover` must still hold: three duplicate ACKs
/// start fast retransmit (when `recover` only moved at recoveries and timeouts, serial
/// arithmetic read it as ahead and the loss waited for the RTO). Simulated by putting
/// `recover` 2^31 − 150 bytes behind SND.UNA, as near the end of a 2 GiB loss-free transfer:
/// the two ACKs take SND.UNA across the 2^31 mark. The control: a fresh connection.
#[test]
fn recover_follows_snd_una_past_2_gib() {
    assert_eq!(fast_retransmits_after_three_dupacks(None), 1, "fresh");
    assert_eq!(
        fast_retransmits_after_three_dupacks(Some(0x8000_0000 - 150)),
        1,
        "after 2 GiB"
    );
}

/// RFC 7323 §5.5: after more than 24 days idle TS.Recent is invalid; the next segment's TSval
/// is accepted and becomes TS.Recent, even when the peer's clock moved by 2^31 ms or more
/// (the update rule wanted TSval >= TS.Recent, so TSecr went on echoing a 25-day-old value).
#[test]
fn ts_recent_replaced_after_24_days_idle() {
    let cf = TcpConfig {
        timestamps: true,
        ..cfg()
    };
    let mut t = tcp_listen_with(cf);
    let ts = |val: u32, ecr: u32| TcpOptions {
        timestamps: Some(Timestamps { val, ecr }),
        ..TcpOptions::NONE
    };
    send!(
        t,
        TcpRepr {
            options: TcpOptions {
                mss: Some(1460),
                timestamps: Some(Timestamps { val: 1000, ecr: 0 }),
                ..TcpOptions::NONE
            },
            ..syn()
        }
    );
    count_sent(&mut t);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            options: ts(1001, 0),
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    // 25 days later the peer (1 ms clock) sends data.
    let day_ms = 24 * 3600 * 1000u64;
    let later = 1001u32.wrapping_add((25 * day_ms) as u32);
    send!(
        t,
        time 25 * day_ms,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            options: ts(later, 0),
            payload: b"hi",
            ..SEND_TEMPL
        }
    );
    let mut buf = [0u8; 2048];
    let echo = t.recv(&mut buf).unwrap().options.timestamps.unwrap().ecr;
    assert_eq!(t.tcp.recv_available(c), Ok(2));
    assert_eq!(echo, later, "TSecr of the ACK");
}

/// RFC 6298 §5 / Karn: the backed-off RTO is kept until a valid RTT sample. Without
/// timestamps, an ACK that covers only retransmitted data gives no sample and must not clear
/// the backoff: after the path's RTT grew past the RTO, every new segment timed out
/// spuriously again (cwnd back to one segment each time).
#[test]
fn karn_keeps_backoff_until_a_valid_sample() {
    let (mut t, c) = tcp_established(); // RTT 0 in the handshake: RTO 200 ms
    t.tcp.set_nodelay(c, true).unwrap();
    t.tcp.send(c, b"abc").unwrap();
    assert_eq!(count_sent(&mut t), 1);
    t.at(200);
    assert_eq!(count_sent(&mut t), 1, "first RTO (the RTT is now 300 ms)");
    send!(
        t,
        time 300,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 4,
            ..SEND_TEMPL
        }
    );
    t.tcp.send(c, b"def").unwrap();
    assert_eq!(count_sent(&mut t), 1);
    for ms in 301..600 {
        t.at(ms);
        count_sent(&mut t);
    }
    send!(
        t,
        time 600,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 7,
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.stats().rto_fired, 1, "spurious second timeout");
}

/// `high_rxt` starts at the ISS. (It started at 0: with an ISS in the upper half of the
/// sequence space, 0 read as ahead of SND.MAX and `pipe()`, BBR's inflight outside recovery,
/// counted every unSACKed byte twice until the first recovery.)
#[test]
fn pipe_of_a_fresh_connection_is_its_flight() {
    let cf = TcpConfig {
        sack: true,
        send_buf: 4096,
        congestion: Congestion::Bbr,
        ..cfg()
    };
    let (mut t, c) = super::options::sack_established_isn(cf, 0x9000_0000);
    t.tcp.send(c, &[1u8; 500]).unwrap();
    count_sent(&mut t);
    let k = &t.tcp.conns[c.index() as usize];
    let flight = k.snd_max.wrapping_sub(k.snd_una);
    assert!(flight > 0);
    assert_eq!(k.pipe(), flight, "high_rxt = {:#x}", k.high_rxt);
}

/// A bare FIN at a zero receive window is taken (RFC 9293 §3.10.7.4 lets a zero-window
/// receiver accept control at RCV.NXT); the ACK still advertises the full buffer as full. (It
/// took RCV.NXT past the right edge: the window then read as 2^32 − 1 and we advertised
/// 65,535 with no room, and segments far ahead became acceptable.)
#[test]
fn fin_at_a_zero_window_keeps_the_window_shut() {
    let (mut t, c) = tcp_established();
    let data = [9u8; 64];
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: &data,
            ..SEND_TEMPL
        }
    );
    let mut buf = [0u8; 2048];
    let ack = t.recv(&mut buf).unwrap();
    assert_eq!((ack.ack, ack.window), (REMOTE_SEQ + 65, 0));
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 65,
            ack: LOCAL_SEQ + 1,
            ..SEND_TEMPL
        }
    );
    let ack = t.recv(&mut buf).unwrap();
    assert_eq!((ack.ack, ack.window), (REMOTE_SEQ + 66, 0), "the FIN's ACK");
    assert_eq!(t.tcp.state(c), Some(State::CloseWait));
    // Data far beyond the (shut) window is not acceptable: answered with an ACK, not taken.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 66 + 30_000,
            ack: LOCAL_SEQ + 1,
            payload: b"x",
            ..SEND_TEMPL
        }
    );
    let ack = t.recv(&mut buf).unwrap();
    assert_eq!((ack.ack, ack.window), (REMOTE_SEQ + 66, 0));
    assert_eq!(t.tcp.recv_available(c), Ok(64));
}

/// `Closed` is queued even when the event queue is full (`max_events`): an application that
/// never hears of the end of a connection never releases what it holds for it (a review found
/// an inline TLS session and its count kept for good). Other events are still dropped.
#[test]
fn closed_is_queued_past_max_events() {
    let cf = TcpConfig {
        max_events: 1,
        ..cfg()
    };
    let (mut t, c) = super::reliability::established_with(cf, 1460, 256);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            payload: b"hi",
            ..SEND_TEMPL
        }
    );
    send!(
        t,
        TcpRepr {
            flags: RST,
            seq: REMOTE_SEQ + 3,
            ..SEND_TEMPL
        }
    );
    let events = t.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(events[0], Event::Readable { conn } if conn == c));
    assert!(matches!(
        events[1],
        Event::Closed {
            conn,
            reason: CloseReason::Reset
        } if conn == c
    ));
}
