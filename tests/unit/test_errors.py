"""Every exception voxgate defines has one root, and the API's problems round-trip."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import voxgate
from voxgate.api.problems import problem
from voxgate.errors import ApiError, VoxgateError

# Outside the tree, on purpose. ingest.stream.Close is control flow inside one
# connection, never seen by a caller (the stream handler's rewrite makes it
# private). _native.FrameError is the Rust core's ValueError, turned into a
# close code or a 400 where the framing is read (see voxgate.errors).
# _native.BlockError likewise: the stores turn it into StoreError (or a repair's
# report) where a block is read.
OUTSIDE = {
    "voxgate.ingest.stream.Close",
    "voxgate._native.FrameError",
    "voxgate._native.BlockError",
}


def _voxgate_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(voxgate.__path__, "voxgate."):
        if info.name == "voxgate.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_public_exception_derives_from_the_root() -> None:
    found = _voxgate_exceptions()
    assert "voxgate.store.base.StoreError" in found  # the walk reached the packages
    strays = {
        name
        for name, cls in found.items()
        if not issubclass(cls, VoxgateError) and name not in OUTSIDE
    }
    assert not strays, f"exceptions outside the VoxgateError tree: {sorted(strays)}"


def test_there_is_one_api_error() -> None:
    from voxgate.client import ApiError as ClientApiError

    assert ClientApiError is ApiError


def test_a_problem_the_server_answers_is_the_error_the_client_raises() -> None:
    sent = ApiError(429, "rate_limited", "slow down", extra={"retry": 3})
    response = problem(sent.status, sent.code, sent.detail, extra=sent.extra)
    assert response.content == sent.problem
    got = ApiError.from_problem(429, response.content)
    assert (got.status, got.code, got.detail, got.problem) == (
        429,
        "rate_limited",
        "slow down",
        sent.problem,
    )
    assert str(got) == "HTTP 429: slow down"
