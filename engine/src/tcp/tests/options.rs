//! Options in the state machine: MSS clamp, window scaling, timestamps + PAWS + RTT, SACK.

use super::*;

fn opts_cfg() -> TcpConfig {
    TcpConfig {
        window_scale: true,
        sack: true,
        timestamps: true,
        recv_buf: 1 << 20,
        send_buf: 4096,
        ..cfg()
    }
}

const PEER_TS: u32 = 1000;

fn peer_syn_opts() -> TcpOptions {
    TcpOptions {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some(Timestamps {
            val: PEER_TS,
            ecr: 0,
        }),
        ..TcpOptions::NONE
    }
}

fn ts(val: u32, ecr: u32) -> TcpOptions {
    TcpOptions {
        timestamps: Some(Timestamps { val, ecr }),
        ..TcpOptions::NONE
    }
}

/// A listener with every option on that got the peer's SYN (window scale 7, SACK,
/// timestamps); our TS clock offset is 1000 (so TSval = 1000 + ms).
fn syn_received_opts() -> T {
    let mut t = tcp_listen_with(opts_cfg());
    t.tcp.test_ts_offset = Some(1000);
    send!(
        t,
        TcpRepr {
            options: peer_syn_opts(),
            ..syn()
        }
    );
    t
}

/// Established with window scale 7 (peer) / 5 (ours), SACK and timestamps; our TS clock
/// offset is 1000 (so TSval = 1000 + ms).
fn established_opts() -> (T, ConnId) {
    let mut t = syn_received_opts();
    recv!(
        t,
        [TcpRepr {
            flags: SYN | ACK,
            seq: LOCAL_SEQ,
            ack: REMOTE_SEQ + 1,
            window: 65535,
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(5),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    val: 1000,
                    ecr: PEER_TS
                }),
                ..TcpOptions::NONE
            },
            ..RECV_TEMPL
        }]
    );
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 100,
            options: ts(PEER_TS + 1, 1000),
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    (t, conn)
}

#[test]
fn test_syn_received_options_negotiated() {
    let (t, c) = established_opts();
    let k = &t.tcp.conns[c.index() as usize];
    assert!(k.ws_ok && k.sack_ok && k.ts_ok);
    assert_eq!((k.snd_shift, k.rcv_shift), (7, 5));
    assert_eq!(k.snd_wnd, 100 << 7);
    assert_eq!(k.mss, 1448, "MSS less the 12 bytes of timestamps");
    assert_eq!(k.ts_recent, PEER_TS + 1);
}

#[test]
fn test_window_scale_only_when_both_offer() {
    let mut t = tcp_listen_with(opts_cfg());
    send!(
        t,
        TcpRepr {
            options: TcpOptions {
                window_scale: None,
                ..peer_syn_opts()
            },
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    let r = t.recv(&mut buf).unwrap();
    assert_eq!(r.options.window_scale, None);
    // And we never offer options the configuration disables.
    let mut t = tcp_listen();
    send!(
        t,
        TcpRepr {
            options: peer_syn_opts(),
            ..syn()
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
}

#[test]
fn test_mss_clamped_by_mtu() {
    let mut t = tcp_listen_with(TcpConfig { mtu: 1280, ..cfg() });
    send!(t, syn());
    let mut buf = [0u8; 2048];
    assert_eq!(t.recv(&mut buf).unwrap().options.mss, Some(1240));
    let (mut t, c) = tcp_syn_sent_with(TcpConfig {
        mss: 9000,
        mtu: 9000,
        send_buf: 20_000,
        ..cfg()
    });
    assert_eq!(t.recv(&mut buf).unwrap().options.mss, Some(8960));
    // The peer's smaller MSS wins for what we send.
    send!(
        t,
        TcpRepr {
            flags: SYN | ACK,
            seq: REMOTE_SEQ,
            ack: LOCAL_SEQ + 1,
            window: 65535,
            options: TcpOptions {
                mss: Some(1000),
                ..TcpOptions::NONE
            },
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.conns[c.index() as usize].mss, 1000);
}

#[test]
fn test_window_scaled_both_ways() {
    let (mut t, c) = established_opts();
    t.at(5);
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 100,
            options: ts(PEER_TS + 2, 1000),
            payload: &[7; 10],
            ..SEND_TEMPL
        }
    );
    // (2^20 − 10) >> 5 = 32767.
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 11,
            window: 32767,
            options: ts(1005, PEER_TS + 2),
            ..RECV_TEMPL
        }]
    );
    // We may send up to 100 << 7 bytes; the send buffer (4096) is the limit here.
    t.tcp.set_nodelay(c, true).unwrap();
    assert_eq!(t.tcp.send(c, &[1; 4096]), Ok(4096));
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while let Some(r) = t.recv(&mut buf) {
        n += r.payload.len();
    }
    assert_eq!(n, 4096);
}

#[test]
fn test_timestamps_echoed_and_paws_drops_old() {
    let (mut t, c) = established_opts();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 100,
            options: ts(PEER_TS + 5, 1000),
            payload: b"new",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 4,
            window: 32767,
            options: ts(1000, PEER_TS + 5),
            ..RECV_TEMPL
        }]
    );
    // An old duplicate with an older timestamp: dropped by PAWS, answered with an ACK.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 4,
            ack: LOCAL_SEQ + 1,
            window: 100,
            options: ts(PEER_TS + 1, 1000),
            payload: b"old",
            ..SEND_TEMPL
        }
    );
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 4,
            window: 32767,
            options: ts(1000, PEER_TS + 5),
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.stats().paws_drops, 1);
    assert_eq!(t.tcp.recv_available(c), Ok(3));
}

#[test]
fn test_timestamps_wrap_around() {
    let mut t = tcp_listen_with(opts_cfg());
    t.tcp.test_ts_offset = Some(0xffff_fff0);
    let o = TcpOptions {
        timestamps: Some(Timestamps {
            val: 0xffff_fffe,
            ecr: 0,
        }),
        ..peer_syn_opts()
    };
    send!(
        t,
        TcpRepr {
            options: o,
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    assert_eq!(
        t.recv(&mut buf).unwrap().options.timestamps,
        Some(Timestamps {
            val: 0xffff_fff0,
            ecr: 0xffff_fffe
        })
    );
    send!(t, time 20, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 1, window: 100, options: ts(3, 0xffff_fff0), ..SEND_TEMPL });
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    // The peer's clock wrapped: 3 is newer than 0xfffffffe, so data is accepted.
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 100,
            options: ts(5, 0xffff_fff0),
            payload: b"w",
            ..SEND_TEMPL
        }
    );
    // Our clock wrapped too: 0xfffffff0 + 20 ms = 4.
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 2,
            window: 32767,
            options: ts(4, 5),
            ..RECV_TEMPL
        }]
    );
    assert_eq!(t.tcp.recv_available(c), Ok(1));
    // RTT from the echo across the wrap: sent at TSval 0xfffffff0, echoed at 20 ms → 20 ms.
    let k = &t.tcp.conns[c.index() as usize];
    assert_eq!(k.srtt_us, 20_000);
}

#[test]
fn test_rtt_from_timestamps_even_for_retransmissions() {
    let (mut t, c) = established_opts();
    t.tcp.send(c, b"abc").unwrap();
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    t.at(200); // RTO → retransmission at TSval 1200
    assert_eq!(
        t.recv(&mut buf).unwrap().options.timestamps.unwrap().val,
        1200
    );
    // The ACK echoes the retransmission's timestamp: RTT 50 ms, unambiguous (RFC 7323 §4).
    send!(t, time 250, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 4, window: 100, options: ts(PEER_TS + 9, 1200), ..SEND_TEMPL });
    let k = &t.tcp.conns[c.index() as usize];
    // Second sample 50 ms after the handshake's 0: SRTT = 50/8.
    assert_eq!(k.srtt_us, 6_250);
}

#[test]
fn test_forged_timestamp_echo_gives_no_rtt_sample() {
    // An echo of a TSval this connection never sent (2^30 ms before it existed) is no RTT
    // sample: taken, SRTT would be 12 days, and the RTO and BBR's pacing with it.
    let mut t = syn_received_opts();
    let mut buf = [0u8; 2048];
    let syn_ack = t.recv(&mut buf).unwrap();
    assert_eq!(syn_ack.options.timestamps.unwrap().val, 1000);
    send!(t, time 30, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 1, window: 100, options: ts(PEER_TS + 1, 1000u32.wrapping_sub(1 << 30)), ..SEND_TEMPL });
    let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
        panic!("the handshake completes")
    };
    // The SYN-ACK's own timing (Karn) gives the sample instead: 30 ms.
    assert_eq!(t.tcp.conns[conn.index() as usize].srtt_us, 30_000);
    // A true echo still counts: data at TSval 1030, echoed 20 ms later.
    t.tcp.send(conn, b"abc").unwrap();
    assert_eq!(
        t.recv(&mut buf).unwrap().options.timestamps.unwrap().val,
        1030
    );
    send!(t, time 50, TcpRepr { seq: REMOTE_SEQ + 1, ack: LOCAL_SEQ + 4, window: 100, options: ts(PEER_TS + 2, 1030), ..SEND_TEMPL });
    assert_eq!(t.tcp.conns[conn.index() as usize].srtt_us, 28_750);
}

#[test]
fn test_sack_blocks_reported_most_recent_first() {
    let (mut t, _c) = established_opts();
    let seg = |off: u32, p: &'static [u8]| TcpRepr {
        seq: REMOTE_SEQ + 1 + off,
        ack: LOCAL_SEQ + 1,
        window: 100,
        options: ts(PEER_TS + 2, 1000),
        payload: p,
        ..SEND_TEMPL
    };
    let sack = |blocks: &[(u32, u32)]| {
        let mut o = ts(1000, PEER_TS + 1);
        for (i, &(l, r)) in blocks.iter().enumerate() {
            o.sack[i] = SackBlock {
                left: REMOTE_SEQ + 1 + l,
                right: REMOTE_SEQ + 1 + r,
            };
        }
        o.sack_len = blocks.len() as u8;
        o
    };
    send!(t, seg(10, b"bbbb"));
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            window: 32768,
            options: sack(&[(10, 14)]),
            ..RECV_TEMPL
        }]
    );
    send!(t, seg(20, b"cc"));
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 1,
            window: 32768,
            options: sack(&[(20, 22), (10, 14)]),
            ..RECV_TEMPL
        }]
    );
    send!(t, seg(30, b"d"));
    send!(t, seg(40, b"e"));
    // One ACK per out-of-order segment, in order, each with its own block first (with
    // timestamps three blocks fit: then the lowest ones): a single ACK for both would name
    // only one of the two new ranges.
    recv!(
        t,
        [
            TcpRepr {
                seq: LOCAL_SEQ + 1,
                ack: REMOTE_SEQ + 1,
                window: 32768,
                options: sack(&[(30, 31), (10, 14), (20, 22)]),
                ..RECV_TEMPL
            },
            TcpRepr {
                seq: LOCAL_SEQ + 1,
                ack: REMOTE_SEQ + 1,
                window: 32768,
                options: sack(&[(40, 41), (10, 14), (20, 22)]),
                ..RECV_TEMPL
            }
        ]
    );
    // Filling the first hole: the cumulative ACK moves, the rest are still SACKed.
    send!(t, seg(0, b"aaaaaaaaaa"));
    // The in-order segment also refreshed TS.Recent (RFC 7323 §4.3); the latest block stays
    // first.
    let mut o = sack(&[(40, 41), (20, 22), (30, 31)]);
    o.timestamps = Some(Timestamps {
        val: 1000,
        ecr: PEER_TS + 2,
    });
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 1,
            ack: REMOTE_SEQ + 15,
            window: 32767,
            options: o,
            ..RECV_TEMPL
        }]
    );
}

#[test]
fn test_sack_recovery_retransmits_holes_only() {
    let cf = TcpConfig {
        sack: true,
        send_buf: 4096,
        congestion: Congestion::NewReno,
        ..cfg()
    };
    let mut t = tcp_listen_with(cf);
    send!(
        t,
        TcpRepr {
            window: 4096,
            options: TcpOptions {
                mss: Some(100),
                sack_permitted: true,
                ..TcpOptions::NONE
            },
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1,
            window: 4096,
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    t.tcp.set_nodelay(c, true).unwrap();
    let data: Vec<u8> = (0..800u32).map(|i| (i * 7) as u8).collect();
    t.tcp.send(c, &data).unwrap();
    for _ in 0..8 {
        t.recv(&mut buf).unwrap();
    }
    recv_nothing!(t);
    let ack = |n: u32, blocks: &[(u32, u32)]| {
        let mut o = TcpOptions::NONE;
        for (i, &(l, r)) in blocks.iter().enumerate() {
            o.sack[i] = SackBlock {
                left: LOCAL_SEQ + 1 + l,
                right: LOCAL_SEQ + 1 + r,
            };
        }
        o.sack_len = blocks.len() as u8;
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 1 + n,
            window: 4096,
            options: o,
            ..SEND_TEMPL
        }
    };
    // Segments 2 (100..200) and 4 (300..400) are lost.
    send!(t, ack(100, &[]));
    send!(t, ack(100, &[(200, 300)]));
    send!(t, ack(100, &[(400, 500), (200, 300)]));
    recv_nothing!(t);
    send!(t, ack(100, &[(400, 600), (200, 300)]));
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 101,
            ack: REMOTE_SEQ + 1,
            payload: &data[100..200],
            ..RECV_TEMPL
        }]
    );
    // A further duplicate ACK: the next hole goes at once, skipping the SACKed 200..300.
    send!(t, ack(100, &[(400, 700), (200, 300)]));
    recv!(
        t,
        [TcpRepr {
            seq: LOCAL_SEQ + 301,
            ack: REMOTE_SEQ + 1,
            payload: &data[300..400],
            ..RECV_TEMPL
        }]
    );
    // Nothing else is a hole (700..800 is above every SACKed byte).
    send!(t, ack(100, &[(400, 800), (200, 300)]));
    recv_nothing!(t);
    send!(t, ack(800, &[]));
    recv_nothing!(t);
    assert_eq!(t.tcp.stats().retransmits, 2);
}

#[test]
fn test_time_wait_reuse_by_newer_timestamp() {
    let (mut t, c) = established_opts();
    t.tcp.shutdown(c).unwrap();
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            window: 100,
            options: ts(PEER_TS + 2, 1000),
            ..SEND_TEMPL
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::TimeWait));
    // A SYN with a lower sequence number but a newer timestamp reuses the tuple (as Linux).
    let o = TcpOptions {
        timestamps: Some(Timestamps {
            val: PEER_TS + 3,
            ecr: 0,
        }),
        ..peer_syn_opts()
    };
    send!(t, time 1, TcpRepr { seq: REMOTE_SEQ - 1000, options: o, ..syn() });
    assert_eq!(t.tcp.state(c), None);
    assert_eq!(t.tcp.stats().time_wait_reused, 1);
    while let Some(r) = t.recv(&mut buf) {
        if r.has(SYN | ACK) {
            assert_eq!(r.seq, LOCAL_SEQ + 2 + 65537);
            assert_eq!(r.ack, REMOTE_SEQ - 999);
            return;
        }
    }
    panic!("no SYN-ACK");
}

#[test]
fn test_time_wait_old_timestamp_not_reused() {
    let (mut t, c) = established_opts();
    t.tcp.shutdown(c).unwrap();
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    send!(
        t,
        TcpRepr {
            flags: FIN | ACK,
            seq: REMOTE_SEQ + 1,
            ack: LOCAL_SEQ + 2,
            window: 100,
            options: ts(PEER_TS + 2, 1000),
            ..SEND_TEMPL
        }
    );
    while t.recv(&mut buf).is_some() {}
    let o = TcpOptions {
        timestamps: Some(Timestamps {
            val: PEER_TS,
            ecr: 0,
        }),
        ..peer_syn_opts()
    };
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 100_000,
            options: o,
            ..syn()
        }
    );
    assert_eq!(t.tcp.state(c), Some(State::TimeWait));
    assert_eq!(t.tcp.stats().time_wait_reused, 0);
}

/// Established with SACK, peer MSS 100 and window 4096, Nagle off; 4 KiB send buffer.
fn sack_established(cc: Congestion) -> (T, ConnId) {
    sack_established_with(TcpConfig {
        sack: true,
        send_buf: 4096,
        congestion: cc,
        ..cfg()
    })
}

/// [`sack_established`] with the configuration `cf`.
fn sack_established_with(cf: TcpConfig) -> (T, ConnId) {
    sack_established_isn(cf, LOCAL_SEQ)
}

/// [`sack_established_with`] with our ISN `isn`.
pub(super) fn sack_established_isn(cf: TcpConfig, isn: u32) -> (T, ConnId) {
    let mut t = tcp_listen_with(cf);
    t.tcp.test_isn = Some(isn);
    send!(
        t,
        TcpRepr {
            window: 4096,
            options: TcpOptions {
                mss: Some(100),
                sack_permitted: true,
                ..TcpOptions::NONE
            },
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    send!(
        t,
        TcpRepr {
            seq: REMOTE_SEQ + 1,
            ack: isn.wrapping_add(1),
            window: 4096,
            ..SEND_TEMPL
        }
    );
    let Some(Event::Accepted { conn: c, .. }) = t.tcp.poll_event() else {
        panic!()
    };
    t.tcp.set_nodelay(c, true).unwrap();
    (t, c)
}

/// An ACK from the peer for `n` bytes of our data, with SACK blocks relative to our data.
fn sack_ack(n: u32, blocks: &[(u32, u32)]) -> TcpRepr<'static> {
    let mut o = TcpOptions::NONE;
    for (i, &(l, r)) in blocks.iter().enumerate() {
        o.sack[i] = SackBlock {
            left: LOCAL_SEQ + 1 + l,
            right: LOCAL_SEQ + 1 + r,
        };
    }
    o.sack_len = blocks.len() as u8;
    TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1 + n,
        window: 4096,
        options: o,
        ..SEND_TEMPL
    }
}

fn data_seg(data: &[u8], from: usize) -> TcpRepr<'_> {
    TcpRepr {
        seq: LOCAL_SEQ + 1 + from as u32,
        ack: REMOTE_SEQ + 1,
        payload: &data[from..from + 100],
        ..RECV_TEMPL
    }
}

/// RFC 6675 §5: one ACK whose SACK blocks show three holes lost sends all three at once
/// (the pipe allows it), not one per further ACK.
#[test]
fn test_sack_recovery_repairs_several_holes_per_ack() {
    let (mut t, c) = sack_established(Congestion::NewReno);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    t.tcp.send(c, &data).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        t.recv(&mut buf).unwrap();
    }
    recv_nothing!(t);
    // 100..200, 300..400 and 500..600 are lost; 600..1000 SACKed makes all three lost.
    send!(t, sack_ack(100, &[(600, 1000), (200, 300), (400, 500)]));
    recv!(
        t,
        [
            data_seg(&data, 100),
            data_seg(&data, 300),
            data_seg(&data, 500)
        ]
    );
    assert_eq!(t.tcp.stats().fast_retransmits, 1);
    assert_eq!(t.tcp.stats().retransmits, 3);
    // The retransmission of 300..400 is lost again: the ACK for 100..200 SACKs nothing new
    // beyond what was sent before it, so nothing goes; the full repair ends recovery.
    send!(t, sack_ack(300, &[(400, 500), (600, 1000)]));
    recv_nothing!(t);
    send!(t, sack_ack(1000, &[]));
    recv_nothing!(t);
    let k = &t.tcp.conns[c.index() as usize];
    assert!(!k.in_recovery);
    assert_eq!(k.cc.cwnd, k.cc.ssthresh);
}

/// RFC 8985 §7: with SACK and an RTT sample, a silent tail is probed after 2·SRTT (at least
/// two clock ticks) by resending the last segment, long before the 200 ms RTO.
#[test]
fn test_tail_loss_probe_resends_last_segment_after_two_srtt() {
    let (mut t, c) = sack_established(Congestion::Cubic);
    let data: Vec<u8> = (0..300u32).map(|i| (i * 5) as u8).collect();
    t.tcp.send(c, &data).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        t.recv(&mut buf).unwrap();
    }
    // The handshake sampled an RTT of 0 and the first segment's ACK one of 1 ms: the probe
    // timeout is the 2 ms floor (two clock ticks), re-armed by the ACK.
    send!(t, time 1, sack_ack(100, &[]));
    recv_nothing!(t);
    recv_nothing!(t, time 2);
    recv!(
        t,
        time 3,
        TcpRepr {
            flags: ACK | PSH,
            ..data_seg(&data, 200)
        }
    );
    recv_nothing!(t);
    assert_eq!(t.tcp.stats().tail_loss_probes, 1);
    assert_eq!(t.tcp.stats().retransmits, 1);
    // One probe per episode: then the RTO (200 ms after the probe) resends from SND.UNA.
    recv_nothing!(t, time 202);
    recv!(t, time 203, data_seg(&data, 100));
    assert_eq!(t.tcp.stats().rto_fired, 1);
}

/// RFC 8985 §7.2: the probe timeout restarts when new data is sent. A single segment in
/// flight waits 2·SRTT plus the peer's delayed-ACK time (40 ms) before its probe; once a
/// second one is sent, the probe comes 2·SRTT after it (the 2 ms floor), not at the 40 ms
/// armed for the first.
#[test]
fn test_probe_timeout_restarts_after_new_data() {
    let (mut t, c) = sack_established_with(TcpConfig {
        sack: true,
        send_buf: 4096,
        delayed_ack_ms: 40,
        ..cfg()
    });
    let data: Vec<u8> = (0..200u32).map(|i| (i * 3) as u8).collect();
    t.tcp.send(c, &data[..100]).unwrap();
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).unwrap();
    recv_nothing!(t, time 10);
    t.tcp.send(c, &data[100..]).unwrap();
    let last = TcpRepr {
        flags: ACK | PSH,
        ..data_seg(&data, 100)
    };
    recv!(t, time 10, last);
    recv_nothing!(t, time 11);
    recv!(t, time 12, last);
    recv_nothing!(t, time 100);
    assert_eq!(t.tcp.stats().tail_loss_probes, 1);
    assert_eq!(t.tcp.stats().retransmits, 1);
}

/// Bulk send to a peer with MSS 1460 over a 1500-byte MTU, through the 1480-byte room the stack
/// gives a segment: every segment is full for the options it actually carries (1448 bytes with
/// timestamps, 1420 with timestamps and three SACK blocks) and goes out at once, never held by
/// Nagle / SWS avoidance until the persist timer. The clock never moves: no timer is needed.
#[test]
fn test_bulk_mss_1460_sends_full_segments_without_waiting() {
    let mut t = tcp_listen_with(TcpConfig {
        send_buf: 1 << 18,
        ..opts_cfg()
    });
    send!(
        t,
        TcpRepr {
            options: peer_syn_opts(),
            ..syn()
        }
    );
    let mut buf = [0u8; 2048];
    t.recv(&mut buf).expect("SYN-ACK");
    let ack = |n: u32, o: TcpOptions| TcpRepr {
        seq: REMOTE_SEQ + 1,
        ack: LOCAL_SEQ + 1 + n,
        window: 65535, // × 2^7
        options: o,
        ..SEND_TEMPL
    };
    send!(t, ack(0, ts(PEER_TS + 1, 0)));
    let Some(Event::Accepted { conn, .. }) = t.tcp.poll_event() else {
        panic!("accepted")
    };
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut acked = 0u32;
    for (phase, want) in [(0, 1448usize), (1, 1420)] {
        if phase == 1 {
            // Out-of-order data from the peer: our segments now carry three SACK blocks.
            for k in 0..3u32 {
                send!(
                    t,
                    TcpRepr {
                        seq: REMOTE_SEQ + 1 + 10 + 20 * k,
                        ack: LOCAL_SEQ + 1 + acked,
                        window: 65535,
                        options: ts(PEER_TS + 2, 0),
                        payload: b"0123456789",
                        ..SEND_TEMPL
                    }
                );
            }
        }
        let base = acked;
        let total = base + data.len() as u32;
        let mut queued = 0;
        while acked < total {
            queued += t.tcp.send(conn, &data[queued..]).unwrap();
            // The stack's room for a segment on a 1500-byte MTU: 1500 − 20 (IPv4).
            let mut room = [0u8; 1480];
            let mut sizes = Vec::new();
            while let Some(tx) = t.tcp.poll_transmit(t.now, &mut room) {
                let seg = TcpRepr::parse_bytes(&room[..tx.len]).unwrap();
                if !seg.payload.is_empty() {
                    assert_eq!(seg.seq, LOCAL_SEQ + 1 + acked + sizes.iter().sum::<u32>());
                    assert_eq!(seg.options.sack_len as usize, 3 * phase);
                    sizes.push(seg.payload.len() as u32);
                }
            }
            let sent: u32 = sizes.iter().sum();
            assert!(
                sent > 0,
                "phase {phase}: data waits at {acked} with nothing in flight"
            );
            for (i, &s) in sizes.iter().enumerate() {
                // Only the segment that ends the data may be short.
                let end = acked + sizes[..=i].iter().sum::<u32>() == total;
                assert!(
                    s as usize == want || end,
                    "phase {phase}: segment {i} of {} is {s} bytes, not {want}",
                    sizes.len()
                );
            }
            acked += sent;
            send!(t, ack(acked, ts(PEER_TS + 2, 0)));
            let _ = t.events();
        }
        assert_eq!(acked as usize, data.len() * (phase + 1), "phase {phase}");
    }
}

/// RFC 8985 §6.2, the reordering window: with a three-segment flight, the first lost and
/// only the second SACKed, RFC 6675 cannot call the first lost (fewer than three segments
/// above it). Once SRTT/4 (at least a clock tick) has passed, it is: recovery starts and the
/// hole goes, ahead of the tail loss probe and long before the RTO.
#[test]
fn test_reorder_window_retransmits_short_flight_hole() {
    let (mut t, c) = sack_established(Congestion::Cubic);
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    t.tcp.send(c, &data).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        t.recv(&mut buf).unwrap();
    }
    send!(t, sack_ack(0, &[(100, 200)]));
    recv_nothing!(t);
    assert_eq!(t.tcp.stats().fast_retransmits, 0);
    recv!(t, time 1, data_seg(&data, 0));
    assert_eq!(t.tcp.stats().reorder_timeouts, 1);
    assert_eq!(t.tcp.stats().fast_retransmits, 1);
    assert_eq!(t.tcp.stats().tail_loss_probes, 0);
    // The repair ends recovery.
    send!(t, time 1, sack_ack(300, &[]));
    recv_nothing!(t, time 300);
    assert!(!t.tcp.conns[c.index() as usize].in_recovery);
    assert_eq!(t.tcp.stats().rto_fired, 0);
}

/// The recovery probe: in SACK recovery the retransmission is lost and no ACK comes back.
/// After 2·SRTT of silence (the 2 ms floor) the hole goes again, once, instead of waiting
/// for the 200 ms RTO; the RTO stays armed behind it.
#[test]
fn test_recovery_probe_resends_lost_retransmission() {
    let (mut t, c) = sack_established(Congestion::NewReno);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 11) as u8).collect();
    t.tcp.send(c, &data).unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        t.recv(&mut buf).unwrap();
    }
    // 0..100 lost; 100..1000 SACKed: recovery, the hole goes at once.
    send!(t, sack_ack(0, &[(100, 1000)]));
    recv!(t, [data_seg(&data, 0)]);
    assert_eq!(t.tcp.stats().fast_retransmits, 1);
    // That retransmission is lost too; nothing comes back.
    recv_nothing!(t, time 1);
    recv!(t, time 2, data_seg(&data, 0));
    assert_eq!(t.tcp.stats().recovery_probes, 1);
    assert_eq!(t.tcp.stats().rto_fired, 0);
    // Once per episode: lost again, the RTO resends it.
    recv_nothing!(t, time 201);
    recv!(t, time 202, data_seg(&data, 0));
    assert_eq!(t.tcp.stats().recovery_probes, 1);
    assert_eq!(t.tcp.stats().rto_fired, 1);
}
