"""What the reliability suite tried and what survived, gathered across pytest-xdist workers into one line.

Tests call ``record``; entries go to JSON-lines files in the folder the controller names in
``TESSERA_RELIABILITY_LEDGER`` (workers inherit it), and ``summary_line`` reads them back at the end of the run.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

ENV = "TESSERA_RELIABILITY_LEDGER"


def record(kind: str, name: str, *, ok: bool, jobs: int = 0, lost: int = 0, doubled: int = 0) -> None:
    """Note one scenario: ``kind`` is ``fault``, ``burst``, ``hostile`` or ``tenant``; ``ok`` whether it survived.

    ``jobs`` is how many jobs it ran; ``lost`` those that never finished nor failed with a code, ``doubled``
    those finished more than once or with duplicate outputs.
    """
    folder = os.environ.get(ENV)
    if not folder:
        return
    entry = {"kind": kind, "name": name, "ok": ok, "jobs": jobs, "lost": lost, "doubled": doubled}
    with (Path(folder) / f"{os.getpid()}.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def summary_line(folder: Path) -> str | None:
    """One line over every entry in ``folder``; None when the suite recorded nothing (it did not run)."""
    entries = [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]
    if not entries:
        return None
    by: dict[str, list[dict[str, object]]] = defaultdict(list)
    for entry in entries:
        by[str(entry["kind"])].append(entry)

    def tally(kind: str) -> tuple[int, int, int, int, int]:
        rows = by.get(kind, [])
        ok = sum(1 for r in rows if r["ok"])
        return len(rows), ok, *(sum(int(r[k]) for r in rows) for k in ("jobs", "lost", "doubled"))  # type: ignore[call-overload]

    faults, faults_ok, jobs, lost, doubled = tally("fault")
    bursts, bursts_ok, burst_jobs, burst_lost, burst_doubled = tally("burst")
    hostile, hostile_ok, *_ = tally("hostile")
    routes, routes_ok, *_ = tally("tenant")
    return (
        f"reliability: {faults_ok}/{faults} fault scenarios survived ({jobs} jobs, {lost} lost, {doubled} doubled); "
        f"burst {burst_jobs} creates in {bursts_ok}/{bursts} runs ({burst_lost} lost, {burst_doubled} doubled); "
        f"{hostile_ok}/{hostile} hostile inputs refused with a 4xx and a code; "
        f"tenant crossing refused on {routes_ok}/{routes} id routes"
    )
