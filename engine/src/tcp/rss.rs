//! Receive-side scaling: which NIC queue a received packet lands on, so that the ports of
//! connections the engine opens can be chosen for their replies to come back to the queue (and
//! so the worker) that opened them.
//!
//! NICs hash a received TCP/IPv4 packet with the Toeplitz function over (source address,
//! destination address, source port, destination port) under a secret key, and look the queue
//! up in an indirection table by the hash's low bits (`ethtool -x IF` shows both). For a
//! connection to `remote` from `local:port`, the replies are `remote → local:port`: choosing
//! `port` among the ephemeral range picks the queue. [`RssSteering::from_ethtool`] reads what
//! `ethtool -x` prints.

use std::net::{Ipv4Addr, SocketAddrV4};
use thiserror::Error;

/// Why steering settings were refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RssError {
    /// The key is shorter than the 16 bytes a TCP/IPv4 hash needs.
    #[error(
        "the RSS key has {0} bytes; a TCP/IPv4 hash needs at least 16 (ethtool -x shows the NIC's)"
    )]
    ShortKey(usize),
    /// The indirection table is empty.
    #[error("the RSS indirection table is empty (ethtool -x shows the NIC's)")]
    EmptyTable,
    /// The queue never appears in the table: no port could steer to it.
    #[error("queue {0} is not in the RSS indirection table: pick one that is (ethtool -x), or spread the table over it (ethtool -X IF equal N)")]
    QueueNotInTable(u32),
    /// `ethtool -x` output without a key or a table.
    #[error("could not read the RSS key and table from `ethtool -x` output: {0}")]
    Unparsable(&'static str),
}

/// The Toeplitz hash of `input` under `key` (Microsoft's RSS definition; `key` must be at least
/// `input.len() + 4` bytes).
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    debug_assert!(key.len() >= input.len() + 4);
    let mut result = 0u32;
    // The 32-bit window of the key at the current bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    result
}

/// The NIC's RSS settings and the queue this engine serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssSteering {
    key: Vec<u8>,
    table: Vec<u32>,
    queue: u32,
}

impl RssSteering {
    /// Steering to `queue` for a NIC with this Toeplitz `key` and indirection `table`.
    pub fn new(key: Vec<u8>, table: Vec<u32>, queue: u32) -> Result<Self, RssError> {
        if key.len() < 16 {
            return Err(RssError::ShortKey(key.len()));
        }
        if table.is_empty() {
            return Err(RssError::EmptyTable);
        }
        if !table.contains(&queue) {
            return Err(RssError::QueueNotInTable(queue));
        }
        Ok(RssSteering { key, table, queue })
    }

    /// Reads the key and the table from what `ethtool -x IF` prints.
    pub fn from_ethtool(text: &str, queue: u32) -> Result<Self, RssError> {
        let mut table = Vec::new();
        let mut key = None;
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let t = line.trim();
            if t.starts_with("RSS hash key") {
                let hex = lines.next().unwrap_or("").trim();
                let bytes: Option<Vec<u8>> = hex
                    .split(':')
                    .map(|b| u8::from_str_radix(b, 16).ok())
                    .collect();
                key = bytes.filter(|b| !b.is_empty());
            } else if let Some((index, rest)) = t.split_once(':') {
                if index.trim().parse::<usize>().is_ok() {
                    for q in rest.split_whitespace() {
                        table.push(
                            q.parse().map_err(|_| {
                                RssError::Unparsable("a table entry is not a number")
                            })?,
                        );
                    }
                }
            }
        }
        let key = key.ok_or(RssError::Unparsable("no RSS hash key"))?;
        if table.is_empty() {
            return Err(RssError::Unparsable("no indirection table"));
        }
        Self::new(key, table, queue)
    }

    /// The queue served.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The queue a TCP/IPv4 packet from `src` to `dst` lands on.
    pub fn queue_of(&self, src: SocketAddrV4, dst: SocketAddrV4) -> u32 {
        let mut input = [0u8; 12];
        input[..4].copy_from_slice(&src.ip().octets());
        input[4..8].copy_from_slice(&dst.ip().octets());
        input[8..10].copy_from_slice(&src.port().to_be_bytes());
        input[10..12].copy_from_slice(&dst.port().to_be_bytes());
        let h = toeplitz(&self.key, &input);
        self.table[h as usize % self.table.len()]
    }

    /// Whether the replies of a connection from `local:port` to `remote` land on our queue.
    pub fn replies_here(&self, local: Ipv4Addr, port: u16, remote: SocketAddrV4) -> bool {
        self.queue_of(remote, SocketAddrV4::new(local, port)) == self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    /// Microsoft's verification data ("Verifying the RSS Hash Calculation"): destination,
    /// source, IPv4-only hash, TCP/IPv4 hash.
    const VECTORS: [(&str, &str, u32, u32); 5] = [
        (
            "161.142.100.80:1766",
            "66.9.149.187:2794",
            0x323e8fc2,
            0x51ccc178,
        ),
        (
            "65.69.140.83:4739",
            "199.92.111.2:14230",
            0xd718262a,
            0xc626b0ea,
        ),
        (
            "12.22.207.184:38024",
            "24.19.198.95:12898",
            0xd2d0a5de,
            0x5c2b394a,
        ),
        (
            "209.142.163.6:2217",
            "38.27.205.30:48228",
            0x82989176,
            0xafc7327f,
        ),
        (
            "202.188.127.2:1303",
            "153.39.163.191:44251",
            0x5d1809c5,
            0x10e828a2,
        ),
    ];

    #[test]
    fn toeplitz_matches_microsofts_vectors() {
        for (dst, src, ip_only, with_tcp) in VECTORS {
            let (dst, src): (SocketAddrV4, SocketAddrV4) =
                (dst.parse().unwrap(), src.parse().unwrap());
            let mut input = Vec::new();
            input.extend_from_slice(&src.ip().octets());
            input.extend_from_slice(&dst.ip().octets());
            assert_eq!(toeplitz(&KEY, &input), ip_only, "{src} -> {dst}");
            input.extend_from_slice(&src.port().to_be_bytes());
            input.extend_from_slice(&dst.port().to_be_bytes());
            assert_eq!(toeplitz(&KEY, &input), with_tcp, "{src} -> {dst}");
            // Through the steering: a one-entry-per-hash table of 1 << 7 entries.
            let table: Vec<u32> = (0..128).collect();
            let s = RssSteering::new(KEY.to_vec(), table, with_tcp & 127).unwrap();
            assert_eq!(s.queue_of(src, dst), with_tcp & 127);
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            RssSteering::new(vec![0; 8], vec![0], 0),
            Err(RssError::ShortKey(8))
        );
        assert_eq!(
            RssSteering::new(KEY.to_vec(), vec![], 0),
            Err(RssError::EmptyTable)
        );
        assert_eq!(
            RssSteering::new(KEY.to_vec(), vec![0, 1], 2),
            Err(RssError::QueueNotInTable(2))
        );
    }

    #[test]
    fn connect_picks_ports_whose_replies_come_back_to_our_queue() {
        use crate::tcp::{Tcp, TcpConfig};
        use crate::time::Instant;
        let table: Vec<u32> = (0..128).map(|i| i % 4).collect();
        let local = Ipv4Addr::new(198, 18, 0, 1);
        let remote: SocketAddrV4 = "198.19.0.10:443".parse().unwrap();
        for queue in 0..4 {
            let mut tcp = Tcp::new(TcpConfig::default(), [7; 32]);
            let s = RssSteering::new(KEY.to_vec(), table.clone(), queue).unwrap();
            tcp.set_steering(Some(s.clone()));
            let mut ports = std::collections::HashSet::new();
            for _ in 0..200 {
                let c = tcp.connect(Instant::from_secs(1), local, remote).unwrap();
                let (ours, _) = tcp.endpoints(c).unwrap();
                assert!(
                    s.replies_here(local, ours.port(), remote),
                    "queue {queue} port {}",
                    ours.port()
                );
                assert!(ports.insert(ours.port()), "port {} twice", ours.port());
            }
        }
        // Without steering about a quarter of those ports would have been elsewhere: the
        // filter does something.
        let s = RssSteering::new(KEY.to_vec(), table, 0).unwrap();
        let here = (32768..33768)
            .filter(|&p| s.replies_here(local, p, remote))
            .count();
        assert!(
            (150..350).contains(&here),
            "{here} of 1000 ports on queue 0"
        );
    }

    #[test]
    fn reads_ethtool_output() {
        let text = "RX flow hash indirection table for eth0 with 4 RX ring(s):
    0:      0     1     2     3     0     1     2     3
    8:      0     1     2     3     0     1     2     3
RSS hash key:
6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa
RSS hash function:
    toeplitz: on
    xor: off
";
        let s = RssSteering::from_ethtool(text, 2).unwrap();
        assert_eq!(s.table.len(), 16);
        assert_eq!(s.key, KEY.to_vec());
        assert_eq!(s.queue(), 2);
        assert_eq!(
            RssSteering::from_ethtool("Cannot get RX ring count: Operation not supported", 0),
            Err(RssError::Unparsable("no RSS hash key"))
        );
    }
}
