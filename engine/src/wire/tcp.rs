//! TCP header view and builder (RFC 9293 §3.1), with the options the engine speaks: MSS
//! (RFC 9293 §3.2), window scale and timestamps (RFC 7323), SACK-permitted and SACK blocks
//! (RFC 2018), NOP and end-of-list.
//!
//! [`TcpPacket`] is a checked view over untrusted bytes; [`TcpRepr`] is the parsed, high-level
//! form, which [`TcpRepr::emit`] writes back in place (header, options and payload) with
//! [`fill_checksum`] filling the checksum over the IPv4 pseudo-header.
//!
//! Parsing is strict where a hostile peer could make us misread the segment (data offset below 5
//! or past the end, an option whose length is 0, 1 or runs past the header) and lenient where
//! Linux is (unknown options are skipped, a known option with the wrong length is ignored).

use crate::wire::checksum;
use thiserror::Error;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Longest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Most SACK blocks an option can carry (4 without timestamps, 3 with).
pub const MAX_SACK_BLOCKS: usize = 4;
/// Largest window shift allowed by RFC 7323 §2.3; larger values are clamped to it.
pub const MAX_WINDOW_SHIFT: u8 = 14;
/// The IP protocol number of TCP.
pub const PROTOCOL: u8 = 6;

/// The control bits of the TCP header (byte 13).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TS: u8 = 8;
}

/// Why a segment could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TcpWireError {
    /// Fewer bytes than a TCP header, or than the header length the segment claims.
    #[error("TCP segment truncated: it is shorter than its header; drop it")]
    Truncated,
    /// The data offset field is below 5 (a header cannot be shorter than 20 bytes).
    #[error("TCP data offset below 5; drop the segment")]
    BadDataOffset,
    /// An option has length 0 or 1, or runs past the end of the header.
    #[error("malformed TCP option (length below 2 or past the header); drop the segment")]
    BadOption,
    /// The options to emit do not fit in 40 bytes, or the buffer is too small.
    #[error("TCP header does not fit: give a larger buffer or fewer options")]
    NoSpace,
}

/// A checked view over the bytes of a TCP segment (header, options, payload).
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checks; accessors may panic on short input. Prefer [`Self::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after checking that the fixed header and the claimed options fit and that
    /// every option is well-formed, so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, TcpWireError> {
        let p = TcpPacket { buffer };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), TcpWireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(TcpWireError::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(TcpWireError::BadDataOffset);
        }
        if hl > b.len() {
            return Err(TcpWireError::Truncated);
        }
        // Walk the options once so that later parsing cannot fail.
        let mut opts = &b[HEADER_LEN..hl];
        while let Some(&k) = opts.first() {
            match k {
                kind::EOL => break,
                kind::NOP => opts = &opts[1..],
                _ => {
                    let len = *opts.get(1).ok_or(TcpWireError::BadOption)? as usize;
                    if len < 2 || len > opts.len() {
                        return Err(TcpWireError::BadOption);
                    }
                    opts = &opts[len..];
                }
            }
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ])
    }
    /// Acknowledgment number (meaningful only with ACK set).
    pub fn ack(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::ACK])
    }
    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::OFFSET] >> 4) as usize) * 4
    }
    /// Control bits (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Window field (unscaled).
    pub fn window(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::WINDOW])
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }
    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::URGENT])
    }
    /// Raw option bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// Payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Verifies the checksum over the IPv4 pseudo-header.
    pub fn verify_checksum(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        checksum::verify_transport(src, dst, PROTOCOL, self.buffer.as_ref())
    }
}

/// The timestamps option (RFC 7323 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamps {
    /// TSval: the sender's timestamp clock.
    pub val: u32,
    /// TSecr: the echoed timestamp (valid with ACK set).
    pub ecr: u32,
}

/// A SACK block: `[left, right)` in sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SackBlock {
    /// First sequence number of the block.
    pub left: u32,
    /// Sequence number just past the block.
    pub right: u32,
}

/// The options the engine understands. Unknown options are skipped on parse and never emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Maximum segment size (SYN only).
    pub mss: Option<u16>,
    /// Window shift count (SYN only), clamped to [`MAX_WINDOW_SHIFT`].
    pub window_scale: Option<u8>,
    /// SACK permitted (SYN only).
    pub sack_permitted: bool,
    /// Timestamps.
    pub timestamps: Option<Timestamps>,
    /// SACK blocks; the first `sack_len` are valid.
    pub sack: [SackBlock; MAX_SACK_BLOCKS],
    /// Number of valid SACK blocks.
    pub sack_len: u8,
}

impl TcpOptions {
    /// No options.
    pub const NONE: TcpOptions = TcpOptions {
        mss: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: None,
        sack: [SackBlock { left: 0, right: 0 }; MAX_SACK_BLOCKS],
        sack_len: 0,
    };

    /// The valid SACK blocks.
    pub fn sack_blocks(&self) -> &[SackBlock] {
        &self.sack[..self.sack_len as usize]
    }

    /// Parses well-formed option bytes (as checked by [`TcpPacket::new_checked`]).
    pub fn parse(opts: &[u8]) -> Result<TcpOptions, TcpWireError> {
        // The layout of nearly every segment of a connection with timestamps (Linux, BSD):
        // NOP, NOP, TS.
        if let [kind::NOP, kind::NOP, kind::TS, 10, v0, v1, v2, v3, e0, e1, e2, e3] = *opts {
            return Ok(TcpOptions {
                timestamps: Some(Timestamps {
                    val: u32::from_be_bytes([v0, v1, v2, v3]),
                    ecr: u32::from_be_bytes([e0, e1, e2, e3]),
                }),
                ..TcpOptions::NONE
            });
        }
        Self::parse_any(opts)
    }

    /// [`Self::parse`] for any layout.
    #[inline(never)]
    fn parse_any(mut opts: &[u8]) -> Result<TcpOptions, TcpWireError> {
        let mut o = TcpOptions::NONE;
        while let Some(&k) = opts.first() {
            match k {
                kind::EOL => break,
                kind::NOP => {
                    opts = &opts[1..];
                    continue;
                }
                _ => {}
            }
            let len = *opts.get(1).ok_or(TcpWireError::BadOption)? as usize;
            if len < 2 || len > opts.len() {
                return Err(TcpWireError::BadOption);
            }
            let body = &opts[2..len];
            match (k, body.len()) {
                (kind::MSS, 2) => o.mss = Some(be16(body)),
                (kind::WS, 1) => o.window_scale = Some(body[0].min(MAX_WINDOW_SHIFT)),
                (kind::SACK_PERM, 0) => o.sack_permitted = true,
                (kind::TS, 8) => {
                    o.timestamps = Some(Timestamps {
                        val: be32(&body[..4]),
                        ecr: be32(&body[4..]),
                    })
                }
                (kind::SACK, n) if n % 8 == 0 && (8..=8 * MAX_SACK_BLOCKS).contains(&n) => {
                    o.sack_len = (n / 8) as u8;
                    // A later SACK option replaces an earlier one whole: no stale blocks past
                    // `sack_len` (they would make equal options compare unequal).
                    o.sack = [SackBlock::default(); MAX_SACK_BLOCKS];
                    for (i, b) in body.chunks_exact(8).enumerate() {
                        o.sack[i] = SackBlock {
                            left: be32(&b[..4]),
                            right: be32(&b[4..]),
                        };
                    }
                }
                // Unknown option, or a known one with a wrong length: ignored, as Linux does.
                _ => {}
            }
            opts = &opts[len..];
        }
        Ok(o)
    }

    /// Bytes these options take when emitted (a multiple of 4).
    pub fn len(&self) -> usize {
        let mut n = 0;
        if self.mss.is_some() {
            n += 4;
        }
        if self.timestamps.is_some() {
            n += 12; // (SACK_PERM | NOP NOP) TS
        } else if self.sack_permitted {
            n += 4; // NOP NOP SACK_PERM
        }
        if self.window_scale.is_some() {
            n += 4; // NOP WS
        }
        if self.sack_len > 0 {
            n += 4 + 8 * self.sack_len as usize; // NOP NOP SACK
        }
        n
    }

    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the options in Linux's layout (every option 4-byte aligned with NOPs); returns
    /// the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, TcpWireError> {
        let n = self.len();
        if n > MAX_HEADER_LEN - HEADER_LEN || n > buf.len() {
            return Err(TcpWireError::NoSpace);
        }
        let mut i = 0;
        if let Some(mss) = self.mss {
            buf[i..i + 4].copy_from_slice(&[kind::MSS, 4, (mss >> 8) as u8, mss as u8]);
            i += 4;
        }
        if let Some(ts) = self.timestamps {
            if self.sack_permitted {
                buf[i..i + 2].copy_from_slice(&[kind::SACK_PERM, 2]);
            } else {
                buf[i..i + 2].copy_from_slice(&[kind::NOP, kind::NOP]);
            }
            buf[i + 2] = kind::TS;
            buf[i + 3] = 10;
            buf[i + 4..i + 8].copy_from_slice(&ts.val.to_be_bytes());
            buf[i + 8..i + 12].copy_from_slice(&ts.ecr.to_be_bytes());
            i += 12;
        } else if self.sack_permitted {
            buf[i..i + 4].copy_from_slice(&[kind::NOP, kind::NOP, kind::SACK_PERM, 2]);
            i += 4;
        }
        if let Some(ws) = self.window_scale {
            buf[i..i + 4].copy_from_slice(&[kind::NOP, kind::WS, 3, ws.min(MAX_WINDOW_SHIFT)]);
            i += 4;
        }
        if self.sack_len > 0 {
            let k = self.sack_len as usize;
            buf[i..i + 4].copy_from_slice(&[kind::NOP, kind::NOP, kind::SACK, 2 + 8 * k as u8]);
            i += 4;
            for b in &self.sack[..k] {
                buf[i..i + 4].copy_from_slice(&b.left.to_be_bytes());
                buf[i + 4..i + 8].copy_from_slice(&b.right.to_be_bytes());
                i += 8;
            }
        }
        Ok(i)
    }
}

/// A parsed TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful only with [`flags::ACK`]).
    pub ack: u32,
    /// Control bits (see [`flags`]).
    pub flags: u8,
    /// Window field (unscaled, as on the wire).
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options.
    pub options: TcpOptions,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a checked segment.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &TcpPacket<&'a T>) -> Result<Self, TcpWireError> {
        let b: &'a [u8] = p.buffer.as_ref();
        let hl = p.header_len();
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options: TcpOptions::parse(&b[HEADER_LEN..hl])?,
            payload: &b[hl..],
        })
    }

    /// Checks and parses untrusted bytes in one step.
    #[inline]
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, TcpWireError> {
        // The checks of `TcpPacket::new_checked`, with the options walked once: parsing them
        // rejects exactly what the check rejects.
        if bytes.len() < HEADER_LEN {
            return Err(TcpWireError::Truncated);
        }
        let p = TcpPacket::new_unchecked(bytes);
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(TcpWireError::BadDataOffset);
        }
        if hl > bytes.len() {
            return Err(TcpWireError::Truncated);
        }
        let options = if hl == HEADER_LEN {
            TcpOptions::NONE
        } else {
            TcpOptions::parse(&bytes[HEADER_LEN..hl])?
        };
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options,
            payload: &bytes[hl..],
        })
    }

    /// True when `f` (one or more [`flags`] bits) are all set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }

    /// Sequence space the segment occupies: payload plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32
            + (self.flags & flags::SYN != 0) as u32
            + (self.flags & flags::FIN != 0) as u32
    }

    /// Header length with these options.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Total length of the emitted segment.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the header and options at the start of `buf`, with a zero checksum, for a payload
    /// the caller writes right after; returns the header length.
    pub fn emit_header(&self, buf: &mut [u8]) -> Result<usize, TcpWireError> {
        let hl = self.header_len();
        if hl > MAX_HEADER_LEN {
            return Err(TcpWireError::NoSpace);
        }
        if buf.len() < hl {
            return Err(TcpWireError::NoSpace);
        }
        buf[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        buf[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        buf[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        buf[field::OFFSET] = ((hl / 4) as u8) << 4;
        buf[field::FLAGS] = self.flags;
        buf[field::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        buf[field::CHECKSUM].copy_from_slice(&[0, 0]);
        buf[field::URGENT].copy_from_slice(&self.urgent.to_be_bytes());
        self.options.emit(&mut buf[HEADER_LEN..hl])?;
        Ok(hl)
    }

    /// Writes the whole segment (header, options, payload) with its checksum over the IPv4
    /// pseudo-header of `src` → `dst`; returns its length.
    pub fn emit(&self, buf: &mut [u8], src: [u8; 4], dst: [u8; 4]) -> Result<usize, TcpWireError> {
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(TcpWireError::NoSpace);
        }
        let hl = self.emit_header(buf)?;
        buf[hl..len].copy_from_slice(self.payload);
        fill_checksum(&mut buf[..len], src, dst);
        Ok(len)
    }
}

/// Writes a fixed 20-byte header at the start of `buf` with a zero checksum and urgent pointer,
/// its data offset saying `hl` bytes of header (the options, if any, follow from the caller).
/// The fast path of [`TcpRepr::emit_header`] for segments built field by field.
///
/// # Panics
/// When `buf` is shorter than [`HEADER_LEN`] or `hl` is not a multiple of 4 up to
/// [`MAX_HEADER_LEN`] (the caller checks both).
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn write_header(
    buf: &mut [u8],
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    fl: u8,
    window: u16,
    hl: usize,
) {
    debug_assert!(hl.is_multiple_of(4) && (HEADER_LEN..=MAX_HEADER_LEN).contains(&hl));
    let h: &mut [u8; HEADER_LEN] = (&mut buf[..HEADER_LEN]).try_into().expect("20 bytes");
    let [s0, s1] = src_port.to_be_bytes();
    let [d0, d1] = dst_port.to_be_bytes();
    let [q0, q1, q2, q3] = seq.to_be_bytes();
    let [a0, a1, a2, a3] = ack.to_be_bytes();
    let [w0, w1] = window.to_be_bytes();
    *h = [
        s0,
        s1,
        d0,
        d1,
        q0,
        q1,
        q2,
        q3,
        a0,
        a1,
        a2,
        a3,
        ((hl / 4) as u8) << 4,
        fl,
        w0,
        w1,
        0,
        0,
        0,
        0,
    ];
}

/// Writes the timestamps option as [`TcpOptions::emit`] lays it out without SACK-permitted
/// (NOP, NOP, TS): 12 bytes at the start of `buf`.
///
/// # Panics
/// When `buf` is shorter than 12 bytes.
#[inline]
pub fn write_timestamps(buf: &mut [u8], ts: Timestamps) {
    let o: &mut [u8; 12] = (&mut buf[..12]).try_into().expect("12 bytes");
    let [v0, v1, v2, v3] = ts.val.to_be_bytes();
    let [e0, e1, e2, e3] = ts.ecr.to_be_bytes();
    *o = [
        kind::NOP,
        kind::NOP,
        kind::TS,
        10,
        v0,
        v1,
        v2,
        v3,
        e0,
        e1,
        e2,
        e3,
    ];
}

/// Fills the checksum of the whole `segment` (header + payload) over the IPv4 pseudo-header.
pub fn fill_checksum(segment: &mut [u8], src: [u8; 4], dst: [u8; 4]) {
    segment[field::CHECKSUM].copy_from_slice(&[0, 0]);
    let c = checksum::transport(src, dst, PROTOCOL, segment);
    segment[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[inline]
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{TcpHeaderSlice, TcpOptionElement};

    const SRC: [u8; 4] = [198, 18, 0, 2];
    const DST: [u8; 4] = [198, 18, 0, 1];

    /// A SYN as Linux sends it: MSS 1460, SACK-permitted, timestamps, NOP, WS 7.
    const LINUX_SYN: [u8; 40] = [
        0xc3, 0x50, 0x01, 0xbb, // ports 50000 → 443
        0x12, 0x34, 0x56, 0x78, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // doff 10, SYN, window 64240
        0x00, 0x00, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, 0x08, 0x0a, // SACK_PERM, TS
        0x00, 0x01, 0x02, 0x03, // TSval
        0x00, 0x00, 0x00, 0x00, // TSecr
        0x01, 0x03, 0x03, 0x07, // NOP, WS 7
    ];

    fn syn_repr() -> TcpRepr<'static> {
        TcpRepr {
            src_port: 50000,
            dst_port: 443,
            seq: 0x1234_5678,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            urgent: 0,
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    val: 0x0001_0203,
                    ecr: 0,
                }),
                ..TcpOptions::NONE
            },
            payload: &[],
        }
    }

    /// Found by the `frame` fuzz target: a SACK option of 3 blocks then one of 1 left blocks
    /// 2 and 3 of the first behind `sack_len`, so the parse differed from its own re-emission.
    #[test]
    fn a_second_sack_option_replaces_the_first_whole() {
        let mut opts = vec![kind::SACK, 26];
        for v in 1u32..=6 {
            opts.extend_from_slice(&v.to_be_bytes());
        }
        opts.extend_from_slice(&[kind::SACK, 10, 0, 0, 0, 9, 0, 0, 0, 10]);
        let o = TcpOptions::parse(&opts).unwrap();
        assert_eq!(o.sack_blocks(), &[SackBlock { left: 9, right: 10 }]);
        let mut one = TcpOptions::NONE;
        one.sack[0] = SackBlock { left: 9, right: 10 };
        one.sack_len = 1;
        assert_eq!(o, one);
    }

    #[test]
    fn write_header_matches_emit_header() {
        for ts in [
            None,
            Some(Timestamps {
                val: 0x0102_0304,
                ecr: 0xa0b0_c0d0,
            }),
        ] {
            let repr = TcpRepr {
                src_port: 7,
                dst_port: 40001,
                seq: 0xdead_beef,
                ack: 0x1234_5678,
                flags: flags::ACK | flags::PSH | flags::FIN,
                window: 0xfedc,
                urgent: 0,
                options: TcpOptions {
                    timestamps: ts,
                    ..TcpOptions::NONE
                },
                payload: &[],
            };
            let mut a = [0x55u8; 40];
            let hl = repr.emit_header(&mut a).unwrap();
            let mut b = [0x55u8; 40];
            write_header(
                &mut b,
                7,
                40001,
                0xdead_beef,
                0x1234_5678,
                repr.flags,
                0xfedc,
                hl,
            );
            if let Some(t) = ts {
                write_timestamps(&mut b[HEADER_LEN..], t);
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn timestamp_fast_path_matches_general_parse() {
        let o = [1, 1, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
        let fast = TcpOptions::parse(&o).unwrap();
        assert_eq!(fast, TcpOptions::parse_any(&o).unwrap());
        assert_eq!(
            fast.timestamps,
            Some(Timestamps {
                val: 0xdead_beef,
                ecr: 0x0102_0304
            })
        );
        // A wrong TS length is not the fast layout: ignored as an unknown option would be.
        let bad = [1, 1, 8, 9, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
        assert_eq!(TcpOptions::parse(&bad), TcpOptions::parse_any(&bad));
    }

    #[test]
    fn parse_linux_syn() {
        let r = TcpRepr::parse_bytes(&LINUX_SYN).unwrap();
        assert_eq!(r, syn_repr());
        assert_eq!(r.seq_len(), 1);
        // Cross-check with etherparse.
        let e = TcpHeaderSlice::from_slice(&LINUX_SYN).unwrap();
        assert_eq!(e.source_port(), r.src_port);
        assert_eq!(e.destination_port(), r.dst_port);
        assert_eq!(e.sequence_number(), r.seq);
        assert_eq!(e.window_size(), r.window);
        assert!(e.syn() && !e.ack());
        let opts: Vec<_> = e.options_iterator().map(|o| o.unwrap()).collect();
        assert_eq!(
            opts,
            vec![
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(0x0001_0203, 0),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ]
        );
    }

    #[test]
    fn emit_linux_syn_exact_bytes() {
        let mut buf = [0u8; 64];
        let n = syn_repr().emit(&mut buf, SRC, DST).unwrap();
        assert_eq!(n, 40);
        let mut expect = LINUX_SYN;
        let c = checksum::transport(SRC, DST, PROTOCOL, &expect);
        expect[16..18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(buf[..n], expect);
        assert!(TcpPacket::new_checked(&buf[..n])
            .unwrap()
            .verify_checksum(SRC, DST));
        // etherparse computes the same checksum.
        let e = TcpHeaderSlice::from_slice(&buf[..n]).unwrap();
        assert_eq!(e.calc_checksum_ipv4_raw(SRC, DST, &[]).unwrap(), c);
    }

    #[test]
    fn emit_parse_roundtrip_data_with_sack() {
        let mut o = TcpOptions {
            timestamps: Some(Timestamps {
                val: 0xffff_fff0,
                ecr: 7,
            }),
            sack_len: 3,
            ..TcpOptions::NONE
        };
        o.sack[0] = SackBlock {
            left: 100,
            right: 200,
        };
        o.sack[1] = SackBlock {
            left: 0xffff_ff00,
            right: 5,
        };
        o.sack[2] = SackBlock {
            left: 300,
            right: 400,
        };
        let r = TcpRepr {
            src_port: 443,
            dst_port: 50000,
            seq: 0xffff_fffe,
            ack: 17,
            flags: flags::ACK | flags::PSH,
            window: 512,
            urgent: 0,
            options: o,
            payload: b"hello",
        };
        assert_eq!(r.header_len(), 60);
        let mut buf = [0u8; 80];
        let n = r.emit(&mut buf, DST, SRC).unwrap();
        assert_eq!(n, 65);
        // NOP NOP TS(10), NOP NOP SACK(26)
        assert_eq!(buf[20..24], [1, 1, 8, 10]);
        assert_eq!(buf[32..36], [1, 1, 5, 26]);
        let p = TcpPacket::new_checked(&buf[..n]).unwrap();
        assert!(p.verify_checksum(DST, SRC));
        assert_eq!(TcpRepr::parse(&p).unwrap(), r);
        let e = TcpHeaderSlice::from_slice(&buf[..n]).unwrap();
        assert_eq!(
            e.calc_checksum_ipv4_raw(DST, SRC, b"hello").unwrap(),
            p.checksum()
        );
        assert_eq!(e.sequence_number(), 0xffff_fffe);
        assert_eq!(e.acknowledgment_number(), 17);
    }

    #[test]
    fn four_sack_blocks_without_timestamps() {
        let mut o = TcpOptions {
            sack_len: 4,
            ..TcpOptions::NONE
        };
        for i in 0..4 {
            o.sack[i] = SackBlock {
                left: i as u32 * 10,
                right: i as u32 * 10 + 5,
            };
        }
        let mut buf = [0u8; 60];
        let n = o.emit(&mut buf).unwrap();
        assert_eq!(n, 36);
        assert_eq!(TcpOptions::parse(&buf[..n]).unwrap(), o);
        // With timestamps too it no longer fits in 40 bytes.
        let too_many = TcpOptions {
            timestamps: Some(Timestamps::default()),
            ..o
        };
        assert_eq!(too_many.emit(&mut buf), Err(TcpWireError::NoSpace));
    }

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut v = LINUX_SYN[..20].to_vec();
        v.extend_from_slice(opts);
        v[12] = ((v.len() / 4) as u8) << 4;
        v
    }

    #[test]
    fn data_offset_below_five_is_rejected() {
        let mut b = LINUX_SYN;
        b[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap_err(),
            TcpWireError::BadDataOffset
        );
        b[12] = 0x00;
        assert_eq!(
            TcpRepr::parse_bytes(&b).unwrap_err(),
            TcpWireError::BadDataOffset
        );
    }

    #[test]
    fn data_offset_past_end_is_rejected() {
        assert_eq!(
            TcpRepr::parse_bytes(&LINUX_SYN[..36]).unwrap_err(),
            TcpWireError::Truncated
        );
        assert_eq!(
            TcpRepr::parse_bytes(&LINUX_SYN[..19]).unwrap_err(),
            TcpWireError::Truncated
        );
        assert_eq!(
            TcpRepr::parse_bytes(&[]).unwrap_err(),
            TcpWireError::Truncated
        );
    }

    #[test]
    fn option_length_zero_or_one_is_rejected() {
        for bad in [[2u8, 0, 0, 0], [2, 1, 0, 0], [99, 0, 1, 1], [8, 1, 1, 1]] {
            let b = with_options(&bad);
            assert_eq!(
                TcpRepr::parse_bytes(&b).unwrap_err(),
                TcpWireError::BadOption,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn option_overrun_is_rejected() {
        let b = with_options(&[1, 1, 8, 10]); // TS claims 10 bytes, 2 remain
        assert_eq!(
            TcpRepr::parse_bytes(&b).unwrap_err(),
            TcpWireError::BadOption
        );
        let b = with_options(&[1, 1, 1, 2]); // kind 2 without a length byte
        assert_eq!(
            TcpRepr::parse_bytes(&b).unwrap_err(),
            TcpWireError::BadOption
        );
    }

    #[test]
    fn unknown_options_skipped_and_eol_stops() {
        // Unknown kind 30 (MPTCP) of length 4, then MSS, then EOL followed by garbage.
        let b = with_options(&[30, 4, 0xaa, 0xbb, 2, 4, 0x02, 0x18, 0, 0xff, 0xff, 0xff]);
        let r = TcpRepr::parse_bytes(&b).unwrap();
        assert_eq!(
            r.options,
            TcpOptions {
                mss: Some(536),
                ..TcpOptions::NONE
            }
        );
    }

    #[test]
    fn wrong_length_known_options_ignored() {
        // MSS with length 3, WS with length 4, SACK with 6 bytes of blocks.
        let b = with_options(&[2, 3, 5, 3, 4, 1, 1, 1, 5, 8, 0, 0, 0, 0, 0, 0]);
        let r = TcpRepr::parse_bytes(&b).unwrap();
        assert_eq!(r.options, TcpOptions::NONE);
    }

    #[test]
    fn window_scale_above_14_clamped() {
        let b = with_options(&[1, 3, 3, 15]);
        assert_eq!(
            TcpRepr::parse_bytes(&b).unwrap().options.window_scale,
            Some(14)
        );
        let b = with_options(&[1, 3, 3, 255]);
        assert_eq!(
            TcpRepr::parse_bytes(&b).unwrap().options.window_scale,
            Some(14)
        );
        let o = TcpOptions {
            window_scale: Some(20),
            ..TcpOptions::NONE
        };
        let mut buf = [0u8; 4];
        o.emit(&mut buf).unwrap();
        assert_eq!(buf, [1, 3, 3, 14]);
    }

    #[test]
    fn flags_and_fields() {
        let mut b = LINUX_SYN;
        b[13] = flags::FIN | flags::ACK | flags::PSH;
        b[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        b[18..20].copy_from_slice(&7u16.to_be_bytes());
        let mut v = b.to_vec();
        v.extend_from_slice(b"xyz");
        let r = TcpRepr::parse_bytes(&v).unwrap();
        assert!(r.has(flags::FIN | flags::ACK));
        assert!(!r.has(flags::SYN));
        assert_eq!(r.ack, 0xdead_beef);
        assert_eq!(r.urgent, 7);
        assert_eq!(r.payload, b"xyz");
        assert_eq!(r.seq_len(), 4);
        let e = TcpHeaderSlice::from_slice(&v).unwrap();
        assert!(e.fin() && e.ack() && e.psh() && !e.syn());
        assert_eq!(e.urgent_pointer(), 7);
    }

    #[test]
    fn emit_into_short_buffer_fails() {
        let mut buf = [0u8; 39];
        assert_eq!(
            syn_repr().emit(&mut buf, SRC, DST),
            Err(TcpWireError::NoSpace)
        );
    }
}
