//! One WebSocket stream: one task that reads acks and sends within its credit or on its
//! schedule, matches acks to sends, drains, then ENDs and checks `complete`.
//!
//! Acks of one stream arrive in commit order, so a FIFO of sent messages matches them
//! without a per-frame map. A paced stream has one `Interval` (`MissedTickBehavior::Burst`)
//! for its whole life: a tick owes a message, and an ack only sends what is owed; no timer
//! is ever re-armed per ack.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, timeout, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header::AUTHORIZATION, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

use crate::frame;
use crate::spec::LoadSpec;
use crate::stats::Histogram;

/// Bound on opening one stream: TCP connect, upgrade and `hello`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for the last acks once sending stopped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on waiting for `complete` after END.
pub const COMPLETE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the closing handshake.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A paced message sent this much after it was due counts as late.
pub const LATE: Duration = Duration::from_millis(5);
/// Largest message accepted from the server.
const MAX_INCOMING_BYTES: usize = 16 << 20;
/// Read buffer per connection (acks are about 100 bytes).
const READ_BUFFER_BYTES: usize = 8 << 10;

type Ws = WebSocketStream<TcpStream>;

/// Counters the progress reports read while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub messages: AtomicU64,
    pub nacks: AtomicU64,
    pub errors: AtomicU64,
}

/// What the streams wait for once open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Go {
    Wait,
    /// The clock of the run starts at this instant.
    Start(Instant),
    /// Another stream failed to open: close without sending.
    Abort,
}

/// Everything the streams of one run share.
pub struct Ctx {
    pub spec: LoadSpec,
    pub addr: SocketAddr,
    pub payload: Vec<u8>,
    pub payload_crc: u32,
    pub live: Live,
    pub go: watch::Receiver<Go>,
    pub stop: watch::Receiver<bool>,
    pub connect_gate: Semaphore,
}

/// What one stream measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub index: usize,
    pub acked: u64,
    pub acked_in_window: u64,
    pub sent: u64,
    pub messages: u64,
    pub hist: Histogram,
    pub late: u64,
    pub max_lag_s: f64,
    pub nacks: HashMap<String, u64>,
    pub close: Option<u16>,
    pub errors: Vec<String>,
    pub verified: bool,
    pub last_ack: Option<Instant>,
}

/// A server control message; each kind uses some of the fields.
#[derive(Debug, Deserialize)]
struct Control<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    acked: Vec<[u64; 2]>,
    #[serde(default)]
    duplicate: Vec<[u64; 2]>,
    #[serde(default)]
    ranges: Vec<[u64; 2]>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    window_bytes: Option<u64>,
    next_seq: Option<u64>,
    frames: Option<u64>,
    bytes: Option<u64>,
    stream_crc32c: Option<u64>,
}

/// What `complete` said.
#[derive(Debug, Clone, Copy)]
struct Complete {
    frames: u64,
    bytes: u64,
    crc: u64,
}

fn span(ranges: &[[u64; 2]]) -> u64 {
    ranges
        .iter()
        .map(|[a, b]| b.saturating_sub(*a) + 1)
        .sum::<u64>()
}

/// Runs stream `index` through every phase; reports `Ok`/`Err` on `ready` once open.
pub async fn run(
    ctx: Arc<Ctx>,
    index: usize,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) -> Outcome {
    let mut out = Outcome {
        index,
        ..Outcome::default()
    };
    let opened = {
        let _permit = ctx.connect_gate.acquire().await;
        timeout(CONNECT_TIMEOUT, open(&ctx, index)).await
    };
    let (ws, window, next_seq) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            let _ = ready.send(Err(format!("stream {index}: {e}")));
            return out;
        }
        Err(_) => {
            let _ = ready.send(Err(format!(
                "stream {index}: not open within {CONNECT_TIMEOUT:?}"
            )));
            return out;
        }
    };
    let _ = ready.send(Ok(()));
    let mut stream = Stream::new(&ctx, ws, window, next_seq, &mut out);
    stream.drive().await;
    stream.close().await;
    out
}

/// TCP connect, upgrade with the token, wait for `hello`: `(ws, window_bytes, next_seq)`.
async fn open(ctx: &Ctx, index: usize) -> Result<(Ws, u64, u64), String> {
    let spec = &ctx.spec;
    let tcp = TcpStream::connect(ctx.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let url = format!(
        "{}/v1/sessions/{}/stream",
        spec.ws_base.trim_end_matches('/'),
        spec.session_ids[index]
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", spec.tokens[index]))
        .map_err(|e| format!("token: {e}"))?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    // tungstenite zero-fills its free read buffer before every read: the server's control
    // messages are small, so a small buffer keeps that cost off each ack.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_INCOMING_BYTES))
        .max_frame_size(Some(MAX_INCOMING_BYTES));
    let (mut ws, _) = client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(response) => format!("upgrade refused: HTTP {}", response.status()),
            e => format!("upgrade: {e}"),
        })?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let control: Control = serde_json::from_str(&text)
                    .map_err(|e| format!("unreadable control message: {e}"))?;
                match control.kind.as_ref() {
                    "hello" => {
                        let window = control.window_bytes.unwrap_or(0);
                        return Ok((ws, window, control.next_seq.unwrap_or(0)));
                    }
                    "error" => return Err(format!("server error before hello: {text}")),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                return Err(format!("closed before hello (close {code:?})"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before hello: {e}")),
            None => return Err("disconnected before hello".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Sending,
    Draining,
    Completing,
}

enum Event {
    Message(Option<Result<Message, WsError>>),
    Tick(Instant),
    Deadline,
    Stop,
}

struct Stream<'a> {
    ctx: &'a Ctx,
    ws: Ws,
    out: &'a mut Outcome,
    window: u64,
    inflight_bytes: u64,
    first_seq: u64,
    next_seq: u64,
    /// One past the last seq this stream may send.
    limit: u64,
    /// Sent and not yet acked: `(frames, send time)` per message, oldest first.
    pending: VecDeque<(u64, Instant)>,
    /// Paced: due times of messages whose tick came and that are not sent yet.
    owed: VecDeque<Instant>,
    window_start: Instant,
    window_end: Option<Instant>,
    complete: Option<Complete>,
    connected: bool,
}

async fn tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(ticker) => ticker.tick().await,
        None => std::future::pending().await,
    }
}

impl<'a> Stream<'a> {
    fn new(ctx: &'a Ctx, ws: Ws, window: u64, next_seq: u64, out: &'a mut Outcome) -> Self {
        let limit = match ctx.spec.total_frames {
            Some(total) => next_seq + total,
            None => u64::from(u32::MAX),
        };
        let now = Instant::now();
        Stream {
            ctx,
            ws,
            out,
            window,
            inflight_bytes: 0,
            first_seq: next_seq,
            next_seq,
            limit,
            pending: VecDeque::new(),
            owed: VecDeque::new(),
            window_start: now,
            window_end: None,
            complete: None,
            connected: true,
        }
    }

    fn error(&mut self, message: String) {
        self.ctx.live.errors.fetch_add(1, Relaxed);
        self.out
            .errors
            .push(format!("stream {}: {message}", self.out.index));
    }

    /// Waits for the start, then runs the load (or holds the stream open when idle).
    async fn drive(&mut self) {
        let Some(start) = self.wait_start().await else {
            return;
        };
        if self.ctx.spec.idle {
            self.hold(start).await;
        } else {
            self.load(start).await;
        }
    }

    async fn wait_start(&mut self) -> Option<Instant> {
        let mut go = self.ctx.go.clone();
        loop {
            match *go.borrow_and_update() {
                Go::Start(at) => return Some(at),
                Go::Abort => return None,
                Go::Wait => {}
            }
            tokio::select! {
                changed = go.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                message = self.ws.next() => {
                    if !self.on_message(message) {
                        return None;
                    }
                }
            }
        }
    }

    /// Idle: read (pings, a server close) until told to stop or `duration_s` passed.
    async fn hold(&mut self, start: Instant) {
        let until = self
            .ctx
            .spec
            .duration_s
            .map(|d| start + Duration::from_secs_f64(d));
        let mut stop = self.ctx.stop.clone();
        let deadline = sleep_until(until.unwrap_or_else(far_future));
        tokio::pin!(deadline);
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { return },
                message = self.ws.next() => if !self.on_message(message) { return },
                _ = &mut deadline, if until.is_some() => return,
            }
        }
    }

    async fn load(&mut self, start: Instant) {
        let spec = &self.ctx.spec;
        self.window_start = start + Duration::from_secs_f64(spec.warmup_s);
        self.window_end = spec
            .duration_s
            .map(|d| self.window_start + Duration::from_secs_f64(d));
        let mut ticker = spec.period_s().map(|period| {
            // Streams start spread over one period, as independent callers would.
            let n = spec.session_ids.len() as f64;
            let offset = Duration::from_secs_f64(period * self.out.index as f64 / n);
            let mut ticker =
                tokio::time::interval_at(start + offset, Duration::from_secs_f64(period));
            ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
            ticker
        });
        let paced = ticker.is_some();
        let mut stop = self.ctx.stop.clone();
        let mut phase = Phase::Sending;
        let deadline = sleep_until(self.window_end.unwrap_or_else(far_future));
        tokio::pin!(deadline);
        if !paced && self.pump().await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                biased;
                message = self.ws.next() => Event::Message(message),
                due = tick(&mut ticker), if phase == Phase::Sending => Event::Tick(due),
                _ = &mut deadline => Event::Deadline,
                changed = stop.changed() => match changed {
                    Ok(()) if *stop.borrow_and_update() => Event::Stop,
                    Ok(()) => continue,
                    Err(_) => Event::Stop,
                },
            };
            match event {
                Event::Message(message) => {
                    if !self.on_message(message) {
                        return;
                    }
                    if phase == Phase::Sending {
                        let sent = if paced {
                            self.send_owed().await
                        } else {
                            self.pump().await
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                }
                Event::Tick(due) => {
                    self.owed.push_back(due);
                    if self.send_owed().await.is_err() {
                        return;
                    }
                }
                Event::Deadline => match phase {
                    Phase::Sending => {
                        // The measured window is over: stop sending, what is owed is dropped.
                        self.limit = self.next_seq;
                        self.owed.clear();
                    }
                    Phase::Draining => {
                        let unacked: u64 = self.pending.iter().map(|p| p.0).sum();
                        self.error(format!(
                            "{unacked} frames unacked {DRAIN_TIMEOUT:?} after the last send"
                        ));
                        return;
                    }
                    Phase::Completing => {
                        self.error(format!("no complete within {COMPLETE_TIMEOUT:?} of END"));
                        return;
                    }
                },
                Event::Stop => {
                    self.error("stopped by the parent".into());
                    return;
                }
            }
            if phase == Phase::Sending && self.next_seq >= self.limit {
                phase = Phase::Draining;
                deadline.as_mut().reset(Instant::now() + DRAIN_TIMEOUT);
            }
            if phase == Phase::Draining && self.pending.is_empty() {
                if !self.ctx.spec.verify {
                    return;
                }
                if self.send_end().await.is_err() {
                    return;
                }
                phase = Phase::Completing;
                deadline.as_mut().reset(Instant::now() + COMPLETE_TIMEOUT);
            }
            if phase == Phase::Completing {
                if let Some(done) = self.complete {
                    self.check_complete(done);
                    return;
                }
            }
        }
    }

    /// Handles one read; false once the connection is gone.
    fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> bool {
        match message {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<Control>(&text) {
                    Ok(control) => self.on_control(control, &text),
                    Err(e) => self.error(format!("unreadable control message: {e}")),
                }
                true
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                self.out.close = Some(code.unwrap_or(1005));
                self.connected = false;
                self.error(format!("closed by the server (close {code:?})"));
                false
            }
            Some(Ok(_)) => true, // pings are answered by tungstenite
            Some(Err(e)) => {
                self.connected = false;
                self.error(format!("disconnected: {e}"));
                false
            }
            None => {
                self.connected = false;
                self.error("disconnected".into());
                false
            }
        }
    }

    fn on_control(&mut self, control: Control, text: &str) {
        match control.kind.as_ref() {
            "ack" => {
                let done = span(&control.acked) + span(&control.duplicate);
                if let Some(window) = control.window_bytes {
                    self.window = window;
                }
                if done > 0 {
                    self.resolve(done, true);
                }
            }
            "nack" => {
                let n = span(&control.ranges);
                let reason = control.reason.as_deref().unwrap_or("?").to_owned();
                *self.out.nacks.entry(reason).or_insert(0) += n;
                self.ctx.live.nacks.fetch_add(n, Relaxed);
                // Refused frames will never be acked: free their credit and their FIFO place.
                self.resolve(n, false);
            }
            "complete" => {
                self.complete = Some(Complete {
                    frames: control.frames.unwrap_or(0),
                    bytes: control.bytes.unwrap_or(0),
                    crc: control.stream_crc32c.unwrap_or(u64::MAX),
                });
            }
            "error" => self.error(format!("server error {text}")),
            _ => {} // hello again, pong
        }
    }

    /// `done` frames, oldest first, are settled: acked (counted, timed) or refused.
    fn resolve(&mut self, mut done: u64, acked: bool) {
        let now = Instant::now();
        let in_window = now >= self.window_start && self.window_end.is_none_or(|end| now <= end);
        if acked {
            self.out.acked += done;
            self.ctx.live.acked.fetch_add(done, Relaxed);
            if in_window {
                self.out.acked_in_window += done;
                self.out.last_ack = Some(now);
            }
        }
        let fb = u64::from(self.ctx.spec.frame_bytes);
        self.inflight_bytes = self.inflight_bytes.saturating_sub(done * fb);
        while done > 0 {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let take = done.min(front.0);
            if acked && in_window && front.1 >= self.window_start {
                self.out.hist.record((now - front.1).as_secs_f64(), take);
            }
            front.0 -= take;
            done -= take;
            if front.0 == 0 {
                self.pending.pop_front();
            }
        }
    }

    /// How many frames may go out now (credit, in-flight bound, what is left to send).
    fn room(&self) -> u64 {
        let spec = &self.ctx.spec;
        if let Some(n) = spec.inflight_messages {
            if self.pending.len() >= n as usize {
                return 0;
            }
        }
        let fb = u64::from(spec.frame_bytes);
        let credit = self.window.saturating_sub(self.inflight_bytes) / fb;
        credit
            .min(u64::from(spec.frames_per_message))
            .min(self.limit.saturating_sub(self.next_seq))
    }

    /// Queues one message of `count` frames (flushed by the caller).
    async fn feed(&mut self, count: u64, now: Instant) -> Result<(), ()> {
        let ctx = self.ctx;
        let message = frame::encode_message(
            self.next_seq as u32,
            count as u32,
            &ctx.payload,
            ctx.payload_crc,
        );
        self.next_seq += count;
        self.inflight_bytes += count * u64::from(ctx.spec.frame_bytes);
        self.pending.push_back((count, now));
        self.out.sent += count;
        self.out.messages += 1;
        ctx.live.sent.fetch_add(count, Relaxed);
        ctx.live.messages.fetch_add(1, Relaxed);
        let fed = self.ws.feed(Message::Binary(message.into())).await;
        fed.map_err(|e| self.error(format!("send: {e}")))
    }

    async fn flush(&mut self) -> Result<(), ()> {
        let flushed = self.ws.flush().await;
        flushed.map_err(|e| self.error(format!("send: {e}")))
    }

    /// Credit-bound: sends full messages while the credit (and in-flight bound) allows.
    async fn pump(&mut self) -> Result<(), ()> {
        let mut fed = false;
        let now = Instant::now();
        loop {
            let room = self.room();
            if room == 0 {
                break;
            }
            self.feed(room, now).await?;
            fed = true;
        }
        if fed {
            self.flush().await?;
        }
        Ok(())
    }

    /// Paced: sends the owed messages the credit allows; each counts late past `LATE`.
    async fn send_owed(&mut self) -> Result<(), ()> {
        let per_message = u64::from(self.ctx.spec.frames_per_message);
        let now = Instant::now();
        let mut fed = false;
        while let Some(&due) = self.owed.front() {
            if self.next_seq >= self.limit {
                self.owed.clear();
                break;
            }
            let want = per_message.min(self.limit - self.next_seq);
            if self.room() < want {
                break; // no credit: stays owed, sent on a later ack, the schedule kept
            }
            self.owed.pop_front();
            let lag = now.saturating_duration_since(due);
            if lag > LATE {
                self.out.late += 1;
            }
            self.out.max_lag_s = self.out.max_lag_s.max(lag.as_secs_f64());
            self.feed(want, now).await?;
            fed = true;
        }
        if fed {
            self.flush().await?;
        }
        Ok(())
    }

    async fn send_end(&mut self) -> Result<(), ()> {
        // The window closes for this stream: END's own ack is not load.
        self.window_end.get_or_insert(Instant::now());
        let end = frame::encode_end(self.next_seq as u32);
        self.out.sent += 1;
        self.ctx.live.sent.fetch_add(1, Relaxed);
        let sent = self.ws.send(Message::Binary(end.into())).await;
        sent.map_err(|e| self.error(format!("send END: {e}")))
    }

    /// Compares `complete` with what this stream sent (a fresh session: seqs from 0).
    fn check_complete(&mut self, done: Complete) {
        let end_seq = self.next_seq;
        let fb = u64::from(self.ctx.spec.frame_bytes);
        let sent = end_seq - self.first_seq;
        let crc = repeated_crc(self.ctx.payload_crc, fb, sent);
        let ok = done.frames == end_seq + 1
            && done.bytes == end_seq * fb
            && done.crc == u64::from(crc)
            && self.first_seq == 0;
        if ok {
            self.out.verified = true;
        } else {
            self.error(format!(
                "complete {done:?} does not match: sent {end_seq} frames, {} bytes, crc {crc}",
                end_seq * fb
            ));
        }
    }

    /// Closing handshake, bounded; the connection is dropped after it either way.
    async fn close(&mut self) {
        if !self.connected {
            return;
        }
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// CRC-32C of `n` copies of a payload of `len` bytes whose CRC is `crc`, in O(log n) combines.
pub fn repeated_crc(crc: u32, len: u64, mut n: u64) -> u32 {
    let mut result = 0u32; // the CRC of nothing
    let (mut block_crc, mut block_len) = (crc, len);
    while n > 0 {
        if n & 1 == 1 {
            result = frame::crc32c_combine(result, block_crc, block_len);
        }
        block_crc = frame::crc32c_combine(block_crc, block_crc, block_len);
        block_len *= 2;
        n >>= 1;
    }
    result
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_crc_is_the_crc_of_the_concatenation() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(640).collect();
        let crc = frame::crc32c(&payload);
        for n in [0u64, 1, 2, 3, 7, 64, 1000] {
            let whole = payload.repeat(n as usize);
            assert_eq!(repeated_crc(crc, 640, n), frame::crc32c(&whole), "n={n}");
        }
    }

    #[test]
    fn control_messages_parse() {
        let ack =
            r#"{"type":"ack","acked":[[0,3],[5,5]],"duplicate":[[4,4]],"window_bytes":1048576}"#;
        let c: Control = serde_json::from_str(ack).unwrap();
        assert_eq!(c.kind, "ack");
        assert_eq!(span(&c.acked) + span(&c.duplicate), 6);
        assert_eq!(c.window_bytes, Some(1 << 20));
        let hello = r#"{"type":"hello","protocol":1,"session_id":"s","next_seq":0,"missing":[],
            "window_bytes":65536,"max_frame_bytes":1,"max_message_bytes":2}"#;
        let c: Control = serde_json::from_str(hello).unwrap();
        assert_eq!((c.kind.as_ref(), c.next_seq), ("hello", Some(0)));
        let done = r#"{"type":"complete","last_seq":2,"frames":3,"bytes":1280,"stream_crc32c":4294967295}"#;
        let c: Control = serde_json::from_str(done).unwrap();
        assert_eq!(
            (c.frames, c.bytes, c.stream_crc32c),
            (Some(3), Some(1280), Some(u64::from(u32::MAX)))
        );
    }
}
