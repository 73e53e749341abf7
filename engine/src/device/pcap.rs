//! A pcap (libpcap classic format) writer for Ethernet frames, readable by tcpdump and Wireshark.

use crate::time::Instant;
use std::io::{self, Write};

/// Writes Ethernet frames to a pcap stream.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the pcap global header (microsecond timestamps, LINKTYPE_ETHERNET) to `out`.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay zero.
        h[16..20].copy_from_slice(&snaplen.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        out.write_all(&h)?;
        Ok(PcapWriter { out, snaplen })
    }

    /// Appends one frame captured at `at`.
    pub fn write(&mut self, at: Instant, frame: &[u8]) -> io::Result<()> {
        let us = at.as_micros();
        let incl = frame.len().min(self.snaplen as usize);
        let mut r = [0u8; 16];
        r[0..4].copy_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        r[4..8].copy_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        r[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        r[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.out.write_all(&r)?;
        self.out.write_all(&frame[..incl])
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_libpcap() {
        let mut w = PcapWriter::new(Vec::new(), 65535).unwrap();
        w.write(Instant::from_micros(1_500_000), &[0xaa; 60])
            .unwrap();
        let b = w.into_inner().unwrap();
        assert_eq!(b.len(), 24 + 16 + 60);
        assert_eq!(&b[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(b[24..28].try_into().unwrap()),
            1,
            "seconds"
        );
        assert_eq!(
            u32::from_le_bytes(b[28..32].try_into().unwrap()),
            500_000,
            "microseconds"
        );
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 60);
    }
}
