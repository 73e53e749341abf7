//! The floor: a server written for the connection-life exchange alone, to measure how cheap that
//! exchange can be on this device at all, whatever the stack.
//!
//! It does what any correct server must do for each of the life's segments, and nothing else:
//! Ethernet and IPv4 checks (header checksum included), the TCP checksum, a keyed flow-table
//! lookup, a SipHash ISN (RFC 6528), sequence and acknowledgment checks, the echoed bytes kept
//! for retransmission, a retransmission deadline per flow on a lazy wheel, and every reply
//! written in place over the received frame (MACs, addresses and ports swapped, headers and
//! checksums rewritten; the echoed payload does not move). It answers ARP requests so that the
//! harness can warm it up like the others.
//!
//! It is not a TCP: anything outside the exchange (options other than MSS, out-of-order data,
//! RST, a window, congestion control, timers firing, an application interface, statistics) is
//! dropped or absent. Its cost is a lower bound for the exchange, not a competitor.

use super::dev::Frames;
use super::frames::{SERVER_IP, SERVER_MAC};
use super::servers::{Server, ECHO_PORT, TCP_BUF};
use handshake::device::{Device, Verdict};
use handshake::wire::checksum;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

const ETH: usize = 14;
const IP: usize = ETH;
const TCP: usize = ETH + 20;

const SYN_RCVD: u8 = 1;
const ESTABLISHED: u8 = 2;
const LAST_ACK: u8 = 3;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Retransmission timeout armed with every segment sent (µs).
const RTO_US: u64 = 200_000;
/// Wheel slots of 1 ms.
const WHEEL: usize = 1024;

struct Flow {
    raddr: u32,
    rport: u16,
    state: u8,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    rto_at: u64,
    wheel_at: u64,
    /// Bytes sent and not yet acknowledged (kept for retransmission): a ring from `tx_head`.
    tx: Box<[u8]>,
    tx_head: usize,
    tx_len: usize,
}

/// The floor server (see the module docs).
pub struct Floor {
    /// Its device.
    pub dev: Frames,
    /// Everything else.
    pub core: Core,
}

/// The floor's state.
pub struct Core {
    flows: Vec<Flow>,
    free: Vec<u32>,
    /// Open addressing, linear probing: flow index + 1, 0 empty.
    table: Vec<u32>,
    hkey: u64,
    /// Keys the ISNs (std's SipHash-1-3, random keys).
    isn_key: RandomState,
    wheel: Vec<Vec<u32>>,
    ident: u16,
    now_us: u64,
    /// Frames dropped (anything outside the exchange).
    pub drops: u64,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Floor {
    /// `max_flows` flow slots, each with a send buffer of [`TCP_BUF`] bytes.
    pub fn new(max_flows: usize) -> Self {
        Floor {
            dev: Frames::new(256),
            core: Core::new(max_flows),
        }
    }
}

impl Core {
    fn new(max_flows: usize) -> Self {
        let cap = (max_flows * 2).next_power_of_two();
        Core {
            flows: (0..max_flows)
                .map(|_| Flow {
                    raddr: 0,
                    rport: 0,
                    state: 0,
                    snd_una: 0,
                    snd_nxt: 0,
                    rcv_nxt: 0,
                    rto_at: u64::MAX,
                    wheel_at: u64::MAX,
                    tx: vec![0; TCP_BUF].into_boxed_slice(),
                    tx_head: 0,
                    tx_len: 0,
                })
                .collect(),
            free: (0..max_flows as u32).rev().collect(),
            table: vec![0; cap],
            hkey: 0x9e37_79b9_7f4a_7c15,
            isn_key: RandomState::new(),
            wheel: (0..WHEEL).map(|_| Vec::with_capacity(64)).collect(),
            ident: 0,
            now_us: 0,
            drops: 0,
        }
    }

    #[inline(always)]
    fn slot(&self, raddr: u32, rport: u16) -> usize {
        let k = ((raddr as u64) << 16 | rport as u64) ^ self.hkey;
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (self.table.len() - 1)
    }

    fn find(&self, raddr: u32, rport: u16) -> Option<(usize, u32)> {
        let mask = self.table.len() - 1;
        let mut s = self.slot(raddr, rport);
        loop {
            let e = self.table[s];
            if e == 0 {
                return None;
            }
            let f = &self.flows[(e - 1) as usize];
            if f.raddr == raddr && f.rport == rport {
                return Some((s, e - 1));
            }
            s = (s + 1) & mask;
        }
    }

    fn insert(&mut self, raddr: u32, rport: u16, idx: u32) {
        let mask = self.table.len() - 1;
        let mut s = self.slot(raddr, rport);
        while self.table[s] != 0 {
            s = (s + 1) & mask;
        }
        self.table[s] = idx + 1;
    }

    /// Removes the entry at `s` (backward-shift deletion: no tombstones).
    fn remove(&mut self, mut s: usize) {
        let mask = self.table.len() - 1;
        self.table[s] = 0;
        let mut j = s;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e == 0 {
                return;
            }
            let f = &self.flows[(e - 1) as usize];
            let home = self.slot(f.raddr, f.rport);
            // Move `j` back to `s` unless its home lies cyclically in (s, j].
            let stays = if s <= j {
                s < home && home <= j
            } else {
                s < home || home <= j
            };
            if !stays {
                self.table[s] = e;
                self.table[j] = 0;
                s = j;
            }
        }
    }

    /// Arms the flow's retransmission deadline (the wheel entry only ever moves earlier).
    #[inline(always)]
    fn arm(&mut self, idx: u32) {
        let at = self.now_us + RTO_US;
        let f = &mut self.flows[idx as usize];
        f.rto_at = at;
        if at < f.wheel_at {
            f.wheel_at = at;
            self.wheel[(at / 1000) as usize % WHEEL].push(idx);
        }
    }

    /// Rewrites the received frame into a reply of `flags` with `payload` bytes already in
    /// place after a 20-byte TCP header (or an MSS option on a SYN-ACK).
    #[inline(always)]
    fn reply(f: &mut [u8], ident: u16, seq: u32, ack: u32, flags: u8, payload: usize) -> usize {
        let opt = if flags & SYN != 0 { 4 } else { 0 };
        let tcp_len = 20 + opt + payload;
        // Ethernet: back to the sender.
        let (dst, src) = f.split_at_mut(6);
        dst.copy_from_slice(&src[..6]);
        f[6..12].copy_from_slice(&SERVER_MAC);
        // IPv4: addresses swapped, new length, identification and checksum.
        let ip = &mut f[IP..IP + 20];
        let mut a = [0u8; 4];
        a.copy_from_slice(&ip[12..16]);
        ip.copy_within(16..20, 12);
        ip[16..20].copy_from_slice(&a);
        ip[1] = 0;
        ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = 64;
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let dst_ip = [ip[12], ip[13], ip[14], ip[15]];
        // TCP: ports swapped.
        let t = &mut f[TCP..TCP + tcp_len];
        let (sp, dp) = (be16(t, 0), be16(t, 2));
        t[0..2].copy_from_slice(&dp.to_be_bytes());
        t[2..4].copy_from_slice(&sp.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((20 + opt) as u8 / 4) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&(TCP_BUF.min(65535) as u16).to_be_bytes());
        t[16..20].copy_from_slice(&[0, 0, 0, 0]);
        if opt != 0 {
            t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        }
        let c = checksum::transport(dst_ip, a, 6, t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        TCP + tcp_len
    }

    fn arp(&mut self, f: &mut [u8], len: usize) -> Verdict {
        let a = &f[ETH..len.min(f.len())];
        if a.len() < 28 || a[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || a[24..28] != SERVER_IP {
            self.drops += 1;
            return Verdict::Drop;
        }
        let mut peer = [0u8; 10];
        peer.copy_from_slice(&a[8..18]);
        let a = &mut f[ETH..ETH + 28];
        a[7] = 2;
        a[18..28].copy_from_slice(&peer);
        a[8..14].copy_from_slice(&SERVER_MAC);
        a[14..18].copy_from_slice(&SERVER_IP);
        f[0..6].copy_from_slice(&peer[..6]);
        f[6..12].copy_from_slice(&SERVER_MAC);
        Verdict::Transmit(ETH + 28)
    }

    #[inline]
    fn handle(&mut self, f: &mut [u8], len: usize) -> Verdict {
        match self.segment(f, len) {
            Some(n) => Verdict::Transmit(n),
            None => Verdict::Drop,
        }
    }

    /// The exchange, one received frame: `Some(len)` when the frame now holds the reply.
    fn segment(&mut self, f: &mut [u8], len: usize) -> Option<usize> {
        let len = len.min(f.len());
        if len < TCP + 20 {
            self.drops += 1;
            return None;
        }
        if f[12..14] == [0x08, 0x06] && f[..6] == [0xff; 6] {
            return match self.arp(f, len) {
                Verdict::Transmit(n) => Some(n),
                Verdict::Drop => None,
            };
        }
        let ip = &f[IP..IP + 20];
        let total = be16(ip, 2) as usize;
        if f[..6] != SERVER_MAC
            || f[12..14] != [0x08, 0x00]
            || ip[0] != 0x45
            || total < 40
            || ETH + total > len
            || ip[9] != 6
            || be16(ip, 6) & 0x3fff != 0
            || ip[8] == 0
            || ip[16..20] != SERVER_IP
            || !checksum::verify(ip)
        {
            self.drops += 1;
            return None;
        }
        let (src, dst) = ([ip[12], ip[13], ip[14], ip[15]], SERVER_IP);
        let t = &f[TCP..ETH + total];
        let hl = (t[12] >> 4) as usize * 4;
        if hl < 20 || hl > t.len() {
            self.drops += 1;
            return None;
        }
        if !checksum::verify_transport(src, dst, 6, t) {
            self.drops += 1;
            return None;
        }
        let (sport, dport) = (be16(t, 0), be16(t, 2));
        let (seq, ack, fl) = (be32(t, 4), be32(t, 8), t[13]);
        let payload = t.len() - hl;
        if dport != ECHO_PORT || fl & RST != 0 {
            self.drops += 1;
            return None;
        }
        let raddr = u32::from_be_bytes(src);
        match self.find(raddr, sport) {
            None => {
                if fl & (SYN | ACK | FIN) != SYN || payload != 0 {
                    self.drops += 1;
                    return None;
                }
                // The MSS option (the only one the exchange carries) is read and ignored
                // beyond its check: replies are small.
                if hl >= 24 && t[20] == 2 && t[21] == 4 && be16(t, 22) < 536 {
                    self.drops += 1;
                    return None;
                }
                let Some(idx) = self.free.pop() else {
                    self.drops += 1;
                    return None;
                };
                // RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.
                let h = self.isn_key.hash_one(
                    (raddr as u128) << 64
                        | (u32::from_be_bytes(dst) as u128) << 32
                        | (sport as u128) << 16
                        | dport as u128,
                );
                let iss = ((self.now_us / 4) as u32).wrapping_add(h as u32);
                let fl = &mut self.flows[idx as usize];
                fl.raddr = raddr;
                fl.rport = sport;
                fl.state = SYN_RCVD;
                fl.snd_una = iss;
                fl.snd_nxt = iss.wrapping_add(1);
                fl.rcv_nxt = seq.wrapping_add(1);
                fl.tx_head = 0;
                fl.tx_len = 0;
                self.insert(raddr, sport, idx);
                self.arm(idx);
                self.ident = self.ident.wrapping_add(1);
                Some(Self::reply(
                    f,
                    self.ident,
                    iss,
                    seq.wrapping_add(1),
                    SYN | ACK,
                    0,
                ))
            }
            Some((slot, idx)) => {
                let fw = &mut self.flows[idx as usize];
                if fl & (SYN | ACK) != ACK
                    || seq != fw.rcv_nxt
                    || ack.wrapping_sub(fw.snd_una) > fw.snd_nxt.wrapping_sub(fw.snd_una)
                {
                    self.drops += 1;
                    return None;
                }
                // Acknowledged bytes leave the retransmission buffer.
                let acked = ack.wrapping_sub(fw.snd_una) as usize;
                if fw.state == SYN_RCVD {
                    if acked == 0 {
                        self.drops += 1;
                        return None;
                    }
                    fw.state = ESTABLISHED;
                } else {
                    let gone = acked.min(fw.tx_len);
                    fw.tx_head = (fw.tx_head + gone) % fw.tx.len();
                    fw.tx_len -= gone;
                }
                fw.snd_una = ack;
                if fw.state == LAST_ACK {
                    if ack == fw.snd_nxt {
                        fw.state = 0;
                        fw.rto_at = u64::MAX;
                        self.remove(slot);
                        self.free.push(idx);
                    }
                    return None;
                }
                let fin = fl & FIN != 0;
                fw.rcv_nxt = fw.rcv_nxt.wrapping_add(payload as u32 + fin as u32);
                if payload > 0 {
                    // The echo: the bytes are kept for retransmission and sent back from
                    // where they are in the frame.
                    if fw.tx_len + payload > fw.tx.len() {
                        self.drops += 1;
                        return None;
                    }
                    let from = TCP + hl;
                    let cap = fw.tx.len();
                    let at = (fw.tx_head + fw.tx_len) % cap;
                    let first = payload.min(cap - at);
                    fw.tx[at..at + first].copy_from_slice(&f[from..from + first]);
                    fw.tx[..payload - first].copy_from_slice(&f[from + first..from + payload]);
                    fw.tx_len += payload;
                    if hl != 20 {
                        f.copy_within(from..from + payload, TCP + 20);
                    }
                    let seq = fw.snd_nxt;
                    fw.snd_nxt = seq.wrapping_add(payload as u32);
                    let ack = fw.rcv_nxt;
                    self.arm(idx);
                    self.ident = self.ident.wrapping_add(1);
                    return Some(Self::reply(f, self.ident, seq, ack, ACK | PSH, payload));
                }
                if fin {
                    // The echo app closes once its peer has: FIN-ACK, then LAST_ACK.
                    let seq = fw.snd_nxt;
                    fw.snd_nxt = seq.wrapping_add(1);
                    fw.state = LAST_ACK;
                    let ack = fw.rcv_nxt;
                    self.arm(idx);
                    self.ident = self.ident.wrapping_add(1);
                    return Some(Self::reply(f, self.ident, seq, ack, FIN | ACK, 0));
                }
                None
            }
        }
    }

    /// Flows whose deadline passed (none do in the exchange): dropped from the wheel slots up
    /// to now, re-armed when their deadline moved.
    fn timers(&mut self) {
        let slot = (self.now_us / 1000) as usize % WHEEL;
        let mut due = core::mem::take(&mut self.wheel[slot]);
        for idx in due.drain(..) {
            let f = &mut self.flows[idx as usize];
            f.wheel_at = u64::MAX;
            if f.state != 0 && f.rto_at != u64::MAX {
                // A retransmission would go here; the exchange never gets this far.
                let at = f.rto_at.max(self.now_us + 1000);
                f.wheel_at = at;
                self.wheel[(at / 1000) as usize % WHEEL].push(idx);
            }
        }
        self.wheel[slot] = due;
    }
}

impl Server for Floor {
    const NAME: &'static str = "floor";

    fn dev(&mut self) -> &mut Frames {
        &mut self.dev
    }

    #[inline]
    fn step(&mut self, now_us: u64) {
        let c = &mut self.core;
        let tick = now_us / 1000 != c.now_us / 1000;
        c.now_us = now_us;
        if tick {
            c.timers();
        }
        loop {
            self.dev.receive(64, |f, len| c.handle(f, len));
            if self.dev.rx_pending() == 0 {
                break;
            }
        }
    }
}
