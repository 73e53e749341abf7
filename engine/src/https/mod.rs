//! HTTPS: a TLS session and the HTTP responder over any ciphertext transport.
//!
//! [`HttpsConn`] is sans-IO: ciphertext comes in and goes out through a [`Transport`] (a TCP
//! connection when TLS runs inline on the packet core, or the byte queues a pool thread keeps
//! per flow, see [`pool`]). The same code therefore runs in both modes.
//!
//! Backpressure: ciphertext is read from the transport only when the TLS session has taken the
//! previous read, the session takes ciphertext only while its plaintext is being consumed by the
//! HTTP responder, and the responder reads only when its response is sent; ciphertext is
//! produced only as far as the transport has room. So a slow reader at either end closes a TCP
//! window instead of growing a queue.

pub mod pool;

use crate::http::{ByteStream, Handler, HttpConn, HttpStats, Limits};
use crate::time::Instant;
use crate::tls::{CipherSession, TlsError, TlsSession, TlsVersion};
use std::time::Duration;

/// Where ciphertext comes from and goes to.
pub trait Transport {
    /// Reads up to `buf.len()` received bytes; 0 when none now.
    fn recv(&mut self, buf: &mut [u8]) -> usize;
    /// How many bytes `send` would take now.
    fn send_capacity(&mut self) -> usize;
    /// Queues bytes to send; returns how many were taken.
    fn send(&mut self, data: &[u8]) -> usize;
}

/// Counters of the HTTPS service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpsStats {
    /// TLS sessions started.
    pub sessions: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of which resumed (ticket or session cache).
    pub resumed: u64,
    /// Of which TLS 1.2.
    pub tls12: u64,
    /// Sessions ended by a TLS error (bad or unsupported input: an alert was sent).
    pub tls_errors: u64,
    /// Sessions closed because the handshake did not finish in time.
    pub handshake_timeouts: u64,
    /// Connections refused because `max_sessions` were open.
    pub refused: u64,
    /// Responses, by status.
    pub http: HttpStats,
}

impl HttpsStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &HttpsStats) {
        self.sessions += o.sessions;
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        self.tls12 += o.tls12;
        self.tls_errors += o.tls_errors;
        self.handshake_timeouts += o.handshake_timeouts;
        self.refused += o.refused;
        self.http.add(&o.http);
    }
}

/// Per-connection timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TLS handshake must finish within this.
    pub handshake: Duration,
    /// A request, once started, must be complete within this (else 408); also the longest a
    /// keep-alive connection may sit idle.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Size of the ciphertext input buffer of a connection (one maximal TLS record and a header).
const INPUT: usize = 16 * 1024 + 512;

/// Ciphertext between a transport and a TLS session (server or client), both ways.
///
/// In: one buffer, read from the transport only once the session has taken all of the previous
/// read (so a session that stops taking ciphertext closes the transport's window). Out: as far
/// as the transport has room.
pub struct CipherInput {
    buf: Box<[u8]>,
    off: usize,
    len: usize,
    /// The transport's last read gave nothing.
    exhausted: bool,
}

impl std::fmt::Debug for CipherInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherInput")
            .field("pending", &(self.len - self.off))
            .finish()
    }
}

impl Default for CipherInput {
    fn default() -> Self {
        CipherInput {
            buf: vec![0; INPUT].into_boxed_slice(),
            off: 0,
            len: 0,
            exhausted: false,
        }
    }
}

impl CipherInput {
    /// Forgets what is buffered (the state is reused for a new connection).
    pub fn reset(&mut self) {
        self.off = 0;
        self.len = 0;
        self.exhausted = false;
    }

    /// True when the session has taken everything read from the transport.
    pub fn drained(&self) -> bool {
        self.off == self.len
    }

    /// True when the session has taken everything the transport had: drained, and the last
    /// read found nothing more. After the peer's FIN this is the end of its input; bytes it
    /// sent before the FIN may still wait in the transport until then.
    pub fn finished(&self) -> bool {
        self.drained() && self.exhausted
    }

    /// Moves ciphertext from `tls` to `io` as far as `io` has room (through `scratch`);
    /// returns true when some moved.
    pub fn send<S: CipherSession + ?Sized, T: Transport + ?Sized>(
        tls: &mut S,
        io: &mut T,
        scratch: &mut [u8],
    ) -> bool {
        let mut moved = false;
        while tls.has_ciphertext() {
            let cap = io.send_capacity().min(scratch.len());
            if cap == 0 {
                break;
            }
            let n = tls.poll_ciphertext(&mut scratch[..cap]);
            if n == 0 {
                break;
            }
            let sent = io.send(&scratch[..n]);
            debug_assert_eq!(sent, n, "the transport's capacity was checked");
            moved = true;
        }
        moved
    }

    /// Reads from `io` when drained (also after the peer's FIN: what it sent before is still
    /// there to read), then feeds `tls`. Returns whether the session took bytes, or its error
    /// (the buffered bytes are then dropped; the session has queued its alert).
    pub fn receive<S: CipherSession + ?Sized, T: Transport + ?Sized>(
        &mut self,
        tls: &mut S,
        io: &mut T,
    ) -> Result<bool, TlsError> {
        if self.drained() {
            self.off = 0;
            self.len = io.recv(&mut self.buf);
            self.exhausted = self.len == 0;
        }
        if self.drained() {
            return Ok(false);
        }
        match tls.handle_ciphertext(&self.buf[self.off..self.len]) {
            Ok(n) => {
                self.off += n;
                Ok(n > 0)
            }
            Err(e) => {
                self.off = self.len;
                Err(e)
            }
        }
    }
}

/// One HTTPS connection: a TLS session with the HTTP responder on its plaintext side.
pub struct HttpsConn {
    tls: Option<TlsSession>,
    http: HttpConn,
    input: CipherInput,
    /// The responder finished and close_notify was queued.
    closing: bool,
    /// The transport's peer finished sending.
    eof: bool,
    counted_handshake: bool,
    /// When the current deadline started (connection start, then each request or idle period).
    since: Instant,
}

impl std::fmt::Debug for HttpsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConn")
            .field(
                "handshaking",
                &self.tls.as_ref().map(|t| t.is_handshaking()),
            )
            .field("closing", &self.closing)
            .field("eof", &self.eof)
            .finish()
    }
}

impl Default for HttpsConn {
    fn default() -> Self {
        HttpsConn {
            tls: None,
            http: HttpConn::default(),
            input: CipherInput::default(),
            closing: false,
            eof: false,
            counted_handshake: false,
            since: Instant::ZERO,
        }
    }
}

/// The plaintext side of a session, as the responder's byte stream.
/// It counts the bytes it moves, so that the caller knows whether the responder progressed.
struct Plain<'a> {
    tls: &'a mut TlsSession,
    moved: usize,
}

impl ByteStream for Plain<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = self.tls.read_plaintext(buf);
        self.moved += n;
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = self.tls.write_plaintext(data);
        self.moved += n;
        n
    }
}

impl HttpsConn {
    /// Makes this (possibly recycled) state serve a new connection with `tls`, from `now`.
    pub fn start(&mut self, tls: TlsSession, limits: Limits, now: Instant) {
        self.tls = Some(tls);
        self.http.reset(limits);
        self.input.reset();
        self.closing = false;
        self.eof = false;
        self.counted_handshake = false;
        self.since = now;
    }

    /// Releases the session (the state can be recycled).
    pub fn finish(&mut self) {
        self.tls = None;
    }

    /// The transport's peer finished sending (TCP FIN).
    pub fn transport_closed(&mut self) {
        self.eof = true;
        self.http.peer_closed();
    }

    /// True while the TLS handshake is in progress.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Checks the deadlines at `now`: a handshake over time ends the connection (returns true:
    /// the caller closes the transport at once); a stalled request gets 408 on the next
    /// [`HttpsConn::service`]; an idle keep-alive connection is closed with close_notify.
    pub fn check_timeouts(&mut self, now: Instant, t: &Timeouts, stats: &mut HttpsStats) -> bool {
        let Some(tls) = &self.tls else { return true };
        let age = now.saturating_since(self.since);
        if tls.is_handshaking() {
            if age > t.handshake {
                stats.handshake_timeouts += 1;
                return true;
            }
        } else if age > t.request && !self.closing {
            self.http.timeout();
            self.since = now;
        }
        false
    }

    /// Moves the connection forward as far as `io` allows. Returns true when it is finished:
    /// everything to send (the response, close_notify or an alert) has been handed to `io`, and
    /// the caller should close the transport. `scratch` is a work buffer (any size ≥ 1 KiB; the
    /// larger, the fewer rounds).
    pub fn service<T: Transport + ?Sized>(
        &mut self,
        io: &mut T,
        handler: &dyn Handler,
        now: Instant,
        scratch: &mut [u8],
        stats: &mut HttpsStats,
    ) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        loop {
            let mut progress = CipherInput::send(tls, io, scratch);
            if tls.is_dead() || self.closing {
                // Only the alert or close_notify remained to send.
                return !tls.has_ciphertext();
            }
            match self.input.receive(tls, io) {
                Ok(took) => progress |= took,
                Err(_) => {
                    stats.tls_errors += 1;
                    continue;
                }
            }
            if tls.is_handshaking() {
                if self.eof && self.input.finished() {
                    // The peer gave up mid-handshake (e.g. a truncated ClientHello, then FIN):
                    // nothing more can happen. Counted as bad input.
                    stats.tls_errors += 1;
                    return true;
                }
                if !progress {
                    return false;
                }
                continue;
            }
            if !self.counted_handshake {
                self.counted_handshake = true;
                self.since = now;
                stats.handshakes += 1;
                if let Some(info) = tls.info() {
                    stats.resumed += info.resumed as u64;
                    stats.tls12 += (info.version == TlsVersion::Tls12) as u64;
                }
            }
            if tls.peer_closed() {
                self.http.peer_closed();
            }
            let mut plain = Plain { tls, moved: 0 };
            let before = (self.http.in_request(), self.http.responses());
            let done = self.http.service(&mut plain, handler, &mut stats.http);
            if plain.moved > 0 {
                progress = true;
                // The idle deadline runs from the latest bytes moved, a request's from its
                // first byte (a byte per TLS record every 29 s does not keep it open).
                if self.http.restarts_deadline(before) {
                    self.since = now;
                }
            }
            if done {
                tls.close();
                self.closing = true;
                progress = true;
            }
            if self.eof && self.input.finished() && !tls.has_ciphertext() && !self.closing {
                // The transport is closed and nothing is left to answer.
                return true;
            }
            if !progress {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::StaticPage;
    use crate::tls::{TlsClient, TlsClientConfig, TlsClientSession, TlsConfig, TlsServer};
    use std::collections::VecDeque;

    /// A ciphertext pipe: `inbox` client->server bytes, `outbox` server->client, `cap` bytes
    /// the server may send now.
    struct Pipe {
        inbox: VecDeque<u8>,
        outbox: Vec<u8>,
        cap: usize,
    }
    impl Transport for Pipe {
        fn recv(&mut self, buf: &mut [u8]) -> usize {
            let n = buf.len().min(self.inbox.len());
            for b in buf.iter_mut().take(n) {
                *b = self.inbox.pop_front().unwrap();
            }
            n
        }
        fn send_capacity(&mut self) -> usize {
            self.cap
        }
        fn send(&mut self, d: &[u8]) -> usize {
            let n = d.len().min(self.cap);
            self.outbox.extend_from_slice(&d[..n]);
            self.cap -= n;
            n
        }
    }

    fn pair() -> (TlsServer, TlsClientSession) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let srv = TlsServer::from_pem(
            &[(cert.pem().as_bytes(), key.serialize_pem().as_bytes())],
            &TlsConfig::default(),
        )
        .unwrap();
        let cli = TlsClient::from_pem_roots(cert.pem().as_bytes(), &TlsClientConfig::default())
            .unwrap()
            .connect("a.test")
            .unwrap();
        (srv, cli)
    }

    /// Feeds the server's output to the client; returns the responses it read.
    fn to_client(c: &mut TlsClientSession, p: &mut Pipe) -> usize {
        let mut off = 0;
        let mut answered = 0;
        let mut plain = vec![0u8; 1 << 16];
        loop {
            loop {
                let k = c.read_plaintext(&mut plain);
                if k == 0 {
                    break;
                }
                answered += plain[..k]
                    .windows(15)
                    .filter(|w| w == b"HTTP/1.1 200 OK")
                    .count();
            }
            if off >= p.outbox.len() {
                break;
            }
            off += c.handle_ciphertext(&p.outbox[off..]).unwrap();
        }
        p.outbox.clear();
        answered
    }
    fn from_client(c: &mut TlsClientSession, p: &mut Pipe) {
        let mut b = [0u8; 4096];
        loop {
            let n = c.poll_ciphertext(&mut b);
            if n == 0 {
                break;
            }
            p.inbox.extend(&b[..n]);
        }
    }

    /// Requests that arrived before the peer's FIN are all answered, even when the FIN is
    /// reported while some of their ciphertext still waits in the transport (the input
    /// stopped reading at the FIN: 938 of 2,000 were answered, 57 KB left unread).
    #[test]
    fn pipelined_requests_before_the_fin_are_all_answered() {
        let (srv, mut cli) = pair();
        let handler = StaticPage::default();
        let mut stats = HttpsStats::default();
        let mut scratch = vec![0u8; 16 * 1024];
        let mut h = HttpsConn::default();
        h.start(srv.accept().unwrap(), Limits::default(), Instant::ZERO);
        let mut p = Pipe {
            inbox: VecDeque::new(),
            outbox: Vec::new(),
            cap: usize::MAX,
        };
        for _ in 0..10 {
            from_client(&mut cli, &mut p);
            h.service(&mut p, &handler, Instant::ZERO, &mut scratch, &mut stats);
            to_client(&mut cli, &mut p);
        }
        assert!(!cli.is_handshaking() && !h.is_handshaking());
        // The client pipelines N requests (about 60 KB), then half-closes.
        let req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let n = 2000;
        let mut queued = 0;
        while queued < n {
            if cli.write_plaintext(req) == req.len() {
                queued += 1;
            }
            from_client(&mut cli, &mut p);
        }
        // The server's output is blocked for a while (the peer does not read yet)...
        p.cap = 0;
        h.service(&mut p, &handler, Instant::ZERO, &mut scratch, &mut stats);
        let left_in_transport = p.inbox.len();
        // ... and the FIN (after all the requests) is reported.
        h.transport_closed();
        p.cap = usize::MAX;
        let mut answered = 0;
        let mut finished = false;
        for _ in 0..10_000 {
            let done = h.service(&mut p, &handler, Instant::ZERO, &mut scratch, &mut stats);
            answered += to_client(&mut cli, &mut p);
            if done {
                finished = true;
                break;
            }
        }
        assert!(finished);
        assert_eq!(
            (answered, p.inbox.len()),
            (n, 0),
            "{left_in_transport} bytes were still in the transport at the FIN; responses: {}",
            stats.http.status[0]
        );
    }
}
