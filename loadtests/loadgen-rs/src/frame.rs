//! The wire frame of PROTOCOL.md section 1: a 24-byte big-endian header, then the payload.

use crc_fast::CrcAlgorithm;

/// Header size in bytes.
pub const HEADER_BYTES: usize = 24;
/// `VF`.
pub const MAGIC: [u8; 2] = [0x56, 0x46];
/// Protocol version written in every header.
pub const VERSION: u8 = 1;
/// Flag bit 0: the last frame of the stream.
pub const FLAG_END: u8 = 1;

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// CRC-32C of `a || b`, from the CRC of `a`, the CRC of `b` and the length of `b`.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc_fast::checksum_combine(
        CrcAlgorithm::Crc32Iscsi,
        u64::from(crc_a),
        u64::from(crc_b),
        len_b,
    ) as u32
}

/// Appends one frame to `out`; `crc` is the payload's CRC-32C (computed once by the caller,
/// since a load repeats one payload).
pub fn encode_into(out: &mut Vec<u8>, seq: u32, pts_us: u64, end: bool, payload: &[u8], crc: u32) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(if end { FLAG_END } else { 0 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&pts_us.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One message of `count` frames from `first_seq` on, every one carrying `payload`.
pub fn encode_message(first_seq: u32, count: u32, payload: &[u8], crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize * (HEADER_BYTES + payload.len()));
    for seq in first_seq..first_seq + count {
        encode_into(&mut out, seq, 0, false, payload, crc);
    }
    out
}

/// The END frame: no payload, flag bit 0 set.
pub fn encode_end(seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    encode_into(&mut out, seq, 0, true, &[], 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The check value PROTOCOL.md names for CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn combine_equals_crc_of_concatenation() {
        let a = b"the first payload".as_slice();
        let b = b"and the second one, longer".as_slice();
        let whole = [a, b].concat();
        let combined = crc32c_combine(crc32c(a), crc32c(b), b.len() as u64);
        assert_eq!(combined, crc32c(&whole));
        // A stream CRC starts from the CRC of nothing.
        assert_eq!(crc32c_combine(0, crc32c(a), a.len() as u64), crc32c(a));
    }

    #[test]
    fn header_layout_matches_the_protocol() {
        let payload = [1u8, 2, 3, 4, 5];
        let mut out = Vec::new();
        encode_into(
            &mut out,
            0x0102_0304,
            0x1122_3344_5566_7788,
            false,
            &payload,
            0xAABB_CCDD,
        );
        assert_eq!(out.len(), HEADER_BYTES + payload.len());
        assert_eq!(&out[0..2], b"VF");
        assert_eq!(out[2], 1); // version
        assert_eq!(out[3], 0); // flags
        assert_eq!(&out[4..8], &[1, 2, 3, 4]); // seq, big-endian
        assert_eq!(
            &out[8..16],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(&out[16..20], &[0, 0, 0, 5]); // length
        assert_eq!(&out[20..24], &[0xAA, 0xBB, 0xCC, 0xDD]); // crc32c
        assert_eq!(&out[24..], &payload);
    }

    #[test]
    fn message_holds_consecutive_frames_back_to_back() {
        let payload = vec![7u8; 640];
        let crc = crc32c(&payload);
        let message = encode_message(41, 3, &payload, crc);
        let size = HEADER_BYTES + payload.len();
        assert_eq!(message.len(), 3 * size);
        for (i, frame) in message.chunks(size).enumerate() {
            let seq = u32::from_be_bytes(frame[4..8].try_into().unwrap());
            let length = u32::from_be_bytes(frame[16..20].try_into().unwrap());
            let stored = u32::from_be_bytes(frame[20..24].try_into().unwrap());
            assert_eq!(seq, 41 + i as u32);
            assert_eq!(length, 640);
            assert_eq!(stored, crc32c(&frame[24..]));
            assert_eq!(frame[3], 0);
        }
    }

    #[test]
    fn end_frame_is_an_empty_payload_with_the_end_flag() {
        let end = encode_end(9);
        assert_eq!(end.len(), HEADER_BYTES);
        assert_eq!(end[3], FLAG_END);
        assert_eq!(&end[4..8], &[0, 0, 0, 9]);
        assert_eq!(&end[16..24], &[0u8; 8]); // length 0, crc of nothing 0
    }
}
