"""Sessions belong to the API key (tenant) that created them, on every backend kind."""

from __future__ import annotations

from voxgate.store.base import SessionState, Store

from .conftest import Backend


async def test_a_session_keeps_its_tenant_and_listings_filter_by_it(backend: Backend) -> None:
    store = await backend.open_store()
    try:
        acme = [
            await store.create_session(
                codec=None, sample_rate=None, channels=None, metadata={}, tenant="acme"
            )
            for _ in range(3)
        ]
        globex = await store.create_session(
            codec=None, sample_rate=None, channels=None, metadata={}, tenant="globex"
        )
        legacy = await store.create_session(
            codec=None, sample_rate=None, channels=None, metadata={}
        )
        assert [s.tenant for s in acme] == ["acme"] * 3
        assert legacy.tenant is None
        assert await store.delete_session(acme[1].id)
    finally:
        await store.close()
    # Another store instance over the same state (another process) reads it back.
    store = await backend.open_store()
    try:
        got = await store.get_session(globex.id)
        assert got is not None
        assert got.tenant == "globex"
        tombstone = await store.get_session(acme[1].id)
        assert tombstone is not None
        assert tombstone.state is SessionState.DELETED
        assert tombstone.tenant == "acme"  # a tombstone stays its tenant's: others get 404
        listed = await store.list_sessions(limit=10, after=None, tenant="acme")
        assert [s.id for s in listed] == [acme[0].id, acme[2].id]
        page = await store.list_sessions(limit=1, after=acme[0].id, tenant="acme")
        assert [s.id for s in page] == [acme[2].id]
        assert await store.list_sessions(limit=10, after=None, tenant="nobody") == []
        everyone = await store.list_sessions(limit=10, after=None)
        assert {s.id for s in everyone} == {acme[0].id, acme[2].id, globex.id, legacy.id}
    finally:
        await store.close()


async def test_tenant_filter_with_no_sessions_at_all(store: Store) -> None:
    assert await store.list_sessions(limit=5, after=None, tenant="acme") == []
