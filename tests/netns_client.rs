//! Privileged client-side tests (issue 8): the engine plays the browser of the seeds' story.
//!
//! Topology ([`TopologyBuilder::routed`]): the engine's client in `hs-eng-<id>` owns 198.18.0.1
//! on its veth (nothing configured on the kernel side) with 198.18.0.254 as its gateway; the
//! peer namespace routes between 198.18.0.0/24 and 198.19.0.0/24; the server namespace
//! (198.19.0.10, another subnet) runs nginx (Debian's nginx-light: HTTPS on 443 with a
//! CA-signed certificate for `www.example.test`, an expired one on 8443) and dnsmasq (port 53:
//! `www.example.test` and `wrong.example.test` answer 198.19.0.10, any other name under
//! `example.test` is NXDOMAIN). `handshake get` runs in the engine namespace.
//!
//! The engine↔engine test uses the default two-namespace topology: the daemon serves HTTPS on
//! 198.18.0.1, the client engine owns 198.18.0.5 on the peer's veth (the peer kernel keeps
//! 198.18.0.2, where a Python `ssl` client measures the kernel client's rate beside it).
//!
//! Run with `cargo test -p handshake-tests --features netns --test netns_client --
//! --test-threads=1 --nocapture` (root; `cargo xtask build` first).

use anyhow::{ensure, Context, Result};
use handshake::trace::render::{check_order, parse_json_lines};
use handshake::trace::EventKind;
use handshake_tests::daemon::{daemon_bin, Daemon};
use handshake_tests::netns::{output_text, Topology, ROUTER_ADDR, SERVER_ADDR};
use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::Instant;

const NAME: &str = "www.example.test";

/// Certificates and pages in a temporary directory.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Result<Site> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(format!("hs-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www"))?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "handshake client test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        // A valid leaf for NAME, and an expired one (a year ago, for a day).
        for (file, expired) in [("www", false), ("expired", true)] {
            let key = KeyPair::generate()?;
            let mut leaf = CertificateParams::new(vec![NAME.to_owned()])?;
            leaf.distinguished_name.push(DnType::CommonName, NAME);
            leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if expired {
                let now = time_now();
                leaf.not_before = rcgen::date_time_ymd(now.0 - 1, 1, 1);
                leaf.not_after = rcgen::date_time_ymd(now.0 - 1, 1, 2);
            }
            let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
            std::fs::write(
                dir.join(format!("{file}.pem")),
                format!("{}{}", leaf.pem(), ca.pem()),
            )?;
            let key_path = dir.join(format!("{file}.key"));
            std::fs::write(&key_path, key.serialize_pem())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        }
        // A page that is not all one byte: 64 KiB of numbered lines.
        let page: String = (0..2600)
            .map(|i| format!("line {i:05} of the handshake client test\n"))
            .collect();
        std::fs::write(dir.join("www/index.html"), &page[..64 * 1024])?;
        Ok(Site { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn page(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("www/index.html"))?)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The current year (for the expired certificate), from the system clock.
fn time_now() -> (i32,) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (1970 + (secs / 31_556_952) as i32,)
}

/// nginx and dnsmasq in the server namespace; killed when dropped.
struct Servers {
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_servers(topo: &Topology, site: &Site) -> Result<Servers> {
    let d = site.dir.display();
    let temp = handshake_tests::nginx_temp_paths(&site.dir)?;
    let conf = format!(
        "daemon off;
master_process off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}    default_type text/html;
    server {{
        listen {SERVER_ADDR}:443 ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {d}/www.pem;
        ssl_certificate_key {d}/www.key;
        root {d}/www;
    }}
    server {{
        listen {SERVER_ADDR}:8443 ssl;
        ssl_certificate {d}/expired.pem;
        ssl_certificate_key {d}/expired.key;
        root {d}/www;
    }}
}}
"
    );
    let conf_path = site.path("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let nginx = topo.spawn_srv(["nginx", "-c", &conf_path])?;
    let dnsmasq = topo.spawn_srv([
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--user=root",
        &format!("--listen-address={SERVER_ADDR}"),
        "--bind-interfaces",
        "--local=/example.test/",
        &format!("--address=/{NAME}/{SERVER_ADDR}"),
        &format!("--host-record=wrong.example.test,{SERVER_ADDR}"),
        "--log-queries",
    ])?;
    let servers = Servers {
        children: vec![nginx, dnsmasq],
    };
    // Both listening before the tests start.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let o = topo.run_srv_args(["ss", "-ltnu"])?;
        let t = output_text(&o);
        if t.contains(&format!("{SERVER_ADDR}:443"))
            && t.contains(&format!("{SERVER_ADDR}:8443"))
            && t.contains(&format!("{SERVER_ADDR}:53"))
        {
            return Ok(servers);
        }
        ensure!(
            Instant::now() < deadline,
            "nginx or dnsmasq did not start listening:\n{t}\n{}",
            std::fs::read_to_string(site.dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `handshake get URL` from the engine namespace of the routed topology, with `extra` flags.
fn get(topo: &Topology, url: &str, extra: &[&str]) -> Result<(Output, f64)> {
    get_via(topo, url, SERVER_ADDR, extra)
}

/// [`get`] with another DNS server.
fn get_via(topo: &Topology, url: &str, dns: &str, extra: &[&str]) -> Result<(Output, f64)> {
    let bin = daemon_bin().display().to_string();
    let iface = topo.eng_if().to_string();
    let mut argv = vec![
        bin.as_str(),
        "get",
        url,
        "--iface",
        &iface,
        "--addr",
        "198.18.0.1/24",
        "--gateway",
        ROUTER_ADDR,
        "--dns",
        dns,
    ];
    argv.extend_from_slice(extra);
    let t = Instant::now();
    let o = topo.run_eng_args(&argv)?;
    Ok((o, t.elapsed().as_secs_f64()))
}

fn routed(site: &Site) -> Result<(Topology, Servers)> {
    let topo = Topology::builder()
        .routed(true)
        .kernel_address(false)
        .up()?;
    let servers = start_servers(&topo, site)?;
    Ok((topo, servers))
}

#[test]
fn get_through_the_gateway_byte_exact_and_the_story_in_order() -> Result<()> {
    let site = Site::new("story")?;
    let (topo, _servers) = routed(&site)?;
    let ca = site.path("ca.pem");
    let url = format!("https://{NAME}/");
    let (o, secs) = get(&topo, &url, &["--cacert", &ca, "--trace", "json"])?;
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    ensure!(
        o.status.success(),
        "handshake get failed ({}):\n{stderr}",
        o.status
    );
    ensure!(
        o.stdout == site.page()?,
        "the body differs from nginx's page ({} bytes against {})",
        o.stdout.len(),
        site.page()?.len()
    );
    println!(
        "get {url}: {} bytes byte-exact in {secs:.2} s",
        o.stdout.len()
    );
    let json: String = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut events = parse_json_lines(&json).map_err(anyhow::Error::msg)?;
    // In time order (the ARP and DNS that came before the SYN are recorded with it).
    events.sort_by_key(|e| e.t_us);
    for e in &events {
        println!("  {}", handshake::trace::render::brief(e));
    }
    check_order(
        &events,
        &[
            handshake_tests::CLIENT_STORY_TO_SERVER_HELLO,
            &[
                "in Encrypted Handshake Message (EncryptedExtensions*",
                "out Encrypted Handshake Message (Finished)",
                "out Application Data",
                "in Application Data",
            ],
        ]
        .concat(),
    )
    .map_err(anyhow::Error::msg)?;
    // The close: nginx (the request said `Connection: close`) and we finish at the same moment,
    // so either FIN may come first; ours always comes, and our side ends CLOSED. nginx ends
    // with its FIN, or, when our close_notify reached its socket before it closed (the client
    // now wakes to the microsecond: ppoll), with a RST after our FIN: a socket closed with
    // unread data resets (RFC 2525 §2.17). Nothing else ends it.
    let briefs: Vec<String> = events.iter().map(handshake::trace::render::brief).collect();
    let first_data = briefs
        .iter()
        .position(|b| b == "in Application Data")
        .context("no data in")?;
    let tail = &briefs[first_data..];
    let our_fin = tail
        .iter()
        .position(|b| b.starts_with("out FIN"))
        .with_context(|| format!("no FIN from us: {tail:?}"))?;
    ensure!(
        tail.iter().any(|b| b.starts_with("in FIN"))
            || tail[our_fin..].iter().any(|b| b.starts_with("in RST")),
        "nginx neither sent FIN nor reset after our FIN: {tail:?}"
    );
    ensure!(
        briefs
            .iter()
            .rev()
            .find(|b| b.starts_with("state "))
            .map(String::as_str)
            == Some("state CLOSED"),
        "our side did not end CLOSED: {tail:?}"
    );
    // The next hop was the router: every ARP question was for it, never for the server.
    let mut who_has = 0;
    for e in &events {
        if let EventKind::ArpWhoHas { target, dir, .. } = &e.kind {
            if *dir == handshake::trace::Dir::Out {
                who_has += 1;
                ensure!(target == ROUTER_ADDR, "ARP for {target}, not the gateway");
            }
        }
        if let EventKind::ClientHello { sni, alpn, .. } = &e.kind {
            ensure!(sni.as_deref() == Some(NAME), "SNI {sni:?}");
            ensure!(alpn.iter().any(|a| a == "http/1.1"), "ALPN {alpn:?}");
        }
    }
    ensure!(who_has >= 1, "no ARP request for the gateway in the story");
    // The same story as a timeline, for the reader.
    let (o, _) = get(&topo, &url, &["--cacert", &ca, "--trace", "text"])?;
    ensure!(o.status.success(), "get --trace text: {}", output_text(&o));
    let story: String = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN "))
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(story.contains("engine is the client"), "{story}");
    println!("{story}");
    // -i prints nginx's head first.
    let (o, _) = get(&topo, &url, &["--cacert", &ca, "-i"])?;
    ensure!(o.status.success(), "get -i: {}", output_text(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    ensure!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("\r\nServer: nginx"),
        "head: {}",
        &text[..text.len().min(300)]
    );
    Ok(())
}

#[test]
fn certificate_and_dns_failures_are_clear() -> Result<()> {
    let site = Site::new("fail")?;
    let (topo, _servers) = routed(&site)?;
    let ca = site.path("ca.pem");
    let cases: [(&str, &str, Vec<&str>, i32, &str); 5] = [
        (
            "https://wrong.example.test/",
            SERVER_ADDR,
            vec!["--cacert", &ca],
            60,
            "not valid for wrong.example.test",
        ),
        (
            "https://www.example.test/",
            SERVER_ADDR,
            vec![],
            60,
            "not signed by a trusted CA",
        ),
        (
            "https://www.example.test:8443/",
            SERVER_ADDR,
            vec!["--cacert", &ca],
            60,
            "expired",
        ),
        (
            "https://nope.example.test/",
            SERVER_ADDR,
            vec!["--cacert", &ca],
            6,
            "NXDOMAIN",
        ),
        (
            // Nobody answers DNS there.
            "https://www.example.test/",
            "198.19.0.99",
            vec!["--cacert", &ca, "--timeout", "3"],
            6,
            "timed out",
        ),
    ];
    for (url, dns, extra, code, says) in cases {
        let (o, secs) = get_via(&topo, url, dns, &extra)?;
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        println!(
            "{url} {extra:?}: exit {:?} in {secs:.2} s: {}",
            o.status.code(),
            err.trim()
        );
        ensure!(
            o.status.code() == Some(code),
            "{url}: exit {:?}, want {code}:\n{err}",
            o.status.code()
        );
        ensure!(
            err.contains(says),
            "{url}: the message does not say {says:?}:\n{err}"
        );
        ensure!(o.stdout.is_empty(), "{url}: printed a body");
        ensure!(secs < 10.0, "{url}: took {secs:.1} s");
    }
    Ok(())
}

#[test]
fn engine_to_engine_ten_thousand_resumed_https_requests() -> Result<()> {
    let site = Site::new("e2e")?;
    let topo = Topology::up()?;
    let (cert, key, www) = (site.path("www.pem"), site.path("www.key"), site.path("www"));
    let daemon = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--https",
            "443",
            "--cert",
            &cert,
            "--key",
            &key,
            "--root",
            &www,
            "--stats-interval",
            "0",
        ],
    )?;
    let bin = daemon_bin().display().to_string();
    let ca = site.path("ca.pem");
    let peer_if = topo.peer_if().to_string();
    let n = 10_000;
    let count = n.to_string();
    let t = Instant::now();
    let o = topo.run_peer_args([
        bin.as_str(),
        "get",
        &format!("https://{NAME}/"),
        "--iface",
        &peer_if,
        "--addr",
        "198.18.0.5/24",
        "--resolve",
        &format!("{NAME}:198.18.0.1"),
        "--cacert",
        &ca,
        "--count",
        &count,
    ])?;
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    ensure!(
        o.status.success(),
        "engine client failed ({}):\n{err}",
        o.status
    );
    ensure!(
        o.stdout == site.page()?,
        "the first body differs from the page"
    );
    let line = err
        .lines()
        .find(|l| l.contains(" requests: "))
        .context("no summary line")?;
    println!("engine client -> engine server: {line} ({secs:.1} s with setup)");
    ensure!(
        line.starts_with(&format!("{n} requests: {n} ok, 0 failed, 0 bodies differ;")),
        "{line}"
    );
    ensure!(line.contains(&format!("; {n} connections (")), "{line}");
    let resumed: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" TLS-resumed"))
        .and_then(|v| v.parse().ok())
        .context("resumed count")?;
    ensure!(resumed >= n - 1, "only {resumed} of {n} resumed");
    // The load generator, three ways: 16 fresh connections at a time; 8 keep-alive
    // connections of 100 requests; an open loop of 400 new connections per second.
    for (what, flags, n) in [
        (
            "16 fresh connections at a time",
            vec!["--concurrency", "16"],
            4000u64,
        ),
        (
            "8 keep-alive connections of 100 requests",
            vec!["--concurrency", "8", "--keep-alive", "100"],
            8000,
        ),
        (
            "open loop, 400 connections/s",
            vec!["--rate", "400", "--concurrency", "64"],
            1200,
        ),
    ] {
        let count = n.to_string();
        let mut argv = vec![
            bin.as_str(),
            "load",
            "https://www.example.test/",
            "--iface",
            &peer_if,
            "--addr",
            "198.18.0.5/24",
            "--resolve",
            "www.example.test:198.18.0.1",
            "--cacert",
            &ca,
            "--count",
            &count,
        ];
        argv.extend_from_slice(&flags);
        let o = topo.run_peer_args(&argv)?;
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        ensure!(
            o.status.success(),
            "handshake load ({what}) failed ({}):\n{err}",
            o.status
        );
        ensure!(o.stdout.is_empty(), "load prints no body");
        let line = err
            .lines()
            .find(|l| l.contains(" requests: "))
            .context("no summary line")?;
        println!("handshake load, {what} -> engine server: {line}");
        ensure!(
            line.contains(", 0 failed,") && line.contains(", 0 bodies differ"),
            "{line}"
        );
        let late: u64 = line
            .rsplit(", ")
            .next()
            .and_then(|p| p.strip_suffix(" late"))
            .and_then(|v| v.parse().ok())
            .context("late count")?;
        let ok: u64 = line
            .split(", ")
            .next()
            .and_then(|p| p.rsplit(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .context("ok count")?;
        ensure!(ok + late == n, "{ok} ok + {late} late != {n}: {line}");
        // No request waits for a retransmission: a SYN answered late by a server that still
        // holds an earlier run's connection on the same 4-tuple in TIME-WAIT costs a 1 s RTO
        // (the client keeps its TCP secret and a boot-based clock across runs so that its
        // ISNs and timestamps keep growing and the server reuses the 4-tuple at once).
        let p99_ms: f64 = line
            .split("p99 ")
            .nth(1)
            .and_then(|p| p.split(' ').next())
            .and_then(|v| v.parse().ok())
            .context("p99")?;
        ensure!(
            p99_ms < 500.0,
            "p99 latency {p99_ms} ms (a retransmission?): {line}"
        );
        let field = |suffix: &str| -> Option<f64> {
            line.split([',', ';'])
                .find_map(|p| p.trim().strip_suffix(suffix))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        let conns = line
            .split("; ")
            .find_map(|p| {
                p.split(" connections (")
                    .next()
                    .filter(|_| p.contains(" connections ("))
            })
            .and_then(|v| v.parse::<f64>().ok())
            .context("connections")?;
        let resumed = field(" TLS-resumed").context("resumed")?;
        ensure!(
            resumed >= 0.9 * conns,
            "only {resumed} of {conns} connections resumed: {line}"
        );
    }
    // The kernel's client beside it: Python's ssl, sequential, sessions reused, same page.
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
n, sess, resumed, t = int(sys.argv[2]), None, 0, time.time()
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("198.18.0.1", 443)), server_hostname=sys.argv[3], session=sess)
    resumed += s.session_reused
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b: break
        data += b
    sess = s.session  # after the response: TLS 1.3 tickets come after the handshake
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
print(f"{n} {resumed} {n / (time.time() - t):.1f}")
"#;
    let kn = "2000";
    let out = topo.py(script, &[&ca, kn, NAME])?;
    let f: Vec<&str> = out.split_whitespace().collect();
    println!(
        "kernel client (Python ssl) -> engine server: {} requests, {} resumed, {} req/s",
        f[0], f[1], f[2]
    );
    drop(daemon);
    Ok(())
}
