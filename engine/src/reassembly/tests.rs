use super::*;
use crate::device::mem::SplitMix64;

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HEADER: [u8; 20] = [
    0x45, 0, 0, 0, 0, 7, 0x20, 0, 64, 1, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
];

fn key(ident: u16) -> FragKey {
    FragKey {
        src: SRC,
        dst: DST,
        protocol: 1,
        ident,
    }
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Feeds `pieces` (offset, len, more) of `data` in the order given; returns the datagram if
/// the last piece completed it.
fn feed(
    r: &mut Reassembler,
    id: u16,
    data: &[u8],
    pieces: &[(usize, usize, bool)],
) -> Option<Vec<u8>> {
    let mut done = None;
    for (k, &(off, len, more)) in pieces.iter().enumerate() {
        let got = r.handle(t(0), key(id), off, more, &data[off..off + len], &HEADER);
        match got {
            Ok(Some(slot)) => {
                assert_eq!(k, pieces.len() - 1, "complete before the last piece");
                let (kk, _, _, buf) = r.take(slot);
                assert_eq!(kk, key(id));
                done = Some(buf.clone());
                r.give_back(slot, buf);
            }
            Ok(None) => assert!(k < pieces.len() - 1, "the last piece did not complete it"),
            Err(e) => panic!("piece {k} refused: {e:?}"),
        }
    }
    done
}

fn split(total: usize, size: usize) -> Vec<(usize, usize, bool)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < total {
        let len = size.min(total - off);
        v.push((off, len, off + len < total));
        off += len;
    }
    v
}

#[test]
fn in_order_and_reversed_and_shuffled_are_whole() {
    let data = payload(4000);
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let pieces = split(4000, 1480);
    assert_eq!(feed(&mut r, 1, &data, &pieces).unwrap(), data);
    let mut rev = pieces.clone();
    rev.reverse();
    assert_eq!(feed(&mut r, 2, &data, &rev).unwrap(), data);
    let mut rng = SplitMix64::new(3);
    let mut many = split(4000, 64);
    for i in (1..many.len()).rev() {
        many.swap(i, rng.below(i as u64 + 1) as usize);
    }
    assert_eq!(many.len(), 63);
    assert_eq!(feed(&mut r, 3, &data, &many).unwrap(), data);
    assert_eq!(r.stats().reassembled, 3);
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
}

#[test]
fn an_exact_duplicate_is_ignored_an_overlap_discards_the_datagram() {
    let data = payload(3000);
    let mut r = Reassembler::new(ReassemblyConfig::default());
    assert_eq!(
        r.handle(t(0), key(1), 0, true, &data[..1480], &HEADER),
        Ok(None)
    );
    assert_eq!(
        r.handle(t(0), key(1), 0, true, &data[..1480], &HEADER),
        Err(FragDrop::Duplicate)
    );
    let done = r.handle(t(0), key(1), 1480, false, &data[1480..], &HEADER);
    let slot = done.unwrap().expect("whole");
    let (_, _, _, buf) = r.take(slot);
    assert_eq!(buf, data);
    r.give_back(slot, buf);
    // Overlap: 0..1480, then 1472..2000.
    assert_eq!(
        r.handle(t(0), key(2), 0, true, &data[..1480], &HEADER),
        Ok(None)
    );
    assert_eq!(
        r.handle(t(0), key(2), 1472, false, &data[1472..2000], &HEADER),
        Err(FragDrop::Overlap)
    );
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
    // A rest of the discarded datagram starts a new one, which then never completes.
    assert_eq!(
        r.handle(t(0), key(2), 1480, false, &data[1480..], &HEADER),
        Ok(None)
    );
    assert_eq!(r.stats().discarded, 1);
}

#[test]
fn malformed_fragments_are_refused() {
    let data = payload(3000);
    let mut r = Reassembler::new(ReassemblyConfig::default());
    // Not the last, length not a multiple of 8.
    assert_eq!(
        r.handle(t(0), key(1), 0, true, &data[..100], &HEADER),
        Err(FragDrop::Malformed)
    );
    // Empty.
    assert_eq!(
        r.handle(t(0), key(1), 0, false, &[], &HEADER),
        Err(FragDrop::Malformed)
    );
    // Beyond 65,535 bytes.
    assert_eq!(
        r.handle(t(0), key(1), 65_528, false, &data[..16], &HEADER),
        Err(FragDrop::Malformed)
    );
    // Data beyond the end the last fragment set discards the datagram.
    assert_eq!(
        r.handle(t(0), key(3), 800, false, &data[800..1000], &HEADER),
        Ok(None)
    );
    assert_eq!(
        r.handle(t(0), key(3), 1000, true, &data[1000..1800], &HEADER),
        Err(FragDrop::Malformed)
    );
    assert_eq!(r.in_progress(), 0);
    // Two different ends.
    assert_eq!(
        r.handle(t(0), key(4), 800, false, &data[800..1000], &HEADER),
        Ok(None)
    );
    assert_eq!(
        r.handle(t(0), key(4), 1000, false, &data[1000..1200], &HEADER),
        Err(FragDrop::Malformed)
    );
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
}

#[test]
fn limits_table_bytes_and_pieces() {
    let data = payload(4000);
    let mut r = Reassembler::new(ReassemblyConfig {
        max_datagrams: 2,
        max_bytes: 3000,
        timeout_ms: 1000,
        ..ReassemblyConfig::default()
    });
    assert_eq!(
        r.handle(t(0), key(1), 0, true, &data[..1001], &HEADER),
        Err(FragDrop::Malformed)
    );
    assert_eq!(
        r.handle(t(0), key(1), 0, true, &data[..992], &HEADER),
        Ok(None)
    );
    assert_eq!(
        r.handle(t(1), key(2), 0, true, &data[..1496], &HEADER),
        Ok(None)
    );
    // The table is full: a new datagram evicts the oldest (key 1).
    assert_eq!(
        r.handle(t(2), key(3), 0, true, &data[..8], &HEADER),
        Ok(None)
    );
    assert_eq!(r.stats().evicted, 1);
    assert_eq!((r.in_progress(), r.held_bytes()), (2, 1496 + 8));
    // 1504 + 1496 = 3000 held, within the budget; 8 more would pass it and discard key 3.
    assert_eq!(
        r.handle(t(2), key(3), 8, true, &data[8..1504], &HEADER),
        Ok(None)
    );
    assert_eq!(r.held_bytes(), 3000);
    assert_eq!(
        r.handle(t(2), key(3), 1504, true, &data[1504..1512], &HEADER),
        Err(FragDrop::Memory)
    );
    assert_eq!(r.in_progress(), 1);
    assert_eq!(r.held_bytes(), 1496);
    // Key 1's rest now starts a datagram of its own (its first piece went with the eviction).
    assert_eq!(
        r.handle(t(3), key(1), 992, false, &data[992..1000], &HEADER),
        Ok(None)
    );
    assert_eq!((r.in_progress(), r.stats().evicted), (2, 1));
    // Pieces: at most MAX_FRAGMENTS per datagram.
    let mut r = Reassembler::new(ReassemblyConfig::default());
    for k in 0..MAX_FRAGMENTS {
        assert_eq!(
            r.handle(t(0), key(9), k * 8, true, &data[k * 8..k * 8 + 8], &HEADER),
            Ok(None)
        );
    }
    let k = MAX_FRAGMENTS;
    assert_eq!(
        r.handle(t(0), key(9), k * 8, false, &data[k * 8..k * 8 + 8], &HEADER),
        Err(FragDrop::Memory)
    );
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
}

#[test]
fn an_incomplete_datagram_times_out_quoting_its_first_fragment() {
    let data = payload(3000);
    let mut r = Reassembler::new(ReassemblyConfig {
        timeout_ms: 30_000,
        ..ReassemblyConfig::default()
    });
    assert_eq!(
        r.handle(t(10), key(1), 0, true, &data[..1480], &HEADER),
        Ok(None)
    );
    // No first fragment: no quote, but it times out all the same.
    assert_eq!(
        r.handle(t(20), key(2), 1480, false, &data[1480..], &HEADER),
        Ok(None)
    );
    assert_eq!(r.poll_timeout(), Some(t(30_010)));
    let mut got = Vec::new();
    r.handle_timeout(t(30_009), |e| got.push(e));
    assert!(got.is_empty());
    assert_eq!(r.in_progress(), 2);
    r.handle_timeout(t(30_010), |e| got.push(e));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, key(1));
    assert_eq!(
        &got[0].head[..got[0].head_len],
        &[&HEADER[..], &data[..8]].concat()[..]
    );
    assert_eq!(r.poll_timeout(), Some(t(30_020)));
    r.handle_timeout(t(30_020), |e| got.push(e));
    assert_eq!(got.len(), 1);
    assert_eq!(r.stats().timeouts, 2);
    assert_eq!(
        (r.in_progress(), r.held_bytes(), r.poll_timeout()),
        (0, 0, None)
    );
}

/// Datagrams cut into random pieces, interleaved in random order, with one piece in ten
/// mutated (dropped, duplicated, shifted onto its neighbour, or cut to a bad length): nothing
/// panics, the bytes held never pass the budget, every datagram that completes is byte for
/// byte the one sent, and the unmutated ones all complete.
#[test]
fn random_fragments_keep_every_bound() {
    let cfg = ReassemblyConfig {
        max_datagrams: 8,
        max_bytes: 40_000,
        timeout_ms: 5,
        ..ReassemblyConfig::default()
    };
    let mut r = Reassembler::new(cfg.clone());
    let mut rng = SplitMix64::new(77);
    let data = payload(20_000);
    let (mut whole, mut clean, mut clean_whole) = (0, 0, 0);
    for round in 0..2_000u64 {
        let now = t(round * 10); // every round after the previous one's timeout
        r.handle_timeout(now, |_| {});
        let total = 8 + rng.below(12_000) as usize;
        let mut pieces = Vec::new();
        let mut off = 0;
        while off < total {
            let len = (8 * (1 + rng.below(200) as usize)).min(total - off);
            pieces.push((off, len, off + len < total));
            off += len;
        }
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut mutated = false;
        let mut fed = Vec::new();
        for &(off, len, more) in &pieces {
            if rng.chance(100) {
                mutated = true;
                match rng.below(4) {
                    0 => continue,
                    1 => fed.push((off, len, more)),
                    2 => fed.push((off.saturating_sub(8), len, more)),
                    _ => fed.push((off, len.saturating_sub(3), more)),
                }
            }
            fed.push((off, len, more));
        }
        let id = (round % 500) as u16;
        let mut done = false;
        for (off, len, more) in fed {
            if let Ok(Some(slot)) =
                r.handle(now, key(id), off, more, &data[off..off + len], &HEADER)
            {
                let (_, _, _, buf) = r.take(slot);
                // A cut last piece may make a shorter datagram that is whole in itself.
                if !mutated {
                    assert_eq!(buf.len(), total);
                }
                assert_eq!(&buf[..], &data[..buf.len()]);
                whole += 1;
                done = true;
                r.give_back(slot, buf);
            }
            assert!(r.held_bytes() <= cfg.max_bytes);
            assert!(r.reserved_bytes() <= cfg.max_bytes);
            assert!(r.in_progress() <= cfg.max_datagrams);
        }
        if !mutated && pieces.len() <= MAX_FRAGMENTS {
            clean += 1;
            clean_whole += done as u32;
        }
    }
    assert!(clean > 500, "{clean} clean datagrams");
    assert_eq!(clean_whole, clean, "every clean datagram completed");
    assert!(whole >= clean_whole);
    r.handle_timeout(t(1 << 40), |_| {});
    assert_eq!((r.in_progress(), r.held_bytes()), (0, 0));
}

#[test]
fn disabled_with_no_slots() {
    let r = Reassembler::new(ReassemblyConfig {
        max_datagrams: 0,
        ..ReassemblyConfig::default()
    });
    assert!(!r.enabled());
}

/// The room idle slots keep counts against `max_bytes`: fragments that reach far (offset
/// 65,000) cycled through every slot, each datagram then discarded, leave no slot holding
/// 64 KiB for nothing; the next slot that needs room takes it back from them.
#[test]
fn max_bytes_bounds_the_room_idle_slots_keep() {
    let cfg = ReassemblyConfig {
        max_datagrams: 8,
        max_bytes: 70_000,
        ..Default::default()
    };
    let mut r = Reassembler::new(cfg);
    let small = [0u8; 8];
    for k in 0..8u16 {
        assert_eq!(
            r.handle(t(0), key(100 + k), 0, true, &small, &HEADER),
            Ok(None)
        );
    }
    for k in 0..8u16 {
        // Slot k freed (an overlap discards its datagram), taken by a datagram reaching
        // offset 65,000, discarded in turn, then refilled: the next round lands on slot k+1.
        assert_eq!(
            r.handle(t(0), key(100 + k), 0, true, &[1u8; 16], &HEADER),
            Err(FragDrop::Overlap)
        );
        assert_eq!(
            r.handle(t(0), key(200 + k), 65_000, true, &small, &HEADER),
            Ok(None)
        );
        assert_eq!(
            r.handle(t(0), key(200 + k), 64_992, true, &[1u8; 16], &HEADER),
            Err(FragDrop::Overlap)
        );
        assert_eq!(
            r.handle(t(0), key(100 + k), 0, true, &small, &HEADER),
            Ok(None)
        );
        let kept: usize = r.slots.iter().map(|s| s.data.capacity()).sum();
        assert!(kept <= 70_000, "round {k}: the slots keep {kept} bytes");
        assert_eq!(kept, r.reserved_bytes(), "round {k}");
    }
    // Once the eight time out, a whole datagram of 60,000 bytes fits (the room comes back
    // from the idle slots).
    r.handle_timeout(t(30_000), |_| {});
    assert_eq!(r.in_progress(), 0);
    let data = payload(60_000);
    let mut last = Ok(None);
    for (off, len, more) in split(60_000, 1480) {
        last = r.handle(t(30_001), key(7), off, more, &data[off..off + len], &HEADER);
    }
    let slot = last.unwrap().expect("whole");
    let (_, _, _, buf) = r.take(slot);
    assert_eq!(buf, data);
    r.give_back(slot, buf);
    assert!(r.reserved_bytes() <= 70_000);
}

/// A first fragment with options (a 60-byte header) leaves 65,475 bytes for the payload: a
/// datagram reaching 65,515 would be 65,575 bytes long (the "ping of death") and is discarded,
/// whichever fragment shows it, the first or the last.
#[test]
fn a_datagram_longer_than_65535_bytes_with_its_header_is_discarded() {
    let mut h = [0u8; 60];
    h[..20].copy_from_slice(&HEADER);
    h[0] = 0x4f;
    let cfg = ReassemblyConfig {
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let data = payload(65_515);
    for first_last in [false, true] {
        let mut r = Reassembler::new(cfg.clone());
        let mut pieces = split(65_515, 1480);
        if first_last {
            pieces.rotate_left(1);
        }
        let mut verdicts = Vec::new();
        for (off, len, more) in pieces {
            let hdr: &[u8] = if off == 0 { &h } else { &HEADER };
            verdicts.push(r.handle(t(0), key(9), off, more, &data[off..off + len], hdr));
        }
        assert!(
            verdicts.contains(&Err(FragDrop::Malformed)),
            "first fragment last: {first_last}: {verdicts:?}"
        );
        assert!(!verdicts.iter().any(|v| matches!(v, Ok(Some(_)))));
        // With a 20-byte header the same payload is a legal 65,535-byte datagram.
        let mut r = Reassembler::new(cfg.clone());
        let mut last = Ok(None);
        for (off, len, more) in split(65_515, 1480) {
            last = r.handle(t(0), key(9), off, more, &data[off..off + len], &HEADER);
        }
        assert!(matches!(last, Ok(Some(_))), "{last:?}");
    }
}
