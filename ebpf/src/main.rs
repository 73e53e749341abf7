//! The handshake XDP program.
//!
//! Runs on every frame the NIC receives, before the kernel allocates anything for it, and decides
//! in a few dozen instructions whether the frame belongs to the engine:
//!
//! - ARP (request or reply) whose target protocol address is one of ours (`HS_ADDRS`);
//! - IPv4 to one of our addresses that is
//!   - a fragment (the engine reassembles it: a later fragment has no ports to look at),
//!   - ICMP,
//!   - TCP to a listening port (`HS_PORTS`) or to the engine's ephemeral range (`HS_CONFIG`), or
//!     any TCP when flag `ALL_TCP` is set,
//!   - UDP when flag `UDP` is set.
//!
//! Those frames are redirected to the AF_XDP socket of the queue they arrived on (`HS_XSKS`,
//! indexed by `rx_queue_index`). Everything else, including VLAN-tagged frames, goes on to the
//! kernel (`XDP_PASS`): SSH, monitoring and the kernel's own addresses keep working.
//!
//! Every frame is counted in exactly one per-CPU counter of `HS_COUNTERS` (redirected, passed,
//! malformed, no_socket); redirected frames are also counted per queue in `HS_QUEUE_RX`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use handshake_common::{config, counter, flags, MAX_ADDRS, MAX_PORTS, MAX_QUEUES};

/// IPv4 addresses we own, keyed by the four octets as they sit in the packet (`from_ne_bytes`).
#[map(name = "HS_ADDRS")]
static HS_ADDRS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_ADDRS, 0);

/// TCP ports we listen on, host byte order.
#[map(name = "HS_PORTS")]
static HS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Settings indexed by `handshake_common::config`.
#[map(name = "HS_CONFIG")]
static HS_CONFIG: Array<u32> = Array::with_max_entries(config::COUNT, 0);

/// One AF_XDP socket per RX queue.
#[map(name = "HS_XSKS")]
static HS_XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// Per-CPU counters indexed by `handshake_common::counter`.
#[map(name = "HS_COUNTERS")]
static HS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU count of redirected frames, indexed by RX queue.
#[map(name = "HS_QUEUE_RX")]
static HS_QUEUE_RX: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_QUEUES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ARP_HLEN: usize = 28;
const IPV4_MIN_HLEN: usize = 20;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// More-fragments flag and fragment offset bits of the IPv4 flags/offset field.
const IP_MF_OFFSET: u16 = 0x3fff;

/// The frame is too short or inconsistent to classify.
struct Malformed;

/// What the program decided about a frame.
enum Owner {
    /// The engine owns it: redirect to the queue's socket.
    Engine,
    /// Not ours: the kernel keeps it.
    Kernel,
}

#[xdp]
pub fn handshake_xdp(ctx: XdpContext) -> u32 {
    match try_handshake_xdp(&ctx) {
        Ok(action) => action,
        Err(Malformed) => {
            count(counter::MALFORMED);
            XDP_PASS
        }
    }
}

#[inline(always)]
fn try_handshake_xdp(ctx: &XdpContext) -> Result<u32, Malformed> {
    match classify(ctx)? {
        Owner::Kernel => {
            count(counter::PASSED);
            Ok(XDP_PASS)
        }
        Owner::Engine => {
            let queue = ctx.rx_queue_index();
            // The low bits of the flags are the action when the queue has no socket: the frame
            // then goes to the kernel, which is better than losing it.
            match HS_XSKS.redirect(queue, u64::from(XDP_PASS)) {
                Ok(action) => {
                    count(counter::REDIRECTED);
                    if let Some(slot) = HS_QUEUE_RX.get_ptr_mut(queue) {
                        // SAFETY: the pointer comes from a successful lookup in a per-CPU array:
                        // it is valid, aligned, and only this CPU touches its slot while this
                        // program runs (XDP programs are not preempted).
                        unsafe { *slot += 1 };
                    }
                    Ok(action)
                }
                Err(_) => {
                    count(counter::NO_SOCKET);
                    Ok(XDP_PASS)
                }
            }
        }
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Owner, Malformed> {
    let ethertype = u16::from_be_bytes(read::<2>(ctx, 12)?);
    match ethertype {
        ETH_P_ARP => classify_arp(ctx),
        ETH_P_IP => classify_ipv4(ctx),
        // IPv6, VLAN tags (out of scope) and everything else.
        _ => Ok(Owner::Kernel),
    }
}

#[inline(always)]
fn classify_arp(ctx: &XdpContext) -> Result<Owner, Malformed> {
    // htype, ptype, hlen, plen, oper: 8 bytes; then sha(6) spa(4) tha(6) tpa(4).
    let head = read::<8>(ctx, ETH_HLEN)?;
    let _ = read::<ARP_HLEN>(ctx, ETH_HLEN)?;
    let ethernet_ipv4 = head[0] == 0 && head[1] == 1 && head[2] == 0x08 && head[3] == 0x00;
    let sizes_ok = head[4] == 6 && head[5] == 4;
    let oper = u16::from_be_bytes([head[6], head[7]]);
    if !ethernet_ipv4 || !sizes_ok || !(oper == 1 || oper == 2) {
        return Ok(Owner::Kernel);
    }
    let target = read::<4>(ctx, ETH_HLEN + 24)?;
    Ok(if is_our_address(target) {
        Owner::Engine
    } else {
        Owner::Kernel
    })
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext) -> Result<Owner, Malformed> {
    let ip = read::<IPV4_MIN_HLEN>(ctx, ETH_HLEN)?;
    if ip[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Malformed);
    }
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    if !is_our_address(dst) {
        return Ok(Owner::Kernel);
    }
    // A fragment has no (or only part of a) transport header: the engine reassembles it.
    if u16::from_be_bytes([ip[6], ip[7]]) & IP_MF_OFFSET != 0 {
        return Ok(Owner::Engine);
    }
    match ip[9] {
        IPPROTO_ICMP => Ok(Owner::Engine),
        IPPROTO_TCP => {
            let flags = setting(config::FLAGS);
            if flags & flags::ALL_TCP != 0 {
                return Ok(Owner::Engine);
            }
            // Source port (2 bytes) then destination port (2 bytes) right after the IP header.
            let ports = read::<4>(ctx, ETH_HLEN + ihl)?;
            let port = u16::from_be_bytes([ports[2], ports[3]]);
            if is_our_port(port) {
                Ok(Owner::Engine)
            } else {
                Ok(Owner::Kernel)
            }
        }
        IPPROTO_UDP if setting(config::FLAGS) & flags::UDP != 0 => Ok(Owner::Engine),
        _ => Ok(Owner::Kernel),
    }
}

#[inline(always)]
fn is_our_address(octets: [u8; 4]) -> bool {
    HS_ADDRS.get_ptr(u32::from_ne_bytes(octets)).is_some()
}

#[inline(always)]
fn is_our_port(port: u16) -> bool {
    if HS_PORTS.get_ptr(port).is_some() {
        return true;
    }
    let lo = setting(config::EPHEMERAL_LO);
    let hi = setting(config::EPHEMERAL_HI);
    let port = u32::from(port);
    hi != 0 && lo <= port && port <= hi
}

/// A `u32` setting of `HS_CONFIG`; 0 when unset.
#[inline(always)]
fn setting(index: u32) -> u32 {
    HS_CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = HS_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: it is valid,
        // aligned, and only this CPU touches its slot while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Copies `N` bytes at `offset` out of the frame, or `Malformed` if the frame is shorter.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    // `offset` is bounded (at most 14 + 60 here), so the verifier can track `start + offset + N`.
    if offset > 128 || start + offset + N > end {
        return Err(Malformed);
    }
    let ptr = (start + offset) as *const [u8; N];
    // SAFETY: the bounds check above proves `start + offset .. start + offset + N` lies inside
    // the packet; `[u8; N]` has alignment 1 and every bit pattern is valid.
    Ok(unsafe { ptr.read_unaligned() })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel sees (`bpftool prog show`). It must be GPL-compatible for GPL-only
/// helpers; ours are not, but a compatible one keeps the door open.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
