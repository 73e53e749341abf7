//! `cargo xtask deps`: installs what is missing, skips what is there (fast when all is present).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// Debian packages the builds and tests use.
const BUILD_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22; xsk-rs builds libxdp/libbpf with clang.
    "llvm-22-dev",
    "clang-22",
    "libelf-dev",
    "m4",
    "zlib1g-dev",
    "pkg-config",
];
const NETNS_PACKAGES: &[&str] = &["iproute2", "ethtool"];
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iputils-ping",
    "arping",
    "ethtool",
    "tcpdump",
    "curl",
    "openssl",
    "python3-scapy",
    "nghttp2-client",
    "wrk",
    "hping3",
    "nginx-light",
    // The DNS server of the client-side test (tests/netns_client.rs): dnsmasq without a service.
    "dnsmasq-base",
    // The HTTPS scan of tests/netns_tls.rs (the command is `testssl`).
    "testssl.sh",
    // nmap's TCP sequence prediction of our ISNs (tests/netns_foundation.rs).
    "nmap",
    // setpriv: the daemon as an unprivileged user with five capabilities (netns_lifecycle.rs).
    "util-linux",
];

/// What `cargo xtask bench` needs besides the test packages: the chart's font (plotters draws
/// text with ab_glyph from this file, no fontconfig). perf is installed on a best-effort basis
/// (its package name differs between distributions; without it the profile is skipped).
const BENCH_PACKAGES: &[&str] = &["fonts-dejavu-core"];
const PERF_PACKAGE: &str = "linux-perf";

/// bpf-linker release we build against LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What a subcommand needs.
#[derive(Clone, Copy)]
pub struct Need {
    build: bool,
    ebpf: bool,
    netns: bool,
    tests: bool,
    bench: bool,
}

impl Need {
    /// Everything (`deps`, `test`, `demo`, `bench`).
    pub const ALL: Self = Self {
        build: true,
        ebpf: true,
        netns: true,
        tests: true,
        bench: true,
    };
    /// The eBPF object: nightly rust-src and bpf-linker.
    pub const EBPF: Self = Self {
        build: false,
        ebpf: true,
        netns: false,
        tests: false,
        bench: false,
    };
    /// The eBPF object and the daemon (libxdp is built with clang).
    pub const BUILD: Self = Self {
        build: true,
        ebpf: true,
        netns: false,
        tests: false,
        bench: false,
    };
    /// The benchmark: everything (the tests' tools, the build, the chart's font, perf).
    pub const BENCH: Self = Self::ALL;
    /// `ip` and `ethtool`.
    pub const NETNS: Self = Self {
        build: false,
        ebpf: false,
        netns: true,
        tests: false,
        bench: false,
    };
}

/// Checks, and installs what is missing.
pub fn ensure(need: Need) -> Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    // llvm-22-dev is only needed to build bpf-linker, but that is part of the eBPF toolchain.
    if need.build || need.ebpf {
        packages.extend(BUILD_PACKAGES);
    }
    if need.netns {
        packages.extend(NETNS_PACKAGES);
    }
    if need.tests {
        packages.extend(TEST_PACKAGES);
    }
    if need.bench {
        packages.extend(BENCH_PACKAGES);
    }
    packages.sort_unstable();
    packages.dedup();
    apt(&packages)?;
    if need.bench && !has_perf() {
        if let Err(e) = apt(&[PERF_PACKAGE]) {
            println!("deps: no perf ({e:#}); the benchmark will skip its profile");
        }
    }
    if need.ebpf {
        rust_src()?;
        bpf_linker()?;
    }
    Ok(())
}

/// Whether `perf` runs.
pub fn has_perf() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Debian packages that `dpkg-query` does not report installed.
fn apt(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output();
    let installed: Vec<String> = match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with(" install ok installed"))
            .filter_map(|l| l.split_whitespace().next())
            // `dpkg-query` may add the architecture (`zlib1g-dev:amd64`).
            .map(|p| p.split(':').next().unwrap_or(p).to_owned())
            .collect(),
        Err(_) => bail!("`dpkg-query` not found: this script installs with apt (Debian/Ubuntu); install {} by hand", packages.join(" ")),
    };
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !installed.iter().any(|i| i == p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "deps: installing missing Debian packages: {}",
        missing.join(" ")
    );
    if !util::is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get update && sudo apt-get install -y {}`, then try again",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .context("apt-get install failed: llvm-22-dev and clang-22 come from apt.llvm.org on Debian 12; add that repository if apt cannot find them")
}

/// `rust-src` for the nightly toolchain (`-Z build-std=core` for the BPF target).
fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup: install it from your distribution or rustup.rs")?;
    if !out.status.success() {
        println!("deps: installing the nightly toolchain (the XDP program needs it)");
        return util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "rust-src")
    {
        return Ok(());
    }
    println!("deps: adding rust-src to nightly (to build core for bpfel-unknown-none)");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// Where `cargo install` puts binaries.
pub fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// bpf-linker, built against LLVM 22.
fn bpf_linker() -> Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    println!(
        "deps: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)"
    );
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    util::run(
        util::cargo()
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
    .context("building bpf-linker failed: it needs llvm-22-dev (see above)")
}
