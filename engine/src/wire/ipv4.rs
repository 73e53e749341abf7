//! IPv4 headers (RFC 791): checked parsing of untrusted bytes and in-place building.

use super::checksum;
use core::net::Ipv4Addr;

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// Protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// Protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// TTL of the packets we originate.
pub const DEFAULT_TTL: u8 = 64;

/// Why an IPv4 packet was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Error {
    /// Shorter than the minimum header, or than the header length it claims.
    Truncated,
    /// Version field is not 4.
    BadVersion,
    /// IHL below 5.
    BadHeaderLen,
    /// Total length smaller than the header or larger than the frame.
    BadTotalLen,
    /// Header checksum does not verify.
    BadChecksum,
}

/// The fields of a validated IPv4 header the stack needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4View {
    /// Header length in bytes (IHL × 4).
    pub header_len: usize,
    /// Total length (header + payload); the frame may carry Ethernet padding beyond it.
    pub total_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// True when this is a fragment (MF set or a non-zero fragment offset).
    pub fragment: bool,
    /// The more-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in bytes (the field × 8).
    pub frag_offset: usize,
    /// Identification field.
    pub ident: u16,
}

impl Ipv4View {
    /// Validates the IPv4 packet at the start of `p` (the bytes after the Ethernet header, which
    /// may include Ethernet padding) and returns its fields: version, header length, total length
    /// against the frame, and the header checksum are checked.
    pub fn parse(p: &[u8]) -> Result<Ipv4View, Ipv4Error> {
        if p.len() < MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        if p[0] >> 4 != 4 {
            return Err(Ipv4Error::BadVersion);
        }
        let header_len = (p[0] & 0xf) as usize * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(Ipv4Error::BadHeaderLen);
        }
        if header_len > p.len() {
            return Err(Ipv4Error::Truncated);
        }
        let total_len = u16::from_be_bytes([p[2], p[3]]) as usize;
        if total_len < header_len || total_len > p.len() {
            return Err(Ipv4Error::BadTotalLen);
        }
        let h = &p[..header_len];
        if !checksum::verify(h) {
            return Err(Ipv4Error::BadChecksum);
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        Ok(Ipv4View {
            header_len,
            total_len,
            ttl: h[8],
            protocol: h[9],
            src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            // MF (0x2000) or a fragment offset (low 13 bits); DF (0x4000) and the reserved bit
            // do not make a fragment.
            fragment: frag & 0x3fff != 0,
            more_fragments: frag & 0x2000 != 0,
            frag_offset: (frag & 0x1fff) as usize * 8,
            ident: u16::from_be_bytes([h[4], h[5]]),
        })
    }
}

/// The flags/offset field of a whole datagram we send: DF set.
pub const DONT_FRAGMENT: u16 = 0x4000;

/// The flags/offset field of a fragment at `offset` bytes (a multiple of 8), MF when `more`.
pub fn fragment_field(offset: usize, more: bool) -> u16 {
    ((offset / 8) as u16 & 0x1fff) | if more { 0x2000 } else { 0 }
}

/// Writes a 20-byte IPv4 header (no options, DF set) with its checksum at the start of `p`.
#[inline]
pub fn emit(
    p: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    ident: u16,
) {
    emit_with(p, src, dst, protocol, payload_len, ident, DONT_FRAGMENT)
}

/// [`emit`] with the flags/offset field `flags` (see [`fragment_field`]).
#[inline]
pub fn emit_with(
    p: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    ident: u16,
    flags: u16,
) {
    let total = (MIN_HEADER_LEN + payload_len) as u16;
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p[8] = DEFAULT_TTL;
    p[9] = protocol;
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&p[..MIN_HEADER_LEN]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Turns a received header around in place for a reply: swaps source and destination (which does
/// not change the checksum), sets the TTL to [`DEFAULT_TTL`] and updates the checksum incrementally.
#[inline]
pub fn reply_in_place(p: &mut [u8]) {
    let mut src = [0u8; 4];
    src.copy_from_slice(&p[12..16]);
    p.copy_within(16..20, 12);
    p[16..20].copy_from_slice(&src);
    let old = u16::from_be_bytes([p[8], p[9]]);
    p[8] = DEFAULT_TTL;
    let new = u16::from_be_bytes([p[8], p[9]]);
    let c = checksum::update16(u16::from_be_bytes([p[10], p[11]]), old, new);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The routing decision of seed 003: is `dst` on our subnet (`addr/prefix`)?
#[inline]
pub fn on_link(addr: Ipv4Addr, prefix: u8, dst: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    };
    (u32::from(addr) & mask) == (u32::from(dst) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 20] {
        let mut h = [0u8; 20];
        emit(
            &mut h,
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            PROTO_ICMP,
            64,
            7,
        );
        h
    }

    #[test]
    fn emit_parses_with_etherparse_and_ours() {
        let h = header();
        let e = etherparse::Ipv4HeaderSlice::from_slice(&h).unwrap();
        assert_eq!(e.total_len(), 84);
        assert!(e.dont_fragment());
        assert_eq!(e.header_checksum(), e.to_header().calc_header_checksum());
        let mut p = h.to_vec();
        p.resize(84, 0);
        let v = Ipv4View::parse(&p).unwrap();
        assert_eq!(
            (v.header_len, v.total_len, v.protocol, v.ttl),
            (20, 84, PROTO_ICMP, 64)
        );
        assert!(!v.fragment);
    }

    #[test]
    fn parse_rejects_lies() {
        let mut p = header().to_vec();
        p.resize(84, 0);
        assert_eq!(Ipv4View::parse(&p[..19]), Err(Ipv4Error::Truncated));
        let mut b = p.clone();
        b[0] = 0x65;
        assert_eq!(Ipv4View::parse(&b), Err(Ipv4Error::BadVersion));
        let mut b = p.clone();
        b[0] = 0x44;
        assert_eq!(Ipv4View::parse(&b), Err(Ipv4Error::BadHeaderLen));
        let mut b = p.clone();
        b[0] = 0x4f; // IHL 15 = 60 bytes: fits in 84, but the checksum no longer matches
        assert_eq!(Ipv4View::parse(&b), Err(Ipv4Error::BadChecksum));
        let mut b = p.clone();
        b[3] = 200; // total length beyond the frame
        assert_eq!(Ipv4View::parse(&b), Err(Ipv4Error::BadTotalLen));
        assert_eq!(Ipv4View::parse(&p[..40]), Err(Ipv4Error::BadTotalLen));
        let mut b = p.clone();
        b[12] ^= 1;
        assert_eq!(Ipv4View::parse(&b), Err(Ipv4Error::BadChecksum));
    }

    #[test]
    fn reply_in_place_keeps_checksum_valid() {
        let mut h = header();
        h[8] = 3;
        let c = checksum::checksum(&{
            let mut z = h;
            z[10] = 0;
            z[11] = 0;
            z
        });
        h[10..12].copy_from_slice(&c.to_be_bytes());
        reply_in_place(&mut h);
        assert!(checksum::verify(&h));
        assert_eq!(&h[12..16], &[198, 18, 0, 2]);
        assert_eq!(&h[16..20], &[198, 18, 0, 1]);
        assert_eq!(h[8], DEFAULT_TTL);
    }

    #[test]
    fn routing_decision() {
        let me = Ipv4Addr::new(198, 18, 0, 1);
        assert!(on_link(me, 24, Ipv4Addr::new(198, 18, 0, 200)));
        assert!(!on_link(me, 24, Ipv4Addr::new(198, 19, 0, 5)));
        assert!(on_link(me, 15, Ipv4Addr::new(198, 19, 0, 5)));
        assert!(on_link(me, 0, Ipv4Addr::new(1, 2, 3, 4)));
        assert!(on_link(me, 32, me));
    }
}
