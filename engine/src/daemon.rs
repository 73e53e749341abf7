//! The daemon: one pinned worker per queue around a [`Stack`], the XDP program, signals, stats,
//! the metrics endpoint ([`crate::metrics`]) and the capture writer ([`crate::capture`]).
//!
//! The worker loop ([`Worker::run`]) is generic over the [`Device`], so it runs the same against
//! AF_XDP ports and in-memory devices (tests). Workers share nothing on the fast path: neighbour
//! events travel between them over bounded crossbeam channels, counters are published into
//! per-worker blocks of relaxed atomics.

use crate::arp::NeighborEvent;
use crate::device::Device;
use crate::metrics::{QueueSlot, QueueValues, ShellCounters};
use crate::stack::{run_batch, Stack};
use crate::stats::{DropReason, SharedStats, StackStats};
use crate::time::Instant;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest a worker sleeps when idle, so that it notices a stop request promptly.
const MAX_IDLE: Duration = Duration::from_millis(50);
/// Capacity of each worker's neighbour-event inbox.
pub const NEIGHBOR_INBOX: usize = 1024;

/// A monotonic clock for the shells: microseconds since the daemon started.
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock(std::time::Instant::now())
    }
    /// The current instant (a vDSO read, not a syscall).
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
}

/// One worker: a stack, its inbox of neighbour events from the others, their senders.
pub struct Worker {
    /// Queue served.
    pub queue: u32,
    /// The stack.
    pub stack: Stack,
    /// Neighbour events from the other workers.
    pub inbox: Receiver<NeighborEvent>,
    /// The other workers' inboxes.
    pub peers: Vec<Sender<NeighborEvent>>,
    /// Where the counters are published.
    pub shared: Arc<SharedStats>,
    /// Where every counter is published for the metrics endpoint.
    pub metrics: Arc<QueueSlot>,
    /// How often the counters are published (never per packet).
    pub publish_every: Duration,
    /// How long to keep polling after the last work before sleeping (see
    /// [`crate::config::Config::idle_spin_us`]).
    pub idle_spin: Duration,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
    /// After `stop`: how long to keep serving while peers close the connections shut down.
    pub stop_timeout: Duration,
    /// Set with `stop` when the interface is gone: no graceful drain (there is no link to
    /// send the FINs on).
    pub abandon: Arc<AtomicBool>,
    /// Where trace events go (to the writer thread), when a trace is installed on the stack.
    #[cfg(feature = "trace")]
    pub trace: Option<Sender<(u32, crate::trace::TraceEvent)>>,
}

/// Makes `n` workers' channels: for each worker, its inbox and the senders to all others.
pub fn neighbor_mesh(n: usize) -> Vec<(Receiver<NeighborEvent>, Vec<Sender<NeighborEvent>>)> {
    let chans: Vec<_> = (0..n)
        .map(|_| crossbeam_channel::bounded(NEIGHBOR_INBOX))
        .collect();
    (0..n)
        .map(|i| {
            let others = chans
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (tx, _))| tx.clone())
                .collect();
            (chans[i].1.clone(), others)
        })
        .collect()
}

impl Worker {
    /// One turn of the loop: neighbour events in, one batch through the stack, events out.
    /// Returns true when the batch moved frames.
    pub fn turn<D: Device>(&mut self, dev: &mut D, now: Instant) -> bool {
        while let Ok(ev) = self.inbox.try_recv() {
            self.stack.handle_neighbor_event(now, ev);
        }
        let (rx, tx) = run_batch(&mut self.stack, dev, now);
        #[cfg(feature = "trace")]
        if let Some(sink) = &self.trace {
            while let Some(e) = self.stack.poll_trace_event() {
                // The writer is far behind or gone: the event is lost, never waited for.
                let _ = sink.try_send((self.queue, e));
            }
        }
        while let Some(ev) = self.stack.poll_neighbor_event() {
            for p in &self.peers {
                // A full inbox means that worker is far behind; it will learn the entry itself.
                if let Err(TrySendError::Disconnected(_)) = p.try_send(ev) {
                    continue;
                }
            }
        }
        rx + tx > 0
    }

    /// Publishes the counters: the summary block and the metrics slot (`shell` adds the
    /// device's own counters).
    pub fn publish<D>(&self, dev: &D, shell: &mut impl FnMut(&D, &mut ShellCounters)) {
        self.shared.publish(&self.stack.snapshot());
        let mut c = ShellCounters::default();
        shell(dev, &mut c);
        let mut v = QueueValues::default();
        crate::metrics::collect(&self.stack, &c, &mut v);
        self.metrics.publish(&v);
    }

    /// Runs until `stop` is set. `idle(dev, timeout)` waits for frames (ppoll(2)) or returns at
    /// once (busy polling); `shell(dev, counters)` reads the device's counters when publishing.
    pub fn run<D: Device>(
        &mut self,
        dev: &mut D,
        clock: Clock,
        mut idle: impl FnMut(&mut D, Duration),
        mut shell: impl FnMut(&D, &mut ShellCounters),
    ) {
        let mut last_publish = Instant::ZERO;
        // The worker's last work: it spins for `idle_spin` after it before sleeping (a wake-up
        // that finds nothing, a timer's, sleeps again at once).
        let mut last_work: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let now = clock.now();
            let busy = self.turn(dev, now);
            if busy {
                last_work = Some(now);
            }
            if now.saturating_since(last_publish) >= self.publish_every {
                self.publish(dev, &mut shell);
                last_publish = now;
            }
            if !busy && self.inbox.is_empty() && !self.stack.apps().awaiting_pool() {
                if last_work.is_some_and(|t| now.saturating_since(t) < self.idle_spin) {
                    std::hint::spin_loop();
                    continue;
                }
                let wait = match self.stack.poll_timeout() {
                    Some(t) => t.saturating_since(now).min(MAX_IDLE),
                    None => MAX_IDLE,
                };
                if !wait.is_zero() {
                    idle(dev, wait);
                }
            }
        }
        // A graceful stop: no more listening, FIN on every open connection, and the worker keeps
        // serving while the peers close their side, for `stop_timeout` at most.
        let shut = self.stack.tcp_mut().shutdown_all();
        let deadline = clock.now() + self.stop_timeout;
        while self.stack.tcp().open_flows() > 0
            && clock.now() < deadline
            && !self.abandon.load(Ordering::Relaxed)
        {
            let now = clock.now();
            if !self.turn(dev, now) {
                idle(dev, Duration::from_millis(1));
            }
        }
        let left = self.stack.tcp().open_flows();
        tracing::info!(
            queue = self.queue,
            "graceful stop: {shut} connection(s) shut down, {left} still open after {:?}",
            self.stop_timeout
        );
        self.publish(dev, &mut shell);
    }
}

/// Exit status of `handshake run` when its interface was deleted and created again (a new
/// ifindex): `EX_TEMPFAIL`, so that the supervisor starts the daemon again on the new one.
pub const EXIT_INTERFACE_REPLACED: i32 = 75;

/// The interface the daemon served was replaced by a new one of the same name: the XDP program
/// and the AF_XDP sockets went with the old one. The daemon stops; its supervisor (systemd
/// `Restart=on-failure`) starts it again, which attaches to the new interface.
#[derive(Debug, thiserror::Error)]
#[error(
    "interface {iface} was deleted and created again (ifindex {old} -> {new}): the XDP program \
     and the AF_XDP sockets went with the old one; exiting with status 75 so that the \
     supervisor (systemd Restart=on-failure) starts handshake again on the new interface"
)]
pub struct InterfaceReplaced {
    /// The interface's name.
    pub iface: String,
    /// The ifindex served.
    pub old: u32,
    /// The new interface's ifindex.
    pub new: u32,
}

/// What [`LinkWatch::check`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The operational state changed (`/sys/class/net/IF/operstate`: up, down, lowerlayerdown…).
    State {
        /// Before.
        from: String,
        /// Now.
        to: String,
    },
    /// The interface no longer exists.
    Gone,
    /// An interface of the same name exists again, with another ifindex.
    Replaced(u32),
}

/// Watches the served interface by name, off the fast path (the daemon's main thread reads two
/// sysfs files every `iface_check_ms`): link state changes are logged (the XDP program and the
/// AF_XDP sockets survive a link down/up), a new ifindex means the interface was replaced.
#[derive(Debug)]
pub struct LinkWatch {
    dir: std::path::PathBuf,
    ifindex: u32,
    state: String,
    gone: bool,
}

impl LinkWatch {
    /// Starts watching `iface` (in the daemon's network namespace, through its /sys).
    pub fn new(iface: &str) -> std::io::Result<Self> {
        Self::at(std::path::Path::new("/sys/class/net").join(iface))
    }

    /// Watches the interface described by the directory `dir` (its `ifindex` and `operstate`
    /// files; `/sys/class/net/IF` for a real one).
    pub fn at(dir: std::path::PathBuf) -> std::io::Result<Self> {
        let ifindex = Self::read(&dir, "ifindex")?
            .parse()
            .map_err(|_| std::io::Error::other("ifindex is not a number"))?;
        let state = Self::read(&dir, "operstate")?;
        Ok(LinkWatch {
            dir,
            ifindex,
            state,
            gone: false,
        })
    }

    fn read(dir: &std::path::Path, file: &str) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(dir.join(file))?.trim().to_owned())
    }

    /// The ifindex served.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The operational state last seen.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Reads the interface's ifindex and state; returns what changed since the last call.
    pub fn check(&mut self) -> Option<LinkEvent> {
        let index = Self::read(&self.dir, "ifindex")
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        match index {
            None if self.gone => None,
            None => {
                self.gone = true;
                Some(LinkEvent::Gone)
            }
            Some(i) if i != self.ifindex => Some(LinkEvent::Replaced(i)),
            Some(_) => {
                self.gone = false;
                let now = Self::read(&self.dir, "operstate").ok()?;
                if now == self.state {
                    return None;
                }
                let from = std::mem::replace(&mut self.state, now.clone());
                Some(LinkEvent::State { from, to: now })
            }
        }
    }
}

/// One line summarizing `stats` per queue, for the periodic log.
pub fn summary(per_queue: &[StackStats]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for (q, st) in per_queue.iter().enumerate() {
        let _ = write!(
            s,
            "q{q}: rx {} tx {} drops {} flows {} time_wait {} cookies {}/{} challenge_acks {} retransmits {}",
            st.rx_packets,
            st.tx_packets,
            st.total_drops(),
            st.tcp_flows,
            st.tcp_time_wait,
            st.syn_cookies_sent,
            st.syn_cookies_validated,
            st.challenge_acks,
            st.tcp_retransmits
        );
        if st.tls_sessions + st.tls_refused + st.http_responses > 0 {
            let _ = write!(
                s,
                " tls {}/{}/{} tls_errors {} tls_timeouts {} tls_refused {} http {}",
                st.tls_sessions,
                st.tls_handshakes,
                st.tls_resumed,
                st.tls_errors,
                st.tls_timeouts,
                st.tls_refused,
                st.http_responses
            );
        }
        let mut first = true;
        for r in DropReason::ALL {
            let n = st.drops_of(*r);
            if n > 0 {
                let _ = write!(s, "{}{}={}", if first { " (" } else { ", " }, r.label(), n);
                first = false;
            }
        }
        if !first {
            s.push(')');
        }
        s.push_str("; ");
    }
    s.truncate(s.trim_end_matches("; ").len());
    s
}

#[cfg(feature = "xdp")]
pub use xdp::run;

#[cfg(feature = "xdp")]
pub(crate) mod xdp {
    use super::*;
    use crate::config::{Config, XdpMode};
    use crate::loader::{AttachMode, XdpLoader};
    use crate::stack::StackConfig;
    use crate::wire::Mac;
    use crate::xsk::{Port, XskBackend};
    use anyhow::{bail, Context};
    use std::path::PathBuf;

    pub(crate) fn iface_mac(iface: &str) -> anyhow::Result<Mac> {
        let path = format!("/sys/class/net/{iface}/address");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow::anyhow!("interface {iface} not found (no {path}): check the name with `ip link`, and run inside its network namespace")
        })?;
        text.trim()
            .parse()
            .with_context(|| format!("reading the MAC address of {iface}"))
    }

    pub(crate) fn iface_queues(iface: &str) -> usize {
        std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .unwrap_or(1)
    }

    /// 32 bytes from the kernel's CSPRNG: keys ISNs, SYN cookies and hash tables.
    pub(crate) fn random_secret() -> anyhow::Result<[u8; 32]> {
        use std::io::Read;
        let mut s = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut s))
            .context("reading /dev/urandom for the engine's secret")?;
        Ok(s)
    }

    /// True when the error (or one of its causes) is EBUSY.
    fn is_ebusy(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(libc::EBUSY) {
                    return true;
                }
            }
            if err.to_string().contains("os error 16") {
                return true;
            }
            cur = err.source();
        }
        false
    }

    /// Opens the AF_XDP socket of `queue`. The kernel releases a closed socket's queue
    /// asynchronously, so right after a previous daemon exited (even by SIGKILL) the bind can
    /// fail with EBUSY for some milliseconds: retry for up to 2 s before giving up.
    pub(crate) fn open_port(
        iface: &str,
        queue: u32,
        cfg: &crate::xsk::XskConfig,
    ) -> anyhow::Result<Port<XskBackend>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match Port::<XskBackend>::open(iface, queue, cfg) {
                Ok(p) => return Ok(p),
                Err(e) if is_ebusy(&e) => {
                    if std::time::Instant::now() > deadline {
                        return Err(e).with_context(|| format!(
                            "AF_XDP socket on {iface} queue {queue} still busy after 2 s: another handshake daemon (or AF_XDP program) probably holds this queue. Stop it first (`pgrep -a handshake` lists the daemons), or give this daemon another --iface"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("opening the AF_XDP socket on {iface} queue {queue}")
                    })
                }
            }
        }
    }

    /// Starts the thread that writes trace events as JSON lines to `path`, numbering the
    /// connections of all queues 1, 2, … and keeping the first `limit`. It ends when every
    /// sender is dropped; it returns how many connections and events it wrote.
    #[cfg(feature = "trace")]
    #[allow(clippy::type_complexity)]
    fn trace_writer(
        path: &std::path::Path,
        limit: usize,
    ) -> anyhow::Result<(
        Sender<(u32, crate::trace::TraceEvent)>,
        std::thread::JoinHandle<anyhow::Result<(usize, u64)>>,
    )> {
        use std::io::Write as _;
        let file = std::fs::File::create(path).with_context(|| {
            format!(
                "creating the trace file {}: give a writable path with --trace-file",
                path.display()
            )
        })?;
        let (tx, rx) = crossbeam_channel::bounded::<(u32, crate::trace::TraceEvent)>(1 << 16);
        let h = std::thread::Builder::new()
            .name("hs-trace".into())
            .spawn(move || -> anyhow::Result<(usize, u64)> {
                let mut out = std::io::BufWriter::new(file);
                let mut ids: std::collections::HashMap<(u32, u32), u32> = Default::default();
                let mut events = 0u64;
                loop {
                    let (q, mut e) = match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(v) => v,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            out.flush()?;
                            continue;
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    let next = ids.len() as u32 + 1;
                    let id = match ids.get(&(q, e.flow)) {
                        Some(id) => *id,
                        None if ids.len() < limit => {
                            ids.insert((q, e.flow), next);
                            next
                        }
                        None => continue,
                    };
                    e.flow = id;
                    writeln!(out, "{}", crate::trace::render::json_line(&e))?;
                    events += 1;
                }
                out.flush()?;
                Ok((ids.len(), events))
            })
            .context("spawning the trace writer thread")?;
        Ok((tx, h))
    }

    /// Runs the daemon until SIGINT or SIGTERM.
    pub fn run(cfg: Config) -> anyhow::Result<()> {
        let routes = cfg.validate()?;
        let mac = iface_mac(&cfg.iface)?;
        let available = iface_queues(&cfg.iface);
        if cfg.queues as usize > available {
            bail!(
                "--queues {} but {} has {} RX queue(s): lower --queues, or add queues (`ethtool -L {} combined N`; for veth, create it with numrxqueues)",
                cfg.queues, cfg.iface, available, cfg.iface
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .context("installing signal handlers")?;
        }
        let usr1 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
            .context("installing the SIGUSR1 handler")?;

        let object: PathBuf = cfg
            .bpf_object
            .clone()
            .unwrap_or_else(XdpLoader::default_object);
        let mode = match cfg.mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Skb => AttachMode::Skb,
        };
        let mut prog = XdpLoader::new(object).mode(mode).attach(&cfg.iface)?;
        tracing::info!(iface = %cfg.iface, mode = ?prog.mode(), "XDP program attached");
        let addrs: Vec<_> = routes.addrs().iter().map(|a| a.addr).collect();
        prog.set_addresses(&addrs)?;
        let ports: Vec<u16> = [cfg.echo, cfg.http, cfg.https]
            .into_iter()
            .flatten()
            .collect();
        prog.set_ports(&ports)?;
        // The engine owns its addresses outright: it answers every TCP segment (RST for closed
        // ports) and UDP (ICMP port unreachable), as a host would.
        prog.set_flags(handshake_common::flags::ALL_TCP | handshake_common::flags::UDP)?;

        let mut ports_open = Vec::new();
        for q in 0..cfg.queues {
            let port = open_port(&cfg.iface, q, &cfg.xsk)?;
            prog.register_socket(q, port.fd())?;
            ports_open.push(port);
        }
        // Watched by name from here on: a link down/up is logged (the program and the sockets
        // survive it); a new ifindex (the interface deleted and created again) stops the daemon.
        let mut link = crate::daemon::LinkWatch::new(&cfg.iface)
            .with_context(|| format!("reading /sys/class/net/{}", cfg.iface))?;
        tracing::info!(iface = %cfg.iface, ifindex = link.ifindex(), state = link.state(), "watching the interface");
        let abandon = Arc::new(AtomicBool::new(false));

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let clock = Clock::start();
        let secret = random_secret()?;
        let key = u64::from_le_bytes(secret[..8].try_into().expect("8 bytes"));
        let mesh = neighbor_mesh(cfg.queues as usize);

        // What HTTP and HTTPS serve, TLS, and the session pool.
        let handler: Arc<dyn crate::http::Handler> = match &cfg.root {
            Some(root) => {
                let d = crate::http::Directory::load(root, cfg.root_max_bytes)?;
                tracing::info!(root = %root.display(), paths = d.len(), bytes = d.bytes(), "serving a directory");
                Arc::new(d)
            }
            None => Arc::new(crate::http::StaticPage::default()),
        };
        let limits = crate::http::Limits {
            max_head: cfg.max_head,
            max_body: cfg.max_body,
        };
        let timeouts = crate::https::Timeouts {
            handshake: Duration::from_millis(cfg.tls.handshake_timeout_ms),
            request: Duration::from_millis(cfg.request_timeout_ms),
        };
        // SIGHUP reloads the certificates: every worker and pool thread picks them up for the
        // connections it accepts next; open connections keep theirs.
        let mut tls_reload = None;
        let https = match cfg.https {
            Some(port) => {
                let mut server = crate::tls::TlsServer::new(&cfg.tls)?;
                tls_reload = Some((server.reloadable(), server.clone()));
                Some(crate::app::HttpsApp {
                    port,
                    server,
                    max_sessions: cfg.tls.max_sessions,
                })
            }
            None => None,
        };
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
            .context("installing the SIGHUP handler")?;
        // Setup needing privileges is done (XDP attached, maps filled, AF_XDP sockets bound, the
        // UMEM pinned, certificates read) and no other thread exists yet: drop every capability
        // here, so that every thread started from now on has none.
        if cfg.drop_capabilities {
            drop_capabilities()?;
        } else {
            tracing::warn!("drop_capabilities = false: the daemon keeps its capabilities");
        }
        let (pool, mut links) = match &https {
            Some(h) if cfg.tls.threads > 0 => {
                let pcfg = crate::https::pool::PoolConfig {
                    threads: cfg.tls.threads,
                    // After the workers' cores: on a 2-core machine, worker 0 and pool thread 0
                    // get a core each.
                    cores: (0..cfg.tls.threads)
                        .map(|i| (cfg.queues as usize + i) % cores.len().max(1))
                        .collect(),
                    max_sessions: cfg.tls.max_sessions,
                    ..Default::default()
                };
                let service = crate::https::pool::Service {
                    server: h.server.clone(),
                    handler: Arc::clone(&handler),
                    limits,
                    timeouts,
                };
                let (pool, links) =
                    crate::https::pool::Pool::start(&pcfg, service, cfg.queues as usize)
                        .context("starting the TLS pool threads")?;
                (Some(pool), links)
            }
            _ => (None, Vec::new()),
        };
        links.reverse();
        let shared: Vec<Arc<SharedStats>> = (0..cfg.queues)
            .map(|_| Arc::new(SharedStats::default()))
            .collect();
        #[cfg(feature = "trace")]
        let (trace, trace_writer) = match &cfg.trace.filter {
            Some(f) => {
                let filter: crate::trace::TraceFilter =
                    f.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                let (tx, writer) = trace_writer(&cfg.trace.file, cfg.trace.limit)?;
                tracing::info!(%filter, limit = cfg.trace.limit, file = %cfg.trace.file.display(), "tracing connections");
                (Some((filter, tx)), Some(writer))
            }
            None => (None, None),
        };
        let registry = Arc::new(crate::metrics::Registry::new(
            cfg.queues as usize,
            if pool.is_some() { cfg.tls.threads } else { 0 },
        ));
        let publish_every = Duration::from_millis(cfg.metrics.publish_ms);
        let started = std::time::Instant::now();
        let publish_global =
            |prog: &crate::loader::XdpProgram, pool: Option<&crate::https::pool::Pool>| {
                if let Some(pool) = pool {
                    let stats = pool.thread_stats();
                    for ((slot, n), t) in registry.pool.iter().zip(pool.queue_depths()).zip(&stats)
                    {
                        slot.publish(&crate::metrics::pool_values(n, t));
                    }
                }
                let xdp = prog.counters();
                let mut g = crate::metrics::Values::default();
                crate::metrics::collect_global(
                    &xdp,
                    cfg.queues,
                    started.elapsed().as_secs(),
                    &mut g,
                );
                registry.global.publish(&g);
                for (slot, n) in registry
                    .xdp_queues
                    .iter()
                    .zip(prog.queue_counters(cfg.queues))
                {
                    slot.publish(&crate::metrics::Values([n]));
                }
            };
        publish_global(&prog, pool.as_ref());
        let metrics_server = match cfg.metrics.addr()? {
            Some(addr) => {
                let reg = Arc::clone(&registry);
                let s = crate::metrics::server::Server::start(addr, move |out| reg.render(out))?;
                tracing::info!(addr = %s.addr(), "metrics endpoint: GET /metrics");
                Some(s)
            }
            None => None,
        };
        // Capture: the file, the rings (one per queue) and the writer thread, before the workers.
        let (capture, mut rings) = match &cfg.capture.file {
            Some(path) => {
                let c = &cfg.capture;
                let settings = crate::capture::Settings {
                    path: path.clone(),
                    filter: crate::capture::filter::Filter::parse(&c.filter)?,
                    max_bytes: (c.max_mb * 1e6) as u64,
                    files: c.files,
                    ring: c.ring,
                    snaplen: if c.snaplen == 0 {
                        cfg.mtu + 14
                    } else {
                        c.snaplen
                    },
                    ifaces: (0..cfg.queues)
                        .map(|q| format!("{} q{q}", cfg.iface))
                        .collect(),
                    start_on: !c.paused,
                };
                let (cap, rings) = crate::capture::Capture::start(settings)?;
                tracing::info!(file = %path.display(), filter = %c.filter, on = !c.paused, "capture (SIGUSR1 toggles it)");
                (Some(cap), rings.into_iter().map(Some).collect())
            }
            None => (None, Vec::new()),
        };
        rings.reverse();
        let switch = capture
            .as_ref()
            .map(|c| c.switch())
            .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
        let mut handles = Vec::new();
        for (q, (port, (inbox, peers))) in ports_open.into_iter().zip(mesh).enumerate() {
            let mut port =
                crate::capture::Tap::new(port, rings.pop().flatten(), Arc::clone(&switch));
            let mut scfg = StackConfig::new(mac, routes.clone());
            scfg.mtu = cfg.mtu;
            scfg.arp = cfg.arp.clone();
            scfg.icmp = cfg.icmp.clone();
            scfg.reassembly = cfg.reassembly.clone();
            scfg.hash_key = key;
            scfg.frame_size = cfg.xsk.frame_size as usize;
            scfg.gratuitous_arp = q == 0;
            scfg.tcp = cfg.tcp.clone();
            scfg.apps = crate::app::AppConfig {
                echo: cfg.echo,
                http: cfg.http,
                http_body: None,
                handler: Some(Arc::clone(&handler)),
                limits,
                timeouts,
                https: https.clone(),
            };
            scfg.secret = secret;
            let mut stack = Stack::new(scfg);
            if let Some(link) = links.pop() {
                stack.attach_pool(link);
            }
            let mut worker = Worker {
                queue: q as u32,
                stack,
                inbox,
                peers,
                shared: Arc::clone(&shared[q]),
                metrics: Arc::clone(&registry.queues[q]),
                publish_every,
                idle_spin: Duration::from_micros(cfg.idle_spin_us),
                stop: Arc::clone(&stop),
                stop_timeout: Duration::from_millis(cfg.shutdown_timeout_ms),
                abandon: Arc::clone(&abandon),
                #[cfg(feature = "trace")]
                trace: None,
            };
            #[cfg(feature = "trace")]
            if let Some((filter, sink)) = &trace {
                worker.stack.set_tracer(Some(crate::trace::Tracer::new(
                    *filter,
                    cfg.trace.limit,
                    cfg.trace.queue,
                )));
                worker.trace = Some(sink.clone());
            }
            let core = cores.get(cfg.core_for(q as u32, cores.len())).copied();
            let busy = cfg.busy_poll || cfg.xsk.busy_poll;
            let h = std::thread::Builder::new()
                .name(format!("hs-q{q}"))
                .spawn(move || {
                    match core {
                        Some(c) if core_affinity::set_for_current(c) => {
                            tracing::info!(queue = q, core = c.id, "worker pinned")
                        }
                        _ => tracing::warn!(
                            queue = q,
                            "could not pin the worker to a core; running unpinned"
                        ),
                    }
                    worker.run(
                        &mut port,
                        clock,
                        |p, t| {
                            if !busy {
                                let _ = p.inner_mut().wait(t);
                            }
                        },
                        |p: &crate::capture::Tap<Port<XskBackend>>, c: &mut ShellCounters| {
                            c.set_port(p.inner().stats(), p.inner().kernel_stats().ok());
                            (c.capture_frames, c.capture_dropped) = p.counters();
                        },
                    );
                    let check = port.inner().check();
                    (*port.inner().stats(), check)
                })
                .context("spawning a worker thread")?;
            handles.push(h);
        }
        println!(
            "ready: {} serving {} on {} queue(s){}",
            cfg.iface,
            routes.addrs()[0],
            cfg.queues,
            match (&https, &pool) {
                (Some(h), Some(_)) => format!(
                    ", https on {} with {} TLS pool thread(s)",
                    h.port, cfg.tls.threads
                ),
                (Some(h), None) => format!(", https on {} with TLS inline", h.port),
                _ => String::new(),
            }
        );
        tracing::info!("ready");

        let interval = Duration::from_secs(cfg.stats_interval_secs);
        let mut last = std::time::Instant::now();
        let mut last_global = std::time::Instant::now();
        let link_every = Duration::from_millis(cfg.iface_check_ms);
        let mut last_link = std::time::Instant::now();
        let mut replaced = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if !link_every.is_zero() && last_link.elapsed() >= link_every {
                last_link = std::time::Instant::now();
                match link.check() {
                    None => {}
                    Some(crate::daemon::LinkEvent::State { from, to }) => {
                        println!("link {}: {from} -> {to}", cfg.iface);
                        tracing::warn!(iface = %cfg.iface, %from, %to, "link state changed");
                    }
                    Some(crate::daemon::LinkEvent::Gone) => {
                        println!(
                            "interface {} (ifindex {}) is gone; waiting for it to come back",
                            cfg.iface,
                            link.ifindex()
                        );
                        tracing::error!(iface = %cfg.iface, "interface gone");
                    }
                    Some(crate::daemon::LinkEvent::Replaced(new)) => {
                        let e = crate::daemon::InterfaceReplaced {
                            iface: cfg.iface.clone(),
                            old: link.ifindex(),
                            new,
                        };
                        println!("{e}");
                        tracing::error!("{e}");
                        abandon.store(true, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        replaced = Some(e);
                        break;
                    }
                }
            }
            if hup.swap(false, Ordering::Relaxed) {
                match &mut tls_reload {
                    Some((handle, current)) => {
                        match current.reloaded(&cfg.tls) {
                            Ok(new) => {
                                let generation = handle.publish(&new);
                                *current = new;
                                println!("reloaded certificates (generation {generation}): new connections use them");
                            }
                            Err(e) => {
                                println!("certificate reload failed, still serving the previous ones: {e}")
                            }
                        }
                    }
                    None => println!("SIGHUP: no HTTPS service, nothing to reload"),
                }
            }
            if usr1.swap(false, Ordering::Relaxed) {
                match &capture {
                    Some(c) => {
                        let on = c.toggle();
                        println!("capture: {}", if on { "on" } else { "off" });
                        tracing::info!(on, "SIGUSR1: capture toggled");
                    }
                    None => {
                        tracing::warn!("SIGUSR1: no capture to toggle (start with --pcap FILE)")
                    }
                }
            }
            if last_global.elapsed() >= publish_every {
                last_global = std::time::Instant::now();
                publish_global(&prog, pool.as_ref());
            }
            if !interval.is_zero() && last.elapsed() >= interval {
                last = std::time::Instant::now();
                let per_queue: Vec<_> = shared.iter().map(|s| s.read()).collect();
                let xdp = prog.counters();
                tracing::info!(
                    "stats: {}; xdp: redirected {} passed {} malformed {} no_socket {}",
                    summary(&per_queue),
                    xdp[0],
                    xdp[1],
                    xdp[2],
                    xdp[3]
                );
            }
        }
        tracing::info!("stopping");
        for (q, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok((stats, Ok(()))) => tracing::info!(
                    queue = q,
                    ?stats,
                    "worker stopped; frame accounting checked"
                ),
                Ok((_, Err(e))) => {
                    tracing::error!(queue = q, "frame accounting error at shutdown: {e}")
                }
                Err(_) => tracing::error!(queue = q, "worker panicked"),
            }
        }
        publish_global(&prog, pool.as_ref());
        if let Some(c) = capture {
            let path = c.path().display().to_string();
            let w = c.finish();
            let per_queue: Vec<_> = registry.queues.iter().map(|s| s.read()).collect();
            let get = |n: &str| -> u64 {
                per_queue
                    .iter()
                    .filter_map(|v| v.get(crate::metrics::QUEUE_FAMILIES, n, ""))
                    .sum()
            };
            println!(
                "capture: {} frames written to {path} ({} file(s), {} write error(s)), {} not captured (ring full)",
                w.frames,
                w.files,
                w.errors,
                get("handshake_capture_dropped_total")
            );
        }
        if let Some(s) = metrics_server {
            s.stop();
        }
        let per_queue: Vec<_> = shared.iter().map(|s| s.read()).collect();
        println!("final: {}", summary(&per_queue));
        #[cfg(feature = "trace")]
        {
            // The workers (and their senders) are gone: the writer drains and ends.
            drop(trace);
            if let Some(w) = trace_writer {
                match w.join() {
                    Ok(Ok((flows, events))) => println!(
                        "final trace: {flows} connection(s), {events} event(s) in {}",
                        cfg.trace.file.display()
                    ),
                    Ok(Err(e)) => tracing::error!("trace writer: {e:#}"),
                    Err(_) => tracing::error!("trace writer panicked"),
                }
            }
        }
        if let Some(pool) = pool {
            let t = pool.stop();
            println!(
                "final tls pool: sessions {} handshakes {} resumed {} tls12 {} tls_errors {} tls_timeouts {} refused {} http_200 {} http_4xx {}",
                t.sessions,
                t.handshakes,
                t.resumed,
                t.tls12,
                t.tls_errors,
                t.handshake_timeouts,
                t.refused,
                t.http.responses(200),
                t.http.status[1..8].iter().sum::<u64>()
            );
        }
        if let Some(e) = replaced {
            // The old link went with the old interface; dropping `prog` closes what is left.
            drop(prog);
            return Err(e.into());
        }
        prog.detach()?;
        tracing::info!("XDP program detached; bye");
        Ok(())
    }

    /// Drops every capability of the calling thread (effective, permitted, inheritable,
    /// ambient, and the bounding set when CAP_SETPCAP allows it) and sets no_new_privs, so that
    /// nothing the process runs can gain privileges. Called on the main thread before any other
    /// thread is started: threads inherit their creator's sets.
    fn drop_capabilities() -> anyhow::Result<()> {
        use caps::{CapSet, Capability};
        let had = caps::read(None, CapSet::Permitted).context("reading the capability sets")?;
        let bounding =
            caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
        if bounding {
            caps::clear(None, CapSet::Bounding).context("clearing the capability bounding set")?;
        }
        for set in [
            CapSet::Ambient,
            CapSet::Inheritable,
            CapSet::Effective,
            CapSet::Permitted,
        ] {
            caps::clear(None, set)
                .with_context(|| format!("clearing the {set:?} capability set"))?;
        }
        nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
        let left = caps::read(None, CapSet::Permitted).context("reading the capability sets")?;
        if !left.is_empty() {
            bail!("capabilities still permitted after dropping them: {left:?}");
        }
        println!(
            "capabilities dropped: {} permitted before, none now{}; no_new_privs set",
            had.len(),
            if bounding {
                ", bounding set empty"
            } else {
                " (no CAP_SETPCAP: the bounding set stays as the supervisor set it)"
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::mem::MemDevice;
    use crate::ipv4::Routes;
    use crate::stack::StackConfig;
    use crate::wire::Mac;
    use std::net::Ipv4Addr;

    fn worker(q: u32, inbox: Receiver<NeighborEvent>, peers: Vec<Sender<NeighborEvent>>) -> Worker {
        let routes = Routes::new(vec!["198.18.0.1/24".parse().unwrap()], None).unwrap();
        let mut cfg = StackConfig::new(Mac([2, 0, 0, 0, 0, 1]), routes);
        cfg.gratuitous_arp = false;
        Worker {
            queue: q,
            stack: Stack::new(cfg),
            inbox,
            peers,
            shared: Arc::new(SharedStats::default()),
            #[cfg(feature = "trace")]
            trace: None,
            metrics: Arc::new(QueueSlot::default()),
            publish_every: Duration::from_millis(100),
            idle_spin: Duration::ZERO,
            stop: Arc::new(AtomicBool::new(false)),
            stop_timeout: Duration::ZERO,
            abandon: Arc::new(AtomicBool::new(false)),
        }
    }

    /// After its last work (a ping answered), a worker sleeps at once, or with an idle spin
    /// keeps polling for that long first; a wake-up that finds nothing sleeps again at once.
    #[test]
    fn idle_spin_polls_after_work_before_sleeping() {
        let mut ping = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut ping, b"spin")
            .unwrap();
        for spin in [Duration::ZERO, Duration::from_millis(100)] {
            let (inbox, peers) = neighbor_mesh(1).pop().expect("one worker");
            let mut w = worker(0, inbox, peers);
            w.idle_spin = spin;
            let stop = Arc::clone(&w.stop);
            let mut dev = MemDevice::new(2048);
            dev.inject(&ping);
            let start = std::time::Instant::now();
            let mut sleeps = Vec::new();
            w.run(
                &mut dev,
                Clock::start(),
                |d: &mut MemDevice, _| {
                    sleeps.push((start.elapsed(), d.take_all().len()));
                    if sleeps.len() == 2 {
                        stop.store(true, Ordering::Relaxed);
                    }
                },
                |_, _| {},
            );
            assert_eq!(sleeps.len(), 2, "{sleeps:?}");
            assert_eq!(
                sleeps[0].1, 1,
                "the echo reply was sent before the first sleep"
            );
            let (first, second) = (sleeps[0].0, sleeps[1].0);
            if spin.is_zero() {
                assert!(first < Duration::from_millis(100), "slept after {first:?}");
            } else {
                assert!(
                    first >= spin,
                    "slept after {first:?}, before the {spin:?} spin"
                );
            }
            // Nothing came in meanwhile: straight back to sleep.
            assert!(
                second - first < Duration::from_millis(50),
                "slept again {:?} after waking with nothing to do",
                second - first
            );
        }
    }

    /// Queue 0 sends a UDP port-unreachable that needs ARP; the ARP reply arrives on queue 1.
    /// The neighbour mesh carries the knowledge back, and queue 0 sends the parked packet.
    #[test]
    fn arp_reply_on_another_queue_resolves_the_asker() {
        let mut mesh = neighbor_mesh(2).into_iter();
        let (i0, p0) = mesh.next().unwrap();
        let (i1, p1) = mesh.next().unwrap();
        let mut w0 = worker(0, i0, p0);
        let mut w1 = worker(1, i1, p1);
        let mut d0 = MemDevice::new(2048);
        let mut d1 = MemDevice::new(2048);
        let peer_mac = [2, 0, 0, 0, 0, 2];
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2(peer_mac, [2, 0, 0, 0, 0, 1])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .udp(1000, 9)
            .write(&mut udp, b"x")
            .unwrap();
        d0.inject(&udp);
        let now = Instant::from_secs(1);
        w0.turn(&mut d0, now);
        let sent = d0.take_all();
        assert_eq!(sent.len(), 1, "an ARP request");
        assert_eq!(&sent[0][12..14], &[8, 6]);
        // The reply lands on queue 1.
        let mut reply = sent[0].clone();
        reply[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        reply[6..12].copy_from_slice(&peer_mac);
        reply[21] = 2;
        reply[22..28].copy_from_slice(&peer_mac);
        reply[28..32].copy_from_slice(&[198, 18, 0, 2]);
        reply[32..38].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        reply[38..42].copy_from_slice(&[198, 18, 0, 1]);
        w1.turn(&mut d1, now); // receives the Resolving event
        d1.inject(&reply);
        w1.turn(&mut d1, now);
        assert_eq!(w1.stack.stats().total_drops(), 0, "{:?}", w1.stack.stats());
        w0.turn(&mut d0, now);
        let sent = d0.take_all();
        assert_eq!(sent.len(), 1, "the parked ICMP error, now addressed");
        assert_eq!(&sent[0][0..6], &peer_mac);
        assert_eq!(sent[0][23], 1, "ICMP");
        assert_eq!(w0.stack.neighbors().parked(), 0);
        let _ = Ipv4Addr::LOCALHOST;
    }

    #[test]
    fn link_watch_reports_state_changes_a_missing_and_a_replaced_interface() {
        let dir = std::env::temp_dir().join(format!("hs-linkwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let put = |index: &str, state: &str| {
            std::fs::write(dir.join("ifindex"), format!("{index}\n")).unwrap();
            std::fs::write(dir.join("operstate"), format!("{state}\n")).unwrap();
        };
        put("7", "up");
        let mut w = LinkWatch::at(dir.clone()).unwrap();
        assert_eq!((w.ifindex(), w.state()), (7, "up"));
        assert_eq!(w.check(), None);
        put("7", "down");
        assert_eq!(
            w.check(),
            Some(LinkEvent::State {
                from: "up".into(),
                to: "down".into()
            })
        );
        assert_eq!(w.check(), None, "reported once");
        put("7", "up");
        assert!(matches!(w.check(), Some(LinkEvent::State { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(w.check(), Some(LinkEvent::Gone));
        assert_eq!(w.check(), None, "gone is reported once");
        std::fs::create_dir_all(&dir).unwrap();
        put("9", "up");
        assert_eq!(w.check(), Some(LinkEvent::Replaced(9)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_lists_nonzero_drops() {
        let mut a = StackStats {
            rx_packets: 5,
            tx_packets: 2,
            ..Default::default()
        };
        a.drop(DropReason::Ipv4BadChecksum);
        let b = StackStats::default();
        assert_eq!(
            summary(&[a, b]),
            "q0: rx 5 tx 2 drops 1 flows 0 time_wait 0 cookies 0/0 challenge_acks 0 retransmits 0 \
             (ipv4_bad_checksum=1); \
             q1: rx 0 tx 0 drops 0 flows 0 time_wait 0 cookies 0/0 challenge_acks 0 retransmits 0"
        );
    }
}
