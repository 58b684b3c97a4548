//! Ack latency as a mergeable histogram.
//!
//! A latency in whole microseconds is kept exactly below 1 ms and rounded to three
//! significant digits above (at most 0.5% off). The bucket key is that rounded value
//! itself, so histograms from several generator processes (and the Python driver, which
//! uses the same rule in `loadgen.py`) merge by adding counts per key.

use std::collections::HashMap;

/// The bucket of a latency of `us` microseconds (see the module doc).
pub fn bucket_us(us: u64) -> u64 {
    if us < 1000 {
        return us;
    }
    let mut factor = 1u64;
    while us >= 1000 * factor {
        factor *= 10;
    }
    (us + factor / 2) / factor * factor
}

/// Frame-weighted ack latencies.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: HashMap<u64, u64>,
    total: u64,
    max_s: f64,
}

impl Histogram {
    /// Counts `weight` frames acked `seconds` after their message was sent.
    pub fn record(&mut self, seconds: f64, weight: u64) {
        let us = (seconds * 1e6).round().max(0.0) as u64;
        *self.counts.entry(bucket_us(us)).or_insert(0) += weight;
        self.total += weight;
        if seconds > self.max_s {
            self.max_s = seconds;
        }
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (key, count) in &other.counts {
            *self.counts.entry(*key).or_insert(0) += count;
        }
        self.total += other.total;
        self.max_s = self.max_s.max(other.max_s);
    }

    /// How many frames were recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// `[bucket_us, count]` pairs in increasing bucket order.
    pub fn pairs(&self) -> Vec<[u64; 2]> {
        let mut pairs: Vec<[u64; 2]> = self.counts.iter().map(|(k, v)| [*k, *v]).collect();
        pairs.sort_unstable();
        pairs
    }

    /// `(name, ms)` for p50, p90, p95, p99, p99.9 and the exact maximum; empty without data.
    /// A percentile is the first bucket whose cumulative count reaches that share of frames.
    pub fn percentiles_ms(&self) -> Vec<(&'static str, f64)> {
        if self.total == 0 {
            return Vec::new();
        }
        let marks = [
            ("p50", 0.50),
            ("p90", 0.90),
            ("p95", 0.95),
            ("p99", 0.99),
            ("p999", 0.999),
        ];
        let mut out = Vec::with_capacity(marks.len() + 1);
        let mut seen = 0u64;
        let mut next = 0usize;
        for [key, count] in self.pairs() {
            seen += count;
            while next < marks.len() && seen as f64 >= marks[next].1 * self.total as f64 {
                out.push((marks[next].0, round3(key as f64 / 1000.0)));
                next += 1;
            }
        }
        out.push(("max", round3(self.max_s * 1000.0)));
        out
    }
}

/// `x` rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_below_a_millisecond_and_three_digits_above() {
        assert_eq!(bucket_us(0), 0);
        assert_eq!(bucket_us(999), 999);
        assert_eq!(bucket_us(1000), 1000);
        assert_eq!(bucket_us(1234), 1230);
        assert_eq!(bucket_us(1235), 1240);
        assert_eq!(bucket_us(9996), 10000);
        assert_eq!(bucket_us(123_456), 123_000);
    }

    #[test]
    fn percentiles_weight_frames_and_merge_across_histograms() {
        let mut a = Histogram::default();
        a.record(0.001, 98); // 98 frames at 1 ms
        let mut b = Histogram::default();
        b.record(0.100, 1); // one at 100 ms
        b.record(0.2501, 1); // one at 250.1 ms
        a.merge(&b);
        assert_eq!(a.total(), 100);
        let p: HashMap<_, _> = a.percentiles_ms().into_iter().collect();
        assert_eq!(p["p50"], 1.0);
        assert_eq!(p["p90"], 1.0);
        assert_eq!(p["p99"], 100.0);
        assert_eq!(p["p999"], 250.0);
        assert_eq!(p["max"], 250.1);
        assert_eq!(a.pairs(), vec![[1000, 98], [100_000, 1], [250_000, 1]]);
    }

    #[test]
    fn no_samples_no_percentiles() {
        assert!(Histogram::default().percentiles_ms().is_empty());
    }
}
