"""Give freed heap memory back to the kernel after bursts (glibc only).

While acks lag, clients keep sending within their credit and the server holds
what it received: megabytes of payloads at once, freed once they are stored.
glibc keeps freed chunks for reuse and returns to the kernel only the top of
the heap, so after a burst the process's resident memory stays at the peak
even though the memory is free. ``HeapTrimmer`` checks every few seconds how
much of the heap sits free (``mallinfo2``) and, when that grew by more than a
threshold since it last looked, asks glibc to release the free pages
(``malloc_trim``) on a thread of its own. (Released pages still count as free
chunks, so the growth, not the total, tells that new free memory is resident.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("voxgate")

# Growth of the free heap bytes above which a trim is worth its cost. The trim walks
# the free lists on a thread (measured 0.5 ms for 3 MB of scattered free chunks, 5 ms
# for 32 MB), and pages it returns fault back in when reused. 2 MiB: the 15-minute
# soak's ack stalls left 3.5-4 MB free and resident, which 8 MiB let stay.
TRIM_THRESHOLD_BYTES = 2 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # ctypes reads this class attribute
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class Glibc:
    """The two glibc calls used here, or ``None`` from :meth:`load` elsewhere."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self._mallinfo2.argtypes = []
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.restype = ctypes.c_int
        self._malloc_trim.argtypes = [ctypes.c_size_t]

    @classmethod
    def load(cls) -> Glibc | None:
        """glibc 2.33 or newer (``mallinfo2``); ``None`` on any other C library."""
        if platform.libc_ver()[0] != "glibc":
            return None
        try:
            return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except (OSError, AttributeError):
            return None

    def free_bytes(self) -> int:
        """Bytes in free chunks of every arena (``fordblks``)."""
        return int(self._mallinfo2().fordblks)

    def usage(self) -> dict[str, int]:
        """Where the heap's memory is: in use, free in the arenas, or in mmapped chunks.

        Resident memory above ``arena_bytes + mmapped_bytes`` is outside glibc's
        heap: code and libraries, Python's small-object arenas (Python maps them
        itself) and Granian's allocator. No trim reaches those.
        """
        info = self._mallinfo2()
        return {
            "arena_bytes": int(info.arena),
            "in_use_bytes": int(info.uordblks),
            "free_bytes": int(info.fordblks),
            "mmapped_bytes": int(info.hblkhd),
        }

    def trim(self) -> bool:
        """Release free pages to the kernel; True when some memory was released."""
        return bool(self._malloc_trim(0))


class HeapTrimmer:
    """A task that trims the heap when more than ``threshold`` bytes were freed since."""

    def __init__(self, interval_s: float, threshold: int = TRIM_THRESHOLD_BYTES) -> None:
        self.interval_s = interval_s
        self.threshold = threshold
        # Readings work with trimming off too; trimming only with an interval.
        self._readings = Glibc.load()
        self.glibc = self._readings if interval_s > 0 else None
        self.trims = 0
        # The fewest free bytes seen since the last trim: memory freed above it is resident.
        self._free_floor = 0
        self._task: asyncio.Task[None] | None = None

    def usage(self) -> dict[str, int] | None:
        """glibc's heap (:meth:`Glibc.usage`); ``None`` on other C libraries."""
        return None if self._readings is None else self._readings.usage()

    def start(self) -> None:
        if self.glibc is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="voxgate-heap")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def trim_if_worth(self) -> bool:
        """Trim when enough was freed since the last look; True when it trimmed."""
        glibc = self.glibc
        if glibc is None:
            return False
        free = glibc.free_bytes()
        self._free_floor = min(self._free_floor, free)
        if free - self._free_floor < self.threshold:
            return False
        # ctypes drops the GIL for the call: the event loop runs on while glibc works.
        await asyncio.to_thread(glibc.trim)
        self._free_floor = glibc.free_bytes()
        self.trims += 1
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.trim_if_worth()
            except OSError as exc:  # never fatal: memory is merely kept
                log.warning("heap trim failed: %s", exc)
