"""StreamClient against a scripted fake server: resend, flow control, errors, integrity."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from unit.client.fake_server import FakeVoxgate, running
from voxgate import _native
from voxgate.client import (
    Backoff,
    IntegrityError,
    ReconnectExhausted,
    StreamClient,
    StreamClosed,
    StreamRejected,
    Superseded,
    TokenMode,
)

FAST = Backoff(initial_s=0.01, max_s=0.05, max_attempts=5)


def payloads(n: int, size: int = 100) -> list[bytes]:
    return [bytes([i % 251]) * size + i.to_bytes(4, "big") for i in range(n)]


class Tokens:
    """A token factory that counts its calls: tok-0, tok-1, ..."""

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.issued: list[str] = []

    async def __call__(self) -> str:
        token = f"tok-{next(self.counter)}"
        self.issued.append(token)
        return token


async def stream_all(
    fake: FakeVoxgate, data: list[bytes], **options: object
) -> tuple[StreamClient, Tokens]:
    tokens = Tokens()
    opts: dict[str, object] = {"backoff": FAST, **options}
    client = StreamClient(fake.url, fake.session_id, tokens, **opts)  # type: ignore[arg-type]
    async with client:
        for payload in data:
            await client.send(payload)
        await client.end()
        completion = await client.wait_complete(10)
        assert completion.verified
        assert completion.stream_crc32c == _native.crc32c(b"".join(data))
    return client, tokens


async def run_to_completion(client: StreamClient, data: list[bytes]) -> None:
    async with client:
        for payload in data:
            await client.send(payload)
        await client.end()
        await client.wait_complete(5)


async def test_streams_every_frame_once_and_verifies() -> None:
    data = payloads(50)
    async with running(FakeVoxgate()) as fake:
        client, tokens = await stream_all(fake, data)
    assert fake.stored_stream() == b"".join(data)
    assert len(fake.conns) == 1
    assert sorted(fake.conns[0].received) == list(range(len(fake.conns[0].received)))
    assert client.stats.frames_acked == fake.end_seq + 1  # type: ignore[operator]
    assert client.stats.frames_resent == 0
    assert len(client.stats.ack_latency_s) == client.stats.frames_acked
    assert tokens.issued == ["tok-0"]
    assert fake.conns[0].token == "tok-0"


async def test_batches_frames_within_max_message_bytes() -> None:
    data = payloads(40, size=1000)
    # Room for three 1024-byte frames per message, not four.
    fake = FakeVoxgate(max_message_bytes=3 * 1028 + 10, max_frame_bytes=2000)
    async with running(fake):
        client, _ = await stream_all(fake, data, frames_per_message=8)
    sizes = fake.conns[0].message_sizes
    assert max(sizes) == 3
    assert sum(sizes) == len(fake.conns[0].received)
    assert fake.stored_stream() == b"".join(data)
    assert client.stats.messages_sent == len(sizes)


async def test_end_flags_the_last_queued_frame() -> None:
    data = payloads(9)
    async with running(FakeVoxgate()) as fake:
        await stream_all(fake, data, frames_per_message=4)
    # No empty END frame: the last payload frame carried END.
    assert fake.end_seq == len(data) - 1


async def test_empty_end_frame_when_last_frame_already_sent() -> None:
    data = payloads(3)
    async with running(FakeVoxgate()) as fake:
        tokens = Tokens()
        async with StreamClient(fake.url, fake.session_id, tokens, backoff=FAST) as client:
            for payload in data:
                await client.send(payload)
            await client.flush()
            assert client.unacked == 0
            assert await client.end() == 3
            completion = await client.wait_complete(5)
    assert completion.frames == 4
    assert fake.stored[3] == b""


async def test_drop_mid_stream_resends_only_unstored_frames() -> None:
    data = payloads(60)
    fake = FakeVoxgate(drop_after={0: 25})
    async with running(fake):
        client, tokens = await stream_all(fake, data)
    first, second = fake.conns
    # The server stored everything it read on the first connection before the
    # drop; the second connection carries exactly the frames at/after next_seq.
    next_seq = max(first.received) + 1
    assert fake.end_seq is not None
    assert sorted(second.received) == list(range(next_seq, fake.end_seq + 1))
    assert len(second.received) == len(set(second.received))
    assert fake.stored_stream() == b"".join(data)
    assert client.stats.reconnects == 1
    # The message read just before the drop was stored but never acked.
    assert client.stats.acked_on_resume >= 1
    assert tokens.issued == ["tok-0", "tok-1"]
    assert second.token == "tok-1"


async def test_resume_resends_missing_ranges_from_hello() -> None:
    data = payloads(40)
    lost = {3, 4, 5, 11, 20}
    fake = FakeVoxgate(drop_after={0: 30}, lose_on_first=lost)
    async with running(fake):
        client, _ = await stream_all(fake, data)
    first, second = fake.conns
    next_seq = max(s for s in first.received if s not in lost) + 1
    assert fake.end_seq is not None
    expected = sorted(lost | set(range(next_seq, fake.end_seq + 1)))
    assert sorted(second.received) == expected
    assert len(second.received) == len(set(second.received))
    assert fake.stored_stream() == b"".join(data)
    stats = client.stats
    assert stats.frames_acked + stats.duplicates + stats.acked_on_resume == fake.end_seq + 1


async def test_checksum_nack_resends_that_frame() -> None:
    data = payloads(10)
    fake = FakeVoxgate(nack_once={4: "checksum"})
    async with running(fake):
        client, _ = await stream_all(fake, data)
    received = fake.conns[0].received
    assert received.count(4) == 2
    assert all(received.count(s) == 1 for s in set(received) - {4})
    assert client.stats.nacks == {"checksum": 1}
    assert client.stats.frames_resent == 1
    assert fake.stored_stream() == b"".join(data)


async def test_window_nack_resends_later() -> None:
    data = payloads(10)
    fake = FakeVoxgate(nack_once={6: "window", 7: "window"})
    async with running(fake):
        client, _ = await stream_all(fake, data, window_retry_s=0.02)
    received = fake.conns[0].received
    assert received.count(6) == 2
    assert received.count(7) == 2
    assert client.stats.nacks == {"window": 2}
    assert fake.stored_stream() == b"".join(data)


@pytest.mark.parametrize("reason", ["conflict", "too_large", "sequence"])
async def test_final_nack_raises_and_never_resends(reason: str) -> None:
    data = payloads(10)
    fake = FakeVoxgate(nack_once={2: reason})
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        with pytest.raises(StreamRejected) as caught:
            await run_to_completion(client, data)
    assert caught.value.reason == reason
    assert caught.value.ranges == [[2, 2]]
    assert fake.conns[0].received.count(2) == 1
    assert len(fake.conns) == 1


async def test_client_never_exceeds_the_window() -> None:
    data = payloads(60, size=96)  # 100-byte payloads
    fake = FakeVoxgate(window_bytes=450, ack_delay_s=0.005)
    async with running(fake):
        await stream_all(fake, data, frames_per_message=2)
    assert 0 < fake.conns[0].max_unacked_bytes <= 450
    assert fake.stored_stream() == b"".join(data)


async def test_zero_window_stalls_until_credit_returns() -> None:
    data = payloads(20, size=96)
    fake = FakeVoxgate(window_bytes=1000, ack_window=0)
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        async with client:

            async def produce() -> None:
                for payload in data:
                    await client.send(payload)
                await client.end()

            producer = asyncio.create_task(produce())
            await asyncio.sleep(0.2)
            stalled = len(fake.conns[0].received)
            assert stalled <= 10  # the first window's worth, then nothing
            await asyncio.sleep(0.1)
            assert len(fake.conns[0].received) == stalled
            await fake.grant(1000)
            await producer
            completion = await client.wait_complete(5)
    assert completion.frames == fake.end_seq + 1  # type: ignore[operator]
    assert fake.stored_stream() == b"".join(data)


async def test_wrong_complete_crc_raises_integrity_error() -> None:
    data = payloads(5)
    fake = FakeVoxgate(complete_crc_override=0xDEADBEEF)
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        async with client:
            for payload in data:
                await client.send(payload)
            await client.end()
            with pytest.raises(IntegrityError) as caught:
                await client.wait_complete(5)
    assert caught.value.expected["stream_crc32c"] == _native.crc32c(b"".join(data))
    assert caught.value.actual["stream_crc32c"] == 0xDEADBEEF


@pytest.mark.parametrize("code", [4400, 4403, 4404, 4410, 1009])
async def test_fatal_close_codes_raise(code: int) -> None:
    fake = FakeVoxgate(close_on_connect={0: (code, "nope")})
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        with pytest.raises(StreamClosed) as caught:
            await run_to_completion(client, [b"abc"])
    assert caught.value.code == code
    assert caught.value.error == "nope"
    assert len(fake.conns) == 1


async def test_superseded_raises() -> None:
    fake = FakeVoxgate(close_on_connect={0: (4409, "superseded")})
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        with pytest.raises(Superseded):
            await run_to_completion(client, [b"abc"])


@pytest.mark.parametrize("code", [4401, 4429, 1001, 1011, 1013, 4408])
async def test_retryable_close_codes_reconnect_with_new_token(code: int) -> None:
    data = payloads(5)
    fake = FakeVoxgate(close_on_connect={0: (code, "try again")})
    async with running(fake):
        client, tokens = await stream_all(fake, data)
    assert tokens.issued == ["tok-0", "tok-1"]
    assert fake.conns[1].token == "tok-1"
    assert fake.stored_stream() == b"".join(data)
    assert client.stats.connect_failures == 1


async def test_retry_budget_runs_out() -> None:
    fake = FakeVoxgate(close_on_connect={i: (1011, "broken") for i in range(10)})
    async with running(fake):
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        with pytest.raises(ReconnectExhausted) as caught:
            await run_to_completion(client, [b"abc"])
    assert caught.value.attempts == FAST.max_attempts
    assert isinstance(caught.value.last_error, StreamClosed)
    assert len(fake.conns) == FAST.max_attempts


async def test_unreachable_server_gives_up() -> None:
    client = StreamClient("http://127.0.0.1:9", "ses_x", Tokens(), backoff=FAST)
    with pytest.raises(ReconnectExhausted):
        await run_to_completion(client, [b"abc"])


@pytest.mark.parametrize("mode", list(TokenMode))
async def test_token_modes(mode: TokenMode) -> None:
    async with running(FakeVoxgate()) as fake:
        await stream_all(fake, payloads(3), token_mode=mode)
    assert fake.conns[0].token == "tok-0"
    assert fake.conns[0].token_via == mode.value


async def test_complete_after_reconnect_verifies() -> None:
    data = payloads(4)
    # The END frame's message is stored, then the connection drops before the
    # ack: the next hello shows everything stored and complete follows at once.
    fake = FakeVoxgate(drop_after={0: len(data)})
    async with running(fake):
        client, _ = await stream_all(fake, data)
    assert fake.stored_stream() == b"".join(data)
    assert client.stats.reconnects == 1


async def test_send_rejects_empty_payload_without_end() -> None:
    client = StreamClient("http://127.0.0.1:9", "ses_x", Tokens())
    with pytest.raises(ValueError, match="empty payload"):
        await client.send(b"")
    await client.close()


async def test_rerun_over_a_complete_session_sends_nothing_and_verifies() -> None:
    data = payloads(30)
    fake = FakeVoxgate()
    async with running(fake):
        await stream_all(fake, data, frames_per_message=4)
        client, _ = await stream_all(fake, data)
    assert len(fake.conns) == 2
    assert fake.conns[1].received == []
    assert client.stats.reconnects == 0


async def test_rerun_with_other_content_over_a_complete_session_fails() -> None:
    fake = FakeVoxgate()
    async with running(fake):
        await stream_all(fake, payloads(30))
        client = StreamClient(fake.url, fake.session_id, Tokens(), backoff=FAST)
        with pytest.raises(IntegrityError):
            await run_to_completion(client, payloads(31))
