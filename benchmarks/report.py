"""``RESULTS.md``, ``results.json``, profiles and charts from the raw results of ``run.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from summary import LABELS, cell, fmt, med, metrics, ratio, targets

SUBJECTS = ("llmbackend", "llmbackend-full")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _header(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    pinning = (
        f"client pinned to CPU {machine['client_cpu']}, server to CPU {machine['server_cpu']}"
        if machine["client_cpu"] is not None
        else "no pinning (fewer than 2 CPUs)"
    )
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    start, end = results["load_average_start"], results.get("load_average_end", ["?"])
    lines = [
        "# Benchmark results",
        "",
        f"- **Date**: {results['date']} — **mode**: {results['mode']}"
        f" — **run time**: {results['seconds'] / 60:.1f} min",
        f"- **Machine**: {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}; "
        f"{pinning}",
        f"- **Versions**: {versions}",
        f"- **Load average** (1 min) at start {start[0]:.2f}, at end {end[0]:.2f}",
    ]
    if results["mode"] == "quick":
        lines.append("- Quick mode: small counts and one repetition; not numbers to quote.")
    if start[0] > 0.5:
        lines.append(
            "- The machine was busy when the run started (load average above 0.5): other "
            "processes shared the CPUs, so the absolute numbers are pessimistic and noisy; "
            "ratios measured in the same run are the figures to read."
        )
    lines += [
        "",
        "Medians of the repetitions; `[min-max]` is the spread. `x` ratios are to raw aiohttp "
        "measured in the same run. See `benchmarks/README.md` for the method.",
        "",
    ]
    return lines


def _summary(table: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    floor = table.get("aiohttp", {})
    rows = []
    for name in order:
        row = table[name]
        rows.append(
            [
                LABELS.get(name, name),
                fmt(row.get("import_ms"), 0),
                fmt(row.get("modules"), 0),
                fmt(row.get("first_ms"), 1),
                fmt(row.get("stall_ms"), 1),
                f"{fmt(row.get('cpu_us'), 0)} ({ratio(row.get('cpu_us'), floor.get('cpu_us'))})",
                f"{fmt(row.get('rps_256'), 0)} ({ratio(row.get('rps_256'), floor.get('rps_256'))})",
                f"{fmt(row.get('chunk_500_us'), 1)} "
                f"({ratio(row.get('chunk_500_us'), floor.get('chunk_500_us'))})",
                fmt(row.get("ttft_20_ms"), 2),
                fmt(row.get("rss_1000_mb"), 1),
                fmt(row.get("drift_pct"), 2) if row.get("drift_pct") is not None else "—",
            ]
        )
    return _table(
        [
            "client",
            "import ms",
            "modules",
            "first call ms",
            "longest stall ms",
            "CPU µs/request",
            "req/s at c256",
            "CPU µs/chunk",
            "TTFT ms",
            "MiB / 1,000 in flight",
            "RSS drift %",
        ],
        rows,
    )


def _versus(table: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    """llmbackend ÷ each other client, for every headline metric."""
    metrics_shown = [
        ("CPU per request (lower is better)", "cpu_us"),
        ("throughput c256, 0 ms (higher is better)", "rps_256"),
        ("streaming CPU per chunk (lower)", "chunk_500_us"),
        ("import time (lower)", "import_ms"),
        ("first call (lower)", "first_ms"),
        ("RSS per 1,000 in flight (lower)", "rss_1000_mb"),
    ]
    others = [name for name in order if name not in SUBJECTS]
    lines: list[str] = []
    for subject in SUBJECTS:
        if subject not in table:
            continue
        rows = [
            [label, *[ratio(table[subject].get(key), table[o].get(key)) for o in others]]
            for label, key in metrics_shown
        ]
        lines += [f"**{LABELS[subject]} ÷ each client**", ""]
        lines += _table(["metric", *[LABELS[o] for o in others]], rows)
    return lines


def _details(table: dict[str, dict[str, Any]], order: list[str], results: dict) -> list[str]:
    lines = ["## Import", ""]
    rows = []
    for name in [*order, "llmbackend deps"]:
        row = table.get(name)
        if not row or name == "litellm-router":
            continue
        rows.append(
            [
                LABELS.get(name, name),
                cell(row["import_s"], 1000, 0),
                fmt(row.get("modules"), 0),
                fmt(row.get("own_modules"), 0),
                fmt(row.get("import_rss_mb"), 1),
                "none" if not row.get("network") else "; ".join(row["network"]),
            ]
        )
    lines += _table(
        ["import", "wall ms", "modules", "llmbackend modules", "RSS MiB", "network"], rows
    )
    lines += ["## First call (construction → first answer)", ""]
    rows = []
    for name in order:
        runs = table[name]["first_runs"]
        if not runs:
            continue
        worst = max(runs, key=lambda run: run["longest_stall_seconds"])
        rows.append(
            [
                LABELS[name],
                cell(table[name]["first_s"], 1000, 1),
                cell([r["longest_stall_open_seconds"] for r in runs], 1000, 1),
                cell([r["longest_stall_request_seconds"] for r in runs], 1000, 1),
                cell([r["heartbeat_lag_seconds"] for r in runs], 1000, 1),
                cell([r["second_call_seconds"] for r in runs], 1000, 2),
                f"`{worst['stall_culprit'][:70]}`",
            ]
        )
    lines += _table(
        [
            "client",
            "first call ms",
            "stall: construction ms",
            "stall: first request ms",
            "heartbeat lag ms",
            "second call ms",
            "longest callback",
        ],
        rows,
    )
    lines += ["## Client CPU per request (sequential, after warm-up)", ""]
    rows = [
        [
            LABELS[name],
            cell(table[name]["cpu_s"], 1e6, 0),
            fmt(table[name].get("embed_us"), 0),
        ]
        for name in order
    ]
    lines += _table(["client", "chat CPU µs", "embeddings CPU µs"], rows)
    lines += _throughput(table, order)
    lines += ["## Streaming", ""]
    floor = table.get("aiohttp", {})
    rows = []
    for name in order:
        row = table[name]
        rows.append(
            [
                LABELS[name],
                fmt(row.get("ttft_20_ms"), 2),
                fmt(
                    row["ttft_20_ms"] - floor["ttft_20_ms"]
                    if row.get("ttft_20_ms") is not None and floor.get("ttft_20_ms") is not None
                    else None,
                    2,
                ),
                cell(row.get("chunk_20_s", []), 1e6, 1),
                cell(row.get("chunk_500_s", []), 1e6, 1),
                fmt(row.get("marginal_chunk_us"), 1),
                f"{row.get('wrong_20') or 0} / {row.get('wrong_500') or 0}",
            ]
        )
    lines += _table(
        [
            "client",
            "TTFT ms (20 chunks)",
            "TTFT overhead vs aiohttp ms",
            "CPU µs/chunk, 20-chunk",
            "CPU µs/chunk, 500-chunk",
            "marginal µs/chunk",
            "streams with a wrong chunk count",
        ],
        rows,
    )
    lines += ["## Memory", ""]
    rows = []
    for name in order:
        memory = table[name]["memory"]
        drift = table[name]["drift"]
        rows.append(
            [
                LABELS[name],
                fmt(memory.get("baseline_rss_mb"), 1),
                fmt(memory.get("rss_per_1000_in_flight_mb"), 1),
                f"{memory.get('in_flight_seen_by_server', 'n/a')}"
                f" / {memory.get('in_flight_requested', 'n/a')}"
                + (
                    f" ({memory['unfinished_cancelled']} cancelled unanswered)"
                    if memory.get("unfinished_cancelled")
                    else ""
                ),
                str(memory.get("errors", "n/a")),
                f"{drift['drift_fraction'] * 100:+.2f} % over {drift['requests']:,} requests"
                f" ({drift['rss_samples_mb'][0]:.1f} → {drift['rss_samples_mb'][-1]:.1f} MiB)"
                if drift
                else "not measured",
            ]
        )
    hold = results["config"]["hold_ms"]
    lines += [f"Requests held {hold} ms by the server; RSS sampled every 50 ms.", ""]
    lines += _table(
        [
            "client",
            "RSS before MiB",
            "MiB per 1,000 in flight",
            "held by server / sent",
            "errors",
            "RSS drift",
        ],
        rows,
    )
    return lines


def _throughput(table: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    keys = sorted(
        {key for name in order for key in table[name]["throughput"]},
        key=lambda key: tuple(int(part[1:]) for part in key.split("-")),
    )
    lines = ["## Throughput and latency (closed loop, N concurrent callers)", ""]
    for delay in sorted({key.split("-")[0] for key in keys}, key=lambda d: int(d[1:])):
        subset = [key for key in keys if key.startswith(delay + "-")]
        header = ["client"]
        for key in subset:
            concurrency = key.split("-")[1][1:]
            header += [f"c{concurrency} req/s", f"c{concurrency} p50 / p99 ms"]
        header += ["errors", "server CPU share"]
        rows = []
        for name in order:
            data = table[name]["throughput"]
            row = [LABELS[name]]
            for key in subset:
                found = data.get(key)
                if found and found.get("saturated"):
                    row += ["saturated at 0 ms*", "-"]
                    continue
                row += (
                    [cell(found["rps"], 1, 0), f"{fmt(found['p50_ms'])} / {fmt(found['p99_ms'])}"]
                    if found
                    else ["n/a", "n/a"]
                )
            measured = [k for k in subset if k in data and not data[k].get("saturated")]
            row.append(str(sum(data[k]["errors"] for k in measured)))
            row.append(" / ".join(fmt(data[k]["server_cpu"], 2) for k in measured) or "n/a")
            rows.append(row)
        lines += [f"Server delay {delay[1:]} ms:", ""]
        lines += _table(header, rows)
    lines += [
        "\\* The client could not give all its callers a turn within the warm-up cap at 0 ms: "
        "it is CPU-bound at that concurrency, so the run with the server delay is skipped (it "
        "would show the same ceiling, only slower to reach).",
        "",
    ]
    return lines


def _sdk_only(sdk: dict[str, Any]) -> list[str]:
    lines = ["## llmbackend-only costs", ""]
    if "error" in sdk:
        return [*lines, f"Failed: `{sdk['error'][-500:]}`", ""]
    rows = [
        [kind, fmt(v["cache_hit_us"]), fmt(v["budget_us"]), fmt(v["rate_limit_us"])]
        for kind, v in sdk["state"].items()
    ]
    lines += ["Store operations alone (`bench_state.py`), µs per operation:", ""]
    lines += _table(["store", "cache hit", "budget reserve + settle", "rate limit"], rows)
    base = sdk["service"].get("no cache, no budget")
    rows = [
        [name, fmt(value), f"{value - base:+.1f}" if base is not None else "n/a"]
        for name, value in sdk["service"].items()
    ]
    lines += ["Whole `service.chat` against an in-process FakeBackend, CPU µs per request:", ""]
    lines += _table(["variant", "CPU µs", "Δ vs no cache, no budget"], rows)
    off = sdk["telemetry"]["off"]
    rows = [
        [
            name,
            fmt(v["chat_us"]),
            f"{v['chat_us'] - off['chat_us']:+.1f}",
            fmt(v["stream_us"]),
            f"{v['stream_us'] - off['stream_us']:+.1f}",
        ]
        for name, v in sdk["telemetry"].items()
    ]
    lines += ["Telemetry on vs off (`bench_telemetry.py`), CPU µs per request:", ""]
    lines += _table(["telemetry", "chat", "Δ chat", "stream", "Δ stream"], rows)
    fan = sdk["fan_out"]
    after_deadline, unwind = fan["loser_cancel_after_deadline_ms"], fan["caller_cancel_unwind_ms"]
    lines += [
        "Fan-out (simultaneous strategy; one backend answers at once, the other is held 5 s; "
        f"deadline {fan['deadline_seconds'] * 1000:.0f} ms):",
        "",
        f"- the call returns after {fan['answer_seconds_median'] * 1000:.1f} ms (median): "
        "the fast answer waits for the deadline while the held branch runs;",
        f"- held loser cancelled and awaited within {fmt(med(after_deadline), 2)} ms of the "
        f"deadline (median; max {fmt(max(after_deadline), 2)} ms);",
        f"- a caller's cancellation unwinds both branches in {fmt(med(unwind), 2)} ms "
        f"(median; max {fmt(max(unwind), 2)} ms).",
        "",
    ]
    return lines


def _hot_path(results: dict[str, Any], table: dict[str, dict[str, Any]]) -> list[str]:
    hot = results["clients"].get("llmbackend", {}).get("hot_path")
    lines: list[str] = []
    if hot:
        ours, floor = table["llmbackend"].get("cpu_us"), table.get("aiohttp", {}).get("cpu_us")
        gap = f"{ours - floor:.0f} µs" if ours is not None and floor is not None else "n/a"
        lines += [
            "## Where llmbackend's per-request CPU goes",
            "",
            f"Measured end to end, llmbackend adds {gap} of CPU per request over raw aiohttp "
            "(sequential). Each step of the plain service's hot path alone "
            f"(`hot_path.py`, best of 5 x {hot['calls']:,} calls, GC paused):",
            "",
        ]
        rows = [
            [row["step"], fmt(row["us"], 1) if isinstance(row["us"], float) else row["us"]]
            for row in hot["rows"]
        ]
        lines += _table(["step", "CPU µs per call"], rows)
    counts = results.get("instructions")
    if counts:
        floor_count = counts.get("aiohttp")
        rows = [
            [LABELS[name], f"{count:,.0f}" if count else "n/a", ratio(count, floor_count)]
            for name, count in counts.items()
        ]
        lines += [
            "Instructions per request under valgrind (user space; independent of machine load):",
            "",
        ]
        lines += _table(["client", "instructions / request", "x raw aiohttp"], rows)
    return lines


def write_report(results: dict[str, Any], out: Path) -> None:
    for stale in out.glob("*profile_*.txt"):
        stale.unlink()
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    table = metrics(results)
    order = [name for name in LABELS if name in results["clients"]]
    for name, entry in results["clients"].items():
        for kind in ("profile", "first_call_profile"):
            if kind in entry:
                (out / f"{kind}_{name}.txt").write_text(entry[kind]["text"], encoding="utf-8")
    lines = _header(results)
    lines += ["## Summary", ""]
    lines += _summary(table, order)
    lines += [
        "`CPU µs/chunk`: 500-chunk stream. `TTFT`: 20-chunk stream, sequential. "
        "`req/s at c256`: server delay 0 ms.",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "measured", "result"],
        [
            [target, measured, "n/a" if met is None else ("met" if met else "**missed**")]
            for target, measured, met in targets(table)
        ],
    )
    lines += ["## llmbackend against each client", ""]
    lines += _versus(table, order)
    lines += _details(table, order, results)
    lines += _hot_path(results, table)
    if "sdk_only" in results:
        lines += _sdk_only(results["sdk_only"])
    errors = {name: row["errors"] for name, row in table.items() if row.get("errors")}
    if errors:
        lines += ["## Worker failures", ""]
        for name, failures in errors.items():
            for tasks, text in failures.items():
                lines += [f"- {name} ({tasks}): `{text.strip().splitlines()[-1][:300]}`"]
        lines.append("")
    profiles = sorted(path.name for path in out.glob("*profile_*.txt"))
    if profiles:
        lines += ["## Profiles", "", *[f"- [{name}]({name})" for name in profiles], ""]
    lines += ["## Charts", ""]
    try:
        from charts import draw

        for chart in draw(table, order, out):
            lines += [f"![{chart}]({chart})", ""]
    except ImportError as exc:
        lines += [f"Charts skipped: {exc}", ""]
    (out / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[: lines.index("## llmbackend against each client")]))
