//! Ethernet II framing.

use core::fmt;

/// Length of an Ethernet II header (no VLAN tag).
pub const HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// 00:00:00:00:00:00 (the unknown target hardware address of an ARP request).
    pub const ZERO: Mac = Mac([0; 6]);

    /// True for the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    /// True for group addresses (multicast and broadcast): the I/G bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    /// True for an address a host may use as its own (unicast, not all zeros).
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }
    /// Reads a MAC from the first six bytes of `b` (which must hold six bytes).
    #[inline]
    pub fn from_slice(b: &[u8]) -> Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        Mac(m)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl core::str::FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let mut m = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut m {
            let p = parts.next().ok_or_else(|| MacParseError(s.into()))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.into()));
        }
        Ok(Mac(m))
    }
}

/// Destination MAC of a frame (the frame must hold at least [`HEADER_LEN`] bytes).
#[inline]
pub fn dst(frame: &[u8]) -> Mac {
    Mac::from_slice(&frame[0..6])
}

/// Source MAC of a frame.
#[inline]
pub fn src(frame: &[u8]) -> Mac {
    Mac::from_slice(&frame[6..12])
}

/// EtherType of a frame.
#[inline]
pub fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// Writes an Ethernet II header at the start of `frame`.
#[inline]
pub fn emit(frame: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    frame[0..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Turns a received frame around in place: the old source becomes the destination, `me` the source.
#[inline]
pub fn reply_in_place(frame: &mut [u8], me: Mac) {
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&me.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let m: Mac = "02:00:5e:10:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0x5e, 0x10, 0, 1]);
        assert_eq!(m.to_string(), "02:00:5e:10:00:01");
        assert!("02:00:5e:10:00".parse::<Mac>().is_err());
        assert!("02:00:5e:10:00:01:02".parse::<Mac>().is_err());
        assert!("zz:00:5e:10:00:01".parse::<Mac>().is_err());
        assert!(m.is_unicast());
        assert!(Mac::BROADCAST.is_multicast());
        assert!(!Mac::ZERO.is_unicast());
    }

    #[test]
    fn emit_matches_etherparse() {
        let mut f = [0u8; 14];
        emit(
            &mut f,
            Mac::BROADCAST,
            Mac([2, 0, 0, 0, 0, 1]),
            ETHERTYPE_ARP,
        );
        let h = etherparse::Ethernet2HeaderSlice::from_slice(&f).unwrap();
        assert_eq!(h.destination(), [0xff; 6]);
        assert_eq!(h.source(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(h.ether_type(), etherparse::EtherType::ARP);
        reply_in_place(&mut f, Mac([2, 0, 0, 0, 0, 9]));
        assert_eq!(dst(&f), Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(src(&f), Mac([2, 0, 0, 0, 0, 9]));
    }
}
