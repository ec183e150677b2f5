"""ReplayServer and its helpers: scripted replies written piece by piece, recorded requests,
defaults, cut and hanging replies, body splitting and wire-fixture loading."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from llmbackend.testing._replay import (
    ReceivedRequest,
    ReplayServer,
    ScriptedReply,
    awkward_sse,
    json_reply,
    load_wire_fixture,
    split_at,
    split_awkwardly,
    split_into,
    sse_body,
    sse_reply,
)


async def test_pieces_arrive_as_separate_chunks_and_requests_are_recorded(
    replay_server: ReplayServer, session: aiohttp.ClientSession
) -> None:
    """Each piece is its own write (an HTTP chunk of its own); the request's method, decoded
    path, raw path and query, headers and JSON body are recorded."""
    pieces = [b"data: {", b'"a": 1}\n', b"\n"]
    replay_server.enqueue(sse_reply(pieces, status=201, headers={"X-Reply": "1"}))
    url = f"{replay_server.url}/v1/a%20b?x=1&x=2&y=3"
    async with session.post(url, json={"q": "é"}, headers={"X-Test": "t"}) as response:
        assert (response.status, response.headers["X-Reply"]) == (201, "1")
        assert response.content_type == "text/event-stream"
        received = [chunk async for chunk, _ in response.content.iter_chunks() if chunk]
    assert received == pieces
    [request] = replay_server.requests
    assert (request.method, request.path, request.path_qs) == (
        "POST",
        "/v1/a b",
        "/v1/a%20b?x=1&x=2&y=3",
    )
    assert request.query == {"x": "1", "y": "3"}
    assert request.headers["X-Test"] == "t"
    assert request.json == {"q": "é"}
    assert replay_server.pending == 0


async def test_default_reply_responder_and_missing_script(
    replay_server: ReplayServer, session: aiohttp.ClientSession
) -> None:
    """Without a queued reply the default answers (a reply, or a responder given the
    request); without a default the answer is a 500 naming the request."""

    async def get(path: str) -> tuple[int, str]:
        async with session.get(f"{replay_server.url}{path}") as response:
            return response.status, await response.text()

    assert await get("/nothing?a=1") == (500, "no scripted reply for GET /nothing?a=1")
    replay_server.default = json_reply({"ok": True})
    assert await get("/x") == (200, '{"ok": true}')

    def echo(request: ReceivedRequest) -> ScriptedReply:
        return ScriptedReply(pieces=request.path, content_type="text/plain")

    replay_server.default = echo
    replay_server.enqueue(json_reply([], status=404))
    assert await get("/first") == (404, "[]")
    assert await get("/second") == (200, "/second")
    assert [r.json for r in replay_server.requests] == [None] * 4


async def test_cut_reply_drops_the_connection(
    replay_server: ReplayServer, session: aiohttp.ClientSession
) -> None:
    """A ``cut`` reply sends its pieces, then the client sees the body end uncleanly."""
    replay_server.enqueue(sse_reply(sse_body({"a": 1}), cut=True))
    async with session.get(replay_server.url) as response:
        assert await response.content.readline() == b'data: {"a": 1}\n'
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_hanging_reply_waits_until_the_server_stops(session: aiohttp.ClientSession) -> None:
    """A ``hang`` reply is recorded at once but answered only when the server stops; stopping
    is idempotent and the port then refuses connections."""
    async with ReplayServer() as server:
        server.enqueue(json_reply({"late": True}, hang=True))
        call = asyncio.create_task(session.get(server.url))
        done, _ = await asyncio.wait({call}, timeout=0.2)
        assert not done
        assert len(server.requests) == 1
        await server.aclose()
        async with await call as response:
            assert await response.json() == {"late": True}
    await server.aclose()
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(server.url)


def test_url_before_start_is_an_error() -> None:
    """An unstarted server has no URL to give."""
    with pytest.raises(RuntimeError, match="not been started"):
        _ = ReplayServer().url


def test_splitting_helpers() -> None:
    """split_at, split_into and split_awkwardly cut where they say and lose no byte."""
    assert split_at(b"abcdef", [4, 0, 2, 2, 9]) == [b"ab", b"cd", b"ef"]
    assert split_into(b"abcdefg", 3) == [b"abc", b"de", b"fg"]
    assert split_into(b"ab", 5) == [b"a", b"b"]
    with pytest.raises(ValueError, match="at least 1"):
        split_into(b"ab", 0)
    assert split_awkwardly(b"abcdefghijk") == [b"a", b"bc", b"defgh", b"ijk"]
    pieces = split_awkwardly(b"x" * 40 + b"\r\n")
    assert b"".join(pieces) == b"x" * 40 + b"\r\n"
    assert pieces[-1] == b"\n"
    assert split_awkwardly(b"") == [b""]


def test_sse_builders() -> None:
    """sse_body frames JSON or raw data, optionally named and with CRLF; awkward_sse adds
    keep-alive comments and keeps the events intact."""
    assert sse_body({"type": "x"}, "[DONE]") == b'data: {"type": "x"}\n\ndata: [DONE]\n\n'
    assert sse_body({"type": "x"}, event_field="type", line_end="\r\n") == (
        b'event: x\r\ndata: {"type": "x"}\r\n\r\n'
    )
    body = "data: 1\n\ndata: 2\n\n"
    text = b"".join(awkward_sse(body, crlf=True)).decode()
    assert text == ": keep-alive\r\n\r\ndata: 1\r\n\r\n: keep-alive\r\n\r\ndata: 2\r\n\r\n"


def test_load_wire_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixture file loads to its mapping; anything else, or a missing PyYAML, is a clear
    error."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("request: {method: POST}\nresponse: {status: 200, body: '{}'}\n")
    bad.write_text("- a list\n")
    assert load_wire_fixture(good)["response"] == {"status": 200, "body": "{}"}
    with pytest.raises(TypeError, match="mapping"):
        load_wire_fixture(str(bad))
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match="PyYAML"):
        load_wire_fixture(good)
