//! Instruction-count profiling of the connection-life exchange, without criterion: runs `rounds`
//! rounds of `n` connection lives on one server, every server step through one non-inlined
//! function (`server_step`), so that `valgrind --tool=callgrind --toggle-collect='*server_step*'`
//! counts the server side only. One warm-up round runs first, outside `server_step`.
//!
//! `cargo bench -p handshake-benches --bench profile --no-run`, then
//! `valgrind --tool=callgrind --toggle-collect='*server_step*' target/release/deps/profile-* [ours|smoltcp|ours-traced] [n] [rounds]`.
//!
//! Each phase of the life steps through a function of its own (`server_step_syn`,
//! `server_step_request`, `server_step_fin`, `server_step_last_ack`): `callgrind_annotate
//! --inclusive=yes` splits the cost by phase, and `--toggle-collect='*server_step_fin*'` profiles
//! one phase alone. `ours-idle N` / `smoltcp-idle N` count `N` steps with nothing received (the
//! fixed cost of a step).
//!
//! `floor` runs the floor server (`harness/floor.rs`: this exchange alone, a lower bound);
//! `smoltcp-1024` gives smoltcp 1,024 listening sockets, the capacity of ours (1,024 flows),
//! whatever the number of connections the round runs.
//!
//! `ours-traced` installs a connection trace whose filter (`port 40000`, limit 1) matches the
//! first client port: the first connection is traced, every later one on that port matches the
//! filter but is over the limit, the other ports do not match. What the trace costs the
//! untraced connections is then the difference with `ours`; built with `--no-default-features`
//! (no `trace` feature), `ours` shows what merely compiling it in costs.

// The shared harness also serves the criterion benchmarks: not every piece is used here.
#[allow(dead_code)]
mod harness;

use harness::client::{Clock, ConnLife};
use harness::dev::Frames;
use harness::frames;
use harness::servers::{Ours, Server, Smol, SmolApp};

/// A server whose every step goes through [`server_step`].
struct Prof<S>(S);

#[inline(never)]
fn server_step<S: Server>(s: &mut S, now_us: u64) {
    s.step(now_us)
}

// One function per phase of the connection life, so that callgrind splits the cost by phase
// (`callgrind_annotate --inclusive=yes`): SYN, ACK + request, FIN, last ACK.
#[inline(never)]
fn server_step_syn<S: Server>(s: &mut S, now_us: u64) {
    // A distinct body, so that the four are not folded into one function.
    std::hint::black_box(1u8);
    s.step(now_us)
}
#[inline(never)]
fn server_step_request<S: Server>(s: &mut S, now_us: u64) {
    // A distinct body, so that the four are not folded into one function.
    std::hint::black_box(2u8);
    s.step(now_us)
}
#[inline(never)]
fn server_step_fin<S: Server>(s: &mut S, now_us: u64) {
    // A distinct body, so that the four are not folded into one function.
    std::hint::black_box(3u8);
    s.step(now_us)
}
#[inline(never)]
fn server_step_last_ack<S: Server>(s: &mut S, now_us: u64) {
    // A distinct body, so that the four are not folded into one function.
    std::hint::black_box(4u8);
    s.step(now_us)
}

impl<S: Server> Server for Prof<S> {
    const NAME: &'static str = S::NAME;
    fn dev(&mut self) -> &mut Frames {
        self.0.dev()
    }
    fn step(&mut self, now_us: u64) {
        use std::sync::atomic::Ordering;
        match harness::client::PHASE.load(Ordering::Relaxed) {
            0 => server_step_syn(&mut self.0, now_us),
            1 => server_step_request(&mut self.0, now_us),
            2 => server_step_fin(&mut self.0, now_us),
            3 => server_step_last_ack(&mut self.0, now_us),
            _ => server_step(&mut self.0, now_us),
        }
    }
}

fn run<S: Server>(s: S, n: usize, rounds: u64) {
    run_with(s, n, rounds, |_| {})
}

fn run_with<S: Server>(s: S, n: usize, rounds: u64, mut after_round: impl FnMut(&mut S)) {
    let mut s = Prof(s);
    let mut clock = Clock::new();
    s.dev().inject(&frames::arp_request());
    clock.step(&mut s);
    assert_eq!(s.dev().discard(), 1);
    let mut client = ConnLife::new(n);
    // One warm-up round outside `server_step` (not counted), for both servers alike: buffers
    // that a server allocates on first use (ours from its pools, smoltcp's at construction)
    // are not billed to the measured rounds, as in the criterion runs, which amortize them.
    client.round(&mut s.0, &mut clock);
    let warm = clock.server;
    for _ in 0..rounds {
        client.round(&mut s, &mut clock);
        after_round(&mut s.0);
    }
    let conns = n as u64 * rounds;
    println!(
        "{}: {} connections, {} steps, {} server segments, {:.0} ns of server steps per connection",
        S::NAME,
        conns,
        clock.steps,
        client.segments_out,
        (clock.server - warm).as_nanos() as f64 / conns.max(1) as f64
    );
}

/// `rounds` transfers of 1 MiB (the criterion `tcp_bulk` exchange: MSS 1460, the client ACKs every
/// second segment) from our HTTP app, or from smoltcp's app sending the same response bytes.
fn bulk(ours: bool, rounds: u64) {
    use harness::client::Bulk;
    const MSS: u16 = 1460;
    let body: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
    // Our response (head + body), learned once, untimed: smoltcp's app sends the same bytes.
    let mut s = Ours::new(Some(body.clone()));
    let mut clock = Clock::new();
    s.dev().inject(&frames::arp_request());
    clock.step(&mut s);
    s.dev().discard();
    let mut c = Bulk::new(None, MSS);
    c.round(&mut s, &mut clock).expect("the learning transfer");
    let response = c.collect.take().unwrap_or_default();
    fn go<S: Server>(s: S, len: usize, rounds: u64) {
        let mut s = Prof(s);
        let mut clock = Clock::new();
        s.dev().inject(&frames::arp_request());
        clock.step(&mut s);
        s.dev().discard();
        let mut c = Bulk::new(Some(len), MSS);
        // Warm-up transfer outside `server_step`, as in `run_with`.
        c.round(&mut s.0, &mut clock).expect("warm-up transfer");
        let warm = clock.server;
        for _ in 0..rounds {
            c.round(&mut s, &mut clock).expect("transfer");
        }
        println!(
            "{}: {rounds} transfers of {len} B, {} server segments, {} client ACKs, {:.0} µs of server steps per transfer",
            S::NAME,
            c.segments_out,
            c.acks,
            (clock.server - warm).as_micros() as f64 / rounds.max(1) as f64
        );
    }
    let len = response.len();
    if ours {
        go(Ours::new(Some(body)), len, rounds);
    } else {
        go(Smol::new(1, SmolApp::Respond { response }), len, rounds);
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let which = args.first().map_or("ours", |s| s.as_str());
    let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    match which {
        "smoltcp" => run(Smol::new(n, SmolApp::Echo), n, rounds),
        "floor" => run(harness::floor::Floor::new(n.max(16)), n, rounds),
        // smoltcp able to hold as many connections as ours (1,024 flows): one listening
        // socket per possible connection, whatever the load.
        "smoltcp-1024" => run(Smol::new(1024, SmolApp::Echo), n, rounds),
        "ours-bulk" | "smoltcp-bulk" => bulk(which == "ours-bulk", rounds),
        "ours-idle" | "smoltcp-idle" => {
            // Steps with nothing received: the fixed cost of a step, `n` times.
            let mut clock = Clock::new();
            if which == "ours-idle" {
                let mut s = Prof(Ours::new(None));
                (0..n).for_each(|_| clock.step(&mut s));
            } else {
                let mut s = Prof(Smol::new(1, SmolApp::Echo));
                (0..n).for_each(|_| clock.step(&mut s));
            }
            println!("{which}: {n} empty steps");
        }
        #[cfg(feature = "trace")]
        "ours-traced" => {
            use handshake::trace::{Tracer, DEFAULT_QUEUE};
            let mut s = Ours::new(None);
            let filter = "port 40000".parse().expect("a valid filter");
            s.stack
                .set_tracer(Some(Tracer::new(filter, 1, DEFAULT_QUEUE)));
            let mut events = 0u64;
            run_with(s, n, rounds, |s: &mut Ours| {
                while s.stack.poll_trace_event().is_some() {
                    events += 1;
                }
            });
            println!("trace: {events} events of 1 connection");
        }
        _ => run(Ours::new(None), n, rounds),
    }
}
