//! A sans-IO stub resolver for IPv4 addresses (A records, RFC 1035) over UDP port 53: the first
//! step of a client's journey (resolve a name, then connect).
//!
//! The resolver never touches a socket or a clock. The caller asks with [`Resolver::resolve`],
//! sends what [`Resolver::poll_transmit`] writes (the DNS message only; the stack adds UDP, IPv4
//! and Ethernet), hands back datagrams addressed to a port [`Resolver::owns_port`] with
//! [`Resolver::handle_datagram`], drives retransmissions with [`Resolver::poll_timeout`] /
//! [`Resolver::handle_timeout`], and collects results from [`Resolver::poll_event`].
//!
//! Answers come, in this order, from an IPv4 literal, the static hosts table, the cache, an
//! identical query already in flight (joined), or the network.
//!
//! Spoofing resistance (RFC 5452): every attempt uses a fresh query ID and a fresh source port,
//! both drawn from a keyed hash (SipHash) of a counter under the engine secret, so an off-path
//! attacker must guess about 30 bits. An answer is accepted only from the server the attempt was
//! sent to, on the attempt's source port, with its ID, QR set and the question echoed; A records
//! count only when they belong to the question's name or to the CNAME chain that starts there
//! within the answer section. Anything else is ignored and counted, and the query keeps waiting.
//!
//! Limits: at most [`ResolverConfig::max_pending`] resolutions outstanding, a cache of at most
//! [`ResolverConfig::max_cache`] names, CNAME chains of at most
//! [`ResolverConfig::max_cname_chain`] links, [`MAX_POINTERS`] compression pointers per name and
//! [`MAX_ADDRS`] addresses per answer.
//!
//! Not supported: TCP fallback (an answer with TC set ends the query with
//! [`DnsError::Truncated`]), EDNS(0) (answers are at most 512 bytes), AAAA, DNSSEC.

use crate::tcp::hash::SipKey;
use crate::time::Instant;
use core::fmt;
use core::hash::{BuildHasher, Hasher};
use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::RangeInclusive;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};

/// The DNS header length.
pub const HEADER_LEN: usize = 12;
/// Most addresses kept in one answer.
pub const MAX_ADDRS: usize = 8;
/// Most compression pointers followed in one name (RFC 1035 §4.1.4); more is rejected as a loop.
pub const MAX_POINTERS: usize = 32;
/// The longest query [`Resolver::poll_transmit`] writes: header, a 255-byte name, type, class.
pub const MAX_QUERY_LEN: usize = HEADER_LEN + 255 + 4;
/// The longest name in text form (RFC 1035 §2.3.4: 255 bytes on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_NXDOMAIN: u8 = 3;

/// Settings of the stub resolver.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Recursive servers to ask, in order; attempts cycle through them.
    pub servers: Vec<SocketAddrV4>,
    /// How long one attempt waits for an answer before the next, in milliseconds.
    pub timeout_ms: u64,
    /// Datagrams sent per query in all (first try plus retries) before giving up (at least 1).
    pub attempts: u32,
    /// Most resolutions outstanding at once: every [`QueryId`] handed out and not yet delivered
    /// by [`Resolver::poll_event`] counts (waiting, joined, or answered and queued).
    pub max_pending: usize,
    /// Most names in the cache (positive and negative entries); 0 disables it.
    pub max_cache: usize,
    /// Longest time an answer is cached, in seconds: larger TTLs are clamped to it.
    pub max_ttl_s: u32,
    /// How long an NXDOMAIN is cached, in seconds (RFC 2308).
    pub negative_ttl_s: u32,
    /// Longest CNAME chain followed within one answer.
    pub max_cname_chain: usize,
    /// Static entries (`/etc/hosts` style), answered without asking: a name may appear several
    /// times (up to [`MAX_ADDRS`] addresses are used). Entries with invalid names are ignored.
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// Source ports of queries (an empty range or port 0 is narrowed to valid ports).
    pub source_ports: RangeInclusive<u16>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: Vec::new(),
            timeout_ms: 1000,
            attempts: 3,
            max_pending: 64,
            max_cache: 1024,
            max_ttl_s: 3600,
            negative_ttl_s: 30,
            max_cname_chain: 8,
            hosts: Vec::new(),
            source_ports: 49152..=65535,
        }
    }
}

/// Why a resolution failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist (RCODE 3).
    #[error("no such domain (NXDOMAIN): check the name for typos")]
    NxDomain,
    /// No answer after every attempt.
    #[error("DNS query timed out: check that the server given with --dns is reachable (or give the address with --resolve NAME:ADDR)")]
    Timeout,
    /// The name exists but has no A record.
    #[error("the name has no IPv4 address (no A record): the host may be IPv6-only")]
    NoAddress,
    /// The answer had the TC bit set; TCP fallback is not supported.
    #[error("the DNS answer was truncated (TC) and TCP fallback is not supported: use another server with --dns, or give the address with --resolve NAME:ADDR")]
    Truncated,
    /// The last server answered with this RCODE (2 SERVFAIL, 5 REFUSED, ...).
    #[error("the DNS server failed to answer (rcode {0}): try another server with --dns")]
    ServerFailure(u8),
    /// The last answer that matched the query could not be parsed.
    #[error("malformed DNS answer ({0}): try another server with --dns")]
    Malformed(&'static str),
    /// The name is not a valid host name.
    #[error("invalid host name: use letters, digits, '-' and '_', labels of 1 to 63 bytes, at most 253 bytes in all")]
    InvalidName,
    /// `max_pending` resolutions are outstanding.
    #[error("too many DNS queries outstanding: collect results with poll_event, or raise dns.max_pending")]
    TooManyQueries,
    /// The name must be asked for and no server is configured.
    #[error("no DNS server: pass --dns ADDR (or give the address with --resolve NAME:ADDR)")]
    NoServers,
}

/// The handle of one [`Resolver::resolve`] call, echoed in its [`DnsEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(u64);

impl QueryId {
    /// The handle's number (unique per resolver, increasing).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "q{}", self.0)
    }
}

/// A successful resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The addresses, in the server's order (at most [`MAX_ADDRS`]).
    pub addrs: Vec<Ipv4Addr>,
    /// Seconds the answer stays valid: the smallest TTL along the CNAME chain, clamped to
    /// `max_ttl_s`; the remaining time for a cached answer; `max_ttl_s` for literals and hosts.
    pub ttl: u32,
    /// True when the answer came from the cache.
    pub from_cache: bool,
}

/// The outcome of one [`Resolver::resolve`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// The handle `resolve` returned.
    pub id: QueryId,
    /// The name asked for, lowercased, without a trailing dot.
    pub name: String,
    /// The addresses, or why there are none.
    pub result: Result<DnsAnswer, DnsError>,
}

/// A query to send: the DNS message is in the caller's buffer at `[..len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The UDP source port to send from (the answer comes back to it).
    pub src_port: u16,
    /// The server's address and port.
    pub dst: SocketAddrV4,
    /// Length of the DNS message.
    pub len: usize,
}

/// Counters (plain `u64`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Query datagrams sent (first tries and retries).
    pub queries_sent: u64,
    /// Of those, retries (after a timeout or a server failure).
    pub retransmits: u64,
    /// Answers accepted (any RCODE) from the server a query was sent to.
    pub answers: u64,
    /// Resolutions that ended in NXDOMAIN from the network.
    pub nxdomain: u64,
    /// Queries that ran out of attempts without an answer.
    pub timeouts: u64,
    /// Datagrams to a query's port that could not be parsed (ignored).
    pub malformed: u64,
    /// Datagrams ignored for a wrong ID, source, port or question, or QR clear.
    pub mismatched: u64,
    /// Resolutions answered from the cache (positive or negative).
    pub cache_hits: u64,
}

/// Where a query in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for `poll_transmit`.
    Queued,
    /// Sent; waiting for an answer until the deadline.
    Waiting {
        deadline: Instant,
        id: u16,
        port: u16,
        server: SocketAddrV4,
    },
}

/// One distinct name being asked for, and everyone waiting for it.
#[derive(Debug)]
struct Pending {
    name: String,
    waiters: Vec<QueryId>,
    state: State,
    /// Datagrams sent so far.
    sends: u32,
    /// Why the latest attempt ended, if not by a plain timeout.
    last_error: Option<DnsError>,
}

#[derive(Clone, Debug)]
enum Cached {
    Addrs(Vec<Ipv4Addr>),
    NxDomain,
}

#[derive(Clone, Debug)]
struct CacheEntry {
    value: Cached,
    expires: Instant,
}

/// A streaming hasher over SipHash-1-3 (via [`SipKey`]), keyed from the engine secret, for the
/// cache: names are buffered in 56-byte blocks, each block hashed together with the running value.
#[derive(Clone)]
struct NameHasher {
    key: SipKey,
    buf: [u8; 64],
    len: usize,
    acc: u64,
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == 56 {
                self.buf[56..].copy_from_slice(&self.acc.to_le_bytes());
                self.acc = self.key.hash(&self.buf);
                self.len = 0;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
    fn finish(&self) -> u64 {
        let mut b = self.buf;
        b[self.len..self.len + 8].copy_from_slice(&self.acc.to_le_bytes());
        self.key.hash(&b[..self.len + 8])
    }
}

/// Builds [`NameHasher`]s with one key.
#[derive(Clone, Copy)]
struct KeyedNames(SipKey);

impl BuildHasher for KeyedNames {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher {
            key: self.0,
            buf: [0; 64],
            len: 0,
            acc: 0,
        }
    }
}

/// The stub resolver: one per worker.
pub struct Resolver {
    cfg: ResolverConfig,
    /// Static entries, names normalized.
    hosts: Vec<(String, Ipv4Addr)>,
    key: SipKey,
    counter: u64,
    next_handle: u64,
    /// Handles given out and not yet delivered.
    outstanding: usize,
    pending: Vec<Pending>,
    events: VecDeque<DnsEvent>,
    cache: HashMap<String, CacheEntry, KeyedNames>,
    stats: DnsStats,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.cfg.servers)
            .field("pending", &self.pending.len())
            .field("events", &self.events.len())
            .field("cache", &self.cache.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Derives a key for `label` from all 32 bytes of the secret (independent of the TCP keys).
fn derive_key(secret: &[u8; 32], label: &[u8]) -> SipKey {
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&secret[..16]);
    b.copy_from_slice(&secret[16..]);
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&SipKey::new(&a).hash(label).to_le_bytes());
    o[8..].copy_from_slice(&SipKey::new(&b).hash(label).to_le_bytes());
    SipKey::new(&o)
}

impl Resolver {
    /// A resolver with `cfg`, drawing query IDs and source ports from `secret` (32 random bytes
    /// from the engine; the resolver itself reads no randomness).
    ///
    /// The configuration is made consistent: `attempts` at least 1, the source port range
    /// nonempty and without port 0. Host entries with invalid names are dropped.
    pub fn new(mut cfg: ResolverConfig, secret: [u8; 32]) -> Self {
        cfg.attempts = cfg.attempts.max(1);
        let (mut lo, mut hi) = (*cfg.source_ports.start(), *cfg.source_ports.end());
        if lo > hi {
            core::mem::swap(&mut lo, &mut hi);
        }
        cfg.source_ports = lo.max(1)..=hi.max(1);
        let hosts = cfg
            .hosts
            .iter()
            .filter_map(|(n, a)| normalize_name(n).ok().map(|n| (n, *a)))
            .collect();
        let cache_key = derive_key(&secret, b"handshake dns cache");
        Resolver {
            hosts,
            key: derive_key(&secret, b"handshake dns query ids"),
            counter: 0,
            next_handle: 0,
            outstanding: 0,
            pending: Vec::with_capacity(cfg.max_pending.min(1024)),
            events: VecDeque::with_capacity(cfg.max_pending.min(1024)),
            cache: HashMap::with_capacity_and_hasher(
                cfg.max_cache.min(4096),
                KeyedNames(cache_key),
            ),
            stats: DnsStats::default(),
            cfg,
        }
    }

    /// The configuration in use (after [`Resolver::new`]'s adjustments).
    pub fn config(&self) -> &ResolverConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// Starts resolving `name` (a host name, optionally with a trailing dot, or an IPv4 literal).
    ///
    /// Literals, static hosts and cached answers (positive or NXDOMAIN, within their TTL) are
    /// answered at once through [`Resolver::poll_event`]; a name already in flight is joined;
    /// otherwise a query is queued for [`Resolver::poll_transmit`].
    ///
    /// Errors: [`DnsError::InvalidName`], [`DnsError::TooManyQueries`] (`max_pending` handles
    /// outstanding), [`DnsError::NoServers`] (the network is needed and no server is configured).
    pub fn resolve(&mut self, now: Instant, name: &str) -> Result<QueryId, DnsError> {
        if let Ok(addr) = name.parse::<Ipv4Addr>() {
            let answer = DnsAnswer {
                addrs: vec![addr],
                ttl: self.cfg.max_ttl_s,
                from_cache: false,
            };
            return self.answer_now(name.to_owned(), Ok(answer));
        }
        let name = normalize_name(name)?;
        if self.outstanding >= self.cfg.max_pending {
            return Err(DnsError::TooManyQueries);
        }
        let mut addrs: Vec<Ipv4Addr> = Vec::new();
        for (n, a) in &self.hosts {
            if *n == name && addrs.len() < MAX_ADDRS {
                addrs.push(*a);
            }
        }
        if !addrs.is_empty() {
            let answer = DnsAnswer {
                addrs,
                ttl: self.cfg.max_ttl_s,
                from_cache: false,
            };
            return self.answer_now(name, Ok(answer));
        }
        match self.cache.get(&name) {
            Some(e) if e.expires > now => {
                let ttl = ((e.expires - now).as_secs()).min(u32::MAX as u64) as u32;
                let result = match &e.value {
                    Cached::Addrs(a) => Ok(DnsAnswer {
                        addrs: a.clone(),
                        ttl,
                        from_cache: true,
                    }),
                    Cached::NxDomain => Err(DnsError::NxDomain),
                };
                self.stats.cache_hits += 1;
                return self.answer_now(name, result);
            }
            Some(_) => {
                self.cache.remove(&name);
            }
            None => {}
        }
        let handle = QueryId(self.next_handle);
        if let Some(p) = self.pending.iter_mut().find(|p| p.name == name) {
            p.waiters.push(handle);
        } else {
            if self.cfg.servers.is_empty() {
                return Err(DnsError::NoServers);
            }
            self.pending.push(Pending {
                name,
                waiters: vec![handle],
                state: State::Queued,
                sends: 0,
                last_error: None,
            });
        }
        self.next_handle += 1;
        self.outstanding += 1;
        Ok(handle)
    }

    /// Queues an immediate answer for a new handle.
    fn answer_now(
        &mut self,
        name: String,
        result: Result<DnsAnswer, DnsError>,
    ) -> Result<QueryId, DnsError> {
        if self.outstanding >= self.cfg.max_pending {
            return Err(DnsError::TooManyQueries);
        }
        let id = QueryId(self.next_handle);
        self.next_handle += 1;
        self.outstanding += 1;
        self.events.push_back(DnsEvent { id, name, result });
        Ok(id)
    }

    /// The next pseudo-random 64 bits: SipHash of a counter under the secret key.
    fn random(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        self.key.hash(&self.counter.to_le_bytes())
    }

    /// Writes the next queued query into `buf[..len]` and says where to send it, or `None` when
    /// nothing is queued (or `buf` is shorter than the message; [`MAX_QUERY_LEN`] always fits).
    ///
    /// Each attempt gets a fresh ID and source port; attempt *k* goes to server *k* modulo the
    /// number of servers. The message asks for `name A IN` with RD set, the name lowercased.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Datagram> {
        let idx = self.pending.iter().position(|p| p.state == State::Queued)?;
        let need = HEADER_LEN + self.pending[idx].name.len() + 2 + 4;
        if buf.len() < need {
            return None;
        }
        let r = self.random();
        let id = r as u16;
        let (lo, hi) = (
            *self.cfg.source_ports.start() as u64,
            *self.cfg.source_ports.end() as u64,
        );
        let span = hi - lo + 1;
        let mut port = (lo + (r >> 16) % span) as u16;
        // Keep ports distinct among queries in flight when the range allows it.
        for _ in 0..8 {
            if !self.owns_port(port) {
                break;
            }
            port = (lo + (self.random() >> 16) % span) as u16;
        }
        let n = self.cfg.servers.len() as u64;
        let p = &mut self.pending[idx];
        let server = self.cfg.servers[(p.sends as u64 % n) as usize];
        let len = write_query(buf, id, &p.name);
        p.state = State::Waiting {
            deadline: now.add_millis(self.cfg.timeout_ms),
            id,
            port,
            server,
        };
        if p.sends > 0 {
            self.stats.retransmits += 1;
        }
        p.sends += 1;
        self.stats.queries_sent += 1;
        Some(Datagram {
            src_port: port,
            dst: server,
            len,
        })
    }

    /// True when `port` is the source port of a query waiting for its answer: UDP datagrams to it
    /// belong to [`Resolver::handle_datagram`].
    pub fn owns_port(&self, port: u16) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p.state, State::Waiting { port: q, .. } if q == port))
    }

    /// The earliest retransmission deadline, if any query is waiting. (Queued queries need
    /// [`Resolver::poll_transmit`], not a timer.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|p| match p.state {
                State::Waiting { deadline, .. } => Some(deadline),
                State::Queued => None,
            })
            .min()
    }

    /// Ends the attempts whose deadline has passed: the query is queued again for the next server
    /// or, after `attempts` datagrams, fails with [`DnsError::Timeout`] (or the reason the last
    /// matching answer was unusable, if one came).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            match p.state {
                State::Waiting { deadline, .. } if deadline <= now => {
                    if p.sends < self.cfg.attempts {
                        p.state = State::Queued;
                        i += 1;
                    } else {
                        let err = p.last_error.unwrap_or(DnsError::Timeout);
                        if err == DnsError::Timeout {
                            self.stats.timeouts += 1;
                        }
                        self.finish(i, Err(err));
                    }
                }
                _ => i += 1,
            }
        }
    }

    /// Removes query `idx` and queues its result for every waiter.
    fn finish(&mut self, idx: usize, result: Result<DnsAnswer, DnsError>) {
        let p = self.pending.swap_remove(idx);
        let last = p.waiters.len().saturating_sub(1);
        let mut name = Some(p.name);
        for (k, id) in p.waiters.into_iter().enumerate() {
            let name = if k == last {
                name.take().unwrap_or_default()
            } else {
                name.clone().unwrap_or_default()
            };
            self.events.push_back(DnsEvent {
                id,
                name,
                result: result.clone(),
            });
        }
    }

    /// Stores an answer, making room by dropping expired entries, then the one expiring first.
    fn cache_insert(&mut self, now: Instant, name: &str, value: Cached, ttl: u32) {
        if self.cfg.max_cache == 0 || ttl == 0 {
            return;
        }
        if !self.cache.contains_key(name) && self.cache.len() >= self.cfg.max_cache {
            self.cache.retain(|_, e| e.expires > now);
            if self.cache.len() >= self.cfg.max_cache {
                let victim = self
                    .cache
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = victim {
                    self.cache.remove(&k);
                }
            }
        }
        let expires = now.add_micros(ttl as u64 * 1_000_000);
        self.cache
            .insert(name.to_owned(), CacheEntry { value, expires });
    }

    /// Offers a UDP payload received from `from` on local port `dst_port`. Returns true when the
    /// datagram was addressed to a query in flight (it is consumed, whether used or ignored);
    /// false when no query waits on `dst_port`.
    ///
    /// A datagram is used only when it comes from the server the attempt was sent to, with the
    /// attempt's ID, QR set, and the question echoed (same name ignoring case, A, IN). Then:
    /// NOERROR with A records for the name (following CNAMEs) answers the query and is cached;
    /// NOERROR without them ends it with [`DnsError::NoAddress`]; NXDOMAIN ends it and is cached
    /// for `negative_ttl_s`; TC ends it with [`DnsError::Truncated`]; any other RCODE moves on to
    /// the next attempt (or ends it with [`DnsError::ServerFailure`]). A matching answer whose
    /// records cannot be parsed is counted as malformed and ignored: the query keeps waiting.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddrV4,
        dst_port: u16,
        payload: &[u8],
    ) -> bool {
        if !self.owns_port(dst_port) {
            self.stats.mismatched += 1;
            return false;
        }
        let Some(h) = Header::parse(payload) else {
            self.stats.malformed += 1;
            return true;
        };
        let found = self.pending.iter().position(|p| {
            matches!(p.state, State::Waiting { port, id, .. } if port == dst_port && id == h.id)
        });
        let Some(idx) = found else {
            self.stats.mismatched += 1;
            return true;
        };
        let State::Waiting { server, .. } = self.pending[idx].state else {
            return true;
        };
        if from != server || h.flags & FLAG_QR == 0 || h.opcode() != 0 || h.qd != 1 {
            self.stats.mismatched += 1;
            return true;
        }
        let after_question = match check_question(payload, &self.pending[idx].name) {
            Ok(Some(end)) => end,
            Ok(None) => {
                self.stats.mismatched += 1;
                return true;
            }
            Err(why) => {
                self.stats.malformed += 1;
                self.pending[idx].last_error = Some(DnsError::Malformed(why));
                return true;
            }
        };
        if h.flags & FLAG_TC != 0 {
            self.stats.answers += 1;
            self.finish(idx, Err(DnsError::Truncated));
            return true;
        }
        match h.rcode() {
            0 => {}
            RCODE_NXDOMAIN => {
                self.stats.answers += 1;
                self.stats.nxdomain += 1;
                let name = self.pending[idx].name.clone();
                let ttl = self.cfg.negative_ttl_s.min(self.cfg.max_ttl_s);
                self.cache_insert(now, &name, Cached::NxDomain, ttl);
                self.finish(idx, Err(DnsError::NxDomain));
                return true;
            }
            rcode => {
                self.stats.answers += 1;
                let p = &mut self.pending[idx];
                if p.sends < self.cfg.attempts {
                    p.state = State::Queued;
                    p.last_error = Some(DnsError::ServerFailure(rcode));
                } else {
                    self.finish(idx, Err(DnsError::ServerFailure(rcode)));
                }
                return true;
            }
        }
        let mut addrs = [Ipv4Addr::UNSPECIFIED; MAX_ADDRS];
        match parse_answers(
            payload,
            after_question,
            h.an,
            self.cfg.max_cname_chain,
            &mut addrs,
        ) {
            Err(why) => {
                self.stats.malformed += 1;
                self.pending[idx].last_error = Some(DnsError::Malformed(why));
            }
            Ok((0, _)) => {
                self.stats.answers += 1;
                self.finish(idx, Err(DnsError::NoAddress));
            }
            Ok((n, ttl)) => {
                self.stats.answers += 1;
                let ttl = ttl.min(self.cfg.max_ttl_s);
                let addrs = addrs[..n].to_vec();
                let name = self.pending[idx].name.clone();
                self.cache_insert(now, &name, Cached::Addrs(addrs.clone()), ttl);
                self.finish(
                    idx,
                    Ok(DnsAnswer {
                        addrs,
                        ttl,
                        from_cache: false,
                    }),
                );
            }
        }
        true
    }

    /// The next finished resolution.
    pub fn poll_event(&mut self) -> Option<DnsEvent> {
        let e = self.events.pop_front()?;
        self.outstanding = self.outstanding.saturating_sub(1);
        Some(e)
    }
}

/// Validates a host name and returns it lowercased without a trailing dot: labels of
/// 1..=[`MAX_LABEL_LEN`] bytes of letters, digits, `-` and `_`, at most [`MAX_NAME_LEN`] bytes.
pub fn normalize_name(name: &str) -> Result<String, DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(DnsError::InvalidName);
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DnsError::InvalidName);
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// Writes a query for `name` (already normalized, fits `buf`) and returns its length.
fn write_query(buf: &mut [u8], id: u16, name: &str) -> usize {
    buf[0..2].copy_from_slice(&id.to_be_bytes());
    buf[2..4].copy_from_slice(&FLAG_RD.to_be_bytes());
    buf[4..6].copy_from_slice(&1u16.to_be_bytes());
    buf[6..12].copy_from_slice(&[0; 6]);
    let mut at = HEADER_LEN;
    for label in name.split('.') {
        buf[at] = label.len() as u8;
        buf[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
        at += 1 + label.len();
    }
    buf[at] = 0;
    at += 1;
    buf[at..at + 2].copy_from_slice(&TYPE_A.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&CLASS_IN.to_be_bytes());
    at + 4
}

/// The fixed header of a DNS message.
#[derive(Clone, Copy, Debug)]
struct Header {
    id: u16,
    flags: u16,
    qd: u16,
    an: u16,
}

impl Header {
    fn parse(m: &[u8]) -> Option<Header> {
        let h = m.get(..HEADER_LEN)?;
        Some(Header {
            id: u16::from_be_bytes([h[0], h[1]]),
            flags: u16::from_be_bytes([h[2], h[3]]),
            qd: u16::from_be_bytes([h[4], h[5]]),
            an: u16::from_be_bytes([h[6], h[7]]),
        })
    }
    fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// Walks the labels of a possibly compressed name in a message.
///
/// Every compression pointer must point strictly before the previous one's target (the first:
/// before the pointer itself), so a walk always ends; at most [`MAX_POINTERS`] are followed and
/// the name may not exceed 255 bytes.
struct Labels<'a> {
    m: &'a [u8],
    pos: usize,
    /// Pointer targets must be below this.
    limit: usize,
    jumps: usize,
    /// Bytes of the uncompressed name so far (length octets included).
    total: usize,
    /// Where the name ends in place (after its first pointer or its root label).
    end: Option<usize>,
    /// The root label was reached: every further call returns `None`.
    done: bool,
}

impl<'a> Labels<'a> {
    fn new(m: &'a [u8], pos: usize) -> Self {
        Labels {
            m,
            pos,
            limit: usize::MAX,
            jumps: 0,
            total: 0,
            end: None,
            done: false,
        }
    }

    /// The next label, `None` at the root.
    fn next_label(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        if self.done {
            return Ok(None);
        }
        loop {
            let len = *self.m.get(self.pos).ok_or("name runs past the message")?;
            match len & 0xc0 {
                0x00 => {
                    self.total += 1 + len as usize;
                    if self.total > 255 {
                        return Err("name longer than 255 bytes");
                    }
                    if len == 0 {
                        self.end.get_or_insert(self.pos + 1);
                        self.done = true;
                        return Ok(None);
                    }
                    let start = self.pos + 1;
                    let label = self
                        .m
                        .get(start..start + len as usize)
                        .ok_or("name runs past the message")?;
                    self.pos = start + len as usize;
                    return Ok(Some(label));
                }
                0xc0 => {
                    let low = *self
                        .m
                        .get(self.pos + 1)
                        .ok_or("name runs past the message")?;
                    let target = ((len as usize & 0x3f) << 8) | low as usize;
                    if target >= self.pos.min(self.limit) {
                        return Err("compression pointer does not point backwards");
                    }
                    self.jumps += 1;
                    if self.jumps > MAX_POINTERS {
                        return Err("too many compression pointers");
                    }
                    self.end.get_or_insert(self.pos + 2);
                    self.limit = target;
                    self.pos = target;
                }
                _ => return Err("unknown label type"),
            }
        }
    }

    /// Walks to the root; returns where the name ends in place.
    fn skip(mut self) -> Result<usize, &'static str> {
        while self.next_label()?.is_some() {}
        self.end.ok_or("name runs past the message")
    }
}

/// True when the names at `a` and `b` of `m` are equal, ignoring ASCII case.
fn names_equal(m: &[u8], a: usize, b: usize) -> Result<bool, &'static str> {
    let (mut x, mut y) = (Labels::new(m, a), Labels::new(m, b));
    loop {
        match (x.next_label()?, y.next_label()?) {
            (None, None) => return Ok(true),
            (Some(p), Some(q)) if p.eq_ignore_ascii_case(q) => {}
            _ => {
                // Finish both walks so that a malformed name is reported as such.
                while x.next_label()?.is_some() {}
                while y.next_label()?.is_some() {}
                return Ok(false);
            }
        }
    }
}

/// Checks the question at [`HEADER_LEN`] against `name` (normalized), type A, class IN.
/// `Ok(Some(end))`: it matches and the answer section starts at `end`; `Ok(None)`: another
/// question.
fn check_question(m: &[u8], name: &str) -> Result<Option<usize>, &'static str> {
    let mut labels = Labels::new(m, HEADER_LEN);
    let mut same = true;
    let mut ours = name.split('.');
    while let Some(l) = labels.next_label()? {
        same &= ours
            .next()
            .is_some_and(|o| o.as_bytes().eq_ignore_ascii_case(l));
    }
    same &= ours.next().is_none();
    let end = labels.end.ok_or("name runs past the message")?;
    let tail = m
        .get(end..end + 4)
        .ok_or("question runs past the message")?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok((same && qtype == TYPE_A && qclass == CLASS_IN).then_some(end + 4))
}

/// One resource record, located in the message.
#[derive(Clone, Copy, Debug)]
struct Record {
    name: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    rdlen: usize,
}

/// Parses the record at `pos`; returns it and where the next one starts.
fn record(m: &[u8], pos: usize) -> Result<(Record, usize), &'static str> {
    let end = Labels::new(m, pos).skip()?;
    let f = m.get(end..end + 10).ok_or("record runs past the message")?;
    let rdlen = u16::from_be_bytes([f[8], f[9]]) as usize;
    let rdata = end + 10;
    if rdata + rdlen > m.len() {
        return Err("record data runs past the message");
    }
    let raw_ttl = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
    Ok((
        Record {
            name: pos,
            rtype: u16::from_be_bytes([f[0], f[1]]),
            class: u16::from_be_bytes([f[2], f[3]]),
            // RFC 2181 §8: a TTL with the top bit set is treated as zero.
            ttl: if raw_ttl > i32::MAX as u32 {
                0
            } else {
                raw_ttl
            },
            rdata,
            rdlen,
        },
        rdata + rdlen,
    ))
}

/// Validates the `count` answer records from `start` (A must have 4 bytes of data, CNAME data
/// must be one name filling it) and collects the A records of the question's name, following
/// CNAMEs (at most `max_chain`). Returns how many addresses went into `out` and the smallest TTL
/// along the way.
fn parse_answers(
    m: &[u8],
    start: usize,
    count: u16,
    max_chain: usize,
    out: &mut [Ipv4Addr; MAX_ADDRS],
) -> Result<(usize, u32), &'static str> {
    // First pass: every record well formed.
    let mut pos = start;
    for _ in 0..count {
        let (r, next) = record(m, pos)?;
        if r.class == CLASS_IN && r.rtype == TYPE_A && r.rdlen != 4 {
            return Err("A record data is not 4 bytes");
        }
        if r.class == CLASS_IN && r.rtype == TYPE_CNAME {
            let end = Labels::new(m, r.rdata).skip()?;
            if end != r.rdata + r.rdlen {
                return Err("CNAME data is not one name");
            }
        }
        pos = next;
    }
    // Then follow the chain from the question's name.
    let mut target = HEADER_LEN;
    let mut ttl = u32::MAX;
    for _ in 0..=max_chain {
        let mut n = 0;
        let mut a_ttl = u32::MAX;
        let mut cname: Option<(usize, u32)> = None;
        let mut pos = start;
        for _ in 0..count {
            let (r, next) = record(m, pos)?;
            pos = next;
            if r.class != CLASS_IN || !names_equal(m, r.name, target)? {
                continue;
            }
            match r.rtype {
                TYPE_A => {
                    a_ttl = a_ttl.min(r.ttl);
                    if n < MAX_ADDRS {
                        let d = &m[r.rdata..r.rdata + 4];
                        out[n] = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
                        n += 1;
                    }
                }
                TYPE_CNAME if cname.is_none() => cname = Some((r.rdata, r.ttl)),
                _ => {}
            }
        }
        if n > 0 {
            return Ok((n, ttl.min(a_ttl)));
        }
        match cname {
            Some((next, t)) => {
                ttl = ttl.min(t);
                target = next;
            }
            None => return Ok((0, 0)),
        }
    }
    Err("CNAME chain too long")
}

/// Renders the name at `pos` as text (bytes outside letters, digits, `-` and `_` as `\DDD`).
fn render_name(m: &[u8], pos: usize, out: &mut String) -> Result<usize, &'static str> {
    let mut labels = Labels::new(m, pos);
    let mut first = true;
    while let Some(l) = labels.next_label()? {
        if !first {
            out.push('.');
        }
        first = false;
        for &b in l {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
    }
    if first {
        out.push('.');
    }
    labels.end.ok_or("name runs past the message")
}

fn type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        41 => "OPT".into(),
        65 => "HTTPS".into(),
        t => format!("TYPE{t}"),
    }
}

/// Renders a DNS message for a trace line, or `None` when it is not one:
/// `query A www.example.test id 0x1234`, `answer www.example.test A 198.19.0.10 ttl 300`
/// (records after the name, comma-separated, CNAMEs as `CNAME target ttl N`),
/// `NXDOMAIN www.example.test id 0x1234`, `SERVFAIL ...`, `truncated answer ...`.
pub fn describe(payload: &[u8]) -> Option<String> {
    let h = Header::parse(payload)?;
    let mut qname = String::new();
    let mut qtype = 0;
    let mut pos = HEADER_LEN;
    if h.qd >= 1 {
        let end = render_name(payload, HEADER_LEN, &mut qname).ok()?;
        let t = payload.get(end..end + 4)?;
        qtype = u16::from_be_bytes([t[0], t[1]]);
        pos = end + 4;
        // Skip any further questions.
        for _ in 1..h.qd {
            pos = Labels::new(payload, pos).skip().ok()? + 4;
        }
    }
    if h.flags & FLAG_QR == 0 {
        return Some(format!(
            "query {} {} id {:#06x}",
            type_name(qtype),
            qname,
            h.id
        ));
    }
    if h.flags & FLAG_TC != 0 {
        return Some(format!("truncated answer {qname} id {:#06x}", h.id));
    }
    match h.rcode() {
        0 => {}
        3 => return Some(format!("NXDOMAIN {qname} id {:#06x}", h.id)),
        2 => return Some(format!("SERVFAIL {qname} id {:#06x}", h.id)),
        5 => return Some(format!("REFUSED {qname} id {:#06x}", h.id)),
        r => return Some(format!("rcode {r} {qname} id {:#06x}", h.id)),
    }
    let mut s = format!("answer {qname}");
    if h.an == 0 {
        s.push_str(" (no records)");
    }
    for k in 0..h.an {
        let (r, next) = record(payload, pos).ok()?;
        pos = next;
        s.push_str(if k == 0 { " " } else { ", " });
        s.push_str(&type_name(r.rtype));
        s.push(' ');
        match r.rtype {
            TYPE_A if r.rdlen == 4 => {
                let d = &payload[r.rdata..r.rdata + 4];
                s.push_str(&Ipv4Addr::new(d[0], d[1], d[2], d[3]).to_string());
            }
            TYPE_CNAME => {
                render_name(payload, r.rdata, &mut s).ok()?;
            }
            _ => s.push_str(&format!("({} bytes)", r.rdlen)),
        }
        s.push_str(&format!(" ttl {}", r.ttl));
    }
    Some(s)
}

/// What the trace needs of a DNS message: the question's name, the A records answered (for
/// the name asked or along its CNAME chain), and [`describe`]'s line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The question's name, lowercased.
    pub name: String,
    /// Addresses in A records of an answer (empty for a query or an error).
    pub addrs: Vec<Ipv4Addr>,
    /// The rendered line.
    pub text: String,
}

/// [`describe`] with the name and the addresses, or `None` when `payload` is not a DNS message.
pub fn summarize(payload: &[u8]) -> Option<Summary> {
    let text = describe(payload)?;
    let h = Header::parse(payload)?;
    let mut name = String::new();
    let mut addrs = Vec::new();
    if h.qd >= 1 {
        let mut pos = render_name(payload, HEADER_LEN, &mut name).ok()? + 4;
        for _ in 1..h.qd {
            pos = Labels::new(payload, pos).skip().ok()? + 4;
        }
        if h.flags & FLAG_QR != 0 && h.rcode() == 0 {
            for _ in 0..h.an {
                let Ok((r, next)) = record(payload, pos) else {
                    break;
                };
                pos = next;
                if r.rtype == TYPE_A && r.rdlen == 4 && addrs.len() < MAX_ADDRS {
                    let d = &payload[r.rdata..r.rdata + 4];
                    addrs.push(Ipv4Addr::new(d[0], d[1], d[2], d[3]));
                }
            }
        }
    }
    Some(Summary {
        name: name.to_ascii_lowercase(),
        addrs,
        text,
    })
}

#[cfg(test)]
mod tests;
