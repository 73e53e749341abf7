//! The stack: one per worker (per queue). It ties the layers together behind a sans-IO API:
//!
//! - [`Stack::handle_frame`]: a received frame, lent by the device; answered in place when it can
//!   be (ARP reply, ICMP echo reply: zero copy), else consumed.
//! - [`Stack::poll_transmit`]: fills a free transmit buffer with the next frame to send.
//! - [`Stack::poll_timeout`] / [`Stack::handle_timeout`]: timers (ARP retries, TCP).
//! - [`Stack::poll_neighbor_event`] / [`Stack::handle_neighbor_event`]: keeps the neighbour caches of
//!   all workers consistent.
//!
//! [`run_batch`] drives a stack over any [`Device`].

use crate::app::{AppConfig, Apps};
use crate::arp::{ArpConfig, Learn, Lookup, NeighborCache, NeighborEvent};
use crate::client::{ClientConn, ClientEvent, ClientRequest};
use crate::device::{Device, Verdict, BATCH};
use crate::dns::{DnsError, DnsEvent, QueryId, Resolver, ResolverConfig};
use crate::ipv4::{IcmpConfig, Routes, TokenBucket};
use crate::reassembly::{FragDrop, FragKey, Reassembler, ReassemblyConfig};
use crate::stats::{DropReason, StackStats};
use crate::tcp::{Tcp, TcpConfig};
use crate::time::Instant;
use crate::wire::arp::{ArpError, ArpRepr, OP_REPLY, OP_REQUEST};
use crate::wire::checksum;
use crate::wire::ethernet::{self, Mac, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::wire::icmp::{self, IcmpError};
use crate::wire::ipv4::{self, Ipv4Error, Ipv4View};
use crate::wire::udp;
use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::VecDeque;

/// Offset of the IPv4 header in a frame.
const IP: usize = ethernet::HEADER_LEN;
/// Most bytes of the offending packet an ICMP error quotes (a 60-byte header plus 8).
const QUOTE: usize = 68;
/// Most ICMP errors waiting to be sent.
const ICMP_QUEUE: usize = 32;

/// Settings of a stack.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Our MAC address.
    pub mac: Mac,
    /// Our addresses and gateway.
    pub routes: Routes,
    /// IP MTU of the link (bytes of IPv4 packet, not counting Ethernet).
    pub mtu: usize,
    /// Neighbour cache.
    pub arp: ArpConfig,
    /// ICMP policy.
    pub icmp: IcmpConfig,
    /// Key of the hash tables (random per process).
    pub hash_key: u64,
    /// Size of frame buffers (for parked packets).
    pub frame_size: usize,
    /// Send a gratuitous ARP for each address when the stack starts.
    pub gratuitous_arp: bool,
    /// TCP.
    pub tcp: TcpConfig,
    /// Built-in apps (their ports are the listening ports).
    pub apps: AppConfig,
    /// Secret keying ISNs, SYN cookies and flow hashes (random per process, same on all workers).
    pub secret: [u8; 32],
    /// The DNS stub resolver of the client side (`None`: no name resolution; UDP to us is
    /// answered with ICMP port unreachable).
    pub dns: Option<ResolverConfig>,
    /// Secret of the resolver's query IDs and source ports (default: `secret`). Give a fresh
    /// one per process when `secret` is kept across processes (as the client keeps its TCP
    /// secret), so that query IDs never repeat from one run to the next.
    pub dns_secret: Option<[u8; 32]>,
    /// IPv4 reassembly (its limits; `max_datagrams = 0` drops every fragment).
    pub reassembly: ReassemblyConfig,
}

impl StackConfig {
    /// A configuration with defaults for everything but the MAC and the addressing.
    pub fn new(mac: Mac, routes: Routes) -> Self {
        StackConfig {
            mac,
            routes,
            mtu: 1500,
            arp: ArpConfig::default(),
            icmp: IcmpConfig::default(),
            hash_key: 0x6a09_e667_f3bc_c908,
            frame_size: 4096,
            gratuitous_arp: true,
            tcp: TcpConfig::default(),
            apps: AppConfig::default(),
            secret: [0x5a; 32],
            dns: None,
            dns_secret: None,
            reassembly: ReassemblyConfig::default(),
        }
    }
}

/// An ICMP error waiting to be sent.
#[derive(Clone, Copy)]
struct IcmpErrorOut {
    dst: Ipv4Addr,
    src: Ipv4Addr,
    ty: u8,
    code: u8,
    len: usize,
    quote: [u8; QUOTE],
}

/// What [`Stack::next_other_frame`] did.
enum Other {
    /// A frame of this length is in the buffer.
    Frame(usize),
    /// An item was consumed without a frame (parked for ARP, or dropped): look again.
    Again,
    /// Nothing but TCP may have a frame.
    Nothing,
}

/// A datagram being sent in fragments.
#[derive(Debug)]
struct FragOut {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
    /// Payload bytes sent so far.
    sent: usize,
    /// The payload (a buffer from `Stack::frag_spare`, returned there once sent).
    data: Vec<u8>,
}

/// The per-worker stack.
pub struct Stack {
    mac: Mac,
    routes: Routes,
    mtu: usize,
    neighbors: NeighborCache,
    echo_limit: Option<TokenBucket>,
    error_limit: Option<TokenBucket>,
    icmp_errors: VecDeque<IcmpErrorOut>,
    /// IPv4 reassembly of fragments addressed to us.
    reasm: Reassembler,
    /// Replies too large for one frame (echo replies to reassembled pings), sent in fragments
    /// by `next_frame`, the first one first; at most `reassembly.max_replies`.
    frag_out: VecDeque<FragOut>,
    /// Payload buffers of sent replies, for the next ones (no allocation once warm).
    frag_spare: Vec<Vec<u8>>,
    max_frag_replies: usize,
    /// Gratuitous ARPs still to send (index into our addresses).
    gratuitous: usize,
    ident: u16,
    stats: StackStats,
    tcp: Tcp,
    apps: Apps,
    dns: Option<Resolver>,
    /// Earliest instant at which `maybe_handle_timeout` looks at the timers again.
    next_timer_check: Instant,
    /// The latest time given (for the apps' deadlines).
    now: Instant,
    /// The connection trace, when one is installed.
    #[cfg(feature = "trace")]
    tracer: Option<Box<crate::trace::Tracer>>,
}

impl Stack {
    /// A stack with `cfg`.
    pub fn new(cfg: StackConfig) -> Self {
        let max_frag_replies = cfg.reassembly.max_replies;
        let gratuitous = if cfg.gratuitous_arp {
            cfg.routes.addrs().len()
        } else {
            0
        };
        let mut tcp_cfg = cfg.tcp.clone();
        tcp_cfg.mtu = tcp_cfg.mtu.min(cfg.mtu.min(u16::MAX as usize) as u16);
        let mut tcp = Tcp::new(tcp_cfg, cfg.secret);
        let apps = Apps::new(&cfg.apps, tcp.config().max_flows);
        for port in apps.ports() {
            // Ports come from a validated configuration; a duplicate is harmless.
            let _ = tcp.listen(port);
        }
        Stack {
            tcp,
            apps,
            dns: cfg
                .dns
                .map(|d| Resolver::new(d, cfg.dns_secret.unwrap_or(cfg.secret))),
            next_timer_check: Instant::ZERO,
            now: Instant::ZERO,
            mac: cfg.mac,
            neighbors: NeighborCache::new(cfg.arp, cfg.hash_key, cfg.frame_size),
            echo_limit: (cfg.icmp.echo_rate > 0)
                .then(|| TokenBucket::new(cfg.icmp.echo_rate, cfg.icmp.echo_burst)),
            error_limit: (cfg.icmp.error_rate > 0)
                .then(|| TokenBucket::new(cfg.icmp.error_rate, cfg.icmp.error_burst)),
            icmp_errors: VecDeque::with_capacity(ICMP_QUEUE),
            reasm: Reassembler::new(cfg.reassembly),
            frag_out: VecDeque::new(),
            frag_spare: Vec::new(),
            max_frag_replies,
            gratuitous,
            ident: (cfg.hash_key >> 48) as u16,
            stats: StackStats::default(),
            mtu: cfg.mtu,
            routes: cfg.routes,
            #[cfg(feature = "trace")]
            tracer: None,
        }
    }

    /// Installs (or with `None` removes) a connection trace: from now on the connections its
    /// filter matches are recorded, for [`Stack::poll_trace_event`].
    #[cfg(feature = "trace")]
    pub fn set_tracer(&mut self, tracer: Option<crate::trace::Tracer>) {
        self.tcp
            .set_trace_filter(tracer.as_ref().map(|t| t.filter()));
        self.tracer = tracer.map(Box::new);
    }

    /// The installed trace.
    #[cfg(feature = "trace")]
    pub fn tracer(&self) -> Option<&crate::trace::Tracer> {
        self.tracer.as_deref()
    }

    /// The next event of the connection trace.
    #[cfg(feature = "trace")]
    pub fn poll_trace_event(&mut self) -> Option<crate::trace::TraceEvent> {
        self.tracer.as_mut()?.poll_event()
    }

    /// Hands the TCP engine's state changes to the trace, stamped `now`.
    #[cfg(feature = "trace")]
    fn trace_states(&mut self, now: Instant) {
        if let Some(t) = self.tracer.as_deref_mut() {
            while let Some(mut c) = self.tcp.poll_state_change() {
                c.at = now;
                t.on_state(c);
            }
        }
    }

    /// Records an ARP packet the stack receives or sends.
    #[cfg(feature = "trace")]
    fn trace_arp(&mut self, now: Instant, dir: crate::trace::Dir, arp: &ArpRepr) {
        if let Some(t) = self.tracer.as_deref_mut() {
            t.on_arp(now, dir, arp);
        }
    }

    /// Our MAC address.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Our addressing.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Counters.
    pub fn stats(&self) -> &StackStats {
        &self.stats
    }

    /// Counters with the TCP figures filled in (for publishing; not for the per-packet path).
    pub fn snapshot(&self) -> StackStats {
        use crate::tcp::State;
        let t = self.tcp.stats();
        let mut s = self.stats.clone();
        s.tcp_time_wait = t.flows(State::TimeWait);
        s.tcp_flows = State::ALL
            .iter()
            .filter(|st| !matches!(st, State::Closed | State::Listen | State::TimeWait))
            .map(|st| t.flows(*st))
            .sum();
        s.syn_cookies_sent = t.syn_cookies_sent;
        s.syn_cookies_validated = t.syn_cookies_validated;
        s.challenge_acks = t.challenge_acks;
        s.tcp_retransmits = t.retransmits;
        s.tcp_rsts_sent = t.rsts_sent;
        let a = self.apps.stats();
        s.tls_sessions = a.https.sessions;
        s.tls_handshakes = a.https.handshakes;
        s.tls_resumed = a.https.resumed;
        s.tls_errors = a.https.tls_errors;
        s.tls_timeouts = a.https.handshake_timeouts;
        // Pool refusals and timeouts are counted by the pool threads (`final tls pool:` line).
        s.tls_refused = a.https.refused;
        s.http_responses = a.http.status.iter().chain(&a.https.http.status).sum();
        s
    }

    /// The neighbour cache.
    pub fn neighbors(&self) -> &NeighborCache {
        &self.neighbors
    }

    /// The TCP engine.
    pub fn tcp(&self) -> &Tcp {
        &self.tcp
    }

    /// The TCP engine, to open connections and move data from outside the built-in apps.
    pub fn tcp_mut(&mut self) -> &mut Tcp {
        &mut self.tcp
    }

    /// The built-in apps.
    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Runs the built-in apps (once per batch): TCP events, the session pool's messages,
    /// deadlines. Time is the last instant given to [`Stack::maybe_handle_timeout`].
    pub fn run_apps(&mut self) {
        self.apps.run(&mut self.tcp, self.now);
    }

    /// Sends this stack's HTTPS connections to the session pool through `link`.
    pub fn attach_pool(&mut self, link: crate::https::pool::WorkerLink) {
        self.apps.attach_pool(link);
    }

    /// Handles one received frame: `frame[..len]` is the packet, `frame` the whole buffer (room to
    /// write a reply in place).
    pub fn handle_frame(&mut self, now: Instant, frame: &mut [u8], len: usize) -> Verdict {
        let len = len.min(frame.len());
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += len as u64;
        match self.dispatch(now, frame, len) {
            Ok(v) => {
                if let Verdict::Transmit(n) = v {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += n as u64;
                }
                v
            }
            Err(r) => {
                self.stats.drop(r);
                Verdict::Drop
            }
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        len: usize,
    ) -> Result<Verdict, DropReason> {
        if len < ethernet::HEADER_LEN {
            return Err(DropReason::EthTruncated);
        }
        let dst = ethernet::dst(frame);
        if dst != self.mac && !dst.is_broadcast() {
            return Err(DropReason::EthNotForUs);
        }
        if ethernet::src(frame).is_multicast() {
            return Err(DropReason::EthBadSource);
        }
        match ethernet::ethertype(frame) {
            ETHERTYPE_ARP => self.handle_arp(now, frame, len),
            ETHERTYPE_IPV4 => self.handle_ipv4(now, frame, len),
            _ => Err(DropReason::EthUnknownType),
        }
    }

    fn handle_arp(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        len: usize,
    ) -> Result<Verdict, DropReason> {
        let arp = ArpRepr::parse(&frame[IP..len]).map_err(|e| match e {
            ArpError::Truncated => DropReason::ArpTruncated,
            ArpError::BadHardware => DropReason::ArpBadHardware,
            ArpError::BadProtocol => DropReason::ArpBadProtocol,
            ArpError::BadOperation => DropReason::ArpBadOperation,
        })?;
        if !arp.sender_mac.is_unicast() || self.routes.is_bad_source(arp.sender_ip) {
            return Err(DropReason::ArpBadSender);
        }
        #[cfg(feature = "trace")]
        self.trace_arp(now, crate::trace::Dir::In, &arp);
        let to_us = self.routes.is_ours(arp.target_ip);
        let how = match arp.op {
            OP_REPLY => Learn::Reply,
            OP_REQUEST if to_us => Learn::RequestToUs,
            _ => Learn::Unsolicited,
        };
        let on_link = self
            .routes
            .addrs()
            .iter()
            .any(|a| a.contains(arp.sender_ip));
        let learned = on_link
            && self
                .neighbors
                .learn(now, arp.sender_ip, arp.sender_mac, how);
        if arp.op == OP_REQUEST && to_us {
            // Answer in place: the request becomes the reply.
            let reply = ArpRepr {
                op: OP_REPLY,
                sender_mac: self.mac,
                sender_ip: arp.target_ip,
                target_mac: arp.sender_mac,
                target_ip: arp.sender_ip,
            };
            self.stats.arp_replies += 1;
            #[cfg(feature = "trace")]
            self.trace_arp(now, crate::trace::Dir::Out, &reply);
            return Ok(Verdict::Transmit(reply.emit_frame(frame, arp.sender_mac)));
        }
        if arp.op == OP_REPLY {
            return if learned {
                Ok(Verdict::Drop)
            } else {
                Err(DropReason::ArpUnsolicited)
            };
        }
        if !to_us {
            return Err(DropReason::ArpNotForUs);
        }
        Ok(Verdict::Drop)
    }

    fn handle_ipv4(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        len: usize,
    ) -> Result<Verdict, DropReason> {
        let ip = Ipv4View::parse(&frame[IP..len]).map_err(|e| match e {
            Ipv4Error::Truncated => DropReason::Ipv4Truncated,
            Ipv4Error::BadVersion => DropReason::Ipv4BadVersion,
            Ipv4Error::BadHeaderLen => DropReason::Ipv4BadHeaderLen,
            Ipv4Error::BadTotalLen => DropReason::Ipv4BadTotalLen,
            Ipv4Error::BadChecksum => DropReason::Ipv4BadChecksum,
        })?;
        if !self.routes.is_ours(ip.dst) {
            return Err(DropReason::Ipv4NotForUs);
        }
        if ip.ttl == 0 {
            return Err(DropReason::Ipv4TtlZero);
        }
        if self.routes.is_bad_source(ip.src) {
            return Err(DropReason::Ipv4BadSource);
        }
        if ip.fragment {
            return self.handle_fragment(now, frame, &ip);
        }
        if ip.protocol == ipv4::PROTO_ICMP {
            return self.handle_icmp(now, frame, &ip);
        }
        let packet = &frame[IP..IP + ip.total_len];
        self.handle_l4(now, &ip, packet, &packet[ip.header_len..])
    }

    /// A whole datagram to us that is not ICMP (received in one frame, or reassembled): `l4`
    /// is its payload, `packet` its IPv4 header and at least the first 8 bytes of the payload
    /// (what an ICMP error quotes).
    #[inline(always)]
    fn handle_l4(
        &mut self,
        now: Instant,
        ip: &Ipv4View,
        packet: &[u8],
        l4: &[u8],
    ) -> Result<Verdict, DropReason> {
        match ip.protocol {
            ipv4::PROTO_TCP => {
                if l4.len() < 20 {
                    return Err(DropReason::TcpTruncated);
                }
                if !checksum::verify_transport(
                    ip.src.octets(),
                    ip.dst.octets(),
                    ipv4::PROTO_TCP,
                    l4,
                ) {
                    return Err(DropReason::TcpBadChecksum);
                }
                self.stats.tcp_segments += 1;
                #[cfg(feature = "trace")]
                if let Some(t) = self.tracer.as_deref_mut() {
                    t.on_tcp(now, crate::trace::Dir::In, ip.src, ip.dst, l4, &self.routes);
                }
                self.tcp.handle_segment(now, ip.src, ip.dst, l4);
                #[cfg(feature = "trace")]
                if self.tracer.is_some() {
                    self.trace_states(now);
                }
                Ok(Verdict::Drop)
            }
            ipv4::PROTO_UDP if self.dns.is_some() => self.handle_udp(now, ip, packet, l4),
            ipv4::PROTO_UDP => {
                self.unreachable(now, packet, ip, icmp::CODE_PORT_UNREACHABLE);
                Err(DropReason::ProtoUnreachable)
            }
            _ => {
                self.unreachable(now, packet, ip, icmp::CODE_PROTO_UNREACHABLE);
                Err(DropReason::ProtoUnreachable)
            }
        }
    }

    /// A fragment addressed to us: held until its datagram is whole, which is then handled as
    /// if it had come in one frame.
    fn handle_fragment(
        &mut self,
        now: Instant,
        frame: &[u8],
        ip: &Ipv4View,
    ) -> Result<Verdict, DropReason> {
        if !self.reasm.enabled() {
            return Err(DropReason::Ipv4Fragment);
        }
        let key = FragKey {
            src: ip.src,
            dst: ip.dst,
            protocol: ip.protocol,
            ident: ip.ident,
        };
        let header = &frame[IP..IP + ip.header_len];
        let payload = &frame[IP + ip.header_len..IP + ip.total_len];
        let evicted = self.reasm.stats().evicted;
        let r = self
            .reasm
            .handle(now, key, ip.frag_offset, ip.more_fragments, payload, header);
        if self.reasm.stats().evicted > evicted {
            self.stats.drop(DropReason::Ipv4FragEvicted);
        }
        let slot = r.map_err(|e| match e {
            FragDrop::Malformed => DropReason::Ipv4FragMalformed,
            FragDrop::Overlap => DropReason::Ipv4FragOverlap,
            FragDrop::Duplicate => DropReason::Ipv4FragDuplicate,
            // No slot at all: reassembly is off (checked above).
            FragDrop::TableFull => DropReason::Ipv4Fragment,
            FragDrop::Memory => DropReason::Ipv4FragMemory,
        })?;
        // Held: the frame goes back, the datagram waits for the rest.
        let Some(slot) = slot else {
            return Ok(Verdict::Drop);
        };
        let (key, head, head_len, data) = self.reasm.take(slot);
        let r = self.handle_reassembled(now, key, &head[..head_len], &data);
        self.reasm.give_back(slot, data);
        r.map(|()| Verdict::Drop)
    }

    /// A reassembled datagram: `data` is its payload, `head` the first fragment's IPv4 header
    /// and 8 bytes of payload (what an ICMP error quotes).
    fn handle_reassembled(
        &mut self,
        now: Instant,
        key: FragKey,
        head: &[u8],
        data: &[u8],
    ) -> Result<(), DropReason> {
        let header_len = usize::from(head[0] & 0xf) * 4;
        // The view an ICMP error about this datagram needs (addresses and the quoted header).
        let view = Ipv4View {
            header_len,
            total_len: head.len(),
            ttl: head[8],
            protocol: key.protocol,
            src: key.src,
            dst: key.dst,
            fragment: false,
            more_fragments: false,
            frag_offset: 0,
            ident: key.ident,
        };
        match key.protocol {
            ipv4::PROTO_ICMP => {
                if self.frag_out.len() >= self.max_frag_replies {
                    return Err(DropReason::Ipv4FragReplyBusy);
                }
                self.accept_echo(now, data)?;
                let mut reply = self.frag_spare.pop().unwrap_or_default();
                reply.clear();
                reply.extend_from_slice(data);
                icmp::echo_reply_in_place(&mut reply);
                self.ident = self.ident.wrapping_add(1);
                self.frag_out.push_back(FragOut {
                    src: key.dst,
                    dst: key.src,
                    protocol: ipv4::PROTO_ICMP,
                    ident: self.ident,
                    sent: 0,
                    data: reply,
                });
                self.stats.icmp_echo_replies += 1;
                Ok(())
            }
            _ => self.handle_l4(now, &view, head, data).map(|_| ()),
        }
    }

    /// The IPv4 reassembly (its counters and what it holds).
    pub fn reassembly(&self) -> &Reassembler {
        &self.reasm
    }

    /// A UDP datagram to us: a DNS answer for the resolver, or port unreachable.
    fn handle_udp(
        &mut self,
        now: Instant,
        ip: &Ipv4View,
        packet: &[u8],
        dgram: &[u8],
    ) -> Result<Verdict, DropReason> {
        let u = udp::parse(ip.src.octets(), ip.dst.octets(), dgram).map_err(|e| match e {
            udp::UdpError::BadChecksum => DropReason::UdpBadChecksum,
            _ => DropReason::UdpTruncated,
        })?;
        let from = SocketAddrV4::new(ip.src, u.src_port);
        let dns = self.dns.as_mut().expect("checked by the caller");
        if dns.owns_port(u.dst_port) {
            #[cfg(feature = "trace")]
            if let Some(t) = self.tracer.as_deref_mut() {
                t.on_dns(now, crate::trace::Dir::In, from, u.payload);
            }
            self.stats.udp_datagrams += 1;
            dns.handle_datagram(now, from, u.dst_port, u.payload);
            return Ok(Verdict::Drop);
        }
        self.unreachable(now, packet, ip, icmp::CODE_PORT_UNREACHABLE);
        Err(DropReason::ProtoUnreachable)
    }

    /// Starts resolving `name` (an A query through the configured servers, or the cache);
    /// the answer comes from [`Stack::poll_dns_event`].
    pub fn resolve(&mut self, now: Instant, name: &str) -> Result<QueryId, DnsError> {
        self.dns
            .as_mut()
            .ok_or(DnsError::NoServers)?
            .resolve(now, name)
    }

    /// The next finished name resolution.
    pub fn poll_dns_event(&mut self) -> Option<DnsEvent> {
        self.dns.as_mut()?.poll_event()
    }

    /// The resolver, when configured.
    pub fn resolver(&self) -> Option<&Resolver> {
        self.dns.as_ref()
    }

    /// Starts the client request `req` to `remote` (the routing decision picks our source
    /// address and the next hop), through `tls` when given. Its outcome comes from
    /// [`Stack::poll_client_event`].
    pub fn http_request(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
        req: &ClientRequest,
        tls: Option<crate::tls::TlsClientSession>,
    ) -> Result<crate::tcp::ConnId, crate::tcp::TcpError> {
        let local = self.routes.source_for(*remote.ip());
        let conn = ClientConn::new(req, tls, now);
        self.apps
            .open_client(&mut self.tcp, now, local, remote, conn)
    }

    /// The outcome of the next finished client request.
    pub fn poll_client_event(&mut self) -> Option<ClientEvent> {
        self.apps.poll_client_event()
    }

    fn handle_icmp(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        ip: &Ipv4View,
    ) -> Result<Verdict, DropReason> {
        let start = IP + ip.header_len;
        let end = IP + ip.total_len;
        self.accept_echo(now, &frame[start..end])?;
        // Reply in place: same buffer, addresses turned around, type 8 → 0, checksums updated
        // incrementally. Ethernet padding beyond the IPv4 total length is not sent back.
        icmp::echo_reply_in_place(&mut frame[start..end]);
        ipv4::reply_in_place(&mut frame[IP..start]);
        ethernet::reply_in_place(frame, self.mac);
        self.stats.icmp_echo_replies += 1;
        Ok(Verdict::Transmit(end))
    }

    /// Checks an ICMP message to us: an echo request with a valid checksum, within the echo
    /// rate (which it then uses up).
    fn accept_echo(&mut self, now: Instant, m: &[u8]) -> Result<(), DropReason> {
        let (ty, _code) = icmp::parse(m).map_err(|e| match e {
            IcmpError::Truncated => DropReason::IcmpTruncated,
            IcmpError::BadChecksum => DropReason::IcmpBadChecksum,
        })?;
        if ty != icmp::ECHO_REQUEST {
            return Err(DropReason::IcmpIgnored);
        }
        if let Some(limit) = &mut self.echo_limit {
            if !limit.allow(now) {
                return Err(DropReason::IcmpRateLimited);
            }
        }
        Ok(())
    }

    /// Queues an ICMP destination unreachable about `packet` (its IPv4 header and payload).
    fn unreachable(&mut self, now: Instant, packet: &[u8], ip: &Ipv4View, code: u8) {
        let Some(limit) = &mut self.error_limit else {
            return;
        };
        if self.icmp_errors.len() >= ICMP_QUEUE || !limit.allow(now) {
            self.stats.drop(DropReason::IcmpErrorRateLimited);
            return;
        }
        let n = packet.len().min(ip.header_len + 8).min(QUOTE);
        let mut quote = [0u8; QUOTE];
        quote[..n].copy_from_slice(&packet[..n]);
        self.icmp_errors.push_back(IcmpErrorOut {
            dst: ip.src,
            src: ip.dst,
            ty: icmp::DEST_UNREACHABLE,
            code,
            len: n,
            quote,
        });
    }

    /// Writes Ethernet and IPv4 headers in front of a `payload_len`-byte payload already at
    /// `buf[34..]`, addressed to `dst`. Returns the frame length, or `None` when the frame was
    /// parked waiting for ARP or dropped (counted).
    fn finish_ipv4(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        payload_len: usize,
    ) -> Option<usize> {
        self.ident = self.ident.wrapping_add(1);
        let ident = self.ident;
        self.finish_ipv4_with(
            now,
            buf,
            src,
            dst,
            protocol,
            payload_len,
            ident,
            ipv4::DONT_FRAGMENT,
        )
    }

    /// [`Stack::finish_ipv4`] with the identification and the flags/offset field given (the
    /// fragments of one datagram share its identification).
    #[allow(clippy::too_many_arguments)]
    fn finish_ipv4_with(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        payload_len: usize,
        ident: u16,
        flags: u16,
    ) -> Option<usize> {
        let Some(hop) = self.routes.next_hop(dst) else {
            self.stats.drop(DropReason::NoRoute);
            return None;
        };
        ipv4::emit_with(
            &mut buf[IP..],
            src,
            dst,
            protocol,
            payload_len,
            ident,
            flags,
        );
        let len = IP + ipv4::MIN_HEADER_LEN + payload_len;
        match self.neighbors.lookup(now, hop) {
            Lookup::Hit(mac) => {
                ethernet::emit(buf, mac, self.mac, ETHERTYPE_IPV4);
                Some(len)
            }
            Lookup::Miss => {
                ethernet::emit(buf, Mac::ZERO, self.mac, ETHERTYPE_IPV4);
                if !self.neighbors.park(hop, &buf[..len]) {
                    self.stats.drop(DropReason::ArpUnresolved);
                }
                None
            }
            Lookup::Unreachable => {
                self.stats.drop(DropReason::ArpUnresolved);
                None
            }
        }
    }

    /// Fills `buf` with the next frame to send and returns its length, or `None` when there is
    /// nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        // State changes the apps caused (a close) come before the segments they send.
        #[cfg(feature = "trace")]
        if self.tracer.is_some() {
            self.trace_states(now);
        }
        let n = self.next_frame(now, buf)?;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += n as u64;
        Some(n)
    }

    fn next_frame(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let cap = buf.len().min(IP + self.mtu);
        let buf = &mut buf[..cap];
        // Each pass either returns a frame or consumes one queued item; a packet parked for ARP
        // queues a request, which the next pass sends.
        loop {
            // ARP, gratuitous ARP, a fragmented reply, ICMP errors, DNS: rare, out of line, so
            // that the TCP path below stays small.
            if self.other_pending() {
                match self.next_other_frame(now, buf) {
                    Other::Frame(n) => return Some(n),
                    Other::Again => continue,
                    Other::Nothing => {}
                }
            }
            if !self.tcp.may_transmit() {
                return None;
            }
            let seg = IP + ipv4::MIN_HEADER_LEN;
            if let Some(t) = self.tcp.poll_transmit(now, &mut buf[seg..]) {
                if let Some(len) = self.finish_ipv4(now, buf, t.src, t.dst, ipv4::PROTO_TCP, t.len)
                {
                    #[cfg(feature = "trace")]
                    if let Some(tr) = self.tracer.as_deref_mut() {
                        let s = &buf[seg..seg + t.len];
                        tr.on_tcp(now, crate::trace::Dir::Out, t.src, t.dst, s, &self.routes);
                    }
                    return Some(len);
                }
                continue;
            }
            return None;
        }
    }

    /// Something other than TCP may have a frame to send (cheap, conservative).
    #[inline]
    fn other_pending(&self) -> bool {
        self.neighbors.has_ready()
            || self.gratuitous > 0
            || self.neighbors.has_requests()
            || !self.frag_out.is_empty()
            || !self.icmp_errors.is_empty()
            || self.dns.is_some()
    }

    /// The next frame that is not TCP's, in [`Stack::next_frame`]'s order: a released parked
    /// packet, a gratuitous ARP, an ARP request, the next fragment of a large reply, an ICMP
    /// error, a DNS query.
    #[cold]
    #[inline(never)]
    fn next_other_frame(&mut self, now: Instant, buf: &mut [u8]) -> Other {
        if self.neighbors.has_ready() {
            if let Some(n) = self.neighbors.poll_ready(buf) {
                #[cfg(feature = "trace")]
                if let Some(t) = self.tracer.as_deref_mut() {
                    t.on_frame(now, crate::trace::Dir::Out, &buf[..n], &self.routes);
                }
                return Other::Frame(n);
            }
        }
        if self.gratuitous > 0 {
            self.gratuitous -= 1;
            let me = self.routes.addrs()[self.gratuitous].addr;
            self.stats.arp_requests += 1;
            let arp = ArpRepr {
                op: OP_REQUEST,
                sender_mac: self.mac,
                sender_ip: me,
                target_mac: Mac::ZERO,
                target_ip: me,
            };
            #[cfg(feature = "trace")]
            self.trace_arp(now, crate::trace::Dir::Out, &arp);
            return Other::Frame(arp.emit_frame(buf, Mac::BROADCAST));
        }
        if let Some((ip, dst)) = self
            .neighbors
            .has_requests()
            .then(|| self.neighbors.poll_request(now))
            .flatten()
        {
            self.stats.arp_requests += 1;
            let src = self.routes.source_for(ip);
            let arp = ArpRepr {
                op: OP_REQUEST,
                sender_mac: self.mac,
                sender_ip: src,
                target_mac: Mac::ZERO,
                target_ip: ip,
            };
            #[cfg(feature = "trace")]
            self.trace_arp(now, crate::trace::Dir::Out, &arp);
            return Other::Frame(arp.emit_frame(buf, dst));
        }
        if let Some(f) = self.frag_out.front_mut() {
            // The next fragment of a reply too large for one frame: as much as the MTU
            // takes, in multiples of 8 but for the last.
            let total = f.data.len();
            // `buf` is already capped at the MTU; one too small for even 8 bytes (never
            // with real frame sizes) cannot carry the reply.
            let room = buf.len().saturating_sub(IP + ipv4::MIN_HEADER_LEN) / 8 * 8;
            if room == 0 {
                if let Some(f) = self.frag_out.pop_front() {
                    self.frag_spare.push(f.data);
                }
                self.stats.drop(DropReason::Ipv4FragReplyBusy);
                return Other::Again;
            }
            let offset = f.sent;
            let n = (total - offset).min(room);
            let more = offset + n < total;
            let at = IP + ipv4::MIN_HEADER_LEN;
            buf[at..at + n].copy_from_slice(&f.data[offset..offset + n]);
            f.sent += n;
            let (src, dst, protocol, ident) = (f.src, f.dst, f.protocol, f.ident);
            if !more {
                if let Some(f) = self.frag_out.pop_front() {
                    self.frag_spare.push(f.data);
                }
            }
            let flags = ipv4::fragment_field(offset, more);
            if let Some(len) = self.finish_ipv4_with(now, buf, src, dst, protocol, n, ident, flags)
            {
                return Other::Frame(len);
            }
            return Other::Again;
        }
        if let Some(e) = self.icmp_errors.pop_front() {
            let payload = &mut buf[IP + ipv4::MIN_HEADER_LEN..];
            let n = icmp::emit_error(payload, e.ty, e.code, &e.quote[..e.len]);
            self.stats.icmp_errors += 1;
            if let Some(len) = self.finish_ipv4(now, buf, e.src, e.dst, ipv4::PROTO_ICMP, n) {
                return Other::Frame(len);
            }
            return Other::Again;
        }
        if let Some(d) = self.dns.as_mut().and_then(|r| {
            r.poll_transmit(now, &mut buf[IP + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN..])
        }) {
            let src = self.routes.source_for(*d.dst.ip());
            let seg = IP + ipv4::MIN_HEADER_LEN;
            let n = udp::emit(
                &mut buf[seg..],
                src.octets(),
                d.dst.ip().octets(),
                d.src_port,
                d.dst.port(),
                d.len,
            );
            #[cfg(feature = "trace")]
            if let Some(t) = self.tracer.as_deref_mut() {
                let payload = &buf[seg + udp::HEADER_LEN..seg + n];
                t.on_dns(now, crate::trace::Dir::Out, d.dst, payload);
            }
            if let Some(len) = self.finish_ipv4(now, buf, src, *d.dst.ip(), ipv4::PROTO_UDP, n) {
                return Other::Frame(len);
            }
            return Other::Again;
        }
        Other::Nothing
    }

    /// When the stack next needs a batch ([`run_batch`]): a timer due (no earlier than
    /// [`Stack::maybe_handle_timeout`] looks at them), a paced connection's next segment, or
    /// at once when it has frames to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.timers_due().map(|t| t.max(self.next_timer_check));
        [timers, self.tcp.poll_pacing()].into_iter().flatten().min()
    }

    /// The earliest timer (`ZERO` when frames wait to be sent), unclamped.
    fn timers_due(&self) -> Option<Instant> {
        if self.gratuitous > 0
            || !self.icmp_errors.is_empty()
            || self.neighbors.has_ready()
            || !self.frag_out.is_empty()
        {
            return Some(Instant::ZERO);
        }
        [
            self.neighbors.poll_timeout(),
            self.tcp.poll_timers(),
            self.reasm.poll_timeout(),
            self.dns.as_ref().and_then(|d| d.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers if any is due, looking at most once per millisecond (the timers'
    /// granularity): finding the next deadline scans the neighbour cache and the timer wheel,
    /// which is too much work to repeat for every batch.
    pub fn maybe_handle_timeout(&mut self, now: Instant) {
        self.now = now;
        // Pacing gaps are finer than the timers' millisecond.
        self.tcp.handle_pacing(now);
        if now < self.next_timer_check {
            return;
        }
        self.next_timer_check = now + core::time::Duration::from_millis(1);
        if self.timers_due().is_some_and(|t| t <= now) {
            self.handle_timeout(now);
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.neighbors.handle_timeout(now);
        self.tcp.handle_timeout(now);
        // Datagrams not whole in time: ICMP time exceeded to the sender when the first
        // fragment had come (RFC 792, RFC 1122 §3.3.2), rate-limited like the other errors.
        let (queue, limit, stats) = (
            &mut self.icmp_errors,
            &mut self.error_limit,
            &mut self.stats,
        );
        let timeouts = self.reasm.stats().timeouts;
        self.reasm.handle_timeout(now, |e| {
            let Some(limit) = limit.as_mut() else { return };
            if queue.len() >= ICMP_QUEUE || !limit.allow(now) {
                stats.drop(DropReason::IcmpErrorRateLimited);
                return;
            }
            let mut quote = [0u8; QUOTE];
            quote[..e.head_len].copy_from_slice(&e.head[..e.head_len]);
            queue.push_back(IcmpErrorOut {
                dst: e.key.src,
                src: e.key.dst,
                ty: icmp::TIME_EXCEEDED,
                code: icmp::CODE_REASSEMBLY_TIME_EXCEEDED,
                len: e.head_len,
                quote,
            });
        });
        // Every datagram that timed out, whether its first fragment had come or not.
        for _ in timeouts..self.reasm.stats().timeouts {
            self.stats.drop(DropReason::Ipv4FragTimeout);
        }
        if let Some(d) = self.dns.as_mut() {
            d.handle_timeout(now);
        }
        #[cfg(feature = "trace")]
        if self.tracer.is_some() {
            self.trace_states(now);
        }
    }

    /// A neighbour event from another worker.
    pub fn handle_neighbor_event(&mut self, now: Instant, ev: NeighborEvent) {
        self.neighbors.handle_event(now, ev);
    }

    /// A neighbour event of this worker, to share with the others.
    pub fn poll_neighbor_event(&mut self) -> Option<NeighborEvent> {
        self.neighbors.poll_event()
    }
}

/// Runs one batch: timers, up to [`BATCH`] received frames, then everything the stack has to send.
/// Returns the number of frames received and sent.
pub fn run_batch<D: Device>(stack: &mut Stack, dev: &mut D, now: Instant) -> (usize, usize) {
    stack.maybe_handle_timeout(now);
    let rx = dev.receive(BATCH, |frame, len| stack.handle_frame(now, frame, len));
    stack.run_apps();
    let tx = dev.transmit(BATCH, |buf| stack.poll_transmit(now, buf));
    dev.flush();
    (rx, tx)
}
