"""The stream registry's takeover and shutdown rules, with stand-in connections.

A stand-in records the close it is asked for, as the real connection's
handler task would act on it; these rules decide which code a client gets.
"""

from __future__ import annotations

from typing import cast

from voxgate.ingest.stream import Close, StreamConnection, StreamRegistry


class StandIn:
    """What the registry uses of a connection: its session, generation and ``fail``."""

    def __init__(self, session_id: str, generation: int) -> None:
        self.session_id = session_id
        self.generation = generation
        self.closes: list[Close] = []

    def fail(self, close: Close) -> None:
        self.closes.append(close)

    @property
    def codes(self) -> list[int]:
        return [close.code for close in self.closes]


def connection(session_id: str, generation: int) -> tuple[StandIn, StreamConnection]:
    stand_in = StandIn(session_id, generation)
    return stand_in, cast("StreamConnection", stand_in)


def test_a_newer_local_connection_supersedes_the_older_and_is_announced() -> None:
    registry = StreamRegistry()
    announced: list[tuple[str, int]] = []
    registry.announce = lambda session_id, generation: announced.append((session_id, generation))
    old, old_conn = connection("ses_a", 1)
    new, new_conn = connection("ses_a", 2)
    registry.register(old_conn)
    registry.register(new_conn)
    assert old.codes == [4409]
    assert new.codes == []
    assert announced == [("ses_a", 1), ("ses_a", 2)]
    # A connection that claimed earlier but registers later loses, and is not announced.
    late, late_conn = connection("ses_a", 1)
    registry.register(late_conn)
    assert late.codes == [4409]
    assert announced == [("ses_a", 1), ("ses_a", 2)]


def test_a_claim_heard_from_elsewhere_closes_only_older_connections() -> None:
    registry = StreamRegistry()
    held, held_conn = connection("ses_b", 3)
    other, other_conn = connection("ses_c", 1)
    registry.register(held_conn)
    registry.register(other_conn)
    registry.supersede("ses_b", 3)  # its own claim echoed back: nothing happens
    registry.supersede("ses_b", 2)  # an older claim arriving late: nothing happens
    registry.supersede("ses_unknown", 9)
    assert held.codes == []
    registry.supersede("ses_b", 4)
    assert held.codes == [4409]
    assert held.closes[0].error == "superseded"
    assert other.codes == []


async def test_shutdown_closes_open_streams_and_late_handshakes_with_1001() -> None:
    registry = StreamRegistry()
    open_, open_conn = connection("ses_d", 1)
    registry.register(open_conn)
    await registry.close_all(0.01)  # the stand-in never unregisters: the grace runs out
    assert open_.codes == [1001]
    # A stream whose handshake began before the shutdown registers after it.
    late, late_conn = connection("ses_e", 1)
    registry.register(late_conn)
    assert late.codes == [1001]
    assert late.closes[0].error == "going_away"
