//! Runs the `handshake` daemon inside a topology's engine namespace, for privileged tests.

use crate::netns::Topology;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace's `target/` directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The daemon binary: `$HANDSHAKE_BIN`, else `target/release/handshake` (built by
/// `cargo xtask build` with the `xdp` feature).
pub fn daemon_bin() -> PathBuf {
    std::env::var_os("HANDSHAKE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/handshake"))
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `handshake run --iface <engine veth> <args>` in the engine namespace and waits for
    /// its "ready" line (10 s at most).
    pub fn start(topo: &Topology, args: &[&str]) -> Result<Daemon> {
        Self::start_env(topo, &[], args)
    }

    /// [`Daemon::start`] with environment variables (`KEY=VALUE`, through `env`).
    pub fn start_env(topo: &Topology, env: &[&str], args: &[&str]) -> Result<Daemon> {
        let mut prefix = vec!["env"];
        prefix.extend_from_slice(env);
        Self::spawn(
            topo,
            if env.is_empty() { &[] } else { &prefix },
            &daemon_bin(),
            args,
        )
    }

    /// [`Daemon::start`] through a command that execs the daemon (`setpriv …`, `env …`).
    pub fn start_under(topo: &Topology, prefix: &[&str], args: &[&str]) -> Result<Daemon> {
        Self::spawn(topo, prefix, &daemon_bin(), args)
    }

    /// Starts the daemon like [`Daemon::start`] but returns at once, without waiting for its
    /// "ready" line: for a daemon expected to fail ([`Daemon::wait_exit`]).
    pub fn launch(topo: &Topology, args: &[&str]) -> Result<Daemon> {
        Self::spawn_unready(topo, &[], &daemon_bin(), args)
    }

    /// [`Daemon::start`] with another binary.
    pub fn start_with(topo: &Topology, bin: &std::path::Path, args: &[&str]) -> Result<Daemon> {
        Self::spawn(topo, &[], bin, args)
    }

    fn spawn(
        topo: &Topology,
        prefix: &[&str],
        bin: &std::path::Path,
        args: &[&str],
    ) -> Result<Daemon> {
        let mut d = Self::spawn_unready(topo, prefix, bin, args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if d.lines().iter().any(|l| l.starts_with("ready")) {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().expect("child").try_wait()? {
                bail!(
                    "daemon exited ({status}) before it was ready:\n{}",
                    d.lines().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("daemon not ready after 10 s:\n{}", d.lines().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_unready(
        topo: &Topology,
        prefix: &[&str],
        bin: &std::path::Path,
        args: &[&str],
    ) -> Result<Daemon> {
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo xtask build` first (or set HANDSHAKE_BIN)",
                bin.display()
            );
        }
        let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        argv.extend([
            bin.display().to_string(),
            "run".into(),
            "--iface".into(),
            topo.eng_if().into(),
        ]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut child = topo.spawn_eng(&argv)?;
        let output = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.lock().expect("output lock").push(line);
                }
            });
        }
        Ok(Daemon {
            child: Some(child),
            output,
        })
    }

    /// Everything the daemon printed so far (stdout and stderr).
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits (`timeout` at most) for the process to exit by itself; returns its status and
    /// output. On timeout the process keeps running (and is stopped on drop).
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .context("the daemon was already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                std::thread::sleep(Duration::from_millis(100));
                return Ok((status, self.lines()));
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon still running after {timeout:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits (10 s at most) for the process to exit; returns its output.
    pub fn stop_with(&mut self, signal: &str) -> Result<Vec<String>> {
        let Some(mut child) = self.child.take() else {
            return Ok(self.lines());
        };
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -s {signal} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "daemon did not exit within 10 s of {signal}:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        Ok(self.lines())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counters of one queue, as the daemon prints them in its `stats:` and `final:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames dropped.
    pub drops: u64,
    /// Open TCP connections.
    pub flows: u64,
    /// Connections in TIME_WAIT.
    pub time_wait: u64,
    /// SYN cookies sent.
    pub cookies_sent: u64,
    /// SYN cookies validated.
    pub cookies_validated: u64,
    /// Challenge ACKs sent.
    pub challenge_acks: u64,
    /// Retransmissions.
    pub retransmits: u64,
}

/// Parses one summary (`q0: rx N tx M drops D flows F time_wait T cookies S/V challenge_acks C
/// retransmits R (reasons); q1: ...`).
pub fn parse_summary(line: &str) -> Result<Vec<QueueStats>> {
    line.split("; ")
        .map(|q| {
            let w: Vec<&str> = q.split_whitespace().collect();
            let num = |key: &str| -> Result<u64> {
                let i = w
                    .iter()
                    .position(|x| *x == key)
                    .with_context(|| format!("no {key} in {q:?}"))?;
                Ok(w.get(i + 1).context("value")?.parse()?)
            };
            let cookies = w
                .iter()
                .position(|x| *x == "cookies")
                .and_then(|i| w.get(i + 1))
                .context("cookies")?;
            let (cs, cv) = cookies.split_once('/').context("cookies S/V")?;
            Ok(QueueStats {
                rx: num("rx")?,
                tx: num("tx")?,
                drops: num("drops")?,
                flows: num("flows")?,
                time_wait: num("time_wait")?,
                cookies_sent: cs.parse()?,
                cookies_validated: cv.parse()?,
                challenge_acks: num("challenge_acks")?,
                retransmits: num("retransmits")?,
            })
        })
        .collect()
}

/// The per-queue counters of the `final:` line (printed at a clean shutdown).
pub fn final_stats(lines: &[String]) -> Result<Vec<QueueStats>> {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("final: "))
        .context("no `final:` line in the daemon's output")?;
    parse_summary(line)
}

/// The per-queue counters of the latest periodic `stats:` log line (`--stats-interval`).
pub fn latest_stats(lines: &[String]) -> Result<Vec<QueueStats>> {
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.split_once("stats: ").map(|(_, r)| r))
        .context("no `stats:` line yet")?;
    let line = line.split("; xdp:").next().unwrap_or(line);
    parse_summary(line)
}

/// Parses `final: ...` into per-queue (rx, tx).
pub fn final_per_queue(lines: &[String]) -> Result<Vec<(u64, u64)>> {
    Ok(final_stats(lines)?
        .into_iter()
        .map(|q| (q.rx, q.tx))
        .collect())
}

/// TLS and HTTPS counters of a daemon run, from its `final:` line (inline TLS, summed over the
/// queues) or its `final tls pool:` line (`--tls-threads N > 0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// TLS sessions started.
    pub sessions: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of which resumed (ticket or session cache).
    pub resumed: u64,
    /// Of which TLS 1.2 (only the pool line reports it).
    pub tls12: Option<u64>,
    /// Sessions ended by bad input (an alert was sent).
    pub errors: u64,
    /// Handshakes that timed out.
    pub timeouts: u64,
    /// Connections refused (session limit, or reset by the pool).
    pub refused: u64,
    /// HTTP responses sent (inline: all statuses, plain HTTP included; pool: 200 plus 4xx).
    pub http: u64,
}

/// The value after the word `key` in `words`.
fn word_after(words: &[&str], key: &str) -> Option<u64> {
    let i = words.iter().position(|w| *w == key)?;
    words.get(i + 1)?.parse().ok()
}

/// The inline TLS counters of the `final:` line, summed over the queues (all zero on a queue
/// that printed no `tls` fields: it saw no TLS and no HTTP).
pub fn final_tls_inline(lines: &[String]) -> Result<TlsStats> {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("final: "))
        .context("no `final:` line in the daemon's output")?;
    let mut sum = TlsStats::default();
    for q in line.split("; ") {
        let w: Vec<&str> = q.split_whitespace().collect();
        let Some(i) = w.iter().position(|x| *x == "tls") else {
            continue;
        };
        let shr: Vec<u64> = w
            .get(i + 1)
            .context("tls S/H/R")?
            .split('/')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("tls S/H/R in {q:?}"))?;
        let [s, h, r] = shr[..] else {
            bail!("tls S/H/R in {q:?}");
        };
        let num = |key: &str| word_after(&w, key).with_context(|| format!("no {key} in {q:?}"));
        sum.sessions += s;
        sum.handshakes += h;
        sum.resumed += r;
        sum.errors += num("tls_errors")?;
        sum.timeouts += num("tls_timeouts")?;
        sum.refused += num("tls_refused")?;
        sum.http += num("http")?;
    }
    Ok(sum)
}

/// The counters of the `final tls pool:` line (printed in pool mode only).
pub fn final_tls_pool(lines: &[String]) -> Result<TlsStats> {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("final tls pool: "))
        .context("no `final tls pool:` line in the daemon's output (pool mode only)")?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |key: &str| word_after(&w, key).with_context(|| format!("no {key} in {line:?}"));
    Ok(TlsStats {
        sessions: num("sessions")?,
        handshakes: num("handshakes")?,
        resumed: num("resumed")?,
        tls12: Some(num("tls12")?),
        errors: num("tls_errors")?,
        timeouts: num("tls_timeouts")?,
        refused: num("refused")?,
        http: num("http_200")? + num("http_4xx")?,
    })
}

#[cfg(test)]
mod tls_stats_tests {
    use super::*;

    #[test]
    fn inline_counters_are_summed_over_queues() {
        let lines = vec![
            "ready".to_owned(),
            "final: q0: rx 10 tx 9 drops 0 flows 0 time_wait 1 cookies 0/0 challenge_acks 0 \
             retransmits 0 tls 3/2/1 tls_errors 1 tls_timeouts 0 tls_refused 2 http 5 (bad=1); \
             q1: rx 1 tx 1 drops 0 flows 0 time_wait 0 cookies 0/0 challenge_acks 0 retransmits 0; \
             q2: rx 4 tx 4 drops 0 flows 0 time_wait 0 cookies 0/0 challenge_acks 0 retransmits 0 \
             tls 1/1/0 tls_errors 0 tls_timeouts 1 tls_refused 0 http 2"
                .to_owned(),
        ];
        let t = final_tls_inline(&lines).unwrap();
        assert_eq!(
            t,
            TlsStats {
                sessions: 4,
                handshakes: 3,
                resumed: 1,
                tls12: None,
                errors: 1,
                timeouts: 1,
                refused: 2,
                http: 7,
            }
        );
        assert!(final_tls_pool(&lines).is_err());
    }

    #[test]
    fn pool_counters_are_parsed() {
        let lines = vec![
            "final tls pool: sessions 7 handshakes 6 resumed 2 tls12 1 tls_errors 1 \
             tls_timeouts 3 refused 4 http_200 10 http_4xx 2"
                .to_owned(),
        ];
        let t = final_tls_pool(&lines).unwrap();
        assert_eq!(
            t,
            TlsStats {
                sessions: 7,
                handshakes: 6,
                resumed: 2,
                tls12: Some(1),
                errors: 1,
                timeouts: 3,
                refused: 4,
                http: 12,
            }
        );
    }
}
