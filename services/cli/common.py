"""What the ``tessera`` command groups share: the preset check, logging set-up, the stop signal and the settings of
the commands that forward their arguments to a tool's own parser."""

from __future__ import annotations

import signal
import threading
from typing import Any

import typer

from core.config import PRESET_GENERATION_DEFAULTS

PRESETS: tuple[str, ...] = tuple(PRESET_GENERATION_DEFAULTS)

# The shapes commands hand every argument, --help included, to the tool's own argparse parser: its options are
# defined (and documented) once, there, and typer would otherwise answer --help with a generic page.
FORWARD_ALL: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def check_preset(value: str) -> str:
    """The --preset options take the presets the service knows (a custom preset is selected with
    ``TESSERA_MODELS__PRESET`` by ``tessera api`` / ``tessera worker``)."""
    if value not in PRESETS:
        raise typer.BadParameter(f"must be one of {', '.join(PRESETS)}, got {value!r}")
    return value


def configure_logging() -> None:
    """JSON logging on the root logger, for the commands that run a long-lived part."""
    from services import logs

    logs.configure()


def stop_on_signal() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM; installed before starting anything, so a signal that arrives
    during start-up still leads to an orderly stop instead of killing the parent mid-start."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
