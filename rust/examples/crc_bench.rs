//! Throughput of the hot-path primitives: CRC-32C at typical sizes and
//! one-shot decoding of a WebSocket message. Prints numbers, asserts nothing.
//!
//! `cargo run --release --example crc_bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use voxgate_native::{crc, framing};

/// Best-of-5 nanoseconds per call of `f`.
fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut iters = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            for _ in 0..16 {
                f();
            }
            iters += 16;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    best
}

fn main() {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!("crc32c");
    for size in [64usize, 1024, 64 * 1024, 1 << 20] {
        let d = &data[..size];
        let fresh = time(|| {
            black_box(crc::crc32c(black_box(d)));
        });
        let cont = time(|| {
            black_box(crc::crc32c_append(black_box(0x1234_5678), black_box(d)));
        });
        println!(
            "  {size:>8} B: {fresh:>9.1} ns ({:>5.1} GB/s), continued {cont:>9.1} ns",
            size as f64 / fresh
        );
    }
    let combine = time(|| {
        black_box(crc::crc32c_combine(
            black_box(1),
            black_box(2),
            black_box(65_536),
        ));
    });
    println!("crc32c_combine (len2 = 64 KiB): {combine:.1} ns");

    println!("decode (one message)");
    for (frames, payload) in [(1usize, 640usize), (10, 640), (50, 160), (16, 64 * 1024)] {
        let mut msg = Vec::new();
        for seq in 0..frames {
            msg.extend(framing::encode_frame(
                seq as u32,
                &data[..payload],
                0,
                false,
            ));
        }
        let mut out = Vec::with_capacity(frames);
        let ns = time(|| {
            out.clear();
            framing::decode_each(black_box(&msg), 1 << 20, |f| {
                out.push(f);
                Ok::<(), framing::FrameError>(())
            })
            .unwrap();
        });
        println!(
            "  {frames:>3} x {payload:>6} B: {ns:>9.1} ns/message, {:>6.1} ns/frame, {:>5.1} GB/s",
            ns / frames as f64,
            msg.len() as f64 / ns
        );
    }
}
