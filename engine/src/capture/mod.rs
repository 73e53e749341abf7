//! Packet capture (`--pcap FILE`): what the engine receives and sends, as pcapng, written off the
//! fast path.
//!
//! Each worker's device is wrapped in a [`Tap`]. While capture is off (no `--pcap`, or paused
//! with SIGUSR1) the tap costs one predictable branch per batch and nothing per packet. While on,
//! the tap matches each frame against the [`filter::Filter`] and copies it into a buffer taken
//! from its queue's ring of preallocated buffers (no allocation: the buffers travel between the
//! worker and the writer thread over two bounded channels, never blocking: `try_recv` /
//! `try_send` only, and the writer never parks on them, so the worker never wakes it with a
//! syscall). When no buffer is free the frame is not captured and
//! `handshake_capture_dropped_total` counts it. A writer thread (`hs-pcap`) writes the buffers
//! to the file and hands them back; it rotates the file at `max_mb` (FILE → FILE.1 → …, `files`
//! kept in all).

pub mod filter;
pub mod pcapng;

use crate::device::{Device, Verdict};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use filter::Filter;
use pcapng::Direction;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer sleeps when every ring is empty.
const WRITER_IDLE: Duration = Duration::from_millis(2);

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The file (FILE; older ones FILE.1, FILE.2, …).
    pub path: PathBuf,
    /// Which frames.
    pub filter: Filter,
    /// Rotate when a file would exceed this many bytes (0: never).
    pub max_bytes: u64,
    /// Files kept in all, FILE included (at least 1).
    pub files: u32,
    /// Buffers per queue.
    pub ring: usize,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Interface names for the pcapng interface blocks, one per queue.
    pub ifaces: Vec<String>,
    /// Start with capture on.
    pub start_on: bool,
}

/// Why capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be created.
    #[error("cannot create the capture file {path}: {source}: check the directory exists and is writable (--pcap FILE)")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread could not start.
    #[error("cannot start the capture writer thread: {0}")]
    Thread(std::io::Error),
}

/// A captured frame in a preallocated buffer.
#[derive(Debug)]
pub struct Buf {
    data: Vec<u8>,
    orig_len: u32,
    ts_us: u64,
    dir: Direction,
}

/// A worker's end of its capture ring.
#[derive(Debug)]
pub struct Ring {
    free: Receiver<Buf>,
    full: Sender<Buf>,
    filter: Arc<Filter>,
    snaplen: usize,
    frames: u64,
    dropped: u64,
}

impl Ring {
    /// Copies `frame` into a free buffer, if it passes the filter and a buffer is free.
    #[inline]
    fn capture(&mut self, ts_us: u64, frame: &[u8], dir: Direction) {
        if !self.filter.matches(frame) {
            return;
        }
        let Ok(mut b) = self.free.try_recv() else {
            self.dropped += 1;
            return;
        };
        b.data.clear();
        // Capacity is `snaplen`: never reallocates.
        b.data
            .extend_from_slice(&frame[..frame.len().min(self.snaplen)]);
        b.orig_len = frame.len() as u32;
        b.ts_us = ts_us;
        b.dir = dir;
        match self.full.try_send(b) {
            Ok(()) => self.frames += 1,
            // The full channel holds every buffer: it cannot be full; gone if the writer died.
            Err(_) => self.dropped += 1,
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A device wrapped with an optional capture ring (see the module documentation).
#[derive(Debug)]
pub struct Tap<D> {
    inner: D,
    ring: Option<Ring>,
    on: Arc<AtomicBool>,
}

impl<D> Tap<D> {
    /// Wraps `inner`; frames are captured into `ring` while `on` is set.
    pub fn new(inner: D, ring: Option<Ring>, on: Arc<AtomicBool>) -> Self {
        Tap { inner, ring, on }
    }
    /// A tap that never captures.
    pub fn off(inner: D) -> Self {
        Self::new(inner, None, Arc::new(AtomicBool::new(false)))
    }
    /// The device.
    pub fn inner(&self) -> &D {
        &self.inner
    }
    /// The device.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }
    /// Frames captured and frames not captured for want of a buffer.
    pub fn counters(&self) -> (u64, u64) {
        self.ring.as_ref().map_or((0, 0), |r| (r.frames, r.dropped))
    }
}

impl<D: Device> Device for Tap<D> {
    fn frame_capacity(&self) -> usize {
        self.inner.frame_capacity()
    }

    fn receive<F>(&mut self, max: usize, mut handle: F) -> usize
    where
        F: FnMut(&mut [u8], usize) -> Verdict,
    {
        // One branch per batch: off, the device runs exactly as without a tap.
        let ring = match &mut self.ring {
            Some(r) if self.on.load(Ordering::Relaxed) => r,
            _ => return self.inner.receive(max, handle),
        };
        let ts = now_us();
        self.inner.receive(max, |frame, len| {
            let len = len.min(frame.len());
            ring.capture(ts, &frame[..len], Direction::In);
            let v = handle(frame, len);
            if let Verdict::Transmit(n) = v {
                if n > 0 && n <= frame.len() {
                    ring.capture(ts, &frame[..n], Direction::Out);
                }
            }
            v
        })
    }

    fn transmit<F>(&mut self, max: usize, mut fill: F) -> usize
    where
        F: FnMut(&mut [u8]) -> Option<usize>,
    {
        let ring = match &mut self.ring {
            Some(r) if self.on.load(Ordering::Relaxed) => r,
            _ => return self.inner.transmit(max, fill),
        };
        let ts = now_us();
        self.inner.transmit(max, |buf| {
            let r = fill(buf);
            if let Some(n) = r {
                if n > 0 && n <= buf.len() {
                    ring.capture(ts, &buf[..n], Direction::Out);
                }
            }
            r
        })
    }

    fn flush(&mut self) {
        self.inner.flush();
    }
}

/// The writer's end of one queue's ring.
struct Queue {
    full: Receiver<Buf>,
    free: Sender<Buf>,
    gone: bool,
}

/// What the writer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frames written.
    pub frames: u64,
    /// Files started (1 + rotations).
    pub files: u64,
    /// Write errors (the capture stopped writing at the first).
    pub errors: u64,
}

/// The running capture: the on/off switch and the writer thread.
#[derive(Debug)]
pub struct Capture {
    on: Arc<AtomicBool>,
    path: PathBuf,
    handle: JoinHandle<WriterStats>,
}

impl Capture {
    /// Creates the file, preallocates `ring` buffers per queue, starts the writer; returns the
    /// capture and one [`Ring`] per queue (in `ifaces` order).
    pub fn start(s: Settings) -> Result<(Capture, Vec<Ring>), CaptureError> {
        let header = pcapng::header(&s.ifaces, s.snaplen as u32);
        let out = Output::create(&s, header)?;
        let filter = Arc::new(s.filter.clone());
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for _ in &s.ifaces {
            let (free_tx, free_rx) = crossbeam_channel::bounded(s.ring);
            let (full_tx, full_rx) = crossbeam_channel::bounded(s.ring);
            for _ in 0..s.ring {
                let b = Buf {
                    data: Vec::with_capacity(s.snaplen),
                    orig_len: 0,
                    ts_us: 0,
                    dir: Direction::In,
                };
                free_tx.try_send(b).expect("room for every buffer");
            }
            rings.push(Ring {
                free: free_rx,
                full: full_tx,
                filter: Arc::clone(&filter),
                snaplen: s.snaplen,
                frames: 0,
                dropped: 0,
            });
            queues.push(Queue {
                full: full_rx,
                free: free_tx,
                gone: false,
            });
        }
        let on = Arc::new(AtomicBool::new(s.start_on));
        let handle = std::thread::Builder::new()
            .name("hs-pcap".into())
            .spawn(move || write_loop(queues, out))
            .map_err(CaptureError::Thread)?;
        Ok((
            Capture {
                on,
                path: s.path,
                handle,
            },
            rings,
        ))
    }

    /// The switch the taps read.
    pub fn switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.on)
    }

    /// Turns capture on or off; returns the new state.
    pub fn toggle(&self) -> bool {
        !self.on.fetch_xor(true, Ordering::Relaxed)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the writer to drain and close the file; call once every [`Ring`] is dropped
    /// (the workers stopped).
    pub fn finish(self) -> WriterStats {
        self.handle.join().unwrap_or_default()
    }
}

/// The file being written, with rotation.
struct Output {
    path: PathBuf,
    file: BufWriter<std::fs::File>,
    written: u64,
    max: u64,
    files: u32,
    header: Vec<u8>,
    stats: WriterStats,
    failed: bool,
}

impl Output {
    fn create(s: &Settings, header: Vec<u8>) -> Result<Output, CaptureError> {
        let file = Self::open(&s.path, &header).map_err(|source| CaptureError::Create {
            path: s.path.clone(),
            source,
        })?;
        Ok(Output {
            path: s.path.clone(),
            file,
            written: header.len() as u64,
            max: s.max_bytes,
            files: s.files.max(1),
            header,
            stats: WriterStats {
                files: 1,
                ..Default::default()
            },
            failed: false,
        })
    }

    fn open(path: &Path, header: &[u8]) -> std::io::Result<BufWriter<std::fs::File>> {
        let mut f = BufWriter::with_capacity(256 << 10, std::fs::File::create(path)?);
        f.write_all(header)?;
        Ok(f)
    }

    fn numbered(&self, i: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.files > 1 {
            for i in (1..self.files - 1).rev() {
                let _ = std::fs::rename(self.numbered(i), self.numbered(i + 1));
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.file = Self::open(&self.path, &self.header)?;
        self.written = self.header.len() as u64;
        self.stats.files += 1;
        Ok(())
    }

    fn write(&mut self, iface: u32, b: &Buf) {
        if self.failed {
            return;
        }
        let need = pcapng::packet_len(b.data.len()) as u64;
        let r = (|| {
            if self.max > 0
                && self.written + need > self.max
                && self.written > self.header.len() as u64
            {
                self.rotate()?;
            }
            pcapng::write_packet(&mut self.file, iface, b.ts_us, &b.data, b.orig_len, b.dir)
        })();
        match r {
            Ok(()) => {
                self.written += need;
                self.stats.frames += 1;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "capture stopped: {e}");
                self.stats.errors += 1;
                self.failed = true;
            }
        }
    }
}

fn write_loop(mut queues: Vec<Queue>, mut out: Output) -> WriterStats {
    loop {
        let mut got = 0;
        for (i, q) in queues.iter_mut().enumerate() {
            for _ in 0..256 {
                match q.full.try_recv() {
                    Ok(b) => {
                        out.write(i as u32, &b);
                        // Back to its worker (gone at shutdown: then dropped).
                        let _ = q.free.try_send(b);
                        got += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        q.gone = true;
                        break;
                    }
                }
            }
        }
        if queues.iter().all(|q| q.gone) {
            break;
        }
        if got == 0 {
            if !out.failed && out.file.flush().is_err() {
                out.stats.errors += 1;
                out.failed = true;
            }
            std::thread::sleep(WRITER_IDLE);
        }
    }
    if out.file.flush().is_err() {
        out.stats.errors += 1;
    }
    out.stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::mem::MemDevice;

    fn settings(dir: &Path, name: &str, filter: &str, ring: usize) -> Settings {
        Settings {
            path: dir.join(name),
            filter: Filter::parse(filter).unwrap(),
            max_bytes: 0,
            files: 1,
            ring,
            snaplen: 1518,
            ifaces: vec!["t q0".into()],
            start_on: true,
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hs-capture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Blocks of a pcapng file: (type, body).
    fn blocks(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let t = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let n = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            assert_eq!(
                bytes[at + n - 4..at + n],
                bytes[at + 4..at + 8],
                "trailing length"
            );
            v.push((t, bytes[at + 8..at + n - 4].to_vec()));
            at += n;
        }
        assert_eq!(at, bytes.len());
        v
    }

    /// Frames through a tap: in-place replies and originated frames are captured as outbound,
    /// received frames as inbound, in order; off captures nothing; the file is pcapng.
    #[test]
    fn tap_captures_both_directions_and_toggles() {
        let dir = tmpdir("tap");
        let (cap, mut rings) = Capture::start(settings(&dir, "a.pcapng", "", 64)).unwrap();
        let mut tap = Tap::new(MemDevice::new(2048), rings.pop(), cap.switch());
        tap.inner_mut().inject(&[1u8; 60]);
        tap.inner_mut().inject(&[2u8; 61]);
        // The first is answered in place (4 bytes changed), the second dropped.
        tap.receive(64, |f, len| {
            if f[0] == 1 {
                f[..4].copy_from_slice(&[9, 9, 9, 9]);
                Verdict::Transmit(len)
            } else {
                Verdict::Drop
            }
        });
        let mut sent = false;
        tap.transmit(64, |b| {
            if sent {
                return None;
            }
            sent = true;
            b[..42].fill(3);
            Some(42)
        });
        assert!(!cap.toggle(), "now off");
        tap.inner_mut().inject(&[4u8; 60]);
        tap.receive(64, |_, _| Verdict::Drop);
        assert!(cap.toggle(), "on again");
        tap.inner_mut().inject(&[5u8; 70]);
        tap.receive(64, |_, _| Verdict::Drop);
        assert_eq!(tap.counters(), (5, 0));
        drop(tap);
        let st = cap.finish();
        assert_eq!(
            st,
            WriterStats {
                frames: 5,
                files: 1,
                errors: 0
            }
        );
        let bytes = std::fs::read(dir.join("a.pcapng")).unwrap();
        let b = blocks(&bytes);
        assert_eq!(
            b.iter().map(|x| x.0).collect::<Vec<_>>(),
            [0x0A0D0D0A, 1, 6, 6, 6, 6, 6]
        );
        let epb: Vec<(u8, u32, u32)> = b[2..]
            .iter()
            .map(|(_, body)| {
                let cap_len = u32::from_le_bytes(body[12..16].try_into().unwrap());
                let flags_at = 20 + cap_len.div_ceil(4) as usize * 4 + 4;
                (
                    body[20],
                    cap_len,
                    u32::from_le_bytes(body[flags_at..flags_at + 4].try_into().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            epb,
            [(1, 60, 1), (9, 60, 2), (2, 61, 1), (3, 42, 2), (5, 70, 1)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A full ring drops and counts, never blocks; the filter applies before a buffer is taken.
    #[test]
    fn full_ring_drops_are_counted_and_filter_applies() {
        let dir = tmpdir("full");
        let (cap, mut rings) = Capture::start(settings(&dir, "b.pcapng", "icmp", 2)).unwrap();
        let mut ring = rings.pop().unwrap();
        // Stop the writer from draining: hold the buffers by taking them all first.
        let held: Vec<Buf> = (0..2).map(|_| ring.free.try_recv().unwrap()).collect();
        let mut ping = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut ping, b"x")
            .unwrap();
        ring.capture(1, &ping, Direction::In);
        ring.capture(1, &[0u8; 60], Direction::In); // not ICMP: filtered, not a drop
        assert_eq!((ring.frames, ring.dropped), (0, 1));
        drop(held);
        drop(ring);
        assert_eq!(cap.finish().frames, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Rotation at the size cap keeps `files` files: FILE, FILE.1, FILE.2.
    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tmpdir("rot");
        let mut s = settings(&dir, "c.pcapng", "", 16);
        let header = pcapng::header(&s.ifaces, s.snaplen as u32).len() as u64;
        let per = pcapng::packet_len(100) as u64;
        s.max_bytes = header + 3 * per; // three frames per file
        s.files = 3;
        let (cap, mut rings) = Capture::start(s).unwrap();
        let mut ring = rings.pop().unwrap();
        for i in 0..10u8 {
            ring.capture(u64::from(i), &[i; 100], Direction::In);
            // Let the writer keep up (16 buffers).
            while ring.free.len() < 8 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(ring);
        let st = cap.finish();
        assert_eq!(st.frames, 10);
        assert_eq!(st.files, 4, "3 + 3 + 3 + 1");
        let first_byte = |p: PathBuf| -> Vec<u8> {
            let bytes = std::fs::read(&p).unwrap();
            assert!(bytes.len() as u64 <= header + 3 * per, "{}", p.display());
            blocks(&bytes)[2..].iter().map(|(_, b)| b[20]).collect()
        };
        assert_eq!(first_byte(dir.join("c.pcapng")), [9]);
        assert_eq!(first_byte(dir.join("c.pcapng.1")), [6, 7, 8]);
        assert_eq!(first_byte(dir.join("c.pcapng.2")), [3, 4, 5]);
        assert!(!dir.join("c.pcapng.3").exists(), "frames 0..3 rotated out");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_file_says_what_to_do() {
        let s = settings(Path::new("/nonexistent-dir-hs"), "x.pcapng", "", 1);
        let e = Capture::start(s).unwrap_err();
        assert!(e.to_string().contains("--pcap FILE"), "{e}");
    }
}
