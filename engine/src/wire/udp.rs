//! UDP over IPv4 (RFC 768): checked parsing of untrusted datagrams and in-place building.
//!
//! The checksum covers the IPv4 pseudo-header, the UDP header and the payload
//! ([`checksum::transport`]). A received checksum of 0 means "not computed" and is accepted; a
//! checksum we compute as 0 is sent as 0xffff (its other one's complement encoding), since 0 on
//! the wire would say "absent".

use super::checksum;
use super::ipv4::PROTO_UDP;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// Why a UDP datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    /// Shorter than the 8-byte header.
    #[error("UDP datagram shorter than its 8-byte header")]
    Truncated,
    /// The length field is below 8 or beyond the bytes received.
    #[error("UDP length field below 8 or beyond the received bytes")]
    BadLength,
    /// The checksum is present (non-zero) and does not verify.
    #[error("UDP checksum does not verify")]
    BadChecksum,
}

/// A validated UDP datagram: its ports and its payload (borrowed from the received bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The payload: the bytes the length field covers after the header (anything the IPv4 packet
    /// carries beyond the UDP length is not part of it).
    pub payload: &'a [u8],
    /// False when the sender left the checksum out (field 0).
    pub checksummed: bool,
}

/// Validates the UDP datagram `datagram` (exactly the IPv4 payload) sent from `src` to `dst`.
///
/// The length field must be at least [`HEADER_LEN`] and at most `datagram.len()`; bytes beyond it
/// are ignored. A non-zero checksum must verify over the pseudo-header and the `length` bytes.
pub fn parse(src: [u8; 4], dst: [u8; 4], datagram: &[u8]) -> Result<UdpView<'_>, UdpError> {
    let [s0, s1, d0, d1, l0, l1, c0, c1, ..] = *datagram else {
        return Err(UdpError::Truncated);
    };
    let len = u16::from_be_bytes([l0, l1]) as usize;
    if len < HEADER_LEN || len > datagram.len() {
        return Err(UdpError::BadLength);
    }
    let d = &datagram[..len];
    let checksummed = [c0, c1] != [0, 0];
    if checksummed && !checksum::verify_transport(src, dst, PROTO_UDP, d) {
        return Err(UdpError::BadChecksum);
    }
    Ok(UdpView {
        src_port: u16::from_be_bytes([s0, s1]),
        dst_port: u16::from_be_bytes([d0, d1]),
        payload: &d[HEADER_LEN..],
        checksummed,
    })
}

/// Writes the UDP header in front of a payload already at `buf[8..8 + payload_len]` and fills in
/// the checksum (a computed 0 is sent as 0xffff); returns the datagram length `8 + payload_len`.
///
/// # Panics
///
/// When `buf` is shorter than `8 + payload_len` or the datagram would exceed 65535 bytes: both
/// are the caller's sizing mistakes, not properties of received data.
pub fn emit(
    buf: &mut [u8],
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> usize {
    let len = HEADER_LEN + payload_len;
    let wire_len = u16::try_from(len).expect("UDP datagram longer than 65535 bytes");
    let d = &mut buf[..len];
    d[0..2].copy_from_slice(&src_port.to_be_bytes());
    d[2..4].copy_from_slice(&dst_port.to_be_bytes());
    d[4..6].copy_from_slice(&wire_len.to_be_bytes());
    d[6..8].copy_from_slice(&[0, 0]);
    let c = match checksum::transport(src, dst, PROTO_UDP, d) {
        0 => 0xffff,
        c => c,
    };
    d[6..8].copy_from_slice(&c.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [198, 18, 0, 2];
    const DST: [u8; 4] = [198, 19, 0, 53];

    /// A DNS query (id 0x1234, RD, `example.com` A IN) from 198.18.0.2:53827 to 198.19.0.53:53 (the
    /// test range), as it appears on the wire; checksum 0xbf2c computed independently (RFC 1071 over the
    /// pseudo-header, by a separate script).
    const QUERY: [u8; 37] = [
        0xd2, 0x43, 0x00, 0x35, 0x00, 0x25, 0xbf, 0x2c, 0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
        0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn parses_captured_dns_query() {
        let v = parse(SRC, DST, &QUERY).unwrap();
        assert_eq!((v.src_port, v.dst_port), (53827, 53));
        assert_eq!(v.payload, &QUERY[8..]);
        assert_eq!(v.payload.len(), 29);
        assert!(v.checksummed);
    }

    #[test]
    fn emit_reproduces_the_fixture_and_matches_etherparse() {
        let mut buf = [0u8; 64];
        buf[8..37].copy_from_slice(&QUERY[8..]);
        let n = emit(&mut buf, SRC, DST, 53827, 53, 29);
        assert_eq!(n, 37);
        assert_eq!(&buf[..n], &QUERY);
        let h = etherparse::UdpHeader::from_slice(&buf[..n]).unwrap().0;
        assert_eq!(
            h.calc_checksum_ipv4_raw(SRC, DST, &buf[8..n]).unwrap(),
            0xbf2c
        );
    }

    #[test]
    fn rejects_lies_and_ignores_trailing_bytes() {
        assert_eq!(parse(SRC, DST, &QUERY[..7]), Err(UdpError::Truncated));
        let mut b = QUERY;
        b[5] = 7; // length 7 < header
        assert_eq!(parse(SRC, DST, &b), Err(UdpError::BadLength));
        let mut b = QUERY;
        b[5] = 38; // one byte more than received
        assert_eq!(parse(SRC, DST, &b), Err(UdpError::BadLength));
        let mut b = QUERY;
        b[20] ^= 0x20; // payload changed: checksum no longer verifies
        assert_eq!(parse(SRC, DST, &b), Err(UdpError::BadChecksum));
        // Another destination changes the pseudo-header.
        assert_eq!(
            parse(SRC, [198, 19, 0, 54], &QUERY),
            Err(UdpError::BadChecksum)
        );
        // Ethernet padding after the datagram is not part of it.
        let mut padded = QUERY.to_vec();
        padded.extend_from_slice(&[0xee; 9]);
        let v = parse(SRC, DST, &padded).unwrap();
        assert_eq!(v.payload, &QUERY[8..]);
    }

    #[test]
    fn zero_checksum_means_absent() {
        let mut b = QUERY;
        b[6] = 0;
        b[7] = 0;
        b[21] ^= 0x20; // 'e' -> 'E': would fail verification, but nothing is verified
        let v = parse(SRC, DST, &b).unwrap();
        assert!(!v.checksummed);
        assert_eq!(v.payload[13], b'E');
    }

    #[test]
    fn computed_zero_is_sent_as_all_ones() {
        // Choose the last payload word so that the data sums to all ones: the checksum is 0.
        let mut buf = [0u8; 16];
        buf[8..14].copy_from_slice(b"abcdef");
        let mut probe = buf;
        probe[4..6].copy_from_slice(&16u16.to_be_bytes());
        probe[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let w = checksum::transport(SRC, DST, PROTO_UDP, &probe);
        buf[14..16].copy_from_slice(&w.to_be_bytes());
        probe[14..16].copy_from_slice(&w.to_be_bytes());
        assert_eq!(checksum::transport(SRC, DST, PROTO_UDP, &probe), 0);
        let n = emit(&mut buf, SRC, DST, 12345, 53, 8);
        assert_eq!(n, 16);
        assert_eq!(&buf[6..8], &[0xff, 0xff]);
        let v = parse(SRC, DST, &buf).unwrap();
        assert!(v.checksummed);
        assert_eq!((v.src_port, v.dst_port), (12345, 53));
    }
}
