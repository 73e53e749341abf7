//! `cargo xtask bench [--quick]`: the engine side by side with the Linux kernel (and nginx for
//! HTTPS), on one veth pair, the same core, the same content, in the same run.
//!
//! ```text
//!  hs-eng-<id>                                             hs-peer-<id>
//!  core 0: the engine's worker (AF_XDP, owns 198.18.0.1)   core 1: the load generator
//!          or the kernel peer on 198.18.0.3:                       (ping, arping in Python,
//!          sbs-peer (one epoll thread: echo, HTTP/1.1)              wrk, sbs-peer clients)
//!          and nginx (one worker) for HTTPS
//! ```
//!
//! Rounds alternate A B A B …: in each round the daemon is started, every case is measured
//! against it, it is stopped (its XDP program goes with it), then the kernel peers are started
//! and measured the same way. Every case fetches the content from both sides once and compares
//! it with the file served; the clients check every echoed byte and every HTTPS body. Every
//! command has a time bound; the whole run has a deadline (10 minutes, `--quick` 3). Ctrl-C (or
//! SIGTERM) stops the run: daemons, servers and namespaces are removed on every exit path.
//! Results: a table on stdout, `target/bench/summary.json`, `target/bench/summary.png`.

mod chart;
mod parse;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use handshake_tests::netns::{self, Topology};
use serde::Serialize;

use crate::{build, deps, util};

/// The core the engine's worker and the kernel peers run on.
const SERVER_CORE: usize = 0;
/// The core of the load generator.
const LOAD_CORE: usize = 1;
/// Kernel peer's address (the kernel's own address on the engine's veth).
const KERNEL_ADDR: &str = netns::KERNEL_ADDR;
const ENGINE_ADDR: &str = netns::ENGINE_ADDR;
/// The engine client's address on the peer's veth (`handshake load` as the load generator).
const ENGINE_CLIENT_ADDR: &str = "198.18.0.5/24";
/// The certificate's DNS name (and both addresses as IP names).
const CERT_NAME: &str = "bench.handshake.test";
/// wrk connections (one thread).
const WRK_CONNECTIONS: &str = "32";
/// Default threads of the blocking TCP and TLS connection clients (`--clients`): enough
/// connections in flight that the rate is not one client's round trips.
pub const CLIENT_THREADS: u32 = 16;
/// Bytes of the HTTP body (a small page: the request rate is what is measured).
const BODY_BYTES: usize = 1024;
/// Slack on top of a measurement's duration before its command is killed.
const SLACK: Duration = Duration::from_secs(15);

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn stopped() -> bool {
    STOP.get().is_some_and(|s| s.load(Ordering::Relaxed))
}

fn check_stop() -> Result<()> {
    if stopped() {
        bail!("interrupted: stopping (removing the daemon, servers and namespaces)");
    }
    Ok(())
}

/// Options of `cargo xtask bench`.
pub struct Opts {
    pub quick: bool,
    pub rounds: Option<u32>,
    pub secs: Option<u32>,
    pub profile: bool,
    /// Steer the kernel's receive processing to the server core (RPS); off: it runs on the
    /// load generator's core, in the sender's softirq.
    pub rps: bool,
    /// Run the engine with --busy-poll (its worker spins instead of sleeping in poll(2)).
    pub busy_poll: bool,
    /// Run the engine with --idle-spin-us (`None`: the daemon's default).
    pub idle_spin_us: Option<u64>,
    /// Threads of the TCP and TLS connection clients.
    pub clients: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Engine,
    Kernel,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Icmp,
    Arp,
    TcpConn,
    /// A TCP connection per HTTP request (connect, GET, the page, close), with the engine's
    /// own client as the load generator (the kernel client's threads are the TCP case's limit).
    HttpConnEngineClient,
    HttpKa,
    HttpsKa,
    HttpsFull,
    HttpsResumed,
    /// HTTPS resumed, with the engine's own client (`handshake load`) as the load generator.
    HttpsResumedEngineClient,
    Bulk,
}

const CASES: [Case; 10] = [
    Case::Icmp,
    Case::Arp,
    Case::TcpConn,
    Case::HttpConnEngineClient,
    Case::HttpKa,
    Case::HttpsKa,
    Case::HttpsFull,
    Case::HttpsResumed,
    Case::HttpsResumedEngineClient,
    Case::Bulk,
];

/// What a case reports: metric key, label, unit, higher is better, the kernel-side peer.
struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
    peer: &'static str,
}

const METRICS: [Metric; 12] = [
    Metric {
        key: "icmp_echo",
        label: "ICMP echo (ping -f, 32 in flight)",
        unit: "replies/s",
        higher_better: true,
        peer: "Linux kernel",
    },
    Metric {
        key: "arp",
        label: "ARP who-has (16 in flight)",
        unit: "replies/s",
        higher_better: true,
        peer: "Linux kernel",
    },
    Metric {
        key: "tcp_conn",
        label: "TCP connect, 64 B echo, close",
        unit: "conn/s",
        higher_better: true,
        peer: "Linux + sbs-peer (epoll)",
    },
    Metric {
        key: "http_conn_engine_client",
        label: "HTTP connection per GET, load from handshake load",
        unit: "conn/s",
        higher_better: true,
        peer: "Linux + sbs-peer (epoll)",
    },
    Metric {
        key: "http_keepalive",
        label: "HTTP keep-alive (wrk -c32)",
        unit: "req/s",
        higher_better: true,
        peer: "Linux + sbs-peer (epoll)",
    },
    Metric {
        key: "http_p50",
        label: "HTTP keep-alive p50 latency",
        unit: "µs",
        higher_better: false,
        peer: "Linux + sbs-peer (epoll)",
    },
    Metric {
        key: "http_p99",
        label: "HTTP keep-alive p99 latency",
        unit: "µs",
        higher_better: false,
        peer: "Linux + sbs-peer (epoll)",
    },
    Metric {
        key: "https_keepalive",
        label: "HTTPS keep-alive (wrk -c32)",
        unit: "req/s",
        higher_better: true,
        peer: "nginx (1 worker)",
    },
    Metric {
        key: "https_full",
        label: "HTTPS full handshake + GET",
        unit: "conn/s",
        higher_better: true,
        peer: "nginx (1 worker)",
    },
    Metric {
        key: "https_resumed",
        label: "HTTPS resumed handshake + GET",
        unit: "conn/s",
        higher_better: true,
        peer: "nginx (1 worker)",
    },
    Metric {
        key: "https_resumed_engine_client",
        label: "HTTPS resumed + GET, load from handshake load",
        unit: "conn/s",
        higher_better: true,
        peer: "nginx (1 worker)",
    },
    Metric {
        key: "bulk",
        label: "Bulk, one TCP stream (echo)",
        unit: "Gbit/s",
        higher_better: true,
        peer: "Linux + sbs-peer (epoll)",
    },
];

fn metric(key: &str) -> &'static Metric {
    METRICS
        .iter()
        .find(|m| m.key == key)
        .expect("a known metric")
}

/// Everything a run needs: paths, topology, binaries.
struct Env {
    topo: Topology,
    daemon: PathBuf,
    peer_bin: PathBuf,
    dir: PathBuf,
    body: Vec<u8>,
    body_file: PathBuf,
    www: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    engine_config: PathBuf,
    nginx_conf: PathBuf,
    secs: f64,
    deadline: Instant,
    busy_poll: bool,
    idle_spin_us: Option<u64>,
    clients: u32,
}

pub fn run(opts: Opts) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark creates network namespaces and attaches XDP: run `sudo -E cargo xtask bench`");
    }
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        bail!("the benchmark pins the server and the load generator to two different cores; this machine has {cores}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let _ = STOP.set(stop);

    deps::ensure(deps::Need::BENCH)?;
    let daemon = build::all(build::Profile::Release)?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "handshake-benches",
        "--bin",
        "sbs-peer",
    ]))?;
    let peer_bin = util::target_dir().join("release/sbs-peer");
    check_stop()?;

    let rounds = opts
        .rounds
        .unwrap_or(if opts.quick { 2 } else { 5 })
        .clamp(1, 10);
    let secs = opts.secs.unwrap_or(if opts.quick { 2 } else { 3 });
    if !(1..=20).contains(&secs) {
        bail!("--secs {secs}: give 1 to 20 seconds per measurement");
    }
    let secs = f64::from(secs);
    let budget = Duration::from_secs(if opts.quick { 170 } else { 570 });
    let started = Instant::now();
    let loadavg_start = loadavg();

    for id in netns::cleanup_stale()? {
        println!("removed a leftover network of a finished run: {id}");
    }
    let dir = util::target_dir().join("bench");
    let _ = fs::remove_dir_all(dir.join("raw"));
    fs::create_dir_all(&dir)?;
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    let body = page();
    let body_file = www.join("index.html");
    fs::write(&body_file, &body)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    certificate(&cert, &key)?;
    let engine_config = dir.join("engine.toml");
    // The kernel does not rate-limit echo replies (icmp_ratemask): neither does the engine here.
    fs::write(&engine_config, "[icmp]\necho_rate = 0\n")?;
    let nginx_conf = dir.join("nginx").join("nginx.conf");
    nginx_config(&nginx_conf, &www, &cert, &key)?;

    let topo = Topology::builder().queues(1).up()?;
    tune(&topo, opts.rps)?;
    let env = Env {
        topo,
        daemon,
        peer_bin,
        dir: dir.clone(),
        body,
        body_file,
        www,
        cert,
        key,
        engine_config,
        nginx_conf,
        secs,
        deadline: started + budget,
        busy_poll: opts.busy_poll,
        idle_spin_us: opts.idle_spin_us,
        clients: opts.clients.clamp(1, 256),
    };
    println!(
        "bench: {rounds} rounds × 2 sides × {} cases, {secs} s each; engine/peers on core {SERVER_CORE}, load on core {LOAD_CORE}; kernel receive processing (RPS) on core {}; load average now {loadavg_start}",
        CASES.len(),
        if opts.rps { SERVER_CORE } else { LOAD_CORE }
    );

    let mut samples: BTreeMap<(&'static str, bool), Vec<f64>> = BTreeMap::new();
    let mut verified: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut cut_short = false;
    'rounds: for round in 0..rounds {
        for side in [Side::Engine, Side::Kernel] {
            check_stop()?;
            let per_side = Duration::from_secs_f64((secs + 0.6) * CASES.len() as f64 + 3.0);
            if Instant::now() + per_side > env.deadline {
                notes.push(format!(
                    "stopped before round {} ({side:?}) to stay within the {} s budget",
                    round + 1,
                    budget.as_secs()
                ));
                cut_short = true;
                break 'rounds;
            }
            util::heading(&format!("round {} of {rounds}: {side:?}", round + 1));
            let servers = start_side(&env, side, 1)?;
            for case in CASES {
                check_stop()?;
                if round == 0 {
                    let v = verify(&env, side, case)
                        .with_context(|| format!("{case:?} on the {side:?} side"))?;
                    verified.entry(case_key(case)).or_default().push(v);
                }
                let got = measure(&env, side, case)
                    .with_context(|| format!("measuring {case:?} on the {side:?} side"))?;
                for (key, value) in got {
                    println!(
                        "  {:<34} {:>14}  {}",
                        metric(key).label,
                        fmt(value),
                        metric(key).unit
                    );
                    samples
                        .entry((key, side == Side::Engine))
                        .or_default()
                        .push(value);
                }
            }
            drop(servers);
        }
    }
    check_stop()?;
    let mut profile = None;
    if opts.profile && !opts.quick {
        if Instant::now() + Duration::from_secs_f64(secs + 10.0) < env.deadline {
            match perf_profile(&env) {
                Ok(p) => profile = Some(p),
                Err(e) => notes.push(format!("no profile: {e:#}")),
            }
        } else {
            notes.push("no profile: out of time budget".into());
        }
    }
    notes.push("scaling 1 vs 2 queues: skipped: this machine has 2 cores, one is the load generator's; a second engine queue would share it".into());

    let loadavg_end = loadavg();
    let summary = summarize(&samples, &verified, rounds);
    print_table(&summary);
    for n in &notes {
        println!("note: {n}");
    }
    let report = Report {
        command: std::iter::once("cargo xtask".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        rounds,
        secs_per_measurement: secs,
        server_core: SERVER_CORE,
        kernel_rps: opts.rps,
        connection_clients: opts.clients,
        engine_busy_poll: opts.busy_poll,
        engine_idle_spin_us: opts.idle_spin_us,
        load_core: LOAD_CORE,
        machine: machine(),
        loadavg_start,
        loadavg_end,
        elapsed_secs: started.elapsed().as_secs_f64(),
        cut_short,
        notes,
        profile: profile.clone(),
        cases: summary,
    };
    let json = dir.join("summary.json");
    fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let png = dir.join("summary.png");
    let bars: Vec<chart::Bar> = report
        .cases
        .iter()
        .map(|c| {
            let adv = |e: f64, p: f64| {
                if c.higher_better {
                    e / p
                } else {
                    p / e
                }
            };
            chart::Bar {
                label: c.label.clone(),
                advantage: adv(c.engine, c.peer),
                // The worst and best pairing of the rounds' extremes.
                low: adv(c.engine_min, c.peer_max).min(adv(c.engine_max, c.peer_min)),
                high: adv(c.engine_min, c.peer_max).max(adv(c.engine_max, c.peer_min)),
            }
        })
        .collect();
    let title = format!(
        "handshake vs Linux/nginx, same core, veth: {} ({} rounds, {} s each)",
        report.command, rounds, secs
    );
    chart::draw(&png, &title, &bars)?;
    println!(
        "\nwrote {} and {} ({:.0} s; load average {} at the start, {} at the end)",
        json.display(),
        png.display(),
        report.elapsed_secs,
        report.loadavg_start,
        report.loadavg_end
    );
    if let Some(p) = &profile {
        println!(
            "profile of the engine worker during HTTP keep-alive ({}; {} req/s): worker thread on-CPU {:.0}% of the time; core {SERVER_CORE} busy {:.0}% (steal {:.0}%), core {LOAD_CORE} (wrk) busy {:.0}% (steal {:.0}%)",
            p.file,
            fmt(p.requests_per_sec),
            p.worker_busy_pct,
            p.server_core_busy_pct,
            p.server_core_steal_pct,
            p.load_core_busy_pct,
            p.load_core_steal_pct
        );
        println!("  samples by binary: {}", p.by_dso.join(", "));
        for l in &p.top {
            println!("  {l}");
        }
    }
    let bad: Vec<&CaseSummary> = report.cases.iter().filter(|c| !c.same_bytes).collect();
    if !bad.is_empty() {
        bail!(
            "the two sides did not serve the same bytes in: {}",
            bad.iter()
                .map(|c| c.case.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn case_key(case: Case) -> &'static str {
    match case {
        Case::Icmp => "icmp_echo",
        Case::Arp => "arp",
        Case::TcpConn => "tcp_conn",
        Case::HttpConnEngineClient => "http_conn_engine_client",
        Case::HttpKa => "http_keepalive",
        Case::HttpsKa => "https_keepalive",
        Case::HttpsFull => "https_full",
        Case::HttpsResumed => "https_resumed",
        Case::HttpsResumedEngineClient => "https_resumed_engine_client",
        Case::Bulk => "bulk",
    }
}

/// The page both sides serve: BODY_BYTES of HTML, the same every run.
fn page() -> Vec<u8> {
    let mut s =
        String::from("<!doctype html>\n<html><head><title>handshake bench</title></head><body>\n");
    let mut i = 0;
    while s.len() < BODY_BYTES - 20 {
        s.push_str(&format!("<p>line {i:04} of the side-by-side page</p>\n"));
        i += 1;
    }
    s.push_str("</body></html>\n");
    s.truncate(BODY_BYTES);
    while s.len() < BODY_BYTES {
        s.push('\n');
    }
    s.into_bytes()
}

fn certificate(cert: &Path, key: &Path) -> Result<()> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if cert.is_file() && key.is_file() {
        return Ok(());
    }
    let key_pair = KeyPair::generate().context("generating the bench key")?;
    let mut params = CertificateParams::new(vec![
        CERT_NAME.to_owned(),
        ENGINE_ADDR.to_owned(),
        KERNEL_ADDR.to_owned(),
    ])
    .context("certificate names")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "handshake bench");
    let signed = params.self_signed(&key_pair)?;
    let _ = fs::remove_file(key);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .with_context(|| format!("writing {}", key.display()))?;
    f.write_all(key_pair.serialize_pem().as_bytes())?;
    fs::write(cert, signed.pem())?;
    Ok(())
}

fn nginx_config(conf: &Path, www: &Path, cert: &Path, key: &Path) -> Result<()> {
    let dir = conf.parent().expect("a directory");
    let temp = handshake_tests::nginx_temp_paths(dir)?;
    let d = dir.display();
    let mask = format!("{:b}", 1u32 << SERVER_CORE);
    let text = format!(
        "# Written by cargo xtask bench: the HTTPS peer, one worker pinned to core {SERVER_CORE}.
daemon off;
master_process on;
user root;
worker_processes 1;
worker_cpu_affinity {mask};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
{temp}    default_type text/html;
    server_tokens off;
    etag off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    server {{
        listen {KERNEL_ADDR}:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        # Resumption like the engine's: stateless tickets and a stateful cache.
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1h;
        root {www};
        location / {{ index index.html; }}
    }}
}}
",
        cert = cert.display(),
        key = key.display(),
        www = www.display(),
    );
    fs::write(conf, text)?;
    Ok(())
}

/// Namespace settings for a fair and repeatable run (both namespaces are ours; the root
/// namespace is not touched).
fn tune(topo: &Topology, rps: bool) -> Result<()> {
    // The clients close first: their TIME-WAIT ports are reused (timestamps are on both sides),
    // so a connection-rate case never runs out of ephemeral ports.
    for (k, v) in [
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.ip_local_port_range", "1024 65000"),
    ] {
        let o = topo.run_peer_args(["sysctl", "-qw", &format!("{k}={v}")])?;
        if !o.status.success() {
            bail!(
                "sysctl {k} in the peer namespace: {}",
                netns::output_text(&o)
            );
        }
    }
    // The kernel peer's receive processing on the server core, like the engine's worker (without
    // RPS the kernel would do its protocol work on the load generator's core, for free).
    if !rps {
        return Ok(());
    }
    let mask = format!("{:x}", 1u32 << SERVER_CORE);
    let script = format!(
        "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
        topo.eng_if()
    );
    let o = topo.run_eng_args(["sh", "-c", &script])?;
    if !o.status.success() {
        bail!(
            "setting RPS on {}: {}",
            topo.eng_if(),
            netns::output_text(&o)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A server in the engine namespace; stopped (SIGTERM, then SIGKILL) on drop.
struct Server {
    name: &'static str,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn spawn(topo: &Topology, name: &'static str, argv: Vec<String>) -> Result<Server> {
        let mut child = topo
            .spawn_eng(&argv)
            .with_context(|| format!("starting {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut v = out.lock().expect("lines");
                    if v.len() < 2000 {
                        v.push(line);
                    }
                }
            });
        }
        Ok(Server {
            name,
            child: Some(child),
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits (bounded) until a printed line starts with `prefix`.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l.starts_with(prefix))
            {
                return Ok(());
            }
            self.exited()?;
            check_stop()?;
            if Instant::now() > end {
                bail!(
                    "{} printed no {prefix:?} line within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.output());
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(None) = c.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "{} did not stop within 5 s of SIGTERM: killing it",
                self.name
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts one side's servers (the daemon with `queues` queues, or the kernel peers).
fn start_side(env: &Env, side: Side, queues: u32) -> Result<Vec<Server>> {
    let core = SERVER_CORE.to_string();
    match side {
        Side::Engine => {
            let cores: Vec<String> = (0..queues as usize)
                .map(|q| (SERVER_CORE + q).to_string())
                .collect();
            let argv = vec![
                "env".into(),
                format!("HANDSHAKE_BPF_OBJECT={}", build::object_path().display()),
                env.daemon.display().to_string(),
                "run".into(),
                "--config".into(),
                env.engine_config.display().to_string(),
                "--iface".into(),
                env.topo.eng_if().into(),
                "--addr".into(),
                format!("{ENGINE_ADDR}/{}", netns::PREFIX_LEN),
                "--queues".into(),
                queues.to_string(),
                "--cores".into(),
                cores.join(","),
                "--echo".into(),
                "7".into(),
                "--http".into(),
                "80".into(),
                "--https".into(),
                "443".into(),
                "--cert".into(),
                env.cert.display().to_string(),
                "--key".into(),
                env.key.display().to_string(),
                "--root".into(),
                env.www.display().to_string(),
            ];
            let mut argv = argv;
            if env.busy_poll {
                argv.push("--busy-poll".into());
            }
            if let Some(us) = env.idle_spin_us {
                argv.push("--idle-spin-us".into());
                argv.push(us.to_string());
            }
            let mut d = Server::spawn(&env.topo, "the engine daemon", argv)?;
            d.wait_line("ready", Duration::from_secs(10))?;
            Ok(vec![d])
        }
        Side::Kernel => {
            let argv = vec![
                "taskset".into(),
                "-c".into(),
                core.clone(),
                env.peer_bin.display().to_string(),
                "serve".into(),
                "--addr".into(),
                KERNEL_ADDR.into(),
                "--echo".into(),
                "7".into(),
                "--http".into(),
                "80".into(),
                "--body".into(),
                env.body_file.display().to_string(),
                "--max-secs".into(),
                "900".into(),
            ];
            let mut s = Server::spawn(&env.topo, "sbs-peer serve", argv)?;
            s.wait_line("ready", Duration::from_secs(5))?;
            let _ = fs::remove_file(env.nginx_conf.with_file_name("nginx.pid"));
            let argv = vec![
                "taskset".into(),
                "-c".into(),
                core,
                "nginx".into(),
                "-c".into(),
                env.nginx_conf.display().to_string(),
                "-p".into(),
                env.nginx_conf.parent().expect("dir").display().to_string(),
            ];
            let mut n = Server::spawn(&env.topo, "nginx", argv)?;
            // Ready when it answers.
            let url = format!("https://{KERNEL_ADDR}/");
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                n.exited()?;
                check_stop()?;
                let o = env.topo.run_peer_args(curl_args(env, &url, true))?;
                if o.status.success() {
                    break;
                }
                if Instant::now() > end {
                    bail!(
                        "nginx does not answer {url} within 5 s:\n{}\n{}",
                        n.output(),
                        netns::output_text(&o)
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
            Ok(vec![s, n])
        }
    }
}

/// Runs a load generator in the peer namespace on the load core, killed after `timeout` or on
/// Ctrl-C. Returns stdout and stderr; fails if it failed.
fn load(env: &Env, argv: &[String], timeout: Duration) -> Result<String> {
    let mut full = vec!["taskset".to_owned(), "-c".into(), LOAD_CORE.to_string()];
    full.extend(argv.iter().cloned());
    let mut child = env.topo.spawn_peer(&full)?;
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stopped() || Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            check_stop()?;
            bail!(
                "`{}` did not finish within {timeout:?}: killed",
                full.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = format!(
        "{}{}",
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default()
    );
    // Every load generator's own words, for whoever wants to check the table.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let raw = env.dir.join("raw");
    let _ = fs::create_dir_all(&raw);
    let tool = Path::new(&argv[0])
        .file_name()
        .map_or("load".into(), |f| f.to_string_lossy().into_owned());
    let _ = fs::write(
        raw.join(format!("{n:03}-{tool}.txt")),
        format!("$ {}\n{text}", full.join(" ")),
    );
    if !status.success() {
        bail!("`{}` failed ({status}):\n{text}", full.join(" "));
    }
    Ok(text)
}

fn curl_args(env: &Env, url: &str, fail: bool) -> Vec<String> {
    let mut v = vec![
        "curl".to_owned(),
        "-s".into(),
        "--max-time".into(),
        "3".into(),
        "--cacert".into(),
        env.cert.display().to_string(),
        "-o".into(),
        "-".into(),
    ];
    if fail {
        v.push("--fail".into());
    }
    v.push(url.into());
    v
}

/// Runs `handshake load` (the engine's own client) as the load generator for `url`: it owns
/// 198.18.0.5 on the peer's veth for the measurement (its XDP program goes when it exits; the
/// peer kernel keeps 198.18.0.2), `clients` connections at a time for `secs` seconds, every body
/// compared with the file. Fails on any failed request or differing body.
fn engine_client_load(
    env: &Env,
    url: &str,
    extra: &[&str],
    clients: &str,
    secs: &str,
    limit: Duration,
) -> Result<parse::Load> {
    let body = env.body_file.display().to_string();
    let daemon = env.daemon.display().to_string();
    let mut argv = s(&[
        &daemon,
        "load",
        url,
        "--iface",
        env.topo.peer_if(),
        "--addr",
        ENGINE_CLIENT_ADDR,
        "--expect",
        &body,
        "--concurrency",
        clients,
        "--count",
        "100000000",
        "--duration",
        secs,
        "--timeout",
        "5",
    ]);
    argv.extend(s(extra));
    let out = load(env, &argv, limit)?;
    let l = parse::handshake_load(&out)?;
    if l.failed > 0.0 || l.differ > 0.0 || l.ok == 0.0 {
        bail!("handshake load {url}: {out}");
    }
    Ok(l)
}

fn addr(side: Side) -> &'static str {
    match side {
        Side::Engine => ENGINE_ADDR,
        Side::Kernel => KERNEL_ADDR,
    }
}

/// Checks once per case and side that the side serves the page byte for byte (HTTP, HTTPS),
/// answers (ICMP, ARP), or echoes (TCP: the clients check every byte of every run).
fn verify(env: &Env, side: Side, case: Case) -> Result<String> {
    let a = addr(side);
    match case {
        Case::HttpKa
        | Case::HttpConnEngineClient
        | Case::HttpsKa
        | Case::HttpsFull
        | Case::HttpsResumed
        | Case::HttpsResumedEngineClient => {
            let url = if matches!(case, Case::HttpKa | Case::HttpConnEngineClient) {
                format!("http://{a}/")
            } else {
                format!("https://{a}/")
            };
            let o = env.topo.run_peer_args(curl_args(env, &url, true))?;
            if !o.status.success() {
                bail!("curl {url} failed: {}", netns::output_text(&o));
            }
            if o.stdout != env.body {
                bail!(
                    "{url} served {} bytes that are not the {} bytes of {}",
                    o.stdout.len(),
                    env.body.len(),
                    env.body_file.display()
                );
            }
            Ok(format!(
                "{side:?}: GET {url} = the {} bytes of index.html",
                env.body.len()
            ))
        }
        Case::Icmp => {
            // A pattern in the payload: ping reports any reply whose data differs.
            let o = env.topo.run_peer_args([
                "ping", "-c", "3", "-i", "0.05", "-W", "2", "-p", "68616e64", a,
            ])?;
            let text = netns::output_text(&o);
            if !o.status.success() || text.contains("wrong data") {
                bail!("ping {a}: {text}");
            }
            Ok(format!(
                "{side:?}: 3 pings with a pattern, replies identical"
            ))
        }
        Case::Arp => {
            let text = arp(env, a, 20, 5.0, 1.0)?;
            let kv = parse::key_values(&text)?;
            if kv.get("received").copied().unwrap_or(0.0) < 20.0 {
                bail!("ARP for {a}: {text}");
            }
            Ok(format!("{side:?}: 20 ARP requests, 20 replies for {a}"))
        }
        Case::TcpConn | Case::Bulk => {
            Ok(format!("{side:?}: every echoed byte checked by the client"))
        }
    }
}

/// The ARP sender (Python, AF_PACKET): `count` requests at most, 16 in flight, `secs` at most,
/// waiting up to `wait` seconds for a reply; prints `sent= received= secs=`.
fn arp(env: &Env, target: &str, count: u64, secs: f64, wait: f64) -> Result<String> {
    const SCRIPT: &str = r#"
import socket, struct, sys, time
iface, src, dst, count, secs, window, wait = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0))
mac = s.getsockname()[4]
dstip = socket.inet_aton(dst)
frame = b'\xff' * 6 + mac + b'\x08\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton(src) + b'\x00' * 6 + dstip
frame += b'\x00' * (60 - len(frame))
s.settimeout(wait)
sent = received = 0
t0 = time.monotonic()
end = t0 + secs
while sent < count and time.monotonic() < end:
    n = min(window, count - sent)
    for _ in range(n):
        s.send(frame)
    sent += n
    got = 0
    while got < n:
        try:
            p = s.recv(128)
        except socket.timeout:
            break
        if p[12:14] == b'\x08\x06' and p[20:22] == b'\x00\x02' and p[28:32] == dstip:
            got += 1
    received += got
print("sent=%d received=%d secs=%.4f" % (sent, received, time.monotonic() - t0))
"#;
    let argv: Vec<String> = [
        netns::PYTHON,
        "-c",
        SCRIPT,
        env.topo.peer_if(),
        netns::PEER_ADDR,
        target,
        &count.to_string(),
        &secs.to_string(),
        "16",
        &wait.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    load(env, &argv, Duration::from_secs_f64(secs) + SLACK)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One measurement of one case on one side: (metric, value) pairs.
fn measure(env: &Env, side: Side, case: Case) -> Result<Vec<(&'static str, f64)>> {
    let a = addr(side);
    let secs = env.secs;
    let secs_s = format!("{secs}");
    let limit = Duration::from_secs_f64(secs) + SLACK;
    let peer = env.peer_bin.display().to_string();
    let clients = env.clients.to_string();
    match case {
        Case::Icmp => {
            let deadline = (secs.ceil() as u64).max(1).to_string();
            let out = load(
                env,
                &s(&[
                    "ping", "-f", "-q", "-l", "32", "-c", "5000000", "-w", &deadline, a,
                ]),
                limit,
            )
            .or_else(|e| {
                // ping exits 1 when a reply is missing; its summary still says how many.
                let text = format!("{e:#}");
                if text.contains("packets transmitted") {
                    Ok(text)
                } else {
                    Err(e)
                }
            })?;
            let p = parse::ping(&out)?;
            if p.received as f64 <= 0.99 * p.transmitted as f64 {
                bail!(
                    "ping {a}: {} of {} replies:\n{out}",
                    p.received,
                    p.transmitted
                );
            }
            Ok(vec![(
                "icmp_echo",
                p.received as f64 / (p.time_ms / 1000.0),
            )])
        }
        Case::Arp => {
            let out = arp(env, a, 10_000_000, secs, 0.2)?;
            let kv = parse::key_values(&out)?;
            let (sent, got, el) = (kv["sent"], kv["received"], kv["secs"]);
            if got < 0.99 * sent {
                bail!("ARP {a}: {got} replies to {sent} requests");
            }
            Ok(vec![("arp", got / el)])
        }
        Case::TcpConn => {
            let out = load(
                env,
                &s(&[
                    &peer,
                    "tcp-rr",
                    "--addr",
                    &format!("{a}:7"),
                    "--threads",
                    &clients,
                    "--secs",
                    &secs_s,
                ]),
                limit,
            )?;
            let kv = parse::key_values(&out)?;
            if kv["errors"] > 0.0 {
                bail!("TCP connections to {a}:7 failed or echoed wrong bytes: {out}");
            }
            Ok(vec![("tcp_conn", kv["ops"] / kv["secs"])])
        }
        Case::HttpKa | Case::HttpsKa => {
            let url = if case == Case::HttpKa {
                format!("http://{a}/")
            } else {
                format!("https://{a}/")
            };
            // wrk takes whole seconds.
            let dur = format!("{}s", secs.ceil() as u64);
            let out = load(
                env,
                &s(&[
                    "wrk",
                    "-t1",
                    "-c",
                    WRK_CONNECTIONS,
                    "-d",
                    &dur,
                    "--timeout",
                    "2s",
                    "--latency",
                    &url,
                ]),
                limit,
            )?;
            let w = parse::wrk(&out)?;
            if w.socket_errors > 0 || w.non_2xx > 0 || w.requests == 0 {
                bail!(
                    "wrk {url}: {} socket errors, {} non-2xx of {} requests:\n{out}",
                    w.socket_errors,
                    w.non_2xx,
                    w.requests
                );
            }
            if case == Case::HttpKa {
                Ok(vec![
                    ("http_keepalive", w.requests_per_sec),
                    ("http_p50", w.p50_us.context("wrk printed no 50% latency")?),
                    ("http_p99", w.p99_us.context("wrk printed no 99% latency")?),
                ])
            } else {
                Ok(vec![("https_keepalive", w.requests_per_sec)])
            }
        }
        Case::HttpsFull | Case::HttpsResumed => {
            let resume = case == Case::HttpsResumed;
            let cert = env.cert.display().to_string();
            let body = env.body_file.display().to_string();
            let target = format!("{a}:443");
            let mut argv = s(&[
                &peer,
                "tls-conn",
                "--addr",
                &target,
                "--cacert",
                &cert,
                "--name",
                CERT_NAME,
                "--body",
                &body,
                "--threads",
                &clients,
                "--secs",
                &secs_s,
            ]);
            if resume {
                argv.push("--resume".into());
            }
            let out = load(env, &argv, limit)?;
            let kv = parse::key_values(&out)?;
            let (ops, resumed) = (kv["ops"], kv["resumed"]);
            if kv["errors"] > 0.0 || ops == 0.0 {
                bail!("HTTPS connections to {target}: {out}");
            }
            if resume && resumed < 0.9 * ops {
                bail!("only {resumed} of {ops} HTTPS connections to {target} resumed");
            }
            if !resume && resumed > 0.0 {
                bail!("{resumed} HTTPS connections to {target} resumed although the client had no session");
            }
            Ok(vec![(case_key(case), ops / kv["secs"])])
        }
        Case::HttpConnEngineClient => {
            // One GET per connection (no --keep-alive).
            let l =
                engine_client_load(env, &format!("http://{a}/"), &[], &clients, &secs_s, limit)?;
            if l.connections < l.ok {
                bail!(
                    "{} requests over {} connections to {a}: not one connection per request",
                    l.ok,
                    l.connections
                );
            }
            Ok(vec![(case_key(case), l.rate)])
        }
        Case::HttpsResumedEngineClient => {
            let cert = env.cert.display().to_string();
            let resolve = format!("{CERT_NAME}:{a}");
            let url = format!("https://{CERT_NAME}/");
            let extra = ["--resolve", &resolve, "--cacert", &cert];
            let l = engine_client_load(env, &url, &extra, &clients, &secs_s, limit)?;
            if l.resumed < 0.9 * l.connections {
                bail!(
                    "only {} of {} connections to {a} resumed",
                    l.resumed,
                    l.connections
                );
            }
            Ok(vec![(case_key(case), l.rate)])
        }
        Case::Bulk => {
            let out = load(
                env,
                &s(&[
                    &peer,
                    "bulk",
                    "--addr",
                    &format!("{a}:7"),
                    "--bytes",
                    &(8u64 << 30).to_string(),
                    "--secs",
                    &secs_s,
                ]),
                limit,
            )?;
            let kv = parse::key_values(&out)?;
            if kv["errors"] > 0.0 || kv["ops"] == 0.0 {
                bail!("bulk echo through {a}:7 lost or changed bytes: {out}");
            }
            Ok(vec![("bulk", kv["gbits"])])
        }
    }
}

/// A profile of the engine's worker thread under HTTP keep-alive load (an extra engine run,
/// not in the table): `perf record -g -t TID`, then the flat top of `perf report`.
fn perf_profile(env: &Env) -> Result<Profile> {
    util::heading("profile: perf record of the engine worker during HTTP keep-alive");
    let servers = start_side(env, Side::Engine, 1)?;
    let pid = servers[0].pid();
    let tid = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok())
        .find(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "hs-q0"))
        .and_then(|e| e.file_name().to_str().map(str::to_owned))
        .context("no thread hs-q0 in the daemon")?;
    let data = env.dir.join("perf-http.data");
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-q", "-g", "-t", &tid, "-o"])
        .arg(&data)
        .args(["--", "sleep", &format!("{}", env.secs)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting perf (linux-perf)")?;
    let cpu_before = cpu_times();
    let worker_before = thread_ticks(pid, &tid);
    let wall = Instant::now();
    let url = format!("http://{ENGINE_ADDR}/");
    let dur = format!("{}s", env.secs.ceil() as u64 + 1);
    let out = load(
        env,
        &s(&[
            "wrk",
            "-t1",
            "-c",
            WRK_CONNECTIONS,
            "-d",
            &dur,
            "--latency",
            &url,
        ]),
        Duration::from_secs_f64(env.secs) + SLACK,
    )?;
    let end = Instant::now() + SLACK;
    while perf.try_wait()?.is_none() {
        if Instant::now() > end || stopped() {
            let _ = perf.kill();
            bail!("perf record did not finish");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu_after = cpu_times();
    let worker_busy_pct =
        thread_ticks(pid, &tid).saturating_sub(worker_before) as f64 / TICKS_PER_SEC / wall * 100.0;
    let core = |c: usize| -> (f64, f64) {
        match (cpu_before.get(c), cpu_after.get(c)) {
            (Some(b), Some(a)) => a.busy_steal_pct(b),
            _ => (f64::NAN, f64::NAN),
        }
    };
    let (server_core_busy_pct, server_core_steal_pct) = core(SERVER_CORE);
    let (load_core_busy_pct, load_core_steal_pct) = core(LOAD_CORE);
    drop(servers);
    let w = parse::wrk(&out)?;
    let report = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            "0.7",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("perf report")?;
    let text = String::from_utf8_lossy(&report.stdout).into_owned();
    let by_dso = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "dso",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("perf report")?;
    let by_dso: Vec<String> = String::from_utf8_lossy(&by_dso.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(6)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let file = env.dir.join("perf-http.txt");
    fs::write(&file, &text)?;
    let top: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(25)
        .map(|l| l.trim().trim_end_matches(['-', ' ']).to_owned())
        .collect();
    Ok(Profile {
        file: file.display().to_string(),
        requests_per_sec: w.requests_per_sec,
        worker_busy_pct,
        server_core_busy_pct,
        server_core_steal_pct,
        load_core_busy_pct,
        load_core_steal_pct,
        by_dso,
        top,
    })
}

/// USER_HZ: /proc's clock ticks (100 on every Linux architecture that matters here).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of one thread, in ticks.
fn thread_ticks(pid: u32, tid: &str) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return 0;
    };
    // After the ")" closing the command name: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
}

/// One core's /proc/stat counters.
struct CpuTimes {
    total: u64,
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    /// (busy %, steal %) between `before` and `self`.
    fn busy_steal_pct(&self, before: &CpuTimes) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        (
            100.0 * (total - idle - steal) / total,
            100.0 * steal / total,
        )
    }
}

/// Per-core counters (`cpu0`, `cpu1`, … of /proc/stat), by core number.
fn cpu_times() -> Vec<CpuTimes> {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            // user nice system idle iowait irq softirq steal guest guest_nice
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let get = |i: usize| f.get(i).copied().unwrap_or(0);
            CpuTimes {
                // guest time is already inside user.
                total: (0..8).map(get).sum(),
                idle: get(3) + get(4),
                steal: get(7),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Serialize, Clone)]
struct Profile {
    file: String,
    requests_per_sec: f64,
    /// The worker thread's CPU time over the wall time of the load (user + system), %.
    worker_busy_pct: f64,
    /// Whole cores, from /proc/stat over the same interval (busy excludes steal), %.
    server_core_busy_pct: f64,
    server_core_steal_pct: f64,
    load_core_busy_pct: f64,
    load_core_steal_pct: f64,
    /// Samples by binary (kernel, handshake, libc).
    by_dso: Vec<String>,
    top: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    command: String,
    rounds: u32,
    secs_per_measurement: f64,
    server_core: usize,
    /// Whether the kernel's receive processing was steered to the server core.
    kernel_rps: bool,
    /// Threads of the TCP and TLS connection clients.
    connection_clients: u32,
    /// Whether the engine ran with --busy-poll.
    engine_busy_poll: bool,
    /// The engine's --idle-spin-us, when given.
    engine_idle_spin_us: Option<u64>,
    load_core: usize,
    machine: String,
    loadavg_start: String,
    loadavg_end: String,
    elapsed_secs: f64,
    cut_short: bool,
    notes: Vec<String>,
    profile: Option<Profile>,
    cases: Vec<CaseSummary>,
}

#[derive(Serialize, Clone)]
struct CaseSummary {
    case: String,
    label: String,
    unit: String,
    higher_better: bool,
    /// Medians over the rounds.
    engine: f64,
    peer_name: String,
    peer: f64,
    /// engine / peer (for latency: below 1 is better).
    ratio: f64,
    engine_min: f64,
    engine_max: f64,
    peer_min: f64,
    peer_max: f64,
    engine_stddev_pct: f64,
    peer_stddev_pct: f64,
    /// "min–max" of each side, as printed.
    spread: String,
    engine_rounds: Vec<f64>,
    peer_rounds: Vec<f64>,
    same_bytes: bool,
    verified: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn stddev_pct(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    100.0 * var.sqrt() / mean
}

fn summarize(
    samples: &BTreeMap<(&'static str, bool), Vec<f64>>,
    verified: &BTreeMap<&'static str, Vec<String>>,
    _rounds: u32,
) -> Vec<CaseSummary> {
    let case_of = |key: &str| -> &'static str {
        match key {
            "http_p50" | "http_p99" => "http_keepalive",
            k => METRICS.iter().find(|m| m.key == k).map_or("", |m| m.key),
        }
    };
    METRICS
        .iter()
        .filter_map(|m| {
            let e = samples.get(&(m.key, true))?;
            let p = samples.get(&(m.key, false))?;
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (em, pm) = (median(e), median(p));
            let v = verified.get(case_of(m.key)).cloned().unwrap_or_default();
            Some(CaseSummary {
                case: m.key.into(),
                label: m.label.into(),
                unit: m.unit.into(),
                higher_better: m.higher_better,
                engine: em,
                peer_name: m.peer.into(),
                peer: pm,
                ratio: em / pm,
                engine_min: min(e),
                engine_max: max(e),
                peer_min: min(p),
                peer_max: max(p),
                engine_stddev_pct: stddev_pct(e),
                peer_stddev_pct: stddev_pct(p),
                spread: format!(
                    "{}–{} / {}–{}",
                    fmt(min(e)),
                    fmt(max(e)),
                    fmt(min(p)),
                    fmt(max(p))
                ),
                engine_rounds: e.clone(),
                peer_rounds: p.clone(),
                // Both sides verified (two entries) in the first round.
                same_bytes: v.len() == 2,
                verified: v,
            })
        })
        .collect()
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v >= 100.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(cases: &[CaseSummary]) {
    util::heading("side by side (medians of the rounds; spread: min–max engine / peer, ±stddev%)");
    println!(
        "{:<34} {:>12}  {:<25} {:>12}  {:<9} {:>6}  spread",
        "case", "engine", "peer", "peer value", "unit", "ratio"
    );
    for c in cases {
        println!(
            "{:<34} {:>12}  {:<25} {:>12}  {:<9} {:>5.2}×  {} (±{:.1}% / ±{:.1}%){}",
            c.label,
            fmt(c.engine),
            c.peer_name,
            fmt(c.peer),
            c.unit,
            c.ratio,
            c.spread,
            c.engine_stddev_pct,
            c.peer_stddev_pct,
            if c.higher_better {
                ""
            } else {
                "  (lower is better)"
            }
        );
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} × {cpu}, Linux {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_its_size_and_never_changes() {
        assert_eq!(page().len(), BODY_BYTES);
        assert_eq!(page(), page());
    }

    #[test]
    fn summaries_take_medians_and_spreads() {
        let mut samples = BTreeMap::new();
        samples.insert(("tcp_conn", true), vec![30.0, 10.0, 20.0]);
        samples.insert(("tcp_conn", false), vec![10.0, 10.0]);
        let mut verified = BTreeMap::new();
        verified.insert(
            "tcp_conn",
            vec!["Engine: x".to_owned(), "Kernel: y".to_owned()],
        );
        let s = summarize(&samples, &verified, 3);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].engine, 20.0);
        assert_eq!(s[0].peer, 10.0);
        assert_eq!(s[0].ratio, 2.0);
        assert_eq!((s[0].engine_min, s[0].engine_max), (10.0, 30.0));
        assert!((s[0].engine_stddev_pct - 50.0).abs() < 1e-9);
        assert!(s[0].same_bytes);
        assert_eq!(fmt(1234567.4), "1,234,567");
        assert_eq!(fmt(7.254), "7.25");
    }
}
