//! The load to run: the fields of `LoadSpec` in `loadgen.py`, checked before anything opens.

use std::net::SocketAddr;

use serde::Deserialize;

/// Largest number of streams one process opens.
pub const MAX_STREAMS: usize = 20_000;
/// Largest WebSocket message this tool builds.
pub const MAX_MESSAGE_BYTES: u64 = 64 << 20;
/// Longest run, seconds (warm-up plus measured window, or a paced `total_frames` run).
pub const MAX_RUN_S: f64 = 24.0 * 3600.0;

/// One generator run. Fields the tool does not use (`driver`, `progress_s`, ...) are allowed.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadSpec {
    #[serde(default)]
    pub target: String,
    pub ws_base: String,
    pub session_ids: Vec<String>,
    pub tokens: Vec<String>,
    pub frame_bytes: u32,
    pub frames_per_message: u32,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub total_frames: Option<u64>,
    /// Frames per second per stream (paced); `None`: as fast as the credit allows.
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub verify: bool,
    #[serde(default)]
    pub idle: bool,
    /// At most this many unacked messages per stream; `None`: only the credit bounds it.
    #[serde(default)]
    pub inflight_messages: Option<u32>,
    /// Seconds of load before the measured window opens.
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default = "default_progress_s")]
    pub progress_s: f64,
}

fn default_progress_s() -> f64 {
    0.5
}

impl LoadSpec {
    /// Parses and checks a spec; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<LoadSpec, String> {
        let spec: LoadSpec = serde_json::from_str(text).map_err(|e| format!("spec: {e}"))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        self.addr()?;
        let n = self.session_ids.len();
        if n == 0 || n > MAX_STREAMS {
            return Err(format!("session_ids: 1..={MAX_STREAMS} streams, got {n}"));
        }
        if self.tokens.len() != n {
            return Err(format!(
                "tokens: one per session, got {} for {n}",
                self.tokens.len()
            ));
        }
        for id in &self.session_ids {
            let safe = |c: char| c.is_ascii_alphanumeric() || "-_.~".contains(c);
            if id.is_empty() || id.len() > 200 || !id.chars().all(safe) {
                return Err(format!("session_ids: {id:?} is not a plain path segment"));
            }
        }
        for token in &self.tokens {
            if token.len() > 4096 || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err("tokens: printable ASCII without spaces, up to 4096 bytes".into());
            }
        }
        if self.frame_bytes == 0 || self.frames_per_message == 0 {
            return Err("frame_bytes and frames_per_message must be at least 1".into());
        }
        let message = u64::from(self.frames_per_message) * (24 + u64::from(self.frame_bytes));
        if message > MAX_MESSAGE_BYTES {
            return Err(format!(
                "a message of {message} bytes is above {MAX_MESSAGE_BYTES}"
            ));
        }
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if !finite(self.warmup_s) || self.warmup_s > MAX_RUN_S {
            return Err("warmup_s: 0..=86400".into());
        }
        if !finite(self.progress_s) || self.progress_s < 0.05 {
            return Err("progress_s: at least 0.05".into());
        }
        if let Some(rate) = self.rate {
            if !rate.is_finite() || rate <= 0.0 || rate > 1e6 {
                return Err("rate: frames/s per stream, above 0 and at most 1e6".into());
            }
        }
        if self.inflight_messages == Some(0) {
            return Err("inflight_messages: at least 1 (or null)".into());
        }
        if self.idle {
            return Ok(()); // held open until told to stop (or for duration_s)
        }
        match (self.duration_s, self.total_frames) {
            (Some(d), None) if finite(d) && d > 0.0 && d + self.warmup_s <= MAX_RUN_S => Ok(()),
            (None, Some(t)) if t > 0 && t < u64::from(u32::MAX) => Ok(()),
            _ => Err("exactly one of duration_s (0..86400 s) and total_frames (>0)".into()),
        }
    }

    /// The server address: `ws://127.0.0.1:PORT` only, since this tool is for loopback.
    pub fn addr(&self) -> Result<SocketAddr, String> {
        let refuse = || {
            Err(format!(
                "ws_base {:?}: only ws://127.0.0.1:PORT is allowed (loopback benchmarks)",
                self.ws_base
            ))
        };
        let Some(rest) = self.ws_base.strip_prefix("ws://127.0.0.1:") else {
            return refuse();
        };
        let port = rest.trim_end_matches('/');
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.chars().all(|c| c.is_ascii_digit()) => {
                Ok(SocketAddr::from(([127, 0, 0, 1], p)))
            }
            _ => refuse(),
        }
    }

    /// Seconds between two messages of a paced stream.
    pub fn period_s(&self) -> Option<f64> {
        self.rate.map(|r| f64::from(self.frames_per_message) / r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ws_base: &str) -> String {
        format!(
            r#"{{"ws_base": "{ws_base}", "session_ids": ["a"], "tokens": ["t"],
                "frame_bytes": 640, "frames_per_message": 1, "duration_s": 1.0,
                "driver": "rust"}}"#
        )
    }

    #[test]
    fn loopback_only() {
        assert!(LoadSpec::parse(&spec("ws://127.0.0.1:8000")).is_ok());
        for bad in [
            "ws://localhost:8000",
            "ws://10.0.0.1:8000",
            "ws://127.0.0.1.example:80",
            "ws://127.0.0.1:8000@example.org",
            "wss://127.0.0.1:8000",
            "ws://127.0.0.1:0",
        ] {
            assert!(LoadSpec::parse(&spec(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn needs_exactly_one_end_condition() {
        let both = spec("ws://127.0.0.1:1").replace("\"driver\"", "\"total_frames\": 5, \"d\"");
        assert!(LoadSpec::parse(&both).is_err());
    }
}
