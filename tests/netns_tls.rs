//! Privileged HTTPS tests, one per criterion of issue 4, each on its own veth topology with its
//! own daemon and real clients in the peer namespace: curl (inline and pool, keep-alive), openssl
//! s_client (TLS 1.3, 1.2, resumption of both, a real TLS 1.1 ClientHello refused), a Python
//! `ssl` client (Debian's /usr/bin/python3, stdlib only: 1,000 keep-alive requests and 500
//! concurrent connections, inline and pool), two parallel 16 MiB downloads checked by SHA-256,
//! testssl.sh (Debian package `testssl.sh`, command `testssl`), and hostile clients (garbage, a
//! truncated ClientHello, slowloris, the session limit), inline and pool. Every test checks the
//! daemon's final TLS counters.
//!
//! Certificates: a fresh CA and a leaf for `IP:198.18.0.1, DNS:handshake.test` (ECDSA P-256,
//! rcgen) per test; the daemon serves the chain, clients trust only the CA. Pages are random
//! (the seed is printed; `HS_SEED=<n>` repeats a run). Run with
//! `cargo test -p handshake-tests --features netns --test netns_tls -- --test-threads=1` (root,
//! the release daemon built with `xdp`: `cargo xtask build`); about a minute.

use anyhow::{ensure, Context, Result};
use handshake_tests::daemon::{final_tls_inline, final_tls_pool, Daemon, TlsStats};
use handshake_tests::netns::{output_text as text, Topology};
use std::path::PathBuf;
use std::time::Instant;

/// The DNS name in the certificate (clients reach it with `--resolve` / `-servername`).
const NAME: &str = "handshake.test";

/// xorshift64*: reproducible random pages (the seed is printed).
struct Rng(u64);

impl Rng {
    fn seeded(tag: &str) -> Rng {
        let seed = std::env::var("HS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                t ^ u64::from(std::process::id()).rotate_left(32)
            })
            | 1;
        println!("{tag}: seed {seed} (HS_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A temporary directory: `ca.pem` (the only trust anchor clients get), `chain.pem` (leaf +
/// CA, what the daemon serves), `key.pem`, and the web root `www/`.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Result<Site> {
        let dir = std::env::temp_dir().join(format!("hs-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www"))?;
        let site = Site { dir };
        site.certificates()?;
        Ok(site)
    }

    fn certificates(&self) -> Result<()> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "handshake test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["198.18.0.1".to_owned(), NAME.to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, NAME);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(self.dir.join("ca.pem"), ca.pem())?;
        std::fs::write(
            self.dir.join("chain.pem"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )?;
        let key_path = self.dir.join("key.pem");
        std::fs::write(&key_path, key.serialize_pem())?;
        // Owner-only: the daemon refuses a private key every user can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Puts a file under the web root (before the daemon starts: it loads the root at start).
    fn put(&self, name: &str, body: &[u8]) -> Result<()> {
        Ok(std::fs::write(self.dir.join("www").join(name), body)?)
    }

    /// Writes a config file and returns its path.
    fn config(&self, toml: &str) -> Result<String> {
        let path = self.path("handshake.toml");
        std::fs::write(&path, toml)?;
        Ok(path)
    }

    /// Starts the daemon: HTTPS on 443 with this chain, serving `www/`, plus `extra`.
    fn start(&self, topo: &Topology, mode: Mode, extra: &[&str]) -> Result<Daemon> {
        let (chain, key, root) = (
            self.path("chain.pem"),
            self.path("key.pem"),
            self.path("www"),
        );
        let mut args = vec![
            "--addr",
            "198.18.0.1/24",
            "--https",
            "443",
            "--stats-interval",
            "0",
            "--cert",
            &chain,
            "--key",
            &key,
            "--root",
            &root,
            "--tls-threads",
            mode.threads(),
        ];
        args.extend_from_slice(extra);
        Daemon::start(topo, &args)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where TLS runs: on the packet core, or on one pool thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Inline,
    Pool,
}

impl Mode {
    fn threads(self) -> &'static str {
        match self {
            Mode::Inline => "0",
            Mode::Pool => "1",
        }
    }
}

/// Stops the daemon (SIGTERM), prints its final lines and returns the TLS counters of `mode`.
/// In pool mode no TLS session may have run inline.
fn finish(mut d: Daemon, mode: Mode) -> Result<TlsStats> {
    let lines = d.stop_with("TERM")?;
    for l in lines.iter().filter(|l| l.starts_with("final")) {
        println!("{l}");
    }
    let inline = final_tls_inline(&lines)?;
    match mode {
        Mode::Inline => Ok(inline),
        Mode::Pool => {
            ensure!(
                inline.sessions == 0 && inline.handshakes == 0,
                "pool mode: no TLS session may run inline: {inline:?}"
            );
            final_tls_pool(&lines)
        }
    }
}

/// Runs `sh -c cmd` in the peer namespace; fails if it fails.
fn peer(topo: &Topology, cmd: &str) -> Result<String> {
    let o = topo.run_peer_args(["sh", "-c", cmd])?;
    let out = text(&o);
    ensure!(o.status.success(), "`{cmd}` failed ({}):\n{out}", o.status);
    Ok(out)
}

/// The number after `key` on the line of `out` that starts with `prefix`.
fn figure(out: &str, prefix: &str, key: &str) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no `{prefix}` line in:\n{out}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w
        .iter()
        .position(|x| *x == key)
        .with_context(|| format!("no {key} in {line:?}"))?;
    w.get(i + 1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no number after {key} in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// curl

fn curl(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("curl-{mode:?}"))?;
    let mut rng = Rng::seeded("curl");
    let n = 3000 + rng.below(30_000) as usize;
    let body = rng.bytes(n);
    site.put("index.html", &body)?;
    let d = site.start(&topo, mode, &[])?;
    let ca = site.path("ca.pem");
    // Two URLs on one command line: the second must reuse the first's connection.
    let out = peer(
        &topo,
        &format!(
            "curl -sS -v --max-time 10 --cacert {ca} https://198.18.0.1/ https://198.18.0.1/index.html \
             -o {a} -o {b} -w '%{{http_code}} %{{size_download}}\\n'",
            a = site.path("a"),
            b = site.path("b")
        ),
    )?;
    ensure!(
        out.matches(&format!("200 {n}\n")).count() == 2,
        "two 200s of {n} bytes:\n{out}"
    );
    ensure!(
        out.contains("Re-using existing connection"),
        "keep-alive not reused:\n{out}"
    );
    ensure!(out.contains("ALPN: server accepted http/1.1"), "{out}");
    ensure!(out.contains("SSL certificate verify ok"), "{out}");
    for f in ["a", "b"] {
        ensure!(
            std::fs::read(site.path(f))? == body,
            "body {f} differs from the page"
        );
    }
    // By name: SNI and the DNS SAN.
    let out = peer(
        &topo,
        &format!(
            "curl -sS --max-time 10 --cacert {ca} --resolve {NAME}:443:198.18.0.1 https://{NAME}/ -o {c}",
            c = site.path("c")
        ),
    )?;
    ensure!(std::fs::read(site.path("c"))? == body, "by name: {out}");
    let t = finish(d, mode)?;
    ensure!(
        (t.sessions, t.handshakes, t.resumed, t.http) == (2, 2, 0, 3),
        "two connections, two full handshakes, three responses: {t:?}"
    );
    ensure!((t.errors, t.timeouts, t.refused) == (0, 0, 0), "{t:?}");
    println!("curl {mode:?}: {n}-byte page, 3 × 200, keep-alive reused, {t:?}");
    Ok(())
}

#[test]
fn curl_exact_body_and_keep_alive_inline() -> Result<()> {
    curl(Mode::Inline)
}

#[test]
fn curl_exact_body_and_keep_alive_pool() -> Result<()> {
    curl(Mode::Pool)
}

// ---------------------------------------------------------------------------------------------
// openssl s_client

fn s_client(topo: &Topology, ca: &str, flags: &str) -> Result<String> {
    // stdin open for 0.5 s: a TLS 1.3 ticket arrives after the handshake.
    let cmd = format!(
        "sleep 0.5 | timeout 10 openssl s_client -connect 198.18.0.1:443 -servername {NAME} \
         -CAfile {ca} -verify_return_error -alpn http/1.1 {flags}"
    );
    Ok(text(&topo.run_peer_args(["sh", "-c", &cmd])?))
}

fn openssl(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("openssl-{mode:?}"))?;
    site.put("index.html", b"hello")?;
    let d = site.start(&topo, mode, &[])?;
    let ca = site.path("ca.pem");
    for (flag, proto, cipher) in [
        ("-tls1_3", "TLSv1.3", "TLS_"),
        ("-tls1_2", "TLSv1.2", "ECDHE-ECDSA-"),
    ] {
        let sess = site.path(&format!("sess{flag}"));
        let first = s_client(&topo, &ca, &format!("{flag} -sess_out {sess}"))?;
        ensure!(
            first.contains(&format!("New, {proto}, Cipher is {cipher}")),
            "{flag}:\n{first}"
        );
        ensure!(
            first.contains(&format!("Protocol  : {proto}")),
            "{flag}:\n{first}"
        );
        ensure!(
            first.contains("Verify return code: 0 (ok)"),
            "{flag}:\n{first}"
        );
        ensure!(
            first.contains("ALPN protocol: http/1.1"),
            "{flag}:\n{first}"
        );
        let second = s_client(&topo, &ca, &format!("{flag} -sess_in {sess}"))?;
        ensure!(
            second.contains(&format!("Reused, {proto}, Cipher is {cipher}")),
            "{flag} -sess_in not resumed:\n{second}"
        );
        println!(
            "{flag}: {}; resumed: {}",
            first.lines().find(|l| l.starts_with("New, ")).unwrap_or(""),
            second
                .lines()
                .find(|l| l.starts_with("Reused, "))
                .unwrap_or("")
        );
    }
    // A real TLS 1.1 ClientHello: OpenSSL 3 only sends one at security level 0.
    let old = s_client(&topo, &ca, "-tls1_1 -cipher DEFAULT@SECLEVEL=0")?;
    ensure!(
        !old.contains("no protocols available"),
        "the client refused to try:\n{old}"
    );
    // OpenSSL still prints `Protocol  : TLSv1.1` (what it offered), but with no cipher.
    ensure!(
        old.contains("New, (NONE), Cipher is (NONE)") && !old.contains("New, TLSv1.1"),
        "TLS 1.1 negotiated:\n{old}"
    );
    // All the server sent: one 7-byte alert record, handshake_failure (40).
    ensure!(
        old.contains("SSL handshake has read 7 bytes")
            && old.contains("alert handshake failure")
            && old.contains("SSL alert number 40"),
        "TLS 1.1 must be refused with alert 40:\n{old}"
    );
    println!(
        "-tls1_1: {}",
        old.lines()
            .find(|l| l.contains("alert"))
            .unwrap_or("")
            .trim()
    );
    let t = finish(d, mode)?;
    ensure!(
        (t.sessions, t.handshakes, t.resumed, t.errors) == (5, 4, 2, 1),
        "4 handshakes (2 resumed) and 1 refused ClientHello: {t:?}"
    );
    if let Some(tls12) = t.tls12 {
        ensure!(tls12 == 2, "two TLS 1.2 handshakes: {t:?}");
    }
    ensure!((t.timeouts, t.refused) == (0, 0), "{t:?}");
    Ok(())
}

#[test]
fn openssl_tls13_tls12_resumption_tls11_refused_inline() -> Result<()> {
    openssl(Mode::Inline)
}

#[test]
fn openssl_tls13_tls12_resumption_tls11_refused_pool() -> Result<()> {
    openssl(Mode::Pool)
}

// ---------------------------------------------------------------------------------------------
// Python ssl: 1,000 keep-alive requests on one connection, 500 concurrent connections

/// argv: CA, path, keep-alive requests, parallel connections, expected body file.
/// The parallel connections all finish their handshake before any sends its request (a
/// barrier), so all of them are open at once.
const PY_LOAD: &str = r#"
import socket, ssl, sys, threading, time
ca, path, nka, npar = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
expect = open(sys.argv[5], 'rb').read()
ctx = ssl.create_default_context(cafile=ca)
def conn():
    s = socket.create_connection(('198.18.0.1', 443), timeout=60)
    return ctx.wrap_socket(s, server_hostname='198.18.0.1')
def response(t, buf):
    while b'\r\n\r\n' not in buf:
        b = t.recv(65536)
        if not b: raise Exception('EOF in the head after %d bytes' % len(buf))
        buf += b
    head, rest = buf.split(b'\r\n\r\n', 1)
    lines = head.split(b'\r\n')
    if lines[0] != b'HTTP/1.1 200 OK': raise Exception('status %r' % lines[0])
    n = [int(l.split(b':', 1)[1]) for l in lines[1:] if l.lower().startswith(b'content-length:')]
    if n != [len(expect)]: raise Exception('content-length %r' % n)
    while len(rest) < n[0]:
        b = t.recv(65536)
        if not b: raise Exception('EOF in the body')
        rest += b
    return rest[:n[0]], rest[n[0]:]
req = ('GET %s HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n' % path).encode()
t0 = time.time()
t = conn()
bad = 0
for i in range(nka):
    t.sendall(req)
    body, extra = response(t, b'')
    if body != expect or extra: bad += 1
t.close()
print('keepalive requests', nka, 'bad', bad, 'secs', round(time.time() - t0, 2))
lock = threading.Lock()
ok, errs = [0], []
barrier = threading.Barrier(npar, timeout=60)
close = ('GET %s HTTP/1.1\r\nHost: 198.18.0.1\r\nConnection: close\r\n\r\n' % path).encode()
def one():
    try:
        c = conn()
        barrier.wait()
        c.sendall(close)
        body, extra = response(c, b'')
        while True:
            b = c.recv(65536)
            if not b: break
            extra += b
        c.close()
        if body != expect: raise Exception('body differs')
        if extra: raise Exception('%d bytes after the body' % len(extra))
        with lock: ok[0] += 1
    except Exception as e:
        barrier.abort()
        with lock: errs.append(repr(e))
t0 = time.time()
ths = [threading.Thread(target=one) for _ in range(npar)]
for th in ths: th.start()
for th in ths: th.join()
print('parallel connections', npar, 'ok', ok[0], 'errors', len(errs), 'secs', round(time.time() - t0, 2), errs[:3])
"#;

fn python(mode: Mode) -> Result<()> {
    const KEEPALIVE: u64 = 1000;
    const PARALLEL: u64 = 500;
    let topo = Topology::up()?;
    let site = Site::new(&format!("py-{mode:?}"))?;
    let mut rng = Rng::seeded("python");
    // Spans at least two TLS records (16 KiB each) and many segments.
    let n = 20_000 + rng.below(20_000) as usize;
    let body = rng.bytes(n);
    site.put("page.bin", &body)?;
    std::fs::write(site.path("expect"), &body)?;
    let d = site.start(&topo, mode, &[])?;
    let out = topo.py(
        PY_LOAD,
        &[
            &site.path("ca.pem"),
            "/page.bin",
            &KEEPALIVE.to_string(),
            &PARALLEL.to_string(),
            &site.path("expect"),
        ],
    )?;
    print!("{out}");
    ensure!(
        figure(&out, "keepalive", "requests")? == KEEPALIVE as f64
            && figure(&out, "keepalive", "bad")? == 0.0,
        "{out}"
    );
    ensure!(
        figure(&out, "parallel", "ok")? == PARALLEL as f64
            && figure(&out, "parallel", "errors")? == 0.0,
        "{out}"
    );
    let t = finish(d, mode)?;
    ensure!(
        (t.sessions, t.handshakes, t.resumed, t.http)
            == (1 + PARALLEL, 1 + PARALLEL, 0, KEEPALIVE + PARALLEL),
        "{t:?}"
    );
    ensure!((t.errors, t.timeouts, t.refused) == (0, 0, 0), "{t:?}");
    println!("python {mode:?}: {n}-byte page, {t:?}");
    Ok(())
}

#[test]
fn python_ssl_1000_keep_alive_500_parallel_inline() -> Result<()> {
    python(Mode::Inline)
}

#[test]
fn python_ssl_1000_keep_alive_500_parallel_pool() -> Result<()> {
    python(Mode::Pool)
}

// ---------------------------------------------------------------------------------------------
// 16 MiB twice in parallel

#[test]
fn two_parallel_16_mib_downloads_match_sha256() -> Result<()> {
    const SIZE: usize = 16 << 20;
    let topo = Topology::up()?;
    let site = Site::new("big")?;
    let big = Rng::seeded("16 MiB").bytes(SIZE);
    site.put("big.bin", &big)?;
    let d = site.start(&topo, Mode::Inline, &[])?;
    let want = peer(&topo, &format!("sha256sum {}", site.path("www/big.bin")))?;
    let want = want.split_whitespace().next().context("sha256")?.to_owned();
    let (a, b) = (site.path("d1"), site.path("d2"));
    let started = Instant::now();
    let out = peer(
        &topo,
        &format!(
            "for f in {a} {b}; do curl -sS --max-time 60 --cacert {ca} https://198.18.0.1/big.bin \
             -o $f -w \"$f %{{http_code}} %{{size_download}} %{{speed_download}}\\n\" & done; wait; \
             sha256sum {a} {b}",
            ca = site.path("ca.pem")
        ),
    )?;
    let secs = started.elapsed().as_secs_f64();
    print!("{out}");
    for f in [&a, &b] {
        ensure!(
            out.contains(&format!("{f} 200 {SIZE} ")),
            "{f}: 200 and {SIZE} bytes:\n{out}"
        );
        ensure!(
            out.lines().any(|l| l == format!("{want}  {f}")),
            "{f}: SHA-256 {want} expected:\n{out}"
        );
        ensure!(std::fs::read(f)? == big, "{f} differs from the file");
    }
    let t = finish(d, Mode::Inline)?;
    ensure!(
        (t.sessions, t.handshakes, t.http, t.errors) == (2, 2, 2, 0),
        "{t:?}"
    );
    println!(
        "2 × 16 MiB in {secs:.2} s ({:.0} MB/s together), SHA-256 {want}",
        2.0 * SIZE as f64 / secs / 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// testssl.sh

/// Prints `id<TAB>severity<TAB>finding` per entry of testssl's JSON file.
const PY_JSON: &str = r#"
import json, sys
for e in json.load(open(sys.argv[1])):
    print('%s\t%s\t%s' % (e.get('id'), e.get('severity'), e.get('finding')))
"#;

#[test]
fn testssl_finds_no_weak_protocol_or_cipher() -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new("testssl")?;
    site.put("index.html", b"hello")?;
    let d = site.start(&topo, Mode::Inline, &[])?;
    let json = site.path("testssl.json");
    let started = Instant::now();
    // -p protocols, -s cipher categories, -f forward secrecy, -E each cipher per protocol; no DNS.
    let o = topo.run_peer_args([
        "timeout",
        "90",
        "testssl",
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "batch",
        "--nodns",
        "none",
        "--connect-timeout",
        "5",
        "--openssl-timeout",
        "5",
        "-p",
        "-s",
        "-f",
        "-E",
        "--jsonfile",
        &json,
        "https://198.18.0.1/",
    ])?;
    let secs = started.elapsed().as_secs_f64();
    let report = text(&o);
    ensure!(
        std::path::Path::new(&json).exists(),
        "testssl wrote no JSON ({}):\n{report}",
        o.status
    );
    let rows = topo.py(PY_JSON, &[&json])?;
    let rows: Vec<(&str, &str, &str)> = rows
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some((f.next()?, f.next()?, f.next()?))
        })
        .collect();
    let find = |id: &str| rows.iter().find(|r| r.0 == id);
    // Protocols.
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let r = find(id).with_context(|| format!("no {id} entry:\n{report}"))?;
        ensure!(r.2.starts_with("not offered"), "{id} offered: {r:?}");
    }
    for id in ["TLS1_2", "TLS1_3"] {
        let r = find(id).with_context(|| format!("no {id} entry:\n{report}"))?;
        ensure!(r.2.starts_with("offered"), "{id} not offered: {r:?}");
    }
    // Cipher categories: none of the weak ones, strong ones offered.
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        let r = find(id).with_context(|| format!("no {id} entry:\n{report}"))?;
        ensure!(r.2.starts_with("not offered"), "{id}: {r:?}");
    }
    let strong = find("cipherlist_STRONG").context("no cipherlist_STRONG")?;
    ensure!(strong.2.starts_with("offered"), "{strong:?}");
    // Forward secrecy.
    // `PFS` in testssl 3.0 (Debian 12), `FS` from 3.1 on.
    let fs = find("FS")
        .or_else(|| find("PFS"))
        .with_context(|| format!("no FS entry in {rows:#?}"))?;
    ensure!(fs.1 == "OK", "forward secrecy: {fs:?}");
    // Every cipher offered (`-E`): TLS 1.2 or 1.3, AEAD, forward secret.
    let ciphers: Vec<&str> = rows
        .iter()
        .filter(|r| r.0.starts_with("cipher-"))
        .map(|r| r.2)
        .collect();
    ensure!(ciphers.len() >= 3, "-E listed too few ciphers: {rows:#?}");
    for c in &ciphers {
        let aead = c.contains("GCM") || c.contains("CHACHA20");
        let weak = ["CBC", "NULL", "RC4", "DES", "EXP", "anon", "RSA_WITH"]
            .iter()
            .any(|w| c.contains(w));
        let version = c.starts_with("TLS 1.2") || c.starts_with("TLS 1.3");
        ensure!(aead && !weak && version, "weak cipher offered: {c}");
    }
    // Nothing at MEDIUM or above, nothing testssl could not test (WARN), except what it says
    // about its own client (Debian's openssl has no GOST engine).
    const SCANNER_SIDE: &[&str] = &["engine_problem"];
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.1, "MEDIUM" | "HIGH" | "CRITICAL" | "WARN" | "FATAL"))
        .filter(|r| !SCANNER_SIDE.contains(&r.0))
        .collect();
    ensure!(bad.is_empty(), "findings at MEDIUM or above: {bad:#?}");
    let mut by_severity = std::collections::BTreeMap::new();
    for r in &rows {
        *by_severity.entry(r.1).or_insert(0) += 1;
    }
    let t = finish(d, Mode::Inline)?;
    ensure!(t.handshakes >= 1, "testssl completed no handshake: {t:?}");
    ensure!(t.timeouts == 0, "{t:?}");
    println!(
        "testssl ({secs:.1} s): {} findings {by_severity:?}; protocols {}; FS {:?}; daemon {t:?}\nciphers:\n  {}",
        rows.len(),
        ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]
            .iter()
            .filter_map(|id| find(id).map(|r| format!("{id}={}", r.2)))
            .collect::<Vec<_>>()
            .join(", "),
        fs.2,
        ciphers
            .iter()
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    ensure!(secs < 75.0, "testssl took {secs:.1} s");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hostile clients

/// Garbage on the TLS port: each case prints what came back (first record and how it closed).
const PY_GARBAGE: &str = r#"
import os, random, socket, sys
rng = random.Random(int(sys.argv[1]))
junk = rng.randbytes(300)
cases = [
    ('plain-http', b'GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n'),
    ('random', bytes([0x42]) + junk[1:]),
    ('bad-handshake-body', b'\x16\x03\x01\x00\x20' + junk[:32]),
    ('huge-record', b'\x16\x03\x01\xff\xff' + junk[:100]),
    ('sslv2-hello', bytes.fromhex('802b0103010012000000100000030000067f') + junk[:16]),
]
for name, data in cases:
    s = socket.create_connection(('198.18.0.1', 443), timeout=10)
    s.sendall(data)
    got, how = b'', 'fin'
    try:
        while True:
            b = s.recv(4096)
            if not b: break
            got += b
    except ConnectionResetError:
        how = 'rst'
    except socket.timeout:
        how = 'open'
    s.close()
    print('case', name, 'bytes', len(got), 'head', got[:7].hex() or '-', 'close', how)
"#;

#[test]
fn garbage_gets_a_tls_alert_and_a_close_inline() -> Result<()> {
    garbage(Mode::Inline)
}

#[test]
fn garbage_gets_a_tls_alert_and_a_close_pool() -> Result<()> {
    garbage(Mode::Pool)
}

fn garbage(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("garbage-{mode:?}"))?;
    site.put("index.html", b"ok")?;
    let d = site.start(&topo, mode, &[])?;
    let seed = Rng::seeded("garbage").next().to_string();
    let out = topo.py(PY_GARBAGE, &[&seed])?;
    print!("{out}");
    let cases: Vec<&str> = out.lines().filter(|l| l.starts_with("case ")).collect();
    ensure!(cases.len() == 5, "{out}");
    for c in &cases {
        let w: Vec<&str> = c.split_whitespace().collect();
        let head = w.get(5).copied().unwrap_or("");
        // A fatal alert record: 15 03 0x 00 02 02 <description>.
        ensure!(
            head.len() == 14 && head.starts_with("1503") && head[6..12] == *"000202",
            "{}: no fatal alert: {c}",
            w[1]
        );
        ensure!(
            w.get(7).is_some_and(|h| *h != "open"),
            "{}: connection left open: {c}",
            w[1]
        );
    }
    let t = finish(d, mode)?;
    ensure!(
        (t.errors, t.handshakes, t.http, t.timeouts) == (5, 0, 0, 0),
        "five bad inputs counted as TLS errors: {t:?}"
    );
    Ok(())
}

/// Sends the first half of a real ClientHello and waits for the server to close.
const PY_TRUNCATED: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname='handshake.test')
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
assert hello[0] == 0x16 and len(hello) > 100, hello[:8]
s = socket.create_connection(('198.18.0.1', 443), timeout=10)
s.sendall(hello[:len(hello) // 2])
t0 = time.time()
got, how = b'', 'fin'
try:
    while True:
        b = s.recv(4096)
        if not b: break
        got += b
except ConnectionResetError:
    how = 'rst'
except socket.timeout:
    how = 'open'
print('truncated hello', len(hello), 'sent', len(hello) // 2, 'closed after', round(time.time() - t0, 2), 'bytes', len(got), 'head', got[:7].hex() or '-', 'close', how)
# The same, but the client ends its side (FIN) after the half ClientHello.
s = socket.create_connection(('198.18.0.1', 443), timeout=10)
s.sendall(hello[:len(hello) // 2])
s.shutdown(socket.SHUT_WR)
t0 = time.time()
got, how = b'', 'fin'
try:
    while True:
        b = s.recv(4096)
        if not b: break
        got += b
except ConnectionResetError:
    how = 'rst'
except socket.timeout:
    how = 'open'
print('half-closed after', round(time.time() - t0, 2), 'bytes', len(got), 'head', got[:7].hex() or '-', 'close', how)
"#;

#[test]
fn truncated_client_hello_is_closed_by_the_handshake_timeout_inline() -> Result<()> {
    truncated(Mode::Inline)
}

#[test]
fn truncated_client_hello_is_closed_by_the_handshake_timeout_pool() -> Result<()> {
    truncated(Mode::Pool)
}

fn truncated(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("truncated-{mode:?}"))?;
    site.put("index.html", b"ok")?;
    let cfg = site.config("[tls]\nhandshake_timeout_ms = 1000\n")?;
    let d = site.start(&topo, mode, &["--config", &cfg])?;
    let out = topo.py(PY_TRUNCATED, &[&site.path("ca.pem")])?;
    print!("{out}");
    let secs = figure(&out, "truncated", "after")?;
    ensure!(
        (0.9..3.0).contains(&secs),
        "closed after {secs} s, the handshake timeout is 1 s:\n{out}"
    );
    ensure!(!out.contains("close open"), "{out}");
    // Either nothing or an alert before the close.
    let head = out
        .split("head ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .context("head")?;
    ensure!(head == "-" || head.starts_with("15"), "{out}");
    // Half a ClientHello, then FIN: closed at once (not left to the timeout).
    let secs = figure(&out, "half-closed", "after")?;
    ensure!(secs < 0.5, "half-closed: closed after {secs} s:\n{out}");
    let head = out
        .split("head ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .context("head")?;
    ensure!(head == "-" || head.starts_with("15"), "{out}");
    let t = finish(d, mode)?;
    // The stalled one is a handshake timeout; the one the peer abandoned (FIN mid-handshake)
    // is a TLS error.
    ensure!(
        (t.sessions, t.handshakes, t.timeouts, t.errors) == (2, 0, 1, 1),
        "one handshake timeout and one abandoned handshake counted: {t:?}"
    );
    Ok(())
}

/// Completes TLS, sends a partial request line and stalls; then a complete request on a second
/// connection, left idle afterwards (the idle keep-alive timeout closes it).
const PY_SLOWLORIS: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
def conn():
    return ctx.wrap_socket(socket.create_connection(('198.18.0.1', 443), timeout=10), server_hostname='198.18.0.1')
def drain(t):
    got, how = b'', 'eof'
    try:
        while True:
            b = t.recv(4096)
            if not b: break
            got += b
    except (ConnectionResetError, ssl.SSLError) as e:
        how = type(e).__name__
    except socket.timeout:
        how = 'open'
    return got, how
t = conn()
t.sendall(b'GET / HT')
t0 = time.time()
got, how = drain(t)
print('slowloris status', got.split(b'\r\n')[0].decode(errors='replace').replace(' ', '_'), 'after', round(time.time() - t0, 2), 'close', how)
t = conn()
t.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
t0 = time.time()
got, how = drain(t)
print('idle status', got.split(b'\r\n')[0].decode(errors='replace').replace(' ', '_'), 'after', round(time.time() - t0, 2), 'close', how)
"#;

#[test]
fn slowloris_gets_408_and_a_close_inline() -> Result<()> {
    slowloris(Mode::Inline)
}

#[test]
fn slowloris_gets_408_and_a_close_pool() -> Result<()> {
    slowloris(Mode::Pool)
}

fn slowloris(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("slowloris-{mode:?}"))?;
    site.put("index.html", b"ok")?;
    let cfg = site.config("request_timeout_ms = 1000\n")?;
    let d = site.start(&topo, mode, &["--config", &cfg])?;
    let out = topo.py(PY_SLOWLORIS, &[&site.path("ca.pem")])?;
    print!("{out}");
    ensure!(
        out.contains("slowloris status HTTP/1.1_408_Request_Timeout"),
        "{out}"
    );
    let secs = figure(&out, "slowloris", "after")?;
    ensure!((0.9..3.0).contains(&secs), "408 after {secs} s:\n{out}");
    ensure!(out.contains("idle status HTTP/1.1_200_OK"), "{out}");
    let secs = figure(&out, "idle", "after")?;
    ensure!(
        (0.9..3.0).contains(&secs),
        "idle keep-alive closed after {secs} s:\n{out}"
    );
    ensure!(!out.contains("close open"), "{out}");
    let t = finish(d, mode)?;
    ensure!(
        (t.sessions, t.handshakes, t.http, t.errors, t.timeouts) == (2, 2, 2, 0, 0),
        "a 408 and a 200: {t:?}"
    );
    Ok(())
}

/// Opens 4 TLS connections and keeps them; a 5th must be refused; after closing one a new one
/// works, and the 3 others still answer.
const PY_LIMIT: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
expect = open(sys.argv[2], 'rb').read()
def conn():
    return ctx.wrap_socket(socket.create_connection(('198.18.0.1', 443), timeout=10), server_hostname='198.18.0.1')
def get(t):
    t.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    buf = b''
    while b'\r\n\r\n' not in buf or len(buf.split(b'\r\n\r\n', 1)[1]) < len(expect):
        b = t.recv(4096)
        if not b: return 'eof'
        buf += b
    head, body = buf.split(b'\r\n\r\n', 1)
    return head.split(b'\r\n')[0].decode().replace(' ', '_') + ('_exact' if body == expect else '_differs')
held = [conn() for _ in range(4)]
print('held', len(held), held[0].version())
try:
    x = conn()
    print('fifth accepted', get(x))
except (ConnectionResetError, ssl.SSLError, OSError) as e:
    print('fifth refused', type(e).__name__)
held[0].close()
time.sleep(0.3)
y = conn()
print('after close', get(y))
for i, t in enumerate(held[1:]):
    print('held', i + 1, get(t))
"#;

#[test]
fn session_limit_refuses_the_fifth_connection_inline() -> Result<()> {
    limit(Mode::Inline)
}

#[test]
fn session_limit_refuses_the_fifth_connection_pool() -> Result<()> {
    limit(Mode::Pool)
}

fn limit(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("limit-{mode:?}"))?;
    let body = Rng::seeded("limit").bytes(1000);
    site.put("index.html", &body)?;
    std::fs::write(site.path("expect"), &body)?;
    let cfg = site.config("[tls]\nmax_sessions = 4\n")?;
    let d = site.start(&topo, mode, &["--config", &cfg])?;
    let out = topo.py(PY_LIMIT, &[&site.path("ca.pem"), &site.path("expect")])?;
    print!("{out}");
    ensure!(out.contains("fifth refused"), "{out}");
    ensure!(out.contains("after close HTTP/1.1_200_OK_exact"), "{out}");
    ensure!(
        out.matches("HTTP/1.1_200_OK_exact").count() == 4,
        "the 3 held connections still answer:\n{out}"
    );
    let t = finish(d, mode)?;
    ensure!(
        (t.sessions, t.handshakes, t.refused, t.http, t.errors) == (5, 5, 1, 4, 0),
        "5 sessions, 1 refused: {t:?}"
    );
    Ok(())
}

/// Issue 7's trace against a real client: curl fetches one page by name over HTTPS while the
/// daemon traces port 443 (`--trace`); the JSON lines it wrote tell the whole story in order,
/// from the peer kernel's ARP for us to the last ACK of the close, with the ClientHello's SNI
/// and ALPN as curl sent them and the ServerHello's suite among those offered.
fn trace(mode: Mode) -> Result<()> {
    use handshake::trace::render::{check_order, parse_json_lines, render, Format};
    use handshake::trace::EventKind;
    let topo = Topology::up()?;
    let site = Site::new(&format!("trace-{mode:?}"))?;
    site.put("index.html", b"<h1>the story of one request</h1>")?;
    let file = site.path("trace.jsonl");
    // A second connection on another port must not be traced.
    let mut d = site.start(
        &topo,
        mode,
        &[
            "--http",
            "80",
            "--trace",
            "port 443",
            "--trace-limit",
            "1",
            "--trace-file",
            &file,
        ],
    )?;
    let ca = site.path("ca.pem");
    peer(
        &topo,
        "curl -sS --max-time 10 -o /dev/null http://198.18.0.1/",
    )?;
    let out = peer(
        &topo,
        &format!(
            "curl -sS --max-time 10 --cacert {ca} --resolve {NAME}:443:198.18.0.1 https://{NAME}/"
        ),
    )?;
    ensure!(out.contains("the story of one request"), "{out}");
    // curl closes first (close_notify, FIN); our side runs CLOSE-WAIT → LAST-ACK → CLOSED.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = d.stop_with("TERM")?;
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("final trace: 1 connection(s)")),
        "{}",
        lines.join("\n")
    );
    let events = parse_json_lines(&std::fs::read_to_string(&file)?).map_err(anyhow::Error::msg)?;
    println!("{}", render(&events, Format::Text));
    println!("{}", render(&events, Format::Mermaid));
    check_order(
        &events,
        &[
            "flow active=false",
            "in ARP who-has",
            "out ARP is-at",
            "in SYN",
            "state SYN-RECEIVED",
            "out SYN,ACK",
            "in ACK",
            "state ESTABLISHED",
            "in ClientHello",
            "out ServerHello",
            "out Encrypted Handshake Message (EncryptedExtensions … Finished)",
            "in Encrypted Handshake Message (Finished)",
            "in Application Data",
            "out Application Data",
            "out FIN*",
            "state CLOSED",
        ],
    )
    .map_err(anyhow::Error::msg)?;
    // The close, one of two ways: curl's FIN reached us before our reply to its close_notify
    // (we are in CLOSE-WAIT, then LAST-ACK), or our close_notify and FIN left first (FIN-WAIT-1;
    // curl's closed socket then answers with RST).
    let passive = [
        "in FIN*",
        "state CLOSE-WAIT",
        "state LAST-ACK",
        "out FIN*",
        "state CLOSED",
    ];
    let active = ["state FIN-WAIT-1", "out FIN*", "state CLOSED"];
    check_order(&events, &passive)
        .or_else(|_| check_order(&events, &active))
        .map_err(anyhow::Error::msg)?;
    ensure!(events.iter().all(|e| e.flow == 1), "one connection traced");
    let (offered, sni, alpn) = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ClientHello {
                suites, sni, alpn, ..
            } => Some((suites.clone(), sni.clone(), alpn.clone())),
            _ => None,
        })
        .context("no ClientHello")?;
    ensure!(sni.as_deref() == Some(NAME), "SNI {sni:?}");
    ensure!(alpn.iter().any(|p| p == "http/1.1"), "ALPN {alpn:?}");
    let chosen = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ServerHello { suite, version, .. } => Some((suite.clone(), version.clone())),
            _ => None,
        })
        .context("no ServerHello")?;
    ensure!(chosen.1 == "TLS 1.3", "{chosen:?}");
    ensure!(
        offered.contains(&chosen.0),
        "{chosen:?} not offered: {offered:?}"
    );
    Ok(())
}

#[test]
fn trace_tells_the_story_of_a_curl_request_inline() -> Result<()> {
    trace(Mode::Inline)
}

#[test]
fn trace_tells_the_story_of_a_curl_request_pool() -> Result<()> {
    trace(Mode::Pool)
}

/// A keep-alive client that makes one request, waits for `go` to appear (20 s at most), makes a
/// second request on the same connection, and reports both to stdout.
const PY_HOLD: &str = r#"
import os, socket, ssl, sys, time
ca, first, go = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("198.18.0.1", 443), timeout=10),
                    server_hostname="handshake.test")
def get():
    s.sendall(b"GET / HTTP/1.1\r\nHost: handshake.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < n:
        body += s.recv(65536)
    return head.split(b"\r\n")[0].decode(), len(body)
print("first", *get(), flush=True)
open(first, "w").close()
deadline = time.time() + 20
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
print("second", *get(), flush=True)
"#;

/// SHA-256 fingerprint of the certificate the daemon presents to a new connection.
fn served_fingerprint(topo: &Topology) -> Result<String> {
    let out = peer(
        topo,
        &format!(
            "openssl s_client -connect 198.18.0.1:443 -servername {NAME} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ),
    )?;
    Ok(out.trim().to_string())
}

/// The fingerprint of the leaf in `chain.pem`.
fn file_fingerprint(site: &Site) -> Result<String> {
    let o = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(site.path("chain.pem"))
        .output()?;
    ensure!(o.status.success(), "openssl x509: {}", text(&o));
    Ok(text(&o).trim().to_string())
}

/// Issue 7: SIGHUP reloads the certificates without dropping connections. A keep-alive
/// connection opened before the reload still works after it; new connections get the new
/// certificate; a reload from broken files is refused and the previous certificate stays.
fn sighup(mode: Mode) -> Result<()> {
    let topo = Topology::up()?;
    let site = Site::new(&format!("hup-{mode:?}"))?;
    site.put("index.html", b"<h1>reload</h1>")?;
    let d = site.start(&topo, mode, &[])?;
    let old = file_fingerprint(&site)?;
    ensure!(
        served_fingerprint(&topo)? == old,
        "the first certificate is served"
    );
    let (first, go) = (site.path("first"), site.path("go"));
    let holder = topo.spawn_peer(["python3", "-c", PY_HOLD, &site.path("ca.pem"), &first, &go])?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !std::path::Path::new(&first).exists() {
        ensure!(
            Instant::now() < deadline,
            "the keep-alive client did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // New files (a new CA and leaf), then SIGHUP.
    site.certificates()?;
    let new = file_fingerprint(&site)?;
    ensure!(new != old);
    let hup = |want: &str| -> Result<()> {
        std::process::Command::new("kill")
            .args(["-s", "HUP", &d.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !d.lines().iter().any(|l| l.contains(want)) {
            ensure!(
                Instant::now() < deadline,
                "no {want:?} line:\n{}",
                d.lines().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    };
    hup("reloaded certificates (generation 1)")?;
    ensure!(
        served_fingerprint(&topo)? == new,
        "new connections get the new certificate"
    );
    // A broken key: refused, the new certificate stays.
    std::fs::write(site.path("key.pem"), "not a key\n")?;
    hup("certificate reload failed")?;
    ensure!(
        served_fingerprint(&topo)? == new,
        "a failed reload changes nothing"
    );
    // The connection from before the reload still answers.
    std::fs::write(&go, "")?;
    let out = holder.wait_with_output()?;
    let out = text(&out);
    ensure!(
        out.contains("first HTTP/1.1 200 OK 15") && out.contains("second HTTP/1.1 200 OK 15"),
        "{out}"
    );
    let t = finish(d, mode)?;
    ensure!(t.errors == 0 && t.refused == 0, "{t:?}");
    println!(
        "SIGHUP {mode:?}: {old} -> {new}; the old connection answered after the reload; {t:?}"
    );
    Ok(())
}

#[test]
fn sighup_reloads_certificates_without_dropping_connections_inline() -> Result<()> {
    sighup(Mode::Inline)
}

#[test]
fn sighup_reloads_certificates_without_dropping_connections_pool() -> Result<()> {
    sighup(Mode::Pool)
}

/// Issue 6's security posture: a private key every user can read is refused at start, with the
/// fix in the message; owner-only, the same files start.
#[test]
fn a_world_readable_private_key_is_refused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let topo = Topology::up()?;
    let site = Site::new("key-mode")?;
    let key = site.path("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let err = match site.start(&topo, Mode::Inline, &[]) {
        Ok(_) => anyhow::bail!("the daemon started with a world-readable key"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("is readable by every user (mode 0644)")
            && err.contains(&format!("chmod 600 {key}")),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let d = site.start(&topo, Mode::Inline, &[])?;
    finish(d, Mode::Inline)?;
    Ok(())
}
