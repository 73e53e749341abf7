//! 10^6 malformed packets through a `Stack`, rootless: seeded, deterministic mutations of the
//! fuzz seed corpus frames (`fuzz/corpus/frame/`, real traffic recorded by
//! `fuzz/examples/gen_corpus.rs`): bit flips, byte overwrites, truncations, extensions, splices,
//! header-field smashing, and for half of them checksums fixed afterwards so the mutation
//! reaches the layer behind the checksum. Asserts 0 panics and frame conservation after every
//! batch; a panic prints the frame that caused it (hex), to add to a regression test.
//!
//! Also checks the seeds taken from a real capture (`fuzz/capture_seeds.py`: the Linux kernel,
//! curl, openssl, ping, arping and scapy between two namespaces): they are there, they are
//! Ethernet frames of the kinds the script claims, and the stack seeds replay against the fuzz
//! targets' stack as real conversations (an HTTP 200, echoed data).

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

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = corpus_dir("frame");
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

/// The real-capture seeds of one target (`cap_*`), by name.
fn captured(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("cap_"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

const CAP_SERVER_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0, 0, 0x01];
const CAP_CLIENT_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0, 0, 0x02];

/// What a captured frame is, after checking it is a well-formed Ethernet II frame from one of
/// the two captured hosts.
fn kind(f: &[u8]) -> Result<String, String> {
    use handshake::wire::{arp::ArpRepr, ethernet, ipv4::Ipv4View, tcp::TcpRepr};
    if f.len() < ethernet::HEADER_LEN || f.len() > 1518 {
        return Err(format!("{} bytes is no Ethernet frame", f.len()));
    }
    let src = ethernet::src(f).0;
    if src != CAP_SERVER_MAC && src != CAP_CLIENT_MAC {
        return Err(format!("source MAC {src:02x?} is neither captured host"));
    }
    let body = &f[ethernet::HEADER_LEN..];
    Ok(match ethernet::ethertype(f) {
        0x0806 => {
            let a = ArpRepr::parse(body).map_err(|e| format!("ARP: {e:?}"))?;
            match a.op {
                1 => "arp request".into(),
                2 => "arp reply".into(),
                op => format!("arp op {op}"),
            }
        }
        0x8100 => "vlan".into(),
        0x86dd => "ipv6".into(),
        0x0800 => match Ipv4View::parse(body) {
            // The capture's deliberate lies (a total length beyond the frame) fail here.
            Err(e) => format!("ipv4 refused {e:?}"),
            Ok(ip) if ip.fragment => "ipv4 fragment".into(),
            Ok(ip) => {
                let l4 = &body[ip.header_len..ip.total_len];
                match ip.protocol {
                    6 => match TcpRepr::parse_bytes(l4) {
                        Ok(t)
                            if t.payload.starts_with(&[0x16, 0x03])
                                && t.payload.get(5) == Some(&1) =>
                        {
                            "tls client hello".into()
                        }
                        Ok(t) if t.payload.starts_with(b"GET ") => "http get".into(),
                        Ok(t) => format!("tcp flags {:#04x}", t.flags),
                        Err(e) => format!("tcp refused {e:?}"),
                    },
                    1 => format!("icmp type {}", l4.first().copied().unwrap_or(255)),
                    p => format!("ip proto {p}"),
                }
            }
        },
        t => return Err(format!("ethertype {t:#06x}")),
    })
}

#[test]
fn real_capture_seeds_are_ethernet_frames_of_every_claimed_kind() {
    let frames = captured("frame");
    assert!(
        frames.len() >= 30,
        "only {} real-capture frame seeds (fuzz/corpus/frame/cap_*): run `sudo /usr/bin/python3 fuzz/capture_seeds.py`",
        frames.len()
    );
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (name, f) in &frames {
        let k = kind(f).unwrap_or_else(|e| panic!("frame seed {name}: {e}"));
        *kinds.entry(k).or_default() += 1;
    }
    println!("{} real-capture frame seeds: {kinds:?}", frames.len());
    for want in [
        "arp request",
        "arp reply",
        "icmp type 8",
        "icmp type 0",
        "icmp type 3",
        "icmp type 13",
        "ipv4 fragment",
        "tcp flags 0x02",
        "tcp flags 0x12",
        "tcp flags 0x14",
        "tcp flags 0x03",
        "tcp flags 0x00",
        "tcp flags 0x29",
        "http get",
        "tls client hello",
        "vlan",
        "ipv6",
    ] {
        assert!(kinds.contains_key(want), "no {want:?} among {kinds:?}");
    }
    assert!(
        kinds.keys().any(|k| k.starts_with("ipv4 refused")),
        "the total-length lie is missing: {kinds:?}"
    );
}

/// `handshake_fuzz::dt`: the virtual time a `stack` record's selector advances.
fn dt(v: u8) -> Duration {
    let v = u32::from(v & 0x3f);
    if v == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros((1u64 << (v / 2)) * (1 + u64::from(v % 2)))
}

fn tcp_range(f: &[u8]) -> Option<std::ops::Range<usize>> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let hl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[9] != 6 || hl < 20 || total < hl + 20 || total > ip.len() {
        return None;
    }
    Some(14 + hl..14 + total)
}

/// `handshake_fuzz::Tracker`: per peer port, the stack's highest sequence sent and last ACK.
#[derive(Default)]
struct Tracker(std::collections::HashMap<u16, (u32, u32)>);

impl Tracker {
    fn learn(&mut self, f: &[u8]) {
        use handshake::wire::tcp::{flags, TcpRepr};
        let Some(r) = tcp_range(f) else { return };
        let Ok(t) = TcpRepr::parse_bytes(&f[r]) else {
            return;
        };
        let end = t.seq.wrapping_add(t.seq_len());
        let ack = t.has(flags::ACK).then_some(t.ack);
        match self.0.get_mut(&t.dst_port) {
            Some(c) => {
                if (end.wrapping_sub(c.0) as i32) > 0 || t.has(flags::SYN) {
                    c.0 = end;
                }
                if let Some(a) = ack {
                    c.1 = a;
                }
            }
            None => {
                self.0.insert(t.dst_port, (end, ack.unwrap_or(0)));
            }
        }
    }

    fn absolutise(&self, f: &mut [u8]) {
        let Some(r) = tcp_range(f) else { return };
        let seg = &mut f[r];
        let sport = u16::from_be_bytes([seg[0], seg[1]]);
        let Some(&(snd_max, rcv_nxt)) = self.0.get(&sport) else {
            return;
        };
        let seq = u32::from_be_bytes(seg[4..8].try_into().unwrap());
        let ack = u32::from_be_bytes(seg[8..12].try_into().unwrap());
        seg[4..8].copy_from_slice(&rcv_nxt.wrapping_add(seq).to_be_bytes());
        seg[8..12].copy_from_slice(&snd_max.wrapping_add(ack).to_be_bytes());
    }
}

/// Replays one `stack` seed as the `stack` fuzz target decodes it; returns the TCP payload
/// bytes the stack sent (all connections, in order) and how many records it had.
fn replay(seed: &[u8]) -> (Vec<u8>, usize) {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let mut tracker = Tracker::default();
    let mut sent = Vec::new();
    let mut rest = seed;
    let mut records = 0;
    while rest.len() >= 3 {
        let ctl = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        assert!(rest.len() >= 3 + len, "record {records} runs past the seed");
        let mut f = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        records += 1;
        kind(&f).unwrap_or_else(|e| panic!("record {records}: {e}"));
        if ctl & 0x80 != 0 {
            tracker.absolutise(&mut f);
        }
        if ctl & 0x40 != 0 {
            fix_checksums(&mut f);
        }
        now += dt(ctl);
        dev.set_clock(now);
        dev.inject(&f);
        for _ in 0..64 {
            let (rx, tx) = run_batch(&mut st, &mut dev, now);
            assert!(dev.conserved());
            for out in dev.take_all() {
                tracker.learn(&out);
                if let Some(r) = tcp_range(&out) {
                    let t = handshake::wire::tcp::TcpRepr::parse_bytes(&out[r]).unwrap();
                    sent.extend_from_slice(t.payload);
                }
            }
            if rx == 0 && tx == 0 {
                break;
            }
        }
    }
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    (sent, records)
}

#[test]
fn real_capture_stack_seeds_replay_as_conversations() {
    let seeds: std::collections::BTreeMap<String, Vec<u8>> =
        captured("stack").into_iter().collect();
    let names: Vec<&String> = seeds.keys().collect();
    assert!(seeds.len() >= 5, "real-capture stack seeds: {names:?}");
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (name, seed) in &seeds {
        assert!(
            seed.len() <= 8192,
            "{name}: longer than the fuzz runs' -max_len"
        );
        let (sent, records) = replay(seed);
        println!(
            "{name}: {records} captured frames replayed, {} bytes of TCP payload answered",
            sent.len()
        );
    }
    // The captured conversations still work against the fuzz stack's own ISNs.
    let (http, _) = replay(&seeds["cap_http"]);
    assert!(
        find(&http, b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&http)
    );
    let (echo, _) = replay(&seeds["cap_kernel_tcp"]);
    assert!(
        find(&echo, &b"hello kernel\n".repeat(40)),
        "{}",
        String::from_utf8_lossy(&echo)
    );
    // curl's real ClientHellos (TLS 1.3 and 1.2), echoed back.
    let (tls, _) = replay(&seeds["cap_https"]);
    assert!(
        find(&tls, &[0x16, 0x03, 0x01]),
        "no ClientHello echoed: {tls:02x?}"
    );
}
