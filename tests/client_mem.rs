//! The client side in memory (rootless): an engine client stack against an engine server stack
//! over [`StackPair`], with a scripted DNS server answering the client's UDP queries.
//!
//! What it shows: the name resolved over UDP port 53, ARP for the server, the TCP handshake,
//! TLS (verified against a CA, SNI, ALPN), the GET, the response byte-exact, the close; the
//! second connection resumes its TLS session; and every failure (NXDOMAIN, DNS silence, refused
//! port, wrong certificate name, unknown CA) ends the request with its own error.

use handshake::app::HttpsApp;
use handshake::client::{response::ResponseLimits, ClientError, ClientEvent, ClientRequest, Url};
use handshake::device::mem::Faults;
use handshake::device::pair::StackPair;
use handshake::dns::{DnsError, ResolverConfig};
use handshake::http::StaticPage;
use handshake::ipv4::Routes;
use handshake::stack::{run_batch, Stack, StackConfig};
use handshake::tls::{TlsClient, TlsClientConfig, TlsConfig, TlsError, TlsServer};
use handshake::wire::Mac;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NAME: &str = "www.example.test";

struct Pki {
    ca_pem: String,
    chain_pem: String,
    key_pem: String,
}

/// A CA named `ca_name` and a leaf for NAME signed by it.
fn pki(ca_name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![NAME.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
    }
}

fn page() -> Vec<u8> {
    (0..40_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

/// The DNS server's behaviour.
#[derive(Clone, Copy, PartialEq)]
enum Dns {
    Answer,
    Silent,
}

struct Net {
    pair: StackPair,
    dns: Dns,
    queries: usize,
}

impl Net {
    fn new(pki: &Pki) -> Net {
        let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, 1]), routes);
        cfg.gratuitous_arp = false;
        cfg.apps.http = Some(80);
        cfg.apps.handler = Some(Arc::new(StaticPage::html(&page())));
        let server = TlsServer::from_pem(
            &[(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes())],
            &TlsConfig::default(),
        )
        .unwrap();
        cfg.apps.https = Some(HttpsApp {
            port: 443,
            server,
            max_sessions: 64,
        });
        let srv = Stack::new(cfg);
        // The DNS server is off-link (198.19.0.53): its queries go to the gateway's MAC (the
        // server stack's), where the scripted server takes them off the wire.
        let routes = Routes::new(vec!["198.18.0.2/24".parse().unwrap()], Some(SERVER)).unwrap();
        let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, 2]), routes);
        cfg.gratuitous_arp = false;
        cfg.dns = Some(ResolverConfig {
            servers: vec![SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 53), 53)],
            timeout_ms: 200,
            attempts: 2,
            ..Default::default()
        });
        let mut cli = Stack::new(cfg);
        cli.set_tracer(Some(handshake::trace::Tracer::new(
            Default::default(),
            1,
            handshake::trace::DEFAULT_QUEUE,
        )));
        Net {
            pair: StackPair::new(srv, cli, Faults::default()),
            dns: Dns::Answer,
            queries: 0,
        }
    }

    /// One step: both stacks run a batch; the client's DNS queries go to the scripted server,
    /// everything else to the server stack.
    fn step(&mut self) {
        let p = &mut self.pair;
        p.now += Duration::from_micros(50);
        run_batch(&mut p.server, &mut p.server_dev, p.now);
        p.to_client.carry(&mut p.server_dev, &mut p.client_dev);
        run_batch(&mut p.client, &mut p.client_dev, p.now);
        for f in p.client_dev.take_all() {
            match dns_query(&f) {
                Some(q) => {
                    self.queries += 1;
                    if self.dns == Dns::Answer {
                        p.client_dev.inject(&dns_answer(&f, &q));
                    }
                }
                None => p.server_dev.inject(&f),
            }
        }
    }

    fn resolve(&mut self, name: &str) -> Result<Ipv4Addr, DnsError> {
        let now = self.pair.now;
        self.pair.client.resolve(now, name)?;
        for _ in 0..100_000 {
            self.step();
            if let Some(ev) = self.pair.client.poll_dns_event() {
                return ev.result.map(|a| a.addrs[0]);
            }
        }
        panic!("no DNS event");
    }

    fn get(&mut self, url: &str, tls: Option<&TlsClient>) -> ClientEvent {
        self.get_n(url, tls, 1).pop().unwrap()
    }

    /// `n` requests on one connection (keep-alive): their events.
    fn get_n(&mut self, url: &str, tls: Option<&TlsClient>, n: u64) -> Vec<ClientEvent> {
        let url: Url = url.parse().unwrap();
        let ip = self.resolve(&url.host).expect("resolves");
        let req = ClientRequest {
            head: false,
            limits: ResponseLimits::default(),
            tag: 7,
            timeout: Duration::from_secs(5),
            url: url.clone(),
            requests: n,
        };
        let session = tls.map(|t| t.connect(&url.host).unwrap());
        let now = self.pair.now;
        self.pair
            .client
            .http_request(now, SocketAddrV4::new(ip, url.port), &req, session)
            .unwrap();
        let mut events = Vec::new();
        for _ in 0..200_000 {
            self.step();
            while let Some(ev) = self.pair.client.poll_client_event() {
                let last = ev.last;
                events.push(ev);
                if last {
                    // Let the close finish both ways.
                    for _ in 0..200 {
                        self.step();
                    }
                    return events;
                }
            }
        }
        panic!("the requests never ended");
    }
}

/// The question of a DNS query datagram in `frame` (UDP to port 53), as (id, question bytes).
fn dns_query(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        return None;
    };
    if u.destination_port() != 53 {
        return None;
    }
    let d = u.payload();
    Some((u16::from_be_bytes([d[0], d[1]]), d[12..].to_vec()))
}

/// The answer to the query in `frame`: an A record for NAME, NXDOMAIN for anything else.
fn dns_answer(frame: &[u8], (id, question): &(u16, Vec<u8>)) -> Vec<u8> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        unreachable!()
    };
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        unreachable!()
    };
    let known = question.starts_with(b"\x03www\x07example\x04test\x00");
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
    m.extend_from_slice(&[0, 1, 0, u8::from(known), 0, 0, 0, 0]);
    m.extend_from_slice(question);
    if known {
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&SERVER.octets());
    }
    let eth = p.link.unwrap().to_header().unwrap();
    let etherparse::LinkHeader::Ethernet2(eth) = eth else {
        unreachable!()
    };
    let b = etherparse::PacketBuilder::ethernet2(eth.destination, eth.source)
        .ipv4(ip.header().destination(), ip.header().source(), 64)
        .udp(53, u.source_port());
    let mut out = Vec::new();
    b.write(&mut out, &m).unwrap();
    out
}

fn client_tls(ca_pem: &str) -> TlsClient {
    TlsClient::from_pem_roots(ca_pem.as_bytes(), &TlsClientConfig::default()).unwrap()
}

#[test]
fn https_get_by_name_byte_exact_resumed_and_the_story_in_order() {
    let pki = pki("test CA");
    let mut net = Net::new(&pki);
    let tls = client_tls(&pki.ca_pem);
    let ev = net.get(&format!("https://{NAME}/"), Some(&tls));
    let resp = ev.result.expect("a response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, page(), "byte-exact");
    assert_eq!(ev.resumed, Some(false));
    assert_eq!(ev.tag, 7);
    let (connected, handshake) = (ev.connected_at.unwrap(), ev.handshake_at.unwrap());
    assert!(ev.started_at <= connected && connected < handshake && handshake <= ev.done_at);
    assert!(ev.last);
    assert_eq!(net.queries, 1);
    let mut events = Vec::new();
    while let Some(e) = net.pair.client.poll_trace_event() {
        events.push(e);
    }
    // In time order (the ARP and DNS that came before the SYN are recorded with it).
    events.sort_by_key(|e| e.t_us);
    handshake::trace::render::check_order(
        &events,
        &[
            handshake_tests::CLIENT_STORY_TO_SERVER_HELLO,
            &[
                "out Application Data",
                "in Application Data",
                // The server closes first (the request said `Connection: close`).
                "in FIN*",
                "state CLOSE-WAIT",
                "out FIN*",
                "state CLOSED",
            ],
        ]
        .concat(),
    )
    .unwrap();
    // The second connection: the name from the cache, the TLS session resumed.
    let ev = net.get(&format!("https://{NAME}/"), Some(&tls));
    assert_eq!(ev.result.expect("a response").body, page());
    assert_eq!(ev.resumed, Some(true));
    assert_eq!(net.queries, 1, "the second resolution came from the cache");
    assert_eq!(net.pair.client.tcp().open_flows(), 0);
    assert_eq!(net.pair.server.tcp().open_flows(), 0);
    let s = net.pair.client.apps().stats();
    assert_eq!((s.client_requests, s.client_ok, s.client_failed), (2, 2, 0));
}

#[test]
fn keep_alive_requests_share_one_connection() {
    let pki = pki("test CA");
    let mut net = Net::new(&pki);
    let tls = client_tls(&pki.ca_pem);
    for (url, tls) in [
        ("http://www.example.test/", None),
        ("https://www.example.test/", Some(&tls)),
    ] {
        let before = *net.pair.server.apps().stats();
        let events = net.get_n(url, tls, 5);
        assert_eq!(events.len(), 5, "{url}");
        for (i, ev) in events.iter().enumerate() {
            let r = ev.result.as_ref().expect("a response");
            assert_eq!((r.status, r.body == page()), (200, true), "{url} #{i}");
            assert_eq!(ev.last, i == 4, "{url} #{i}");
            assert!(ev.started_at <= ev.done_at);
            if i > 0 {
                assert_eq!(ev.started_at, events[i - 1].done_at, "back to back");
            }
        }
        let after = net.pair.server.apps().stats();
        let conns =
            (after.http.conns - before.http.conns) + (after.https.sessions - before.https.sessions);
        assert_eq!(conns, 1, "{url}: one connection for five requests");
    }
}

#[test]
fn plain_http_get() {
    let mut net = Net::new(&pki("test CA"));
    let ev = net.get("http://www.example.test/", None);
    let r = ev.result.unwrap();
    assert_eq!((r.status, r.body == page()), (200, true));
    assert_eq!(r.header("content-length"), Some("160000"));
    assert_eq!(ev.resumed, None);
}

#[test]
fn failures_have_their_own_errors() {
    let (pki, stranger) = (pki("test CA"), pki("another CA"));
    let mut net = Net::new(&pki);
    assert_eq!(net.resolve("nope.example.test"), Err(DnsError::NxDomain));
    // Refused: nothing listens on 81.
    let ev = net.get("http://www.example.test:81/", None);
    match ev.result {
        Err(ClientError::Tcp(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The certificate is for www.example.test, not for the address.
    let tls = client_tls(&pki.ca_pem);
    let ev = net.get("https://198.18.0.1/", Some(&tls));
    match ev.result {
        Err(ClientError::Tls(TlsError::CertificateName { .. })) => {}
        other => panic!("{other:?}"),
    }
    // Another CA.
    let other = client_tls(&stranger.ca_pem);
    let ev = net.get(&format!("https://{NAME}/"), Some(&other));
    match ev.result {
        Err(ClientError::Tls(e @ TlsError::UnknownIssuer { .. })) => {
            assert!(e.to_string().contains("--cacert"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.pair.client.tcp().open_flows(), 0);
    // DNS silence: retries, then a timeout.
    net.dns = Dns::Silent;
    let before = net.queries;
    assert_eq!(net.resolve("other.example.test"), Err(DnsError::Timeout));
    assert_eq!(net.queries - before, 2, "two attempts");
}
