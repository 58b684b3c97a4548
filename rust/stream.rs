//! One WebSocket stream's per-message work, without Python objects per frame.
//!
//! [`StreamState::accept`] takes a whole message: every frame is decoded and
//! its CRC checked, judged against what the stream knows of its session (the
//! stored END, the look-ahead limit past `next_seq`), admitted by the credit
//! ledger, and either put in the batch for the store or refused with a nack
//! reason. [`StreamState::record`] takes the store's outcome per batched frame;
//! acks and nacks leave as ready-to-send JSON text ([`StreamState::take_ack`],
//! [`StreamState::take_nacks`]).

use std::fmt::Write as _;

use crate::commit;
use crate::framing::{self, FrameError, Verdict, HEADER_SIZE};

/// Nack reasons (PROTOCOL section 3), indexes into [`REASONS`].
pub const CHECKSUM: usize = 0;
pub const WINDOW: usize = 1;
pub const CONFLICT: usize = 2;
pub const TOO_LARGE: usize = 3;
pub const SEQUENCE: usize = 4;
pub const REASONS: [&str; 5] = ["checksum", "window", "conflict", "too_large", "sequence"];

/// One frame of a message that goes to the store; its payload stays in the
/// message at `offset..offset + length`, its header right before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub flags: u8,
    pub pts_us: u64,
    pub crc32c: u32,
    pub offset: usize,
    pub length: u32,
}

impl Accepted {
    /// Where the frame's header starts in the message.
    pub fn record_start(&self) -> usize {
        self.offset - HEADER_SIZE
    }
}

/// What a stream knows of its session, and the answers it owes its client.
#[derive(Debug)]
pub struct StreamState {
    next_seq: u64,
    end_seq: Option<u64>,
    max_frame_bytes: u64,
    max_seq_ahead: u64,
    acked: Vec<u64>,
    duplicate: Vec<u64>,
    rejected: [Vec<u64>; 5],
    /// The session was deleted or archived under the stream (outcome GONE).
    pub gone: bool,
    /// Reused per message: decoding allocates nothing once warm.
    scratch: Vec<framing::Frame>,
}

impl StreamState {
    pub fn new(
        next_seq: u64,
        end_seq: Option<u64>,
        max_frame_bytes: u64,
        max_seq_ahead: u64,
    ) -> StreamState {
        StreamState {
            next_seq,
            end_seq,
            max_frame_bytes,
            max_seq_ahead,
            acked: Vec::new(),
            duplicate: Vec::new(),
            rejected: Default::default(),
            gone: false,
            scratch: Vec::new(),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn end_seq(&self) -> Option<u64> {
        self.end_seq
    }

    /// The session's counters after a commit: limits follow `next_seq`; a
    /// stored END stays (an older report must not undo it).
    pub fn progress(&mut self, next_seq: u64, end_seq: Option<u64>) {
        self.next_seq = self.next_seq.max(next_seq);
        if end_seq.is_some() {
            self.end_seq = end_seq;
        }
    }

    /// Judges every frame of `msg`, pushing the ones to store onto `batch`;
    /// returns their payload bytes. `admit(length)` asks the ledger for credit;
    /// a `closing` stream admits nothing (its frames are nacked `window`).
    ///
    /// Broken framing rejects the whole message: nothing is batched, refused
    /// or admitted, and the error says where.
    pub fn accept(
        &mut self,
        msg: &[u8],
        closing: bool,
        mut admit: impl FnMut(u64) -> bool,
        batch: &mut Vec<Accepted>,
    ) -> Result<u64, FrameError> {
        let mut frames = std::mem::take(&mut self.scratch);
        frames.clear();
        let decoded = framing::decode_each(msg, self.max_frame_bytes, |f| {
            frames.push(f);
            Ok::<(), FrameError>(())
        });
        if let Err(e) = decoded {
            self.scratch = frames;
            return Err(e);
        }
        let seq_limit = self.next_seq.saturating_add(self.max_seq_ahead);
        let mut nbytes = 0u64;
        for f in &frames {
            let seq = u64::from(f.seq);
            let reason = match f.verdict {
                Verdict::TooLarge => Some(TOO_LARGE),
                Verdict::BadCrc => Some(CHECKSUM),
                Verdict::Ok if self.end_seq.is_some_and(|end| seq > end) || seq > seq_limit => {
                    Some(SEQUENCE)
                }
                Verdict::Ok if closing || !admit(u64::from(f.payload_len)) => Some(WINDOW),
                Verdict::Ok => None,
            };
            match reason {
                Some(r) => self.rejected[r].push(seq),
                None => {
                    nbytes += u64::from(f.payload_len);
                    batch.push(Accepted {
                        seq,
                        flags: f.flags,
                        pts_us: f.pts_us,
                        crc32c: f.crc32c,
                        offset: f.payload_offset,
                        length: f.payload_len,
                    });
                }
            }
        }
        keep_small(&mut frames);
        self.scratch = frames;
        Ok(nbytes)
    }

    /// Sorts the store's outcome for each batched frame into acks and nacks.
    pub fn record(&mut self, frames: &[Accepted], outcomes: &[u8]) {
        for (f, &outcome) in frames.iter().zip(outcomes) {
            match outcome {
                commit::STORED => self.acked.push(f.seq),
                commit::DUPLICATE => self.duplicate.push(f.seq),
                commit::CONFLICT => self.rejected[CONFLICT].push(f.seq),
                commit::SEQUENCE => self.rejected[SEQUENCE].push(f.seq),
                _ => self.gone = true,
            }
        }
    }

    /// Refused seqs not yet answered.
    pub fn pending_rejections(&self) -> usize {
        self.rejected.iter().map(Vec::len).sum()
    }

    /// Whether acks are waiting to be sent.
    pub fn has_acks(&self) -> bool {
        !self.acked.is_empty() || !self.duplicate.is_empty()
    }

    /// One `nack` message per reason with refused seqs: (reason, seqs, JSON).
    pub fn take_nacks(&mut self) -> Vec<(&'static str, u64, String)> {
        let mut out = Vec::new();
        for (i, seqs) in self.rejected.iter_mut().enumerate() {
            if seqs.is_empty() {
                continue;
            }
            let count = seqs.len() as u64;
            let mut text = String::from("{\"type\":\"nack\",\"ranges\":");
            push_ranges(&mut text, seqs);
            let _ = write!(text, ",\"reason\":\"{}\"}}", REASONS[i]);
            seqs.clear();
            keep_small(seqs);
            out.push((REASONS[i], count, text));
        }
        out
    }

    /// The `ack` message for everything acked since the last one, with the
    /// window to advertise: (acked, duplicate, JSON).
    pub fn take_ack(&mut self, window_bytes: u64) -> (u64, u64, String) {
        let acked = self.acked.len() as u64;
        let duplicate = self.duplicate.len() as u64;
        let mut text = String::from("{\"type\":\"ack\",\"acked\":");
        push_ranges(&mut text, &mut self.acked);
        text.push_str(",\"duplicate\":");
        push_ranges(&mut text, &mut self.duplicate);
        let _ = write!(text, ",\"window_bytes\":{window_bytes}}}");
        self.acked.clear();
        self.duplicate.clear();
        keep_small(&mut self.acked);
        keep_small(&mut self.duplicate);
        (acked, duplicate, text)
    }
}

/// Capacity a stream's buffers keep between messages: one message of tiny frames may
/// need far more, but an idle stream must not hold on to that peak.
const KEEP_CAPACITY: usize = 1024;

fn keep_small<T>(v: &mut Vec<T>) {
    if v.capacity() > KEEP_CAPACITY {
        v.clear();
        v.shrink_to(KEEP_CAPACITY);
    }
}

/// `seqs` (any order, repeats allowed) as sorted inclusive `[first,last]` pairs.
pub fn push_ranges(out: &mut String, seqs: &mut [u64]) {
    // Acks arrive in order almost always: skip the sort when they are.
    if !seqs.is_sorted() {
        seqs.sort_unstable();
    }
    out.push('[');
    let mut i = 0;
    let mut first_pair = true;
    while i < seqs.len() {
        let first = seqs[i];
        let mut last = first;
        i += 1;
        while i < seqs.len() && (seqs[i] == last || seqs[i] == last + 1) {
            last = seqs[i];
            i += 1;
        }
        if !first_pair {
            out.push(',');
        }
        first_pair = false;
        let _ = write!(out, "[{first},{last}]");
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_frame;

    fn message(frames: &[(u32, &[u8], bool)]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|&(seq, p, end)| encode_frame(seq, p, 7, end))
            .collect()
    }

    #[test]
    fn in_order_frames_are_batched_with_their_payload_positions() {
        let mut s = StreamState::new(0, None, 1024, 100);
        let msg = message(&[(0, b"ab", false), (1, b"cde", false)]);
        let mut batch = Vec::new();
        let n = s.accept(&msg, false, |_| true, &mut batch).unwrap();
        assert_eq!(n, 5);
        assert_eq!(batch.len(), 2);
        assert_eq!(&msg[batch[1].offset..batch[1].offset + 3], b"cde");
        assert_eq!(batch[1].record_start(), 2 + 2 * HEADER_SIZE - HEADER_SIZE);
        assert_eq!(s.pending_rejections(), 0);
    }

    #[test]
    fn refusals_get_their_reason_and_nothing_of_a_broken_message_counts() {
        let mut s = StreamState::new(10, Some(20), 4, 5);
        let mut bad_crc = encode_frame(11, b"xy", 0, false);
        bad_crc[HEADER_SIZE] ^= 1;
        let mut msg = message(&[(12, b"ok", false), (16, b"far", false), (21, b"end", false)]);
        msg.extend(bad_crc);
        msg.extend(encode_frame(13, b"12345", 0, false));
        msg.extend(encode_frame(14, b"no", 0, false));
        let mut credit = 1;
        let mut batch = Vec::new();
        let admit = |_| {
            credit -= 1;
            credit >= 0
        };
        s.accept(&msg, false, admit, &mut batch).unwrap();
        assert_eq!(batch.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![12]);
        let nacks = s.take_nacks();
        let reasons: Vec<_> = nacks.iter().map(|(r, n, _)| (*r, *n)).collect();
        assert_eq!(
            reasons,
            vec![
                ("checksum", 1),
                ("window", 1),
                ("too_large", 1),
                ("sequence", 2)
            ]
        );
        assert_eq!(
            nacks[3].2,
            r#"{"type":"nack","ranges":[[16,16],[21,21]],"reason":"sequence"}"#
        );
        // Truncated: the whole message is refused, nothing batched or counted.
        let mut batch = Vec::new();
        let broken = &message(&[(12, b"ok", false)])[..HEADER_SIZE + 1];
        assert!(s.accept(broken, false, |_| true, &mut batch).is_err());
        assert!(batch.is_empty());
        assert_eq!(s.pending_rejections(), 0);
    }

    #[test]
    fn outcomes_become_ack_ranges_and_gone() {
        let mut s = StreamState::new(0, None, 1024, 100);
        let msg = message(&[(0, b"a", false), (1, b"b", false), (2, b"c", false)]);
        let mut batch = Vec::new();
        s.accept(&msg, false, |_| true, &mut batch).unwrap();
        s.record(&batch, &[commit::STORED, commit::DUPLICATE, commit::STORED]);
        assert!(s.has_acks());
        let (acked, dup, text) = s.take_ack(640);
        assert_eq!((acked, dup), (2, 1));
        assert_eq!(
            text,
            r#"{"type":"ack","acked":[[0,0],[2,2]],"duplicate":[[1,1]],"window_bytes":640}"#
        );
        assert!(!s.has_acks());
        s.record(&batch[..1], &[commit::GONE]);
        assert!(s.gone);
    }

    #[test]
    fn progress_moves_limits_and_keeps_a_stored_end() {
        let mut s = StreamState::new(0, None, 1024, 2);
        s.progress(10, Some(40));
        s.progress(5, None);
        assert_eq!((s.next_seq(), s.end_seq()), (10, Some(40)));
        let mut batch = Vec::new();
        s.accept(
            &message(&[(12, b"x", false), (13, b"y", false)]),
            false,
            |_| true,
            &mut batch,
        )
        .unwrap();
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_message_of_tiny_frames_leaves_no_peak_buffers_behind() {
        let mut s = StreamState::new(0, None, 1024, 1 << 20);
        let frames: Vec<(u32, &[u8], bool)> =
            (0..5000).map(|seq| (seq, &b"x"[..], false)).collect();
        let msg = message(&frames);
        let mut batch = Vec::new();
        s.accept(&msg, false, |_| true, &mut batch).unwrap();
        let stored = vec![commit::STORED; batch.len()];
        s.record(&batch, &stored);
        let (acked, _, text) = s.take_ack(0);
        assert_eq!(acked, 5000);
        assert!(text.contains("[[0,4999]]"));
        assert!(s.scratch.capacity() <= KEEP_CAPACITY);
        assert!(s.acked.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn ranges_merge_repeats_and_sort() {
        let mut out = String::new();
        push_ranges(&mut out, &mut [5, 3, 4, 4, 9, 1]);
        assert_eq!(out, "[[1,1],[3,5],[9,9]]");
    }
}
