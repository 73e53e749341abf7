//! `cargo xtask fuzz TARGET [--time S]`: runs one cargo-fuzz target of `fuzz/` for S seconds
//! (libFuzzer `-max_total_time`), starting from the committed seed corpus `fuzz/corpus/TARGET`
//! (read only: new inputs go to `fuzz/target/corpus/TARGET`). A crash fails the command and
//! names the reproducer (`fuzz/artifacts/TARGET/crash-…`); replay it with
//! `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
//!
//! Toolchain: cargo-fuzz needs nightly for `-Zsanitizer=address`; the nightly toolchain the eBPF
//! build uses is reused (`cargo +nightly fuzz`). `tls_records` is built without ASan
//! (`-s none`): aws-lc-rs is C and gains nothing from instrumenting the Rust side alone, and
//! the handshake per input is slow enough already.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{deps, util};

/// Every target, in the order CI runs them.
pub const TARGETS: &[&str] = &["frame", "stack", "tcp_established", "tls_records"];

/// cargo-fuzz release we install.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn dir() -> PathBuf {
    util::root().join("fuzz")
}

fn sanitizer(target: &str) -> &'static str {
    if target == "tls_records" {
        "none"
    } else {
        "address"
    }
}

/// cargo-fuzz, installed with `cargo install` when missing (idempotent).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let works = Command::new(deps::cargo_bin().join("cargo-fuzz"))
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    println!("deps: installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute or two)");
    util::run(util::cargo().args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("installing cargo-fuzz failed: check that crates.io is reachable")
}

fn cargo_fuzz() -> Command {
    let mut cmd = util::cargo();
    cmd.current_dir(dir()).arg("+nightly").arg("fuzz");
    cmd
}

/// Builds the targets: optimised, with debug assertions and overflow checks (`-a`).
pub fn build(targets: &[&str]) -> Result<()> {
    for t in targets {
        util::run(cargo_fuzz().args(["build", "-O", "-a", "-s", sanitizer(t), t]))?;
    }
    Ok(())
}

/// Runs `target` for `secs` seconds; fails on a crash (naming the reproducer).
pub fn run(target: &str, secs: u64) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target `{target}`: choose one of {}",
            TARGETS.join(", ")
        );
    }
    let seeds = dir().join("corpus").join(target);
    let work = dir().join("target").join("corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let artifacts = dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let before = crashes(&artifacts);
    let start = Instant::now();
    let status = util::status(
        cargo_fuzz()
            .args(["run", "-O", "-a", "-s", sanitizer(target), target])
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1")
            .arg("-rss_limit_mb=4096")
            .arg("-max_len=8192")
            .arg(format!("-artifact_prefix={}/", artifacts.display())),
    )?;
    println!(
        "fuzz {target}: {:.0} s, {}",
        start.elapsed().as_secs_f64(),
        if status.success() {
            "no crash"
        } else {
            "FAILED"
        }
    );
    if !status.success() {
        let new: Vec<_> = crashes(&artifacts)
            .into_iter()
            .filter(|c| !before.contains(c))
            .collect();
        if new.is_empty() {
            bail!("fuzz target {target} failed ({status}) without writing a reproducer: see its output above");
        }
        bail!(
            "fuzz target {target} crashed; reproducer: {} (replay: cd fuzz && cargo +nightly fuzz run -O -a -s {} {target} {})",
            new[0].display(),
            sanitizer(target),
            new[0].display()
        );
    }
    Ok(())
}

fn crashes(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// `cargo xtask fuzz`: cargo-fuzz present, then the target for `secs`.
pub fn main(target: &str, secs: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    build(&[target])?;
    run(target, secs)
}

/// The CI stage: every target for `secs` each (the million-packet replay, `tests/fuzz_replay.rs`,
/// runs with the rootless tests).
pub fn ci(secs: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    build(TARGETS)?;
    let mut failed = Vec::new();
    for t in TARGETS {
        if let Err(e) = run(t, secs) {
            eprintln!("{e:#}");
            failed.push(*t);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {}", failed.join(", "));
    }
    Ok(())
}
