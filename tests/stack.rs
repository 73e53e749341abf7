//! Rootless whole-stack tests through the in-memory device: ARP, ICMP, IPv4 validation, the
//! malformed-frame table, ARP resolution of outgoing packets, and frame conservation.

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use handshake::arp::NeighborEvent;
use handshake::device::mem::MemDevice;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::stats::DropReason;
use handshake::wire::Mac;
use handshake::Instant;
use std::net::Ipv4Addr;

const OUR_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
const PEER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);
const US: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];

fn stack() -> Stack {
    let routes = Routes::new(
        vec!["198.18.0.1/24".parse().unwrap()],
        Some(Ipv4Addr::new(198, 18, 0, 254)),
    )
    .unwrap();
    let mut cfg = StackConfig::new(OUR_MAC, routes);
    cfg.gratuitous_arp = false;
    Stack::new(cfg)
}

fn arp_request(sender_mac: Mac, sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f.resize(60, 0); // Ethernet minimum with padding, as a NIC delivers it
    f
}

fn ping(payload: &[u8], seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
        .ipv4(PEER, US, 64)
        .icmpv4_echo_request(0x4242, seq);
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

fn udp(dst_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
        .ipv4(PEER, US, 64)
        .udp(5353, dst_port);
    let mut f = Vec::new();
    b.write(&mut f, b"hello").unwrap();
    f
}

/// Feeds `frames` through a stack on a memory device and returns what it sent.
fn exchange(st: &mut Stack, dev: &mut MemDevice, now: Instant, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    for f in frames {
        dev.inject(f);
    }
    while dev.rx_pending() > 0 {
        run_batch(st, dev, now);
    }
    run_batch(st, dev, now);
    let out = dev.take_all();
    assert!(dev.conserved(), "a frame buffer leaked or was freed twice");
    out
}

#[test]
fn arp_request_for_us_is_answered_in_place_with_exact_bytes() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let out = exchange(
        &mut st,
        &mut dev,
        Instant::from_secs(1),
        &[arp_request(PEER_MAC, PEER, US)],
    );
    let expected: Vec<u8> = [
        &PEER_MAC.0[..],
        &OUR_MAC.0,
        &[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2],
        &OUR_MAC.0,
        &US,
        &PEER_MAC.0,
        &PEER,
    ]
    .concat();
    assert_eq!(out, vec![expected]);
    assert_eq!(st.stats().arp_replies, 1);
    // The request taught us the peer (RFC 826 merge) and that is shared with the other workers.
    assert_eq!(
        st.poll_neighbor_event(),
        Some(NeighborEvent::Learned(Ipv4Addr::from(PEER), PEER_MAC))
    );
}

#[test]
fn arp_for_other_hosts_is_not_answered() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let out = exchange(
        &mut st,
        &mut dev,
        Instant::from_secs(1),
        &[arp_request(PEER_MAC, PEER, [198, 18, 0, 3])],
    );
    assert!(out.is_empty());
    assert_eq!(st.stats().drops_of(DropReason::ArpNotForUs), 1);
}

#[test]
fn echo_request_is_answered_in_place() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    for size in [0usize, 1, 56, 1400, 1472] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let mut req = ping(&payload, size as u16);
        let req_len = req.len();
        req.resize(req_len.max(60), 0); // padded like a NIC would
        let out = exchange(&mut st, &mut dev, Instant::from_secs(1), &[req]);
        assert_eq!(out.len(), 1, "payload {size}");
        let r = &out[0];
        assert_eq!(r.len(), req_len, "Ethernet padding is not echoed back");
        let p = SlicedPacket::from_ethernet(r).unwrap();
        let eth = p.link.unwrap().to_header().unwrap();
        let eth = eth.ethernet2().unwrap();
        assert_eq!((eth.source, eth.destination), (OUR_MAC.0, PEER_MAC.0));
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source(), US);
        assert_eq!(ip.header().destination(), PEER);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
            panic!("not ICMP")
        };
        match icmp.icmp_type() {
            Icmpv4Type::EchoReply(h) => assert_eq!((h.id, h.seq), (0x4242, size as u16)),
            t => panic!("not an echo reply: {t:?}"),
        }
        assert_eq!(icmp.payload(), &payload[..]);
        assert_eq!(
            icmp.checksum(),
            icmp.icmp_type().calc_checksum(icmp.payload())
        );
    }
    assert_eq!(st.stats().icmp_echo_replies, 5);
}

#[test]
fn udp_gets_port_unreachable_after_arp_resolution() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let now = Instant::from_secs(1);
    let out = exchange(&mut st, &mut dev, now, &[udp(9)]);
    // The peer's MAC is unknown (an IP packet teaches nothing): ARP first, the error waits.
    assert_eq!(out.len(), 1);
    let req = &out[0];
    assert_eq!(&req[0..6], &[0xff; 6]);
    assert_eq!(&req[12..14], &[0x08, 0x06]);
    assert_eq!(&req[38..42], &PEER, "who-has 198.18.0.2");
    assert_eq!(st.neighbors().parked(), 1);
    // The peer answers: the parked ICMP error goes out, to the peer's MAC.
    let mut reply = arp_request(PEER_MAC, PEER, US);
    reply[0..6].copy_from_slice(&OUR_MAC.0);
    reply[21] = 2; // op = reply
    reply[32..38].copy_from_slice(&OUR_MAC.0);
    let out = exchange(&mut st, &mut dev, now, &[reply]);
    assert_eq!(out.len(), 1);
    let p = SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert!(matches!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(_)
    ));
    assert_eq!(&out[0][0..6], &PEER_MAC.0);
    assert_eq!(st.stats().icmp_errors, 1);
    assert_eq!(st.neighbors().parked(), 0);
}

#[test]
fn icmp_errors_are_rate_limited() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let now = Instant::from_secs(1);
    exchange(&mut st, &mut dev, now, &[arp_request(PEER_MAC, PEER, US)]);
    let burst: Vec<_> = (0..500).map(|_| udp(9)).collect();
    let out = exchange(&mut st, &mut dev, now, &burst);
    assert_eq!(out.len(), 50, "the default burst of ICMP errors");
    assert_eq!(st.stats().drops_of(DropReason::IcmpErrorRateLimited), 450);
}

/// The malformed-frame table: each entry is dropped, counted under its reason, and answered by
/// nothing; no panic, no leaked buffer.
#[test]
fn malformed_frames_are_dropped_and_counted_by_reason() {
    let good_ping = ping(b"abcdefgh", 1);
    let good_arp = arp_request(PEER_MAC, PEER, US);
    let with = |base: &Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    // Fix the IPv4 header checksum after a mutation, so the intended check is the one that fails.
    let fix_ip = |v: &mut Vec<u8>| {
        let ihl = ((v[14] & 0x0f) as usize * 4).max(20).min(v.len() - 14);
        v[24] = 0;
        v[25] = 0;
        let c = handshake::wire::checksum::checksum(&v[14..14 + ihl]);
        v[24..26].copy_from_slice(&c.to_be_bytes());
    };
    let table: Vec<(&str, Vec<u8>, DropReason)> = vec![
        ("empty frame", vec![], DropReason::EthTruncated),
        (
            "13-byte frame",
            good_ping[..13].to_vec(),
            DropReason::EthTruncated,
        ),
        (
            "unicast to another MAC",
            with(&good_ping, &|v| v[5] = 0x99),
            DropReason::EthNotForUs,
        ),
        (
            "multicast MAC",
            with(&good_ping, &|v| {
                v[0..6].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1])
            }),
            DropReason::EthNotForUs,
        ),
        (
            "ping from the broadcast MAC (the reply would go to the whole link)",
            with(&good_ping, &|v| v[6..12].copy_from_slice(&[0xff; 6])),
            DropReason::EthBadSource,
        ),
        (
            "ARP request from a multicast MAC",
            with(&good_arp, &|v| {
                v[6..12].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1])
            }),
            DropReason::EthBadSource,
        ),
        (
            "IPv6 ethertype",
            with(&good_ping, &|v| v[12..14].copy_from_slice(&[0x86, 0xdd])),
            DropReason::EthUnknownType,
        ),
        (
            "VLAN tag",
            with(&good_ping, &|v| v[12..14].copy_from_slice(&[0x81, 0x00])),
            DropReason::EthUnknownType,
        ),
        (
            "ARP truncated",
            good_arp[..14 + 27].to_vec(),
            DropReason::ArpTruncated,
        ),
        (
            "ARP hardware type 6",
            with(&good_arp, &|v| v[15] = 6),
            DropReason::ArpBadHardware,
        ),
        (
            "ARP hardware size 8",
            with(&good_arp, &|v| v[18] = 8),
            DropReason::ArpBadHardware,
        ),
        (
            "ARP protocol IPv6",
            with(&good_arp, &|v| v[16..18].copy_from_slice(&[0x86, 0xdd])),
            DropReason::ArpBadProtocol,
        ),
        (
            "ARP protocol size 16",
            with(&good_arp, &|v| v[19] = 16),
            DropReason::ArpBadProtocol,
        ),
        (
            "ARP op 3",
            with(&good_arp, &|v| v[21] = 3),
            DropReason::ArpBadOperation,
        ),
        (
            "ARP multicast sender MAC",
            with(&good_arp, &|v| v[22] = 1),
            DropReason::ArpBadSender,
        ),
        (
            "ARP sender 0.0.0.0 (probe)",
            with(&good_arp, &|v| v[28..32].fill(0)),
            DropReason::ArpBadSender,
        ),
        (
            "ARP sender is our address",
            with(&good_arp, &|v| v[28..32].copy_from_slice(&US)),
            DropReason::ArpBadSender,
        ),
        (
            "IPv4 truncated header",
            good_ping[..14 + 19].to_vec(),
            DropReason::Ipv4Truncated,
        ),
        (
            "IPv4 version 6",
            with(&good_ping, &|v| {
                v[14] = 0x65;
                fix_ip(v)
            }),
            DropReason::Ipv4BadVersion,
        ),
        (
            "IPv4 IHL 4",
            with(&good_ping, &|v| {
                v[14] = 0x44;
                fix_ip(v)
            }),
            DropReason::Ipv4BadHeaderLen,
        ),
        (
            "IPv4 IHL 15 past the packet",
            with(&good_ping, &|v| {
                v.truncate(14 + 40);
                v[14] = 0x4f;
                v[17] = 40;
                fix_ip(v)
            }),
            DropReason::Ipv4Truncated,
        ),
        (
            "IPv4 total length > frame",
            with(&good_ping, &|v| {
                v[16] = 0x05;
                fix_ip(v)
            }),
            DropReason::Ipv4BadTotalLen,
        ),
        (
            "IPv4 total length < header",
            with(&good_ping, &|v| {
                v[16] = 0;
                v[17] = 19;
                fix_ip(v)
            }),
            DropReason::Ipv4BadTotalLen,
        ),
        (
            "IPv4 bad header checksum",
            with(&good_ping, &|v| v[24] ^= 0x55),
            DropReason::Ipv4BadChecksum,
        ),
        (
            "IPv4 TTL 0",
            with(&good_ping, &|v| {
                v[22] = 0;
                fix_ip(v)
            }),
            DropReason::Ipv4TtlZero,
        ),
        (
            "IPv4 fragment (MF) of 15 bytes, not a multiple of 8",
            with(&good_ping, &|v| {
                v[20] = 0x20;
                v.truncate(v.len() - 1);
                let total = (v.len() - 14) as u16;
                v[16..18].copy_from_slice(&total.to_be_bytes());
                fix_ip(v)
            }),
            DropReason::Ipv4FragMalformed,
        ),
        (
            "IPv4 fragment past 65,535 bytes",
            with(&good_ping, &|v| {
                v[20] = 0x1f;
                v[21] = 0xff;
                fix_ip(v)
            }),
            DropReason::Ipv4FragMalformed,
        ),
        (
            "IPv4 to another address",
            with(&good_ping, &|v| {
                v[33] = 3;
                fix_ip(v)
            }),
            DropReason::Ipv4NotForUs,
        ),
        (
            "IPv4 from broadcast",
            with(&good_ping, &|v| {
                v[26..30].fill(255);
                fix_ip(v)
            }),
            DropReason::Ipv4BadSource,
        ),
        (
            "IPv4 from our own address",
            with(&good_ping, &|v| {
                v[26..30].copy_from_slice(&US);
                fix_ip(v)
            }),
            DropReason::Ipv4BadSource,
        ),
        (
            "IPv4 from multicast",
            with(&good_ping, &|v| {
                v[26..30].copy_from_slice(&[224, 0, 0, 1]);
                fix_ip(v)
            }),
            DropReason::Ipv4BadSource,
        ),
        (
            "ICMP truncated",
            with(&good_ping, &|v| {
                v.truncate(14 + 20 + 7);
                v[17] = 27;
                fix_ip(v)
            }),
            DropReason::IcmpTruncated,
        ),
        (
            "ICMP bad checksum",
            with(&good_ping, &|v| v[40] ^= 0xff),
            DropReason::IcmpBadChecksum,
        ),
        (
            "ICMP echo reply (not answered)",
            with(&good_ping, &|v| {
                v[34] = 0;
                v[36] = v[36].wrapping_add(8)
            }),
            DropReason::IcmpIgnored,
        ),
        (
            "TCP truncated header",
            with(&good_ping, &|v| {
                v[23] = 6;
                v.truncate(14 + 20 + 12);
                v[17] = 32;
                fix_ip(v)
            }),
            DropReason::TcpTruncated,
        ),
        (
            "TCP bad checksum",
            with(&good_ping, &|v| {
                v[23] = 6;
                v.resize(14 + 20 + 20, 0);
                v[17] = 40;
                fix_ip(v)
            }),
            DropReason::TcpBadChecksum,
        ),
    ];
    assert!(table.len() >= 20);
    for (name, frame, reason) in &table {
        let mut st = stack();
        let mut dev = MemDevice::new(2048);
        let out = exchange(
            &mut st,
            &mut dev,
            Instant::from_secs(1),
            std::slice::from_ref(frame),
        );
        assert!(out.is_empty(), "{name}: answered with {out:?}");
        assert_eq!(
            st.stats().drops_of(*reason),
            1,
            "{name}: expected {reason:?}, got {:?}",
            st.stats()
        );
        assert_eq!(st.stats().total_drops(), 1, "{name}: counted once");
        assert_eq!(st.stats().rx_packets, 1);
    }
}

/// A seeded stream of random mutations of valid frames never panics and never leaks a buffer.
#[test]
fn random_mutations_never_panic_or_leak() {
    let mut rng = handshake::device::mem::SplitMix64::new(7);
    let seeds = [
        ping(b"abcdefgh", 1),
        arp_request(PEER_MAC, PEER, US),
        udp(53),
        ping(&[0x5a; 1400], 9),
    ];
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    for i in 0..100_000u32 {
        let mut f = seeds[(i % 4) as usize].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(f.len() as u64) as usize;
            f[at] = rng.next_u64() as u8;
        }
        if rng.chance(100) {
            f.truncate(rng.below(f.len() as u64) as usize);
        }
        dev.inject(&f);
        if i % 64 == 63 {
            run_batch(&mut st, &mut dev, now);
            dev.discard_tx();
            now += std::time::Duration::from_millis(1);
        }
    }
    while dev.rx_pending() > 0 {
        run_batch(&mut st, &mut dev, now);
    }
    dev.discard_tx();
    assert!(dev.conserved());
    assert_eq!(st.stats().rx_packets, 100_000);
    assert!(st.stats().total_drops() > 50_000, "{:?}", st.stats());
}

#[test]
fn gratuitous_arp_at_start() {
    let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
    let mut st = Stack::new(StackConfig::new(OUR_MAC, routes));
    let mut dev = MemDevice::new(2048);
    let out = exchange(&mut st, &mut dev, Instant::ZERO, &[]);
    assert_eq!(out.len(), 1);
    let g = &out[0];
    assert_eq!(&g[0..6], &[0xff; 6]);
    assert_eq!(&g[28..32], &US, "sender 198.18.0.1");
    assert_eq!(&g[38..42], &US, "target = sender: gratuitous");
}

#[test]
fn steady_ping_exchange_stops_allocating() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let req = ping(&[1; 56], 1);
    for _ in 0..10 {
        exchange(
            &mut st,
            &mut dev,
            Instant::from_secs(1),
            std::slice::from_ref(&req),
        );
    }
    let warm = dev.allocated();
    for _ in 0..10_000 {
        dev.inject(&req);
        run_batch(&mut st, &mut dev, Instant::from_secs(1));
        dev.discard_tx();
    }
    assert_eq!(dev.allocated(), warm);
}

fn stack_with_http() -> Stack {
    let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
    let mut cfg = StackConfig::new(OUR_MAC, routes);
    cfg.gratuitous_arp = false;
    cfg.apps.http = Some(80);
    cfg.apps.echo = Some(7);
    Stack::new(cfg)
}

fn tcp_seg(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
        .ipv4(PEER, US, 64)
        .tcp(sport, dport, seq, 64240);
    if syn {
        b = b.syn();
    }
    if fin {
        b = b.fin();
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

struct Seg {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    seq: u32,
    ack_no: u32,
    window: u16,
    payload: Vec<u8>,
}

fn parse_tcp(frame: &[u8]) -> Seg {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source(), US);
    assert_eq!(ip.header().destination(), PEER);
    assert_eq!(&frame[0..6], &PEER_MAC.0, "addressed to the peer's MAC");
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP")
    };
    let payload = t.payload().to_vec();
    // The checksum we filled must verify.
    let h = t.to_header();
    assert_eq!(
        h.checksum,
        h.calc_checksum_ipv4(&ip.header().to_header(), &payload)
            .unwrap()
    );
    Seg {
        syn: t.syn(),
        ack: t.ack(),
        fin: t.fin(),
        rst: t.rst(),
        seq: t.sequence_number(),
        ack_no: t.acknowledgment_number(),
        window: t.window_size(),
        payload,
    }
}

/// The seeds' story through the whole stack: SYN, SYN-ACK, ACK, a request, the page, FIN/ACK both
/// ways; every segment built by etherparse and checked by etherparse.
#[test]
fn http_over_the_stack_three_way_handshake_to_four_way_close() {
    let mut st = stack_with_http();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    // The peer ARPed us first, so we know its MAC.
    exchange(&mut st, &mut dev, now, &[arp_request(PEER_MAC, PEER, US)]);
    let isn = 1_000_000u32;
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[tcp_seg(40000, 80, isn, None, true, false, &[])],
    );
    assert_eq!(out.len(), 1);
    let synack = parse_tcp(&out[0]);
    assert!(synack.syn && synack.ack && !synack.rst);
    assert_eq!(synack.ack_no, isn + 1);
    let our = synack.seq.wrapping_add(1);
    let req = b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n";
    now += std::time::Duration::from_millis(1);
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[
            tcp_seg(40000, 80, isn + 1, Some(our), false, false, &[]),
            tcp_seg(40000, 80, isn + 1, Some(our), false, false, req),
        ],
    );
    let mut body = Vec::new();
    for f in &out {
        let s = parse_tcp(f);
        body.extend_from_slice(&s.payload);
    }
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with(std::str::from_utf8(handshake::app::DEFAULT_PAGE).unwrap()));
    // The client closes: FIN; we ACK and, keep-alive over, close our side too.
    let after = our.wrapping_add(body.len() as u32);
    let fin_seq = isn + 1 + req.len() as u32;
    now += std::time::Duration::from_millis(1);
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[tcp_seg(40000, 80, fin_seq, Some(after), false, true, &[])],
    );
    let segs: Vec<_> = out.iter().map(|f| parse_tcp(f)).collect();
    assert!(segs.iter().any(|s| s.fin), "our FIN");
    let our_fin = segs.iter().find(|s| s.fin).unwrap();
    assert_eq!(our_fin.ack_no, fin_seq + 1, "their FIN acknowledged");
    now += std::time::Duration::from_millis(1);
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[tcp_seg(
            40000,
            80,
            fin_seq + 1,
            Some(our_fin.seq + 1),
            false,
            false,
            &[],
        )],
    );
    assert!(
        out.is_empty(),
        "the last ACK needs no answer: {}",
        out.len()
    );
    assert_eq!(st.apps().stats().http.status[0], 1);
}

#[test]
fn syn_to_a_closed_port_gets_rst() {
    let mut st = stack_with_http();
    let mut dev = MemDevice::new(2048);
    let now = Instant::from_secs(1);
    exchange(&mut st, &mut dev, now, &[arp_request(PEER_MAC, PEER, US)]);
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[tcp_seg(40001, 81, 5, None, true, false, &[])],
    );
    assert_eq!(out.len(), 1);
    let rst = parse_tcp(&out[0]);
    assert!(rst.rst && rst.ack);
    assert_eq!(rst.ack_no, 6);
}

/// Regression: with a Linux-like peer (MSS 1460, timestamps) and 1514-byte frames, full-sized
/// segments must go out at once (initial window), not one per retransmission timeout.
#[test]
fn bulk_echo_sends_full_segments_without_waiting_for_a_timer() {
    use etherparse::TcpOptionElement;
    let mut st = stack_with_http();
    let mut dev = MemDevice::new(1514);
    let now = Instant::from_secs(1);
    exchange(&mut st, &mut dev, now, &[arp_request(PEER_MAC, PEER, US)]);
    let isn = 7u32;
    let mut f = Vec::new();
    PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
        .ipv4(PEER, US, 64)
        .tcp(40002, 7, isn, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Timestamp(100, 0),
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap()
        .write(&mut f, &[])
        .unwrap();
    let out = exchange(&mut st, &mut dev, now, &[f]);
    let synack = parse_tcp(&out[0]);
    let our = synack.seq.wrapping_add(1);
    let seg = |seq: u32, payload: &[u8]| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC.0, OUR_MAC.0)
            .ipv4(PEER, US, 64)
            .tcp(40002, 7, seq, 2000)
            .ack(our)
            .options(&[TcpOptionElement::Timestamp(101, 1)])
            .unwrap()
            .write(&mut f, payload)
            .unwrap();
        f
    };
    let data = vec![0xabu8; 1448];
    let frames: Vec<_> = (0..10u32).map(|i| seg(isn + 1 + i * 1448, &data)).collect();
    let out = exchange(&mut st, &mut dev, now, &frames);
    let sizes: Vec<usize> = out
        .iter()
        .map(|f| parse_tcp(f).payload.len())
        .filter(|n| *n > 0)
        .collect();
    let echoed: usize = sizes.iter().sum();
    assert!(
        echoed >= 10 * 1448,
        "only {echoed} bytes echoed at once: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|n| *n == 1448),
        "segments not full-sized: {sizes:?}"
    );
}

/// Regression: an echo larger than the send and receive buffers keeps flowing. The echo app waits
/// for send space; TCP must wake it (Writable) when the peer's ACKs free some.
#[test]
fn echo_larger_than_the_buffers_completes() {
    let mut st = stack_with_http();
    let mut dev = MemDevice::new(1514);
    let mut now = Instant::from_secs(1);
    exchange(&mut st, &mut dev, now, &[arp_request(PEER_MAC, PEER, US)]);
    let isn = 100u32;
    let out = exchange(
        &mut st,
        &mut dev,
        now,
        &[tcp_seg(40003, 7, isn, None, true, false, &[])],
    );
    let our = parse_tcp(&out[0]).seq.wrapping_add(1);
    let total = 512 * 1024usize;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
    let mut sent; // client bytes sent (go-back-N: reset every round)
    let mut acked_by_engine = 0usize;
    let mut echoed: Vec<u8> = Vec::with_capacity(total);
    let mut window = 65535usize; // the engine's advertised window (no scaling: we sent no WS)
    let mut rounds = 0;
    while echoed.len() < total {
        // Go-back-N: resend from what the engine acknowledged, within its window.
        sent = acked_by_engine;
        rounds += 1;
        assert!(
            rounds < 5_000,
            "stalled: {} of {total} echoed, {sent} sent, {acked_by_engine} acked",
            echoed.len()
        );
        let mut frames = Vec::new();
        // Keep at most 32 KiB in flight towards the engine (below its 64 KiB window).
        while sent < total && sent - acked_by_engine < window.min(32 * 1024) {
            let n = (total - sent).min(1400);
            let ack = our.wrapping_add(echoed.len() as u32);
            frames.push(tcp_seg(
                40003,
                7,
                isn + 1 + sent as u32,
                Some(ack),
                false,
                false,
                &data[sent..sent + n],
            ));
            sent += n;
        }
        // And acknowledge what we received.
        frames.push(tcp_seg(
            40003,
            7,
            isn + 1 + acked_by_engine as u32,
            Some(our.wrapping_add(echoed.len() as u32)),
            false,
            false,
            &[],
        ));
        now += std::time::Duration::from_millis(1);
        for f in exchange(&mut st, &mut dev, now, &frames) {
            let s = parse_tcp(&f);
            acked_by_engine = acked_by_engine.max(s.ack_no.wrapping_sub(isn + 1) as usize);
            window = s.window as usize;
            if s.seq == our.wrapping_add(echoed.len() as u32) {
                echoed.extend_from_slice(&s.payload);
            } else if std::env::var_os("HS_DEBUG").is_some() {
                eprintln!(
                    "round {rounds}: unexpected seq {} (want {}), {} bytes",
                    s.seq.wrapping_sub(our),
                    echoed.len(),
                    s.payload.len()
                );
            }
        }
    }
    assert!(echoed == data, "echo differs");
}

/// The IPv4 fragments of `datagram` (an IPv4 payload of `protocol`), `size` payload bytes
/// each (a multiple of 8), from the peer to us, with identification `ident`.
fn fragments(datagram: &[u8], protocol: u8, ident: u16, size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < datagram.len() {
        let n = size.min(datagram.len() - off);
        let more = off + n < datagram.len();
        let mut f = Vec::new();
        f.extend_from_slice(&OUR_MAC.0);
        f.extend_from_slice(&PEER_MAC.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let flags = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + n) as u16).to_be_bytes());
        f.extend_from_slice(&ident.to_be_bytes());
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&[64, protocol, 0, 0]);
        f.extend_from_slice(&PEER);
        f.extend_from_slice(&US);
        let c = handshake::wire::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&datagram[off..off + n]);
        out.push(f);
        off += n;
    }
    out
}

/// An ICMP echo request with `payload` (its IPv4 payload, checksum filled in).
fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = handshake::wire::checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A 3,000-byte ping in three fragments, last one first: reassembled, answered with the same
/// identifier, sequence and payload in fragments of one identification that fit the 1,500-byte
/// MTU (1,480 + 1,480 + 48 payload bytes, MF on all but the last, valid checksums), which put
/// together are exactly the echo reply.
#[test]
fn a_fragmented_ping_is_reassembled_and_answered_in_fragments() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let t = Instant::from_secs(1);
    // Learn the peer's MAC first: the reply is not turned around in place.
    exchange(&mut st, &mut dev, t, &[arp_request(PEER_MAC, PEER, US)]);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 251) as u8).collect();
    let request = echo_request(0x5151, 9, &payload);
    let mut frags = fragments(&request, 1, 0x0707, 1480);
    assert_eq!(frags.len(), 3);
    frags.reverse();
    let out = exchange(&mut st, &mut dev, t, &frags);
    assert_eq!(out.len(), 3, "three fragments back");
    let mut reply = vec![0u8; request.len()];
    let mut idents = Vec::new();
    for (k, f) in out.iter().enumerate() {
        assert_eq!(&f[0..6], &PEER_MAC.0);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        assert!(
            handshake::wire::checksum::verify(ip),
            "fragment {k}: IPv4 checksum"
        );
        assert_eq!((&ip[12..16], &ip[16..20]), (&US[..], &PEER[..]));
        assert_eq!(ip[9], 1);
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(total, f.len() - 14);
        assert!(total <= 1500);
        let field = u16::from_be_bytes([ip[6], ip[7]]);
        let (more, off) = (field & 0x2000 != 0, (field & 0x1fff) as usize * 8);
        assert_eq!(field & 0x4000, 0, "no DF on a fragment");
        assert_eq!(more, k < 2, "fragment {k}: MF");
        assert_eq!(off, 1480 * k);
        idents.push(u16::from_be_bytes([ip[4], ip[5]]));
        reply[off..off + total - 20].copy_from_slice(&f[34..]);
    }
    assert!(
        idents.iter().all(|&i| i == idents[0]),
        "one identification: {idents:?}"
    );
    assert_eq!(reply[0], 0, "echo reply");
    assert_eq!(&reply[4..8], &request[4..8], "identifier and sequence");
    assert_eq!(&reply[8..], &payload[..]);
    assert!(
        handshake::wire::checksum::verify(&reply),
        "ICMP checksum of the whole reply"
    );
    assert_eq!(st.stats().icmp_echo_replies, 1);
    assert_eq!(st.stats().total_drops(), 0, "{:?}", st.stats());
    let r = st.reassembly();
    assert_eq!((r.stats().fragments, r.stats().reassembled), (3, 1));
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
}

/// A datagram whose last fragment never comes: after the reassembly timeout (30 s) it is
/// dropped and the sender gets ICMP time exceeded, fragment reassembly (type 11, code 1),
/// quoting the first fragment's header and 8 bytes; an overlapping fragment discards its
/// datagram and a duplicate is ignored, each counted.
#[test]
fn an_incomplete_datagram_times_out_with_icmp_time_exceeded() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let t0 = Instant::from_secs(1);
    exchange(&mut st, &mut dev, t0, &[arp_request(PEER_MAC, PEER, US)]);
    let request = echo_request(1, 1, &[7u8; 2000]);
    let frags = fragments(&request, 1, 0x0101, 1480);
    let out = exchange(&mut st, &mut dev, t0, &frags[..1]);
    assert!(out.is_empty());
    assert_eq!(st.reassembly().in_progress(), 1);
    assert_eq!(
        st.poll_timeout(),
        Some(t0 + std::time::Duration::from_secs(30))
    );
    let out = exchange(
        &mut st,
        &mut dev,
        t0 + std::time::Duration::from_millis(29_999),
        &[],
    );
    assert!(out.is_empty());
    let out = exchange(
        &mut st,
        &mut dev,
        t0 + std::time::Duration::from_secs(30),
        &[],
    );
    // Besides it, the peer's ARP entry, 30 s old, is refreshed.
    let ip: Vec<&Vec<u8>> = out.iter().filter(|f| f[12..14] == [0x08, 0x00]).collect();
    assert_eq!(ip.len(), 1, "one ICMP error: {out:02x?}");
    assert!(out
        .iter()
        .all(|f| f[12..14] == [0x08, 0x00] || f[12..14] == [0x08, 0x06]));
    let f = ip[0];
    assert_eq!(&f[0..6], &PEER_MAC.0);
    assert_eq!((&f[26..30], &f[30..34]), (&US[..], &PEER[..]));
    let icmp = &f[34..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (11, 1),
        "time exceeded, fragment reassembly"
    );
    assert!(handshake::wire::checksum::verify(icmp));
    assert_eq!(
        &icmp[8..],
        &frags[0][14..14 + 28],
        "the first fragment's header and 8 bytes"
    );
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragTimeout), 1);
    assert_eq!(st.reassembly().in_progress(), 0);
    // A duplicate is ignored, an overlap discards.
    let t1 = t0 + std::time::Duration::from_secs(31);
    let ipv4_out = |out: &[Vec<u8>]| out.iter().filter(|f| f[12..14] == [0x08, 0x00]).count();
    let out = exchange(&mut st, &mut dev, t1, &[frags[0].clone(), frags[0].clone()]);
    assert_eq!(ipv4_out(&out), 0, "{out:02x?}");
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragDuplicate), 1);
    let mut overlap = fragments(&request[8..], 1, 0x0101, 1480).remove(0);
    // The same identification, offset 8: it overlaps the first fragment.
    overlap[20..22].copy_from_slice(&(1u16 | 0x2000).to_be_bytes());
    overlap[24] = 0;
    overlap[25] = 0;
    let c = handshake::wire::checksum::checksum(&overlap[14..34]);
    overlap[24..26].copy_from_slice(&c.to_be_bytes());
    let out = exchange(&mut st, &mut dev, t1, &[overlap]);
    assert_eq!(ipv4_out(&out), 0, "{out:02x?}");
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragOverlap), 1);
    assert_eq!(
        (st.reassembly().in_progress(), st.reassembly().held_bytes()),
        (0, 0)
    );
}

/// On a 576-byte MTU the reply's fragments carry 552 bytes each (the MTU less the header,
/// rounded down to 8), so a 3,000-byte ping is answered in 6 of them.
#[test]
fn fragmented_replies_follow_the_mtu() {
    let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
    let mut cfg = StackConfig::new(OUR_MAC, routes);
    cfg.gratuitous_arp = false;
    cfg.mtu = 576;
    let mut st = Stack::new(cfg);
    let mut dev = MemDevice::new(2048);
    let t = Instant::from_secs(1);
    exchange(&mut st, &mut dev, t, &[arp_request(PEER_MAC, PEER, US)]);
    let payload = vec![0x5au8; 2992];
    let request = echo_request(3, 4, &payload);
    let out = exchange(&mut st, &mut dev, t, &fragments(&request, 1, 0x0202, 552));
    let sizes: Vec<usize> = out.iter().map(|f| f.len() - 34).collect();
    assert_eq!(sizes, [552, 552, 552, 552, 552, 240], "{sizes:?}");
    assert!(out.iter().all(|f| f.len() - 14 <= 576));
}

/// Several large pings in one batch (a `ping -l`, or pings from two peers): every reply goes
/// out whole, in order, up to `reassembly.max_replies` (4) queued; one more in the same batch
/// is dropped and counted `ipv4_frag_reply_busy`. Their buffers are reused afterwards.
#[test]
fn large_pings_in_one_batch_are_all_answered_up_to_the_reply_queue() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let t = Instant::from_secs(1);
    exchange(&mut st, &mut dev, t, &[arp_request(PEER_MAC, PEER, US)]);
    let request = |seq: u16| {
        let payload: Vec<u8> = (0..3000u32)
            .map(|i| (i * 7 + u32::from(seq)) as u8)
            .collect();
        echo_request(0x4242, seq, &payload)
    };
    // Four requests of three fragments each in one batch: four replies of three.
    let batch: Vec<Vec<u8>> = (0..4u16)
        .flat_map(|seq| fragments(&request(seq), 1, 0x1000 + seq, 1480))
        .collect();
    let out = exchange(&mut st, &mut dev, t, &batch);
    assert_eq!(out.len(), 12, "four replies of three fragments");
    for (k, reply) in out.chunks(3).enumerate() {
        let mut whole = vec![0u8; request(0).len()];
        for f in reply {
            let field = u16::from_be_bytes([f[20], f[21]]);
            let off = (field & 0x1fff) as usize * 8;
            whole[off..off + f.len() - 34].copy_from_slice(&f[34..]);
        }
        let want = request(k as u16);
        assert_eq!(whole[0], 0, "reply {k}: echo reply");
        assert_eq!(
            &whole[4..],
            &want[4..],
            "reply {k}: identifier, sequence, payload"
        );
        assert!(
            handshake::wire::checksum::verify(&whole),
            "reply {k}: checksum"
        );
    }
    assert_eq!(st.stats().icmp_echo_replies, 4);
    assert_eq!(st.stats().total_drops(), 0, "{:?}", st.stats());
    // Five in one batch: the fifth finds the queue full.
    let batch: Vec<Vec<u8>> = (10..15u16)
        .flat_map(|seq| fragments(&request(seq), 1, 0x2000 + seq, 1480))
        .collect();
    let out = exchange(&mut st, &mut dev, t, &batch);
    assert_eq!(out.len(), 12, "four replies of three fragments");
    assert_eq!(st.stats().icmp_echo_replies, 8);
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragReplyBusy), 1);
    assert_eq!(st.stats().total_drops(), 1, "{:?}", st.stats());
}

/// A datagram whose first fragment never came also times out and is counted as a drop
/// (`ipv4_frag_timeout`), without an ICMP error (RFC 792: only when fragment zero arrived).
#[test]
fn a_datagram_without_its_first_fragment_times_out_counted_without_icmp() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let t0 = Instant::from_secs(1);
    exchange(&mut st, &mut dev, t0, &[arp_request(PEER_MAC, PEER, US)]);
    let request = echo_request(1, 1, &[7u8; 2000]);
    let frags = fragments(&request, 1, 0x0202, 1480);
    assert!(exchange(&mut st, &mut dev, t0, &frags[1..]).is_empty());
    assert_eq!(st.reassembly().in_progress(), 1);
    let out = exchange(
        &mut st,
        &mut dev,
        t0 + std::time::Duration::from_secs(30),
        &[],
    );
    assert!(
        out.iter().all(|f| f[12..14] == [0x08, 0x06]),
        "only the ARP refresh, no ICMP error: {out:02x?}"
    );
    assert_eq!(st.reassembly().in_progress(), 0);
    assert_eq!(st.reassembly().stats().timeouts, 1);
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragTimeout), 1);
}

/// With `max_datagrams` (64) first fragments of datagrams that never complete held, a real
/// fragmented ping still gets through: its first fragment evicts the oldest held datagram
/// (counted `ipv4_frag_evicted`), and it is answered.
#[test]
fn a_full_reassembly_table_evicts_its_oldest_datagram_for_a_new_one() {
    let mut st = stack();
    let mut dev = MemDevice::new(2048);
    let t0 = Instant::from_secs(1);
    exchange(&mut st, &mut dev, t0, &[arp_request(PEER_MAC, PEER, US)]);
    let junk = echo_request(9, 9, &[1u8; 2000]);
    let stalled: Vec<Vec<u8>> = (0..64u16)
        .map(|i| fragments(&junk, 1, 0x1000 + i, 1480).swap_remove(0))
        .collect();
    assert!(exchange(&mut st, &mut dev, t0, &stalled).is_empty());
    assert_eq!(st.reassembly().in_progress(), 64);
    let request = echo_request(1, 1, &[7u8; 2000]);
    let frags = fragments(&request, 1, 0x0303, 1480);
    let out = exchange(&mut st, &mut dev, t0, &frags);
    assert!(!out.is_empty(), "the ping is answered");
    assert_eq!(st.stats().drops_of(DropReason::Ipv4FragEvicted), 1);
    assert_eq!(st.reassembly().stats().evicted, 1);
    assert_eq!(st.reassembly().in_progress(), 63);
}
