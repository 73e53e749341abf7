//! Privileged tests of `--pcap` over veth: the pcapng file holds exactly what the engine
//! received and sent, tcpdump reads it, the filter and the SIGUSR1 toggle apply, and the file
//! rotates at its size cap. Run with `cargo xtask test` (root).

use anyhow::{ensure, Context, Result};
use handshake_tests::daemon::{final_per_queue, Daemon};
use handshake_tests::netns::{output_text as text, Topology, ENGINE_ADDR, PYTHON};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let d = std::env::temp_dir().join(format!("hs-pcap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Scratch(d))
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tcpdump -nn -r FILE [FILTER]`: the packet lines; fails unless tcpdump exits 0 and says
/// nothing but its "reading from file" line on stderr.
fn tcpdump(file: &str, filter: &str) -> Result<Vec<String>> {
    let mut c = Command::new("tcpdump");
    c.args(["-nn", "-r", file]);
    if !filter.is_empty() {
        c.arg(filter);
    }
    let o = c
        .output()
        .context("running tcpdump (`cargo xtask deps` installs it)")?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.success(),
        "tcpdump -r {file} {filter:?} failed: {err}"
    );
    let noise: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("reading from file"))
        .collect();
    ensure!(noise.is_empty(), "tcpdump complained about {file}: {err}");
    Ok(String::from_utf8(o.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

const SYN_ONLY: &str = "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0";
const SYN_ACK: &str = "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)";

fn curl(topo: &Topology, n: usize) -> Result<()> {
    for i in 0..n {
        let o = topo.run_peer_args([
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{ENGINE_ADDR}/"),
        ])?;
        ensure!(text(&o).trim() == "200", "request {i}: {}", text(&o));
    }
    Ok(())
}

/// The `capture: N frames written …, D not captured` line of a stopped daemon: (N, D).
fn capture_line(lines: &[String]) -> Result<(u64, u64)> {
    let l = lines
        .iter()
        .find(|l| l.starts_with("capture: ") && l.contains("frames written"))
        .context("no final `capture:` line")?;
    let w: Vec<&str> = l.split_whitespace().collect();
    let n = w[1].parse()?;
    let i = w.iter().position(|x| *x == "not").context("not captured")?;
    Ok((n, w[i - 1].parse()?))
}

const K: usize = 25;
const PINGS: usize = 5;

/// K = 25 HTTP connections and 5 pings with `--pcap`: after the daemon stops, tcpdump reads the
/// file, finds exactly K SYNs (and K SYN-ACKs: outgoing frames are captured too), 5 echo
/// requests and 5 replies, and exactly as many frames as the engine received and sent; the
/// ring dropped none.
#[test]
fn pcap_holds_every_syn() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let dir = Scratch::new("syn")?;
    let file = dir.file("cap.pcapng");
    let mut d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--pcap",
            &file,
            "--stats-interval",
            "0",
        ],
    )?;
    curl(&topo, K)?;
    let o = topo.run_peer(&format!("ping -q -c {PINGS} -i 0.01 -W 2 {ENGINE_ADDR}"))?;
    ensure!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.stop_with("TERM")?;
    let (written, dropped) = capture_line(&lines)?;
    ensure!(dropped == 0, "{dropped} frames not captured");
    let (rx, tx) = final_per_queue(&lines)?[0];
    ensure!(
        written == rx + tx,
        "{written} frames written, engine received {rx} and sent {tx}"
    );

    let all = tcpdump(&file, "")?;
    ensure!(
        all.len() as u64 == written,
        "tcpdump reads {} frames of {written}",
        all.len()
    );
    let syns = tcpdump(&file, SYN_ONLY)?;
    ensure!(
        syns.len() == K,
        "{} SYNs for {K} connections:\n{}",
        syns.len(),
        syns.join("\n")
    );
    ensure!(syns
        .iter()
        .all(|l| l.contains(&format!("> {ENGINE_ADDR}.80:"))));
    ensure!(tcpdump(&file, SYN_ACK)?.len() == K, "SYN-ACKs");
    ensure!(tcpdump(&file, "icmp[icmptype] == icmp-echo")?.len() == PINGS);
    ensure!(tcpdump(&file, "icmp[icmptype] == icmp-echoreply")?.len() == PINGS);
    ensure!(
        !tcpdump(&file, "arp")?.is_empty(),
        "the ARP exchange is captured"
    );
    // A second, independent pcapng reader: scapy (Debian's python3-scapy).
    let o = Command::new(PYTHON)
        .args([
            "-c",
            "import sys\nfrom scapy.all import rdpcap\np = rdpcap(sys.argv[1])\nprint(len(p), sum(len(x) for x in p))",
            &file,
        ])
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    ensure!(
        o.status.success(),
        "scapy failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let n: Vec<u64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(
        n.len() == 2 && n[0] == written,
        "scapy reads {out:?}, {written} frames written"
    );
    eprintln!("scapy: {} frames, {} bytes", n[0], n[1]);
    eprintln!("{written} frames captured (rx {rx}, tx {tx}), {K} SYNs");
    Ok(())
}

/// Sends `sig` to the daemon and waits for the `capture: on|off` line it prints.
fn toggle(d: &Daemon, expect: &str) -> Result<()> {
    let before = d.lines().len();
    let st = Command::new("kill")
        .args(["-s", "USR1", &d.pid().to_string()])
        .status()?;
    ensure!(st.success(), "kill -s USR1");
    let deadline = Instant::now() + Duration::from_secs(3);
    let want = format!("capture: {expect}");
    while !d.lines()[before..].contains(&want) {
        ensure!(Instant::now() < deadline, "no `{want}` line after SIGUSR1");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The workers read the switch once per batch.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// `--pcap-filter 'tcp and port 80'`: pings and ARP are not captured. SIGUSR1 turns capture off
/// (2 connections unseen) and on again (4 more seen): 3 + 4 SYNs in the file.
#[test]
fn filter_and_sigusr1_toggle() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let dir = Scratch::new("toggle")?;
    let file = dir.file("cap.pcapng");
    let mut d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--pcap",
            &file,
            "--pcap-filter",
            "tcp and port 80",
            "--stats-interval",
            "0",
        ],
    )?;
    let o = topo.run_peer(&format!("ping -q -c 3 -i 0.01 -W 2 {ENGINE_ADDR}"))?;
    ensure!(o.status.success(), "{}", text(&o));
    curl(&topo, 3)?;
    toggle(&d, "off")?;
    curl(&topo, 2)?;
    toggle(&d, "on")?;
    curl(&topo, 4)?;
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.stop_with("TERM")?;
    let (written, dropped) = capture_line(&lines)?;
    ensure!(dropped == 0);
    let all = tcpdump(&file, "")?;
    ensure!(all.len() as u64 == written);
    ensure!(
        tcpdump(&file, "tcp port 80")?.len() == all.len(),
        "only port 80:\n{}",
        all.join("\n")
    );
    ensure!(tcpdump(&file, "icmp or arp")?.is_empty());
    let syns = tcpdump(&file, SYN_ONLY)?.len();
    ensure!(
        syns == 3 + 4,
        "{syns} SYNs captured, want 7 (2 sent while off)"
    );
    // Each connection is at least SYN, SYN-ACK, ACK, request, response, FIN both ways.
    ensure!(written >= 7 * 7, "{written} frames for 7 connections");
    Ok(())
}

/// `--pcap-max-mb 0.02 --pcap-files 3` under ~170 KB of pings: FILE, FILE.1, FILE.2 remain,
/// each at most 20 kB and readable, oldest sequence numbers in FILE.2, newest in FILE.
#[test]
fn rotation_at_the_size_cap() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let dir = Scratch::new("rot")?;
    let file = dir.file("cap.pcapng");
    let mut d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--pcap",
            &file,
            "--pcap-filter",
            "icmp",
            "--pcap-max-mb",
            "0.02",
            "--pcap-files",
            "3",
            "--stats-interval",
            "0",
        ],
    )?;
    let o = topo.run_peer(&format!(
        "ping -q -c 60 -i 0.005 -s 1400 -W 2 {ENGINE_ADDR}"
    ))?;
    ensure!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.stop_with("TERM")?;
    let (written, dropped) = capture_line(&lines)?;
    ensure!(
        written == 120 && dropped == 0,
        "{written} written, {dropped} dropped"
    );
    let files = lines
        .iter()
        .find(|l| l.starts_with("capture: ") && l.contains("frames written"))
        .context("capture line")?;
    // 120 frames of ~1.5 kB at 20 kB per file: 9 or 10 files started.
    ensure!(
        files.contains("(9 file(s)") || files.contains("(10 file(s)"),
        "{files}"
    );
    let seqs = |f: &str| -> Result<Vec<u32>> {
        let size = std::fs::metadata(f)?.len();
        ensure!(size <= 20_000, "{f}: {size} bytes over the 20 kB cap");
        tcpdump(f, "")?
            .iter()
            .map(|l| {
                let s = l.split("seq ").nth(1).context("seq")?;
                Ok(s.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
                    .parse()?)
            })
            .collect()
    };
    let newest = seqs(&file)?;
    let mid = seqs(&format!("{file}.1"))?;
    let oldest = seqs(&format!("{file}.2"))?;
    ensure!(
        !Path::new(&format!("{file}.3")).exists(),
        "a 4th file was kept"
    );
    ensure!(
        !newest.is_empty() && mid.len() >= 10 && oldest.len() >= 10,
        "{newest:?} {mid:?} {oldest:?}"
    );
    ensure!(
        newest.contains(&60),
        "the last ping is in the newest file: {newest:?}"
    );
    ensure!(
        oldest.iter().max() <= mid.iter().min() && mid.iter().max() <= newest.iter().min(),
        "files out of order: {oldest:?} {mid:?} {newest:?}"
    );
    Ok(())
}
