//! Rootless, in-memory benchmarks of the engine, each beside smoltcp doing the same work in the same
//! run (`cargo bench -p handshake-benches`, add `-- --quick` for a fast pass).
//!
//! - `wire`: header parse and build, the Internet checksum over 1500 bytes and its incremental
//!   update; smoltcp's parsers for the same bytes.
//! - `arp_reply`, `icmp_echo`: 64 requests injected, one batch, replies discarded.
//! - `tcp_conn_life`: a connection's whole server-side life, SYN … last ACK, with a 100-byte echo;
//!   64 concurrent connections per round, one at a time, and 1,024 concurrent (where smoltcp's
//!   per-packet scan of its sockets shows). Beside them, the floor (`harness::floor`): a server
//!   written for this exchange alone, with none of a TCP's other work, to show what the exchange
//!   itself costs on this device (a lower bound, not a competitor).
//! - `tcp_bulk`: 1 MiB from the server's app to a client that ACKs every second segment.
//! - `tls`: a whole HTTPS connection (TLS 1.3 full handshake or resumption, `GET /`, 200, close)
//!   through the engine (client and server stacks in memory, TLS inline or on one pool thread)
//!   beside bare rustls doing the same TLS work with no TCP at all; bulk encryption and
//!   decryption with bare rustls.
//!
//! Stack benchmarks time only the server's steps (device receive, stack, app, device transmit);
//! the client's work (template copies, acknowledgment patches, fixed-offset parsing) is outside the
//! stopwatch and the same for both stacks. Before measuring, a check pass runs each exchange once on
//! both stacks and asserts they answer alike; at the end a summary prints the ratios.

mod harness;

use criterion::{BenchmarkId, Criterion, Throughput};
use handshake::device::mem::MemDevice;
use handshake::device::Device;
use handshake::stack::run_batch;
use handshake::wire::{arp, checksum, ipv4, tcp};
use harness::client::{stopwatch_cost, Bulk, Clock, ConnLife, Trace};
use harness::floor::Floor;
use harness::frames;
use harness::servers::{Ours, Server, Smol, SmolApp};
use harness::tls::{bare_connection, Engine, Fixture, Mode};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

/// Per benchmark key: every sample's cost per element, in nanoseconds (server side).
static SAMPLES: Mutex<Vec<(String, Vec<f64>)>> = Mutex::new(Vec::new());

fn record(key: &str, total: Duration, elements: u64) {
    let per = total.as_nanos() as f64 / elements.max(1) as f64;
    let mut s = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    match s.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => v.push(per),
        None => s.push((key.to_string(), vec![per])),
    }
}

/// Median of the recorded samples of `key`, in nanoseconds per element.
fn median(key: &str) -> Option<f64> {
    let s = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
    let (_, v) = s.iter().find(|(k, _)| k == key)?;
    let mut v = v.clone();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

const BATCH: u64 = 64;

// ---- wire -----------------------------------------------------------------------------------

/// A SYN as Linux sends it: MSS, SACK permitted, timestamps, window scale.
fn linux_syn() -> Vec<u8> {
    use etherparse::{PacketBuilder, TcpOptionElement as O};
    let mut f = Vec::new();
    PacketBuilder::ethernet2(frames::CLIENT_MAC, frames::SERVER_MAC)
        .ipv4(frames::CLIENT_IP, frames::SERVER_IP, 64)
        .tcp(40000, 80, 0x1234_5678, 64240)
        .syn()
        .options(&[
            O::MaximumSegmentSize(1460),
            O::SelectiveAcknowledgementPermitted,
            O::Timestamp(0x0102_0304, 0),
            O::Noop,
            O::WindowScale(7),
        ])
        .expect("options fit")
        .write(&mut f, &[])
        .expect("fits");
    f
}

fn bench_wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    let ping = frames::ping(56, 1);
    let arp_req = frames::arp_request();
    let syn = linux_syn();
    let seg = &syn[34..];
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    let no_caps = smoltcp::phy::ChecksumCapabilities::ignored();

    g.bench_function("parse_ipv4/handshake", |b| {
        b.iter(|| ipv4::Ipv4View::parse(black_box(&ping[14..])).expect("valid"))
    });
    g.bench_function("parse_ipv4/smoltcp", |b| {
        b.iter(|| {
            let p = smoltcp::wire::Ipv4Packet::new_checked(black_box(&ping[14..])).expect("valid");
            smoltcp::wire::Ipv4Repr::parse(&p, &caps).expect("valid")
        })
    });
    g.bench_function("parse_arp/handshake", |b| {
        b.iter(|| arp::ArpRepr::parse(black_box(&arp_req[14..])).expect("valid"))
    });
    g.bench_function("parse_arp/smoltcp", |b| {
        b.iter(|| {
            let p =
                smoltcp::wire::ArpPacket::new_checked(black_box(&arp_req[14..])).expect("valid");
            smoltcp::wire::ArpRepr::parse(&p).expect("valid")
        })
    });
    // Header and options only: the stack verifies the checksum separately (see `checksum`).
    g.bench_function("parse_tcp_syn/handshake", |b| {
        b.iter(|| tcp::TcpRepr::parse_bytes(black_box(seg)).expect("valid"))
    });
    g.bench_function("parse_tcp_syn/smoltcp", |b| {
        let (src, dst) = (
            smoltcp::wire::IpAddress::v4(198, 18, 0, 2),
            smoltcp::wire::IpAddress::v4(198, 18, 0, 1),
        );
        b.iter(|| {
            let p = smoltcp::wire::TcpPacket::new_checked(black_box(seg)).expect("valid");
            smoltcp::wire::TcpRepr::parse(&p, &src, &dst, &no_caps).expect("valid")
        })
    });
    let mut buf = [0u8; 128];
    g.bench_function("build_ipv4", |b| {
        b.iter(|| {
            ipv4::emit(
                black_box(&mut buf[..]),
                black_box([198, 18, 0, 1].into()),
                [198, 18, 0, 2].into(),
                ipv4::PROTO_TCP,
                black_box(100),
                7,
            )
        })
    });
    let reply = arp::ArpRepr {
        op: arp::OP_REPLY,
        sender_mac: handshake::wire::Mac(frames::SERVER_MAC),
        sender_ip: frames::SERVER_IP.into(),
        target_mac: handshake::wire::Mac(frames::CLIENT_MAC),
        target_ip: frames::CLIENT_IP.into(),
    };
    g.bench_function("build_arp_frame", |b| {
        b.iter(|| black_box(&reply).emit_frame(&mut buf, reply.target_mac))
    });
    let synack = tcp::TcpRepr {
        src_port: 80,
        dst_port: 40000,
        seq: 0xdead_beef,
        ack: 0x1234_5679,
        flags: tcp::flags::SYN | tcp::flags::ACK,
        window: 65535,
        urgent: 0,
        options: tcp::TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(tcp::Timestamps {
                val: 1,
                ecr: 0x0102_0304,
            }),
            ..tcp::TcpOptions::NONE
        },
        payload: &[],
    };
    g.bench_function("build_tcp_synack_with_checksum", |b| {
        b.iter(|| {
            black_box(&synack)
                .emit(&mut buf, frames::SERVER_IP, frames::CLIENT_IP)
                .expect("fits")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("checksum");
    let data: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    g.throughput(Throughput::Bytes(1500));
    g.bench_function("full_1500B", |b| {
        b.iter(|| checksum::checksum(black_box(&data)))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("update16", |b| {
        b.iter(|| checksum::update16(black_box(0x1c46), black_box(0x4006), black_box(0x4106)))
    });
    g.finish();
}

// ---- ARP and ICMP -----------------------------------------------------------------------------

/// `iters` batches of 64 copies of `frame`; every one must be answered.
fn replies<S: Server>(
    s: &mut S,
    clock: &mut Clock,
    frame: &[u8],
    iters: u64,
    key: &str,
) -> Duration {
    let start = clock.server;
    for _ in 0..iters {
        for _ in 0..BATCH {
            s.dev().inject(frame);
        }
        clock.step(s);
        let n = s.dev().discard();
        assert_eq!(
            n,
            BATCH as usize,
            "{}: {n} replies to {BATCH} requests",
            S::NAME
        );
    }
    let d = clock.server - start;
    record(key, d, iters * BATCH);
    d
}

/// The same through `MemDevice` (our stack only).
fn replies_memdevice(frame: &[u8], iters: u64, key: &str) -> Duration {
    thread_local! {
        static STATE: std::cell::RefCell<Option<(Ours, MemDevice, u64)>> =
            const { std::cell::RefCell::new(None) };
    }
    STATE.with(|st| {
        let mut st = st.borrow_mut();
        let (ours, dev, now) =
            st.get_or_insert_with(|| (Ours::new(None), MemDevice::new(2048), 1_000_000));
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            for _ in 0..BATCH {
                dev.inject(frame);
            }
            *now += 5;
            let t = std::time::Instant::now();
            run_batch(&mut ours.stack, dev, handshake::Instant::from_micros(*now));
            total += t.elapsed().saturating_sub(stopwatch_cost());
            let n = dev.discard_tx();
            assert_eq!(n, BATCH as usize, "MemDevice: {n} replies");
        }
        assert_eq!(dev.frame_capacity(), 2048);
        record(key, total, iters * BATCH);
        total
    })
}

fn bench_replies(c: &mut Criterion, group: &str, frame: Vec<u8>) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("handshake", |b| {
        let (mut s, mut clock) = (Ours::new(None), Clock::new());
        arp_warm(&mut s, &mut clock);
        let key = format!("{group}/handshake");
        b.iter_custom(|iters| replies(&mut s, &mut clock, &frame, iters, &key))
    });
    g.bench_function("handshake_memdevice", |b| {
        let key = format!("{group}/handshake_memdevice");
        b.iter_custom(|iters| replies_memdevice(&frame, iters, &key))
    });
    g.bench_function("smoltcp", |b| {
        // smoltcp answers from its neighbour cache (ours turns the frame around): teach it first.
        let (mut s, mut clock) = (Smol::new(0, SmolApp::None), Clock::new());
        arp_warm(&mut s, &mut clock);
        let key = format!("{group}/smoltcp");
        b.iter_custom(|iters| replies(&mut s, &mut clock, &frame, iters, &key))
    });
    g.finish();
}

// ---- TCP ----------------------------------------------------------------------------------------

/// Teaches the server the client's MAC (both learn it from a request to them).
fn arp_warm<S: Server>(s: &mut S, clock: &mut Clock) {
    s.dev().inject(&frames::arp_request());
    clock.step(s);
    assert_eq!(s.dev().discard(), 1, "{}: ARP reply", S::NAME);
}

/// One untimed round. Criterion calls a benchmark's closure again for every sample, so each
/// sample starts from a new server: without this round, ours would bill every sample for taking
/// its first `n` pairs of buffers from the allocator (and the kernel's page faults behind them),
/// while smoltcp's buffers are allocated in `Smol::new`, before the clock starts. At 1,024
/// concurrent connections that was 128 MiB per sample, and most of the measured time.
fn warm_round<S: Server>(s: &mut S, clock: &mut Clock, client: &mut ConnLife) {
    client.round(s, clock);
}

fn conn_life<S: Server>(
    s: &mut S,
    clock: &mut Clock,
    client: &mut ConnLife,
    iters: u64,
    n: u64,
    key: &str,
) -> Duration {
    let start = clock.server;
    for _ in 0..iters {
        client.round(s, clock);
    }
    let d = clock.server - start;
    record(key, d, iters * n);
    d
}

fn bench_conn_life(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp_conn_life");
    for n in [64usize, 1, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("handshake", n), |b| {
            let (mut s, mut clock, mut client) = (Ours::new(None), Clock::new(), ConnLife::new(n));
            arp_warm(&mut s, &mut clock);
            warm_round(&mut s, &mut clock, &mut client);
            let key = format!("tcp_conn_life/handshake/{n}");
            b.iter_custom(|iters| conn_life(&mut s, &mut clock, &mut client, iters, n as u64, &key))
        });
        g.bench_function(BenchmarkId::new("smoltcp", n), |b| {
            let (mut s, mut clock, mut client) =
                (Smol::new(n, SmolApp::Echo), Clock::new(), ConnLife::new(n));
            arp_warm(&mut s, &mut clock);
            warm_round(&mut s, &mut clock, &mut client);
            let key = format!("tcp_conn_life/smoltcp/{n}");
            b.iter_custom(|iters| conn_life(&mut s, &mut clock, &mut client, iters, n as u64, &key))
        });
        g.bench_function(BenchmarkId::new("floor", n), |b| {
            let (mut s, mut clock, mut client) =
                (Floor::new(n.max(16)), Clock::new(), ConnLife::new(n));
            arp_warm(&mut s, &mut clock);
            warm_round(&mut s, &mut clock, &mut client);
            let key = format!("tcp_conn_life/floor/{n}");
            b.iter_custom(|iters| conn_life(&mut s, &mut clock, &mut client, iters, n as u64, &key))
        });
    }
    g.finish();
}

/// 1 MiB body.
const BULK: usize = 1 << 20;

/// MSS the bulk client offers, as Linux on a 1500-byte MTU. Our TCP fills every segment to the
/// MSS less the options it carries (`tcp::tests::options::
/// test_bulk_mss_1460_sends_full_segments_without_waiting`); both stacks get the same MSS.
const BULK_MSS: u16 = 1460;

fn bulk_body() -> Vec<u8> {
    (0..BULK).map(|i| (i % 251) as u8).collect()
}

fn bulk<S: Server>(
    s: &mut S,
    clock: &mut Clock,
    client: &mut Bulk,
    iters: u64,
    key: &str,
) -> Duration {
    let start = clock.server;
    for _ in 0..iters {
        if let Err(e) = client.round(s, clock) {
            panic!("{e}");
        }
    }
    let d = clock.server - start;
    record(key, d, iters);
    d
}

fn bench_bulk(c: &mut Criterion, response: &[u8]) {
    let mut g = c.benchmark_group("tcp_bulk");
    g.throughput(Throughput::Bytes(BULK as u64));
    g.bench_function("handshake", |b| {
        let (mut s, mut clock, mut client) = (
            Ours::new(Some(bulk_body())),
            Clock::new(),
            Bulk::new(Some(response.len()), BULK_MSS),
        );
        arp_warm(&mut s, &mut clock);
        // Untimed, as in `warm_round`: first buffers out of the allocator before the clock runs.
        client.round(&mut s, &mut clock).expect("warm-up transfer");
        b.iter_custom(|iters| bulk(&mut s, &mut clock, &mut client, iters, "tcp_bulk/handshake"))
    });
    g.bench_function("smoltcp", |b| {
        let app = SmolApp::Respond {
            response: response.to_vec(),
        };
        let (mut s, mut clock, mut client) = (
            Smol::new(1, app),
            Clock::new(),
            Bulk::new(Some(response.len()), BULK_MSS),
        );
        arp_warm(&mut s, &mut clock);
        // Untimed, as in `warm_round`: first buffers out of the allocator before the clock runs.
        client.round(&mut s, &mut clock).expect("warm-up transfer");
        b.iter_custom(|iters| bulk(&mut s, &mut clock, &mut client, iters, "tcp_bulk/smoltcp"))
    });
    g.finish();
}

// ---- check pass -----------------------------------------------------------------------------------

fn show(t: &Trace) -> String {
    let f = |fl: u8| {
        let mut s = String::new();
        for (bit, c) in [
            (frames::SYN, 'S'),
            (frames::FIN, 'F'),
            (frames::RST, 'R'),
            (0x08, 'P'),
            (frames::ACK, 'A'),
        ] {
            if fl & bit != 0 {
                s.push(c);
            }
        }
        s
    };
    t.segments
        .iter()
        .map(|&(fl, hl, n)| format!("{}[hdr {hl}, {n} B]", f(fl)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One connection life on each stack, traced. Returns a description and whether they match
/// (control bits, header length and payload length of every server segment).
fn check_conn_life() -> (String, bool) {
    let trace = |t: &mut ConnLife| {
        t.trace = Some(vec![Trace::default(); 2]);
    };
    let mut ours = (Ours::new(None), Clock::new(), ConnLife::new(2));
    trace(&mut ours.2);
    arp_warm(&mut ours.0, &mut ours.1);
    for _ in 0..2 {
        ours.2.round(&mut ours.0, &mut ours.1);
    }
    let mut smol = (Smol::new(2, SmolApp::Echo), Clock::new(), ConnLife::new(2));
    trace(&mut smol.2);
    arp_warm(&mut smol.0, &mut smol.1);
    for _ in 0..2 {
        smol.2.round(&mut smol.0, &mut smol.1);
    }
    let mut floor = (Floor::new(16), Clock::new(), ConnLife::new(2));
    trace(&mut floor.2);
    arp_warm(&mut floor.0, &mut floor.1);
    for _ in 0..2 {
        floor.2.round(&mut floor.0, &mut floor.1);
    }
    let (a, b, fl) = (
        ours.2.trace.take().unwrap_or_default(),
        smol.2.trace.take().unwrap_or_default(),
        floor.2.trace.take().unwrap_or_default(),
    );
    let mask = |t: &Trace| -> Vec<(u8, usize, usize)> {
        t.segments
            .iter()
            .map(|&(f, h, n)| (f & !0x08, h, n))
            .collect()
    };
    // The floor is only a lower bound if it does the same exchange.
    assert!(
        mask(&fl[0]) == mask(&a[0]),
        "the floor answers differently from ours:\n  handshake: {}\n  floor:     {}",
        show(&a[0]),
        show(&fl[0])
    );
    let same = mask(&a[0]) == mask(&b[0]);
    let text = format!(
        "server segments per connection (2 rounds):\n  handshake: {}\n  smoltcp:   {}\n  floor:     {}",
        show(&a[0]),
        show(&b[0]),
        show(&fl[0])
    );
    (text, same)
}

/// Runs the bulk transfer once on each stack: returns our exact response (head + body), which
/// smoltcp's app is then given, and whether smoltcp's stream was byte for byte the same.
fn check_bulk() -> (Vec<u8>, String, bool) {
    let body = bulk_body();
    let mut s = Ours::new(Some(body.clone()));
    let mut clock = Clock::new();
    arp_warm(&mut s, &mut clock);
    let mut c = Bulk::new(None, BULK_MSS);
    if let Err(e) = c.round(&mut s, &mut clock) {
        panic!("{e}");
    }
    let got = c.collect.take().unwrap_or_default();
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "our HTTP app answers 200"
    );
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert_eq!(&got[end..], &body[..], "our body arrives intact");
    let ours = format!(
        "handshake {} segments, {} client ACKs",
        c.segments_out, c.acks
    );
    assert_eq!(c.unexpected, 0, "no loss in memory: nothing out of order");

    let mut s = Smol::new(
        1,
        SmolApp::Respond {
            response: got.clone(),
        },
    );
    let mut clock = Clock::new();
    arp_warm(&mut s, &mut clock);
    let mut c = Bulk::new(Some(got.len()), BULK_MSS);
    c.collect = Some(Vec::new());
    if let Err(e) = c.round(&mut s, &mut clock) {
        panic!("{e}");
    }
    let same = c.collect.as_deref() == Some(&got[..]);
    let text = format!(
        "bulk 1 MiB (MSS {BULK_MSS}, {} B response incl. {end} B head): {ours}; smoltcp {} segments, {} client ACKs",
        got.len(),
        c.segments_out,
        c.acks
    );
    (got, text, same)
}

fn summary(conn_check: &str, conn_same: bool, bulk_check: &str, bulk_same: bool) {
    let ns = |k: &str| median(k);
    println!("\n==== handshake vs smoltcp (server-side CPU, median of samples) ====");
    println!(
        "(stopwatch cost {} ns per server step, already deducted)",
        stopwatch_cost().as_nanos()
    );
    for (group, unit) in [("arp_reply", "frame"), ("icmp_echo", "frame")] {
        if let (Some(a), Some(b)) = (
            ns(&format!("{group}/handshake")),
            ns(&format!("{group}/smoltcp")),
        ) {
            let m = ns(&format!("{group}/handshake_memdevice"))
                .map_or(String::new(), |m| format!(" (MemDevice {m:.0} ns)"));
            println!(
                "{group}: handshake {a:.0} ns/{unit}{m}, smoltcp {b:.0} ns/{unit}, ratio {:.1}x",
                b / a
            );
        }
    }
    for (n, what) in [
        (64, "64 concurrent"),
        (1, "one at a time"),
        (1024, "1,024 concurrent"),
    ] {
        if let (Some(a), Some(b)) = (
            ns(&format!("tcp_conn_life/handshake/{n}")),
            ns(&format!("tcp_conn_life/smoltcp/{n}")),
        ) {
            println!(
                "tcp_conn_life ({what}): handshake {:.2} µs/conn, smoltcp {:.2} µs/conn, ratio {:.1}x",
                a / 1000.0,
                b / 1000.0,
                b / a
            );
            if let Some(f) = ns(&format!("tcp_conn_life/floor/{n}")) {
                println!(
                    "  floor (this exchange alone, no TCP beyond it) {:.2} µs/conn: smoltcp/floor {:.1}x, handshake/floor {:.1}x",
                    f / 1000.0,
                    b / f,
                    a / f
                );
            }
        }
    }
    if let (Some(a), Some(b)) = (ns("tcp_bulk/handshake"), ns("tcp_bulk/smoltcp")) {
        let gbs = |t: f64| BULK as f64 / t; // bytes per ns = GB/s
        println!(
            "tcp_bulk 1 MiB: handshake {:.2} GB/s ({:.0} µs), smoltcp {:.2} GB/s ({:.0} µs), ratio {:.1}x",
            gbs(a),
            a / 1000.0,
            gbs(b),
            b / 1000.0,
            b / a
        );
    }
    println!("{conn_check}");
    println!("{bulk_check}");
    println!(
        "same exchange on the wire: conn life {}, bulk stream {}",
        if conn_same { "yes" } else { "NO (see above)" },
        if bulk_same {
            "identical bytes"
        } else {
            "DIFFERS"
        }
    );
}

/// Bytes per bulk TLS run.
const TLS_BULK: usize = 1 << 20;

fn bench_tls(c: &mut Criterion) {
    let f = Fixture::new();
    // Check pass: both paths give the same response.
    let mut wire = Vec::new();
    assert_eq!(bare_connection(&f, &f.full, &mut wire), f.response);
    for mode in [Mode::Inline, Mode::Pool] {
        let mut e = Engine::new(&f, mode);
        assert_eq!(e.connection(&f.full), f.response, "{mode:?}");
        e.stop();
    }
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(2));
    for (label, client) in [("full", &f.full), ("resumed", &f.resume)] {
        let key = format!("tls/{label}/bare_rustls");
        g.bench_function(format!("{label}/bare_rustls"), |b| {
            let mut wire = Vec::new();
            b.iter_custom(|iters| {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    black_box(bare_connection(&f, client, &mut wire));
                }
                let d = t.elapsed();
                record(&key, d, iters);
                d
            })
        });
        for (mode, name) in [(Mode::Inline, "engine_inline"), (Mode::Pool, "engine_pool")] {
            let mut e = Engine::new(&f, mode);
            let key = format!("tls/{label}/{name}");
            g.bench_function(format!("{label}/{name}"), |b| {
                b.iter_custom(|iters| {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        black_box(e.connection(client));
                    }
                    let d = t.elapsed();
                    record(&key, d, iters);
                    d
                })
            });
            e.stop();
        }
    }
    g.throughput(Throughput::Bytes(TLS_BULK as u64));
    g.bench_function("bulk_1MiB/bare_rustls", |b| {
        b.iter_custom(|iters| {
            let (mut c, mut s) = harness::tls::bulk_pair(&f);
            let chunk = vec![0x5au8; 16 * 1024];
            let mut wire = Vec::new();
            let mut plain = vec![0u8; 16 * 1024];
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let mut got = 0;
                for _ in 0..TLS_BULK / chunk.len() {
                    got += harness::tls::bulk_record(&mut c, &mut s, &chunk, &mut wire, &mut plain);
                }
                assert_eq!(got, TLS_BULK);
            }
            let d = t.elapsed();
            record("tls/bulk/bare_rustls", d, iters);
            d
        })
    });
    g.finish();
}

fn tls_summary() {
    println!("\n==== TLS: whole HTTPS connections through the engine vs bare rustls (same TLS work) ====");
    for label in ["full", "resumed"] {
        let Some(bare) = median(&format!("tls/{label}/bare_rustls")) else {
            continue;
        };
        for name in ["engine_inline", "engine_pool"] {
            if let Some(e) = median(&format!("tls/{label}/{name}")) {
                println!(
                    "tls {label} handshake + GET: {name} {:.0} conn/s ({:.0} µs), bare rustls {:.0} conn/s ({:.0} µs), engine reaches {:.0}% of bare",
                    1e9 / e,
                    e / 1000.0,
                    1e9 / bare,
                    bare / 1000.0,
                    100.0 * bare / e
                );
            }
        }
    }
    if let Some(t) = median("tls/bulk/bare_rustls") {
        println!(
            "tls bulk (rustls aws-lc-rs, TLS 1.3 AES-256-GCM, encrypt + decrypt): {:.2} GB/s",
            TLS_BULK as f64 / t
        );
    }
}

fn main() {
    let (conn_check, conn_same) = check_conn_life();
    let (response, bulk_check, bulk_same) = check_bulk();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    bench_wire(&mut c);
    bench_replies(&mut c, "arp_reply", frames::arp_request());
    bench_replies(&mut c, "icmp_echo", frames::ping(56, 1));
    bench_conn_life(&mut c);
    bench_bulk(&mut c, &response);
    bench_tls(&mut c);
    c.final_summary();
    summary(&conn_check, conn_same, &bulk_check, bulk_same);
    tls_summary();
}
