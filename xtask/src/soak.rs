//! `cargo xtask soak --minutes N`: one topology, one daemon (HTTP, HTTPS with a TLS pool
//! thread, echo), and a bounded mixed load for N minutes from the peer namespace: wrk
//! (keep-alive HTTP), h2load (HTTPS, a fresh TLS connection every 10 requests), a loop of curls
//! (a fresh TCP connection per request) and pings, optionally under nftables loss. The daemon's
//! RSS and its metrics are sampled every few seconds; at the end it asserts no load error, no TLS
//! error, RSS flat after the warm-up, every flow drained (but TIME-WAIT) and the frame
//! accounting clean at the stop, and prints a summary table. Not part of `cargo xtask test`.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use handshake_tests::daemon::Daemon;
use handshake_tests::netns::{output_text, Topology};

use crate::{build, deps, util};

/// The longest one load command runs before the loop starts the next (bounded; results add up).
const CHUNK_SECS: f64 = 20.0;
/// RSS may grow at most this much between the end of the warm-up and the end of the run.
const RSS_GROWTH_KB: u64 = 8 * 1024;

/// What one load loop did.
#[derive(Default, Debug, Clone)]
struct Tally {
    runs: u64,
    ok: u64,
    errors: u64,
    notes: Vec<String>,
}

/// One sample of the daemon.
#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    rss_kb: u64,
    flows: u64,
    time_wait: u64,
    rx: u64,
    tx: u64,
    drops: u64,
    http: u64,
    tls: u64,
    tls_errors: u64,
}

/// The sum of every sample of `name` in a Prometheus text page whose labels contain `label`.
fn metric(page: &str, name: &str, label: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && rest.contains(label))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the daemon (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn sample(topo: &Topology, pid: u32, t0: Instant) -> Result<Sample> {
    let o = topo.run_eng("curl -sS --fail -m 5 http://127.0.0.1:9900/metrics")?;
    ensure!(o.status.success(), "metrics endpoint: {}", output_text(&o));
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kb: rss_kb(pid)?,
        flows: metric(&page, "handshake_tcp_flows", ""),
        time_wait: metric(&page, "handshake_tcp_flows", "state=\"time_wait\""),
        rx: metric(&page, "handshake_rx_packets_total", ""),
        tx: metric(&page, "handshake_tx_packets_total", ""),
        drops: metric(&page, "handshake_drops_total", ""),
        http: metric(&page, "handshake_http_responses_total", "")
            + metric(&page, "handshake_tls_pool_http_responses_total", ""),
        tls: metric(&page, "handshake_tls_pool_handshakes_total", ""),
        tls_errors: metric(&page, "handshake_tls_pool_errors_total", "")
            + metric(&page, "handshake_tls_errors_total", ""),
    })
}

/// Runs `sh -c cmd` in the peer namespace.
fn peer(topo: &Topology, cmd: &str) -> Result<Output> {
    topo.run_peer_args(["sh", "-c", cmd])
}

/// wrk: keep-alive HTTP, 1 thread, 16 connections. Requests, errors (socket errors, non-2xx).
fn wrk(topo: &Topology, secs: u64) -> Result<(u64, u64, String)> {
    let o = peer(
        topo,
        &format!(
            "timeout {} wrk -t1 -c16 -d{secs}s http://198.18.0.1/",
            secs + 15
        ),
    )?;
    let out = output_text(&o);
    ensure!(o.status.success(), "wrk failed:\n{out}");
    let reqs = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no request count:\n{out}"))?;
    let mut errors = 0;
    for l in out.lines() {
        if let Some(rest) = l.trim().strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = l.trim().strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(1);
        }
    }
    Ok((reqs, errors, out))
}

/// h2load over HTTPS (HTTP/1.1) in a loop for `secs`: each run 8 clients, each a fresh TLS
/// connection with 10 requests. Succeeded requests, and failed/errored/timed-out or non-2xx.
fn h2load(topo: &Topology, secs: u64) -> Result<(u64, u64, String)> {
    let o = peer(
        topo,
        &format!(
            "end=$(($(date +%s) + {secs})); while [ $(date +%s) -lt $end ]; do \
             timeout 20 h2load --h1 -n 80 -c 8 -m 1 https://198.18.0.1/ || echo h2load-failed; done"
        ),
    )?;
    let out = output_text(&o);
    let (mut ok, mut bad, mut runs) = (0, 0, 0);
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("requests:") {
            runs += 1;
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(k)) = (w.next().and_then(|v| v.parse::<u64>().ok()), w.next())
                else {
                    continue;
                };
                match k {
                    "succeeded" => ok += n,
                    "failed" | "errored" | "timeout" => bad += n,
                    _ => {}
                }
            }
        }
        if let Some(rest) = l.strip_prefix("status codes:") {
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(k)) = (w.next().and_then(|v| v.parse::<u64>().ok()), w.next())
                {
                    if k != "2xx" {
                        bad += n;
                    }
                }
            }
        }
        if l.trim() == "h2load-failed" {
            bad += 1;
        }
    }
    ensure!(runs > 0, "no h2load run:\n{out}");
    Ok((ok, bad, out))
}

/// 50 curls, each a fresh TCP connection: how many answered 200.
fn curls(topo: &Topology) -> Result<(u64, u64)> {
    let o = peer(
        topo,
        "for i in $(seq 50); do curl -s -m 3 -o /dev/null -w '%{http_code}\\n' \
         http://198.18.0.1/; done",
    )?;
    let out = output_text(&o);
    let ok = out.lines().filter(|l| l.trim() == "200").count() as u64;
    Ok((ok, 50 - ok.min(50)))
}

/// 100 pings at 50 ms: received, lost.
fn pings(topo: &Topology) -> Result<(u64, u64)> {
    let o = peer(topo, "ping -q -c 100 -i 0.05 -W 2 198.18.0.1")?;
    let out = output_text(&o);
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary:\n{out}"))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let (sent, got) = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    );
    Ok((got, sent.saturating_sub(got)))
}

fn certificates(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["198.18.0.1".to_owned()])?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    let kp = dir.join("key.pem");
    std::fs::write(&kp, key.serialize_pem())?;
    std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Runs the soak for `minutes` (fractional allowed), with `loss` percent of the peer's TCP
/// segments dropped by nftables (0: none).
pub fn run(minutes: f64, loss: u32) -> Result<()> {
    ensure!(
        minutes > 0.0 && minutes <= 24.0 * 60.0,
        "--minutes must be in (0, 1440]"
    );
    ensure!(loss <= 20, "--loss is a percentage, at most 20");
    if !util::is_root() {
        bail!("the soak needs root (network namespaces, XDP): run `sudo -E cargo xtask soak`");
    }
    deps::ensure(deps::Need::ALL)?;
    let daemon = build::all(build::Profile::Release)?;
    let dir = util::target_dir().join("soak");
    certificates(&dir)?;
    let total = Duration::from_secs_f64(minutes * 60.0);
    let every = Duration::from_secs_f64((minutes * 60.0 / 40.0).clamp(1.0, 10.0));
    util::heading(&format!(
        "soak: {minutes} min, sampling every {:.1} s, loss {loss}%",
        every.as_secs_f64()
    ));

    handshake_tests::netns::cleanup_stale()?;
    let topo = Topology::builder().queues(1).up()?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let obj = build::object_path();
    let d = Daemon::start_with(
        &topo,
        &daemon,
        &[
            "--addr",
            "198.18.0.1/24",
            "--http",
            "80",
            "--https",
            "443",
            "--echo",
            "7",
            "--tls-threads",
            "1",
            "--stats-interval",
            "0",
            "--cert",
            cert.to_str().context("utf-8 path")?,
            "--key",
            key.to_str().context("utf-8 path")?,
            "--bpf-object",
            obj.to_str().context("utf-8 path")?,
        ],
    )?;
    let pid = d.pid();
    if loss > 0 {
        let script = format!(
            "add table inet chaos\nadd chain inet chaos out {{ type filter hook output priority 0; }}\n\
             add rule inet chaos out meta l4proto tcp numgen random mod 100 < {loss} drop\n"
        );
        let o = topo.run_peer_args(["sh", "-c", "printf '%s' \"$0\" | nft -f -", &script])?;
        ensure!(o.status.success(), "nft: {}", output_text(&o));
    }

    let t0 = Instant::now();
    let deadline = t0 + total;
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Arc<Mutex<Vec<(&'static str, Tally)>>> = Arc::new(Mutex::new(vec![
        ("wrk keep-alive HTTP requests", Tally::default()),
        ("h2load HTTPS requests", Tally::default()),
        ("curl fresh connections", Tally::default()),
        ("pings", Tally::default()),
    ]));
    let samples = std::thread::scope(|s| -> Result<Vec<Sample>> {
        for which in 0..4usize {
            let (topo, stop, tallies) = (&topo, &stop, &tallies);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64();
                    if left < 1.0 {
                        break;
                    }
                    let secs = left.min(CHUNK_SECS).floor().max(1.0) as u64;
                    let r = match which {
                        0 => wrk(topo, secs),
                        1 => h2load(topo, secs),
                        2 => curls(topo).map(|(a, b)| (a, b, String::new())),
                        _ => pings(topo).map(|(a, b)| (a, b, String::new())),
                    };
                    let mut t = tallies.lock().expect("tally lock");
                    let tally = &mut t[which].1;
                    tally.runs += 1;
                    match r {
                        Ok((ok, bad, out)) => {
                            tally.ok += ok;
                            tally.errors += bad;
                            if bad > 0 && tally.notes.len() < 3 {
                                tally.notes.push(out);
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            if tally.notes.len() < 3 {
                                tally.notes.push(format!("{e:#}"));
                            }
                        }
                    }
                }
            });
        }
        let mut samples = Vec::new();
        let mut next = t0;
        while Instant::now() < deadline {
            let r = sample(&topo, pid, t0);
            match r {
                Ok(x) => samples.push(x),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        stop.store(true, Ordering::Relaxed);
        Ok(samples)
    })?;
    // Drain: every connection closed but TIME-WAIT (the engine's active closes), 15 s at most.
    let drain = Instant::now();
    let last = loop {
        let x = sample(&topo, pid, t0)?;
        if x.flows == x.time_wait || drain.elapsed() > Duration::from_secs(15) {
            break x;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut d = d;
    let lines = d.stop_with("TERM")?;
    let log = lines.join("\n");

    // The table.
    println!(
        "\n{:>7} {:>9} {:>6} {:>6} {:>11} {:>11} {:>7} {:>10} {:>8} {:>8}",
        "t (s)",
        "RSS (MiB)",
        "flows",
        "tw",
        "rx pkts",
        "tx pkts",
        "drops",
        "http",
        "tls hs",
        "tls err"
    );
    for x in samples.iter().chain(std::iter::once(&last)) {
        println!(
            "{:>7.1} {:>9.1} {:>6} {:>6} {:>11} {:>11} {:>7} {:>10} {:>8} {:>8}",
            x.t,
            x.rss_kb as f64 / 1024.0,
            x.flows,
            x.time_wait,
            x.rx,
            x.tx,
            x.drops,
            x.http,
            x.tls,
            x.tls_errors
        );
    }
    let tallies = tallies.lock().expect("tally lock").clone();
    println!(
        "\n{:<32} {:>6} {:>10} {:>8}",
        "load", "runs", "ok", "errors"
    );
    for (name, t) in &tallies {
        println!("{name:<32} {:>6} {:>10} {:>8}", t.runs, t.ok, t.errors);
    }
    // Warm-up: the first fifth of the run (at least one sample).
    let warm = samples
        .iter()
        .find(|x| x.t >= total.as_secs_f64() / 5.0)
        .or(samples.last())
        .context("no samples")?
        .clone();
    let max_after = samples
        .iter()
        .filter(|x| x.t >= warm.t)
        .map(|x| x.rss_kb)
        .max()
        .unwrap_or(warm.rss_kb);
    let growth = last.rss_kb.saturating_sub(warm.rss_kb);
    println!(
        "\nRSS: {:.1} MiB after the warm-up ({:.0} s), {:.1} MiB at most after it, {:.1} MiB at the \
         end (growth {:.1} MiB, bound {:.0} MiB); flows at the end {} ({} TIME-WAIT); drops {}",
        warm.rss_kb as f64 / 1024.0,
        warm.t,
        max_after as f64 / 1024.0,
        last.rss_kb as f64 / 1024.0,
        growth as f64 / 1024.0,
        RSS_GROWTH_KB as f64 / 1024.0,
        last.flows,
        last.time_wait,
        last.drops
    );
    for l in lines.iter().filter(|l| l.starts_with("final")) {
        println!("{l}");
    }

    // The verdict.
    let mut failures = Vec::new();
    for (name, t) in &tallies {
        if t.runs == 0 || t.ok == 0 {
            failures.push(format!("{name}: nothing ran"));
        }
        if t.errors > 0 && !(loss > 0 && *name == "pings") {
            failures.push(format!(
                "{name}: {} error(s):\n{}",
                t.errors,
                t.notes.join("\n")
            ));
        }
    }
    if last.tls_errors > 0 {
        failures.push(format!("{} TLS errors", last.tls_errors));
    }
    if growth > RSS_GROWTH_KB {
        failures.push(format!(
            "RSS grew {growth} kB after the warm-up (bound {RSS_GROWTH_KB} kB)"
        ));
    }
    if last.flows != last.time_wait {
        failures.push(format!(
            "{} flows still open 15 s after the load ({} TIME-WAIT)",
            last.flows, last.time_wait
        ));
    }
    if !log.contains("frame accounting checked") || log.contains("frame accounting error") {
        failures.push(format!("frame accounting at the stop:\n{log}"));
    }
    if !log.contains("XDP program detached; bye") {
        failures.push(format!("no clean stop:\n{log}"));
    }
    drop(topo);
    if !failures.is_empty() {
        bail!("soak failed:\n- {}", failures.join("\n- "));
    }
    println!(
        "\nsoak passed: {minutes} min, {} samples, no errors, RSS flat, no leaked flows or frames",
        samples.len() + 1
    );
    Ok(())
}
