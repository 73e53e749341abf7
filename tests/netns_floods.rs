//! Privileged flood and exhaustion tests over veth (issue 6, "Floods and exhaustion"): a SYN
//! flood at three rates while real clients connect, an ARP flood with gateway hijack attempts,
//! an ICMP echo flood against the echo rate limit, an IPv4 fragment flood, slowloris,
//! zero-window connections (sockstress: raw-socket clients that answer every probe with a zero
//! window, reclaimed by `tcp.persist_timeout_ms`), partial ClientHellos (reclaimed by the TLS
//! handshake timeout) and a TLS handshake flood past the session limit. Every flood comes
//! from the peer namespace, is bounded in count and time, and only uses 198.18.0.0/15.
//! Each test prints a one-line (or one-table) figure. Run with `cargo xtask test` (root).

use anyhow::{ensure, Context, Result};
use handshake_tests::daemon::Daemon;
use handshake_tests::netns::{mac_string, output_text as text, Topology, PYTHON};
use std::time::{Duration, Instant};

/// Writes a configuration file for one test (removed on drop).
struct Cfg(std::path::PathBuf);

impl Cfg {
    fn new(name: &str, toml: &str) -> Result<Cfg> {
        let p = std::env::temp_dir().join(format!("hs-floods-{name}-{}.toml", std::process::id()));
        std::fs::write(&p, toml)?;
        Ok(Cfg(p))
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Cfg {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The metrics endpoint's text, fetched with curl inside the engine namespace.
struct Metrics(String);

fn metrics(topo: &Topology) -> Result<Metrics> {
    let o = topo.run_eng("curl -sS --fail -m 5 http://127.0.0.1:9900/metrics")?;
    ensure!(o.status.success(), "metrics endpoint: {}", text(&o));
    Ok(Metrics(String::from_utf8(o.stdout)?))
}

/// The metrics once the engine has settled after a burst of traffic sent before the call:
/// scraped every 300 ms (three publish periods) until its packet and fragment counters stay
/// the same from one scrape to the next (at most 6 s), so that exact checks do not read
/// figures a busy worker has not published yet.
fn settled_metrics(topo: &Topology) -> Result<Metrics> {
    let key = |m: &Metrics| {
        (
            m.sum("handshake_rx_packets_total", &[]),
            m.sum("handshake_tx_packets_total", &[]),
            m.sum("handshake_ipv4_fragments_total", &[]),
        )
    };
    let mut last = metrics(topo)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let m = metrics(topo)?;
        if key(&m) == key(&last) {
            return Ok(m);
        }
        last = m;
    }
    Ok(last)
}

impl Metrics {
    /// Sum over every sample of `name` whose labels include all of `labels` (`k="v"` each).
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
                (metric == name && labels.iter().all(|x| rest.contains(x)))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .map(|v| v as u64)
            .sum()
    }
    fn drops(&self, reason: &str) -> u64 {
        self.sum("handshake_drops_total", &[&format!("reason=\"{reason}\"")])
    }
}

/// The `handshake` process: the child of `ip netns exec`, or the daemon's process itself.
fn engine_pid(d: &Daemon) -> Result<String> {
    let pid = d.pid();
    let o = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| pid.to_string()))
}

/// The daemon's resident set in kB.
fn rss_kb(d: &Daemon) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", engine_pid(d)?))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS kB")?
        .parse()?)
}

/// The daemon's resident set by mapping kind, kB: `(heap, other anonymous, the rest)`.
fn rss_parts_kb(d: &Daemon) -> Result<(u64, u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", engine_pid(d)?))?;
    let (mut heap, mut anon, mut rest) = (0, 0, 0);
    let mut kind = 2;
    for l in smaps.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            kind = match w.get(5) {
                Some(&"[heap]") => 0,
                None => 1,
                _ => 2,
            };
        } else if w.first() == Some(&"Rss:") {
            let kb: u64 = w[1].parse()?;
            match kind {
                0 => heap += kb,
                1 => anon += kb,
                _ => rest += kb,
            }
        }
    }
    Ok((heap, anon, rest))
}

/// Adds an nftables table in the peer namespace.
fn nft(topo: &Topology, script: &str) -> Result<()> {
    let o = topo.run_peer_args(["sh", "-c", "printf '%s' \"$0\" | nft -f -", script])?;
    ensure!(o.status.success(), "nft {script}: {}", text(&o));
    Ok(())
}

/// `n` HTTP/1.1 GETs on fresh connections, 20 client threads at a time (5 s timeout each);
/// prints `ok K in S s slow(>0.5 s) N worst W s` (slow: took a SYN retransmission or more).
const HTTP_CLIENTS: &str = r#"
import socket, sys, time, threading
n = int(sys.argv[1])
ok = 0
slow = 0
worst = 0.0
lock = threading.Lock()
fails = []
def one(i):
    global ok, slow, worst
    t1 = time.time()
    good = False
    try:
        s = socket.create_connection(('198.18.0.1', 80), timeout=5)
        s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        got = b''
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        good = got.startswith(b'HTTP/1.1 200')
        s.close()
    except Exception as e:
        fails.append('fail %d %r' % (i, e))
    dt = time.time() - t1
    with lock:
        ok += good
        worst = max(worst, dt)
        slow += dt > 0.5
def worker(k):
    for i in range(k, n, 20):
        one(i)
t = time.time()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
for x in ts: x.start()
for x in ts: x.join()
for f in fails[:5]: print(f)
print('ok', ok, 'in', round(time.time() - t, 2), 's', 'slow(>0.5 s)', slow, 'worst', round(worst, 2), 's')
"#;

fn ok_count(out: &str) -> Result<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("ok "))
        .with_context(|| format!("no ok line:\n{out}"))?;
    Ok(line.split_whitespace().nth(1).context("ok N")?.parse()?)
}

fn curl_ok(topo: &Topology) -> Result<()> {
    let o = topo.run_peer("curl -sS -m 5 -o /dev/null -w %{http_code} http://198.18.0.1/")?;
    ensure!(
        text(&o).trim() == "200",
        "engine does not serve: {}",
        text(&o)
    );
    Ok(())
}

/// SYN floods at 1,000 pps, 10,000 pps and hping3 `--flood`, each for 5.5 s or as long as the
/// clients take (15 s at most, `timeout`), from
/// 198.18.0.5 (an address of the peer whose RSTs to the engine's SYN-ACKs are dropped, so
/// half-open state would pile up), while 200 real HTTP connections are made at each rate. With
/// `syn_backlog = 64`, SYN cookies must carry them all; memory must not grow.
#[test]
fn syn_flood_at_three_rates_real_clients_complete() -> Result<()> {
    let topo = Topology::builder().up()?;
    let cfg = Cfg::new("syn", "[tcp]\nsyn_backlog = 64\n")?;
    let d = Daemon::start(
        &topo,
        &[
            "--config",
            cfg.path(),
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    let o = topo.run_peer(&format!("ip addr add 198.18.0.5/24 dev {}", topo.peer_if()))?;
    ensure!(o.status.success(), "{}", text(&o));
    nft(
        &topo,
        "table inet flood {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ip saddr 198.18.0.5 tcp flags rst drop\n }\n}\n",
    )?;
    // Warm up (ARP, first allocations) before the baseline.
    curl_ok(&topo)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;
    let mut rows = Vec::new();
    for (name, rate) in [
        ("1k pps", "-i u1000"),
        ("10k pps", "-i u100"),
        ("flood", "--flood"),
    ] {
        let m0 = metrics(&topo)?;
        let cmd =
            format!("timeout -s INT 15 hping3 -q -S -p 80 -a 198.18.0.5 -s 1024 {rate} 198.18.0.1");
        let flood_start = Instant::now();
        let mut flood = topo.spawn_peer(cmd.split_whitespace())?;
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let out = topo.py(HTTP_CLIENTS, &["200"])?;
        let clients_secs = t.elapsed().as_secs_f64();
        let still_flooding = flood.try_wait()?.is_none();
        // The flood lasts 5.5 s, or as long as the clients (plus 0.5 s), 15 s at most.
        let min = Duration::from_millis(5500);
        if flood_start.elapsed() < min {
            std::thread::sleep(min - flood_start.elapsed());
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &flood.id().to_string()])
            .status();
        let fl = flood.wait_with_output()?;
        let flood_secs = flood_start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(300));
        let m1 = metrics(&topo)?;
        let rss = rss_kb(&d)?;
        let d_ = |n: &str| m1.sum(n, &[]) - m0.sum(n, &[]);
        let sent = d_("handshake_tcp_syn_cookies_sent_total");
        let valid = d_("handshake_tcp_syn_cookies_validated_total");
        let rx = d_("handshake_rx_packets_total");
        let ok = ok_count(&out)?;
        let mut dropped = String::new();
        for r in [
            "malformed",
            "no_listener",
            "syn_backlog_full",
            "accept_backlog_full",
            "table_full",
            "out_of_window",
            "out_of_order",
            "control_full",
            "paws",
        ] {
            let l = format!("reason=\"{r}\"");
            let n = m1.sum("handshake_tcp_drops_total", &[&l])
                - m0.sum("handshake_tcp_drops_total", &[&l]);
            if n > 0 {
                dropped += &format!(" {r}={n}");
            }
        }

        rows.push(format!(
            "{name:>8}: engine rx {rx} frames in {flood_secs:.1} s ({:.0}/s), legit {}, cookies sent {sent} validated {valid}, tcp drops{dropped}, RSS {rss0} -> {rss} kB",
            rx as f64 / flood_secs,
            out.lines().find(|l| l.starts_with("ok ")).unwrap_or("-")
        ));
        eprintln!("{}", rows.last().unwrap());
        ensure!(
            ok == 200,
            "{name}: only {ok}/200 legitimate connections completed:\n{out}\nhping3: {}",
            text(&fl)
        );
        ensure!(
            still_flooding,
            "{name}: the flood ended (15 s bound) before the 200 clients did (clients took {clients_secs:.1} s)"
        );
        // A client slower than 0.5 s needed a retransmission. At fixed rates none may; at
        // hping3's full rate the veth and the AF_XDP RX ring may drop frames (legitimate SYNs
        // among them), so up to 5% (10 of 200) are allowed there.
        let slow: u64 = out
            .split("slow(>0.5 s) ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("no slow count")?;
        let slow_max = if rate == "--flood" { 10 } else { 0 };
        ensure!(
            slow <= slow_max,
            "{name}: {slow} of 200 legitimate connections took over 0.5 s (at most {slow_max})"
        );
        ensure!(sent > 0, "{name}: no SYN cookie sent");
        ensure!(valid > 0, "{name}: no SYN cookie validated");
        ensure!(
            rx >= 4000,
            "{name}: the engine received only {rx} frames: the flood did not happen"
        );
    }
    curl_ok(&topo)?;
    let rss1 = rss_kb(&d)?;
    eprintln!(
        "SYN flood table:\n{}\nRSS over the whole test: {rss0} -> {rss1} kB",
        rows.join("\n")
    );
    ensure!(
        rss1 * 10 < rss0 * 11,
        "RSS grew 10% or more: {rss0} -> {rss1} kB"
    );
    Ok(())
}

/// ICMP echo flood: 20,000 echo requests (hping3 `-i u100`: about 4,000/s here) against
/// `echo_rate = 1000`, `echo_burst = 100`. Replies must follow the token bucket: at most
/// burst + rate × duration, and at least rate × (duration − 1.5 s, hping3's start and its 1 s
/// wait after the last request); every request not answered is counted
/// `icmp_rate_limited`; ordinary pings work right after.
#[test]
fn icmp_echo_flood_is_rate_limited() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let cfg = Cfg::new("icmp", "[icmp]\necho_rate = 1000\necho_burst = 100\n")?;
    let _d = Daemon::start(
        &topo,
        &[
            "--config",
            cfg.path(),
            "--addr",
            "198.18.0.1/24",
            "--stats-interval",
            "0",
        ],
    )?;
    // Resolve ARP first so that every flood packet reaches the engine as ICMP.
    let o = topo.run_peer("ping -c 1 -W 2 198.18.0.1")?;
    ensure!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1200));
    let m0 = metrics(&topo)?;
    const N: u64 = 20_000;
    let t = Instant::now();
    let o = topo.run_peer(&format!(
        "timeout -s INT 20 hping3 -q --icmp -c {N} -i u100 198.18.0.1"
    ))?;
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let m1 = metrics(&topo)?;
    let replies = m1.sum("handshake_icmp_echo_replies_total", &[])
        - m0.sum("handshake_icmp_echo_replies_total", &[]);
    let limited = m1.drops("icmp_rate_limited") - m0.drops("icmp_rate_limited");
    let rx = m1.sum("handshake_rx_packets_total", &[]) - m0.sum("handshake_rx_packets_total", &[]);
    let hi = 100.0 + 1000.0 * secs;
    // hping3 waits 1 s for late replies after its last request (COUNTREACHED_TIMEOUT), and
    // start-up takes a moment: the requests span at least `secs - 1.5` s.
    let lo = 1000.0 * (secs - 1.5);
    eprintln!(
        "ICMP flood: {N} requests in {secs:.2} s, engine rx {rx}, replies {replies} (allowed {lo:.0}..{hi:.0}), rate-limited {limited}"
    );
    ensure!(
        rx >= N,
        "the engine received {rx} frames, fewer than the {N} requests sent:\n{}",
        text(&o)
    );
    ensure!(
        replies + limited == N,
        "replies {replies} + rate-limited {limited} != {N} requests"
    );
    ensure!(
        (replies as f64) <= hi && (replies as f64) >= lo,
        "replies {replies} outside the token bucket's {lo:.0}..{hi:.0} for {secs:.2} s"
    );
    std::thread::sleep(Duration::from_millis(500));
    let o = topo.run_peer("ping -c 5 -i 0.2 -W 2 198.18.0.1")?;
    ensure!(
        o.status.success() && text(&o).contains(" 0% packet loss"),
        "ordinary pings after the flood: {}",
        text(&o)
    );
    Ok(())
}

/// 10,000 IPv4 fragments (first, middle and last pieces of 2,500 datagrams of 256 random
/// bytes: UDP and ICMP) to 198.18.0.1, then 5,000 first fragments of datagrams that never
/// complete. Exact: every fragment of the first part is taken and every datagram reassembled;
/// each UDP one gets port unreachable (or is over the ICMP error rate) and counts
/// `proto_unreachable`; each ICMP one is refused by its checksum (as many as the script finds
/// broken) or ignored or answered. Of the second part the reassembly holds exactly its 64
/// datagrams (64 bytes each), each new one evicting the oldest (4,936 counted
/// `ipv4_frag_evicted`); memory must not grow, and the engine must still serve.
#[test]
fn fragment_flood_is_reassembled_within_bounds() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
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
    curl_ok(&topo)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;
    let m0 = metrics(&topo)?;
    let script = r#"
import sys, random, time
from scapy.all import Ether, IP, Raw, sendp, conf
conf.verb = 0
iface, mac, part = sys.argv[1], sys.argv[2], sys.argv[3]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(int.from_bytes(b[i:i+2], 'big') for i in range(0, len(b), 2))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
rng = random.Random(6)
pkts = []
icmp_ok = icmp_echo = 0
if part == 'whole':
    for i in range(2500):
        proto = 17 if i % 2 else 1
        base = Ether(dst=mac)/IP(src='198.18.0.2', dst='198.18.0.1', id=i, proto=proto)
        pay = bytes(rng.getrandbits(8) for _ in range(256))
        if proto == 1 and csum(pay) == 0xffff:
            icmp_ok += 1
            icmp_echo += pay[0] == 8
        for k in range(4):
            p = base.copy()/Raw(pay[64 * k:64 * (k + 1)]); p[IP].frag = 8 * k
            if k < 3: p[IP].flags = 'MF'
            pkts.append(p)
else:
    for i in range(5000):
        p = Ether(dst=mac)/IP(src='198.18.0.2', dst='198.18.0.1', id=10000 + i, proto=17, flags='MF')/Raw(bytes(64))
        pkts.append(p)
t = time.time()
sendp(pkts, iface=iface)
print('sent', len(pkts), 'in', round(time.time() - t, 2), 's; icmp_valid', icmp_ok, 'icmp_echo', icmp_echo)
"#;
    let mac = mac_string(topo.eng_mac());
    let out = topo.py(script, &[topo.peer_if(), &mac, "whole"])?;
    let m1 = settled_metrics(&topo)?;
    let delta = |name: &str| m1.sum(name, &[]) - m0.sum(name, &[]);
    let drops = |r: &str| m1.drops(r) - m0.drops(r);
    let word = |w: &str| -> Result<u64> {
        let v = out
            .split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .with_context(|| format!("no {w} in {out:?}"))?;
        Ok(v.parse()?)
    };
    let (icmp_valid, icmp_echo) = (word("icmp_valid")?, word("icmp_echo")?);
    eprintln!(
        "fragment flood, whole datagrams: {} ; fragments {}, reassembled {}, proto_unreachable {}, icmp_bad_checksum {}, icmp_ignored {}, echo replies {}, ICMP errors {} (+{} over the rate), tx {}",
        out.trim(),
        delta("handshake_ipv4_fragments_total"),
        delta("handshake_ipv4_reassembled_total"),
        drops("proto_unreachable"),
        drops("icmp_bad_checksum"),
        drops("icmp_ignored"),
        delta("handshake_icmp_echo_replies_total"),
        delta("handshake_icmp_errors_total"),
        drops("icmp_error_rate_limited"),
        delta("handshake_tx_packets_total"),
    );
    ensure!(out.contains("sent 10000 "), "{out}");
    // Exact: veth does not lose frames at scapy's rate.
    ensure!(delta("handshake_ipv4_fragments_total") == 10_000);
    ensure!(delta("handshake_ipv4_reassembled_total") == 2_500);
    ensure!(
        drops("proto_unreachable") == 1_250,
        "every UDP datagram: port unreachable"
    );
    ensure!(
        delta("handshake_icmp_errors_total") + drops("icmp_error_rate_limited") == 1_250,
        "every UDP datagram answered or over the ICMP error rate"
    );
    ensure!(drops("icmp_bad_checksum") == 1_250 - icmp_valid);
    ensure!(
        drops("icmp_ignored") + delta("handshake_icmp_echo_replies_total") == icmp_valid
            && delta("handshake_icmp_echo_replies_total") <= icmp_echo
    );
    ensure!(m1.sum("handshake_ipv4_reassembly_datagrams", &[]) == 0);
    ensure!(m1.sum("handshake_ipv4_reassembly_bytes", &[]) == 0);
    // Besides the ICMP answers, at most the refresh of the peer's ARP entry if the run
    // outlasted its 30 s (counted exactly).
    ensure!(
        delta("handshake_tx_packets_total")
            == delta("handshake_icmp_errors_total")
                + delta("handshake_icmp_echo_replies_total")
                + delta("handshake_arp_requests_total"),
        "the engine sent only the ICMP answers (and ARP requests)"
    );
    ensure!(delta("handshake_arp_requests_total") <= 1);
    // Datagrams that never complete: the table holds 64, each new one evicts the oldest
    // (counted).
    let out = topo.py(script, &[topo.peer_if(), &mac, "incomplete"])?;
    let m2 = settled_metrics(&topo)?;
    let evicted = m2.drops("ipv4_frag_evicted") - m1.drops("ipv4_frag_evicted");
    let held = m2.sum("handshake_ipv4_reassembly_datagrams", &[]);
    let bytes = m2.sum("handshake_ipv4_reassembly_bytes", &[]);
    curl_ok(&topo)?;
    let rss1 = rss_kb(&d)?;
    eprintln!(
        "fragment flood, incomplete datagrams: {} ; held {held} datagrams of {bytes} bytes, evicted (oldest first) {evicted}; RSS {rss0} -> {rss1} kB",
        out.trim()
    );
    ensure!(out.contains("sent 5000 "), "{out}");
    ensure!(
        held == 64 && bytes == 64 * 64,
        "held {held} datagrams, {bytes} bytes"
    );
    ensure!(evicted == 5_000 - 64, "{evicted} evicted");
    ensure!(
        rss1 * 10 < rss0 * 11,
        "RSS grew 10% or more: {rss0} -> {rss1} kB"
    );
    Ok(())
}

/// Answers the engine's who-has for 198.18.0.254 with the gateway's (legitimate) MAC, for as
/// long as it runs (bounded by its argument, in seconds).
const GATEWAY: &str = r#"
import sys, time
from scapy.all import Ether, ARP, sendp, sniff, conf
conf.verb = 0
iface, secs = sys.argv[1], float(sys.argv[2])
GW = '02:68:73:00:00:fe'
n = 0
def answer(p):
    global n
    if ARP in p and p[ARP].op == 1 and p[ARP].pdst == '198.18.0.254' and p[ARP].psrc == '198.18.0.1':
        sendp(Ether(src=GW, dst=p[Ether].src)/ARP(op=2, hwsrc=GW, psrc='198.18.0.254', hwdst=p[ARP].hwsrc, pdst='198.18.0.1'), iface=iface)
        n += 1
        print('answered', n, flush=True)
print('gateway up', flush=True)
sniff(iface=iface, filter='arp[6:2] = 1 and ether src 02:68:73:00:00:01', prn=answer, timeout=secs, store=False)
"#;

/// Sends TCP SYNs to port 80 from 198.19.0.7 (off the engine's subnet, so the engine's SYN-ACKs
/// are routed through the gateway and addressed to the MAC its ARP cache holds for it, the
/// source MAC of the SYNs being the peer's own), and prints the destination MACs of the
/// SYN-ACKs.
const OFF_LINK_PING: &str = r#"
import sys, time
from scapy.all import Ether, IP, TCP, sendp, AsyncSniffer, conf
conf.verb = 0
iface, mac, n, port0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sn = AsyncSniffer(iface=iface, filter='tcp and src host 198.18.0.1 and dst host 198.19.0.7', timeout=3 + n * 0.1)
sn.start()
time.sleep(0.3)
for i in range(n):
    sendp(Ether(dst=mac, src='02:68:73:00:00:02')/IP(src='198.19.0.7', dst='198.18.0.1')/TCP(sport=port0 + i, dport=80, flags='S', seq=1000 + i), iface=iface)
    time.sleep(0.1)
sn.join()
macs = sorted(set(p[Ether].dst for p in sn.results))
print('replies', len(sn.results), 'macs', ','.join(macs) or '-')
"#;

/// True when the off-link ping got replies and every one went to the legitimate gateway MAC.
fn gateway_only(out: &str) -> bool {
    out.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        matches!(w[..], ["replies", n, "macs", "02:68:73:00:00:fe"] if n != "0")
    })
}

/// ARP flood with hijack attempts, `max_entries = 64`, gateway 198.18.0.254 learned first from
/// a legitimate responder. Then 20,000 frames, sent twice: who-has 198.18.0.1 from random senders of
/// 198.18.0.10-249 with random MACs, interleaved with replies and requests claiming
/// 198.18.0.254 at an attacker's MAC. The cache must stay ≤ 64 entries, traffic through the
/// gateway must still go to the legitimate MAC, and the engine must answer ping afterwards.
#[test]
fn arp_flood_cache_bounded_and_gateway_not_hijacked() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let cfg = Cfg::new("arp", "[arp]\nmax_entries = 64\n")?;
    let d = Daemon::start(
        &topo,
        &[
            "--config",
            cfg.path(),
            "--addr",
            "198.18.0.1/24",
            "--gateway",
            "198.18.0.254",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    let mut gw = topo.spawn_peer([PYTHON, "-c", GATEWAY, topo.peer_if(), "40"])?;
    let mut gw_out = std::io::BufReader::new(gw.stdout.take().context("gateway stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut gw_out, &mut line)?;
    ensure!(
        line.starts_with("gateway up"),
        "gateway responder: {line:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mac = mac_string(topo.eng_mac());
    let before = topo.py(OFF_LINK_PING, &[topo.peer_if(), &mac, "5", "20000"])?;
    ensure!(
        gateway_only(&before),
        "off-link replies before the flood did not go to the gateway: {before}"
    );
    let rss0 = rss_kb(&d)?;
    let m0 = metrics(&topo)?;
    let flood = r#"
import sys, random, time
from scapy.all import Ether, ARP, sendp, conf
conf.verb = 0
iface, mac = sys.argv[1], sys.argv[2]
rng = random.Random(2)
EVIL = '02:66:66:66:66:66'
def rmac():
    return '02:%02x:%02x:%02x:%02x:%02x' % tuple(rng.getrandbits(8) for _ in range(5))
pkts = []
for i in range(20000):
    if i % 10 == 0:
        # unsolicited reply claiming the gateway
        pkts.append(Ether(src=EVIL, dst=mac)/ARP(op=2, hwsrc=EVIL, psrc='198.18.0.254', hwdst=mac, pdst='198.18.0.1'))
    elif i % 10 == 5:
        # a request "from" the gateway at the attacker's MAC
        pkts.append(Ether(src=EVIL, dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc=EVIL, psrc='198.18.0.254', pdst='198.18.0.1'))
    else:
        m = rmac()
        pkts.append(Ether(src=m, dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc=m, psrc='198.18.0.%d' % rng.randrange(10, 250), pdst='198.18.0.1'))
t = time.time()
print('sending', flush=True)
# Twice over: the flood must outlast the off-link pings sent meanwhile (one pass took 4.6 s
# on this machine, the pings 5.3 s).
for _ in range(2):
    sendp(pkts, iface=iface)
print('sent', 2 * len(pkts), 'in', round(time.time() - t, 2), 's')
"#;
    let mut fl = topo.spawn_peer([PYTHON, "-c", flood, topo.peer_if(), &mac])?;
    let mut fl_out = std::io::BufReader::new(fl.stdout.take().context("flood stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut fl_out, &mut line)?;
    ensure!(
        line.starts_with("sending"),
        "ARP flood did not start: {line:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // While the flood runs: where do the engine's off-link replies go?
    let during = topo.py(OFF_LINK_PING, &[topo.peer_if(), &mac, "20", "21000"])?;
    let flood_still_running = fl.try_wait()?.is_none();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut fl_out, &mut out)?;
    let st = fl.wait()?;
    ensure!(st.success(), "ARP flood: {st} {out}");
    std::thread::sleep(Duration::from_millis(500));
    let m1 = metrics(&topo)?;
    let after = topo.py(OFF_LINK_PING, &[topo.peer_if(), &mac, "5", "22000"])?;
    let ping = topo.run_peer("ping -c 3 -i 0.2 -W 2 198.18.0.1")?;
    let _ = gw.kill();
    let _ = gw.wait();
    let rss1 = rss_kb(&d)?;
    let entries = m1.sum("handshake_arp_cache_entries", &[]);
    let rx = m1.sum("handshake_rx_packets_total", &[]) - m0.sum("handshake_rx_packets_total", &[]);
    let replies =
        m1.sum("handshake_arp_replies_total", &[]) - m0.sum("handshake_arp_replies_total", &[]);
    let unsolicited = m1.drops("arp_unsolicited") - m0.drops("arp_unsolicited");
    eprintln!(
        "ARP flood: {} ; engine rx {rx}, ARP replies sent {replies}, unsolicited dropped {unsolicited}, cache entries {entries} (cap 64); off-link before: {} during: {} after: {}; RSS {rss0} -> {rss1} kB",
        out.trim(),
        before.trim(),
        during.trim(),
        after.trim()
    );
    ensure!(out.contains("sent 40000 "), "{out}");
    ensure!(
        flood_still_running,
        "the flood ended before the off-link pings did"
    );
    ensure!(
        gateway_only(&during),
        "the gateway entry was hijacked during the flood: off-link replies went to {during}"
    );
    // Every forged reply (1 in 10 frames) is refused and counted; none is taken.
    ensure!(
        unsolicited == 4000,
        "only {unsolicited} of the 4000 forged gateway replies were refused"
    );
    ensure!(
        entries <= 64,
        "ARP cache grew to {entries} entries (cap 64)"
    );
    ensure!(
        entries >= 32,
        "only {entries} entries: the flood's senders were not learned, the cap was not exercised"
    );
    ensure!(
        gateway_only(&after),
        "the gateway entry was hijacked (or lost) by the flood: {after}"
    );
    ensure!(
        ping.status.success() && text(&ping).contains(" 0% packet loss"),
        "ping after the ARP flood: {}",
        text(&ping)
    );
    ensure!(
        rss1 * 10 < rss0 * 11,
        "RSS grew 10% or more: {rss0} -> {rss1} kB"
    );
    Ok(())
}

/// Slowloris: 100 connections send one byte of a request and stall, 100 more send nothing at
/// all, with `request_timeout_ms = 1000`. The engine must hold them (200 established flows at
/// 0.5 s), then close every one itself within the timeout plus 1.5 s (the clients see EOF;
/// the stalled requests get a 408), leave no open flow and still serve. Done twice: the second
/// round must not grow memory (the first allocates connection buffers on first use).
#[test]
fn slowloris_connections_are_reclaimed_by_the_request_timeout() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let cfg = Cfg::new("slow", "request_timeout_ms = 1000\n")?;
    let d = Daemon::start(
        &topo,
        &[
            "--config",
            cfg.path(),
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    curl_ok(&topo)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;
    let mut rss = vec![rss0];
    for round in 1..=2 {
        let m0 = metrics(&topo)?;
        let script = r#"
import socket, selectors, time
N = 100
sel = selectors.DefaultSelector()
socks = []
t0 = time.time()
for i in range(2 * N):
    s = socket.create_connection(('198.18.0.1', 80), timeout=5)
    if i < N:
        s.sendall(b'G')
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    socks.append(s)
print('open', len(socks), 'in', round(time.time() - t0, 2), 's', flush=True)
closed, got408, worst = 0, 0, 0.0
data = {}
deadline = t0 + 6
while closed < 2 * N and time.time() < deadline:
    for key, _ in sel.select(timeout=0.1):
        s, i = key.fileobj, key.data
        try:
            b = s.recv(4096)
        except ConnectionResetError:
            b = b''
        if b:
            data[i] = data.get(i, b'') + b
            continue
        sel.unregister(s)
        s.close()
        closed += 1
        worst = max(worst, time.time() - t0)
        got408 += data.get(i, b'').startswith(b'HTTP/1.1 408')
print('closed', closed, 'of', 2 * N, 'by', round(worst, 2), 's', '408s', got408)
"#;
        let mut cl = topo.spawn_peer([PYTHON, "-c", script])?;
        let mut cl_out = std::io::BufReader::new(cl.stdout.take().context("client stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut cl_out, &mut line)?;
        ensure!(line.starts_with("open 200 "), "slowloris clients: {line:?}");
        std::thread::sleep(Duration::from_millis(300));
        let mid = metrics(&topo)?;
        let held = mid.sum("handshake_tcp_flows", &["state=\"established\""]);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut cl_out, &mut rest)?;
        let st = cl.wait()?;
        std::thread::sleep(Duration::from_millis(300));
        let m1 = metrics(&topo)?;
        let open: u64 = [
            "syn_received",
            "established",
            "fin_wait_1",
            "fin_wait_2",
            "close_wait",
            "closing",
            "last_ack",
        ]
        .iter()
        .map(|s| m1.sum("handshake_tcp_flows", &[&format!("state=\"{s}\"")]))
        .sum();
        let s408 = m1.sum("handshake_http_responses_total", &["status=\"408\""])
            - m0.sum("handshake_http_responses_total", &["status=\"408\""]);
        curl_ok(&topo)?;
        let rss1 = rss_kb(&d)?;
        rss.push(rss1);
        eprintln!(
        "slowloris round {round}: {} ; {} ; established while stalled {held}; open flows after {open}; 408s counted {s408}; RSS {rss0} -> {rss1} kB",
        line.trim(),
        rest.trim()
    );
        ensure!(st.success(), "slowloris client: {st} {rest}");
        ensure!(
            held == 200,
            "{held} of 200 stalled connections held at 0.5 s"
        );
        let closed: Vec<&str> = rest.split_whitespace().collect();
        ensure!(
            matches!(
                closed[..],
                ["closed", "200", "of", "200", "by", _, "s", "408s", _]
            ),
            "not every stalled connection was closed by the engine: {rest}"
        );
        let by: f64 = closed[5].parse()?;
        ensure!(
            by <= 2.5,
            "the last stalled connection was closed after {by} s (timeout 1 s)"
        );
        ensure!(open == 0, "{open} flows still open after the timeout");
        ensure!(
            s408 >= 100,
            "only {s408} 408 responses for the 100 stalled requests"
        );
    }
    // The first round allocates connection buffers on first use (`prealloc_buffers = 0`);
    // they are recycled, so a second round of the same attack must not grow memory (2%).
    eprintln!(
        "slowloris RSS: start {} kB, after round 1 {} kB, after round 2 {} kB",
        rss[0], rss[1], rss[2]
    );
    ensure!(
        rss[2] * 100 <= rss[1] * 102,
        "RSS grew from round 1 to round 2: {rss:?} kB: buffers are not recycled"
    );
    Ok(())
}

/// Sockstress: `n` connections from 198.18.0.6 (an address of the peer whose kernel RSTs are
/// dropped by nftables, so a raw socket owns these connections) complete the handshake with a
/// 100-byte window, request the page (larger than the window), take the first 100 bytes, then
/// answer everything (the engine's zero-window probes included) with a zero window, never
/// taking another byte. Prints `open N in S s` once every connection is at a zero window,
/// then, when the engine has reset them all (or after `bound` s), `done zero Z reset R probes
/// min/max A/B after min/max X/Y s` (per connection: probes received, time from its zero
/// window to the engine's RST), and `early K` for RSTs before the second probe.
const SOCKSTRESS: &str = r#"
import socket, struct, sys, time, random, select
iface, eng_mac, my_mac, n, bound = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
eng_mac = bytes.fromhex(eng_mac.replace(':', ''))
my_mac = bytes.fromhex(my_mac.replace(':', ''))
SRC, DST = socket.inet_aton('198.18.0.6'), socket.inet_aton('198.18.0.1')
WIN, PORT0 = 100, 21000 + random.randrange(0, 20000)
REQ = b'GET / HTTP/1.1\r\nHost: handshake.test\r\n\r\n'
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((iface, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

def csum(b):
    if len(b) % 2:
        b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff

def send(sport, seq, ack, flags, win, payload=b'', opts=b''):
    off = (20 + len(opts)) // 4
    tcp = struct.pack('!HHIIBBHHH', sport, 80, seq & 0xffffffff, ack & 0xffffffff, off << 4, flags, win, 0, 0) + opts + payload
    c = csum(SRC + DST + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), random.randrange(65536), 0x4000, 64, 6, 0, SRC, DST)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    s.send(eng_mac + my_mac + b'\x08\x00' + ip + tcp)

FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16
conns = {}
t0 = time.time()
for i in range(n):
    sport = PORT0 + i
    isn = random.randrange(1 << 32)
    conns[sport] = dict(isn=isn, nxt=isn + 1, rcv=None, edge=None, zero_at=None, probes=0, reset_at=None, got=0)
    send(sport, isn, 0, SYN, WIN, opts=struct.pack('!BBH', 2, 4, 1460))
opened = False
deadline = t0 + bound
while time.time() < deadline:
    if not opened and all(c['zero_at'] for c in conns.values()):
        opened = True
        print('open', n, 'in', round(time.time() - t0, 2), 's', flush=True)
    if all(c['reset_at'] for c in conns.values()):
        break
    r, _, _ = select.select([s], [], [], 0.05)
    if not r:
        continue
    while True:
        try:
            pkt, addr = s.recvfrom(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if addr[2] == socket.PACKET_OUTGOING or len(pkt) < 54:
            continue
        ip = pkt[14:]
        if ip[9] != 6 or ip[12:16] != DST or ip[16:20] != SRC:
            continue
        ihl = (ip[0] & 15) * 4
        tot = struct.unpack('!H', ip[2:4])[0]
        tcp = ip[ihl:tot]
        sport_e, dport, seq, ack, offb, flags, win = struct.unpack('!HHIIBBH', tcp[:16])
        c = conns.get(dport)
        if c is None or sport_e != 80 or c['reset_at']:
            continue
        data = tcp[(offb >> 4) * 4:]
        now = time.time()
        if flags & RST:
            c['reset_at'] = now
            continue
        if flags & SYN and flags & ACK:
            if c['rcv'] is None:
                c['rcv'] = (seq + 1) & 0xffffffff
                c['edge'] = (c['rcv'] + WIN) & 0xffffffff
                send(dport, c['nxt'], c['rcv'], ACK, WIN)
                send(dport, c['nxt'], c['rcv'], ACK | PSH, WIN, REQ)
                c['nxt'] += len(REQ)
            else:
                send(dport, c['nxt'], c['rcv'], ACK, (c['edge'] - c['rcv']) & 0xffffffff)
            continue
        if c['rcv'] is None:
            continue
        if data:
            room = (c['edge'] - c['rcv']) & 0xffffffff
            if seq == c['rcv'] and room > 0:
                take = min(len(data), room)
                c['rcv'] = (c['rcv'] + take) & 0xffffffff
                c['got'] += take
            elif seq == c['rcv'] and room == 0:
                c['probes'] += 1
        w = (c['edge'] - c['rcv']) & 0xffffffff
        send(dport, c['nxt'], c['rcv'], ACK, w)
        if w == 0 and c['zero_at'] is None:
            c['zero_at'] = now
if not opened:
    print('open', sum(1 for c in conns.values() if c['zero_at']), 'in', round(time.time() - t0, 2), 's', flush=True)
zs = [c for c in conns.values() if c['zero_at']]
rs = [c for c in zs if c['reset_at']]
after = [c['reset_at'] - c['zero_at'] for c in rs] or [0]
probes = [c['probes'] for c in zs] or [0]
print('done zero', len(zs), 'reset', len(rs), 'probes min/max', '%d/%d' % (min(probes), max(probes)),
      'after min/max', '%.2f/%.2f' % (min(after), max(after)), 's', flush=True)
print('early', sum(1 for c in rs if c['probes'] < 2), 'got', sum(c['got'] for c in zs), flush=True)
"#;

/// Zero-window connections (sockstress), with `persist_timeout_ms = 2000`: 200 raw-socket
/// connections get their response stuck behind a window they keep at zero forever, answering
/// every probe. The engine must keep probing (at least two probes each, none reset before),
/// then reset every one of them within the timeout plus 1 s (counted in
/// `handshake_tcp_persist_timeouts_total`), serve 200 real HTTP clients meanwhile, and leave
/// no open flow. Twice: the second round must not grow memory.
#[test]
fn zero_window_connections_are_reclaimed_by_the_persist_timeout() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let cfg = Cfg::new("sockstress", "[tcp]\npersist_timeout_ms = 2000\n")?;
    let d = Daemon::start(
        &topo,
        &[
            "--config",
            cfg.path(),
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--stats-interval",
            "0",
        ],
    )?;
    let o = topo.run_peer(&format!("ip addr add 198.18.0.6/24 dev {}", topo.peer_if()))?;
    ensure!(o.status.success(), "{}", text(&o));
    nft(
        &topo,
        "table inet stress {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ip saddr 198.18.0.6 tcp flags rst drop\n }\n}\n",
    )?;
    curl_ok(&topo)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;
    let mut rss = vec![rss0];
    let eng_mac = mac_string(topo.eng_mac());
    let peer_mac = mac_string(topo.peer_mac());
    for round in 1..=2 {
        let m0 = metrics(&topo)?;
        let mut cl = topo.spawn_peer([
            PYTHON,
            "-c",
            SOCKSTRESS,
            topo.peer_if(),
            &eng_mac,
            &peer_mac,
            "200",
            "12",
        ])?;
        let mut cl_out = std::io::BufReader::new(cl.stdout.take().context("client stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut cl_out, &mut line)?;
        ensure!(
            line.starts_with("open 200 "),
            "sockstress clients did not all reach a zero window: {line:?}"
        );
        // While they are stuck the engine holds them (metrics are published every 100 ms),
        // and 200 legitimate clients are served.
        std::thread::sleep(Duration::from_millis(250));
        let mid = metrics(&topo)?;
        let held = mid.sum("handshake_tcp_flows", &["state=\"established\""]);
        let t = Instant::now();
        let legit = topo.py(HTTP_CLIENTS, &["200"])?;
        let legit_secs = t.elapsed().as_secs_f64();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut cl_out, &mut rest)?;
        let st = cl.wait()?;
        std::thread::sleep(Duration::from_millis(300));
        let m1 = metrics(&topo)?;
        let open: u64 = [
            "syn_received",
            "established",
            "fin_wait_1",
            "fin_wait_2",
            "close_wait",
            "closing",
            "last_ack",
        ]
        .iter()
        .map(|s| m1.sum("handshake_tcp_flows", &[&format!("state=\"{s}\"")]))
        .sum();
        let d_ = |n: &str| m1.sum(n, &[]) - m0.sum(n, &[]);
        let reclaimed = d_("handshake_tcp_persist_timeouts_total");
        curl_ok(&topo)?;
        let rss1 = rss_kb(&d)?;
        rss.push(rss1);
        eprintln!(
            "sockstress round {round}: {} ; {} ; engine held {held} established during the stall (legit clients took {legit_secs:.1} s: {}); persist timeouts counted {reclaimed}; open flows after {open}; RSS {rss0} -> {rss1} kB",
            line.trim(),
            rest.trim().replace('\n', " ; "),
            legit.lines().find(|l| l.starts_with("ok ")).unwrap_or("-")
        );
        ensure!(st.success(), "sockstress client: {st} {rest}");
        ensure!(ok_count(&legit)? == 200, "legitimate clients: {legit}");
        ensure!(
            held >= 200,
            "only {held} established flows while the 200 were stalled"
        );
        let w: Vec<&str> = rest.split_whitespace().collect();
        ensure!(
            matches!(
                w[..],
                [
                    "done",
                    "zero",
                    "200",
                    "reset",
                    "200",
                    "probes",
                    "min/max",
                    _,
                    "after",
                    "min/max",
                    _,
                    "s",
                    "early",
                    "0",
                    "got",
                    _
                ]
            ),
            "not every zero-window connection was probed and then reset: {rest}"
        );
        let probes_min: u64 = w[7].split('/').next().context("probes")?.parse()?;
        let (after_min, after_max) = w[10].split_once('/').context("after")?;
        let (after_min, after_max): (f64, f64) = (after_min.parse()?, after_max.parse()?);
        ensure!(probes_min >= 2, "a connection got only {probes_min} probes");
        ensure!(
            after_min >= 1.8,
            "a connection was reset {after_min} s after its zero window (timeout 2 s)"
        );
        ensure!(
            after_max <= 3.0,
            "the last zero-window connection was reset {after_max} s after its zero window (timeout 2 s)"
        );
        ensure!(
            reclaimed == 200,
            "{reclaimed} persist timeouts counted for the 200 zero-window connections"
        );
        ensure!(open == 0, "{open} flows still open after the timeout");
    }
    eprintln!(
        "sockstress RSS: start {} kB, after round 1 {} kB, after round 2 {} kB",
        rss[0], rss[1], rss[2]
    );
    // As for slowloris: round 1 allocates connection buffers on first use; round 2 reuses them.
    ensure!(
        rss[2] * 100 <= rss[1] * 102,
        "RSS grew from round 1 to round 2: {rss:?} kB: buffers are not recycled"
    );
    Ok(())
}

// ---- TLS: partial ClientHellos, handshake flood ---------------------------------------------

/// A temporary directory with a CA (`ca.pem`, the clients' only trust anchor), the chain the
/// daemon serves (`chain.pem`: a leaf for 198.18.0.1 and `handshake.test`, then the CA) and
/// its key (`key.pem`, owner-only); removed on drop.
struct Certs(std::path::PathBuf);

impl Certs {
    fn new(tag: &str) -> Result<Certs> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(format!("hs-floods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let certs = Certs(dir);
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "handshake test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(vec!["198.18.0.1".to_owned(), "handshake.test".to_owned()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "handshake.test");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(certs.path("ca.pem"), ca.pem())?;
        std::fs::write(
            certs.path("chain.pem"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )?;
        std::fs::write(certs.path("key.pem"), key.serialize_pem())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            certs.path("key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        Ok(certs)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    /// Starts the daemon with HTTPS on 443 (TLS inline with `tls_threads` "0", else on that
    /// many pool threads) and this configuration.
    fn daemon(&self, topo: &Topology, toml: &str, tls_threads: &str) -> Result<Daemon> {
        std::fs::write(self.path("handshake.toml"), toml)?;
        let (cfg, chain, key) = (
            self.path("handshake.toml"),
            self.path("chain.pem"),
            self.path("key.pem"),
        );
        Daemon::start(
            topo,
            &[
                "--config",
                &cfg,
                "--addr",
                "198.18.0.1/24",
                "--https",
                "443",
                "--cert",
                &chain,
                "--key",
                &key,
                "--tls-threads",
                tls_threads,
                "--stats-interval",
                "0",
            ],
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` HTTPS GETs on fresh connections (full handshakes), `threads` at a time, 5 s timeout
/// each, `pause` s (optional argument) between two of a thread; prints `ok K refused R in S s worst W s` (refused: reset or closed during the
/// handshake, or an alert).
const HTTPS_CLIENTS: &str = r#"
import socket, ssl, sys, time, threading
ca, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0
ctx = ssl.create_default_context(cafile=ca)
ok = refused = 0
worst = 0.0
lock = threading.Lock()
other = []
def one(i):
    global ok, refused, worst
    t1 = time.time()
    r = None
    try:
        s = ctx.wrap_socket(socket.create_connection(('198.18.0.1', 443), timeout=5), server_hostname='198.18.0.1')
        s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        got = b''
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        r = 'ok' if got.startswith(b'HTTP/1.1 200') else 'bad'
        s.close()
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, ssl.SSLEOFError) as e:
        r = 'refused'
    except Exception as e:
        other.append('fail %d %r' % (i, e))
    dt = time.time() - t1
    with lock:
        ok += r == 'ok'
        refused += r == 'refused'
        worst = max(worst, dt)
def worker(k):
    for i in range(k, n, threads):
        one(i)
        time.sleep(pause)
t = time.time()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for x in ts: x.start()
for x in ts: x.join()
for f in other[:5]: print(f)
print('ok', ok, 'refused', refused, 'in', round(time.time() - t, 2), 's', 'worst', round(worst, 2), 's')
"#;

/// Numbers after `key` in the `ok … refused … worst …` line.
fn https_figure(out: &str, key: &str) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("ok "))
        .with_context(|| format!("no ok line:\n{out}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w
        .iter()
        .position(|x| *x == key)
        .with_context(|| format!("no {key} in {line}"))?;
    Ok(w.get(i + 1).context("value")?.parse()?)
}

/// Opens `n` connections that each send the first half of a real ClientHello (Python's ssl,
/// TLS 1.3) and stall; prints `open N in S s`, then `closed C of N first F last L s` (time from
/// each half-hello to the engine's close), bounded by `bound` s.
const PARTIAL_HELLOS: &str = r#"
import socket, ssl, sys, time, selectors
n, bound = int(sys.argv[1]), float(sys.argv[2])
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname='handshake.test')
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
assert hello[0] == 0x16 and len(hello) > 100, hello[:8]
half = hello[:len(hello) // 2]
sel = selectors.DefaultSelector()
t0 = time.time()
sent = {}
for i in range(n):
    s = socket.create_connection(('198.18.0.1', 443), timeout=5)
    s.sendall(half)
    sent[i] = time.time()
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
print('open', n, 'hello', len(hello), 'sent', len(half), 'in', round(time.time() - t0, 2), 's', flush=True)
closed, after = 0, []
deadline = t0 + bound
while closed < n and time.time() < deadline:
    for key, _ in sel.select(timeout=0.1):
        s, i = key.fileobj, key.data
        try:
            b = s.recv(4096)
        except ConnectionResetError:
            b = b''
        if b:
            continue
        sel.unregister(s)
        s.close()
        closed += 1
        after.append(time.time() - sent[i])
after = after or [0]
print('closed', closed, 'of', n, 'first', round(min(after), 2), 'last', round(max(after), 2), 's')
"#;

/// 500 connections each send half a ClientHello and stall, with `handshake_timeout_ms =
/// 1000`: the engine holds them, serves 50 real HTTPS clients meanwhile, then closes every
/// stalled one between 1 s and 2.5 s after its half-hello (each counted as a TLS handshake
/// timeout), and no flow stays open. Twice: the second round must not grow memory.
#[test]
fn partial_client_hellos_are_reclaimed_by_the_handshake_timeout_inline() -> Result<()> {
    partial_client_hellos("0")
}

/// The same with TLS on the session pool (one pool thread).
#[test]
fn partial_client_hellos_are_reclaimed_by_the_handshake_timeout_pool() -> Result<()> {
    partial_client_hellos("1")
}

fn partial_client_hellos(tls_threads: &str) -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let certs = Certs::new(&format!("partial{tls_threads}"))?;
    let d = certs.daemon(&topo, "[tls]\nhandshake_timeout_ms = 1000\n", tls_threads)?;
    let ca = certs.path("ca.pem");
    let warm = topo.py(HTTPS_CLIENTS, &[&ca, "5", "1"])?;
    ensure!(https_figure(&warm, "ok")? == 5.0, "HTTPS warm-up: {warm}");
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;
    let mut rss = vec![rss0];
    for round in 1..=2 {
        let m0 = metrics(&topo)?;
        let mut cl = topo.spawn_peer([PYTHON, "-c", PARTIAL_HELLOS, "500", "10"])?;
        let mut cl_out = std::io::BufReader::new(cl.stdout.take().context("client stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut cl_out, &mut line)?;
        ensure!(line.starts_with("open 500 "), "partial hellos: {line:?}");
        // Metrics are published every 100 ms; the stalled ones have 1 s to live.
        std::thread::sleep(Duration::from_millis(250));
        let mid = metrics(&topo)?;
        let held = mid.sum("handshake_tcp_flows", &["state=\"established\""]);
        let legit = topo.py(HTTPS_CLIENTS, &[&ca, "50", "5"])?;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut cl_out, &mut rest)?;
        let st = cl.wait()?;
        std::thread::sleep(Duration::from_millis(300));
        let m1 = metrics(&topo)?;
        let d_ = |n: &str| m1.sum(n, &[]) - m0.sum(n, &[]);
        // Inline TLS counts per queue, the pool per pool thread: one of the two is zero.
        let timeouts = d_("handshake_tls_timeouts_total") + d_("handshake_tls_pool_timeouts_total");
        let handshakes =
            d_("handshake_tls_handshakes_total") + d_("handshake_tls_pool_handshakes_total");
        let open: u64 = [
            "established",
            "fin_wait_1",
            "fin_wait_2",
            "close_wait",
            "last_ack",
        ]
        .iter()
        .map(|s| m1.sum("handshake_tcp_flows", &[&format!("state=\"{s}\"")]))
        .sum();
        let rss1 = rss_kb(&d)?;
        rss.push(rss1);
        eprintln!(
            "partial ClientHellos (tls threads {tls_threads}) round {round}: {} ; {} ; established at the start {held}; legit HTTPS meanwhile: {}; TLS handshake timeouts counted {timeouts}, handshakes {handshakes}; open flows after {open}; RSS {rss0} -> {rss1} kB",
            line.trim(),
            rest.trim(),
            legit.trim().replace('\n', " ; ")
        );
        ensure!(st.success(), "partial hello client: {st} {rest}");
        ensure!(
            https_figure(&legit, "ok")? == 50.0,
            "legitimate HTTPS clients during the stall: {legit}"
        );
        let w: Vec<&str> = rest.split_whitespace().collect();
        ensure!(
            matches!(
                w[..],
                ["closed", "500", "of", "500", "first", _, "last", _, "s"]
            ),
            "not every stalled handshake was closed by the engine: {rest}"
        );
        let (first, last): (f64, f64) = (w[5].parse()?, w[7].parse()?);
        ensure!(
            first >= 0.9,
            "a stalled handshake was closed after {first} s (timeout 1 s)"
        );
        ensure!(
            last <= 2.5,
            "the last stalled handshake was closed after {last} s (timeout 1 s)"
        );
        ensure!(
            timeouts == 500,
            "{timeouts} handshake timeouts counted for the 500 stalled hellos"
        );
        ensure!(handshakes == 50, "{handshakes} handshakes for 50 clients");
        ensure!(
            held >= 500,
            "only {held} established flows while the 500 were stalled"
        );
        ensure!(open == 0, "{open} flows still open after the timeout");
    }
    eprintln!(
        "partial ClientHellos RSS: start {} kB, after round 1 {} kB, after round 2 {} kB",
        rss[0], rss[1], rss[2]
    );
    ensure!(
        rss[2] * 100 <= rss[1] * 102,
        "RSS grew from round 1 to round 2: {rss:?} kB"
    );
    Ok(())
}

/// Holds `n` TLS connections opened one after the other (each handshake completes or is
/// refused), prints `held H refused R worst_refusal W s`; then, still holding them, tries 5
/// more (`during ok K refused R worst W s`); releases them all and, 0.5 s later, makes 20 GETs
/// (`after ok K of 20`).
const HOLD: &str = r#"
import socket, ssl, sys, time
ca, n = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=ca)
def conn():
    return ctx.wrap_socket(socket.create_connection(('198.18.0.1', 443), timeout=5), server_hostname='198.18.0.1')
def get(s):
    s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    got = b''
    while b'\r\n\r\n' not in got:
        b = s.recv(65536)
        if not b:
            break
        got += b
    return got.startswith(b'HTTP/1.1 200')
def attempt():
    t1 = time.time()
    try:
        s = conn()
        return ('ok' if get(s) else 'bad'), time.time() - t1, s
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, ssl.SSLEOFError):
        return 'refused', time.time() - t1, None
held, refused, worst = [], 0, 0.0
for i in range(n):
    r, dt, s = attempt()
    if s:
        held.append(s)
    else:
        refused += 1
        worst = max(worst, dt)
print('held', len(held), 'refused', refused, 'worst_refusal', round(worst, 3), 's', flush=True)
ok = ref = 0
w = 0.0
for i in range(5):
    r, dt, s = attempt()
    ok += r == 'ok'
    ref += r == 'refused'
    w = max(w, dt)
    if s:
        s.close()
print('during ok', ok, 'refused', ref, 'worst', round(w, 3), 's', flush=True)
for s in held:
    s.close()
time.sleep(0.5)
ok = 0
for i in range(20):
    r, dt, s = attempt()
    ok += r == 'ok'
    if s:
        s.close()
print('after ok', ok, 'of 20')
"#;

/// TLS handshake flood beyond the session limit (`max_sessions = 64`, TLS inline). First the
/// cap, exactly: 100 connections held one after the other get 64 sessions and 36 prompt
/// refusals, 5 more are refused promptly while the 64 are held, and all 20 are served once
/// they are released. Then a bounded flood: h2load makes 1,500 clients at once, each a full
/// handshake and one request (`-n 1500 -c 1500`, 20 s bound each), in waves (at least ten, at
/// most 40) until 100 real clients, trying one after the other meanwhile, are done: every connection is a session or a counted refusal
/// (`handshake_tls_refused_total`: an RST at accept), the handshakes counted are exactly the
/// clients that completed, no legitimate client hangs (each is served or refused within 5 s;
/// while the flood holds every session, refusal is the expected answer), all are served right
/// after the flood, and memory does not keep growing over rounds 4 to 6 of six.
#[test]
fn tls_handshake_flood_stays_within_the_session_limit_inline() -> Result<()> {
    tls_flood("0")
}

/// The same with TLS on the session pool (one pool thread).
#[test]
fn tls_handshake_flood_stays_within_the_session_limit_pool() -> Result<()> {
    tls_flood("1")
}

/// The sum of an inline TLS counter (per queue) and its pool counterpart (per pool thread):
/// `name` is the part after `handshake_tls_`.
fn tls_count(m: &Metrics, name: &str) -> u64 {
    m.sum(&format!("handshake_tls_{name}"), &[]) + m.sum(&format!("handshake_tls_pool_{name}"), &[])
}

fn tls_flood(tls_threads: &str) -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let certs = Certs::new(&format!("tlsflood{tls_threads}"))?;
    let d = certs.daemon(&topo, "[tls]\nmax_sessions = 64\n", tls_threads)?;
    let ca = certs.path("ca.pem");
    let warm = topo.py(HTTPS_CLIENTS, &[&ca, "5", "1"])?;
    ensure!(https_figure(&warm, "ok")? == 5.0, "HTTPS warm-up: {warm}");
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = rss_kb(&d)?;

    // The cap, exactly.
    let m0 = metrics(&topo)?;
    let hold = topo.py(HOLD, &[&ca, "100"])?;
    std::thread::sleep(Duration::from_millis(300));
    let m1 = metrics(&topo)?;
    let refused_a = tls_count(&m1, "refused_total") - tls_count(&m0, "refused_total");
    eprintln!(
        "session cap 64 (tls threads {tls_threads}): {} ; refusals counted {refused_a}",
        hold.trim().replace('\n', " ; ")
    );
    ensure!(
        hold.contains("held 64 refused 36 "),
        "the session limit did not hold at 64: {hold}"
    );
    ensure!(hold.contains("during ok 0 refused 5 "), "{hold}");
    ensure!(hold.contains("after ok 20 of 20"), "{hold}");
    for l in hold.lines() {
        if let Some(w) = l.split("worst").nth(1) {
            let secs: f64 = w
                .trim_start_matches("_refusal")
                .split_whitespace()
                .next()
                .context("worst")?
                .parse()?;
            ensure!(secs < 1.0, "a refusal took {secs} s: {l}");
        }
    }
    ensure!(
        refused_a == 41,
        "{refused_a} refusals counted for 41 refused"
    );

    // The flood, six times. Connection buffers are allocated on first use, up to the most
    // connections ever open at once, which varies a little from round to round, and the
    // threads' malloc arenas settle over the first rounds (all of the growth is in anonymous
    // mappings, none in the main heap). A leak grows every round: rounds 4 to 6 are measured.
    let mut rss = vec![rss0];
    let mut parts = vec![rss_parts_kb(&d)?];
    for round in 1..=6 {
        // Metrics are published every 100 ms: let the previous clients' counts land first.
        std::thread::sleep(Duration::from_millis(300));
        let m0 = metrics(&topo)?;
        // Waves until the legitimate clients are done (the stop file), at least 10 (the leak
        // bound below counts on them), at most 40: ten fixed waves took 1.6 s here, and so did
        // the 100 clients, so a fixed count let the flood end first now and then.
        let stop = certs.path(&format!("flood-stop-{round}"));
        let _ = std::fs::remove_file(&stop);
        let flood_cmd = format!(
            "ulimit -n 8192; i=0; while [ $i -lt 40 ] && {{ [ $i -lt 10 ] || [ ! -e {stop} ]; }}; do i=$((i+1)); timeout -s INT 20 h2load --h1 -n 1500 -c 1500 -t 1 --connect-to=198.18.0.1:443 https://handshake.test/; done"
        );
        let t = Instant::now();
        let flood = topo.spawn_peer(["sh", "-c", &flood_cmd])?;
        std::thread::sleep(Duration::from_millis(300));
        let legit = topo.py(HTTPS_CLIENTS, &[&ca, "100", "1", "0.01"]);
        let legit_secs = t.elapsed().as_secs_f64();
        std::fs::write(&stop, b"")?;
        let legit = legit?;
        let fl = flood.wait_with_output()?;
        let flood_secs = t.elapsed().as_secs_f64();
        let fl_out = text(&fl);
        std::thread::sleep(Duration::from_millis(500));
        let m1 = metrics(&topo)?;
        let cookies = m1.sum("handshake_tcp_syn_cookies_validated_total", &[])
            - m0.sum("handshake_tcp_syn_cookies_validated_total", &[]);
        let t_ = |n: &str| tls_count(&m1, n) - tls_count(&m0, n);
        let (refused, handshakes, sessions, errors, timeouts) = (
            t_("refused_total"),
            t_("handshakes_total"),
            t_("sessions_total"),
            t_("errors_total"),
            t_("timeouts_total"),
        );
        // h2load's `requests: N total, S started, D done, K succeeded, F failed, …` per wave.
        let waves: Vec<Vec<u64>> = fl_out
            .lines()
            .filter(|l| l.trim_start().starts_with("requests:"))
            .map(|l| {
                l.split(',')
                    .filter_map(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
                    .collect()
            })
            .collect();
        ensure!(
            (10..=40).contains(&waves.len()) && waves.iter().all(|w| w.len() >= 5),
            "h2load did not run its waves (10 to 40):\n{fl_out}"
        );
        let made = 1500 * waves.len() as u64;
        let succeeded: u64 = waves.iter().map(|w| w[3]).sum();
        let failed: u64 = waves.iter().map(|w| w[4]).sum();
        let after = topo.py(HTTPS_CLIENTS, &[&ca, "20", "2"])?;
        let rss1 = rss_kb(&d)?;
        rss.push(rss1);
        parts.push(rss_parts_kb(&d)?);
        let legit_ok = https_figure(&legit, "ok")?;
        let legit_refused = https_figure(&legit, "refused")?;
        eprintln!(
            "TLS handshake flood (tls threads {tls_threads}) round {round}: h2load {} waves of 1500 clients at once in {flood_secs:.2} s ({:.0} attempts/s): succeeded {succeeded} failed {failed}; legit during (first {legit_secs:.2} s): {} ; engine: sessions {sessions}, handshakes {handshakes}, refused {refused}, errors {errors}, timeouts {timeouts}, SYN cookies validated {cookies}; after: {} ; RSS {rss0} -> {rss1} kB",
            waves.len(),
            made as f64 / flood_secs,
            legit.trim().replace('\n', " ; "),
            after.trim()
        );
        ensure!(
            legit_secs < flood_secs,
            "the legitimate clients did not run during the flood"
        );
        ensure!(
            legit_ok + legit_refused == 100.0,
            "a legitimate client neither got the page nor was refused (a hang or worse): {legit}"
        );
        ensure!(
            https_figure(&legit, "worst")? < 5.0,
            "a legitimate client took 5 s or more: {legit}"
        );
        ensure!(refused > 0, "the flood never reached the session limit");
        ensure!(
            succeeded > 0,
            "no flood client completed: the engine did not serve under load:\n{fl_out}"
        );
        // Every connection the engine accepted is a session or a counted refusal; every
        // client that completed is a counted handshake. (A refused connection can be accepted
        // again: past the SYN backlog the handshake is a SYN cookie, and the client's next
        // segment, sent before our RST reached it, validates the cookie once more. So the
        // refusals are at least the clients refused, not exactly.)
        ensure!(
            succeeded + failed == made,
            "h2load accounted for {} of {made} requests",
            succeeded + failed
        );
        ensure!(
            sessions + refused >= made + 100,
            "sessions {sessions} + refused {refused} < the {} connections made",
            made + 100
        );
        ensure!(
            refused >= failed + legit_refused as u64,
            "refusals counted {refused} < flood failures {failed} + legitimate refusals {legit_refused}"
        );
        ensure!(
            refused == failed + legit_refused as u64 || cookies > 0,
            "{refused} refusals counted for {failed} + {legit_refused} refused clients, without SYN cookies"
        );
        ensure!(
            handshakes == succeeded + legit_ok as u64 && errors == 0 && timeouts == 0,
            "handshakes {handshakes} (errors {errors}, timeouts {timeouts}) != completed {succeeded} + {legit_ok}"
        );
        ensure!(
            https_figure(&after, "ok")? == 20.0,
            "not served after the flood: {after}"
        );
    }
    eprintln!(
        "TLS handshake flood RSS (start, after each round): {rss:?} kB; (heap, other anonymous, the rest): {parts:?} kB"
    );
    // A leak grows every round; the arenas grow now and then, by jumps (up to 2.6 MB, 5%, in
    // one round of a run where builds competed for the CPU). So the median of the three
    // rounds' growths from round 3 to 6 must stay within 1.5%: a leak of 100 bytes per
    // connection (at least 15,100 a round) adds 3% or more every round (measured: 3.3-3.4%
    // inline, 4.5-8.2% on the pool, injected in Tcp::create), while a single jump leaves the
    // median at the quiet rounds' 0-0.4%.
    let mut growth: Vec<u64> = (3..6)
        .map(|k| rss[k + 1].saturating_sub(rss[k]) * 1000 / rss[k])
        .collect();
    growth.sort_unstable();
    ensure!(
        growth[1] <= 15,
        "RSS grew every round from round 3 to 6 (median {}‰ a round): {rss:?} kB; (heap, other anonymous, the rest): {parts:?} kB",
        growth[1]
    );
    Ok(())
}
