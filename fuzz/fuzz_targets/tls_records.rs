//! HTTPS through the whole stack in memory: a rustls client on a client `Stack` talks to the
//! server `Stack` (TLS inline). The client's ciphertext — a real handshake and a request — is
//! handed to its TCP in chunks whose sizes the input picks (one chunk per round, nodelay: each
//! goes out as its own segment while the congestion window allows, so TLS records are split at
//! arbitrary points), optionally with bytes flipped.
//!
//! Encoding: `[cfg]` (bit 0: flip bytes; bit 1: TLS 1.2 client), with bit 0 `[n: u8]` then n % 8 ×
//! `[stream offset: u16 BE, mod 1024][xor: u8]`, then chunk sizes: `[b]` = b + 1 bytes (1..=128), or with
//! `b & 0x80` `[b][c]` = ((b & 0x7f) << 8 | c) + 1 bytes; once the input ends, the rest goes in
//! one piece.
//!
//! The server must not panic; with nothing flipped the response must be exactly the page.
#![no_main]

use handshake::app::{AppConfig, HttpsApp};
use handshake::device::mem::Faults;
use handshake::device::pair::StackPair;
use handshake::http::{Handler, StaticPage};
use handshake::ipv4::Routes;
use handshake::stack::{Stack, StackConfig};
use handshake::tls::{TlsConfig, TlsServer};
use handshake::wire::Mac;
use handshake_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const BODY: &[u8] = b"<h1>hello over TLS</h1>";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: handshake.test\r\nConnection: close\r\n\r\n";

struct Fixture {
    server: TlsServer,
    tls13: Arc<ClientConfig>,
    tls12: Arc<ClientConfig>,
    expected: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["handshake.test".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        let server = TlsServer::from_pem(
            &[(cert.pem().as_bytes(), key.serialize_pem().as_bytes())],
            &TlsConfig::default(),
        )
        .expect("server TLS config");
        let der: CertificateDer<'static> = cert.der().clone();
        let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            let mut roots = RootCertStore::empty();
            roots.add(der.clone()).expect("root");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(cfg)
        };
        let mut expected = format!(
            "HTTP/1.1 200 OK\r\nServer: handshake\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            BODY.len()
        )
        .into_bytes();
        expected.extend_from_slice(BODY);
        Fixture {
            server,
            tls13: client(&[&rustls::version::TLS13]),
            tls12: client(&[&rustls::version::TLS12]),
            expected,
        }
    })
}

fn pair(f: &Fixture) -> StackPair {
    let mac = |last| Mac([0x02, 0, 0, 0, 0, last]);
    let routes = Routes::new(vec!["198.18.0.1/24".parse().expect("cidr")], None).expect("routes");
    let mut cfg = StackConfig::new(mac(1), routes);
    cfg.gratuitous_arp = false;
    cfg.tcp.max_flows = 16;
    let handler: Arc<dyn Handler> = Arc::new(StaticPage::html(BODY));
    cfg.apps = AppConfig {
        handler: Some(handler),
        https: Some(HttpsApp {
            port: 443,
            server: f.server.clone(),
            max_sessions: 4,
        }),
        ..AppConfig::default()
    };
    let server = Stack::new(cfg);
    let routes = Routes::new(vec!["198.18.0.2/24".parse().expect("cidr")], None).expect("routes");
    let mut cfg = StackConfig::new(mac(2), routes);
    cfg.gratuitous_arp = false;
    cfg.tcp.max_flows = 16;
    StackPair::new(server, Stack::new(cfg), Faults::default())
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut input = Input::new(data);
    let cfg = input.u8();
    let mut flips = Vec::new();
    if cfg & 1 != 0 {
        for _ in 0..input.u8() % 8 {
            let at = usize::from(input.u16()) % 1024;
            let x = input.u8().max(1);
            flips.push((at, x));
        }
    }
    let mutated = !flips.is_empty();
    let client_cfg = if cfg & 2 != 0 { &f.tls12 } else { &f.tls13 };
    let mut net = pair(f);
    let now = net.now;
    let conn = net
        .client
        .tcp_mut()
        .connect(
            now,
            Ipv4Addr::new(198, 18, 0, 2),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 443),
        )
        .expect("connect");
    let name = ServerName::try_from("handshake.test").expect("name");
    let mut tls = ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
    tls.writer().write_all(REQUEST).expect("buffered");
    let step = |net: &mut StackPair| net.step(Duration::from_micros(20));
    for _ in 0..200 {
        step(&mut net);
        if net.client.tcp().state(conn) == Some(handshake::tcp::State::Established) {
            break;
        }
    }
    assert_eq!(
        net.client.tcp().state(conn),
        Some(handshake::tcp::State::Established),
        "TCP connects"
    );
    net.client
        .tcp_mut()
        .set_nodelay(conn, true)
        .expect("nodelay");
    let mut wire: Vec<u8> = Vec::new();
    let mut offset = 0usize; // client stream offset of wire[0]
    let mut response = Vec::new();
    let mut tls_failed = false;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..3000 {
        if wire.is_empty() && tls.wants_write() && !tls_failed {
            tls.write_tls(&mut wire).expect("to a vector");
        }
        // One chunk per round: the client's next batch sends it as a segment of its own (once
        // the congestion window is full, later chunks share segments: still arbitrary cuts).
        if !wire.is_empty() {
            let len = if input.is_empty() {
                wire.len()
            } else {
                let b = input.u8();
                if b & 0x80 != 0 {
                    (usize::from(b & 0x7f) << 8 | usize::from(input.u8())) + 1
                } else {
                    usize::from(b) + 1
                }
            }
            .min(wire.len());
            let mut chunk = wire[..len].to_vec();
            for &(at, x) in &flips {
                if (offset..offset + len).contains(&at) {
                    chunk[at - offset] ^= x;
                }
            }
            let k = net.client.tcp_mut().send(conn, &chunk).unwrap_or(0);
            wire.drain(..k);
            offset += k;
        }
        step(&mut net);
        // Ciphertext from the server into the client.
        loop {
            let n = net.client.tcp_mut().recv(conn, &mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            if tls_failed {
                continue;
            }
            let mut d = &buf[..n];
            while !d.is_empty() {
                if tls.read_tls(&mut d).is_err() || tls.process_new_packets().is_err() {
                    tls_failed = true;
                    break;
                }
                let mut plain = [0u8; 4096];
                while let Ok(k @ 1..) = tls.reader().read(&mut plain) {
                    response.extend_from_slice(&plain[..k]);
                }
            }
        }
        let done = response.len() >= f.expected.len()
            || net.client.tcp().state(conn).is_none()
            || (tls_failed && wire.is_empty());
        if done {
            break;
        }
    }
    if !mutated {
        assert!(!tls_failed, "the server sent valid TLS");
        assert_eq!(
            String::from_utf8_lossy(&response),
            String::from_utf8_lossy(&f.expected),
            "the response, whatever the segmentation"
        );
    }
    // Let the server's deadlines and timers run (it must clean up without panicking).
    for _ in 0..20 {
        net.step(Duration::from_secs(2));
    }
});
