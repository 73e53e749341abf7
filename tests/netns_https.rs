//! Privileged HTTPS tests over veth with real clients in the peer namespace: curl, openssl
//! s_client (TLS 1.3, 1.2, 1.1 refused, resumption), a Python `ssl` client (1,000 keep-alive
//! requests, 500 parallel connections), two parallel 16 MiB downloads checked by SHA-256, and
//! hostile clients (garbage gets an alert and FIN; a stalled handshake is reset after the
//! handshake timeout; slowloris gets 408; beyond the session limit connections are refused).
//! Run with `cargo xtask test` (root).

use anyhow::{ensure, Context, Result};
use handshake_tests::daemon::Daemon;
use handshake_tests::netns::Topology;
use std::path::PathBuf;

use handshake_tests::netns::output_text as text;

/// A temporary directory with a self-signed P-256 certificate for 198.18.0.1 and a web root.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Result<Site> {
        let dir = std::env::temp_dir().join(format!("hs-https-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www"))?;
        let o = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=handshake.test"])
            .args(["-addext", "subjectAltName=IP:198.18.0.1,DNS:handshake.test"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()?;
        ensure!(o.status.success(), "openssl req: {}", text(&o));
        Ok(Site { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn write(&self, name: &str, body: &[u8]) -> Result<()> {
        Ok(std::fs::write(self.dir.join("www").join(name), body)?)
    }

    /// Daemon arguments: HTTPS on 443 with this certificate, serving `www/`, plus `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "--addr",
            "198.18.0.1/24",
            "--https",
            "443",
            "--stats-interval",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend([
            "--cert".into(),
            self.path("cert.pem"),
            "--key".into(),
            self.path("key.pem"),
            "--root".into(),
            self.path("www"),
        ]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(topo: &Topology, site: &Site, extra: &[&str]) -> Result<Daemon> {
    let args = site.args(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(topo, &refs)
}

fn peer(topo: &Topology, cmd: &str) -> Result<String> {
    let o = topo.run_peer_args(["sh", "-c", cmd])?;
    let out = text(&o);
    ensure!(o.status.success(), "`{cmd}` failed:\n{out}");
    Ok(out)
}

/// A deterministic page of `n` bytes.
fn page(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i * 7 + seed as usize) % 26) as u8)
        .collect()
}

/// The `final tls pool:` or `final:` line's value after `key`.
fn counter(lines: &[String], key: &str) -> Option<u64> {
    lines
        .iter()
        .filter(|l| l.starts_with("final"))
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == key)?;
            w.get(i + 1)?.parse().ok()
        })
}

fn curl_page(tls_threads: &str) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("curl{tls_threads}"))?;
    let body = page(3000, 1);
    site.write("index.html", &body)?;
    let mut d = start(&topo, &site, &["--tls-threads", tls_threads])?;
    let cmd = format!(
        "curl -sS -v --max-time 10 --cacert {} https://198.18.0.1/ https://198.18.0.1/index.html -o {} -o {}",
        site.path("cert.pem"),
        site.path("a"),
        site.path("b")
    );
    let out = peer(&topo, &cmd)?;
    ensure!(out.contains("< HTTP/1.1 200 OK"), "{out}");
    ensure!(
        out.contains("Re-using existing connection") || out.contains("Reusing existing"),
        "keep-alive not reused:\n{out}"
    );
    ensure!(out.contains("ALPN: server accepted http/1.1"), "{out}");
    for f in ["a", "b"] {
        ensure!(std::fs::read(site.path(f))? == body, "body {f} differs");
    }
    let lines = d.stop_with("TERM")?;
    let handshakes = if tls_threads == "0" {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("final: "))
            .and_then(|l| l.split(" tls ").nth(1))
            .and_then(|t| t.split('/').nth(1))
            .and_then(|h| h.parse::<u64>().ok())
    } else {
        counter(&lines, "handshakes")
    };
    ensure!(
        handshakes == Some(1),
        "one handshake for two requests: {lines:?}"
    );
    Ok(())
}

#[test]
fn curl_gets_the_exact_page_inline() -> Result<()> {
    curl_page("0")
}

#[test]
fn curl_gets_the_exact_page_on_the_pool() -> Result<()> {
    curl_page("1")
}

#[test]
fn openssl_tls13_tls12_resumption_and_tls11_refused() -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new("openssl")?;
    site.write("index.html", b"hi")?;
    let _d = start(&topo, &site, &[])?;
    let ca = site.path("cert.pem");
    let s_client = |flags: &str| -> Result<String> {
        let cmd = format!(
            "sleep 0.5 | timeout 10 openssl s_client -connect 198.18.0.1:443 -servername handshake.test -CAfile {ca} {flags}"
        );
        let o = topo.run_peer_args(["sh", "-c", &cmd])?;
        Ok(text(&o))
    };
    let out = s_client("-tls1_3")?;
    ensure!(out.contains("New, TLSv1.3, Cipher is TLS_"), "{out}");
    ensure!(out.contains("Verify return code: 0 (ok)"), "{out}");
    let out = s_client("-tls1_2")?;
    ensure!(out.contains("New, TLSv1.2, Cipher is ECDHE-"), "{out}");
    let out = s_client("-tls1_1")?;
    ensure!(
        !out.contains("Cipher is ECDHE") && !out.contains("New, TLSv1.1"),
        "{out}"
    );
    ensure!(
        out.contains("alert") || out.contains("no protocols available"),
        "{out}"
    );
    for v in ["-tls1_3", "-tls1_2"] {
        let sess = site.path(&format!("sess{v}"));
        let first = s_client(&format!("{v} -sess_out {sess}"))?;
        ensure!(first.contains("New, "), "{first}");
        let second = s_client(&format!("{v} -sess_in {sess}"))?;
        ensure!(second.contains("Reused, "), "{v} not resumed:\n{second}");
    }
    Ok(())
}

/// 1,000 keep-alive requests on one connection, then 500 connections in parallel; every body
/// compared byte for byte.
const PY_CLIENTS: &str = r#"
import socket, ssl, sys, threading
ca, expect = sys.argv[1], open(sys.argv[2], 'rb').read()
ctx = ssl.create_default_context(cafile=ca)
def conn():
    s = socket.create_connection(('198.18.0.1', 443), timeout=30)
    return ctx.wrap_socket(s, server_hostname='198.18.0.1')
def get(t, close=False):
    t.sendall(b'GET /page.html HTTP/1.1\r\nHost: x\r\n' + (b'Connection: close\r\n' if close else b'') + b'\r\n')
    buf = b''
    while b'\r\n\r\n' not in buf:
        b = t.recv(65536)
        if not b: raise Exception('eof in head')
        buf += b
    head, body = buf.split(b'\r\n\r\n', 1)
    assert head.startswith(b'HTTP/1.1 200 OK'), head
    n = int([l for l in head.split(b'\r\n') if l.lower().startswith(b'content-length:')][0].split(b':')[1])
    while len(body) < n:
        b = t.recv(65536)
        if not b: raise Exception('eof in body')
        body += b
    assert body == expect, 'body differs'
t = conn()
for i in range(1000):
    get(t)
t.close()
print('keepalive ok 1000')
ok = [0]
errs = []
lock = threading.Lock()
def one():
    try:
        c = conn()
        get(c, close=True)
        c.close()
        with lock: ok[0] += 1
    except Exception as e:
        with lock: errs.append(repr(e))
ths = [threading.Thread(target=one) for _ in range(500)]
for th in ths: th.start()
for th in ths: th.join()
print('parallel ok', ok[0], 'errors', len(errs), errs[:3])
"#;

fn python_clients(tls_threads: &str) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("py{tls_threads}"))?;
    let body = page(5000, 2);
    site.write("page.html", &body)?;
    std::fs::write(site.path("expect"), &body)?;
    let mut d = start(&topo, &site, &["--tls-threads", tls_threads])?;
    let out = topo.py(PY_CLIENTS, &[&site.path("cert.pem"), &site.path("expect")])?;
    ensure!(out.contains("keepalive ok 1000"), "{out}");
    ensure!(out.contains("parallel ok 500 errors 0"), "{out}");
    let lines = d.stop_with("TERM")?;
    println!(
        "{}",
        lines
            .iter()
            .filter(|l| l.starts_with("final"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn python_ssl_keep_alive_and_500_parallel_inline() -> Result<()> {
    python_clients("0")
}

#[test]
fn python_ssl_keep_alive_and_500_parallel_on_the_pool() -> Result<()> {
    python_clients("1")
}

#[test]
fn two_parallel_16_mib_downloads_match_sha256() -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new("big")?;
    let big: Vec<u8> = (0..16usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    site.write("big.bin", &big)?;
    let _d = start(&topo, &site, &[])?;
    let want = peer(&topo, &format!("sha256sum {}", site.path("www/big.bin")))?;
    let want = want.split_whitespace().next().context("sha")?.to_string();
    let ca = site.path("cert.pem");
    let cmd = format!(
        "curl -sS --max-time 60 --cacert {ca} https://198.18.0.1/big.bin -o {a} & curl -sS --max-time 60 --cacert {ca} https://198.18.0.1/big.bin -o {b}; wait; sha256sum {a} {b}",
        a = site.path("d1"),
        b = site.path("d2")
    );
    let out = peer(&topo, &cmd)?;
    let sums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        sums.len() == 2 && sums.iter().all(|s| *s == want),
        "want {want}:\n{out}"
    );
    Ok(())
}

/// Garbage, a truncated ClientHello, slowloris, and the session limit.
const PY_HOSTILE: &str = r#"
import socket, ssl, sys, time
ca, what = sys.argv[1], sys.argv[2]
def raw():
    return socket.create_connection(('198.18.0.1', 443), timeout=10)
if what == 'garbage':
    # A plain-HTTP client on the TLS port, and a handshake record claiming a 6 MB message.
    for junk in [b'GET / HTTP/1.1\r\nHost: x\r\n\r\n', b'\x16\x03\x01\x00\x05hello-this-is-not-tls']:
        s = raw(); s.sendall(junk)
        r = s.recv(100)
        print('garbage answer', r[:1].hex(), len(r))
elif what == 'truncated':
    s = raw(); s.sendall(bytes.fromhex('160301020001'))  # a record header and 1 byte of ClientHello
    t0 = time.time()
    try:
        r = s.recv(100)
        how = 'fin'
    except ConnectionResetError:
        r, how = b'', 'rst'
    print('truncated closed after', round(time.time() - t0, 1), 'bytes', len(r), how)
elif what == 'slowloris':
    ctx = ssl.create_default_context(cafile=ca)
    t = ctx.wrap_socket(raw(), server_hostname='198.18.0.1')
    t.sendall(b'GET / HT')
    t0 = time.time()
    r = b''
    while True:
        b = t.recv(4096)
        if not b: break
        r += b
    print('slowloris', r.split(b'\r\n')[0].decode(), 'after', round(time.time() - t0, 1))
elif what == 'limit':
    ctx = ssl.create_default_context(cafile=ca)
    held = [ctx.wrap_socket(raw(), server_hostname='198.18.0.1') for _ in range(4)]
    try:
        x = ctx.wrap_socket(raw(), server_hostname='198.18.0.1')
        print('fifth accepted')
    except (ConnectionResetError, ssl.SSLError, OSError) as e:
        print('fifth refused', type(e).__name__)
    held[0].close()
    time.sleep(0.5)
    y = ctx.wrap_socket(raw(), server_hostname='198.18.0.1')
    y.sendall(b'GET / HTTP/1.1\r\nConnection: close\r\n\r\n')
    print('after close', y.recv(100).split(b'\r\n')[0].decode())
"#;

#[test]
fn hostile_clients_get_alerts_timeouts_and_refusals() -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new("hostile")?;
    site.write("index.html", b"ok")?;
    let cfg = site.path("hostile.toml");
    std::fs::write(
        &cfg,
        "request_timeout_ms = 1000\n[tls]\nhandshake_timeout_ms = 1000\nmax_sessions = 4\n",
    )?;
    let mut d = start(&topo, &site, &["--config", &cfg])?;
    let ca = site.path("cert.pem");
    let out = topo.py(PY_HOSTILE, &[&ca, "garbage"])?;
    ensure!(
        out.matches("garbage answer 15 7").count() == 2,
        "alerts expected: {out}"
    );
    let out = topo.py(PY_HOSTILE, &[&ca, "truncated"])?;
    ensure!(
        out.contains("truncated closed after") && out.contains("bytes 0"),
        "{out}"
    );
    let secs: f64 = out
        .split("after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("seconds")?;
    ensure!(
        (0.8..5.0).contains(&secs),
        "handshake timeout after {secs} s"
    );
    let out = topo.py(PY_HOSTILE, &[&ca, "slowloris"])?;
    ensure!(
        out.contains("slowloris HTTP/1.1 408 Request Timeout"),
        "{out}"
    );
    let out = topo.py(PY_HOSTILE, &[&ca, "limit"])?;
    ensure!(out.contains("fifth refused"), "{out}");
    ensure!(out.contains("after close HTTP/1.1 200 OK"), "{out}");
    let lines = d.stop_with("TERM")?;
    let fin = lines
        .iter()
        .find(|l| l.starts_with("final: "))
        .context("final line")?;
    let num = |key: &str| -> Option<u64> {
        let w: Vec<&str> = fin.split_whitespace().collect();
        let i = w.iter().position(|x| *x == key)?;
        w.get(i + 1)?.parse().ok()
    };
    ensure!(num("tls_errors") >= Some(1), "{fin}");
    ensure!(num("tls_timeouts") >= Some(1), "{fin}");
    ensure!(num("tls_refused") >= Some(1), "{fin}");
    Ok(())
}
