//! A pcapng writer (little-endian sections): a Section Header Block, one Interface Description
//! Block per queue (LINKTYPE_ETHERNET, microsecond timestamps), Enhanced Packet Blocks with the
//! direction (inbound/outbound) in `epb_flags`. Readable by tcpdump, Wireshark, tshark, scapy.

use std::io::{self, Write};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Direction of a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the engine.
    In,
    /// Sent by the engine.
    Out,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + pad4(value.len()) - value.len(), 0);
}

fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let total = (12 + body.len()) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
}

/// The file header: a Section Header Block and one Interface Description Block per name in
/// `ifaces` (interface id = index), each with `snaplen`.
pub fn header(ifaces: &[String], snaplen: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = Vec::new();
    b.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // section length: unknown
    option(&mut b, SHB_USERAPPL, b"handshake");
    option(&mut b, OPT_END, &[]);
    block(&mut out, SHB, &b);
    for name in ifaces {
        let mut b = Vec::new();
        b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&snaplen.to_le_bytes());
        option(&mut b, IF_NAME, name.as_bytes());
        option(&mut b, IF_TSRESOL, &[6]);
        option(&mut b, OPT_END, &[]);
        block(&mut out, IDB, &b);
    }
    out
}

/// Bytes one Enhanced Packet Block of `captured` bytes takes.
pub fn packet_len(captured: usize) -> usize {
    12 + 20 + pad4(captured) + 8 + 4
}

/// Writes one Enhanced Packet Block: `data` (already cut to the snap length) of a frame of
/// `orig_len` bytes, on interface `iface`, at `ts_us` microseconds since the Unix epoch.
pub fn write_packet<W: Write>(
    out: &mut W,
    iface: u32,
    ts_us: u64,
    data: &[u8],
    orig_len: u32,
    dir: Direction,
) -> io::Result<()> {
    let total = packet_len(data.len()) as u32;
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&EPB.to_le_bytes());
    h[4..8].copy_from_slice(&total.to_le_bytes());
    h[8..12].copy_from_slice(&iface.to_le_bytes());
    h[12..16].copy_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(ts_us as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[24..28].copy_from_slice(&orig_len.to_le_bytes());
    out.write_all(&h)?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad4(data.len()) - data.len()])?;
    let flags: u32 = match dir {
        Direction::In => 1,
        Direction::Out => 2,
    };
    let mut t = [0u8; 16];
    t[0..2].copy_from_slice(&EPB_FLAGS.to_le_bytes());
    t[2..4].copy_from_slice(&4u16.to_le_bytes());
    t[4..8].copy_from_slice(&flags.to_le_bytes());
    // opt_endofopt (4 zero bytes), then the total length again.
    t[12..16].copy_from_slice(&total.to_le_bytes());
    out.write_all(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes() {
        let h = header(&["veth0 q0".to_owned()], 2048);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // SHB: type, length 48, magic, version 1.0, section length -1
            &[0x0A, 0x0D, 0x0D, 0x0A, 48, 0, 0, 0, 0x4D, 0x3C, 0x2B, 0x1A, 1, 0, 0, 0][..],
            &[0xFF; 8],
            // shb_userappl "handshake" (9 bytes, padded to 12), end of options
            &[4, 0, 9, 0], b"handshake", &[0, 0, 0], &[0, 0, 0, 0],
            &[48, 0, 0, 0],
            // IDB: type 1, length 44, linktype 1, reserved, snaplen 2048
            &[1, 0, 0, 0, 44, 0, 0, 0, 1, 0, 0, 0, 0, 8, 0, 0],
            // if_name "veth0 q0" (8 bytes), if_tsresol 6 (µs), end
            &[2, 0, 8, 0], b"veth0 q0", &[9, 0, 1, 0, 6, 0, 0, 0], &[0, 0, 0, 0],
            &[44, 0, 0, 0],
        ]
        .concat();
        assert_eq!(h, want);
        assert_eq!(h.len(), 48 + 44);
    }

    #[test]
    fn packet_bytes() {
        let mut out = Vec::new();
        let ts = 0x0000_0001_0000_0002u64;
        write_packet(
            &mut out,
            3,
            ts,
            &[0xAA, 0xBB, 0xCC, 0xDD, 0xEE],
            60,
            Direction::Out,
        )
        .unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[6, 0, 0, 0, 52, 0, 0, 0][..],
            &[3, 0, 0, 0], &[1, 0, 0, 0], &[2, 0, 0, 0],
            &[5, 0, 0, 0], &[60, 0, 0, 0],
            &[0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0, 0],
            // epb_flags: outbound (2)
            &[2, 0, 4, 0, 2, 0, 0, 0], &[0, 0, 0, 0],
            &[52, 0, 0, 0],
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(packet_len(5), out.len());
        let mut out = Vec::new();
        write_packet(&mut out, 0, 0, &[1, 2, 3, 4], 4, Direction::In).unwrap();
        assert_eq!(out.len(), packet_len(4));
        assert_eq!(out[32..36], [2, 0, 4, 0]);
        assert_eq!(out[36], 1, "inbound");
    }
}
