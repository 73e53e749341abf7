//! Privileged lifecycle and security-posture tests (issue 6): the engine's link going down and
//! up, its veth deleted and created again (a new ifindex), a second daemon on the same
//! interface (refused, with advice), a certificate reload under HTTPS
//! load (inline TLS and the pool), the capabilities the daemon keeps after setup (none), and
//! secrets never reaching its logs or trace at the most verbose settings. Each test builds its
//! own topology and daemon, changes links only inside its own namespaces, and prints its
//! measured figures. Run with
//! `cargo test -p handshake-tests --features netns --test netns_lifecycle -- --test-threads=1 --nocapture`
//! (root, the release daemon built by `cargo xtask build`); about a minute.

use anyhow::{bail, ensure, Context, Result};
use handshake_tests::daemon::{final_tls_inline, final_tls_pool, Daemon};
use handshake_tests::netns::{output_text as text, Topology, ENGINE_ADDR, PYTHON};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The DNS name in the test certificates.
const NAME: &str = "handshake.test";

/// Runs `sh -c cmd` in the peer namespace and returns its output and success.
fn peer_sh(topo: &Topology, cmd: &str) -> Result<(bool, String)> {
    let o = topo.run_peer_args(["sh", "-c", cmd])?;
    Ok((o.status.success(), text(&o)))
}

/// One ping (200 ms wait) and one HTTP GET (1 s timeout) from the peer; true when both work.
fn serves(topo: &Topology) -> Result<bool> {
    let (ping, _) = peer_sh(topo, &format!("ping -c 1 -W 0.2 {ENGINE_ADDR}"))?;
    if !ping {
        return Ok(false);
    }
    let (_, code) = peer_sh(
        topo,
        &format!("curl -s -m 1 -o /dev/null -w %{{http_code}} http://{ENGINE_ADDR}/"),
    )?;
    Ok(code.trim() == "200")
}

/// Polls [`serves`] until it succeeds or `bound` passes; returns the time it took.
fn until_serving(topo: &Topology, since: Instant, bound: Duration) -> Result<Duration> {
    loop {
        if serves(topo)? {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < bound,
            "the engine does not serve (ping and HTTP) within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 200 pings at 5 ms and 50 HTTP GETs on fresh connections: every one answered.
fn serves_fully(topo: &Topology) -> Result<()> {
    let (ok, out) = peer_sh(topo, &format!("ping -q -c 200 -i 0.005 -W 2 {ENGINE_ADDR}"))?;
    if !(ok && out.contains("200 packets transmitted, 200 received")) {
        // What the engine saw, to tell its drops from the kernel's.
        let m = text(&topo.run_eng("curl -sS -m 3 http://127.0.0.1:9900/metrics")?);
        let counters: Vec<&str> = m
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.ends_with(" 0")
                    && (l.contains("icmp")
                        || l.contains("drops")
                        || l.contains("arp")
                        || l.contains("xsk")
                        || l.contains("xdp"))
            })
            .collect();
        let neigh = text(&topo.run_peer("ip neigh show")?);
        bail!(
            "pings lost:\n{out}\npeer neighbours: {neigh}\nengine counters:\n{}",
            counters.join("\n")
        );
    }
    let (ok, out) = peer_sh(
        topo,
        &format!(
            "for i in $(seq 50); do curl -s -m 2 -o /dev/null -w '%{{http_code}}\\n' \
             http://{ENGINE_ADDR}/; done"
        ),
    )?;
    let good = out.lines().filter(|l| l.trim() == "200").count();
    ensure!(
        ok && good == 50,
        "{good} of 50 HTTP GETs answered 200:\n{out}"
    );
    Ok(())
}

/// Waits until the daemon printed a line containing `want` (`bound` at most).
fn wait_line(d: &Daemon, want: &str, bound: Duration) -> Result<Instant> {
    let t = Instant::now();
    loop {
        if d.lines().iter().any(|l| l.contains(want)) {
            return Ok(Instant::now());
        }
        ensure!(
            t.elapsed() < bound,
            "no {want:?} line within {bound:?}:\n{}",
            d.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the daemon with SIGTERM and checks that it exited cleanly: frame accounting checked,
/// the program detached. Returns its output.
fn stop_clean(mut d: Daemon) -> Result<Vec<String>> {
    let lines = d.stop_with("TERM")?;
    let all = lines.join("\n");
    ensure!(
        all.contains("frame accounting checked") && !all.contains("frame accounting error"),
        "{all}"
    );
    ensure!(all.contains("XDP program detached; bye"), "{all}");
    Ok(lines)
}

// ---------------------------------------------------------------------------------------------
// 1. Link down and up

/// A keep-alive HTTP client: one request, then once the file `go` exists (the link is down by
/// then) a second request on the same connection, which the peer's kernel retransmits until the
/// link is back. Prints `first STATUS` and `second STATUS SECONDS`.
const PY_ACROSS: &str = r#"
import os, socket, sys, time
go = sys.argv[1]
s = socket.create_connection(("198.18.0.1", 80), timeout=15)
def get():
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(65536)
        if not b:
            raise Exception("closed")
        data += b
    head, body = data.split(b"\r\n\r\n", 1)
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        body += s.recv(65536)
    return head.split(b"\r\n")[0].decode().split(" ")[1]
print("first", get(), flush=True)
deadline = time.time() + 20
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.01)
t = time.time()
print("second", get(), round(time.time() - t, 3), flush=True)
"#;

/// The engine's veth goes down (for about 0.6 s) and up again, twice. The daemon keeps running,
/// logs both transitions, and serves ping and HTTP again within 2 s of the link coming up; then
/// 200 pings and 50 fresh connections all succeed. A keep-alive connection opened before the
/// first flap, with a request sent while the link was down, gets its answer (TCP retransmission
/// across the flap), and the frame accounting holds at the stop.
#[test]
fn link_down_and_up_the_engine_keeps_serving() -> Result<()> {
    let topo = Topology::up()?;
    let d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    until_serving(&topo, Instant::now(), Duration::from_secs(3))?;
    let dev = topo.eng_if().to_owned();
    let go = std::env::temp_dir().join(format!("hs-life-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let go_arg = go.display().to_string();
    let across = topo.spawn_peer([PYTHON, "-c", PY_ACROSS, go_arg.as_str()])?;
    std::thread::sleep(Duration::from_millis(300));
    let mut figures = Vec::new();
    for round in 1..=2usize {
        let o = topo.run_eng(&format!("ip link set dev {dev} down"))?;
        ensure!(o.status.success(), "{}", text(&o));
        wait_line(
            &d,
            &format!("link {dev}: up -> down"),
            Duration::from_secs(2),
        )?;
        // Really down: nothing gets through.
        ensure!(!serves(&topo)?, "the engine answered with its link down");
        if round == 1 {
            // A request on an open connection while the link is down.
            std::fs::write(&go, "")?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let o = topo.run_eng(&format!("ip link set dev {dev} up"))?;
        ensure!(o.status.success(), "{}", text(&o));
        let up = Instant::now();
        let took = until_serving(&topo, up, Duration::from_secs(2))?;
        let logged = loop {
            let n = d
                .lines()
                .iter()
                .filter(|l| l.starts_with(&format!("link {dev}:")) && l.ends_with("-> up"))
                .count();
            if n == round {
                break Instant::now();
            }
            ensure!(
                up.elapsed() < Duration::from_secs(3),
                "the daemon did not log the link up:\n{}",
                d.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        figures.push(took);
        println!(
            "link down/up round {round}: serving (ping + HTTP) {:.3} s after `ip link set up`; \
             the daemon logged the link up after {:.3} s",
            took.as_secs_f64(),
            logged.saturating_duration_since(up).as_secs_f64()
        );
        // The peer's kernel applies its carrier change (operstate, and its qdisc, which drops
        // what it holds when swapped) in its own linkwatch run, up to a second later: the full
        // check starts once that is done on both ends.
        let peer_up = Instant::now();
        loop {
            let o = topo.run_peer(&format!("cat /sys/class/net/{}/operstate", topo.peer_if()))?;
            if text(&o).trim() == "up" {
                break;
            }
            ensure!(
                peer_up.elapsed() < Duration::from_secs(3),
                "the peer's link is not up: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        serves_fully(&topo)?;
    }
    let out = text(&across.wait_with_output()?);
    let _ = std::fs::remove_file(&go);
    ensure!(
        out.contains("first 200") && out.contains("second 200"),
        "the connection opened before the link went down: {out}"
    );
    println!(
        "a keep-alive connection across the flap: {}",
        out.lines().find(|l| l.starts_with("second")).unwrap_or("")
    );
    let lines = stop_clean(d)?;
    let links: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with(&format!("link {dev}:")))
        .collect();
    ensure!(
        links.iter().filter(|l| l.ends_with(": up -> down")).count() == 2,
        "{}",
        lines.join("\n")
    );
    println!("the daemon logged: {links:?}");
    println!(
        "link down/up: recovered in {} (bound 2 s), 200/200 pings and 50/50 GETs after each",
        figures
            .iter()
            .map(|t| format!("{:.3} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. The veth deleted and created again

/// User plus system CPU time of process `pid`, in clock ticks (100 a second).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the `(comm)` field: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// The veth pair is deleted and created again with the same names, MACs and addresses (the
/// engine's end gets a new ifindex). The daemon notices the interface gone (and idles while it
/// is), then the new one,
/// and exits with status 75 and a message saying why (the designed behaviour: its supervisor
/// starts it again, see docs/deployment.md); the test plays systemd (`Restart=on-failure`) and
/// starts it again at once. Serving works again within 3 s of the new veth existing.
#[test]
fn veth_recreated_the_daemon_exits_75_and_a_restart_serves() -> Result<()> {
    let topo = Topology::up()?;
    let args = [
        "--addr",
        "198.18.0.1/24",
        "--http",
        "80",
        "--stats-interval",
        "0",
    ];
    let mut d = Daemon::start(&topo, &args)?;
    until_serving(&topo, Instant::now(), Duration::from_secs(3))?;
    let old = topo.eng_ifindex().context("ifindex")?;
    topo.delete_veth()?;
    wait_line(
        &d,
        "is gone; waiting for it to come back",
        Duration::from_secs(2),
    )?;
    // Gone for a while: the daemon waits (no restart storm while the interface is missing),
    // and idles: its workers do not spin on the dead sockets.
    let before = cpu_ticks(d.pid())?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        d.pid() != 0 && Path::new(&format!("/proc/{}", d.pid())).exists(),
        "the daemon exited while the interface was missing"
    );
    let idle = cpu_ticks(d.pid())? - before;
    ensure!(
        idle <= 20,
        "the daemon used {idle} CPU ticks (of 100 per second) while its interface was gone"
    );
    topo.add_veth()?;
    let created = Instant::now();
    let new = topo.eng_ifindex().context("ifindex")?;
    ensure!(new != old, "the new veth has the old ifindex {old}");
    let (status, lines) = d.wait_exit(Duration::from_secs(3))?;
    let exited = created.elapsed();
    ensure!(
        status.code() == Some(75),
        "exit status {status}, not 75:\n{}",
        lines.join("\n")
    );
    let all = lines.join("\n");
    ensure!(
        all.contains(&format!(
            "interface {} was deleted and created again (ifindex {old} -> {new})",
            topo.eng_if()
        )) && all.contains("Restart=on-failure"),
        "{all}"
    );
    // The supervisor's restart.
    let restart = Instant::now();
    let d2 = Daemon::start(&topo, &args)?;
    let ready = restart.elapsed();
    let took = until_serving(&topo, created, Duration::from_secs(3))?;
    serves_fully(&topo)?;
    stop_clean(d2)?;
    println!(
        "veth recreated (ifindex {old} -> {new}): {idle} CPU ticks in the 1 s without it; the \
         daemon exited 75 after {:.3} s, the restart was ready in {:.3} s, serving {:.3} s after \
         the new veth existed (bound 3 s)",
        exited.as_secs_f64(),
        ready.as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}

/// A second daemon started on the interface a first one serves: the XDP attach is busy (EBUSY:
/// the first daemon's bpf_link holds it). The second retries for a bounded time (20 attempts
/// 100 ms apart), then must exit non-zero within 5 s with a message that names the interface
/// and says what to do; the first must keep serving (ping and HTTP, then 200 pings and 50
/// fresh connections) and stop cleanly.
#[test]
fn second_daemon_on_a_busy_interface_exits_with_advice_first_keeps_serving() -> Result<()> {
    let topo = Topology::up()?;
    let args = [
        "--addr",
        "198.18.0.1/24",
        "--http",
        "80",
        "--stats-interval",
        "0",
    ];
    let a = Daemon::start(&topo, &args)?;
    until_serving(&topo, Instant::now(), Duration::from_secs(3))?;
    let t = Instant::now();
    let mut b = Daemon::launch(&topo, &args)?;
    let (status, lines) = b.wait_exit(Duration::from_secs(5))?;
    let took = t.elapsed();
    let all = lines.join("\n");
    ensure!(
        !status.success(),
        "the second daemon exited successfully:\n{all}"
    );
    ensure!(
        !lines.iter().any(|l| l.starts_with("ready")),
        "the second daemon became ready:\n{all}"
    );
    let error = lines
        .iter()
        .find(|l| l.starts_with("Error:"))
        .with_context(|| format!("no `Error:` line:\n{all}"))?;
    let iface = topo.eng_if();
    for want in [
        format!("interface {iface} already has an XDP program attached"),
        format!("another handshake daemon is probably serving {iface}"),
        "Stop it first".to_owned(),
        "another --iface".to_owned(),
    ] {
        ensure!(error.contains(&want), "{want:?} missing from:\n{all}");
    }
    ensure!(took < Duration::from_secs(5), "took {took:?}");
    // The first daemon is untouched: it still serves, fully, and stops cleanly.
    let back = until_serving(&topo, Instant::now(), Duration::from_secs(2))?;
    serves_fully(&topo)?;
    let a_lines = stop_clean(a)?;
    ensure!(
        !a_lines
            .iter()
            .any(|l| l.contains("panicked") || l.contains("ERROR")),
        "{}",
        a_lines.join("\n")
    );
    println!(
        "second daemon on {iface}: exited ({status}) {:.2} s after it started; first daemon \
         served {:.3} s later, then 200/200 pings and 50/50 fresh GETs\n  {error}",
        took.as_secs_f64(),
        back.as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A temporary directory with a certificate chain and key the daemon serves, and `cas.pem`
/// holding every CA made so far (what clients trust).
struct Certs {
    dir: PathBuf,
    cas: String,
}

impl Certs {
    fn new(tag: &str) -> Result<Certs> {
        let dir = std::env::temp_dir().join(format!("hs-life-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut c = Certs {
            dir,
            cas: String::new(),
        };
        c.make()?;
        Ok(c)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A new CA and leaf, installed at once (see [`Certs::stage`]).
    fn make(&mut self) -> Result<()> {
        self.stage()?;
        self.install()
    }

    /// Renames the staged chain and key over `chain.pem` and `key.pem` (what an operator's
    /// deploy does: each file is replaced whole).
    fn install(&self) -> Result<()> {
        std::fs::rename(self.dir.join("key.pem.new"), self.dir.join("key.pem"))?;
        std::fs::rename(self.dir.join("chain.pem.new"), self.dir.join("chain.pem"))?;
        std::fs::rename(self.dir.join("leaf.pem.new"), self.dir.join("leaf.pem"))?;
        Ok(())
    }

    /// A new CA and leaf in `chain.pem.new` and `key.pem.new` (created owner-only); the CA is
    /// added to `cas.pem` at once, so clients started now trust both generations.
    fn stage(&mut self) -> Result<()> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use std::os::unix::fs::OpenOptionsExt;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        // A name of its own per generation: clients trust all of them, and a verifier picks
        // the issuer by name.
        let generation = self.cas.matches("BEGIN CERTIFICATE").count();
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("handshake lifecycle CA {generation}"),
        );
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![ENGINE_ADDR.to_owned(), NAME.to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, NAME);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
        self.cas.push_str(&ca.pem());
        std::fs::write(self.dir.join("cas.pem"), &self.cas)?;
        std::fs::write(self.dir.join("leaf.pem.new"), leaf.pem())?;
        std::fs::write(
            self.dir.join("chain.pem.new"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.dir.join("key.pem.new"))?;
        std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes())?;
        drop(f);
        Ok(())
    }

    /// SHA-256 of the installed leaf's DER, lowercase hex without separators.
    fn fingerprint(&self) -> Result<String> {
        self.fingerprint_of("leaf.pem")
    }

    fn fingerprint_of(&self, file: &str) -> Result<String> {
        let o = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.path(file))
            .output()?;
        ensure!(o.status.success(), "openssl x509: {}", text(&o));
        let out = text(&o);
        let hex = out
            .trim()
            .rsplit('=')
            .next()
            .context("fingerprint")?
            .replace(':', "")
            .to_lowercase();
        Ok(hex)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--https".into(),
            "443".into(),
            "--cert".into(),
            self.path("chain.pem"),
            "--key".into(),
            self.path("key.pem"),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Certificate reload under load

/// HTTPS load for `dur` seconds: `fresh` threads each opening connection after connection (one
/// request each) and `held` threads each keeping one connection for the whole run, a request
/// every 20 ms. Every response must be a 200 with its whole body. Once the file `marker`
/// exists, the held connections count their requests as "after". One line per connection in
/// the file `results`:
/// `conn KIND T_START T_HANDSHAKEN T_END FP REQUESTS AFTER ok|fail:REASON`.
const LOAD: &str = r#"
import hashlib, os, socket, ssl, sys, threading, time
cas, dur, fresh, held, marker, results = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=cas)
end = time.time() + dur
lines = []
lock = threading.Lock()
def get(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: handshake.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(65536)
        if not b:
            raise Exception("closed before the response head")
        data += b
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200 "):
        raise Exception("status %r" % head.split(b"\r\n")[0])
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        b = s.recv(65536)
        if not b:
            raise Exception("closed in the body")
        body += b
    if len(body) != n:
        raise Exception("body %d != %d" % (len(body), n))
def conn(kind):
    t0 = time.time(); t1 = 0.0; fp = "-"; reqs = 0; after = 0; res = "ok"
    try:
        raw = socket.create_connection(("198.18.0.1", 443), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname="handshake.test")
        t1 = time.time()
        fp = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
        while True:
            get(s)
            reqs += 1
            if kind == "held":
                if os.path.exists(marker):
                    after += 1
                if time.time() >= end:
                    break
                time.sleep(0.02)
            else:
                break
        s.close()
    except Exception as e:
        res = "fail:" + repr(e).replace(" ", "_")
    with lock:
        lines.append("conn %s %.6f %.6f %.6f %s %d %d %s" % (kind, t0, t1, time.time(), fp, reqs, after, res))
def fresh_loop():
    while time.time() < end:
        conn("fresh")
ts = [threading.Thread(target=fresh_loop) for _ in range(fresh)]
ts += [threading.Thread(target=conn, args=("held",)) for _ in range(held)]
for t in ts: t.start()
print("started", flush=True)
for t in ts: t.join()
with open(results, "w") as f:
    for l in lines: f.write(l + "\n")
print("done", len(lines), flush=True)
"#;

/// One connection of the load.
#[derive(Debug)]
struct Conn {
    held: bool,
    start: f64,
    handshaken: f64,
    fp: String,
    requests: u64,
    after: u64,
    result: String,
}

fn parse_conns(out: &str) -> Result<Vec<Conn>> {
    out.lines()
        .filter(|l| l.starts_with("conn "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            ensure!(w.len() == 9, "bad line {l:?}");
            Ok(Conn {
                held: w[1] == "held",
                start: w[2].parse()?,
                handshaken: w[3].parse()?,
                fp: w[5].to_owned(),
                requests: w[6].parse()?,
                after: w[7].parse()?,
                result: w[8].to_owned(),
            })
        })
        .collect()
}

fn epoch(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// While 3 threads open HTTPS connection after connection and 2 keep one connection each
/// (a request every 20 ms), the certificate and key files are replaced and SIGHUP is sent.
/// Zero failed requests; every connection that started after the reload was logged presents
/// the new certificate, every one completed before SIGHUP the old one; the held connections
/// keep the old certificate and keep answering after the reload.
fn reload_under_load(threads: &str) -> Result<()> {
    let topo = Topology::up()?;
    let mut certs = Certs::new(&format!("reload-{threads}"))?;
    let old = certs.fingerprint()?;
    let mut args: Vec<String> = vec![
        "--addr".into(),
        "198.18.0.1/24".into(),
        "--stats-interval".into(),
        "0".into(),
        "--tls-threads".into(),
        threads.into(),
    ];
    args.extend(certs.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&topo, &argv)?;
    // The next generation exists (and its CA is trusted) before the load starts; its files
    // replace the served ones during the load.
    certs.stage()?;
    let new = certs.fingerprint_of("leaf.pem.new")?;
    let marker = certs.path("reloaded");
    let results = certs.path("results.txt");
    let dur = 4.0;
    let mut load = topo.spawn_peer([
        PYTHON,
        "-c",
        LOAD,
        &certs.path("cas.pem"),
        &dur.to_string(),
        "3",
        "2",
        &marker,
        &results,
    ])?;
    std::thread::sleep(Duration::from_millis(1500));
    certs.install()?;
    ensure!(certs.fingerprint()? == new && new != old);
    let hup_sent = epoch(std::time::SystemTime::now());
    let o = std::process::Command::new("kill")
        .args(["-s", "HUP", &d.pid().to_string()])
        .output()?;
    ensure!(o.status.success(), "kill -HUP: {}", text(&o));
    wait_line(
        &d,
        "reloaded certificates (generation 1)",
        Duration::from_secs(3),
    )?;
    let seen = epoch(std::time::SystemTime::now());
    std::fs::write(&marker, "")?;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = load.try_wait()? {
            break s;
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = load.kill();
            bail!("the load did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = text(&load.wait_with_output()?);
    ensure!(status.success(), "load failed:\n{out}");
    let conns = parse_conns(&std::fs::read_to_string(&results)?)?;
    let failed: Vec<&Conn> = conns.iter().filter(|c| c.result != "ok").collect();
    ensure!(failed.is_empty(), "failed connections: {failed:#?}");
    let requests: u64 = conns.iter().map(|c| c.requests).sum();
    let before: Vec<&Conn> = conns
        .iter()
        .filter(|c| !c.held && c.handshaken < hup_sent)
        .collect();
    let after: Vec<&Conn> = conns.iter().filter(|c| !c.held && c.start > seen).collect();
    ensure!(
        before.len() >= 5 && after.len() >= 5,
        "{} connections before the reload, {} after: too little load",
        before.len(),
        after.len()
    );
    for c in &before {
        ensure!(
            c.fp == old,
            "a connection before SIGHUP got {}: {c:?}",
            c.fp
        );
    }
    for c in &after {
        ensure!(
            c.fp == new,
            "a connection after the reload got {}: {c:?}",
            c.fp
        );
    }
    let held: Vec<&Conn> = conns.iter().filter(|c| c.held).collect();
    ensure!(held.len() == 2, "{held:?}");
    for c in &held {
        ensure!(
            c.fp == old && c.start < hup_sent && c.after >= 10,
            "a held connection: {c:?}"
        );
    }
    let mut d = d;
    let lines = d.stop_with("TERM")?;
    let tls = if threads == "0" {
        final_tls_inline(&lines)?
    } else {
        final_tls_pool(&lines)?
    };
    ensure!(
        tls.errors == 0 && tls.refused == 0 && tls.timeouts == 0,
        "{tls:?}"
    );
    ensure!(
        tls.handshakes as usize == conns.len(),
        "{} handshakes, {} connections",
        tls.handshakes,
        conns.len()
    );
    println!(
        "reload under load (--tls-threads {threads}): {} connections, {requests} requests in {dur} s, \
         0 failed; {} before SIGHUP all old cert, {} after the reload all new cert, {} in between; \
         held connections answered {} requests after the reload on the old cert; {:.1} ms from \
         SIGHUP to the reload logged",
        conns.len(),
        before.len(),
        after.len(),
        conns.len() - before.len() - after.len() - held.len(),
        held.iter().map(|c| c.after).sum::<u64>(),
        (seen - hup_sent) * 1e3
    );
    Ok(())
}

#[test]
fn certificate_reload_under_load_inline() -> Result<()> {
    reload_under_load("0")
}

#[test]
fn certificate_reload_under_load_pool() -> Result<()> {
    reload_under_load("1")
}

// ---------------------------------------------------------------------------------------------
// 4. Capabilities

/// The handshake process behind the `ip netns exec` pid (the same process after its exec).
fn daemon_pid(d: &Daemon) -> Result<u32> {
    let pid = d.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(comm.trim() == "handshake", "pid {pid} is {comm:?}");
    Ok(pid)
}

/// `Key:` fields of every thread's /proc status: (thread name, value).
fn thread_fields(pid: u32, key: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let t = t?.path();
        let status = std::fs::read_to_string(t.join("status"))?;
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in {}", t.display()))?
            .trim()
            .to_owned();
        out.push((name, v));
    }
    Ok(out)
}

/// After setup the daemon holds no capability in any set, on every thread, and has
/// no_new_privs; it still serves HTTP and HTTPS, reloads its certificate on SIGHUP, publishes
/// the XDP program's counters (map reads) and stops cleanly. With `drop_capabilities = false`
/// it keeps them (so the check above can fail).
#[test]
fn capabilities_are_dropped_after_setup() -> Result<()> {
    let topo = Topology::up()?;
    let mut certs = Certs::new("caps")?;
    let mut args: Vec<String> = vec![
        "--addr".into(),
        "198.18.0.1/24".into(),
        "--http".into(),
        "80".into(),
        "--stats-interval".into(),
        "0".into(),
        "--tls-threads".into(),
        "1".into(),
    ];
    args.extend(certs.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&topo, &argv)?;
    until_serving(&topo, Instant::now(), Duration::from_secs(3))?;
    let (ok, out) = peer_sh(
        &topo,
        &format!(
            "curl -sS -m 3 --cacert {} --resolve {NAME}:443:{ENGINE_ADDR} -o /dev/null \
             -w '%{{http_code}}' https://{NAME}/",
            certs.path("cas.pem")
        ),
    )?;
    ensure!(ok && out.trim() == "200", "HTTPS: {out}");
    let pid = daemon_pid(&d)?;
    let zero = "0000000000000000";
    let mut threads = 0;
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        let v = thread_fields(pid, key)?;
        threads = v.len();
        for (name, value) in &v {
            ensure!(value == zero, "thread {name}: {key} {value}, want {zero}");
        }
    }
    for (name, value) in thread_fields(pid, "NoNewPrivs:")? {
        ensure!(value == "1", "thread {name}: NoNewPrivs {value}");
    }
    ensure!(
        threads >= 4,
        "{threads} threads: main, worker, pool, metrics at least"
    );
    ensure!(
        d.lines()
            .iter()
            .any(|l| l.starts_with("capabilities dropped:")),
        "{}",
        d.lines().join("\n")
    );
    // Without capabilities: a certificate reload, the XDP counters (map reads), a clean stop.
    certs.make()?;
    std::process::Command::new("kill")
        .args(["-s", "HUP", &pid.to_string()])
        .status()?;
    wait_line(
        &d,
        "reloaded certificates (generation 1)",
        Duration::from_secs(3),
    )?;
    let o = topo.run_eng("curl -sS --fail -m 3 http://127.0.0.1:9900/metrics")?;
    let m = text(&o);
    let redirected: f64 = m
        .lines()
        .find(|l| l.starts_with("handshake_xdp_packets_total{action=\"redirected\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no redirected counter:\n{m}"))?;
    ensure!(
        redirected > 0.0,
        "XDP counters not read: redirected {redirected}"
    );
    stop_clean(d)?;
    println!(
        "capabilities: {threads} threads, CapInh/CapPrm/CapEff/CapBnd/CapAmb all {zero}, \
         NoNewPrivs 1; SIGHUP reload, metrics ({redirected} frames redirected) and a clean stop \
         without them"
    );

    // The switch: kept, the root daemon has its full effective set.
    let cfg = certs.path("keep.toml");
    std::fs::write(&cfg, "drop_capabilities = false\n")?;
    let mut keep = argv.clone();
    keep.extend(["--config", cfg.as_str()]);
    let d = Daemon::start(&topo, &keep)?;
    let eff = thread_fields(daemon_pid(&d)?, "CapEff:")?;
    ensure!(eff.iter().all(|(_, v)| v != zero), "{eff:?}");
    stop_clean(d)?;
    Ok(())
}

/// As the systemd unit runs it: an unprivileged user (nobody) with only the five capabilities
/// of docs/deployment.md, ambient. After setup its effective, permitted, inheritable and ambient
/// sets are empty on every thread, no_new_privs is set, and the bounding set is exactly those
/// five (without CAP_SETPCAP it cannot be emptied; with nothing permitted and no_new_privs it
/// grants nothing). It still serves.
#[test]
fn capabilities_are_dropped_as_an_unprivileged_user_with_the_minimal_set() -> Result<()> {
    let topo = Topology::up()?;
    let caps = "+net_admin,+net_raw,+ipc_lock,+perfmon,+bpf";
    let d = Daemon::start_under(
        &topo,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps=-all,{caps}"),
            &format!("--bounding-set=-all,{caps}"),
            "--",
        ],
        &[
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    until_serving(&topo, Instant::now(), Duration::from_secs(3))?;
    serves_fully(&topo)?;
    let pid = daemon_pid(&d)?;
    let five = format!(
        "{:016x}",
        (1u64 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39)
    );
    let zero = "0000000000000000";
    for (key, want) in [
        ("CapInh:", zero),
        ("CapPrm:", zero),
        ("CapEff:", zero),
        ("CapAmb:", zero),
        ("CapBnd:", five.as_str()),
        ("NoNewPrivs:", "1"),
        ("Uid:", "65534\t65534\t65534\t65534"),
    ] {
        for (name, value) in thread_fields(pid, key)? {
            ensure!(value == want, "thread {name}: {key} {value}, want {want}");
        }
    }
    ensure!(
        d.lines()
            .iter()
            .any(|l| l.starts_with("capabilities dropped: 5 permitted before")),
        "{}",
        d.lines().join("\n")
    );
    stop_clean(d)?;
    println!(
        "capabilities as nobody with the five: CapInh/CapPrm/CapEff/CapAmb {zero}, CapBnd {five}, \
         NoNewPrivs 1 on every thread; serving"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Secrets never logged

/// Base64 (standard alphabet, padded).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn unhex(h: &str) -> Result<Vec<u8>> {
    ensure!(h.len().is_multiple_of(2), "odd hex {h}");
    (0..h.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&h[i..i + 2], 16)?))
        .collect()
}

/// The daemon at its most verbose (`RUST_LOG=trace`, `--trace all`, stats every second) serves
/// curl over TLS 1.3 and 1.2 with SSLKEYLOGFILE set. Neither the private key (each line of its
/// PEM body, the body joined) nor any traffic secret from the key log (hex either case, base64)
/// appears in the daemon's stdout, stderr or trace file, which are verbose (the trace holds
/// both connections' TLS records, the log holds trace-level lines).
#[test]
fn secrets_never_reach_the_logs_or_the_trace() -> Result<()> {
    let topo = Topology::up()?;
    let certs = Certs::new("secrets")?;
    let trace = certs.path("trace.jsonl");
    let keylog = certs.path("keylog.txt");
    let mut args: Vec<String> = vec![
        "--addr".into(),
        "198.18.0.1/24".into(),
        "--stats-interval".into(),
        "1".into(),
        "--trace".into(),
        "all".into(),
        "--trace-file".into(),
        trace.clone(),
    ];
    args.extend(certs.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start_env(&topo, &["RUST_LOG=trace"], &argv)?;
    for tls in ["--tlsv1.3", "--tlsv1.2 --tls-max 1.2"] {
        let (ok, out) = peer_sh(
            &topo,
            &format!(
                "SSLKEYLOGFILE={keylog} curl -sS -m 3 {tls} --cacert {} --resolve \
                 {NAME}:443:{ENGINE_ADDR} -o /dev/null -w '%{{http_code}}' https://{NAME}/",
                certs.path("cas.pem")
            ),
        )?;
        ensure!(ok && out.trim() == "200", "curl {tls}: {out}");
    }
    std::thread::sleep(Duration::from_millis(1200));
    let mut d = d;
    let lines = d.stop_with("TERM")?;
    let log = lines.join("\n");
    let trace_text = std::fs::read_to_string(&trace)?;
    ensure!(
        lines.len() >= 30 && log.contains("TRACE"),
        "the log is not verbose ({} lines):\n{log}",
        lines.len()
    );
    ensure!(
        trace_text.lines().count() >= 20 && trace_text.contains("tls"),
        "the trace is not verbose:\n{trace_text}"
    );
    let haystack = format!("{log}\n{trace_text}");
    let lower = haystack.to_lowercase();
    // The key: every base64 line of its PEM body, and its DER as hex.
    let pem = std::fs::read_to_string(certs.path("key.pem"))?;
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    ensure!(!body.is_empty(), "{pem}");
    let mut checked = 0;
    for l in &body {
        ensure!(
            !haystack.contains(l),
            "a line of the private key is in the output: {l}"
        );
        checked += 1;
    }
    let whole: String = body.concat();
    ensure!(
        !haystack.contains(&whole),
        "the key's PEM body is in the output"
    );
    // Traffic secrets, from curl's key log.
    let kl = std::fs::read_to_string(&keylog)?;
    let mut secrets = 0;
    for l in kl.lines().filter(|l| !l.starts_with('#')) {
        let w: Vec<&str> = l.split_whitespace().collect();
        ensure!(w.len() == 3, "key log line {l:?}");
        let secret = w[2].to_lowercase();
        let bytes = unhex(&secret)?;
        ensure!(bytes.len() >= 32, "{l}");
        ensure!(
            !lower.contains(&secret) && !lower.contains(&secret[..32]),
            "{}'s secret is in the output (hex)",
            w[0]
        );
        for needle in [base64(&bytes), base64(&bytes[..24])] {
            ensure!(
                !haystack.contains(&needle),
                "{}'s secret is in the output (base64)",
                w[0]
            );
        }
        // As a byte list too (e.g. a Debug print of a Vec<u8>).
        let list = format!("{:?}", &bytes[..16]);
        ensure!(!haystack.contains(&list[1..list.len() - 1]), "{}", w[0]);
        secrets += 1;
    }
    let labels: Vec<&str> = kl.lines().filter_map(|l| l.split(' ').next()).collect();
    ensure!(
        labels.contains(&"CLIENT_RANDOM") && labels.contains(&"SERVER_TRAFFIC_SECRET_0"),
        "TLS 1.2 and 1.3 secrets expected in the key log:\n{kl}"
    );
    println!(
        "secrets: {} log lines ({} bytes) and {} trace lines searched; {checked} key PEM lines, the \
         joined key body and {secrets} traffic secrets (hex, base64, byte lists) absent",
        lines.len(),
        log.len(),
        trace_text.lines().count()
    );
    Ok(())
}
