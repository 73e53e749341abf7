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
