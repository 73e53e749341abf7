//! `cargo xtask fuzz TARGET [--time S]`: runs one cargo-fuzz target of `fuzz/` for S seconds
//! (libFuzzer `-max_total_time`), starting from the committed seed corpus `fuzz/corpus/TARGET`
//! (read only: new inputs go to `fuzz/target/corpus/TARGET`). A crash fails the command and
//! names the reproducer (`fuzz/artifacts/TARGET/crash-…`); replay it with
//! `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
//!
//! Toolchain: cargo-fuzz needs nightly flags (`-Zsanitizer`, sancov); the nightly toolchain the
//! eBPF build uses is reused (`cargo +nightly fuzz`). Targets are built optimised with debug
//! assertions and overflow checks (`-O -a`) and, by default, without a sanitizer (`-s none`):
//! the engine without `xdp` is `#![forbid(unsafe_code)]`, so AddressSanitizer has nothing of its
//! own to check, and one uninstrumented build serves every target (aws-lc-rs's C code is slow to
//! build twice). `--sanitizer address` is there for longer runs.
//!
//! `cargo xtask fuzz all --time S` is the CI stage: every target for S seconds.

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

/// cargo-fuzz, installed with `cargo install` when missing (idempotent).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly {
        println!("deps: installing the nightly toolchain (cargo-fuzz needs it)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
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
pub fn build(targets: &[&str], sanitizer: &str) -> Result<()> {
    if targets.len() == TARGETS.len() {
        return util::run(cargo_fuzz().args(["build", "-O", "-a", "-s", sanitizer]));
    }
    for t in targets {
        util::run(cargo_fuzz().args(["build", "-O", "-a", "-s", sanitizer, t]))?;
    }
    Ok(())
}

/// Runs `target` for `secs` seconds; fails on a crash (naming the reproducer).
pub fn run(target: &str, secs: u64, sanitizer: &str) -> Result<()> {
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
            .args(["run", "-O", "-a", "-s", sanitizer, target])
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
            sanitizer,
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

/// `cargo xtask fuzz TARGET`: cargo-fuzz present, then the target (or `all`) for `secs`.
pub fn main(target: &str, secs: u64, sanitizer: &str) -> Result<()> {
    if !["none", "address"].contains(&sanitizer) {
        bail!("unknown sanitizer `{sanitizer}`: use none or address");
    }
    if target == "all" {
        return all(secs, sanitizer);
    }
    if !TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target `{target}`: choose one of {} or all",
            TARGETS.join(", ")
        );
    }
    ensure_cargo_fuzz()?;
    build(&[target], sanitizer)?;
    run(target, secs, sanitizer)
}

/// The CI stage: every target for `secs` each (the million-packet replay, `tests/fuzz_replay.rs`,
/// runs with the rootless tests).
pub fn ci(secs: u64) -> Result<()> {
    all(secs, "none")
}

fn all(secs: u64, sanitizer: &str) -> Result<()> {
    ensure_cargo_fuzz()?;
    let start = Instant::now();
    build(TARGETS, sanitizer)?;
    println!(
        "fuzz: targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for t in TARGETS {
        if let Err(e) = run(t, secs, sanitizer) {
            eprintln!("{e:#}");
            failed.push(*t);
        }
    }
    println!(
        "fuzz: build and runs took {:.0} s",
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {}", failed.join(", "));
    }
    Ok(())
}
