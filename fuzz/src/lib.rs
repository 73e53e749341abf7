//! Helpers shared by the fuzz targets (`fuzz_targets/`): an input cursor, the stack under test,
//! frame builders and a checksum fixer (so that mutated frames get past the checksums and reach
//! the layers behind them).
//!
//! Input encodings (the seed corpus in `corpus/<target>/` is written by
//! `examples/gen_corpus.rs` and, from real captures, `capture_seeds.py`; both follow them):
//!
//! - `frame`: one Ethernet frame, raw.
//! - `stack`: records `[ctl: u8][len: u16 BE][frame: len bytes]`. `ctl & 0x3f` picks the virtual
//!   time advanced before the frame ([`dt`]); `ctl & 0x40`: fix the IPv4/TCP/ICMP checksums
//!   after any rewrite; `ctl & 0x80`: the frame's TCP sequence and acknowledgment numbers are
//!   relative to the live connection of its source port (seq to the stack's last ACK, ack to its
//!   highest sequence sent), so recorded traffic replays against any ISN.
//! - `tcp_established`, `tls_records`: see those targets.

use handshake::app::AppConfig;
use handshake::ipv4::Routes;
use handshake::stack::{Stack, StackConfig};
use handshake::tcp::TcpConfig;
use handshake::wire::checksum;
use handshake::wire::Mac;
use std::net::Ipv4Addr;

/// The stack's MAC.
pub const SERVER_MAC: Mac = Mac([0x02, 0x68, 0x73, 0, 0, 0x01]);
/// The peer's MAC.
pub const PEER_MAC: Mac = Mac([0x02, 0x68, 0x73, 0, 0, 0x02]);
/// The stack's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The peer's address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Echo service port.
pub const ECHO_PORT: u16 = 7;
/// HTTP port.
pub const HTTP_PORT: u16 = 80;

/// Reads fuzz input bytes front to back; past the end everything reads as zero.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// The next four bytes, big-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` next bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

/// Virtual time advanced for a selector `v` (0..64): 0, then 1 µs doubling every two steps
/// (up to ~36 minutes), so that RTOs, delayed ACKs, TIME_WAIT and ARP expiry are all reachable.
pub fn dt(v: u8) -> std::time::Duration {
    let v = u32::from(v & 0x3f);
    if v == 0 {
        return std::time::Duration::ZERO;
    }
    let us = (1u64 << (v / 2)) * (1 + u64::from(v % 2));
    std::time::Duration::from_micros(us)
}

/// The stack under test: 198.18.0.1/24, echo on 7, HTTP on 80, a small flow table so that a
/// fresh stack per input stays cheap, everything else as deployed.
pub fn server_stack() -> Stack {
    let routes = Routes::new(
        vec!["198.18.0.1/24".parse().expect("a valid CIDR")],
        Some(Ipv4Addr::new(198, 18, 0, 254)),
    )
    .expect("valid routes");
    let mut cfg = StackConfig::new(SERVER_MAC, routes);
    cfg.gratuitous_arp = false;
    cfg.frame_size = 2048;
    cfg.tcp = TcpConfig {
        max_flows: 64,
        max_events: 256,
        max_control: 64,
        syn_backlog: 16,
        accept_backlog: 16,
        max_time_wait: 16,
        ..TcpConfig::default()
    };
    cfg.apps = AppConfig {
        echo: Some(ECHO_PORT),
        http: Some(HTTP_PORT),
        ..AppConfig::default()
    };
    Stack::new(cfg)
}

/// Recomputes the checksums of an Ethernet/IPv4 frame where its lengths allow: the IPv4 header
/// checksum, then the TCP or ICMP checksum over the IPv4 payload. Anything else is left alone.
pub fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &mut frame[14..];
    let hl = (ip[0] & 0x0f) as usize * 4;
    if hl < 20 || hl > ip.len() {
        return;
    }
    ip[10..12].fill(0);
    let c = checksum::checksum(&ip[..hl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < hl || total > ip.len() {
        return;
    }
    let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
    let proto = ip[9];
    let l4 = &mut ip[hl..total];
    match proto {
        6 if l4.len() >= 20 => {
            l4[16..18].fill(0);
            let c = checksum::transport(src, dst, 6, l4);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        1 if l4.len() >= 8 => {
            l4[2..4].fill(0);
            let c = checksum::checksum(l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

/// The TCP segment of an Ethernet/IPv4 frame (after checking lengths), or `None`.
pub fn tcp_segment(frame: &[u8]) -> Option<&[u8]> {
    tcp_range(frame).map(|r| &frame[r])
}

/// Byte range of the TCP segment in an Ethernet/IPv4 frame.
pub fn tcp_range(frame: &[u8]) -> Option<std::ops::Range<usize>> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let hl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[9] != 6 || hl < 20 || total < hl + 20 || total > ip.len() {
        return None;
    }
    Some(14 + hl..14 + total)
}

/// What the harness knows of one connection from the stack's segments: its highest sequence
/// sent (`snd_max`) and its last acknowledgment (`rcv_nxt`). Keyed by the peer's port.
#[derive(Debug, Default)]
pub struct Tracker {
    conns: Vec<(u16, u32, u32)>,
}

impl Tracker {
    /// Learns from a frame the stack sent.
    pub fn learn(&mut self, frame: &[u8]) {
        let Some(seg) = tcp_segment(frame) else {
            return;
        };
        let Ok(t) = handshake::wire::tcp::TcpRepr::parse_bytes(seg) else {
            return;
        };
        let end = t.seq.wrapping_add(t.seq_len());
        let ack = if t.has(handshake::wire::tcp::flags::ACK) {
            Some(t.ack)
        } else {
            None
        };
        match self.conns.iter_mut().find(|c| c.0 == t.dst_port) {
            Some(c) => {
                if (end.wrapping_sub(c.1) as i32) > 0 || t.has(handshake::wire::tcp::flags::SYN) {
                    c.1 = end;
                }
                if let Some(a) = ack {
                    c.2 = a;
                }
            }
            None => {
                if self.conns.len() >= 64 {
                    self.conns.remove(0);
                }
                self.conns.push((t.dst_port, end, ack.unwrap_or(0)));
            }
        }
    }

    /// `(snd_max, rcv_nxt)` of the stack's connection with the peer port `port`.
    pub fn get(&self, port: u16) -> Option<(u32, u32)> {
        self.conns.iter().find(|c| c.0 == port).map(|c| (c.1, c.2))
    }

    /// Makes the relative seq/ack of a peer frame absolute (the `stack` encoding's bit 0x80).
    pub fn absolutise(&self, frame: &mut [u8]) {
        let Some(r) = tcp_range(frame) else { return };
        let seg = &mut frame[r];
        let sport = u16::from_be_bytes([seg[0], seg[1]]);
        let Some((snd_max, rcv_nxt)) = self.get(sport) else {
            return;
        };
        let seq = u32::from_be_bytes(seg[4..8].try_into().expect("4 bytes"));
        let ack = u32::from_be_bytes(seg[8..12].try_into().expect("4 bytes"));
        seg[4..8].copy_from_slice(&rcv_nxt.wrapping_add(seq).to_be_bytes());
        seg[8..12].copy_from_slice(&snd_max.wrapping_add(ack).to_be_bytes());
    }

    /// The inverse of [`Tracker::absolutise`] (for writing the seed corpus).
    pub fn relativise(&self, frame: &mut [u8]) {
        let Some(r) = tcp_range(frame) else { return };
        let seg = &mut frame[r];
        let sport = u16::from_be_bytes([seg[0], seg[1]]);
        let Some((snd_max, rcv_nxt)) = self.get(sport) else {
            return;
        };
        let seq = u32::from_be_bytes(seg[4..8].try_into().expect("4 bytes"));
        let ack = u32::from_be_bytes(seg[8..12].try_into().expect("4 bytes"));
        seg[4..8].copy_from_slice(&seq.wrapping_sub(rcv_nxt).to_be_bytes());
        seg[8..12].copy_from_slice(&ack.wrapping_sub(snd_max).to_be_bytes());
    }
}

/// Runs batches until the stack has nothing more to receive or send (at most 64 rounds),
/// handing every frame it sent to `sent` and learning its TCP sequence state; asserts after
/// every batch that each frame buffer of the device is in exactly one place.
pub fn drain(
    st: &mut Stack,
    dev: &mut handshake::device::mem::MemDevice,
    now: handshake::Instant,
    tracker: &mut Tracker,
    mut sent: impl FnMut(&[u8]),
) {
    dev.set_clock(now);
    for _ in 0..64 {
        let (rx, tx) = handshake::stack::run_batch(st, dev, now);
        assert!(dev.conserved(), "a frame buffer leaked or was freed twice");
        for f in dev.take_all() {
            tracker.learn(&f);
            sent(&f);
        }
        if rx == 0 && tx == 0 {
            break;
        }
    }
    assert!(dev.conserved(), "a frame buffer leaked or was freed twice");
    assert_eq!(dev.rx_pending(), 0, "every received frame was handled");
}
