"""Several generator processes make one result: streams split once, latencies merged right.

Pure functions of ``loadtests/generators.py`` and ``loadtests/loadgen.py``; no
process is started. The histogram rule is the one ``loadgen-rs`` uses
(``loadtests/loadgen-rs/src/stats.rs`` tests the same values), so results of
both drivers merge.
"""

from __future__ import annotations

import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"
sys.path.insert(0, str(LOADTESTS))

from generators import merge_results, split_spec  # noqa: E402
from loadgen import (  # noqa: E402
    LoadResult,
    LoadSpec,
    bucket_us,
    histogram_percentiles,
    latency_histogram,
    weighted_percentiles,
)


def _spec(streams: int) -> LoadSpec:
    return LoadSpec(
        target="picows",
        ws_base="ws://127.0.0.1:1",
        session_ids=[f"s{i}" for i in range(streams)],
        tokens=[f"t{i}" for i in range(streams)],
        frame_bytes=640,
        frames_per_message=1,
        duration_s=5.0,
    )


def _result(latencies_s: list[float], weights: list[int], streams: int) -> dict[str, Any]:
    frames = sum(weights)
    result = LoadResult("picows", streams, 5.0, frames_sent=frames, frames_acked=frames)
    result.bytes_acked = frames * 640
    result.messages_sent = frames
    result.frames_per_s = frames / 5.0
    result.generator_cpu_s = 0.5
    result.latency_ms = weighted_percentiles(latencies_s, weights)
    result.latency_hist_us = latency_histogram(latencies_s, weights)
    result.nacks = {"window": 1}
    result.per_stream_acked = [frames // streams] * streams
    return asdict(result)


def test_buckets_follow_the_rust_generators_rule() -> None:
    pairs = [(0, 0), (999, 999), (1000, 1000), (1234, 1230), (1235, 1240), (9996, 10000)]
    pairs.append((123_456, 123_000))
    assert [bucket_us(us) for us, _ in pairs] == [bucket for _, bucket in pairs]


def test_split_gives_every_stream_to_exactly_one_generator() -> None:
    spec = _spec(7)
    parts = split_spec(spec, 3)
    assert [len(p.session_ids) for p in parts] == [2, 2, 3]
    assert [s for p in parts for s in p.session_ids] == spec.session_ids
    assert [t for p in parts for t in p.tokens] == spec.tokens
    assert len(split_spec(_spec(2), 8)) == 2  # never a generator without streams


def test_merged_percentiles_are_over_the_union_of_frames() -> None:
    fast = _result([0.001], [98], streams=2)  # 98 frames acked after 1 ms
    slow = _result([0.100, 0.2501], [1, 1], streams=1)  # 2 frames: 100 ms, 250.1 ms
    merged = merge_results([fast, slow])
    latency = merged["latency_ms"]
    # Over 100 frames, p50 is 1 ms and p99 the 99th frame (100 ms); an average of the
    # two generators' own p50 (1 ms and 100 ms) would say about 50 ms.
    assert (latency["p50"], latency["p99"], latency["max"], latency["n"]) == (
        1.0,
        100.0,
        250.1,
        100,
    )
    assert merged["frames_acked"] == 100
    assert merged["frames_per_s"] == 20.0
    assert merged["streams"] == 3
    assert merged["nacks"] == {"window": 2}
    assert merged["generator_cpu_s"] == 1.0
    assert len(merged["per_stream_acked"]) == 3


def test_histogram_percentiles_match_exact_ones_within_the_bucket_precision() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-6.0, 1.2) for _ in range(5000)]  # around 2.5 ms
    weights = [rng.randint(1, 10) for _ in values]
    exact = weighted_percentiles(values, weights)
    from_histogram = histogram_percentiles(latency_histogram(values, weights))
    for name in ("p50", "p90", "p99", "p999"):
        assert abs(from_histogram[name] - exact[name]) <= 0.001 + 0.005 * exact[name], name
    assert from_histogram["n"] == exact["n"] == sum(weights)
