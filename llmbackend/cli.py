"""The ``llmbackend`` command line: ask, demo, plugins, config validate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llmbackend._discovery import find_config
from llmbackend._registry import default_registry
from llmbackend.config import load_settings
from llmbackend.container import open_service
from llmbackend.errors import ConfigurationError, LlmBackendError
from llmbackend.models import (
    ChatMessage,
    ChatRequest,
    FinishEvent,
    StreamEvent,
    StreamRestarted,
    TextDelta,
)

__all__ = ["main"]


async def _ask(args: argparse.Namespace, console: Console) -> int:
    messages = []
    if args.system:
        messages.append(ChatMessage.system(args.system))
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    messages.append(ChatMessage.user(prompt))
    request = ChatRequest(messages=messages, model=args.model, preferred_backend=args.backend)
    async with open_service(find_config(args.config)) as service:
        if args.json:
            response = await service.chat(request)
            payload = {
                "content": response.content,
                "backend": response.backend,
                "model": response.model,
                "prompt_tokens": response.prompt_tokens,
                "completion_tokens": response.completion_tokens,
                "finish_reason": response.finish_reason,
                "cost_usd": response.cost_usd,
                "duration_ms": round(response.duration_ms, 2),
            }
            console.print_json(json.dumps(payload))
            return 0
        await stream_to_console(service.stream(request), console)
    return 0


async def stream_to_console(events: AsyncIterator[StreamEvent], console: Console) -> None:
    """Show a streamed answer live. On ``StreamRestarted`` the discarded text disappears
    from the screen, so a recovered stream never shows duplicated or stitched text."""
    answer = Text()
    footer = Text(style="dim")
    with Live(Group(answer, footer), console=console, auto_refresh=False) as live:
        async for event in events:
            if isinstance(event, TextDelta):
                answer.append(event.text)
            elif isinstance(event, StreamRestarted) and event.discard_chars:
                answer.right_crop(event.discard_chars)
            elif isinstance(event, FinishEvent):
                footer.append(f"{event.backend} · {event.model}")
            live.refresh()


def _plugins(console: Console) -> int:
    registry = default_registry().copy()
    registry.load_entry_points()
    table = Table("id", "name", "version", "author", "backend types", "source")
    for info in registry.get_plugin_info():
        table.add_row(
            info.plugin_id,
            info.name,
            info.version,
            info.author,
            ", ".join(info.backend_types),
            info.source,
        )
    console.print(table)
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    path = find_config(args.path)
    load_settings(path)
    console.print(f"[green]{path}: valid[/green]")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmbackend", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the SDK's log events on stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="ask one question (streams the answer)")
    ask.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    ask.add_argument("--config", help="config file (default: discovered)")
    ask.add_argument("--backend", help="try this backend first")
    ask.add_argument("--model", help="override the model")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")

    commands.add_parser("demo", help="an end-to-end run against local fake providers")
    commands.add_parser("plugins", help="list the available plugins")

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check a config file")
    validate.add_argument("path", nargs="?", help="config file (default: discovered)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    # The terminal is for answers; breaker and retry events only when asked for.
    logging.getLogger("llmbackend").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    console = Console()
    errors = Console(stderr=True)
    try:
        result: Any
        if args.command == "ask":
            result = asyncio.run(_ask(args, console))
        elif args.command == "demo":
            from llmbackend._demo import run_demo

            result = asyncio.run(run_demo(console))
        elif args.command == "plugins":
            result = _plugins(console)
        else:
            result = _validate(args, console)
    except ConfigurationError as exc:
        errors.print(str(exc), markup=False, highlight=False)
        return 1
    except LlmBackendError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
