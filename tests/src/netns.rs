//! The test bed of `shared/TESTBED.md`: two network namespaces joined by a veth pair.
//!
//! ```text
//!  netns hs-eng-<id>                        netns hs-peer-<id>
//!  he<id>  (engine: 198.18.0.1, kernel keeps 198.18.0.3)  <── veth ──>  hp<id> (198.18.0.2/24)
//! ```
//!
//! [`Topology::up`] builds it with a per-run id (`<pid>-<n>`), so parallel runs never collide,
//! and dropping the [`Topology`] deletes both namespaces (which deletes the veth pair) on every
//! exit path, panics included. [`cleanup_stale`] removes what runs that were killed left behind.
//! Nothing here touches the root namespace: the veth pair is created inside the engine namespace
//! with its peer end placed directly in the peer namespace.
//!
//! What veth needs for XDP (checked on Linux 6.18): nothing on the peer side. With the program
//! attached to the engine's end in native mode, frames the peer transmits on its TX queue `q`
//! run the program on the engine's RX queue `q` and are redirected into the AF_XDP socket of
//! queue `q` (copy mode: veth has no zero-copy) without an XDP program or GRO on the peer; that
//! requirement only exists for `XDP_REDIRECT`/`XDP_TX` *into* a veth (`ndo_xdp_xmit`), which
//! AF_XDP does not use. The engine's end needs at least as many RX queues as the peer has TX
//! queues, which [`TopologyBuilder::queues`] gives both. In skb (generic) mode every frame
//! shows up on queue 0. TX checksum offload is turned off on both ends, so frames the kernels
//! send carry full checksums (AF_XDP hands them over as they are).
//!
//! Only 198.18.0.0/15 addresses are used. Everything shells out to `ip` and `ethtool`, so it
//! needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN); building does not.

use std::{
    ffi::OsStr,
    fs,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};

/// The engine's address (owned by the engine, not configured on the kernel side).
pub const ENGINE_ADDR: &str = "198.18.0.1";
/// The peer's address (the kernel stack in the peer namespace).
pub const PEER_ADDR: &str = "198.18.0.2";
/// A kernel address on the engine's interface: traffic to it must still reach the kernel.
pub const KERNEL_ADDR: &str = "198.18.0.3";
/// Prefix length of the test subnet.
pub const PREFIX_LEN: u8 = 24;
/// MAC address of the engine's veth end (locally administered: `02:..`).
pub const ENGINE_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0x00, 0x00, 0x01];
/// MAC address of the peer's veth end.
pub const PEER_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0x00, 0x00, 0x02];
/// Routed topology ([`TopologyBuilder::routed`]): the gateway address of the peer namespace,
/// which then routes between 198.18.0.0/24 and 198.19.0.0/24.
pub const ROUTER_ADDR: &str = "198.18.0.254";
/// Routed topology: the router's address on the far subnet.
pub const ROUTER_FAR_ADDR: &str = "198.19.0.254";
/// Routed topology: the server's address, on the far subnet ("a different subnet", seed 003).
pub const SERVER_ADDR: &str = "198.19.0.10";
/// Routed topology: MAC address of the router's end towards the server.
pub const ROUTER_FAR_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0x00, 0x01, 0xfe];
/// Routed topology: MAC address of the server's veth end.
pub const SERVER_MAC: [u8; 6] = [0x02, 0x68, 0x73, 0x00, 0x01, 0x0a];

/// Name prefix of every namespace this module creates.
const NS_PREFIX: &str = "hs-";
const ENG_PREFIX: &str = "hs-eng-";
const PEER_PREFIX: &str = "hs-peer-";
const SRV_PREFIX: &str = "hs-srv-";
/// Ids of persistent topologies (`cargo xtask netns up`) start with this letter.
const PERSIST_MARK: char = 'd';
/// Longest interface name (`IFNAMSIZ - 1`); `he` + id must fit.
const IFNAME_MAX: usize = 15;
/// Most queues a veth end gets here (the XDP program's XskMap has 64 slots).
pub const MAX_QUEUES: u32 = 64;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Options for [`Topology`]; start from [`Topology::builder`].
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    queues: u32,
    kernel_addr: bool,
    ipv6: bool,
    persist: bool,
    routed: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        Self {
            queues: 1,
            kernel_addr: true,
            ipv6: false,
            persist: false,
            routed: false,
        }
    }
}

impl TopologyBuilder {
    /// Makes the peer namespace a router as well (ip_forward on, [`ROUTER_ADDR`] beside
    /// [`PEER_ADDR`]) to a third namespace `hs-srv-<id>` on another subnet: veth `hr<id>`
    /// ([`ROUTER_FAR_ADDR`]) in the peer namespace to `hs<id>` ([`SERVER_ADDR`], default route
    /// via the router) in the server namespace. Hosts there are off-link for the engine: it
    /// reaches them through its gateway, ARPing for the router's MAC, not theirs.
    pub fn routed(mut self, on: bool) -> Self {
        self.routed = on;
        self
    }

    /// Number of TX and RX queues on both veth ends (1..=64). Per-queue steering needs native
    /// XDP: generic mode reports every frame on queue 0.
    pub fn queues(mut self, queues: u32) -> Self {
        self.queues = queues;
        self
    }

    /// Whether the kernel of the engine namespace gets 198.18.0.3/24 on the engine's veth
    /// (default: yes), to show that what the engine does not own still reaches the kernel.
    pub fn kernel_address(mut self, on: bool) -> Self {
        self.kernel_addr = on;
        self
    }

    /// Whether the namespaces keep IPv6 (default: off, so that no router solicitations or MLD
    /// reports add frames to what a test counts or captures).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Keep the namespaces after the [`Topology`] is dropped (for `cargo xtask netns up`); the
    /// id is then `d<n>` and [`cleanup_stale`] leaves it alone. Remove with [`remove`].
    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// Creates the namespaces, the veth pair, addresses and links. On error everything created so
    /// far is removed again.
    pub fn up(self) -> Result<Topology> {
        if !(1..=MAX_QUEUES).contains(&self.queues) {
            bail!(
                "{} queues asked: a topology has 1 to {MAX_QUEUES}",
                self.queues
            );
        }
        let id = if self.persist {
            free_persistent_id()?
        } else {
            format!(
                "{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        };
        let topo = Topology {
            eng_ns: format!("{ENG_PREFIX}{id}"),
            peer_ns: format!("{PEER_PREFIX}{id}"),
            eng_if: format!("he{id}"),
            peer_if: format!("hp{id}"),
            id,
            queues: self.queues,
            kernel_addr: self.kernel_addr,
            ipv6: self.ipv6,
            persist: self.persist,
            routed: self.routed,
            created: true,
        };
        if topo.eng_if.len() > IFNAME_MAX {
            bail!("interface name {} is too long", topo.eng_if);
        }
        // From here on, dropping `topo` (also by `?`) removes whatever exists.
        topo.build()?;
        Ok(topo)
    }
}

/// Two namespaces joined by a veth pair; removed on drop unless built with
/// [`TopologyBuilder::persist`].
#[derive(Debug)]
pub struct Topology {
    id: String,
    eng_ns: String,
    peer_ns: String,
    eng_if: String,
    peer_if: String,
    queues: u32,
    kernel_addr: bool,
    ipv6: bool,
    persist: bool,
    routed: bool,
    created: bool,
}

impl Topology {
    /// Options: queues, kernel address, persistence.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The default topology: one queue, kernel address 198.18.0.3 on the engine side.
    pub fn up() -> Result<Self> {
        Self::builder().up()
    }

    fn build(&self) -> Result<()> {
        ip(["netns", "add", &self.eng_ns])?;
        ip(["netns", "add", &self.peer_ns])?;
        if !self.ipv6 {
            // Before the veth exists, so that it never gets a link-local address.
            for ns in [&self.eng_ns, &self.peer_ns] {
                for key in [
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ] {
                    run_checked("ip", ["netns", "exec", ns, "sysctl", "-qw", key])?;
                }
            }
        }
        self.create_veth()?;
        if self.routed {
            self.build_far_side()?;
        }
        Ok(())
    }

    /// The router's second leg and the server namespace behind it.
    fn build_far_side(&self) -> Result<()> {
        let srv_ns = self.srv_ns();
        let (rif, sif) = (format!("hr{}", self.id), format!("hs{}", self.id));
        ip(["netns", "add", &srv_ns])?;
        if !self.ipv6 {
            for key in [
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ] {
                run_checked("ip", ["netns", "exec", &srv_ns, "sysctl", "-qw", key])?;
            }
        }
        ip([
            "-n",
            &self.peer_ns,
            "link",
            "add",
            &rif,
            "address",
            &mac_string(ROUTER_FAR_MAC),
            "type",
            "veth",
            "peer",
            "name",
            &sif,
            "netns",
            &srv_ns,
            "address",
            &mac_string(SERVER_MAC),
        ])?;
        let cidr = |a: &str| format!("{a}/{PREFIX_LEN}");
        ip([
            "-n",
            &self.peer_ns,
            "addr",
            "add",
            &cidr(ROUTER_ADDR),
            "dev",
            &self.peer_if,
        ])?;
        ip([
            "-n",
            &self.peer_ns,
            "addr",
            "add",
            &cidr(ROUTER_FAR_ADDR),
            "dev",
            &rif,
        ])?;
        ip([
            "-n",
            &srv_ns,
            "addr",
            "add",
            &cidr(SERVER_ADDR),
            "dev",
            &sif,
        ])?;
        for (ns, dev) in [(&self.peer_ns, &rif), (&srv_ns, &sif)] {
            ip(["-n", ns, "link", "set", "lo", "up"])?;
            ip(["-n", ns, "link", "set", dev, "up"])?;
            run_checked(
                "ip",
                ["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
            )?;
        }
        ip([
            "-n",
            &srv_ns,
            "route",
            "add",
            "default",
            "via",
            ROUTER_FAR_ADDR,
        ])?;
        run_checked(
            "ip",
            [
                "netns",
                "exec",
                &self.peer_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
    }

    /// The server namespace of a routed topology, `hs-srv-<id>`.
    pub fn srv_ns(&self) -> String {
        format!("{SRV_PREFIX}{}", self.id)
    }

    /// Runs a command given as separate arguments in the server namespace (routed topology).
    pub fn run_srv_args<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_in(&self.srv_ns(), args)
    }

    /// Starts a command in the server namespace (routed topology) with stdout and stderr
    /// piped. Kill (and wait for) it before the topology is dropped.
    pub fn spawn_srv<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        spawn_in(&self.srv_ns(), args)
    }

    /// Creates the veth pair (names, MACs, queues, addresses, offload off, links up) in the two
    /// namespaces, which must exist and hold no pair yet.
    fn create_veth(&self) -> Result<()> {
        let q = self.queues.to_string();
        // Created inside the engine namespace, peer end placed straight into the peer namespace:
        // the root namespace never sees either end.
        ip([
            "-n",
            &self.eng_ns,
            "link",
            "add",
            &self.eng_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "address",
            &mac_string(ENGINE_MAC),
            "type",
            "veth",
            "peer",
            "name",
            &self.peer_if,
            "netns",
            &self.peer_ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "address",
            &mac_string(PEER_MAC),
        ])?;
        let peer_cidr = format!("{PEER_ADDR}/{PREFIX_LEN}");
        ip([
            "-n",
            &self.peer_ns,
            "addr",
            "add",
            &peer_cidr,
            "dev",
            &self.peer_if,
        ])?;
        if self.kernel_addr {
            let cidr = format!("{KERNEL_ADDR}/{PREFIX_LEN}");
            ip([
                "-n",
                &self.eng_ns,
                "addr",
                "add",
                &cidr,
                "dev",
                &self.eng_if,
            ])?;
        }
        for (ns, dev) in [(&self.eng_ns, &self.eng_if), (&self.peer_ns, &self.peer_if)] {
            ip(["-n", ns, "link", "set", "lo", "up"])?;
            ip(["-n", ns, "link", "set", dev, "up"])?;
            // The kernel sends TCP/UDP over veth with only a partial checksum (offload), and
            // AF_XDP hands the frame over as it is: make it compute full checksums.
            run_checked(
                "ip",
                ["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
            )?;
        }
        Ok(())
    }

    /// Deletes the veth pair (from the engine namespace; the peer end goes with it) and creates
    /// it again with the same names, MACs, queues and addresses: the engine's end gets a new
    /// ifindex. Returns once both links are up again.
    pub fn recreate_veth(&self) -> Result<()> {
        self.delete_veth()?;
        self.create_veth()
    }

    /// Deletes the veth pair (both ends).
    pub fn delete_veth(&self) -> Result<()> {
        ip(["-n", &self.eng_ns, "link", "del", &self.eng_if])
    }

    /// Creates the veth pair again after [`Topology::delete_veth`].
    pub fn add_veth(&self) -> Result<()> {
        self.create_veth()
    }

    /// The ifindex of the engine's veth end (`None` when it does not exist).
    pub fn eng_ifindex(&self) -> Option<u32> {
        let o = self
            .run_eng(&format!("cat /sys/class/net/{}/ifindex", self.eng_if))
            .ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }

    /// The per-run id (`<pid>-<n>`, or `d<n>` when persistent).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The engine's namespace, `hs-eng-<id>`.
    pub fn eng_ns(&self) -> &str {
        &self.eng_ns
    }
    /// The peer's namespace, `hs-peer-<id>`.
    pub fn peer_ns(&self) -> &str {
        &self.peer_ns
    }
    /// The engine's veth end, `he<id>`, in [`Topology::eng_ns`].
    pub fn eng_if(&self) -> &str {
        &self.eng_if
    }
    /// The peer's veth end, `hp<id>`, in [`Topology::peer_ns`].
    pub fn peer_if(&self) -> &str {
        &self.peer_if
    }
    /// The engine veth's MAC address.
    pub fn eng_mac(&self) -> [u8; 6] {
        ENGINE_MAC
    }
    /// The peer veth's MAC address.
    pub fn peer_mac(&self) -> [u8; 6] {
        PEER_MAC
    }
    /// Queues on each veth end.
    pub fn queues(&self) -> u32 {
        self.queues
    }
    /// Whether the namespaces outlive this value.
    pub fn is_persistent(&self) -> bool {
        self.persist
    }

    /// Runs a whitespace-separated command in the engine namespace and waits for it. Fails only
    /// if it cannot be started; look at the returned status.
    pub fn run_eng(&self, cmd: &str) -> Result<Output> {
        self.run_eng_args(cmd.split_whitespace())
    }

    /// Runs a whitespace-separated command in the peer namespace and waits for it.
    pub fn run_peer(&self, cmd: &str) -> Result<Output> {
        self.run_peer_args(cmd.split_whitespace())
    }

    /// Runs a Python script with Debian's interpreter (it has scapy; pyenv's does not) in the
    /// peer namespace; fails with the script's output unless it exits 0. Returns its output.
    pub fn py(&self, script: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec![PYTHON, "-c", script];
        argv.extend_from_slice(args);
        let o = self.run_peer_args(&argv)?;
        let out = output_text(&o);
        if !o.status.success() {
            bail!("peer script failed:\n{out}");
        }
        Ok(out)
    }

    /// Runs a command given as separate arguments in the engine namespace.
    pub fn run_eng_args<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_in(&self.eng_ns, args)
    }

    /// Runs a command given as separate arguments in the peer namespace.
    pub fn run_peer_args<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_in(&self.peer_ns, args)
    }

    /// Starts a command in the engine namespace with stdout and stderr piped. Kill (and wait
    /// for) it before the topology is dropped: a namespace lives on while a process is in it.
    pub fn spawn_eng<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        spawn_in(&self.eng_ns, args)
    }

    /// Starts a command in the peer namespace with stdout and stderr piped.
    pub fn spawn_peer<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        spawn_in(&self.peer_ns, args)
    }

    /// Runs `f` on a thread that has joined the engine namespace (`setns`), and returns its
    /// result. Sockets, netlink calls and interface names inside `f` see the engine's network:
    /// attach XDP or open AF_XDP sockets on [`Topology::eng_if`] this way from a test.
    pub fn in_eng<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_namespace(&self.eng_ns, f)
    }

    /// Runs `f` on a thread that has joined the peer namespace.
    pub fn in_peer<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_namespace(&self.peer_ns, f)
    }

    /// Removes both namespaces now (also for a persistent topology). Idempotent.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if !self.created {
            return Ok(());
        }
        self.created = false;
        remove(&self.id)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.persist {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("warning: removing test namespaces of {}: {e:#}", self.id);
        }
    }
}

/// Removes the namespaces of topology `id` (whichever exist). Deleting the engine namespace
/// deletes its veth end and so the pair.
pub fn remove(id: &str) -> Result<()> {
    let mut errors = Vec::new();
    for ns in [
        format!("{ENG_PREFIX}{id}"),
        format!("{PEER_PREFIX}{id}"),
        format!("{SRV_PREFIX}{id}"),
    ] {
        if namespace_exists(&ns) {
            if let Err(e) = ip(["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// Ids of the topologies that exist now (from `ip netns list`), sorted.
pub fn list() -> Result<Vec<String>> {
    let mut ids: Vec<String> = namespaces()?
        .iter()
        .filter_map(|ns| {
            ns.strip_prefix(ENG_PREFIX)
                .or_else(|| ns.strip_prefix(PEER_PREFIX))
                .or_else(|| ns.strip_prefix(SRV_PREFIX))
        })
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Ids of the persistent topologies (`cargo xtask netns up`).
pub fn list_persistent() -> Result<Vec<String>> {
    Ok(list()?
        .into_iter()
        .filter(|id| is_persistent_id(id))
        .collect())
}

/// Removes the topologies left behind by runs whose process is gone (ids `<pid>-<n>` whose pid
/// no longer exists). Persistent topologies and those of live processes are kept. Returns the
/// ids removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for id in list()? {
        let Some(pid) = id.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove(&id)?;
        removed.push(id);
    }
    Ok(removed)
}

/// Whether this process runs as root (the privileged tests need it).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Debian's Python 3.
pub const PYTHON: &str = "/usr/bin/python3";

/// A finished command's stdout followed by its stderr, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `02:68:73:00:00:01` form.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_persistent_id(id: &str) -> bool {
    id.strip_prefix(PERSIST_MARK)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn free_persistent_id() -> Result<String> {
    let existing = list()?;
    (0..1000)
        .map(|n| format!("{PERSIST_MARK}{n}"))
        .find(|id| !existing.contains(id))
        .context("no free persistent topology id: remove some with `cargo xtask netns down`")
}

fn namespaces() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list`: is iproute2 installed? (`cargo xtask deps`)")?;
    if !out.status.success() {
        bail!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // Lines look like `hs-eng-123-0 (id: 4)` or just `hs-eng-123-0`.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(NS_PREFIX))
        .map(str::to_owned)
        .collect())
}

fn namespace_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn ip<const N: usize>(args: [&str; N]) -> Result<()> {
    run_checked("ip", args)
}

fn run_checked<I, S>(program: &str, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().with_context(|| {
        format!("cannot run `{shown}`: is {program} installed? (`cargo xtask deps`)")
    })?;
    if !out.status.success() {
        let hint = if is_root() {
            ""
        } else {
            " (network namespaces need root: run with sudo)"
        };
        bail!(
            "`{shown}` failed ({}): {}{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a scoped thread that joined network namespace `ns` (only that thread moves).
pub fn in_namespace<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path)
        .with_context(|| format!("opening {}: does namespace {ns} exist?", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(
                    || format!("joining namespace {ns} (needs root or CAP_SYS_ADMIN)"),
                )?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn netns_exec<I, S>(ns: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

fn run_in<I, S>(ns: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = netns_exec(ns, args);
    cmd.stdin(Stdio::null());
    cmd.output()
        .with_context(|| format!("cannot run {cmd:?} in {ns}"))
}

fn spawn_in<I, S>(ns: &str, args: I) -> Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = netns_exec(ns, args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
        .with_context(|| format!("cannot start {cmd:?} in {ns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_locally_administered_unicast() {
        for mac in [ENGINE_MAC, PEER_MAC] {
            assert_eq!(mac[0] & 0b11, 0b10, "{}", mac_string(mac));
        }
        assert_eq!(mac_string(ENGINE_MAC), "02:68:73:00:00:01");
    }

    #[test]
    fn persistent_ids_are_told_apart_from_run_ids() {
        assert!(is_persistent_id("d0"));
        assert!(is_persistent_id("d17"));
        assert!(!is_persistent_id("d"));
        assert!(!is_persistent_id("1234-0"));
        assert!(!is_persistent_id("dx"));
    }

    #[test]
    fn longest_ids_fit_in_an_interface_name() {
        // pid_max is at most 4194304 (7 digits); a run makes far fewer than 100000 topologies.
        let id = "4194304-99999";
        assert!(format!("he{id}").len() <= IFNAME_MAX);
    }

    #[test]
    fn bad_queue_counts_are_refused_before_touching_anything() {
        for q in [0, MAX_QUEUES + 1] {
            let err = Topology::builder().queues(q).up().unwrap_err();
            assert!(err.to_string().contains("1 to 64"), "{err}");
        }
    }

    /// Needs root: `cargo test -p handshake-tests --features netns -- --test-threads=1`.
    #[cfg(feature = "netns")]
    #[test]
    fn up_ping_down() {
        let topo = Topology::up().expect("topology up");
        let id = topo.id().to_owned();
        assert!(list().unwrap().contains(&id));
        let ping = topo.run_peer("ping -c 2 -i 0.2 -W 2 198.18.0.3").unwrap();
        assert!(
            ping.status.success(),
            "ping 198.18.0.3 from the peer: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );
        let link = topo
            .run_eng(&format!("ip -o link show {}", topo.eng_if()))
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout).to_string();
        assert!(link.contains("02:68:73:00:00:01"), "{link}");
        drop(topo);
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(!listed.contains(&format!("hs-eng-{id}")), "{listed}");
        assert!(!listed.contains(&format!("hs-peer-{id}")), "{listed}");
    }

    /// A panic while the topology is up still removes it.
    #[cfg(feature = "netns")]
    #[test]
    fn panic_still_tears_down() {
        let id = std::panic::catch_unwind(|| {
            let topo = Topology::up().expect("topology up");
            let id = topo.id().to_owned();
            std::panic::panic_any(id);
        })
        .unwrap_err()
        .downcast::<String>()
        .expect("the id");
        assert!(!list().unwrap().contains(&id), "{id} still exists");
    }

    #[cfg(feature = "netns")]
    #[test]
    fn stale_topologies_of_dead_processes_are_removed() {
        // Pretend a killed run left `hs-eng-<dead pid>-0` behind: pid 4194305 is above pid_max.
        let id = "4194305-0";
        ip(["netns", "add", &format!("{ENG_PREFIX}{id}")]).unwrap();
        let removed = cleanup_stale().unwrap();
        assert!(removed.contains(&id.to_owned()), "{removed:?}");
        assert!(!list().unwrap().contains(&id.to_owned()));
    }
}
