//! The connection trace: the story of chosen connections, event by event.
//!
//! For the connections a [`TraceFilter`] matches (at most `limit` of them), the [`Tracer`] records
//! every event of their life with its time: the ARP exchange for the next hop, each TCP segment
//! both ways (flags, sequence and acknowledgment numbers, absolute and relative to the ISNs,
//! window, options, payload length), our TCP state transitions, the TLS handshake messages seen
//! on the wire (ClientHello with version, cipher suites, SNI and ALPN; ServerHello with the
//! chosen suite; in TLS 1.2 the plaintext Certificate … ServerHelloDone, ClientKeyExchange;
//! ChangeCipherSpec; encrypted handshake records; application data; alerts), and the close.
//!
//! It is sans-IO like the rest of the stack: while a tracer is installed,
//! [`crate::stack::Stack`] hands it the ARP packets and TCP segments it receives and sends, at
//! the points where it has already parsed them ([`Tracer::on_arp`], [`Tracer::on_tcp`]); the TCP
//! engine hands it the state changes of the connections the filter matches; the caller drains
//! [`TraceEvent`]s with [`Tracer::poll_event`]. A segment of a connection that does not match
//! costs two port reads and a compare; with no tracer installed the stack pays a branch per
//! segment, and a build without the `trace` feature not even that (figures in the README).
//!
//! TLS 1.3 encrypts everything after ServerHello, so encrypted records are named by their place
//! in the handshake: the server's records before the client's first encrypted record carry
//! EncryptedExtensions, Certificate, CertificateVerify and Finished; the client's first carries
//! its Finished; what follows is application data (and, from the server, session tickets, which
//! the wire does not tell apart).
//!
//! Renderings ([`render`]): a Mermaid `sequenceDiagram`, a plain-text timeline, JSON lines.

pub mod render;
mod tls;

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ipv4::Routes;
use crate::tcp::State;
use crate::time::Instant;
use crate::wire::arp::{ArpRepr, OP_REQUEST};
use crate::wire::ethernet::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::wire::ipv4::PROTO_TCP;
use crate::wire::tcp::{flags, TcpRepr};

pub use tls::{ClientHello, ServerHello};

/// Which connections to trace: every term must hold (`and`).
///
/// Grammar: `all`, or terms joined by `and`: `port N` (either end's port), `host A.B.C.D`
/// (either end's address). Examples: `port 443`, `host 198.18.0.2 and port 443`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Either end's port.
    pub port: Option<u16>,
    /// Either end's address.
    pub host: Option<Ipv4Addr>,
}

/// A trace filter that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad trace filter {filter:?}: {why}; write `all`, `port N`, `host A.B.C.D`, or terms joined by `and` (e.g. `host 198.18.0.2 and port 443`)")]
pub struct FilterError {
    filter: String,
    why: String,
}

impl std::str::FromStr for TraceFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| FilterError {
            filter: s.to_string(),
            why,
        };
        let words: Vec<&str> = s.split_whitespace().collect();
        if words == ["all"] {
            return Ok(TraceFilter::default());
        }
        if words.is_empty() {
            return Err(err("it is empty".into()));
        }
        let mut f = TraceFilter::default();
        for (i, term) in words.split(|w| *w == "and").enumerate() {
            match term {
                ["port", p] => {
                    let p: u16 = p
                        .parse()
                        .map_err(|_| err(format!("`{p}` is not a port (1-65535)")))?;
                    if p == 0 || f.port.is_some() {
                        return Err(err(format!("port {p} is zero or given twice")));
                    }
                    f.port = Some(p);
                }
                ["host", a] => {
                    let a: Ipv4Addr = a
                        .parse()
                        .map_err(|_| err(format!("`{a}` is not an IPv4 address")))?;
                    if f.host.is_some() {
                        return Err(err("host given twice".into()));
                    }
                    f.host = Some(a);
                }
                other => {
                    return Err(err(format!(
                        "term {} (`{}`) is not `port N` or `host A`",
                        i + 1,
                        other.join(" ")
                    )))
                }
            }
        }
        Ok(f)
    }
}

impl std::fmt::Display for TraceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.host, self.port) {
            (None, None) => write!(f, "all"),
            (Some(h), None) => write!(f, "host {h}"),
            (None, Some(p)) => write!(f, "port {p}"),
            (Some(h), Some(p)) => write!(f, "host {h} and port {p}"),
        }
    }
}

impl TraceFilter {
    /// Whether a connection between `a:ap` and `b:bp` matches.
    #[inline]
    pub fn matches(&self, a: u32, ap: u16, b: u32, bp: u16) -> bool {
        self.port.is_none_or(|p| p == ap || p == bp)
            && self
                .host
                .is_none_or(|h| u32::from(h) == a || u32::from(h) == b)
    }
}

/// A state change of a traced-candidate connection, from the TCP engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Our address.
    pub laddr: u32,
    /// Our port.
    pub lport: u16,
    /// The peer's address.
    pub raddr: u32,
    /// The peer's port.
    pub rport: u16,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// When.
    pub at: Instant,
}

/// Direction of a frame, from the engine's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Received by the engine.
    In,
    /// Sent by the engine.
    Out,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A traced connection's first segment: who is who.
    Flow {
        /// Our end, `a.b.c.d:port`.
        local: String,
        /// The peer's end.
        remote: String,
        /// The next hop towards the peer (the peer itself when on-link, else the gateway).
        next_hop: String,
        /// Whether we opened it (our SYN came first).
        active: bool,
    },
    /// ARP request: who has `target`? tell `sender`.
    ArpWhoHas {
        /// Direction.
        dir: Dir,
        /// Address asked for.
        target: String,
        /// Asker.
        sender: String,
    },
    /// ARP reply: `ip` is at `mac`.
    ArpIsAt {
        /// Direction.
        dir: Dir,
        /// Address.
        ip: String,
        /// Its MAC.
        mac: String,
    },
    /// A TCP segment.
    Segment {
        /// Direction.
        dir: Dir,
        /// Flags, e.g. `SYN,ACK`.
        flags: String,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number (0 without ACK).
        ack: u32,
        /// Sequence number relative to the sender's ISN.
        rel_seq: u32,
        /// Acknowledgment relative to the receiver's ISN (0 without ACK or before it is known).
        rel_ack: u32,
        /// Window field as sent (unscaled).
        win: u16,
        /// Payload bytes.
        len: usize,
        /// Options, e.g. `mss=1460,sack_ok,ts,ws=7`.
        opts: String,
    },
    /// One of our TCP state transitions.
    State {
        /// Old state (RFC 9293 name).
        from: String,
        /// New state.
        to: String,
    },
    /// A TLS ClientHello.
    ClientHello {
        /// Direction.
        dir: Dir,
        /// Highest version offered (from supported_versions when present).
        version: String,
        /// Cipher suites offered, by name where known.
        suites: Vec<String>,
        /// Server name indication.
        sni: Option<String>,
        /// ALPN protocols offered.
        alpn: Vec<String>,
    },
    /// A TLS ServerHello.
    ServerHello {
        /// Direction.
        dir: Dir,
        /// Version chosen.
        version: String,
        /// Cipher suite chosen.
        suite: String,
        /// A HelloRetryRequest rather than a ServerHello.
        retry: bool,
    },
    /// A DNS message of the name resolution that gave a traced connection its peer's address.
    Dns {
        /// Direction.
        dir: Dir,
        /// The DNS server, `a.b.c.d:53`.
        server: String,
        /// What it says, e.g. `query A www.example.test` or `answer www.example.test A 198.19.0.10 ttl 300`.
        what: String,
    },
    /// Another TLS record, named by content or by its place in the handshake.
    Tls {
        /// Direction.
        dir: Dir,
        /// What it carries, e.g. `Certificate`, `ChangeCipherSpec`, `Finished (encrypted)`,
        /// `Application Data`.
        what: String,
        /// Record length.
        len: usize,
    },
}

/// One event of a traced connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Microseconds on the engine's clock.
    pub t_us: u64,
    /// Which traced connection (1, 2, … in the order they were first seen).
    pub flow: u32,
    /// What.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Counters of the tracer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Connections traced.
    pub flows: u64,
    /// Events recorded.
    pub events: u64,
    /// Events dropped because the queue was full (the caller did not drain it).
    pub dropped: u64,
    /// Matching connections not traced because `limit` were already traced.
    pub over_limit: u64,
}

/// Per traced connection.
#[derive(Debug)]
struct Flow {
    id: u32,
    next_hop: u32,
    /// ISN of our side and of the peer (once seen).
    our_isn: Option<u32>,
    peer_isn: Option<u32>,
    tls: [tls::Stream; 2],
    /// Our side reached CLOSED: later frames are not part of this connection.
    done: bool,
}

/// ARP events remembered for connections that start after them (ARP precedes the SYN).
const ARP_RECENT: usize = 16;
/// ARP seen this long before a connection's first segment still belongs to its story.
const ARP_WINDOW_US: u64 = 60_000_000;
/// State changes held for connections whose first segment has not been seen.
const PENDING: usize = 16;
/// Default bound of the event queue.
pub const DEFAULT_QUEUE: usize = 4096;

/// Records the story of the connections a filter matches. See the [module docs](self).
#[derive(Debug)]
pub struct Tracer {
    filter: TraceFilter,
    limit: usize,
    queue_cap: usize,
    flows: Vec<Flow>,
    /// Open traced connections by 4-tuple (our address, our port, theirs), index into `flows`.
    open: HashMap<(u32, u16, u32, u16), usize>,
    /// State changes of matching connections not yet seen on the wire (an active open changes
    /// state before its SYN leaves), at most [`PENDING`].
    pending: Vec<StateChange>,
    events: VecDeque<TraceEvent>,
    arp_recent: VecDeque<(Instant, u32, u32, EventKind)>,
    /// Recent DNS messages: when, the name, the addresses answered, the event.
    dns_recent: VecDeque<(Instant, String, Vec<u32>, EventKind)>,
    stats: TraceStats,
}

impl Tracer {
    /// Traces at most `limit` connections matching `filter`, holding at most `queue` undrained
    /// events (more are dropped and counted).
    pub fn new(filter: TraceFilter, limit: usize, queue: usize) -> Self {
        Tracer {
            filter,
            limit,
            queue_cap: queue.max(1),
            flows: Vec::with_capacity(limit.min(1024)),
            open: HashMap::new(),
            pending: Vec::new(),
            events: VecDeque::with_capacity(queue.clamp(1, 1 << 16)),
            arp_recent: VecDeque::with_capacity(ARP_RECENT),
            dns_recent: VecDeque::new(),
            stats: TraceStats::default(),
        }
    }

    /// The filter.
    pub fn filter(&self) -> TraceFilter {
        self.filter
    }

    /// Counters.
    pub fn stats(&self) -> TraceStats {
        self.stats
    }

    /// The next recorded event.
    pub fn poll_event(&mut self) -> Option<TraceEvent> {
        self.events.pop_front()
    }

    fn push(&mut self, at: Instant, flow: u32, kind: EventKind) {
        if self.events.len() >= self.queue_cap {
            self.stats.dropped += 1;
            return;
        }
        self.stats.events += 1;
        self.events.push_back(TraceEvent {
            t_us: at.as_micros(),
            flow,
            kind,
        });
    }

    /// A frame received (`Dir::In`) or sent (`Dir::Out`) by the engine, parsed here: for
    /// frames the stack has not parsed already (packets released after ARP resolved).
    pub fn on_frame(&mut self, now: Instant, dir: Dir, frame: &[u8], routes: &Routes) {
        if frame.len() < ethernet::HEADER_LEN {
            return;
        }
        let p = &frame[ethernet::HEADER_LEN..];
        match ethernet::ethertype(frame) {
            ETHERTYPE_ARP => {
                if let Ok(a) = ArpRepr::parse(p) {
                    self.on_arp(now, dir, &a);
                }
            }
            ETHERTYPE_IPV4 => {
                // Read only what the trace needs, defensively.
                if p.len() < 20 || p[0] >> 4 != 4 || p[9] != PROTO_TCP {
                    return;
                }
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
                if ihl < 20 || total < ihl {
                    return;
                }
                let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                self.on_tcp(now, dir, src, dst, &p[ihl..total], routes);
            }
            _ => {}
        }
    }

    /// An ARP packet received or sent.
    pub fn on_arp(&mut self, now: Instant, dir: Dir, a: &ArpRepr) {
        let kind = if a.op == OP_REQUEST {
            EventKind::ArpWhoHas {
                dir,
                target: a.target_ip.to_string(),
                sender: a.sender_ip.to_string(),
            }
        } else {
            EventKind::ArpIsAt {
                dir,
                ip: a.sender_ip.to_string(),
                mac: a.sender_mac.to_string(),
            }
        };
        let (s, t) = (u32::from(a.sender_ip), u32::from(a.target_ip));
        // Live: an ARP exchange with a traced connection's next hop.
        let live: Vec<u32> = self
            .flows
            .iter()
            .filter(|f| !f.done && (f.next_hop == s || f.next_hop == t))
            .map(|f| f.id)
            .collect();
        for id in live {
            self.push(now, id, kind.clone());
        }
        if self.arp_recent.len() == ARP_RECENT {
            self.arp_recent.pop_front();
        }
        self.arp_recent.push_back((now, s, t, kind));
    }

    /// A DNS message received from or sent to `server`. Remembered (the last 16, as ARP exchanges are) and
    /// told as part of the story of the next traced connection to an address it answered.
    pub fn on_dns(&mut self, now: Instant, dir: Dir, server: std::net::SocketAddrV4, msg: &[u8]) {
        let Some(m) = crate::dns::summarize(msg) else {
            return;
        };
        let kind = EventKind::Dns {
            dir,
            server: server.to_string(),
            what: m.text,
        };
        if self.dns_recent.len() == ARP_RECENT {
            self.dns_recent.pop_front();
        }
        let addrs = m.addrs.iter().map(|a| u32::from(*a)).collect();
        self.dns_recent.push_back((now, m.name, addrs, kind));
    }

    /// A TCP segment (header and payload) received from or sent to the network, between `src`
    /// and `dst`. A segment of a connection the filter does not match costs a read of the ports
    /// and a compare.
    #[inline]
    pub fn on_tcp(
        &mut self,
        now: Instant,
        dir: Dir,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        seg: &[u8],
        routes: &Routes,
    ) {
        let [a, b, c, d, ..] = *seg else { return };
        let (sport, dport) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        if self
            .filter
            .matches(u32::from(src), sport, u32::from(dst), dport)
        {
            self.on_matching_tcp(now, dir, src, dst, seg, routes);
        }
    }

    #[inline(never)]
    fn on_matching_tcp(
        &mut self,
        now: Instant,
        dir: Dir,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        seg: &[u8],
        routes: &Routes,
    ) {
        let (src, dst) = (u32::from(src), u32::from(dst));
        let Ok(t) = TcpRepr::parse_bytes(seg) else {
            return;
        };
        let (laddr, lport, raddr, rport) = match dir {
            Dir::In => (dst, t.dst_port, src, t.src_port),
            Dir::Out => (src, t.src_port, dst, t.dst_port),
        };
        let fi = match self.open.get(&(laddr, lport, raddr, rport)) {
            Some(&i) => i,
            None => {
                // Only a SYN opens a traced connection: a stray segment is not a story.
                if t.flags & (flags::SYN | flags::RST) != flags::SYN {
                    return;
                }
                if self.flows.len() >= self.limit {
                    self.stats.over_limit += 1;
                    return;
                }
                self.start_flow(now, dir, laddr, lport, raddr, rport, routes)
            }
        };
        self.on_segment(now, dir, fi, &t);
    }

    #[allow(clippy::too_many_arguments)]
    fn start_flow(
        &mut self,
        now: Instant,
        dir: Dir,
        laddr: u32,
        lport: u16,
        raddr: u32,
        rport: u16,
        routes: &Routes,
    ) -> usize {
        let id = self.flows.len() as u32 + 1;
        let next_hop = routes
            .next_hop(Ipv4Addr::from(raddr))
            .map_or(raddr, u32::from);
        self.stats.flows += 1;
        self.flows.push(Flow {
            id,
            next_hop,
            our_isn: None,
            peer_isn: None,
            tls: Default::default(),
            done: false,
        });
        self.push(
            now,
            id,
            EventKind::Flow {
                local: format!("{}:{lport}", Ipv4Addr::from(laddr)),
                remote: format!("{}:{rport}", Ipv4Addr::from(raddr)),
                next_hop: Ipv4Addr::from(next_hop).to_string(),
                active: dir == Dir::Out,
            },
        );
        let fi = self.flows.len() - 1;
        self.open.insert((laddr, lport, raddr, rport), fi);
        // An active open's SYN-SENT came before its SYN (and before the ARP the SYN waited for).
        let held = std::mem::take(&mut self.pending);
        for c in held {
            if (c.laddr, c.lport, c.raddr, c.rport) == (laddr, lport, raddr, rport) {
                self.on_state(c);
            } else if now.as_micros().saturating_sub(c.at.as_micros()) <= ARP_WINDOW_US {
                self.pending.push(c);
            }
        }
        // The ARP exchange for the next hop (and the peer's for us) came before the SYN: the
        // latest request and the latest reply involving it, not older refreshes.
        let mut latest: [Option<(Instant, EventKind)>; 2] = [None, None];
        for (at, s, t, k) in self.arp_recent.iter().rev() {
            if now.as_micros().saturating_sub(at.as_micros()) > ARP_WINDOW_US
                || (*s != next_hop && *t != next_hop)
            {
                continue;
            }
            let slot = usize::from(matches!(k, EventKind::ArpIsAt { .. }));
            if latest[slot].is_none() {
                latest[slot] = Some((*at, k.clone()));
            }
        }
        // The name resolution that gave the peer's address: the latest answer naming it, and
        // the queries and answers for that name before it. First in `recent`: a query is
        // recorded before the ARP request it waits for, at the same instant.
        let mut recent: Vec<(Instant, EventKind)> = Vec::new();
        let answered = self.dns_recent.iter().rev().find(|(at, _, addrs, _)| {
            now.as_micros().saturating_sub(at.as_micros()) <= ARP_WINDOW_US
                && addrs.contains(&raddr)
        });
        if let Some((until, name, ..)) = answered {
            let (until, name) = (*until, name.clone());
            recent.extend(
                self.dns_recent
                    .iter()
                    .filter(|(at, n, ..)| {
                        *n == name
                            && *at <= until
                            && now.as_micros().saturating_sub(at.as_micros()) <= ARP_WINDOW_US
                    })
                    .map(|(at, _, _, k)| (*at, k.clone())),
            );
        }
        recent.extend(latest.into_iter().flatten());
        recent.sort_by_key(|(at, _)| *at);
        for (at, k) in recent {
            self.push(at, id, k);
        }
        fi
    }

    fn on_segment(&mut self, now: Instant, dir: Dir, fi: usize, t: &TcpRepr<'_>) {
        let f = &mut self.flows[fi];
        let syn = t.flags & flags::SYN != 0;
        let (sender_isn, receiver_isn) = match dir {
            Dir::Out => (&mut f.our_isn, f.peer_isn),
            Dir::In => (&mut f.peer_isn, f.our_isn),
        };
        if syn && sender_isn.is_none() {
            *sender_isn = Some(t.seq);
        }
        let rel_seq = sender_isn.map_or(0, |i| t.seq.wrapping_sub(i));
        let has_ack = t.flags & flags::ACK != 0;
        let rel_ack = match (has_ack, receiver_isn) {
            (true, Some(i)) => t.ack.wrapping_sub(i),
            _ => 0,
        };
        let id = f.id;
        // TLS records in the payload (SYN data is not TLS).
        let mut tls_events = Vec::new();
        if !t.payload.is_empty() && !syn {
            let side = match dir {
                Dir::In => 0,
                Dir::Out => 1,
            };
            let [a, b] = &mut f.tls;
            let (this, other) = if side == 0 { (a, b) } else { (b, a) };
            this.on_bytes(rel_seq, t.payload, other, &mut tls_events);
        }
        let kind = EventKind::Segment {
            dir,
            flags: flag_names(t.flags),
            seq: t.seq,
            ack: if has_ack { t.ack } else { 0 },
            rel_seq,
            rel_ack,
            win: t.window,
            len: t.payload.len(),
            opts: option_names(t),
        };
        self.push(now, id, kind);
        for e in tls_events {
            let kind = e.into_event(dir);
            self.push(now, id, kind);
        }
    }

    /// A state change from the TCP engine (only connections the filter matches are reported).
    pub fn on_state(&mut self, c: StateChange) {
        let key = (c.laddr, c.lport, c.raddr, c.rport);
        let Some(&fi) = self.open.get(&key) else {
            if c.from == State::Closed && self.pending.len() < PENDING {
                self.pending.push(c);
            }
            return;
        };
        let f = &mut self.flows[fi];
        if c.to == State::Closed {
            f.done = true;
            self.open.remove(&key);
        }
        let id = f.id;
        self.push(
            c.at,
            id,
            EventKind::State {
                from: state_name(c.from).into(),
                to: state_name(c.to).into(),
            },
        );
    }
}

/// The RFC 9293 name of a state.
pub fn state_name(s: State) -> &'static str {
    match s {
        State::Closed => "CLOSED",
        State::Listen => "LISTEN",
        State::SynSent => "SYN-SENT",
        State::SynReceived => "SYN-RECEIVED",
        State::Established => "ESTABLISHED",
        State::FinWait1 => "FIN-WAIT-1",
        State::FinWait2 => "FIN-WAIT-2",
        State::CloseWait => "CLOSE-WAIT",
        State::Closing => "CLOSING",
        State::LastAck => "LAST-ACK",
        State::TimeWait => "TIME-WAIT",
    }
}

fn flag_names(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (flags::SYN, "SYN"),
        (flags::FIN, "FIN"),
        (flags::RST, "RST"),
        (flags::PSH, "PSH"),
        (flags::ACK, "ACK"),
        (flags::URG, "URG"),
        (flags::ECE, "ECE"),
        (flags::CWR, "CWR"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(",")
}

fn option_names(t: &TcpRepr<'_>) -> String {
    let o = &t.options;
    let mut v = Vec::new();
    if let Some(m) = o.mss {
        v.push(format!("mss={m}"));
    }
    if o.sack_permitted {
        v.push("sack_ok".into());
    }
    if let Some(ts) = o.timestamps {
        v.push(format!("ts={}/{}", ts.val, ts.ecr));
    }
    if let Some(w) = o.window_scale {
        v.push(format!("ws={w}"));
    }
    for b in o.sack_blocks() {
        v.push(format!("sack={}-{}", b.left, b.right));
    }
    v.join(",")
}

#[cfg(test)]
mod tests;
