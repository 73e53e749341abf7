//! Built-in applications on top of [`Tcp`]: a TCP echo service, plain HTTP/1.1 and HTTPS.
//!
//! Apps are driven by TCP [`Event`]s once per batch (not per packet). They never block and never
//! buffer without bound: they read only as much as the next stage can take, so a slow reader
//! closes the receive window instead of growing a queue (backpressure end to end).
//!
//! HTTP and HTTPS share the sans-IO responder of [`crate::http`]. HTTPS runs either inline (the
//! TLS work on the packet core, [`HttpsConn`] over the TCP connection) or on the session pool
//! ([`crate::https::pool`]), where this side only moves ciphertext between TCP and the pool.

use crate::client::{ClientConn, ClientError, ClientEvent};
use crate::http::{ByteStream, Handler, HttpConn, HttpStats, Limits, StaticPage};
use crate::https::pool::{FromPool, ToPool, WorkerLink, CHUNK};
use crate::https::{HttpsConn, HttpsStats, Timeouts, Transport};
use crate::tcp::{ConnId, Event, Tcp, TcpError};
use crate::time::Instant;
use crate::tls::TlsServer;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

pub use crate::http::DEFAULT_PAGE;

/// The HTTPS service of a worker.
#[derive(Clone)]
pub struct HttpsApp {
    /// Port.
    pub port: u16,
    /// TLS configuration (certificates, versions, resumption).
    pub server: TlsServer,
    /// Most concurrent TLS sessions on this worker (inline mode); beyond it new connections are
    /// reset.
    pub max_sessions: usize,
}

/// Settings of the built-in apps.
#[derive(Clone, Default)]
pub struct AppConfig {
    /// TCP echo service port.
    pub echo: Option<u16>,
    /// Plain HTTP port.
    pub http: Option<u16>,
    /// The body served at `/` by the default handler (default: a small HTML page).
    pub http_body: Option<Vec<u8>>,
    /// What HTTP and HTTPS serve (default: a [`StaticPage`] of `http_body`).
    pub handler: Option<Arc<dyn Handler>>,
    /// Request size limits.
    pub limits: Limits,
    /// Handshake and request deadlines (HTTP and HTTPS).
    pub timeouts: Timeouts,
    /// HTTPS: inline, or on the session pool once a link is attached ([`Apps::attach_pool`]).
    pub https: Option<HttpsApp>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("echo", &self.echo)
            .field("http", &self.http)
            .field("https", &self.https.as_ref().map(|h| h.port))
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// Counters of the apps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    /// Connections accepted by the echo service.
    pub echo_conns: u64,
    /// Bytes echoed.
    pub echo_bytes: u64,
    /// Plain HTTP connections and responses.
    pub http: HttpStats,
    /// HTTPS run inline on this worker (pool threads keep their own).
    pub https: HttpsStats,
    /// HTTPS connections handed to the pool.
    pub pool_flows: u64,
    /// HTTPS connections the pool refused or failed (reset).
    pub pool_aborts: u64,
    /// Client requests started.
    pub client_requests: u64,
    /// Client requests that ended with a complete response.
    pub client_ok: u64,
    /// Client requests that failed.
    pub client_failed: u64,
}

/// A TCP connection as a byte stream and a transport.
struct TcpStream<'a> {
    tcp: &'a mut Tcp,
    conn: ConnId,
    /// Bytes moved either way (activity, for deadlines).
    moved: usize,
}

impl ByteStream for TcpStream<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = self.tcp.recv(self.conn, buf).unwrap_or(0);
        self.moved += n;
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let n = self.tcp.send(self.conn, data).unwrap_or(0);
        self.moved += n;
        n
    }
}

impl Transport for TcpStream<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        self.tcp.recv(self.conn, buf).unwrap_or(0)
    }
    fn send_capacity(&mut self) -> usize {
        self.tcp.send_capacity(self.conn).unwrap_or(0)
    }
    fn send(&mut self, data: &[u8]) -> usize {
        self.tcp.send(self.conn, data).unwrap_or(0)
    }
}

/// An HTTPS connection run inline.
#[derive(Debug)]
struct InlineHttps {
    conn: HttpsConn,
}

/// An HTTPS connection on the pool: the bytes in flight each way.
#[derive(Debug, Default)]
struct Remote {
    id: Option<ConnId>,
    /// Ciphertext bytes with the pool, not yet credited back.
    to_pool: usize,
    /// Ciphertext from the pool not yet taken by TCP (front chunk from `off`).
    pending: VecDeque<Vec<u8>>,
    off: usize,
    /// Bytes handed to TCP since the last credit.
    owed: usize,
    /// The pool asked to close once `pending` is sent.
    close: bool,
    closed: bool,
    /// The peer sent FIN; `fin_sent`: the pool was told, after the last byte before the FIN.
    peer_closed: bool,
    fin_sent: bool,
    /// Listed in `Apps::owing` (credit to send at the end of the turn).
    listed: bool,
}

/// What a connection is attached to.
#[derive(Debug)]
enum Slot {
    Free,
    Echo {
        peer_closed: bool,
        /// Closed by us (everything echoed after the peer's FIN): nothing more to do.
        done: bool,
    },
    /// The responder, and since when its deadline runs.
    Http(Box<HttpConn>, Instant, ConnId),
    Https(Box<InlineHttps>, ConnId),
    Remote(Box<Remote>),
    /// Requests this side makes.
    Client(Box<ClientConn>, ConnId),
}

/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(100);

/// The built-in apps of one worker.
pub struct Apps {
    echo: Option<u16>,
    http: Option<u16>,
    https: Option<HttpsApp>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    timeouts: Timeouts,
    pool: Option<WorkerLink>,
    slots: Vec<Slot>,
    /// Recycled per-connection states: the boxes move between here and the slots.
    #[allow(clippy::vec_box)]
    spare_http: Vec<Box<HttpConn>>,
    #[allow(clippy::vec_box)]
    spare_https: Vec<Box<InlineHttps>>,
    #[allow(clippy::vec_box)]
    spare_remote: Vec<Box<Remote>>,
    /// Inline TLS sessions open.
    sessions: usize,
    /// Slots of pooled flows that owe the pool a credit (sent once per turn, coalesced).
    owing: Vec<u32>,
    scratch: Box<[u8]>,
    stats: AppStats,
    now: Instant,
    last_sweep: Instant,
    /// Outcomes of client requests, for [`Apps::poll_client_event`].
    client_events: VecDeque<ClientEvent>,
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("echo", &self.echo)
            .field("http", &self.http)
            .field("https", &self.https.as_ref().map(|h| h.port))
            .field("pool", &self.pool.is_some())
            .finish()
    }
}

impl Apps {
    /// Apps per `cfg`, for a TCP engine of `max_flows` connections.
    pub fn new(cfg: &AppConfig, max_flows: usize) -> Self {
        let handler = cfg.handler.clone().unwrap_or_else(|| {
            Arc::new(StaticPage::html(
                cfg.http_body.as_deref().unwrap_or(DEFAULT_PAGE),
            ))
        });
        Apps {
            echo: cfg.echo,
            http: cfg.http,
            https: cfg.https.clone(),
            handler,
            limits: cfg.limits,
            timeouts: cfg.timeouts,
            pool: None,
            slots: (0..max_flows).map(|_| Slot::Free).collect(),
            spare_http: Vec::new(),
            spare_https: Vec::new(),
            spare_remote: Vec::new(),
            sessions: 0,
            owing: Vec::with_capacity(max_flows.min(1 << 16)),
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            stats: AppStats::default(),
            now: Instant::ZERO,
            last_sweep: Instant::ZERO,
            client_events: VecDeque::new(),
        }
    }

    /// Opens a TCP connection from `local` to `remote` for the client request `req`, which must
    /// complete within its timeout.
    pub fn open_client(
        &mut self,
        tcp: &mut Tcp,
        now: Instant,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        req: ClientConn,
    ) -> Result<ConnId, TcpError> {
        self.now = now;
        let conn = tcp.connect(now, local, remote)?;
        match self.slots.get_mut(conn.index() as usize) {
            Some(slot) => *slot = Slot::Client(Box::new(req), conn),
            None => {
                let _ = tcp.abort(conn);
                return Err(TcpError::TableFull);
            }
        }
        self.stats.client_requests += 1;
        Ok(conn)
    }

    /// The outcome of the next finished client request.
    pub fn poll_client_event(&mut self) -> Option<ClientEvent> {
        self.client_events.pop_front()
    }

    /// Sends this worker's HTTPS connections to the session pool through `link`.
    pub fn attach_pool(&mut self, link: WorkerLink) {
        self.pool = Some(link);
    }

    /// Ports to listen on.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.echo
            .into_iter()
            .chain(self.http)
            .chain(self.https.as_ref().map(|h| h.port))
    }

    /// Counters.
    pub fn stats(&self) -> &AppStats {
        &self.stats
    }

    /// True while HTTPS connections are on the pool: the worker should not sleep long, the
    /// pool may answer at any moment.
    pub fn awaiting_pool(&self) -> bool {
        self.pool.is_some() && self.stats.pool_flows > 0
    }

    /// Runs the apps at `now`: messages from the pool, then the TCP events, then deadlines;
    /// finally sends what the pool should get.
    pub fn run(&mut self, tcp: &mut Tcp, now: Instant) {
        self.now = now;
        if let Some(h) = &mut self.https {
            // New certificates (SIGHUP) for the connections accepted from now on.
            h.server.refresh();
        }
        self.poll_pool(tcp);
        while let Some(ev) = tcp.poll_event() {
            self.handle_event(tcp, ev);
        }
        // In microseconds: this runs every batch, `Duration` arithmetic is not free.
        if now.as_micros().saturating_sub(self.last_sweep.as_micros()) >= SWEEP.as_micros() as u64 {
            self.last_sweep = now;
            self.sweep(tcp);
        }
        if let Some(link) = &mut self.pool {
            if link.ready() {
                // One credit per flow per turn; while a channel is full they keep adding up.
                for i in self.owing.drain(..) {
                    if let Some(Slot::Remote(r)) = self.slots.get_mut(i as usize) {
                        r.listed = false;
                        if let (Some(conn), true) = (r.id, r.owed > 0) {
                            link.send(ToPool::Credit(conn, r.owed));
                            r.owed = 0;
                        }
                    }
                }
            }
            link.flush();
        }
    }

    /// Handles one TCP event.
    pub fn handle_event(&mut self, tcp: &mut Tcp, ev: Event) {
        match ev {
            Event::Accepted { conn, listen_port } => {
                let Some(slot) = self.slots.get_mut(conn.index() as usize) else {
                    let _ = tcp.abort(conn);
                    return;
                };
                if Some(listen_port) == self.echo {
                    *slot = Slot::Echo {
                        peer_closed: false,
                        done: false,
                    };
                    self.stats.echo_conns += 1;
                } else if Some(listen_port) == self.http {
                    // Like nginx's tcp_nodelay: a response's last partial segment must not wait
                    // for the client's delayed ACK of the previous one.
                    let _ = tcp.set_nodelay(conn, true);
                    let mut h = self.spare_http.pop().unwrap_or_default();
                    h.reset(self.limits);
                    *slot = Slot::Http(h, self.now, conn);
                    self.stats.http.conns += 1;
                } else if let Some(https) = self.https.as_ref().filter(|h| h.port == listen_port) {
                    let _ = tcp.set_nodelay(conn, true);
                    if let Some(link) = &mut self.pool {
                        let mut r = self.spare_remote.pop().unwrap_or_default();
                        r.id = Some(conn);
                        r.to_pool = 0;
                        r.off = 0;
                        r.owed = 0;
                        r.close = false;
                        r.closed = false;
                        r.peer_closed = false;
                        r.fin_sent = false;
                        r.listed = false;
                        link.send(ToPool::Open(conn));
                        *slot = Slot::Remote(r);
                        self.stats.pool_flows += 1;
                    } else {
                        if self.sessions >= https.max_sessions {
                            self.stats.https.refused += 1;
                            let _ = tcp.abort(conn);
                            return;
                        }
                        let Ok(tls) = https.server.accept() else {
                            self.stats.https.tls_errors += 1;
                            let _ = tcp.abort(conn);
                            return;
                        };
                        let mut h = self.spare_https.pop().unwrap_or_else(|| {
                            Box::new(InlineHttps {
                                conn: HttpsConn::default(),
                            })
                        });
                        h.conn.start(tls, self.limits, self.now);
                        *slot = Slot::Https(h, conn);
                        self.sessions += 1;
                        self.stats.https.sessions += 1;
                    }
                }
                self.service(tcp, conn);
            }
            Event::Readable { conn } | Event::Writable { conn } => self.service(tcp, conn),
            Event::PeerClosed { conn } => {
                match self.slots.get_mut(conn.index() as usize) {
                    Some(Slot::Echo { peer_closed, .. }) => *peer_closed = true,
                    Some(Slot::Http(h, ..)) => h.peer_closed(),
                    Some(Slot::Https(h, _)) => h.conn.transport_closed(),
                    // Told to the pool by `service_remote`, after the bytes before the FIN.
                    Some(Slot::Remote(r)) => r.peer_closed = true,
                    Some(Slot::Client(c, ..)) => c.transport_closed(),
                    _ => {}
                }
                self.service(tcp, conn);
            }
            Event::Closed { conn, reason } => {
                if let Some(Slot::Client(c, ..)) = self.slots.get_mut(conn.index() as usize) {
                    c.fail(self.now, ClientError::closed(reason));
                }
                self.release(conn)
            }
            Event::Connected { conn } => {
                if let Some(Slot::Client(c, ..)) = self.slots.get_mut(conn.index() as usize) {
                    c.connected(self.now);
                }
                self.service(tcp, conn);
            }
        }
    }

    /// Frees the slot of a connection that ended.
    fn release(&mut self, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(conn.index() as usize) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::Http(h, ..) => self.spare_http.push(h),
            Slot::Https(mut h, _) => {
                h.conn.finish();
                self.sessions -= 1;
                self.spare_https.push(h);
            }
            Slot::Remote(mut r) => {
                if let Some(link) = &mut self.pool {
                    link.send(ToPool::Closed(conn));
                    while let Some(c) = r.pending.pop_front() {
                        link.recycle(c);
                    }
                }
                r.pending.clear();
                self.stats.pool_flows -= 1;
                self.spare_remote.push(r);
            }
            Slot::Client(mut c, ..) => {
                while let Some(ev) = c.take_event() {
                    client_done(&mut self.stats, &mut self.client_events, ev);
                }
            }
            Slot::Free | Slot::Echo { .. } => {}
        }
    }

    /// Messages from the pool: output to send, credit to read more, close or abort.
    fn poll_pool(&mut self, tcp: &mut Tcp) {
        let Some(link) = &mut self.pool else { return };
        while let Some(m) = link.poll() {
            let conn = match &m {
                FromPool::Data(c, _)
                | FromPool::Credit(c, _)
                | FromPool::Close(c)
                | FromPool::Abort(c) => *c,
            };
            let r = match self.slots.get_mut(conn.index() as usize) {
                Some(Slot::Remote(r)) if r.id == Some(conn) => r,
                _ => {
                    // The connection is gone: its output is dropped.
                    if let FromPool::Data(_, d) = m {
                        link.recycle(d);
                    }
                    continue;
                }
            };
            match m {
                FromPool::Data(_, d) => r.pending.push_back(d),
                FromPool::Credit(_, n) => r.to_pool = r.to_pool.saturating_sub(n),
                FromPool::Close(_) => r.close = true,
                FromPool::Abort(_) => {
                    self.stats.pool_aborts += 1;
                    let _ = tcp.abort(conn);
                    continue;
                }
            }
            Self::service_remote(tcp, conn, r, link, &mut self.owing);
        }
    }

    /// Checks deadlines (every [`SWEEP`]).
    fn sweep(&mut self, tcp: &mut Tcp) {
        for i in 0..self.slots.len() {
            let conn = match &mut self.slots[i] {
                Slot::Http(h, since, conn) => {
                    if self.now.saturating_since(*since) <= self.timeouts.request {
                        continue;
                    }
                    // A stalled request gets 408, an idle keep-alive connection is closed.
                    h.timeout();
                    *since = self.now;
                    *conn
                }
                Slot::Https(h, conn) => {
                    if h.conn
                        .check_timeouts(self.now, &self.timeouts, &mut self.stats.https)
                    {
                        let _ = tcp.abort(*conn);
                        continue;
                    }
                    *conn
                }
                Slot::Client(c, conn) => {
                    // Each request's deadline runs from its start.
                    if self.now <= c.request_started() + c.timeout() || c.is_finished() {
                        continue;
                    }
                    c.fail(self.now, ClientError::Timeout(c.timeout()));
                    let _ = tcp.abort(*conn);
                    continue;
                }
                _ => continue,
            };
            self.service(tcp, conn);
        }
    }

    fn service(&mut self, tcp: &mut Tcp, conn: ConnId) {
        let Some(slot) = self.slots.get_mut(conn.index() as usize) else {
            return;
        };
        match slot {
            Slot::Free => {}
            Slot::Echo { peer_closed, done } => {
                if *done {
                    return;
                }
                loop {
                    let cap = tcp.send_capacity(conn).unwrap_or(0);
                    if cap == 0 {
                        break;
                    }
                    let want = cap.min(self.scratch.len());
                    let n = match tcp.recv(conn, &mut self.scratch[..want]) {
                        Ok(n) if n > 0 => n,
                        Ok(_) => {
                            // End of stream: the peer closed and everything was read (the
                            // `PeerClosed` event may still be queued behind this one).
                            *peer_closed = true;
                            break;
                        }
                        Err(_) => break,
                    };
                    let sent = tcp.send(conn, &self.scratch[..n]).unwrap_or(0);
                    debug_assert_eq!(sent, n, "send capacity was checked");
                    self.stats.echo_bytes += sent as u64;
                    if n < want {
                        break; // a short read emptied the receive buffer
                    }
                }
                if *peer_closed && tcp.recv_available(conn).unwrap_or(0) == 0 {
                    *done = true;
                    let _ = tcp.close(conn);
                }
            }
            Slot::Http(h, since, _) => {
                let mut io = TcpStream {
                    tcp,
                    conn,
                    moved: 0,
                };
                let before = (h.in_request(), h.responses());
                let done = h.service(&mut io, self.handler.as_ref(), &mut self.stats.http);
                if io.moved > 0 && h.restarts_deadline(before) {
                    // The idle deadline runs from the latest bytes moved, a request's from its
                    // first byte: one byte every 29 s does not keep a request open.
                    *since = self.now;
                }
                if done {
                    let _ = tcp.finish(conn);
                }
            }
            Slot::Https(h, _) => {
                let mut io = TcpStream {
                    tcp,
                    conn,
                    moved: 0,
                };
                if h.conn.service(
                    &mut io,
                    self.handler.as_ref(),
                    self.now,
                    &mut self.scratch,
                    &mut self.stats.https,
                ) {
                    let _ = tcp.finish(conn);
                }
            }
            Slot::Remote(r) => {
                if let Some(link) = &mut self.pool {
                    Self::service_remote(tcp, conn, r, link, &mut self.owing);
                }
            }
            Slot::Client(c, ..) => {
                let mut io = TcpStream {
                    tcp,
                    conn,
                    moved: 0,
                };
                if c.service(&mut io, self.now, &mut self.scratch) {
                    let _ = tcp.close(conn);
                }
                while let Some(ev) = c.take_event() {
                    client_done(&mut self.stats, &mut self.client_events, ev);
                }
            }
        }
    }

    /// Moves a pooled connection's bytes: output to TCP, input to the pool within credit.
    fn service_remote(
        tcp: &mut Tcp,
        conn: ConnId,
        r: &mut Remote,
        link: &mut WorkerLink,
        owing: &mut Vec<u32>,
    ) {
        while let Some(front) = r.pending.front() {
            let n = tcp.send(conn, &front[r.off..]).unwrap_or(0);
            if n == 0 {
                break;
            }
            r.off += n;
            r.owed += n;
            if r.off == front.len() {
                let c = r.pending.pop_front().expect("checked");
                r.off = 0;
                link.recycle(c);
            }
        }
        if r.owed > 0 && !r.listed {
            r.listed = true;
            owing.push(conn.index());
        }
        if r.close {
            if r.pending.is_empty() && !r.closed {
                r.closed = true;
                let _ = tcp.finish(conn);
            }
            return;
        }
        // Input goes to the pool in full chunks: while bytes of this flow are with the pool,
        // a partial chunk waits in TCP's receive buffer (whose window closes) until a whole
        // chunk can go. The credit counts bytes, memory counts chunks: this way every chunk in
        // flight but the first is full, so at most `window / CHUNK + 1` chunks are with the pool
        // (without it, a peer's small segments would cost one 16 KiB chunk each).
        let window = link.window();
        let full = window.min(CHUNK);
        while r.to_pool < window {
            if r.to_pool > 0
                && !r.peer_closed
                && (window - r.to_pool < full || tcp.recv_available(conn).unwrap_or(0) < full)
            {
                break;
            }
            let mut c = link.chunk();
            let want = (window - r.to_pool).min(c.capacity());
            c.resize(want, 0);
            let n = tcp.recv(conn, &mut c).unwrap_or(0);
            if n == 0 {
                link.recycle(c);
                break;
            }
            c.truncate(n);
            r.to_pool += n;
            link.send(ToPool::Data(conn, c));
        }
        if r.peer_closed && !r.fin_sent && tcp.recv_available(conn).unwrap_or(0) == 0 {
            r.fin_sent = true;
            link.send(ToPool::PeerClosed(conn));
        }
    }
}

/// Counts a finished client request and queues its event.
fn client_done(stats: &mut AppStats, events: &mut VecDeque<ClientEvent>, ev: ClientEvent) {
    if ev.result.is_ok() {
        stats.client_ok += 1;
    } else {
        stats.client_failed += 1;
    }
    events.push_back(ev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{SynCookies, TcpConfig};
    use crate::wire::tcp::{flags, TcpOptions, TcpRepr};

    const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn seg(tcp: &mut Tcp, now: Instant, r: TcpRepr<'_>) {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf, PEER.octets(), US.octets()).unwrap();
        tcp.handle_segment(now, PEER, US, &buf);
    }

    /// `(flags, seq, payload)` of every segment we send now.
    fn sent(tcp: &mut Tcp, now: Instant) -> Vec<(u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut b = [0u8; 2048];
        while let Some(t) = tcp.poll_transmit(now, &mut b) {
            let r = TcpRepr::parse_bytes(&b[..t.len]).unwrap();
            out.push((r.flags, r.seq, r.payload.to_vec()));
        }
        out
    }

    fn from_peer(seq: u32, ack: u32, fl: u8, payload: &[u8]) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 40000,
            dst_port: 80,
            seq,
            ack,
            flags: fl,
            window: 65535,
            urgent: 0,
            options: TcpOptions::NONE,
            payload,
        }
    }

    /// A TCP engine with the HTTP app on port 80 and one connection accepted at `now` (the
    /// peer's ISN 1000): `(tcp, apps, peer ISN, our ISN + 1)`.
    fn http_connection(now: Instant) -> (Tcp, Apps, u32, u32) {
        let cfg = TcpConfig {
            max_flows: 8,
            window_scale: false,
            sack: false,
            timestamps: false,
            delayed_ack_ms: 0,
            syn_cookies: SynCookies::Never,
            ..TcpConfig::default()
        };
        let mut tcp = Tcp::new(cfg, [7; 32]);
        tcp.listen(80).unwrap();
        let mut apps = Apps::new(
            &AppConfig {
                http: Some(80),
                ..AppConfig::default()
            },
            8,
        );
        let isn = 1000u32;
        let syn = TcpRepr {
            options: TcpOptions {
                mss: Some(1460),
                ..TcpOptions::NONE
            },
            ..from_peer(isn, 0, flags::SYN, &[])
        };
        seg(&mut tcp, now, syn);
        let our = sent(&mut tcp, now)[0].1.wrapping_add(1);
        seg(&mut tcp, now, from_peer(isn + 1, our, flags::ACK, &[]));
        apps.run(&mut tcp, now);
        (tcp, apps, isn, our)
    }

    /// A request whose body is too large gets its 413 and a FIN, not a bare RST that throws
    /// the queued answer away (RFC 9112 §9.6: close in stages); the rest of the body the
    /// client still streams is acknowledged and dropped. (Found by a review: the 413 was
    /// counted but never sent.)
    #[test]
    fn a_413_reaches_a_client_still_sending_its_body() {
        let now = Instant::from_secs(1);
        let (mut tcp, mut apps, isn, our) = http_connection(now);
        // The head, then 8 KB of a 5 MB body, as a client streams it.
        let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n";
        let mut seq = isn + 1;
        seg(
            &mut tcp,
            now,
            from_peer(seq, our, flags::ACK | flags::PSH, head),
        );
        seq += head.len() as u32;
        for _ in 0..8 {
            seg(
                &mut tcp,
                now,
                from_peer(seq, our, flags::ACK, &[b'x'; 1000]),
            );
            seq += 1000;
        }
        apps.run(&mut tcp, now);
        let out = sent(&mut tcp, now);
        let text: Vec<u8> = out.iter().flat_map(|s| s.2.clone()).collect();
        assert_eq!(apps.stats().http.responses(413), 1);
        assert!(
            text.starts_with(b"HTTP/1.1 413"),
            "{:?}",
            String::from_utf8_lossy(&text)
        );
        assert!(out.iter().all(|s| s.0 & flags::RST == 0), "no RST");
        assert!(out.iter().any(|s| s.0 & flags::FIN != 0), "a FIN after it");
        // More of the body: acknowledged and dropped, still no RST.
        seg(
            &mut tcp,
            now,
            from_peer(seq, our, flags::ACK, &[b'x'; 1000]),
        );
        let out = sent(&mut tcp, now);
        assert!(!out.is_empty() && out.iter().all(|s| s.0 & flags::RST == 0));
    }

    /// A request's deadline (`Timeouts::request`, 30 s) runs from its first byte: a client
    /// that sends its request line a byte every 20 s gets its 408 30 s after the first, not
    /// never (each byte restarted the deadline: a review held a connection for 600 s).
    #[test]
    fn a_request_trickled_a_byte_at_a_time_gets_408_from_its_start() {
        let (mut tcp, mut apps, isn, our) = http_connection(Instant::from_secs(1));
        let line = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n";
        let mut seq = isn + 1;
        let mut answered_at = None;
        for s in 1..=600u64 {
            let now = Instant::from_secs(1 + s);
            tcp.handle_timeout(now);
            if s % 20 == 0 && answered_at.is_none() {
                let k = (s / 20) as usize - 1;
                seg(
                    &mut tcp,
                    now,
                    from_peer(seq, our, flags::ACK, &line[k..k + 1]),
                );
                seq += 1;
            }
            apps.run(&mut tcp, now);
            let text: Vec<u8> = sent(&mut tcp, now).into_iter().flat_map(|x| x.2).collect();
            // (Resent later: the peer here never acknowledges.)
            if answered_at.is_none() && text.starts_with(b"HTTP/1.1 408") {
                answered_at = Some(s);
            }
        }
        assert_eq!(apps.stats().http.responses(408), 1);
        // First byte at 20 s; the sweep runs every 100 ms, the loop every second.
        assert!(
            answered_at.is_some_and(|s| (50..=51).contains(&s)),
            "408 sent at {answered_at:?} s"
        );
    }
}
