//! CRC-32C (Castagnoli) and CRC combination.
//!
//! Backend choice: see the benchmark notes below (filled in from `cargo bench`).

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// CRC-32C of `data`, continuing from `crc` (the CRC of what came before; 0 to start).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// `a(x) * b(x) mod P(x)`, both reflected (bit 31 is x^0).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k] = x^(2^k) mod P(x)`.
const X2N: [u32; 32] = {
    let mut table = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    table[0] = p;
    let mut k = 1;
    while k < 32 {
        p = multmodp(p, p);
        table[k] = p;
        k += 1;
    }
    table
};

/// `x^(n * 2^k) mod P(x)`.
fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// CRC-32C of `A + B` from `crc1 = crc32c(A)`, `crc2 = crc32c(B)` and `len2 = len(B)`.
///
/// O(log len2): shifts `crc1` over `len2` zero bytes by multiplying with `x^(8 len2)`.
pub fn crc32c_combine(crc1: u32, crc2: u32, len2: u64) -> u32 {
    multmodp(x2nmodp(len2, 3), crc1) ^ crc2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitwise reference implementation.
    fn slow(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// Deterministic pseudo-random bytes (xorshift), no dependency needed.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(slow(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn matches_reference_at_many_lengths() {
        for n in (0..300).chain([1023, 1024, 1025, 4096, 65536 + 7]) {
            let data = bytes(n, n as u64);
            assert_eq!(crc32c(&data), slow(&data), "length {n}");
        }
    }

    #[test]
    fn append_continues() {
        let data = bytes(5000, 1);
        for split in [0, 1, 7, 64, 2500, 4999, 5000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
        }
    }

    #[test]
    fn combine_matches_concatenation() {
        let data = bytes(3000, 42);
        let mut seed = 7u64;
        for _ in 0..500 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let split = (seed >> 33) as usize % (data.len() + 1);
            let (a, b) = data.split_at(split);
            assert_eq!(
                crc32c_combine(crc32c(a), crc32c(b), b.len() as u64),
                crc32c(&data),
                "split {split}"
            );
        }
        // len2 = 0: B is empty, the CRC of A stands.
        assert_eq!(crc32c_combine(0x1234_5678, 0, 0), 0x1234_5678);
        assert_eq!(crc32c_combine(crc32c(&data), crc32c(b""), 0), crc32c(&data));
        // A empty.
        assert_eq!(
            crc32c_combine(0, crc32c(&data), data.len() as u64),
            crc32c(&data)
        );
    }

    #[test]
    fn combine_large_lengths() {
        // A + 1 MiB of zeros, computed both ways.
        let a = bytes(100, 3);
        let zeros = vec![0u8; 1 << 20];
        let mut whole = a.clone();
        whole.extend_from_slice(&zeros);
        assert_eq!(
            crc32c_combine(crc32c(&a), crc32c(&zeros), zeros.len() as u64),
            crc32c(&whole)
        );
    }
}
