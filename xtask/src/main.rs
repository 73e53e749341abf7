//! `cargo xtask`: the project's own scripts, in Rust.
//!
//! ```text
//! cargo xtask deps                      install what is missing (apt, rust-src, bpf-linker)
//! cargo xtask build-ebpf [--debug]      build ebpf/ -> target/bpf/handshake-xdp.o
//! cargo xtask build [--debug]           build-ebpf + the daemon with feature xdp
//! cargo xtask run -- <daemon args>      build, then run target/release/handshake <args>
//! cargo xtask netns up [--queues N]     a test network that stays (prints its names)
//! cargo xtask netns down [--all]        remove it (--all: every hs-* namespace)
//! cargo xtask test                      deps, build, all tests, fuzz (30 s a target), clippy, fmt; a summary
//! cargo xtask fuzz TARGET [--time S]    a cargo-fuzz target of fuzz/ (or all) for S seconds (default 60)
//! cargo xtask demo [--cert C --key K]   the seed story live: ARP, ping, TCP, HTTPS, over a veth pair
//! cargo xtask bench [--quick]           the engine side by side with Linux and nginx (root; < 10 min, --quick < 3)
//! ```

mod bench;
mod build;
mod demo;
mod deps;
mod fuzz;
mod netns;
mod soak;
mod test;
mod util;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test handshake",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker (idempotent).
    Deps,
    /// Build the XDP program (nightly, bpf-linker) into target/bpf/handshake-xdp.o.
    BuildEbpf {
        /// Unoptimised profile (the verifier may reject it: for debugging the build only).
        #[arg(long)]
        debug: bool,
    },
    /// Build the eBPF object and the daemon (`handshake`, feature xdp).
    Build {
        /// Debug profile for the daemon (target/debug/handshake).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the daemon with the given arguments (needs root).
    Run {
        /// Debug profile.
        #[arg(long)]
        debug: bool,
        /// Arguments for `handshake`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bring a test network (two namespaces and a veth pair) up or down.
    Netns {
        #[command(subcommand)]
        action: netns::Action,
    },
    /// Everything: deps, build, rootless and privileged tests, clippy, fmt; then a summary.
    Test,
    /// Run one fuzz target of `fuzz/` (cargo-fuzz on nightly, installed if missing) for a
    /// bounded time; fails on a crash and names the reproducer.
    Fuzz {
        /// frame, stack, tcp_established, tls_records, or all (the CI stage).
        target: String,
        /// Seconds to fuzz (libFuzzer -max_total_time).
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// none (default: one build for every target) or address.
        #[arg(long, default_value = "none")]
        sanitizer: String,
    },
    /// A long mixed load (wrk, h2load, fresh connections, pings) against one daemon, sampling
    /// its RSS and metrics; fails on any error, RSS growth or leaked flow/frame (needs root;
    /// not part of `test`).
    Soak {
        /// How long, in minutes (fractions allowed: 0.5 is a 30 s check).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Percent of the peer's TCP segments dropped by nftables (0: none).
        #[arg(long, default_value_t = 0)]
        loss: u32,
    },
    /// Bring a network up, start the daemon, and show ARP, ICMP, TCP and HTTPS being answered.
    Demo {
        /// HTTPS certificate chain (PEM); default: target/demo/cert.pem, generated (self-signed)
        /// when missing.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key of --cert (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// What curl trusts (PEM); default: the certificate itself.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// The engine side by side with the Linux kernel (TCP, HTTP) and nginx (HTTPS) on the same
    /// core of one veth pair, rounds alternating; a table, target/bench/summary.json and .png.
    Bench {
        /// Fewer rounds, shorter measurements (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Rounds per side (default 5; --quick 2).
        #[arg(long)]
        rounds: Option<u32>,
        /// Whole seconds per measurement (default 3; --quick 2).
        #[arg(long)]
        secs: Option<u32>,
        /// Skip the perf profile of the engine worker (taken on full runs when perf exists).
        #[arg(long)]
        no_profile: bool,
        /// Leave the kernel's receive processing on the load generator's core (default: RPS
        /// steers it to the server core, like the engine's worker).
        #[arg(long)]
        no_rps: bool,
        /// Run the engine with --busy-poll (its worker spins on its core instead of sleeping in
        /// poll(2): lower latency, a whole core burnt).
        #[arg(long)]
        busy_poll: bool,
        /// Run the engine with --idle-spin-us N (its worker polls N µs after its last work
        /// before sleeping in poll(2)).
        #[arg(long, value_name = "US")]
        idle_spin_us: Option<u64>,
        /// Threads of the TCP and TLS connection-rate clients (connections in flight).
        #[arg(long, default_value_t = bench::CLIENT_THREADS)]
        clients: u32,
    },
}

/// Prints the error chain on one line and exits 1, without the backtrace `anyhow` would add
/// under `RUST_BACKTRACE`: a CI log keeps only its tail, and the stage summary must be in it.
fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Deps => deps::ensure(deps::Need::ALL),
        Cmd::BuildEbpf { debug } => {
            deps::ensure(deps::Need::EBPF)?;
            build::ebpf(build::Profile::from_debug(debug)).map(|_| ())
        }
        Cmd::Build { debug } => {
            deps::ensure(deps::Need::BUILD)?;
            build::all(build::Profile::from_debug(debug)).map(|_| ())
        }
        Cmd::Run { debug, args } => {
            deps::ensure(deps::Need::BUILD)?;
            let daemon = build::all(build::Profile::from_debug(debug))?;
            build::run_daemon(&daemon, &args)
        }
        Cmd::Netns { action } => {
            deps::ensure(deps::Need::NETNS)?;
            netns::run(action)
        }
        Cmd::Test => test::run(),
        Cmd::Soak { minutes, loss } => soak::run(minutes, loss),
        Cmd::Fuzz {
            target,
            time,
            sanitizer,
        } => fuzz::main(&target, time, &sanitizer),
        Cmd::Demo { cert, key, cacert } => demo::run(demo::Tls { cert, key, cacert }),
        Cmd::Bench {
            quick,
            rounds,
            secs,
            no_profile,
            no_rps,
            busy_poll,
            idle_spin_us,
            clients,
        } => bench::run(bench::Opts {
            quick,
            rounds,
            secs,
            profile: !no_profile,
            rps: !no_rps,
            busy_poll,
            idle_spin_us,
            clients,
        }),
    }
}
