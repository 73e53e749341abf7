//! ICMPv4 (RFC 792): echo and destination unreachable.

use super::checksum;

/// Echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const DEST_UNREACHABLE: u8 = 3;
/// Echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// Code of destination unreachable: protocol unreachable.
pub const CODE_PROTO_UNREACHABLE: u8 = 2;
/// Code of destination unreachable: port unreachable.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
/// Length of the ICMP header.
pub const HEADER_LEN: usize = 8;

/// Why an ICMP message was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// Shorter than the 8-byte header.
    Truncated,
    /// Checksum does not verify.
    BadChecksum,
}

/// Validates an ICMP message (`m` is exactly the IPv4 payload) and returns `(type, code)`.
pub fn parse(m: &[u8]) -> Result<(u8, u8), IcmpError> {
    if m.len() < HEADER_LEN {
        return Err(IcmpError::Truncated);
    }
    if !checksum::verify(m) {
        return Err(IcmpError::BadChecksum);
    }
    Ok((m[0], m[1]))
}

/// Turns an echo request into an echo reply in place: the type changes from 8 to 0 and the
/// checksum is updated incrementally (RFC 1624); identifier, sequence and payload are kept.
#[inline]
pub fn echo_reply_in_place(m: &mut [u8]) {
    let old = u16::from_be_bytes([m[0], m[1]]);
    m[0] = ECHO_REPLY;
    let new = u16::from_be_bytes([m[0], m[1]]);
    let c = checksum::update16(u16::from_be_bytes([m[2], m[3]]), old, new);
    m[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Writes a destination-unreachable message quoting `original` (the offending IPv4 header plus at
/// least 8 bytes of its payload, RFC 792) at the start of `m`; returns its length.
pub fn emit_unreachable(m: &mut [u8], code: u8, original: &[u8]) -> usize {
    emit_error(m, DEST_UNREACHABLE, code, original)
}

/// Code of time exceeded: fragment reassembly time exceeded (RFC 792).
pub const CODE_REASSEMBLY_TIME_EXCEEDED: u8 = 1;

/// Writes an ICMP error of type `ty` quoting `original` (as [`emit_unreachable`]) at the start
/// of `m`; returns its length.
pub fn emit_error(m: &mut [u8], ty: u8, code: u8, original: &[u8]) -> usize {
    m[0] = ty;
    m[1] = code;
    m[2..8].copy_from_slice(&[0; 6]);
    m[HEADER_LEN..HEADER_LEN + original.len()].copy_from_slice(original);
    let len = HEADER_LEN + original.len();
    let c = checksum::checksum(&m[..len]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo request as sent by Linux ping: id 0x1c46, seq 1, 8 bytes of payload.
    fn request() -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0, 0x1c, 0x46, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let c = checksum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn echo_reply_checksum_matches_full_recompute() {
        let mut m = request();
        assert_eq!(parse(&m), Ok((ECHO_REQUEST, 0)));
        echo_reply_in_place(&mut m);
        assert_eq!(parse(&m), Ok((ECHO_REPLY, 0)));
        let mut z = m.clone();
        z[2] = 0;
        z[3] = 0;
        assert_eq!(checksum::checksum(&z).to_be_bytes(), [m[2], m[3]]);
        let e = etherparse::Icmpv4Slice::from_slice(&m).unwrap();
        assert!(
            matches!(e.icmp_type(), etherparse::Icmpv4Type::EchoReply(h) if h.id == 0x1c46 && h.seq == 1)
        );
    }

    #[test]
    fn rejects_short_and_corrupt() {
        assert_eq!(parse(&[8, 0, 0]), Err(IcmpError::Truncated));
        let mut m = request();
        m[10] ^= 0xff;
        assert_eq!(parse(&m), Err(IcmpError::BadChecksum));
    }

    #[test]
    fn unreachable_quotes_the_original() {
        let orig = [0x45u8; 28];
        let mut m = [0u8; 64];
        let n = emit_unreachable(&mut m, CODE_PORT_UNREACHABLE, &orig);
        assert_eq!(n, 36);
        assert_eq!(
            parse(&m[..n]),
            Ok((DEST_UNREACHABLE, CODE_PORT_UNREACHABLE))
        );
        assert_eq!(&m[8..36], &orig);
    }
}
