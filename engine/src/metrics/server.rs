//! The metrics endpoint: a minimal HTTP/1.x server on a kernel TCP socket, on a thread of its
//! own (never a packet core's work). `GET /metrics` (or `/`) answers the exposition text; one
//! request per connection, served one connection at a time, each bounded in size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// A client must send its request and read the answer within this.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// Content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running endpoint; stopped (and joined) by [`Server::stop`] or on drop.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}: choose another address with --metrics ADDR:PORT (or `[metrics] listen`), or turn the endpoint off with --metrics off")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

impl Server {
    /// Binds `addr` and serves `render` (called once per scrape to fill the body) from a thread
    /// named `hs-metrics`.
    pub fn start<F>(addr: SocketAddr, render: F) -> Result<Server, BindError>
    where
        F: Fn(&mut String) + Send + 'static,
    {
        let e = |source| BindError { addr, source };
        let listener = TcpListener::bind(addr).map_err(e)?;
        let addr = listener.local_addr().map_err(e)?;
        listener.set_nonblocking(true).map_err(e)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("hs-metrics".into())
            .spawn(move || serve(listener, &flag, render))
            .map_err(e)?;
        Ok(Server {
            addr,
            stop,
            handle: Some(handle),
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve<F: Fn(&mut String)>(listener: TcpListener, stop: &AtomicBool, render: F) {
    let mut body = String::with_capacity(64 << 10);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = answer(conn, &mut body, &render) {
                    tracing::debug!("metrics client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    /// `GET /metrics` or `GET /` (`head`: HEAD, no body).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not HTTP.
    Bad,
}

/// Reads the request line of `head`.
pub(crate) fn classify(head: &[u8]) -> Ask {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut w = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (w.next(), w.next(), w.next()) else {
        return Ask::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ask::BadMethod,
    };
    if path == "/metrics" || path == "/" {
        Ask::Metrics { head }
    } else {
        Ask::NotFound
    }
}

fn answer<F: Fn(&mut String)>(
    mut conn: TcpStream,
    body: &mut String,
    render: &F,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            break;
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, ctype, with_body) = match classify(&head) {
        Ask::Metrics { head } => {
            body.clear();
            render(body);
            ("200 OK", CONTENT_TYPE, !head)
        }
        Ask::NotFound => {
            body.clear();
            body.push_str("not found: the metrics are at /metrics\n");
            ("404 Not Found", "text/plain", true)
        }
        Ask::BadMethod => {
            body.clear();
            body.push_str("only GET and HEAD\n");
            ("405 Method Not Allowed", "text/plain", true)
        }
        Ask::Bad => {
            body.clear();
            body.push_str("bad request\n");
            ("400 Bad Request", "text/plain", true)
        }
    };
    let hdr = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(hdr.as_bytes())?;
    if with_body {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}

/// Fetches `http://addr/metrics` (for `handshake stats` and tests): the body of a 200 answer.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    c.read_to_end(&mut resp)?;
    let text = String::from_utf8(resp)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "answer is not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "answer is not HTTP")
    })?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{addr} answered `{status}`")));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Ask::Metrics { head: false }
        );
        assert_eq!(
            classify(b"GET / HTTP/1.0\r\n\r\n"),
            Ask::Metrics { head: false }
        );
        assert_eq!(
            classify(b"HEAD /metrics?x=1 HTTP/1.1\r\n"),
            Ask::Metrics { head: true }
        );
        assert_eq!(classify(b"GET /x HTTP/1.1\r\n\r\n"), Ask::NotFound);
        assert_eq!(classify(b"POST /metrics HTTP/1.1\r\n\r\n"), Ask::BadMethod);
        assert_eq!(classify(b"hello\r\n"), Ask::Bad);
        assert_eq!(classify(b""), Ask::Bad);
    }

    /// Over loopback (rootless): the endpoint serves what `render` writes, and stops.
    #[test]
    fn serves_over_loopback() {
        let s = Server::start("127.0.0.1:0".parse().unwrap(), |out: &mut String| {
            out.push_str("# TYPE handshake_x_total counter\nhandshake_x_total 7\n")
        })
        .unwrap();
        let body = fetch(s.addr(), Duration::from_secs(2)).unwrap();
        assert_eq!(
            body,
            "# TYPE handshake_x_total counter\nhandshake_x_total 7\n"
        );
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let addr = s.addr();
        // A second bind on the same address fails with a message that says what to do.
        let e = Server::start(addr, |_: &mut String| {}).unwrap_err();
        assert!(e.to_string().contains("--metrics off"), "{e}");
        s.stop();
        assert!(fetch(addr, Duration::from_millis(500)).is_err());
    }
}
