//! `handshake get` and `handshake load`: the client side on an interface (feature `xdp`).
//!
//! One AF_XDP socket on one queue of the interface, the XDP program steering what the engine's
//! address owns (ARP, TCP, UDP) to it, one [`Stack`] with the DNS resolver, driven on the
//! calling thread until the requests are done: resolve the name (or take an address literal),
//! open each connection through the routing decision (on-link, or via `--gateway`) and ARP,
//! run TLS when the URL is `https`, read the response, close.

use super::{ClientError, ClientRequest, Url};
use crate::daemon::xdp::{iface_mac, iface_queues, open_port, random_secret};
use crate::dns::{DnsError, ResolverConfig};
use crate::ipv4::{Ipv4Cidr, Routes};
use crate::loader::{AttachMode, XdpLoader};
use crate::stack::{run_batch, Stack, StackConfig};
use crate::time::Instant;
use crate::tls::{TlsClient, TlsClientConfig, TlsError};
use anyhow::Context;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Exit statuses of `handshake get` (curl's numbers where curl has one).
pub mod exit {
    /// A complete response (with `--fail`: a status below 400).
    pub const OK: i32 = 0;
    /// Setup failed (interface, XDP, arguments): the message says what to fix.
    pub const SETUP: i32 = 2;
    /// The name did not resolve (NXDOMAIN, no answer, DNS timeout).
    pub const DNS: i32 = 6;
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    pub const CONNECT: i32 = 7;
    /// `--fail` and the status was 400 or above.
    pub const HTTP_STATUS: i32 = 22;
    /// The whole request did not finish within `--timeout`.
    pub const TIMEOUT: i32 = 28;
    /// The TLS handshake or session failed (not a certificate problem).
    pub const TLS: i32 = 35;
    /// The response was malformed, cut short, or the connection reset while reading it.
    pub const RECEIVE: i32 = 56;
    /// The server's certificate was refused (name, issuer, validity).
    pub const CERTIFICATE: i32 = 60;
    /// With `--count`: a later body differed from the first.
    pub const MISMATCH: i32 = 1;
}

/// Everything `get` and `load` need.
#[derive(Debug, Clone)]
pub struct GetArgs {
    /// What to get.
    pub url: Url,
    /// Interface (in this network namespace).
    pub iface: String,
    /// The engine's address and prefix (not configured on the kernel side).
    pub addr: Ipv4Cidr,
    /// Default gateway for off-link destinations.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (port 53).
    pub dns: Vec<Ipv4Addr>,
    /// Static name → address entries (like /etc/hosts), before DNS.
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// CA bundle to verify the server's certificate (default: the system roots).
    pub cacert: Option<PathBuf>,
    /// Print the response head before the body.
    pub include: bool,
    /// HEAD instead of GET.
    pub head: bool,
    /// Exit 22 on a status of 400 or above.
    pub fail: bool,
    /// Print the trace (text, mermaid or json) to standard error.
    pub trace: Option<crate::trace::render::Format>,
    /// Deadline of each request (DNS, connection, handshake, response).
    pub timeout: Duration,
    /// Requests to make, one after another unless `concurrency` > 1 (each a new connection;
    /// TLS sessions resumed).
    pub count: u64,
    /// Connections open at once (closed loop: a new one as soon as one ends).
    pub concurrency: u64,
    /// Requests per connection (keep-alive; 1: a new connection per request).
    pub per_conn: u64,
    /// Open loop: new connections per second, whatever the answers (0: closed loop). Never
    /// more than `concurrency` open: a connection due while that many are open is counted as
    /// late and skipped.
    pub rate: f64,
    /// Print statistics instead of the body (`handshake load`).
    pub quiet: bool,
    /// Stop starting connections after this long (the count still bounds them).
    pub duration: Option<Duration>,
    /// The body every response must have (else the first one's is the reference).
    pub expect: Option<Vec<u8>>,
    /// The XDP object (default: next to the binary).
    pub bpf_object: Option<PathBuf>,
    /// XDP attach mode.
    pub mode: AttachMode,
    /// RX queue to bind.
    pub queue: u32,
}

/// What the requests came to.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests started (on connections opened).
    pub started: u64,
    /// Complete responses.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// Connections whose TLS session was resumed.
    pub resumed: u64,
    /// Bodies different from the first.
    pub mismatched: u64,
    /// Connections opened.
    pub connections: u64,
    /// Open loop: connections due while `concurrency` were open (skipped).
    pub late: u64,
    /// Request latencies (start to complete response), microseconds.
    pub latencies_us: Vec<u64>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Report {
    /// The `p`-th percentile latency (0..=100).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.latencies_us.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(Duration::from_micros(v[i.min(v.len() - 1)]))
    }
}

/// The exit status for a failed request.
pub fn exit_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Tcp(m) if m.contains("refused") || m.contains("no answer") => exit::CONNECT,
        ClientError::Tcp(_) | ClientError::Http(_) => exit::RECEIVE,
        ClientError::Timeout(_) => exit::TIMEOUT,
        ClientError::Tls(t) if t.is_certificate() => exit::CERTIFICATE,
        ClientError::Tls(_) => exit::TLS,
    }
}

/// Runs `get` (or `load`): returns the exit status.
pub fn get(args: &GetArgs) -> anyhow::Result<i32> {
    let routes = Routes::new(vec![args.addr], args.gateway)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("--addr / --gateway")?;
    // One TLS client (and so one session store) per connection slot, as many as may be open at
    // once (up to 64): a store keeps a few single-use TLS 1.3 tickets per server, which
    // connections opened together would otherwise compete for.
    let tls: Vec<TlsClient> = if args.url.tls {
        let cfg = TlsClientConfig {
            cacert: args.cacert.clone(),
            ..Default::default()
        };
        (0..args.concurrency.clamp(1, 64))
            .map(|_| TlsClient::new(&cfg))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mac = iface_mac(&args.iface)?;
    let object = args
        .bpf_object
        .clone()
        .unwrap_or_else(XdpLoader::default_object);
    let mut prog = XdpLoader::new(object).mode(args.mode).attach(&args.iface)?;
    prog.set_addresses(&[args.addr.addr])?;
    prog.set_ports(&[])?;
    // The engine owns its address: every TCP segment and UDP datagram to it is its own (the
    // replies to its connections and DNS queries, and RST / port unreachable for the rest).
    prog.set_flags(handshake_common::flags::ALL_TCP | handshake_common::flags::UDP)?;
    let xsk = crate::xsk::XskConfig::default();
    let mut port = open_port(&args.iface, args.queue, &xsk)?;
    prog.register_socket(args.queue, port.fd())?;

    let random = random_secret()?;
    let mut scfg = StackConfig::new(mac, routes);
    scfg.secret = client_secret().unwrap_or_else(|e| {
        eprintln!("warning: {e:#}; a fresh TCP secret for this run: a server still holding an earlier run's connection in TIME-WAIT may then answer a SYN late");
        random
    });
    scfg.dns_secret = Some(random);
    scfg.hash_key = u64::from_le_bytes(random[..8].try_into().expect("8 bytes"));
    scfg.frame_size = xsk.frame_size as usize;
    scfg.dns = Some(ResolverConfig {
        servers: args.dns.iter().map(|a| SocketAddrV4::new(*a, 53)).collect(),
        hosts: args.hosts.clone(),
        ..Default::default()
    });
    let mut stack = Stack::new(scfg);
    if let Some(s) = steering(&args.iface, args.queue, args.addr.addr) {
        stack.tcp_mut().set_steering(Some(s));
    }
    let mut trace_events = Vec::new();
    if args.trace.is_some() {
        stack.set_tracer(Some(crate::trace::Tracer::new(
            crate::trace::TraceFilter::default(),
            1,
            crate::trace::DEFAULT_QUEUE,
        )));
    }
    let clock = BootClock::start();
    let idle =
        |port: &mut crate::xsk::Port<crate::xsk::XskBackend>, stack: &Stack, now: Instant| {
            let wait = stack
                .poll_timeout()
                .map_or(Duration::from_millis(10), |t| t.saturating_since(now))
                .min(Duration::from_millis(10));
            if !wait.is_zero() {
                let _ = port.wait(wait);
            }
        };

    // The first TLS session is made before anything is timed: its first use initialises the
    // crypto library (about 20 ms here), which would otherwise delay the first SYN.
    let mut first_session = match tls.first() {
        Some(t) => Some(t.connect(&args.url.host)?),
        None => None,
    };
    // The name first (an address literal or a static entry answers at once).
    let started = clock.now();
    let deadline = started + args.timeout;
    let host = args.url.host.clone();
    let remote = match stack.resolve(started, &host) {
        Err(e) => return Ok(dns_failed(&host, &e)),
        Ok(_) => loop {
            let now = clock.now();
            let (rx, tx) = run_batch(&mut stack, &mut port, now);
            drain_trace(&mut stack, &mut trace_events);
            if let Some(ev) = stack.poll_dns_event() {
                match ev.result {
                    Ok(a) => match a.addrs.first() {
                        Some(ip) => break SocketAddrV4::new(*ip, args.url.port),
                        None => return Ok(dns_failed(&host, &DnsError::NoAddress)),
                    },
                    Err(e) => return Ok(dns_failed(&host, &e)),
                }
            }
            if now > deadline {
                return Ok(dns_failed(&host, &DnsError::Timeout));
            }
            if rx + tx == 0 {
                idle(&mut port, &stack, now);
            }
        },
    };
    tracing::info!(%host, %remote, "resolved");

    let mut report = Report::default();
    // With --expect every body is compared with the file; without, with the first one.
    let mut first_body: Option<Vec<u8>> = args.expect.clone();
    let mut last_error: Option<ClientError> = None;
    let mut open_conns = 0u64;
    let mut assigned = 0u64;
    let run_start = std::time::Instant::now();
    let loop_start = clock.now();
    let mut stdout = std::io::stdout().lock();
    let mut status = exit::OK;
    let per_conn = args.per_conn.max(1);
    let cap = args.concurrency.max(1);
    loop {
        let now = clock.now();
        // New connections: as many as may be open (closed loop), or as they fall due (open
        // loop), until every request is assigned.
        if args
            .duration
            .is_some_and(|d| now.saturating_since(loop_start) >= d)
        {
            // Time is up: no new connections; those open finish their requests.
            assigned = args.count;
        }
        loop {
            if assigned >= args.count {
                break;
            }
            if args.rate > 0.0 {
                let due = (now.saturating_since(loop_start).as_secs_f64() * args.rate) as u64;
                if report.connections + report.late > due {
                    break;
                }
                if open_conns >= cap {
                    report.late += 1;
                    assigned += per_conn.min(args.count - assigned);
                    continue;
                }
            } else if open_conns >= cap {
                break;
            }
            let n = per_conn.min(args.count - assigned);
            let req = ClientRequest {
                url: args.url.clone(),
                head: args.head,
                limits: Default::default(),
                tag: report.connections,
                timeout: args.timeout,
                requests: n,
            };
            let slot = (report.connections as usize) % tls.len().max(1);
            let session = match (first_session.take(), tls.get(slot)) {
                (Some(s), _) => Some(s),
                (None, Some(t)) => Some(t.connect(&args.url.host)?),
                (None, None) => None,
            };
            stack
                .http_request(now, remote, &req, session)
                .with_context(|| format!("opening a connection to {remote}"))?;
            assigned += n;
            report.started += n;
            open_conns += 1;
            report.connections += 1;
        }
        let (rx, tx) = run_batch(&mut stack, &mut port, now);
        drain_trace(&mut stack, &mut trace_events);
        let mut got = false;
        while let Some(ev) = stack.poll_client_event() {
            got = true;
            if ev.last {
                open_conns -= 1;
            }
            // Per connection (its requests share the session).
            report.resumed += u64::from(ev.last && ev.resumed == Some(true));
            match ev.result {
                Ok(resp) => {
                    report.ok += 1;
                    report
                        .latencies_us
                        .push(ev.done_at.saturating_since(ev.started_at).as_micros() as u64);
                    if args.fail && resp.status >= 400 {
                        status = exit::HTTP_STATUS;
                    }
                    match &first_body {
                        None => {
                            if !args.quiet {
                                if args.include {
                                    stdout.write_all(&resp.head)?;
                                }
                                stdout.write_all(&resp.body)?;
                                stdout.flush()?;
                            }
                            first_body = Some(resp.body);
                        }
                        Some(b) if *b != resp.body => report.mismatched += 1,
                        Some(_) => {}
                    }
                }
                Err(e) => {
                    tracing::debug!("request failed: {e}");
                    last_error.get_or_insert(e);
                }
            }
        }
        if assigned >= args.count && open_conns == 0 {
            // Failed: with an error, or never answered (their connection ended early).
            report.failed = report.started - report.ok;
            break;
        }
        if rx + tx == 0 && !got {
            idle(&mut port, &stack, now);
        }
    }
    report.elapsed = run_start.elapsed();
    // Let the last close finish (FIN both ways) so that the trace tells it, for a second at most.
    let linger = clock.now() + Duration::from_secs(1);
    while stack.tcp().open_flows() > 0 && clock.now() < linger {
        let now = clock.now();
        let (rx, tx) = run_batch(&mut stack, &mut port, now);
        drain_trace(&mut stack, &mut trace_events);
        if rx + tx == 0 {
            idle(&mut port, &stack, now);
        }
    }
    if let Some(format) = args.trace {
        eprint!("{}", crate::trace::render::render(&trace_events, format));
    }
    if let Some(d) = stack.resolver() {
        tracing::info!(stats = ?d.stats(), "resolver");
    }
    tracing::info!(stats = ?port.stats(), "AF_XDP port");
    if report.started > 1 || args.quiet {
        let p = |q| {
            report.percentile(q).map_or("-".to_string(), |d| {
                format!("{:.3} ms", d.as_secs_f64() * 1e3)
            })
        };
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "{} requests: {} ok, {} failed, {} bodies differ; {:.1} req/s; latency p50 {} p90 {} p99 {}; {} connections ({:.1}/s), {} TLS-resumed, {} late",
            report.started,
            report.ok,
            report.failed,
            report.mismatched,
            report.ok as f64 / secs,
            p(50.0),
            p(90.0),
            p(99.0),
            report.connections,
            report.connections as f64 / secs,
            report.resumed,
            report.late,
        );
    }
    if let Some(e) = last_error {
        eprintln!("handshake get {}: {e}", args.url);
        return Ok(exit_code(&e));
    }
    if report.mismatched > 0 {
        return Ok(exit::MISMATCH);
    }
    Ok(status)
}

/// Where the client keeps its TCP secret until the machine reboots.
const CLIENT_SECRET: &str = "/run/handshake/client.secret";

/// The client's TCP secret (ISNs, timestamp offsets, port choice), the same for every `get`
/// and `load` run until the machine reboots, as the kernel's boot-time secret: with
/// [`BootClock`], the ISNs and timestamps of a 4-tuple keep growing from one run to the next,
/// so that a server still holding an earlier run's connection on that 4-tuple in TIME-WAIT
/// takes the new SYN (RFC 6191) instead of answering it with an ACK that costs the client a
/// 1 s retransmission. Kept in [`CLIENT_SECRET`] (mode 0600, in a 0700 directory).
fn client_secret() -> anyhow::Result<[u8; 32]> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = std::path::Path::new(CLIENT_SECRET);
    if let Ok(b) = std::fs::read(path) {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if let (Ok(s), 0) = (<[u8; 32]>::try_from(b.as_slice()), mode & 0o077) {
            return Ok(s);
        }
    }
    let dir = path.parent().expect("a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let s = random_secret()?;
    let tmp = dir.join(format!(".client.secret.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&s)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {CLIENT_SECRET}"))?;
    Ok(s)
}

/// The engine's clock for the client: microseconds since the machine booted (from
/// `/proc/uptime` once, then the monotonic clock), so that sequence numbers and timestamps
/// derived from it keep growing from one run to the next (see [`client_secret`]).
#[derive(Clone, Copy, Debug)]
struct BootClock {
    start: std::time::Instant,
    base_us: u64,
}

impl BootClock {
    fn start() -> Self {
        let base_us = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |s| (s * 1e6) as u64);
        BootClock {
            start: std::time::Instant::now(),
            base_us,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.base_us + self.start.elapsed().as_micros() as u64)
    }
}

/// On a multi-queue NIC, the ports whose replies its RSS steers to `queue` (read with
/// `ethtool -x`); `None` on one queue, or with a warning when the NIC does not tell.
fn steering(iface: &str, queue: u32, addr: Ipv4Addr) -> Option<crate::tcp::rss::RssSteering> {
    let queues = iface_queues(iface);
    if queues <= 1 {
        return None;
    }
    let out = std::process::Command::new("ethtool")
        .args(["-x", iface])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match out.map(|t| crate::tcp::rss::RssSteering::from_ethtool(&t, queue)) {
        Some(Ok(s)) => {
            tracing::info!(
                iface,
                queue,
                "ephemeral ports chosen for the NIC's RSS to steer replies to this queue"
            );
            Some(s)
        }
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "`ethtool -x` tells no RSS key or table".into(),
            };
            eprintln!(
                "warning: {iface} has {queues} queues and its RSS cannot be read ({why}); replies may land on another queue than {queue}: steer them with `ethtool -N {iface} flow-type tcp4 dst-ip {addr} action {queue}` (and udp4 for DNS)"
            );
            None
        }
    }
}

fn dns_failed(host: &str, e: &DnsError) -> i32 {
    eprintln!("handshake get: could not resolve {host}: {e}");
    exit::DNS
}

fn drain_trace(stack: &mut Stack, into: &mut Vec<crate::trace::TraceEvent>) {
    while let Some(e) = stack.poll_trace_event() {
        into.push(e);
    }
}

impl TlsError {
    /// True for a refused server certificate (name, issuer, validity).
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            TlsError::CertificateName { .. }
                | TlsError::UnknownIssuer { .. }
                | TlsError::CertificateExpired { .. }
                | TlsError::CertificateNotYetValid { .. }
                | TlsError::CertificateOther { .. }
        )
    }
}
