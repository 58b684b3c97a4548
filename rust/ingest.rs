//! The Python face of [`crate::stream`]: `StreamCore`, one per open WebSocket
//! stream, takes whole messages and hands out `Batch`es, the frames to store
//! as positions in the message (no Python object per frame).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PySlice, PyString};

use crate::stream::{Accepted, StreamState};
use crate::{frame_error, PyLedger};

/// The frames of one message that go to the store, in message order.
#[pyclass(module = "voxgate._native", name = "Batch", frozen)]
pub struct PyBatch {
    pub(crate) session_id: Py<PyString>,
    pub(crate) message: Py<PyBytes>,
    pub(crate) frames: Vec<Accepted>,
    pub(crate) nbytes: u64,
}

#[pymethods]
impl PyBatch {
    /// The session every frame belongs to.
    #[getter]
    fn session_id(&self, py: Python<'_>) -> Py<PyString> {
        self.session_id.clone_ref(py)
    }

    /// The message the payloads live in.
    #[getter]
    fn message(&self, py: Python<'_>) -> Py<PyBytes> {
        self.message.clone_ref(py)
    }

    /// Payload bytes of all frames.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    fn __len__(&self) -> usize {
        self.frames.len()
    }

    /// The seqs, in message order.
    fn seqs(&self) -> Vec<u64> {
        self.frames.iter().map(|f| f.seq).collect()
    }

    /// Every frame as (seq, flags, pts_us, crc32c, payload view into the message).
    fn frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let view = PyMemoryView::from(self.message.bind(py).as_any())?;
        let items = self
            .frames
            .iter()
            .map(|f| {
                let end = f.offset + f.length as usize;
                let slice = PySlice::new(py, f.offset as isize, end as isize, 1);
                let payload = view.get_item(slice)?;
                Ok((f.seq, f.flags, f.pts_us, f.crc32c, payload))
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Batch(session_id={:?}, frames={}, nbytes={})",
            self.session_id.bind(py).to_string(),
            self.frames.len(),
            self.nbytes
        )
    }
}

/// One stream's state: what it knows of its session, its ledger account, and
/// the acks and nacks it owes its client.
#[pyclass(module = "voxgate._native", name = "StreamCore")]
pub struct PyStreamCore {
    state: StreamState,
    ledger: Py<PyLedger>,
    handle: u64,
    session_id: Py<PyString>,
}

#[pymethods]
impl PyStreamCore {
    #[new]
    #[pyo3(signature = (ledger, handle, session_id, *, max_frame_bytes, max_seq_ahead, next_seq, end_seq = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ledger: Py<PyLedger>,
        handle: u64,
        session_id: Py<PyString>,
        max_frame_bytes: u64,
        max_seq_ahead: u64,
        next_seq: u64,
        end_seq: Option<u64>,
    ) -> Self {
        PyStreamCore {
            state: StreamState::new(next_seq, end_seq, max_frame_bytes, max_seq_ahead),
            ledger,
            handle,
            session_id,
        }
    }

    /// Judge every frame of ``message``: the frames to store as a Batch (None
    /// if there are none); refused frames wait for ``take_nacks``. A ``closing``
    /// stream admits nothing. Raises FrameError on broken framing (nothing of
    /// the message counts then).
    fn accept(
        &mut self,
        py: Python<'_>,
        message: Bound<'_, PyBytes>,
        closing: bool,
    ) -> PyResult<Option<PyBatch>> {
        let mut ledger = self.ledger.bind(py).borrow_mut();
        let handle = self.handle;
        let mut frames = Vec::new();
        let admit = |n: u64| ledger.inner.admit(handle, n).unwrap_or(false);
        let nbytes = self
            .state
            .accept(message.as_bytes(), closing, admit, &mut frames)
            .map_err(|e| frame_error(py, e))?;
        if frames.is_empty() {
            return Ok(None);
        }
        Ok(Some(PyBatch {
            session_id: self.session_id.clone_ref(py),
            message: message.unbind(),
            frames,
            nbytes,
        }))
    }

    /// The store's outcome byte per frame of ``batch`` (``CommitPlan`` numbering).
    fn record(&mut self, batch: &Bound<'_, PyBatch>, outcomes: Vec<u8>) -> PyResult<()> {
        let frames = &batch.get().frames;
        if frames.len() != outcomes.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "{} outcomes for a batch of {} frames",
                outcomes.len(),
                frames.len()
            )));
        }
        self.state.record(frames, &outcomes);
        Ok(())
    }

    /// The session's counters after a commit (or an upload elsewhere).
    #[pyo3(signature = (next_seq, end_seq = None))]
    fn progress(&mut self, next_seq: u64, end_seq: Option<u64>) {
        self.state.progress(next_seq, end_seq);
    }

    #[getter]
    fn next_seq(&self) -> u64 {
        self.state.next_seq()
    }

    #[getter]
    fn end_seq(&self) -> Option<u64> {
        self.state.end_seq()
    }

    /// True once a commit found the session deleted or archived.
    #[getter]
    fn gone(&self) -> bool {
        self.state.gone
    }

    /// Whether acks are waiting.
    #[getter]
    fn has_acks(&self) -> bool {
        self.state.has_acks()
    }

    /// Refused seqs not yet answered with a nack.
    #[getter]
    fn pending_rejections(&self) -> usize {
        self.state.pending_rejections()
    }

    /// The nack messages owed: (reason, seqs refused, JSON text) per reason.
    fn take_nacks(&mut self) -> Vec<(&'static str, u64, String)> {
        self.state.take_nacks()
    }

    /// The ack message owed, advertising ``window_bytes``: (acked, duplicate, JSON text).
    fn take_ack(&mut self, window_bytes: u64) -> (u64, u64, String) {
        self.state.take_ack(window_bytes)
    }
}
