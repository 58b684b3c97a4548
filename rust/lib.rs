//! `voxgate._native`: thin pyo3 bindings over the pure-Rust frame codec
//! ([`framing`]), CRC-32C ([`crc`]) and credit ledger ([`ledger`]); the
//! per-stream core ([`stream`]) has its bindings in `ingest.rs`, the blocks
//! ([`block`]) and the commit plan ([`commit`]) theirs in `store.rs`.

pub mod block;
pub mod commit;
pub mod crc;
pub mod framing;
mod ingest;
pub mod ledger;
mod store;
pub mod stream;

use std::mem::MaybeUninit;

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::{create_exception, ffi, intern};

/// Work on buffers at least this large runs with the GIL released; below it
/// the release costs more than it frees.
pub(crate) const GIL_RELEASE_BYTES: usize = 64 * 1024;
/// Likewise, commits of at least this many frames are judged without the GIL.
pub(crate) const GIL_RELEASE_FRAMES: usize = 256;

create_exception!(
    voxgate._native,
    FrameError,
    PyValueError,
    "Broken framing: the whole message (or body, from ``offset`` on) is rejected."
);

create_exception!(
    voxgate._native,
    BlockError,
    PyValueError,
    "Stored bytes that are not the block the index names: torn, corrupt or misplaced."
);

pub(crate) fn frame_error(py: Python<'_>, e: framing::FrameError) -> PyErr {
    let err = FrameError::new_err(e.to_string());
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail short of
    // memory exhaustion; the message carries kind and offset regardless.
    let _ = value.setattr(intern!(py, "kind"), e.kind.name());
    let _ = value.setattr(intern!(py, "offset"), e.offset);
    err
}

/// Runs `f` on the bytes of any object exporting a contiguous buffer
/// (bytes, bytearray, memoryview, ...), without copying them.
pub(crate) fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    struct View(MaybeUninit<ffi::Py_buffer>);
    impl Drop for View {
        fn drop(&mut self) {
            // SAFETY: only constructed after PyObject_GetBuffer succeeded; the
            // view has not moved since (it lives in this frame).
            unsafe { ffi::PyBuffer_Release(self.0.as_mut_ptr()) }
        }
    }
    let mut raw = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: PyBUF_SIMPLE asks for a C-contiguous run of bytes; on success the
    // view stays valid (and the exporter may not resize) until released.
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), raw.as_mut_ptr(), ffi::PyBUF_SIMPLE) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    let view = View(raw);
    // SAFETY: initialised by the successful PyObject_GetBuffer above.
    let (ptr, len) = unsafe {
        let v = view.0.assume_init_ref();
        (v.buf as *const u8, v.len as usize)
    };
    let bytes: &[u8] = if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the exporter guarantees `len` readable bytes at `buf` while
        // the view is held. A mutable exporter (bytearray) could be written by
        // another thread meanwhile; that can only change the values read.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    };
    let result = f(bytes);
    drop(view);
    Ok(result)
}

/// CRC-32C of ``data``, continuing from ``value`` (the CRC of what came before).
#[pyfunction]
#[pyo3(name = "crc32c", signature = (data, value = 0))]
fn py_crc32c(py: Python<'_>, data: &Bound<'_, PyAny>, value: u32) -> PyResult<u32> {
    with_bytes(data, |b| {
        if b.len() >= GIL_RELEASE_BYTES {
            py.detach(|| crc::crc32c_append(value, b))
        } else {
            crc::crc32c_append(value, b)
        }
    })
}

/// CRC-32C of ``A + B`` from ``crc1 = crc32c(A)``, ``crc2 = crc32c(B)`` and ``len(B)``.
#[pyfunction]
#[pyo3(name = "crc32c_combine")]
fn py_crc32c_combine(crc1: u32, crc2: u32, len2: u64) -> u32 {
    crc::crc32c_combine(crc1, crc2, len2)
}

/// One frame, header and payload, with its CRC-32C computed.
#[pyfunction]
#[pyo3(name = "encode_frame", signature = (seq, payload, pts_us = 0, end = false))]
fn py_encode_frame<'py>(
    py: Python<'py>,
    seq: u32,
    payload: &Bound<'py, PyAny>,
    pts_us: u64,
    end: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(payload, |p| {
        if u32::try_from(p.len()).is_err() {
            return Err(PyValueError::new_err(format!(
                "payload of {} bytes does not fit a frame (at most {} bytes)",
                p.len(),
                u32::MAX
            )));
        }
        PyBytes::new_with(py, framing::HEADER_SIZE + p.len(), |out| {
            framing::write_frame(out, seq, p, pts_us, end);
            Ok(())
        })
    })?
}

/// A 24-byte header as given, unchecked (tests use it to build bad frames).
#[pyfunction]
#[pyo3(name = "encode_header", signature = (seq, length, crc32c, pts_us = 0, flags = 0))]
fn py_encode_header(
    py: Python<'_>,
    seq: u32,
    length: u32,
    crc32c: u32,
    pts_us: u64,
    flags: u8,
) -> Bound<'_, PyBytes> {
    PyBytes::new(
        py,
        &framing::encode_header(seq, length, crc32c, pts_us, flags),
    )
}

type FrameTuple = (u32, u8, u64, usize, u32, u32, u8);

fn frame_tuple(f: &framing::Frame) -> FrameTuple {
    (
        f.seq,
        f.flags,
        f.pts_us,
        f.payload_offset,
        f.payload_len,
        f.crc32c,
        f.verdict as u8,
    )
}

thread_local! {
    /// Reused between calls so decoding allocates nothing per message but the result.
    static SCRATCH: std::cell::Cell<Vec<framing::Frame>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Every frame of one WebSocket message, payloads left in place.
///
/// Raises FrameError on broken framing; nothing of the message counts then.
#[pyfunction]
#[pyo3(name = "decode")]
fn py_decode<'py>(
    py: Python<'py>,
    message: &Bound<'py, PyAny>,
    max_frame_bytes: u64,
) -> PyResult<Bound<'py, PyList>> {
    // Taken out of the thread-local (not borrowed) so a re-entrant call, say
    // from a finaliser run while the list is built, just gets a fresh Vec.
    let mut frames = SCRATCH.take();
    frames.clear();
    let decoded = with_bytes(message, |msg| {
        let run = |frames: &mut Vec<framing::Frame>| {
            framing::decode_each(msg, max_frame_bytes, |f| {
                frames.push(f);
                Ok::<(), framing::FrameError>(())
            })
        };
        if msg.len() >= GIL_RELEASE_BYTES {
            py.detach(|| run(&mut frames))
        } else {
            run(&mut frames)
        }
    })?;
    let result = match decoded {
        Ok(()) => PyList::new(py, frames.iter().map(frame_tuple)),
        Err(e) => Err(frame_error(py, e)),
    };
    frames.clear();
    SCRATCH.set(frames);
    result
}

/// Incremental decoder for byte streams (HTTP bodies) split anywhere.
#[pyclass(module = "voxgate._native", name = "StreamDecoder")]
struct PyStreamDecoder {
    inner: framing::StreamDecoder,
}

#[pymethods]
impl PyStreamDecoder {
    #[new]
    fn new(max_frame_bytes: u64) -> Self {
        PyStreamDecoder {
            inner: framing::StreamDecoder::new(max_frame_bytes),
        }
    }

    /// Frames completed by ``chunk``: (seq, flags, pts_us, payload, crc32c, verdict).
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        chunk: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inner = &mut self.inner;
        with_bytes(chunk, |c| {
            let mut out = Vec::new();
            let fed = if c.len() >= GIL_RELEASE_BYTES {
                py.detach(|| inner.feed(c, &mut out))
            } else {
                inner.feed(c, &mut out)
            };
            fed.map_err(|e| frame_error(py, e))?;
            PyList::new(
                py,
                out.iter().map(|f| {
                    let payload = f.payload.bytes().map(|b| PyBytes::new(py, b));
                    (f.seq, f.flags, f.pts_us, payload, f.crc32c, f.verdict as u8)
                }),
            )
        })?
    }

    /// Declare the end of the stream; raises FrameError("truncated") if a frame is partial.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        self.inner.finish().map_err(|e| frame_error(py, e))
    }

    /// Bytes held waiting for the rest of a frame.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    /// Total bytes fed so far.
    #[getter]
    fn consumed(&self) -> u64 {
        self.inner.consumed()
    }

    fn __repr__(&self) -> String {
        format!(
            "StreamDecoder(consumed={}, buffered={})",
            self.inner.consumed(),
            self.inner.buffered()
        )
    }
}

/// A snapshot of the ledger's counters.
#[pyclass(module = "voxgate._native", name = "LedgerStats", frozen, get_all, eq)]
#[derive(Clone, PartialEq, Eq)]
struct PyLedgerStats {
    inflight_bytes: u64,
    streams: u64,
    pressure: bool,
    pressure_events: u64,
    admitted_bytes: u64,
    refused: u64,
}

#[pymethods]
impl PyLedgerStats {
    fn __repr__(&self) -> String {
        format!(
            "LedgerStats(inflight_bytes={}, streams={}, pressure={}, pressure_events={}, admitted_bytes={}, refused={})",
            self.inflight_bytes,
            self.streams,
            if self.pressure { "True" } else { "False" },
            self.pressure_events,
            self.admitted_bytes,
            self.refused
        )
    }
}

/// Credit accounting for every open stream of this process.
#[pyclass(module = "voxgate._native", name = "Ledger")]
pub(crate) struct PyLedger {
    pub(crate) inner: ledger::Ledger,
}

fn unknown(e: ledger::UnknownHandle) -> PyErr {
    PyKeyError::new_err(e.to_string())
}

#[pymethods]
impl PyLedger {
    #[new]
    fn new(
        window_bytes: u64,
        global_high: u64,
        global_low: u64,
        global_limit: u64,
    ) -> PyResult<Self> {
        ledger::Ledger::new(window_bytes, global_high, global_low, global_limit)
            .map(|inner| PyLedger { inner })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Register a stream; returns its handle with the full window advertised.
    fn open(&mut self) -> u64 {
        self.inner.open()
    }

    /// Forget a stream, releasing whatever it still had in flight; True when
    /// that ended a pressure period.
    fn close(&mut self, handle: u64) -> PyResult<bool> {
        self.inner.close(handle).map_err(unknown)
    }

    /// Count ``nbytes`` in flight for the stream if its credit allows.
    fn admit(&mut self, handle: u64, nbytes: u64) -> PyResult<bool> {
        self.inner.admit(handle, nbytes).map_err(unknown)
    }

    /// Uncount acked bytes; True when this release ended a pressure period.
    fn release(&mut self, handle: u64, nbytes: u64) -> PyResult<bool> {
        self.inner.release(handle, nbytes).map_err(unknown)
    }

    /// The window to advertise now, recorded as the stream's credit.
    fn window(&mut self, handle: u64) -> PyResult<u64> {
        self.inner.window(handle).map_err(unknown)
    }

    /// The stream's bytes in flight.
    fn inflight(&self, handle: u64) -> PyResult<u64> {
        self.inner.inflight(handle).map_err(unknown)
    }

    fn stats(&self) -> PyLedgerStats {
        let s = self.inner.stats();
        PyLedgerStats {
            inflight_bytes: s.inflight_bytes,
            streams: s.streams,
            pressure: s.pressure,
            pressure_events: s.pressure_events,
            admitted_bytes: s.admitted_bytes,
            refused: s.refused,
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("HEADER_SIZE", framing::HEADER_SIZE)?;
    m.add("MAGIC", PyBytes::new(py, &framing::MAGIC))?;
    m.add("VERSION", framing::VERSION)?;
    m.add("FLAG_END", framing::FLAG_END)?;
    m.add("FRAME_OK", framing::Verdict::Ok as u8)?;
    m.add("FRAME_BAD_CRC", framing::Verdict::BadCrc as u8)?;
    m.add("FRAME_TOO_LARGE", framing::Verdict::TooLarge as u8)?;
    // The stub's type alias exists at run time too, so it can be imported.
    m.add(
        "DecodedFrame",
        py.eval(c"tuple[int, int, int, int, int, int, int]", None, None)?,
    )?;
    m.add("FrameError", py.get_type::<FrameError>())?;
    m.add("BlockError", py.get_type::<BlockError>())?;
    m.add_function(wrap_pyfunction!(store::py_block_header, m)?)?;
    m.add_function(wrap_pyfunction!(store::py_read_block, m)?)?;
    m.add_function(wrap_pyfunction!(store::py_scan_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(store::py_salvage_block, m)?)?;
    m.add_function(wrap_pyfunction!(py_crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(py_crc32c_combine, m)?)?;
    m.add_function(wrap_pyfunction!(py_encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(py_encode_header, m)?)?;
    m.add_function(wrap_pyfunction!(py_decode, m)?)?;
    m.add_class::<PyStreamDecoder>()?;
    m.add_class::<PyLedger>()?;
    m.add_class::<PyLedgerStats>()?;
    m.add_class::<store::PyCommitPlan>()?;
    m.add_class::<ingest::PyStreamCore>()?;
    m.add_class::<ingest::PyBatch>()?;
    Ok(())
}
