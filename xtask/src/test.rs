//! `cargo xtask test`: every stage, in order, then a summary. A failed stage does not stop the
//! independent ones after it; the exit status is non-zero if any stage failed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::{build, deps, fuzz, util};

/// Seconds each fuzz target runs in CI (4 targets: 2 minutes of fuzzing, plus the build).
const FUZZ_SECS: u64 = 30;

/// The AF_XDP ring-fault simulations at 10^7 packets (`engine/src/xsk/tests.rs`): compiled only
/// without debug assertions, so the (debug) rootless stage never runs them.
const RING_SIMS: &[&str] = &[
    "xsk::tests::sim_fill_starved_10m",
    "xsk::tests::sim_slow_rx_consumer_10m",
    "xsk::tests::sim_tx_full_completion_backlog_10m",
    "xsk::tests::sim_invalid_descriptors_10m",
];

/// Runs exactly [`RING_SIMS`] in release and checks that all of them ran.
///
/// Built in the release profile as it is (fat LTO) with feature `xdp`, which the simulations do
/// not need: that is the build stage's feature set, so every dependency is already built and
/// only the engine's test binary is (82 s measured, 3 s to run the four). A
/// `CARGO_PROFILE_RELEASE_LTO=thin` override would change every dependency's metadata and
/// rebuild them all (so would leaving `xdp` out: 4.3 min cold); without the build stage's
/// artifacts (`xdp_built` false: it failed or was skipped) it builds without `xdp`.
fn ring_sims(xdp_built: bool) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["test", "--release", "-p", "handshake", "--lib"]);
    if xdp_built {
        cmd.args(["--features", "xdp"]);
    }
    cmd.args(["--", "--exact"])
        .args(RING_SIMS)
        .arg("--nocapture");
    println!("$ {}", util::show(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", util::show(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("the ring-fault simulations failed ({})", out.status);
    }
    let want = format!("test result: ok. {} passed", RING_SIMS.len());
    if !stdout.contains(&want) {
        bail!("expected `{want}`: a simulation was renamed or filtered out");
    }
    Ok(())
}

enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

struct Stage {
    name: &'static str,
    outcome: Outcome,
    took: Duration,
}

fn stage(stages: &mut Vec<Stage>, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
    util::heading(name);
    let start = Instant::now();
    let outcome = match f() {
        Ok(()) => Outcome::Passed,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            Outcome::Failed(format!("{e:#}"))
        }
    };
    let passed = matches!(outcome, Outcome::Passed);
    stages.push(Stage {
        name,
        outcome,
        took: start.elapsed(),
    });
    passed
}

fn skip(stages: &mut Vec<Stage>, name: &'static str, why: &'static str) {
    util::heading(name);
    println!("SKIPPED: {why}");
    stages.push(Stage {
        name,
        outcome: Outcome::Skipped(why),
        took: Duration::ZERO,
    });
}

pub fn run() -> Result<()> {
    let mut stages = Vec::new();
    let total = Instant::now();

    let deps_ok = stage(&mut stages, "deps", || deps::ensure(deps::Need::ALL));
    let built = deps_ok
        && stage(&mut stages, "build (eBPF object + daemon)", || {
            build::all(build::Profile::Release).map(|_| ())
        });
    stage(
        &mut stages,
        "rootless tests (cargo test --workspace)",
        || {
            util::run_tests(util::cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
            // The criterion benches must at least compile.
            util::run(util::cargo().args(["test", "--workspace", "--benches", "--no-run"]))
        },
    );
    stage(
        &mut stages,
        "AF_XDP ring faults at 10^7 packets (release)",
        || ring_sims(built),
    );
    if !util::is_root() {
        skip(
            &mut stages,
            "privileged tests (netns, XDP)",
            "they need root: run `sudo -E cargo xtask test`",
        );
    } else if !built {
        skip(
            &mut stages,
            "privileged tests (netns, XDP)",
            "the build failed",
        );
    } else {
        stage(&mut stages, "privileged tests (netns, XDP)", || {
            util::run_tests(
                util::cargo()
                    .env("HANDSHAKE_BPF_OBJECT", build::object_path())
                    .args([
                        "test",
                        "--no-fail-fast",
                        "-p",
                        "handshake-tests",
                        "--features",
                        "netns",
                        "--",
                        "--test-threads=1",
                    ]),
            )
        });
    }
    stage(&mut stages, "fuzz (cargo-fuzz, every target 30 s)", || {
        fuzz::ci(FUZZ_SECS)
    });
    stage(
        &mut stages,
        "clippy (-D warnings; with xdp and netns; the eBPF crate)",
        || {
            util::run(util::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "handshake/xdp,handshake-tests/netns",
                "--",
                "-D",
                "warnings",
            ]))
        },
    );
    stage(
        &mut stages,
        "rustdoc (-D warnings: no broken or private intra-doc links)",
        || {
            util::run(util::cargo().env("RUSTDOCFLAGS", "-D warnings").args([
                "doc",
                "--no-deps",
                "--workspace",
            ]))
        },
    );
    stage(&mut stages, "rustfmt", || {
        util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
        util::run(
            util::cargo()
                .current_dir(util::root().join("ebpf"))
                .args(["fmt", "--check"]),
        )?;
        util::run(
            util::cargo()
                .current_dir(util::root().join("fuzz"))
                .args(["fmt", "--check"]),
        )
    });

    util::heading("summary");
    let mut failed = 0;
    let mut skipped = 0;
    for s in &stages {
        let (word, detail) = match &s.outcome {
            Outcome::Passed => ("passed ", String::new()),
            Outcome::Failed(e) => {
                failed += 1;
                ("FAILED ", first_line(e))
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                ("skipped", (*why).to_owned())
            }
        };
        println!(
            "{word}  {:>6.1}s  {}  {detail}",
            s.took.as_secs_f64(),
            s.name
        );
    }
    println!("total    {:>6.1}s", total.elapsed().as_secs_f64());
    if failed > 0 {
        bail!("{failed} stage(s) failed");
    }
    if skipped > 0 {
        println!("all run stages passed; {skipped} skipped");
    } else {
        println!("all stages passed");
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
