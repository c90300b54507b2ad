"""The benchmark suite: every CPU benchmark, one table of side-by-side ratios, ``bench/results.json``
(the rows) and ``bench/results.env.json`` (when, on what machine, how long each benchmark took).

    make bench                      # = .venv/bin/python -m bench
    .venv/bin/python -m bench [--only create_path training ...] [--quick] [--out bench/results.json]

Each benchmark runs in its own process (its own torch threads and memory; a crash costs only its rows), sets one
torch thread count for all its arms, and writes its rows (``bench.rows.Row``) to a temporary file; the suite
gathers them. A row is a ratio or a difference of two arms measured in the same run, arms alternating, median of
several, because absolute times on a shared machine mean little. A benchmark that fails is reported and makes the
suite exit non-zero; the rows of the others are still written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.rows import Row, format_table, read_rows


@dataclass(frozen=True)
class Benchmark:
    """One module of the suite: ``python -m <module> --rows FILE``, with its own defaults."""

    name: str
    module: str
    what: str


SUITE: tuple[Benchmark, ...] = (
    Benchmark("service_overhead", "bench.job_overhead", "a job through API, queue and warm worker vs in process"),
    Benchmark("create_path", "bench.api_throughput", "POST /v1/generations vs a bare endpoint under load"),
    Benchmark("cold_start", "bench.cold_start", "first job vs warm; concept switch vs pipeline reload"),
    Benchmark("training", "bench.training_throughput", "the ED-LoRA trainer vs a plain baseline loop"),
    Benchmark("generation", "bench.fusion_cost", "fusion and styling steps vs plain sampling"),
    Benchmark("separation", "bench.separation_step_time", "training step with vs without the separation loss"),
)


def run_benchmark(bench: Benchmark, *, quick: bool, workdir: Path) -> tuple[list[Row], str, float]:
    """Run one benchmark; returns its rows, its output (stdout + stderr) and its wall seconds.

    Raises:
        RuntimeError: the benchmark exited non-zero or wrote no rows (the message holds its output's tail).
    """
    rows_file = workdir / f"{bench.name}.json"
    command = [sys.executable, "-m", bench.module, "--rows", str(rows_file)]
    if quick:
        command.append("--quick")
    # Each benchmark sets one torch thread count for all its arms (--threads, default 1: the worker's default).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0 or not rows_file.exists():
        raise RuntimeError(f"{bench.module} exited {done.returncode}:\n{output[-3000:]}")
    return read_rows(rows_file), output, seconds


def _environment() -> dict[str, object]:
    import torch  # imported here: the suite's own process needs it only to describe the machine

    return {
        "machine": platform.machine(),
        "processor_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=[b.name for b in SUITE], help="run these benchmarks only")
    parser.add_argument("--quick", action="store_true", help="each benchmark's smoke run (seconds; for tests)")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--verbose", action="store_true", help="print each benchmark's own output")
    args = parser.parse_args(argv)
    chosen = [b for b in SUITE if args.only is None or b.name in args.only]
    rows: list[Row] = []
    failures: list[str] = []
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        for bench in chosen:
            print(f"[{bench.name}] {bench.what} ...", flush=True)
            try:
                got, output, seconds = run_benchmark(bench, quick=args.quick, workdir=Path(tmp))
            except RuntimeError as error:
                failures.append(bench.name)
                print(f"[{bench.name}] FAILED: {error}", flush=True)
                continue
            timings[bench.name] = round(seconds, 1)
            rows += got
            if args.verbose:
                print(output)
            print(f"[{bench.name}] {len(got)} rows in {seconds:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The file is the list of rows the issue asks for; when and where it was measured goes in a sibling file.
    args.out.write_text(json.dumps([r.as_json() for r in rows], indent=2) + "\n", encoding="utf-8")
    context = {
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "environment": _environment(),
        "seconds": timings,
        "failed": failures,
    }
    args.out.with_suffix(".env.json").write_text(json.dumps(context, indent=2) + "\n", encoding="utf-8")
    missed = [r.name for r in rows if r.ok is False]
    print()
    print(format_table(rows))
    print(
        f"\n{len(rows)} rows, {sum(r.ok is True for r in rows)} targets met, {len(missed)} missed"
        f"{': ' + ', '.join(missed) if missed else ''}; {sum(timings.values()):.0f} s; wrote {args.out}"
    )
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
