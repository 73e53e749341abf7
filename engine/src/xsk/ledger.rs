//! Frame accounting: where every UMEM frame is, at every moment.
//!
//! A UMEM frame is always in exactly one [`Location`]. The ledger keeps one counter per location
//! (their sum is always the frame count) and a one-byte state per frame, so that a descriptor the
//! kernel hands back can be checked ("is this frame really ours to receive?") and so that every
//! transition the port makes is asserted in debug builds: a frame never appears twice and never
//! vanishes. [`FrameLedger::check`] recounts everything and reports any discrepancy, in release
//! builds too.

use core::fmt;

/// Where a frame is.
///
/// The port only sees the rings from the user side, so a frame the kernel has posted on the RX
/// ring but the port has not read yet is still [`Location::Fill`], and a frame the kernel has
/// sent and posted on the completion ring but the port has not reaped yet is still
/// [`Location::Tx`]. [`Location::Rx`], [`Location::Stack`] and [`Location::Completion`] only hold
/// frames while the port is inside `receive`/`transmit`/`flush`; between calls they are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Location {
    /// On the port's free list, owned by user space, available for the fill ring or transmission.
    Free = 0,
    /// Handed to the kernel for reception: in the fill ring, being written, or posted on the RX
    /// ring and not yet read.
    Fill = 1,
    /// Read from the RX ring into the current batch, not yet lent to the stack.
    Rx = 2,
    /// Lent to the stack during a batch.
    Stack = 3,
    /// Handed to the kernel for transmission: in the TX ring, being sent, or posted on the
    /// completion ring and not yet reaped.
    Tx = 4,
    /// Reaped from the completion ring into the current batch, not yet back on the free list.
    Completion = 5,
}

impl Location {
    /// Every location, in index order.
    pub const ALL: [Location; 6] = [
        Location::Free,
        Location::Fill,
        Location::Rx,
        Location::Stack,
        Location::Tx,
        Location::Completion,
    ];

    /// A short snake_case label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Location::Free => "free",
            Location::Fill => "fill",
            Location::Rx => "rx",
            Location::Stack => "stack",
            Location::Tx => "tx",
            Location::Completion => "completion",
        }
    }

    fn from_u8(v: u8) -> Option<Location> {
        Location::ALL.get(usize::from(v)).copied()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A discrepancy found by [`FrameLedger::check`] or `Port::check`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The per-location counters do not add up to the frame count.
    #[error(
        "frame ledger: counters add up to {sum} frames but the UMEM has {frame_count}; \
         a frame was lost or counted twice (this is a bug in the AF_XDP port, please report it)"
    )]
    SumMismatch {
        /// Sum of the counters.
        sum: u64,
        /// Frames in the UMEM.
        frame_count: u32,
    },
    /// A counter disagrees with the per-frame states.
    #[error(
        "frame ledger: counter for `{location}` says {counted} frames but {actual} frames are \
         in that state (this is a bug in the AF_XDP port, please report it)"
    )]
    CountMismatch {
        /// The location.
        location: Location,
        /// The counter's value.
        counted: u32,
        /// Frames whose state is that location.
        actual: u32,
    },
    /// A frame has a state byte that is no location at all (memory corruption).
    #[error("frame ledger: frame {frame} has corrupt state {state}")]
    CorruptState {
        /// Frame index.
        frame: u32,
        /// The raw state byte.
        state: u8,
    },
    /// Frames are still lent to the stack or held in a batch outside a port call.
    #[error(
        "frame ledger: {count} frames are still in `{location}` between port calls; \
         they should have been returned to the free list or a ring"
    )]
    InFlightBetweenCalls {
        /// The transient location.
        location: Location,
        /// How many frames are there.
        count: u32,
    },
    /// The port's free list disagrees with the ledger.
    #[error(
        "frame ledger: the free list holds {listed} frames but {free} are marked free \
         (or one is listed twice / not marked free: frame {frame})"
    )]
    FreeListMismatch {
        /// Length of the free list.
        listed: u32,
        /// Frames in [`Location::Free`].
        free: u32,
        /// The first offending frame, or `u32::MAX` if the lengths alone differ.
        frame: u32,
    },
}

/// Per-location counters plus a state byte per frame.
#[derive(Clone, Debug)]
pub struct FrameLedger {
    counts: [u32; 6],
    states: Vec<u8>,
}

impl FrameLedger {
    /// A ledger for `frame_count` frames, all [`Location::Free`].
    pub fn new(frame_count: u32) -> Self {
        let mut counts = [0; 6];
        counts[Location::Free as usize] = frame_count;
        FrameLedger {
            counts,
            states: vec![Location::Free as u8; frame_count as usize],
        }
    }

    /// Frames in the UMEM.
    pub fn frame_count(&self) -> u32 {
        self.states.len() as u32
    }

    /// Frames currently in `loc`.
    pub fn count(&self, loc: Location) -> u32 {
        self.counts[loc as usize]
    }

    /// All counters, indexed like [`Location::ALL`].
    pub fn counts(&self) -> [u32; 6] {
        self.counts
    }

    /// Where frame `frame` is, or `None` if there is no such frame.
    pub fn location(&self, frame: u32) -> Option<Location> {
        self.states
            .get(frame as usize)
            .and_then(|&s| Location::from_u8(s))
    }

    /// Moves `frame` from `from` to `to`. The port only calls this for transitions it knows are
    /// right; a wrong one is a bug, asserted in debug builds. In release builds the move is
    /// refused (the counters stay consistent) and `false` is returned.
    #[inline]
    pub(crate) fn transfer(&mut self, frame: u32, from: Location, to: Location) -> bool {
        let ok = self.try_transfer(frame, from, to);
        debug_assert!(
            ok,
            "frame ledger: frame {frame} moved {from} -> {to} but it is in {:?}",
            self.location(frame)
        );
        ok
    }

    /// Moves `frame` from `from` to `to` if it is in `from`; returns whether it was. Used for
    /// frame numbers that come from the kernel and so may be wrong.
    #[inline]
    pub(crate) fn try_transfer(&mut self, frame: u32, from: Location, to: Location) -> bool {
        match self.states.get_mut(frame as usize) {
            Some(s) if *s == from as u8 => {
                *s = to as u8;
                self.counts[from as usize] -= 1;
                self.counts[to as usize] += 1;
                true
            }
            _ => false,
        }
    }

    /// Recounts the per-frame states and compares them with the counters. Cost: one pass over
    /// the frames (4096 bytes by default); call it from tests, at shutdown, or now and then.
    pub fn check(&self) -> Result<(), LedgerError> {
        let sum: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if sum != u64::from(self.frame_count()) {
            return Err(LedgerError::SumMismatch {
                sum,
                frame_count: self.frame_count(),
            });
        }
        let mut actual = [0u32; 6];
        for (frame, &s) in self.states.iter().enumerate() {
            match Location::from_u8(s) {
                Some(loc) => actual[loc as usize] += 1,
                None => {
                    return Err(LedgerError::CorruptState {
                        frame: frame as u32,
                        state: s,
                    })
                }
            }
        }
        for loc in Location::ALL {
            if actual[loc as usize] != self.counts[loc as usize] {
                return Err(LedgerError::CountMismatch {
                    location: loc,
                    counted: self.counts[loc as usize],
                    actual: actual[loc as usize],
                });
            }
        }
        Ok(())
    }

    /// [`check`](Self::check), plus: no frame is left in a transient location ([`Location::Rx`],
    /// [`Location::Stack`], [`Location::Completion`]). True between port calls.
    pub fn check_idle(&self) -> Result<(), LedgerError> {
        self.check()?;
        for loc in [Location::Rx, Location::Stack, Location::Completion] {
            let count = self.count(loc);
            if count != 0 {
                return Err(LedgerError::InFlightBetweenCalls {
                    location: loc,
                    count,
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for FrameLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, loc) in Location::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", loc.label(), self.counts[i])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_keep_the_sum() {
        let mut l = FrameLedger::new(4);
        assert!(l.transfer(0, Location::Free, Location::Fill));
        assert!(l.transfer(1, Location::Free, Location::Tx));
        assert!(l.transfer(0, Location::Fill, Location::Rx));
        assert_eq!(l.counts(), [2, 0, 1, 0, 1, 0]);
        assert_eq!(l.location(0), Some(Location::Rx));
        assert_eq!(l.location(4), None);
        l.check().unwrap();
        assert_eq!(
            l.check_idle(),
            Err(LedgerError::InFlightBetweenCalls {
                location: Location::Rx,
                count: 1
            })
        );
        assert_eq!(
            l.to_string(),
            "free=2 fill=0 rx=1 stack=0 tx=1 completion=0"
        );
    }

    #[test]
    fn try_transfer_refuses_wrong_source_and_unknown_frames() {
        let mut l = FrameLedger::new(2);
        assert!(!l.try_transfer(0, Location::Fill, Location::Rx));
        assert!(!l.try_transfer(7, Location::Free, Location::Fill));
        assert_eq!(l.counts(), [2, 0, 0, 0, 0, 0]);
        l.check_idle().unwrap();
    }

    #[test]
    fn check_detects_a_counter_that_disagrees() {
        let mut l = FrameLedger::new(3);
        l.counts[Location::Free as usize] = 2;
        l.counts[Location::Tx as usize] = 1;
        assert_eq!(
            l.check(),
            Err(LedgerError::CountMismatch {
                location: Location::Free,
                counted: 2,
                actual: 3
            })
        );
        l.counts[Location::Tx as usize] = 2;
        assert!(matches!(
            l.check(),
            Err(LedgerError::SumMismatch { sum: 4, .. })
        ));
        l.counts = [3, 0, 0, 0, 0, 0];
        l.states[2] = 9;
        assert_eq!(
            l.check(),
            Err(LedgerError::CorruptState { frame: 2, state: 9 })
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "frame ledger: frame 0 moved fill -> rx")]
    fn wrong_internal_transition_asserts_in_debug() {
        let mut l = FrameLedger::new(1);
        l.transfer(0, Location::Fill, Location::Rx);
    }
}
