//! Test support: network namespaces and veth topologies.
//!
//! The rootless whole-stack tests live in `tests/` and drive the engine through its in-memory
//! device. The privileged ones (feature `netns`, root) build the test bed of `shared/TESTBED.md`
//! with [`netns::Topology`]; run them with
//! `cargo test -p handshake-tests --features netns -- --test-threads=1` (or `cargo xtask test`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod daemon;
pub mod netns;

/// The story every client-side trace tells up to the server's hello, in order (the test of
/// `handshake get` over veth and the in-memory one check it with
/// `handshake::trace::render::check_order`, then their own endings).
pub const CLIENT_STORY_TO_SERVER_HELLO: &[&str] = &[
    "out DNS query",
    "out ARP who-has",
    "in ARP is-at",
    "in DNS answer",
    "flow active=true",
    "state SYN-SENT",
    "out SYN",
    "in SYN,ACK",
    // The third segment of the handshake carries the ClientHello (the request is ready when
    // the SYN-ACK arrives).
    "state ESTABLISHED",
    "out ClientHello",
    "in ServerHello",
];

/// nginx `http`-block directives that keep its temporary files under `dir/tmp` (created), for
/// the test and benchmark nginx instances that run as root with their own prefix.
pub fn nginx_temp_paths(dir: &std::path::Path) -> std::io::Result<String> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    Ok(["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|k| format!("    {k}_temp_path {d}/tmp/{k};\n"))
        .collect())
}
