//! One in-memory frame device for both stacks: the same buffers, the same recycling, the same copy
//! on injection, so the device costs the same whichever stack runs on it.
//!
//! It implements our [`handshake::device::Device`] (frames lent in place, replies transmitted
//! without a copy, as `MemDevice` does) and smoltcp's `phy::Device` (RX/TX tokens over the same
//! queues). Unlike `MemDevice`, the client can read transmitted frames without allocating.

use handshake::device::{Device, Verdict};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use std::cell::RefCell;
use std::collections::VecDeque;

/// Frame buffer size.
pub const FRAME: usize = 2048;

/// A frame queue pair with a free list.
pub struct Frames {
    rx: VecDeque<(Box<[u8]>, usize)>,
    tx: VecDeque<(Box<[u8]>, usize)>,
    /// Shared by smoltcp's RX and TX tokens, which are alive at the same time.
    free: RefCell<Vec<Box<[u8]>>>,
}

fn fresh() -> Box<[u8]> {
    vec![0u8; FRAME].into_boxed_slice()
}

impl Frames {
    /// A device with `prealloc` buffers ready.
    pub fn new(prealloc: usize) -> Self {
        Frames {
            rx: VecDeque::with_capacity(1024),
            tx: VecDeque::with_capacity(1024),
            free: RefCell::new((0..prealloc).map(|_| fresh()).collect()),
        }
    }

    /// Queues a copy of `frame` for the stack to receive.
    #[inline]
    pub fn inject(&mut self, frame: &[u8]) {
        let mut buf = self.free.get_mut().pop().unwrap_or_else(fresh);
        buf[..frame.len()].copy_from_slice(frame);
        self.rx.push_back((buf, frame.len()));
    }

    /// Frames waiting to be received.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Lends every transmitted frame to `f`, oldest first, and recycles it. Returns the count.
    #[inline]
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some((buf, len)) = self.tx.pop_front() {
            f(&buf[..len]);
            self.free.get_mut().push(buf);
            n += 1;
        }
        n
    }

    /// Recycles every transmitted frame unread. Returns the count.
    pub fn discard(&mut self) -> usize {
        self.drain(|_| {})
    }
}

impl Device for Frames {
    fn frame_capacity(&self) -> usize {
        FRAME
    }

    fn receive<F>(&mut self, max: usize, mut handle: F) -> usize
    where
        F: FnMut(&mut [u8], usize) -> Verdict,
    {
        let mut n = 0;
        while n < max {
            let Some((mut buf, len)) = self.rx.pop_front() else {
                break;
            };
            n += 1;
            match handle(&mut buf, len) {
                Verdict::Drop => self.free.get_mut().push(buf),
                Verdict::Transmit(len) => {
                    let len = len.min(FRAME);
                    self.tx.push_back((buf, len));
                }
            }
        }
        n
    }

    fn transmit<F>(&mut self, max: usize, mut fill: F) -> usize
    where
        F: FnMut(&mut [u8]) -> Option<usize>,
    {
        let mut n = 0;
        while n < max {
            let mut buf = self.free.get_mut().pop().unwrap_or_else(fresh);
            match fill(&mut buf) {
                Some(len) => {
                    let len = len.min(FRAME);
                    self.tx.push_back((buf, len));
                    n += 1;
                }
                None => {
                    self.free.get_mut().push(buf);
                    break;
                }
            }
        }
        n
    }
}

/// smoltcp's receive token: the frame, returned to the free list once consumed.
pub struct Rx<'a> {
    buf: Box<[u8]>,
    len: usize,
    free: &'a RefCell<Vec<Box<[u8]>>>,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.buf[..self.len]);
        self.free.borrow_mut().push(self.buf);
        r
    }
}

/// smoltcp's transmit token: takes a free buffer, queues it for the client.
pub struct Tx<'a> {
    tx: &'a mut VecDeque<(Box<[u8]>, usize)>,
    free: &'a RefCell<Vec<Box<[u8]>>>,
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.free.borrow_mut().pop().unwrap_or_else(fresh);
        let r = f(&mut buf[..len]);
        self.tx.push_back((buf, len));
        r
    }
}

impl phy::Device for Frames {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (buf, len) = self.rx.pop_front()?;
        let free = &self.free;
        Some((
            Rx { buf, len, free },
            Tx {
                tx: &mut self.tx,
                free,
            },
        ))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx {
            tx: &mut self.tx,
            free: &self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp counts the Ethernet header in the MTU: 1500 bytes of IP, as our stack.
        caps.max_transmission_unit = 1514;
        // Verify every received checksum and fill every sent one, as our stack does.
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}
