//! Blocks: how stored frames lie on disk (segment files) and in a PostgreSQL row.
//!
//! A block is a run of frames of one session with consecutive seqs, stored by
//! one commit. It starts with a header naming the session and the run, then
//! holds every frame as its wire record (the 24-byte frame header, then the
//! payload), exactly as it arrived:
//!
//! ```text
//! magic "VXB1"  count u32  first_seq u64  records_len u64  sid_len u16  0u16
//! session_id (sid_len bytes, UTF-8)  header_crc u32 (CRC-32C of the bytes before it)
//! count records: frame header (24 bytes) + payload
//! ```
//!
//! All integers are big-endian, like the wire header. A segment is blocks back
//! to back, so it describes itself: the index can be rebuilt from it
//! ([`scan`]), and a resend is judged against the stored record's header.

use crate::crc::{crc32c, crc32c_combine};
use crate::framing::{FLAG_END, HEADER_SIZE, MAGIC as MAGIC_FRAME, VERSION};

pub const MAGIC: [u8; 4] = *b"VXB1";
/// Header bytes besides the session id and the trailing CRC.
const FIXED: usize = 28;
/// Longest session id a block can name.
pub const MAX_SESSION_ID: usize = 1024;

/// Header bytes of a block of `session_id`.
pub fn header_len(session_id: &str) -> usize {
    FIXED + session_id.len() + 4
}

/// A block's header, `records_len` being the bytes of its records.
pub fn encode_header(session_id: &str, first_seq: u64, count: u32, records_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(session_id));
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&count.to_be_bytes());
    h.extend_from_slice(&first_seq.to_be_bytes());
    h.extend_from_slice(&records_len.to_be_bytes());
    h.extend_from_slice(&(session_id.len() as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(session_id.as_bytes());
    let crc = crc32c(&h);
    h.extend_from_slice(&crc.to_be_bytes());
    h
}

/// A parsed block header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub session_id: String,
    pub first_seq: u64,
    pub count: u32,
    pub records_len: u64,
    pub header_len: usize,
}

impl Head {
    pub fn last_seq(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.count) - 1)
    }

    /// Bytes of the whole block.
    pub fn block_len(&self) -> u64 {
        (self.header_len as u64).saturating_add(self.records_len)
    }
}

/// One record of a block; `payload` is where its payload starts in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub flags: u8,
    pub pts_us: u64,
    pub length: u32,
    pub crc32c: u32,
    pub payload: usize,
}

/// What is wrong with a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockError(pub String);

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// The header at the start of `data`.
pub fn parse_head(data: &[u8]) -> Result<Head, BlockError> {
    if data.len() < FIXED + 4 {
        return Err(BlockError(format!(
            "{} bytes: too short for a block",
            data.len()
        )));
    }
    if data[..4] != MAGIC {
        return Err(BlockError("no block starts here (bad magic)".into()));
    }
    let sid_len = usize::from(u16::from_be_bytes([data[24], data[25]]));
    if sid_len > MAX_SESSION_ID {
        return Err(BlockError(format!("session id of {sid_len} bytes")));
    }
    let header_len = FIXED + sid_len + 4;
    if data.len() < header_len {
        return Err(BlockError("block header cut short".into()));
    }
    let crc = be_u32(data, FIXED + sid_len);
    if crc32c(&data[..FIXED + sid_len]) != crc {
        return Err(BlockError("block header CRC mismatch".into()));
    }
    let count = be_u32(data, 4);
    if count == 0 {
        return Err(BlockError("block of no frames".into()));
    }
    let session_id = std::str::from_utf8(&data[FIXED..FIXED + sid_len])
        .map_err(|_| BlockError("session id is not UTF-8".into()))?
        .to_string();
    Ok(Head {
        session_id,
        first_seq: be_u64(data, 8),
        count,
        records_len: be_u64(data, 16),
        header_len,
    })
}

/// A record's frame header: the wire header's magic and version, then its
/// fields as stored. The wire's other rules (reserved flags, no empty frame
/// without END) were checked when the frame arrived, and the store API may
/// hold frames no wire message could carry.
fn record_header(h: &[u8]) -> Option<crate::framing::Header> {
    if h.len() < HEADER_SIZE || h[..2] != MAGIC_FRAME || h[2] != VERSION {
        return None;
    }
    Some(crate::framing::Header {
        flags: h[3],
        seq: be_u32(h, 4),
        pts_us: be_u64(h, 8),
        length: be_u32(h, 16),
        crc32c: be_u32(h, 20),
    })
}

/// The records of the block `data` (exactly one whole block). Every record's
/// header must be valid and its seq the next one; with `verify`, every payload
/// must match its CRC-32C.
pub fn parse(data: &[u8], verify: bool) -> Result<(Head, Vec<Record>), BlockError> {
    let head = parse_head(data)?;
    if head.block_len() != data.len() as u64 {
        return Err(BlockError(format!(
            "block of {} bytes where its header says {}",
            data.len(),
            head.block_len()
        )));
    }
    let mut records = Vec::with_capacity(head.count as usize);
    let mut at = head.header_len;
    if head.first_seq.checked_add(u64::from(head.count)).is_none() {
        return Err(BlockError("seqs past the largest".into()));
    }
    for i in 0..u64::from(head.count) {
        let seq = head.first_seq + i;
        let Some(h) = data.get(at..at + HEADER_SIZE) else {
            return Err(BlockError(format!("record of seq {seq} cut short")));
        };
        let h = record_header(h)
            .ok_or_else(|| BlockError(format!("record of seq {seq}: not a frame header")))?;
        if u64::from(h.seq) != seq {
            return Err(BlockError(format!(
                "record of seq {} where {seq} belongs",
                h.seq
            )));
        }
        let payload = at + HEADER_SIZE;
        let end = payload + h.length as usize;
        if end > data.len() {
            return Err(BlockError(format!("payload of seq {seq} cut short")));
        }
        if verify && crc32c(&data[payload..end]) != h.crc32c {
            return Err(BlockError(format!(
                "payload of seq {seq} does not match its CRC-32C"
            )));
        }
        records.push(Record {
            seq,
            flags: h.flags,
            pts_us: h.pts_us,
            length: h.length,
            crc32c: h.crc32c,
            payload,
        });
        at = end;
    }
    if at != data.len() {
        return Err(BlockError("bytes after the last record".into()));
    }
    Ok((head, records))
}

/// A block as the index describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub session_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Where the block starts, and its bytes (header and records).
    pub offset: u64,
    pub length: u64,
    /// Payload bytes, and the CRC-32C of the payloads in seq order.
    pub payload_bytes: u64,
    pub crc32c: u32,
    /// The seq of the block's END frame, if it holds one.
    pub end_seq: Option<u64>,
}

/// The extent of a parsed block starting at `offset`.
pub fn extent_of(head: &Head, records: &[Record], offset: u64) -> Extent {
    let mut crc = 0u32;
    let mut bytes = 0u64;
    let mut end_seq = None;
    for r in records {
        if r.flags & FLAG_END != 0 {
            end_seq = Some(r.seq);
        }
        if r.length > 0 {
            crc = crc32c_combine(crc, r.crc32c, u64::from(r.length));
            bytes += u64::from(r.length);
        }
    }
    Extent {
        session_id: head.session_id.clone(),
        first_seq: head.first_seq,
        last_seq: head.last_seq(),
        offset,
        length: head.block_len(),
        payload_bytes: bytes,
        crc32c: crc,
        end_seq,
    }
}

/// A stretch of a segment that should hold a block but does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub length: u64,
    pub reason: String,
}

/// What a scan of a segment found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every whole, valid block, in order.
    pub extents: Vec<Extent>,
    /// Stretches that are not valid blocks, with valid blocks after them.
    pub damaged: Vec<Damage>,
    /// Where the scan stopped: the end of the data, or the start of a tail
    /// in which no valid block begins (a torn write), with the reason.
    pub stop: u64,
    pub why: Option<String>,
}

/// The intact frames of a block whose header holds but whose records do not
/// all: every record whose header reads, whose seq is the next one and whose
/// payload matches its CRC-32C, up to the first record whose header does not
/// read (past it, record boundaries are unknown).
pub fn salvage(data: &[u8]) -> Result<(Head, Vec<Record>), BlockError> {
    let head = parse_head(data)?;
    let end = usize::try_from(head.block_len())
        .unwrap_or(usize::MAX)
        .min(data.len());
    let mut out = Vec::new();
    let mut at = head.header_len;
    for i in 0..u64::from(head.count) {
        let Some(seq) = head.first_seq.checked_add(i) else {
            break;
        };
        let Some(h) = data.get(at..at + HEADER_SIZE).and_then(record_header) else {
            break;
        };
        if u64::from(h.seq) != seq {
            break;
        }
        let payload = at + HEADER_SIZE;
        let stop = payload + h.length as usize;
        if stop > end {
            break;
        }
        if crc32c(&data[payload..stop]) == h.crc32c {
            out.push(Record {
                seq,
                flags: h.flags,
                pts_us: h.pts_us,
                length: h.length,
                crc32c: h.crc32c,
                payload,
            });
        }
        at = stop;
    }
    Ok((head, out))
}

/// Every whole, valid block of `data` (a segment file's bytes from offset
/// `base`), walking from block to block: each block's header says where the
/// next one starts, so the walk never reads inside a payload (a client's bytes
/// could look like a block). Runs of zero bytes (the blocks of deleted
/// sessions, erased) are stepped over: a block never starts with a zero byte.
/// A block whose header holds but whose records do not is reported as damage
/// and stepped over; at a header that does not hold, the walk stops (the
/// caller may go on from a place it trusts, such as the next indexed block).
pub fn scan(data: &[u8], base: u64) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    while at < data.len() {
        if data[at] == 0 {
            at += data[at..].iter().take_while(|&&b| b == 0).count();
            continue;
        }
        let rest = &data[at..];
        let (skip, reason) = match parse_head(rest) {
            Ok(head) => {
                let len = usize::try_from(head.block_len()).unwrap_or(usize::MAX);
                match rest.get(..len).map(|block| parse(block, true)) {
                    Some(Ok((head, records))) => {
                        out.extents
                            .push(extent_of(&head, &records, base + at as u64));
                        at += len;
                        continue;
                    }
                    Some(Err(e)) => (Some(len), e.0),
                    None => (None, "block cut short".to_string()),
                }
            }
            Err(e) => (None, e.0),
        };
        match skip.map(|len| at + len) {
            Some(next) => {
                out.damaged.push(Damage {
                    offset: base + at as u64,
                    length: (next - at) as u64,
                    reason,
                });
                at = next;
            }
            None => {
                out.stop = base + at as u64;
                out.why = Some(reason);
                return out;
            }
        }
    }
    out.stop = base + at as u64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::encode_frame;

    fn block(sid: &str, first: u32, payloads: &[&[u8]]) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            records.extend(encode_frame(first + i as u32, p, 7, p.is_empty()));
        }
        let mut out = encode_header(
            sid,
            u64::from(first),
            payloads.len() as u32,
            records.len() as u64,
        );
        out.extend(records);
        out
    }

    #[test]
    fn a_block_reads_back_and_describes_itself() {
        let data = block("sess", 5, &[b"ab", b"cde", b""]);
        let (head, records) = parse(&data, true).unwrap();
        assert_eq!(
            (head.session_id.as_str(), head.first_seq, head.last_seq()),
            ("sess", 5, 7)
        );
        assert_eq!(records.len(), 3);
        let r = records[1];
        assert_eq!(&data[r.payload..r.payload + r.length as usize], b"cde");
        assert_eq!((records[2].length, records[2].flags), (0, 1));
        let e = extent_of(&head, &records, 100);
        assert_eq!(
            (e.offset, e.length, e.payload_bytes),
            (100, data.len() as u64, 5)
        );
        assert_eq!(e.crc32c, crc32c(b"abcde"));
    }

    #[test]
    fn corruption_anywhere_is_found() {
        let data = block("s", 0, &[b"hello", b"world"]);
        let header = header_len("s");
        for at in [
            0,
            5,
            10,
            header - 1,
            header + 4,
            header + 24,
            data.len() - 1,
        ] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            assert!(parse(&bad, true).is_err(), "flip at {at} went unnoticed");
        }
        assert!(parse(&data[..data.len() - 1], true).is_err());
    }

    #[test]
    fn scan_stops_at_the_first_torn_block() {
        let a = block("a", 0, &[b"x"]);
        let b = block("b", 3, &[b"yy", b"zz"]);
        let mut data = a.clone();
        data.extend(&b);
        data.extend(&b[..b.len() - 2]); // a torn write
        let found = scan(&data, 1000);
        assert_eq!(found.extents.len(), 2);
        assert_eq!(found.extents[1].offset, 1000 + a.len() as u64);
        assert_eq!(
            (found.extents[1].first_seq, found.extents[1].last_seq),
            (3, 4)
        );
        assert_eq!(found.stop, 1000 + (a.len() + b.len()) as u64);
        assert!(found.why.is_some());
        assert!(found.damaged.is_empty());
        let whole = scan(&data[..a.len() + b.len()], 0);
        assert_eq!(
            (whole.extents.len(), whole.stop, whole.why),
            (2, (a.len() + b.len()) as u64, None)
        );
    }

    #[test]
    fn scan_steps_over_erased_blocks_and_finds_ends() {
        let a = block("a", 0, &[b"x"]);
        let b = block("b", 0, &[b"yy", b""]);
        let mut data = vec![0u8; a.len()]; // a, erased
        data.extend(&b);
        data.extend(vec![0u8; 10]);
        let found = scan(&data, 0);
        assert_eq!(
            (found.extents.len(), found.stop, found.why),
            (1, data.len() as u64, None)
        );
        assert_eq!(found.extents[0].offset, a.len() as u64);
        assert_eq!(found.extents[0].end_seq, Some(1));
    }

    #[test]
    fn scan_goes_on_after_a_damaged_block() {
        let a = block("a", 0, &[b"x"]);
        let b = block("b", 0, &[b"yy", b"ww"]);
        let c = block("c", 0, &[b"zzz"]);
        // A payload byte: the block is stepped over, the walk goes on.
        let mut data = [a.clone(), b.clone(), c.clone()].concat();
        data[a.len() + b.len() - 1] ^= 0x20;
        let found = scan(&data, 0);
        let ids: Vec<_> = found
            .extents
            .iter()
            .map(|e| e.session_id.as_str())
            .collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(found.damaged.len(), 1);
        assert_eq!(found.damaged[0].offset, a.len() as u64);
        assert_eq!(found.damaged[0].length, b.len() as u64);
        assert_eq!((found.stop, found.why.is_none()), (data.len() as u64, true));
        // The intact frame of the damaged block can be saved.
        let (head, intact) = salvage(&data[a.len()..a.len() + b.len()]).unwrap();
        assert_eq!((head.session_id.as_str(), intact.len()), ("b", 1));
        assert_eq!(intact[0].seq, 0);
        // A header byte: the walk stops there (what follows could be anything).
        let mut data = [a.clone(), b.clone(), c.clone()].concat();
        data[a.len() + 2] ^= 0x20;
        let found = scan(&data, 0);
        assert_eq!(found.extents.len(), 1);
        assert_eq!(found.stop, a.len() as u64);
        assert!(found.why.is_some());
    }

    #[test]
    fn a_block_inside_a_payload_is_never_taken_for_one() {
        let inner = block("forged", 7, &[b"evil"]);
        let outer = block("real", 0, &[&inner, b"x"]);
        let found = scan(&outer, 0);
        let ids: Vec<_> = found
            .extents
            .iter()
            .map(|e| e.session_id.as_str())
            .collect();
        assert_eq!(ids, vec!["real"]);
        assert!(found.damaged.is_empty());
    }
}
