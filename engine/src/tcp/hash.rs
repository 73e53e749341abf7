//! Keyed hashes from the engine secret: SipHash-1-3 for ISNs (RFC 6528), timestamp offsets and
//! SYN cookies; a cheaper keyed multiply hash for the flow table.

/// A 128-bit SipHash key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SipKey {
    k0: u64,
    k1: u64,
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

impl SipKey {
    /// A key from 16 bytes.
    pub(crate) fn new(b: &[u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&b[..8]);
        k1.copy_from_slice(&b[8..]);
        SipKey {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// SipHash-1-3 of `data`.
    pub(crate) fn hash(&self, data: &[u8]) -> u64 {
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let m = u64::from_le_bytes(w);
            v[3] ^= m;
            round(&mut v);
            v[0] ^= m;
        }
        let rest = chunks.remainder();
        let mut last = (data.len() as u64 & 0xff) << 56;
        for (i, &b) in rest.iter().enumerate() {
            last |= (b as u64) << (8 * i);
        }
        v[3] ^= last;
        round(&mut v);
        v[0] ^= last;
        v[2] ^= 0xff;
        round(&mut v);
        round(&mut v);
        round(&mut v);
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    /// Hash of a connection 4-tuple (addresses as big-endian `u32`) plus `extra`.
    #[inline]
    pub(crate) fn tuple(&self, laddr: u32, lport: u16, raddr: u32, rport: u16, extra: u32) -> u64 {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&laddr.to_be_bytes());
        b[4..8].copy_from_slice(&raddr.to_be_bytes());
        b[8..10].copy_from_slice(&lport.to_be_bytes());
        b[10..12].copy_from_slice(&rport.to_be_bytes());
        b[12..16].copy_from_slice(&extra.to_be_bytes());
        self.hash(&b)
    }
}

/// 64×64→128-bit multiply, folded to 64 bits (the mixing step of wyhash and foldhash).
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = (a as u128).wrapping_mul(b as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

/// The flow table's hash: two keyed folded multiplies over the 4-tuple, several times cheaper
/// than SipHash. The key is secret and random per engine, so peers cannot aim for collisions
/// without it; ISNs, timestamp offsets and cookies, which peers see, keep SipHash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlowHasher {
    k: [u64; 4],
}

impl FlowHasher {
    /// Hash of a 4-tuple (addresses as big-endian `u32`).
    #[inline]
    pub(crate) fn tuple(&self, laddr: u32, lport: u16, raddr: u32, rport: u16) -> u64 {
        let a = ((laddr as u64) << 32 | raddr as u64) ^ self.k[0];
        let b = ((lport as u64) << 16 | rport as u64) ^ self.k[1];
        let h = fold_mul(a, b);
        fold_mul(h ^ self.k[2], a.rotate_left(32) ^ b ^ self.k[3])
    }
}

/// The keys derived from the engine's 32-byte secret.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keys {
    /// Flow table hash.
    pub(crate) table: FlowHasher,
    /// ISNs and timestamp offsets (RFC 6528, RFC 7323 §5.4).
    pub(crate) isn: SipKey,
    /// SYN cookies.
    pub(crate) cookie: SipKey,
    /// Ephemeral port selection (RFC 6056).
    pub(crate) port: SipKey,
}

impl Keys {
    /// Derives independent keys from `secret`.
    pub(crate) fn new(secret: &[u8; 32]) -> Self {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(&secret[..16]);
        b.copy_from_slice(&secret[16..]);
        let (ka, kb) = (SipKey::new(&a), SipKey::new(&b));
        let derive = |k: &SipKey, label: &[u8]| {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&k.hash(label).to_le_bytes());
            let mut l2 = [0u8; 24];
            l2[..label.len().min(24)].copy_from_slice(&label[..label.len().min(24)]);
            l2[23] = 0xa5;
            o[8..].copy_from_slice(&k.hash(&l2).to_le_bytes());
            SipKey::new(&o)
        };
        let t = derive(&ka, b"handshake tcp flow table");
        let t2 = derive(&ka, b"handshake tcp flow table 2");
        // Odd keys: no key word multiplies everything to zero.
        let table = FlowHasher {
            k: [
                t.hash(b"0") | 1,
                t.hash(b"1") | 1,
                t2.hash(b"2") | 1,
                t2.hash(b"3") | 1,
            ],
        };
        Keys {
            table,
            isn: derive(&kb, b"handshake tcp isn"),
            cookie: derive(&kb, b"handshake tcp syn cookie"),
            port: derive(&ka, b"handshake tcp ports"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(deprecated)]
    use std::hash::Hasher;

    #[test]
    fn matches_std_siphash13_with_zero_key() {
        // std's DefaultHasher::new() is SipHash-1-3 keyed with zeros.
        for len in [0usize, 1, 7, 8, 12, 15, 16, 31] {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&data);
            assert_eq!(SipKey::new(&[0; 16]).hash(&data), h.finish(), "len {len}");
        }
    }

    #[test]
    fn keyed_and_distinct() {
        let k1 = Keys::new(&[1; 32]);
        let k2 = Keys::new(&[2; 32]);
        let t = |k: &SipKey| k.tuple(0xc612_0001, 80, 0xc612_0002, 5000, 0);
        let f = |k: &FlowHasher| k.tuple(0xc612_0001, 80, 0xc612_0002, 5000);
        assert_ne!(f(&k1.table), f(&k2.table));
        assert_ne!(t(&k1.isn), t(&k2.isn));
        assert_ne!(t(&k1.isn), t(&k1.cookie));
        assert_eq!(f(&k1.table), f(&Keys::new(&[1; 32]).table));
    }

    /// The table uses the hash's low bits: sequential ports and addresses from one peer spread
    /// evenly over 4096 buckets (at most 4× the mean in any bucket), and no two of the 65536
    /// tuples share the 32 low bits the table keeps.
    #[test]
    fn flow_hash_spreads_sequential_tuples() {
        let k = Keys::new(&[9; 32]).table;
        let mut buckets = vec![0u32; 4096];
        let mut seen = std::collections::HashSet::new();
        for i in 0..65536u32 {
            let h = k.tuple(
                0xc612_0001,
                443,
                0xc612_0100 + (i >> 12),
                (i & 0xfff) as u16,
            );
            buckets[(h & 4095) as usize] += 1;
            assert!(seen.insert(h as u32), "32-bit collision at {i}");
        }
        let max = *buckets.iter().max().unwrap();
        assert!(max <= 64, "fullest bucket {max} (mean 16)");
    }
}
