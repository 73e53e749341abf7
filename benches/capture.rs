//! The capture tap's cost on the packet path (`cargo bench -p handshake-benches --bench capture`):
//! a batch of 64 ICMP echo requests answered in place through the bare in-memory device, through
//! a capture tap that is off (no `--pcap`, or paused: one branch per batch), and through a tap
//! that is on (each request and reply matched against the filter and copied into a ring buffer
//! for the writer thread; a full ring counts a drop instead).

use criterion::{Criterion, Throughput};
use handshake::capture::{filter::Filter, Capture, Settings, Tap};
use handshake::device::mem::MemDevice;
use handshake::device::Device;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::wire::Mac;
use std::time::Duration;

const BATCH: usize = 64;

fn stack() -> Stack {
    let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
    let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, 1]), routes);
    cfg.gratuitous_arp = false;
    cfg.icmp.echo_rate = 0;
    Stack::new(cfg)
}

fn ping() -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .icmpv4_echo_request(0x4242, 1)
        .write(&mut f, &[0x5a; 56])
        .unwrap();
    f
}

/// Runs `iters` batches through `dev`, timing only the batch.
fn batches<D: Device>(
    st: &mut Stack,
    dev: &mut D,
    inner: impl Fn(&mut D) -> &mut MemDevice,
    now: &mut u64,
    frame: &[u8],
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        for _ in 0..BATCH {
            inner(dev).inject(frame);
        }
        *now += 5;
        let t = std::time::Instant::now();
        run_batch(st, dev, handshake::Instant::from_micros(*now));
        total += t.elapsed();
        assert_eq!(inner(dev).discard_tx(), BATCH);
    }
    total
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let frame = ping();
    let dir = std::env::temp_dir().join(format!("hs-bench-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cap, mut rings) = Capture::start(Settings {
        path: dir.join("bench.pcapng"),
        filter: Filter::parse("").unwrap(),
        max_bytes: 64 << 20,
        files: 1,
        ring: 4096,
        snaplen: 1518,
        ifaces: vec!["mem q0".into()],
        start_on: true,
    })
    .unwrap();
    let mut g = c.benchmark_group("capture_icmp_echo");
    g.throughput(Throughput::Elements(BATCH as u64));
    {
        let (mut st, mut dev, mut now) = (stack(), MemDevice::new(2048), 1_000_000);
        g.bench_function("no_tap", |b| {
            b.iter_custom(|n| batches(&mut st, &mut dev, |d| d, &mut now, &frame, n))
        });
    }
    {
        let (mut st, mut dev, mut now) = (stack(), Tap::off(MemDevice::new(2048)), 1_000_000);
        g.bench_function("tap_off", |b| {
            b.iter_custom(|n| batches(&mut st, &mut dev, |d| d.inner_mut(), &mut now, &frame, n))
        });
    }
    let mut on = Tap::new(MemDevice::new(2048), rings.pop(), cap.switch());
    {
        let (mut st, mut now) = (stack(), 1_000_000);
        g.bench_function("tap_on", |b| {
            b.iter_custom(|n| batches(&mut st, &mut on, |d| d.inner_mut(), &mut now, &frame, n))
        });
    }
    g.finish();
    let (frames, dropped) = on.counters();
    drop(on);
    let w = cap.finish();
    println!(
        "tap_on: {frames} frames captured ({} written), {dropped} not captured (ring full)",
        w.frames
    );
    let _ = std::fs::remove_dir_all(&dir);
    c.final_summary();
}
