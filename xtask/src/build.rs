//! `build-ebpf`, `build`, `run`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{deps, util};

/// Debug or release.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_debug(debug: bool) -> Self {
        if debug {
            Self::Debug
        } else {
            Self::Release
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Where the daemon finds the object: `<exe dir>/../bpf/handshake-xdp.o`.
pub fn object_path() -> PathBuf {
    util::target_dir().join("bpf").join("handshake-xdp.o")
}

/// Builds `ebpf/` for bpfel-unknown-none and copies the object to `target/bpf/handshake-xdp.o`.
pub fn ebpf(profile: Profile) -> Result<PathBuf> {
    util::heading("building the XDP program (ebpf/, nightly, bpf-linker)");
    let ebpf_dir = util::root().join("ebpf");
    let mut cmd = util::cargo();
    cmd.current_dir(&ebpf_dir)
        // bpf-linker is found on PATH; make sure cargo's bin directory is on it.
        .env("PATH", path_with_cargo_bin())
        // ebpf/ is a workspace of its own (nightly, bpfel): its own target directory, where
        // the copy below looks, even when CARGO_TARGET_DIR points the main workspace elsewhere.
        .env("CARGO_TARGET_DIR", ebpf_dir.join("target"))
        .args([
            "+nightly",
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context(
        "building the XDP program failed: `cargo xtask deps` installs nightly rust-src and bpf-linker",
    )?;
    let built = ebpf_dir
        .join("target/bpfel-unknown-none")
        .join(profile.dir())
        .join("handshake-xdp");
    let object = object_path();
    fs::create_dir_all(object.parent().expect("has a parent"))?;
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    println!("eBPF object: {}", object.display());
    Ok(object)
}

/// Builds the eBPF object and the daemon; returns the daemon's path.
pub fn all(profile: Profile) -> Result<PathBuf> {
    ebpf(profile)?;
    util::heading("building the daemon (handshake, feature xdp)");
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "handshake", "--features", "xdp"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let daemon = util::target_dir().join(profile.dir()).join("handshake");
    if !daemon.is_file() {
        bail!("the build did not produce {}", daemon.display());
    }
    Ok(daemon)
}

/// Runs the daemon in the foreground; its exit status becomes ours.
pub fn run_daemon(daemon: &PathBuf, args: &[String]) -> Result<()> {
    if !util::is_root() {
        println!("note: the daemon attaches XDP and opens AF_XDP sockets: it needs root (or CAP_NET_ADMIN+CAP_BPF)");
    }
    util::heading("running the daemon");
    let status = util::status(
        Command::new(daemon)
            .args(args)
            .env("HANDSHAKE_BPF_OBJECT", object_path()),
    )?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let bin = deps::cargo_bin();
    format!("{}:{path}", bin.display())
}
