//! Privileged tests of the operability features over veth: the Prometheus endpoint counts the
//! traffic a kernel peer sends (checked against the peer's own kernel counters), and
//! `handshake stats` shows it per queue. Run with `cargo xtask test` (root).

use anyhow::{bail, ensure, Context, Result};
use handshake_tests::daemon::{daemon_bin, Daemon};
use handshake_tests::netns::{output_text as text, Topology, ENGINE_ADDR};
use prometheus_parse::{Scrape, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Fetches the endpoint from inside the engine namespace with curl and parses it with the
/// `prometheus-parse` crate. That parser skips lines it does not understand, so the number of
/// samples is also checked against the number of sample lines: nothing may be skipped.
fn scrape(topo: &Topology, addr: &str) -> Result<Scrape> {
    let o = topo.run_eng_args([
        "curl",
        "-sS",
        "--fail",
        "-m",
        "5",
        &format!("http://{addr}/metrics"),
    ])?;
    let body = String::from_utf8(o.stdout.clone())?;
    ensure!(
        o.status.success(),
        "curl of the metrics endpoint failed:\n{}",
        text(&o)
    );
    let sample_lines = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    let s = Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))?;
    ensure!(
        s.samples.len() == sample_lines,
        "prometheus-parse read {} samples of {sample_lines} lines",
        s.samples.len()
    );
    ensure!(sample_lines > 100, "only {sample_lines} samples:\n{body}");
    Ok(s)
}

/// The value of `name` with exactly the labels `labels` (a missing sample is an error).
fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let mut found = s.samples.iter().filter(|x| {
        x.metric == name
            && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v))
            && x.labels.len() == labels.len()
    });
    let x = found
        .next()
        .with_context(|| format!("no sample {name}{labels:?}"))?;
    ensure!(found.next().is_none(), "two samples {name}{labels:?}");
    Ok(match x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => bail!("{name} is not a counter or a gauge"),
    })
}

fn is_counter(s: &Scrape, name: &str) -> bool {
    s.samples
        .iter()
        .any(|x| x.metric == name && matches!(x.value, Value::Counter(_)))
}

fn is_gauge(s: &Scrape, name: &str) -> bool {
    s.samples
        .iter()
        .any(|x| x.metric == name && matches!(x.value, Value::Gauge(_)))
}

/// `q0` value of `name` (plus its own label, if any).
fn q0(s: &Scrape, name: &str, extra: &[(&str, &str)]) -> Result<u64> {
    let mut l = vec![("queue", "0")];
    l.extend_from_slice(extra);
    Ok(get(s, name, &l)? as u64)
}

/// The peer kernel's SNMP counters (`/proc/net/snmp` of its namespace): ("Tcp", "OutSegs") → n.
fn snmp(topo: &Topology) -> Result<HashMap<(String, String), i64>> {
    let o = topo.run_peer("cat /proc/net/snmp")?;
    let t = String::from_utf8(o.stdout)?;
    let lines: Vec<&str> = t.lines().collect();
    let mut m = HashMap::new();
    for pair in lines.chunks(2) {
        let [head, vals] = pair else { continue };
        let mut h = head.split_whitespace();
        let proto = h.next().unwrap_or("").trim_end_matches(':').to_owned();
        for (k, v) in h.zip(vals.split_whitespace().skip(1)) {
            m.insert((proto.clone(), k.to_owned()), v.parse()?);
        }
    }
    Ok(m)
}

fn delta(
    a: &HashMap<(String, String), i64>,
    b: &HashMap<(String, String), i64>,
    p: &str,
    k: &str,
) -> i64 {
    let key = (p.to_owned(), k.to_owned());
    b.get(&key).copied().unwrap_or(0) - a.get(&key).copied().unwrap_or(0)
}

/// A counter of the peer's veth (`/sys/class/net/IF/statistics/NAME`).
fn peer_link(topo: &Topology, name: &str) -> Result<u64> {
    let o = topo.run_peer(&format!(
        "cat /sys/class/net/{}/statistics/{name}",
        topo.peer_if()
    ))?;
    Ok(String::from_utf8(o.stdout)?.trim().parse()?)
}

const PINGS: u64 = 20;
const CONNS: u64 = 10;

/// The peer sends 20 pings and makes 10 HTTP connections (one GET each). Every figure is
/// compared before/after, to the traffic sent and to the peer kernel's own counters:
/// - exact: ICMP echo replies (= the peer's Icmp OutEchos and InEchoReps), passive opens,
///   HTTP 200 responses, HTTP connections, no other status, no drops, no open flow after;
/// - exact: TCP segments received by the engine = the peer's Tcp OutSegs + RetransSegs, sent =
///   the peer's InSegs; frames and bytes received = what the peer's veth transmitted and the
///   XDP program redirected; frames and bytes sent = what the peer's veth received;
/// - not controlled by the test: ARP (the peer asks once, may re-probe; the engine may ask
///   too): frames received beyond TCP and ICMP are bounded by the ARP replies and requests the
///   engine counted, and frames sent are exactly TCP + ICMP + ARP replies + ARP requests.
#[test]
fn metrics_count_the_traffic_sent() -> Result<()> {
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
    // Let the start-up frames (gratuitous ARP) be published.
    std::thread::sleep(Duration::from_millis(400));
    let before = scrape(&topo, "127.0.0.1:9900")?;
    let snmp0 = snmp(&topo)?;
    let (ptx0, ptxb0, prx0, prxb0) = (
        peer_link(&topo, "tx_packets")?,
        peer_link(&topo, "tx_bytes")?,
        peer_link(&topo, "rx_packets")?,
        peer_link(&topo, "rx_bytes")?,
    );

    let o = topo.run_peer(&format!("ping -q -c {PINGS} -i 0.01 -W 2 {ENGINE_ADDR}"))?;
    ensure!(o.status.success(), "ping failed:\n{}", text(&o));
    for i in 0..CONNS {
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
    // Closes complete and the workers publish (every 100 ms).
    std::thread::sleep(Duration::from_millis(600));
    let after = scrape(&topo, "127.0.0.1:9900")?;
    let snmp1 = snmp(&topo)?;
    let (ptx1, ptxb1, prx1, prxb1) = (
        peer_link(&topo, "tx_packets")?,
        peer_link(&topo, "tx_bytes")?,
        peer_link(&topo, "rx_packets")?,
        peer_link(&topo, "rx_bytes")?,
    );

    // Types, as declared.
    for c in [
        "handshake_rx_packets_total",
        "handshake_drops_total",
        "handshake_http_responses_total",
        "handshake_xdp_packets_total",
    ] {
        ensure!(is_counter(&after, c), "{c} is not a counter");
    }
    for g in [
        "handshake_tcp_flows",
        "handshake_arp_cache_entries",
        "handshake_queues",
    ] {
        ensure!(is_gauge(&after, g), "{g} is not a gauge");
    }
    ensure!(get(&after, "handshake_queues", &[])? == 1.0);

    let d_ = |name: &str, extra: &[(&str, &str)]| -> Result<u64> {
        Ok(q0(&after, name, extra)? - q0(&before, name, extra)?)
    };
    let echo = d_("handshake_icmp_echo_replies_total", &[])?;
    ensure!(echo == PINGS, "echo replies {echo}, sent {PINGS}");
    ensure!(delta(&snmp0, &snmp1, "Icmp", "OutEchos") == PINGS as i64);
    ensure!(delta(&snmp0, &snmp1, "Icmp", "InEchoReps") == PINGS as i64);
    let opens = d_("handshake_tcp_opens_total", &[("side", "passive")])?;
    ensure!(opens == CONNS, "passive opens {opens}");
    ensure!(d_("handshake_tcp_opens_total", &[("side", "active")])? == 0);
    let ok = d_("handshake_http_responses_total", &[("status", "200")])?;
    ensure!(ok == CONNS, "HTTP 200 responses {ok}");
    let all_http: f64 = after
        .samples
        .iter()
        .filter(|x| x.metric == "handshake_http_responses_total")
        .map(|x| match x.value {
            Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .sum();
    ensure!(
        all_http == CONNS as f64,
        "HTTP responses of any status: {all_http}"
    );
    ensure!(d_("handshake_http_connections_total", &[])? == CONNS);
    for st in handshake::metrics::TCP_STATES {
        let n = q0(&after, "handshake_tcp_flows", &[("state", st)])?;
        ensure!(n == 0, "{n} flows still in {st}");
    }
    let drops: f64 = after
        .samples
        .iter()
        .filter(|x| x.metric == "handshake_drops_total" || x.metric == "handshake_tcp_drops_total")
        .map(|x| match x.value {
            Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .sum();
    ensure!(drops == 0.0, "{drops} drops");
    ensure!(d_("handshake_tcp_retransmits_total", &[])? == 0);

    let seg_in = d_("handshake_tcp_segments_received_total", &[])?;
    let seg_out = d_("handshake_tcp_segments_sent_total", &[])?;
    let peer_out =
        delta(&snmp0, &snmp1, "Tcp", "OutSegs") + delta(&snmp0, &snmp1, "Tcp", "RetransSegs");
    let peer_in = delta(&snmp0, &snmp1, "Tcp", "InSegs");
    ensure!(
        seg_in as i64 == peer_out,
        "engine received {seg_in} TCP segments, peer sent {peer_out}"
    );
    ensure!(
        seg_out as i64 == peer_in,
        "engine sent {seg_out} TCP segments, peer received {peer_in}"
    );
    // At least SYN, ACK, request, FIN from each client.
    ensure!(
        seg_in >= 4 * CONNS,
        "{seg_in} segments for {CONNS} connections"
    );

    let rx = d_("handshake_rx_packets_total", &[])?;
    let tx = d_("handshake_tx_packets_total", &[])?;
    let arp_replies = d_("handshake_arp_replies_total", &[])?;
    let arp_requests = d_("handshake_arp_requests_total", &[])?;
    ensure!(arp_replies >= 1, "the peer's ARP request was not answered");
    let arp_in = rx - seg_in - PINGS;
    ensure!(
        arp_in >= arp_replies && arp_in <= arp_replies + arp_requests,
        "rx {rx} = {seg_in} TCP + {PINGS} ICMP + {arp_in} ARP, with {arp_replies} ARP replies sent and {arp_requests} requests"
    );
    ensure!(
        tx == seg_out + PINGS + arp_replies + arp_requests,
        "tx {tx} != {seg_out} TCP + {PINGS} ICMP + {arp_replies} + {arp_requests} ARP"
    );
    ensure!(d_("handshake_icmp_errors_total", &[])? == 0);
    // What crossed the veth: exact.
    let xdp = |s: &Scrape| {
        get(
            s,
            "handshake_xdp_packets_total",
            &[("action", "redirected")],
        )
    };
    let redirected = (xdp(&after)? - xdp(&before)?) as u64;
    let per_queue = d_("handshake_xdp_queue_redirected_total", &[])?;
    ensure!(
        redirected == rx && per_queue == rx,
        "XDP redirected {redirected} (queue 0: {per_queue}), stack received {rx}"
    );
    ensure!(
        ptx1 - ptx0 == rx,
        "peer transmitted {} frames, engine received {rx}",
        ptx1 - ptx0
    );
    ensure!(
        prx1 - prx0 == tx,
        "peer received {} frames, engine sent {tx}",
        prx1 - prx0
    );
    let rxb = d_("handshake_rx_bytes_total", &[])?;
    let txb = d_("handshake_tx_bytes_total", &[])?;
    // Linux counts the bytes of frames that the receiving end's XDP program takes without their
    // 14-byte Ethernet header (in the veth pair's shared counters); the engine counts frames.
    ensure!(
        ptxb1 - ptxb0 + 14 * rx == rxb,
        "peer transmitted {} bytes (+ 14 per frame), engine received {rxb}",
        ptxb1 - ptxb0
    );
    ensure!(
        prxb1 - prxb0 == txb,
        "peer received {} bytes, engine sent {txb}",
        prxb1 - prxb0
    );
    eprintln!(
        "rx {rx} frames / {rxb} B, tx {tx} / {txb} B; TCP in {seg_in} out {seg_out}; ARP in {arp_in}, replies {arp_replies}, requests {arp_requests}"
    );
    drop(d);
    Ok(())
}

/// The columns of a `handshake stats --once` line.
fn cols(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// `handshake stats --once` on a 2-queue daemon with its endpoint on a non-default address:
/// one line per queue and a total that is their sum and agrees with the endpoint; the live
/// view refreshes; `--metrics off` closes the endpoint and `stats` then says what to do.
#[test]
fn stats_once_prints_per_queue_lines() -> Result<()> {
    let topo = Topology::builder().queues(2).kernel_address(false).up()?;
    let addr = "127.0.0.1:9911";
    let d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--queues",
            "2",
            "--http",
            "80",
            "--metrics",
            addr,
            "--stats-interval",
            "0",
        ],
    )?;
    let o = topo.run_peer(&format!("ping -q -c 10 -i 0.01 -W 2 {ENGINE_ADDR}"))?;
    ensure!(o.status.success(), "ping failed:\n{}", text(&o));
    for _ in 0..4 {
        let o = topo.run_peer_args([
            "curl",
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            &format!("http://{ENGINE_ADDR}/"),
        ])?;
        ensure!(o.status.success(), "{}", text(&o));
    }
    std::thread::sleep(Duration::from_millis(600));
    let bin = daemon_bin().display().to_string();
    let o = topo.run_eng_args([bin.as_str(), "stats", "--once", "--addr", addr])?;
    let out = text(&o);
    ensure!(o.status.success(), "stats --once failed:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let head = cols(lines.first().context("no output")?);
    ensure!(head[..3] == ["queue", "rx_packets", "tx_packets"], "{out}");
    let row = |name: &str| -> Result<Vec<u64>> {
        let l = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .with_context(|| format!("no {name} line:\n{out}"))?;
        cols(l)[1..].iter().map(|c| Ok(c.parse::<u64>()?)).collect()
    };
    let (r0, r1, tot) = (row("q0")?, row("q1")?, row("total")?);
    for i in 0..tot.len() {
        ensure!(
            tot[i] == r0[i] + r1[i],
            "column {} total != q0 + q1:\n{out}",
            head[i + 1]
        );
    }
    let s = scrape(&topo, addr)?;
    let sum = |n: &str| -> Result<u64> {
        Ok((get(&s, n, &[("queue", "0")])? + get(&s, n, &[("queue", "1")])?) as u64)
    };
    ensure!(tot[0] == sum("handshake_rx_packets_total")?, "{out}");
    ensure!(tot[0] >= 10 + 4 * 4, "{out}");
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .map(|i| i - 1)
            .context(name.to_owned())
    };
    ensure!(tot[col("conns")?] == 4 && tot[col("http")?] == 4, "{out}");
    ensure!(tot[col("drops")?] == 0 && tot[col("flows")?] == 0, "{out}");
    ensure!(out.contains("xdp: redirected "), "{out}");

    // The live view: an ANSI clear and redraw per refresh, with rates.
    let o = topo.run_eng_args([
        "timeout",
        "1.6",
        bin.as_str(),
        "stats",
        "--addr",
        addr,
        "--interval",
        "0.5",
    ])?;
    let live = text(&o);
    ensure!(
        o.status.code() == Some(124),
        "the live view should run until killed:\n{live}"
    );
    let frames = live.matches("\x1b[2J\x1b[H").count();
    ensure!(
        (2..=3).contains(&frames),
        "{frames} redraws in 1.6 s at 0.5 s:\n{live}"
    );
    ensure!(
        live.contains("rx pkt/s") && live.contains("\nq1 ") && live.contains("\ntotal "),
        "{live}"
    );
    drop(d);

    // --metrics off: nothing listens; stats says what to do.
    let d = Daemon::start(
        &topo,
        &[
            "--addr",
            "198.18.0.1/24",
            "--queues",
            "2",
            "--metrics",
            "off",
        ],
    )?;
    let o = topo.run_eng_args([bin.as_str(), "stats", "--once"])?;
    ensure!(
        !o.status.success(),
        "stats --once succeeded with the endpoint off"
    );
    ensure!(text(&o).contains("--metrics"), "{}", text(&o));
    let o = topo.run_eng("curl -sS -m 2 http://127.0.0.1:9900/metrics")?;
    ensure!(
        !o.status.success(),
        "something answers on 9900 with --metrics off"
    );
    drop(d);
    Ok(())
}

/// HTTPS, inline and on one pool thread: 4 curl requests (4 full TLS handshakes) and one plain
/// HTTP request to the TLS port (a failed handshake). Inline, the TLS counters are exact; on
/// the pool the pool thread's own counters (`thread="0"`, published every 100 ms) are exact,
/// no flow is left on the pool, none was aborted, and its queue depth is exported (0 once
/// idle).
#[test]
fn tls_counters_inline_and_pool() -> Result<()> {
    let topo = Topology::builder().kernel_address(false).up()?;
    let dir = std::env::temp_dir().join(format!("hs-metrics-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ck = rcgen::generate_simple_self_signed(vec![ENGINE_ADDR.to_owned()])?;
    let (chain, key) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    // Owner-only: the daemon refuses a private key every user can read.
    std::fs::set_permissions(
        &key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )?;
    let (chain, key) = (chain.display().to_string(), key.display().to_string());
    let result = (|| -> Result<()> {
        for threads in ["0", "1"] {
            let d = Daemon::start(
                &topo,
                &[
                    "--addr",
                    "198.18.0.1/24",
                    "--https",
                    "443",
                    "--cert",
                    &chain,
                    "--key",
                    &key,
                    "--tls-threads",
                    threads,
                    "--stats-interval",
                    "0",
                ],
            )?;
            for i in 0..4 {
                let o = topo.run_peer_args([
                    "curl",
                    "-sS",
                    "-k",
                    "-m",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("https://{ENGINE_ADDR}/"),
                ])?;
                ensure!(
                    text(&o).trim() == "200",
                    "threads {threads} request {i}: {}",
                    text(&o)
                );
            }
            let o = topo.run_peer(&format!("curl -sS -m 5 http://{ENGINE_ADDR}:443/"))?;
            ensure!(!o.status.success(), "plain HTTP to the TLS port succeeded");
            std::thread::sleep(Duration::from_millis(600));
            let s = scrape(&topo, "127.0.0.1:9900")?;
            let g = |n: &str| q0(&s, n, &[]);
            if threads == "0" {
                ensure!(g("handshake_tls_sessions_total")? == 5, "sessions");
                ensure!(g("handshake_tls_handshakes_total")? == 4, "handshakes");
                ensure!(g("handshake_tls_resumed_total")? == 0, "resumed");
                ensure!(g("handshake_tls_errors_total")? == 1, "errors");
                ensure!(g("handshake_tls_pool_flows")? == 0);
                ensure!(q0(&s, "handshake_http_responses_total", &[("status", "200")])? == 4);
                ensure!(
                    !s.samples
                        .iter()
                        .any(|x| x.metric == "handshake_tls_pool_queue_depth"),
                    "a pool gauge without a pool"
                );
            } else {
                ensure!(
                    g("handshake_tls_pool_flows")? == 0,
                    "flows left on the pool"
                );
                // The failed handshake ends with an alert from the pool thread, not a reset.
                ensure!(g("handshake_tls_pool_aborts_total")? == 0, "pool aborts");
                ensure!(g("handshake_tls_sessions_total")? == 0, "no inline session");
                ensure!(get(&s, "handshake_tls_pool_queue_depth", &[("thread", "0")])? == 0.0);
                ensure!(is_gauge(&s, "handshake_tls_pool_queue_depth"));
                let p = |n: &str| get(&s, n, &[("thread", "0")]);
                ensure!(
                    p("handshake_tls_pool_sessions_total")? == 5.0,
                    "pool sessions"
                );
                ensure!(
                    p("handshake_tls_pool_handshakes_total")? == 4.0,
                    "pool handshakes"
                );
                ensure!(
                    p("handshake_tls_pool_resumed_total")? == 0.0,
                    "pool resumed"
                );
                ensure!(p("handshake_tls_pool_errors_total")? == 1.0, "pool errors");
                ensure!(
                    p("handshake_tls_pool_http_responses_total")? == 4.0,
                    "pool responses"
                );
            }
            ensure!(q0(&s, "handshake_tcp_opens_total", &[("side", "passive")])? == 5);
            drop(d);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
