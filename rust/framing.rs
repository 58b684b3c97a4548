//! Frame codec (PROTOCOL section 1): header parsing and encoding, one-shot
//! decoding of a whole WebSocket message, and an incremental decoder for byte
//! streams split anywhere (HTTP bodies). Pure Rust, no Python.

use std::fmt;

use crate::crc;

/// Bytes in a frame header.
pub const HEADER_SIZE: usize = 24;
/// `VF`.
pub const MAGIC: [u8; 2] = [0x56, 0x46];
/// The only protocol version.
pub const VERSION: u8 = 1;
/// Flags bit 0: last frame of the stream.
pub const FLAG_END: u8 = 0x01;
/// Flags bits 1-7 must be zero.
const RESERVED_FLAGS: u8 = !FLAG_END;

/// What became of a well-framed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// CRC matches.
    Ok = 0,
    /// CRC mismatch: nack "checksum".
    BadCrc = 1,
    /// Length above `max_frame_bytes`: nack "too_large" (CRC not computed).
    TooLarge = 2,
}

/// Why framing is broken, with what was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The first two bytes are not `VF`.
    BadMagic { found: [u8; 2] },
    /// Version byte is not 1.
    BadVersion { found: u8 },
    /// A reserved flag bit is set.
    ReservedFlags { flags: u8 },
    /// Zero-length payload without END.
    EmptyFrame,
    /// The frame needs `needed` bytes from its header on; only `available` are there.
    Truncated { needed: u64, available: u64 },
}

impl ErrorKind {
    /// The stable name exposed as `FrameError.kind`.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::BadMagic { .. } => "bad_magic",
            ErrorKind::BadVersion { .. } => "bad_version",
            ErrorKind::ReservedFlags { .. } => "reserved_flags",
            ErrorKind::EmptyFrame => "empty_frame",
            ErrorKind::Truncated { .. } => "truncated",
        }
    }
}

/// Broken framing at the frame whose header starts at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub kind: ErrorKind,
    pub offset: u64,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.kind {
            ErrorKind::BadMagic { found } => write!(
                f,
                "bad_magic: frame at byte {at} starts with 0x{:02x}{:02x}, expected 0x5646 (\"VF\")",
                found[0], found[1]
            ),
            ErrorKind::BadVersion { found } => write!(
                f,
                "bad_version: frame at byte {at} has version {found}, only {VERSION} is supported"
            ),
            ErrorKind::ReservedFlags { flags } => write!(
                f,
                "reserved_flags: frame at byte {at} has flags 0x{flags:02x}, bits 1-7 must be 0"
            ),
            ErrorKind::EmptyFrame => write!(
                f,
                "empty_frame: frame at byte {at} has a zero-length payload without END"
            ),
            ErrorKind::Truncated { needed, available } => write!(
                f,
                "truncated: frame at byte {at} needs {needed} bytes, only {available} follow"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// A parsed, valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub seq: u32,
    pub pts_us: u64,
    pub length: u32,
    pub crc32c: u32,
}

#[inline]
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the header bytes present so far (a prefix of at most 24 bytes), in
/// protocol order: magic, version, reserved flags, empty frame. The same
/// checks apply to one-shot and incremental decoding, so both agree on the
/// error wherever a stream is split.
#[inline]
fn check_prefix(p: &[u8]) -> Result<(), ErrorKind> {
    let n = p.len();
    if n >= 2 && p[..2] != MAGIC {
        return Err(ErrorKind::BadMagic {
            found: [p[0], p[1]],
        });
    }
    if n >= 3 && p[2] != VERSION {
        return Err(ErrorKind::BadVersion { found: p[2] });
    }
    if n >= 4 && p[3] & RESERVED_FLAGS != 0 {
        return Err(ErrorKind::ReservedFlags { flags: p[3] });
    }
    if n >= 20 && be_u32(p, 16) == 0 && p[3] & FLAG_END == 0 {
        return Err(ErrorKind::EmptyFrame);
    }
    Ok(())
}

/// Parses and validates a complete header.
#[inline]
pub fn parse_header(h: &[u8; HEADER_SIZE]) -> Result<Header, ErrorKind> {
    check_prefix(h)?;
    Ok(Header {
        flags: h[3],
        seq: be_u32(h, 4),
        pts_us: u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        length: be_u32(h, 16),
        crc32c: be_u32(h, 20),
    })
}

/// A 24-byte header exactly as given, unchecked.
pub fn encode_header(
    seq: u32,
    length: u32,
    crc32c: u32,
    pts_us: u64,
    flags: u8,
) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = flags;
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..16].copy_from_slice(&pts_us.to_be_bytes());
    h[16..20].copy_from_slice(&length.to_be_bytes());
    h[20..24].copy_from_slice(&crc32c.to_be_bytes());
    h
}

/// Writes one frame (header then payload, CRC computed) into `out`, which must
/// be exactly `HEADER_SIZE + payload.len()` bytes; `payload.len()` must fit in u32.
pub fn write_frame(out: &mut [u8], seq: u32, payload: &[u8], pts_us: u64, end: bool) {
    debug_assert_eq!(out.len(), HEADER_SIZE + payload.len());
    let length = u32::try_from(payload.len()).expect("payload longer than u32::MAX");
    let flags = if end { FLAG_END } else { 0 };
    let header = encode_header(seq, length, crc::crc32c(payload), pts_us, flags);
    out[..HEADER_SIZE].copy_from_slice(&header);
    out[HEADER_SIZE..].copy_from_slice(payload);
}

/// One frame, header and payload, with its CRC-32C computed.
pub fn encode_frame(seq: u32, payload: &[u8], pts_us: u64, end: bool) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE + payload.len()];
    write_frame(&mut out, seq, payload, pts_us, end);
    out
}

#[inline]
fn verdict_for(header: &Header, payload: &[u8]) -> Verdict {
    if crc::crc32c(payload) == header.crc32c {
        Verdict::Ok
    } else {
        Verdict::BadCrc
    }
}

/// One frame of a decoded message; the payload stays in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u32,
    pub flags: u8,
    pub pts_us: u64,
    pub payload_offset: usize,
    pub payload_len: u32,
    pub crc32c: u32,
    pub verdict: Verdict,
}

/// Decodes every frame of `msg` in order, handing each to `sink`.
///
/// A message must hold at least one frame: an empty one is `truncated` at 0.
/// Stops at the first broken frame with its [`FrameError`]; frames already
/// handed over are then to be discarded (the message is rejected whole).
#[inline]
pub fn decode_each<E, F>(msg: &[u8], max_frame_bytes: u64, mut sink: F) -> Result<(), E>
where
    E: From<FrameError>,
    F: FnMut(Frame) -> Result<(), E>,
{
    let fail = |kind, offset: usize| {
        Err(E::from(FrameError {
            kind,
            offset: offset as u64,
        }))
    };
    if msg.is_empty() {
        return fail(
            ErrorKind::Truncated {
                needed: HEADER_SIZE as u64,
                available: 0,
            },
            0,
        );
    }
    let mut off = 0usize;
    while off < msg.len() {
        let rest = &msg[off..];
        let Some(hbytes) = rest.first_chunk::<HEADER_SIZE>() else {
            if let Err(kind) = check_prefix(rest) {
                return fail(kind, off);
            }
            return fail(
                ErrorKind::Truncated {
                    needed: HEADER_SIZE as u64,
                    available: rest.len() as u64,
                },
                off,
            );
        };
        let header = match parse_header(hbytes) {
            Ok(h) => h,
            Err(kind) => return fail(kind, off),
        };
        let len = header.length as usize;
        let body = &rest[HEADER_SIZE..];
        if len > body.len() {
            return fail(
                ErrorKind::Truncated {
                    needed: HEADER_SIZE as u64 + u64::from(header.length),
                    available: rest.len() as u64,
                },
                off,
            );
        }
        let verdict = if u64::from(header.length) > max_frame_bytes {
            Verdict::TooLarge
        } else {
            verdict_for(&header, &body[..len])
        };
        sink(Frame {
            seq: header.seq,
            flags: header.flags,
            pts_us: header.pts_us,
            payload_offset: off + HEADER_SIZE,
            payload_len: header.length,
            crc32c: header.crc32c,
            verdict,
        })?;
        off += HEADER_SIZE + len;
    }
    Ok(())
}

/// Every frame of one message, or the first framing error.
pub fn decode(msg: &[u8], max_frame_bytes: u64) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    decode_each(msg, max_frame_bytes, |f| {
        frames.push(f);
        Ok::<(), FrameError>(())
    })?;
    Ok(frames)
}

/// Where a streamed frame's payload is.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Wholly inside the chunk just fed.
    Borrowed(&'a [u8]),
    /// Assembled from several chunks.
    Owned(Vec<u8>),
    /// Too large: skipped, never buffered.
    Skipped,
}

impl Payload<'_> {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Payload::Borrowed(b) => Some(b),
            Payload::Owned(v) => Some(v),
            Payload::Skipped => None,
        }
    }
}

/// A frame completed by [`StreamDecoder::feed`].
#[derive(Debug, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    pub seq: u32,
    pub flags: u8,
    pub pts_us: u64,
    pub payload: Payload<'a>,
    pub crc32c: u32,
    pub verdict: Verdict,
}

impl<'a> StreamFrame<'a> {
    fn new(header: &Header, payload: Payload<'a>, verdict: Verdict) -> Self {
        StreamFrame {
            seq: header.seq,
            flags: header.flags,
            pts_us: header.pts_us,
            payload,
            crc32c: header.crc32c,
            verdict,
        }
    }
}

/// Most payload space reserved before the bytes arrive.
const RESERVE_AHEAD: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum State {
    /// Collecting a header into `StreamDecoder::header`.
    Header,
    /// Collecting the payload into `StreamDecoder::buf`.
    Payload(Header),
    /// Letting a too-large payload stream past.
    Skip(Header, u64),
}

/// Incremental decoder: yields whole frames from a byte stream split anywhere.
///
/// Holds at most one header plus `max_frame_bytes`. Once it has met broken
/// framing it stays failed and every later call returns the same error.
#[derive(Debug)]
pub struct StreamDecoder {
    max_frame_bytes: u64,
    state: State,
    header: [u8; HEADER_SIZE],
    header_len: usize,
    buf: Vec<u8>,
    consumed: u64,
    /// Stream offset of the current frame's header.
    frame_offset: u64,
    failed: Option<FrameError>,
}

impl StreamDecoder {
    pub fn new(max_frame_bytes: u64) -> Self {
        StreamDecoder {
            max_frame_bytes,
            state: State::Header,
            header: [0; HEADER_SIZE],
            header_len: 0,
            buf: Vec::new(),
            consumed: 0,
            frame_offset: 0,
            failed: None,
        }
    }

    /// Bytes of the partial frame held waiting for the rest of it (a
    /// too-large frame's payload is skipped, so only its header counts).
    pub fn buffered(&self) -> usize {
        match self.state {
            State::Header => self.header_len,
            State::Payload(_) => HEADER_SIZE + self.buf.len(),
            State::Skip(..) => HEADER_SIZE,
        }
    }

    /// Total bytes fed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Appends the frames completed by `chunk` to `out`.
    ///
    /// On broken framing the decoder fails for good. If `chunk` completed
    /// frames before the broken one, those are still appended and `Ok` is
    /// returned; the error then comes from the next `feed` or `finish`. So the
    /// frames handed out are exactly those before the error, however the
    /// stream was split.
    pub fn feed<'a>(
        &mut self,
        chunk: &'a [u8],
        out: &mut Vec<StreamFrame<'a>>,
    ) -> Result<(), FrameError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let before = out.len();
        self.consumed += chunk.len() as u64;
        match self.run(chunk, out) {
            Ok(()) => Ok(()),
            Err(kind) => {
                let err = FrameError {
                    kind,
                    offset: self.frame_offset,
                };
                self.failed = Some(err);
                if out.len() > before {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Declares the end of the stream: `truncated` if a frame is partial.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let needed = match self.state {
            State::Header if self.header_len == 0 => return Ok(()),
            State::Header => HEADER_SIZE as u64,
            State::Payload(h) | State::Skip(h, _) => HEADER_SIZE as u64 + u64::from(h.length),
        };
        let err = FrameError {
            kind: ErrorKind::Truncated {
                needed,
                available: self.consumed - self.frame_offset,
            },
            offset: self.frame_offset,
        };
        self.failed = Some(err);
        Err(err)
    }

    fn complete(&mut self, header: &Header) {
        self.state = State::Header;
        self.frame_offset += HEADER_SIZE as u64 + u64::from(header.length);
    }

    fn run<'a>(
        &mut self,
        chunk: &'a [u8],
        out: &mut Vec<StreamFrame<'a>>,
    ) -> Result<(), ErrorKind> {
        let mut pos = 0usize;
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match self.state {
                State::Header => {
                    let header = if self.header_len == 0 && rest.len() >= HEADER_SIZE {
                        // Whole header in the chunk: parse in place.
                        pos += HEADER_SIZE;
                        parse_header(rest.first_chunk::<HEADER_SIZE>().expect("length checked"))?
                    } else {
                        let take = (HEADER_SIZE - self.header_len).min(rest.len());
                        self.header[self.header_len..self.header_len + take]
                            .copy_from_slice(&rest[..take]);
                        self.header_len += take;
                        pos += take;
                        if self.header_len < HEADER_SIZE {
                            check_prefix(&self.header[..self.header_len])?;
                            continue;
                        }
                        self.header_len = 0;
                        parse_header(&self.header)?
                    };
                    let len = header.length as usize;
                    let rest = &chunk[pos..];
                    if u64::from(header.length) > self.max_frame_bytes {
                        // length > max >= 0, so there is at least one byte to skip.
                        self.state = State::Skip(header, u64::from(header.length));
                    } else if rest.len() >= len {
                        // Whole payload in the chunk: hand it out borrowed.
                        let payload = &rest[..len];
                        pos += len;
                        out.push(StreamFrame::new(
                            &header,
                            Payload::Borrowed(payload),
                            verdict_for(&header, payload),
                        ));
                        self.complete(&header);
                    } else {
                        // Grow with the data beyond 1 MiB: a header alone must not
                        // make us allocate up to max_frame_bytes ahead of any payload.
                        self.buf.reserve_exact(len.min(RESERVE_AHEAD));
                        self.state = State::Payload(header);
                    }
                }
                State::Payload(header) => {
                    let take = (header.length as usize - self.buf.len()).min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    pos += take;
                    if self.buf.len() == header.length as usize {
                        let payload = std::mem::take(&mut self.buf);
                        let verdict = verdict_for(&header, &payload);
                        out.push(StreamFrame::new(&header, Payload::Owned(payload), verdict));
                        self.complete(&header);
                    }
                }
                State::Skip(header, remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    if take == remaining {
                        out.push(StreamFrame::new(
                            &header,
                            Payload::Skipped,
                            Verdict::TooLarge,
                        ));
                        self.complete(&header);
                    } else {
                        self.state = State::Skip(header, remaining - take);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    /// What a frame is, independent of how it was decoded.
    type Seen = (u32, u8, u64, Option<Vec<u8>>, u32, Verdict);

    fn seen_one_shot(msg: &[u8], max: u64) -> Result<Vec<Seen>, FrameError> {
        Ok(decode(msg, max)?
            .into_iter()
            .map(|f| {
                let payload = (f.verdict != Verdict::TooLarge).then(|| {
                    msg[f.payload_offset..f.payload_offset + f.payload_len as usize].to_vec()
                });
                (f.seq, f.flags, f.pts_us, payload, f.crc32c, f.verdict)
            })
            .collect())
    }

    /// Feeds `chunks` in turn; returns the frames handed out and the error met, if any.
    fn seen_streamed(chunks: &[&[u8]], max: u64) -> (Vec<Seen>, Option<FrameError>) {
        let mut dec = StreamDecoder::new(max);
        let mut seen = Vec::new();
        for chunk in chunks {
            let mut out = Vec::new();
            let fed = dec.feed(chunk, &mut out);
            assert!(dec.buffered() as u64 <= HEADER_SIZE as u64 + max);
            seen.extend(out.into_iter().map(|f| {
                let payload = f.payload.bytes().map(<[u8]>::to_vec);
                (f.seq, f.flags, f.pts_us, payload, f.crc32c, f.verdict)
            }));
            if let Err(e) = fed {
                return (seen, Some(e));
            }
        }
        (seen, dec.finish().err())
    }

    /// What streaming must give for a whole stream: the frames one-shot
    /// decoding finds, or, when framing breaks, the frames before the break and
    /// the same error.
    fn expected(stream: &[u8], max: u64) -> (Vec<Seen>, Option<FrameError>) {
        match seen_one_shot(stream, max) {
            Ok(frames) => (frames, None),
            Err(e) if e.offset == 0 => (Vec::new(), Some(e)),
            Err(e) => (
                seen_one_shot(&stream[..e.offset as usize], max).expect("prefix decodes"),
                Some(e),
            ),
        }
    }

    fn err(msg: &[u8]) -> FrameError {
        decode(msg, 1 << 20).expect_err("must be rejected")
    }

    #[test]
    fn round_trip() {
        let mut msg = encode_frame(0, b"first", 0, false);
        msg.extend(encode_frame(1, &[7u8; 1000], 20_000, false));
        msg.extend(encode_frame(u32::MAX, b"", u64::MAX, true));
        let frames = decode(&msg, 1 << 20).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[0],
            Frame {
                seq: 0,
                flags: 0,
                pts_us: 0,
                payload_offset: 24,
                payload_len: 5,
                crc32c: crc::crc32c(b"first"),
                verdict: Verdict::Ok,
            }
        );
        assert_eq!(&msg[24..29], b"first");
        assert_eq!(
            (frames[1].seq, frames[1].pts_us, frames[1].payload_offset),
            (1, 20_000, 53)
        );
        assert_eq!(frames[1].verdict, Verdict::Ok);
        assert_eq!(
            (frames[2].seq, frames[2].flags, frames[2].pts_us),
            (u32::MAX, FLAG_END, u64::MAX)
        );
        assert_eq!(
            (frames[2].payload_len, frames[2].crc32c, frames[2].verdict),
            (0, 0, Verdict::Ok)
        );
    }

    #[test]
    fn header_layout_is_big_endian() {
        let h = encode_header(
            0x0102_0304,
            0x1112_1314,
            0x2122_2324,
            0x3132_3334_3536_3738,
            0x01,
        );
        assert_eq!(
            h,
            [
                0x56, 0x46, 1, 1, 1, 2, 3, 4, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x11,
                0x12, 0x13, 0x14, 0x21, 0x22, 0x23, 0x24
            ]
        );
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed.seq, 0x0102_0304);
        assert_eq!(parsed.length, 0x1112_1314);
        assert_eq!(parsed.crc32c, 0x2122_2324);
        assert_eq!(parsed.pts_us, 0x3132_3334_3536_3738);
    }

    #[test]
    fn bad_crc_is_a_verdict() {
        let mut msg = encode_frame(5, b"payload", 0, false);
        msg[30] ^= 0xff;
        msg.extend(encode_frame(6, b"fine", 0, false));
        let frames = decode(&msg, 100).unwrap();
        assert_eq!(frames[0].verdict, Verdict::BadCrc);
        assert_eq!(frames[1].verdict, Verdict::Ok);
    }

    #[test]
    fn too_large_is_a_verdict_not_an_error() {
        let mut msg = encode_frame(0, &[1u8; 11], 0, false);
        msg[30] ^= 0xff; // CRC is wrong too, but not looked at
        msg.extend(encode_frame(1, &[2u8; 10], 0, false));
        let frames = decode(&msg, 10).unwrap();
        assert_eq!(frames[0].verdict, Verdict::TooLarge);
        assert_eq!(frames[0].payload_len, 11);
        assert_eq!(frames[1].verdict, Verdict::Ok);
    }

    #[test]
    fn empty_message_is_truncated() {
        assert_eq!(
            err(b""),
            FrameError {
                kind: ErrorKind::Truncated {
                    needed: 24,
                    available: 0
                },
                offset: 0
            }
        );
    }

    #[test]
    fn bad_magic() {
        let mut msg = encode_frame(0, b"ok", 0, false);
        let mut bad = encode_frame(1, b"x", 0, false);
        bad[1] = b'G';
        msg.extend(bad);
        let e = err(&msg);
        assert_eq!(e.kind, ErrorKind::BadMagic { found: *b"VG" });
        assert_eq!(e.offset, 26);
        assert!(e.to_string().contains("byte 26"));
    }

    #[test]
    fn bad_version() {
        let mut msg = encode_frame(0, b"x", 0, false);
        msg[2] = 2;
        assert_eq!(err(&msg).kind, ErrorKind::BadVersion { found: 2 });
    }

    #[test]
    fn reserved_flags() {
        for bit in 1..8 {
            let msg = [&encode_header(0, 1, 0, 0, 1 << bit)[..], b"x"].concat();
            let e = err(&msg);
            assert_eq!(e.kind, ErrorKind::ReservedFlags { flags: 1 << bit });
            assert_eq!(e.kind.name(), "reserved_flags");
        }
    }

    #[test]
    fn empty_frame_needs_end() {
        assert_eq!(
            err(&encode_header(0, 0, 0, 0, 0)).kind,
            ErrorKind::EmptyFrame
        );
        assert!(decode(&encode_header(0, 0, 0, 0, FLAG_END), 0).is_ok());
    }

    #[test]
    fn truncated_header_and_payload() {
        let frame = encode_frame(0, b"0123456789", 0, false);
        let mut msg = encode_frame(9, b"a", 0, false);
        msg.extend(&frame[..10]);
        assert_eq!(
            err(&msg),
            FrameError {
                kind: ErrorKind::Truncated {
                    needed: 24,
                    available: 10
                },
                offset: 25
            }
        );
        assert_eq!(
            err(&frame[..33]),
            FrameError {
                kind: ErrorKind::Truncated {
                    needed: 34,
                    available: 33
                },
                offset: 0
            }
        );
        // A too-large frame that does not fit is still truncated.
        assert_eq!(
            decode(&frame[..33], 2).unwrap_err().kind.name(),
            "truncated"
        );
    }

    #[test]
    fn checks_run_in_protocol_order() {
        // Everything wrong at once: magic wins, then version, then flags, then empty.
        let mut h = encode_header(0, 0, 0, 0, 0x80);
        h[0] = 0;
        h[2] = 9;
        assert_eq!(err(&h).kind.name(), "bad_magic");
        h[0] = MAGIC[0];
        assert_eq!(err(&h).kind.name(), "bad_version");
        h[2] = VERSION;
        assert_eq!(err(&h).kind.name(), "reserved_flags");
        h[3] = 0;
        assert_eq!(err(&h).kind.name(), "empty_frame");
        assert_eq!(err(&h[..20]).kind.name(), "empty_frame");
        assert_eq!(err(&h[..19]).kind.name(), "truncated");
    }

    #[test]
    fn stream_reassembles_and_borrows_when_it_can() {
        let a = encode_frame(0, b"aaaa", 1, false);
        let b = encode_frame(1, b"bbbbbb", 2, true);
        let stream = [a.clone(), b.clone()].concat();
        let mut dec = StreamDecoder::new(100);
        let mut out = Vec::new();
        dec.feed(&stream[..30], &mut out).unwrap();
        assert!(matches!(out[0].payload, Payload::Borrowed(b"aaaa")));
        assert_eq!(dec.buffered(), 2);
        out.clear();
        dec.feed(&stream[30..50], &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(dec.buffered(), 22);
        dec.feed(&stream[50..54], &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(dec.buffered(), 24 + 2);
        dec.feed(&stream[54..], &mut out).unwrap();
        assert_eq!(out[0].payload, Payload::Owned(b"bbbbbb".to_vec()));
        assert_eq!(out[0].verdict, Verdict::Ok);
        assert_eq!((dec.buffered(), dec.consumed()), (0, stream.len() as u64));
        dec.finish().unwrap();
    }

    #[test]
    fn stream_skips_too_large_without_buffering() {
        let big = encode_frame(0, &[9u8; 5000], 0, false);
        let small = encode_frame(1, b"s", 0, false);
        let stream = [big, small].concat();
        let mut dec = StreamDecoder::new(100);
        let mut seen = Vec::new();
        for chunk in stream.chunks(7) {
            let mut out = Vec::new();
            dec.feed(chunk, &mut out).unwrap();
            assert!(dec.buffered() <= 24 + 100);
            seen.extend(
                out.into_iter()
                    .map(|f| (f.seq, f.verdict, f.payload.bytes().map(<[u8]>::to_vec))),
            );
        }
        dec.finish().unwrap();
        assert_eq!(
            seen,
            vec![
                (0, Verdict::TooLarge, None),
                (1, Verdict::Ok, Some(b"s".to_vec()))
            ]
        );
    }

    #[test]
    fn stream_assembles_frames_beyond_the_reserve() {
        let payload: Vec<u8> = (0..3 * RESERVE_AHEAD + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let stream = encode_frame(4, &payload, 0, true);
        let mut dec = StreamDecoder::new(4 * RESERVE_AHEAD as u64);
        let mut seen = Vec::new();
        for chunk in stream.chunks(100_000) {
            let mut out = Vec::new();
            dec.feed(chunk, &mut out).unwrap();
            seen.extend(
                out.into_iter()
                    .map(|f| (f.verdict, f.payload.bytes().map(<[u8]>::to_vec))),
            );
        }
        dec.finish().unwrap();
        assert_eq!(seen, vec![(Verdict::Ok, Some(payload))]);
    }

    #[test]
    fn stream_stays_failed() {
        let mut dec = StreamDecoder::new(100);
        let mut out = Vec::new();
        let e = dec.feed(b"XX", &mut out).unwrap_err();
        assert_eq!((e.kind.name(), e.offset), ("bad_magic", 0));
        let good = encode_frame(0, b"x", 0, false);
        assert_eq!(dec.feed(&good, &mut out), Err(e));
        assert_eq!(dec.finish(), Err(e));
        assert!(out.is_empty());
    }

    #[test]
    fn stream_hands_out_frames_before_an_error_then_fails() {
        let stream = [&encode_frame(0, b"good", 0, false)[..], b"VF\x02"].concat();
        let mut dec = StreamDecoder::new(100);
        let mut out = Vec::new();
        dec.feed(&stream, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let e = dec.finish().unwrap_err();
        assert_eq!((e.kind, e.offset), (ErrorKind::BadVersion { found: 2 }, 28));
    }

    #[test]
    fn stream_finish_reports_partial_frames() {
        let frame = encode_frame(0, b"0123456789", 0, false);
        for cut in 1..frame.len() {
            let mut dec = StreamDecoder::new(100);
            dec.feed(&frame[..cut], &mut Vec::new()).unwrap();
            let e = dec.finish().unwrap_err();
            assert_eq!((e.kind.name(), e.offset), ("truncated", 0), "cut at {cut}");
        }
        let mut dec = StreamDecoder::new(100);
        dec.finish().unwrap(); // an empty stream is no framing error
    }

    #[derive(Clone, Debug)]
    struct Spec {
        seq: u32,
        pts_us: u64,
        payload: Vec<u8>,
        end: bool,
        corrupt_crc: bool,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..200),
            any::<bool>(),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(seq, pts_us, payload, end, corrupt_crc)| Spec {
                seq,
                pts_us,
                end: end || payload.is_empty(),
                payload,
                corrupt_crc,
            })
    }

    fn build(specs: &[Spec]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in specs {
            let mut f = encode_frame(s.seq, &s.payload, s.pts_us, s.end);
            if s.corrupt_crc {
                f[20] ^= 0x5a;
            }
            out.extend(f);
        }
        out
    }

    /// A well-formed stream, or one broken by one byte changed or cut short.
    fn stream() -> impl Strategy<Value = (Vec<u8>, u64)> {
        (
            prop::collection::vec(spec(), 1..6),
            0u64..220,
            prop_oneof![
                3 => Just(None),
                1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Some((i, Some(b)))),
                1 => any::<prop::sample::Index>().prop_map(|i| Some((i, None))),
            ],
        )
            .prop_map(|(specs, max, damage)| {
                let mut bytes = build(&specs);
                match damage {
                    Some((i, Some(b))) => {
                        let at = i.index(bytes.len());
                        bytes[at] = b;
                    }
                    Some((i, None)) => {
                        let keep = i.index(bytes.len()).max(1);
                        bytes.truncate(keep);
                    }
                    None => {}
                }
                (bytes, max)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 300,
            // Keep failing seeds beside this file (rust/framing.regressions), not at the repo root.
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn every_single_split_matches_one_shot((bytes, max) in stream()) {
            let want = expected(&bytes, max);
            prop_assert_eq!(seen_streamed(&[&bytes], max), want.clone());
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                prop_assert_eq!(seen_streamed(&[a, b], max), want.clone(), "split at {}", cut);
            }
        }

        #[test]
        fn random_multi_splits_match_one_shot(
            (bytes, max) in stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&bytes[start..p]);
                start = p;
            }
            chunks.push(&bytes[start..]);
            prop_assert_eq!(seen_streamed(&chunks, max), expected(&bytes, max));
        }

        #[test]
        fn byte_at_a_time_matches_one_shot((bytes, max) in stream()) {
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(seen_streamed(&chunks, max), expected(&bytes, max));
        }

        #[test]
        fn well_formed_streams_round_trip(specs in prop::collection::vec(spec(), 1..8)) {
            let bytes = build(&specs);
            let frames = decode(&bytes, u64::MAX).unwrap();
            prop_assert_eq!(frames.len(), specs.len());
            for (f, s) in frames.iter().zip(&specs) {
                prop_assert_eq!((f.seq, f.pts_us, f.flags & FLAG_END != 0), (s.seq, s.pts_us, s.end));
                let payload = &bytes[f.payload_offset..f.payload_offset + f.payload_len as usize];
                prop_assert_eq!(payload, &s.payload[..]);
                let want = if s.corrupt_crc { Verdict::BadCrc } else { Verdict::Ok };
                prop_assert_eq!(f.verdict, want);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), max in 0u64..300) {
            let _ = decode(&bytes, max);
            let _ = seen_streamed(&[&bytes], max);
        }
    }
}
