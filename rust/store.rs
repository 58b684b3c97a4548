//! The Python face of the store's core: the blocks segments hold
//! ([`crate::block`]) and `CommitPlan`, the per-frame work of one commit
//! ([`crate::commit`]).

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PySlice, PyString};

use crate::{block, commit, framing, ingest, with_bytes, BlockError};
use crate::{GIL_RELEASE_BYTES, GIL_RELEASE_FRAMES};

/// The header of a block of ``count`` frames of ``session_id`` from
/// ``first_seq`` whose records take ``records_len`` bytes.
#[pyfunction]
#[pyo3(name = "block_header")]
pub(crate) fn py_block_header<'py>(
    py: Python<'py>,
    session_id: &str,
    first_seq: u64,
    count: u32,
    records_len: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    if session_id.len() > block::MAX_SESSION_ID {
        return Err(PyValueError::new_err("session id too long for a block"));
    }
    if count == 0 {
        return Err(PyValueError::new_err("a block holds at least one frame"));
    }
    Ok(PyBytes::new(
        py,
        &block::encode_header(session_id, first_seq, count, records_len),
    ))
}

/// (session_id, seq, flags, pts_us, length, crc32c, payload offset) per frame
/// of the whole block ``data``; with ``verify``, every payload is checked
/// against its CRC-32C. Raises BlockError.
#[pyfunction]
#[pyo3(name = "read_block", signature = (data, *, verify))]
#[allow(clippy::type_complexity)]
pub(crate) fn py_read_block(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    verify: bool,
) -> PyResult<(String, Vec<(u64, u8, u64, u32, u32, usize)>)> {
    let parsed = with_bytes(data, |b| {
        if verify && b.len() >= GIL_RELEASE_BYTES {
            py.detach(|| block::parse(b, true))
        } else {
            block::parse(b, verify)
        }
    })?;
    let (head, records) = parsed.map_err(|e| BlockError::new_err(e.0))?;
    Ok(block_rows(head, &records))
}

/// (session_id, records) of the intact frames of the block ``data``, whose header
/// holds but some of whose records do not: each record as ``read_block`` gives
/// it, up to the first record whose header does not read. Raises BlockError
/// when the block's header itself does not hold.
#[pyfunction]
#[pyo3(name = "salvage_block")]
#[allow(clippy::type_complexity)]
pub(crate) fn py_salvage_block(
    data: &Bound<'_, PyAny>,
) -> PyResult<(String, Vec<(u64, u8, u64, u32, u32, usize)>)> {
    let (head, records) =
        with_bytes(data, block::salvage)?.map_err(|e| BlockError::new_err(e.0))?;
    Ok(block_rows(head, &records))
}

/// A block's session id and its records as the tuples Python reads.
#[allow(clippy::type_complexity)]
fn block_rows(
    head: block::Head,
    records: &[block::Record],
) -> (String, Vec<(u64, u8, u64, u32, u32, usize)>) {
    let rows = records
        .iter()
        .map(|r| (r.seq, r.flags, r.pts_us, r.length, r.crc32c, r.payload))
        .collect();
    (head.session_id, rows)
}

/// What a scan of ``data`` (a segment's bytes from offset ``base``) found:
/// every whole, valid block as (session_id, first_seq, last_seq, offset,
/// length, payload_bytes, crc32c, end_seq); damaged stretches with valid
/// blocks after them as (offset, length, reason); where the scan stopped, and
/// why (None: at the end). Erased (zeroed) stretches are stepped over.
#[pyfunction]
#[pyo3(name = "scan_blocks")]
#[allow(clippy::type_complexity)]
pub(crate) fn py_scan_blocks(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    base: u64,
) -> PyResult<(
    Vec<(String, u64, u64, u64, u64, u64, u32, Option<u64>)>,
    Vec<(u64, u64, String)>,
    u64,
    Option<String>,
)> {
    let found = with_bytes(data, |b| py.detach(|| block::scan(b, base)))?;
    let rows = found
        .extents
        .into_iter()
        .map(|e| {
            (
                e.session_id,
                e.first_seq,
                e.last_seq,
                e.offset,
                e.length,
                e.payload_bytes,
                e.crc32c,
                e.end_seq,
            )
        })
        .collect();
    let damaged = found
        .damaged
        .into_iter()
        .map(|d| (d.offset, d.length, d.reason))
        .collect();
    Ok((rows, damaged, found.stop, found.why))
}

/// The per-frame work of one store commit (see [`commit`]): frames judged,
/// index rows and session counters built as JSON for the store's statements.
#[pyclass(module = "voxgate._native", name = "CommitPlan")]
pub(crate) struct PyCommitPlan {
    plan: commit::Plan,
    frames: Vec<commit::Frame>,
    payloads: Vec<Payload>,
    /// One memoryview per batch message, made when a payload of it is first written.
    views: Vec<Option<Py<PyAny>>>,
    batches: Vec<Py<ingest::PyBatch>>,
    outcomes: Vec<u8>,
}

/// Where a frame's payload is: an object of its own (HTTP uploads), or a
/// range of a batch's message (WebSocket streams: no object per frame).
enum Payload {
    Object(Py<PyAny>),
    InBatch {
        batch: usize,
        start: usize,
        end: usize,
    },
}

fn session_row(row: &Bound<'_, PyAny>) -> PyResult<commit::SessionRow> {
    Ok(commit::SessionRow {
        id: row.get_item(0)?.extract()?,
        next_seq: row.get_item(1)?.extract()?,
        frames: row.get_item(2)?.extract()?,
        bytes: row.get_item(3)?.extract()?,
        end_seq: row.get_item(4)?.extract()?,
        stream_crc32c: row.get_item(5)?.extract()?,
        prefix_seq: row.get_item(6)?.extract()?,
        prefix_crc32c: row.get_item(7)?.extract()?,
    })
}

/// (session_id, first_seq, last_seq, offset, length, payload_bytes, crc32c)
type Extent<'py> = (Bound<'py, PyString>, u64, u64, u64, u64, u64, u32);

impl PyCommitPlan {
    /// `start..end` of batch `batch`'s message, as a memoryview (one view per message).
    fn slice<'py>(
        &mut self,
        py: Python<'py>,
        batch: usize,
        start: usize,
        end: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let view = match &self.views[batch] {
            Some(view) => view.bind(py).clone(),
            None => {
                let message = self.batches[batch].get().message.bind(py);
                let view = PyMemoryView::from(message.as_any())?.into_any();
                self.views[batch] = Some(view.clone().unbind());
                view
            }
        };
        view.get_item(PySlice::new(py, start as isize, end as isize, 1))
    }

    fn session(&self, session_id: &str) -> PyResult<usize> {
        self.plan
            .session(session_id)
            .ok_or_else(|| PyKeyError::new_err(session_id.to_string()))
    }
}

#[pymethods]
impl PyCommitPlan {
    /// ``parts``: Batches and/or FrameIn objects, in commit order.
    #[new]
    fn new<'py>(parts: &Bound<'py, PyAny>, sessions: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = parts.py();
        let mut rows = Vec::new();
        for row in sessions.try_iter()? {
            rows.push(session_row(&row?)?);
        }
        let plan = commit::Plan::new(rows);
        let mut out = Vec::with_capacity(parts.len().unwrap_or(0));
        let mut payloads = Vec::with_capacity(out.capacity());
        let mut batches: Vec<Py<ingest::PyBatch>> = Vec::new();
        // Frames of one stream come in runs: the same str object, looked up once.
        let mut last: Option<(Bound<'py, PyAny>, Option<usize>)> = None;
        let mut lookup = |sid: Bound<'py, PyAny>| -> PyResult<Option<usize>> {
            Ok(match &last {
                Some((prev, s)) if prev.is(&sid) => *s,
                _ => {
                    // An id that is no valid text (a lone surrogate) names no stored session.
                    // Nor does one too long for a block header.
                    let s = match sid.cast::<PyString>()?.to_str() {
                        Ok(id) if id.len() <= block::MAX_SESSION_ID => plan.session(id),
                        _ => None,
                    };
                    last = Some((sid, s));
                    s
                }
            })
        };
        for part in parts.try_iter()? {
            let part = part?;
            if let Ok(batch) = part.cast::<ingest::PyBatch>() {
                let b = batch.get();
                let session = lookup(b.session_id.bind(py).clone().into_any())?;
                let index = batches.len();
                for f in &b.frames {
                    out.push(commit::Frame {
                        session,
                        seq: f.seq,
                        flags: u64::from(f.flags),
                        pts_us: f.pts_us,
                        crc32c: f.crc32c,
                        length: u64::from(f.length),
                    });
                    payloads.push(Payload::InBatch {
                        batch: index,
                        start: f.offset,
                        end: f.offset + f.length as usize,
                    });
                }
                batches.push(batch.clone().unbind());
                continue;
            }
            let frame = part;
            let session = lookup(frame.getattr(intern!(py, "session_id"))?)?;
            let payload = frame.getattr(intern!(py, "payload"))?;
            let length = with_bytes(&payload, |b| b.len() as u64)?;
            out.push(commit::Frame {
                session,
                seq: frame.getattr(intern!(py, "seq"))?.extract()?,
                flags: frame.getattr(intern!(py, "flags"))?.extract()?,
                pts_us: frame.getattr(intern!(py, "pts_us"))?.extract()?,
                crc32c: frame.getattr(intern!(py, "crc32c"))?.extract()?,
                length,
            });
            payloads.push(Payload::Object(payload.unbind()));
        }
        let views = (0..batches.len()).map(|_| None).collect();
        Ok(PyCommitPlan {
            plan,
            frames: out,
            payloads,
            views,
            batches,
            outcomes: Vec::new(),
        })
    }

    /// Seqs that may be stored already, per session: (session_id, seqs).
    fn lookups(&self) -> Vec<(String, Vec<u64>)> {
        self.plan
            .lookups(&self.frames)
            .into_iter()
            .map(|(s, seqs)| (self.plan.session_id(s).to_string(), seqs))
            .collect()
    }

    /// The frame stored at ``seq`` by an earlier commit.
    fn known(
        &mut self,
        session_id: &str,
        seq: u64,
        crc32c: u32,
        length: u64,
        flags: u64,
    ) -> PyResult<()> {
        let s = self.session(session_id)?;
        self.plan.known(s, seq, crc32c, length, flags);
        Ok(())
    }

    /// Judge every frame and lay the stored ones out as blocks from ``offset``:
    /// (extents, buffers to write back to back at ``offset``, end offset). An
    /// extent is (session_id, first_seq, last_seq, offset, length,
    /// payload_bytes, crc32c), one per block.
    #[allow(clippy::type_complexity)]
    fn judge<'py>(
        &mut self,
        py: Python<'py>,
        offset: u64,
    ) -> PyResult<(Vec<Extent<'py>>, Bound<'py, PyList>, u64)> {
        let mut stored = Vec::new();
        let (plan, frames) = (&mut self.plan, &self.frames);
        let mut run = || plan.judge(frames, &mut stored);
        // Large batches are judged with the GIL released (the event loop runs meanwhile);
        // for small ones handing the GIL back and forth would cost more than the work.
        let (outcomes, runs) = if frames.len() >= GIL_RELEASE_FRAMES {
            py.detach(run)
        } else {
            run()
        };
        self.outcomes = outcomes;
        let mut extents = Vec::with_capacity(runs.len());
        let mut buffers: Vec<Bound<'py, PyAny>> = Vec::with_capacity(runs.len() * 2);
        let mut at = offset;
        for r in &runs {
            let members = &stored[r.start..r.start + r.count];
            let records_len: u64 = members
                .iter()
                .map(|&i| framing::HEADER_SIZE as u64 + self.frames[i].length)
                .sum();
            let sid = self.plan.session_id(r.session);
            let header = block::encode_header(sid, r.first_seq, r.count as u32, records_len);
            let length = header.len() as u64 + records_len;
            extents.push((
                PyString::new(py, sid),
                r.first_seq,
                r.first_seq + r.count as u64 - 1,
                at,
                length,
                r.payload_bytes,
                r.crc32c,
            ));
            at += length;
            buffers.push(PyBytes::new(py, &header).into_any());
            // Records of one message lie back to back in it: one buffer per such stretch.
            let mut stretch: Option<(usize, usize, usize)> = None; // (batch, start, end)
            for &i in members {
                let place = match &self.payloads[i] {
                    Payload::Object(obj) => Err(obj.clone_ref(py)),
                    &Payload::InBatch { batch, start, end } => Ok((batch, start, end)),
                };
                match place {
                    Err(obj) => {
                        if let Some((b, start, end)) = stretch.take() {
                            buffers.push(self.slice(py, b, start, end)?);
                        }
                        let f = &self.frames[i];
                        let head = framing::encode_header(
                            u32::try_from(f.seq)
                                .map_err(|_| PyValueError::new_err("seq beyond u32"))?,
                            f.length as u32,
                            f.crc32c,
                            f.pts_us,
                            f.flags as u8,
                        );
                        buffers.push(PyBytes::new(py, &head).into_any());
                        buffers.push(obj.into_bound(py));
                    }
                    Ok((batch, start, end)) => {
                        let record = start - framing::HEADER_SIZE;
                        stretch = match stretch {
                            Some((b, s0, e0)) if b == batch && e0 == record => Some((b, s0, end)),
                            Some((b, s0, e0)) => {
                                buffers.push(self.slice(py, b, s0, e0)?);
                                Some((batch, record, end))
                            }
                            None => Some((batch, record, end)),
                        };
                    }
                }
            }
            if let Some((b, start, end)) = stretch {
                buffers.push(self.slice(py, b, start, end)?);
            }
        }
        Ok((extents, PyList::new(py, buffers)?, at))
    }

    /// A block stored by an earlier commit (all of its bytes): its frames
    /// become known, to judge resends against.
    fn known_block(&mut self, session_id: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = self.session(session_id)?;
        let (head, records) =
            with_bytes(data, |b| block::parse(b, false))?.map_err(|e| BlockError::new_err(e.0))?;
        if head.session_id != session_id {
            return Err(BlockError::new_err(format!(
                "block of session {} where one of {session_id} belongs",
                head.session_id
            )));
        }
        for r in records {
            self.plan
                .known(s, r.seq, r.crc32c, u64::from(r.length), u64::from(r.flags));
        }
        Ok(())
    }

    /// Each frame's outcome as ``members[outcome]``.
    fn outcomes<'py>(
        &self,
        py: Python<'py>,
        members: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let choices = (0..=commit::GONE)
            .map(|o| members.get_item(o))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, self.outcomes.iter().map(|&o| &choices[o as usize]))
    }

    /// Extend the prefixes over this commit's frames: (session_id, prefix_seq)
    /// of the sessions to walk further with ``extend``.
    fn advance(&mut self) -> Vec<(String, u64)> {
        let walks = self.plan.advance();
        walks
            .into_iter()
            .map(|(s, seq)| (self.plan.session_id(s).to_string(), seq))
            .collect()
    }

    /// Feed stored extents (first_seq, last_seq, crc32c, payload_bytes) in seq
    /// order until the first gap.
    fn extend(&mut self, session_id: &str, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = self.session(session_id)?;
        for row in rows.try_iter()? {
            let (first, last, crc, length): (u64, u64, u32, u64) = row?.extract()?;
            if !self.plan.extend(s, first, last, crc, length) {
                break;
            }
        }
        Ok(())
    }

    /// The changed sessions' counters as JSON for the store's update.
    fn finish<'py>(&mut self, py: Python<'py>, now: i64) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.plan.finish(now).as_bytes())
    }

    /// ``{session_id: make(next_seq, frames, bytes, end_seq, complete, stream_crc32c)}``
    /// for every session: the store's answer built without a Python loop.
    fn progress_by_session<'py>(
        &self,
        py: Python<'py>,
        make: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (id, p) in self.plan.progress() {
            out.set_item(id, make.call1(progress_fields(&p))?)?;
        }
        Ok(out)
    }

    /// (session_id, next_seq, frames, bytes, end_seq, complete, stream_crc32c) per session.
    #[allow(clippy::type_complexity)]
    fn progress(&self) -> Vec<(&str, u64, u64, u64, Option<u64>, bool, Option<u32>)> {
        self.plan
            .progress()
            .map(|(id, p)| {
                let (next_seq, frames, bytes, end_seq, complete, crc) = progress_fields(&p);
                (id, next_seq, frames, bytes, end_seq, complete, crc)
            })
            .collect()
    }
}

/// (next_seq, frames, bytes, end_seq, complete, stream_crc32c) of one session.
fn progress_fields(p: &commit::Progress) -> (u64, u64, u64, Option<u64>, bool, Option<u32>) {
    (
        p.next_seq,
        p.frames,
        p.bytes,
        p.end_seq,
        p.complete,
        p.stream_crc32c,
    )
}
