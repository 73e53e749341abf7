#!/usr/bin/python3
"""Fuzz seeds from a real capture: the Linux kernel's own stack and real tools on the wire.

    sudo /usr/bin/python3 fuzz/capture_seeds.py            # capture, then write the seeds
    /usr/bin/python3 fuzz/capture_seeds.py --from-pcap F   # only convert an existing capture
                                                           # (scenarios from F.marks if present)

Builds a throwaway pair of network namespaces joined by a veth pair (198.18.0.1/24 "server",
198.18.0.2/24 "client", with the MACs of the fuzz targets' stack and peer, so that the frames
reach that stack's layers unchanged), runs between them, while tcpdump writes a pcap:

  - curl over HTTP to `python3 -m http.server` (a page, a 404, a 3,000-byte file, a HEAD);
  - curl over HTTPS (TLS 1.3 and TLS 1.2) to `openssl s_server -www`;
  - a plain kernel TCP exchange (Python sockets, echo-like) with a half-close;
  - ping (small, large, fragmented), arping, a SYN to a closed port (the kernel's RST) and a
    UDP datagram to a closed port (the kernel's ICMP port unreachable);
  - scapy oddities: SYN+FIN, a NULL and a Xmas scan, an unknown TCP option, window scale 15,
    MSS 0, data on a SYN, the urgent pointer, a bad TCP checksum, IPv4 options, a fragment,
    a total length beyond the frame, a 802.1Q-tagged frame, an IPv6 echo request, a
    gratuitous ARP and an unsolicited ARP reply, an ICMP timestamp request.

Everything is removed on every exit path (try/finally, SIGINT/SIGTERM). Nothing touches the
root namespace: the veth pair is created inside the server namespace with its other end moved
straight into the client namespace. Every run is bounded (timeouts on each tool).

The capture is converted (deterministically: the same pcap gives the same files) into:

  - `fuzz/corpus/frame/cap_NNN`: one distinct frame per "shape" (ethertype, IP protocol, TCP
    flags, options, payload or not, ICMP type, ARP operation, direction), both directions;
  - `fuzz/corpus/stack/cap_<scenario>`: the client's frames of each scenario in the `stack`
    encoding (`fuzz/src/lib.rs`): `[ctl][len u16 BE][frame]`, with the captured gaps as the
    virtual time selector, TCP seq/ack relative to the server's state as it was in the capture
    (bit 0x80, so they replay against the fuzz stack's ISNs) and checksums fixed (bit 0x40);
    frames whose checksums are broken on purpose keep them (no 0x40); a seed that does not start
    with an ARP frame of the client's gets the capture's first in front (each seed runs on a
    fresh stack, which must learn the client's MAC to answer). The HTTPS connections
    and the kernel TCP exchange go to the fuzz stack's echo port (it has no TLS).

`tls_records` gets no seeds from here: its input is not bytes on the wire but the cut points
and bit flips applied to a rustls client's own ciphertext. The real ClientHellos (curl's, in
TLS 1.3 and 1.2) go into the frame corpus and the `cap_https` stack seed instead.
"""

import argparse
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

SERVER_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"
SERVER_MAC = "02:68:73:00:00:01"  # handshake_fuzz::SERVER_MAC
CLIENT_MAC = "02:68:73:00:00:02"  # handshake_fuzz::PEER_MAC
SRV_IF = "hsseed0"
CLI_IF = "hsseed1"


def sh(*args, check=True, timeout=30, **kw):
    return subprocess.run(list(args), check=check, timeout=timeout, **kw)


class Net:
    """Two namespaces and a veth pair; `down()` removes them (idempotent)."""

    def __init__(self):
        tag = "%d" % os.getpid()
        self.srv = "hs-seed-s-" + tag
        self.cli = "hs-seed-c-" + tag
        self.made = []

    def up(self):
        for ns in (self.srv, self.cli):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "-n", self.srv, "link", "add", SRV_IF, "type", "veth", "peer", "name", CLI_IF, "netns", self.cli)
        for ns, dev, mac, ip in ((self.srv, SRV_IF, SERVER_MAC, SERVER_IP), (self.cli, CLI_IF, CLIENT_MAC, CLIENT_IP)):
            sh("ip", "-n", ns, "link", "set", dev, "address", mac)
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev)
            # Full checksums and real segment sizes in the capture (no offloads).
            self.run(ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off", check=False,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def run(self, ns, *args, **kw):
        return sh("ip", "netns", "exec", ns, *args, **kw)

    def spawn(self, ns, *args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], **kw)

    def down(self):
        while self.made:
            ns = self.made.pop()
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def stop(p):
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


SCAPY_ODDITIES = r"""
import sys
from scapy.all import Ether, Dot1Q, IP, IPv6, ICMPv6EchoRequest, TCP, UDP, ICMP, ARP, Raw, sendp, conf
conf.verb = 0
iface, smac, cmac, sip, cip = sys.argv[1:6]
e = Ether(src=cmac, dst=smac)
def tcp(flags, dport=80, sport=45000, **kw):
    return e / IP(src=cip, dst=sip) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, **kw)
frames = [
    tcp("SF", sport=45001),
    tcp("", sport=45002),
    tcp("FPU", sport=45003, urgptr=1),
    tcp("S", sport=45004, options=[(253, b"\x01\x02"), ("NOP", None), ("MSS", 1460)]),
    tcp("S", sport=45005, options=[("WScale", 15), ("MSS", 1460)]),
    tcp("S", sport=45006, options=[("MSS", 0)]),
    tcp("S", sport=45007) / Raw(b"data on a SYN"),
    tcp("S", sport=45008, chksum=0xdead),
    tcp("S", sport=45009, options=[("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]),
    e / IP(src=cip, dst=sip, options=[b"\x07\x07\x04\x00\x00\x00\x00"]) / TCP(sport=45010, dport=80, flags="S"),
    e / IP(src=cip, dst=sip, flags="MF", frag=0, id=77) / ICMP() / Raw(b"x" * 64),
    e / IP(src=cip, dst=sip, len=400) / ICMP() / Raw(b"short"),
    e / Dot1Q(vlan=7) / IP(src=cip, dst=sip) / ICMP(),
    e / IP(src=cip, dst=sip) / ICMP(type=13),
    e / IP(src=cip, dst=sip) / ICMP(chksum=0xbeef),
    Ether(src=cmac, dst="33:33:00:00:00:01") / IPv6(src="fe80::68:73ff:fe00:2", dst="ff02::1") / ICMPv6EchoRequest(),
    Ether(src=cmac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=cmac, psrc=cip, pdst=cip),
    Ether(src=cmac, dst=smac) / ARP(op=2, hwsrc=cmac, psrc="198.18.0.254", hwdst=smac, pdst=sip),
    e / IP(src=cip, dst=sip) / UDP(sport=5353, dport=9) / Raw(b"hello"),
]
for f in frames:
    sendp(f, iface=iface)
print("sent", len(frames))
"""

KERNEL_TCP = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 7007), timeout=5)
s.sendall(b"hello kernel\n" * 40)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    got += d
s.close()
print("echoed", len(got))
"""

KERNEL_ECHO = r"""
import socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("198.18.0.1", 7007)); l.listen(4)
print("listening", flush=True)
l.settimeout(20)
c, _ = l.accept()
c.settimeout(5)
while True:
    d = c.recv(4096)
    if not d:
        break
    c.sendall(d)
c.close()
"""


def capture(pcap, marks):
    """Runs the scenarios; appends (name, time) to `marks` as each starts."""
    net = Net()
    procs = []

    def bail(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, bail)
    try:
        net.up()
        work = tempfile.mkdtemp(prefix="hs-seeds-")
        with open(os.path.join(work, "file.bin"), "wb") as f:
            f.write(bytes((i * 7) & 0xFF for i in range(3000)))
        with open(os.path.join(work, "index.html"), "w") as f:
            f.write("<h1>captured for the fuzz corpus</h1>\n")
        key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
           "-out", cert, "-days", "2", "-subj", "/CN=handshake.test", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dump = net.spawn(net.srv, "tcpdump", "-i", SRV_IF, "-s", "0", "-U", "-w", pcap, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
        procs.append(dump)
        line = dump.stderr.readline().decode()
        if "listening" not in line:
            raise RuntimeError("tcpdump did not start: %r" % line)
        http = net.spawn(net.srv, "/usr/bin/python3", "-m", "http.server", "--bind", SERVER_IP, "--directory", work,
                         "80", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(http)
        tls = net.spawn(net.srv, "openssl", "s_server", "-accept", SERVER_IP + ":443", "-cert", cert, "-key", key,
                        "-www", "-quiet", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(tls)
        echo = net.spawn(net.srv, "/usr/bin/python3", "-c", KERNEL_ECHO, stdout=subprocess.PIPE)
        procs.append(echo)
        echo.stdout.readline()
        time.sleep(0.5)

        def cli(*args, check=True):
            return net.run(net.cli, *args, check=check, timeout=20, stdout=subprocess.DEVNULL)

        marks.append(("arp_icmp", time.time()))
        cli("arping", "-c", "2", "-w", "3", "-I", CLI_IF, SERVER_IP)
        cli("ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER_IP)
        cli("ping", "-c", "1", "-W", "2", "-s", "1400", SERVER_IP)
        cli("ping", "-c", "1", "-W", "2", "-s", "3000", SERVER_IP)  # fragmented
        marks.append(("http", time.time()))
        base = "http://%s/" % SERVER_IP
        cli("curl", "-s", "--max-time", "5", base, base + "missing", base + "file.bin")
        cli("curl", "-s", "-I", "--max-time", "5", base)
        marks.append(("https", time.time()))
        for v in ("--tlsv1.3", "--tlsv1.2"):
            cli("curl", "-sk", v, "--tls-max", v[-3:], "--max-time", "5", "https://%s/" % SERVER_IP)
        marks.append(("kernel_tcp", time.time()))
        cli("/usr/bin/python3", "-c", KERNEL_TCP, SERVER_IP)
        marks.append(("closed_ports", time.time()))
        cli("curl", "-s", "--max-time", "2", "http://%s:8081/" % SERVER_IP, check=False)
        cli("/usr/bin/python3", "-c",
            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'probe', ('%s', 9))" % SERVER_IP)
        time.sleep(0.3)
        marks.append(("scapy", time.time()))
        cli("/usr/bin/python3", "-c", SCAPY_ODDITIES, CLI_IF, SERVER_MAC, CLIENT_MAC, SERVER_IP, CLIENT_IP)
        time.sleep(1.0)
        marks.append(("end", time.time()))
    finally:
        for p in reversed(procs):
            if p is procs[0]:
                # tcpdump: SIGTERM flushes the file.
                time.sleep(0.2)
            stop(p)
        net.down()


# --- conversion ----------------------------------------------------------------------------


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        end = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        end = ">"
    else:
        raise ValueError("%s: not a pcap file (tcpdump -w writes pcap)" % path)
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(end + "I", data[20:24])[0]
    if link != 1:
        raise ValueError("%s: link type %d, expected Ethernet (1)" % (path, link))
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(end + "IIII", data[off:off + 16])
        off += 16
        out.append((sec + frac / (1e9 if nano else 1e6), data[off:off + incl]))
        off += incl
    return out


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ipv4_tcp(f):
    """(ihl offset range of the TCP segment) or None."""
    if len(f) < 34 or f[12:14] != b"\x08\x00":
        return None
    ip = f[14:]
    hl = (ip[0] & 0x0F) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    if ip[9] != 6 or hl < 20 or total < hl + 20 or total > len(ip):
        return None
    return (14 + hl, 14 + total)


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def checksums_ok(f):
    """True unless an IPv4 header, TCP or ICMP checksum in the frame is wrong."""
    if len(f) < 34 or f[12:14] != b"\x08\x00":
        return True
    ip = f[14:]
    hl = (ip[0] & 0x0F) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    if hl < 20 or hl > len(ip):
        return True  # nothing to check
    if checksum(bytes(ip[:hl])) != 0:
        return False
    if total < hl or total > len(ip) or is_fragment(f):
        return True  # truncated or a fragment: nothing more to check
    l4 = bytes(ip[hl:total])
    if ip[9] == 6 and len(l4) >= 20:
        pseudo = bytes(ip[12:20]) + struct.pack(">BBH", 0, 6, len(l4))
        return checksum(pseudo + l4) == 0
    if ip[9] == 1 and len(l4) >= 8:
        return checksum(l4) == 0
    return True


def is_fragment(f):
    return len(f) >= 34 and f[12:14] == b"\x08\x00" and bool(struct.unpack(">H", f[20:22])[0] & 0x3FFF)


def shape(f, outbound):
    """What makes a frame different enough to keep: direction and header features."""
    key = [outbound, len(f) < 60]
    et = f[12:14] if len(f) >= 14 else b""
    key.append(et)
    if et == b"\x08\x06" and len(f) >= 22:
        key.append(f[20:22])
    if et == b"\x08\x00" and len(f) >= 34:
        ip = f[14:]
        hl = (ip[0] & 0x0F) * 4
        key += [ip[9], hl, bool(struct.unpack(">H", ip[6:8])[0] & 0x3FFF), checksums_ok(f)]
        t = ipv4_tcp(f)
        if t:
            seg = f[t[0]:t[1]]
            doff = (seg[12] >> 4) * 4
            opts, i = [], 20
            while i < min(doff, len(seg)):
                k = seg[i]
                if k in (0, 1):
                    opts.append(k)
                    i += 1
                    continue
                if i + 1 >= len(seg) or seg[i + 1] < 2:
                    opts.append(("bad", k))
                    break
                opts.append(k)
                i += seg[i + 1]
            payload = len(seg) - doff
            # First bytes of the payload tell a ClientHello from a GET from a record.
            key += [seg[13], tuple(opts), payload > 0, bytes(seg[doff:doff + 1]), bytes(seg[doff + 5:doff + 6])]
        elif ip[9] == 1 and len(ip) > hl:
            key.append(ip[hl])
    return tuple(key)


def dt_selector(gap_us):
    """The largest `handshake_fuzz::dt` selector whose step is at most the captured gap."""
    best = 0
    for v in range(1, 64):
        us = (1 << (v // 2)) * (1 + v % 2)
        if us <= gap_us:
            best = v
    return best


class Tracker:
    """`handshake_fuzz::Tracker` on the captured server's frames: per client port, the
    server's highest sequence sent and its last acknowledgment."""

    def __init__(self):
        self.conns = {}

    def learn(self, f):
        t = ipv4_tcp(f)
        if not t:
            return
        seg = f[t[0]:t[1]]
        sport, dport, seq, ack = struct.unpack(">HHII", seg[:12])
        flags = seg[13]
        doff = (seg[12] >> 4) * 4
        ln = len(seg) - doff + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)
        end = (seq + ln) & 0xFFFFFFFF
        c = self.conns.get(dport)
        if c is None:
            self.conns[dport] = [end, ack if flags & 0x10 else 0]
            return
        d = (end - c[0]) & 0xFFFFFFFF
        if (d != 0 and d < 0x80000000) or flags & 0x02:
            c[0] = end
        if flags & 0x10:
            c[1] = ack

    def relativise(self, f):
        t = ipv4_tcp(f)
        if not t:
            return f
        seg = f[t[0]:t[1]]
        sport = struct.unpack(">H", seg[:2])[0]
        c = self.conns.get(sport)
        if c is None:
            return f
        seq, ack = struct.unpack(">II", seg[4:12])
        snd_max, rcv_nxt = c
        rel = struct.pack(">II", (seq - rcv_nxt) & 0xFFFFFFFF, (ack - snd_max) & 0xFFFFFFFF)
        return f[:t[0] + 4] + rel + f[t[0] + 12:]


# The fuzz stack serves echo on 7 and HTTP on 80, no TLS: the HTTPS connections and the plain
# kernel exchange are replayed to its echo port, so that their whole TCP conversation (and the
# ClientHello's bytes) reach a connection instead of drawing RSTs. Checksums are fixed (0x40).
RETARGET = {443: 7, 7007: 7}


def retarget(f):
    t = ipv4_tcp(f)
    if not t:
        return f
    dport = struct.unpack(">H", f[t[0] + 2:t[0] + 4])[0]
    if dport not in RETARGET:
        return f
    return f[:t[0] + 2] + struct.pack(">H", RETARGET[dport]) + f[t[0] + 4:]


def convert(pcap, marks):
    frames = read_pcap(pcap)
    smac = mac(SERVER_MAC)
    if not frames:
        raise RuntimeError("the capture is empty")
    # Frames: one per shape, in capture order.
    seen, kept = set(), []
    for _, f in frames:
        k = shape(f, f[6:12] == smac)
        if k not in seen:
            seen.add(k)
            kept.append(f)
    fdir = os.path.join(CORPUS, "frame")
    sdir = os.path.join(CORPUS, "stack")
    for d in (fdir, sdir):
        os.makedirs(d, exist_ok=True)
        for n in os.listdir(d):
            if n.startswith("cap_"):
                os.remove(os.path.join(d, n))
    for i, f in enumerate(kept):
        with open(os.path.join(fdir, "cap_%03d" % i), "wb") as out:
            out.write(f)
    # Stack seeds: the client's frames per scenario.
    if not marks:
        # Without marks (--from-pcap), one seed for the whole capture.
        marks = [("all", frames[0][0]), ("end", frames[-1][0] + 1)]
    # Each seed starts on a fresh stack, which has to learn the client's MAC before it can
    # answer: every seed without an ARP frame of the client's starts with the capture's first.
    arp = next((f for _, f in frames if f[6:12] != smac and f[12:14] == b"\x08\x06"), None)
    tracker = Tracker()
    seeds = {}
    prev = None
    bounds = list(zip(marks, marks[1:]))
    for ts, f in frames:
        if f[6:12] == smac:
            tracker.learn(f)
            continue
        name = next((m[0] for m, n in bounds if m[1] <= ts < n[1]), None)
        if name is None:
            continue
        gap = 0 if prev is None else max(0, int((ts - prev) * 1e6))
        prev = ts
        is_tcp = ipv4_tcp(f) is not None
        ctl = dt_selector(gap)
        # Fixing checksums would undo a deliberately broken one, and would rewrite a
        # fragment's ICMP checksum over a part of its datagram.
        if checksums_ok(f) and not is_fragment(f):
            ctl |= 0x40
        if is_tcp and ctl & 0x40:
            ctl |= 0x80
            f = retarget(tracker.relativise(f))
        if name not in seeds:
            seeds[name] = bytearray()
            if arp is not None and f[12:14] != b"\x08\x06":
                seeds[name] += bytes([0x40]) + struct.pack(">H", len(arp)) + arp
        rec = seeds[name]
        if len(f) > 2048 or len(rec) + 3 + len(f) > 8000:
            continue  # the stack target reads at most 2048 bytes a frame; libFuzzer -max_len 8192
        rec += bytes([ctl]) + struct.pack(">H", len(f)) + f
    for name, rec in seeds.items():
        with open(os.path.join(sdir, "cap_" + name), "wb") as out:
            out.write(rec)
    print("%s: %d frames captured; wrote %d frame seeds (cap_*) and %d stack seeds (%s)" % (
        pcap, len(frames), len(kept), len(seeds), ", ".join("cap_%s %d B" % (n, len(r)) for n, r in seeds.items())))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-pcap", help="convert this capture instead of making one")
    ap.add_argument("--keep-pcap", default=os.path.join(HERE, "target", "real-capture.pcap"),
                    help="where the capture is kept (default fuzz/target/real-capture.pcap)")
    a = ap.parse_args()
    marks = []
    if a.from_pcap:
        # The scenario boundaries the capture run wrote next to its pcap, if any.
        if os.path.exists(a.from_pcap + ".marks"):
            with open(a.from_pcap + ".marks") as f:
                marks = [(n, float(t)) for n, t in (l.split() for l in f if l.strip())]
        convert(a.from_pcap, marks)
        return
    if os.geteuid() != 0:
        sys.exit("capture_seeds.py: network namespaces need root (sudo /usr/bin/python3 fuzz/capture_seeds.py)")
    os.makedirs(os.path.dirname(a.keep_pcap), exist_ok=True)
    capture(a.keep_pcap, marks)
    with open(a.keep_pcap + ".marks", "w") as f:
        f.write("".join("%s %.6f\n" % m for m in marks))
    convert(a.keep_pcap, marks)
    print("scenarios: " + ", ".join("%s@%.3f" % (n, t - marks[0][1]) for n, t in marks))


if __name__ == "__main__":
    main()
