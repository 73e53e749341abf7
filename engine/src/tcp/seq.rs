//! Sequence number arithmetic modulo 2^32 (RFC 9293 §3.4; RFC 1982 serial arithmetic).

/// `a < b` in sequence space.
#[inline]
pub(crate) fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
/// `a <= b` in sequence space.
#[inline]
pub(crate) fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}
/// `a > b` in sequence space.
#[inline]
pub(crate) fn gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}
/// `a >= b` in sequence space.
#[inline]
pub(crate) fn ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}
/// The later of two sequence numbers.
#[inline]
pub(crate) fn max(a: u32, b: u32) -> u32 {
    if gt(a, b) {
        a
    } else {
        b
    }
}
/// `lo <= x < hi` in sequence space.
#[inline]
pub(crate) fn in_range(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && lt(x, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_2_pow_32() {
        assert!(lt(0xffff_fff0, 0x10));
        assert!(gt(0x10, 0xffff_fff0));
        assert!(le(5, 5) && ge(5, 5));
        assert_eq!(max(0xffff_ffff, 1), 1);
        assert!(in_range(0, 0xffff_fffe, 2));
        assert!(!in_range(2, 0xffff_fffe, 2));
        assert!(lt(0x7fff_ffff, 0x8000_0000) && gt(0x8000_0000, 1));
    }
}
