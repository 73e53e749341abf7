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
        let bin = daemon_bin();
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo xtask build` first (or set HANDSHAKE_BIN)",
                bin.display()
            );
        }
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "run".into(),
            "--iface".into(),
            topo.eng_if().into(),
        ];
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
        let mut d = Daemon {
            child: Some(child),
            output,
        };
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

    /// Everything the daemon printed so far (stdout and stderr).
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
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
