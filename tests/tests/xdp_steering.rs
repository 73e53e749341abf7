//! The XDP program, loaded and attached for real to the engine's veth in a namespace: it steers
//! exactly what the engine owns and leaves the rest to the kernel.
//!
//! No AF_XDP socket is registered here, so a frame we own is counted `no_socket` and passed on to
//! the kernel: that is how these tests see the classification. Needs root and the object built
//! by `cargo xtask build-ebpf`:
//! `cargo test -p handshake-tests --features netns --test xdp_steering -- --test-threads=1`.
#![cfg(feature = "netns")]

use std::{net::Ipv4Addr, time::Duration};

use handshake::loader::{AttachMode, AttachedMode, LoaderError, XdpLoader, XdpProgram};
use handshake_common::{counter, flags};
use handshake_tests::netns::{mac_string, Topology, ENGINE_ADDR, ENGINE_MAC};

const ENGINE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn attach(topo: &Topology, mode: AttachMode) -> Result<XdpProgram, LoaderError> {
    let iface = topo.eng_if().to_owned();
    topo.in_eng(move || {
        XdpLoader::new(XdpLoader::default_object())
            .mode(mode)
            .busy_retry(3, Duration::from_millis(20))
            .attach(&iface)
    })
    .expect("join the engine namespace")
}

fn link_show(topo: &Topology) -> String {
    let out = topo
        .run_eng(&format!("ip -d link show dev {}", topo.eng_if()))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Counter deltas while `f` runs.
fn delta(xdp: &XdpProgram, f: impl FnOnce()) -> [u64; counter::COUNT as usize] {
    let before = xdp.counters();
    f();
    // The receiving veth runs XDP from its NAPI poll, which the kernel may defer to
    // ksoftirqd: read until the counters stay the same for 50 ms (at most 2 s), so that a frame
    // still being processed counts (and a check for none sees it).
    let mut after = xdp.counters();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = xdp.counters();
        if now == after {
            break;
        }
        after = now;
    }
    std::array::from_fn(|i| after[i] - before[i])
}

/// The peer sends one TCP SYN (and maybe a retransmission) to the engine's address.
fn syn_to(topo: &Topology, port: u16) {
    let cmd = format!("exec 3<>/dev/tcp/{ENGINE_ADDR}/{port}");
    let _ = topo
        .run_peer_args(["timeout", "0.5", "bash", "-c", &cmd])
        .unwrap();
}

/// The peer sends one UDP datagram of `len` bytes to the engine's address.
fn udp_to(topo: &Topology, port: u16, len: usize) {
    let cmd = format!("head -c {len} /dev/zero > /dev/udp/{ENGINE_ADDR}/{port}");
    let o = topo.run_peer_args(["bash", "-c", &cmd]).unwrap();
    assert!(o.status.success(), "{}", out(&o));
}

#[test]
fn native_mode_steers_only_what_the_engine_owns() {
    let topo = Topology::up().unwrap();
    let mut xdp = attach(&topo, AttachMode::Native).expect("attach in native mode");
    assert_eq!(xdp.mode(), AttachedMode::Native);
    let link = link_show(&topo);
    assert!(
        link.contains("prog/xdp id") && !link.contains("xdpgeneric"),
        "{link}"
    );

    xdp.set_addresses(&[ENGINE]).unwrap();
    xdp.set_ports(&[80]).unwrap();
    // Without the engine nobody answers ARP for 198.18.0.1: tell the peer its MAC.
    let neigh = topo
        .run_peer(&format!(
            "ip neigh replace {ENGINE_ADDR} lladdr {} dev {}",
            mac_string(ENGINE_MAC),
            topo.peer_if()
        ))
        .unwrap();
    assert!(neigh.status.success(), "{}", out(&neigh));

    // The kernel's own address: ARP and ICMP pass to the kernel, which answers.
    let d = delta(&xdp, || {
        let ping = topo.run_peer("ping -c 3 -i 0.2 -W 2 198.18.0.3").unwrap();
        assert!(ping.status.success(), "{}", out(&ping));
    });
    assert!(d[counter::PASSED as usize] >= 3, "{d:?}");
    assert_eq!(d[counter::NO_SOCKET as usize], 0, "{d:?}");
    assert_eq!(d[counter::REDIRECTED as usize], 0, "{d:?}");

    // ICMP to the engine's address is ours: no socket yet, so no_socket, and no answer.
    let d = delta(&xdp, || {
        let ping = topo.run_peer("ping -c 3 -i 0.2 -W 1 198.18.0.1").unwrap();
        assert!(
            !ping.status.success(),
            "nobody should answer: {}",
            out(&ping)
        );
    });
    assert_eq!(d[counter::NO_SOCKET as usize], 3, "{d:?}");

    // TCP to a listening port is ours, to another port is not.
    let d = delta(&xdp, || syn_to(&topo, 80));
    assert!(d[counter::NO_SOCKET as usize] >= 1, "{d:?}");
    let d = delta(&xdp, || syn_to(&topo, 81));
    assert_eq!(d[counter::NO_SOCKET as usize], 0, "{d:?}");
    assert!(d[counter::PASSED as usize] >= 1, "{d:?}");

    // The ephemeral range.
    xdp.set_ephemeral(40000, 40010).unwrap();
    let d = delta(&xdp, || syn_to(&topo, 40005));
    assert!(d[counter::NO_SOCKET as usize] >= 1, "{d:?}");
    let d = delta(&xdp, || syn_to(&topo, 40011));
    assert_eq!(d[counter::NO_SOCKET as usize], 0, "{d:?}");

    // ALL_TCP takes every port.
    xdp.set_flags(flags::ALL_TCP).unwrap();
    let d = delta(&xdp, || syn_to(&topo, 81));
    assert!(d[counter::NO_SOCKET as usize] >= 1, "{d:?}");

    // UDP only with flag UDP; fragments to our address always (3000 bytes: 3 fragments).
    xdp.set_flags(0).unwrap();
    let d = delta(&xdp, || udp_to(&topo, 9, 100));
    assert_eq!(d[counter::NO_SOCKET as usize], 0, "{d:?}");
    let d = delta(&xdp, || udp_to(&topo, 9, 3000));
    assert_eq!(d[counter::NO_SOCKET as usize], 3, "{d:?}");
    xdp.set_flags(flags::UDP).unwrap();
    let d = delta(&xdp, || udp_to(&topo, 9, 100));
    assert_eq!(d[counter::NO_SOCKET as usize], 1, "{d:?}");

    // Once the address is no longer ours, ICMP to it passes.
    xdp.set_addresses(&[]).unwrap();
    let d = delta(&xdp, || {
        let _ = topo.run_peer("ping -c 2 -i 0.2 -W 1 198.18.0.1").unwrap();
    });
    assert_eq!(d[counter::NO_SOCKET as usize], 0, "{d:?}");
    assert!(d[counter::PASSED as usize] >= 2, "{d:?}");

    // Nothing was redirected: there is no socket.
    assert_eq!(xdp.counters()[counter::REDIRECTED as usize], 0);
    assert_eq!(xdp.queue_counters(1), vec![0]);

    // Detach, and the interface has no program any more.
    xdp.detach().unwrap();
    assert!(!xdp.is_attached());
    let link = link_show(&topo);
    assert!(!link.contains("prog/xdp"), "{link}");
}

#[test]
fn runt_frames_are_counted_malformed_and_passed() {
    let topo = Topology::up().unwrap();
    let xdp = attach(&topo, AttachMode::Native).expect("attach in native mode");
    // A raw Ethernet frame from the peer: IPv4 ethertype but only 6 bytes of IP header.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('{}', 0))\n\
         s.send(bytes.fromhex('{}') + bytes.fromhex('{}') + b'\\x08\\x00' + b'\\x45\\x00\\x00\\x14\\x00\\x00')\n",
        topo.peer_if(),
        mac_string(ENGINE_MAC).replace(':', ""),
        "026873000002",
    );
    let d = delta(&xdp, || {
        let o = topo.run_peer_args(["python3", "-c", &script]).unwrap();
        assert!(o.status.success(), "{}", out(&o));
        std::thread::sleep(Duration::from_millis(50));
    });
    assert_eq!(d[counter::MALFORMED as usize], 1, "{d:?}");
}

#[test]
fn skb_mode_attaches_and_drop_detaches() {
    let topo = Topology::up().unwrap();
    let xdp = attach(&topo, AttachMode::Skb).expect("attach in skb mode");
    assert_eq!(xdp.mode(), AttachedMode::Skb);
    let link = link_show(&topo);
    assert!(link.contains("xdpgeneric"), "{link}");

    // A second program cannot take the interface while the first holds it.
    match attach(&topo, AttachMode::Skb) {
        Err(LoaderError::Busy { attempts: 3, .. }) => {}
        other => panic!("expected Busy after 3 attempts, got {other:?}"),
    }

    drop(xdp);
    let link = link_show(&topo);
    assert!(
        !link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );
}

#[test]
fn unknown_interface_is_reported_by_name() {
    let topo = Topology::up().unwrap();
    let err = topo
        .in_eng(|| XdpLoader::new(XdpLoader::default_object()).attach("nosuch0"))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, LoaderError::InterfaceNotFound { name } if name == "nosuch0"),
        "{err}"
    );
    assert!(err.to_string().contains("interface nosuch0 not found"));
}
