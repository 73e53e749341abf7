//! Writes the seed corpus (`corpus/<target>/`) from real traffic: a client `Stack` talks to the
//! fuzz targets' server stack ([`handshake_fuzz::server_stack`]) in memory — ARP, ping, HTTP
//! keep-alive and close, echo, a UDP probe, a SYN to a closed port — and every frame is kept.
//! Also writes the conversation as `target/seed-traffic.pcap` (tcpdump -r) for inspection.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus` (stable; deterministic:
//! the same files every run).

use handshake::device::mem::MemDevice;
use handshake::device::pcap::PcapWriter;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::tcp::ConnId;
use handshake::wire::tcp::{flags, TcpRepr};
use handshake::Instant;
use handshake_fuzz::{
    drain, server_stack, tcp_segment, Tracker, ECHO_PORT, HTTP_PORT, PEER_IP, PEER_MAC, SERVER_IP,
};
use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

/// The time selector of 32 µs (see `handshake_fuzz::dt`).
const DT32: u8 = 9;

struct World {
    server: Stack,
    sdev: MemDevice,
    client: Stack,
    cdev: MemDevice,
    tracker: Tracker,
    now: Instant,
    /// The `stack` encoding of the client's frames so far.
    records: Vec<u8>,
    /// Every frame seen, both ways.
    frames: BTreeSet<Vec<u8>>,
    /// The client's TCP segments as they were sent (absolute), with the server's state then.
    segments: Vec<Vec<u8>>,
    pcap: PcapWriter<std::fs::File>,
}

impl World {
    fn new(pcap: &Path) -> World {
        let routes = Routes::new(vec!["198.18.0.2/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(PEER_MAC, routes);
        cfg.gratuitous_arp = false;
        cfg.tcp.max_flows = 64;
        World {
            server: server_stack(),
            sdev: MemDevice::new(2048),
            client: Stack::new(cfg),
            cdev: MemDevice::new(2048),
            tracker: Tracker::default(),
            now: Instant::from_secs(1),
            records: Vec::new(),
            frames: BTreeSet::new(),
            segments: Vec::new(),
            pcap: PcapWriter::new(std::fs::File::create(pcap).unwrap(), 2048).unwrap(),
        }
    }

    /// A frame from the peer to the server, recorded and delivered as the fuzz harness would.
    fn deliver(&mut self, frame: &[u8], first: bool) {
        let mut rel = frame.to_vec();
        let tcp = tcp_segment(frame).is_some();
        if tcp {
            self.tracker.relativise(&mut rel);
            self.segments.push(frame.to_vec());
        }
        let ctl = if first { DT32 } else { 0 } | if tcp { 0xc0 } else { 0x40 };
        self.records.push(ctl);
        self.records
            .extend_from_slice(&(rel.len() as u16).to_be_bytes());
        self.records.extend_from_slice(&rel);
        self.frames.insert(frame.to_vec());
        self.pcap.write(self.now, frame).unwrap();
        self.sdev.inject(frame);
        let mut out = Vec::new();
        drain(
            &mut self.server,
            &mut self.sdev,
            self.now,
            &mut self.tracker,
            |f| out.push(f.to_vec()),
        );
        for f in out {
            self.pcap.write(self.now, &f).unwrap();
            self.frames.insert(f.clone());
            self.cdev.inject(&f);
        }
    }

    /// One round: time advances 32 µs, the client runs a batch, its frames go to the server.
    fn step(&mut self) {
        self.now += handshake_fuzz::dt(DT32);
        run_batch(&mut self.client, &mut self.cdev, self.now);
        while self.client.poll_neighbor_event().is_some() {}
        let sent = self.cdev.take_all();
        for (i, f) in sent.iter().enumerate() {
            self.deliver(f, i == 0);
        }
    }

    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    fn connect(&mut self, port: u16) -> ConnId {
        let now = self.now;
        let c = self
            .client
            .tcp_mut()
            .connect(now, PEER_IP, SocketAddrV4::new(SERVER_IP, port))
            .unwrap();
        self.steps(8);
        c
    }

    fn send(&mut self, c: ConnId, data: &[u8]) {
        assert_eq!(self.client.tcp_mut().send(c, data).unwrap(), data.len());
        self.steps(8);
    }

    fn read(&mut self, c: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n @ 1..) = self.client.tcp_mut().recv(c, &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Takes the records so far as one `stack` seed.
    fn take_records(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.records)
    }
}

fn ping(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&handshake_fuzz::SERVER_MAC.0);
    f.extend_from_slice(&PEER_MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ]);
    f.extend_from_slice(&PEER_IP.octets());
    f.extend_from_slice(&SERVER_IP.octets());
    f.extend_from_slice(&[8, 0, 0, 0, 0x42, 0x42, (seq >> 8) as u8, seq as u8]);
    f.extend_from_slice(payload);
    handshake_fuzz::fix_checksums(&mut f);
    f
}

fn udp(port: u16) -> Vec<u8> {
    let mut f = ping(0, b"");
    f.truncate(34);
    f[14 + 9] = 17;
    f[16..18].copy_from_slice(&(20u16 + 8 + 5).to_be_bytes());
    f.extend_from_slice(&[0x14, 0xe9, (port >> 8) as u8, port as u8, 0, 13, 0, 0]);
    f.extend_from_slice(b"hello");
    handshake_fuzz::fix_checksums(&mut f);
    f
}

/// A `tcp_established` seed from the client's segments of one connection (after its
/// handshake): each becomes a segment op with its flags, window, timestamps and payload size,
/// at the live sequence numbers; the server's reads and writes are interleaved.
fn tcp_seed(segments: &[Vec<u8>], cfg: u8, reply: u16) -> Vec<u8> {
    let mut s = vec![cfg, 0, 0, 0xc3, 0x50, 0x05, 0xb4, 7];
    for f in segments {
        let r = TcpRepr::parse_bytes(tcp_segment(f).unwrap()).unwrap();
        if r.has(flags::SYN) {
            continue;
        }
        // op 0, seq and ack at the live edges (bits 0x40, 0x20).
        s.push(0x60);
        s.push(r.flags);
        s.extend_from_slice(&[0, 0, 0, 0]);
        s.extend_from_slice(&r.window.to_be_bytes());
        s.push(if r.options.timestamps.is_some() {
            0x01
        } else {
            0x10
        });
        if r.options.timestamps.is_some() {
            s.push(1);
        }
        s.extend_from_slice(&(r.payload.len() as u16).to_be_bytes());
        if !r.payload.is_empty() {
            s.extend_from_slice(&[5, 0xff, 0xff]); // the application reads
            s.push(4); // and answers
            s.extend_from_slice(&reply.to_be_bytes());
        }
        s.extend_from_slice(&[6, 10]); // a little time passes
    }
    s.extend_from_slice(&[7, 1, 6, 40]); // close, then wait
    s
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    std::fs::create_dir_all(root.join("target")).unwrap();
    let mut w = World::new(&root.join("target/seed-traffic.pcap"));
    let mut stack_seeds: Vec<(String, Vec<u8>)> = Vec::new();

    // Ping (the server ARPs for the peer, the client answers), then a UDP probe.
    for (i, size) in [0usize, 56, 1400].into_iter().enumerate() {
        let p: Vec<u8> = (0..size).map(|k| k as u8).collect();
        w.deliver(&ping(i as u16, &p), true);
        w.steps(4);
    }
    w.deliver(&udp(9), true);
    w.steps(4);
    stack_seeds.push(("icmp_udp".into(), w.take_records()));

    // HTTP: two keep-alive requests, then one with close.
    let c = w.connect(HTTP_PORT);
    let seg0 = w.segments.len() - 1;
    w.send(c, b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n");
    let page = w.read(c);
    assert!(
        page.starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&page)
    );
    w.send(c, b"GET /missing HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n");
    w.read(c);
    w.send(c, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    w.read(c);
    w.steps(20);
    let _ = w.client.tcp_mut().close(c);
    w.steps(20);
    let http_segments = w.segments[seg0..].to_vec();
    stack_seeds.push(("http".into(), w.take_records()));

    // Echo: 3000 bytes in one send (several segments), read back, the client closes first.
    let c = w.connect(ECHO_PORT);
    let seg0 = w.segments.len() - 1;
    let data: Vec<u8> = (0..3000u32).map(|k| (k * 7) as u8).collect();
    w.send(c, &data);
    w.steps(20);
    assert_eq!(w.read(c), data);
    let _ = w.client.tcp_mut().close(c);
    w.steps(40);
    let echo_segments = w.segments[seg0..].to_vec();
    stack_seeds.push(("echo".into(), w.take_records()));

    // A SYN to a closed port (RST), then TIME_WAIT and timers run out.
    let _ = w.connect(8080);
    w.steps(4);
    stack_seeds.push(("closed_port".into(), w.take_records()));

    for (name, seed) in &stack_seeds {
        write(&corpus.join("stack"), name, seed);
    }
    let all: Vec<u8> = stack_seeds.iter().flat_map(|(_, s)| s.clone()).collect();
    write(&corpus.join("stack"), "all", &all);

    for (i, f) in w.frames.iter().enumerate() {
        write(&corpus.join("frame"), &format!("{i:03}"), f);
    }

    for (name, segs, reply) in [
        ("http", &http_segments, 120u16),
        ("echo", &echo_segments, 3000),
    ] {
        for cfg in [0x00u8, 0xff, 0x07] {
            write(
                &corpus.join("tcp_established"),
                &format!("{name}_{cfg:02x}"),
                &tcp_seed(segs, cfg, reply),
            );
        }
    }

    // TLS: whole flights, record-sized pieces, 1-byte pieces, MSS-crossing pieces, flips.
    let tls = corpus.join("tls_records");
    write(&tls, "whole_13", &[0x00]);
    write(&tls, "whole_12", &[0x02]);
    write(&tls, "header_then_rest_13", &[0x00, 4, 0x85, 0x00]);
    write(&tls, "bytes_13", &[0x00; 64]);
    write(
        &tls,
        "bytes_12",
        &[0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    write(
        &tls,
        "mss_crossing_13",
        &[0x00, 0x85, 0xb3, 0x80, 0x10, 0x7f],
    );
    write(&tls, "flip_hello", &[0x01, 1, 0x00, 0x05, 0x01]);
    write(
        &tls,
        "flip_finished_12",
        &[0x03, 2, 0x01, 0x10, 0x80, 0x01, 0x40, 0xff, 40, 40],
    );
    println!(
        "corpus: {} frames, {} stack seeds, 6 tcp_established seeds, 8 tls_records seeds",
        w.frames.len(),
        stack_seeds.len() + 1
    );
}
