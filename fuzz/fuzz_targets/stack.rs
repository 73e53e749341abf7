//! The whole stack fed a sequence of frames on a virtual clock (see the `stack` encoding in
//! `src/lib.rs`): no panic, every frame buffer of the device comes back after every batch, and
//! everything the stack sends is a well-formed frame from its own MAC.
#![no_main]

use handshake::device::mem::MemDevice;
use handshake::Instant;
use handshake_fuzz::{
    drain, dt, fix_checksums, server_stack, tcp_segment, Input, Tracker, SERVER_MAC,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut st = server_stack();
    let mut dev = MemDevice::new(2048);
    let mut now = Instant::from_secs(1);
    let mut tracker = Tracker::default();
    let mut input = Input::new(data);
    let mut frame = Vec::with_capacity(2048);
    let mut frames = 0;
    while !input.is_empty() && frames < 512 {
        frames += 1;
        let ctl = input.u8();
        let len = usize::from(input.u16()).min(2048);
        frame.clear();
        frame.extend_from_slice(input.bytes(len));
        if ctl & 0x80 != 0 {
            tracker.absolutise(&mut frame);
        }
        if ctl & 0x40 != 0 {
            fix_checksums(&mut frame);
        }
        now += dt(ctl);
        dev.inject(&frame);
        drain(&mut st, &mut dev, now, &mut tracker, check_sent);
    }
    // Let every timer run out: retransmissions, delayed ACKs, TIME_WAIT, ARP expiry.
    for v in [20u8, 30, 40, 44, 48, 52, 56, 60] {
        now += dt(v);
        drain(&mut st, &mut dev, now, &mut tracker, check_sent);
    }
});

/// A frame the stack sent: from our MAC, Ethernet + ARP or a valid IPv4 packet, TCP checksummed.
fn check_sent(f: &[u8]) {
    assert!(
        f.len() >= 14 + 28 && f.len() <= 2048,
        "frame length {}",
        f.len()
    );
    assert_eq!(&f[6..12], &SERVER_MAC.0, "source MAC is ours");
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0806 => assert!(handshake::wire::arp::ArpRepr::parse(&f[14..]).is_ok()),
        0x0800 => {
            let ip = handshake::wire::ipv4::Ipv4View::parse(&f[14..]).expect("we send valid IPv4");
            assert_eq!(ip.total_len + 14, f.len(), "no trailing bytes");
            if ip.protocol == 6 {
                let seg = tcp_segment(f).expect("a TCP segment");
                assert!(handshake::wire::checksum::verify_transport(
                    ip.src.octets(),
                    ip.dst.octets(),
                    6,
                    seg
                ));
                handshake::wire::tcp::TcpRepr::parse_bytes(seg).expect("we send valid TCP");
            }
        }
        t => panic!("sent ethertype {t:#06x}"),
    }
}
