//! Zero allocations in steady state: a counting global allocator proves that, once warm, the
//! whole stack (`Stack` + `MemDevice`, apps included) serves 100,000 packets of each kind without
//! a single heap allocation.
//!
//! Counting is per thread and on only around the measured region, so the test harness's other
//! threads do not interfere. Set `HS_ALLOC_BACKTRACE=1` to print a backtrace of the first
//! allocation in a measured region (the fastest way to find what allocates).
//!
//! The client side runs on the same thread, so it allocates nothing either: its segments are
//! templates built during warm-up and patched in place (sequence and acknowledgment numbers,
//! incremental checksum update). It cannot read what the server sends without allocating
//! (`MemDevice::take` returns a `Vec`), so it predicts the server's sequence numbers from what it
//! saw during warm-up and discards the server's frames, counting them; after the measured region
//! the counters (bytes echoed, responses, retransmissions, out-of-window drops) and one more
//! inspected round prove the predictions held.

use etherparse::PacketBuilder;
use handshake::device::mem::MemDevice;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::wire::checksum;
use handshake::wire::Mac;
use handshake::Instant;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// ---- the counting allocator ---------------------------------------------------------------------

thread_local! {
    /// Counting is on for this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Print a backtrace at the first counted allocation (read from the environment before counting
/// starts: reading it inside the allocator would allocate).
static BACKTRACE: AtomicBool = AtomicBool::new(false);

struct Counting;

impl Counting {
    fn note(&self) {
        // `try_with`: during thread teardown the thread-locals may be gone; nothing to count then.
        let active = ACTIVE.try_with(Cell::get).unwrap_or(false);
        if !active {
            return;
        }
        let n = COUNT.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        if n == 1 && BACKTRACE.load(Ordering::Relaxed) {
            // Capturing and printing allocate: stop counting meanwhile.
            ACTIVE.with(|a| a.set(false));
            eprintln!(
                "first allocation in the measured region:\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            ACTIVE.with(|a| a.set(true));
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees are ours; the bookkeeping touches only const-initialised thread-locals (which never
// allocate) and an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as ours (non-zero-size layout, guaranteed by our caller).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`, per our caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`, per our caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with counting on; returns the allocations it made on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    BACKTRACE.store(
        std::env::var_os("HS_ALLOC_BACKTRACE").is_some(),
        Ordering::Relaxed,
    );
    COUNT.with(|c| c.set(0));
    ACTIVE.with(|a| a.set(true));
    let r = f();
    ACTIVE.with(|a| a.set(false));
    (COUNT.with(Cell::get), r)
}

/// The counter counts: one `Box` in the region is one allocation (a test that cannot fail is no
/// test).
#[test]
fn the_counter_counts() {
    let (n, b) = allocations(|| std::hint::black_box(Box::new(7u64)));
    assert_eq!(*b, 7);
    assert_eq!(n, 1);
    let (n, _) = allocations(|| std::hint::black_box(vec![0u8; 10]).len());
    assert_eq!(n, 1);
    let (n, _) = allocations(|| std::hint::black_box(1 + 1));
    assert_eq!(n, 0);
}

// ---- the setting --------------------------------------------------------------------------------

const OUR_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
const PEER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);
const US: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];
const PACKETS: u64 = 100_000;
const BATCH: usize = 64;
const ECHO: u16 = 7;
const HTTP: u16 = 80;

fn stack() -> Stack {
    let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
    let mut cfg = StackConfig::new(OUR_MAC, routes);
    cfg.gratuitous_arp = false;
    cfg.apps.echo = Some(ECHO);
    cfg.apps.http = Some(HTTP);
    Stack::new(cfg)
}

/// One batch as the daemon's worker runs it: the batch, then the neighbour events it shares.
fn batch(st: &mut Stack, dev: &mut MemDevice, now: Instant) {
    run_batch(st, dev, now);
    while st.poll_neighbor_event().is_some() {}
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER_MAC.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC.0);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&US);
    f.resize(60, 0);
    f
}

fn ping(seq: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
        .ipv4(PEER, US, 64)
        .icmpv4_echo_request(0x4242, seq)
        .write(&mut f, &[0x5a; 56])
        .unwrap();
    f
}

/// Feeds `frames` (all of them, in batches of 64) and counts the replies.
fn replies(st: &mut Stack, dev: &mut MemDevice, now: &mut Instant, frame: &[u8], n: u64) -> u64 {
    let mut sent = 0;
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH as u64);
        for _ in 0..k {
            dev.inject(frame);
        }
        batch(st, dev, *now);
        sent += dev.discard_tx() as u64;
        left -= k;
        *now += Duration::from_millis(1);
    }
    sent
}

#[test]
fn arp_replies_allocate_nothing() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let req = arp_request();
    assert_eq!(replies(&mut st, &mut dev, &mut now, &req, 1000), 1000);
    let (allocs, sent) = allocations(|| replies(&mut st, &mut dev, &mut now, &req, PACKETS));
    assert_eq!(sent, PACKETS, "every request answered");
    assert_eq!(st.stats().arp_replies, PACKETS + 1000);
    assert_eq!(
        allocs, 0,
        "allocations while answering {PACKETS} ARP requests"
    );
    assert!(dev.conserved());
}

#[test]
fn icmp_echo_replies_allocate_nothing() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let req = ping(1);
    assert_eq!(replies(&mut st, &mut dev, &mut now, &req, 1000), 1000);
    let (allocs, sent) = allocations(|| replies(&mut st, &mut dev, &mut now, &req, PACKETS));
    assert_eq!(sent, PACKETS, "every echo request answered");
    assert_eq!(st.stats().icmp_echo_replies, PACKETS + 1000);
    assert_eq!(allocs, 0, "allocations while answering {PACKETS} pings");
    assert!(dev.conserved());
}

// ---- TCP ---------------------------------------------------------------------------------------

const TCP_AT: usize = 14 + 20;

/// A client segment whose sequence and acknowledgment numbers are patched in place.
struct Segment {
    frame: Vec<u8>,
    seq: u32,
    ack: u32,
}

impl Segment {
    fn new(sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Self {
        let mut b = PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
            .ipv4(PEER, US, 64)
            .tcp(sport, dport, 0, 65535);
        b = if syn {
            b.syn()
                .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
                .unwrap()
        } else {
            b.ack(0).psh()
        };
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        Segment {
            frame,
            seq: 0,
            ack: 0,
        }
    }

    /// The frame with `seq` and `ack`; the checksum follows incrementally (RFC 1624).
    fn at(&mut self, seq: u32, ack: u32) -> &[u8] {
        let f = &mut self.frame;
        let mut c = u16::from_be_bytes([f[TCP_AT + 16], f[TCP_AT + 17]]);
        c = checksum::update32(c, self.seq, seq);
        c = checksum::update32(c, self.ack, ack);
        f[TCP_AT + 4..TCP_AT + 8].copy_from_slice(&seq.to_be_bytes());
        f[TCP_AT + 8..TCP_AT + 12].copy_from_slice(&ack.to_be_bytes());
        f[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&c.to_be_bytes());
        self.seq = seq;
        self.ack = ack;
        &self.frame
    }
}

/// A server segment, as the client sees it (only outside measured regions: it allocates).
#[derive(Debug)]
struct Seen {
    port: u16,
    seq: u32,
    ack: u32,
    syn: bool,
    len: usize,
}

fn seen(frame: &[u8]) -> Seen {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP: {frame:02x?}")
    };
    assert!(!t.rst(), "unexpected RST");
    Seen {
        port: t.destination_port(),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        syn: t.syn(),
        len: t.payload().len(),
    }
}

/// `BATCH` client connections to `port`, each sending `request` per round and expecting the
/// server's answer (learned during warm-up) before the next.
struct Clients {
    seg: Vec<Segment>,
    /// Per connection: our next sequence number, the server's.
    ours: Vec<u32>,
    theirs: Vec<u32>,
    request_len: u32,
    /// Bytes and segments the server answers each request with.
    answer_len: u32,
    answer_segments: usize,
}

impl Clients {
    /// Opens the connections and runs `warm` rounds, inspecting every server segment.
    fn open(
        st: &mut Stack,
        dev: &mut MemDevice,
        now: &mut Instant,
        port: u16,
        request: &[u8],
        warm: usize,
    ) -> Self {
        // The server learns our MAC the way it would on a link: from our ARP request.
        dev.inject(&arp_request());
        batch(st, dev, *now);
        assert_eq!(dev.take_all().len(), 1, "ARP reply");
        let mut c = Clients {
            seg: Vec::new(),
            ours: Vec::new(),
            theirs: vec![0; BATCH],
            request_len: request.len() as u32,
            answer_len: 0,
            answer_segments: 0,
        };
        for i in 0..BATCH {
            let sport = 40000 + i as u16;
            let isn = 0x0100_0000u32.wrapping_mul(i as u32 + 1);
            let mut syn = Segment::new(sport, port, true, &[]);
            dev.inject(syn.at(isn, 0));
            c.seg.push(Segment::new(sport, port, false, request));
            c.ours.push(isn.wrapping_add(1));
        }
        batch(st, dev, *now);
        for f in dev.take_all() {
            let s = seen(&f);
            assert!(s.syn, "SYN-ACK expected: {s:?}");
            c.theirs[(s.port - 40000) as usize] = s.seq.wrapping_add(1);
        }
        assert!(
            c.theirs.iter().all(|&t| t != 0),
            "every connection got its SYN-ACK"
        );
        for _ in 0..warm {
            c.round_inspected(st, dev, now);
        }
        c
    }

    fn send_all(&mut self, dev: &mut MemDevice) {
        for i in 0..BATCH {
            dev.inject(self.seg[i].at(self.ours[i], self.theirs[i]));
            self.ours[i] = self.ours[i].wrapping_add(self.request_len);
        }
    }

    /// One round, reading every server segment (allocates: warm-up and final check only).
    fn round_inspected(&mut self, st: &mut Stack, dev: &mut MemDevice, now: &mut Instant) {
        self.send_all(dev);
        batch(st, dev, *now);
        *now += Duration::from_micros(100);
        let mut bytes = vec![0u32; BATCH];
        let mut segs = vec![0usize; BATCH];
        for f in dev.take_all() {
            let s = seen(&f);
            let i = (s.port - 40000) as usize;
            assert_eq!(
                s.seq,
                self.theirs[i].wrapping_add(bytes[i]),
                "in order: {s:?}"
            );
            assert_eq!(s.ack, self.ours[i], "our request acknowledged: {s:?}");
            bytes[i] += s.len as u32;
            segs[i] += 1;
        }
        for i in 0..BATCH {
            assert!(bytes[i] > 0, "connection {i} answered");
            assert_eq!(bytes[i], bytes[0], "same answer on every connection");
            assert_eq!(segs[i], segs[0]);
            self.theirs[i] = self.theirs[i].wrapping_add(bytes[i]);
        }
        self.answer_len = bytes[0];
        self.answer_segments = segs[0];
    }

    /// One round, predicting the server's sequence numbers and only counting its segments
    /// (allocation-free). Returns the packets that crossed (in + out).
    fn round(&mut self, st: &mut Stack, dev: &mut MemDevice, now: &mut Instant) -> u64 {
        self.send_all(dev);
        batch(st, dev, *now);
        *now += Duration::from_micros(100);
        let out = dev.discard_tx();
        assert_eq!(out, BATCH * self.answer_segments, "every request answered");
        for t in self.theirs.iter_mut() {
            *t = t.wrapping_add(self.answer_len);
        }
        (BATCH + out) as u64
    }

    /// Rounds until `PACKETS` packets crossed. Returns the rounds run.
    fn run(&mut self, st: &mut Stack, dev: &mut MemDevice, now: &mut Instant) -> u64 {
        let (mut packets, mut rounds) = (0, 0);
        while packets < PACKETS {
            packets += self.round(st, dev, now);
            rounds += 1;
        }
        rounds
    }
}

/// 64 echo connections exchanging 1 KB messages: 100,000 packets, no allocation.
#[test]
fn established_echo_flows_allocate_nothing() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let msg: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    let mut c = Clients::open(&mut st, &mut dev, &mut now, ECHO, &msg, 20);
    assert_eq!(c.answer_len, 1024, "echoed whole");
    let echoed = st.apps().stats().echo_bytes;
    let (allocs, rounds) = allocations(|| c.run(&mut st, &mut dev, &mut now));
    // The predictions held: the server echoed everything, in order, without retransmitting.
    c.round_inspected(&mut st, &mut dev, &mut now);
    let tcp = st.tcp().stats();
    assert_eq!(
        st.apps().stats().echo_bytes - echoed,
        (rounds + 1) * BATCH as u64 * 1024
    );
    assert_eq!(tcp.retransmits, 0);
    assert_eq!(tcp.drops_out_of_window, 0);
    assert_eq!(st.stats().total_drops(), 0, "{:?}", st.stats());
    assert_eq!(
        allocs,
        0,
        "allocations over {rounds} rounds of 64 × 1 KB echo ({} packets)",
        rounds * 128
    );
    assert!(dev.conserved());
}

/// 64 keep-alive HTTP connections each asking `GET /` again and again: 100,000 packets, no
/// allocation.
#[test]
fn keep_alive_http_allocates_nothing() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let req = b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n";
    let mut c = Clients::open(&mut st, &mut dev, &mut now, HTTP, req, 20);
    let ok = st.apps().stats().http.status[0];
    let (allocs, rounds) = allocations(|| c.run(&mut st, &mut dev, &mut now));
    c.round_inspected(&mut st, &mut dev, &mut now);
    let tcp = st.tcp().stats();
    assert_eq!(
        st.apps().stats().http.status[0] - ok,
        (rounds + 1) * BATCH as u64,
        "every request got its 200"
    );
    assert_eq!(tcp.retransmits, 0);
    assert_eq!(tcp.drops_out_of_window, 0);
    assert_eq!(st.stats().total_drops(), 0, "{:?}", st.stats());
    assert_eq!(
        allocs, 0,
        "allocations over {rounds} rounds of 64 keep-alive requests"
    );
    assert!(dev.conserved());
}

// ---- capture ------------------------------------------------------------------------------------

/// With `--pcap` on, every frame (in and out) is copied into a preallocated capture buffer and
/// handed to the writer thread without an allocation on the worker: 100,000 pings through a
/// capture tap, all answered, every frame captured or counted as dropped (ring full), and the
/// writer wrote exactly what was captured.
#[test]
fn captured_pings_allocate_nothing() {
    use handshake::capture::{filter::Filter, Capture, Settings, Tap};
    let dir = std::env::temp_dir().join(format!("hs-alloc-cap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cap, mut rings) = Capture::start(Settings {
        path: dir.join("a.pcapng"),
        filter: Filter::parse("icmp or arp").unwrap(),
        max_bytes: 0,
        files: 1,
        ring: 1024,
        snaplen: 1518,
        ifaces: vec!["mem q0".into()],
        start_on: true,
    })
    .unwrap();
    let mut st = stack();
    let mut dev = Tap::new(MemDevice::new(2048), rings.pop(), cap.switch());
    let mut now = Instant::from_secs(1);
    let req = ping(1);
    let mut run = |dev: &mut Tap<MemDevice>, n: u64| {
        let mut sent = 0;
        let mut left = n;
        while left > 0 {
            let k = left.min(BATCH as u64);
            for _ in 0..k {
                dev.inner_mut().inject(&req);
            }
            run_batch(&mut st, dev, now);
            while st.poll_neighbor_event().is_some() {}
            sent += dev.inner_mut().discard_tx() as u64;
            left -= k;
            now += Duration::from_millis(1);
        }
        sent
    };
    assert_eq!(run(&mut dev, 1000), 1000);
    let (f0, d0) = dev.counters();
    assert_eq!(f0 + d0, 2000);
    let (allocs, sent) = allocations(|| run(&mut dev, PACKETS));
    assert_eq!(sent, PACKETS, "every echo request answered");
    assert_eq!(
        allocs, 0,
        "allocations while capturing {PACKETS} pings and replies"
    );
    let (frames, dropped) = dev.counters();
    assert_eq!(frames + dropped, 2 * (PACKETS + 1000));
    assert!(
        frames > PACKETS / 10,
        "the writer kept up with only {frames} frames"
    );
    drop(dev);
    let w = cap.finish();
    assert_eq!(w.frames, frames);
    assert_eq!(w.errors, 0);
    eprintln!("captured {frames}, ring full {dropped}");
    std::fs::remove_dir_all(&dir).unwrap();
}
