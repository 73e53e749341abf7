//! ARP for IPv4 over Ethernet (RFC 826).

use super::ethernet::{self, Mac, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use core::net::Ipv4Addr;

/// Length of an ARP packet for IPv4 over Ethernet.
pub const PACKET_LEN: usize = 28;
/// Operation: request.
pub const OP_REQUEST: u16 = 1;
/// Operation: reply.
pub const OP_REPLY: u16 = 2;

/// Why an ARP packet was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpError {
    /// Shorter than 28 bytes.
    Truncated,
    /// Hardware type is not Ethernet (1) or hardware size is not 6.
    BadHardware,
    /// Protocol type is not IPv4 or protocol size is not 4.
    BadProtocol,
    /// Operation is neither request nor reply.
    BadOperation,
}

/// A parsed ARP packet (IPv4 over Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    /// [`OP_REQUEST`] or [`OP_REPLY`].
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: Mac,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: Mac,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl ArpRepr {
    /// Parses the ARP payload of a frame (the bytes after the Ethernet header).
    pub fn parse(p: &[u8]) -> Result<ArpRepr, ArpError> {
        if p.len() < PACKET_LEN {
            return Err(ArpError::Truncated);
        }
        if u16::from_be_bytes([p[0], p[1]]) != 1 || p[4] != 6 {
            return Err(ArpError::BadHardware);
        }
        if u16::from_be_bytes([p[2], p[3]]) != ETHERTYPE_IPV4 || p[5] != 4 {
            return Err(ArpError::BadProtocol);
        }
        let op = u16::from_be_bytes([p[6], p[7]]);
        if op != OP_REQUEST && op != OP_REPLY {
            return Err(ArpError::BadOperation);
        }
        Ok(ArpRepr {
            op,
            sender_mac: Mac::from_slice(&p[8..14]),
            sender_ip: ip_at(p, 14),
            target_mac: Mac::from_slice(&p[18..24]),
            target_ip: ip_at(p, 24),
        })
    }

    /// Writes the 28-byte ARP packet at the start of `p`.
    pub fn emit(&self, p: &mut [u8]) {
        p[0..2].copy_from_slice(&1u16.to_be_bytes());
        p[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        p[4] = 6;
        p[5] = 4;
        p[6..8].copy_from_slice(&self.op.to_be_bytes());
        p[8..14].copy_from_slice(&self.sender_mac.0);
        p[14..18].copy_from_slice(&self.sender_ip.octets());
        p[18..24].copy_from_slice(&self.target_mac.0);
        p[24..28].copy_from_slice(&self.target_ip.octets());
    }

    /// Writes a whole frame (Ethernet + ARP) and returns its length (42).
    pub fn emit_frame(&self, frame: &mut [u8], eth_dst: Mac) -> usize {
        ethernet::emit(frame, eth_dst, self.sender_mac, ETHERTYPE_ARP);
        self.emit(&mut frame[ethernet::HEADER_LEN..]);
        ethernet::HEADER_LEN + PACKET_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request captured from Linux: who-has 198.18.0.1 tell 198.18.0.2.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 198,
        18, 0, 2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 1,
    ];

    #[test]
    fn parse_request_fixture() {
        let r = ArpRepr::parse(&REQUEST).unwrap();
        assert_eq!(r.op, OP_REQUEST);
        assert_eq!(r.sender_mac, Mac([2, 0, 0, 0, 0, 2]));
        assert_eq!(r.sender_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(r.target_ip, Ipv4Addr::new(198, 18, 0, 1));
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn rejects_bad_fields() {
        assert_eq!(ArpRepr::parse(&REQUEST[..27]), Err(ArpError::Truncated));
        let mut b = REQUEST;
        b[1] = 6; // IEEE 802 hardware type
        assert_eq!(ArpRepr::parse(&b), Err(ArpError::BadHardware));
        let mut b = REQUEST;
        b[4] = 8;
        assert_eq!(ArpRepr::parse(&b), Err(ArpError::BadHardware));
        let mut b = REQUEST;
        b[2] = 0x86; // IPv6
        assert_eq!(ArpRepr::parse(&b), Err(ArpError::BadProtocol));
        let mut b = REQUEST;
        b[5] = 16;
        assert_eq!(ArpRepr::parse(&b), Err(ArpError::BadProtocol));
        let mut b = REQUEST;
        b[7] = 3; // RARP request
        assert_eq!(ArpRepr::parse(&b), Err(ArpError::BadOperation));
    }
}
