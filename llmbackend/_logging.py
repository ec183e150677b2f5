"""How the SDK obtains its structlog loggers without configuring structlog globally.

Every logger the SDK makes runs two processors of its own before anything else: the
request's correlation id is added and every field is redacted (see :mod:`._redaction`).
:func:`configure_logging` is for applications that want sensible output with one call; the
library itself never calls it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from attrs import evolve, field, frozen

from llmbackend._correlation import add_correlation_id
from llmbackend._redaction import Redactor

__all__ = ["LoggerFactory", "configure_logging"]


class _LevelCheckedLogger(structlog.stdlib.BoundLogger):
    """A stdlib-backed logger that asks the stdlib logger's (cached) level first, so a debug
    or info event nobody listens to costs a method call, not an event dict and a dropped
    event through the processor chain: the hot path logs at debug level on every request."""

    def is_enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would be logged (as structlog's filtering loggers)."""
        return self._logger.isEnabledFor(level)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


@frozen(kw_only=True)
class LoggerFactory:
    """Builds the loggers handed to backends and the service.

    If the application configured structlog, its configuration is used. Otherwise log events
    go to the standard ``logging`` module under ``llmbackend.*`` names, so an application that
    configured nothing sees only warnings and errors (Python's default), never debug noise.

    ``log_prompts`` / ``log_responses`` gate whether message content may be logged;
    ``redactor`` removes secrets from every event.
    """

    log_prompts: bool = False
    log_responses: bool = False
    redactor: Redactor = field(factory=Redactor)

    def with_secrets(self, *values: str | None) -> LoggerFactory:
        """This factory, with ``values`` also redacted (``self`` if nothing is new)."""
        redactor = self.redactor.including(values)
        return self if redactor is self.redactor else evolve(self, redactor=redactor)

    def __call__(self, name: str) -> Any:
        ours: list[Any] = [add_correlation_id, self.redactor]
        if structlog.is_configured():
            # What wrap_logger's proxy would build on every use, built once: the
            # application's wrapper class (a filtering one makes dropped levels no-ops).
            config = structlog.get_config()
            return config["wrapper_class"](
                config["logger_factory"](name),
                processors=[*ours, *config["processors"]],
                context=config["context_class"](),
            )
        # Built directly rather than through wrap_logger's lazy proxy, which re-binds on
        # every attribute access (~4 µs per log call, even for a dropped debug event).
        return _LevelCheckedLogger(
            logging.getLogger(name),
            # Level filtering first: a dropped debug event costs no redaction.
            processors=[
                structlog.stdlib.filter_by_level,
                *ours,
                structlog.stdlib.add_log_level,
                structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=False),
            ],
            context={},
        )


def configure_logging(
    *, json: bool = False, level: int | str = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure structlog for an application: JSON lines or readable console output.

    Events get a timestamp (UTC, ISO 8601), the level, the request's ``correlation_id`` and
    any ``structlog.contextvars`` bound by the application; known credential shapes are
    redacted from the application's own events too. Output goes to ``stream`` (default
    standard error). Calling it again replaces the configuration.
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_correlation_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, Redactor(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
