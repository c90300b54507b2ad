"""Embedded mode: a private Redis, the API and one worker on one machine, with a local object store.

``Stack`` is what ``tessera serve`` and ``tessera demo`` run, and what the integration tests start:
the real processes a user runs, talking over real sockets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.processes import Child, free_port, python_module, start_redis, wait_for


@dataclass
class Stack:
    """Start with ``start()``, stop with ``stop()`` (or use it as a context manager).

    Args:
        data_dir: everything lives below it: redis/, objects/, models/, adapter-cache/, logs/.
        preset: the model preset the worker loads.
        host, port: where the API listens (port 0 = a free port).
        api_keys: ``tenant:key,…``; a random key for tenant ``local`` when omitted.
        extra_env: further ``TESSERA_*`` settings for the API and the worker.
        log_to_files: write children's output to data_dir/logs instead of the terminal.
    """

    data_dir: Path
    preset: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 0
    api_keys: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    log_to_files: bool = True
    redis_url: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    _workers: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The first configured key (the generated one unless ``api_keys`` was given)."""
        return (self.api_keys or ":").split(",")[0].split(":", 1)[1]

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.port = self.port or free_port()
        if self.api_keys is None:
            self.api_keys = f"local:{secrets.token_urlsafe(24)}"

    def _log(self, name: str) -> Path | None:
        if not self.log_to_files:
            return None
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        return self.data_dir / "logs" / f"{name}.log"

    def env(self) -> dict[str, str]:
        d = self.data_dir
        return {
            "TESSERA_REDIS__URL": self.redis_url,
            "TESSERA_STORAGE__BACKEND": "local",
            "TESSERA_STORAGE__ROOT": str(d / "objects"),
            "TESSERA_STORAGE__PUBLIC_BASE_URL": self.url,
            "TESSERA_STORAGE__URL_SECRET": self._url_secret(),
            "TESSERA_MODELS__PRESET": self.preset,
            "TESSERA_MODELS__ROOT": str(d / "models"),
            "TESSERA_MODELS__ADAPTER_CACHE_DIR": str(d / "adapter-cache"),
            "TESSERA_API_KEYS": self.api_keys or "",
            "HF_HUB_OFFLINE": "1",
            **self.extra_env,
        }

    def _url_secret(self) -> str:
        path = self.data_dir / "url-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def start(self) -> Stack:
        try:
            redis_child, self.redis_url = start_redis(self.data_dir / "redis", log=self._log("redis"))
            self.children["redis"] = redis_child
            self._start_api()
            self.start_worker()
            self.start_worker("webhooks")
        except BaseException:
            self.stop()
            raise
        return self

    def restart_api(self) -> None:
        """Stop the API process and start a new one on the same address (clients reconnect to it)."""
        self.children.pop("api").stop()
        self._start_api()

    def _start_api(self) -> None:
        api = Child(
            "api",
            python_module("services.cli", "api", "--host", self.host, "--port", str(self.port)),
            env=self.env(),
            log=self._log("api"),
        )
        self.children["api"] = api
        wait_for(
            lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            what=f"the API at {self.url}",
            child=api,
        )

    def start_worker(self, queues: str = "train,generate") -> Child:
        """Start one more worker process: a GPU worker (``worker``, ``worker-2``, …) or ``webhooks``."""
        if queues == "webhooks":
            name = "webhooks"
        else:
            self._workers += 1
            name = "worker" if self._workers == 1 else f"worker-{self._workers}"
        port = free_port()
        self.metrics_ports[name] = port
        # Metrics listen where the API does (loopback unless the caller chose otherwise).
        env = {**self.env(), "TESSERA_WORKER__METRICS_PORT": str(port), "TESSERA_WORKER__METRICS_HOST": self.host}
        argv = python_module("services.cli", "worker", "--queues", queues)
        child = Child(name, argv, env=env, log=self._log(name))
        self.children[name] = child
        return child

    def stop(self) -> None:
        """Stop workers first (they finish or hand back their job), then the API, then Redis."""
        workers = [c for n, c in self.children.items() if n not in ("api", "redis")]
        for child in workers:  # all at once: their warm shutdowns overlap
            child.terminate()
        for child in workers:
            child.stop()
        for name in ("api", "redis"):
            if name in self.children:
                self.children[name].stop()
        self.children.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
