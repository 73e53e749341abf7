//! Differential probes: the engine against the Linux kernel, segment by segment.
//!
//! One topology, two echo servers on port 7: the engine (`--echo 7` on 198.18.0.1, AF_XDP) and
//! a kernel echo server (`tests/probes/kernel_echo.py`) on 198.18.0.3, the kernel's own address
//! on the engine's interface (the XDP program passes it to the kernel). From the peer namespace
//! `tests/probes/diff_probes.py` (scapy) sends the same crafted segments to both — unknown and
//! broken TCP options, window scale > 14, MSS 0 and tiny MSS, bad data offsets, reserved bits,
//! SYN with data, odd flag combinations, urgent data, bad checksums, RST/SYN/ACK inside and
//! outside the window (RFC 5961), FIN in several states, closed ports, IPv4 options, IHL and
//! total-length lies — and compares the normalised replies (flags, relative seq/ack, data, FIN,
//! SYN options, ICMP, or silence). The peer kernel's own RSTs for the probe ports are dropped by
//! nftables in the peer namespace.
//!
//! The test fails if a probe differs from Linux unless the difference is in [`ALLOWED`] with
//! the engine's exact answer and the RFC text that justifies it (and an allowed entry that no
//! longer differs fails too: the list must stay true), if the engine sent anything absurd
//! (tiny segments for a tiny MSS, a reply storm), or if the daemon stopped answering.
//! The table is also written as Markdown to `target/probes.md` (a copy from a real run is
//! `docs/probes.md`). Run with `cargo xtask test` (root), or alone:
//! `cargo test -p handshake-tests --features netns --test netns_probes -- --nocapture`.

use anyhow::{bail, ensure, Context, Result};
use handshake_tests::daemon::Daemon;
use handshake_tests::netns::{mac_string, output_text as text, Topology, KERNEL_ADDR, PYTHON};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// A documented difference: probe name, the engine's normalised answer, the justification.
struct Allowed {
    probe: &'static str,
    engine: &'static str,
    why: &'static str,
}

/// Every probe where the engine answers differently from Linux on purpose.
const ALLOWED: &[Allowed] = &[
    Allowed {
        probe: "syn_option_len0",
        engine: "-",
        why: "RFC 9293 §3.1 (MUST-7): \"TCP implementations MUST be prepared to handle an \
              illegal option length (e.g., zero); a suggested procedure is to reset the \
              connection and log the error cause.\" The engine drops (and counts) the segment; \
              Linux stops parsing options and accepts it.",
    },
    Allowed {
        probe: "syn_option_len1",
        engine: "-",
        why: "RFC 9293 §3.1 (MUST-7), as for length 0: an option length below 2 is illegal.",
    },
    Allowed {
        probe: "syn_option_overrun",
        engine: "-",
        why: "RFC 9293 §3.1 (MUST-7), as for length 0: an option running past the data \
              offset has an illegal length.",
    },
    Allowed {
        probe: "est_option_len0",
        engine: "-",
        why: "RFC 9293 §3.1 (MUST-7), as for the SYN: the segment is dropped whole (and the \
              peer retransmits it), where Linux takes its data.",
    },
    Allowed {
        probe: "est_option_overrun",
        engine: "-",
        why: "RFC 9293 §3.1 (MUST-7), as for the SYN.",
    },
    Allowed {
        probe: "syn_fin",
        engine: "SA [MSS=1460] a=1",
        why: "RFC 9293 §3.10.7.2 (LISTEN, SYN bit): \"Set RCV.NXT to SEG.SEQ+1, IRS is set to \
              SEG.SEQ, and any other control or text should be queued for processing later.\" \
              The engine answers the SYN and leaves the FIN to the peer's retransmission (as \
              for data on a SYN: SHOULD, not MUST); Linux discards SYN+FIN outright.",
    },
    Allowed {
        probe: "syn_ecn",
        engine: "SA [MSS=1460] a=1",
        why: "RFC 3168 §6.1.1: \"If a host has received an ECN-setup SYN packet, then it MAY \
              send an ECN-setup SYN-ACK packet\". The engine does not implement ECN; Linux \
              (tcp_ecn=2) accepts it.",
    },
    Allowed {
        probe: "ip_option_record_route",
        engine: "SA [MSS=1460] a=1",
        why: "RFC 1122 §3.2.1.8: \"Implementation of originating and processing the Record \
              Route option is OPTIONAL.\" The engine accepts the datagram and does not echo \
              the option; Linux echoes it in its SYN-ACK.",
    },
    Allowed {
        probe: "synrcvd_syn_other_seq",
        engine: "A a=1",
        why: "RFC 5961 §4.2: \"If the SYN bit is set, irrespective of the sequence number, TCP \
              MUST send an ACK (also referred to as challenge ACK) to the remote peer\". The \
              engine sends the challenge ACK in SYN-RECEIVED too, so a blind SYN cannot kill \
              a connection being opened; Linux resets it (the RFC 793 rule).",
    },
    Allowed {
        probe: "mss_48_sack_holes",
        engine: "SA [MSS=1460 SAckOK] a=1 | A d=1..481 a=481 | A d=1..49 a=481",
        why: "RFC 6675 §4, IsLost: \"The routine returns true when either DupThresh \
              discontiguous SACKed sequences have arrived above 'SeqNum' or more than \
              (DupThresh - 1) * SMSS bytes with sequence numbers greater than 'SeqNum' have \
              been SACKed.\" Only the first hole has three SACKed blocks above it, so the \
              engine retransmits it alone; Linux's RACK (RFC 8985) marks the other holes lost \
              by time as well.",
    },
    Allowed {
        probe: "last_ack_fin_again_acking",
        engine: "FA fin@5 a=6 | A a=6 | -",
        why: "RFC 9293 §3.10.7.4, first check: a retransmitted FIN lies wholly below RCV.NXT, \
              so \"If an incoming segment is not acceptable, an acknowledgment should be sent \
              in reply ... After sending the acknowledgment, drop the unacceptable segment and \
              return\": its ACK of our FIN is not processed (Linux accepts a segment ending at \
              RCV.NXT and closes). The next segment acknowledges our FIN: \"LAST-ACK STATE: \
              ... If our FIN is now acknowledged, delete the TCB, enter the CLOSED state, and \
              return\" — silence, where Linux, already closed, resets.",
    },
];

/// Probes with a tiny peer MSS: the engine's data segments there are checked for size.
const TINY_MSS: &[&str] = &[
    "syn_mss_0",
    "syn_mss_1",
    "syn_mss_8_sack",
    "mss_48_sack_holes",
];

/// Most segments one stimulus may draw from the engine (the script captures at most 200).
const STORM: usize = 40;

/// Kills (and reaps) a helper process on drop, before the topology goes.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("probes")
}

struct Row {
    same: bool,
    engine: String,
    linux: String,
    desc: String,
}

/// A table cell: `|` escaped, as GitHub's tables want it (inside code spans too).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The probe table as a Markdown document (`target/probes.md`; a copy from a real run is
/// committed as `docs/probes.md`).
fn markdown(rows: &BTreeMap<String, Row>, seconds: f64) -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let same = rows.values().filter(|r| r.same).count();
    let mut md = format!(
        "# Differential probes: the engine against the Linux kernel\n\n\
         Written by `tests/netns_probes.rs` from a real run ({}, Linux {}, {seconds:.0} s):\n\
         `cargo test -p handshake-tests --features netns --test netns_probes -- --test-threads=1 --nocapture`\n\
         (root, the release daemon built by `cargo xtask build`); each run writes `target/probes.md`.\n\n\
         The same crafted segments (scapy, `tests/probes/diff_probes.py`) go from the peer namespace \
         to the engine (198.18.0.1, AF_XDP) and to a Linux listener on 198.18.0.3 in the same \
         topology; the replies are normalised (flags, relative seq/ack, data, FIN, SYN options, \
         ICMP, or `-` for silence; steps separated by `|`) and compared. **{} probes: {same} \
         answered exactly as Linux, {} documented differences** (each with the RFC text that \
         justifies it; the test fails on any other difference).\n\n\
         | Probe | What it sends | Engine | Linux | Verdict |\n|---|---|---|---|---|\n",
        sh("date -u +%Y-%m-%d"),
        sh("uname -r"),
        rows.len(),
        rows.len() - same,
    );
    for (name, r) in rows {
        let verdict = if r.same {
            "same".to_owned()
        } else if let Some(a) = ALLOWED.iter().find(|a| a.probe == name) {
            format!(
                "documented: {}",
                a.why.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        } else {
            "**undocumented difference**".to_owned()
        };
        md.push_str(&format!(
            "| `{name}` | {} | `{}` | `{}` | {} |\n",
            cell(&r.desc),
            cell(&r.engine),
            cell(&r.linux),
            cell(&verdict)
        ));
    }
    md
}

#[test]
fn engine_answers_like_linux_or_as_documented() -> Result<()> {
    let started = Instant::now();
    let topo = Topology::up()?;
    let d = Daemon::start(&topo, &["--addr", "198.18.0.1/24", "--echo", "7"])?;
    // The Linux listener, on the kernel's address in the engine's namespace.
    let mut kernel = Reaped(
        topo.spawn_eng([
            PYTHON,
            probes_dir()
                .join("kernel_echo.py")
                .to_str()
                .context("path")?,
            KERNEL_ADDR,
            "7",
        ])?,
    );
    let mut line = String::new();
    BufReader::new(kernel.0.stdout.take().context("listener stdout")?).read_line(&mut line)?;
    ensure!(
        line.starts_with("listening"),
        "kernel echo server did not start: {line:?}"
    );
    // The peer kernel would reset every connection scapy opens: drop its RSTs for the probe
    // ports (the script's own RSTs leave through a packet socket, below nftables).
    let nft = "table inet probes {\n chain out {\n  type filter hook output priority 0; policy accept;\n  tcp sport 40000-59999 tcp flags rst drop\n }\n}\n";
    let o = topo.run_peer_args(["sh", "-c", "printf '%s' \"$0\" | nft -f -", nft])?;
    ensure!(o.status.success(), "nft: {}", text(&o));
    // Neighbour caches warm on both sides (the first probe must not wait for ARP).
    for addr in ["198.18.0.1", KERNEL_ADDR] {
        let o = topo.run_peer(&format!("ping -c 1 -W 2 {addr}"))?;
        ensure!(o.status.success(), "ping {addr}: {}", text(&o));
    }

    let json = std::env::temp_dir().join(format!("hs-probes-{}.json", std::process::id()));
    let script = probes_dir().join("diff_probes.py");
    let o = topo.run_peer_args([
        "timeout",
        "240",
        PYTHON,
        script.to_str().context("path")?,
        topo.peer_if(),
        &mac_string(topo.eng_mac()),
        "--json",
        json.to_str().context("path")?,
    ])?;
    let out = text(&o);
    ensure!(o.status.success(), "probe script failed:\n{out}");
    let table: Vec<&str> = out.lines().filter(|l| !l.starts_with('@')).collect();
    eprintln!("{}\n(JSON: {})", table.join("\n"), json.display());

    let mut rows = BTreeMap::new();
    let mut segs: Vec<(String, String, usize, Vec<usize>)> = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        match f.as_slice() {
            ["@probe", name, same, engine, linux, desc] => {
                rows.insert(
                    name.to_string(),
                    Row {
                        same: *same == "same",
                        engine: engine.to_string(),
                        linux: linux.to_string(),
                        desc: desc.to_string(),
                    },
                );
            }
            ["@segs", name, target, step, lens] => {
                let lens = lens
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<i64>().map(|n| n.max(0) as usize))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("bad @segs line {l:?}"))?;
                let step = step
                    .parse()
                    .with_context(|| format!("bad @segs line {l:?}"))?;
                segs.push((name.to_string(), target.to_string(), step, lens));
            }
            [tag, ..] if tag.starts_with('@') => bail!("unparsed script line {l:?}"),
            _ => {}
        }
    }

    // The table as a document, whatever the verdict below.
    let md_path = handshake_tests::daemon::target_dir().join("probes.md");
    std::fs::write(&md_path, markdown(&rows, started.elapsed().as_secs_f64()))
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("(Markdown: {})", md_path.display());

    // Enough probes, and every one ran on both sides.
    ensure!(rows.len() >= 40, "only {} probes ran", rows.len());
    for (name, r) in &rows {
        ensure!(
            !r.engine.starts_with("ERROR") && !r.linux.starts_with("ERROR"),
            "probe {name} could not run: engine {} / linux {}",
            r.engine,
            r.linux
        );
    }

    // Every difference is documented, with the engine's exact answer; nothing documented is
    // stale.
    let mut problems = Vec::new();
    for a in ALLOWED {
        match rows.get(a.probe) {
            None => problems.push(format!("allowed probe {} did not run", a.probe)),
            Some(r) if r.same => problems.push(format!(
                "{} now matches Linux ({}): remove it from ALLOWED",
                a.probe, r.engine
            )),
            Some(r) if r.engine != a.engine => problems.push(format!(
                "{}: engine answered {:?}, documented {:?} (Linux: {:?}; {})",
                a.probe, r.engine, a.engine, r.linux, a.why
            )),
            Some(_) => {}
        }
    }
    for (name, r) in &rows {
        if !r.same && !ALLOWED.iter().any(|a| a.probe == name) {
            problems.push(format!(
                "{name}: engine {:?} but Linux {:?} (fix the engine or document it in ALLOWED)",
                r.engine, r.linux
            ));
        }
    }

    // Nothing absurd: no reply storm anywhere, no tiny segments for a tiny MSS.
    for (name, target, _, lens) in &segs {
        if target != "engine" {
            continue;
        }
        if lens.len() > STORM {
            problems.push(format!(
                "{name}: {} segments for one stimulus: {lens:?}",
                lens.len()
            ));
        }
        if TINY_MSS.contains(&name.as_str()) {
            let data: Vec<usize> = lens.iter().copied().filter(|&n| n > 0).collect();
            let (last, full) = data
                .split_last()
                .map_or((None, &[][..]), |(l, f)| (Some(*l), f));
            if full.iter().any(|&n| n < 48) || last.is_some_and(|n| n < 8) {
                problems.push(format!("{name}: tiny segments sent: {data:?}"));
            }
        }
    }
    for name in TINY_MSS {
        ensure!(
            segs.iter()
                .any(|(n, t, _, l)| n == name && t == "engine" && l.iter().any(|&x| x > 0)),
            "{name}: the engine sent no data to check"
        );
    }

    // Window scale 15 is used as 14 (RFC 7323 §2.3): with a window field of 1, the unacked
    // second flight stops at 1 << 14 bytes (whole segments), though the congestion window
    // would allow twice that.
    let flight: usize = segs
        .iter()
        .filter(|(n, t, step, _)| n == "wscale_15_window_limit" && t == "engine" && *step == 2)
        .flat_map(|(_, _, _, l)| l.iter())
        .sum();
    ensure!(
        (14_600..=16_384).contains(&flight),
        "window scale 15 with window 1: the engine sent {flight} unacked bytes (16384 allowed)"
    );

    // The daemon survived and still serves.
    let echo = topo.py(
        "import socket\ns = socket.create_connection(('198.18.0.1', 7), timeout=5)\n\
         s.sendall(b'still here')\nprint(s.recv(100))\n",
        &[],
    )?;
    ensure!(
        echo.contains("still here"),
        "the daemon no longer echoes after the probes: {echo}"
    );
    let log = d.lines();
    ensure!(
        !log.iter().any(|l| l.contains("panicked")),
        "the daemon panicked:\n{}",
        log.join("\n")
    );
    drop(kernel);
    drop(d);
    let _ = std::fs::remove_file(&json);
    let same = rows.values().filter(|r| r.same).count();
    eprintln!(
        "{} probes: {same} same as Linux, {} documented differences; {:.0} s in all",
        rows.len(),
        rows.len() - same,
        started.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        bail!("{} problem(s):\n{}", problems.len(), problems.join("\n"));
    }
    ensure!(
        started.elapsed() < Duration::from_secs(150),
        "the probe suite took {:.0} s (budget 150 s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
