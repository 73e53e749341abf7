//! Metrics: every counter the engine keeps, per queue, in the Prometheus text exposition format.
//!
//! The fast path never sees this module. Each worker owns its counters as plain integers (in
//! the stack, the TCP engine, the apps, the AF_XDP port); every `publish_ms` milliseconds (100
//! by default, never per packet) it copies them with [`collect`] into a [`Values`] array on its
//! stack and stores that into its [`QueueSlot`] with relaxed atomic stores: no lock, no
//! allocation, no syscall. A reader ([`QueueSlot::read`]) may see a mix of two consecutive
//! publications, which is harmless for monotonic counters and gauges alike.
//!
//! [`render`] turns the slots into the text format (`# HELP`, `# TYPE`, one sample per line,
//! names `handshake_*`, a `queue="N"` label per queue); [`server`] serves it over a kernel TCP
//! socket from a thread of its own; [`parse`] reads it back (for `handshake stats`, [`view`]).

pub mod parse;
pub mod server;
pub mod view;

use crate::stack::Stack;
use crate::stats::DropReason;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the daemon restarts); names end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric family: a name, its help, its type, and optionally one label with a fixed set of
/// values (one sample per value; without a label, one sample).
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// Metric name (`handshake_…`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Name of the family's own label (`""`: none).
    pub label: &'static str,
    /// Values of that label, in slot order.
    pub values: &'static [&'static str],
}

impl Family {
    /// Slots this family takes.
    pub const fn width(&self) -> usize {
        if self.values.is_empty() {
            1
        } else {
            self.values.len()
        }
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Counter,
        label: "",
        values: &[],
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: Kind::Gauge,
        label: "",
        values: &[],
    }
}

const fn counter_by(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind: Kind::Counter,
        label,
        values,
    }
}

const fn gauge_by(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind: Kind::Gauge,
        label,
        values,
    }
}

/// Slots taken by `families`.
pub const fn width(families: &[Family]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < families.len() {
        n += families[i].width();
        i += 1;
    }
    n
}

/// TCP states exported by `handshake_tcp_flows` (every state but CLOSED and LISTEN), in the
/// order of `tcp::State::ALL[2..]`.
pub const TCP_STATES: &[&str] = &[
    "syn_sent",
    "syn_received",
    "established",
    "fin_wait_1",
    "fin_wait_2",
    "close_wait",
    "closing",
    "last_ack",
    "time_wait",
];

/// HTTP statuses, in the order of [`crate::http::STATUSES`].
pub const HTTP_STATUSES: &[&str] = &[
    "200", "400", "404", "405", "408", "413", "414", "431", "505",
];

/// TCP-layer drop reasons of `handshake_tcp_drops_total`.
pub const TCP_DROPS: &[&str] = &[
    "malformed",
    "no_listener",
    "syn_backlog_full",
    "accept_backlog_full",
    "table_full",
    "out_of_window",
    "out_of_order",
    "control_full",
    "paws",
];

/// The per-queue families, in slot order ([`collect`] fills them in this order).
pub const QUEUE_FAMILIES: &[Family] = &[
    counter(
        "handshake_rx_packets_total",
        "Frames received by the stack.",
    ),
    counter(
        "handshake_rx_bytes_total",
        "Bytes of the frames received (Ethernet frames).",
    ),
    counter(
        "handshake_tx_packets_total",
        "Frames transmitted (in-place replies and originated frames).",
    ),
    counter(
        "handshake_tx_bytes_total",
        "Bytes of the frames transmitted.",
    ),
    counter_by(
        "handshake_drops_total",
        "Frames (received or outgoing) dropped by the stack, by reason.",
        "reason",
        DropReason::LABELS,
    ),
    counter("handshake_arp_replies_total", "ARP requests answered."),
    counter(
        "handshake_arp_requests_total",
        "ARP requests sent (resolution, refresh, gratuitous).",
    ),
    counter(
        "handshake_arp_misses_total",
        "Neighbour cache lookups that missed.",
    ),
    counter(
        "handshake_arp_failed_total",
        "Addresses given up on after the last ARP probe.",
    ),
    gauge(
        "handshake_arp_cache_entries",
        "Entries in the neighbour cache (resolved or pending).",
    ),
    counter(
        "handshake_icmp_echo_replies_total",
        "ICMP echo replies sent.",
    ),
    counter(
        "handshake_ipv4_fragments_total",
        "IPv4 fragments taken into a datagram being reassembled.",
    ),
    counter(
        "handshake_ipv4_reassembled_total",
        "IPv4 datagrams reassembled from fragments.",
    ),
    gauge(
        "handshake_ipv4_reassembly_datagrams",
        "IPv4 datagrams being reassembled.",
    ),
    gauge(
        "handshake_ipv4_reassembly_bytes",
        "Payload bytes held by the IPv4 reassembly.",
    ),
    counter(
        "handshake_icmp_errors_total",
        "ICMP errors built (port/protocol unreachable).",
    ),
    counter(
        "handshake_tcp_segments_received_total",
        "TCP segments handed to the TCP engine.",
    ),
    counter("handshake_tcp_segments_sent_total", "TCP segments sent."),
    gauge_by(
        "handshake_tcp_flows",
        "TCP connections, by state.",
        "state",
        TCP_STATES,
    ),
    counter_by(
        "handshake_tcp_opens_total",
        "TCP connections established, passive (accepted) or active.",
        "side",
        &["passive", "active"],
    ),
    counter(
        "handshake_tcp_syn_cookies_sent_total",
        "SYN cookies sent (SYN-ACKs without state).",
    ),
    counter(
        "handshake_tcp_syn_cookies_validated_total",
        "ACKs whose SYN cookie validated (connection created).",
    ),
    counter(
        "handshake_tcp_syn_cookies_failed_total",
        "ACKs to a listener whose SYN cookie did not validate.",
    ),
    counter(
        "handshake_tcp_challenge_acks_total",
        "RFC 5961 challenge ACKs sent.",
    ),
    counter(
        "handshake_tcp_retransmits_total",
        "TCP segments retransmitted.",
    ),
    counter(
        "handshake_tcp_rto_total",
        "TCP retransmission timeouts fired.",
    ),
    counter(
        "handshake_tcp_fast_retransmits_total",
        "TCP fast retransmits.",
    ),
    counter(
        "handshake_tcp_tail_loss_probes_total",
        "TCP tail loss probes sent (RFC 8985 §7).",
    ),
    counter(
        "handshake_tcp_lost_retransmits_total",
        "TCP retransmissions found lost again from SACK information and resent.",
    ),
    counter(
        "handshake_tcp_recovery_probes_total",
        "TCP recovery probes: no ACK for 2 SRTT in SACK recovery, the first hole resent.",
    ),
    counter(
        "handshake_tcp_reorder_timeouts_total",
        "TCP recoveries started by the reordering timer (RFC 8985 §6.2).",
    ),
    counter("handshake_tcp_rsts_sent_total", "TCP RSTs sent."),
    counter(
        "handshake_tcp_rsts_received_total",
        "Acceptable TCP RSTs received.",
    ),
    counter(
        "handshake_tcp_timeouts_total",
        "TCP connections closed by a timeout (retransmissions, keepalive, persist).",
    ),
    counter(
        "handshake_tcp_persist_timeouts_total",
        "TCP connections reset because the peer kept its window closed past tcp.persist_timeout_ms.",
    ),
    counter_by(
        "handshake_tcp_drops_total",
        "TCP segments dropped by the TCP engine, by reason.",
        "reason",
        TCP_DROPS,
    ),
    counter(
        "handshake_tls_sessions_total",
        "TLS sessions started on this worker (inline TLS).",
    ),
    counter(
        "handshake_tls_handshakes_total",
        "TLS handshakes completed (inline TLS).",
    ),
    counter(
        "handshake_tls_resumed_total",
        "TLS handshakes that resumed a session (inline TLS).",
    ),
    counter(
        "handshake_tls_errors_total",
        "TLS sessions ended by bad input: failed handshakes and alerts (inline TLS).",
    ),
    counter(
        "handshake_tls_timeouts_total",
        "TLS handshakes that did not finish in time (inline TLS).",
    ),
    counter(
        "handshake_tls_refused_total",
        "TLS connections refused at the session limit (inline TLS).",
    ),
    gauge(
        "handshake_tls_pool_flows",
        "HTTPS connections on the TLS session pool now.",
    ),
    counter(
        "handshake_tls_pool_aborts_total",
        "HTTPS connections the pool refused or failed (reset).",
    ),
    counter(
        "handshake_http_connections_total",
        "HTTP connections accepted (plain HTTP and inline HTTPS).",
    ),
    counter_by(
        "handshake_http_responses_total",
        "HTTP responses sent (plain HTTP and inline HTTPS), by status.",
        "status",
        HTTP_STATUSES,
    ),
    counter(
        "handshake_echo_connections_total",
        "Connections accepted by the echo service.",
    ),
    counter("handshake_echo_bytes_total", "Bytes echoed."),
    counter(
        "handshake_xsk_fill_ring_empty_total",
        "Times a refill found the AF_XDP fill ring empty.",
    ),
    counter(
        "handshake_xsk_tx_ring_full_total",
        "Times the AF_XDP TX ring had no room for a batch.",
    ),
    counter(
        "handshake_xsk_tx_ring_full_drops_total",
        "In-place replies dropped because the TX ring was full.",
    ),
    counter_by(
        "handshake_xsk_invalid_descs_total",
        "AF_XDP descriptors rejected by the port, by ring.",
        "ring",
        &["rx", "completion"],
    ),
    counter_by(
        "handshake_xsk_wakeups_total",
        "Wakeup syscalls made on the AF_XDP rings (need_wakeup), by ring.",
        "ring",
        &["rx", "tx"],
    ),
    counter(
        "handshake_xsk_polls_total",
        "poll(2) calls made while idle.",
    ),
    counter(
        "handshake_xsk_kernel_rx_dropped_total",
        "Received packets the kernel dropped (XDP_STATISTICS rx_dropped).",
    ),
    counter(
        "handshake_xsk_kernel_rx_ring_full_total",
        "Received packets the kernel dropped because the RX ring was full.",
    ),
    counter(
        "handshake_xsk_kernel_fill_ring_empty_total",
        "Times the kernel found the fill ring empty.",
    ),
    counter(
        "handshake_xsk_kernel_tx_ring_empty_total",
        "Times the kernel found the TX ring empty.",
    ),
    counter_by(
        "handshake_xsk_kernel_invalid_descs_total",
        "Descriptors the kernel rejected as invalid, by ring.",
        "ring",
        &["rx", "tx"],
    ),
    counter(
        "handshake_capture_frames_total",
        "Frames copied into the capture ring (--pcap).",
    ),
    counter(
        "handshake_capture_dropped_total",
        "Frames not captured because the capture ring was full.",
    ),
];

/// Number of per-queue slots.
pub const QUEUE_SLOTS: usize = width(QUEUE_FAMILIES);

/// The families without a queue label (the XDP program's counters, the daemon).
pub const GLOBAL_FAMILIES: &[Family] = &[
    counter_by(
        "handshake_xdp_packets_total",
        "Frames seen by the XDP program, by action (redirected to AF_XDP, passed to the kernel, malformed, owned but no socket).",
        "action",
        &handshake_common::counter::NAMES,
    ),
    gauge("handshake_queues", "Queues (workers) served."),
    gauge("handshake_uptime_seconds", "Seconds since the daemon started."),
];

/// Number of global slots.
pub const GLOBAL_SLOTS: usize = width(GLOBAL_FAMILIES);

/// The per-queue families filled by the daemon's main thread (from the XDP program's maps).
pub const XDP_QUEUE_FAMILIES: &[Family] = &[counter(
    "handshake_xdp_queue_redirected_total",
    "Frames the XDP program redirected to this queue's AF_XDP socket.",
)];

/// The per-pool-thread families (label `thread`), filled by the daemon's main thread from
/// [`crate::https::pool::Pool::queue_depths`] and [`crate::https::pool::Pool::thread_stats`]
/// (each pool thread publishes its TLS counters every 100 ms, off its fast path).
pub const POOL_FAMILIES: &[Family] = &[
    gauge(
        "handshake_tls_pool_queue_depth",
        "Batches waiting in the TLS pool thread's inbox (--tls-threads).",
    ),
    counter(
        "handshake_tls_pool_sessions_total",
        "TLS sessions started on the pool thread.",
    ),
    counter(
        "handshake_tls_pool_handshakes_total",
        "TLS handshakes completed on the pool thread.",
    ),
    counter(
        "handshake_tls_pool_resumed_total",
        "Of the pool thread's handshakes, resumed ones.",
    ),
    counter(
        "handshake_tls_pool_errors_total",
        "Pool-thread TLS sessions ended by bad input (an alert was sent).",
    ),
    counter(
        "handshake_tls_pool_timeouts_total",
        "Pool-thread TLS handshakes that did not finish in time.",
    ),
    counter(
        "handshake_tls_pool_refused_total",
        "Connections the pool thread refused (max_sessions).",
    ),
    counter(
        "handshake_tls_pool_http_responses_total",
        "HTTP responses sent over TLS by the pool thread (all statuses).",
    ),
];

/// Slots of a pool thread's publication.
pub const POOL_SLOTS: usize = 8;

/// A pool thread's values, in [`POOL_FAMILIES`] order.
pub fn pool_values(depth: usize, t: &crate::https::HttpsStats) -> Values<POOL_SLOTS> {
    Values([
        depth as u64,
        t.sessions,
        t.handshakes,
        t.resumed,
        t.tls_errors,
        t.handshake_timeouts,
        t.refused,
        t.http.status.iter().sum(),
    ])
}

/// One publication: the values of a family list, in slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Values<const N: usize>(pub [u64; N]);

impl<const N: usize> Default for Values<N> {
    fn default() -> Self {
        Values([0; N])
    }
}

/// A queue's values.
pub type QueueValues = Values<QUEUE_SLOTS>;

impl<const N: usize> Values<N> {
    /// The value of family `name` (with label value `label`, or `""` for an unlabelled family),
    /// looked up in `families`; `None` if there is no such sample.
    pub fn get(&self, families: &[Family], name: &str, label: &str) -> Option<u64> {
        let mut at = 0;
        for f in families {
            if f.name == name {
                if f.values.is_empty() {
                    return label.is_empty().then(|| self.0[at]);
                }
                return f
                    .values
                    .iter()
                    .position(|v| *v == label)
                    .map(|i| self.0[at + i]);
            }
            at += f.width();
        }
        None
    }
}

/// Fills a [`Values`] family by family, checking (in debug builds) that the families come in
/// the declared order.
struct Writer<'a, const N: usize> {
    families: &'static [Family],
    out: &'a mut Values<N>,
    fam: usize,
    at: usize,
}

impl<'a, const N: usize> Writer<'a, N> {
    fn new(families: &'static [Family], out: &'a mut Values<N>) -> Self {
        Writer {
            families,
            out,
            fam: 0,
            at: 0,
        }
    }
    fn put(&mut self, name: &'static str, v: &[u64]) {
        let f = &self.families[self.fam];
        debug_assert_eq!(f.name, name, "metric families out of order");
        let w = f.width();
        assert_eq!(v.len(), w, "{name}: {} values for {w} slots", v.len());
        self.out.0[self.at..self.at + w].copy_from_slice(v);
        self.fam += 1;
        self.at += w;
    }
    fn one(&mut self, name: &'static str, v: u64) {
        self.put(name, &[v]);
    }
    fn finish(self) {
        debug_assert_eq!(self.fam, self.families.len(), "metric families missing");
    }
}

/// Counters kept by the worker's shell rather than the stack: the AF_XDP port and the capture
/// tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShellCounters {
    /// Refills that found the fill ring empty.
    pub fill_ring_empty: u64,
    /// TX ring full events.
    pub tx_ring_full: u64,
    /// In-place replies dropped on a full TX ring.
    pub tx_ring_full_drops: u64,
    /// RX descriptors rejected.
    pub invalid_rx_descs: u64,
    /// Completion descriptors rejected.
    pub invalid_comp_descs: u64,
    /// RX wakeup syscalls.
    pub rx_wakeups: u64,
    /// TX wakeup syscalls.
    pub tx_wakeups: u64,
    /// poll(2) calls.
    pub waits: u64,
    /// The kernel's XDP_STATISTICS.
    pub kernel: crate::xsk::KernelStats,
    /// Frames captured.
    pub capture_frames: u64,
    /// Frames not captured (ring full).
    pub capture_dropped: u64,
}

impl ShellCounters {
    /// Takes the port's own counters (and the kernel's, when read).
    pub fn set_port(&mut self, p: &crate::xsk::PortStats, kernel: Option<crate::xsk::KernelStats>) {
        self.fill_ring_empty = p.fill_ring_empty;
        self.tx_ring_full = p.tx_ring_full;
        self.tx_ring_full_drops = p.tx_ring_full_drops;
        self.invalid_rx_descs = p.invalid_rx_descs;
        self.invalid_comp_descs = p.invalid_comp_descs;
        self.rx_wakeups = p.rx_wakeups;
        self.tx_wakeups = p.tx_wakeups;
        self.waits = p.waits;
        if let Some(k) = kernel {
            self.kernel = k;
        }
    }
}

/// Copies every counter of `stack` and `shell` into `out` (no allocation; called at most every
/// `publish_ms`, never per packet).
pub fn collect(stack: &Stack, shell: &ShellCounters, out: &mut QueueValues) {
    let s = stack.stats();
    let t = stack.tcp().stats();
    let a = stack.apps().stats();
    let n = stack.neighbors();
    let mut w = Writer::new(QUEUE_FAMILIES, out);
    w.one("handshake_rx_packets_total", s.rx_packets);
    w.one("handshake_rx_bytes_total", s.rx_bytes);
    w.one("handshake_tx_packets_total", s.tx_packets);
    w.one("handshake_tx_bytes_total", s.tx_bytes);
    w.put("handshake_drops_total", &s.drops);
    w.one("handshake_arp_replies_total", s.arp_replies);
    w.one("handshake_arp_requests_total", s.arp_requests);
    w.one("handshake_arp_misses_total", n.stats().misses);
    w.one("handshake_arp_failed_total", n.stats().failed);
    w.one("handshake_arp_cache_entries", n.len() as u64);
    w.one("handshake_icmp_echo_replies_total", s.icmp_echo_replies);
    let r = stack.reassembly();
    w.one("handshake_ipv4_fragments_total", r.stats().fragments);
    w.one("handshake_ipv4_reassembled_total", r.stats().reassembled);
    w.one(
        "handshake_ipv4_reassembly_datagrams",
        r.in_progress() as u64,
    );
    w.one("handshake_ipv4_reassembly_bytes", r.held_bytes() as u64);
    w.one("handshake_icmp_errors_total", s.icmp_errors);
    w.one("handshake_tcp_segments_received_total", t.segments_in);
    w.one("handshake_tcp_segments_sent_total", t.segments_out);
    w.put("handshake_tcp_flows", &t.flows_by_state[2..]);
    w.put(
        "handshake_tcp_opens_total",
        &[t.passive_opens, t.active_opens],
    );
    w.one("handshake_tcp_syn_cookies_sent_total", t.syn_cookies_sent);
    w.one(
        "handshake_tcp_syn_cookies_validated_total",
        t.syn_cookies_validated,
    );
    w.one(
        "handshake_tcp_syn_cookies_failed_total",
        t.syn_cookies_failed,
    );
    w.one("handshake_tcp_challenge_acks_total", t.challenge_acks);
    w.one("handshake_tcp_retransmits_total", t.retransmits);
    w.one("handshake_tcp_rto_total", t.rto_fired);
    w.one("handshake_tcp_fast_retransmits_total", t.fast_retransmits);
    w.one("handshake_tcp_tail_loss_probes_total", t.tail_loss_probes);
    w.one("handshake_tcp_lost_retransmits_total", t.lost_retransmits);
    w.one("handshake_tcp_recovery_probes_total", t.recovery_probes);
    w.one("handshake_tcp_reorder_timeouts_total", t.reorder_timeouts);
    w.one("handshake_tcp_rsts_sent_total", t.rsts_sent);
    w.one("handshake_tcp_rsts_received_total", t.rsts_received);
    w.one("handshake_tcp_timeouts_total", t.timeouts);
    w.one("handshake_tcp_persist_timeouts_total", t.persist_timeouts);
    w.put(
        "handshake_tcp_drops_total",
        &[
            t.drops_malformed,
            t.drops_no_listener,
            t.drops_syn_backlog,
            t.drops_accept_backlog,
            t.drops_table_full,
            t.drops_out_of_window,
            t.drops_ooo,
            t.drops_control_full,
            t.paws_drops,
        ],
    );
    w.one("handshake_tls_sessions_total", a.https.sessions);
    w.one("handshake_tls_handshakes_total", a.https.handshakes);
    w.one("handshake_tls_resumed_total", a.https.resumed);
    w.one("handshake_tls_errors_total", a.https.tls_errors);
    w.one("handshake_tls_timeouts_total", a.https.handshake_timeouts);
    w.one("handshake_tls_refused_total", a.https.refused);
    w.one("handshake_tls_pool_flows", a.pool_flows);
    w.one("handshake_tls_pool_aborts_total", a.pool_aborts);
    w.one(
        "handshake_http_connections_total",
        a.http.conns + a.https.http.conns,
    );
    let mut status = a.http.status;
    for (x, y) in status.iter_mut().zip(a.https.http.status) {
        *x += y;
    }
    w.put("handshake_http_responses_total", &status);
    w.one("handshake_echo_connections_total", a.echo_conns);
    w.one("handshake_echo_bytes_total", a.echo_bytes);
    w.one("handshake_xsk_fill_ring_empty_total", shell.fill_ring_empty);
    w.one("handshake_xsk_tx_ring_full_total", shell.tx_ring_full);
    w.one(
        "handshake_xsk_tx_ring_full_drops_total",
        shell.tx_ring_full_drops,
    );
    w.put(
        "handshake_xsk_invalid_descs_total",
        &[shell.invalid_rx_descs, shell.invalid_comp_descs],
    );
    w.put(
        "handshake_xsk_wakeups_total",
        &[shell.rx_wakeups, shell.tx_wakeups],
    );
    w.one("handshake_xsk_polls_total", shell.waits);
    let k = &shell.kernel;
    w.one("handshake_xsk_kernel_rx_dropped_total", k.rx_dropped);
    w.one("handshake_xsk_kernel_rx_ring_full_total", k.rx_ring_full);
    w.one(
        "handshake_xsk_kernel_fill_ring_empty_total",
        k.rx_fill_ring_empty_descs,
    );
    w.one(
        "handshake_xsk_kernel_tx_ring_empty_total",
        k.tx_ring_empty_descs,
    );
    w.put(
        "handshake_xsk_kernel_invalid_descs_total",
        &[k.rx_invalid_descs, k.tx_invalid_descs],
    );
    w.one("handshake_capture_frames_total", shell.capture_frames);
    w.one("handshake_capture_dropped_total", shell.capture_dropped);
    w.finish();
}

/// Fills the global values.
pub fn collect_global(
    xdp: &[u64; 4],
    queues: u32,
    uptime_secs: u64,
    out: &mut Values<GLOBAL_SLOTS>,
) {
    let mut w = Writer::new(GLOBAL_FAMILIES, out);
    w.put("handshake_xdp_packets_total", xdp);
    w.one("handshake_queues", u64::from(queues));
    w.one("handshake_uptime_seconds", uptime_secs);
    w.finish();
}

/// Where one writer publishes `N` values for any number of readers: relaxed atomics, no lock.
#[derive(Debug)]
pub struct Slot<const N: usize> {
    values: [AtomicU64; N],
}

impl<const N: usize> Default for Slot<N> {
    fn default() -> Self {
        Slot {
            values: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl<const N: usize> Slot<N> {
    /// Publishes `v` (relaxed stores).
    pub fn publish(&self, v: &Values<N>) {
        for (slot, x) in self.values.iter().zip(v.0.iter()) {
            slot.store(*x, Ordering::Relaxed);
        }
    }
    /// Reads the latest publication.
    pub fn read(&self) -> Values<N> {
        Values(core::array::from_fn(|i| {
            self.values[i].load(Ordering::Relaxed)
        }))
    }
}

/// A queue's slot.
pub type QueueSlot = Slot<QUEUE_SLOTS>;

/// A group of families rendered together: one row of values per instance of `label` (e.g. one
/// per queue), or a single unlabelled row when `label` is empty.
#[derive(Debug)]
pub struct Section<'a> {
    /// The families.
    pub families: &'a [Family],
    /// The instance label (`"queue"`), or `""`.
    pub label: &'a str,
    /// (instance label value, values in slot order).
    pub rows: Vec<(String, &'a [u64])>,
}

/// Renders `sections` in the Prometheus text exposition format (version 0.0.4).
pub fn render(out: &mut String, sections: &[Section<'_>]) {
    for sec in sections {
        let mut at = 0;
        for f in sec.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for (inst, vals) in &sec.rows {
                for i in 0..f.width() {
                    out.push_str(f.name);
                    let mut labels = Vec::with_capacity(2);
                    if !sec.label.is_empty() {
                        labels.push((sec.label, inst.as_str()));
                    }
                    if !f.values.is_empty() {
                        labels.push((f.label, f.values[i]));
                    }
                    if !labels.is_empty() {
                        out.push('{');
                        for (j, (k, v)) in labels.iter().enumerate() {
                            if j > 0 {
                                out.push(',');
                            }
                            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                        }
                        out.push('}');
                    }
                    let _ = writeln!(out, " {}", vals.get(at + i).copied().unwrap_or(0));
                }
            }
            at += f.width();
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// What the daemon exposes: the per-queue slots, the XDP per-queue counters and the globals.
#[derive(Debug)]
pub struct Registry {
    /// One slot per queue, written by its worker.
    pub queues: Vec<std::sync::Arc<QueueSlot>>,
    /// XDP redirects per queue, written by the main thread.
    pub xdp_queues: Vec<std::sync::Arc<Slot<1>>>,
    /// Written by the main thread.
    pub global: std::sync::Arc<Slot<GLOBAL_SLOTS>>,
    /// One per TLS pool thread, written by the main thread.
    pub pool: Vec<std::sync::Arc<Slot<POOL_SLOTS>>>,
}

impl Registry {
    /// Slots for `queues` queues and `pool_threads` TLS pool threads.
    pub fn new(queues: usize, pool_threads: usize) -> Self {
        Registry {
            queues: (0..queues).map(|_| Default::default()).collect(),
            xdp_queues: (0..queues).map(|_| Default::default()).collect(),
            global: Default::default(),
            pool: (0..pool_threads).map(|_| Default::default()).collect(),
        }
    }

    /// Renders everything.
    pub fn render(&self, out: &mut String) {
        let q: Vec<QueueValues> = self.queues.iter().map(|s| s.read()).collect();
        let x: Vec<Values<1>> = self.xdp_queues.iter().map(|s| s.read()).collect();
        let g = self.global.read();
        let p: Vec<Values<POOL_SLOTS>> = self.pool.iter().map(|s| s.read()).collect();
        let sections = [
            Section {
                families: GLOBAL_FAMILIES,
                label: "",
                rows: vec![(String::new(), &g.0[..])],
            },
            Section {
                families: QUEUE_FAMILIES,
                label: "queue",
                rows: q
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), &v.0[..]))
                    .collect(),
            },
            Section {
                families: XDP_QUEUE_FAMILIES,
                label: "queue",
                rows: x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), &v.0[..]))
                    .collect(),
            },
            Section {
                families: if p.is_empty() { &[] } else { POOL_FAMILIES },
                label: "thread",
                rows: p
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), &v.0[..]))
                    .collect(),
            },
        ];
        render(out, &sections);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::STATUSES;
    use crate::tcp::State;

    #[test]
    fn label_tables_match_the_engine() {
        for (l, (code, _)) in HTTP_STATUSES.iter().zip(STATUSES) {
            assert_eq!(*l, code.to_string());
        }
        assert_eq!(HTTP_STATUSES.len(), STATUSES.len());
        assert_eq!(TCP_STATES.len(), State::ALL.len() - 2);
        for (l, st) in TCP_STATES.iter().zip(&State::ALL[2..]) {
            let snake: String = format!("{st:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let mut v = Vec::new();
                    if (c.is_ascii_uppercase() && i > 0) || (c.is_ascii_digit()) {
                        v.push('_');
                    }
                    v.push(c.to_ascii_lowercase());
                    v
                })
                .collect();
            assert_eq!(*l, snake);
        }
        assert_eq!(DropReason::LABELS.len(), DropReason::COUNT);
        for r in DropReason::ALL {
            assert_eq!(DropReason::LABELS[*r as usize], r.label());
        }
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let all: Vec<&Family> = QUEUE_FAMILIES
            .iter()
            .chain(GLOBAL_FAMILIES)
            .chain(XDP_QUEUE_FAMILIES)
            .chain(POOL_FAMILIES)
            .collect();
        let mut names: Vec<&str> = all.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate metric names");
        for f in all {
            assert!(f.name.starts_with("handshake_"), "{}", f.name);
            assert!(
                f.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                f.name
            );
            // Prometheus conventions: counters end in _total, gauges do not.
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty() && !f.help.contains('\n'));
            assert_eq!(f.label.is_empty(), f.values.is_empty(), "{}", f.name);
            assert_ne!(f.label, "queue", "{}", f.name);
        }
    }

    #[test]
    fn render_exact_text() {
        const FAMS: &[Family] = &[
            counter("handshake_a_total", "A things."),
            gauge_by("handshake_b", "B by colour.", "colour", &["red", "blue"]),
        ];
        let q0 = [5u64, 1, 2];
        let q1 = [7u64, 0, 9];
        let mut s = String::new();
        render(
            &mut s,
            &[Section {
                families: FAMS,
                label: "queue",
                rows: vec![("0".into(), &q0[..]), ("1".into(), &q1[..])],
            }],
        );
        assert_eq!(
            s,
            "# HELP handshake_a_total A things.\n\
             # TYPE handshake_a_total counter\n\
             handshake_a_total{queue=\"0\"} 5\n\
             handshake_a_total{queue=\"1\"} 7\n\
             # HELP handshake_b B by colour.\n\
             # TYPE handshake_b gauge\n\
             handshake_b{queue=\"0\",colour=\"red\"} 1\n\
             handshake_b{queue=\"0\",colour=\"blue\"} 2\n\
             handshake_b{queue=\"1\",colour=\"red\"} 0\n\
             handshake_b{queue=\"1\",colour=\"blue\"} 9\n"
        );
        let mut s = String::new();
        render(
            &mut s,
            &[Section {
                families: &FAMS[..1],
                label: "",
                rows: vec![(String::new(), &q1[..1])],
            }],
        );
        assert!(s.ends_with("\nhandshake_a_total 7\n"), "{s}");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// `collect` fills every family in order (debug assertions) with the stack's own figures.
    #[test]
    fn collect_reads_the_stack() {
        use crate::device::mem::MemDevice;
        use crate::ipv4::Routes;
        use crate::stack::{run_batch, StackConfig};
        use crate::wire::Mac;
        let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, 1]), routes);
        cfg.gratuitous_arp = false;
        let mut stack = Stack::new(cfg);
        let mut dev = MemDevice::new(2048);
        for seq in 0..3u16 {
            let mut ping = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
                .icmpv4_echo_request(7, seq)
                .write(&mut ping, b"hello")
                .unwrap();
            dev.inject(&ping);
        }
        dev.inject(&[0u8; 10]);
        run_batch(&mut stack, &mut dev, crate::Instant::from_secs(1));
        let shell = ShellCounters {
            tx_wakeups: 5,
            capture_dropped: 9,
            ..Default::default()
        };
        let mut v = QueueValues::default();
        collect(&stack, &shell, &mut v);
        let g = |n: &str, l: &str| v.get(QUEUE_FAMILIES, n, l).unwrap();
        assert_eq!(g("handshake_rx_packets_total", ""), 4);
        assert_eq!(g("handshake_icmp_echo_replies_total", ""), 3);
        assert_eq!(g("handshake_tx_packets_total", ""), 3);
        assert_eq!(g("handshake_drops_total", "eth_truncated"), 1);
        assert_eq!(g("handshake_xsk_wakeups_total", "tx"), 5);
        assert_eq!(g("handshake_xsk_wakeups_total", "rx"), 0);
        assert_eq!(g("handshake_capture_dropped_total", ""), 9);
        assert_eq!(
            v.0.iter().sum::<u64>(),
            4 + 3 + 3 + 1 + 5 + 9 + v.0[1] + v.0[3]
        );
    }

    #[test]
    fn slot_roundtrip_and_lookup() {
        let mut v = QueueValues::default();
        for (i, x) in v.0.iter_mut().enumerate() {
            *x = i as u64 * 3 + 1;
        }
        let slot = QueueSlot::default();
        slot.publish(&v);
        let r = slot.read();
        assert_eq!(r, v);
        assert_eq!(
            r.get(QUEUE_FAMILIES, "handshake_rx_packets_total", ""),
            Some(1)
        );
        assert_eq!(
            r.get(QUEUE_FAMILIES, "handshake_rx_bytes_total", ""),
            Some(4)
        );
        // Drops start at slot 4; ipv4_bad_checksum is reason 14.
        let i = DropReason::Ipv4BadChecksum as usize;
        assert_eq!(
            r.get(QUEUE_FAMILIES, "handshake_drops_total", "ipv4_bad_checksum"),
            Some((4 + i) as u64 * 3 + 1)
        );
        assert_eq!(r.get(QUEUE_FAMILIES, "handshake_drops_total", "nope"), None);
        assert_eq!(
            r.get(QUEUE_FAMILIES, "handshake_rx_packets_total", "x"),
            None
        );
        assert_eq!(r.get(QUEUE_FAMILIES, "handshake_nope", ""), None);
    }
}
