//! `handshake`: the daemon and its tools.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use handshake::config::{Config, XdpMode};
use handshake::ipv4::Ipv4Cidr;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// A kernel-bypass TCP/TLS engine on AF_XDP.
#[derive(Parser, Debug)]
#[command(name = "handshake", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve an interface: attach the XDP program, open one AF_XDP socket per queue, run the
    /// stack on pinned workers until SIGINT/SIGTERM (SIGUSR1 toggles the --pcap capture, SIGHUP
    /// reloads the certificates). Exits with status 75 when the interface is deleted and
    /// created again (its supervisor restarts it on the new one).
    Run(Box<RunArgs>),
    /// Render a trace recorded with `handshake run --trace`: the story of each connection.
    Trace {
        /// The JSON-lines file `--trace-file` wrote.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// mermaid (a sequenceDiagram per connection), text (a timeline) or json (JSON lines).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// A live view of a running daemon's counters (rates per second, per queue, totals), read
    /// from its metrics endpoint. Run it in the daemon's network namespace
    /// (`ip netns exec NS handshake stats`).
    Stats(StatsArgs),
    /// The browser's side of the story: resolve the URL's host (--dns, or an address), open a
    /// TCP connection from --addr through the routing decision (on-link or --gateway) and ARP,
    /// run TLS for https (verified against --cacert or the system roots), send GET, print the
    /// body. Exit status: 0 ok, 6 DNS, 7 connect, 22 HTTP >= 400 with --fail, 28 timeout,
    /// 35 TLS, 56 bad or cut response, 60 certificate refused, 2 setup.
    Get(Box<GetCli>),
    /// A load generator on the engine: --count requests to the URL over --concurrency
    /// connections at a time (--keep-alive N requests each, or --rate new connections per
    /// second), TLS sessions resumed; prints rates and latency percentiles.
    Load(Box<GetCli>),
    /// Configuration file tools.
    Config {
        /// Validate FILE and report the first error with its line.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
        /// Print a configuration file documenting every key with its default.
        #[arg(long)]
        example: bool,
    },
}

/// Flags of `handshake run`; each overrides the same key of the configuration file.
#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Configuration file (TOML); flags override its keys.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Interface to serve.
    #[arg(long, value_name = "IF")]
    iface: Option<String>,
    /// Address the engine owns, with prefix (repeatable).
    #[arg(long, value_name = "A.B.C.D/P")]
    addr: Vec<Ipv4Cidr>,
    /// Default gateway for destinations off our subnets.
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// Queues (and workers) to serve, from queue 0.
    #[arg(long, value_name = "N")]
    queues: Option<u32>,
    /// Cores for the workers, one per queue in order (e.g. 0,1).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cores: Vec<usize>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    mode: Option<XdpMode>,
    /// Spin on the rings instead of sleeping in poll(2).
    #[arg(long)]
    busy_poll: bool,
    /// Keep polling the rings this many microseconds after the last work before sleeping in
    /// poll(2) (0: sleep at once; default 50).
    #[arg(long, value_name = "US")]
    idle_spin_us: Option<u64>,
    /// eBPF object to load (default: next to the executable, see the README).
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,
    /// TCP congestion control [default: cubic; bbr for lossy paths].
    #[arg(long, value_enum)]
    congestion: Option<handshake::tcp::Congestion>,
    /// TCP echo service on PORT.
    #[arg(long, value_name = "PORT")]
    echo: Option<u16>,
    /// Plain HTTP/1.1 service on PORT.
    #[arg(long, value_name = "PORT")]
    http: Option<u16>,
    /// HTTPS (TLS 1.3 and 1.2, HTTP/1.1) on PORT; needs --cert and --key.
    #[arg(long, value_name = "PORT")]
    https: Option<u16>,
    /// PEM certificate chain for HTTPS (repeat with --key for several names, chosen by SNI).
    #[arg(long, value_name = "PEM")]
    cert: Vec<PathBuf>,
    /// PEM private key of the preceding --cert (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "PEM")]
    key: Vec<PathBuf>,
    /// Serve the files under DIR (HTTP and HTTPS) instead of the built-in page.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// TLS pool threads (0: TLS runs inline on the packet cores).
    #[arg(long, value_name = "N")]
    tls_threads: Option<usize>,
    /// Seconds between stats lines in the log (0: never).
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Record the story of matching connections: `all`, `port N`, `host A.B.C.D`, joined by `and`.
    #[arg(long, value_name = "FILTER")]
    trace: Option<String>,
    /// Most connections to trace (all queues together).
    #[arg(long, value_name = "N")]
    trace_limit: Option<usize>,
    /// Where the trace goes (JSON lines; render with `handshake trace FILE`).
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,
    /// Prometheus metrics endpoint (GET /metrics) on this address inside the daemon's network
    /// namespace, or `off` [default: 127.0.0.1:9900].
    #[arg(long, value_name = "IP:PORT|off")]
    metrics: Option<String>,
    /// Capture what the engine receives and sends to FILE (pcapng); SIGUSR1 toggles capture
    /// off and on.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Capture only matching frames: `[not] [src|dst] host A`, `[not] [src|dst] port N`, `tcp`,
    /// `udp`, `icmp`, `arp`, `ip`, joined by `and` / `or` (e.g. 'port 443 and host 198.18.0.2').
    #[arg(long, value_name = "FILTER")]
    pcap_filter: Option<String>,
    /// Rotate the capture file at this size (FILE, FILE.1, …; 0: never) [default: 100].
    #[arg(long, value_name = "MB")]
    pcap_max_mb: Option<f64>,
    /// Capture files kept, FILE included [default: 4].
    #[arg(long, value_name = "N")]
    pcap_files: Option<u32>,
    /// Start with capture paused (SIGUSR1 turns it on).
    #[arg(long)]
    pcap_paused: bool,
}

/// Flags of `handshake get` and `handshake load`.
#[derive(Args, Debug)]
struct GetCli {
    /// http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH.
    #[arg(value_name = "URL")]
    url: String,
    /// Interface to use (in this network namespace).
    #[arg(long, value_name = "IF")]
    iface: String,
    /// The engine's address with prefix (not configured on the kernel's side of IF).
    #[arg(long, value_name = "A.B.C.D/P")]
    addr: Ipv4Cidr,
    /// Default gateway for destinations off --addr's subnet.
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// DNS server (repeatable; tried in turn).
    #[arg(long, value_name = "IP")]
    dns: Vec<Ipv4Addr>,
    /// A static entry NAME:ADDR, like /etc/hosts (repeatable; before DNS).
    #[arg(long, value_name = "NAME:ADDR")]
    resolve: Vec<String>,
    /// CA certificates (PEM) to verify the server with [default: the system roots].
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// Print the response head before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// Send HEAD instead of GET.
    #[arg(short = 'I', long)]
    head: bool,
    /// Exit with status 22 when the response status is 400 or above.
    #[arg(short = 'f', long)]
    fail: bool,
    /// Print the story of the request (DNS, ARP, TCP, TLS, close) to standard error: text,
    /// mermaid or json.
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text")]
    trace: Option<String>,
    /// Seconds each request may take, DNS to the last byte.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Requests to make (each on a new connection, TLS sessions resumed); later bodies are
    /// compared with the first.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Connections open at once (closed loop: the next starts when one ends).
    #[arg(long, value_name = "N", default_value_t = 1)]
    concurrency: u64,
    /// Requests per connection, one after another (HTTP keep-alive).
    #[arg(long, value_name = "N", default_value_t = 1)]
    keep_alive: u64,
    /// Open loop: new connections per second whatever the answers (at most --concurrency
    /// open; those due beyond it are counted as late and skipped).
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    rate: f64,
    /// Stop starting connections after SECS (those open finish); --count still bounds them.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Every response body must equal FILE's bytes (a difference counts and fails the run; no
    /// body is printed).
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    mode: Option<XdpMode>,
    /// eBPF object to load (default: next to the executable).
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,
    /// RX queue of IF to bind.
    #[arg(long, value_name = "Q", default_value_t = 0)]
    queue: u32,
}

/// Flags of `handshake stats`.
#[derive(Args, Debug)]
struct StatsArgs {
    /// The daemon's metrics endpoint (its `--metrics`).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9900")]
    addr: std::net::SocketAddr,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    interval: f64,
    /// Print one table of totals and exit (for scripts).
    #[arg(long)]
    once: bool,
}

fn stats(a: StatsArgs) -> anyhow::Result<()> {
    use handshake::metrics::{parse, server, view};
    use std::time::{Duration, Instant};
    let hint = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot read metrics from {}: {e}: is `handshake run` running with --metrics {} (the default), \
             and is this command in its network namespace (`ip netns exec NS handshake stats`)?",
            a.addr,
            a.addr
        )
    };
    let scrape = || -> anyhow::Result<parse::Scrape> {
        let text = server::fetch(a.addr, Duration::from_secs(2)).map_err(hint)?;
        Ok(parse::parse(&text)?)
    };
    if a.once {
        print!("{}", view::totals(&scrape()?));
        return Ok(());
    }
    if !(a.interval.is_finite() && a.interval >= 0.1) {
        anyhow::bail!("--interval {}: give at least 0.1 seconds", a.interval);
    }
    let interval = Duration::from_secs_f64(a.interval);
    let mut prev = scrape()?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(interval);
        let cur = match scrape() {
            Ok(c) => c,
            Err(e) => {
                print!("\x1b[2J\x1b[H{e:#}\n(retrying)\n");
                continue;
            }
        };
        let now = Instant::now();
        print!(
            "\x1b[2J\x1b[Hhandshake stats: {} every {:.1} s (Ctrl-C to quit)\n\n{}",
            a.addr,
            a.interval,
            view::rates(&prev, &cur, now - at)
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        prev = cur;
        at = now;
    }
}

impl RunArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.iface {
            c.iface = v;
        }
        if !self.addr.is_empty() {
            c.addr = self.addr;
        }
        if self.gateway.is_some() {
            c.gateway = self.gateway;
        }
        if let Some(v) = self.queues {
            c.queues = v;
        }
        if !self.cores.is_empty() {
            c.cores = self.cores;
        }
        if let Some(v) = self.mode {
            c.mode = v;
        }
        c.busy_poll |= self.busy_poll;
        if let Some(v) = self.idle_spin_us {
            c.idle_spin_us = v;
        }
        if self.bpf_object.is_some() {
            c.bpf_object = self.bpf_object;
        }
        if let Some(v) = self.congestion {
            c.tcp.congestion = v;
        }
        if self.echo.is_some() {
            c.echo = self.echo;
        }
        if self.http.is_some() {
            c.http = self.http;
        }
        if let Some(v) = self.stats_interval {
            c.stats_interval_secs = v;
        }
        if self.https.is_some() {
            c.https = self.https;
        }
        if self.cert.len() != self.key.len() {
            anyhow::bail!(
                "{} --cert but {} --key: give one --key after each --cert",
                self.cert.len(),
                self.key.len()
            );
        }
        if !self.cert.is_empty() {
            c.tls.certs = self
                .cert
                .into_iter()
                .zip(self.key)
                .map(|(cert, key)| handshake::tls::CertFiles { cert, key })
                .collect();
        }
        if self.root.is_some() {
            c.root = self.root;
        }
        if let Some(n) = self.tls_threads {
            c.tls.threads = n;
        }
        if self.trace.is_some() {
            c.trace.filter = self.trace;
        }
        if let Some(n) = self.trace_limit {
            c.trace.limit = n;
        }
        if let Some(f) = self.trace_file {
            c.trace.file = f;
        }
        if let Some(m) = self.metrics {
            c.metrics.listen = m;
        }
        if self.pcap.is_some() {
            c.capture.file = self.pcap;
        }
        if let Some(f) = self.pcap_filter {
            c.capture.filter = f;
        }
        if let Some(m) = self.pcap_max_mb {
            c.capture.max_mb = m;
        }
        if let Some(n) = self.pcap_files {
            c.capture.files = n;
        }
        c.capture.paused |= self.pcap_paused;
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            let cfg = (*args).into_config()?;
            match run(cfg) {
                Err(e)
                    if e.downcast_ref::<handshake::daemon::InterfaceReplaced>()
                        .is_some() =>
                {
                    eprintln!("Error: {e:#}");
                    std::process::exit(handshake::daemon::EXIT_INTERFACE_REPLACED)
                }
                r => r,
            }
        }
        Cmd::Get(a) => client(*a, false),
        Cmd::Load(a) => client(*a, true),
        Cmd::Trace { file, format } => render_trace(&file, &format),
        Cmd::Stats(a) => stats(a),
        Cmd::Config { check, example } => {
            if example {
                print!("{}", handshake::config::EXAMPLE);
                return Ok(());
            }
            let Some(path) = check else {
                anyhow::bail!(
                    "nothing to do: use `handshake config --check FILE` or `handshake config --example`"
                );
            };
            let cfg = Config::from_file(&path)?;
            cfg.validate()
                .with_context(|| format!("{} parses but is not usable", path.display()))?;
            println!("{}: ok", path.display());
            Ok(())
        }
    }
}

#[cfg(feature = "trace")]
fn render_trace(file: &std::path::Path, format: &str) -> anyhow::Result<()> {
    use handshake::trace::render;
    let format: render::Format = format.parse().map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the trace {}", file.display()))?;
    let events = render::parse_json_lines(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}: is it a file `handshake run --trace-file` wrote?",
            file.display()
        )
    })?;
    if events.is_empty() {
        anyhow::bail!(
            "{} holds no events: did a connection match the --trace filter?",
            file.display()
        );
    }
    print!("{}", render::render(&events, format));
    Ok(())
}

#[cfg(not(feature = "trace"))]
fn render_trace(_: &std::path::Path, _: &str) -> anyhow::Result<()> {
    anyhow::bail!("this build has no trace support: build with the `trace` feature (on by default)")
}

#[cfg(all(feature = "xdp", feature = "trace"))]
fn client(a: GetCli, load: bool) -> anyhow::Result<()> {
    use handshake::client::run::{exit, get, GetArgs};
    let url: handshake::client::Url = match a.url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(exit::SETUP)
        }
    };
    let mut hosts = Vec::new();
    for r in &a.resolve {
        let parsed = r
            .rsplit_once(':')
            .and_then(|(n, ip)| Some((n.to_ascii_lowercase(), ip.parse::<Ipv4Addr>().ok()?)));
        match parsed {
            Some(h) => hosts.push(h),
            None => anyhow::bail!("--resolve {r}: write NAME:A.B.C.D"),
        }
    }
    let trace = match &a.trace {
        Some(f) => Some(f.parse().map_err(anyhow::Error::msg)?),
        None => None,
    };
    if !(a.timeout > 0.0 && a.timeout < 86_400.0) {
        anyhow::bail!("--timeout {}: give seconds between 0 and 86400", a.timeout);
    }
    let args = GetArgs {
        url,
        iface: a.iface,
        addr: a.addr,
        gateway: a.gateway,
        dns: a.dns,
        hosts,
        cacert: a.cacert,
        include: a.include,
        head: a.head,
        fail: a.fail,
        trace,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        count: a.count.max(1),
        concurrency: a.concurrency.max(1),
        per_conn: a.keep_alive.max(1),
        rate: if a.rate.is_finite() {
            a.rate.max(0.0)
        } else {
            0.0
        },
        duration: match a.duration {
            Some(d) if d > 0.0 && d < 86_400.0 => Some(std::time::Duration::from_secs_f64(d)),
            Some(d) => anyhow::bail!("--duration {d}: give seconds between 0 and 86400"),
            None => None,
        },
        expect: match &a.expect {
            Some(p) => Some(
                std::fs::read(p).with_context(|| format!("reading --expect {}", p.display()))?,
            ),
            None => None,
        },
        quiet: load,
        bpf_object: a.bpf_object,
        mode: match a.mode.unwrap_or(XdpMode::Auto) {
            XdpMode::Auto => handshake::loader::AttachMode::Auto,
            XdpMode::Native => handshake::loader::AttachMode::Native,
            XdpMode::Skb => handshake::loader::AttachMode::Skb,
        },
        queue: a.queue,
    };
    match get(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(exit::SETUP)
        }
    }
}

#[cfg(not(all(feature = "xdp", feature = "trace")))]
fn client(_: GetCli, _: bool) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build of handshake has no AF_XDP support: build it with `cargo xtask build` \
         (or `cargo build --release -p handshake --features xdp`)"
    )
}

#[cfg(feature = "xdp")]
fn run(cfg: Config) -> anyhow::Result<()> {
    handshake::daemon::run(cfg)
}

#[cfg(not(feature = "xdp"))]
fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    anyhow::bail!(
        "this build of handshake has no AF_XDP support: build it with `cargo xtask build` \
         (or `cargo build --release -p handshake --features xdp`)"
    )
}
