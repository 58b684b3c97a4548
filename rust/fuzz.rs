//! Property-based fuzzing of the frame decoders, the block reader (what
//! `voxgate db check` walks segments with) and the credit ledger.
//!
//! Inputs are valid streams damaged in every way a network or a hostile
//! client can (bytes flipped, inserted, dropped, lengths rewritten to
//! extremes, streams cut short, random splits), plus arbitrary bytes. The
//! properties: nothing panics (no `catch_unwind` here: a panic fails the
//! test), every accepted frame lies inside its message with a verdict that
//! matches its bytes, every error points inside the input, and incremental
//! decoding agrees with one-shot decoding however the input is split.
//!
//! `cargo test` runs a short pass. The long pass is ignored by default:
//! `VOXGATE_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --ignored`.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use voxgate_native::block;
use voxgate_native::crc::crc32c;
use voxgate_native::framing::{
    decode, encode_frame, ErrorKind, StreamDecoder, Verdict, FLAG_END, HEADER_SIZE,
};
use voxgate_native::ledger::Ledger;

#[derive(Clone, Debug)]
enum Damage {
    Set(prop::sample::Index, u8),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    Length(prop::sample::Index, u32),
    Truncate(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    let extreme = prop_oneof![
        Just(0u32),
        Just(1),
        Just(23),
        Just(24),
        Just(u32::MAX),
        Just(u32::MAX - 23),
        Just(1 << 20),
        any::<u32>()
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, bit)| Damage::Flip(i, bit)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Damage::Remove(i, n)),
        (any::<prop::sample::Index>(), extreme).prop_map(|(i, n)| Damage::Length(i, n)),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
    ]
}

fn frames() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        ),
        0..8,
    )
    .prop_map(|specs| {
        let mut out = Vec::new();
        for (seq, pts, payload, end) in specs {
            out.extend(encode_frame(seq, &payload, pts, end || payload.is_empty()));
        }
        out
    })
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        if bytes.is_empty() {
            break;
        }
        match d {
            Damage::Set(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Damage::Flip(i, bit) => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Damage::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Damage::Remove(i, n) => {
                let at = i.index(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Damage::Length(i, n) => {
                // Rewrite the length field of some header-sized window.
                if bytes.len() >= HEADER_SIZE {
                    let at = i.index(bytes.len() - HEADER_SIZE + 1);
                    bytes[at + 16..at + 20].copy_from_slice(&n.to_be_bytes());
                }
            }
            Damage::Truncate(i) => {
                let keep = i.index(bytes.len() + 1);
                bytes.truncate(keep);
            }
        }
    }
    bytes
}

/// Input: a damaged stream (or plain random bytes), a frame size limit, and split points.
fn input() -> impl Strategy<Value = (Vec<u8>, u64, Vec<prop::sample::Index>)> {
    let max = prop_oneof![
        Just(0u64),
        Just(1),
        0u64..400,
        Just(u64::from(u32::MAX)),
        Just(u64::MAX)
    ];
    let bytes = prop_oneof![
        3 => (frames(), prop::collection::vec(damage(), 0..6)).prop_map(|(b, d)| apply(b, &d)),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ];
    (
        bytes,
        max,
        prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    )
}

type Seen = (u32, u8, u64, Option<Vec<u8>>, u32, Verdict);

fn check_one_shot(bytes: &[u8], max: u64) -> Result<Vec<Seen>, (String, u64)> {
    match decode(bytes, max) {
        Ok(frames) => {
            let mut seen = Vec::new();
            let mut expected_offset = HEADER_SIZE;
            for f in frames {
                assert_eq!(f.payload_offset, expected_offset, "frames are back to back");
                let end = f.payload_offset + f.payload_len as usize;
                assert!(end <= bytes.len(), "frame runs past the message");
                let payload = &bytes[f.payload_offset..end];
                assert_eq!(f.flags & !FLAG_END, 0, "reserved flags accepted");
                assert!(
                    f.payload_len > 0 || f.flags & FLAG_END != 0,
                    "empty frame without END"
                );
                let verdict = if u64::from(f.payload_len) > max {
                    Verdict::TooLarge
                } else if crc32c(payload) == f.crc32c {
                    Verdict::Ok
                } else {
                    Verdict::BadCrc
                };
                assert_eq!(f.verdict, verdict);
                let kept = (verdict != Verdict::TooLarge).then(|| payload.to_vec());
                seen.push((f.seq, f.flags, f.pts_us, kept, f.crc32c, f.verdict));
                expected_offset = end + HEADER_SIZE;
            }
            Ok(seen)
        }
        Err(e) => {
            assert!(
                e.offset < bytes.len() as u64 || (bytes.is_empty() && e.offset == 0),
                "error offset {} outside {} bytes",
                e.offset,
                bytes.len()
            );
            if let ErrorKind::Truncated { needed, available } = e.kind {
                assert!(available < needed);
            }
            assert!(!e.to_string().is_empty());
            Err((e.kind.name().to_string(), e.offset))
        }
    }
}

fn streamed(
    bytes: &[u8],
    max: u64,
    cuts: &[prop::sample::Index],
) -> (Vec<Seen>, Option<(String, u64)>) {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut dec = StreamDecoder::new(max);
    let mut seen = Vec::new();
    let mut start = 0;
    points.push(bytes.len());
    for p in points {
        let mut out = Vec::new();
        let fed = dec.feed(&bytes[start..p], &mut out);
        start = p;
        assert!(dec.buffered() as u64 <= HEADER_SIZE as u64 + max.min(1 << 32));
        for f in out {
            let payload = f.payload.bytes().map(<[u8]>::to_vec);
            if let Some(p) = &payload {
                assert_eq!(f.verdict == Verdict::Ok, crc32c(p) == f.crc32c);
            }
            seen.push((f.seq, f.flags, f.pts_us, payload, f.crc32c, f.verdict));
        }
        if let Err(e) = fed {
            return (seen, Some((e.kind.name().to_string(), e.offset)));
        }
    }
    let end = dec
        .finish()
        .err()
        .map(|e| (e.kind.name().to_string(), e.offset));
    (seen, end)
}

fn decoders_agree(bytes: &[u8], max: u64, cuts: &[prop::sample::Index]) {
    let got = streamed(bytes, max, cuts);
    match check_one_shot(bytes, max) {
        // A message must hold a frame; a byte stream may be empty.
        Err((kind, 0)) if bytes.is_empty() => {
            assert_eq!(kind, "truncated");
            assert_eq!(got, (Vec::new(), None));
        }
        Ok(frames) => assert_eq!(got, (frames, None)),
        Err((kind, offset)) => {
            let before = check_one_shot(&bytes[..offset as usize], max).unwrap_or_default();
            assert_eq!(got, (before, Some((kind, offset))));
        }
    }
}

/// A segment: blocks of consecutive frames (some of them erased to zeros) back to
/// back, and the extents (offsets from the segment's start) a scan of it must find
/// when it is not damaged. A block's last frame may be an empty END frame.
fn segment() -> impl Strategy<Value = (Vec<u8>, Vec<block::Extent>)> {
    let frames = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..5);
    let one = (
        "[a-z0-9_]{1,30}",
        0u64..(u64::from(u32::MAX) - 8),
        frames,
        any::<bool>(),
    );
    prop::collection::vec(one, 0..5).prop_map(|blocks| {
        let mut out = Vec::new();
        let mut found = Vec::new();
        for (sid, first, payloads, erased) in blocks {
            let mut records = Vec::new();
            let mut audio = Vec::new();
            let mut end_seq = None;
            for (i, p) in payloads.iter().enumerate() {
                let seq = first as u32 + i as u32;
                let end = p.is_empty() && i + 1 == payloads.len();
                let payload: &[u8] = if p.is_empty() && !end { b"-" } else { p };
                records.extend(encode_frame(seq, payload, 9, end));
                audio.extend_from_slice(payload);
                if end {
                    end_seq = Some(u64::from(seq));
                }
            }
            let count = payloads.len() as u32;
            let start = out.len();
            out.extend(block::encode_header(
                &sid,
                first,
                count,
                records.len() as u64,
            ));
            out.extend(records);
            if erased {
                out[start..].fill(0);
            } else {
                found.push(block::Extent {
                    session_id: sid,
                    first_seq: first,
                    last_seq: first + u64::from(count) - 1,
                    offset: start as u64,
                    length: (out.len() - start) as u64,
                    payload_bytes: audio.len() as u64,
                    crc32c: crc32c(&audio),
                    end_seq,
                });
            }
        }
        (out, found)
    })
}

fn blocks_hold(bytes: &[u8], base: u64, intact: Option<&[block::Extent]>) {
    let end = base + bytes.len() as u64;
    let scan = block::scan(bytes, base);
    assert!(
        scan.stop >= base && scan.stop <= end,
        "stop {} outside",
        scan.stop
    );
    assert_eq!(scan.why.is_none(), scan.stop == end, "{scan:?}");
    // Blocks and damaged stretches lie in order, apart, before where the walk stopped.
    let mut stretches: Vec<(u64, u64)> =
        scan.extents.iter().map(|e| (e.offset, e.length)).collect();
    stretches.extend(scan.damaged.iter().map(|d| (d.offset, d.length)));
    stretches.sort_unstable();
    let mut after = base;
    for (offset, length) in stretches {
        assert!(offset >= after && offset + length <= scan.stop, "{scan:?}");
        after = offset + length;
    }
    for e in &scan.extents {
        let at = (e.offset - base) as usize;
        let (head, records) = block::parse(&bytes[at..at + e.length as usize], true)
            .expect("a block the scan took must parse");
        assert_eq!(block::extent_of(&head, &records, e.offset), *e);
    }
    if let Some(expected) = intact {
        let expected: Vec<block::Extent> = expected
            .iter()
            .map(|e| block::Extent {
                offset: e.offset + base,
                ..e.clone()
            })
            .collect();
        assert_eq!(scan.extents, expected);
        assert!(scan.damaged.is_empty() && scan.why.is_none() && scan.stop == end);
    }
    // At any start: a header that reads names a block parse and salvage answer for,
    // naming only bytes they were given.
    for at in 0..bytes.len().min(64) {
        let Ok(head) = block::parse_head(&bytes[at..]) else {
            continue;
        };
        let data = &bytes[at..bytes
            .len()
            .min(at.saturating_add(head.block_len() as usize))];
        if let Ok((parsed, records)) = block::parse(data, true) {
            assert_eq!(parsed, head);
            assert_eq!(parsed.block_len(), data.len() as u64);
            assert_eq!(records.len(), head.count as usize);
        }
        if let Ok((_, records)) = block::salvage(data) {
            for r in records {
                assert!(r.payload + r.length as usize <= data.len());
            }
        }
    }
}

fn run_blocks(cases: u32) {
    let damages = prop::collection::vec(damage(), 0..4);
    runner(cases, "rust/fuzz.regressions")
        .run(
            &(segment(), damages, 0u64..1 << 40),
            |((bytes, found), damages, base)| {
                blocks_hold(&bytes, base, Some(&found));
                blocks_hold(&apply(bytes, &damages), base, None);
                Ok(())
            },
        )
        .unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Open,
    Close(prop::sample::Index),
    Admit(prop::sample::Index, u64),
    Release(prop::sample::Index, u64),
    Window(prop::sample::Index),
}

fn ops() -> impl Strategy<Value = (u64, u64, u64, Vec<Op>)> {
    let n = prop_oneof![0u64..5000, Just(u64::MAX), Just(u64::MAX / 2), any::<u64>()];
    let op = prop_oneof![
        Just(Op::Open),
        any::<prop::sample::Index>().prop_map(Op::Close),
        (any::<prop::sample::Index>(), n.clone()).prop_map(|(i, n)| Op::Admit(i, n)),
        (any::<prop::sample::Index>(), n).prop_map(|(i, n)| Op::Release(i, n)),
        any::<prop::sample::Index>().prop_map(Op::Window),
    ];
    (
        prop_oneof![0u64..10_000, Just(u64::MAX)],
        0u64..20_000,
        prop_oneof![0u64..40_000, Just(u64::MAX)],
        prop::collection::vec(op, 0..200),
    )
}

fn ledger_holds_its_invariants(window: u64, high: u64, limit: u64, ops: &[Op]) {
    let low = high / 2;
    let Ok(mut ledger) = Ledger::new(window, high, low, limit.max(high)) else {
        return;
    };
    let mut open: Vec<u64> = Vec::new();
    for op in ops {
        match op {
            Op::Open => open.push(ledger.open()),
            Op::Close(i) if !open.is_empty() => {
                let h = open.swap_remove(i.index(open.len()));
                ledger.close(h).expect("open handle");
                assert!(ledger.inflight(h).is_err(), "closed handle still known");
            }
            Op::Admit(i, n) if !open.is_empty() => {
                let h = open[i.index(open.len())];
                let before = ledger.inflight(h).expect("open handle");
                let admitted = ledger.admit(h, *n).expect("open handle");
                let after = ledger.inflight(h).expect("open handle");
                assert_eq!(after, if admitted { before + n } else { before });
            }
            Op::Release(i, n) if !open.is_empty() => {
                let h = open[i.index(open.len())];
                let before = ledger.inflight(h).expect("open handle");
                ledger.release(h, *n).expect("open handle");
                assert_eq!(
                    ledger.inflight(h).expect("open handle"),
                    before - before.min(*n)
                );
            }
            Op::Window(i) if !open.is_empty() => {
                let h = open[i.index(open.len())];
                let w = ledger.window(h).expect("open handle");
                assert!(w <= window.max(ledger.inflight(h).expect("open handle")));
            }
            _ => assert!(ledger.admit(u64::MAX, 1).is_err()),
        }
        let total: u64 = open
            .iter()
            .map(|h| ledger.inflight(*h).expect("open"))
            .sum();
        let stats = ledger.stats();
        assert_eq!(stats.inflight_bytes, total);
        assert_eq!(stats.streams, open.len() as u64);
        assert!(stats.inflight_bytes <= limit.max(high));
    }
}

fn runner(default_cases: u32, regressions: &'static str) -> TestRunner {
    let cases = std::env::var("VOXGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    })
}

fn run_decoders(cases: u32) {
    runner(cases, "rust/fuzz.regressions")
        .run(&input(), |(bytes, max, cuts)| {
            decoders_agree(&bytes, max, &cuts);
            Ok(())
        })
        .unwrap();
}

fn run_ledger(cases: u32) {
    runner(cases, "rust/fuzz.regressions")
        .run(&ops(), |(window, high, limit, ops)| {
            ledger_holds_its_invariants(window, high, limit, &ops);
            Ok(())
        })
        .unwrap();
}

#[test]
fn decoders_survive_damaged_input() {
    run_decoders(2_000);
}

#[test]
fn blocks_survive_damaged_segments() {
    run_blocks(1_000);
}

#[test]
#[ignore = "long: VOXGATE_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --ignored"]
fn blocks_survive_damaged_segments_at_scale() {
    run_blocks(100_000);
}

#[test]
fn ledger_survives_any_sequence_of_calls() {
    run_ledger(1_000);
}

#[test]
#[ignore = "long: VOXGATE_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --ignored"]
fn decoders_survive_damaged_input_at_scale() {
    run_decoders(200_000);
}

#[test]
#[ignore = "long: VOXGATE_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --ignored"]
fn ledger_survives_any_sequence_of_calls_at_scale() {
    run_ledger(100_000);
}
