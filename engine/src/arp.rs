//! The neighbour cache: IPv4 → MAC, with expiry and refresh, bounded queues of packets waiting for
//! resolution, and request retries with exponential backoff.
//!
//! One cache lives in each worker's stack. Workers keep their caches consistent by exchanging what
//! they learn: every entry learned from the wire is also reported by [`NeighborCache::poll_event`],
//! which the daemon forwards to the other workers' [`NeighborCache::handle_event`] (a reply may
//! arrive on another queue than the one that asked).
//!
//! Hijack resistance: an existing, fresh entry is never overwritten by an unsolicited packet
//! carrying a different MAC (e.g. a forged reply claiming the gateway); the cache probes the address
//! instead, and only a reply to that probe may change it. Unsolicited replies never create entries.

use crate::time::Instant;
use crate::wire::Mac;
use core::cell::Cell;
use core::hash::{BuildHasher, Hasher};
use core::net::Ipv4Addr;
use core::time::Duration;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};

/// Settings of the neighbour cache.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArpConfig {
    /// Most entries (resolved or pending). New addresses beyond it are not cached.
    pub max_entries: usize,
    /// How long a confirmed entry is used without question, in seconds.
    pub reachable_secs: u64,
    /// How long a stale entry is kept (and refreshed on use) before it is forgotten, in seconds.
    pub stale_secs: u64,
    /// First retry interval of a request, in milliseconds (doubles on each retry).
    pub retry_ms: u64,
    /// Requests sent before giving up on an address.
    pub max_probes: u8,
    /// Most packets waiting for one neighbour.
    pub pending_per_neighbor: usize,
    /// Most packets waiting in all (the size of the preallocated pending pool).
    pub pending_total: usize,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            max_entries: 1024,
            reachable_secs: 30,
            stale_secs: 120,
            retry_ms: 200,
            max_probes: 5,
            pending_per_neighbor: 16,
            pending_total: 128,
        }
    }
}

/// Result of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Resolved.
    Hit(Mac),
    /// Not resolved yet; a request is (or will be) on its way.
    Miss,
    /// Cannot be resolved now (cache full, or the address failed to answer recently).
    Unreachable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Asked, no answer yet.
    Incomplete,
    /// Confirmed until the instant.
    Reachable(Instant),
    /// Past its reachable time: usable, refreshed on use, forgotten at the instant.
    Stale(Instant),
}

/// True when an entry has outlived what its state allows: stale past its lifetime, or reachable
/// past its reachable time plus the stale lifetime `stale` without ever being used (a lookup is
/// what turns a reachable entry stale).
fn expired(state: State, now: Instant, stale: Duration) -> bool {
    match state {
        State::Stale(until) => until <= now,
        State::Reachable(until) => until + stale <= now,
        State::Incomplete => false,
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    mac: Mac,
    state: State,
    /// When the next request is due, if a request cycle is running.
    probe_at: Option<Instant>,
    /// Requests sent in the current cycle.
    probes: u8,
}

/// A multiply-shift hasher keyed per process: IPv4 keys are one `u32`, SipHash would be wasted work.
#[derive(Clone, Copy, Debug)]
pub struct KeyedU32Hasher {
    key: u64,
    state: u64,
}

impl Hasher for KeyedU32Hasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u8(*b);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.state = (self.state ^ b as u64)
            .wrapping_mul(self.key)
            .rotate_left(29);
    }
    fn write_u32(&mut self, v: u32) {
        self.state = ((self.state ^ v as u64).wrapping_mul(self.key)) ^ (self.key >> 17);
        self.state = self.state.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (self.state >> 29);
    }
}

/// Builds [`KeyedU32Hasher`]s with one key.
#[derive(Clone, Copy, Debug)]
pub struct KeyedU32 {
    key: u64,
}

impl KeyedU32 {
    /// A builder with `key` (made odd).
    pub fn new(key: u64) -> Self {
        KeyedU32 { key: key | 1 }
    }
}

impl BuildHasher for KeyedU32 {
    type Hasher = KeyedU32Hasher;
    fn build_hasher(&self) -> KeyedU32Hasher {
        KeyedU32Hasher {
            key: self.key,
            state: self.key.rotate_left(32),
        }
    }
}

/// Counters of the neighbour cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpStats {
    /// Lookups that missed.
    pub misses: u64,
    /// Entries learned or confirmed from the wire.
    pub learned: u64,
    /// Unsolicited packets that tried to change a fresh entry's MAC (refused, probed instead).
    pub hijack_refused: u64,
    /// Addresses given up on after `max_probes` requests.
    pub failed: u64,
    /// Packets dropped because their neighbour did not answer or its queue was full.
    pub pending_dropped: u64,
    /// New addresses not cached because the cache was full.
    pub cache_full: u64,
}

/// What one worker's cache tells the others, so that all stay consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighborEvent {
    /// This worker started resolving the address: a reply may arrive on another queue.
    Resolving(Ipv4Addr),
    /// This worker learned (or confirmed) the address from the wire.
    Learned(Ipv4Addr, Mac),
}

/// How an ARP packet relates to us, for [`NeighborCache::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// A reply (to one of our requests, if one is outstanding).
    Reply,
    /// A request whose target is one of our addresses.
    RequestToUs,
    /// Anything else: gratuitous ARP, requests for other hosts.
    Unsolicited,
}

/// A packet waiting for its next hop's MAC.
#[derive(Clone, Copy, Debug)]
struct Slot {
    next_hop: Ipv4Addr,
    len: usize,
    used: bool,
}

/// The neighbour cache of one worker.
#[derive(Debug)]
pub struct NeighborCache {
    cfg: ArpConfig,
    entries: HashMap<Ipv4Addr, Entry, KeyedU32>,
    /// Addresses to send a request for, in order.
    requests: VecDeque<Ipv4Addr>,
    /// Events to share with the other workers.
    events: VecDeque<NeighborEvent>,
    /// Addresses another worker is resolving: a reply from them, arriving here, is solicited.
    expected: HashMap<Ipv4Addr, Instant, KeyedU32>,
    /// Pending packets: fixed pool of buffers, allocated once.
    slots: Vec<Slot>,
    bufs: Vec<Box<[u8]>>,
    /// Slots in use (so the common case, nothing parked, skips the scan).
    parked_count: usize,
    /// Slots whose neighbour resolved, ready to go out.
    ready: VecDeque<usize>,
    stats: ArpStats,
    /// The last reachable entry `lookup` returned, with its reachable deadline: the common case
    /// (every segment to the same gateway or peer) skips the hash table. Cleared by every
    /// method that changes entries (`learn`, `handle_event`, `handle_timeout`).
    hot: Option<(Ipv4Addr, Mac, Instant)>,
    /// The earliest `probe_at` of the entries, once computed; `None` when it must be computed
    /// again (a probe was scheduled, moved or cancelled, or an entry went away). The workers ask
    /// for the next deadline every time they go idle: without it that is a scan of the table.
    next_probe: Cell<Option<Option<Instant>>>,
}

impl NeighborCache {
    /// A cache with `cfg`; `hash_key` keys the table's hash (use a random per-process value);
    /// `frame_size` is the size of each pending buffer.
    pub fn new(cfg: ArpConfig, hash_key: u64, frame_size: usize) -> Self {
        let n = cfg.pending_total;
        NeighborCache {
            entries: HashMap::with_capacity_and_hasher(cfg.max_entries, KeyedU32::new(hash_key)),
            requests: VecDeque::with_capacity(64),
            events: VecDeque::with_capacity(64),
            expected: HashMap::with_capacity_and_hasher(
                cfg.max_entries,
                KeyedU32::new(hash_key ^ 0x55),
            ),
            slots: vec![
                Slot {
                    next_hop: Ipv4Addr::UNSPECIFIED,
                    len: 0,
                    used: false
                };
                n
            ],
            bufs: (0..n)
                .map(|_| vec![0u8; frame_size].into_boxed_slice())
                .collect(),
            ready: VecDeque::with_capacity(n),
            parked_count: 0,
            stats: ArpStats::default(),
            hot: None,
            next_probe: Cell::new(None),
            cfg,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &ArpStats {
        &self.stats
    }

    /// Number of entries (resolved or pending).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn reachable(&self) -> Duration {
        Duration::from_secs(self.cfg.reachable_secs)
    }

    fn schedule_probe(&mut self, ip: Ipv4Addr, now: Instant) {
        if let Some(e) = self.entries.get_mut(&ip) {
            if e.probe_at.is_none() {
                e.probe_at = Some(now);
                self.next_probe.set(None);
                e.probes = 0;
                if self.requests.len() < self.requests.capacity() {
                    self.requests.push_back(ip);
                }
                if self.events.len() < 1024 {
                    self.events.push_back(NeighborEvent::Resolving(ip));
                }
            }
        }
    }

    /// The MAC of `ip`, starting a resolution when it is unknown and a refresh when it is stale.
    pub fn lookup(&mut self, now: Instant, ip: Ipv4Addr) -> Lookup {
        if let Some((hot, mac, until)) = self.hot {
            if hot == ip && now < until {
                return Lookup::Hit(mac);
            }
        }
        self.hot = None;
        match self.entries.get(&ip).copied() {
            Some(Entry {
                mac,
                state: State::Reachable(until),
                ..
            }) => {
                if now < until {
                    self.hot = Some((ip, mac, until));
                    return Lookup::Hit(mac);
                }
                // Past its reachable time: keep using it, refresh it.
                let stale = now + Duration::from_secs(self.cfg.stale_secs);
                if let Some(e) = self.entries.get_mut(&ip) {
                    e.state = State::Stale(stale);
                }
                self.schedule_probe(ip, now);
                Lookup::Hit(mac)
            }
            Some(Entry {
                mac,
                state: State::Stale(_),
                ..
            }) => {
                self.schedule_probe(ip, now);
                Lookup::Hit(mac)
            }
            Some(Entry {
                state: State::Incomplete,
                ..
            }) => {
                self.stats.misses += 1;
                Lookup::Miss
            }
            None => {
                self.stats.misses += 1;
                if self.entries.len() >= self.cfg.max_entries && !self.evict_one(now) {
                    self.stats.cache_full += 1;
                    return Lookup::Unreachable;
                }
                self.next_probe.set(None);
                self.entries.insert(
                    ip,
                    Entry {
                        mac: Mac::ZERO,
                        state: State::Incomplete,
                        probe_at: None,
                        probes: 0,
                    },
                );
                self.schedule_probe(ip, now);
                Lookup::Miss
            }
        }
    }

    /// Frees one entry (rare path: the cache is full): an expired one if any, else one past its
    /// reachable time (stale, or reachable but unconfirmed since); never one being resolved or
    /// still confirmed.
    fn evict_one(&mut self, now: Instant) -> bool {
        let victim = self
            .entries
            .iter()
            .find(|(_, e)| expired(e.state, now, Duration::from_secs(self.cfg.stale_secs)))
            .or_else(|| {
                self.entries.iter().find(|(_, e)| match e.state {
                    State::Stale(_) => true,
                    State::Reachable(until) => until <= now,
                    State::Incomplete => false,
                })
            })
            .map(|(ip, _)| *ip);
        match victim {
            Some(ip) => {
                self.entries.remove(&ip);
                self.next_probe.set(None);
                true
            }
            None => false,
        }
    }

    /// Learns `ip` → `mac` from an ARP packet received on this worker; returns true when the entry
    /// is now resolved to `mac`.
    ///
    /// - [`Learn::Reply`] to an outstanding request resolves an incomplete entry (the first answer
    ///   wins; the probe cycle ends with it); a known entry is only confirmed by its own MAC.
    /// - [`Learn::RequestToUs`]: the sender will talk to us, so RFC 826 merges it — creating the
    ///   entry if absent. A *different* MAC for a known address is not taken on trust: it is
    ///   refused and the address is probed.
    /// - [`Learn::Unsolicited`] (gratuitous or unasked-for replies) only confirms an entry whose
    ///   MAC it repeats; it never creates or changes one.
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, mac: Mac, how: Learn) -> bool {
        self.hot = None;
        let until = now + self.reachable();
        let expected = self.expected.get(&ip).is_some_and(|t| *t > now);
        if expected && how == Learn::Reply && !self.entries.contains_key(&ip) {
            // Another worker asked and the answer came here.
            self.expected.remove(&ip);
            if !self.insert_reachable(now, ip, mac) {
                return false;
            }
            return self.learned(ip, mac);
        }
        let Some(e) = self.entries.get_mut(&ip) else {
            if how != Learn::RequestToUs {
                return false;
            }
            if !self.insert_reachable(now, ip, mac) {
                return false;
            }
            return self.learned(ip, mac);
        };
        // A known entry is only confirmed by its own MAC, even while it is probed: a conflicting
        // claim triggers a probe, and a forger answering that probe first must not win the
        // race. If the known MAC stops answering, the probes give out, the entry is forgotten,
        // and a fresh resolution accepts the new owner.
        let accept = match how {
            Learn::Reply => e.state == State::Incomplete || e.mac == mac,
            Learn::RequestToUs | Learn::Unsolicited => {
                e.state != State::Incomplete && e.mac == mac
                    || (how == Learn::RequestToUs && e.state == State::Incomplete)
            }
        };
        if !accept {
            if e.state != State::Incomplete && e.mac != mac {
                self.stats.hijack_refused += 1;
                self.schedule_probe(ip, now);
            }
            return false;
        }
        // Share only news: a resolution, a changed MAC, or a refresh of an entry that had gone
        // stale (the other workers' copies age alike). Confirming a fresh entry stays local.
        let news = e.mac != mac || !matches!(e.state, State::Reachable(u) if now < u);
        e.mac = mac;
        e.state = State::Reachable(until);
        e.probe_at = None;
        self.next_probe.set(None);
        e.probes = 0;
        if news {
            self.learned(ip, mac)
        } else {
            self.stats.learned += 1;
            true
        }
    }

    fn learned(&mut self, ip: Ipv4Addr, mac: Mac) -> bool {
        self.stats.learned += 1;
        self.expected.remove(&ip);
        if self.events.len() < 1024 {
            self.events.push_back(NeighborEvent::Learned(ip, mac));
        }
        self.release(ip, mac);
        true
    }

    /// Applies an event from another worker.
    pub fn handle_event(&mut self, now: Instant, ev: NeighborEvent) {
        self.hot = None;
        match ev {
            NeighborEvent::Resolving(ip) => {
                if self.expected.len() < self.cfg.max_entries {
                    // A reply is solicited for as long as the other worker's probes can last.
                    let window = self
                        .cfg
                        .retry_ms
                        .saturating_mul(1 << self.cfg.max_probes.min(10));
                    self.expected
                        .insert(ip, now + Duration::from_millis(window));
                }
            }
            NeighborEvent::Learned(ip, mac) => self.learn_shared(now, ip, mac),
        }
    }

    /// Learns an entry another worker resolved (it already passed that worker's checks).
    fn learn_shared(&mut self, now: Instant, ip: Ipv4Addr, mac: Mac) {
        self.expected.remove(&ip);
        let until = now + self.reachable();
        match self.entries.get_mut(&ip) {
            Some(e) => {
                e.mac = mac;
                e.state = State::Reachable(until);
                e.probe_at = None;
                self.next_probe.set(None);
                e.probes = 0;
            }
            None => {
                if !self.insert_reachable(now, ip, mac) {
                    return;
                }
            }
        }
        self.release(ip, mac);
    }

    /// Adds a new resolved entry, making room by evicting an expired one; false (counted) when
    /// the cache is full.
    fn insert_reachable(&mut self, now: Instant, ip: Ipv4Addr, mac: Mac) -> bool {
        if self.entries.len() >= self.cfg.max_entries && !self.evict_one(now) {
            self.stats.cache_full += 1;
            return false;
        }
        let until = now + self.reachable();
        let entry = Entry {
            mac,
            state: State::Reachable(until),
            probe_at: None,
            probes: 0,
        };
        self.next_probe.set(None);
        self.entries.insert(ip, entry);
        true
    }

    /// True when we have a request outstanding for `ip` (a reply from it is solicited).
    pub fn is_probing(&self, ip: Ipv4Addr) -> bool {
        self.entries
            .get(&ip)
            .is_some_and(|e| e.probe_at.is_some() || e.state == State::Incomplete)
    }

    /// The next event to share with the other workers.
    pub fn poll_event(&mut self) -> Option<NeighborEvent> {
        self.events.pop_front()
    }

    /// The next address to send an ARP request for (with the MAC to unicast it to when the
    /// request refreshes a known entry, else broadcast).
    pub fn poll_request(&mut self, now: Instant) -> Option<(Ipv4Addr, Mac)> {
        while let Some(ip) = self.requests.pop_front() {
            let Some(e) = self.entries.get_mut(&ip) else {
                continue;
            };
            let Some(at) = e.probe_at else { continue };
            if at > now {
                continue; // rescheduled later; handle_timeout re-queues it
            }
            e.probes += 1;
            let backoff = self
                .cfg
                .retry_ms
                .saturating_mul(1 << (e.probes - 1).min(10));
            e.probe_at = Some(now + Duration::from_millis(backoff));
            self.next_probe.set(None);
            let dst = if e.state == State::Incomplete {
                Mac::BROADCAST
            } else {
                e.mac
            };
            return Some((ip, dst));
        }
        None
    }

    /// When the cache next needs [`NeighborCache::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.requests.is_empty() {
            return Some(Instant::ZERO);
        }
        if let Some(next) = self.next_probe.get() {
            return next;
        }
        let next = self.entries.values().filter_map(|e| e.probe_at).min();
        self.next_probe.set(Some(next));
        next
    }

    /// Runs retries, gives up on silent addresses and forgets old entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hot = None;
        self.next_probe.set(None);
        let max = self.cfg.max_probes;
        let mut give_up: [Ipv4Addr; 16] = [Ipv4Addr::UNSPECIFIED; 16];
        let mut n = 0;
        let mut forget: [Ipv4Addr; 16] = [Ipv4Addr::UNSPECIFIED; 16];
        let mut f = 0;
        let stale = Duration::from_secs(self.cfg.stale_secs);
        for (ip, e) in self.entries.iter_mut() {
            if let Some(at) = e.probe_at {
                if at <= now {
                    if e.probes >= max {
                        if e.state == State::Incomplete {
                            if n < give_up.len() {
                                give_up[n] = *ip;
                                n += 1;
                            }
                        } else {
                            // A stale entry that stopped answering: forget it.
                            if f < forget.len() {
                                forget[f] = *ip;
                                f += 1;
                            }
                        }
                    } else if !self.requests.contains(ip)
                        && self.requests.len() < self.requests.capacity()
                    {
                        self.requests.push_back(*ip);
                    }
                }
            } else if f < forget.len() && expired(e.state, now, stale) {
                forget[f] = *ip;
                f += 1;
            }
        }
        for ip in &give_up[..n] {
            self.entries.remove(ip);
            self.next_probe.set(None);
            self.stats.failed += 1;
            self.drop_pending(*ip);
        }
        for ip in &forget[..f] {
            self.entries.remove(ip);
            self.next_probe.set(None);
        }
        if !self.expected.is_empty() {
            self.expected.retain(|_, t| *t > now);
        }
    }

    /// Parks a frame (`frame[..len]`, Ethernet destination still to fill in) until `next_hop`
    /// resolves. Returns false (the caller counts the drop) when the queues are full.
    pub fn park(&mut self, next_hop: Ipv4Addr, frame: &[u8]) -> bool {
        let waiting = self
            .slots
            .iter()
            .filter(|s| s.used && s.next_hop == next_hop)
            .count();
        if waiting >= self.cfg.pending_per_neighbor {
            self.stats.pending_dropped += 1;
            return false;
        }
        let Some(i) = self.slots.iter().position(|s| !s.used) else {
            self.stats.pending_dropped += 1;
            return false;
        };
        if frame.len() > self.bufs[i].len() {
            self.stats.pending_dropped += 1;
            return false;
        }
        self.bufs[i][..frame.len()].copy_from_slice(frame);
        self.slots[i] = Slot {
            next_hop,
            len: frame.len(),
            used: true,
        };
        self.parked_count += 1;
        true
    }

    /// True when parked frames are ready to go out.
    #[inline]
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// True when [`NeighborCache::poll_request`] may have a request to send (cheap check).
    #[inline]
    pub fn has_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Copies the next frame whose neighbour resolved into `out` (destination MAC filled in) and
    /// returns its length.
    pub fn poll_ready(&mut self, out: &mut [u8]) -> Option<usize> {
        while let Some(i) = self.ready.pop_front() {
            let s = self.slots[i];
            if !s.used || out.len() < s.len {
                self.free_slot(i);
                continue;
            }
            let mac = match self.entries.get(&s.next_hop) {
                Some(e) if e.state != State::Incomplete => e.mac,
                _ => {
                    self.free_slot(i);
                    self.stats.pending_dropped += 1;
                    continue;
                }
            };
            out[..s.len].copy_from_slice(&self.bufs[i][..s.len]);
            out[0..6].copy_from_slice(&mac.0);
            self.free_slot(i);
            return Some(s.len);
        }
        None
    }

    fn release(&mut self, ip: Ipv4Addr, _mac: Mac) {
        if self.parked_count == 0 {
            return;
        }
        for (i, s) in self.slots.iter().enumerate() {
            if s.used && s.next_hop == ip && !self.ready.contains(&i) {
                self.ready.push_back(i);
            }
        }
    }

    fn free_slot(&mut self, i: usize) {
        if self.slots[i].used {
            self.slots[i].used = false;
            self.parked_count -= 1;
        }
    }

    fn drop_pending(&mut self, ip: Ipv4Addr) {
        for s in self.slots.iter_mut() {
            if s.used && s.next_hop == ip {
                s.used = false;
                self.parked_count -= 1;
                self.stats.pending_dropped += 1;
            }
        }
    }

    /// Packets parked, waiting for resolution or ready.
    pub fn parked(&self) -> usize {
        debug_assert_eq!(
            self.parked_count,
            self.slots.iter().filter(|s| s.used).count()
        );
        self.parked_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const MAC_A: Mac = Mac([2, 0, 0, 0, 0, 0xa]);
    const MAC_B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);

    fn cache() -> NeighborCache {
        NeighborCache::new(ArpConfig::default(), 0x1234_5678, 128)
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// The remembered next deadline always equals a scan of the entries, through requests,
    /// retries, answers, a give-up and other workers' news, for two addresses at once.
    #[test]
    fn poll_timeout_is_always_the_earliest_probe() {
        let mut c = cache();
        let exact = |c: &NeighborCache| {
            if !c.requests.is_empty() {
                return Some(Instant::ZERO);
            }
            c.entries.values().filter_map(|e| e.probe_at).min()
        };
        let mut seen = Vec::new();
        for ms in 0..4_000u64 {
            let now = t(ms);
            match ms {
                0 => assert_eq!(c.lookup(now, PEER), Lookup::Miss),
                3 => assert_eq!(c.lookup(now, GW), Lookup::Miss),
                1_401 => assert!(c.learn(now, GW, MAC_B, Learn::Reply)),
                1_500 => c.handle_event(now, NeighborEvent::Learned(PEER, MAC_A)),
                _ => {}
            }
            // Asked after every change (as a worker going idle would), so that a remembered
            // deadline must follow each one.
            assert_eq!(c.poll_timeout(), exact(&c), "at {ms} ms");
            if exact(&c).is_some_and(|w| w <= now) {
                c.handle_timeout(now);
                assert_eq!(c.poll_timeout(), exact(&c), "after the timers at {ms} ms");
            }
            while c.poll_request(now).is_some() {
                assert_eq!(c.poll_timeout(), exact(&c), "after a request at {ms} ms");
            }
            seen.push(c.poll_timeout());
        }
        // Both addresses were probed, then both resolved: no deadline is left.
        assert!(seen.iter().filter(|d| d.is_some()).count() > 900);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn miss_requests_then_reply_resolves_and_releases_parked() {
        let mut c = cache();
        assert_eq!(c.lookup(t(0), PEER), Lookup::Miss);
        assert_eq!(c.poll_request(t(0)), Some((PEER, Mac::BROADCAST)));
        assert_eq!(c.poll_request(t(0)), None);
        assert!(c.park(PEER, &[0u8; 60]));
        assert!(c.is_probing(PEER));
        assert!(c.learn(t(5), PEER, MAC_A, Learn::Reply));
        assert_eq!(c.lookup(t(6), PEER), Lookup::Hit(MAC_A));
        let mut out = [0xffu8; 128];
        assert_eq!(c.poll_ready(&mut out), Some(60));
        assert_eq!(&out[0..6], &MAC_A.0);
        assert_eq!(c.poll_ready(&mut out), None);
        assert_eq!(c.poll_event(), Some(NeighborEvent::Resolving(PEER)));
        assert_eq!(c.poll_event(), Some(NeighborEvent::Learned(PEER, MAC_A)));
        assert_eq!(c.parked(), 0);
    }

    #[test]
    fn retries_back_off_then_give_up_and_drop_parked() {
        let mut c = cache();
        c.lookup(t(0), PEER);
        assert!(c.park(PEER, &[0u8; 60]));
        let mut sent = vec![];
        let mut now = t(0);
        for _ in 0..200 {
            c.handle_timeout(now);
            while let Some((ip, _)) = c.poll_request(now) {
                assert_eq!(ip, PEER);
                sent.push(now.as_millis());
            }
            now += Duration::from_millis(50);
        }
        assert_eq!(
            sent,
            vec![0, 200, 600, 1400, 3000],
            "200 ms doubling, 5 probes"
        );
        assert_eq!(
            c.lookup(now, PEER),
            Lookup::Miss,
            "forgotten, so a new cycle starts"
        );
        assert_eq!(c.stats().failed, 1);
        assert_eq!(c.stats().pending_dropped, 1);
        assert_eq!(c.parked(), 0);
    }

    #[test]
    fn unsolicited_reply_neither_creates_nor_hijacks() {
        let mut c = cache();
        assert!(
            !c.learn(t(0), GW, MAC_A, Learn::Reply),
            "a reply we never asked for"
        );
        assert!(!c.learn(t(0), GW, MAC_A, Learn::Unsolicited));
        assert_eq!(c.len(), 0);
        c.lookup(t(0), GW);
        c.poll_request(t(0));
        assert!(c.learn(t(1), GW, MAC_A, Learn::Reply));
        assert!(!c.learn(t(1), GW, MAC_B, Learn::Reply), "first answer wins");
        // Forged packets claiming the gateway with another MAC are refused and trigger a probe.
        assert!(!c.learn(t(2), GW, MAC_B, Learn::Unsolicited));
        assert!(
            !c.learn(t(3), GW, MAC_B, Learn::RequestToUs),
            "a request may not flip an entry"
        );
        assert_eq!(c.lookup(t(4), GW), Lookup::Hit(MAC_A));
        assert_eq!(c.stats().hijack_refused, 3);
        assert_eq!(
            c.poll_request(t(4)),
            Some((GW, MAC_A)),
            "probe unicast to the known MAC"
        );
        // The genuine owner answers the probe: the entry is confirmed.
        assert!(c.learn(t(5), GW, MAC_A, Learn::Reply));
        assert!(!c.is_probing(GW));
        assert!(
            c.learn(t(6), GW, MAC_A, Learn::Unsolicited),
            "a repeat confirms"
        );
    }

    /// A forger who answers the probe that its own conflicting claim triggered does not win the
    /// race (the netns ARP flood test found this hijack); a real MAC change still goes through
    /// once the old MAC stops answering.
    #[test]
    fn probe_answered_by_a_forger_does_not_hijack() {
        let mut c = cache();
        c.lookup(t(0), GW);
        c.poll_request(t(0));
        assert!(c.learn(t(1), GW, MAC_A, Learn::Reply));
        assert!(!c.learn(t(2), GW, MAC_B, Learn::RequestToUs));
        assert_eq!(c.poll_request(t(2)), Some((GW, MAC_A)), "conflict probe");
        assert!(c.is_probing(GW));
        assert!(
            !c.learn(t(3), GW, MAC_B, Learn::Reply),
            "the forger answers the probe first"
        );
        assert_eq!(c.lookup(t(4), GW), Lookup::Hit(MAC_A));
        assert!(c.learn(t(5), GW, MAC_A, Learn::Reply), "the owner confirms");
        assert_eq!(c.lookup(t(6), GW), Lookup::Hit(MAC_A));
        // The owner moved to MAC_B: the probes to MAC_A go unanswered, the entry is forgotten,
        // and the next resolution takes the new MAC.
        assert!(!c.learn(t(7), GW, MAC_B, Learn::RequestToUs));
        let mut now = t(7);
        for _ in 0..200 {
            c.handle_timeout(now);
            while c.poll_request(now).is_some() {}
            now += Duration::from_millis(50);
        }
        assert_eq!(c.lookup(now, GW), Lookup::Miss, "forgotten");
        c.poll_request(now);
        assert!(c.learn(now, GW, MAC_B, Learn::Reply));
        assert_eq!(c.lookup(now, GW), Lookup::Hit(MAC_B));
    }

    #[test]
    fn stale_entries_refresh_and_expire() {
        let mut c = cache();
        assert!(c.learn(t(0), PEER, MAC_A, Learn::RequestToUs));
        assert_eq!(c.lookup(t(29_999), PEER), Lookup::Hit(MAC_A));
        assert_eq!(c.poll_request(t(29_999)), None);
        assert_eq!(
            c.lookup(t(30_000), PEER),
            Lookup::Hit(MAC_A),
            "stale is still usable"
        );
        assert_eq!(
            c.poll_request(t(30_000)),
            Some((PEER, MAC_A)),
            "refresh is unicast"
        );
        assert!(c.learn(t(30_001), PEER, MAC_A, Learn::Reply));
        assert_eq!(c.lookup(t(30_002), PEER), Lookup::Hit(MAC_A));
        // No answers to refreshes: forgotten after max_probes.
        let mut now = t(60_002);
        c.lookup(now, PEER);
        for _ in 0..200 {
            c.handle_timeout(now);
            while c.poll_request(now).is_some() {}
            now += Duration::from_millis(100);
        }
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_cache_and_queues() {
        let cfg = ArpConfig {
            max_entries: 4,
            pending_per_neighbor: 2,
            pending_total: 3,
            ..Default::default()
        };
        let mut c = NeighborCache::new(cfg, 7, 64);
        for i in 0..4 {
            assert_eq!(c.lookup(t(0), Ipv4Addr::new(198, 18, 1, i)), Lookup::Miss);
        }
        assert_eq!(
            c.lookup(t(0), Ipv4Addr::new(198, 18, 1, 9)),
            Lookup::Unreachable
        );
        assert_eq!(c.stats().cache_full, 1);
        let a = Ipv4Addr::new(198, 18, 1, 0);
        let b = Ipv4Addr::new(198, 18, 1, 1);
        assert!(c.park(a, &[1; 10]));
        assert!(c.park(a, &[2; 10]));
        assert!(!c.park(a, &[3; 10]), "per-neighbour limit");
        assert!(c.park(b, &[4; 10]));
        assert!(!c.park(b, &[5; 10]), "total limit");
        assert!(!c.park(b, &[0; 100]), "oversized frame refused");
        assert_eq!(c.stats().pending_dropped, 3);
    }

    #[test]
    fn shared_learning_releases_parked_frames() {
        let mut c = cache();
        c.lookup(t(0), GW);
        assert!(c.park(GW, &[9u8; 42]));
        c.handle_event(t(1), NeighborEvent::Learned(GW, MAC_B));
        let mut out = [0u8; 64];
        assert_eq!(c.poll_ready(&mut out), Some(42));
        assert_eq!(&out[..6], &MAC_B.0);
        assert_eq!(c.poll_event(), Some(NeighborEvent::Resolving(GW)));
        assert_eq!(c.poll_event(), None, "shared entries are not re-broadcast");
    }

    #[test]
    fn reply_on_another_worker_resolves_everywhere() {
        let mut asker = cache();
        let mut other = cache();
        asker.lookup(t(0), GW);
        assert!(asker.park(GW, &[7u8; 42]));
        assert!(
            !other.learn(t(1), GW, MAC_A, Learn::Reply),
            "nobody told it: unsolicited"
        );
        while let Some(ev) = asker.poll_event() {
            other.handle_event(t(1), ev);
        }
        assert!(
            other.learn(t(2), GW, MAC_A, Learn::Reply),
            "solicited by the other worker"
        );
        assert!(
            !other.learn(t(2), GW, MAC_B, Learn::Reply),
            "first answer wins"
        );
        while let Some(ev) = other.poll_event() {
            asker.handle_event(t(3), ev);
        }
        assert_eq!(asker.lookup(t(3), GW), Lookup::Hit(MAC_A));
        let mut out = [0u8; 64];
        assert_eq!(asker.poll_ready(&mut out), Some(42));
        // A later forged reply on the other worker is refused.
        assert!(!other.learn(t(4), GW, MAC_B, Learn::Reply));
        assert_eq!(other.lookup(t(4), GW), Lookup::Hit(MAC_A));
    }

    /// Entries that hosts made by asking for us (RFC 826 merge), never used by us since, are
    /// forgotten once as old as an unused stale entry (reachable + stale lifetime), so they
    /// cannot fill the cache for good and lock the gateway out. (They stayed for ever: only a
    /// lookup turned a reachable entry stale.)
    #[test]
    fn unused_reachable_entries_expire_and_free_the_cache() {
        let cfg = ArpConfig {
            max_entries: 4,
            ..Default::default()
        };
        let mut c = NeighborCache::new(cfg, 7, 64);
        for i in 1..=4 {
            assert!(c.learn(
                t(0),
                Ipv4Addr::new(198, 18, 0, i),
                MAC_A,
                Learn::RequestToUs
            ));
        }
        assert_eq!(
            c.lookup(t(1), GW),
            Lookup::Unreachable,
            "full of fresh entries"
        );
        // 30 s reachable + 120 s stale.
        c.handle_timeout(t(149_999));
        assert_eq!(c.len(), 4);
        c.handle_timeout(t(150_000));
        assert!(c.is_empty());
        assert_eq!(c.lookup(t(150_001), GW), Lookup::Miss);
    }

    /// A full cache whose entries are past their reachable time but not yet expired (and whose
    /// timers have not run) still makes room for a new address: one of them is evicted; fresh
    /// and incomplete entries never are.
    #[test]
    fn a_full_cache_evicts_an_entry_past_its_reachable_time() {
        let cfg = ArpConfig {
            max_entries: 3,
            ..Default::default()
        };
        let mut c = NeighborCache::new(cfg, 7, 64);
        let old = Ipv4Addr::new(198, 18, 0, 7);
        assert!(c.learn(t(0), old, MAC_A, Learn::RequestToUs));
        assert_eq!(
            c.lookup(t(20_000), Ipv4Addr::new(198, 18, 0, 8)),
            Lookup::Miss
        );
        assert!(c.learn(
            t(20_000),
            Ipv4Addr::new(198, 18, 0, 9),
            MAC_B,
            Learn::RequestToUs
        ));
        // At 31 s: `old` is past its reachable time, .8 is being resolved, .9 is fresh.
        assert_eq!(c.lookup(t(31_000), GW), Lookup::Miss);
        assert_eq!(c.len(), 3);
        assert!(!c.entries.contains_key(&old));
        // Now nothing is evictable.
        assert_eq!(
            c.lookup(t(31_001), Ipv4Addr::new(198, 18, 0, 10)),
            Lookup::Unreachable
        );
    }
}
