//! # handshake
//!
//! A kernel-bypass TCP/TLS engine on AF_XDP. This crate holds the sans-IO protocol core and the
//! thin shells around it:
//!
//! - [`wire`]: views over received bytes and in-place builders for Ethernet, ARP, IPv4, ICMP, TCP,
//!   UDP; the Internet checksum, full and incremental.
//! - [`app`]: built-in apps (TCP echo, HTTP/1.1, HTTPS) driven by TCP events.
//! - [`http`]: the sans-IO HTTP/1.1 responder and its [`http::Handler`] trait.
//! - [`https`]: a TLS session with the responder over any transport; the session pool.
//! - [`arp`]: the neighbour cache (expiry, refresh, bounded pending queues, retries with backoff).
//! - [`ipv4`]: validation, the routing decision (on-link or gateway), ICMP.
//! - [`tcp`]: the TCP engine (RFC 9293).
//! - [`dns`]: the sans-IO stub resolver (A records over UDP, cache, retries across servers).
//! - [`client`]: the browser's side: an HTTP/1.1 request over TCP, in the clear or through TLS.
//! - [`stack`]: ties the layers together behind `handle_frame` / `poll_transmit` / `poll_timeout`.
//! - [`device`]: the batched frame device interface, an in-memory device with fault injection and a
//!   pcap writer.
//! - [`xsk`]: the AF_XDP port (UMEM, fill/completion/RX/TX rings, frame accounting); its ring
//!   logic runs against in-memory ring doubles without root, the xsk-rs backend needs feature `xdp`.
//! - `loader` (feature `xdp`): loads and attaches the XDP program with aya, fills its maps.
//! - [`tls`]: the TLS boundary (rustls behind one adapter), the session pool.
//! - `trace` (feature `trace`, on by default): the story of chosen connections (ARP, TCP, TLS,
//!   state changes) as Mermaid, a timeline or JSON lines.
//! - [`daemon`]: configuration, per-queue pinned workers, signals, stats.
//! - [`capture`]: `--pcap`: a device tap copying frames into preallocated rings, a pcapng writer thread.
//! - [`metrics`]: per-queue counters published lock-free, the Prometheus endpoint, `handshake stats`.
//!
//! Protocol code never touches sockets, clocks or threads: time is passed in ([`time::Instant`]).
#![cfg_attr(not(feature = "xdp"), forbid(unsafe_code))]
#![cfg_attr(feature = "xdp", deny(unsafe_code))]
#![warn(missing_docs)]

pub mod app;
pub mod arp;
pub mod capture;
pub mod client;
pub mod config;
pub mod daemon;
pub mod device;
pub mod dns;
pub mod http;
pub mod https;
pub mod ipv4;
#[cfg(feature = "xdp")]
pub mod loader;
pub mod metrics;
pub mod reassembly;
pub mod stack;
pub mod stats;
pub mod tcp;
pub mod time;
pub mod tls;
#[cfg(feature = "trace")]
pub mod trace;
pub mod wire;
pub mod xsk;

pub use time::Instant;
