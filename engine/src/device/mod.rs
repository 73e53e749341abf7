//! The driver-agnostic device interface.
//!
//! A device moves Ethernet frames between the wire and the stack in batches. The stack never owns a
//! buffer: a received frame is lent to it (`&mut [u8]` over the whole frame buffer, of which the
//! first `len` bytes are the packet) and the stack answers with a [`Verdict`]: drop the frame (it
//! goes back to the device's free pool) or transmit it in place (the stack rewrote it into a reply,
//! e.g. an ARP reply or an ICMP echo reply, without copying). For packets the stack originates, the
//! device lends free transmit buffers to a closure that fills them.
//!
//! Implementations: [`mem::MemDevice`] (in memory, with a seeded fault injector and a pcap writer,
//! for tests and benchmarks without root) and the AF_XDP port in `crate::xsk` (feature `xdp`).

pub mod mem;
pub mod pair;
pub mod pcap;

/// Most frames handled per batch.
pub const BATCH: usize = 64;

/// What the stack decided about a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The frame is consumed (or dropped); its buffer returns to the device.
    Drop,
    /// The stack rewrote the frame in place; transmit its first `n` bytes.
    Transmit(usize),
}

/// A batched frame device.
pub trait Device {
    /// Size of every frame buffer (the most a frame can hold).
    fn frame_capacity(&self) -> usize;

    /// Receives up to `max` frames, lending each to `handle` as `(buffer, len)`. Frames for which
    /// `handle` returns [`Verdict::Transmit`] are queued for transmission without a copy.
    /// Returns the number of frames received.
    fn receive<F>(&mut self, max: usize, handle: F) -> usize
    where
        F: FnMut(&mut [u8], usize) -> Verdict;

    /// Lends free transmit buffers to `fill` until it returns `None` (nothing more to send) or the
    /// device runs out of buffers; `Some(n)` queues the first `n` bytes. Returns the number queued.
    fn transmit<F>(&mut self, max: usize, fill: F) -> usize
    where
        F: FnMut(&mut [u8]) -> Option<usize>;

    /// Pushes queued transmissions to the wire (a doorbell / `sendto` wakeup on AF_XDP).
    fn flush(&mut self) {}
}
