//! Per-worker counters of the stack.
//!
//! Each worker owns its [`StackStats`] (plain integers, no atomics on the fast path). The daemon
//! publishes a copy into a [`SharedStats`] block of relaxed atomics once per batch so that other
//! threads (the stats logger, the metrics endpoint) can read it without a lock.

use core::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why a received frame was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();
            /// The labels of [`DropReason::ALL`], in index order (metric label values).
            pub const LABELS: &'static [&'static str] = &[$($label,)*];
            /// A short snake_case label for logs and metrics.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// Frame shorter than an Ethernet header.
    EthTruncated => "eth_truncated",
    /// Destination MAC is neither ours nor broadcast.
    EthNotForUs => "eth_not_for_us",
    /// EtherType we do not handle (IPv6, VLAN, LLDP…).
    EthUnknownType => "eth_unknown_type",
    /// Source MAC is a group address (multicast or broadcast): no station sends from one, and
    /// a reply would go to the whole link.
    EthBadSource => "eth_bad_source",
    /// ARP shorter than 28 bytes.
    ArpTruncated => "arp_truncated",
    /// ARP hardware type/size is not Ethernet/6.
    ArpBadHardware => "arp_bad_hardware",
    /// ARP protocol type/size is not IPv4/4.
    ArpBadProtocol => "arp_bad_protocol",
    /// ARP operation neither request nor reply.
    ArpBadOperation => "arp_bad_operation",
    /// ARP with an invalid sender (multicast MAC, zero or broadcast IP, our own address).
    ArpBadSender => "arp_bad_sender",
    /// ARP not addressed to one of our addresses (learned nothing, answered nothing).
    ArpNotForUs => "arp_not_for_us",
    /// ARP reply we did not ask for (ignored: it cannot create or change an entry).
    ArpUnsolicited => "arp_unsolicited",
    /// IPv4 shorter than its header.
    Ipv4Truncated => "ipv4_truncated",
    /// IPv4 version field not 4.
    Ipv4BadVersion => "ipv4_bad_version",
    /// IPv4 IHL below 5.
    Ipv4BadHeaderLen => "ipv4_bad_header_len",
    /// IPv4 total length inconsistent with the header or the frame.
    Ipv4BadTotalLen => "ipv4_bad_total_len",
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// IPv4 TTL of zero.
    Ipv4TtlZero => "ipv4_ttl_zero",
    /// IPv4 fragment while reassembly is off (`reassembly.max_datagrams = 0`).
    Ipv4Fragment => "ipv4_fragment",
    /// IPv4 fragment that is empty, not a multiple of 8 bytes but for the last, or beyond the
    /// datagram's end or 65,535 bytes (its datagram is discarded).
    Ipv4FragMalformed => "ipv4_frag_malformed",
    /// IPv4 fragment overlapping data of its datagram received before (the datagram is
    /// discarded).
    Ipv4FragOverlap => "ipv4_frag_overlap",
    /// IPv4 fragment received twice (ignored).
    Ipv4FragDuplicate => "ipv4_frag_duplicate",
    /// IPv4 datagram in progress dropped, the oldest, to make room for a new one while
    /// `reassembly.max_datagrams` were in progress (counted once per datagram).
    Ipv4FragEvicted => "ipv4_frag_evicted",
    /// IPv4 fragment beyond `reassembly.max_bytes` held, or beyond 64 pieces (the datagram is
    /// discarded).
    Ipv4FragMemory => "ipv4_frag_memory",
    /// IPv4 datagram not whole within `reassembly.timeout_ms` (counted once per datagram).
    Ipv4FragTimeout => "ipv4_frag_timeout",
    /// Reassembled echo request while the reply to the previous one is still going out in
    /// fragments.
    Ipv4FragReplyBusy => "ipv4_frag_reply_busy",
    /// IPv4 destination not one of our addresses.
    Ipv4NotForUs => "ipv4_not_for_us",
    /// IPv4 source that cannot be answered (multicast, broadcast, zero, ours).
    Ipv4BadSource => "ipv4_bad_source",
    /// ICMP shorter than its header.
    IcmpTruncated => "icmp_truncated",
    /// ICMP checksum wrong.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// ICMP type we do not answer (counted, not an error).
    IcmpIgnored => "icmp_ignored",
    /// ICMP echo reply suppressed by the rate limit.
    IcmpRateLimited => "icmp_rate_limited",
    /// TCP segment shorter than its header.
    TcpTruncated => "tcp_truncated",
    /// TCP checksum wrong.
    TcpBadChecksum => "tcp_bad_checksum",
    /// UDP or another protocol nobody serves (answered with ICMP unreachable when allowed).
    ProtoUnreachable => "proto_unreachable",
    /// An ICMP error we would have sent, suppressed by the rate limit.
    IcmpErrorRateLimited => "icmp_error_rate_limited",
    /// An outgoing packet dropped: its next hop did not answer ARP, or its queue was full.
    ArpUnresolved => "arp_unresolved",
    /// An outgoing packet dropped: no route (no gateway for an off-link destination).
    NoRoute => "no_route",
    /// An outgoing packet dropped: no transmit buffer.
    TxNoBuffer => "tx_no_buffer",
    /// UDP shorter than its header, or its length field lies.
    UdpTruncated => "udp_truncated",
    /// UDP checksum wrong.
    UdpBadChecksum => "udp_bad_checksum",
}

/// Counters of one stack (one worker, one queue).
#[derive(Clone, Debug)]
pub struct StackStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received (Ethernet frames).
    pub rx_bytes: u64,
    /// Frames transmitted (in-place replies and originated frames).
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// ARP requests sent (resolution, refresh, gratuitous).
    pub arp_requests: u64,
    /// ICMP echo replies sent.
    pub icmp_echo_replies: u64,
    /// ICMP errors built (sent, or parked until the destination's MAC resolves).
    pub icmp_errors: u64,
    /// TCP segments handed to the TCP layer.
    pub tcp_segments: u64,
    /// UDP datagrams handed to the DNS resolver.
    pub udp_datagrams: u64,
    /// TCP connections open (any state but CLOSED and TIME_WAIT); filled by `Stack::snapshot`.
    pub tcp_flows: u64,
    /// TCP connections in TIME_WAIT.
    pub tcp_time_wait: u64,
    /// SYN cookies sent.
    pub syn_cookies_sent: u64,
    /// SYN cookies validated (connections established from a cookie).
    pub syn_cookies_validated: u64,
    /// RFC 5961 challenge ACKs sent.
    pub challenge_acks: u64,
    /// TCP retransmissions.
    pub tcp_retransmits: u64,
    /// TCP RSTs sent.
    pub tcp_rsts_sent: u64,
    /// TLS sessions started inline on this worker (pool threads count their own).
    pub tls_sessions: u64,
    /// TLS handshakes completed inline.
    pub tls_handshakes: u64,
    /// Of which resumed.
    pub tls_resumed: u64,
    /// TLS sessions ended by bad input (an alert was sent).
    pub tls_errors: u64,
    /// TLS handshakes timed out.
    pub tls_timeouts: u64,
    /// TLS connections refused at the session limit (inline; the pool counts its own).
    pub tls_refused: u64,
    /// HTTP responses sent (plain HTTP and inline HTTPS).
    pub http_responses: u64,
    /// Drops by reason, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Default for StackStats {
    fn default() -> Self {
        StackStats {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            arp_replies: 0,
            arp_requests: 0,
            icmp_echo_replies: 0,
            icmp_errors: 0,
            tcp_segments: 0,
            udp_datagrams: 0,
            tcp_flows: 0,
            tcp_time_wait: 0,
            syn_cookies_sent: 0,
            syn_cookies_validated: 0,
            challenge_acks: 0,
            tcp_retransmits: 0,
            tcp_rsts_sent: 0,
            tls_sessions: 0,
            tls_handshakes: 0,
            tls_resumed: 0,
            tls_errors: 0,
            tls_timeouts: 0,
            tls_refused: 0,
            http_responses: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl StackStats {
    /// Counts a drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    /// Drops of one reason.
    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Number of scalar counters before the drop array in [`SharedStats`].
const SCALARS: usize = 23;

/// Lock-free snapshot of a worker's counters, written by the worker, read by anyone.
#[derive(Debug)]
pub struct SharedStats {
    values: [AtomicU64; SCALARS + DropReason::COUNT],
}

impl Default for SharedStats {
    fn default() -> Self {
        SharedStats {
            values: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SharedStats {
    /// Publishes `s` (relaxed stores; readers may see a mix of two consecutive snapshots).
    pub fn publish(&self, s: &StackStats) {
        let scalars = [
            s.rx_packets,
            s.rx_bytes,
            s.tx_packets,
            s.tx_bytes,
            s.arp_replies,
            s.arp_requests,
            s.icmp_echo_replies,
            s.icmp_errors,
            s.tcp_segments,
            s.tcp_flows,
            s.tcp_time_wait,
            s.syn_cookies_sent,
            s.syn_cookies_validated,
            s.challenge_acks,
            s.tcp_retransmits,
            s.tcp_rsts_sent,
            s.tls_sessions,
            s.tls_handshakes,
            s.tls_resumed,
            s.tls_errors,
            s.tls_timeouts,
            s.tls_refused,
            s.http_responses,
        ];
        for (slot, v) in self.values.iter().zip(scalars.iter().chain(s.drops.iter())) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// Reads the latest snapshot.
    pub fn read(&self) -> StackStats {
        let v = |i: usize| self.values[i].load(Ordering::Relaxed);
        StackStats {
            rx_packets: v(0),
            rx_bytes: v(1),
            tx_packets: v(2),
            tx_bytes: v(3),
            arp_replies: v(4),
            arp_requests: v(5),
            icmp_echo_replies: v(6),
            icmp_errors: v(7),
            tcp_segments: v(8),
            tcp_flows: v(9),
            tcp_time_wait: v(10),
            syn_cookies_sent: v(11),
            syn_cookies_validated: v(12),
            challenge_acks: v(13),
            tcp_retransmits: v(14),
            tcp_rsts_sent: v(15),
            tls_sessions: v(16),
            tls_handshakes: v(17),
            tls_resumed: v(18),
            tls_errors: v(19),
            tls_timeouts: v(20),
            tls_refused: v(21),
            http_responses: v(22),
            drops: core::array::from_fn(|i| v(SCALARS + i)),
            // Not published: the client side runs one stack, read directly.
            udp_datagrams: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_read_roundtrip() {
        let mut s = StackStats {
            rx_packets: 3,
            tcp_segments: 9,
            tcp_rsts_sent: 4,
            tls_errors: 6,
            http_responses: 8,
            ..Default::default()
        };
        s.drop(DropReason::Ipv4BadChecksum);
        s.drop(DropReason::TxNoBuffer);
        let shared = SharedStats::default();
        shared.publish(&s);
        let r = shared.read();
        assert_eq!(r.rx_packets, 3);
        assert_eq!(r.tcp_segments, 9);
        assert_eq!(r.tcp_rsts_sent, 4);
        assert_eq!((r.tls_errors, r.http_responses), (6, 8));
        assert_eq!(r.drops_of(DropReason::Ipv4BadChecksum), 1);
        assert_eq!(r.drops_of(DropReason::TxNoBuffer), 1);
        assert_eq!(r.total_drops(), 2);
    }

    #[test]
    fn labels_are_unique() {
        let mut l: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        l.sort();
        l.dedup();
        assert_eq!(l.len(), DropReason::COUNT);
    }
}
