//! `cargo xtask demo`: the seed story, live, on a veth pair between two network namespaces.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use handshake_tests::netns::{self, Topology};

use crate::{build, deps, util};

const READY_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The DNS name in the demo certificate (besides the engine's address).
const DEMO_NAME: &str = "handshake.test";

/// The HTTPS certificate of the demo: given on the command line, or generated.
pub struct Tls {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// What curl trusts (PEM); defaults to `cert` (self-signed).
    pub cacert: Option<PathBuf>,
}

/// Chain, key and the CA file curl trusts: those given, else `target/demo/cert.pem` and
/// `key.pem`, generated with rcgen (self-signed ECDSA P-256 for 198.18.0.1 and
/// `handshake.test`) when they do not exist yet.
fn certificate(tls: Tls) -> Result<(PathBuf, PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        for f in [cert, key] {
            if !f.is_file() {
                bail!("{} does not exist: pass an existing PEM file", f.display());
            }
        }
        let cacert = tls.cacert.unwrap_or_else(|| cert.clone());
        println!(
            "certificate: {} (key {}), curl trusts {}",
            cert.display(),
            key.display(),
            cacert.display()
        );
        return Ok((cert.clone(), key.clone(), cacert));
    }
    let dir = util::target_dir().join("demo");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        println!(
            "certificate: {} (made by an earlier demo; delete it for a new one)",
            cert.display()
        );
    } else {
        generate_certificate(&cert, &key)?;
        println!(
            "certificate: generated {} and {} (self-signed, ECDSA P-256, for {} and {DEMO_NAME})",
            cert.display(),
            key.display(),
            netns::ENGINE_ADDR
        );
    }
    let cacert = tls.cacert.unwrap_or_else(|| cert.clone());
    Ok((cert, key, cacert))
}

fn generate_certificate(cert: &Path, key: &Path) -> Result<()> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let dir = cert.parent().context("certificate path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_pair = KeyPair::generate().context("generating the demo key")?;
    let mut params =
        CertificateParams::new(vec![netns::ENGINE_ADDR.to_owned(), DEMO_NAME.to_owned()])
            .context("certificate names")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "handshake demo");
    let signed = params
        .self_signed(&key_pair)
        .context("signing the demo certificate")?;
    // The key first, readable by its owner only.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .with_context(|| format!("writing {}", key.display()))?;
    f.write_all(key_pair.serialize_pem().as_bytes())?;
    fs::write(cert, signed.pem()).with_context(|| format!("writing {}", cert.display()))?;
    Ok(())
}

/// The daemon; killed (and reaped) on drop so the namespaces can go.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Prints what the daemon said so far.
    fn drain(&self) {
        while let Ok(line) = self.lines.try_recv() {
            println!("  daemon | {line}");
        }
    }

    /// Waits until a line says "ready", printing its output; false on timeout or exit.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    println!("  daemon | {line}");
                    if line.to_ascii_lowercase().contains("ready") {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        println!("the daemon exited early ({status})");
                        return false;
                    }
                    if left.is_zero() {
                        return false;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// SIGTERM, then up to `timeout` to exit, then SIGKILL.
    fn stop(&mut self, timeout: Duration) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = self.child.id().to_string();
        util::run(Command::new("kill").args(["-TERM", &pid]))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.drain();
            if let Some(status) = self.child.try_wait()? {
                self.drain();
                println!("the daemon exited: {status}");
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        println!("the daemon did not exit within {timeout:?} of SIGTERM: killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Runs `cmd` in a namespace, printing it and its output (stderr, then stdout).
fn show(topo: &Topology, peer: bool, cmd: &[&str]) -> Result<Output> {
    let ns = if peer { topo.peer_ns() } else { topo.eng_ns() };
    println!("$ ip netns exec {ns} {}", cmd.join(" "));
    let out = if peer {
        topo.run_peer_args(cmd)?
    } else {
        topo.run_eng_args(cmd)?
    };
    // stderr first: curl -v and friends tell the protocol story there, the payload follows.
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
    {
        println!("  {line}");
    }
    if !out.status.success() {
        println!("  -> failed ({})", out.status);
    }
    Ok(out)
}

pub fn run(tls: Tls) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run `sudo -E cargo xtask demo`"
        );
    }
    deps::ensure(deps::Need::ALL)?;
    let daemon_path = build::all(build::Profile::Release)?;
    for id in netns::cleanup_stale()? {
        println!("removed a leftover network of a finished run: {id}");
    }
    let (cert, key, cacert) = certificate(tls)?;

    util::heading("1. Two machines and a cable");
    println!(
        "Two network namespaces play two machines; a veth pair is the cable between them.\n\
         The engine will own 198.18.0.1 on its side. The kernel of the engine's machine keeps\n\
         198.18.0.3 on the same interface: what the engine does not own must still reach it.\n\
         The peer is an ordinary Linux stack at 198.18.0.2 (ping, arping, curl)."
    );
    let topo = Topology::builder().queues(2).up()?;
    println!(
        "engine: namespace {}, interface {} ({})\npeer:   namespace {}, interface {} ({}), {}/{}",
        topo.eng_ns(),
        topo.eng_if(),
        netns::mac_string(topo.eng_mac()),
        topo.peer_ns(),
        topo.peer_if(),
        netns::mac_string(topo.peer_mac()),
        netns::PEER_ADDR,
        netns::PREFIX_LEN
    );

    util::heading("2. Start the engine");
    println!(
        "The daemon attaches the XDP program to {} and opens one AF_XDP socket per queue.\n\
         From now on, the XDP program looks at every frame arriving on the cable: ARP and IPv4\n\
         for 198.18.0.1 go to the engine's sockets, everything else to the kernel. It serves\n\
         echo on port 7, HTTP on 80, and HTTPS on 443 with the certificate above, and it\n\
         traces the first connection to port 443 (--trace): the story is told at the end.",
        topo.eng_if()
    );
    let trace_file = util::target_dir().join("demo").join("trace.jsonl");
    fs::create_dir_all(trace_file.parent().expect("a directory"))?;
    let _ = fs::remove_file(&trace_file);
    let args = [
        daemon_path.to_string_lossy().into_owned(),
        "run".into(),
        "--iface".into(),
        topo.eng_if().into(),
        "--addr".into(),
        format!("{}/{}", netns::ENGINE_ADDR, netns::PREFIX_LEN),
        "--queues".into(),
        "2".into(),
        "--http".into(),
        "80".into(),
        "--echo".into(),
        "7".into(),
        "--https".into(),
        "443".into(),
        "--cert".into(),
        cert.to_string_lossy().into_owned(),
        "--key".into(),
        key.to_string_lossy().into_owned(),
        "--trace".into(),
        "port 443".into(),
        "--trace-limit".into(),
        "1".into(),
        "--trace-file".into(),
        trace_file.to_string_lossy().into_owned(),
    ];
    println!("$ ip netns exec {} {}", topo.eng_ns(), args.join(" "));
    let mut child = topo
        .spawn_eng(
            [
                "env".to_owned(),
                format!("HANDSHAKE_BPF_OBJECT={}", build::object_path().display()),
                "RUST_LOG=info".into(),
            ]
            .into_iter()
            .chain(args.iter().cloned()),
        )
        .context("starting the daemon")?;
    let (tx, lines) = mpsc::channel();
    forward(child.stdout.take().expect("piped"), tx.clone());
    forward(child.stderr.take().expect("piped"), tx);
    let mut daemon = Daemon { child, lines };
    if !daemon.wait_ready(READY_TIMEOUT) {
        println!("(no \"ready\" line within {READY_TIMEOUT:?}; going on anyway)");
    }
    let link = topo.run_eng_args(["ip", "link", "show", "dev", topo.eng_if()])?;
    let link = String::from_utf8_lossy(&link.stdout);
    print!("{link}");

    util::heading("3. ARP: who has 198.18.0.1?");
    println!(
        "Before the peer can send an IP packet to 198.18.0.1 on its own subnet, it needs that\n\
         address's MAC: it broadcasts an ARP request. The XDP program sees ARP for an address the\n\
         engine owns and steers it to the engine, which replies with its MAC."
    );
    show(
        &topo,
        true,
        &[
            "arping",
            "-c",
            "3",
            "-w",
            "5",
            "-I",
            topo.peer_if(),
            netns::ENGINE_ADDR,
        ],
    )?;
    daemon.drain();

    util::heading("4. ICMP: ping the engine");
    println!(
        "Now the peer knows the MAC and sends IPv4 ICMP echo requests. The engine validates the\n\
         IPv4 header and checksum and answers each with an echo reply."
    );
    show(
        &topo,
        true,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            netns::ENGINE_ADDR,
        ],
    )?;
    daemon.drain();

    util::heading("5. The kernel keeps what the engine does not own");
    println!(
        "198.18.0.3 lives on the same interface but belongs to the kernel: the XDP program\n\
         passes those frames on (XDP_PASS), and the kernel answers as usual."
    );
    show(
        &topo,
        true,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            netns::KERNEL_ADDR,
        ],
    )?;
    daemon.drain();

    util::heading("6. TCP: three-way handshake, an HTTP request, four-way close");
    println!(
        "curl opens a TCP connection to port 80: SYN, SYN-ACK, ACK (the engine's listener), then\n\
         sends GET / and reads the answer from the engine's HTTP/1.1 responder; then FIN/ACK both\n\
         ways."
    );
    let url = format!("http://{}/", netns::ENGINE_ADDR);
    let http = show(&topo, true, &["curl", "-sv", "--max-time", "5", &url])?;
    let curl_ok = http.status.success();
    daemon.drain();

    util::heading("7. HTTPS: TLS over the same TCP");
    println!(
        "curl connects to port 443 and runs a TLS 1.3 handshake with the engine (rustls):\n\
         ClientHello (versions, cipher suites, client random), ServerHello, the certificate,\n\
         key exchange, Finished. Then GET / and the page travel encrypted: it must be the page\n\
         HTTP served in step 6. curl trusts only {}.",
        cacert.display()
    );
    let cacert_arg = cacert.to_string_lossy().into_owned();
    let url = format!("https://{}/", netns::ENGINE_ADDR);
    let https = show(
        &topo,
        true,
        &[
            "curl",
            "-sv",
            "--fail",
            "--max-time",
            "5",
            "--cacert",
            &cacert_arg,
            &url,
        ],
    )?;
    let https_ok = https.status.success() && !https.stdout.is_empty();
    let same_page = https.stdout == http.stdout;
    if https_ok && !same_page {
        println!("the page over HTTPS differs from the one over HTTP");
    }
    daemon.drain();

    util::heading("8. Stop the engine");
    println!(
        "SIGTERM: the daemon drains, prints its counters and exits. Its XDP program was attached\n\
         through a bpf_link owned by the process, so it is gone with it: the interface is the\n\
         kernel's again."
    );
    daemon.stop(STOP_TIMEOUT)?;
    drop(daemon);
    let link = topo.run_eng_args(["ip", "link", "show", "dev", topo.eng_if()])?;
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    print!("{link}");
    let detached = !link.contains(" xdp") && !link.contains("prog/xdp");
    if detached {
        println!("no XDP program on {} any more", topo.eng_if());
    } else {
        println!(
            "WARNING: an XDP program is still attached to {}",
            topo.eng_if()
        );
    }

    util::heading("9. The story of the HTTPS request");
    println!(
        "The engine recorded every event of the traced connection: the peer's ARP for us, the\n\
         three-way handshake with its sequence numbers and our TCP states, the TLS handshake as\n\
         seen on the wire (ClientHello's suites, SNI and ALPN; ServerHello's choice; then the\n\
         encrypted flights), the encrypted request and response, and the four-way close.\n\
         $ handshake trace {} --format text   (and --format mermaid, --format json)",
        trace_file.display()
    );
    let mut story_ok = false;
    for format in ["text", "mermaid"] {
        let out = Command::new(&daemon_path)
            .args(["trace", &trace_file.to_string_lossy(), "--format", format])
            .output()
            .context("running `handshake trace`")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if format == "mermaid" {
            println!("```mermaid\n{}```", text);
        } else {
            print!("{text}");
        }
        if !out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stderr));
        }
        story_ok = out.status.success()
            && [
                "SYN",
                "Client Hello",
                "Server Hello",
                "Application Data",
                "FIN",
            ]
            .iter()
            .all(|w| text.contains(w));
    }

    util::heading("10. Tear down");
    let (eng, peer) = (topo.eng_ns().to_owned(), topo.peer_ns().to_owned());
    topo.down()?;
    println!("removed {eng} and {peer} (and with them the veth pair)");
    if !detached {
        bail!("the XDP program outlived the daemon");
    }
    if !curl_ok {
        bail!("curl could not fetch the page from the engine (see step 6)");
    }
    if !https_ok {
        bail!("curl could not fetch the page over HTTPS (see step 7)");
    }
    if !same_page {
        bail!("the page over HTTPS differs from the page over HTTP (see steps 6 and 7)");
    }
    if !story_ok {
        bail!("the trace of the HTTPS request is incomplete (see step 9)");
    }
    Ok(())
}
