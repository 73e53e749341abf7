//! TLS benchmarks' pieces: bare rustls in memory, and the same exchange through the engine (a
//! client `Stack` with a rustls client over our TCP, the server `Stack` with HTTPS inline or on
//! the session pool, frames crossing an in-memory link).
//!
//! Both sides do the same TLS work per connection: a full TLS 1.3 handshake (or a resumption),
//! one `GET /` and its 200 response. The bare side has no TCP at all, so the engine's figure
//! includes everything it adds: two TCP stacks, the devices, the apps, the pool hand-off.

use handshake::device::mem::Faults;
use handshake::device::pair::StackPair;
use handshake::http::{Handler, Limits, StaticPage};
use handshake::https::pool::{Pool, PoolConfig, Service};
use handshake::https::Timeouts;
use handshake::ipv4::Routes;
use handshake::stack::{Stack, StackConfig};
use handshake::tcp::State;
use handshake::tls::{TlsConfig, TlsServer};
use handshake::wire::Mac;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// The request every connection sends.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: handshake.test\r\n\r\n";
/// The page served.
pub const PAGE: &[u8] = b"<h1>hello</h1>";

/// Certificates and configurations shared by all TLS benchmarks.
pub struct Fixture {
    /// Our server.
    pub server: TlsServer,
    /// The same certificate as a bare rustls server configuration.
    pub bare: Arc<ServerConfig>,
    /// Client without resumption (every handshake full).
    pub full: Arc<ClientConfig>,
    /// Client with resumption (tickets).
    pub resume: Arc<ClientConfig>,
    /// The response the server sends.
    pub response: Vec<u8>,
}

impl Fixture {
    /// A P-256 certificate for "handshake.test" and both servers over it.
    pub fn new() -> Fixture {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["handshake.test".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        let der: CertificateDer<'static> = cert.der().clone();
        let server = TlsServer::from_pem(
            &[(cert.pem().as_bytes(), key.serialize_pem().as_bytes())],
            &TlsConfig::default(),
        )
        .expect("server");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut bare = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("bare server");
        bare.alpn_protocols = vec![b"http/1.1".to_vec()];
        bare.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client = |resume: bool| {
            let mut c = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            if !resume {
                c.resumption = Resumption::disabled();
            }
            Arc::new(c)
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
            PAGE.len()
        )
        .into_bytes()
        .into_iter()
        .chain(PAGE.iter().copied())
        .collect();
        Fixture {
            server,
            bare: Arc::new(bare),
            full: client(false),
            resume: client(true),
            response,
        }
    }
}

fn name() -> ServerName<'static> {
    ServerName::try_from("handshake.test").expect("name")
}

/// Reads all available plaintext of `c` into `out`.
fn drain(reader: &mut dyn Read, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// One connection with bare rustls: handshake, request, response. Returns the response.
pub fn bare_connection(f: &Fixture, client: &Arc<ClientConfig>, wire: &mut Vec<u8>) -> Vec<u8> {
    let mut c = ClientConnection::new(Arc::clone(client), name()).expect("client");
    let mut s = ServerConnection::new(Arc::clone(&f.bare)).expect("server");
    c.writer().write_all(REQUEST).expect("request");
    let mut request = Vec::new();
    let mut response = Vec::new();
    let mut answered = false;
    for _ in 0..32 {
        wire.clear();
        while c.wants_write() {
            c.write_tls(wire).expect("client write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            s.read_tls(&mut r).expect("server read");
            s.process_new_packets().expect("server process");
        }
        drain(&mut s.reader(), &mut request);
        if !answered && request.ends_with(b"\r\n\r\n") {
            // The server's work for the request (the engine parses it; a bare server answers).
            s.writer().write_all(&f.response).expect("response");
            answered = true;
        }
        wire.clear();
        while s.wants_write() {
            s.write_tls(wire).expect("server write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).expect("client read");
            c.process_new_packets().expect("client process");
        }
        drain(&mut c.reader(), &mut response);
        if response.len() >= f.response.len() {
            break;
        }
    }
    response
}

/// How the engine runs TLS.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// On the packet core.
    Inline,
    /// On one pool thread.
    Pool,
}

/// Two stacks over an in-memory link; the server serves HTTPS on 443.
pub struct Engine {
    pair: StackPair,
    pool: Option<Pool>,
    buf: Vec<u8>,
    wire: Vec<u8>,
}

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn stack_config(addr: &str, mac: u8) -> StackConfig {
    let routes = Routes::new(vec![addr.parse().expect("cidr")], None).expect("routes");
    let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, mac]), routes);
    cfg.gratuitous_arp = false;
    // Connections come and go by the thousand: keep TIME_WAIT short in virtual time.
    cfg.tcp.time_wait_ms = 1;
    cfg.tcp.max_flows = 1024;
    cfg
}

impl Engine {
    /// The pair of stacks, the server in `mode`.
    pub fn new(f: &Fixture, mode: Mode) -> Engine {
        let handler: Arc<dyn Handler> = Arc::new(StaticPage::html(PAGE));
        let mut cfg = stack_config("198.18.0.1/24", 1);
        cfg.apps.handler = Some(Arc::clone(&handler));
        cfg.apps.https = Some(handshake::app::HttpsApp {
            port: 443,
            server: f.server.clone(),
            max_sessions: 1024,
        });
        let mut srv = Stack::new(cfg);
        let pool = match mode {
            Mode::Inline => None,
            Mode::Pool => {
                let service = Service {
                    server: f.server.clone(),
                    handler,
                    limits: Limits::default(),
                    timeouts: Timeouts::default(),
                };
                let (pool, mut links) =
                    Pool::start(&PoolConfig::default(), service, 1).expect("pool");
                srv.attach_pool(links.pop().expect("one link"));
                Some(pool)
            }
        };
        let cli = Stack::new(stack_config("198.18.0.2/24", 2));
        Engine {
            pair: StackPair::new(srv, cli, Faults::default()),
            pool,
            buf: vec![0; 64 * 1024],
            wire: Vec::new(),
        }
    }

    fn step(&mut self) {
        self.pair.step(Duration::from_micros(50));
    }

    /// One connection: TCP open, TLS handshake, request, response, close. Returns the response.
    pub fn connection(&mut self, client: &Arc<ClientConfig>) -> Vec<u8> {
        let want = {
            let page = PAGE.len();
            // Head + page: the same bytes the fixture's bare server sends.
            format!(
                "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: {page}\r\n\r\n"
            )
            .len()
                + page
        };
        let now = self.pair.now;
        let conn = self
            .pair
            .client
            .tcp_mut()
            .connect(now, CLIENT, SocketAddrV4::new(SERVER, 443))
            .expect("connect");
        let mut tls = ClientConnection::new(Arc::clone(client), name()).expect("client");
        tls.writer().write_all(REQUEST).expect("request");
        let mut response = Vec::new();
        for _ in 0..100_000 {
            let tcp = self.pair.client.tcp_mut();
            if self.wire.is_empty() && tls.wants_write() {
                tls.write_tls(&mut self.wire).expect("client write");
            }
            if !self.wire.is_empty() {
                let n = tcp.send(conn, &self.wire).unwrap_or(0);
                self.wire.drain(..n);
            }
            loop {
                let n = tcp.recv(conn, &mut self.buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let mut r = &self.buf[..n];
                while !r.is_empty() {
                    tls.read_tls(&mut r).expect("client read");
                    tls.process_new_packets().expect("client process");
                    drain(&mut tls.reader(), &mut response);
                }
            }
            if response.len() >= want {
                break;
            }
            self.step();
        }
        // Close from the client (close_notify, FIN) and let both sides finish.
        tls.send_close_notify();
        self.wire.clear();
        while tls.wants_write() {
            tls.write_tls(&mut self.wire).expect("close_notify");
        }
        let _ = self.pair.client.tcp_mut().send(conn, &self.wire);
        self.wire.clear();
        let _ = self.pair.client.tcp_mut().close(conn);
        for _ in 0..100_000 {
            self.step();
            match self.pair.client.tcp().state(conn) {
                None | Some(State::TimeWait) | Some(State::Closed) => break,
                _ => {}
            }
        }
        // TIME_WAIT lasts 1 ms of virtual time.
        self.pair.step(Duration::from_millis(2));
        response
    }

    /// Stops the pool, if any.
    pub fn stop(mut self) {
        if let Some(p) = self.pool.take() {
            p.stop();
        }
    }
}

/// An established bare rustls pair for bulk runs.
pub fn bulk_pair(f: &Fixture) -> (ClientConnection, ServerConnection) {
    let mut c = ClientConnection::new(Arc::clone(&f.full), name()).expect("client");
    let mut s = ServerConnection::new(Arc::clone(&f.bare)).expect("server");
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).expect("client write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            s.read_tls(&mut r).expect("server read");
            s.process_new_packets().expect("server process");
        }
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).expect("server write");
        }
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).expect("client read");
            c.process_new_packets().expect("client process");
        }
    }
    (c, s)
}

/// Encrypts `chunk` on the server side and decrypts it on the client; returns bytes received.
pub fn bulk_record(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    chunk: &[u8],
    wire: &mut Vec<u8>,
    plain: &mut [u8],
) -> usize {
    s.writer().write_all(chunk).expect("write");
    wire.clear();
    while s.wants_write() {
        s.write_tls(wire).expect("server write");
    }
    let mut r = &wire[..];
    let mut got = 0;
    while !r.is_empty() {
        c.read_tls(&mut r).expect("client read");
        c.process_new_packets().expect("client process");
        while let Ok(n) = c.reader().read(plain) {
            if n == 0 {
                break;
            }
            got += n;
        }
    }
    got
}
