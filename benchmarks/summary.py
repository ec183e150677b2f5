"""Medians, spreads, ratios and targets from the raw results of ``run.py``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

LABELS = {
    "aiohttp": "raw aiohttp",
    "httpx": "raw httpx",
    "openai": "openai SDK",
    "litellm": "LiteLLM acompletion",
    "litellm-router": "LiteLLM Router",
    "pydantic-ai": "pydantic-ai",
    "llmbackend": "llmbackend",
    "llmbackend-full": "llmbackend (full)",
    "llmbackend deps": "llmbackend's dependencies",
}
#: The SDKs llmbackend is compared with (raw aiohttp and httpx are the floor, not peers).
PEERS = ("openai", "litellm", "litellm-router", "pydantic-ai")


def clean(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def med(values: Iterable[float | None]) -> float | None:
    kept = clean(values)
    return statistics.median(kept) if kept else None


def spread(values: Iterable[float | None]) -> tuple[float, float] | None:
    kept = clean(values)
    return (min(kept), max(kept)) if kept else None


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000 and digits <= 1:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def cell(values: Iterable[float | None], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min-max]`` of ``values`` x ``scale``."""
    kept = [v * scale for v in clean(values)]
    if not kept:
        return "n/a"
    if len(kept) == 1:
        return fmt(kept[0], digits)
    low, high = min(kept), max(kept)
    return f"{fmt(statistics.median(kept), digits)} [{fmt(low, digits)}-{fmt(high, digits)}]"


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> str:
    if numerator is None or denominator in (None, 0):
        return "n/a"
    return f"{numerator / denominator:.{digits}f}x"


def import_runs(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if name == "litellm-router":
        return results["clients"].get(name, {}).get("first_call_runs", [])
    return [run for run in results["imports"].get(name, []) if "error" not in run]


def metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per client: every headline number (medians, in ms / µs / MiB / req/s)."""
    table: dict[str, dict[str, Any]] = {}
    names = [*results["clients"], *[n for n in results["imports"] if n not in results["clients"]]]
    for name in names:
        row: dict[str, Any] = {}
        imports = import_runs(results, "litellm" if name == "litellm-router" else name)
        row["import_s"] = [run["import"]["seconds"] for run in imports]
        row["import_ms"] = med(s * 1000 for s in row["import_s"])
        if imports:
            row["modules"] = med(run["import"]["modules"] for run in imports)
            row["own_modules"] = med(run["import"]["own_modules"] for run in imports)
            row["import_rss_mb"] = med(run["import"]["rss_mb"] for run in imports)
            row["network"] = sorted(
                {attempt for run in imports for attempt in run["import"]["network_attempts"]}
            )
        first = [run["first_call"] for run in import_runs(results, name) if "first_call" in run]
        row["first_s"] = [run["seconds"] for run in first]
        row["first_ms"] = med(s * 1000 for s in row["first_s"])
        row["stall_s"] = [run["longest_stall_seconds"] for run in first]
        row["stall_ms"] = med(s * 1000 for s in row["stall_s"])
        row["first_runs"] = first
        entry = results["clients"].get(name, {})
        cpu = entry.get("cpu", {})
        row["cpu_s"] = cpu.get("cpu_per_request", [])
        row["cpu_us"] = med(s * 1e6 for s in row["cpu_s"])
        row["embed_us"] = med(s * 1e6 for s in cpu.get("embed_cpu_per_request", []))
        row["throughput"] = {}
        for key, config in entry.get("throughput", {}).items():
            if config.get("saturated_at_0_ms"):
                row["throughput"][key] = {"saturated": True, "rps": [], "errors": 0}
                continue
            windows = config["windows"]
            row["throughput"][key] = {
                "rps": [w["throughput"] for w in windows],
                "p50_ms": med(w["p50"] * 1000 for w in windows),
                "p99_ms": med(w["p99"] * 1000 for w in windows),
                "errors": sum(w["errors"] for w in windows),
                "server_cpu": med(w["server_cpu_share"] for w in windows),
                "cpu_under_load_us": med(
                    w["client_cpu_per_request"] * 1e6
                    for w in windows
                    if w["client_cpu_per_request"] is not None
                ),
            }
        c256 = row["throughput"].get("d0-c256")
        row["rps_256"] = med(c256["rps"]) if c256 else None
        stream = entry.get("stream", {})
        for chunks in ("20", "500"):
            data = stream.get(chunks, {})
            row[f"chunk_{chunks}_us"] = med(s * 1e6 for s in data.get("cpu_per_chunk", []))
            row[f"chunk_{chunks}_s"] = data.get("cpu_per_chunk", [])
            row[f"stream_{chunks}_us"] = med(s * 1e6 for s in data.get("cpu_per_stream", []))
            row[f"ttft_{chunks}_ms"] = (
                data["ttft_median"] * 1000 if data.get("ttft_median") is not None else None
            )
            row[f"wrong_{chunks}"] = data.get("streams_with_wrong_chunk_count")
        if row["stream_500_us"] is not None and row["stream_20_us"] is not None:
            row["marginal_chunk_us"] = (row["stream_500_us"] - row["stream_20_us"]) / 480
        memory = entry.get("memory", {})
        row["memory"] = memory
        row["rss_1000_mb"] = memory.get("rss_per_1000_in_flight_mb")
        drift = entry.get("drift")
        row["drift"] = drift
        row["drift_pct"] = drift["drift_fraction"] * 100 if drift else None
        row["errors"] = entry.get("errors", {})
        table[name] = row
    return table


def targets(table: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of issue #8 (None: not measured)."""
    rows: list[tuple[str, str, bool | None]] = []

    def get(name: str, key: str) -> float | None:
        value: float | None = table.get(name, {}).get(key)
        return value

    def add(target: str, measured: str, met: bool | None) -> None:
        rows.append((target, measured, met))

    floor = get("aiohttp", "cpu_us")
    for name in ("llmbackend", "llmbackend-full"):
        ours = get(name, "cpu_us")
        label = LABELS[name]
        if ours and floor:
            add(
                f"{label}: client CPU per request ≤ 1.5x raw aiohttp",
                f"{ours:.0f} µs vs {floor:.0f} µs = {ours / floor:.2f}x",
                ours <= 1.5 * floor,
            )
        router = get("litellm-router", "cpu_us")
        if ours and router:
            add(
                f"{label}: ≥ 10x less CPU per request than LiteLLM Router",
                f"{router:.0f} µs vs {ours:.0f} µs = {router / ours:.1f}x less",
                router >= 10 * ours,
            )
        rps, floor_rps = get(name, "rps_256"), get("aiohttp", "rps_256")
        if rps and floor_rps:
            add(
                f"{label}: throughput at c256 (0 ms) ≥ 0.65x raw aiohttp",
                f"{rps:,.0f} vs {floor_rps:,.0f} req/s = {rps / floor_rps:.2f}x",
                rps >= 0.65 * floor_rps,
            )
            peers = {peer: get(peer, "rps_256") for peer in PEERS if get(peer, "rps_256")}
            if peers:
                best = max(peers, key=lambda peer: peers[peer] or 0.0)
                add(
                    f"{label}: throughput at c256 (0 ms) above every peer SDK",
                    f"{rps:,.0f} req/s vs best peer {LABELS[best]} {peers[best]:,.0f} req/s",
                    all(rps > value for value in peers.values() if value is not None),
                )
        chunk, floor_chunk = get(name, "chunk_500_us"), get("aiohttp", "chunk_500_us")
        if chunk and floor_chunk:
            add(
                f"{label}: streaming CPU per chunk (500-chunk stream) ≤ 2x raw aiohttp",
                f"{chunk:.1f} µs vs {floor_chunk:.1f} µs = {chunk / floor_chunk:.2f}x",
                chunk <= 2 * floor_chunk,
            )
        stall = get(name, "stall_ms")
        if stall is not None:
            add(
                f"{label}: no event-loop stall over 5 ms from construction to first answer",
                f"longest callback {stall:.1f} ms (median of runs)",
                stall <= 5.0,
            )
        drift = get(name, "drift_pct")
        if drift is not None:
            add(f"{label}: RSS drift over the drift run < 5 %", f"{drift:+.2f} %", drift < 5.0)
    ours, deps = get("llmbackend", "import_ms"), get("llmbackend deps", "import_ms")
    if ours and deps:
        add(
            "`import llmbackend` ≤ 1.3x importing its dependencies",
            f"{ours:.0f} ms vs {deps:.0f} ms = {ours / deps:.2f}x",
            ours <= 1.3 * deps,
        )
    litellm = get("litellm", "import_ms")
    if ours and litellm:
        add(
            "`import llmbackend` < 1/6 of `import litellm`",
            f"{ours:.0f} ms vs {litellm:.0f} ms = 1/{litellm / ours:.1f}",
            ours * 6 < litellm,
        )
    own = get("llmbackend", "own_modules")
    if own is not None:
        add("llmbackend's own modules loaded at import < 60", f"{own:.0f}", own < 60)
    network = table.get("llmbackend", {}).get("network")
    if network is not None:
        add(
            "no network at `import llmbackend`",
            "none" if not network else "; ".join(network),
            not network,
        )
    return rows
