"""The measurements a worker process runs on one client (see ``worker.py``).

All times are ``time.perf_counter`` wall time; CPU is ``getrusage(RUSAGE_SELF)`` user +
system (every thread of the process, so work a client pushes to a thread is counted).
"""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import gc
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from clients import CLIENTS, Client, model_name
from worker import rss_mb


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def server_cpu_seconds(pid: int) -> float:
    """The fake server's CPU seconds from ``/proc`` (read without the event loop, which is
    saturated during a load window; 10 ms resolution)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_stats(url: str) -> dict[str, float]:
    """The fake server's counters, over a raw connection (no client library involved)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"GET /_stats HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    stats: dict[str, float] = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return stats


class StallMonitor:
    """The longest single event-loop callback (a synchronous stretch nothing else can run
    in), measured by wrapping ``asyncio.events.Handle._run``, plus a 1 ms heartbeat's
    worst lateness (which also sees a thread holding the GIL)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.culprit = ""
        self.heartbeat_lag = 0.0
        self._original: Callable[[Any], None] = asyncio.events.Handle._run

    def __enter__(self) -> StallMonitor:
        original = self._original
        monitor = self

        def timed(handle: Any) -> None:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                original(handle)
            finally:
                elapsed = time.perf_counter() - started
                if elapsed > monitor.longest:
                    monitor.longest = elapsed
                    monitor.longest_cpu = time.thread_time() - cpu
                    monitor.culprit = repr(handle)[:160]

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]

    async def heartbeat(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.heartbeat_lag = max(self.heartbeat_lag, time.perf_counter() - started - 0.001)


async def first_call(name: str, url: str, config: dict[str, Any]) -> dict[str, Any]:
    with StallMonitor() as monitor:
        beat = asyncio.create_task(monitor.heartbeat())
        await asyncio.sleep(0)
        started = time.perf_counter()
        client = CLIENTS[name](url)
        await client.open()
        opened = time.perf_counter() - started
        during_open = (monitor.longest, monitor.longest_cpu, monitor.culprit)
        monitor.longest, monitor.longest_cpu, monitor.culprit = 0.0, 0.0, ""
        await client.chat(model_name())
        elapsed = time.perf_counter() - started
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    worst = max(during_open, (monitor.longest, monitor.longest_cpu, monitor.culprit))
    second = time.perf_counter()
    await client.chat(model_name())
    second = time.perf_counter() - second
    await client.close()
    return {
        "seconds": elapsed,
        "open_seconds": opened,
        "second_call_seconds": second,
        "longest_stall_seconds": worst[0],
        "longest_stall_cpu_seconds": worst[1],
        "stall_culprit": worst[2],
        "longest_stall_open_seconds": during_open[0],
        "longest_stall_request_seconds": monitor.longest,
        "heartbeat_lag_seconds": monitor.heartbeat_lag,
    }


async def first_call_profile(name: str, url: str) -> dict[str, Any]:
    """What the first call spends its time on (pyinstrument, wall clock)."""
    from pyinstrument import Profiler

    exec(CLIENTS[name].import_statement, {})  # imported before, as in first_call
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    client = CLIENTS[name](url)
    await client.open()
    await client.chat(model_name())
    profiler.stop()
    await client.close()
    return {"text": profiler.output_text(unicode=False, color=False, show_all=False)}


def budgeted(wanted: int, floor: int, budget: float, seconds_each: float) -> int:
    """``wanted`` calls per repetition, fewer (never below ``floor``) when a repetition
    would take longer than ``budget`` seconds: slow clients keep the run short."""
    return max(floor, min(wanted, int(budget / max(seconds_each, 1e-6))))


async def cpu(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    model = model_name()
    started = time.perf_counter()
    for _ in range(config["warmup"]):
        await client.chat(model)
    each = (time.perf_counter() - started) / config["warmup"]
    count = budgeted(config["requests"], config["min_requests"], config["rep_budget_s"], each)
    per_request, wall = [], []
    for _ in range(config["reps"]):
        gc.collect()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(count):
            await client.chat(model)
        per_request.append((cpu_seconds() - cpu0) / count)
        wall.append((time.perf_counter() - wall0) / count)
    result: dict[str, Any] = {
        "cpu_per_request": per_request,
        "wall_per_request": wall,
        "requests_per_rep": count,
    }
    if client.embeds:
        embeds = []
        for _ in range(5):
            await client.embed(model)
        count = budgeted(
            config["embed_requests"], 20, config["rep_budget_s"] / 4, statistics.median(wall)
        )
        for _ in range(config["reps"]):
            cpu0 = cpu_seconds()
            for _ in range(count):
                await client.embed(model)
            embeds.append((cpu_seconds() - cpu0) / count)
        result["embed_cpu_per_request"] = embeds
    return result


async def _one_stream(client: Client, model: str) -> tuple[float, int]:
    """(time to the first text delta, text deltas received) of one streamed answer."""
    started, first, received = time.perf_counter(), float("nan"), 0
    async for _text in client.stream(model):
        if received == 0:
            first = time.perf_counter() - started
        received += 1
    return first, received


async def stream(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for chunks, wanted in ((20, config["streams_20"]), (500, config["streams_500"])):
        model = model_name(chunks=chunks)
        started = time.perf_counter()
        for _ in range(config["stream_warmup"]):
            await _one_stream(client, model)
        each = (time.perf_counter() - started) / config["stream_warmup"]
        count = budgeted(wanted, 3, config["rep_budget_s"] / 2, each)
        per_chunk, per_stream, ttft, wrong = [], [], [], 0
        for _ in range(config["stream_reps"]):
            gc.collect()
            cpu0 = cpu_seconds()
            for _ in range(count):
                first, received = await _one_stream(client, model)
                ttft.append(first)
                wrong += received != chunks
            spent = cpu_seconds() - cpu0
            per_chunk.append(spent / (count * chunks))
            per_stream.append(spent / count)
        result[str(chunks)] = {
            "cpu_per_chunk": per_chunk,
            "cpu_per_stream": per_stream,
            "streams_per_rep": count,
            "ttft_median": statistics.median(ttft),
            "ttft_p90": percentile(ttft, 0.9),
            "streams_with_wrong_chunk_count": wrong,
        }
    return result


async def _load(client: Client, model: str, concurrency: int, config: dict[str, Any]):
    """Closed-loop load: ``concurrency`` callers back to back, measured in windows.

    The warm-up lasts until every caller had a turn (at most ``load_warmup_cap_s``):
    a slow client's first answers only arrive once all callers have sent theirs. Callers
    still busy shortly after the last window are cancelled rather than waited for.
    """
    done: list[tuple[float, float]] = []
    failures: list[tuple[float, str]] = []
    stop, everyone_had_a_turn = asyncio.Event(), asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                await client.chat(model)
            except Exception as exc:  # noqa: BLE001  # every failure is counted, whatever it is
                failures.append((time.perf_counter(), type(exc).__name__))
                await asyncio.sleep(0.001)
                continue
            ended = time.perf_counter()
            done.append((ended, ended - started))
            if len(done) >= concurrency:
                everyone_had_a_turn.set()

    pid = config["server_pid"]
    callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
    began = time.perf_counter()
    await asyncio.sleep(config["load_warmup_s"])
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(everyone_had_a_turn.wait(), config["load_warmup_cap_s"])
    warmup = time.perf_counter() - began
    windows = []
    for _ in range(config["windows"]):
        server0, cpu0, start = server_cpu_seconds(pid), cpu_seconds(), time.perf_counter()
        await asyncio.sleep(config["window_s"])
        end, cpu1, server1 = time.perf_counter(), cpu_seconds(), server_cpu_seconds(pid)
        latencies = [lat for t, lat in done if start <= t < end]
        completed = len(latencies)
        windows.append(
            {
                "throughput": completed / (end - start),
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "errors": sum(1 for t, _ in failures if start <= t < end),
                "client_cpu_per_request": (cpu1 - cpu0) / completed if completed else None,
                "server_cpu_share": (server1 - server0) / (end - start),
            }
        )
    stop.set()
    _, pending = await asyncio.wait(callers, timeout=config["drain_s"])
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {
        "windows": windows,
        "warmup_seconds": warmup,
        "error_kinds": sorted({kind for _, kind in failures}),
        "errors_total": len(failures),
        "cancelled_at_end": len(pending),
    }


async def throughput(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    for _ in range(20):
        await client.chat(model_name())
    result: dict[str, Any] = {}
    saturated: set[int] = set()
    for delay in config["delays_ms"]:
        for concurrency in config["concurrency"]:
            if concurrency in saturated:
                # CPU-bound at this concurrency with no server delay: a delay changes
                # nothing but the time it takes to find out. Not measured again.
                result[f"d{delay}-c{concurrency}"] = {"saturated_at_0_ms": True}
                continue
            gc.collect()
            load = await _load(client, model_name(delay), concurrency, config)
            result[f"d{delay}-c{concurrency}"] = load
            if delay == 0 and load["warmup_seconds"] > config["load_warmup_cap_s"]:
                saturated.add(concurrency)
            await asyncio.sleep(0.1)
    return result


async def memory(client: Client, url: str, config: dict[str, Any]) -> dict[str, Any]:
    """RSS growth while ``in_flight`` requests are held by the server for ``hold_ms``.

    Sampled every 50 ms until the answers are in or the hold plus a grace period is over;
    a client too slow to even send them all in that time has the rest cancelled.
    """
    for _ in range(20):
        await client.chat(model_name())
    gc.collect()
    baseline = rss_mb()
    count, hold = config["in_flight"], config["hold_ms"]
    calls = [asyncio.create_task(client.chat(model_name(hold))) for _ in range(count)]
    peak, most_held, started = baseline, 0, time.perf_counter()
    deadline = started + hold / 1000 + config["memory_grace_s"]
    while not all(call.done() for call in calls) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        peak = max(peak, rss_mb())
        most_held = max(most_held, int((await server_stats(url))["in_flight"]))
    unfinished = [call for call in calls if not call.done()]
    for call in unfinished:
        call.cancel()
    # Some clients take long to unwind a thousand cancelled requests: not waited for.
    await asyncio.wait(calls, timeout=3.0)
    failed = sum(1 for call in calls if not call.cancelled() and call.exception() is not None)
    return {
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "rss_per_1000_in_flight_mb": (peak - baseline) * 1000 / count,
        "in_flight_requested": count,
        "in_flight_seen_by_server": most_held,
        "unfinished_cancelled": len(unfinished),
        "errors": failed,
    }


async def drift(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    """RSS after each tenth of ``drift_requests``; drift is measured from the first tenth
    (pools, caches and allocator arenas have grown by then)."""
    total, concurrency = config["drift_requests"], config["drift_concurrency"]
    model = model_name()
    samples: list[float] = []
    errors = 0
    step = max(total // 10, concurrency)

    async def tenth() -> None:
        remaining = step

        async def caller() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                try:
                    await client.chat(model)
                except Exception:  # noqa: BLE001  # counted
                    errors += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    started = time.perf_counter()
    for _ in range(10):
        await tenth()
        gc.collect()
        samples.append(rss_mb())
    return {
        "requests": step * 10,
        "seconds": time.perf_counter() - started,
        "rss_samples_mb": samples,
        "drift_fraction": (samples[-1] - samples[0]) / samples[0],
        "errors": errors,
    }


def _where(path: str) -> str:
    """The package (or llmbackend module) a profiled function belongs to."""
    if "/llmbackend/" in path:
        return "llmbackend/" + path.rsplit("/llmbackend/", 1)[1]
    if path.startswith("<attrs generated"):
        return "attrs (generated __init__)"
    if path == "~":
        return "builtins and C methods"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/python3." in path:
        return "stdlib: " + path.rsplit("/", 1)[1]
    return path.rsplit("/", 1)[-1]


def _cprofile_table(stats: Any, requests: int) -> str:
    """Own time per package and the costliest llmbackend functions, per request."""
    packages: dict[str, float] = {}
    functions: dict[str, tuple[float, float]] = {}
    for (path, line, name), (_, calls, own, _cumulative, _) in stats.stats.items():
        if name == "<method 'poll' of 'select.epoll' objects>":
            continue  # waiting for the server, not CPU
        where = _where(path)
        packages[where] = packages.get(where, 0.0) + own
        if where.startswith(("llmbackend/", "attrs (generated")):
            key = f"{where}:{line}({name})"
            functions[key] = (own, calls)
    total = sum(packages.values())
    lines = [
        f"cProfile, {requests} sequential requests: own time per request (profiler overhead",
        "inflates small functions; read the shares, not the absolute numbers).",
        f"total (excluding epoll wait): {total / requests * 1e6:.0f} us/request",
        "",
        f"{'package or module':<58}{'us/req':>9}{'share':>8}",
    ]
    for where, own in sorted(packages.items(), key=lambda item: -item[1])[:30]:
        lines.append(f"{where:<58}{own / requests * 1e6:>9.1f}{own / total * 100:>7.1f}%")
    lines += ["", f"{'llmbackend function':<84}{'us/req':>8}{'calls/req':>10}"]
    for key, (own, calls) in sorted(functions.items(), key=lambda item: -item[1][0])[:40]:
        lines.append(f"{key[-84:]:<84}{own / requests * 1e6:>8.1f}{calls / requests:>10.1f}")
    return "\n".join(lines)


async def profile(client: Client, config: dict[str, Any]) -> dict[str, Any]:
    """pyinstrument (call tree) then cProfile (own time per function) of sequential calls."""
    import cProfile
    import pstats

    from pyinstrument import Profiler

    model = model_name()
    for _ in range(100):
        await client.chat(model)
    count = config["profile_requests"]
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    for _ in range(count):
        await client.chat(model)
    profiler.stop()
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    deterministic = cProfile.Profile()
    deterministic.enable()
    for _ in range(count):
        await client.chat(model)
    deterministic.disable()
    table = _cprofile_table(pstats.Stats(deterministic), count)
    return {"text": f"{table}\n\npyinstrument, {count} sequential requests:\n{tree}"}


async def run_tasks(
    name: str, url: str, tasks: list[str], config: dict[str, Any]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "first_call" in tasks:
        results["first_call"] = await first_call(name, url, config)
        tasks = [task for task in tasks if task != "first_call"]
    if "first_call_profile" in tasks:
        results["first_call_profile"] = await first_call_profile(name, url)
        tasks = [task for task in tasks if task != "first_call_profile"]
    if not tasks:
        return results
    client = CLIENTS[name](url)
    await client.open()
    try:
        for task in tasks:
            started = time.perf_counter()
            if task == "cpu":
                results["cpu"] = await cpu(client, config)
            elif task == "stream":
                results["stream"] = await stream(client, config)
            elif task == "throughput":
                results["throughput"] = await throughput(client, config)
            elif task == "memory":
                results["memory"] = await memory(client, url, config)
            elif task == "drift":
                results["drift"] = await drift(client, config)
            elif task == "profile":
                results["profile"] = await profile(client, config)
            elif task == "hot_path":  # last: it replaces the HTTP exchange with a stub
                from hot_path import hot_path

                results["hot_path"] = await hot_path(client, config)
            else:
                raise ValueError(f"unknown task {task!r}")
            results.setdefault("task_seconds", {})[task] = time.perf_counter() - started
    finally:
        await client.close()
    return results
