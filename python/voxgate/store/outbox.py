"""Webhook event ids and bodies, as the stores enqueue them."""

from __future__ import annotations

import hashlib
from datetime import datetime

import msgspec

from voxgate.store.base import EventType, Session


class EventBody(msgspec.Struct, kw_only=True):
    """The JSON body of every webhook POST (docs/clients.md "Webhooks")."""

    id: str
    type: EventType
    created_at: datetime
    session: Session  # as ``GET /v1/sessions/{id}`` shows it right after the transition


def event_id(session_id: str, kind: EventType) -> str:
    """The id of ``kind`` for the session: ``evt_`` and 32 hex digits.

    Each kind happens at most once per session, so the id follows from the
    two: a transition enqueued twice (a retried transaction) is one event.
    """
    digest = hashlib.sha256(f"{session_id}\n{kind.value}".encode()).hexdigest()
    return "evt_" + digest[:32]


def event_body(kind: EventType, created_at: datetime, session: Session) -> tuple[str, bytes]:
    """The event's id and its JSON body."""
    eid = event_id(session.id, kind)
    return eid, msgspec.json.encode(
        EventBody(id=eid, type=kind, created_at=created_at, session=session)
    )


def commit_events(was_ended: bool, complete: bool) -> tuple[EventType, ...]:
    """What a commit made of a session that was not complete before it and is ended after it."""
    if complete:
        return (EventType.COMPLETED,) if was_ended else (EventType.ENDED, EventType.COMPLETED)
    return () if was_ended else (EventType.ENDED,)
