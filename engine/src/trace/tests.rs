use super::render::{parse_json_lines, render, Format};
use super::tls::Stream;
use super::*;
use crate::wire::checksum;
use std::sync::Arc;

// ---- filters ------------------------------------------------------------------------------------

#[test]
fn filters_parse_and_match() {
    let f: TraceFilter = "port 443".parse().unwrap();
    assert_eq!(f.port, Some(443));
    assert!(f.matches(1, 443, 2, 40000));
    assert!(f.matches(1, 40000, 2, 443));
    assert!(!f.matches(1, 80, 2, 40000));
    let f: TraceFilter = "host 198.18.0.2 and port 443".parse().unwrap();
    let peer = u32::from(Ipv4Addr::new(198, 18, 0, 2));
    assert!(f.matches(1, 443, peer, 5));
    assert!(!f.matches(1, 443, peer + 1, 5));
    assert_eq!(f.to_string(), "host 198.18.0.2 and port 443");
    assert_eq!(
        "all".parse::<TraceFilter>().unwrap(),
        TraceFilter::default()
    );
    assert!(TraceFilter::default().matches(1, 2, 3, 4));
}

#[test]
fn bad_filters_say_what_to_write() {
    for bad in [
        "",
        "port",
        "port 0",
        "port 70000",
        "host 1.2.3",
        "port 1 and port 2",
        "tcp",
        "port 1 or port 2",
    ] {
        let e = bad.parse::<TraceFilter>().unwrap_err().to_string();
        assert!(e.contains("port N"), "{bad:?}: {e}");
    }
}

// ---- TLS on the wire ----------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A real ClientHello, ServerHello flight and client flight, from rustls on both sides.
fn tls13_flights() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["trace.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut scfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key_der)
        .unwrap();
    scfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut ccfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ccfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("trace.test").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(ccfg), name).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(scfg)).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    s.read_tls(&mut &hello[..]).unwrap();
    s.process_new_packets().unwrap();
    let mut server = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut server).unwrap();
    }
    c.read_tls(&mut &server[..]).unwrap();
    c.process_new_packets().unwrap();
    let mut finished = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut finished).unwrap();
    }
    (hello, server, finished)
}

fn what(evs: &[tls::TlsEv]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            tls::TlsEv::Client(_) => "ClientHello".to_string(),
            tls::TlsEv::Server(_) => "ServerHello".to_string(),
            tls::TlsEv::Record { what, .. } => what.clone(),
        })
        .collect()
}

/// Feeds `bytes` to `this` in pieces of `chunk` bytes, as consecutive segments.
fn feed(
    this: &mut Stream,
    other: &mut Stream,
    seq: &mut u32,
    bytes: &[u8],
    chunk: usize,
) -> Vec<tls::TlsEv> {
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        this.on_bytes(*seq, piece, other, &mut out);
        *seq += piece.len() as u32;
    }
    out
}

#[test]
fn a_tls13_handshake_is_named_record_by_record_however_it_is_segmented() {
    let (hello, server, finished) = tls13_flights();
    for chunk in [1, 3, 5, 100, 1448, 65535] {
        let (mut cli, mut srv) = (Stream::default(), Stream::default());
        let (mut cseq, mut sseq) = (1, 1);
        let a = feed(&mut cli, &mut srv, &mut cseq, &hello, chunk);
        let b = feed(&mut srv, &mut cli, &mut sseq, &server, chunk);
        let c = feed(&mut cli, &mut srv, &mut cseq, &finished, chunk);
        let d = feed(
            &mut cli,
            &mut srv,
            &mut cseq,
            &[23, 3, 3, 0, 2, 0xaa, 0xbb],
            chunk,
        );
        assert_eq!(what(&a), ["ClientHello"], "chunk {chunk}");
        let tls::TlsEv::Client(ch) = &a[0] else {
            unreachable!()
        };
        assert_eq!(ch.version, 0x0304);
        assert_eq!(ch.sni.as_deref(), Some("trace.test"));
        assert_eq!(ch.alpn, ["h2", "http/1.1"]);
        assert!(
            ch.suites.contains(&0x1301) && ch.suites.contains(&0xc02b),
            "{:x?}",
            ch.suites
        );
        let b = what(&b);
        assert_eq!(b[0], "ServerHello", "chunk {chunk}: {b:?}");
        assert!(
            b[1..].iter().all(|w| w == "Change Cipher Spec"
                || w == "Encrypted Handshake Message (EncryptedExtensions … Finished)"),
            "chunk {chunk}: {b:?}"
        );
        assert!(b.iter().any(|w| w.starts_with("Encrypted Handshake")));
        let c = what(&c);
        assert_eq!(
            c.last().map(String::as_str),
            Some("Encrypted Handshake Message (Finished)"),
            "chunk {chunk}: {c:?}"
        );
        assert_eq!(what(&d), ["Application Data"]);
    }
}

#[test]
fn server_hello_names_the_chosen_suite() {
    let (hello, server, _) = tls13_flights();
    let (mut cli, mut srv) = (Stream::default(), Stream::default());
    let mut out = Vec::new();
    cli.on_bytes(1, &hello, &mut srv, &mut out);
    let tls::TlsEv::Client(ch) = &out[0] else {
        panic!("{out:?}")
    };
    let offered = ch.suites.clone();
    out.clear();
    srv.on_bytes(1, &server, &mut cli, &mut out);
    let tls::TlsEv::Server(sh) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(sh.version, 0x0304);
    assert!(!sh.retry);
    assert!(offered.contains(&sh.suite));
    assert!(tls::suite_name(sh.suite).starts_with("TLS_"));
}

#[test]
fn retransmissions_are_not_counted_twice_and_a_gap_waits() {
    let (hello, _, _) = tls13_flights();
    let (mut cli, mut srv) = (Stream::default(), Stream::default());
    let mut out = Vec::new();
    let half = hello.len() / 2;
    // The second half first (out of order): nothing yet.
    cli.on_bytes(1 + half as u32, &hello[half..], &mut srv, &mut out);
    assert!(out.is_empty());
    cli.on_bytes(1, &hello[..half], &mut srv, &mut out);
    assert!(out.is_empty(), "the second half was not kept");
    // Its retransmission completes the record; a duplicate of the whole is ignored.
    cli.on_bytes(1 + half as u32, &hello[half..], &mut srv, &mut out);
    assert_eq!(what(&out), ["ClientHello"]);
    cli.on_bytes(1, &hello, &mut srv, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn plaintext_that_is_not_tls_stops_the_record_parser() {
    let (mut cli, mut srv) = (Stream::default(), Stream::default());
    let mut out = Vec::new();
    cli.on_bytes(1, b"GET / HTTP/1.1\r\n\r\n", &mut srv, &mut out);
    cli.on_bytes(19, &[22, 3, 1, 0, 4, 1, 0, 0, 0], &mut srv, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn tls12_plaintext_messages_and_alerts_are_named() {
    let (mut cli, mut srv) = (Stream::default(), Stream::default());
    let mut out = Vec::new();
    // Server: Certificate, ServerKeyExchange, ServerHelloDone in one record.
    let rec = [22, 3, 3, 0, 12, 11, 0, 0, 0, 12, 0, 0, 0, 14, 0, 0, 0];
    srv.on_bytes(1, &rec, &mut cli, &mut out);
    // Client: ClientKeyExchange, ChangeCipherSpec, encrypted Finished.
    cli.on_bytes(1, &[22, 3, 3, 0, 5, 16, 0, 0, 1, 0], &mut srv, &mut out);
    cli.on_bytes(11, &[20, 3, 3, 0, 1, 1], &mut srv, &mut out);
    cli.on_bytes(17, &[22, 3, 3, 0, 3, 9, 9, 9], &mut srv, &mut out);
    // A plaintext fatal alert from the server.
    srv.on_bytes(18, &[21, 3, 3, 0, 2, 2, 40], &mut cli, &mut out);
    assert_eq!(
        what(&out),
        [
            "Certificate",
            "Server Key Exchange",
            "Server Hello Done",
            "Client Key Exchange",
            "Change Cipher Spec",
            "Encrypted Handshake Message (Finished)",
            "Alert (fatal, handshake_failure)"
        ]
    );
}

#[test]
fn hostile_hello_bytes_never_panic() {
    let (hello, server, _) = tls13_flights();
    let mut rng = 0x1234_5678_9abc_def0u64;
    for _ in 0..3000 {
        let mut b = if rng & 1 == 0 {
            hello.clone()
        } else {
            server.clone()
        };
        for _ in 0..4 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % b.len();
            b[i] = (rng >> 32) as u8;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        b.truncate((rng as usize) % (b.len() + 1));
        let _ = ClientHello::parse(&b[9.min(b.len())..]);
        let _ = ServerHello::parse(&b[9.min(b.len())..]);
        let (mut x, mut y) = (Stream::default(), Stream::default());
        let mut out = Vec::new();
        x.on_bytes(1, &b, &mut y, &mut out);
    }
}

// ---- the tracer over frames ---------------------------------------------------------------------

const US: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];

fn routes() -> Routes {
    Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap()
}

/// An Ethernet + IPv4 + TCP frame from `src:sp` to `dst:dp`.
#[allow(clippy::too_many_arguments)]
fn frame(
    src: [u8; 4],
    sp: u16,
    dst: [u8; 4],
    dp: u16,
    seq: u32,
    ack: u32,
    fl: u8,
    data: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sp,
        dst_port: dp,
        seq,
        ack,
        flags: fl,
        window: 65535,
        urgent: 0,
        options: crate::wire::tcp::TcpOptions {
            mss: (fl & flags::SYN != 0).then_some(1460),
            ..crate::wire::tcp::TcpOptions::NONE
        },
        payload: data,
    };
    let mut f = vec![0u8; 14 + 20 + repr.buffer_len()];
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let n = repr.emit(&mut f[34..], src, dst).unwrap();
    crate::wire::ipv4::emit(&mut f[14..], src.into(), dst.into(), PROTO_TCP, n, 1);
    assert!(checksum::verify_transport(src, dst, PROTO_TCP, &f[34..]));
    f
}

fn arp(op: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    let a = ArpRepr {
        op,
        sender_mac: crate::wire::Mac([2, 0, 0, 0, 0, sender[3]]),
        sender_ip: sender.into(),
        target_mac: crate::wire::Mac::ZERO,
        target_ip: target.into(),
    };
    a.emit_frame(&mut f, crate::wire::Mac::BROADCAST);
    f
}

fn change(from: State, to: State, at: u64) -> StateChange {
    StateChange {
        laddr: u32::from_be_bytes(US),
        lport: 443,
        raddr: u32::from_be_bytes(PEER),
        rport: 40000,
        from,
        to,
        at: Instant::from_micros(at),
    }
}

fn drain(t: &mut Tracer) -> Vec<TraceEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

#[test]
fn a_passive_connection_tells_its_story_with_the_arp_that_came_before() {
    let r = routes();
    let mut t = Tracer::new("port 443".parse().unwrap(), 1, DEFAULT_QUEUE);
    let at = Instant::from_micros;
    t.on_frame(at(10), Dir::In, &arp(OP_REQUEST, PEER, US), &r);
    t.on_frame(
        at(11),
        Dir::Out,
        &arp(crate::wire::arp::OP_REPLY, US, PEER),
        &r,
    );
    // Another connection's traffic is ignored.
    t.on_frame(
        at(15),
        Dir::In,
        &frame(PEER, 5, US, 80, 7, 0, flags::SYN, &[]),
        &r,
    );
    t.on_frame(
        at(20),
        Dir::In,
        &frame(PEER, 40000, US, 443, 1000, 0, flags::SYN, &[]),
        &r,
    );
    t.on_state(change(State::Closed, State::SynReceived, 20));
    t.on_frame(
        at(21),
        Dir::Out,
        &frame(
            US,
            443,
            PEER,
            40000,
            5000,
            1001,
            flags::SYN | flags::ACK,
            &[],
        ),
        &r,
    );
    t.on_frame(
        at(30),
        Dir::In,
        &frame(PEER, 40000, US, 443, 1001, 5001, flags::ACK, &[]),
        &r,
    );
    t.on_state(change(State::SynReceived, State::Established, 30));
    t.on_frame(
        at(40),
        Dir::In,
        &frame(
            PEER,
            40000,
            US,
            443,
            1001,
            5001,
            flags::ACK | flags::FIN,
            &[],
        ),
        &r,
    );
    t.on_state(change(State::Established, State::CloseWait, 40));
    // A second connection matches but the limit is 1.
    t.on_frame(
        at(45),
        Dir::In,
        &frame(PEER, 40001, US, 443, 1, 0, flags::SYN, &[]),
        &r,
    );
    let ev = drain(&mut t);
    let kinds: Vec<String> = ev
        .iter()
        .map(|e| match &e.kind {
            EventKind::Flow { .. } => "flow".into(),
            EventKind::ArpWhoHas { dir, .. } => format!("who-has {dir:?}"),
            EventKind::ArpIsAt { dir, .. } => format!("is-at {dir:?}"),
            EventKind::Segment {
                dir,
                flags,
                rel_seq,
                rel_ack,
                ..
            } => {
                format!("{flags} {dir:?} {rel_seq}/{rel_ack}")
            }
            EventKind::State { from, to } => format!("{from}>{to}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "flow",
            "who-has In",
            "is-at Out",
            "SYN In 0/0",
            "CLOSED>SYN-RECEIVED",
            "SYN,ACK Out 0/1",
            "ACK In 1/1",
            "SYN-RECEIVED>ESTABLISHED",
            "FIN,ACK In 1/1",
            "ESTABLISHED>CLOSE-WAIT",
        ]
    );
    assert!(ev.iter().all(|e| e.flow == 1));
    assert_eq!(t.stats().flows, 1);
    assert_eq!(t.stats().over_limit, 1);
    // Renderings: JSON lines round-trip; Mermaid and text name every step.
    let json = render(&ev, Format::Json);
    assert_eq!(parse_json_lines(&json).unwrap(), ev);
    let m = render(&ev, Format::Mermaid);
    assert!(m.starts_with("sequenceDiagram\n"), "{m}");
    assert!(
        m.contains("participant C as Client 198.18.0.2:40000"),
        "{m}"
    );
    assert!(
        m.contains("C ->> S: ARP who-has 198.18.0.1? tell 198.18.0.2"),
        "{m}"
    );
    assert!(
        m.contains("C ->> S: SYN seq=1000 win=65535 [mss=1460]"),
        "{m}"
    );
    assert!(m.contains("S ->> C: SYN,ACK seq=5000 ack=1001"), "{m}");
    assert!(m.contains("Note over S: SYN-RECEIVED → ESTABLISHED"), "{m}");
    assert!(!m.contains(';'));
    let text = render(&ev, Format::Text);
    assert!(text.contains("engine is the server"), "{text}");
    assert_eq!(text.lines().count(), 1 + ev.len() - 1, "{text}");
}

#[test]
fn an_active_open_keeps_its_syn_sent_until_the_syn_leaves() {
    let r = routes();
    let mut t = Tracer::new(TraceFilter::default(), 4, DEFAULT_QUEUE);
    t.on_state(change(State::Closed, State::SynSent, 5));
    t.on_frame(
        Instant::from_micros(6),
        Dir::Out,
        &frame(US, 443, PEER, 40000, 9, 0, flags::SYN, &[]),
        &r,
    );
    let ev = drain(&mut t);
    assert!(
        matches!(&ev[0].kind, EventKind::Flow { active: true, .. }),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1].kind, EventKind::State { to, .. } if to == "SYN-SENT"),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[2].kind, EventKind::Segment { dir: Dir::Out, .. }),
        "{ev:?}"
    );
    // CLOSED ends it: the same 4-tuple later is a new connection.
    t.on_state(change(State::SynSent, State::Closed, 7));
    t.on_frame(
        Instant::from_micros(8),
        Dir::Out,
        &frame(US, 443, PEER, 40000, 99, 0, flags::SYN, &[]),
        &r,
    );
    let ev = drain(&mut t);
    assert_eq!(ev.last().unwrap().flow, 2, "{ev:?}");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let r = routes();
    let mut t = Tracer::new(TraceFilter::default(), 10, 3);
    for i in 0..5u32 {
        t.on_frame(
            Instant::from_micros(u64::from(i)),
            Dir::In,
            &frame(PEER, 40000, US, 443, i, 0, flags::SYN, &[]),
            &r,
        );
    }
    assert_eq!(drain(&mut t).len(), 3);
    assert_eq!(t.stats().dropped, 3, "{:?}", t.stats());
}

#[test]
fn only_the_latest_arp_exchange_before_the_syn_is_part_of_the_story() {
    let r = routes();
    let mut t = Tracer::new("port 443".parse().unwrap(), 1, DEFAULT_QUEUE);
    for i in 0..5 {
        t.on_frame(
            Instant::from_millis(i * 1000),
            Dir::In,
            &arp(OP_REQUEST, PEER, US),
            &r,
        );
        t.on_frame(
            Instant::from_millis(i * 1000 + 1),
            Dir::Out,
            &arp(crate::wire::arp::OP_REPLY, US, PEER),
            &r,
        );
    }
    // An exchange about another host is not this connection's.
    t.on_frame(
        Instant::from_millis(4500),
        Dir::In,
        &arp(OP_REQUEST, [198, 18, 0, 7], US),
        &r,
    );
    t.on_frame(
        Instant::from_millis(5000),
        Dir::In,
        &frame(PEER, 40000, US, 443, 1, 0, flags::SYN, &[]),
        &r,
    );
    let ev = drain(&mut t);
    let t_us: Vec<u64> = ev.iter().map(|e| e.t_us).collect();
    assert_eq!(t_us, [5_000_000, 4_000_000, 4_001_000, 5_000_000], "{ev:?}");
    assert!(matches!(ev[1].kind, EventKind::ArpWhoHas { .. }));
    assert!(matches!(ev[2].kind, EventKind::ArpIsAt { .. }));
}
