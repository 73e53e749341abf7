//! Two stacks wired together in memory: each on its own [`MemDevice`], frames crossing a
//! [`MemLink`] each way (with its own faults). Whole-stack tests and benchmarks run a client
//! stack against a server stack this way, rootless and deterministic (virtual time).

use super::mem::{Faults, MemDevice, MemLink};
use crate::stack::{run_batch, Stack};
use crate::time::Instant;
use std::time::Duration;

/// A client and a server stack over an in-memory link.
#[allow(missing_debug_implementations)]
pub struct StackPair {
    /// The server side.
    pub server: Stack,
    /// The client side.
    pub client: Stack,
    /// The server's device.
    pub server_dev: MemDevice,
    /// The client's device.
    pub client_dev: MemDevice,
    /// Frames from the client to the server.
    pub to_server: MemLink,
    /// Frames from the server to the client.
    pub to_client: MemLink,
    /// Virtual time.
    pub now: Instant,
}

impl StackPair {
    /// The two stacks on devices of 2 KiB frames, `faults` on both links, time starting at 1 s.
    pub fn new(server: Stack, client: Stack, faults: Faults) -> Self {
        let mut back = faults.clone();
        back.seed = back.seed.wrapping_add(1);
        StackPair {
            server,
            client,
            server_dev: MemDevice::new(2048),
            client_dev: MemDevice::new(2048),
            to_server: MemLink::new(faults),
            to_client: MemLink::new(back),
            now: Instant::from_secs(1),
        }
    }

    /// Advances time by `dt`, then runs one batch on each side (server first) and carries the
    /// frames across. Neighbour events are consumed (each stack is its only worker).
    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        run_batch(&mut self.server, &mut self.server_dev, self.now);
        while self.server.poll_neighbor_event().is_some() {}
        self.to_client
            .carry_at(self.now, &mut self.server_dev, &mut self.client_dev);
        run_batch(&mut self.client, &mut self.client_dev, self.now);
        while self.client.poll_neighbor_event().is_some() {}
        self.to_server
            .carry_at(self.now, &mut self.client_dev, &mut self.server_dev);
    }
}
