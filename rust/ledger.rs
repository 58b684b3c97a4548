//! Credit accounting (PROTOCOL section 4): per-stream in-flight bytes against
//! the advertised window, global in-flight bytes against a hard limit, and a
//! pressure flag with hysteresis that stops new credit between the high and
//! the low watermark. Pure Rust, no Python.

use std::collections::HashMap;
use std::fmt;

/// A stream handle, as returned by [`Ledger::open`].
pub type Handle = u64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stream {
    inflight: u64,
    advertised: u64,
}

/// A handle that is not (or no longer) open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownHandle(pub Handle);

impl fmt::Display for UnknownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown ledger handle {}: never opened or already closed",
            self.0
        )
    }
}

impl std::error::Error for UnknownHandle {}

/// Watermarks that make no sense together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLimits(pub String);

impl fmt::Display for BadLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadLimits {}

/// A snapshot of the ledger's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub inflight_bytes: u64,
    pub streams: u64,
    pub pressure: bool,
    pub pressure_events: u64,
    pub admitted_bytes: u64,
    pub refused: u64,
}

/// Credit accounting for every open stream of a process.
#[derive(Debug)]
pub struct Ledger {
    window_bytes: u64,
    global_high: u64,
    global_low: u64,
    global_limit: u64,
    streams: HashMap<Handle, Stream>,
    next_handle: Handle,
    inflight: u64,
    pressure: bool,
    pressure_events: u64,
    admitted_bytes: u64,
    refused: u64,
}

impl Ledger {
    /// Fails unless `global_low <= global_high <= global_limit`.
    pub fn new(
        window_bytes: u64,
        global_high: u64,
        global_low: u64,
        global_limit: u64,
    ) -> Result<Self, BadLimits> {
        if global_low > global_high {
            return Err(BadLimits(format!(
                "global_low ({global_low}) must not exceed global_high ({global_high})"
            )));
        }
        if global_high > global_limit {
            return Err(BadLimits(format!(
                "global_high ({global_high}) must not exceed global_limit ({global_limit})"
            )));
        }
        Ok(Ledger {
            window_bytes,
            global_high,
            global_low,
            global_limit,
            streams: HashMap::new(),
            next_handle: 1,
            inflight: 0,
            pressure: false,
            pressure_events: 0,
            admitted_bytes: 0,
            refused: 0,
        })
    }

    fn stream(&mut self, handle: Handle) -> Result<&mut Stream, UnknownHandle> {
        self.streams.get_mut(&handle).ok_or(UnknownHandle(handle))
    }

    /// Registers a stream with the full window advertised.
    pub fn open(&mut self) -> Handle {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.streams.insert(
            handle,
            Stream {
                inflight: 0,
                advertised: self.window_bytes,
            },
        );
        handle
    }

    /// Forgets a stream, releasing what it still had in flight. True when that
    /// ended a pressure period (as for [`Ledger::release`]).
    pub fn close(&mut self, handle: Handle) -> Result<bool, UnknownHandle> {
        let stream = self.streams.remove(&handle).ok_or(UnknownHandle(handle))?;
        Ok(self.uncount(stream.inflight))
    }

    /// Counts `nbytes` in flight if the stream's credit and the global limit allow.
    pub fn admit(&mut self, handle: Handle, nbytes: u64) -> Result<bool, UnknownHandle> {
        let global = self.inflight;
        let limit = self.global_limit;
        let stream = self.stream(handle)?;
        let fits_stream = stream
            .inflight
            .checked_add(nbytes)
            .is_some_and(|n| n <= stream.advertised);
        let fits_global = global.checked_add(nbytes).is_some_and(|n| n <= limit);
        if !(fits_stream && fits_global) {
            self.refused += 1;
            return Ok(false);
        }
        stream.inflight += nbytes;
        self.inflight += nbytes;
        // A lifetime total: it saturates rather than overflow.
        self.admitted_bytes = self.admitted_bytes.saturating_add(nbytes);
        if !self.pressure && self.inflight >= self.global_high {
            self.pressure = true;
            self.pressure_events += 1;
        }
        Ok(true)
    }

    /// Uncounts acked bytes (saturating at the stream's in-flight bytes).
    /// True exactly when this ended a pressure period.
    pub fn release(&mut self, handle: Handle, nbytes: u64) -> Result<bool, UnknownHandle> {
        let stream = self.stream(handle)?;
        let freed = nbytes.min(stream.inflight);
        stream.inflight -= freed;
        Ok(self.uncount(freed))
    }

    fn uncount(&mut self, freed: u64) -> bool {
        self.inflight -= freed;
        if self.pressure && self.inflight <= self.global_low {
            self.pressure = false;
            return true;
        }
        false
    }

    /// The window to advertise now, recorded as the stream's credit: the full
    /// window, or under pressure the stream's in-flight bytes (no new credit).
    pub fn window(&mut self, handle: Handle) -> Result<u64, UnknownHandle> {
        let pressure = self.pressure;
        let full = self.window_bytes;
        let stream = self.stream(handle)?;
        stream.advertised = if pressure { stream.inflight } else { full };
        Ok(stream.advertised)
    }

    /// The stream's bytes in flight.
    pub fn inflight(&self, handle: Handle) -> Result<u64, UnknownHandle> {
        self.streams
            .get(&handle)
            .map(|s| s.inflight)
            .ok_or(UnknownHandle(handle))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            inflight_bytes: self.inflight,
            streams: self.streams.len() as u64,
            pressure: self.pressure,
            pressure_events: self.pressure_events,
            admitted_bytes: self.admitted_bytes,
            refused: self.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        // window 100 per stream; pressure from 250 in flight back down to 100; hard limit 300.
        Ledger::new(100, 250, 100, 300).unwrap()
    }

    #[test]
    fn new_stream_has_the_full_window() {
        let mut l = ledger();
        let h = l.open();
        assert_eq!(l.inflight(h), Ok(0));
        assert_eq!(l.window(h), Ok(100));
        assert_eq!(l.stats().streams, 1);
    }

    #[test]
    fn admit_within_the_advertised_window() {
        let mut l = ledger();
        let h = l.open();
        assert_eq!(l.admit(h, 60), Ok(true));
        assert_eq!(l.admit(h, 40), Ok(true));
        assert_eq!(l.admit(h, 1), Ok(false));
        assert_eq!(l.inflight(h), Ok(100));
        assert_eq!(l.release(h, 30), Ok(false));
        assert_eq!(l.admit(h, 30), Ok(true));
        let s = l.stats();
        assert_eq!(
            (s.inflight_bytes, s.admitted_bytes, s.refused),
            (100, 130, 1)
        );
    }

    #[test]
    fn global_limit_refuses_even_within_the_window() {
        let mut l = Ledger::new(100, 150, 50, 150).unwrap();
        let (a, b) = (l.open(), l.open());
        assert_eq!(l.admit(a, 100), Ok(true));
        assert_eq!(l.admit(b, 60), Ok(false));
        assert_eq!(l.admit(b, 50), Ok(true));
        assert_eq!(l.stats().refused, 1);
    }

    #[test]
    fn pressure_hysteresis() {
        let mut l = ledger();
        let hs: Vec<Handle> = (0..3).map(|_| l.open()).collect();
        assert_eq!(l.admit(hs[0], 100), Ok(true));
        assert_eq!(l.admit(hs[1], 100), Ok(true));
        assert!(!l.stats().pressure);
        assert_eq!(l.admit(hs[2], 50), Ok(true)); // 250 >= high
        let s = l.stats();
        assert!(s.pressure);
        assert_eq!(s.pressure_events, 1);
        // Under pressure: no new credit, the window is what is already in flight.
        assert_eq!(l.window(hs[2]), Ok(50));
        assert_eq!(l.admit(hs[2], 1), Ok(false));
        assert_eq!(l.window(hs[0]), Ok(100));
        let fresh = l.open();
        assert_eq!(l.window(fresh), Ok(0));
        // Releasing above the low watermark keeps the pressure on.
        assert_eq!(l.release(hs[0], 100), Ok(false)); // 150
        assert_eq!(l.window(hs[0]), Ok(0));
        assert!(l.stats().pressure);
        assert_eq!(l.release(hs[1], 49), Ok(false)); // 101
                                                     // Reaching the low watermark ends it, exactly once.
        assert_eq!(l.release(hs[1], 1), Ok(true)); // 100
        assert!(!l.stats().pressure);
        assert_eq!(l.release(hs[2], 10), Ok(false));
        assert_eq!(l.window(hs[0]), Ok(100));
        // Climbing back to high starts a second period.
        assert_eq!(l.admit(hs[0], 100), Ok(true)); // 190
        assert_eq!(l.window(fresh), Ok(100));
        assert_eq!(l.admit(fresh, 60), Ok(true)); // 250
        assert_eq!(l.stats().pressure_events, 2);
    }

    #[test]
    fn release_saturates() {
        let mut l = ledger();
        let (a, b) = (l.open(), l.open());
        l.admit(a, 10).unwrap();
        l.admit(b, 20).unwrap();
        assert_eq!(l.release(a, 1000), Ok(false));
        assert_eq!(l.inflight(a), Ok(0));
        // Other streams' bytes stay counted.
        assert_eq!(l.stats().inflight_bytes, 20);
    }

    #[test]
    fn close_releases_and_can_end_pressure() {
        let mut l = ledger();
        let (a, b, c) = (l.open(), l.open(), l.open());
        l.admit(a, 100).unwrap();
        l.admit(b, 100).unwrap();
        l.admit(c, 50).unwrap();
        assert!(l.stats().pressure);
        assert_eq!(l.close(a), Ok(false));
        assert_eq!(l.close(b), Ok(true));
        let s = l.stats();
        assert_eq!((s.inflight_bytes, s.streams, s.pressure), (50, 1, false));
        assert_eq!(l.inflight(a), Err(UnknownHandle(a)));
    }

    #[test]
    fn unknown_handles_are_refused() {
        let mut l = ledger();
        assert_eq!(l.admit(7, 1), Err(UnknownHandle(7)));
        assert_eq!(l.release(7, 1), Err(UnknownHandle(7)));
        assert_eq!(l.window(7), Err(UnknownHandle(7)));
        assert_eq!(l.close(7), Err(UnknownHandle(7)));
        assert!(UnknownHandle(7).to_string().contains('7'));
        let h = l.open();
        assert_ne!(h, l.open());
    }

    #[test]
    fn watermarks_must_be_ordered() {
        assert!(Ledger::new(1, 10, 20, 30).is_err());
        assert!(Ledger::new(1, 40, 20, 30).is_err());
        assert!(Ledger::new(1, 20, 20, 20).is_ok());
    }

    #[test]
    fn huge_admits_do_not_overflow() {
        let mut l = Ledger::new(u64::MAX, u64::MAX, 0, u64::MAX).unwrap();
        let h = l.open();
        assert_eq!(l.admit(h, u64::MAX), Ok(true));
        assert_eq!(l.admit(h, 1), Ok(false));
    }
}
