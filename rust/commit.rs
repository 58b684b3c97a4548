//! The per-frame work of one store commit, without Python objects.
//!
//! A store commit reads the counters of every session it touches, judges each
//! frame (stored, duplicate, conflict, sequence or gone), groups the stored
//! ones into runs (one block each, see [`crate::block`]), extends every session's gap-free prefix and its running
//! CRC-32C, and writes the counters back. [`Plan`] does all of that for one
//! batch; both stores only run the SQL around it. This is the one home of
//! the commit rules; `tests/unit/native/tally_model.py` states them plainly
//! and the tests hold this plan to it.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::crc::crc32c_combine;
use crate::framing::FLAG_END;

pub const STORED: u8 = 0;
pub const DUPLICATE: u8 = 1;
pub const CONFLICT: u8 = 2;
pub const SEQUENCE: u8 = 3;
pub const GONE: u8 = 4;

/// A session's counters as the store holds them before the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub next_seq: u64,
    pub frames: u64,
    pub bytes: u64,
    pub end_seq: Option<u64>,
    pub stream_crc32c: Option<u32>,
    pub prefix_seq: u64,
    pub prefix_crc32c: u32,
}

/// One frame of the batch; `session` indexes the plan's sessions (the rows it
/// was made from), None for an unknown (or deleted) session.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub session: Option<usize>,
    pub seq: u64,
    pub flags: u64,
    pub pts_us: u64,
    pub crc32c: u32,
    pub length: u64,
}

/// Stored frames of one session with consecutive seqs, next to each other in
/// the commit: they become one block. `stored[start..start + count]` (see
/// [`Plan::judge`]) are their indexes in the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub session: usize,
    pub first_seq: u64,
    pub start: usize,
    pub count: usize,
    /// Payload bytes of the run, and the CRC-32C of its payloads in seq order.
    pub payload_bytes: u64,
    pub crc32c: u32,
}

#[derive(Debug)]
struct Tally {
    row: SessionRow,
    /// seq -> (crc32c, length) of the frames this commit stores.
    batch: HashMap<u64, (u32, u64)>,
    changed: bool,
}

impl Tally {
    fn complete(&self) -> bool {
        self.row
            .end_seq
            .is_some_and(|end| end.checked_add(1) == Some(self.row.prefix_seq))
    }

    fn state(&self) -> &'static str {
        match self.row.end_seq {
            None => "open",
            Some(_) if self.complete() => "complete",
            Some(_) => "ended",
        }
    }
}

/// A session's counters after the commit, as `Progress` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub next_seq: u64,
    pub frames: u64,
    pub bytes: u64,
    pub end_seq: Option<u64>,
    pub complete: bool,
    pub stream_crc32c: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Plan {
    tallies: Vec<Tally>,
    index: HashMap<String, usize>,
    /// (session, seq) -> (crc32c, length, flags) already stored, by earlier
    /// commits (as looked up) or earlier in this one.
    known: HashMap<(usize, u64), (u32, u64, u64)>,
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

impl Plan {
    /// Later rows for an id already given replace the earlier one.
    pub fn new(rows: Vec<SessionRow>) -> Plan {
        let mut plan = Plan::default();
        for row in rows {
            let tally = Tally {
                row,
                batch: HashMap::new(),
                changed: false,
            };
            match plan.index.get(&tally.row.id) {
                Some(&i) => plan.tallies[i] = tally,
                None => {
                    plan.index.insert(tally.row.id.clone(), plan.tallies.len());
                    plan.tallies.push(tally);
                }
            }
        }
        plan
    }

    pub fn session(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn session_id(&self, session: usize) -> &str {
        &self.tallies[session].row.id
    }

    /// Seqs that may be stored already (below the session's `next_seq`), per
    /// session in order of first appearance: look them up, then [`Plan::known`].
    pub fn lookups(&self, frames: &[Frame]) -> Vec<(usize, Vec<u64>)> {
        let mut out: Vec<(usize, Vec<u64>)> = Vec::new();
        for f in frames {
            let Some(s) = f.session else { continue };
            if f.seq >= self.tallies[s].row.next_seq {
                continue;
            }
            match out.iter_mut().find(|(t, _)| *t == s) {
                Some((_, seqs)) => seqs.push(f.seq),
                None => out.push((s, vec![f.seq])),
            }
        }
        out
    }

    /// The frame stored at `seq` by an earlier commit.
    pub fn known(&mut self, session: usize, seq: u64, crc32c: u32, length: u64, flags: u64) {
        self.known.insert((session, seq), (crc32c, length, flags));
    }

    /// Judge every frame; returns the outcomes and the runs of stored frames,
    /// one block each. `stored` gets the index of each stored frame, in commit
    /// order; a run is a slice of it.
    pub fn judge(&mut self, frames: &[Frame], stored: &mut Vec<usize>) -> (Vec<u8>, Vec<Run>) {
        let mut outcomes = Vec::with_capacity(frames.len());
        let mut runs: Vec<Run> = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let Some(s) = f.session else {
                outcomes.push(GONE);
                continue;
            };
            let outcome = self.judge_one(s, f);
            outcomes.push(outcome);
            if outcome != STORED {
                continue;
            }
            self.known.insert((s, f.seq), (f.crc32c, f.length, f.flags));
            let extends = runs.last().is_some_and(|r| {
                r.session == s
                    && r.start + r.count == stored.len()
                    && r.first_seq + r.count as u64 == f.seq
            });
            if !extends {
                runs.push(Run {
                    session: s,
                    first_seq: f.seq,
                    start: stored.len(),
                    count: 0,
                    payload_bytes: 0,
                    crc32c: 0,
                });
            }
            let run = runs.last_mut().expect("a run was just ensured");
            run.count += 1;
            if f.length > 0 {
                run.crc32c = crc32c_combine(run.crc32c, f.crc32c, f.length);
                run.payload_bytes += f.length;
            }
            stored.push(i);
        }
        (outcomes, runs)
    }

    fn judge_one(&mut self, s: usize, f: &Frame) -> u8 {
        if let Some(&stored) = self.known.get(&(s, f.seq)) {
            return if stored == (f.crc32c, f.length, f.flags) {
                DUPLICATE
            } else {
                CONFLICT
            };
        }
        let t = &mut self.tallies[s];
        let end = f.flags & u64::from(FLAG_END) != 0;
        if t.row.end_seq.is_some_and(|e| f.seq > e)
            || (end && f.seq < t.row.next_seq.saturating_sub(1))
        {
            return SEQUENCE;
        }
        t.batch.insert(f.seq, (f.crc32c, f.length));
        t.changed = true;
        t.row.frames += 1;
        t.row.bytes += f.length;
        if f.seq >= t.row.next_seq {
            t.row.next_seq = f.seq.saturating_add(1);
        }
        if end {
            t.row.end_seq = Some(f.seq);
        }
        STORED
    }

    /// Extend every changed session's prefix over the frames of this commit.
    /// Returns (session, prefix_seq) of those whose prefix may extend further
    /// over frames stored by earlier commits: feed those, in seq order from
    /// prefix_seq, to [`Plan::extend`].
    pub fn advance(&mut self) -> Vec<(usize, u64)> {
        let mut walks = Vec::new();
        for (s, t) in self.tallies.iter_mut().enumerate() {
            if !t.changed {
                continue;
            }
            let (mut seq, mut crc) = (t.row.prefix_seq, t.row.prefix_crc32c);
            if !t.batch.contains_key(&seq) {
                continue;
            }
            while let Some(&(frame_crc, length)) = t.batch.get(&seq) {
                if length > 0 {
                    crc = crc32c_combine(crc, frame_crc, length);
                }
                seq += 1;
            }
            t.row.prefix_seq = seq;
            t.row.prefix_crc32c = crc;
            if seq < t.row.next_seq {
                walks.push((s, seq));
            }
        }
        walks
    }

    /// Take the stored frames `first_seq..=last_seq` (payloads of `length`
    /// bytes with CRC-32C `crc32c` in seq order) into the session's prefix;
    /// false (unchanged) at a gap.
    pub fn extend(
        &mut self,
        session: usize,
        first_seq: u64,
        last_seq: u64,
        crc32c: u32,
        length: u64,
    ) -> bool {
        let row = &mut self.tallies[session].row;
        if first_seq != row.prefix_seq || last_seq < first_seq {
            return false;
        }
        if length > 0 {
            row.prefix_crc32c = crc32c_combine(row.prefix_crc32c, crc32c, length);
        }
        row.prefix_seq = last_seq + 1;
        true
    }

    /// After the prefixes are extended: complete sessions get their stream
    /// CRC; returns the changed sessions' counters as a JSON array of
    /// `[state, next_seq, frames, bytes, end_seq, stream_crc32c, prefix_seq,
    /// prefix_crc32c, now, session_id]`.
    pub fn finish(&mut self, now: i64) -> String {
        let mut out = String::from("[");
        let mut first = true;
        for t in self.tallies.iter_mut() {
            if !t.changed {
                continue;
            }
            if t.complete() {
                t.row.stream_crc32c = Some(t.row.prefix_crc32c);
            }
            if !first {
                out.push(',');
            }
            first = false;
            let r = &t.row;
            let _ = write!(
                out,
                "[\"{}\",{},{},{},",
                t.state(),
                r.next_seq,
                r.frames,
                r.bytes
            );
            push_opt(&mut out, r.end_seq);
            out.push(',');
            push_opt(&mut out, r.stream_crc32c.map(u64::from));
            let _ = write!(out, ",{},{},{},", r.prefix_seq, r.prefix_crc32c, now);
            push_json_str(&mut out, &r.id);
            out.push(']');
        }
        out.push(']');
        out
    }

    /// Every session's counters now, in the order given.
    pub fn progress(&self) -> impl Iterator<Item = (&str, Progress)> {
        self.tallies.iter().map(|t| {
            let r = &t.row;
            (
                r.id.as_str(),
                Progress {
                    next_seq: r.next_seq,
                    frames: r.frames,
                    bytes: r.bytes,
                    end_seq: r.end_seq,
                    complete: t.complete(),
                    stream_crc32c: r.stream_crc32c,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crc::crc32c;

    fn row(id: &str, next_seq: u64) -> SessionRow {
        SessionRow {
            id: id.to_string(),
            next_seq,
            frames: next_seq,
            bytes: 0,
            end_seq: None,
            stream_crc32c: None,
            prefix_seq: next_seq,
            prefix_crc32c: 0,
        }
    }

    fn frame(session: Option<usize>, seq: u64, payload: &[u8], end: bool) -> Frame {
        Frame {
            session,
            seq,
            flags: u64::from(end),
            pts_us: u64::MAX,
            crc32c: crc32c(payload),
            length: payload.len() as u64,
        }
    }

    #[test]
    fn in_order_frames_are_stored_and_complete_the_stream() {
        let mut plan = Plan::new(vec![row("a", 0)]);
        let frames = [
            frame(Some(0), 0, b"he", false),
            frame(Some(0), 1, b"llo", false),
            frame(Some(0), 2, b"", true),
            frame(None, 0, b"x", false),
        ];
        assert!(plan.lookups(&frames).is_empty());
        let mut stored = Vec::new();
        let (outcomes, runs) = plan.judge(&frames, &mut stored);
        assert_eq!(outcomes, vec![STORED, STORED, STORED, GONE]);
        assert_eq!(stored, vec![0, 1, 2]);
        assert_eq!(
            runs,
            vec![Run {
                session: 0,
                first_seq: 0,
                start: 0,
                count: 3,
                payload_bytes: 5,
                crc32c: crc32c(b"hello"),
            }]
        );
        assert!(plan.advance().is_empty());
        let updates = plan.finish(5);
        let whole = crc32c(b"hello");
        assert_eq!(
            updates,
            format!("[[\"complete\",3,3,5,2,{whole},3,{whole},5,\"a\"]]")
        );
        let (_, p) = plan.progress().next().unwrap();
        assert!(p.complete);
        assert_eq!(p.stream_crc32c, Some(whole));
    }

    #[test]
    fn resent_frames_are_duplicates_or_conflicts() {
        let mut plan = Plan::new(vec![row("a", 2)]);
        let frames = [
            frame(Some(0), 0, b"x", false),
            frame(Some(0), 1, b"y", false),
            frame(Some(0), 2, b"z", false),
            frame(Some(0), 2, b"z", false),
            frame(Some(0), 2, b"w", false),
        ];
        assert_eq!(plan.lookups(&frames), vec![(0, vec![0, 1])]);
        plan.known(0, 0, crc32c(b"x"), 1, 0);
        plan.known(0, 1, crc32c(b"q"), 1, 0);
        let mut stored = Vec::new();
        let (outcomes, runs) = plan.judge(&frames, &mut stored);
        assert_eq!(
            outcomes,
            vec![DUPLICATE, CONFLICT, STORED, DUPLICATE, CONFLICT]
        );
        assert_eq!((stored, runs.len()), (vec![2], 1));
    }

    #[test]
    fn frames_after_end_are_out_of_sequence_and_gaps_need_a_walk() {
        let mut r = row("a\"\n", 0);
        r.end_seq = Some(5);
        let mut plan = Plan::new(vec![r]);
        let frames = [
            frame(Some(0), 6, b"x", false),
            frame(Some(0), 1, b"b", false),
            frame(Some(0), 0, b"a", false),
        ];
        let mut stored = Vec::new();
        let (outcomes, runs) = plan.judge(&frames, &mut stored);
        assert_eq!(outcomes, vec![SEQUENCE, STORED, STORED]);
        // 1 then 0: not consecutive in commit order, so two blocks.
        assert_eq!(
            runs.iter().map(|r| r.first_seq).collect::<Vec<_>>(),
            vec![1, 0]
        );
        // next_seq is 2 and the prefix reached 2: nothing earlier to walk.
        assert!(plan.advance().is_empty());
        let (_, p) = plan.progress().next().unwrap();
        assert_eq!((p.next_seq, p.complete), (2, false));
    }

    #[test]
    fn a_closed_gap_extends_over_earlier_frames() {
        let mut r = row("a", 4);
        r.prefix_seq = 1;
        r.prefix_crc32c = crc32c(b"a");
        r.end_seq = Some(3);
        let mut plan = Plan::new(vec![r]);
        let mut stored = Vec::new();
        plan.judge(&[frame(Some(0), 1, b"b", false)], &mut stored);
        assert_eq!(plan.advance(), vec![(0, 2)]);
        assert!(plan.extend(0, 2, 2, crc32c(b"c"), 1));
        assert!(!plan.extend(0, 4, 4, crc32c(b"e"), 1));
        assert!(plan.extend(0, 3, 3, crc32c(b"d"), 1));
        let updates = plan.finish(9);
        let whole = crc32c(b"abcd");
        assert!(updates.starts_with(&format!("[[\"complete\",4,5,1,3,{whole},4,{whole}")));
    }
}
