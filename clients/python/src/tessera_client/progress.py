"""A one-line progress display for ``wait(progress=...)``, with nothing but the standard library.

On a terminal the line is redrawn in place; elsewhere (a log, a pipe) a line is written only when the status or the
stage changes, so a log gets a handful of lines rather than one per poll.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tessera_client.models import Job

_WIDTH = 24


class ProgressLine:
    """Draws the progress of one job, labelled ``label``, on ``stream`` (stderr by default)."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last_key: tuple[str, str | None] | None = None
        self._drawn = False

    def update(self, job: Job) -> None:
        """Show ``job``'s state."""
        progress = job.progress
        fraction = 1.0 if job.status == "succeeded" else (progress.fraction if progress is not None else 0.0)
        fraction = min(1.0, max(0.0, fraction))
        stage = progress.stage if progress is not None else None
        filled = round(_WIDTH * fraction)
        parts = [f"{self._label:<28} [{'#' * filled}{'.' * (_WIDTH - filled)}] {100 * fraction:3.0f}% {job.status}"]
        if stage and job.status == "running":
            parts.append(stage)
        if progress is not None and progress.eta_seconds is not None and job.status == "running":
            parts.append(f"eta {progress.eta_seconds:.0f}s")
        if job.queue_position:
            parts.append(f"(#{job.queue_position} in queue)")
        text = " ".join(parts)
        if self._tty:
            self._stream.write("\r" + text.ljust(100)[:100])
            self._drawn = True
        else:
            key = (job.status, stage)
            if key == self._last_key:
                return
            self._last_key = key
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the line (on a terminal)."""
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
