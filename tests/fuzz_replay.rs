//! 10^6 malformed packets through a `Stack`, rootless: seeded, deterministic mutations of the
//! fuzz seed corpus frames (`fuzz/corpus/frame/`, real traffic recorded by
//! `fuzz/examples/gen_corpus.rs`): bit flips, byte overwrites, truncations, extensions, splices,
//! header-field smashing, and for half of them checksums fixed afterwards so the mutation
//! reaches the layer behind the checksum. Asserts 0 panics and frame conservation after every
//! batch; a panic prints the frame that caused it (hex), to add to a regression test.

use handshake::app::AppConfig;
use handshake::device::mem::{MemDevice, SplitMix64};
use handshake::device::BATCH;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::tcp::TcpConfig;
use handshake::wire::checksum;
use handshake::wire::Mac;
use handshake::Instant;
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

const PACKETS: u64 = 1_000_000;

/// The fuzz targets' server stack (`fuzz/src/lib.rs`, `server_stack`).
fn stack() -> Stack {
    let routes = Routes::new(
        vec!["198.18.0.1/24".parse().unwrap()],
        Some(Ipv4Addr::new(198, 18, 0, 254)),
    )
    .unwrap();
    let mut cfg = StackConfig::new(Mac([0x02, 0x68, 0x73, 0, 0, 0x01]), routes);
    cfg.gratuitous_arp = false;
    cfg.frame_size = 2048;
    cfg.tcp = TcpConfig {
        max_flows: 64,
        max_events: 256,
        max_control: 64,
        syn_backlog: 16,
        accept_backlog: 16,
        max_time_wait: 16,
        ..TcpConfig::default()
    };
    cfg.apps = AppConfig {
        echo: Some(7),
        http: Some(80),
        ..AppConfig::default()
    };
    Stack::new(cfg)
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run fuzz/examples/gen_corpus.rs)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// IPv4 header checksum, then TCP or ICMP over the payload, where the lengths allow.
fn fix_checksums(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &mut f[14..];
    let hl = (ip[0] & 0x0f) as usize * 4;
    if hl < 20 || hl > ip.len() {
        return;
    }
    ip[10..12].fill(0);
    let c = checksum::checksum(&ip[..hl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < hl || total > ip.len() {
        return;
    }
    let (src, dst): ([u8; 4], [u8; 4]) = (
        ip[12..16].try_into().unwrap(),
        ip[16..20].try_into().unwrap(),
    );
    let proto = ip[9];
    let l4 = &mut ip[hl..total];
    if proto == 6 && l4.len() >= 20 {
        l4[16..18].fill(0);
        let c = checksum::transport(src, dst, 6, l4);
        l4[16..18].copy_from_slice(&c.to_be_bytes());
    } else if proto == 1 && l4.len() >= 8 {
        l4[2..4].fill(0);
        let c = checksum::checksum(l4);
        l4[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// One malformed packet from the corpus: 1 to 4 mutations, checksums fixed half the time.
fn mutate(rng: &mut SplitMix64, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&corpus[rng.below(corpus.len() as u64) as usize]);
    for _ in 0..1 + rng.below(4) {
        let n = out.len().max(1) as u64;
        match rng.below(8) {
            0 | 1 => {
                if !out.is_empty() {
                    let at = rng.below(n) as usize;
                    out[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                if !out.is_empty() {
                    let at = rng.below(n) as usize;
                    out[at] = rng.next_u64() as u8;
                }
            }
            3 => out.truncate(rng.below(n + 1) as usize),
            4 => {
                for _ in 0..rng.below(64) {
                    out.push(rng.next_u64() as u8);
                }
            }
            5 => {
                // Splice: the tail of another frame from a random point.
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let at = rng.below(n) as usize;
                let from = rng.below(other.len() as u64 + 1) as usize;
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                // Smash a header field: IPv4 IHL/length/flags, TCP offset/flags/seq/ack/window,
                // or an option byte, with an extreme value.
                const AT: [usize; 12] = [
                    14,
                    16,
                    17,
                    20,
                    23,
                    34 + 4,
                    34 + 8,
                    34 + 12,
                    34 + 13,
                    34 + 14,
                    54,
                    56,
                ];
                let at = AT[rng.below(AT.len() as u64) as usize];
                if at < out.len() {
                    out[at] = [0x00, 0xff, 0x01, 0x80, 0x7f, 0x0f, 0xf0][rng.below(7) as usize];
                }
            }
        }
    }
    if rng.chance(500) {
        fix_checksums(out);
    }
}

#[test]
fn a_million_malformed_packets_no_panic_frames_conserved() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 20,
        "the frame corpus has {} frames",
        corpus.len()
    );
    let mut rng = SplitMix64::new(0x5eed_f022);
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let mut frame = Vec::with_capacity(2048);
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut panics = 0u64;
    let mut first_panic: Option<Vec<Vec<u8>>> = None;
    let mut sent = 0u64;
    let mut n = 0u64;
    while n < PACKETS {
        batch.clear();
        for _ in 0..BATCH.min((PACKETS - n) as usize) {
            mutate(&mut rng, &corpus, &mut frame);
            dev.inject(&frame);
            batch.push(frame.clone());
            n += 1;
        }
        // Time moves on unevenly: sometimes far enough for retransmissions and TIME_WAIT.
        now += Duration::from_micros(if rng.chance(10) { 5_000_000 } else { 50 });
        let r = catch_unwind(AssertUnwindSafe(|| {
            while dev.rx_pending() > 0 {
                run_batch(&mut st, &mut dev, now);
            }
            run_batch(&mut st, &mut dev, now);
        }));
        if r.is_err() {
            panics += 1;
            first_panic.get_or_insert_with(|| batch.clone());
            // The stack may be inconsistent after a panic: start again.
            st = stack();
            dev = MemDevice::new(2048);
            continue;
        }
        sent += dev.discard_tx() as u64;
        assert!(dev.conserved(), "frame buffers leaked after packet {n}");
    }
    println!(
        "{PACKETS} malformed packets: {panics} panics, {sent} frames sent, {} received",
        st.stats().rx_packets
    );
    if let Some(b) = first_panic {
        for f in &b {
            let hex: String = f.iter().map(|x| format!("{x:02x}")).collect();
            eprintln!("frame of the first panicking batch: {hex}");
        }
    }
    assert_eq!(panics, 0, "panics over {PACKETS} malformed packets");
    assert!(
        sent > 0,
        "the stack answered some of them (echo replies, RSTs, ARP)"
    );
}
