//! The kernel-stack side of `cargo xtask bench`, and its load clients.
//!
//! ```text
//! sbs-peer serve --addr IP --echo PORT --http PORT --body FILE [--max-secs S]
//!     one thread, epoll, non-blocking kernel sockets: TCP echo and HTTP/1.1 keep-alive serving
//!     FILE at / and /index.html (404 elsewhere). Pin it with taskset.
//! sbs-peer tcp-rr --addr IP:PORT --threads N --secs S [--size 64]
//!     connect, SIZE bytes out, the same SIZE bytes back, close; per thread, for S seconds.
//! sbs-peer tls-conn --addr IP:PORT --cacert PEM --name NAME --body FILE --threads N --secs S [--resume]
//!     a TLS connection per request (GET /, body checked against FILE), full handshakes or,
//!     with --resume, resumed ones (TLS 1.3 tickets; X25519 only, so no server retries).
//! sbs-peer bulk --addr IP:PORT --bytes N --secs S
//!     one TCP stream of N bytes through an echo service, checked; Gbit/s each way.
//! ```
//!
//! Each client prints one `key=value` line (`ops= secs= errors= …`) that the harness parses.
//! Every loop is bounded by its time (and the servers by --max-secs).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!("usage: sbs-peer serve|tcp-rr|tls-conn|bulk ... (see the source's header)");
    };
    let opts = Opts::parse(&args[1..])?;
    match cmd.as_str() {
        "serve" => serve(&opts),
        "tcp-rr" => tcp_rr(&opts),
        "tls-conn" => tls_conn(&opts),
        "bulk" => bulk(&opts),
        other => bail!("unknown command {other}: serve, tcp-rr, tls-conn or bulk"),
    }
}

/// `--key value` pairs and `--flag`s.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                bail!("unexpected argument {a}");
            };
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().cloned().unwrap_or_default(),
                _ => String::new(),
            };
            map.insert(key.to_owned(), value);
        }
        Ok(Opts(map))
    }
    fn get(&self, key: &str) -> Result<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("--{key} is required"))
    }
    fn num(&self, key: &str, default: u64) -> Result<u64> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .with_context(|| format!("--{key} {v}: not a number")),
        }
    }
    fn secs(&self, key: &str, default: f64) -> Result<Duration> {
        let v = match self.0.get(key) {
            None => default,
            Some(v) => v
                .parse()
                .with_context(|| format!("--{key} {v}: not seconds"))?,
        };
        if !(0.0..=3600.0).contains(&v) {
            bail!("--{key} {v}: give 0 to 3600 seconds");
        }
        Ok(Duration::from_secs_f64(v))
    }
    fn flag(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel server: one thread, epoll.

#[derive(PartialEq)]
enum Kind {
    Echo,
    Http,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
    writing: bool,
}

const LISTEN_ECHO: u64 = u64::MAX;
const LISTEN_HTTP: u64 = u64::MAX - 1;

fn serve(o: &Opts) -> Result<()> {
    let addr = o.get("addr")?;
    let body = std::fs::read(o.get("body")?).context("reading --body")?;
    let max = o.secs("max-secs", 900.0)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let echo = TcpListener::bind((addr, o.num("echo", 7)? as u16)).context("binding echo")?;
    let http = TcpListener::bind((addr, o.num("http", 80)? as u16)).context("binding http")?;
    for (l, token) in [(&echo, LISTEN_ECHO), (&http, LISTEN_HTTP)] {
        l.set_nonblocking(true)?;
        epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: sbs-peer\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut ok = head.into_bytes();
    ok.extend_from_slice(&body);
    let not_found: &[u8] =
        b"HTTP/1.1 404 Not Found\r\nServer: sbs-peer\r\nContent-Length: 0\r\n\r\n";
    println!("ready: echo and http on {addr}");
    io::stdout().flush()?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 1 << 16];
    let end = Instant::now() + max;
    while Instant::now() < end {
        let n = match epoll.wait(&mut events, EpollTimeout::from(200u16)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTEN_ECHO || token == LISTEN_HTTP {
                let l = if token == LISTEN_ECHO { &echo } else { &http };
                // Bounded: at most 64 accepts per wakeup (level-triggered: the rest next time).
                for _ in 0..64 {
                    match l.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            s.set_nodelay(true)?;
                            let fd = s.as_raw_fd() as u64;
                            epoll.add(&s, EpollEvent::new(EpollFlags::EPOLLIN, fd))?;
                            conns.insert(
                                fd,
                                Conn {
                                    stream: s,
                                    kind: if token == LISTEN_ECHO {
                                        Kind::Echo
                                    } else {
                                        Kind::Http
                                    },
                                    inbuf: Vec::new(),
                                    out: Vec::new(),
                                    sent: 0,
                                    close_after: false,
                                    writing: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            let keep = step(c, ev.events(), &mut buf, &ok, not_found);
            match keep {
                Some(want_write) if want_write != c.writing => {
                    c.writing = want_write;
                    let flags = if want_write {
                        EpollFlags::EPOLLOUT
                    } else {
                        EpollFlags::EPOLLIN
                    };
                    epoll.modify(&c.stream, &mut EpollEvent::new(flags, token))?;
                }
                Some(_) => {}
                None => {
                    let _ = epoll.delete(&c.stream);
                    conns.remove(&token);
                }
            }
        }
    }
    Ok(())
}

/// Serves one readiness event. `Some(wants EPOLLOUT)` to keep the connection, `None` to close.
fn step(c: &mut Conn, ev: EpollFlags, buf: &mut [u8], ok: &[u8], nf: &[u8]) -> Option<bool> {
    if c.writing || ev.contains(EpollFlags::EPOLLOUT) {
        if !flush(c)? {
            return Some(true);
        }
        if c.close_after {
            return None;
        }
        // Drained: read again (fall through for what arrived meanwhile).
    }
    if !ev.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
        && !c.writing
    {
        return Some(false);
    }
    let n = match c.stream.read(buf) {
        Ok(0) => {
            // The peer closed: send what is left (best effort), then close.
            let _ = flush(c);
            return None;
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(c.out.len() > c.sent),
        Err(_) => return None,
    };
    match c.kind {
        Kind::Echo => c.out.extend_from_slice(&buf[..n]),
        Kind::Http => {
            c.inbuf.extend_from_slice(&buf[..n]);
            // Every complete request head (GET only; no bodies in this benchmark).
            let mut start = 0;
            while let Some(end) = find(&c.inbuf[start..], b"\r\n\r\n") {
                let req = &c.inbuf[start..start + end];
                let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
                let mut parts = line.split(|&b| b == b' ');
                let _method = parts.next();
                let path = parts.next().unwrap_or_default();
                if path == b"/" || path == b"/index.html" {
                    c.out.extend_from_slice(ok);
                } else {
                    c.out.extend_from_slice(nf);
                }
                let lower = req.to_ascii_lowercase();
                if find(&lower, b"connection: close").is_some() || line.ends_with(b"HTTP/1.0") {
                    c.close_after = true;
                }
                start += end + 4;
            }
            c.inbuf.drain(..start);
            if c.inbuf.len() > 64 * 1024 {
                return None;
            }
        }
    }
    match flush(c) {
        None => None,
        Some(true) if c.close_after => None,
        Some(done) => Some(!done),
    }
}

/// Writes what is pending: `Some(true)` when all is out, `Some(false)` when the socket is full,
/// `None` on an error.
fn flush(c: &mut Conn) -> Option<bool> {
    while c.sent < c.out.len() {
        match c.stream.write(&c.out[c.sent..]) {
            Ok(0) => return None,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
            Err(_) => return None,
        }
    }
    c.out.clear();
    c.sent = 0;
    Some(true)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Clients.

fn run_threads(
    threads: u64,
    secs: Duration,
    f: impl Fn(&AtomicU64, &AtomicU64, &AtomicBool) + Sync,
) -> (u64, u64, f64) {
    let ops = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| f(&ops, &errors, &stop));
        }
        std::thread::sleep(secs);
        stop.store(true, Ordering::Relaxed);
    });
    // Operations finished after the stop are counted, so the time runs until all threads end.
    let el = start.elapsed().as_secs_f64();
    (ops.into_inner(), errors.into_inner(), el)
}

fn tcp_rr(o: &Opts) -> Result<()> {
    let addr: SocketAddr = o.get("addr")?.parse().context("--addr IP:PORT")?;
    let size = o.num("size", 64)? as usize;
    let msg: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let (ops, errors, el) = run_threads(
        o.num("threads", 4)?,
        o.secs("secs", 5.0)?,
        |ops, errs, stop| {
            let mut back = vec![0u8; size];
            while !stop.load(Ordering::Relaxed) {
                let r = (|| -> io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(&msg)?;
                    s.read_exact(&mut back)?;
                    Ok(back == msg)
                })();
                match r {
                    Ok(true) => ops.fetch_add(1, Ordering::Relaxed),
                    _ => errs.fetch_add(1, Ordering::Relaxed),
                };
            }
        },
    );
    println!("ops={ops} secs={el:.4} errors={errors}");
    Ok(())
}

fn tls_conn(o: &Opts) -> Result<()> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let addr: SocketAddr = o.get("addr")?.parse().context("--addr IP:PORT")?;
    let body = std::fs::read(o.get("body")?).context("reading --body")?;
    let resume = o.flag("resume");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(o.get("cacert")?).context("reading --cacert")? {
        roots.add(c.context("a certificate in --cacert")?)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // One key exchange both servers have, so that neither pays for a HelloRetryRequest.
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let config = Arc::new(config);
    let name = ServerName::try_from(o.get("name")?.to_owned()).context("--name")?;
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", o.get("name")?);
    let resumed = AtomicU64::new(0);
    let (ops, errors, el) = run_threads(
        o.num("threads", 4)?,
        o.secs("secs", 5.0)?,
        |ops, errs, stop| {
            while !stop.load(Ordering::Relaxed) {
                let r = (|| -> Result<bool> {
                    let mut conn = rustls::ClientConnection::new(config.clone(), name.clone())?;
                    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    sock.set_nodelay(true)?;
                    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
                    tls.write_all(request.as_bytes())?;
                    let got = read_response(&mut tls)?;
                    let was_resumed =
                        tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    tls.conn.send_close_notify();
                    let _ = tls.conn.complete_io(tls.sock);
                    if was_resumed {
                        resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(got == body)
                })();
                match r {
                    Ok(true) => ops.fetch_add(1, Ordering::Relaxed),
                    _ => errs.fetch_add(1, Ordering::Relaxed),
                };
            }
        },
    );
    println!(
        "ops={ops} secs={el:.4} errors={errors} resumed={}",
        resumed.into_inner()
    );
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length; returns its body (empty unless 200).
fn read_response(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    let (head_end, len) = loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("not a 200: {}", head.lines().next().unwrap_or_default());
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("no content-length")?;
            break (end + 4, len);
        }
        if data.len() > 64 * 1024 {
            bail!("response head too long");
        }
    };
    while data.len() < head_end + len {
        let n = r.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        data.extend_from_slice(&buf[..n]);
    }
    Ok(data[head_end..head_end + len].to_vec())
}

fn bulk(o: &Opts) -> Result<()> {
    let addr: SocketAddr = o.get("addr")?.parse().context("--addr IP:PORT")?;
    let total = o.num("bytes", 256 << 20)?;
    let limit = o.secs("secs", 10.0)?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = s;
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let start = Instant::now();
    let deadline = start + limit;
    let writer = std::thread::spawn(move || -> io::Result<u64> {
        let mut sent = 0u64;
        while sent < total && Instant::now() < deadline {
            let n = (total - sent).min(pattern.len() as u64) as usize;
            w.write_all(&pattern[..n])?;
            sent += n as u64;
        }
        w.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    });
    let mut got = 0u64;
    let mut bad = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < deadline + Duration::from_secs(5) {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => break,
        };
        for (i, b) in buf[..n].iter().enumerate() {
            let pos = (got + i as u64) % 65536;
            if *b != (pos as u32 * 7 % 251) as u8 {
                bad += 1;
            }
        }
        got += n as u64;
    }
    let el = start.elapsed().as_secs_f64();
    let sent = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let errors = u64::from(got != sent) + bad;
    println!(
        "ops={got} secs={el:.4} errors={errors} sent={sent} gbits={:.4}",
        got as f64 * 8.0 / el / 1e9
    );
    Ok(())
}
