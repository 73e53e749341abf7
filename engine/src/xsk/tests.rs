//! Port and ring accounting against the in-memory kernel: exact fixtures, then seeded
//! simulations of up to 10^6 packets per fault scenario (10^7 in release builds).

use super::mem::{BadCompletion, BadRx, Injected, MemBackend, MemKnobs, Owner};
use super::*;
use crate::device::{Device, Verdict};

// ---------------------------------------------------------------------------------------------
// Helpers

/// splitmix64: small, seeded, good enough to schedule faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

const HDR: usize = 9;

/// A test packet: kind byte, id (LE), then `len - 9` copies of a byte derived from both.
/// Built and checked with memset/memcmp so that 10^6 packets stay fast in debug builds.
fn fill_byte(kind: u8, id: u64) -> u8 {
    (id as u8).wrapping_mul(31) ^ kind ^ ((id >> 8) as u8)
}

fn pkt_len(kind: u8, id: u64) -> usize {
    60 + ((id.wrapping_mul(0x9E37) ^ u64::from(kind)) % 70) as usize
}

fn write_pkt(buf: &mut [u8], kind: u8, id: u64) -> usize {
    let len = pkt_len(kind, id);
    buf[0] = kind;
    buf[1..HDR].copy_from_slice(&id.to_le_bytes());
    buf[HDR..len].fill(fill_byte(kind, id));
    len
}

/// `Some((kind, id))` if `pkt` is intact.
fn read_pkt(pkt: &[u8]) -> Option<(u8, u64)> {
    if pkt.len() < HDR {
        return None;
    }
    let kind = pkt[0];
    let id = u64::from_le_bytes(pkt[1..HDR].try_into().ok()?);
    if pkt.len() != pkt_len(kind, id) {
        return None;
    }
    let b = fill_byte(kind, id);
    let body = &pkt[HDR..];
    (body == &[b; 256][..body.len()]).then_some((kind, id))
}

fn cfg_small(frames: u32) -> XskConfig {
    XskConfig {
        frame_count: frames,
        frame_size: 2048,
        rx_size: 64,
        tx_size: 64,
        ..XskConfig::default()
    }
}

fn mem_port(cfg: &XskConfig, knobs: MemKnobs) -> Port<MemBackend> {
    Port::with_backend(MemBackend::new(cfg, knobs).unwrap(), cfg).unwrap()
}

fn assert_consistent(port: &Port<MemBackend>) {
    port.check().unwrap();
    port.backend().audit(port.ledger()).unwrap();
    assert_eq!(
        port.backend().stats().user_errors,
        0,
        "port misused the rings"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn config_defaults_and_toml() {
    let d = XskConfig::default();
    d.validate().unwrap();
    assert_eq!(
        (d.frame_count, d.frame_size, d.rx_size, d.tx_size, d.batch),
        (4096, 4096, 2048, 2048, 64)
    );
    assert_eq!((d.fill_ring_size(), d.comp_ring_size()), (4096, 4096));
    assert_eq!(d.tx_reserve_frames(), 1024);
    assert_eq!(
        (d.zero_copy, d.need_wakeup, d.busy_poll),
        (ZeroCopy::Auto, true, false)
    );

    let c: XskConfig = toml::from_str(
        "frame_count = 3000\nframe_size = 2048\nzero_copy = \"off\"\nbusy_poll = true\nbatch = 32",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.fill_ring_size(), 4096, "next power of two >= frame_count");
    assert_eq!(c.zero_copy, ZeroCopy::Off);
    assert_eq!(c.batch, 32);
    assert!(toml::from_str::<XskConfig>("frame_cnt = 1").is_err());
    assert!(toml::from_str::<XskConfig>("zero_copy = \"maybe\"").is_err());
}

#[test]
fn config_rejects_out_of_range_values_with_the_field_name() {
    let cases: [(XskConfig, &str); 9] = [
        (
            XskConfig {
                frame_count: 0,
                ..Default::default()
            },
            "frame_count",
        ),
        (
            XskConfig {
                frame_size: 3000,
                ..Default::default()
            },
            "frame_size",
        ),
        (
            XskConfig {
                rx_size: 1000,
                ..Default::default()
            },
            "rx_size",
        ),
        (
            XskConfig {
                tx_size: 0,
                ..Default::default()
            },
            "tx_size",
        ),
        (
            XskConfig {
                fill_size: Some(2048),
                ..Default::default()
            },
            "fill_size",
        ),
        (
            XskConfig {
                comp_size: Some(3000),
                ..Default::default()
            },
            "comp_size",
        ),
        (
            XskConfig {
                batch: 65,
                ..Default::default()
            },
            "batch",
        ),
        (
            XskConfig {
                tx_reserve: Some(4096),
                ..Default::default()
            },
            "tx_reserve",
        ),
        (
            XskConfig {
                frame_count: 1 << 19,
                frame_size: 4096,
                ..Default::default()
            },
            "frame_count",
        ),
    ];
    for (cfg, field) in cases {
        match cfg.validate() {
            Err(XskError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
    let e = XskConfig {
        fill_size: Some(2048),
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("fill_size = 2048") && e.contains("at least frame_count"),
        "{e}"
    );
}

#[test]
fn backend_layout_must_match_the_config() {
    let a = cfg_small(64);
    let b = cfg_small(128);
    let err = Port::with_backend(MemBackend::new(&a, MemKnobs::default()).unwrap(), &b);
    assert!(matches!(
        err,
        Err(XskError::LayoutMismatch {
            backend_frames: 64,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Exact fixtures

#[test]
fn new_port_primes_the_fill_ring_and_keeps_the_reserve() {
    let cfg = XskConfig {
        tx_reserve: Some(16),
        ..cfg_small(64)
    };
    let port = mem_port(&cfg, MemKnobs::default());
    assert_eq!(port.ledger().counts(), [16, 48, 0, 0, 0, 0]);
    assert_eq!(port.free_frames(), 16);
    assert_eq!(port.backend().owner_counts(), [16, 48, 0, 0, 0, 0]);
    assert_eq!(port.frame_capacity(), 2048 - 256);
    assert_consistent(&port);
}

#[test]
fn receive_lends_exact_bytes_and_replies_in_place() {
    let cfg = XskConfig {
        tx_reserve: Some(0),
        ..cfg_small(8)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    let arp = [
        0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1,
    ];
    let ping = [2u8, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45, 0];
    assert_eq!(port.backend_mut().inject(&arp), Injected::Delivered);
    assert_eq!(port.backend_mut().inject(&ping), Injected::Delivered);
    assert_eq!(port.ledger().count(Location::Fill), 8);

    let mut seen = Vec::new();
    let n = port.receive(64, |buf, len| {
        assert_eq!(
            buf.len(),
            2048 - 256,
            "the whole frame after the headroom is lent"
        );
        seen.push(buf[..len].to_vec());
        if buf[12..14] == [0x08, 0x06] {
            // Reply in place: swap the MACs, 42 bytes.
            buf.copy_within(6..12, 0);
            buf[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
            buf[16..42].fill(0xAB);
            Verdict::Transmit(42)
        } else {
            Verdict::Drop
        }
    });
    assert_eq!(n, 2);
    assert_eq!(seen, vec![arp.to_vec(), ping.to_vec()]);
    // One frame left for the TX ring, the other went straight back to the fill ring.
    assert_eq!(port.ledger().counts(), [0, 7, 0, 0, 1, 0]);
    assert_eq!(port.stats().rx_packets, 2);
    assert_eq!(port.stats().rx_bytes, 32);
    assert_eq!((port.stats().tx_packets, port.stats().tx_bytes), (1, 42));
    assert_consistent(&port);

    // With need_wakeup the simulated kernel sleeps until kicked.
    let mut out = Vec::new();
    assert_eq!(port.backend_mut().kernel_tx(|p| out.push(p.to_vec())), 0);
    port.flush();
    assert_eq!(port.stats().tx_wakeups, 1);
    assert_eq!(port.backend_mut().kernel_tx(|p| out.push(p.to_vec())), 1);
    let mut want = vec![2u8, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9, 0x08, 0x06, 0, 1];
    want.extend_from_slice(&[0xAB; 26]);
    assert_eq!(out, vec![want]);
    // The completion is reaped on the next call: the frame is free, then refilled.
    port.flush();
    assert_eq!(port.ledger().counts(), [1, 7, 0, 0, 0, 0]);
    assert_eq!(port.receive(64, |_, _| Verdict::Drop), 0);
    assert_eq!(port.ledger().counts(), [0, 8, 0, 0, 0, 0]);
    assert_consistent(&port);
}

#[test]
fn bad_verdict_lengths_drop_the_frame() {
    let cfg = XskConfig {
        tx_reserve: Some(0),
        ..cfg_small(4)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    for _ in 0..3 {
        port.backend_mut().inject(&[1; 60]);
    }
    let mut k = 0;
    let n = port.receive(64, |buf, _| {
        k += 1;
        match k {
            1 => Verdict::Transmit(0),
            2 => Verdict::Transmit(buf.len() + 1),
            _ => Verdict::Transmit(buf.len()),
        }
    });
    assert_eq!(n, 3);
    assert_eq!(port.stats().bad_lengths, 2);
    assert_eq!(port.stats().tx_packets, 1);
    assert_eq!(port.ledger().counts(), [0, 3, 0, 0, 1, 0]);
    assert_consistent(&port);

    // The fill ring needs every frame: nothing spare to lend.
    assert_eq!(port.transmit(10, |_| panic!("nothing to lend")), 0);

    // Originating: Some(0) and an oversized length are refused and the frame reused; `max`
    // bounds the calls, so a closure that keeps failing cannot spin.
    let cfg = XskConfig {
        tx_reserve: Some(2),
        ..cfg_small(4)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    let mut calls = 0;
    let q = port.transmit(10, |buf| {
        calls += 1;
        if calls % 2 == 1 {
            Some(0)
        } else {
            Some(buf.len() + 1)
        }
    });
    assert_eq!((q, calls), (0, 10));
    assert_eq!(port.stats().bad_lengths, 10);
    assert_eq!(port.ledger().counts(), [2, 2, 0, 0, 0, 0]);
    assert_eq!(port.transmit(10, |buf| Some(buf.len())), 2);
    assert_consistent(&port);
}

#[test]
fn transmit_only_lends_frames_the_fill_ring_does_not_need() {
    let cfg = XskConfig {
        tx_reserve: Some(5),
        ..cfg_small(32)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    let mut id = 0;
    let q = port.transmit(100, |buf| {
        id += 1;
        Some(write_pkt(buf, b'O', id))
    });
    assert_eq!(q, 5, "only the reserve is spare");
    assert_eq!(port.ledger().counts(), [0, 27, 0, 0, 5, 0]);
    // A closure with nothing to send stops at once and gives the frame back.
    assert_eq!(port.transmit(100, |_| None), 0);
    port.flush();
    let mut ids = Vec::new();
    port.backend_mut()
        .kernel_tx(|p| ids.push(read_pkt(p).unwrap().1));
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_consistent(&port);
    // Completed frames come back and can be lent again.
    let q = port.transmit(100, |buf| {
        id += 1;
        Some(write_pkt(buf, b'O', id))
    });
    assert_eq!(q, 5);
    assert_consistent(&port);
}

#[test]
fn transmit_stops_at_a_full_tx_ring_without_losing_frames() {
    let cfg = XskConfig {
        tx_reserve: Some(20),
        tx_size: 8,
        ..cfg_small(32)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    let mut id = 0;
    let q = port.transmit(100, |buf| {
        id += 1;
        Some(write_pkt(buf, b'O', id))
    });
    assert_eq!((q, id), (8, 8), "never lends a frame the ring cannot take");
    assert_eq!(port.stats().tx_ring_full, 1);
    assert_eq!(port.transmit(1, |_| panic!("must not be called")), 0);
    assert_eq!(port.stats().tx_ring_full, 2);
    assert_eq!(port.stats().tx_ring_full_drops, 0);
    assert_consistent(&port);
}

#[test]
fn copy_mode_needs_a_kick_per_32_frames() {
    let cfg = XskConfig {
        tx_reserve: Some(100),
        tx_size: 128,
        ..cfg_small(128)
    };
    let knobs = MemKnobs {
        copy_mode: true,
        ..MemKnobs::default()
    };
    let mut port = mem_port(&cfg, knobs);
    let mut id = 0;
    assert_eq!(
        port.transmit(100, |buf| {
            id += 1;
            Some(write_pkt(buf, b'O', id))
        }),
        100
    );
    let mut sent = 0;
    assert_eq!(
        port.backend_mut().kernel_tx(|_| sent += 1),
        0,
        "nothing without sendto"
    );
    let mut kicks = 0;
    while sent < 100 {
        port.flush();
        kicks += 1;
        let step = port.backend_mut().kernel_tx(|_| sent += 1);
        assert!(step <= 32);
        assert!(kicks < 10);
    }
    assert_eq!(kicks, 4);
    assert_eq!(port.stats().tx_wakeups, 4);
    port.flush();
    assert_eq!(port.ledger().count(Location::Tx), 0);
    assert_eq!(
        port.stats().tx_wakeups,
        4,
        "no kick once nothing is outstanding"
    );
    assert_consistent(&port);
}

#[test]
fn need_wakeup_off_kicks_whenever_tx_is_outstanding() {
    let cfg = XskConfig {
        tx_reserve: Some(8),
        need_wakeup: false,
        ..cfg_small(32)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    port.transmit(8, |buf| Some(write_pkt(buf, b'O', 1)));
    // The simulated kernel does not need the kick here, but without need_wakeup the port
    // cannot know, so it kicks while frames are outstanding, and only then.
    port.flush();
    assert_eq!(port.backend_mut().kernel_tx(|_| {}), 8);
    port.flush();
    port.flush();
    assert_eq!(port.stats().wakeups(), 1);
    assert_eq!(port.backend().stats().tx_kicks, 1);
    assert_consistent(&port);
}

#[test]
fn flush_without_need_wakeup_flag_does_not_kick() {
    // Zero-copy with need_wakeup: the kernel is awake after a kick until it drains the ring.
    let cfg = XskConfig {
        tx_reserve: Some(8),
        ..cfg_small(32)
    };
    let knobs = MemKnobs {
        tx_per_step: 2,
        ..MemKnobs::default()
    };
    let mut port = mem_port(&cfg, knobs);
    port.transmit(8, |buf| Some(write_pkt(buf, b'O', 1)));
    port.flush();
    assert_eq!(port.stats().tx_wakeups, 1);
    for _ in 0..3 {
        assert_eq!(port.backend_mut().kernel_tx(|_| {}), 2);
        port.flush();
    }
    assert_eq!(port.stats().tx_wakeups, 1, "the kernel did not ask");
    assert_eq!(port.backend_mut().kernel_tx(|_| {}), 2);
    assert_consistent(&port);
}

#[test]
fn fill_ring_wakeup_resumes_reception() {
    let cfg = XskConfig {
        tx_reserve: Some(0),
        rx_size: 16,
        ..cfg_small(8)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    for _ in 0..8 {
        assert_eq!(port.backend_mut().inject(&[7; 64]), Injected::Delivered);
    }
    // Fill ring empty: the kernel drops and asks for a wakeup.
    assert_eq!(port.backend_mut().inject(&[7; 64]), Injected::NoFillFrame);
    assert!(port.backend().fill_needs_wakeup());
    // Nothing to refill with yet: no point kicking.
    assert_eq!(port.receive(0, |_, _| Verdict::Drop), 0);
    assert_eq!(port.stats().rx_wakeups, 0);
    assert_eq!(port.stats().fill_ring_empty, 1);
    // The drops go back to the fill ring, then the port kicks.
    assert_eq!(port.receive(64, |_, _| Verdict::Drop), 8);
    assert_eq!(port.stats().rx_wakeups, 1);
    assert_eq!(port.backend().stats().rx_wakeups, 1);
    assert!(!port.backend().fill_needs_wakeup());
    assert_eq!(port.backend_mut().inject(&[7; 64]), Injected::Delivered);
    assert_eq!(port.receive(64, |_, _| Verdict::Drop), 1);
    assert_consistent(&port);
}

#[test]
fn invalid_rx_descriptors_are_counted_and_frames_recycled() {
    let cfg = XskConfig {
        tx_reserve: Some(4),
        ..cfg_small(16)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    // One frame on the TX side, so that NotHandedOut has a target.
    assert_eq!(port.transmit(1, |buf| Some(write_pkt(buf, b'O', 1))), 1);
    let tx_frame = (0..16)
        .find(|&f| port.backend().owner(f) == Some(Owner::TxRing))
        .unwrap();
    let b = port.backend_mut();
    b.inject(&[1; 60]);
    assert!(b.inject_bad_rx(BadRx::OutOfRange));
    assert!(b.inject_bad_rx(BadRx::PastFrameEnd));
    assert!(b.inject_bad_rx(BadRx::NotHandedOut));
    b.inject(&[2; 61]);
    let mut lens = Vec::new();
    let n = port.receive(64, |_, len| {
        lens.push(len);
        Verdict::Drop
    });
    assert_eq!(n, 2);
    assert_eq!(lens, vec![60, 61]);
    assert_eq!(port.stats().invalid_rx_descs, 3);
    assert_eq!(port.ledger().location(tx_frame), Some(Location::Tx));
    // The past-the-end frame went back to the fill ring: 12 fill + 1 tx + 3 free.
    assert_eq!(port.ledger().counts(), [3, 12, 0, 0, 1, 0]);
    assert_consistent(&port);
}

#[test]
fn duplicate_descriptor_in_one_batch_is_rejected() {
    let cfg = XskConfig {
        tx_reserve: Some(0),
        ..cfg_small(4)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    port.backend_mut().inject(&[1; 60]);
    assert!(port.backend_mut().inject_bad_rx(BadRx::DuplicateOfLast));
    port.backend_mut().inject(&[2; 60]);
    let mut lens = Vec::new();
    let n = port.receive(64, |_, len| {
        lens.push(len);
        Verdict::Transmit(len)
    });
    assert_eq!(n, 2, "the frame is lent once");
    assert_eq!(port.stats().invalid_rx_descs, 1);
    assert_eq!(port.ledger().counts(), [0, 2, 0, 0, 2, 0]);
    assert_consistent(&port);
}

#[test]
fn invalid_completions_are_counted_and_ignored() {
    let cfg = XskConfig {
        tx_reserve: Some(4),
        ..cfg_small(16)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    let b = port.backend_mut();
    assert!(b.inject_bad_completion(BadCompletion::OutOfRange));
    assert!(b.inject_bad_completion(BadCompletion::NotSent));
    assert!(b.inject_bad_completion(BadCompletion::NotSent));
    port.flush();
    assert_eq!(port.stats().invalid_comp_descs, 3);
    assert_eq!(port.ledger().counts(), [4, 12, 0, 0, 0, 0]);
    assert_consistent(&port);
}

#[test]
fn check_catches_a_corrupt_free_list() {
    let cfg = cfg_small(16);
    let mut port = mem_port(&cfg, MemKnobs::default());
    port.check().unwrap();
    let f = port.free[0];
    port.free.push(f);
    assert!(matches!(
        port.check(),
        Err(LedgerError::FreeListMismatch { .. })
    ));
    port.free.pop();
    // A fill frame listed as free.
    let filled = (0..16)
        .find(|&f| port.ledger().location(f) == Some(Location::Fill))
        .unwrap();
    let last = port.free.len() - 1;
    port.free[last] = filled;
    assert_eq!(
        port.check(),
        Err(LedgerError::FreeListMismatch {
            listed: 4,
            free: 4,
            frame: filled
        })
    );
}

#[test]
fn wait_busy_poll_and_mem() {
    let cfg = cfg_small(16);
    let mut port = mem_port(&cfg, MemKnobs::default());
    assert!(!port.wait(Duration::from_millis(5)).unwrap());
    port.backend_mut().inject(&[1; 60]);
    assert!(port.wait(Duration::from_millis(5)).unwrap());
    assert_eq!(port.stats().waits, 2);
    let cfg = XskConfig {
        busy_poll: true,
        ..cfg_small(16)
    };
    let mut port = mem_port(&cfg, MemKnobs::default());
    assert!(port.wait(Duration::from_secs(10)).unwrap());
    assert_eq!(port.stats().waits, 0);
}

// ---------------------------------------------------------------------------------------------
// Seeded simulations

#[derive(Clone)]
struct Scenario {
    cfg: XskConfig,
    knobs: MemKnobs,
    seed: u64,
    /// Packets to inject in total.
    packets: u64,
    /// Packets injected per step, uniform in this range.
    burst: (u64, u64),
    /// `receive` calls per step and their `max`.
    rx_calls: usize,
    rx_max: usize,
    /// Drain the RX ring completely every step (needed when injecting invalid RX descriptors).
    rx_drain: bool,
    /// Percent of received packets answered in place.
    reply_pct: u64,
    /// Packets originated per step, uniform in 0..=this.
    originate: u64,
    /// Per mille per step: invalid RX descriptor / invalid completion.
    bad_rx_permille: u64,
    bad_comp_permille: u64,
    /// Audit against the simulated kernel every this many steps.
    audit_every: u64,
}

impl Scenario {
    fn new(seed: u64, packets: u64) -> Self {
        Scenario {
            cfg: XskConfig {
                frame_count: 1024,
                frame_size: 2048,
                rx_size: 256,
                tx_size: 256,
                tx_reserve: Some(256),
                ..XskConfig::default()
            },
            knobs: MemKnobs::default(),
            seed,
            packets,
            burst: (0, 48),
            rx_calls: 1,
            rx_max: 64,
            rx_drain: false,
            reply_pct: 30,
            originate: 8,
            bad_rx_permille: 0,
            bad_comp_permille: 0,
            audit_every: 997,
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    port: PortStats,
    kernel: mem::MemStats,
    stack_seen: u64,
    replied: u64,
    originated: u64,
    sink_replies: u64,
    sink_originated: u64,
    /// UMEM frames of the port, and how many were not back in the fill ring or free at the end.
    frames: u32,
    frames_leaked: u32,
}

/// Per-id counters for the sink: each id must be seen at most (and, for originated packets,
/// exactly) once.
struct Seen(Vec<u8>);

impl Seen {
    fn mark(&mut self, id: u64) {
        let i = id as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
        assert_eq!(self.0[i], 1, "id {id} transmitted twice");
    }
    fn count(&self, id: u64) -> u8 {
        self.0.get(id as usize).copied().unwrap_or(0)
    }
}

fn run(s: &Scenario) -> Outcome {
    let mut port = mem_port(&s.cfg, s.knobs);
    let mut rng = Rng(s.seed);
    let mut buf = [0u8; 256];
    let mut out = Outcome::default();
    let mut next_in = 0u64;
    let mut next_out = 1u64 << 40;
    let mut replied_ids = Seen(Vec::new());
    let mut sink_r = Seen(Vec::new());
    let mut sink_o = Seen(Vec::new());
    let mut step = 0u64;
    let mut corrupt = 0u64;
    let bad_kinds = [BadRx::OutOfRange, BadRx::PastFrameEnd, BadRx::NotHandedOut];
    let comp_kinds = [BadCompletion::OutOfRange, BadCompletion::NotSent];
    let max_steps = s.packets * 4 + 100_000;

    loop {
        step += 1;
        assert!(step < max_steps, "simulation does not make progress");
        let injecting = next_in < s.packets;
        // The wire.
        if injecting {
            let burst = rng.range(s.burst.0, s.burst.1).min(s.packets - next_in);
            for _ in 0..burst {
                let len = write_pkt(&mut buf, b'I', next_in);
                port.backend_mut().inject(&buf[..len]);
                next_in += 1;
            }
            if rng.below(1000) < s.bad_rx_permille {
                let k = bad_kinds[rng.below(3) as usize];
                port.backend_mut().inject_bad_rx(k);
            }
            if rng.below(1000) < s.bad_comp_permille {
                let k = comp_kinds[rng.below(2) as usize];
                port.backend_mut().inject_bad_completion(k);
            }
        }

        // The worker.
        let mut calls = 0;
        loop {
            let reply_pct = s.reply_pct;
            let n = port.receive(s.rx_max, |frame, len| {
                out.stack_seen += 1;
                let Some((b'I', id)) = read_pkt(&frame[..len]) else {
                    corrupt += 1;
                    return Verdict::Drop;
                };
                if id.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100 < reply_pct {
                    out.replied += 1;
                    replied_ids.mark(id);
                    Verdict::Transmit(write_pkt(frame, b'R', id))
                } else {
                    Verdict::Drop
                }
            });
            calls += 1;
            let more = if s.rx_drain {
                n > 0 || port.backend().rx_pending() > 0
            } else {
                calls < s.rx_calls
            };
            if !more {
                break;
            }
        }
        if injecting {
            let k = rng.below(s.originate + 1) as usize;
            let q = port.transmit(k, |frame| {
                let id = next_out;
                next_out += 1;
                Some(write_pkt(frame, b'O', id))
            });
            // Every frame the closure filled was queued (transmit never lends without room).
            assert_eq!(q as u64, next_out - (1 << 40) - out.originated);
            out.originated += q as u64;
        }
        port.flush();

        // The kernel's transmit path.
        port.backend_mut().kernel_tx(|p| match read_pkt(p) {
            Some((b'R', id)) => {
                assert_eq!(replied_ids.count(id), 1, "reply {id} never decided");
                sink_r.mark(id);
                out.sink_replies += 1;
            }
            Some((b'O', id)) => {
                sink_o.mark(id - (1 << 40));
                out.sink_originated += 1;
            }
            other => panic!(
                "sink got a corrupt frame: {other:?} {:?}",
                &p[..p.len().min(16)]
            ),
        });

        if step.is_multiple_of(s.audit_every) {
            assert_consistent(&port);
        }
        if !injecting && port.backend().rx_pending() == 0 && port.ledger().count(Location::Tx) == 0
        {
            break;
        }
    }

    assert_eq!(corrupt, 0, "the stack got corrupt frames");
    assert_consistent(&port);
    // Everything is back: the fill ring holds its target, the rest is free.
    let back = port.ledger().count(Location::Fill) + port.ledger().count(Location::Free);
    out.frames = s.cfg.frame_count;
    out.frames_leaked = out.frames.saturating_sub(back);
    assert_eq!(back, out.frames, "frames back in the fill ring or free");
    assert_eq!(out.frames_leaked, 0);
    out.port = *port.stats();
    out.kernel = *port.backend().stats();
    let k = &out.kernel;
    // Every injected packet was delivered or counted as dropped by the kernel.
    assert_eq!(k.injected, s.packets);
    assert_eq!(
        k.injected,
        k.rx_delivered + k.rx_no_fill + k.rx_ring_full + k.rx_too_long
    );
    // Every delivered packet was lent to the stack exactly once.
    assert_eq!(out.port.rx_packets, k.rx_delivered);
    assert_eq!(out.stack_seen, k.rx_delivered);
    // Every reply reached the wire once, or was counted as dropped for a full TX ring.
    assert_eq!(out.replied, out.sink_replies + out.port.tx_ring_full_drops);
    // Every originated packet reached the wire exactly once.
    assert_eq!(out.sink_originated, out.originated);
    for id in 0..out.originated {
        assert_eq!(sink_o.count(id), 1, "originated {id}");
    }
    assert_eq!(k.tx_sent, out.port.tx_packets);
    assert_eq!(k.tx_completed, out.port.tx_packets);
    assert_eq!(out.port.invalid_rx_descs, k.bad_rx_injected);
    assert_eq!(out.port.invalid_comp_descs, k.bad_comp_injected);
    assert_eq!(out.port.bad_lengths, 0);
    out
}

#[test]
fn sim_mixed_traffic_100k() {
    let mut s = Scenario::new(1, 100_000);
    s.cfg.rx_size = 2048;
    let o = run(&s);
    // Provisioned for the load: nothing dropped anywhere.
    assert_eq!(o.kernel.rx_no_fill + o.kernel.rx_ring_full, 0, "{o:?}");
    assert_eq!(o.port.tx_ring_full_drops, 0);
    assert!(o.replied > 25_000 && o.originated > 10_000, "{o:?}");
    // need_wakeup: far fewer syscalls than packets.
    assert!(
        o.port.wakeups() < (o.port.tx_packets + o.port.rx_packets) / 4,
        "{o:?}"
    );
}

#[test]
fn sim_mixed_traffic_copy_mode() {
    let mut s = Scenario::new(2, 100_000);
    s.knobs.copy_mode = true;
    s.cfg.rx_size = 2048;
    s.originate = 4;
    let o = run(&s);
    assert_eq!(o.kernel.rx_no_fill + o.kernel.rx_ring_full, 0, "{o:?}");
    assert_eq!(o.port.tx_wakeups, o.kernel.tx_kicks);
}

/// One line of figures for a 10^7-packet run (`cargo xtask test` prints them: the release
/// stage runs these with `--nocapture`).
#[cfg(not(debug_assertions))]
fn report(name: &str, started: std::time::Instant, o: &Outcome) {
    let k = &o.kernel;
    println!(
        "{name}: {} packets in {:.1} s; delivered {}, kernel drops {} (no fill {}, RX ring full \
         {}), replies {} ({} dropped on a full TX ring), originated {}, invalid descriptors \
         {} RX / {} completion; frames leaked {} of {}",
        k.injected,
        started.elapsed().as_secs_f64(),
        k.rx_delivered,
        k.rx_no_fill + k.rx_ring_full + k.rx_too_long,
        k.rx_no_fill,
        k.rx_ring_full,
        o.replied,
        o.port.tx_ring_full_drops,
        o.originated,
        o.port.invalid_rx_descs,
        o.port.invalid_comp_descs,
        o.frames_leaked,
        o.frames,
    );
}

fn fill_starved(packets: u64) -> Outcome {
    // Few frames, big bursts, slow completions: frames pile up on the TX side and the fill ring
    // runs dry.
    let mut s = Scenario::new(3, packets);
    s.cfg = XskConfig {
        frame_count: 256,
        frame_size: 2048,
        rx_size: 256,
        tx_size: 256,
        tx_reserve: Some(32),
        ..XskConfig::default()
    };
    s.burst = (0, 300);
    s.rx_calls = 2;
    s.reply_pct = 60;
    s.knobs.completions_per_step = 48;
    let o = run(&s);
    assert!(o.kernel.rx_no_fill > 0, "{o:?}");
    assert!(o.port.fill_ring_empty > 0, "{o:?}");
    assert!(o.port.rx_wakeups > 0, "{o:?}");
    o
}

#[test]
fn sim_fill_starved_1m() {
    fill_starved(1_000_000);
}

#[test]
#[cfg(not(debug_assertions))]
fn sim_fill_starved_10m() {
    let t = std::time::Instant::now();
    let o = fill_starved(10_000_000);
    report("sim_fill_starved_10m", t, &o);
}

fn slow_rx(packets: u64) -> Outcome {
    let mut s = Scenario::new(4, packets);
    s.cfg.rx_size = 64;
    s.burst = (0, 24);
    s.rx_max = 8;
    s.reply_pct = 20;
    s.originate = 2;
    let o = run(&s);
    assert!(o.kernel.rx_ring_full > 0, "{o:?}");
    assert_eq!(o.kernel.rx_no_fill, 0, "{o:?}");
    o
}

#[test]
fn sim_slow_rx_consumer_1m() {
    slow_rx(1_000_000);
}

#[test]
#[cfg(not(debug_assertions))]
fn sim_slow_rx_consumer_10m() {
    let t = std::time::Instant::now();
    let o = slow_rx(10_000_000);
    report("sim_slow_rx_consumer_10m", t, &o);
}

fn tx_backlog(packets: u64) -> Outcome {
    let mut s = Scenario::new(5, packets);
    s.cfg.rx_size = 1024;
    s.cfg.tx_size = 32;
    s.knobs.tx_per_step = 12;
    s.knobs.completions_per_step = 10;
    s.burst = (0, 40);
    s.rx_calls = 2;
    s.reply_pct = 70;
    s.originate = 6;
    let o = run(&s);
    assert!(o.port.tx_ring_full > 0, "{o:?}");
    assert!(o.port.tx_ring_full_drops > 0, "{o:?}");
    o
}

#[test]
fn sim_tx_full_completion_backlog_1m() {
    tx_backlog(1_000_000);
}

#[test]
#[cfg(not(debug_assertions))]
fn sim_tx_full_completion_backlog_10m() {
    let t = std::time::Instant::now();
    let o = tx_backlog(10_000_000);
    report("sim_tx_full_completion_backlog_10m", t, &o);
}

fn invalid_descs(packets: u64) -> Outcome {
    let mut s = Scenario::new(6, packets);
    s.cfg.rx_size = 2048;
    s.rx_drain = true;
    s.bad_rx_permille = 100;
    s.bad_comp_permille = 100;
    s.knobs.completions_per_step = 16;
    let o = run(&s);
    assert!(o.kernel.bad_rx_injected > 1000, "{o:?}");
    assert!(o.kernel.bad_comp_injected > 1000, "{o:?}");
    o
}

#[test]
fn sim_invalid_descriptors_1m() {
    invalid_descs(1_000_000);
}

#[test]
#[cfg(not(debug_assertions))]
fn sim_invalid_descriptors_10m() {
    let t = std::time::Instant::now();
    let o = invalid_descs(10_000_000);
    report("sim_invalid_descriptors_10m", t, &o);
}

#[test]
fn sim_is_deterministic() {
    let s = Scenario::new(42, 20_000);
    let a = run(&s);
    let b = run(&s);
    assert_eq!(a.port, b.port);
    assert_eq!(a.kernel, b.kernel);
    let c = run(&Scenario::new(43, 20_000));
    assert_ne!(a.port, c.port, "the seed matters");
}

#[test]
fn two_ports_back_to_back_echo() {
    let cfg = XskConfig {
        frame_count: 512,
        frame_size: 2048,
        rx_size: 512,
        tx_size: 256,
        tx_reserve: Some(128),
        ..XskConfig::default()
    };
    let mut a = mem_port(&cfg, MemKnobs::default());
    let mut b = mem_port(
        &cfg,
        MemKnobs {
            copy_mode: true,
            ..MemKnobs::default()
        },
    );
    const N: u64 = 100_000;
    let mut next = 0u64;
    let mut back = Seen(Vec::new());
    let mut echoed = 0u64;
    let mut steps = 0u64;
    let mut returned = 0u64;
    while returned < N {
        steps += 1;
        assert!(steps < 1_000_000, "no progress");
        // A originates.
        if next < N {
            let q = a.transmit(((N - next) as usize).min(32), |f| {
                let id = next;
                next += 1;
                Some(write_pkt(f, b'O', id))
            });
            assert!(q <= 32);
        }
        a.flush();
        let (pa, pb) = (&mut a, &mut b);
        pa.backend_mut().kernel_tx(|p| {
            assert_eq!(pb.backend_mut().inject(p), Injected::Delivered);
        });
        // B echoes in place.
        b.receive(64, |f, len| {
            let (kind, id) = read_pkt(&f[..len]).expect("intact");
            assert_eq!(kind, b'O');
            echoed += 1;
            Verdict::Transmit(write_pkt(f, b'R', id))
        });
        b.flush();
        let (pa, pb) = (&mut a, &mut b);
        pb.backend_mut().kernel_tx(|p| {
            assert_eq!(pa.backend_mut().inject(p), Injected::Delivered);
        });
        // A collects.
        a.receive(64, |f, len| {
            let (kind, id) = read_pkt(&f[..len]).expect("intact");
            assert_eq!(kind, b'R');
            back.mark(id);
            returned += 1;
            Verdict::Drop
        });
        if steps.is_multiple_of(101) {
            assert_consistent(&a);
            assert_consistent(&b);
        }
    }
    assert_eq!(echoed, N);
    assert!((0..N).all(|id| back.count(id) == 1));
    for p in [&mut a, &mut b] {
        p.flush();
        assert_consistent(p);
        assert_eq!(p.stats().tx_ring_full_drops, 0);
    }
    assert_eq!(a.stats().tx_packets, N);
    assert_eq!(b.stats().rx_packets, N);
    assert_eq!(b.stats().tx_packets, N);
    assert_eq!(a.stats().rx_packets, N);
}

// ---------------------------------------------------------------------------------------------
// The real backend on a veth (root, inside a throwaway network namespace)

/// Binds on a veth inside a throwaway namespace. Run by a harness that creates the namespace and
/// the pair and deletes them on every exit path, e.g. (as root):
///
/// ```text
/// NS=hs-xsk-$$; trap 'ip netns del $NS' EXIT; ip netns add $NS
/// ip -n $NS link add hsx0 type veth peer name hsx1
/// ip -n $NS addr add 198.18.0.3/24 dev hsx0; ip -n $NS addr add 198.18.0.2/24 dev hsx1
/// ip -n $NS link set hsx0 up; ip -n $NS link set hsx1 up
/// HS_XSK_TEST_IF=hsx0 HS_XSK_TEST_PEER=hsx1 ip netns exec $NS <test binary built with
///     --features xdp> --ignored --exact xsk::tests::xsk_binds_on_veth
/// ```
#[cfg(feature = "xdp")]
#[test]
#[ignore = "needs root and a veth pair in a throwaway netns (HS_XSK_TEST_IF, HS_XSK_TEST_PEER)"]
fn xsk_binds_on_veth() {
    use std::time::Instant as StdInstant;
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let ifname = std::env::var("HS_XSK_TEST_IF").expect("HS_XSK_TEST_IF: the veth to bind");
    let peer = std::env::var("HS_XSK_TEST_PEER").expect("HS_XSK_TEST_PEER: its peer");
    let peer_rx = || -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{peer}/statistics/rx_packets"))
            .expect("peer statistics")
            .trim()
            .parse()
            .unwrap()
    };
    let cfg = XskConfig {
        frame_count: 256,
        frame_size: 2048,
        rx_size: 256,
        tx_size: 256,
        ..XskConfig::default()
    };

    // Auto: veth refuses zero-copy, the port falls back to copy mode.
    let mut port = Port::new(&ifname, 0, &cfg).expect("bind in auto mode");
    assert!(!port.zero_copy(), "veth has no AF_XDP zero-copy");
    assert!(port.fd() >= 0);
    assert_eq!(port.ledger().count(Location::Fill), 192);
    assert_eq!(port.frame_capacity(), 2048 - 256);
    // Nothing is redirected without our XDP program.
    assert_eq!(port.receive(64, |_, _| panic!("no program redirects")), 0);

    // Transmit 8 ARP requests from 198.18.0.1 for 198.18.0.2; they must reach the peer and
    // their frames come back through the completion ring.
    let before = peer_rx();
    let arp: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06, // Ethernet
        0, 1, 0x08, 0, 6, 4, 0, 1, // ARP request
        0x02, 0, 0, 0, 0, 1, 198, 18, 0, 1, // sender
        0, 0, 0, 0, 0, 0, 198, 18, 0, 2, // target
    ];
    let q = port.transmit(8, |buf| {
        buf[..42].copy_from_slice(&arp);
        buf[42..60].fill(0);
        Some(60)
    });
    assert_eq!(q, 8);
    let start = StdInstant::now();
    while port.ledger().count(Location::Tx) > 0 {
        assert!(
            start.elapsed().as_secs() < 2,
            "completions never came: {:?}",
            port
        );
        port.flush();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(
        peer_rx() >= before + 8,
        "the peer saw {} frames",
        peer_rx() - before
    );
    assert_eq!(port.stats().tx_packets, 8);
    assert!(port.stats().tx_wakeups >= 1, "copy mode needs sendto");
    port.check().unwrap();
    assert!(
        !port.wait(Duration::from_millis(20)).unwrap(),
        "nothing to read"
    );
    let ks = port.kernel_stats().unwrap();
    assert_eq!(ks.tx_invalid_descs, 0);
    drop(port);

    // Required: the driver's refusal is an error that says what to do.
    let req = XskConfig {
        zero_copy: ZeroCopy::Required,
        ..cfg.clone()
    };
    // The kernel releases a closed socket's queue asynchronously (a deferred work item): retry
    // EBUSY for a while.
    let bind_retrying = |cfg: &XskConfig| {
        let start = StdInstant::now();
        loop {
            let r = Port::new(&ifname, 0, cfg);
            match &r {
                Err(XskError::Bind { source, .. })
                    if source.to_string().contains("EBUSY") && start.elapsed().as_secs() < 2 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => return (r, start.elapsed()),
            }
        }
    };
    let (r, waited) = bind_retrying(&req);
    eprintln!("queue released after {waited:?}");
    match r {
        Err(e @ XskError::ZeroCopyUnsupported { .. }) => {
            assert!(e.to_string().contains("zero_copy = \"auto\""), "{e}")
        }
        other => panic!("expected ZeroCopyUnsupported, got {other:?}"),
    }
    // Off, and the queue is free again after the drops above.
    let off = XskConfig {
        zero_copy: ZeroCopy::Off,
        need_wakeup: false,
        ..cfg.clone()
    };
    let port = bind_retrying(&off).0.expect("bind in copy mode");
    assert!(!port.zero_copy());
    // A second socket on the same queue is refused while the first lives.
    match Port::new(&ifname, 0, &off) {
        Err(XskError::Bind { .. }) => {}
        other => panic!("expected a bind error (EBUSY), got {other:?}"),
    }
    drop(port);
    // No such interface / no such queue / bad name.
    assert!(matches!(
        Port::new("hsx-nope", 0, &cfg),
        Err(XskError::Bind { .. })
    ));
    assert!(matches!(
        Port::new(&ifname, 63, &cfg),
        Err(XskError::Bind { .. })
    ));
    assert!(matches!(
        Port::new("a/b", 0, &cfg),
        Err(XskError::InterfaceName { .. })
    ));
}

/// The whole RX path on a real kernel: our XDP program redirects ARP and ICMP for 198.18.0.1
/// to the port; the port answers the ARP request in place (zero copy), so the peer's ping then
/// reaches the port as ICMP echo requests. Harness (as root): namespaces `E` and `P`, a veth
/// `hsx0` in `E` and `hsx1` in `P` with 198.18.0.2/24 (nothing on `hsx0`), both up, then
/// `HS_XSK_TEST_IF=hsx0 HS_XSK_TEST_PEER_NS=$P HANDSHAKE_BPF_OBJECT=target/bpf/handshake-xdp.o
/// ip netns exec $E <test binary> --ignored --exact
/// xsk::tests::xsk_receives_redirected_frames_and_replies_in_place`; delete both on exit.
#[cfg(feature = "xdp")]
#[test]
#[ignore = "needs root, the XDP object, and veth pair across two throwaway netns \
            (HS_XSK_TEST_IF, HS_XSK_TEST_PEER_NS)"]
fn xsk_receives_redirected_frames_and_replies_in_place() {
    use crate::loader::XdpLoader;
    use std::net::Ipv4Addr;
    use std::time::Instant as StdInstant;
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let ifname = std::env::var("HS_XSK_TEST_IF").expect("HS_XSK_TEST_IF: the engine's veth");
    let peer_ns = std::env::var("HS_XSK_TEST_PEER_NS").expect("HS_XSK_TEST_PEER_NS");
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).unwrap();
    let mac: Vec<u8> = mac_text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let ours = [198u8, 18, 0, 1];

    let cfg = XskConfig {
        frame_count: 512,
        frame_size: 4096,
        rx_size: 256,
        tx_size: 256,
        ..XskConfig::default()
    };
    let mut port = Port::new(&ifname, 0, &cfg).expect("bind");
    let mut prog = XdpLoader::new(XdpLoader::default_object())
        .attach(&ifname)
        .expect("attach the XDP program (build it with `cargo xtask build-ebpf`)");
    prog.set_addresses(&[Ipv4Addr::from(ours)]).unwrap();
    prog.register_socket(0, port.fd()).unwrap();

    let mut ping = std::process::Command::new("ip")
        .args([
            "netns", "exec", &peer_ns, "ping", "-c", "4", "-i", "0.2", "-W", "1",
        ])
        .arg(Ipv4Addr::from(ours).to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let (mut arp_requests, mut echo_requests) = (0u32, 0u32);
    let start = StdInstant::now();
    while start.elapsed().as_secs() < 4 && echo_requests < 2 {
        port.wait(Duration::from_millis(50)).unwrap();
        port.receive(64, |f, len| {
            assert!(f.len() >= 4096 - 256 && len >= 42 && len <= f.len());
            match (&f[12..14], f.get(20..22)) {
                // ARP request for our address: answer in place.
                ([0x08, 0x06], Some([0, 1])) if f[38..42] == ours => {
                    arp_requests += 1;
                    let (peer_mac, peer_ip): ([u8; 6], [u8; 4]) =
                        (f[22..28].try_into().unwrap(), f[28..32].try_into().unwrap());
                    f[0..6].copy_from_slice(&peer_mac);
                    f[6..12].copy_from_slice(&mac);
                    f[21] = 2;
                    f[22..28].copy_from_slice(&mac);
                    f[28..32].copy_from_slice(&ours);
                    f[32..38].copy_from_slice(&peer_mac);
                    f[38..42].copy_from_slice(&peer_ip);
                    Verdict::Transmit(42)
                }
                // IPv4 ICMP echo request to us.
                ([0x08, 0x00], _) if f[23] == 1 && f[30..34] == ours && f[34] == 8 => {
                    echo_requests += 1;
                    Verdict::Drop
                }
                _ => Verdict::Drop,
            }
        });
        port.flush();
    }
    let _ = ping.kill();
    let _ = ping.wait();
    let counters = prog.counters();
    prog.detach().unwrap();
    eprintln!(
        "arp requests {arp_requests}, echo requests {echo_requests}, port {:?}, xdp {counters:?}",
        port.stats()
    );
    assert!(arp_requests >= 1, "no ARP request redirected to the socket");
    assert!(echo_requests >= 2, "the peer never used our ARP reply");
    assert!(port.stats().tx_packets >= 1);
    port.flush();
    port.check().unwrap();
    assert_eq!(
        port.stats().invalid_rx_descs + port.stats().invalid_comp_descs,
        0
    );
}
