"""The default service behind the quick API (``ask``, ``stream``, ``chat`` and their async twins).

**Async forms.** An aiohttp session belongs to the event loop that made it, so there is one
default service per running loop, opened on first use from :func:`configure`'s source (by
default the discovered file: ``LLMBACKEND_CONFIG``, ``./llmbackend.toml``,
``~/.config/llmbackend/config.toml``). A small *keeper* task per loop owns it: it opens the
service, then waits forever and closes the service in its ``finally``. ``asyncio.run()``,
``asyncio.Runner`` and aiohttp's ``run_app`` cancel leftover tasks when they shut down, so the
service closes cleanly without anyone calling anything. Concurrent first calls share the
keeper's future, so only one service is ever opened per loop.

**Sync forms.** They refuse to run inside a running event loop (that would block it) and
otherwise run on one private event loop in a daemon thread, started lazily. That loop has its
own default service by the same mechanism; :func:`close_default_service` (also registered with
``atexit``) stops the loop, which cancels the keeper and so closes the service.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from llmbackend._config_problems import find_suggestion
from llmbackend.config import load_settings
from llmbackend.container import open_service
from llmbackend.errors import ConfigProblem, ConfigurationError, LlmBackendError
from llmbackend.models import ChatRequest
from llmbackend.service import LlmService
from llmbackend.settings import LlmSettings

__all__ = [
    "aclose_default_service",
    "background_loop",
    "close_default_service",
    "configure",
    "default_service",
    "refuse_inside_loop",
    "run_sync",
    "service_for",
]

T = TypeVar("T")

#: What :func:`configure` accepts: a file, settings as a mapping or ``LlmSettings``, or
#: ``None`` for the discovered file.
DefaultSource = LlmSettings | Mapping[str, object] | str | os.PathLike[str] | None

#: How long closing the background loop may take before the daemon thread is left behind.
CLOSE_TIMEOUT_SECONDS = 10.0


@attrs.define(eq=False)
class _Slot:
    """One loop's default service: the future every caller awaits, and its keeper task."""

    ready: asyncio.Future[LlmService]
    keeper: asyncio.Task[None] | None = None


_lock = threading.Lock()
_source: DefaultSource = None
_slots: dict[asyncio.AbstractEventLoop, _Slot] = {}


def configure(config: DefaultSource = None) -> None:
    """Use ``config`` for the default services from now on, instead of the discovered file.

    ``config`` is a config file path, a mapping or an ``LlmSettings``; ``None`` goes back to
    discovery. It is checked now (a missing file or invalid settings raise
    ``ConfigurationError`` here). Default services already open are closed: calls still in
    flight on them may fail, the next call opens a new one.
    """
    global _source  # noqa: PLW0603  # the one process-wide source, swapped under the lock
    from llmbackend._discovery import find_config  # only the quick API needs discovery

    if isinstance(config, str | os.PathLike):
        config = find_config(Path(config).absolute())  # later chdir() must not change it
    elif isinstance(config, LlmSettings | Mapping):
        load_settings(config)  # report every problem now, not on the first call
    elif config is not None:
        raise TypeError(
            "configure() takes a config file path, a mapping, an LlmSettings or None, "
            f"not {type(config).__name__}"
        )
    with _lock:
        _source = config
        retired = list(_slots.items())
        _slots.clear()
    for loop, slot in retired:
        _retire(loop, slot)


def _retire(loop: asyncio.AbstractEventLoop, slot: _Slot) -> None:
    if slot.keeper is not None:
        # A closed loop raises RuntimeError: nothing runs there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(slot.keeper.cancel)


async def default_service() -> LlmService:
    """This event loop's default service, opened on first use (once, however many callers
    ask at the same time) and closed when the loop shuts down."""
    loop = asyncio.get_running_loop()
    with _lock:
        slot = _slots.get(loop)
        if slot is None:
            # A loop closed without cancelling its tasks never ran its keeper's cleanup.
            for stale in [other for other in _slots if other.is_closed()]:
                del _slots[stale]
            slot = _Slot(ready=loop.create_future())
            _slots[loop] = slot
            slot.keeper = loop.create_task(_keep(slot, _source), name="llmbackend-default-service")
            slot.keeper.add_done_callback(lambda _task: _forget(loop, slot))
    # shield: a cancelled caller must not cancel the future the other callers wait on.
    return await asyncio.shield(slot.ready)


async def _keep(slot: _Slot, source: DefaultSource) -> None:
    from llmbackend._discovery import find_config  # only the quick API needs discovery

    try:
        config = source if source is not None else await asyncio.to_thread(find_config)
        async with open_service(config) as service:
            slot.ready.set_result(service)
            await asyncio.get_running_loop().create_future()  # until cancelled
    except Exception as exc:
        if slot.ready.done():
            raise  # closing failed: the loop's exception handler reports it
        _fail(slot.ready, exc)


def _forget(loop: asyncio.AbstractEventLoop, slot: _Slot) -> None:
    with _lock:
        if _slots.get(loop) is slot:
            del _slots[loop]
    if not slot.ready.done():  # cancelled before it could open (shutdown, configure())
        _fail(slot.ready, LlmBackendError("the default service was closed before it opened"))


def _fail(future: asyncio.Future[LlmService], exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # retrieved here, so a caller that gave up leaves no log noise


async def service_for(request: ChatRequest, service: LlmService | None) -> LlmService:
    """``service`` (by default this loop's default service), after checking that the
    backend the request names is one of its backends."""
    chosen = service if service is not None else await default_service()
    name = request.preferred_backend
    if name is not None:
        try:
            chosen.backend(name)
        except ConfigurationError:
            configured = [backend.name for backend in chosen.backends]
            suggestion = find_suggestion(name, configured)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            listed = ", ".join(configured) or "none"
            problem = ConfigProblem(
                "backend", f"no backend is called {name!r} (configured: {listed}){hint}"
            )
            raise ConfigurationError([problem]) from None
    return chosen


async def aclose_default_service() -> None:
    """Close this event loop's default service now, if one is open (the next quick call
    opens a new one). Needed only for loops that are closed without cancelling their
    tasks; ``asyncio.run()`` closes it by itself."""
    loop = asyncio.get_running_loop()
    with _lock:
        slot = _slots.pop(loop, None)
    if slot is None or slot.keeper is None:
        return
    slot.keeper.cancel()
    await asyncio.wait([slot.keeper])
    if not slot.keeper.cancelled() and (error := slot.keeper.exception()) is not None:
        raise error


# --- the background loop of the sync forms ---------------------------------------------------


@attrs.define(eq=False)
class _Background:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    stop: asyncio.Event


_background_lock = threading.Lock()
_background: _Background | None = None
_atexit_registered = False


def refuse_inside_loop(call: str, instead: str) -> None:
    """Raise a clear ``RuntimeError`` when an event loop is running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{call} cannot be used while an event loop is running in this thread (it would "
        f"block the loop); in async code use {instead}"
    )


def background_loop() -> asyncio.AbstractEventLoop:
    """The sync forms' private event loop, started on first use in a daemon thread."""
    global _background, _atexit_registered  # noqa: PLW0603  # one loop per process
    with _background_lock:
        if _background is not None and _background.thread.is_alive():
            return _background.loop
        handoff: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        started = threading.Event()
        thread = threading.Thread(
            target=_run_background,
            args=(handoff, started),
            name="llmbackend-quick-api",
            daemon=True,
        )
        thread.start()
        started.wait()
        if not handoff:
            raise RuntimeError("the quick API's background event loop did not start")
        loop, stop = handoff[0]
        _background = _Background(loop=loop, thread=thread, stop=stop)
        if not _atexit_registered:
            atexit.register(close_default_service)
            _atexit_registered = True
        return loop


def _run_background(
    handoff: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]], started: threading.Event
) -> None:
    async def serve() -> None:
        task = asyncio.current_task()
        if task is not None:
            task.set_name("llmbackend-quick-api")
        stop = asyncio.Event()
        handoff.append((asyncio.get_running_loop(), stop))
        started.set()
        await stop.wait()

    try:
        # asyncio.run cancels the keeper when serve() returns: that closes the service.
        asyncio.run(serve())
    finally:
        started.set()


def run_sync(make: Callable[[], Coroutine[Any, Any, T]], *, call: str, instead: str) -> T:
    """Run ``make()`` on the background loop and wait for its result.

    ``make`` is called only after the running-loop check, so a refused call leaves no
    un-awaited coroutine behind. Interrupting the wait (Ctrl-C) cancels the call.
    """
    refuse_inside_loop(call, instead)
    future = asyncio.run_coroutine_threadsafe(make(), background_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def close_default_service(timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
    """Close the sync forms' default service and stop their background thread.

    Registered with ``atexit``; call it yourself (tests: in teardown) to release the
    connections earlier. The next sync call starts a new thread. Waits at most ``timeout``
    seconds, so a stuck close can never hang the process.
    """
    global _background  # one background loop per process
    with _background_lock:
        background, _background = _background, None
    if background is None:
        return
    try:
        background.loop.call_soon_threadsafe(background.stop.set)
    except RuntimeError:
        return  # the loop is already closed
    if threading.current_thread() is not background.thread:
        background.thread.join(timeout)
