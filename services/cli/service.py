"""The commands that run the service: ``serve`` (everything on one machine), ``api`` and ``worker``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import check_preset, configure_logging, stop_on_signal


def serve(
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where Redis data, objects, models and logs live.")] = Path("data"),
    preset: Annotated[str, typer.Option(help="Model preset: tiny | shapes | sd15.", callback=check_preset)] = "tiny",
) -> None:
    """Everything on one machine: a private Redis, the API, one worker, a local object store."""
    from services.embedded import Stack

    stop = stop_on_signal()
    stack = Stack(data_dir=data_dir, preset=preset, host=host, port=port, log_to_files=False)
    stack.start()
    try:
        typer.echo(f"Tessera listening on {stack.url}  (API key: {stack.api_key}, tenant: local)")
        typer.echo(f"data in {stack.data_dir}; Ctrl-C stops everything")
        stop.wait()
    finally:
        typer.echo("stopping…")
        stack.stop()


def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (settings from TESSERA_* variables)."""
    import uvicorn

    configure_logging()
    typer.echo(f"Tessera API listening on http://{host}:{port}")
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
    )


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: train, generate (GPU) or webhooks (no GPU).")
    ] = "train,generate",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a GPU worker: one job at a time, models loaded on the first job."""
    from services.worker.app import make_celery

    configure_logging()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    celery = make_celery(queues=names)
    typer.echo(f"Tessera worker consuming {queues}")
    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--hostname=tessera@%h",
        ]
    )
