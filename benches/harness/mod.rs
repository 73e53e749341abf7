//! Shared pieces of the benchmarks: client frames, the in-memory device both stacks run on, the
//! two servers, and the scripted clients.

pub mod client;
pub mod dev;
pub mod floor;
pub mod frames;
pub mod servers;
pub mod tls;
