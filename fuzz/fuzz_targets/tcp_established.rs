//! An established connection fed fuzz-chosen segments: flags, sequence and acknowledgment
//! numbers near the live window (relative to the engine's last ACK and highest sequence sent),
//! window, options (structured or raw bytes), payload; interleaved with application sends,
//! reads, closes and virtual time.
//!
//! Encoding: `[cfg][peer isn: u32][peer mss: u16][peer ws: u8]` then ops, each `[op]` + operands
//! (see `step`); the peer ISN modulo 3 also picks the congestion control (CUBIC, NewReno, BBR). Peer payload bytes are a function of their sequence offset, the application's
//! bytes a function of their stream offset, so the checks are exact:
//! - `recv` returns exactly the peer's stream, in order, never more than was sent;
//! - every payload the engine sends is the application's stream at that offset, within what
//!   the application wrote, at most one MSS;
//! - every segment the engine emits parses and checksums, between our addresses and ports;
//! - the per-state flow counters always add up to the table size.
#![no_main]

use handshake::tcp::{Congestion, ConnId, Event, State, Tcp, TcpConfig};
use handshake::wire::checksum;
use handshake::wire::tcp::{flags, SackBlock, TcpOptions, TcpRepr, Timestamps};
use handshake::Instant;
use handshake_fuzz::{dt, Input, PEER_IP, SERVER_IP};
use libfuzzer_sys::fuzz_target;

const LPORT: u16 = 80;
const RPORT: u16 = 40000;
const MAX_FLOWS: usize = 8;

/// Peer byte at stream offset `k`.
fn peer_byte(k: u32) -> u8 {
    (k.wrapping_mul(2_654_435_761) >> 11) as u8
}
/// Application byte at stream offset `k`.
fn app_byte(k: u64) -> u8 {
    (k.wrapping_mul(0x9e37_79b9) >> 7) as u8 ^ 0x5a
}

struct H {
    tcp: Tcp,
    now: Instant,
    conn: Option<ConnId>,
    peer_isn: u32,
    our_isn: u32,
    /// The engine's last acknowledgment (its RCV.NXT as we saw it).
    eng_ack: u32,
    /// The engine's highest sequence sent (SND.MAX).
    eng_max: u32,
    eng_tsval: u32,
    peer_ts: u32,
    /// Bytes the application wrote and read.
    app_sent: u64,
    app_read: u64,
    /// Highest peer stream offset ever carried by a segment.
    peer_max: u64,
    ts: bool,
    buf: Vec<u8>,
    seg: Vec<u8>,
}

impl H {
    fn id(&self) -> ConnId {
        self.conn.expect("established before the ops")
    }

    fn inject(&mut self, seq: u32, ack: u32, fl: u8, window: u16, opts: &[u8], payload_len: usize) {
        let hl = (20 + opts.len()).div_ceil(4) * 4;
        self.seg.clear();
        self.seg.resize(hl + payload_len, 0);
        let s = &mut self.seg;
        s[0..2].copy_from_slice(&RPORT.to_be_bytes());
        s[2..4].copy_from_slice(&LPORT.to_be_bytes());
        s[4..8].copy_from_slice(&seq.to_be_bytes());
        s[8..12].copy_from_slice(&ack.to_be_bytes());
        s[12] = ((hl / 4) as u8) << 4;
        s[13] = fl;
        s[14..16].copy_from_slice(&window.to_be_bytes());
        s[20..20 + opts.len()].copy_from_slice(opts);
        let data_seq = seq.wrapping_add(u32::from(fl & flags::SYN != 0));
        let off0 = data_seq.wrapping_sub(self.peer_isn.wrapping_add(1));
        for (i, b) in s[hl..].iter_mut().enumerate() {
            *b = peer_byte(off0.wrapping_add(i as u32));
        }
        // Offsets are signed around the start of the stream (a segment may begin before it).
        let end = i64::from(off0 as i32) + payload_len as i64;
        if payload_len > 0 && end > 0 {
            self.peer_max = self.peer_max.max(end as u64);
        }
        let c = checksum::transport(PEER_IP.octets(), SERVER_IP.octets(), 6, s);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        self.tcp
            .handle_segment(self.now, PEER_IP, SERVER_IP, &self.seg);
    }

    fn drain(&mut self) {
        for _ in 0..1024 {
            let Some(t) = self.tcp.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            assert_eq!((t.src, t.dst), (SERVER_IP, PEER_IP), "addresses");
            let seg = &self.buf[..t.len];
            assert!(
                checksum::verify_transport(SERVER_IP.octets(), PEER_IP.octets(), 6, seg),
                "checksum"
            );
            let r = TcpRepr::parse_bytes(seg).expect("we emit valid segments");
            assert_eq!((r.src_port, r.dst_port), (LPORT, RPORT), "ports");
            let end = r.seq.wrapping_add(r.seq_len());
            if (end.wrapping_sub(self.eng_max) as i32) > 0 {
                self.eng_max = end;
            }
            if r.has(flags::ACK) {
                self.eng_ack = r.ack;
            }
            if let Some(ts) = r.options.timestamps {
                self.eng_tsval = ts.val;
            }
            if !r.payload.is_empty() {
                assert!(
                    r.payload.len() <= 1460,
                    "payload {} over the MSS",
                    r.payload.len()
                );
                let data_seq = r.seq.wrapping_add(u32::from(r.has(flags::SYN)));
                let off = u64::from(data_seq.wrapping_sub(self.our_isn.wrapping_add(1)));
                assert!(
                    off + r.payload.len() as u64 <= self.app_sent,
                    "sent bytes {off}+{} the application never wrote ({})",
                    r.payload.len(),
                    self.app_sent
                );
                for (i, b) in r.payload.iter().enumerate() {
                    assert_eq!(
                        *b,
                        app_byte(off + i as u64),
                        "sent byte at offset {}",
                        off + i as u64
                    );
                }
            }
        }
        while let Some(ev) = self.tcp.poll_event() {
            if let Event::Accepted { conn, .. } = ev {
                assert_ne!(
                    Some(conn),
                    self.conn,
                    "a live handle is never handed out twice"
                );
            }
        }
        let s = &self.tcp.stats().flows_by_state;
        assert_eq!(
            s.iter().sum::<u64>(),
            MAX_FLOWS as u64,
            "flow counters add up: {s:?}"
        );
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.u8();
        match op & 7 {
            0..=3 => {
                let mut fl = input.u8();
                if op & 0x80 != 0 {
                    fl = flags::ACK | (fl & (flags::PSH | flags::FIN));
                }
                let dseq = input.u16() as i16;
                let dack = input.u16() as i16;
                let seq = self
                    .eng_ack
                    .wrapping_add(if op & 0x40 != 0 { 0 } else { dseq as u32 });
                let ack = self
                    .eng_max
                    .wrapping_add(if op & 0x20 != 0 { 0 } else { dack as u32 });
                let window = input.u16();
                let sel = input.u8();
                let mut opts = [0u8; 40];
                let n = if sel & 0x04 != 0 {
                    let k = usize::from(input.u8() % 41);
                    let raw = input.bytes(k);
                    opts[..raw.len()].copy_from_slice(raw);
                    raw.len()
                } else {
                    let mut o = TcpOptions::NONE;
                    if sel & 0x01 != 0 || (self.ts && sel & 0x10 == 0) {
                        self.peer_ts = self.peer_ts.wrapping_add(u32::from(input.u8()));
                        o.timestamps = Some(Timestamps {
                            val: self.peer_ts,
                            ecr: self.eng_tsval,
                        });
                    }
                    if sel & 0x02 != 0 {
                        let left = self.eng_max.wrapping_sub(u32::from(input.u16()));
                        o.sack[0] = SackBlock {
                            left,
                            right: left.wrapping_add(u32::from(input.u16())),
                        };
                        o.sack_len = 1;
                    }
                    if sel & 0x08 != 0 {
                        o.mss = Some(input.u16());
                        o.window_scale = Some(input.u8());
                    }
                    o.emit(&mut opts).unwrap_or(0)
                };
                let len = usize::from(input.u16()) % 3000;
                self.inject(seq, ack, fl, window, &opts[..n], len);
            }
            4 => {
                let n = usize::from(input.u16());
                let data: Vec<u8> = (0..n as u64).map(|i| app_byte(self.app_sent + i)).collect();
                if let Ok(k) = self.tcp.send(self.id(), &data) {
                    assert!(k <= n);
                    self.app_sent += k as u64;
                }
            }
            5 => {
                let n = usize::from(input.u16()) + 1;
                let mut buf = vec![0u8; n];
                if let Ok(k) = self.tcp.recv(self.id(), &mut buf) {
                    assert!(k <= n);
                    for (i, b) in buf[..k].iter().enumerate() {
                        let off = self.app_read + i as u64;
                        assert_eq!(*b, peer_byte(off as u32), "received byte at offset {off}");
                    }
                    self.app_read += k as u64;
                    assert!(
                        self.app_read <= self.peer_max,
                        "read {} bytes, the peer sent {}",
                        self.app_read,
                        self.peer_max
                    );
                }
            }
            6 => {
                self.now += dt(input.u8());
                self.tcp.handle_timeout(self.now);
            }
            _ => match input.u8() % 8 {
                0 => {
                    let _ = self.tcp.shutdown(self.id());
                }
                1 => {
                    let _ = self.tcp.close(self.id());
                }
                2 => {
                    let _ = self.tcp.abort(self.id());
                }
                3 => {
                    let _ = self.tcp.set_nodelay(self.id(), true);
                }
                _ => {
                    let _ = self.tcp.recv_available(self.id());
                    let _ = self.tcp.send_capacity(self.id());
                    let _ = self.tcp.state(self.id());
                }
            },
        }
        self.drain();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let c = input.u8();
    let peer_isn = input.u32();
    let cfg = TcpConfig {
        // The congestion control from the peer's ISN (arbitrary anyway): the encoding stays
        // as it was, and every algorithm's recovery meets the fuzzed ACKs.
        congestion: match peer_isn % 3 {
            0 => Congestion::Cubic,
            1 => Congestion::NewReno,
            _ => Congestion::Bbr,
        },
        max_flows: MAX_FLOWS,
        window_scale: c & 1 != 0,
        sack: c & 2 != 0,
        timestamps: c & 4 != 0,
        delayed_ack_ms: if c & 8 != 0 { 40 } else { 0 },
        send_buf: if c & 16 != 0 { 4096 } else { 64 * 1024 },
        recv_buf: if c & 32 != 0 { 4096 } else { 64 * 1024 },
        max_events: 64,
        ..TcpConfig::default()
    };
    let mut tcp = Tcp::new(cfg, [0x42; 32]);
    tcp.listen(LPORT).expect("listen");
    let mss = input.u16();
    let ws = input.u8();
    let mut h = H {
        tcp,
        now: Instant::from_secs(1),
        conn: None,
        peer_isn,
        our_isn: 0,
        eng_ack: 0,
        eng_max: 0,
        eng_tsval: 0,
        peer_ts: 1000,
        app_sent: 0,
        app_read: 0,
        peer_max: 0,
        ts: c & 4 != 0,
        buf: vec![0u8; 2048],
        seg: Vec::with_capacity(4096),
    };
    // The handshake: SYN with the peer's options, our SYN-ACK, the ACK.
    let mut o = TcpOptions {
        mss: Some(mss),
        window_scale: (c & 0x40 != 0).then_some(ws),
        sack_permitted: c & 0x80 != 0,
        ..TcpOptions::NONE
    };
    if h.ts {
        o.timestamps = Some(Timestamps { val: 1000, ecr: 0 });
    }
    let mut ob = [0u8; 40];
    let n = o.emit(&mut ob).expect("SYN options fit");
    h.inject(peer_isn, 0, flags::SYN, 65535, &ob[..n], 0);
    let t = h.tcp.poll_transmit(h.now, &mut h.buf).expect("a SYN-ACK");
    let synack = TcpRepr::parse_bytes(&h.buf[..t.len]).expect("valid SYN-ACK");
    assert_eq!(synack.flags, flags::SYN | flags::ACK);
    assert_eq!(synack.ack, peer_isn.wrapping_add(1));
    h.our_isn = synack.seq;
    h.eng_ack = synack.ack;
    h.eng_max = synack.seq.wrapping_add(1);
    if let Some(ts) = synack.options.timestamps {
        h.eng_tsval = ts.val;
    }
    let mut ob = [0u8; 40];
    let n = if synack.options.timestamps.is_some() {
        TcpOptions {
            timestamps: Some(Timestamps {
                val: 1001,
                ecr: h.eng_tsval,
            }),
            ..TcpOptions::NONE
        }
        .emit(&mut ob)
        .expect("fits")
    } else {
        0
    };
    h.ts = synack.options.timestamps.is_some();
    h.inject(
        peer_isn.wrapping_add(1),
        h.eng_max,
        flags::ACK,
        65535,
        &ob[..n],
        0,
    );
    let conn = match h.tcp.poll_event() {
        Some(Event::Accepted { conn, .. }) => conn,
        e => panic!("no Accepted after the handshake: {e:?}"),
    };
    h.conn = Some(conn);
    assert_eq!(h.tcp.state(conn), Some(State::Established));
    h.drain();
    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        h.step(&mut input);
        steps += 1;
    }
    // Run every timer out: retransmissions give up, TIME_WAIT ends, the table empties.
    for v in [40u8, 46, 50, 54, 58, 62, 63, 63, 63] {
        h.now += dt(v);
        h.tcp.handle_timeout(h.now);
        h.drain();
    }
    if h.tcp.state(conn).is_none() {
        let mut buf = [0u8; 16];
        assert!(
            h.tcp.recv(conn, &mut buf).is_err(),
            "a dead handle reads nothing"
        );
    }
});
