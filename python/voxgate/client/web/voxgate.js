// voxgate browser client: stream audio into a voxgate session exactly once.
//
// A plain ES module (no build step), served by voxgate at /client/voxgate.js.
// The wire format and every message are described in docs/protocol.md.
//
//   import { VoxgateStream, captureMicrophone } from "https://host/client/voxgate.js";
//   const stream = new VoxgateStream({ url: "https://host", sessionId, token: fetchToken });
//   await stream.open();
//   const mic = await captureMicrophone(stream, mediaStream, { sampleRate: 16000 });
//   ...
//   await mic.stop();
//   const complete = await stream.end();
//
// Guarantees: every frame is kept until the server acks it; no more unacked
// payload bytes are on the wire than the server's credit window; after a drop
// the client reconnects with backoff and a fresh token, and resends exactly
// what the server's `hello` reports missing; `end()` checks the server's
// CRC-32C of the whole stream against its own. Memory is bounded: past
// `maxBufferedFrames` unacked frames `send()` refuses (see `send`).

// --- protocol constants (docs/protocol.md; voxgate/wire.py holds the same values) ---

/** Wire protocol version: the header's version byte and `hello.protocol`. */
export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol a client offers and the server selects. */
export const SUBPROTOCOL = "voxgate.v1";
/** Offered next to SUBPROTOCOL, followed by the stream token (browsers cannot set headers). */
export const TOKEN_SUBPROTOCOL_PREFIX = "voxgate.token.";
/** Bytes of a frame header. */
export const HEADER_SIZE = 24;
/** The header's first two bytes, ASCII "VF". */
export const MAGIC = 0x5646;
/** Flag bit of the stream's last frame. */
export const FLAG_END = 0x01;
/** Content type of an HTTP upload body (frames back to back). */
export const FRAMES_CONTENT_TYPE = "application/vnd.voxgate.frames";

/** Reasons a `nack` gives. */
export const NACK_REASONS = Object.freeze({
  CHECKSUM: "checksum",
  WINDOW: "window",
  CONFLICT: "conflict",
  TOO_LARGE: "too_large",
  SEQUENCE: "sequence",
});

/** Control message types (`type` of every JSON text message). */
export const MESSAGE_TYPES = Object.freeze({
  HELLO: "hello",
  ACK: "ack",
  NACK: "nack",
  COMPLETE: "complete",
  ERROR: "error",
  PING: "ping",
  PONG: "pong",
});

/** WebSocket close codes the server uses, by name. */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  BAD_REQUEST: 4400,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  NOT_FOUND: 4404,
  IDLE: 4408,
  SUPERSEDED: 4409,
  GONE: 4410,
  TOO_MANY: 4429,
});

// Closes after which a later connection may succeed: reconnect with backoff.
const RECONNECT_CODES = new Set([1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014, 4408]);
// Closes a fresh token may fix (an expired token, a rate limit): retried, a few times.
const NEW_TOKEN_CODES = new Set([4401, 4429]);

// --- CRC-32C ---------------------------------------------------------------------

// Castagnoli polynomial, reflected; eight tables so the loop eats 8 bytes per step.
const CRC_TABLES = (() => {
  const tables = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    tables[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = tables[n];
    for (let t = 1; t < 8; t++) {
      c = tables[c & 0xff] ^ (c >>> 8);
      tables[t * 256 + n] = c >>> 0;
    }
  }
  return tables;
})();

/**
 * CRC-32C (Castagnoli) of `data`, continuing from `crc` (the CRC of what came
 * before, 0 to start): `crc32c(b, crc32c(a))` equals the CRC of `a` then `b`.
 * @param {Uint8Array} data
 * @param {number} [crc]
 * @returns {number} unsigned 32-bit value
 */
export function crc32c(data, crc = 0) {
  const t = CRC_TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const n = data.length;
  const fast = n - (n % 8);
  for (; i < fast; i += 8) {
    c ^= data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    c =
      t[1792 + (c & 0xff)] ^
      t[1536 + ((c >>> 8) & 0xff)] ^
      t[1280 + ((c >>> 16) & 0xff)] ^
      t[1024 + (c >>> 24)] ^
      t[768 + data[i + 4]] ^
      t[512 + data[i + 5]] ^
      t[256 + data[i + 6]] ^
      t[data[i + 7]];
  }
  for (; i < n; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// --- frames ------------------------------------------------------------------------

/**
 * One frame on the wire: the 24-byte header (big-endian) then the payload.
 * @param {number} seq frame number, 0-based
 * @param {Uint8Array} payload codec bytes (may be empty only with FLAG_END)
 * @param {bigint} ptsUs capture time in microseconds (u64)
 * @param {number} [flags] FLAG_END or 0
 * @param {number} [crc] the payload's CRC-32C when already known
 * @returns {Uint8Array}
 */
export function encodeFrame(seq, payload, ptsUs, flags = 0, crc = crc32c(payload)) {
  const wire = new Uint8Array(HEADER_SIZE + payload.length);
  const view = new DataView(wire.buffer);
  view.setUint16(0, MAGIC);
  view.setUint8(2, PROTOCOL_VERSION);
  view.setUint8(3, flags);
  view.setUint32(4, seq);
  view.setBigUint64(8, BigInt.asUintN(64, ptsUs));
  view.setUint32(16, payload.length);
  view.setUint32(20, crc);
  wire.set(payload, HEADER_SIZE);
  return wire;
}

/**
 * The WebSocket URL of a session's stream from an `http(s)://` or `ws(s)://` base URL.
 * @param {string} base
 * @param {string} sessionId
 * @returns {string}
 */
export function streamUrl(base, sessionId) {
  const url = new URL(base, typeof location === "undefined" ? undefined : location.href);
  url.protocol = { "http:": "ws:", "https:": "wss:" }[url.protocol] || url.protocol;
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/sessions/${encodeURIComponent(sessionId)}/stream`;
  url.search = "";
  url.hash = "";
  return url.toString();
}

// --- errors ------------------------------------------------------------------------

/**
 * Every failure a VoxgateStream reports. `code` is the WebSocket close code
 * (4401, 4403, ...) or a name for failures without one: `buffer_full`,
 * `too_large`, `integrity`, `protocol` (the server speaks another version),
 * `rejected` (a `nack` that resending cannot fix; `error` is its reason),
 * `reconnect_exhausted` (`cause`: the last attempt's error), `token` (the
 * token function failed), `token_used` (a string token asked for twice),
 * `closed`, `timeout`. `error` and `serverMessage` are the server's `error`
 * message when it sent one.
 */
export class VoxgateError extends Error {
  /**
   * @param {number|string} code
   * @param {string} error
   * @param {string} message
   * @param {{cause?: unknown, details?: Record<string, unknown>}} [extra]
   */
  constructor(code, error, message, extra = {}) {
    super(message ? `${error || code}: ${message}` : `${error || code}`);
    this.name = "VoxgateError";
    /** @type {number|string} */ this.code = code;
    /** @type {string} */ this.error = error;
    /** @type {string} */ this.serverMessage = message;
    /** @type {Record<string, unknown>} */ this.details = extra.details || {};
    if (extra.cause !== undefined) this.cause = extra.cause;
  }
}

// --- the stream ----------------------------------------------------------------------

/**
 * @typedef {object} Backoff reconnect policy: the n-th consecutive failure waits
 *   min(maxMs, initialMs * multiplier^(n-1)), less up to `jitter` of it at random.
 * @property {number} [initialMs] default 100
 * @property {number} [maxMs] default 5000
 * @property {number} [multiplier] default 2
 * @property {number} [jitter] fraction, default 0.5
 * @property {number} [maxAttempts] consecutive failures before giving up, default 20
 */

/**
 * @typedef {object} StreamOptions
 * @property {string} url server root, e.g. "https://voice.example.com"
 * @property {string} sessionId
 * @property {string | (() => string | Promise<string>)} token called for every
 *   connect and reconnect (tokens are single-use); a plain string serves one connect only
 * @property {number} [maxBufferedFrames] hard limit of unacked frames held, default 3000
 *   (60 s of 20 ms frames); `send()` throws `buffer_full` beyond it
 * @property {number} [highWaterFrames] `send()` returns false from this many unacked
 *   frames on, default maxBufferedFrames / 2; a `drain` event follows below it
 * @property {number} [framesPerMessage] frames packed into one WebSocket message, default 16
 * @property {Backoff} [backoff]
 * @property {number} [tokenRetries] consecutive 4401 closes (invalid, expired or used
 *   token) retried with a new token before failing, default 2
 * @property {number} [openTimeoutMs] wait for `hello` after the upgrade, default 10000
 * @property {number} [keepaliveMs] JSON ping this often, default 15000 (0: never)
 * @property {number} [windowRetryMs] resend after a `window` nack, default 100
 */

/**
 * @typedef {object} StreamStats
 * @property {number} framesSent distinct frames transmitted at least once
 * @property {number} bytesSent payload bytes of those
 * @property {number} framesResent transmissions after the first
 * @property {number} messagesSent binary WebSocket messages
 * @property {number} framesAcked acked as newly durable
 * @property {number} duplicates acked as already stored
 * @property {number} ackedOnResume found durable by a reconnect's hello
 * @property {Record<string, number>} nacks frames nacked, by reason
 * @property {number} connects connections that reached hello
 * @property {number} reconnects connects after the first
 * @property {number} connectFailures attempts that failed or dropped
 * @property {number} bufferedFrames unacked frames held now
 * @property {number} bufferedBytes their payload bytes
 * @property {number} inflightBytes payload bytes on the wire, not yet acked
 * @property {number} windowBytes the server's current credit
 * @property {boolean} connected
 */

/**
 * @typedef {object} Complete the server's `complete`, checked by the client
 * @property {number} last_seq
 * @property {number} frames
 * @property {number} bytes
 * @property {number} stream_crc32c
 * @property {boolean} verified always true (a mismatch rejects instead)
 */

/**
 * @typedef {{wire: Uint8Array, length: number, sends: number, inflight: boolean, sentAt: number}} Frame
 */

/**
 * Streams one session's frames over WebSocket, exactly once, across reconnects.
 *
 * Events (an EventTarget; each a CustomEvent with `detail`): `open` (detail:
 * the hello), `ack` (detail: the ack), `nack`, `disconnect` ({code, error,
 * message}), `reconnecting` ({attempt, delayMs, cause}), `backpressure`
 * (bufferedFrames reached highWaterFrames), `drain` (back below it),
 * `complete`, `error` (detail: the VoxgateError that ended the stream).
 */
export class VoxgateStream extends EventTarget {
  /** @param {StreamOptions} options */
  constructor(options) {
    super();
    if (!options || !options.url || !options.sessionId || !options.token) {
      throw new TypeError("VoxgateStream needs url, sessionId and token");
    }
    this.url = options.url;
    this.sessionId = options.sessionId;
    const token = options.token;
    /** @type {() => Promise<string>} */
    this._tokenSource =
      typeof token === "function" ? async () => token() : this._singleUse(token);
    this.maxBufferedFrames = options.maxBufferedFrames ?? 3000;
    this.highWaterFrames = options.highWaterFrames ?? Math.max(1, Math.floor(this.maxBufferedFrames / 2));
    this.framesPerMessage = Math.max(1, options.framesPerMessage ?? 16);
    this.backoff = {
      initialMs: 100,
      maxMs: 5000,
      multiplier: 2,
      jitter: 0.5,
      maxAttempts: 20,
      ...(options.backoff || {}),
    };
    this.tokenRetries = options.tokenRetries ?? 2;
    this.openTimeoutMs = options.openTimeoutMs ?? 10000;
    this.keepaliveMs = options.keepaliveMs ?? 15000;
    this.windowRetryMs = options.windowRetryMs ?? 100;

    /** @type {StreamStats} */
    this._stats = {
      framesSent: 0,
      bytesSent: 0,
      framesResent: 0,
      messagesSent: 0,
      framesAcked: 0,
      duplicates: 0,
      ackedOnResume: 0,
      nacks: {},
      connects: 0,
      reconnects: 0,
      connectFailures: 0,
      bufferedFrames: 0,
      bufferedBytes: 0,
      inflightBytes: 0,
      windowBytes: 0,
      connected: false,
    };
    // What was handed to send(): next seq, running CRC-32C of all payloads, total bytes.
    this._nextSeq = 0;
    this._crc = 0;
    this._totalBytes = 0;
    /** @type {number|null} */ this._endSeq = null;
    /** @type {number|null} */ this._t0 = null;
    // Unacked frames by seq (a Map keeps insertion order, which is seq order).
    /** @type {Map<number, Frame>} */ this._frames = new Map();
    this._bufferedBytes = 0;
    // Seqs waiting to go out: a min-heap and its membership set; frames held by a window nack.
    /** @type {number[]} */ this._heap = [];
    /** @type {Set<number>} */ this._queued = new Set();
    /** @type {Set<number>} */ this._held = new Set();
    /** @type {ReturnType<typeof setTimeout>|null} */ this._heldTimer = null;
    /** @type {WebSocket|null} */ this._ws = null;
    this._connected = false;
    this._window = 0;
    this._inflight = 0;
    /** @type {number|null} */ this._maxFrameBytes = null;
    this._maxMessageBytes = 1024 * 1024;
    this._backpressured = false;
    /** @type {Record<string, any>|null} */ this._completion = null;
    /** @type {VoxgateError|null} */ this._failure = null;
    this._closed = false;
    /** @type {Promise<void>|null} */ this._runner = null;
    /** @type {Array<{ready: () => boolean, resolve: () => void, reject: (e: unknown) => void}>} */
    this._waiters = [];
  }

  /** Counters and the current state; a fresh object each read. @returns {StreamStats} */
  get stats() {
    return {
      ...this._stats,
      nacks: { ...this._stats.nacks },
      bufferedFrames: this._frames.size,
      bufferedBytes: this._bufferedBytes,
      inflightBytes: this._inflight,
      windowBytes: this._window,
      connected: this._connected,
    };
  }

  /** The seq the next send() gets. */
  get nextSeq() {
    return this._nextSeq;
  }

  /** Unacked frames held (sent or waiting); send() refuses at maxBufferedFrames. */
  get bufferedFrames() {
    return this._frames.size;
  }

  /** CRC-32C of every payload given to send() so far, in seq order. */
  get streamCrc32c() {
    return this._crc;
  }

  /**
   * Connect (if not yet) and resolve once the server's `hello` arrived.
   * Rejects with a VoxgateError when the stream fails first (refused token or
   * Origin, unknown session, reconnect budget spent, ...).
   * @returns {Promise<void>}
   */
  async open() {
    this._start();
    await this._wait(() => this._stats.connects > 0 || this._completion !== null);
  }

  /**
   * Queue one frame with the next seq. `payload` is one frame's codec bytes
   * (the SDK copies it); `ptsUs` its capture time in microseconds (a bigint or
   * a number; default: time since the first send).
   *
   * Back-pressure: returns true while fewer than `highWaterFrames` frames are
   * unacked, false from there on (the frame is queued; slow down, wait for the
   * `drain` event or `await stream.drained()`). At `maxBufferedFrames` it
   * throws VoxgateError `buffer_full` and does not take the frame: memory
   * never grows without bound while the server is unreachable.
   * Throws the stream's failure once it has one, TypeError for an empty payload.
   * @param {Uint8Array} payload
   * @param {bigint|number} [ptsUs]
   * @returns {boolean}
   */
  send(payload, ptsUs) {
    this._throwFailure();
    if (this._endSeq !== null) throw new VoxgateError("closed", "ended", "send() after end()");
    if (!(payload instanceof Uint8Array)) payload = new Uint8Array(payload);
    if (payload.length === 0) throw new TypeError("an empty payload is only allowed as END");
    if (this._maxFrameBytes !== null && payload.length > this._maxFrameBytes) {
      throw new VoxgateError("too_large", "too_large", `payload of ${payload.length} bytes is above max_frame_bytes ${this._maxFrameBytes}`);
    }
    if (this._frames.size >= this.maxBufferedFrames) {
      throw new VoxgateError("buffer_full", "buffer_full", `${this._frames.size} unacked frames held (maxBufferedFrames); frame not taken`);
    }
    this._push(payload, ptsUs, 0);
    this._start();
    return this._frames.size < this.highWaterFrames;
  }

  /**
   * Resolve once fewer than `highWaterFrames` frames are unacked (at once if so).
   * @returns {Promise<void>}
   */
  async drained() {
    await this._wait(() => this._frames.size < this.highWaterFrames);
  }

  /**
   * End the stream: flag the last frame as END (or send an empty END frame),
   * wait for the server's `complete`, and check its `stream_crc32c`, `frames`,
   * `bytes` and `last_seq` against what was sent. Closes the connection after.
   * Rejects with VoxgateError `integrity` on a mismatch, or the stream's failure.
   * @param {{timeoutMs?: number}} [options] reject with `timeout` after this long
   * @returns {Promise<Complete>}
   */
  async end(options = {}) {
    this._throwFailure();
    if (this._endSeq === null && this._completion === null) {
      const last = this._nextSeq - 1;
      const frame = this._frames.get(last);
      if (frame && frame.sends === 0 && this._queued.has(last)) {
        // Not transmitted yet: re-flag it (same seq, payload and CRC).
        frame.wire[3] = FLAG_END;
        this._endSeq = last;
      } else {
        this._push(new Uint8Array(0), undefined, FLAG_END);
        this._endSeq = this._nextSeq - 1;
      }
      this._start();
      this._pump();
    }
    let timer = null;
    const waiting = this._wait(() => this._completion !== null, true);
    try {
      if (options.timeoutMs) {
        await Promise.race([
          waiting,
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new VoxgateError("timeout", "timeout", `no complete within ${options.timeoutMs} ms`)), options.timeoutMs);
          }),
        ]);
      } else {
        await waiting;
      }
    } finally {
      if (timer !== null) clearTimeout(timer);
    }
    const actual = /** @type {Record<string, any>} */ (this._completion);
    const expected = {
      last_seq: this._nextSeq - 1,
      frames: this._nextSeq,
      bytes: this._totalBytes,
      stream_crc32c: this._crc,
    };
    const mismatch = Object.entries(expected).filter(([k, v]) => actual[k] !== v);
    this.close();
    if (mismatch.length) {
      throw new VoxgateError("integrity", "integrity", `server stored ${JSON.stringify(actual)}, client sent ${JSON.stringify(expected)}`, { details: { expected, actual } });
    }
    return {
      last_seq: actual.last_seq,
      frames: actual.frames,
      bytes: actual.bytes,
      stream_crc32c: actual.stream_crc32c,
      verified: true,
    };
  }

  /** Close the connection and stop reconnecting; unacked frames are dropped. */
  close() {
    this._closed = true;
    if (this._heldTimer !== null) clearTimeout(this._heldTimer);
    this._heldTimer = null;
    if (this._ws && this._ws.readyState <= 1) this._ws.close(1000, "client closed");
    this._notify();
  }

  // -- internals ----------------------------------------------------------------------

  /** @param {string} token */
  _singleUse(token) {
    let used = false;
    return async () => {
      if (used) throw new VoxgateError("token_used", "token_used", "the token option is a single string: it serves one connection; pass a function for reconnects");
      used = true;
      return token;
    };
  }

  /**
   * @param {Uint8Array} payload
   * @param {bigint|number|undefined} ptsUs
   * @param {number} flags
   */
  _push(payload, ptsUs, flags) {
    const now = performance.now();
    if (this._t0 === null) this._t0 = now;
    const pts = ptsUs === undefined ? BigInt(Math.round((now - this._t0) * 1000)) : BigInt(ptsUs);
    const crc = crc32c(payload);
    const seq = this._nextSeq;
    const wire = encodeFrame(seq, payload, pts, flags, crc);
    this._crc = crc32c(payload, this._crc);
    this._totalBytes += payload.length;
    this._nextSeq = seq + 1;
    if (this._completion !== null) return; // the server already holds the whole session
    this._frames.set(seq, { wire, length: payload.length, sends: 0, inflight: false, sentAt: 0 });
    this._bufferedBytes += payload.length;
    this._enqueue(seq);
    if (!this._backpressured && this._frames.size >= this.highWaterFrames) {
      this._backpressured = true;
      this._emit("backpressure", { bufferedFrames: this._frames.size });
    }
    this._pump();
  }

  _start() {
    if (this._closed) throw new VoxgateError("closed", "closed", "stream is closed");
    if (this._runner === null) this._runner = this._run();
  }

  /**
   * @param {() => boolean} ready
   * @param {boolean} [afterFailure] a `complete` received before a failure still counts
   * @returns {Promise<void>}
   */
  _wait(ready, afterFailure = false) {
    return new Promise((resolve, reject) => {
      const waiter = {
        ready: () => {
          if (afterFailure && ready()) return true;
          if (this._failure) throw this._failure;
          if (ready()) return true;
          if (this._closed) throw new VoxgateError("closed", "closed", "stream is closed");
          return false;
        },
        resolve,
        reject,
      };
      if (!this._check(waiter)) this._waiters.push(waiter);
    });
  }

  /** @param {{ready: () => boolean, resolve: () => void, reject: (e: unknown) => void}} waiter */
  _check(waiter) {
    try {
      if (!waiter.ready()) return false;
      waiter.resolve();
    } catch (err) {
      waiter.reject(err);
    }
    return true;
  }

  _notify() {
    this._waiters = this._waiters.filter((w) => !this._check(w));
    if (this._backpressured && this._frames.size < this.highWaterFrames) {
      this._backpressured = false;
      this._emit("drain", { bufferedFrames: this._frames.size });
    }
  }

  _throwFailure() {
    if (this._failure) throw this._failure;
  }

  /** @param {VoxgateError} error */
  _fail(error) {
    if (this._failure || this._completion) return;
    this._failure = error;
    this._emit("error", error);
    if (this._ws && this._ws.readyState <= 1) this._ws.close(1000, "client failed");
    this._notify();
  }

  /** @param {string} type @param {unknown} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _finished() {
    return this._failure !== null || this._completion !== null || this._closed;
  }

  /** @param {number} seq */
  _enqueue(seq) {
    if (this._queued.has(seq)) return;
    this._queued.add(seq);
    const heap = this._heap;
    heap.push(seq);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent] <= heap[i]) break;
      [heap[parent], heap[i]] = [heap[i], heap[parent]];
      i = parent;
    }
  }

  /** The smallest queued seq, dropping stale heap entries. @returns {number|undefined} */
  _head() {
    const heap = this._heap;
    while (heap.length && !this._queued.has(heap[0])) this._heapPop();
    return heap[0];
  }

  _heapPop() {
    const heap = this._heap;
    const top = heap[0];
    const last = /** @type {number} */ (heap.pop());
    if (heap.length) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && heap[l] < heap[m]) m = l;
        if (r < heap.length && heap[r] < heap[m]) m = r;
        if (m === i) break;
        [heap[m], heap[i]] = [heap[i], heap[m]];
        i = m;
      }
    }
    return top;
  }

  // Send what the window allows, several frames per message.
  _pump() {
    const ws = this._ws;
    if (!this._connected || !ws || ws.readyState !== 1 || this._finished()) return;
    for (;;) {
      /** @type {Uint8Array[]} */
      const wires = [];
      let size = 0;
      const now = performance.now();
      while (wires.length < this.framesPerMessage) {
        const seq = this._head();
        if (seq === undefined) break;
        const frame = /** @type {Frame} */ (this._frames.get(seq));
        if (this._inflight + frame.length > this._window) break;
        if (size + frame.wire.length > this._maxMessageBytes) {
          if (!wires.length) {
            this._fail(new VoxgateError("too_large", "too_large", `frame ${seq} does not fit max_message_bytes`));
            return;
          }
          break;
        }
        this._heapPop();
        this._queued.delete(seq);
        wires.push(frame.wire);
        size += frame.wire.length;
        frame.inflight = true;
        frame.sentAt = now;
        this._inflight += frame.length;
        if (frame.sends) this._stats.framesResent++;
        else {
          this._stats.framesSent++;
          this._stats.bytesSent += frame.length;
        }
        frame.sends++;
      }
      if (!wires.length) return;
      let message = wires[0];
      if (wires.length > 1) {
        message = new Uint8Array(size);
        let at = 0;
        for (const w of wires) {
          message.set(w, at);
          at += w.length;
        }
      }
      this._stats.messagesSent++;
      ws.send(message);
    }
  }

  async _run() {
    let failures = 0;
    let tokenFailures = 0;
    /** @type {unknown} */
    let lastError = null;
    while (!this._finished()) {
      /** @type {{code: number, error: string, message: string, progressed: boolean, reached: boolean}} */
      let outcome;
      try {
        const token = await this._tokenSource();
        if (this._finished()) break;
        outcome = await this._connection(token);
      } catch (err) {
        if (err instanceof VoxgateError) {
          // A single-string token was used up: no later attempt can succeed. A refused
          // token says more than "token used" does; other drops become its cause.
          const refused = lastError instanceof VoxgateError && lastError.code === CLOSE_CODES.UNAUTHORIZED;
          if (!refused && lastError !== null) err.cause = lastError;
          this._fail(refused ? /** @type {VoxgateError} */ (lastError) : err);
          break;
        }
        outcome = { code: 0, error: "token", message: `token source failed: ${err && /** @type {any} */ (err).message ? /** @type {any} */ (err).message : err}`, progressed: false, reached: false };
      }
      if (this._finished()) break;
      const { code, error, message } = outcome;
      if (outcome.reached) this._emit("disconnect", { code, error, message });
      lastError = new VoxgateError(code || error, error, message);
      if (code === CLOSE_CODES.SUPERSEDED) {
        this._fail(new VoxgateError(code, error || "superseded", message));
        break;
      }
      const retriable =
        code === 0 ||
        RECONNECT_CODES.has(code) ||
        NEW_TOKEN_CODES.has(code) ||
        (code >= 1000 && code < 4000 && ![1002, 1003, 1007, 1008, 1009, 1010].includes(code));
      if (!retriable) {
        this._fail(new VoxgateError(code, error, message));
        break;
      }
      if (code === CLOSE_CODES.UNAUTHORIZED) {
        tokenFailures++;
        if (tokenFailures > this.tokenRetries) {
          this._fail(new VoxgateError(code, error || "unauthorized", message || "stream token refused"));
          break;
        }
      } else if (outcome.reached) {
        tokenFailures = 0;
      }
      failures = outcome.progressed ? 1 : failures + 1;
      this._stats.connectFailures++;
      if (failures >= this.backoff.maxAttempts) {
        this._fail(new VoxgateError("reconnect_exhausted", "reconnect_exhausted", `gave up after ${failures} connection attempts; last: ${/** @type {Error} */ (lastError).message}`, { cause: lastError }));
        break;
      }
      const b = this.backoff;
      const base = Math.min(b.maxMs, b.initialMs * b.multiplier ** (failures - 1));
      const delayMs = base * (1 - b.jitter * Math.random());
      this._emit("reconnecting", { attempt: failures, delayMs, cause: lastError });
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
    this._connected = false;
    this._notify();
  }

  /**
   * One connection, from upgrade to close.
   * @param {string} token
   * @returns {Promise<{code: number, error: string, message: string, progressed: boolean, reached: boolean}>}
   */
  _connection(token) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new WebSocket(streamUrl(this.url, this.sessionId), [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]);
      } catch (err) {
        resolve({ code: 0, error: "connect", message: String(err), progressed: false, reached: false });
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      let reached = false;
      let progressed = false;
      /** @type {{code?: string, message?: string}} */
      let lastError = {};
      /** @type {ReturnType<typeof setInterval>|null} */
      let keepalive = null;
      const helloTimer = setTimeout(() => {
        lastError = { code: "timeout", message: `no hello within ${this.openTimeoutMs} ms` };
        ws.close(4000, "no hello");
      }, this.openTimeoutMs);
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        if (msg.type === MESSAGE_TYPES.HELLO) {
          clearTimeout(helloTimer);
          try {
            this._applyHello(msg);
          } catch (err) {
            this._fail(/** @type {VoxgateError} */ (err));
            return;
          }
          reached = true;
          this._stats.connects++;
          if (this._stats.connects > 1) this._stats.reconnects++;
          if (this.keepaliveMs > 0) {
            keepalive = setInterval(() => {
              if (ws.readyState === 1) ws.send(JSON.stringify({ type: MESSAGE_TYPES.PING, t: Date.now() }));
            }, this.keepaliveMs);
          }
          this._emit("open", msg);
          this._notify();
          this._pump();
        } else if (msg.type === MESSAGE_TYPES.ERROR) {
          lastError = msg;
        } else if (this._handle(msg)) {
          progressed = true;
        }
      };
      ws.onclose = (event) => {
        clearTimeout(helloTimer);
        if (keepalive !== null) clearInterval(keepalive);
        if (this._ws === ws) this._ws = null;
        this._connected = false;
        this._inflight = 0;
        for (const frame of this._frames.values()) frame.inflight = false;
        this._notify();
        const code = lastError.code === "timeout" ? 0 : event.code;
        resolve({
          code,
          error: lastError.code || "",
          message: lastError.message || event.reason || "",
          progressed,
          reached,
        });
      };
    });
  }

  /** @param {Record<string, any>} hello */
  _applyHello(hello) {
    if (hello.protocol !== PROTOCOL_VERSION) {
      throw new VoxgateError("protocol", "protocol", `server speaks protocol ${hello.protocol}, this client ${PROTOCOL_VERSION}`);
    }
    const nextSeq = Number(hello.next_seq);
    /** @type {number[][]} */
    const missing = hello.missing || [];
    this._window = Number(hello.window_bytes);
    this._maxFrameBytes = Number(hello.max_frame_bytes);
    this._maxMessageBytes = Number(hello.max_message_bytes);
    this._inflight = 0;
    this._heap = [];
    this._queued.clear();
    this._held.clear();
    const inMissing = (/** @type {number} */ seq) => missing.some(([a, b]) => a <= seq && seq <= b);
    // A seq the server misses that this client no longer holds was acked once and then lost.
    for (const [first, lastRaw] of missing) {
      const last = Math.min(lastRaw, this._nextSeq - 1);
      for (let seq = first; seq <= last; seq++) {
        if (!this._frames.has(seq)) {
          throw new VoxgateError("integrity", "integrity", `server reports seq ${seq} missing that it acked earlier`);
        }
      }
    }
    for (const [seq, frame] of this._frames) {
      frame.inflight = false;
      if (seq >= nextSeq || inMissing(seq)) this._enqueue(seq);
      else {
        this._drop(seq);
        this._stats.ackedOnResume++;
      }
    }
    this._stats.windowBytes = this._window;
    this._connected = true;
  }

  /** @param {number} seq */
  _drop(seq) {
    const frame = this._frames.get(seq);
    if (!frame) return;
    this._frames.delete(seq);
    this._bufferedBytes -= frame.length;
    this._queued.delete(seq);
    this._held.delete(seq);
    if (frame.inflight) this._inflight -= frame.length;
  }

  /**
   * Seqs of held frames inside `ranges`.
   * @param {number[][]} ranges
   * @returns {number[]}
   */
  _seqsIn(ranges) {
    /** @type {number[]} */
    const out = [];
    for (const [first, last] of ranges) {
      if (last - first + 1 <= this._frames.size) {
        for (let seq = first; seq <= last; seq++) if (this._frames.has(seq)) out.push(seq);
      } else {
        for (const seq of this._frames.keys()) if (first <= seq && seq <= last) out.push(seq);
      }
    }
    return out;
  }

  /**
   * Apply one control message; true when it showed progress.
   * @param {Record<string, any>} msg
   */
  _handle(msg) {
    if (msg.type === MESSAGE_TYPES.ACK) {
      let settled = 0;
      for (const [key, stat] of [["acked", "framesAcked"], ["duplicate", "duplicates"]]) {
        const seqs = this._seqsIn(msg[key] || []);
        for (const seq of seqs) this._drop(seq);
        this._stats[/** @type {"framesAcked"|"duplicates"} */ (stat)] += seqs.length;
        settled += seqs.length;
      }
      if (msg.window_bytes !== undefined) this._window = Number(msg.window_bytes);
      this._stats.windowBytes = this._window;
      this._releaseHeld();
      this._emit("ack", msg);
      this._notify();
      this._pump();
      return settled > 0;
    }
    if (msg.type === MESSAGE_TYPES.NACK) {
      const reason = String(msg.reason);
      const seqs = this._seqsIn(msg.ranges || []);
      this._stats.nacks[reason] = (this._stats.nacks[reason] || 0) + seqs.length;
      this._emit("nack", msg);
      for (const seq of seqs) {
        const frame = /** @type {Frame} */ (this._frames.get(seq));
        if (frame.inflight) {
          frame.inflight = false;
          this._inflight -= frame.length;
        }
      }
      if (reason === NACK_REASONS.CHECKSUM) {
        for (const seq of seqs) this._enqueue(seq);
      } else if (reason === NACK_REASONS.WINDOW) {
        for (const seq of seqs) this._held.add(seq);
        if (this._heldTimer === null) this._heldTimer = setTimeout(() => this._releaseHeld(), this.windowRetryMs);
      } else {
        for (const seq of seqs) this._drop(seq);
        this._fail(new VoxgateError("rejected", reason, `server refused frames ${JSON.stringify(msg.ranges)} (${reason}); they are not resent`, { details: { ranges: msg.ranges, reason } }));
        return false;
      }
      this._pump();
      return false;
    }
    if (msg.type === MESSAGE_TYPES.COMPLETE) {
      this._completion = msg;
      for (const seq of [...this._frames.keys()]) this._drop(seq);
      this._heap = [];
      this._emit("complete", msg);
      this._notify();
      return true;
    }
    return false;
  }

  _releaseHeld() {
    if (this._heldTimer !== null) clearTimeout(this._heldTimer);
    this._heldTimer = null;
    if (!this._held.size) return;
    for (const seq of this._held) if (this._frames.has(seq)) this._enqueue(seq);
    this._held.clear();
    this._pump();
  }
}

// --- microphone capture ------------------------------------------------------------------

/**
 * @typedef {object} CaptureOptions
 * @property {number} [sampleRate] the session's sample rate, default 16000
 * @property {number} [frameMs] audio per frame in milliseconds, default 20
 * @property {string} [workletUrl] the AudioWorklet processor, default next to this module
 * @property {AudioContext} [audioContext] reuse one (else one is created and closed by stop())
 * @property {(error: unknown) => void} [onError] capture stopped by an error (say `buffer_full`)
 * @property {(payload: Uint8Array, ptsUs: bigint) => void} [onFrame] sees each frame as sent
 */

/**
 * @typedef {object} Microphone
 * @property {() => Promise<void>} stop stop capturing, send the last partial frame
 * @property {number} frames frames produced so far
 * @property {unknown} error what stopped capture, if anything did
 */

/**
 * Capture `mediaStream`'s audio into `stream` as `pcm_s16le` mono frames at
 * `sampleRate`, `frameMs` each, with pts from the sample count. The audio is
 * mixed to mono and resampled in an AudioWorklet. When `stream.send` refuses a
 * frame (buffer full, stream failed), capture stops and `onError` is called:
 * live audio cannot wait, and dropping frames silently would store a stream with
 * holes nobody knows about.
 * @param {VoxgateStream} stream
 * @param {MediaStream} mediaStream
 * @param {CaptureOptions} [options]
 * @returns {Promise<Microphone>}
 */
export async function captureMicrophone(stream, mediaStream, options = {}) {
  const sampleRate = options.sampleRate ?? 16000;
  const frameMs = options.frameMs ?? 20;
  const frameSamples = Math.round((sampleRate * frameMs) / 1000);
  if (!Number.isInteger((sampleRate * frameMs) / 1000) || frameSamples < 1) {
    throw new TypeError(`frameMs ${frameMs} is not a whole number of samples at ${sampleRate} Hz`);
  }
  const ownContext = !options.audioContext;
  const context = options.audioContext || new AudioContext();
  const workletUrl = options.workletUrl || new URL("./voxgate-worklet.js", import.meta.url).href;
  await context.audioWorklet.addModule(workletUrl);
  if (context.state === "suspended") await context.resume();
  const source = context.createMediaStreamSource(mediaStream);
  const node = new AudioWorkletNode(context, "voxgate-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: sampleRate, frameSamples },
  });
  const usPerFrame = BigInt(frameMs * 1000);
  /** @type {Microphone} */
  const mic = { stop: async () => {}, frames: 0, error: null };
  let stopped = false;
  /** @type {(() => void)|null} */
  let flushed = null;

  const teardown = async () => {
    source.disconnect();
    node.port.onmessage = null;
    node.disconnect();
    if (ownContext) await context.close();
  };

  node.port.onmessage = (event) => {
    const data = event.data;
    if (data.type === "frame") {
      if (mic.error) return;
      const payload = new Uint8Array(data.pcm);
      const pts = BigInt(mic.frames) * usPerFrame;
      try {
        stream.send(payload, pts);
        mic.frames++;
        if (options.onFrame) options.onFrame(payload, pts);
      } catch (err) {
        mic.error = err;
        if (!stopped) {
          stopped = true;
          teardown();
        }
        if (options.onError) options.onError(err);
      }
    } else if (data.type === "flushed" && flushed) {
      flushed();
    }
  };
  source.connect(node);

  mic.stop = async () => {
    if (stopped) return;
    stopped = true;
    // The worklet sends what it holds as a last (shorter) frame, then "flushed".
    await new Promise((resolve) => {
      flushed = () => resolve(undefined);
      node.port.postMessage({ type: "flush" });
    });
    await teardown();
  };
  return mic;
}
