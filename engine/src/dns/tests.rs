//! Unit tests of the stub resolver: byte fixtures laid out by hand from RFC 1035 §4, every
//! malformed and mismatched case, the cache in virtual time, retries, limits, and a mutation fuzz.

use super::*;

const S1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53);
const S2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 54), 53);

/// `www.example.test A IN`, id 0x1234, RD: what the resolver sends (RFC 1035 §4.1.1, §4.1.2).
const QUERY: [u8; 34] = [
    0x12, 0x34, // ID
    0x01, 0x00, // RD
    0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // QD 1, AN 0, NS 0, AR 0
    3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't',
    0, // www.example.test at offset 12; example.test at 16
    0x00, 0x01, 0x00, 0x01, // A IN
];

/// The answer to [`QUERY`] with compression and a CNAME chain:
/// `www.example.test CNAME cdn.example.test` (ttl 600), then two A records for
/// `cdn.example.test` (ttl 300 and 120). Offsets: question 12..34, CNAME 34..52 (its data at 46:
/// `cdn` + pointer to 16), A 52..68 and 68..84, both owned by a pointer to 46.
const CHAIN: [u8; 84] = [
    0x12, 0x34, 0x81, 0x80, // ID, QR RD RA, NOERROR
    0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, // QD 1, AN 3
    3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0,
    0x00, 0x01, 0x00, 0x01, // question
    0xc0, 0x0c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x02, 0x58, 0x00, 0x06, // CNAME ttl 600
    3, b'c', b'd', b'n', 0xc0, 0x10, // cdn.example.test
    0xc0, 0x2e, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x04, 198, 19, 0, 10, 0xc0,
    0x2e, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0x04, 198, 19, 0, 11,
];

/// A plain answer: `www.example.test A 198.19.0.10` ttl 300, owner compressed to the question.
const SIMPLE: [u8; 50] = [
    0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, //
    3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0,
    0x00, 0x01, 0x00, 0x01, //
    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x04, 198, 19, 0, 10,
];

const WWW: &str = "www.example.test";

fn config() -> ResolverConfig {
    ResolverConfig {
        servers: vec![S1, S2],
        ..ResolverConfig::default()
    }
}

fn resolver() -> Resolver {
    Resolver::new(config(), [7; 32])
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// One query the resolver sent.
struct Sent {
    dg: Datagram,
    msg: Vec<u8>,
}

fn send(r: &mut Resolver, now: Instant) -> Sent {
    let mut buf = [0u8; 512];
    let dg = r.poll_transmit(now, &mut buf).expect("a query to send");
    Sent {
        dg,
        msg: buf[..dg.len].to_vec(),
    }
}

/// `fixture` with the ID of `q`.
fn with_id(fixture: &[u8], q: &Sent) -> Vec<u8> {
    let mut m = fixture.to_vec();
    m[..2].copy_from_slice(&q.msg[..2]);
    m
}

/// A response to `q` with `flags` and these answer records, echoing the question.
fn reply(q: &Sent, flags: u16, records: &[Vec<u8>]) -> Vec<u8> {
    let mut m = q.msg.clone();
    m[2..4].copy_from_slice(&flags.to_be_bytes());
    m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    for r in records {
        m.extend_from_slice(r);
    }
    m
}

/// A resource record.
fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut v = owner.to_vec();
    v.extend_from_slice(&rtype.to_be_bytes());
    v.extend_from_slice(&CLASS_IN.to_be_bytes());
    v.extend_from_slice(&ttl.to_be_bytes());
    v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    v.extend_from_slice(rdata);
    v
}

fn deliver(r: &mut Resolver, now: Instant, q: &Sent, m: &[u8]) -> bool {
    r.handle_datagram(now, q.dg.dst, q.dg.src_port, m)
}

fn events(r: &mut Resolver) -> Vec<DnsEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn ok(addrs: &[[u8; 4]], ttl: u32, from_cache: bool) -> Result<DnsAnswer, DnsError> {
    Ok(DnsAnswer {
        addrs: addrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        ttl,
        from_cache,
    })
}

#[test]
fn query_bytes_follow_rfc1035() {
    let mut r = resolver();
    let id = r.resolve(t(0), "WWW.Example.Test.").unwrap();
    let q = send(&mut r, t(0));
    assert_eq!(q.msg[2..], QUERY[2..], "everything but the random ID");
    assert_eq!(q.dg.dst, S1);
    assert!((49152..=65535).contains(&q.dg.src_port));
    assert!(r.owns_port(q.dg.src_port));
    assert_eq!(r.poll_timeout(), Some(t(1000)));
    assert_eq!(r.stats().queries_sent, 1);
    assert!(r.poll_transmit(t(0), &mut [0u8; 512]).is_none());
    assert_eq!(id.get(), 0);
}

#[test]
fn small_buffer_keeps_the_query_queued() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    assert!(r.poll_transmit(t(0), &mut [0u8; 33]).is_none());
    assert_eq!(send(&mut r, t(0)).dg.len, 34);
}

#[test]
fn answer_with_compression_and_cname_chain() {
    let mut r = resolver();
    let id = r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    assert!(deliver(&mut r, t(20), &q, &with_id(&CHAIN, &q)));
    let ev = events(&mut r);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].id, id);
    assert_eq!(ev[0].name, WWW);
    assert_eq!(
        ev[0].result,
        ok(&[[198, 19, 0, 10], [198, 19, 0, 11]], 120, false)
    );
    assert!(!r.owns_port(q.dg.src_port));
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.stats().answers, 1);
}

#[test]
fn cache_answers_until_the_ttl_expires() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    deliver(&mut r, t(0), &q, &with_id(&SIMPLE, &q));
    assert_eq!(
        events(&mut r)[0].result,
        ok(&[[198, 19, 0, 10]], 300, false)
    );
    // 100 s later: from the cache with 200 s left, nothing sent.
    let id = r.resolve(t(100_000), "www.EXAMPLE.test").unwrap();
    let ev = events(&mut r);
    assert_eq!(
        (ev[0].id, &ev[0].result),
        (id, &ok(&[[198, 19, 0, 10]], 200, true))
    );
    assert!(r.poll_transmit(t(100_000), &mut [0u8; 512]).is_none());
    assert_eq!(r.stats().cache_hits, 1);
    // At 300 s the entry has expired: a new query goes out.
    r.resolve(t(300_000), WWW).unwrap();
    assert!(events(&mut r).is_empty());
    assert_eq!(send(&mut r, t(300_000)).dg.dst, S1);
    assert_eq!(r.stats().cache_hits, 1);
}

#[test]
fn ttl_is_clamped_to_max_ttl() {
    let mut r = Resolver::new(
        ResolverConfig {
            max_ttl_s: 60,
            ..config()
        },
        [7; 32],
    );
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    deliver(&mut r, t(0), &q, &with_id(&SIMPLE, &q));
    assert_eq!(events(&mut r)[0].result, ok(&[[198, 19, 0, 10]], 60, false));
    r.resolve(t(60_000), WWW).unwrap();
    assert!(events(&mut r).is_empty(), "expired after 60 s");
}

#[test]
fn nxdomain_is_cached_negatively() {
    let mut r = resolver();
    r.resolve(t(0), "nope.example.test").unwrap();
    let q = send(&mut r, t(0));
    assert!(deliver(&mut r, t(0), &q, &reply(&q, 0x8183, &[])));
    assert_eq!(events(&mut r)[0].result, Err(DnsError::NxDomain));
    assert_eq!(r.stats().nxdomain, 1);
    r.resolve(t(29_999), "nope.example.test").unwrap();
    assert_eq!(events(&mut r)[0].result, Err(DnsError::NxDomain));
    assert!(r.poll_transmit(t(29_999), &mut [0u8; 512]).is_none());
    assert_eq!(r.stats().cache_hits, 1);
    r.resolve(t(30_000), "nope.example.test").unwrap();
    assert!(events(&mut r).is_empty());
    send(&mut r, t(30_000));
}

#[test]
fn retries_cycle_servers_then_time_out() {
    let mut r = resolver();
    let id = r.resolve(t(0), WWW).unwrap();
    let mut ports = Vec::new();
    let mut ids = Vec::new();
    for (k, server) in [S1, S2, S1].into_iter().enumerate() {
        let now = t(1000 * k as u64);
        let q = send(&mut r, now);
        assert_eq!(q.dg.dst, server, "attempt {k}");
        assert_eq!(r.poll_timeout(), Some(now.add_millis(1000)));
        ports.push(q.dg.src_port);
        ids.push(u16::from_be_bytes([q.msg[0], q.msg[1]]));
        r.handle_timeout(now.add_millis(999));
        assert!(r.poll_transmit(now, &mut [0u8; 512]).is_none());
        r.handle_timeout(now.add_millis(1000));
    }
    assert_eq!(
        events(&mut r),
        vec![DnsEvent {
            id,
            name: WWW.into(),
            result: Err(DnsError::Timeout)
        }]
    );
    assert_ne!(ports[0], ports[1]);
    assert_ne!(ids[0], ids[1]);
    let s = r.stats();
    assert_eq!((s.queries_sent, s.retransmits, s.timeouts), (3, 2, 1));
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn servfail_moves_on_then_fails() {
    let mut r = Resolver::new(
        ResolverConfig {
            attempts: 2,
            ..config()
        },
        [7; 32],
    );
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    assert!(deliver(&mut r, t(3), &q, &reply(&q, 0x8182, &[])));
    assert!(events(&mut r).is_empty());
    assert!(!r.owns_port(q.dg.src_port));
    let q2 = send(&mut r, t(3));
    assert_eq!(q2.dg.dst, S2);
    assert!(deliver(&mut r, t(6), &q2, &reply(&q2, 0x8185, &[])));
    assert_eq!(events(&mut r)[0].result, Err(DnsError::ServerFailure(5)));
    assert_eq!(r.stats().retransmits, 1);
}

#[test]
fn truncated_answer_is_final() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    deliver(&mut r, t(1), &q, &reply(&q, 0x8380, &[]));
    assert_eq!(events(&mut r)[0].result, Err(DnsError::Truncated));
    assert!(r.poll_transmit(t(1), &mut [0u8; 512]).is_none());
}

#[test]
fn noerror_without_an_address() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    // An AAAA for the name, and an A for an unrelated name (must not be believed).
    let aaaa = rr(
        &[0xc0, 0x0c],
        28,
        300,
        &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    let other = rr(b"\x04evil\x04test\x00", TYPE_A, 300, &[6, 6, 6, 6]);
    deliver(&mut r, t(1), &q, &reply(&q, 0x8180, &[aaaa, other]));
    assert_eq!(events(&mut r)[0].result, Err(DnsError::NoAddress));
    assert_eq!(r.stats().answers, 1);
}

#[test]
fn cname_loop_is_malformed_and_ignored() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    // www -> a.test -> www -> ...
    let a = rr(&[0xc0, 0x0c], TYPE_CNAME, 60, b"\x01a\x04test\x00");
    let back = rr(b"\x01a\x04test\x00", TYPE_CNAME, 60, &[0xc0, 0x0c]);
    deliver(&mut r, t(1), &q, &reply(&q, 0x8180, &[a, back]));
    assert!(events(&mut r).is_empty());
    assert_eq!(r.stats().malformed, 1);
    assert!(r.owns_port(q.dg.src_port), "still waiting");
}

#[test]
fn static_hosts_answer_at_once() {
    let mut r = Resolver::new(
        ResolverConfig {
            hosts: vec![
                ("Origin.Test".into(), Ipv4Addr::new(198, 19, 0, 1)),
                ("origin.test.".into(), Ipv4Addr::new(198, 19, 0, 2)),
                ("bad..name".into(), Ipv4Addr::new(1, 1, 1, 1)),
            ],
            servers: vec![],
            ..ResolverConfig::default()
        },
        [7; 32],
    );
    let id = r.resolve(t(0), "ORIGIN.test").unwrap();
    assert_eq!(
        events(&mut r),
        vec![DnsEvent {
            id,
            name: "origin.test".into(),
            result: ok(&[[198, 19, 0, 1], [198, 19, 0, 2]], 3600, false)
        }]
    );
    assert!(r.poll_transmit(t(0), &mut [0u8; 512]).is_none());
    assert_eq!(r.resolve(t(0), "other.test"), Err(DnsError::NoServers));
    assert_eq!(r.resolve(t(0), "bad..name"), Err(DnsError::InvalidName));
}

#[test]
fn ipv4_literal_resolves_at_once() {
    let mut r = Resolver::new(ResolverConfig::default(), [7; 32]);
    r.resolve(t(0), "198.19.0.10").unwrap();
    let ev = events(&mut r);
    assert_eq!(ev[0].result, ok(&[[198, 19, 0, 10]], 3600, false));
    assert_eq!(ev[0].name, "198.19.0.10");
    assert_eq!(r.stats().queries_sent, 0);
}

#[test]
fn name_validation() {
    let l63 = "a".repeat(63);
    let long = [l63.as_str(), &l63, &l63, &"b".repeat(61)].join("."); // 253 bytes
    assert_eq!(long.len(), 253);
    for good in [
        "_dmarc.example.test",
        "x-1.test",
        "localhost",
        &long,
        &format!("{long}."),
    ] {
        assert!(normalize_name(good).is_ok(), "{good}");
    }
    assert_eq!(normalize_name("WwW.Test.").unwrap(), "www.test");
    let l64 = "a".repeat(64);
    let too_long = format!("{long}c");
    for bad in [
        "", ".", "a..b", ".a", "a b.test", "ü.test", "a/b", &l64, &too_long, "a..",
    ] {
        assert_eq!(normalize_name(bad), Err(DnsError::InvalidName), "{bad:?}");
    }
    let mut r = resolver();
    assert_eq!(r.resolve(t(0), "a..b"), Err(DnsError::InvalidName));
}

#[test]
fn identical_queries_join_one_datagram() {
    let mut r = resolver();
    let a = r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    let b = r.resolve(t(1), "WWW.example.test").unwrap();
    assert!(r.poll_transmit(t(1), &mut [0u8; 512]).is_none());
    deliver(&mut r, t(2), &q, &with_id(&SIMPLE, &q));
    let ev = events(&mut r);
    assert_eq!(ev.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
    assert!(ev
        .iter()
        .all(|e| e.name == WWW && e.result == ok(&[[198, 19, 0, 10]], 300, false)));
    assert_eq!(r.stats().queries_sent, 1);
}

#[test]
fn max_pending_bounds_outstanding_handles() {
    let mut r = Resolver::new(
        ResolverConfig {
            max_pending: 2,
            hosts: vec![("h.test".into(), Ipv4Addr::LOCALHOST)],
            ..config()
        },
        [7; 32],
    );
    r.resolve(t(0), "a.test").unwrap();
    r.resolve(t(0), "h.test").unwrap();
    assert_eq!(r.resolve(t(0), "b.test"), Err(DnsError::TooManyQueries));
    assert_eq!(r.resolve(t(0), "a.test"), Err(DnsError::TooManyQueries));
    assert_eq!(r.resolve(t(0), "198.18.0.9"), Err(DnsError::TooManyQueries));
    assert_eq!(events(&mut r).len(), 1);
    r.resolve(t(0), "b.test").unwrap();
    assert_eq!(r.resolve(t(0), "c.test"), Err(DnsError::TooManyQueries));
}

#[test]
fn cache_is_bounded() {
    let mut r = Resolver::new(
        ResolverConfig {
            max_cache: 2,
            ..config()
        },
        [7; 32],
    );
    for (k, name) in ["a.test", "b.test", "c.test"].into_iter().enumerate() {
        r.resolve(t(k as u64), name).unwrap();
        let q = send(&mut r, t(k as u64));
        let a = rr(&[0xc0, 0x0c], TYPE_A, 100 + k as u32, &[10, 0, 0, k as u8]);
        deliver(&mut r, t(k as u64), &q, &reply(&q, 0x8180, &[a]));
    }
    events(&mut r);
    assert_eq!(r.cache.len(), 2);
    // `a.test` expired first and was evicted.
    r.resolve(t(10), "a.test").unwrap();
    assert!(events(&mut r).is_empty());
    r.resolve(t(10), "c.test").unwrap();
    assert_eq!(events(&mut r)[0].result, ok(&[[10, 0, 0, 2]], 101, true));
}

/// Sends a query for [`WWW`] and delivers `bad` (with the query's ID) to it: it must be ignored
/// and counted as malformed, the query still waiting; the real answer still works afterwards.
fn assert_malformed_ignored(bad: &[u8], why: &'static str) {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    assert!(deliver(&mut r, t(1), &q, &with_id(bad, &q)));
    assert_eq!(r.stats().malformed, 1, "{why}");
    assert!(events(&mut r).is_empty(), "{why}");
    assert!(r.owns_port(q.dg.src_port), "{why}");
    assert_eq!(r.pending[0].last_error, Some(DnsError::Malformed(why)));
    deliver(&mut r, t(2), &q, &with_id(&SIMPLE, &q));
    assert_eq!(
        events(&mut r)[0].result,
        ok(&[[198, 19, 0, 10]], 300, false)
    );
}

#[test]
fn compression_loop_is_rejected() {
    // The A record's owner is a pointer to itself (offset 34).
    let mut m = SIMPLE;
    m[34..36].copy_from_slice(&[0xc0, 34]);
    assert_malformed_ignored(&m, "compression pointer does not point backwards");
    // Two labels and a pointer back to their start: each pointer is backwards, but not below
    // the previous target; a longer loop via strictly decreasing targets is impossible.
    let mut m = SIMPLE.to_vec();
    m.truncate(34);
    m.extend_from_slice(&[1, b'x', 0xc0, 34]); // owner at 34: "x" then pointer to 34
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    assert_malformed_ignored(&m, "compression pointer does not point backwards");
}

#[test]
fn forward_pointer_is_rejected() {
    let mut m = SIMPLE;
    m[35] = 46; // beyond the owner's position: forwards
    assert_malformed_ignored(&m, "compression pointer does not point backwards");
}

#[test]
fn pointer_chains_are_bounded() {
    // A first record (type 99) whose data at 46 is a pointer to the question name, then 40
    // pointers each to the one before it: every pointer is strictly backwards, but the last (at
    // 126) needs 41 jumps, more than MAX_POINTERS. The second record is owned by that pointer.
    let mut chain = vec![0xc0, 0x0c];
    for k in 0..40u8 {
        chain.extend_from_slice(&[0xc0, 46 + 2 * k]);
    }
    let mut m = SIMPLE[..34].to_vec();
    m[7] = 2;
    m.extend_from_slice(&rr(&[0xc0, 0x0c], 99, 60, &chain));
    m.extend_from_slice(&rr(&[0xc0, 126], TYPE_A, 60, &[1, 2, 3, 4]));
    assert_eq!(
        Labels::new(&m, 126).skip(),
        Err("too many compression pointers")
    );
    assert_eq!(Labels::new(&m, 66).skip(), Ok(68), "11 jumps are fine");
    assert_malformed_ignored(&m, "too many compression pointers");
}

#[test]
fn longest_names_compare_and_longer_are_rejected() {
    // Two 255-byte names (the longest allowed) with different label structure: a mismatch, not
    // an error.
    let wire = |labels: &[usize]| {
        let mut v = Vec::new();
        for &n in labels {
            v.push(n as u8);
            v.extend(std::iter::repeat_n(b'a', n));
        }
        v.push(0);
        v
    };
    let a = wire(&[63, 63, 63, 61]);
    let b = wire(&[63, 63, 63, 59, 1]);
    assert_eq!((a.len(), b.len()), (255, 255));
    let mut m = a.clone();
    m.extend_from_slice(&b);
    assert_eq!(names_equal(&m, 0, 255), Ok(false));
    assert_eq!(names_equal(&m, 255, 0), Ok(false));
    assert_eq!(names_equal(&m, 0, 0), Ok(true));
    // A finished walk stays finished (it does not count the root label again).
    let mut l = Labels::new(&m, 0);
    while l.next_label().unwrap().is_some() {}
    for _ in 0..3 {
        assert_eq!(l.next_label(), Ok(None));
    }
    let mut long = a.clone();
    long.insert(0, 0); // 256 bytes: one label too many
    long[0] = 1;
    long.insert(1, b'x');
    assert_eq!(
        Labels::new(&long, 0).skip(),
        Err("name longer than 255 bytes")
    );
}

#[test]
fn truncated_record_is_rejected() {
    assert_malformed_ignored(&SIMPLE[..46], "record data runs past the message");
    assert_malformed_ignored(&SIMPLE[..40], "record runs past the message");
    assert_malformed_ignored(&SIMPLE[..35], "name runs past the message");
}

#[test]
fn counts_beyond_the_message_are_rejected() {
    let mut m = SIMPLE;
    m[7] = 5; // AN 5, one record present
    assert_malformed_ignored(&m, "name runs past the message");
    let mut m = CHAIN;
    m[7] = 4;
    assert_malformed_ignored(&m, "name runs past the message");
}

#[test]
fn a_record_with_rdlength_5_is_rejected() {
    let mut m = SIMPLE.to_vec();
    m[45] = 5;
    m.push(0);
    assert_malformed_ignored(&m, "A record data is not 4 bytes");
}

#[test]
fn malformed_question_is_rejected() {
    let mut m = SIMPLE;
    m[12] = 0x40; // extended label type
    assert_malformed_ignored(&m, "unknown label type");
}

/// Delivers `m` (an otherwise valid answer) as `from` to `port`: ignored, counted as mismatched.
fn assert_mismatched(
    r: &mut Resolver,
    q: &Sent,
    from: SocketAddrV4,
    port: u16,
    m: &[u8],
    ours: bool,
) {
    let before = r.stats().mismatched;
    assert_eq!(r.handle_datagram(t(1), from, port, m), ours);
    assert_eq!(r.stats().mismatched, before + 1);
    assert!(events(r).is_empty());
    assert!(r.owns_port(q.dg.src_port));
}

#[test]
fn mismatched_answers_are_ignored() {
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    let good = with_id(&SIMPLE, &q);
    let port = q.dg.src_port;
    // Wrong ID.
    let mut m = good.clone();
    m[1] ^= 1;
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    // Wrong source address, wrong source port.
    assert_mismatched(&mut r, &q, S2, port, &good, true);
    assert_mismatched(
        &mut r,
        &q,
        SocketAddrV4::new(*S1.ip(), 5353),
        port,
        &good,
        true,
    );
    // Wrong destination port: not ours.
    assert_mismatched(&mut r, &q, S1, port.wrapping_add(1), &good, false);
    // QR clear (a query, not an answer).
    let mut m = good.clone();
    m[2] &= 0x7f;
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    // Wrong question: another name, type AAAA, class CH, two questions.
    let mut m = good.clone();
    m[13] = b'x';
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    let mut m = good.clone();
    m[31] = 28;
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    let mut m = good.clone();
    m[33] = 3;
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    let mut m = good.clone();
    m[5] = 2;
    assert_mismatched(&mut r, &q, S1, port, &m, true);
    assert_eq!(r.stats().mismatched, 9);
    // The right answer still gets through; the question's case does not matter.
    let mut m = good;
    m[13..16].copy_from_slice(b"WwW");
    assert!(deliver(&mut r, t(2), &q, &m));
    assert_eq!(
        events(&mut r)[0].result,
        ok(&[[198, 19, 0, 10]], 300, false)
    );
    assert_eq!(r.stats().malformed, 0);
}

#[test]
fn malformed_then_timeout_reports_the_reason() {
    let mut r = Resolver::new(
        ResolverConfig {
            attempts: 1,
            ..config()
        },
        [7; 32],
    );
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    let mut m = with_id(&SIMPLE, &q);
    m[45] = 3;
    deliver(&mut r, t(1), &q, &m);
    r.handle_timeout(t(1000));
    assert_eq!(
        events(&mut r)[0].result,
        Err(DnsError::Malformed("A record data is not 4 bytes"))
    );
    assert_eq!(r.stats().timeouts, 0);
}

#[test]
fn ids_and_ports_are_keyed_by_the_secret() {
    let first = |secret: [u8; 32]| {
        let mut r = Resolver::new(config(), secret);
        r.resolve(t(0), WWW).unwrap();
        let q = send(&mut r, t(0));
        (q.msg[..2].to_vec(), q.dg.src_port)
    };
    assert_eq!(first([7; 32]), first([7; 32]));
    assert_ne!(first([7; 32]), first([8; 32]));
    let mut last = [0u8; 32];
    last[31] = 1;
    assert_ne!(
        first([0; 32]),
        first(last),
        "every byte of the secret counts"
    );
    // Ports stay in a narrow configured range.
    let mut r = Resolver::new(
        ResolverConfig {
            source_ports: 5000..=5003,
            ..config()
        },
        [7; 32],
    );
    let mut seen = Vec::new();
    for k in 0..4 {
        r.resolve(t(0), &format!("n{k}.test")).unwrap();
        seen.push(send(&mut r, t(0)).dg.src_port);
    }
    assert!(seen.iter().all(|p| (5000..=5003).contains(p)));
}

#[test]
fn describe_renders_trace_lines() {
    assert_eq!(
        describe(&QUERY).as_deref(),
        Some("query A www.example.test id 0x1234")
    );
    assert_eq!(
        describe(&SIMPLE).as_deref(),
        Some("answer www.example.test A 198.19.0.10 ttl 300")
    );
    assert_eq!(
        describe(&CHAIN).as_deref(),
        Some("answer www.example.test CNAME cdn.example.test ttl 600, A 198.19.0.10 ttl 300, A 198.19.0.11 ttl 120")
    );
    let mut nx = QUERY;
    nx[2..4].copy_from_slice(&[0x81, 0x83]);
    assert_eq!(
        describe(&nx).as_deref(),
        Some("NXDOMAIN www.example.test id 0x1234")
    );
    assert_eq!(describe(&QUERY[..11]), None);
    assert_eq!(describe(&SIMPLE[..40]), None);
}

/// xorshift64: a fixed-seed generator for the mutation test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn ten_thousand_mutations_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut r = resolver();
    let mut now = 0;
    let mut q: Option<Sent> = None;
    for round in 0..10_000 {
        if q.as_ref().is_none_or(|q| !r.owns_port(q.dg.src_port)) {
            events(&mut r);
            if !r.pending.iter().any(|p| p.state == State::Queued) {
                // A fresh name each time so that no answer comes from the cache.
                r.resolve(t(now), &format!("www{round}.example.test"))
                    .unwrap();
            }
            q = Some(send(&mut r, t(now)));
        }
        let s = q.as_ref().unwrap();
        // A valid answer to this question, laid out like CHAIN: CNAME to cdn.example.test,
        // two A records owned by a pointer to the CNAME's data.
        let example = 12 + 1 + s.msg[12] as usize;
        let cdn = s.msg.len() + 12;
        let records = [
            rr(
                &[0xc0, 0x0c],
                TYPE_CNAME,
                600,
                &[3, b'c', b'd', b'n', 0xc0, example as u8],
            ),
            rr(&[0xc0, cdn as u8], TYPE_A, 300, &[198, 19, 0, 10]),
            rr(&[0xc0, cdn as u8], TYPE_A, 120, &[198, 19, 0, 11]),
        ];
        let mut m = reply(s, 0x8180, &records);
        if round == 0 {
            assert!(r.handle_datagram(t(now), s.dg.dst, s.dg.src_port, &m.clone()));
            assert_eq!(
                events(&mut r)[0].result,
                ok(&[[198, 19, 0, 10], [198, 19, 0, 11]], 120, false)
            );
            continue;
        }
        for _ in 0..1 + rng.next() % 4 {
            let i = (rng.next() % m.len() as u64) as usize;
            m[i] = rng.next() as u8;
        }
        if rng.next().is_multiple_of(8) {
            let cut = (rng.next() % (m.len() as u64 + 1)) as usize;
            m.truncate(cut);
        }
        let _ = describe(&m);
        assert!(r.handle_datagram(t(now), s.dg.dst, s.dg.src_port, &m));
        now += 1;
        if round % 100 == 99 {
            now += 10_000;
            r.handle_timeout(t(now));
        }
    }
    let s = r.stats();
    assert!(s.answers > 100, "{s:?}");
    assert!(s.malformed > 100 && s.mismatched > 100, "{s:?}");
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut r = resolver();
    r.resolve(t(0), WWW).unwrap();
    let q = send(&mut r, t(0));
    for _ in 0..2000 {
        let len = (rng.next() % 300) as usize;
        let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if m.len() >= 2 {
            m[..2].copy_from_slice(&q.msg[..2]);
        }
        let _ = describe(&m);
        deliver(&mut r, t(1), &q, &m);
    }
}
