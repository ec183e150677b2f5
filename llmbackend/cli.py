"""llmbackend: ask, chat, backends, models, stats, plugins, config validate and demo.

Exit codes: 0 success; 1 the caller's mistake (no or invalid configuration, a missing API
key, an unknown backend); 2 a provider or service failure; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from llmbackend._cli_common import (
    CliError,
    check_backend_name,
    for_service,
    format_error,
    load_cli_settings,
    require_keys,
    stream_to_console,
)
from llmbackend._discovery import find_config
from llmbackend._registry import default_registry
from llmbackend.config import load_settings
from llmbackend.container import open_service
from llmbackend.errors import ConfigurationError, LlmBackendError
from llmbackend.models import ChatMessage, ChatRequest

__all__ = ["main", "stream_to_console"]


async def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return str(args.prompt)
    if sys.stdin.isatty():  # nothing piped: do not sit waiting for an end of input
        raise CliError("nothing to ask: give a prompt, or pipe one on stdin", 1)
    # A piped prompt may be large or slow to arrive: read it off the event loop.
    prompt: str = await asyncio.to_thread(sys.stdin.read)
    if not prompt.strip():
        raise CliError("nothing to ask: the prompt on stdin is empty", 1)
    return prompt


async def _ask(args: argparse.Namespace, console: Console) -> int:
    _, settings = await load_cli_settings(args.config)
    check_backend_name(settings, args.backend)
    require_keys(settings)
    messages = []
    if args.system:
        messages.append(ChatMessage.system(args.system))
    prompt = await _prompt(args)
    messages.append(ChatMessage.user(prompt))
    request = ChatRequest(messages=messages, model=args.model, preferred_backend=args.backend)
    async with open_service(for_service(settings)) as service:
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
                "cached": response.cached,
            }
            console.print_json(json.dumps(payload))
            return 0
        await stream_to_console(service.stream(request), console)
    return 0


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


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file (default: $LLMBACKEND_CONFIG, ./llmbackend.toml, ~/.config)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmbackend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the SDK's log events on stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="ask one question (streams the answer)")
    ask.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    _add_config(ask)
    ask.add_argument("--backend", help="try this backend first")
    ask.add_argument("--model", help="override the model")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--json", action="store_true", help="print the whole answer as JSON")

    chat = commands.add_parser(
        "chat", help="an interactive conversation (/exit, /clear, /save PATH)"
    )
    _add_config(chat)
    chat.add_argument("--backend", help="try this backend first")
    chat.add_argument("--model", help="override the model")
    chat.add_argument("--system", help="system prompt")

    backends = commands.add_parser(
        "backends", help="check every backend now: health, breaker, latency, spend"
    )
    _add_config(backends)
    backends.add_argument("--backend", help="only this backend")
    backends.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per check (default 5)"
    )
    backends.add_argument("--json", action="store_true", help="print the rows as JSON")

    models = commands.add_parser("models", help="list each backend's models")
    _add_config(models)
    models.add_argument("--backend", help="only this backend")
    models.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per listing (default 10)"
    )
    models.add_argument("--json", action="store_true", help="print the listing as JSON")

    stats = commands.add_parser(
        "stats", help="a running service's metrics (--url) or the stored budgets"
    )
    _add_config(stats)
    stats.add_argument(
        "--url", help="a service's Prometheus endpoint, e.g. http://127.0.0.1:8080/metrics"
    )
    stats.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for the scrape (default 5)"
    )
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")

    demo = commands.add_parser("demo", help="an end-to-end run against local fake providers")
    demo.add_argument(
        "--requests", type=int, default=300, help="how many requests to send (default 300)"
    )
    demo.add_argument(
        "--offline",
        action="store_true",
        help="do not look for real provider keys or local Ollama / llama.cpp servers",
    )
    commands.add_parser("plugins", help="list the available plugins")

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check a config file")
    validate.add_argument("path", nargs="?", help="config file (default: discovered)")
    return parser


def _run(args: argparse.Namespace, console: Console, errors: Console) -> int:
    if args.command == "ask":
        return asyncio.run(_ask(args, console))
    if args.command == "chat":
        from llmbackend._cli_chat import chat_command

        return asyncio.run(chat_command(args, console, errors))
    if args.command == "backends":
        from llmbackend._cli_status import backends_command

        return asyncio.run(backends_command(args, console))
    if args.command == "models":
        from llmbackend._cli_status import models_command

        return asyncio.run(models_command(args, console))
    if args.command == "stats":
        from llmbackend._cli_stats import stats_command

        return asyncio.run(stats_command(args, console))
    if args.command == "demo":
        from llmbackend._demo import run_demo

        return asyncio.run(run_demo(console, requests=args.requests, detect=not args.offline))
    if args.command == "plugins":
        return _plugins(console)
    return _validate(args, console)


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
        return _run(args, console, errors)
    except ConfigurationError as exc:
        errors.print(format_error(exc), markup=False, highlight=False, soft_wrap=True)
        return 1
    except CliError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.code
    except LlmBackendError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
