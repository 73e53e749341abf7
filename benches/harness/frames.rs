//! The client's frames: built once with etherparse (an independent encoder), patched per use.
//!
//! Per connection the client only copies a template and rewrites its acknowledgment number with an
//! incremental checksum update (RFC 1624), so its work is a few nanoseconds and identical whichever
//! stack serves it.

use etherparse::{PacketBuilder, TcpOptionElement};
use handshake::wire::checksum;

/// The server's MAC (ours or smoltcp's).
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The client's MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The server's address.
pub const SERVER_IP: [u8; 4] = [198, 18, 0, 1];
/// The client's address.
pub const CLIENT_IP: [u8; 4] = [198, 18, 0, 2];

/// Offset of the TCP header in frames without IPv4 options.
const TCP: usize = 14 + 20;

/// Who-has 198.18.0.1 tell 198.18.0.2, padded to the Ethernet minimum as a NIC delivers it.
pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&SERVER_IP);
    f.resize(60, 0);
    f
}

/// An ICMP echo request with `payload_len` bytes of payload (56: ping's default).
pub fn ping(payload_len: usize, seq: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
        .ipv4(CLIENT_IP, SERVER_IP, 64)
        .icmpv4_echo_request(0x4242, seq)
        .write(&mut f, &payload)
        .expect("an echo request fits in a Vec");
    f
}

/// TCP control bits of a template.
#[derive(Clone, Copy)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub psh: bool,
    pub fin: bool,
    /// MSS option of a SYN.
    pub mss: u16,
}

/// A client segment whose acknowledgment number is set per use.
pub struct Template {
    frame: Vec<u8>,
    ack: u32,
}

impl Template {
    /// A segment `sport` → `dport` with sequence number `seq`; a SYN carries the MSS option only
    /// (no window scale, SACK or timestamps, so both servers answer with the same options).
    pub fn new(sport: u16, dport: u16, seq: u32, flags: Flags, payload: &[u8]) -> Self {
        let mut b = PacketBuilder::ethernet2(CLIENT_MAC, SERVER_MAC)
            .ipv4(CLIENT_IP, SERVER_IP, 64)
            .tcp(sport, dport, seq, 65535);
        if flags.syn {
            b = b.syn();
            b = b
                .options(&[TcpOptionElement::MaximumSegmentSize(flags.mss)])
                .expect("one option fits");
        }
        if flags.ack {
            b = b.ack(0);
        }
        if flags.psh {
            b = b.psh();
        }
        if flags.fin {
            b = b.fin();
        }
        let mut frame = Vec::new();
        b.write(&mut frame, payload)
            .expect("a segment fits in a Vec");
        Template { frame, ack: 0 }
    }

    /// The frame with acknowledgment number `ack` (checksum updated incrementally).
    #[inline]
    pub fn with_ack(&mut self, ack: u32) -> &[u8] {
        if ack != self.ack {
            let f = &mut self.frame;
            f[TCP + 8..TCP + 12].copy_from_slice(&ack.to_be_bytes());
            let old = u16::from_be_bytes([f[TCP + 16], f[TCP + 17]]);
            let c = checksum::update32(old, self.ack, ack);
            f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
            self.ack = ack;
        }
        &self.frame
    }

    /// The frame as built (acknowledgment number as last set).
    pub fn bytes(&self) -> &[u8] {
        &self.frame
    }
}

/// The fields of a server segment the client needs (fixed offsets: both servers send IPv4
/// headers without options).
#[derive(Clone, Copy, Debug)]
pub struct Seg<'a> {
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub header_len: usize,
    pub payload: &'a [u8],
}

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Parses a frame the server sent, if it is an IPv4/TCP segment to the client.
#[inline]
pub fn parse_seg(f: &[u8]) -> Option<Seg<'_>> {
    if f.len() < TCP + 20 || f[12..14] != [0x08, 0x00] || f[23] != 6 || f[14] != 0x45 {
        return None;
    }
    let total = u16::from_be_bytes([f[16], f[17]]) as usize;
    let end = (14 + total).min(f.len());
    let t = &f[TCP..end];
    let hl = ((t[12] >> 4) as usize * 4).clamp(20, t.len());
    Some(Seg {
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags: t[13],
        header_len: hl,
        payload: &t[hl..],
    })
}
