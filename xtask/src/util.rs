//! Paths and command helpers shared by the subcommands.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The repository root (the workspace containing `xtask/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// The main workspace's target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// Whether we run as root.
pub fn is_root() -> bool {
    handshake_tests::netns::is_root()
}

/// A `cargo` command from PATH (the rustup proxy, so `+nightly` works), without the variables
/// the outer `cargo run` set that would leak into a different build.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(root());
    cmd
}

/// Prints the command, runs it with inherited stdio, fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Prints the command, runs it with inherited stdio, returns its status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", show(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))
}

/// The command as a shell line (for logs).
pub fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// A heading for readable output.
pub fn heading(text: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m== {text}\x1b[0m");
    } else {
        println!("\n== {text}");
    }
}

/// Runs a `cargo test` command like [`run`], echoing its output as it comes, and on failure
/// names the failing tests with the first line of each one's panic message, so the summary at
/// the end of a long log says what broke without scrolling back.
pub fn run_tests(cmd: &mut Command) -> Result<()> {
    println!("$ {}", show(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    let mut failures = TestFailures::default();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).lines() {
            let line = line.context("reading the test output")?;
            // Best effort: a closed stdout must not stop the tests.
            let _ = writeln!(stdout, "{line}");
            failures.line(&line);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status}){}", show(cmd), failures.describe());
    }
    Ok(())
}

/// What libtest's output says failed: `test NAME ... FAILED` lines, and in each
/// `---- NAME stdout ----` section the message after `panicked at`, or the `Error: …` line a
/// test returning `Err` prints.
#[derive(Default)]
struct TestFailures {
    failed: Vec<String>,
    messages: Vec<(String, String)>,
    section: Option<String>,
    want_message: bool,
}

impl TestFailures {
    fn line(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            self.failed.push(name.to_owned());
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.section = Some(name.to_owned());
            self.want_message = false;
        } else if line.contains("panicked at") {
            self.want_message = self.section.is_some();
        } else if let Some(msg) = line.strip_prefix("Error: ") {
            if let Some(name) = self.section.take() {
                self.messages.push((name, msg.trim().to_owned()));
            }
        } else if self.want_message {
            self.want_message = false;
            if let Some(name) = self.section.take() {
                self.messages.push((name, line.trim().to_owned()));
            }
        }
    }

    fn describe(&self) -> String {
        if self.failed.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self
            .failed
            .iter()
            .map(|name| match self.messages.iter().find(|(n, _)| n == name) {
                Some((_, msg)) => format!("{name} ({})", clip(msg, 160)),
                None => name.clone(),
            })
            .collect();
        format!("; failed: {}", names.join("; "))
    }
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::TestFailures;

    #[test]
    fn failing_tests_are_named_with_their_panic_message() {
        let log = "\
running 5 tests
test a::passes ... ok
test b::breaks ... FAILED
test c::also ... FAILED
test d::returns_err ... FAILED
test e::silent ... FAILED

failures:

---- b::breaks stdout ----
some output

thread 'b::breaks' panicked at tests/x.rs:10:5:
assertion `left == right` failed: wrong count
  left: 1
---- c::also stdout ----
no panic line here
---- d::returns_err stdout ----
flood round 1: ...
Error: RSS still grew in flood round 3: [1, 2, 3, 4] kB
---- e::silent stdout ----
";
        let mut f = TestFailures::default();
        for line in log.lines() {
            f.line(line);
        }
        assert_eq!(
            f.describe(),
            "; failed: b::breaks (assertion `left == right` failed: wrong count); c::also; \
             d::returns_err (RSS still grew in flood round 3: [1, 2, 3, 4] kB); e::silent"
        );
        assert_eq!(TestFailures::default().describe(), "");
    }
}
