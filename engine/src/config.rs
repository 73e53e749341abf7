//! The daemon's configuration: a TOML file whose every key can also be given as a flag.
//!
//! Precedence: built-in defaults < the file given with `--config` < command-line flags.

use crate::arp::ArpConfig;
use crate::ipv4::{IcmpConfig, Ipv4Cidr, Routes};
use crate::tcp::TcpConfig;
use crate::tls::TlsConfig;
use crate::xsk::XskConfig;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How to attach the XDP program.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (SKB) mode with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode only.
    Skb,
}

/// Everything the daemon needs to run.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Interface to serve (`--iface`).
    pub iface: String,
    /// Addresses the engine owns, with their prefix (`--addr 198.18.0.1/24`, repeatable).
    pub addr: Vec<Ipv4Cidr>,
    /// Default gateway for destinations off our subnets (`--gateway`).
    pub gateway: Option<Ipv4Addr>,
    /// Number of queues (and workers) to serve, from queue 0 (`--queues`).
    pub queues: u32,
    /// Cores to pin the workers to, one per queue in order (`--cores 0,1`); default: core `q`
    /// for queue `q`, modulo the number of cores.
    pub cores: Vec<usize>,
    /// XDP attach mode (`--mode auto|native|skb`).
    pub mode: XdpMode,
    /// Spin on the rings instead of sleeping in poll(2) (`--busy-poll`).
    pub busy_poll: bool,
    /// Microseconds a worker keeps polling its rings after its last work before it sleeps in
    /// poll(2) (`--idle-spin-us`; 0: sleep at once; default 50). A frame arriving within the
    /// spin is served without the sleep and the wake-up: measured side by side on the 2-core
    /// VM, 50 µs raised ICMP and ARP replies/s by about 30%, HTTP connections/s by 16%, HTTPS
    /// keep-alive by 11% and HTTP keep-alive by 8%, against no spin in the same hour.
    pub idle_spin_us: u64,
    /// Path of the eBPF object (`--bpf-object`); default: `$HANDSHAKE_BPF_OBJECT`, else
    /// `<dir of the executable>/../bpf/handshake-xdp.o` (where `cargo xtask build` puts it).
    pub bpf_object: Option<PathBuf>,
    /// Seconds between the one-line stats summaries in the log (0: never).
    pub stats_interval_secs: u64,
    /// IP MTU of the link.
    pub mtu: usize,
    /// TCP echo service port (`--echo`).
    pub echo: Option<u16>,
    /// Plain HTTP/1.1 service port (`--http`).
    pub http: Option<u16>,
    /// HTTPS service port (`--https`); needs `[[tls.certs]]` (`--cert` and `--key`).
    pub https: Option<u16>,
    /// Serve the files under this directory (`--root`), loaded into memory at start, instead of
    /// the built-in page.
    pub root: Option<PathBuf>,
    /// Most bytes loaded from `root`.
    pub root_max_bytes: u64,
    /// Longest HTTP request head accepted (431 beyond).
    pub max_head: usize,
    /// Largest HTTP request body accepted (413 beyond).
    pub max_body: u64,
    /// A started request must be complete within this many milliseconds (else 408); also the
    /// longest an idle keep-alive connection is kept.
    pub request_timeout_ms: u64,
    /// On SIGTERM or SIGINT: how long, in milliseconds, the workers keep serving after sending
    /// FIN on every open connection, while the peers close their side.
    pub shutdown_timeout_ms: u64,
    /// After setup (XDP attached, AF_XDP sockets bound, certificates read), drop every
    /// capability and set no_new_privs. Nothing the daemon does afterwards needs one; when the
    /// interface is replaced it exits (status 75) and its supervisor starts it again.
    pub drop_capabilities: bool,
    /// How often, in milliseconds, the main thread checks the interface by name (ifindex and
    /// link state, from /sys; 0: never).
    pub iface_check_ms: u64,
    /// TLS: certificates, versions, resumption, the session pool (`--tls-threads`).
    pub tls: TlsConfig,
    /// AF_XDP sockets and UMEM.
    pub xsk: XskConfig,
    /// Neighbour cache.
    pub arp: ArpConfig,
    /// ICMP policy.
    pub icmp: IcmpConfig,
    /// IPv4 reassembly of fragments addressed to us.
    pub reassembly: crate::reassembly::ReassemblyConfig,
    /// TCP.
    pub tcp: TcpConfig,
    /// The connection trace (`--trace`).
    pub trace: TraceConfig,
    /// The Prometheus metrics endpoint (`--metrics`).
    pub metrics: MetricsConfig,
    /// Packet capture (`--pcap`).
    pub capture: CaptureConfig,
}

/// Packet capture to pcapng (`[capture]`). Off unless `file` is set.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Write what the engine receives and sends to this pcapng file (`--pcap FILE`); older
    /// files are FILE.1, FILE.2, …
    pub file: Option<PathBuf>,
    /// Which frames (`--pcap-filter`), a subset of tcpdump's syntax: `[not] [src|dst] host A`,
    /// `[not] [src|dst] port N`, `tcp`, `udp`, `icmp`, `arp`, `ip`, joined by `and` / `or`.
    /// Empty (default): every frame.
    pub filter: String,
    /// Rotate when the file reaches this many megabytes (`--pcap-max-mb`; 0: never; default 100).
    pub max_mb: f64,
    /// Files kept in all, FILE included (`--pcap-files`; default 4).
    pub files: u32,
    /// Capture buffers per queue (preallocated; when all are in use, frames are not captured
    /// and `handshake_capture_dropped_total` counts them). Default 4096.
    pub ring: usize,
    /// Bytes kept of each frame (default 0: the whole frame, MTU + 14).
    pub snaplen: usize,
    /// Start with capture paused (`--pcap-paused`); SIGUSR1 toggles it on and off.
    pub paused: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            file: None,
            filter: String::new(),
            max_mb: 100.0,
            files: 4,
            ring: 4096,
            snaplen: 0,
            paused: false,
        }
    }
}

/// The metrics endpoint (`[metrics]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus text endpoint (`GET /metrics`), a kernel TCP socket in the
    /// daemon's network namespace, or `"off"` (`--metrics ADDR:PORT|off`). Default
    /// `"127.0.0.1:9900"`.
    pub listen: String,
    /// How often each worker publishes its counters, in milliseconds (10 to 10000; default 100).
    pub publish_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9900".into(),
            publish_ms: 100,
        }
    }
}

impl MetricsConfig {
    /// The address to listen on, `None` when off.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen == "off" {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics listen = {:?}: give an IP:PORT such as 127.0.0.1:9900, or \"off\"",
                self.listen
            ))
        })
    }
}

/// The connection trace: which connections to record, how many, where.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// Which connections (`--trace`): `all`, `port N`, `host A.B.C.D`, terms joined by `and`.
    /// Unset: no trace (the default); the stack then pays a branch per segment for it.
    pub filter: Option<String>,
    /// Most connections recorded over the daemon's life, all queues together (`--trace-limit`).
    pub limit: usize,
    /// Where the events go, as JSON lines (`--trace-file`); `handshake trace FILE` renders them.
    pub file: PathBuf,
    /// Most events a worker holds before the writer thread takes them (more are dropped and
    /// counted).
    pub queue: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            filter: None,
            limit: 16,
            file: PathBuf::from("handshake-trace.jsonl"),
            queue: 4096,
        }
    }
}

/// A configuration file that documents every key with its default, the optional ones commented
/// out (`handshake config --example`).
pub const EXAMPLE: &str = include_str!("../handshake.example.toml");

impl Default for Config {
    fn default() -> Self {
        Config {
            iface: String::new(),
            addr: Vec::new(),
            gateway: None,
            queues: 1,
            cores: Vec::new(),
            mode: XdpMode::Auto,
            busy_poll: false,
            idle_spin_us: 50,
            bpf_object: None,
            stats_interval_secs: 10,
            mtu: 1500,
            echo: None,
            http: None,
            https: None,
            root: None,
            root_max_bytes: 256 << 20,
            max_head: 8192,
            max_body: 1 << 20,
            request_timeout_ms: 30_000,
            shutdown_timeout_ms: 2000,
            drop_capabilities: true,
            iface_check_ms: 200,
            tls: TlsConfig::default(),
            xsk: XskConfig::default(),
            arp: ArpConfig::default(),
            icmp: IcmpConfig::default(),
            reassembly: crate::reassembly::ReassemblyConfig::default(),
            tcp: TcpConfig::default(),
            trace: TraceConfig::default(),
            metrics: MetricsConfig::default(),
            capture: CaptureConfig::default(),
        }
    }
}

/// A configuration that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message carries line and column).
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// A required setting is missing.
    #[error("no interface given: use --iface IF (or `iface = \"IF\"` in the configuration file)")]
    NoIface,
    /// The addressing is inconsistent.
    #[error(transparent)]
    Routes(#[from] crate::ipv4::RouteError),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text; the error message names the line and column.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<Routes, ConfigError> {
        if self.iface.is_empty() {
            return Err(ConfigError::NoIface);
        }
        let routes = Routes::new(self.addr.clone(), self.gateway)?;
        if self.queues == 0 || self.queues > handshake_common::MAX_QUEUES {
            return Err(ConfigError::Invalid(format!(
                "queues = {}: must be between 1 and {}",
                self.queues,
                handshake_common::MAX_QUEUES
            )));
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(ConfigError::Invalid(format!(
                "mtu = {}: must be between 576 and 9000",
                self.mtu
            )));
        }
        self.xsk
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.https.is_some() {
            if self.tls.certs.is_empty() {
                return Err(ConfigError::Invalid(
                    "--https needs a certificate: pass --cert CHAIN.pem and --key KEY.pem (or [[tls.certs]] in the file)".into(),
                ));
            }
            self.tls
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.max_head < 256 || self.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "max_head = {} (at least 256) and request_timeout_ms = {} (at least 1)",
                self.max_head, self.request_timeout_ms
            )));
        }
        self.metrics.addr()?;
        if !(10..=10_000).contains(&self.metrics.publish_ms) {
            return Err(ConfigError::Invalid(format!(
                "metrics publish_ms = {}: must be between 10 and 10000",
                self.metrics.publish_ms
            )));
        }
        if self.capture.file.is_some() {
            crate::capture::filter::Filter::parse(&self.capture.filter)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let c = &self.capture;
            if !(c.max_mb.is_finite() && c.max_mb >= 0.0)
                || c.files == 0
                || !(1..=1 << 20).contains(&c.ring)
                || (c.snaplen != 0 && c.snaplen < 64)
            {
                return Err(ConfigError::Invalid(format!(
                    "capture: max_mb = {} (0 or more), files = {} (at least 1), ring = {} (1 to 1048576), snaplen = {} (0 or at least 64)",
                    c.max_mb, c.files, c.ring, c.snaplen
                )));
            }
        }
        let ports: Vec<u16> = [self.echo, self.http, self.https]
            .into_iter()
            .flatten()
            .collect();
        for (i, p) in ports.iter().enumerate() {
            if *p == 0 || ports[..i].contains(p) {
                return Err(ConfigError::Invalid(format!(
                    "port {p} is zero or used by two services: give --echo, --http and --https distinct ports"
                )));
            }
        }
        #[cfg(feature = "trace")]
        if let Some(f) = &self.trace.filter {
            f.parse::<crate::trace::TraceFilter>()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        #[cfg(not(feature = "trace"))]
        if self.trace.filter.is_some() {
            return Err(ConfigError::Invalid(
                "--trace: this build has no trace support; build with the `trace` feature (on by default)".into(),
            ));
        }
        if self.trace.limit == 0 || self.trace.queue == 0 {
            return Err(ConfigError::Invalid(format!(
                "trace.limit = {} and trace.queue = {}: both must be at least 1",
                self.trace.limit, self.trace.queue
            )));
        }
        Ok(routes)
    }

    /// The core for queue `q`.
    pub fn core_for(&self, q: u32, available: usize) -> usize {
        match self.cores.get(q as usize) {
            Some(c) => *c,
            None => q as usize % available.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of the example that sets a key or opens a table, commented out or not.
    fn setting(line: &str) -> Option<&str> {
        let l = line.strip_prefix("# ").unwrap_or(line);
        let key = l.split(" = ").next()?;
        let is_key = l.contains(" = ")
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        (is_key || (l.starts_with('[') && l.ends_with(']'))).then_some(l)
    }

    fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let name = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => keys(t, &format!("{name}."), out),
                _ => out.push(name),
            }
        }
    }

    #[test]
    fn the_example_documents_every_key_with_its_default() {
        // As shipped (optional keys commented out), it is the defaults.
        assert_eq!(Config::from_toml(EXAMPLE).unwrap(), Config::default());
        // Every setting, commented or not, is documented by the comment above it.
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if setting(l).is_some_and(|s| !s.starts_with('[')) {
                let above = lines[..i].last().copied().unwrap_or("");
                assert!(
                    above.starts_with("# ") && setting(above).is_none(),
                    "line {}: `{l}` has no comment above it",
                    i + 1
                );
            }
        }
        // Uncommented, the optional keys are valid too, and then every key the schema has a
        // default for appears (keys without a default must be shown commented: they are
        // checked by parsing, as they cannot be listed from the defaults).
        let all: String = lines
            .iter()
            .filter_map(|l| setting(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let full = Config::from_toml(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        full.validate().unwrap();
        let mut documented = Vec::new();
        keys(&toml::from_str(&all).unwrap(), "", &mut documented);
        let mut schema = Vec::new();
        keys(
            &toml::Table::try_from(Config::default()).unwrap(),
            "",
            &mut schema,
        );
        let missing: Vec<_> = schema.iter().filter(|k| !documented.contains(k)).collect();
        assert!(missing.is_empty(), "not in the example: {missing:?}");
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml(
            r#"
            iface = "veth0"
            addr = ["198.18.0.1/24"]
            gateway = "198.18.0.254"
            queues = 2
            cores = [1, 0]
            mode = "skb"
            echo = 7
            [xsk]
            frame_count = 2048
            [arp]
            max_entries = 64
            [icmp]
            echo_rate = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.queues, 2);
        assert_eq!(c.mode, XdpMode::Skb);
        assert_eq!(c.xsk.frame_count, 2048);
        assert_eq!(c.arp.max_entries, 64);
        assert_eq!(c.icmp.echo_rate, 10);
        assert_eq!(c.core_for(0, 2), 1);
        assert_eq!(c.core_for(5, 2), 1);
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let e = Config::from_toml("iface = \"x\"\nqueues = \"two\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::from_toml("iface = \"x\"\nqeues = 2\n").unwrap_err();
        assert!(e.contains("unknown field") && e.contains("qeues"), "{e}");
        let e = Config::from_toml("addr = [\"198.18.0.1\"]\n").unwrap_err();
        assert!(e.contains("198.18.0.1/24"), "{e}");
        assert!(Config::default()
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--iface"));
        let c = Config {
            iface: "x".into(),
            addr: vec!["198.18.0.1/24".parse().unwrap()],
            queues: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("queues = 0"));
        let c = Config {
            iface: "x".into(),
            addr: vec!["198.18.0.1/24".parse().unwrap()],
            https: Some(443),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("--cert"));
        let c = Config {
            iface: "x".into(),
            addr: vec!["198.18.0.1/24".parse().unwrap()],
            http: Some(80),
            echo: Some(80),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("distinct"));
        let mut c = Config {
            iface: "x".into(),
            addr: vec!["198.18.0.1/24".parse().unwrap()],
            ..Default::default()
        };
        c.trace.filter = Some("port 443 or port 80".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("port N") && e.contains("and"), "{e}");
        c.trace.filter = Some("host 198.18.0.2 and port 443".into());
        c.validate().unwrap();
    }

    #[test]
    fn https_settings_parse() {
        let c = Config::from_toml(
            r#"
            iface = "veth0"
            addr = ["198.18.0.1/24"]
            https = 443
            root = "/srv/www"
            request_timeout_ms = 5000
            [tls]
            threads = 1
            tls12 = false
            [[tls.certs]]
            cert = "/etc/hs/a.pem"
            key = "/etc/hs/a.key"
            "#,
        )
        .unwrap();
        assert_eq!(c.https, Some(443));
        assert_eq!(c.tls.threads, 1);
        assert!(!c.tls.tls12);
        assert_eq!(c.tls.certs[0].cert, PathBuf::from("/etc/hs/a.pem"));
        assert_eq!(c.request_timeout_ms, 5000);
        c.validate().unwrap();
    }

    #[test]
    fn capture_settings() {
        let base = "iface = \"veth0\"\naddr = [\"198.18.0.1/24\"]\n";
        let c = Config::from_toml(base).unwrap();
        assert_eq!(c.capture.file, None, "off by default");
        assert_eq!(
            (c.capture.max_mb, c.capture.files, c.capture.ring),
            (100.0, 4, 4096)
        );
        let c = Config::from_toml(&format!(
            "{base}[capture]\nfile = \"/tmp/x.pcapng\"\nfilter = \"port 443 or icmp\"\nmax_mb = 0.5\nfiles = 2\npaused = true\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert!(c.capture.paused);
        assert_eq!(c.capture.max_mb, 0.5);
        let c = Config::from_toml(&format!(
            "{base}[capture]\nfile = \"/tmp/x.pcapng\"\nfilter = \"portt 443\"\n"
        ))
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("portt 443"));
        let c = Config::from_toml(&format!(
            "{base}[capture]\nfile = \"/tmp/x.pcapng\"\nfiles = 0\n"
        ))
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("files = 0"));
    }

    #[test]
    fn metrics_settings() {
        let base = "iface = \"veth0\"\naddr = [\"198.18.0.1/24\"]\n";
        let c = Config::from_toml(base).unwrap();
        assert_eq!(
            c.metrics.addr().unwrap(),
            Some("127.0.0.1:9900".parse().unwrap()),
            "the documented default"
        );
        assert_eq!(c.metrics.publish_ms, 100);
        let c = Config::from_toml(&format!("{base}[metrics]\nlisten = \"off\"\n")).unwrap();
        assert_eq!(c.metrics.addr().unwrap(), None);
        c.validate().unwrap();
        let c = Config::from_toml(&format!(
            "{base}[metrics]\nlisten = \"0.0.0.0:9100\"\npublish_ms = 250\n"
        ))
        .unwrap();
        assert_eq!(c.metrics.addr().unwrap().unwrap().port(), 9100);
        assert_eq!(c.metrics.publish_ms, 250);
        let c = Config::from_toml(&format!("{base}[metrics]\nlisten = \"9900\"\n")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("IP:PORT"));
        let c = Config::from_toml(&format!("{base}[metrics]\npublish_ms = 0\n")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("publish_ms"));
    }
}
