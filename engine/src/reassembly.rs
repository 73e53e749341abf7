//! IPv4 reassembly (RFC 791 §3.2, RFC 815): fragments of a datagram addressed to us are
//! collected per (source, destination, protocol, identification) until the datagram is whole,
//! then handed back to the stack as if it had arrived in one piece.
//!
//! Everything is bounded and configurable ([`ReassemblyConfig`]): datagrams in progress, payload
//! bytes held over all of them, fragments per datagram, and the time a datagram may take. A
//! fragment that overlaps data already received (other than an exact duplicate, which is
//! ignored) discards the whole datagram, as Linux does since the FragmentSmack fixes and as
//! RFC 5722 requires for IPv6: overlapping fragments are how firewall evasion and the teardrop
//! attack work, and no legitimate sender produces them. A datagram that is not complete in time
//! is dropped; the stack then sends ICMP time exceeded (fragment reassembly, code 1) when the
//! first fragment had arrived (RFC 792, RFC 1122 §3.3.2).
//!
//! Buffers stay with their slots once grown, so a worker that reassembles now and then stops
//! allocating after its first datagrams; fragments are not on the fast path (TCP avoids them with
//! its MSS and DF). The room they keep counts against the same byte budget: a slot that needs
//! more takes it from the buffers idle slots keep, so what the slots hold in all never passes
//! `max_bytes`, however fragments cycle through them.

use crate::time::Instant;
use core::net::Ipv4Addr;
use serde::Deserialize;

/// Most fragments one datagram may arrive in (each a received range to track).
pub const MAX_FRAGMENTS: usize = 64;
/// Largest IPv4 payload: a 65,535-byte datagram less the smallest header.
pub const MAX_PAYLOAD: usize = 65_535 - 20;
/// Bytes of the first fragment kept for an ICMP time exceeded: its IPv4 header (at most 60)
/// and the first 8 bytes of its payload.
pub const HEAD: usize = 68;

/// Limits of the reassembly (`[reassembly]` in the configuration).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ReassemblyConfig {
    /// Datagrams in progress at once per worker (0: no reassembly, every fragment is dropped
    /// and counted `ipv4_fragment`).
    pub max_datagrams: usize,
    /// Payload bytes held over all datagrams in progress per worker.
    pub max_bytes: usize,
    /// Milliseconds a datagram may take to arrive whole (RFC 791 suggests 15 s; Linux uses 30).
    pub timeout_ms: u64,
    /// Replies too large for one frame (echo replies to reassembled pings) queued for sending
    /// in fragments at once per worker; beyond, a request is dropped and counted
    /// `ipv4_frag_reply_busy`. Each holds up to 64 KiB, allocated once and reused.
    pub max_replies: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            max_datagrams: 64,
            max_bytes: 1 << 20,
            timeout_ms: 30_000,
            max_replies: 4,
        }
    }
}

/// Which datagram a fragment belongs to (RFC 791: source, destination, protocol, identification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: u8,
    /// Identification.
    pub ident: u16,
}

/// Why a fragment was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragDrop {
    /// A fragment that is not the last has a length that is not a multiple of 8, or the
    /// fragment is empty, or it reaches beyond 65,535 bytes or beyond the end a last fragment
    /// set (the datagram is discarded when it was in progress).
    Malformed,
    /// It overlaps data of the datagram received before: the datagram is discarded.
    Overlap,
    /// An exact copy of a fragment already held: ignored, the datagram goes on.
    Duplicate,
    /// No room for a datagram at all (`max_datagrams = 0`); with room, a full table evicts
    /// its oldest datagram instead ([`ReassemblyStats::evicted`]).
    TableFull,
    /// The payload bytes held would exceed the budget, or the datagram would need more than
    /// [`MAX_FRAGMENTS`] pieces: the datagram is discarded.
    Memory,
}

/// Counters of the reassembly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Fragments taken into a datagram.
    pub fragments: u64,
    /// Datagrams completed.
    pub reassembled: u64,
    /// Datagrams dropped because they were not complete in time.
    pub timeouts: u64,
    /// Datagrams discarded for an overlapping, malformed or over-budget fragment.
    pub discarded: u64,
    /// Datagrams in progress dropped, the oldest first, to make room for a new one while
    /// `max_datagrams` were in progress.
    pub evicted: u64,
}

#[derive(Debug)]
struct Slot {
    key: Option<FragKey>,
    data: Vec<u8>,
    /// Received ranges of the payload, sorted, disjoint, not merged (one per fragment).
    ranges: Vec<(u32, u32)>,
    /// Payload length, once the last fragment has arrived.
    total: Option<u32>,
    deadline: Instant,
    head: [u8; HEAD],
    head_len: usize,
    /// The first fragment's IPv4 header length (0 until it has come).
    header_len: usize,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            key: None,
            data: Vec::new(),
            ranges: Vec::new(),
            total: None,
            deadline: Instant::MAX,
            head: [0; HEAD],
            head_len: 0,
            header_len: 0,
        }
    }

    fn received(&self) -> u32 {
        self.ranges.iter().map(|&(a, b)| b - a).sum()
    }
}

/// A datagram that was not complete in time and whose first fragment had arrived: what an ICMP
/// time exceeded quotes.
#[derive(Clone, Copy, Debug)]
pub struct Expired {
    /// The first fragment's IPv4 header and the first 8 bytes of its payload.
    pub head: [u8; HEAD],
    /// Bytes of `head` in use.
    pub head_len: usize,
    /// Its source (where the ICMP message goes) and destination (our address).
    pub key: FragKey,
}

/// The reassembly of one worker.
#[derive(Debug)]
pub struct Reassembler {
    cfg: ReassemblyConfig,
    slots: Vec<Slot>,
    held: usize,
    /// The room the slots' buffers keep, in progress or idle (lent ones included): at most
    /// `max_bytes`.
    reserved: usize,
    active: usize,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler with `cfg` (its slots are made now; their buffers grow on first use).
    pub fn new(cfg: ReassemblyConfig) -> Self {
        let slots = (0..cfg.max_datagrams).map(|_| Slot::empty()).collect();
        Reassembler {
            cfg,
            slots,
            held: 0,
            reserved: 0,
            active: 0,
            stats: ReassemblyStats::default(),
        }
    }

    /// True when fragments are reassembled (`max_datagrams` > 0).
    pub fn enabled(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Datagrams in progress.
    pub fn in_progress(&self) -> usize {
        self.active
    }

    /// Payload bytes held.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The room the slots' buffers keep (at most `max_bytes`).
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// Makes slot `i`'s buffer at least `end` bytes long, within the budget: doubling when it
    /// can, exactly when it must, taking idle slots' room back first. False when even that
    /// does not fit.
    fn grow(&mut self, i: usize, end: usize) -> bool {
        let cap = self.slots[i].data.capacity();
        if end > cap {
            let budget = self.cfg.max_bytes;
            // Doubling up to a slot's share of the budget, a quarter more at a time beyond it
            // (large datagrams are rare; their slack stays small).
            let share = self.share();
            let step = if end <= share {
                cap.saturating_mul(2).min(share)
            } else {
                cap + cap / 4
            };
            let want = end.max(step).min(MAX_PAYLOAD + 60);
            let mut room = budget.saturating_sub(self.reserved - cap);
            if room < end {
                for (k, idle) in self.slots.iter_mut().enumerate() {
                    if k != i && idle.key.is_none() && idle.data.capacity() > 0 {
                        self.reserved -= idle.data.capacity();
                        idle.data = Vec::new();
                        room = budget.saturating_sub(self.reserved - cap);
                        if room >= end {
                            break;
                        }
                    }
                }
            }
            if room < end {
                return false;
            }
            let s = &mut self.slots[i];
            let len = s.data.len();
            s.data.reserve_exact(want.min(room) - len);
            self.reserved = self.reserved - cap + s.data.capacity();
        }
        let s = &mut self.slots[i];
        if end > s.data.len() {
            s.data.resize(end, 0);
        }
        true
    }

    fn find(&self, key: &FragKey) -> Option<usize> {
        if self.active == 0 {
            return None;
        }
        self.slots.iter().position(|s| s.key.as_ref() == Some(key))
    }

    /// A slot's share of the byte budget: the most room an idle slot keeps.
    fn share(&self) -> usize {
        self.cfg.max_bytes / self.slots.len().max(1)
    }

    fn free(&mut self, i: usize) {
        let share = self.share();
        let s = &mut self.slots[i];
        if s.key.take().is_some() {
            self.active -= 1;
        }
        self.held -= s.data.len();
        if s.data.capacity() > share {
            // More than its share: the room goes back to the budget.
            self.reserved -= s.data.capacity();
            s.data = Vec::new();
        }
        s.data.clear();
        s.ranges.clear();
        s.total = None;
        s.deadline = Instant::MAX;
        s.head_len = 0;
        s.header_len = 0;
    }

    fn discard(&mut self, i: usize, why: FragDrop) -> FragDrop {
        self.free(i);
        self.stats.discarded += 1;
        why
    }

    /// Takes a fragment: `offset` in bytes, `more` the MF flag, `payload` its data, `header` its
    /// IPv4 header (kept from the first fragment for an ICMP time exceeded). `Ok(Some(slot))`:
    /// the datagram is whole; read it with [`Reassembler::take`] and hand the buffer back with
    /// [`Reassembler::give_back`]. `Ok(None)`: held, waiting for the rest.
    pub fn handle(
        &mut self,
        now: Instant,
        key: FragKey,
        offset: usize,
        more: bool,
        payload: &[u8],
        header: &[u8],
    ) -> Result<Option<usize>, FragDrop> {
        let start = offset;
        let end = offset + payload.len();
        let found = self.find(&key);
        if payload.is_empty() || end > MAX_PAYLOAD || (more && !payload.len().is_multiple_of(8)) {
            return Err(match found {
                Some(i) => self.discard(i, FragDrop::Malformed),
                None => FragDrop::Malformed,
            });
        }
        let i = match found {
            Some(i) => i,
            None => {
                let i = match self.slots.iter().position(|s| s.key.is_none()) {
                    Some(i) => i,
                    None => {
                        // Full: the oldest datagram in progress makes room (as Linux evicts).
                        // A sender that fills the table with first fragments that never
                        // complete then has to keep all of it busy at the rate real datagrams
                        // complete, not once per timeout.
                        let oldest = (0..self.slots.len()).min_by_key(|&k| self.slots[k].deadline);
                        let Some(i) = oldest else {
                            return Err(FragDrop::TableFull);
                        };
                        self.free(i);
                        self.stats.evicted += 1;
                        i
                    }
                };
                let s = &mut self.slots[i];
                s.key = Some(key);
                s.deadline = now.add_millis(self.cfg.timeout_ms);
                self.active += 1;
                i
            }
        };
        let (start, end) = (start as u32, end as u32);
        let s = &self.slots[i];
        // Against the end a last fragment set, and the end this one would set.
        let beyond = s.total.is_some_and(|t| end > t)
            || (!more && (s.total.is_some_and(|t| t != end) || s.ranges.iter().any(|r| r.1 > end)));
        if beyond {
            return Err(self.discard(i, FragDrop::Malformed));
        }
        let pos = s.ranges.partition_point(|r| r.0 < start);
        if s.ranges.get(pos) == Some(&(start, end)) {
            return Err(FragDrop::Duplicate);
        }
        // The whole datagram, header included, must fit IPv4's 65,535 bytes (a first fragment
        // with options leaves less room for the payload than MAX_PAYLOAD).
        let header_len = if start == 0 {
            header.len()
        } else {
            s.header_len
        }
        .max(20);
        let top = s.ranges.last().map_or(end, |r| r.1.max(end));
        if top as usize + header_len > 65_535 {
            return Err(self.discard(i, FragDrop::Malformed));
        }
        let overlaps_prev = pos > 0 && s.ranges[pos - 1].1 > start;
        let overlaps_next = s.ranges.get(pos).is_some_and(|r| r.0 < end);
        if overlaps_prev || overlaps_next {
            return Err(self.discard(i, FragDrop::Overlap));
        }
        let grow = (end as usize).saturating_sub(s.data.len());
        if s.ranges.len() >= MAX_FRAGMENTS
            || self.held + grow > self.cfg.max_bytes
            || !self.grow(i, end as usize)
        {
            return Err(self.discard(i, FragDrop::Memory));
        }
        let s = &mut self.slots[i];
        self.held += grow;
        s.data[start as usize..end as usize].copy_from_slice(payload);
        s.ranges.insert(pos, (start, end));
        if !more {
            s.total = Some(end);
        }
        if start == 0 {
            s.header_len = header.len();
            let n = header.len().min(60);
            s.head[..n].copy_from_slice(&header[..n]);
            let m = payload.len().min(8).min(HEAD - n);
            s.head[n..n + m].copy_from_slice(&payload[..m]);
            s.head_len = n + m;
        }
        self.stats.fragments += 1;
        let whole = s.total.is_some_and(|t| s.received() == t);
        if whole {
            self.stats.reassembled += 1;
            return Ok(Some(i));
        }
        Ok(None)
    }

    /// The whole datagram of `slot`, moved out: its key, its first fragment's IPv4 header and
    /// first 8 payload bytes (`head[..head_len]`, what an ICMP error quotes), and its payload.
    /// Hand the buffer back with [`Reassembler::give_back`], which frees the slot.
    pub fn take(&mut self, slot: usize) -> (FragKey, [u8; HEAD], usize, Vec<u8>) {
        let s = &mut self.slots[slot];
        let key = s.key.expect("a complete datagram's slot");
        // Lent: off the room count until it comes back.
        self.reserved -= s.data.capacity();
        (key, s.head, s.head_len, core::mem::take(&mut s.data))
    }

    /// Returns the buffer [`Reassembler::take`] lent and frees the slot (the buffer's
    /// capacity stays with it).
    pub fn give_back(&mut self, slot: usize, mut buf: Vec<u8>) {
        let held = buf.len();
        buf.clear();
        let s = &mut self.slots[slot];
        self.reserved += buf.capacity();
        s.data = buf;
        // `free` takes the slot's (now empty) data off `held`: take the lent bytes off here.
        self.held -= held;
        self.free(slot);
    }

    /// When [`Reassembler::handle_timeout`] should next run (`None`: nothing in progress).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.active == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.key.is_some())
            .map(|s| s.deadline)
            .min()
    }

    /// Drops the datagrams whose time is up; `expired` gets each one whose first fragment had
    /// arrived (for an ICMP time exceeded).
    pub fn handle_timeout(&mut self, now: Instant, mut expired: impl FnMut(Expired)) {
        if self.active == 0 {
            return;
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let Some(key) = s.key else { continue };
            if s.deadline > now {
                continue;
            }
            if s.head_len > 0 {
                expired(Expired {
                    head: s.head,
                    head_len: s.head_len,
                    key,
                });
            }
            self.stats.timeouts += 1;
            self.free(i);
        }
    }
}

#[cfg(test)]
mod tests;
