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
    /// The first two bytes are not `VF` (bytes that were not there read as 0).
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
    if (n >= 1 && p[0] != MAGIC[0]) || (n >= 2 && p[1] != MAGIC[1]) {
        let found = [p[0], if n >= 2 { p[1] } else { 0 }];
        return Err(ErrorKind::BadMagic { found });
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

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.header_len + self.buf.len()
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
                        self.buf.reserve_exact(len);
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
