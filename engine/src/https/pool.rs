//! The TLS session pool: HTTPS connections run on pool threads, the packet workers only move
//! ciphertext.
//!
//! Each flow is assigned to one pool thread by a hash of its worker and slot. Workers and pool
//! threads exchange *batches* of messages over bounded crossbeam channels (one batch per side
//! per turn, not one message per packet). Chunks and batch vectors are recycled: a batch carries
//! the receiver's spare chunks back, so once warm no buffer is allocated per message.
//!
//! Backpressure is end to end and bounded by credit: a worker reads a flow's TCP receive buffer
//! only while less than [`PoolConfig::window`] bytes of that flow are with the pool thread, and
//! a pool thread encrypts only while less than `window` bytes of the flow's output are with the
//! worker. When a pool thread is slow, the flow's TCP receive window closes; nothing queues
//! without bound. Credit counts bytes but a chunk costs [`CHUNK`] bytes however full it is, so
//! each side sends a partial chunk only when none of the flow's bytes are with the other side
//! (a partial input chunk waits in TCP's receive buffer, a partial output chunk on the pool
//! thread): every other chunk in flight is full. Memory per flow in flight is therefore at most
//! `window / CHUNK + 1` chunks each way, plus the output chunk being filled.

use super::{HttpsConn, HttpsStats, Timeouts, Transport};
use crate::http::{Handler, Limits};
use crate::tcp::ConnId;
use crate::time::Instant;
use crate::tls::TlsServer;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes per chunk (one TLS record and then some).
pub const CHUNK: usize = 16 * 1024;

/// Settings of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Pool threads (at least 1; "inline" mode does not use a pool).
    pub threads: usize,
    /// Cores to pin the pool threads to, in order (empty: not pinned).
    pub cores: Vec<usize>,
    /// Most bytes of one flow in flight each way between a worker and its pool thread.
    pub window: usize,
    /// Capacity of each channel, in batches.
    pub channel: usize,
    /// Most concurrent sessions per pool thread; beyond it new connections are refused (RST).
    pub max_sessions: usize,
    /// Deliberate delay per batch a pool thread handles (a test hook to show backpressure; 0 in
    /// production).
    pub slow_down: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: 1,
            cores: Vec::new(),
            window: 64 * 1024,
            channel: 256,
            max_sessions: 4096,
            slow_down: Duration::ZERO,
        }
    }
}

/// Worker → pool.
#[derive(Debug)]
pub enum ToPool {
    /// A connection was accepted on the HTTPS port.
    Open(ConnId),
    /// Ciphertext received on it.
    Data(ConnId, Vec<u8>),
    /// This many bytes of output were handed to TCP (the pool may send that much more).
    Credit(ConnId, usize),
    /// The peer sent FIN.
    PeerClosed(ConnId),
    /// The connection is gone (closed, reset or timed out): forget it.
    Closed(ConnId),
}

/// Pool → worker.
#[derive(Debug)]
pub enum FromPool {
    /// Ciphertext to send.
    Data(ConnId, Vec<u8>),
    /// This many input bytes were consumed (the worker may read that much more).
    Credit(ConnId, usize),
    /// Everything is sent: close the connection (FIN) after the data before it.
    Close(ConnId),
    /// Refused or failed beyond repair: reset the connection.
    Abort(ConnId),
}

/// A batch of messages, with spare chunks travelling back to the side that allocates them.
#[derive(Debug)]
pub struct Batch<M> {
    /// The sending worker (for batches to the pool).
    pub worker: usize,
    /// The messages, in order.
    pub msgs: Vec<M>,
    /// Emptied chunks returned to the receiver's free list.
    pub spare: Vec<Vec<u8>>,
}

impl<M> Batch<M> {
    fn new(worker: usize) -> Self {
        Batch {
            worker,
            msgs: Vec::with_capacity(64),
            spare: Vec::new(),
        }
    }
}

/// Most spare chunks a side keeps (more are freed): bounds idle memory to 256 KiB per side.
const SPARE_CHUNKS: usize = 16;

/// Most emptied batches a worker keeps for reuse.
const SPARE_BATCHES: usize = 16;

/// Recycled chunks.
#[derive(Debug, Default)]
struct Chunks(Vec<Vec<u8>>);

impl Chunks {
    fn get(&mut self) -> Vec<u8> {
        let mut c = self.0.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK));
        c.clear();
        c
    }
    /// Keeps `c` if the free list has room; otherwise hands it back to the caller.
    fn put(&mut self, c: Vec<u8>) -> Option<Vec<u8>> {
        if c.capacity() >= CHUNK && self.0.len() < SPARE_CHUNKS {
            self.0.push(c);
            None
        } else {
            Some(c)
        }
    }
}

/// A worker's end of the pool.
pub struct WorkerLink {
    worker: usize,
    to: Vec<Sender<Batch<ToPool>>>,
    from: Receiver<Batch<FromPool>>,
    /// The batch being assembled for each pool thread.
    out: Vec<Batch<ToPool>>,
    /// Batches that did not fit in a full channel, per pool thread, sent first next time.
    backlog: Vec<VecDeque<Batch<ToPool>>>,
    /// A received batch being handed out.
    current: Option<Batch<FromPool>>,
    spare_batches: Vec<Batch<ToPool>>,
    chunks: Chunks,
    /// Chunks beyond our free list, travelling back to the pool with the next batch.
    give_back: Vec<Vec<u8>>,
    window: usize,
}

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink")
            .field("worker", &self.worker)
            .field("threads", &self.to.len())
            .finish()
    }
}

impl WorkerLink {
    /// Bytes of one flow allowed in flight each way.
    pub fn window(&self) -> usize {
        self.window
    }

    fn thread_of(&self, conn: ConnId) -> usize {
        // Slots are dense small integers: a multiplicative hash spreads neighbours.
        let h = (conn.index() as u64 ^ ((self.worker as u64) << 32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) as usize) % self.to.len()
    }

    /// Queues `msg` for the flow's pool thread (sent at the next [`WorkerLink::flush`]).
    pub fn send(&mut self, msg: ToPool) {
        let conn = match &msg {
            ToPool::Open(c)
            | ToPool::Data(c, _)
            | ToPool::Credit(c, _)
            | ToPool::PeerClosed(c)
            | ToPool::Closed(c) => *c,
        };
        let t = self.thread_of(conn);
        self.out[t].msgs.push(msg);
    }

    /// An empty chunk (capacity [`CHUNK`]).
    pub fn chunk(&mut self) -> Vec<u8> {
        self.chunks.get()
    }

    /// Returns a chunk that is no longer needed (kept, or sent back to the pool, which
    /// allocated most of them).
    pub fn recycle(&mut self, c: Vec<u8>) {
        if let Some(c) = self.chunks.put(c) {
            if self.give_back.len() < SPARE_CHUNKS {
                self.give_back.push(c);
            }
        }
    }

    /// True when no batch is waiting for room in a channel. While one waits, callers should
    /// hold back messages that can be coalesced (credits), so nothing grows per turn.
    pub fn ready(&self) -> bool {
        self.backlog.iter().all(VecDeque::is_empty)
    }

    /// Sends the assembled batches (never blocks). A full channel keeps at most one batch per
    /// pool thread waiting; meanwhile new messages join the batch being assembled.
    pub fn flush(&mut self) {
        for t in 0..self.to.len() {
            if let Some(b) = self.backlog[t].pop_front() {
                match self.to[t].try_send(b) {
                    Ok(()) => {}
                    Err(TrySendError::Full(b)) => {
                        self.backlog[t].push_front(b);
                        continue;
                    }
                    Err(TrySendError::Disconnected(_)) => continue,
                }
            }
            if self.out[t].msgs.is_empty() {
                continue;
            }
            let fresh = self
                .spare_batches
                .pop()
                .unwrap_or_else(|| Batch::new(self.worker));
            let mut b = std::mem::replace(&mut self.out[t], fresh);
            // Hand back the chunks the pool sent us beyond what we keep.
            b.spare.append(&mut self.give_back);
            match self.to[t].try_send(b) {
                Ok(()) => {}
                Err(TrySendError::Full(b)) => self.backlog[t].push_back(b),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// The next message from the pool, if any.
    pub fn poll(&mut self) -> Option<FromPool> {
        loop {
            if let Some(b) = &mut self.current {
                if let Some(m) = b.msgs.pop() {
                    return Some(m);
                }
                let b = self.current.take().expect("checked");
                // Reuse the vectors for batches to the pool (a few: the pool may send more
                // batches than we do).
                if self.spare_batches.len() < SPARE_BATCHES {
                    self.spare_batches.push(Batch {
                        worker: self.worker,
                        msgs: Vec::new(),
                        spare: b.spare,
                    });
                }
            }
            match self.from.try_recv() {
                Ok(mut b) => {
                    for c in b.spare.drain(..) {
                        // Ours coming back, first, so that the messages below reuse them;
                        // beyond the free list they are freed.
                        let _ = self.chunks.put(c);
                    }
                    // Hand messages out in order: pop from the back of a reversed vector.
                    b.msgs.reverse();
                    self.current = Some(b);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
            }
        }
    }
}

/// The running pool.
pub struct Pool {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<HttpsStats>>,
    /// Per pool thread: its counters, published by it every 100 ms (for the metrics).
    live: Vec<Arc<Mutex<HttpsStats>>>,
    /// The receiving ends of the channels to the pool threads, only to read their length.
    inboxes: Vec<Receiver<Batch<ToPool>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.handles.len())
            .finish()
    }
}

/// What every pool thread serves.
#[derive(Clone)]
pub struct Service {
    /// The TLS configuration.
    pub server: TlsServer,
    /// The HTTP handler.
    pub handler: Arc<dyn Handler>,
    /// Request limits.
    pub limits: Limits,
    /// Deadlines.
    pub timeouts: Timeouts,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Pool {
    /// Starts `cfg.threads` pool threads serving `service` for `workers` packet workers;
    /// returns the pool and one link per worker.
    pub fn start(
        cfg: &PoolConfig,
        service: Service,
        workers: usize,
    ) -> std::io::Result<(Pool, Vec<WorkerLink>)> {
        let threads = cfg.threads.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(HttpsStats::default()));
        let to_workers: Vec<_> = (0..workers)
            .map(|_| crossbeam_channel::bounded::<Batch<FromPool>>(cfg.channel))
            .collect();
        let to_threads: Vec<_> = (0..threads)
            .map(|_| crossbeam_channel::bounded::<Batch<ToPool>>(cfg.channel))
            .collect();
        let mut handles = Vec::new();
        let live: Vec<Arc<Mutex<HttpsStats>>> = (0..threads).map(|_| Arc::default()).collect();
        for (t, (_, rx)) in to_threads.iter().enumerate() {
            let rx = rx.clone();
            let senders: Vec<_> = to_workers.iter().map(|(tx, _)| tx.clone()).collect();
            let mut thread = PoolThread::new(cfg, service.clone(), senders);
            thread.live = Arc::clone(&live[t]);
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            let core = cfg.cores.get(t).copied();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("hs-tls{t}"))
                    .spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(core_affinity::CoreId { id: c });
                        }
                        thread.run(&rx, &stop);
                        *thread.live.lock().unwrap_or_else(|e| e.into_inner()) = thread.stats;
                        stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .add(&thread.stats);
                    })?,
            );
        }
        let links = to_workers
            .into_iter()
            .enumerate()
            .map(|(w, (_, rx))| WorkerLink {
                worker: w,
                to: to_threads.iter().map(|(tx, _)| tx.clone()).collect(),
                from: rx,
                out: (0..threads).map(|_| Batch::new(w)).collect(),
                backlog: (0..threads).map(|_| VecDeque::new()).collect(),
                current: None,
                spare_batches: Vec::new(),
                chunks: Chunks::default(),
                give_back: Vec::new(),
                window: cfg.window,
            })
            .collect();
        Ok((
            Pool {
                handles,
                stop,
                stats,
                live,
                inboxes: to_threads.iter().map(|(_, rx)| rx.clone()).collect(),
            },
            links,
        ))
    }

    /// Each pool thread's counters as it last published them (every 100 ms, and at its end).
    pub fn thread_stats(&self) -> Vec<HttpsStats> {
        self.live
            .iter()
            .map(|l| *l.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// Batches waiting in each pool thread's inbox (a gauge for the metrics).
    pub fn queue_depths(&self) -> Vec<usize> {
        self.inboxes.iter().map(Receiver::len).collect()
    }

    /// Stops the pool threads (after the workers stopped) and returns their counters.
    pub fn stop(self) -> HttpsStats {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A flow on a pool thread.
struct Flow {
    https: HttpsConn,
    q: FlowQueues,
    /// Close or abort was sent: wait for `Closed`.
    ended: bool,
}

/// A flow's byte queues.
struct FlowQueues {
    conn: ConnId,
    worker: usize,
    /// Ciphertext from the worker not yet consumed, and the offset into the front chunk.
    inq: VecDeque<Vec<u8>>,
    in_off: usize,
    /// Input consumed since the last credit sent.
    consumed: usize,
    /// Output with the worker (not yet credited back).
    out_in_flight: usize,
    /// The output chunk being filled.
    out: Vec<u8>,
}

/// The flow's queues as the session's transport.
struct Queues<'a> {
    q: &'a mut FlowQueues,
    window: usize,
    chunks: &'a mut Chunks,
    spare_out: &'a mut Vec<Vec<u8>>,
    outq: &'a mut Vec<FromPool>,
}

impl Transport for Queues<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.q.inq.front() else {
                break;
            };
            let take = (front.len() - self.q.in_off).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[self.q.in_off..self.q.in_off + take]);
            n += take;
            self.q.in_off += take;
            if self.q.in_off == front.len() {
                let c = self.q.inq.pop_front().expect("checked");
                self.q.in_off = 0;
                // Chunks come from the worker: they go back to it.
                self.spare_out.push(c);
            }
        }
        self.q.consumed += n;
        n
    }
    fn send_capacity(&mut self) -> usize {
        self.window
            .saturating_sub(self.q.out_in_flight + self.q.out.len())
    }
    fn send(&mut self, mut data: &[u8]) -> usize {
        let cap = self.send_capacity();
        data = &data[..data.len().min(cap)];
        let n = data.len();
        while !data.is_empty() {
            if self.q.out.capacity() == 0 {
                self.q.out = self.chunks.get();
            }
            let take = (CHUNK - self.q.out.len().min(CHUNK)).max(1).min(data.len());
            self.q.out.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.q.out.len() >= CHUNK {
                self.flush_out();
            }
        }
        n
    }
}

impl Queues<'_> {
    fn flush_out(&mut self) {
        if !self.q.out.is_empty() {
            let c = std::mem::take(&mut self.q.out);
            self.q.out_in_flight += c.len();
            self.outq.push(FromPool::Data(self.q.conn, c));
        }
    }
}

struct PoolThread {
    service: Service,
    window: usize,
    max_sessions: usize,
    slow_down: Duration,
    senders: Vec<Sender<Batch<FromPool>>>,
    flows: HashMap<(usize, u32), Box<Flow>>,
    #[allow(clippy::vec_box)]
    spare_flows: Vec<Box<Flow>>,
    /// Outgoing messages per worker, and chunks to give back to it.
    out: Vec<Vec<FromPool>>,
    spare_out: Vec<Vec<Vec<u8>>>,
    chunks: Chunks,
    scratch: Box<[u8]>,
    stats: HttpsStats,
    /// Where `stats` is published (every sweep, 100 ms), for the metrics.
    live: Arc<Mutex<HttpsStats>>,
    epoch: std::time::Instant,
}

impl PoolThread {
    fn new(cfg: &PoolConfig, service: Service, senders: Vec<Sender<Batch<FromPool>>>) -> Self {
        let workers = senders.len();
        PoolThread {
            service,
            window: cfg.window,
            max_sessions: cfg.max_sessions,
            slow_down: cfg.slow_down,
            senders,
            flows: HashMap::with_capacity(cfg.max_sessions.min(1 << 16)),
            spare_flows: Vec::new(),
            out: (0..workers).map(|_| Vec::with_capacity(64)).collect(),
            spare_out: (0..workers).map(|_| Vec::new()).collect(),
            chunks: Chunks::default(),
            scratch: vec![0; CHUNK].into_boxed_slice(),
            stats: HttpsStats::default(),
            live: Arc::default(),
            epoch: std::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn run(&mut self, rx: &Receiver<Batch<ToPool>>, stop: &AtomicBool) {
        let mut last_sweep = self.now();
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(b) => self.handle_batch(b),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(b) = rx.try_recv() {
                self.handle_batch(b);
            }
            self.service.server.refresh();
            let now = self.now();
            if now.saturating_since(last_sweep) >= Duration::from_millis(100) {
                last_sweep = now;
                self.sweep(now);
                *self.live.lock().unwrap_or_else(|e| e.into_inner()) = self.stats;
            }
            self.flush();
        }
    }

    fn handle_batch(&mut self, mut b: Batch<ToPool>) {
        if !self.slow_down.is_zero() {
            std::thread::sleep(self.slow_down);
        }
        for c in b.spare.drain(..) {
            // Ours coming back; beyond the free list they are freed.
            let _ = self.chunks.put(c);
        }
        let now = self.now();
        let w = b.worker.min(self.senders.len().saturating_sub(1));
        for m in b.msgs.drain(..) {
            self.handle(w, m, now);
        }
    }

    fn handle(&mut self, w: usize, m: ToPool, now: Instant) {
        match m {
            ToPool::Open(conn) => {
                let key = (w, conn.index());
                if self.flows.len() >= self.max_sessions {
                    self.stats.refused += 1;
                    self.out[w].push(FromPool::Abort(conn));
                    return;
                }
                let tls = match self.service.server.accept() {
                    Ok(t) => t,
                    Err(_) => {
                        self.stats.tls_errors += 1;
                        self.out[w].push(FromPool::Abort(conn));
                        return;
                    }
                };
                let mut f = self.spare_flows.pop().unwrap_or_else(|| {
                    Box::new(Flow {
                        https: HttpsConn::default(),
                        q: FlowQueues {
                            conn,
                            worker: w,
                            inq: VecDeque::new(),
                            in_off: 0,
                            consumed: 0,
                            out_in_flight: 0,
                            out: Vec::new(),
                        },
                        ended: false,
                    })
                });
                f.q.conn = conn;
                f.q.worker = w;
                f.https.start(tls, self.service.limits, now);
                f.q.in_off = 0;
                f.q.consumed = 0;
                f.q.out_in_flight = 0;
                f.ended = false;
                self.stats.sessions += 1;
                if let Some(old) = self.flows.insert(key, f) {
                    // The worker reused the slot without telling us: the old flow is gone.
                    self.retire(old);
                }
            }
            ToPool::Data(conn, chunk) => match self.flow(w, conn) {
                Some(f) => {
                    f.q.inq.push_back(chunk);
                    self.service(w, conn, now);
                }
                None => self.spare_out[w].push(chunk),
            },
            ToPool::Credit(conn, n) => {
                if let Some(f) = self.flow(w, conn) {
                    f.q.out_in_flight = f.q.out_in_flight.saturating_sub(n);
                    self.service(w, conn, now);
                }
            }
            ToPool::PeerClosed(conn) => {
                if let Some(f) = self.flow(w, conn) {
                    f.https.transport_closed();
                    self.service(w, conn, now);
                }
            }
            ToPool::Closed(conn) => {
                let key = (w, conn.index());
                if self.flows.get(&key).is_some_and(|f| f.q.conn == conn) {
                    let f = self.flows.remove(&key).expect("checked");
                    self.retire(f);
                }
            }
        }
    }

    fn flow(&mut self, w: usize, conn: ConnId) -> Option<&mut Flow> {
        self.flows
            .get_mut(&(w, conn.index()))
            .filter(|f| f.q.conn == conn)
            .map(|f| &mut **f)
    }

    fn retire(&mut self, mut f: Box<Flow>) {
        f.https.finish();
        let w = f.q.worker;
        while let Some(c) = f.q.inq.pop_front() {
            self.spare_out[w].push(c);
        }
        let out = std::mem::take(&mut f.q.out);
        let _ = self.chunks.put(out);
        self.spare_flows.push(f);
    }

    fn service(&mut self, w: usize, conn: ConnId, now: Instant) {
        let Some(f) = self.flows.get_mut(&(w, conn.index())) else {
            return;
        };
        if f.ended {
            return;
        }
        let mut io = Queues {
            q: &mut f.q,
            window: self.window,
            chunks: &mut self.chunks,
            spare_out: &mut self.spare_out[w],
            outq: &mut self.out[w],
        };
        let done = f.https.service(
            &mut io,
            self.service.handler.as_ref(),
            now,
            &mut self.scratch,
            &mut self.stats,
        );
        // Output goes to the worker in full chunks too: a partial one waits here (counted
        // against the window) while output of this flow is with the worker, and goes when that
        // has been credited back, or now if nothing is, or when the session ends.
        if done || io.q.out_in_flight == 0 {
            io.flush_out();
        }
        if f.q.consumed > 0 {
            self.out[w].push(FromPool::Credit(conn, f.q.consumed));
            f.q.consumed = 0;
        }
        if done {
            f.ended = true;
            self.out[w].push(FromPool::Close(conn));
        }
    }

    fn sweep(&mut self, now: Instant) {
        let t = self.service.timeouts;
        let keys: Vec<(usize, u32)> = self.flows.keys().copied().collect();
        for key in keys {
            let Some(f) = self.flows.get_mut(&key) else {
                continue;
            };
            if f.ended {
                continue;
            }
            let conn = f.q.conn;
            if f.https.check_timeouts(now, &t, &mut self.stats) {
                f.ended = true;
                self.out[key.0].push(FromPool::Abort(conn));
            } else {
                self.service(key.0, conn, now);
            }
        }
    }

    fn flush(&mut self) {
        for w in 0..self.senders.len() {
            if self.out[w].is_empty() && self.spare_out[w].is_empty() {
                continue;
            }
            let b = Batch {
                worker: w,
                msgs: std::mem::replace(&mut self.out[w], Vec::with_capacity(64)),
                spare: std::mem::take(&mut self.spare_out[w]),
            };
            // Blocking is safe: workers never block on us and drain their inbox every turn.
            // A gone worker (shutdown) just drops the batch.
            let _ = self.senders[w].send(b);
        }
    }
}
