"""One client, measured in a fresh process: ``worker.py CLIENT URL TASKS OUT CONFIG``.

``TASKS`` is a comma-separated list run in order (``import`` first if present, so that the
import is measured in a fresh interpreter): ``import`` (with the first call), ``cpu``,
``stream``, ``throughput``, ``memory``, ``profile``. ``CONFIG`` is a JSON object of counts
(see ``run.py``); the results are written as JSON to ``OUT``.

Until the import is measured this module has imported nothing but ``os``, ``sys`` and
``time``: the standard library that an import pulls in is part of what it costs. Network
at import is watched with an audit hook (``socket.connect``, ``socket.getaddrinfo``), which
needs no import and blocks the attempt.
"""

from __future__ import annotations

import os
import sys
import time

_NETWORK_ATTEMPTS: list[str] = []
_GUARD = {"on": False}


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _GUARD["on"] and event in ("socket.connect", "socket.getaddrinfo"):
        _NETWORK_ATTEMPTS.append(f"{event} {args[1] if len(args) > 1 else args!r}"[:200])
        raise OSError("network at import blocked by the benchmark guard")


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_import(statement: str) -> dict[str, object]:
    before_modules = set(sys.modules)
    before_rss = rss_mb()
    sys.addaudithook(_audit)
    _GUARD["on"] = True
    started = time.perf_counter()
    exec(statement, {})  # the statement is one of the harness's own
    elapsed = time.perf_counter() - started
    _GUARD["on"] = False
    loaded = set(sys.modules) - before_modules
    return {
        "statement": statement,
        "seconds": elapsed,
        "modules": len(loaded),
        "own_modules": len([m for m in loaded if m.split(".")[0] == "llmbackend"]),
        "rss_mb": rss_mb(),
        "rss_delta_mb": rss_mb() - before_rss,
        "network_attempts": list(_NETWORK_ATTEMPTS),
    }


def main() -> None:
    client_name, url, tasks_text, out, config_text = sys.argv[1:6]
    tasks = tasks_text.split(",")
    results: dict[str, object] = {"client": client_name}
    if tasks and tasks[0] == "import":
        # Only the client table (stdlib only) is read before the import is timed.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from clients import CLIENTS, IMPORT_ONLY

        statement = (
            IMPORT_ONLY[client_name]
            if client_name in IMPORT_ONLY
            else CLIENTS[client_name].import_statement
        )
        results["import"] = measure_import(statement)
        tasks = tasks[1:]
        if client_name in IMPORT_ONLY:
            tasks = []
        else:
            tasks.insert(0, "first_call")
    import asyncio
    import json

    from measures import run_tasks

    config = json.loads(config_text)
    results.update(asyncio.run(run_tasks(client_name, url, tasks, config)))
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
