//! Loads the XDP program (`ebpf/`, built by `cargo xtask build-ebpf`) with aya, attaches it to an
//! interface and fills its maps.
//!
//! The program is attached through an fd-based `bpf_link`: if the daemon dies, even by `SIGKILL`,
//! the kernel closes the link and the interface is left without our program, so the kernel gets
//! all of its traffic back. [`XdpProgram`] detaches on [`XdpProgram::detach`] and on drop.
//!
//! ```no_run
//! use handshake::loader::{AttachMode, XdpLoader};
//! # fn main() -> Result<(), handshake::loader::LoaderError> {
//! let mut xdp = XdpLoader::new(XdpLoader::default_object())
//!     .mode(AttachMode::Auto)
//!     .attach("he1")?;
//! xdp.set_addresses(&["198.18.0.1".parse().unwrap()])?;
//! xdp.set_ports(&[80, 443])?;
//! println!("attached in {} mode", xdp.mode());
//! # Ok(()) }
//! ```

use std::{
    error::Error as StdError,
    fmt, io,
    net::Ipv4Addr,
    os::fd::RawFd,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, XskMap},
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use handshake_common::{config, counter, maps, MAX_ADDRS, MAX_PORTS, MAX_QUEUES, PROGRAM};

/// File name of the object that `cargo xtask build-ebpf` writes to `target/bpf/`.
pub const OBJECT_FILE: &str = "handshake-xdp.o";
/// Environment variable that overrides where the object is looked for.
pub const OBJECT_ENV: &str = "HANDSHAKE_BPF_OBJECT";

/// Longest interface name Linux accepts (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

/// What went wrong while loading, attaching or configuring the XDP program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoaderError {
    /// The object file does not exist.
    #[error("eBPF object not found at {}: run `cargo xtask build-ebpf` (or set {OBJECT_ENV})", path.display())]
    ObjectNotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The kernel refused for lack of privileges.
    #[error(
        "{action} needs root or CAP_NET_ADMIN+CAP_BPF: run as root (sudo), or grant the capabilities \
         with `setcap cap_net_admin,cap_bpf,cap_perfmon,cap_net_raw+ep <binary>`"
    )]
    Permission {
        /// What we were doing.
        action: &'static str,
        /// The refusal.
        #[source]
        source: io::Error,
    },
    /// No interface has that name (in this network namespace).
    #[error("interface {name} not found: check `ip link show` (and that you are in the right network namespace)")]
    InterfaceNotFound {
        /// The name asked for.
        name: String,
    },
    /// The object could not be parsed or its maps created.
    #[error("cannot load the eBPF object {}: {source}; rebuild it with `cargo xtask build-ebpf`", path.display())]
    Load {
        /// The object file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<EbpfError>,
    },
    /// The object has no program or map of the expected name or type.
    #[error("the eBPF object has no {kind} named {name}: it is stale or foreign; rebuild it with `cargo xtask build-ebpf`")]
    Missing {
        /// `"program"` or `"map"`.
        kind: &'static str,
        /// The name looked for.
        name: &'static str,
    },
    /// The kernel's verifier (or the loader) rejected the program.
    #[error("the kernel rejected the XDP program: {source}")]
    Verify {
        /// The error, with the verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// Another XDP program stays attached to the interface.
    #[error(
        "interface {iface} already has an XDP program attached (still busy after {attempts} attempts \
         over {:.1} s): another handshake daemon is probably serving {iface} (`ip link show dev \
         {iface}` names the program: `handshake_xdp` is ours). Stop it first (`systemctl stop \
         handshake`, or SIGTERM to the process `pgrep -a handshake` lists; its program goes with \
         it), or give this daemon another --iface. Another tool's program, attached without a \
         link, is removed with `ip link set dev {iface} xdp off`",
        .waited.as_secs_f64()
    )]
    Busy {
        /// The interface.
        iface: String,
        /// How many times we tried.
        attempts: u32,
        /// How long we waited between the first attempt and the last.
        waited: Duration,
    },
    /// Attaching failed for another reason.
    #[error("cannot attach XDP to {iface} in {mode} mode: {}; try skb mode", chain(source.as_ref()))]
    Attach {
        /// The interface.
        iface: String,
        /// The mode tried last.
        mode: AttachedMode,
        /// Why.
        #[source]
        source: Box<ProgramError>,
    },
    /// Reading or writing a map failed.
    #[error("eBPF map {map}: {}", chain(source.as_ref()))]
    Map {
        /// The map's name.
        map: &'static str,
        /// Why.
        #[source]
        source: Box<MapError>,
    },
    /// A configuration value is out of the range the program supports.
    #[error("{what}: {value} is out of range (at most {max})")]
    OutOfRange {
        /// What was being set.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The ephemeral port range is empty.
    #[error("ephemeral port range {lo}..={hi} is empty: the first port must not exceed the last (use 0..=0 to disable)")]
    BadRange {
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
    /// Detaching failed.
    #[error("cannot detach XDP from {iface}: {}; remove it with `ip link set dev {iface} xdp off`", chain(source.as_ref()))]
    Detach {
        /// The interface.
        iface: String,
        /// Why.
        #[source]
        source: Box<ProgramError>,
    },
}

/// Which XDP mode to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to skb (generic) mode with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only: the fast path, and the only one with real per-queue RX.
    Native,
    /// Generic mode: works on any interface, reports every frame on queue 0, costs an skb.
    Skb,
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "drv" | "driver" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            other => Err(format!(
                "unknown XDP mode {other:?}: use auto, native or skb"
            )),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// The XDP mode the program is actually attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachedMode {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl AttachedMode {
    fn flags(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// Loads and attaches the XDP program. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct XdpLoader {
    object: PathBuf,
    mode: AttachMode,
    busy_attempts: u32,
    busy_wait: Duration,
}

impl XdpLoader {
    /// A loader for the object at `object` (see [`XdpLoader::default_object`]), in
    /// [`AttachMode::Auto`], retrying up to 20 times 100 ms apart while the interface is busy.
    pub fn new(object: impl Into<PathBuf>) -> Self {
        Self {
            object: object.into(),
            mode: AttachMode::Auto,
            busy_attempts: 20,
            busy_wait: Duration::from_millis(100),
        }
    }

    /// Where the object is by default: `$HANDSHAKE_BPF_OBJECT` if set; otherwise
    /// `<exe dir>/../bpf/handshake-xdp.o` (the daemon in `target/release/`), or
    /// `<exe dir>/../../bpf/handshake-xdp.o` (test binaries in `target/debug/deps/`), whichever
    /// exists, preferring the first.
    pub fn default_object() -> PathBuf {
        if let Some(path) = std::env::var_os(OBJECT_ENV) {
            return PathBuf::from(path);
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let candidates = [
            exe_dir.join("../bpf").join(OBJECT_FILE),
            exe_dir.join("../../bpf").join(OBJECT_FILE),
        ];
        candidates
            .iter()
            .find(|path| path.is_file())
            .unwrap_or(&candidates[0])
            .clone()
    }

    /// Which XDP mode to ask for.
    pub fn mode(mut self, mode: AttachMode) -> Self {
        self.mode = mode;
        self
    }

    /// How often (at least once) and how far apart to retry while another XDP program is still
    /// attached to the interface (`EBUSY`, e.g. a previous daemon's link being torn down).
    pub fn busy_retry(mut self, attempts: u32, wait: Duration) -> Self {
        self.busy_attempts = attempts.max(1);
        self.busy_wait = wait;
        self
    }

    /// Loads the object, attaches its program to `iface` and takes its maps.
    pub fn attach(&self, iface: &str) -> Result<XdpProgram, LoaderError> {
        if iface.is_empty() || iface.len() > IFNAME_MAX || iface.contains(['\0', '/']) {
            return Err(LoaderError::InterfaceNotFound {
                name: iface.to_owned(),
            });
        }
        if !self.object.is_file() {
            return Err(LoaderError::ObjectNotFound {
                path: self.object.clone(),
            });
        }
        let mut ebpf = EbpfLoader::new()
            .load_file(&self.object)
            .map_err(|e| match errno(&e) {
                Some(libc::EPERM) | Some(libc::EACCES) => LoaderError::Permission {
                    action: "creating eBPF maps",
                    source: io::Error::from_raw_os_error(errno(&e).unwrap_or(libc::EPERM)),
                },
                _ => LoaderError::Load {
                    path: self.object.clone(),
                    source: Box::new(e),
                },
            })?;
        let program = program_mut(&mut ebpf)?;
        program.load().map_err(|e| match errno(&e) {
            Some(libc::EPERM) | Some(libc::EACCES) if !is_verifier_rejection(&e) => {
                LoaderError::Permission {
                    action: "loading the XDP program",
                    source: io::Error::from_raw_os_error(libc::EPERM),
                }
            }
            _ => LoaderError::Verify {
                source: Box::new(e),
            },
        })?;

        let (link, mode) = match self.mode {
            AttachMode::Native => (
                self.attach_in(program, iface, AttachedMode::Native)?,
                AttachedMode::Native,
            ),
            AttachMode::Skb => (
                self.attach_in(program, iface, AttachedMode::Skb)?,
                AttachedMode::Skb,
            ),
            AttachMode::Auto => match self.attach_in(program, iface, AttachedMode::Native) {
                Ok(link) => (link, AttachedMode::Native),
                Err(
                    e @ (LoaderError::Permission { .. }
                    | LoaderError::InterfaceNotFound { .. }
                    | LoaderError::Busy { .. }),
                ) => return Err(e),
                Err(e) => {
                    tracing::warn!("XDP attach failed in native mode ({e}); retrying in skb mode");
                    (
                        self.attach_in(program, iface, AttachedMode::Skb)?,
                        AttachedMode::Skb,
                    )
                }
            },
        };
        tracing::info!(iface, %mode, object = %self.object.display(), "XDP program attached");

        let addrs =
            HashMap::try_from(take_map(&mut ebpf, maps::ADDRS)?).map_err(map_err(maps::ADDRS))?;
        let ports =
            HashMap::try_from(take_map(&mut ebpf, maps::PORTS)?).map_err(map_err(maps::PORTS))?;
        let config =
            Array::try_from(take_map(&mut ebpf, maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        let xsks =
            XskMap::try_from(take_map(&mut ebpf, maps::XSKS)?).map_err(map_err(maps::XSKS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        let queue_rx = PerCpuArray::try_from(take_map(&mut ebpf, maps::QUEUE_RX)?)
            .map_err(map_err(maps::QUEUE_RX))?;

        Ok(XdpProgram {
            ebpf,
            link: Some(link),
            iface: iface.to_owned(),
            mode,
            addrs,
            ports,
            config,
            xsks,
            counters,
            queue_rx,
        })
    }

    /// Attaches in one mode, retrying while the interface is busy.
    fn attach_in(
        &self,
        program: &mut Xdp,
        iface: &str,
        mode: AttachedMode,
    ) -> Result<XdpLinkId, LoaderError> {
        let mut attempt = 1;
        loop {
            match program.attach(iface, mode.flags()) {
                Ok(link) => return Ok(link),
                Err(ProgramError::UnknownInterface { name }) => {
                    return Err(LoaderError::InterfaceNotFound { name });
                }
                Err(e) => match errno(&e) {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        return Err(LoaderError::Permission {
                            action: "attaching an XDP program",
                            source: io::Error::from_raw_os_error(libc::EPERM),
                        });
                    }
                    Some(libc::EBUSY) | Some(libc::EEXIST) if attempt < self.busy_attempts => {
                        tracing::debug!(
                            iface,
                            attempt,
                            "interface busy with another XDP program; retrying"
                        );
                        attempt += 1;
                        std::thread::sleep(self.busy_wait);
                    }
                    Some(libc::EBUSY) | Some(libc::EEXIST) => {
                        return Err(LoaderError::Busy {
                            iface: iface.to_owned(),
                            attempts: attempt,
                            waited: self.busy_wait * (attempt - 1),
                        });
                    }
                    _ => {
                        return Err(LoaderError::Attach {
                            iface: iface.to_owned(),
                            mode,
                            source: Box::new(e),
                        });
                    }
                },
            }
        }
    }
}

/// The XDP program, attached to an interface, with its maps. Detaches on drop.
pub struct XdpProgram {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    iface: String,
    mode: AttachedMode,
    addrs: HashMap<MapData, u32, u8>,
    ports: HashMap<MapData, u16, u8>,
    config: Array<MapData, u32>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    queue_rx: PerCpuArray<MapData, u64>,
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("attached", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// The mode the program got attached in.
    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// The interface it is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether it is still attached.
    pub fn is_attached(&self) -> bool {
        self.link.is_some()
    }

    /// Replaces the set of IPv4 addresses the engine owns (at most
    /// [`MAX_ADDRS`](handshake_common::MAX_ADDRS)).
    pub fn set_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<(), LoaderError> {
        check_len("owned addresses", addrs.len(), MAX_ADDRS)?;
        let keys: Vec<u32> = addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        replace_keys(&mut self.addrs, maps::ADDRS, &keys)
    }

    /// Replaces the set of listening TCP ports (at most [`MAX_PORTS`](handshake_common::MAX_PORTS)).
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), LoaderError> {
        check_len("listening ports", ports.len(), MAX_PORTS)?;
        replace_keys(&mut self.ports, maps::PORTS, ports)
    }

    /// Sets the engine's ephemeral port range, inclusive; TCP to it is steered to the engine.
    /// `(0, 0)` disables it.
    pub fn set_ephemeral(&mut self, lo: u16, hi: u16) -> Result<(), LoaderError> {
        if lo > hi {
            return Err(LoaderError::BadRange { lo, hi });
        }
        self.set_config(config::EPHEMERAL_LO, u32::from(lo))?;
        self.set_config(config::EPHEMERAL_HI, u32::from(hi))
    }

    /// Sets the [`flags`](handshake_common::flags) (`ALL_TCP`, `UDP`).
    pub fn set_flags(&mut self, flags: u32) -> Result<(), LoaderError> {
        self.set_config(config::FLAGS, flags)
    }

    /// Puts the AF_XDP socket `fd` bound to `queue` into the XskMap: from now on the frames we own
    /// that arrive on `queue` go to it.
    pub fn register_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), LoaderError> {
        check_queue(queue)?;
        self.xsks.set(queue, fd, 0).map_err(map_err(maps::XSKS))
    }

    /// Removes the socket of `queue`: frames we own on it go to the kernel again (`no_socket`).
    pub fn unregister_socket(&mut self, queue: u32) -> Result<(), LoaderError> {
        check_queue(queue)?;
        match self.xsks.unset(queue) {
            // Not there: nothing to do.
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(map_err(maps::XSKS)),
        }
    }

    /// The counters of [`handshake_common::counter`], summed over CPUs. A read error is logged
    /// and reads as zero.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0; counter::COUNT as usize];
        for (index, slot) in (0..counter::COUNT).zip(out.iter_mut()) {
            *slot = sum_per_cpu(&self.counters, index);
        }
        out
    }

    /// Frames redirected per RX queue, for the first `n` queues (at most
    /// [`MAX_QUEUES`](handshake_common::MAX_QUEUES)), summed over CPUs.
    pub fn queue_counters(&self, n: u32) -> Vec<u64> {
        (0..n.min(MAX_QUEUES))
            .map(|queue| sum_per_cpu(&self.queue_rx, queue))
            .collect()
    }

    /// Detaches the program from the interface. Idempotent; also done on drop.
    pub fn detach(&mut self) -> Result<(), LoaderError> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let program = program_mut(&mut self.ebpf)?;
        program.detach(link).map_err(|e| LoaderError::Detach {
            iface: self.iface.clone(),
            source: Box::new(e),
        })?;
        tracing::info!(iface = %self.iface, "XDP program detached");
        Ok(())
    }

    fn set_config(&mut self, index: u32, value: u32) -> Result<(), LoaderError> {
        self.config
            .set(index, value, 0)
            .map_err(map_err(maps::CONFIG))
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!("{e}");
        }
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoaderError> {
    let missing = LoaderError::Missing {
        kind: "program",
        name: PROGRAM,
    };
    match ebpf.program_mut(PROGRAM) {
        Some(program) => program.try_into().map_err(|_| missing),
        None => Err(missing),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoaderError> {
    ebpf.take_map(name)
        .ok_or(LoaderError::Missing { kind: "map", name })
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> LoaderError {
    move |e| LoaderError::Map {
        map,
        source: Box::new(e),
    }
}

fn check_len(what: &'static str, len: usize, max: u32) -> Result<(), LoaderError> {
    if len > max as usize {
        return Err(LoaderError::OutOfRange {
            what,
            value: len as u64,
            max: u64::from(max),
        });
    }
    Ok(())
}

fn check_queue(queue: u32) -> Result<(), LoaderError> {
    if queue >= MAX_QUEUES {
        return Err(LoaderError::OutOfRange {
            what: "queue index",
            value: u64::from(queue),
            max: u64::from(MAX_QUEUES - 1),
        });
    }
    Ok(())
}

/// Makes the map's key set exactly `keys`: removes the others, then inserts the new ones.
fn replace_keys<K: aya::Pod + Eq>(
    map: &mut HashMap<MapData, K, u8>,
    name: &'static str,
    keys: &[K],
) -> Result<(), LoaderError> {
    let present: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for old in present.iter().filter(|k| !keys.contains(k)) {
        map.remove(old).map_err(map_err(name))?;
    }
    for key in keys {
        map.insert(key, 1, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn sum_per_cpu(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    match map.get(&index, 0) {
        Ok(values) => values.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)),
        Err(e) => {
            tracing::warn!("reading XDP counter {index}: {e}");
            0
        }
    }
}

/// An error and its sources, `: `-separated (aya's syscall errors keep the errno in the source).
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

/// The OS error number anywhere in an error's source chain.
fn errno(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        current = e.source();
    }
    None
}

/// `BPF_PROG_LOAD` answers `EACCES` both for missing privileges and for a verifier rejection;
/// only the latter comes with a verifier log.
fn is_verifier_rejection(error: &ProgramError) -> bool {
    match error {
        ProgramError::LoadError { verifier_log, .. } => !verifier_log.to_string().trim().is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_object_says_how_to_build_it() {
        let err = XdpLoader::new("/nonexistent/handshake-xdp.o")
            .attach("lo")
            .unwrap_err();
        assert!(matches!(err, LoaderError::ObjectNotFound { .. }));
        assert_eq!(
            err.to_string(),
            "eBPF object not found at /nonexistent/handshake-xdp.o: run `cargo xtask build-ebpf` \
             (or set HANDSHAKE_BPF_OBJECT)"
        );
    }

    #[test]
    fn bad_interface_names_are_rejected_before_any_syscall() {
        for name in ["", "a-name-longer-than-15", "nul\0", "a/b"] {
            let err = XdpLoader::new("/nonexistent").attach(name).unwrap_err();
            assert!(
                matches!(err, LoaderError::InterfaceNotFound { .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn modes_parse_and_print() {
        for (text, mode) in [
            ("auto", AttachMode::Auto),
            ("native", AttachMode::Native),
            ("skb", AttachMode::Skb),
        ] {
            assert_eq!(text.parse::<AttachMode>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert!("fast"
            .parse::<AttachMode>()
            .unwrap_err()
            .contains("auto, native or skb"));
    }

    #[test]
    fn errno_walks_the_source_chain() {
        let err = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::EBUSY),
        });
        assert_eq!(errno(&err), Some(libc::EBUSY));
        let plain = io::Error::other("no errno");
        assert_eq!(errno(&plain), None);
    }
}
