"""The benchmark harness: llmbackend side by side with raw clients and peer SDKs.

Run ``make bench`` (or ``benchmarks/.venv-peers/bin/python benchmarks/run.py``); add
``--quick`` (or ``BENCH_QUICK=1``) for a one-minute smoke run with small counts.

The fake server (``fake_server.py``) runs in its own process pinned to the last CPU; every
client is measured in fresh worker processes (``worker.py``) pinned to the first CPU, one
client at a time, so imports and state never leak from one client into another. The
llmbackend-only section (``sdk_only.py``) runs with the SDK's own virtualenv. Results go
to ``benchmarks/results/``: ``results.json`` (raw), ``RESULTS.md`` and PNG charts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from clients import CLIENTS, IMPORT_ONLY, client_environment  # noqa: E402
from report import write_report  # noqa: E402

#: Clients whose RSS drift is measured: the full variant's path includes the plain one's
#: (the peers would need minutes per 100,000 calls).
DRIFT_CLIENTS = ("llmbackend-full",)
#: Clients profiled with pyinstrument (the per-request loop, and the first call).
PROFILED = ("aiohttp", "llmbackend", "llmbackend-full")
PEER_PACKAGES = (
    "aiohttp",
    "httpx",
    "openai",
    "litellm",
    "pydantic-ai-slim",
    "llmbackend",
    "matplotlib",
)

FULL: dict[str, Any] = {
    "import_reps": 3,
    "warmup": 100,
    "reps": 3,
    "requests": 1000,
    # A slow client does fewer calls per repetition (never fewer than min_requests) so
    # that one repetition takes about rep_budget_s; the count used is in the results.
    "min_requests": 200,
    "rep_budget_s": 3.0,
    "embed_requests": 300,
    "stream_warmup": 3,
    "stream_reps": 3,
    "streams_20": 100,
    "streams_500": 10,
    "concurrency": [64, 256, 1024],
    "delays_ms": [0, 50],
    "load_warmup_s": 0.3,
    "load_warmup_cap_s": 3.0,
    "windows": 3,
    "window_s": 0.6,
    "drain_s": 1.0,
    "in_flight": 1000,
    "hold_ms": 5000,
    "memory_grace_s": 1.0,
    "drift_requests": 100_000,
    "drift_concurrency": 128,
    "profile_requests": 400,
    "hot_path_calls": 2000,
    "sdk_iterations": 1000,
    "sdk_telemetry_requests": 300,
    "sdk_telemetry_rounds": 5,
    "sdk_fan_out_rounds": 10,
}
QUICK: dict[str, Any] = {
    **FULL,
    "import_reps": 1,
    "warmup": 20,
    "reps": 2,
    "requests": 100,
    "min_requests": 20,
    "rep_budget_s": 0.5,
    "embed_requests": 20,
    "stream_warmup": 1,
    "stream_reps": 1,
    "streams_20": 10,
    "streams_500": 2,
    "concurrency": [64],
    "delays_ms": [0],
    "load_warmup_s": 0.1,
    "load_warmup_cap_s": 0.5,
    "windows": 1,
    "window_s": 0.3,
    "drain_s": 0.3,
    "in_flight": 100,
    "hold_ms": 500,
    "memory_grace_s": 0.5,
    "drift_requests": 1000,
    "profile_requests": 0,
    "hot_path_calls": 300,
    "sdk_iterations": 100,
    "sdk_telemetry_requests": 50,
    "sdk_telemetry_rounds": 1,
    "sdk_fan_out_rounds": 2,
}


def pinning() -> tuple[int | None, int | None]:
    """(client CPU, server CPU): the first and last allowed CPU when there are two or more."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[-1]) if len(cpus) >= 2 else (None, None)


def pinned(cpu: int | None) -> Any:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    """The fake server process; ``url`` once it listens."""

    def __init__(self, cpu: int | None) -> None:
        command = [sys.executable, str(HERE / "fake_server.py"), "--port", "0"]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def compile_bytecode() -> None:
    """Installed packages have bytecode caches (pip writes them); llmbackend, installed from
    the checkout, gets them here, so that no import measures compilation."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "llmbackend")],
        env=client_environment("llmbackend"),
        check=True,
    )


def run_worker(
    client: str, url: str, tasks: list[str], config: dict[str, Any], cpu: int | None
) -> dict[str, Any]:
    """One fresh worker process; its JSON result, or ``{"error": ...}``."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [
        sys.executable,
        str(HERE / "worker.py"),
        client,
        url,
        ",".join(tasks),
        out,
        json.dumps(config),
    ]
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command,
            env=client_environment(client),
            preexec_fn=pinned(cpu),  # only sets the CPU affinity
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        Path(out).unlink(missing_ok=True)
        return {"error": "the worker timed out after 600 s"}
    if completed.returncode != 0:
        Path(out).unlink(missing_ok=True)
        return {"error": completed.stderr[-3000:] or f"exit {completed.returncode}"}
    result: dict[str, Any] = json.loads(Path(out).read_text(encoding="utf-8"))
    Path(out).unlink(missing_ok=True)
    result["worker_seconds"] = time.perf_counter() - started
    return result


def sdk_python() -> str:
    """The SDK's own virtualenv (``make install``), where the state stores' extras live."""
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def run_sdk_only(config: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [sdk_python(), str(HERE / "sdk_only.py"), out, json.dumps(config)]
    try:
        completed = subprocess.run(
            command,
            env=client_environment("llmbackend"),
            preexec_fn=pinned(cpu),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if completed.returncode != 0:
            return {"error": completed.stderr[-3000:]}
        loaded: dict[str, Any] = json.loads(Path(out).read_text(encoding="utf-8"))
        return loaded
    finally:
        Path(out).unlink(missing_ok=True)


def machine(client_cpu: int | None, server_cpu: int | None) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for package in PEER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "versions": versions,
    }


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.getenv("BENCH_QUICK")))
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/ (quick: results/quick/)"
    )
    parser.add_argument("--skip-sdk-only", action="store_true")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request under valgrind (about 4 extra minutes)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite RESULTS.md and the charts from the results.json already in --out",
    )
    arguments = parser.parse_args()
    config = QUICK if arguments.quick else FULL
    out: Path = arguments.out or (
        HERE / "results" / "quick" if arguments.quick else HERE / "results"
    )
    if arguments.report_only:
        write_report(json.loads((out / "results.json").read_text(encoding="utf-8")), out)
        return
    clients = [name for name in arguments.clients.split(",") if name]
    started = time.perf_counter()
    client_cpu, server_cpu = pinning()
    if client_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})  # the harness itself stays off the client's CPU
    results: dict[str, Any] = {
        "mode": "quick" if arguments.quick else "full",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": os.getloadavg(),
        "machine": machine(client_cpu, server_cpu),
        "config": config,
        "clients": {},
        "imports": {},
    }
    compile_bytecode()
    server = Server(server_cpu)
    log(f"fake server at {server.url}; client CPU {client_cpu}, server CPU {server_cpu}", started)
    try:
        config = {**config, "server_pid": server.process.pid}
        imported = [name for name in [*clients, *IMPORT_ONLY] if name != "litellm-router"]
        for name in imported:  # the first call is measured in the same fresh process
            results["imports"][name] = [
                run_worker(name, server.url, ["import"], config, client_cpu)
                for _ in range(config["import_reps"])
            ]
            log(f"import + first call: {name}", started)
        for name in clients:
            entry: dict[str, Any] = {}
            if name == "litellm-router":  # same import as litellm; its own first call
                entry["first_call_runs"] = [
                    run_worker(name, server.url, ["import"], config, client_cpu)
                    for _ in range(config["import_reps"])
                ]
            tasks = ["cpu", "stream", "memory", "throughput"]
            if name in DRIFT_CLIENTS:
                tasks.append("drift")
            if name in PROFILED and config["profile_requests"]:
                tasks.append("profile")
            if name == "llmbackend":
                tasks.append("hot_path")
            if name in PROFILED and config["profile_requests"] and name != "aiohttp":
                entry.update(
                    run_worker(name, server.url, ["first_call_profile"], config, client_cpu)
                )
            # One fresh process per client; the order keeps the memory measurement ahead of
            # the load that fills the connection pool.
            outcome = run_worker(name, server.url, tasks, config, client_cpu)
            if "error" in outcome:
                entry.setdefault("errors", {})[",".join(tasks)] = outcome.pop("error")
            entry.update(outcome)
            log(f"{name}: {', '.join(tasks)}", started)
            results["clients"][name] = entry
        if arguments.instructions:
            from instructions import per_request

            results["instructions"] = {
                name: per_request(name, server.url, client_environment(name))
                for name in ("aiohttp", "llmbackend", "llmbackend-full")
                if name in clients
            }
            log("instructions per request (valgrind)", started)
    finally:
        server.stop()
    if not arguments.skip_sdk_only:
        results["sdk_only"] = run_sdk_only({**config, "server_cpu": server_cpu}, client_cpu)
        log("llmbackend-only section", started)
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    write_report(results, out)
    log(f"done: {out / 'RESULTS.md'}", started)


if __name__ == "__main__":
    main()
