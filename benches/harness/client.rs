//! Scripted clients. They build nothing per connection (templates, acknowledgment patched in
//! place), parse the server's segments at fixed offsets, and time only the server's steps: the
//! `Duration` they add up is the server side's work (device receive, stack, app, device transmit).

use super::frames::{parse_seg, Flags, Template, ACK, FIN, RST, SYN};
use super::servers::{Server, BULK_PORT, ECHO_PORT};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which part of [`ConnLife::round`] runs (0 handshake, 1 echo, 2 close, 3 last ACK), for the
/// instruction profile's per-phase split (`benches/profile.rs`).
pub static PHASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn phase(p: usize) {
    PHASE.store(p, std::sync::atomic::Ordering::Relaxed);
}

/// First client port.
const BASE_PORT: u16 = 40000;
/// Virtual time per server step, in microseconds.
const STEP_US: u64 = 5;
/// Most steps a phase may take before the exchange is declared stuck.
const MAX_STEPS: usize = 8;

/// Virtual time and the server-side stopwatch.
pub struct Clock {
    /// Virtual time in microseconds.
    pub now_us: u64,
    /// Wall time spent inside server steps.
    pub server: Duration,
    /// Server steps taken.
    pub steps: u64,
}

impl Clock {
    /// Starts at 1 s.
    pub fn new() -> Self {
        Clock {
            now_us: 1_000_000,
            server: Duration::ZERO,
            steps: 0,
        }
    }

    /// Runs one timed server step. The stopwatch's own cost (two clock reads, calibrated once)
    /// is taken off, so that a step of one frame is not billed for the clock.
    #[inline]
    pub fn step<S: Server>(&mut self, s: &mut S) {
        self.now_us += STEP_US;
        let t = Instant::now();
        s.step(self.now_us);
        self.server += t.elapsed().saturating_sub(stopwatch_cost());
        self.steps += 1;
    }
}

/// The cost of timing an empty region (median of 101 runs of 1000), measured once.
pub fn stopwatch_cost() -> Duration {
    static COST: OnceLock<Duration> = OnceLock::new();
    *COST.get_or_init(|| {
        let mut runs: Vec<Duration> = (0..101)
            .map(|_| {
                let mut d = Duration::ZERO;
                for _ in 0..1000 {
                    let t = Instant::now();
                    d += std::hint::black_box(t).elapsed();
                }
                d / 1000
            })
            .collect();
        runs.sort();
        runs[50]
    })
}

/// What the server sent during one connection life (checked once before measuring).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Per server segment: flags, TCP header length and payload length, in order.
    pub segments: Vec<(u8, usize, usize)>,
}

/// `n` concurrent connections each living SYN → SYN-ACK → ACK + 100-byte request → 100-byte echo
/// → FIN → FIN-ACK → last ACK, per round.
pub struct ConnLife {
    syn: Vec<Template>,
    req: Vec<Template>,
    fin: Vec<Template>,
    last: Vec<Template>,
    isn: Vec<u32>,
    echoed: Vec<u32>,
    server_fin: Vec<Option<u32>>,
    request: [u8; 100],
    /// Record what the server sent (check pass only).
    pub trace: Option<Vec<Trace>>,
    /// Server segments per round.
    pub segments_out: u64,
}

fn flag(syn: bool, ack: bool, psh: bool, fin: bool) -> Flags {
    Flags {
        syn,
        ack,
        psh,
        fin,
        mss: 1460,
    }
}

impl ConnLife {
    /// `n` connections from ports 40000.. to the echo port.
    pub fn new(n: usize) -> Self {
        let request: [u8; 100] = std::array::from_fn(|i| b'a' + (i % 26) as u8);
        let mut c = ConnLife {
            syn: Vec::new(),
            req: Vec::new(),
            fin: Vec::new(),
            last: Vec::new(),
            isn: vec![0; n],
            echoed: vec![0; n],
            server_fin: vec![None; n],
            request,
            trace: None,
            segments_out: 0,
        };
        for i in 0..n {
            let port = BASE_PORT + i as u16;
            let isn = 0x1000_0000u32.wrapping_mul(i as u32 + 1);
            c.syn.push(Template::new(
                port,
                ECHO_PORT,
                isn,
                flag(true, false, false, false),
                &[],
            ));
            c.req.push(Template::new(
                port,
                ECHO_PORT,
                isn + 1,
                flag(false, true, true, false),
                &request,
            ));
            c.fin.push(Template::new(
                port,
                ECHO_PORT,
                isn + 101,
                flag(false, true, false, true),
                &[],
            ));
            c.last.push(Template::new(
                port,
                ECHO_PORT,
                isn + 102,
                flag(false, true, false, false),
                &[],
            ));
        }
        c
    }

    fn n(&self) -> usize {
        self.syn.len()
    }

    /// Steps the server and reads its frames until `done` holds (bounded).
    fn exchange<S: Server>(
        &mut self,
        s: &mut S,
        clock: &mut Clock,
        what: &str,
        done: fn(&Self, usize) -> bool,
    ) {
        for _ in 0..MAX_STEPS {
            clock.step(s);
            let mut segs = 0;
            // Split borrows: the closure updates the per-connection state.
            let n = self.n();
            let (isn, echoed, server_fin, trace, request) = (
                &mut self.isn,
                &mut self.echoed,
                &mut self.server_fin,
                &mut self.trace,
                &self.request,
            );
            s.dev().drain(|f| {
                let Some(seg) = parse_seg(f) else {
                    panic!("{}: sent a non-TCP frame during {what}: {f:02x?}", S::NAME)
                };
                let i = seg.dport.wrapping_sub(BASE_PORT) as usize;
                assert!(i < n, "{}: segment to unknown port {}", S::NAME, seg.dport);
                assert!(
                    seg.flags & RST == 0,
                    "{}: RST during {what}: {seg:?}",
                    S::NAME
                );
                segs += 1;
                if let Some(t) = trace {
                    t[i].segments
                        .push((seg.flags, seg.header_len, seg.payload.len()));
                    if !seg.payload.is_empty() {
                        assert_eq!(seg.payload, &request[..seg.payload.len()], "echoed bytes");
                    }
                }
                if seg.flags & (SYN | ACK) == SYN | ACK {
                    isn[i] = seg.seq;
                } else {
                    echoed[i] += seg.payload.len() as u32;
                    if seg.flags & FIN != 0 {
                        server_fin[i] = Some(seg.seq.wrapping_add(seg.payload.len() as u32));
                    }
                }
            });
            self.segments_out += segs;
            if (0..n).all(|i| done(self, i)) {
                return;
            }
        }
        panic!("{}: the exchange stalled during {what}", S::NAME);
    }

    /// One round: every connection's whole life.
    pub fn round<S: Server>(&mut self, s: &mut S, clock: &mut Clock) {
        let n = self.n();
        for i in 0..n {
            self.isn[i] = 0;
            self.echoed[i] = 0;
            self.server_fin[i] = None;
            s.dev().inject(self.syn[i].bytes());
        }
        phase(0);
        self.exchange(s, clock, "the handshake", |c, i| c.isn[i] != 0);
        phase(1);
        for i in 0..n {
            let a = self.isn[i].wrapping_add(1);
            s.dev().inject(self.req[i].with_ack(a));
        }
        self.exchange(s, clock, "the echo", |c, i| c.echoed[i] >= 100);
        phase(2);
        for i in 0..n {
            let a = self.isn[i].wrapping_add(101);
            s.dev().inject(self.fin[i].with_ack(a));
        }
        self.exchange(s, clock, "the close", |c, i| c.server_fin[i].is_some());
        phase(3);
        for i in 0..n {
            let a = self.server_fin[i].unwrap_or(0).wrapping_add(1);
            s.dev().inject(self.last[i].with_ack(a));
        }
        clock.step(s);
        let extra = s
            .dev()
            .drain(|f| panic!("{}: answered the last ACK: {f:02x?}", S::NAME));
        debug_assert_eq!(extra, 0);
    }
}

/// One connection fetching a response of known length from port 80, ACKing every second
/// segment as Linux does, then closing first (so the server closes passively, as in
/// [`ConnLife`]).
pub struct Bulk {
    syn: Template,
    req: Template,
    ack: Template,
    fin: Template,
    last: Template,
    /// Response length; `None`: learn it from the head's `Content-Length` (needs `collect`).
    pub expect: Option<usize>,
    /// Every byte received (check pass only).
    pub collect: Option<Vec<u8>>,
    /// Out-of-order or duplicate segments seen (should stay 0: nothing is lost).
    pub unexpected: u64,
    /// Server segments seen.
    pub segments_out: u64,
    /// Client ACKs sent.
    pub acks: u64,
    /// Server steps allowed per transfer before it counts as stalled.
    pub max_steps: usize,
}

/// The request the bulk client sends.
pub const BULK_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n";

impl Bulk {
    /// A client offering MSS `mss`, expecting `expect` bytes of response (`None`: read the
    /// head, collect bytes).
    pub fn new(expect: Option<usize>, mss: u16) -> Self {
        let port = BASE_PORT + 1000;
        let isn = 0x7000_0000u32;
        let r = BULK_REQUEST.len() as u32;
        Bulk {
            syn: Template::new(
                port,
                BULK_PORT,
                isn,
                Flags {
                    mss,
                    ..flag(true, false, false, false)
                },
                &[],
            ),
            req: Template::new(
                port,
                BULK_PORT,
                isn + 1,
                flag(false, true, true, false),
                BULK_REQUEST,
            ),
            ack: Template::new(
                port,
                BULK_PORT,
                isn + 1 + r,
                flag(false, true, false, false),
                &[],
            ),
            fin: Template::new(
                port,
                BULK_PORT,
                isn + 1 + r,
                flag(false, true, false, true),
                &[],
            ),
            last: Template::new(
                port,
                BULK_PORT,
                isn + 2 + r,
                flag(false, true, false, false),
                &[],
            ),
            collect: expect.is_none().then(Vec::new),
            expect,
            unexpected: 0,
            segments_out: 0,
            acks: 0,
            max_steps: 100_000,
        }
    }

    /// One whole transfer: handshake, request, `expect` bytes, close. Fails when the server
    /// stalls (no progress within `max_steps` steps).
    pub fn round<S: Server>(&mut self, s: &mut S, clock: &mut Clock) -> Result<(), String> {
        s.dev().inject(self.syn.bytes());
        clock.step(s);
        let mut isn = None;
        s.dev().drain(|f| {
            if let Some(seg) = parse_seg(f).filter(|g| g.flags & (SYN | ACK) == SYN | ACK) {
                isn = Some(seg.seq);
            }
        });
        let Some(isn) = isn else {
            return Err(format!("{}: no SYN-ACK", S::NAME));
        };
        let mut rcv_nxt = isn.wrapping_add(1);
        s.dev().inject(self.req.with_ack(rcv_nxt));
        let mut got = 0usize;
        let mut steps = 0;
        while self.expect.is_none_or(|e| got < e) {
            steps += 1;
            if steps > self.max_steps {
                return Err(format!(
                    "{}: transfer stalled at {got} bytes after {steps} steps ({} µs of virtual time)",
                    S::NAME,
                    steps as u64 * STEP_US
                ));
            }
            clock.step(s);
            let mut unacked = 0;
            // ACKs are injected after the drain (the device is borrowed by it).
            let mut acks = [0u32; 64];
            let mut n_acks = 0;
            let (collect, unexpected, segments_out) = (
                &mut self.collect,
                &mut self.unexpected,
                &mut self.segments_out,
            );
            s.dev().drain(|f| {
                let Some(seg) = parse_seg(f) else { return };
                *segments_out += 1;
                assert!(seg.flags & (RST | FIN) == 0, "RST or early FIN: {seg:?}");
                if seg.payload.is_empty() {
                    return;
                }
                if seg.seq != rcv_nxt {
                    *unexpected += 1;
                    return;
                }
                rcv_nxt = rcv_nxt.wrapping_add(seg.payload.len() as u32);
                got += seg.payload.len();
                if let Some(c) = collect {
                    c.extend_from_slice(seg.payload);
                }
                unacked += 1;
                if unacked == 2 && n_acks < acks.len() {
                    acks[n_acks] = rcv_nxt;
                    n_acks += 1;
                    unacked = 0;
                }
            });
            if unacked > 0 && n_acks < acks.len() {
                acks[n_acks] = rcv_nxt;
                n_acks += 1;
            }
            for &a in &acks[..n_acks] {
                s.dev().inject(self.ack.with_ack(a));
                self.acks += 1;
            }
            if self.expect.is_none() {
                self.expect = self.collect.as_deref().and_then(response_len);
            }
        }
        // Everything arrived: the client closes first, the server answers with its FIN.
        s.dev().inject(self.fin.with_ack(rcv_nxt));
        let mut fin_at = None;
        for _ in 0..MAX_STEPS {
            clock.step(s);
            s.dev().drain(|f| {
                if let Some(seg) = parse_seg(f).filter(|g| g.flags & FIN != 0) {
                    fin_at = Some(seg.seq.wrapping_add(seg.payload.len() as u32 + 1));
                }
            });
            if fin_at.is_some() {
                break;
            }
        }
        let Some(last) = fin_at else {
            return Err(format!("{}: no FIN after the client's FIN", S::NAME));
        };
        s.dev().inject(self.last.with_ack(last));
        clock.step(s);
        let extra = s.dev().discard();
        if extra != 0 {
            return Err(format!("{}: answered the last ACK", S::NAME));
        }
        Ok(())
    }
}

/// Length of an HTTP response (head + `Content-Length` body) once its head is complete.
fn response_len(b: &[u8]) -> Option<usize> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    })?;
    Some(end + len)
}
