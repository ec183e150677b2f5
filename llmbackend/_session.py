"""Chat sessions (``achat()`` / ``chat()``): a conversation with history, tool calls,
totals, and a JSON file form. The state and its rules are in :mod:`llmbackend._conversation`;
this module adds the calls (async, and sync on the quick API's background loop) and files.
"""

from __future__ import annotations

import asyncio
import functools
import os
import types
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Self, TypeVar

from llmbackend._answer import Answer, AnswerStream, SyncAnswerStream, event_stream, text_stream
from llmbackend._conversation import Conversation, Turn, new_conversation
from llmbackend._default_service import refuse_inside_loop, run_sync, service_for
from llmbackend.models import ChatMessage, StreamEvent, ToolCall
from llmbackend.service import LlmService

__all__ = ["AsyncChatSession", "ChatSession"]

T = TypeVar("T")


class _SessionState:
    """What both session classes read: the conversation, its history and totals."""

    _state: Conversation

    @property
    def system(self) -> str | None:
        """The system prompt, sent first on every turn (never stored in the history)."""
        return self._state.system

    @property
    def model(self) -> str | None:
        return self._state.model

    @property
    def backend(self) -> str | None:
        """The backend tried first (``None``: the service's strategy decides)."""
        return self._state.backend

    @property
    def params(self) -> Mapping[str, Any]:
        """The request parameters sent on every turn (temperature, tools, ...)."""
        return types.MappingProxyType(self._state.params)

    @property
    def history(self) -> tuple[ChatMessage, ...]:
        """User, assistant and tool messages so far, oldest first (no system message)."""
        return tuple(self._state.messages)

    @property
    def pending_tool_calls(self) -> tuple[ToolCall, ...]:
        """Tool calls of the last answer still waiting for :meth:`add_tool_result`."""
        return self._state.pending_tool_calls()

    @property
    def prompt_tokens(self) -> int:
        return self._state.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._state.completion_tokens

    @property
    def total_tokens(self) -> int:
        return self._state.total_tokens

    @property
    def cost_usd(self) -> float | None:
        """Sum of the priced answers; ``None`` while no answer had a known cost."""
        return self._state.cost_usd

    @property
    def turns(self) -> int:
        """Completed turns (answers added to the history)."""
        return self._state.turns

    def add_tool_result(self, tool_call_id: str, content: object) -> None:
        """Answer one of :attr:`pending_tool_calls` (``content``: text, or any value JSON
        can encode); once all have results, ``resume()`` lets the model continue."""
        self._state.add_tool_result(tool_call_id, content)

    def clear(self) -> None:
        """Forget the history (the system prompt, parameters and totals stay)."""
        self._state.clear()

    def to_dict(self) -> dict[str, Any]:
        """The session as JSON-ready data (what :meth:`save` writes)."""
        from llmbackend._session_file import to_json_data

        return to_json_data(self._state.data())

    def __repr__(self) -> str:
        state = self._state
        return (
            f"{type(self).__name__}(system={state.system!r}, messages={len(state.messages)}, "
            f"turns={state.turns}, total_tokens={state.total_tokens})"
        )


class AsyncChatSession(_SessionState):
    """A conversation for async code; ``async with achat(...) as session:``.

    ``service`` defaults to the event loop's default service (see :func:`configure`).
    ``params`` are ``ChatRequest`` fields sent on every turn (``temperature``,
    ``max_tokens``, ``tools``, ``top_p``, ...).
    """

    def __init__(
        self,
        system: str | None = None,
        *,
        model: str | None = None,
        backend: str | None = None,
        service: LlmService | None = None,
        **params: Any,
    ) -> None:
        self._setup(new_conversation("achat()", system, model, backend, params), service)

    def _setup(self, state: Conversation, service: LlmService | None) -> None:
        self._state = state
        self._service = service
        # Weak: a stream its reader dropped must stay collectable (its request then ends).
        self._stream: weakref.ref[AnswerStream[Any]] | None = None
        self._closed = False

    @classmethod
    def _adopt(cls, state: Conversation, service: LlmService | None) -> Self:
        session = cls.__new__(cls)
        session._setup(state, service)
        return session

    # --- turns -----------------------------------------------------------------------------

    async def send(self, prompt: str) -> Answer:
        """Ask ``prompt`` with the whole history; the answer (with any tool calls) and the
        prompt join the history when it arrives."""
        return await self._ask(self._open("send()").user_turn("send()", prompt))

    async def resume(self) -> Answer:
        """Let the model continue after every tool call got its result."""
        return await self._ask(self._open("resume()").resume_turn("resume()"))

    async def _ask(self, turn: Turn) -> Answer:
        service = await service_for(turn.request, self._service)
        answer = Answer(await service.chat(turn.request))
        self._state.commit(turn, answer)
        return answer

    def stream(self, prompt: str) -> AnswerStream[StreamEvent]:
        """Ask ``prompt``, streaming the raw events (``StreamRestarted`` included: render
        them with ``llmbackend.cli.stream_to_console`` or your own loop). The answer joins
        the history when the stream completes; ``.answer`` holds it."""
        turn = self._open("stream()").user_turn("stream()", prompt)
        return self._track(event_stream(turn.request, self._service, self._committer(turn)))

    def stream_text(self, prompt: str) -> AnswerStream[str]:
        """Like :meth:`stream`, but iterating text chunks only."""
        turn = self._open("stream_text()").user_turn("stream_text()", prompt)
        return self._track(text_stream(turn.request, self._service, self._committer(turn)))

    def _committer(self, turn: Turn) -> Callable[[Answer], None]:
        return functools.partial(self._state.commit, turn)

    def _track(self, stream: AnswerStream[T]) -> AnswerStream[T]:
        self._stream = weakref.ref(stream)
        return stream

    def _open(self, call: str) -> Conversation:
        if self._closed:
            raise RuntimeError(f"{call}: the chat session is closed")
        return self._state

    # --- files -----------------------------------------------------------------------------

    async def save(self, path: str | os.PathLike[str]) -> None:
        """Write the session to ``path`` as JSON (written beside it, then renamed)."""
        from llmbackend._session_file import write

        await asyncio.to_thread(write, path, self._state.data())

    @classmethod
    async def load(
        cls, path: str | os.PathLike[str], *, service: LlmService | None = None
    ) -> AsyncChatSession:
        """A session read from a file :meth:`save` wrote; ``ValueError`` naming the file
        and every problem when it is not one."""
        from llmbackend._session_file import read

        return cls._adopt(Conversation.of(await asyncio.to_thread(read, path)), service)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, service: LlmService | None = None
    ) -> AsyncChatSession:
        """A session from :meth:`to_dict` data."""
        from llmbackend._session_file import from_json_data

        return cls._adopt(Conversation.of(from_json_data(dict(data), "session data")), service)

    # --- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close an unfinished stream of this session; later turns raise. Idempotent."""
        self._closed = True
        stream = self._stream() if self._stream is not None else None
        self._stream = None
        if stream is not None:
            await stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ChatSession(_SessionState):
    """A conversation for plain (non-async) code; ``with chat(...) as session:``.

    Runs on the quick API's background event loop with its default service; in async code
    use :class:`AsyncChatSession` (``achat()``).
    """

    def __init__(
        self,
        system: str | None = None,
        *,
        model: str | None = None,
        backend: str | None = None,
        **params: Any,
    ) -> None:
        refuse_inside_loop("chat()", "`async with achat(...) as session:`")
        self._wrap(
            AsyncChatSession._adopt(
                new_conversation("chat()", system, model, backend, params), None
            )
        )

    def _wrap(self, session: AsyncChatSession) -> None:
        self._session = session
        self._state = session._state
        self._stream: weakref.ref[SyncAnswerStream[Any]] | None = None

    @classmethod
    def _of(cls, state: Conversation) -> Self:
        session = cls.__new__(cls)
        session._wrap(AsyncChatSession._adopt(state, None))
        return session

    def _run(self, call: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return run_sync(make, call=call, instead=f"`await session.{call}` on an achat() session")

    def send(self, prompt: str) -> Answer:
        """Ask ``prompt`` with the whole history (see :meth:`AsyncChatSession.send`)."""
        return self._run("send()", lambda: self._session.send(prompt))

    def resume(self) -> Answer:
        """Let the model continue after every tool call got its result."""
        return self._run("resume()", self._session.resume)

    def stream(self, prompt: str) -> SyncAnswerStream[StreamEvent]:
        """Ask ``prompt``, iterating the raw stream events; the answer joins the history
        when the stream completes."""
        refuse_inside_loop("stream()", "`async for event in session.stream(...)` on achat()")
        return self._track(self._session.stream(prompt), "stream()")

    def stream_text(self, prompt: str) -> SyncAnswerStream[str]:
        """Like :meth:`stream`, but iterating text chunks only."""
        refuse_inside_loop("stream_text()", "`async for text in session.stream_text(...)`")
        return self._track(self._session.stream_text(prompt), "stream_text()")

    def _track(self, stream: AnswerStream[T], call: str) -> SyncAnswerStream[T]:
        instead = f"`async for ... in session.{call}` on an achat() session"
        wrapped = SyncAnswerStream(stream, call=call, instead=instead)
        self._stream = weakref.ref(wrapped)
        return wrapped

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the session to ``path`` as JSON (written beside it, then renamed)."""
        from llmbackend._session_file import write

        write(path, self._state.data())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ChatSession:
        """A session read from a file :meth:`save` wrote; ``ValueError`` naming the file
        and every problem when it is not one."""
        from llmbackend._session_file import read

        return cls._of(Conversation.of(read(path)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatSession:
        """A session from :meth:`to_dict` data."""
        from llmbackend._session_file import from_json_data

        return cls._of(Conversation.of(from_json_data(dict(data), "session data")))

    def close(self) -> None:
        """Close an unfinished stream of this session; later turns raise. Idempotent."""
        self._session._closed = True
        stream = self._stream() if self._stream is not None else None
        self._stream = None
        if stream is not None:
            stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
