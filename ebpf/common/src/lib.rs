//! Types shared by the handshake XDP program (`ebpf/`) and user space (`engine/src/loader.rs`).
//!
//! Everything here is `#[repr(C)]` and `no_std`: the same bytes are read by the verifier-checked
//! program in the kernel and by the daemon through aya's map API.
#![no_std]
#![forbid(unsafe_code)]

/// Map names, as they appear in the object file. The loader looks them up by these names.
pub mod maps {
    /// `HashMap<u32, u8>`: IPv4 addresses the engine owns, key in network byte order as a `u32`
    /// read from the packet (i.e. `u32::from_ne_bytes(octets)`).
    pub const ADDRS: &str = "HS_ADDRS";
    /// `HashMap<u16, u8>`: TCP ports the engine listens on, key in host byte order.
    pub const PORTS: &str = "HS_PORTS";
    /// `Array<u32>` with [`crate::config::COUNT`] entries, indexed by [`crate::config`].
    pub const CONFIG: &str = "HS_CONFIG";
    /// `XskMap`: AF_XDP socket per RX queue index.
    pub const XSKS: &str = "HS_XSKS";
    /// `PerCpuArray<u64>` indexed by [`crate::counter`].
    pub const COUNTERS: &str = "HS_COUNTERS";
    /// `PerCpuArray<u64>` of frames redirected, indexed by RX queue (up to [`crate::MAX_QUEUES`]).
    pub const QUEUE_RX: &str = "HS_QUEUE_RX";
}

/// Name of the XDP program function in the object file.
pub const PROGRAM: &str = "handshake_xdp";

/// Most queues (and so AF_XDP sockets) one interface can have.
pub const MAX_QUEUES: u32 = 64;
/// Most IPv4 addresses the engine can own on one interface.
pub const MAX_ADDRS: u32 = 16;
/// Most listening TCP ports.
pub const MAX_PORTS: u32 = 1024;

/// Indices of the per-CPU counters in [`maps::COUNTERS`].
pub mod counter {
    /// Frames redirected to an AF_XDP socket.
    pub const REDIRECTED: u32 = 0;
    /// Frames left to the kernel (`XDP_PASS`): not ours.
    pub const PASSED: u32 = 1;
    /// Frames too short or inconsistent to classify; passed to the kernel, which drops them.
    pub const MALFORMED: u32 = 2;
    /// Frames we own but whose queue had no socket in the XskMap (they go to the kernel).
    pub const NO_SOCKET: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
    /// Names, in index order, for logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = ["redirected", "passed", "malformed", "no_socket"];
}

/// Indices of the `u32` settings in [`maps::CONFIG`] (an `Array<u32>`: plain integers keep the
/// shared ABI free of padding and of `unsafe impl Pod`).
pub mod config {
    /// First port of the engine's ephemeral range (host order); TCP to it is ours.
    pub const EPHEMERAL_LO: u32 = 0;
    /// Last port of the ephemeral range, inclusive. `0` disables the range.
    pub const EPHEMERAL_HI: u32 = 1;
    /// Bit flags, see [`crate::flags`].
    pub const FLAGS: u32 = 2;
    /// Number of entries.
    pub const COUNT: u32 = 3;
}

/// Bits of the [`config::FLAGS`] entry.
pub mod flags {
    /// Steer every TCP segment to an owned address (not just listening and ephemeral ports), so the
    /// engine answers closed ports with RST itself instead of the kernel.
    pub const ALL_TCP: u32 = 1;
    /// Steer UDP to owned addresses (the DNS stub of the client side).
    pub const UDP: u32 = 2;
}
