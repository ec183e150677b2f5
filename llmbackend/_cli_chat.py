"""``llmbackend chat``: a conversation on stdin and stdout, built on ``achat()`` sessions.

Each line is a turn, streamed as it arrives; ``/clear`` forgets the history, ``/save PATH``
writes the session as JSON, ``/exit`` (or the end of input) ends it. Works the same with a
pipe on stdin, so a script (or a test) can drive it. A turn that fails is reported and the
conversation goes on without it; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from typing import TextIO

from rich.console import Console

from llmbackend._cli_common import (
    check_backend_name,
    for_service,
    load_cli_settings,
    require_keys,
    stream_to_console,
)
from llmbackend.container import open_service
from llmbackend.errors import LlmBackendError
from llmbackend.quick import AsyncChatSession, achat

__all__ = ["StdinLines", "chat_command"]

HELP = "commands: /exit, /clear (forget the history), /save PATH (write the session as JSON)"


class StdinLines:
    """Lines of ``stream``, read by a daemon thread: the event loop never waits on the
    terminal, and an interrupted process does not wait for a read that may never end (a
    worker-pool thread would hold up ``asyncio.run``'s shutdown until Enter)."""

    def __init__(self, stream: TextIO) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        reader = threading.Thread(
            target=self._read, args=(stream,), name="llmbackend-stdin", daemon=True
        )
        reader.start()

    def _read(self, stream: TextIO) -> None:
        while True:
            line = stream.readline()
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line or None)
            except RuntimeError:
                return  # the loop is closed: nobody is listening any more
            if not line:
                return

    async def next(self) -> str | None:
        """The next line without its newline; ``None`` at the end of input."""
        line = await self._queue.get()
        return None if line is None else line.rstrip("\r\n")


async def _command(text: str, session: AsyncChatSession, console: Console) -> bool:
    """Run a ``/command``; True when the conversation should end."""
    name, _, argument = text.partition(" ")
    if name in ("/exit", "/quit"):
        return True
    if name == "/clear":
        session.clear()
        console.print("history cleared", style="dim", highlight=False)
    elif name == "/save":
        path = argument.strip()
        if not path:
            console.print("usage: /save PATH", style="dim", highlight=False)
            return False
        try:
            await session.save(path)
        except (OSError, ValueError) as exc:
            console.print(
                f"could not save to {path}: {exc}", style="red", markup=False, highlight=False
            )
        else:
            console.print(
                f"saved {len(session.history)} messages to {path}", style="dim", highlight=False
            )
    else:
        console.print(f"unknown command {name}; {HELP}", style="dim", markup=False, highlight=False)
    return False


async def chat_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """The conversation loop; returns 0, or 2 when any turn failed."""
    _, settings = await load_cli_settings(args.config)
    check_backend_name(settings, args.backend)
    require_keys(settings)
    interactive = sys.stdin.isatty()
    lines = StdinLines(sys.stdin)
    failed_turns = 0
    async with (
        open_service(for_service(settings)) as service,
        achat(args.system, model=args.model, backend=args.backend, service=service) as session,
    ):
        if interactive:
            names = ", ".join(backend.name for backend in service.backends)
            console.print(
                f"chatting through {names}; {HELP}", style="dim", markup=False, highlight=False
            )
        while True:
            if interactive:
                console.print("[bold]>[/bold] ", end="")
            line = await lines.next()
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if await _command(text, session, console):
                    break
                continue
            try:
                await stream_to_console(session.stream(text), console)
            except LlmBackendError as exc:
                failed_turns += 1
                errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        if interactive:
            cost = "" if session.cost_usd is None else f", ${session.cost_usd:.6f}"
            console.print(
                f"{session.turns} turns, {session.total_tokens} tokens{cost}",
                style="dim",
                highlight=False,
            )
    return 2 if failed_turns else 0
