"""The test services are real servers: Redis answers commands, PostgreSQL runs SQL."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from services import PostgresServer, RedisServer


async def test_redis_is_a_real_server(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.set("voxgate:probe", b"1", nx=True, ex=10)
        assert await client.getdel("voxgate:probe") == b"1"
        assert await client.get("voxgate:probe") is None
    finally:
        await client.aclose()


async def test_postgres_is_a_real_server(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.create_database("probe_db")
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert "PostgreSQL" in await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
