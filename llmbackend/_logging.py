"""How the SDK obtains its structlog loggers without configuring structlog globally."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from attrs import frozen

__all__ = ["LoggerFactory"]

_STDLIB_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.stdlib.add_log_level,
    structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=False),
]


@frozen(kw_only=True)
class LoggerFactory:
    """Builds the loggers handed to backends and the service.

    If the application configured structlog, its configuration is used. Otherwise log events
    go to the standard ``logging`` module under ``llmbackend.*`` names, so an application that
    configured nothing sees only warnings and errors (Python's default), never debug noise.

    ``log_prompts`` / ``log_responses`` gate whether message content may be logged.
    """

    log_prompts: bool = False
    log_responses: bool = False

    def __call__(self, name: str) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(name)
        return structlog.wrap_logger(
            logging.getLogger(name),
            processors=_STDLIB_PROCESSORS,
            wrapper_class=structlog.stdlib.BoundLogger,
        )
