//! HTTPS through the whole stack in memory, rootless: a rustls client on a second `Stack` (our
//! TCP as the client's transport) talks to the server `Stack` over a `MemLink`, with TLS inline
//! on the packet core and on the session pool.
//!
//! The pool backpressure test slows the pool thread on purpose and moves 64 MiB each way through
//! one connection; a counting global allocator records the peak of live heap bytes during the
//! transfer, which must stay under a stated bound.

use handshake::device::mem::Faults;
use handshake::device::pair::StackPair;
use handshake::http::{Handler, Limits, Page, StaticPage};
use handshake::https::pool::{Pool, PoolConfig, Service};
use handshake::https::Timeouts;
use handshake::ipv4::Routes;
use handshake::stack::{Stack, StackConfig};
use handshake::tcp::ConnId;
use handshake::tls::{TlsConfig, TlsServer};
use handshake::wire::Mac;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ---- peak live heap bytes ------------------------------------------------------------------------

struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the only addition is relaxed atomic counting, which cannot affect the allocation.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

// ---- setup ---------------------------------------------------------------------------------------

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HTTPS: u16 = 443;

struct Cert {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn cert() -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["handshake.test".to_string()]).unwrap();
    let c = params.self_signed(&key).unwrap();
    Cert {
        chain_pem: c.pem(),
        key_pem: key.serialize_pem(),
        der: c.der().clone(),
    }
}

fn client_config(cert: &Cert) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn tls_server(cert: &Cert) -> TlsServer {
    TlsServer::from_pem(
        &[(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())],
        &TlsConfig::default(),
    )
    .unwrap()
}

fn mac(last: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, last])
}

/// The server and client stacks, their devices and the links between them.
struct Net {
    pair: StackPair,
    pool: Option<Pool>,
}

/// How the server runs TLS.
#[derive(Clone, Copy)]
enum Mode {
    Inline,
    Pool { slow_down: Duration },
}

impl Net {
    fn new(mode: Mode, handler: Arc<dyn Handler>, limits: Limits, server: TlsServer) -> Net {
        let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(mac(1), routes);
        cfg.gratuitous_arp = false;
        cfg.apps.handler = Some(Arc::clone(&handler));
        cfg.apps.limits = limits;
        cfg.apps.https = Some(handshake::app::HttpsApp {
            port: HTTPS,
            server: server.clone(),
            max_sessions: 64,
        });
        let mut srv = Stack::new(cfg);
        let pool = match mode {
            Mode::Inline => None,
            Mode::Pool { slow_down } => {
                let pcfg = PoolConfig {
                    threads: 1,
                    slow_down,
                    ..PoolConfig::default()
                };
                let service = Service {
                    server,
                    handler,
                    limits,
                    timeouts: Timeouts::default(),
                };
                let (pool, mut links) = Pool::start(&pcfg, service, 1).unwrap();
                srv.attach_pool(links.pop().unwrap());
                Some(pool)
            }
        };
        let routes = Routes::new(vec!["198.18.0.2/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(mac(2), routes);
        cfg.gratuitous_arp = false;
        let cli = Stack::new(cfg);
        Net {
            pair: StackPair::new(srv, cli, Faults::default()),
            pool,
        }
    }

    /// One round: both stacks run a batch, frames cross the links.
    fn step(&mut self) {
        self.pair.step(Duration::from_micros(20));
    }

    fn connect(&mut self) -> ConnId {
        let now = self.pair.now;
        self.pair
            .client
            .tcp_mut()
            .connect(now, CLIENT, SocketAddrV4::new(SERVER, HTTPS))
            .unwrap()
    }
}

/// A rustls client over one of the client stack's TCP connections.
struct Client {
    tls: ClientConnection,
    conn: ConnId,
    wire: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    fn new(net: &mut Net, cfg: &Arc<ClientConfig>) -> Client {
        let conn = net.connect();
        let name = ServerName::try_from("handshake.test").unwrap();
        Client {
            tls: ClientConnection::new(Arc::clone(cfg), name).unwrap(),
            conn,
            wire: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Moves ciphertext between rustls and TCP once; returns plaintext bytes received.
    fn pump(&mut self, net: &mut Net, sink: &mut dyn FnMut(&[u8])) -> usize {
        let tcp = net.pair.client.tcp_mut();
        if self.wire.is_empty() && self.tls.wants_write() {
            self.tls.write_tls(&mut self.wire).unwrap();
        }
        if !self.wire.is_empty() {
            let n = tcp.send(self.conn, &self.wire).unwrap_or(0);
            self.wire.drain(..n);
        }
        let mut got = 0;
        loop {
            let n = tcp.recv(self.conn, &mut self.buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut data = &self.buf[..n];
            while !data.is_empty() {
                self.tls.read_tls(&mut data).unwrap();
                self.tls
                    .process_new_packets()
                    .expect("server sent valid TLS");
                let mut plain = [0u8; 16 * 1024];
                loop {
                    match self.tls.reader().read(&mut plain) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            got += k;
                            sink(&plain[..k]);
                        }
                    }
                }
            }
        }
        got
    }
}

/// Sends `req` and collects exactly `expect` response bytes (head + body), checking each byte
/// with `check(offset, byte)`... or storing them when `keep`.
fn roundtrip(net: &mut Net, c: &mut Client, req: &[u8], expect: usize) -> Vec<u8> {
    c.tls.writer().write_all(req).unwrap();
    let mut out = Vec::new();
    for _ in 0..2_000_000 {
        c.pump(net, &mut |d| out.extend_from_slice(d));
        if out.len() >= expect {
            break;
        }
        net.step();
    }
    assert_eq!(out.len(), expect, "response size");
    out
}

fn head(len: usize, close: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: {len}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn page_roundtrips(mode: Mode) {
    let cert = cert();
    let body = b"<h1>hello over TLS</h1>".to_vec();
    let handler: Arc<dyn Handler> = Arc::new(StaticPage::html(&body));
    let mut net = Net::new(mode, handler, Limits::default(), tls_server(&cert));
    let cfg = client_config(&cert);
    let mut c = Client::new(&mut net, &cfg);
    let mut expected = head(body.len(), false).into_bytes();
    expected.extend_from_slice(&body);
    for i in 0..100 {
        let got = roundtrip(
            &mut net,
            &mut c,
            b"GET / HTTP/1.1\r\nHost: handshake.test\r\n\r\n",
            expected.len(),
        );
        assert_eq!(got, expected, "response {i}");
    }
    assert_eq!(c.tls.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Three pipelined requests in one write are answered in order, the last with close.
    let req = b"GET / HTTP/1.1\r\n\r\nGET /missing HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    let not_found = "HTTP/1.1 404 Not Found\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n";
    let mut want = expected.clone();
    want.extend_from_slice(not_found.as_bytes());
    want.extend_from_slice(head(body.len(), true).as_bytes());
    want.extend_from_slice(&body);
    assert_eq!(roundtrip(&mut net, &mut c, req, want.len()), want);
    // The server closes: close_notify, then FIN; the client sees a clean end.
    for _ in 0..10_000 {
        c.pump(&mut net, &mut |_| {});
        net.step();
        if c.tls.wants_read()
            && net
                .pair
                .client
                .tcp()
                .state(c.conn)
                .is_none_or(|s| s != handshake::tcp::State::Established)
        {
            break;
        }
    }
    let mut rest = Vec::new();
    let r = c.tls.reader().read_to_end(&mut rest);
    assert!(r.is_ok(), "close_notify received: {r:?}");
    let stats = match &net.pool {
        None => net.pair.server.apps().stats().https,
        Some(_) => {
            let pool = net.pool.take().unwrap();
            pool.stop()
        }
    };
    assert_eq!(stats.handshakes, 1);
    assert_eq!(stats.http.responses(200), 101 + 1);
    assert_eq!(stats.http.responses(404), 1);
    assert_eq!(stats.tls_errors, 0);
}

#[test]
fn https_inline_keep_alive_pipelining_and_close() {
    page_roundtrips(Mode::Inline);
}

#[test]
fn https_on_the_pool_keep_alive_pipelining_and_close() {
    page_roundtrips(Mode::Pool {
        slow_down: Duration::ZERO,
    });
}

/// A byte of the big body at `i` (not periodic at any small power of two).
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn pool_backpressure_64_mib_each_way_with_a_slow_pool_thread() {
    const SIZE: usize = 64 << 20;
    let cert = cert();
    let big: Vec<u8> = (0..SIZE).map(pattern).collect();
    let handler: Arc<dyn Handler> = Arc::new(StaticPage(Page {
        body: big.into(),
        content_type: "application/octet-stream",
    }));
    let limits = Limits {
        max_head: 8192,
        max_body: SIZE as u64,
    };
    let slow = Duration::from_micros(200);
    let mut net = Net::new(
        Mode::Pool { slow_down: slow },
        handler,
        limits,
        tls_server(&cert),
    );
    let cfg = client_config(&cert);
    let mut c = Client::new(&mut net, &cfg);
    // Warm up: handshake and one small exchange, so that lazily sized buffers exist.
    let h404 = "HTTP/1.1 404 Not Found\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        roundtrip(&mut net, &mut c, b"GET /x HTTP/1.1\r\n\r\n", h404.len()),
        h404.as_bytes()
    );

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);

    // Download: 64 MiB, checked byte by byte as it arrives (nothing stored).
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    c.tls.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut got = 0usize;
    let mut bad = None;
    let total = head.len() + SIZE;
    let mut rounds = 0u64;
    while got < total && rounds < 50_000_000 {
        c.pump(&mut net, &mut |d| {
            for (k, b) in d.iter().enumerate() {
                let at = got + k;
                let want = if at < head.len() {
                    head.as_bytes()[at]
                } else {
                    pattern(at - head.len())
                };
                if *b != want && bad.is_none() {
                    bad = Some(at);
                }
            }
            got += d.len();
        });
        net.step();
        rounds += 1;
    }
    assert_eq!(bad, None, "first wrong byte of the download");
    assert_eq!(got, total, "download complete");
    let peak_down = PEAK.load(Ordering::Relaxed) - base;
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    println!("peak live heap growth during the 64 MiB download: {peak_down} bytes");
    assert!(peak_down < 1 << 20, "peak heap growth {peak_down} bytes");

    // Upload: a 64 MiB request body (discarded by the responder, then 405 for POST), sent as
    // fast as TCP takes it; then a GET on the same connection proves the framing held.
    let post = format!("POST /upload HTTP/1.1\r\nContent-Length: {SIZE}\r\n\r\n");
    c.tls.writer().write_all(post.as_bytes()).unwrap();
    let mut sent = 0usize;
    let chunk: Vec<u8> = (0..16 * 1024).map(|i| pattern(i) ^ 0x5a).collect();
    let mut zero_window_seen = false;
    let mut answer = Vec::new();
    rounds = 0;
    while (sent < SIZE || answer.is_empty()) && rounds < 50_000_000 {
        while sent < SIZE && c.wire.is_empty() {
            let n = (SIZE - sent).min(chunk.len());
            // rustls buffers what it cannot send yet: feed only as TCP drains it.
            let k = c.tls.writer().write(&chunk[..n]).unwrap();
            sent += k;
            c.tls.write_tls(&mut c.wire).unwrap();
            if k == 0 {
                break;
            }
        }
        c.pump(&mut net, &mut |d| answer.extend_from_slice(d));
        if net.pair.client.tcp_mut().send_capacity(c.conn).unwrap_or(0) == 0 {
            zero_window_seen = true;
        }
        net.step();
        rounds += 1;
    }
    assert_eq!(sent, SIZE);
    let h405 = "HTTP/1.1 405 Method Not Allowed\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n";
    let need = h405.len();
    for _ in 0..1_000_000 {
        if answer.len() >= need {
            break;
        }
        c.pump(&mut net, &mut |d| answer.extend_from_slice(d));
        net.step();
    }
    assert_eq!(answer, h405.as_bytes());
    assert_eq!(
        roundtrip(&mut net, &mut c, b"GET /x HTTP/1.1\r\n\r\n", h404.len()),
        h404.as_bytes()
    );
    assert!(
        zero_window_seen,
        "the slow pool made the client's send buffer fill up"
    );

    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!("peak live heap growth during the 64 MiB upload: {peak} bytes");
    // The bound: per flow, a window (64 KiB) of ciphertext each way between worker and pool,
    // one chunk (16 KiB) being filled each way, rustls's buffers (64 KiB limit out, one record
    // in), the HTTPS input buffer, the client's rustls buffers and batch vectors: well under
    // 1 MiB. A queue growing with the transfer would show tens of MiB.
    assert!(peak < 1 << 20, "peak heap growth {peak} bytes");
    let stats = net.pool.take().unwrap().stop();
    assert_eq!(stats.http.responses(200), 1);
    assert_eq!(stats.http.responses(405), 1);
    assert_eq!(stats.http.responses(404), 2);
}

// ---- the connection trace ------------------------------------------------------------------------

/// Asserts the story's order (see `handshake::trace::render::check_order`).
fn in_order(events: &[handshake::trace::TraceEvent], want: &[&str]) {
    if let Err(e) = handshake::trace::render::check_order(events, want) {
        panic!("{e}");
    }
}

#[test]
fn the_trace_tells_the_story_of_an_https_request_from_both_ends() {
    use handshake::trace::{EventKind, Tracer, DEFAULT_QUEUE};
    let cert = cert();
    let body = b"<h1>traced</h1>".to_vec();
    let handler: Arc<dyn Handler> = Arc::new(StaticPage::html(&body));
    let mut net = Net::new(Mode::Inline, handler, Limits::default(), tls_server(&cert));
    net.pair.server.set_tracer(Some(Tracer::new(
        "port 443".parse().unwrap(),
        1,
        DEFAULT_QUEUE,
    )));
    net.pair.client.set_tracer(Some(Tracer::new(
        "host 198.18.0.1".parse().unwrap(),
        1,
        DEFAULT_QUEUE,
    )));
    let cfg = client_config(&cert);
    let mut c = Client::new(&mut net, &cfg);
    let mut want = head(body.len(), true).into_bytes();
    want.extend_from_slice(&body);
    let req = b"GET / HTTP/1.1\r\nHost: handshake.test\r\nConnection: close\r\n\r\n";
    assert_eq!(roundtrip(&mut net, &mut c, req, want.len()), want);
    // The server closes; the client answers with its FIN; TIME_WAIT runs out (virtual time).
    for i in 0..200_000 {
        c.pump(&mut net, &mut |_| {});
        if i == 1000 {
            net.pair.client.tcp_mut().close(c.conn).unwrap();
        }
        if i < 2000 {
            net.step();
        } else {
            net.pair.step(Duration::from_millis(500));
        }
        if net
            .pair
            .server
            .tcp()
            .stats()
            .flows(handshake::tcp::State::Closed)
            == net.pair.server.tcp().config().max_flows as u64
            && i > 2000
        {
            break;
        }
    }
    let server: Vec<_> = std::iter::from_fn(|| net.pair.server.poll_trace_event()).collect();
    let client: Vec<_> = std::iter::from_fn(|| net.pair.client.poll_trace_event()).collect();
    in_order(
        &server,
        &[
            "flow active=false",
            "in ARP who-has",
            "out ARP is-at",
            "in SYN",
            "state SYN-RECEIVED",
            "out SYN,ACK",
            "in ClientHello",
            "out ServerHello",
            "out Encrypted Handshake Message (EncryptedExtensions … Finished)",
            "in Encrypted Handshake Message (Finished)",
            "in Application Data",
            "state FIN-WAIT-1",
            "out FIN*",
            "state FIN-WAIT-2",
            "in FIN*",
            "state TIME-WAIT",
            "out ACK",
            "state CLOSED",
        ],
    );
    // Our client sends its ClientHello with the ACK that completes the handshake: the
    // connection is established before the ServerHello, whatever the order of the two.
    in_order(
        &server,
        &["out SYN,ACK", "state ESTABLISHED", "out ServerHello"],
    );
    in_order(&server, &["in Application Data", "out Application Data"]);
    // The ClientHello as rustls sent it, the ServerHello's choice among the offers.
    let offered = server
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ClientHello {
                version,
                suites,
                sni,
                alpn,
                ..
            } => {
                assert_eq!(version, "TLS 1.3");
                assert_eq!(sni.as_deref(), Some("handshake.test"));
                assert_eq!(alpn, &["http/1.1"]);
                Some(suites.clone())
            }
            _ => None,
        })
        .expect("a ClientHello");
    let chosen = server
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ServerHello { suite, .. } => Some(suite.clone()),
            _ => None,
        })
        .expect("a ServerHello");
    assert!(offered.contains(&chosen), "{chosen} not in {offered:?}");
    // The client's side: it opened (SYN-SENT before its SYN) and ARPed for the server first.
    in_order(
        &client,
        &[
            "flow active=true",
            "state SYN-SENT",
            "out ARP who-has",
            "in ARP is-at",
            "out SYN",
            "in SYN,ACK",
            "state ESTABLISHED",
            "out ClientHello",
            "in ServerHello",
            "in FIN*",
            "state CLOSE-WAIT",
            "state LAST-ACK",
            "out FIN*",
            "state CLOSED",
        ],
    );
    // Every event of each side belongs to its one traced connection.
    assert!(server.iter().chain(&client).all(|e| e.flow == 1));
    let m = handshake::trace::render::render(&server, handshake::trace::render::Format::Mermaid);
    assert!(m.contains("C ->> S: Client Hello, TLS 1.3"), "{m}");
    assert!(m.contains("S ->> C: Server Hello, TLS 1.3, TLS_"), "{m}");
}
