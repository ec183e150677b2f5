"""``RedisServer``: a real, throw-away ``redis-server`` on 127.0.0.1 for tests and benchmarks.

It binds a free port, persists nothing (``--save "" --appendonly no``), works in its own
directory, is ready when it answers ``PING`` (polled, with a bounded timeout) and is stopped
(terminate, then kill) on exit::

    with RedisServer(tmp_dir) as server:
        store = await open_store("redis", server.url)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["RedisServer", "redis_server_available"]


def redis_server_available() -> bool:
    """Whether a ``redis-server`` executable is on ``PATH``."""
    return shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process, started on ``__enter__`` and stopped on ``__exit__``."""

    def __init__(self, directory: Path, *, startup_timeout: float = 10.0) -> None:
        self.directory = directory
        self.port = 0
        self._timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers (a port lost to a race: try another)."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                self._launch(executable)
            except RuntimeError:
                if attempt == 2:
                    raise
            else:
                return

    def _launch(self, executable: str) -> None:
        self.port = _free_port()
        log = self.directory / "redis.log"
        arguments = [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(log),
        ]  # fmt: skip
        self._process = subprocess.Popen(  # noqa: S603  # a fixed executable and arguments
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self._timeout
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}\n{detail}")
            time.sleep(0.01)  # polling interval while the server boots, not a timing guess

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
