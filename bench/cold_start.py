"""Cold start and caching: a worker's first job against the same job warm, and switching concepts on a warm
resident pipeline against reloading the pipeline.

Three measurements, each side by side in one run:

1. *First job vs warm* (tiny preset, through a running embedded stack: HTTP API, Redis, a real Celery worker). A
   concept is trained, the worker is stopped, its local adapter files are deleted, and a new worker is started; once
   it is ready (its start-up is reported, not counted), the same generation job is sent to it several times. The
   first one pays what a fresh worker pays: loading the preset from disk, fetching and reading the adapter, and
   first-call allocations. ``--quick`` sends a job without a concept to the stack's first worker instead (no
   training, no restart), so only the model load is in it.
2. *Concept switch vs reload* (SD 1.5-shaped random weights, ``bench.sd15``, with random adapters of the
   service's default rank on its targets, ``bench.sd15.random_edlora``; the tiny preset with ``--quick``). A
   switch is what the worker does per concept per job: read the adapter file (a concept's first use by a worker
   process; later ones are in-memory hits, so this is the worst case short of a download), attach its LoRA to the
   resident text encoder and UNet (``core.ml.fusion.paths.attach_concepts``, what every fusion method calls), and
   detach it again; two adapters take turns, so every switch is to another concept. It is measured with the kept
   peft wrappers (``core.ml.edlora.lora``) and, as before they existed, with fresh peft injection. A reload is
   what a worker without a resident pipeline pays: ``load_components`` from the preset folder (page cache warm)
   plus paging every weight in.
3. *Switch as a share of a 30-step generation*: the switch time over 30 classifier-free-guided steps of the plain
   SD 1.5-shaped UNet (batch 2) at ``--side`` pixels, timed over ``--timed-steps`` steps and multiplied. Text
   encoding, VAE decoding and the concept's own per-step cost are left out, so a real generation is longer and the
   real share smaller.

    .venv/bin/python -m bench.cold_start [--side 256] [--threads 1] [--rows FILE] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
from tessera_client import TesseraClient

from bench.rows import Row, add_rows_argument, alternate, median, write_rows
from bench.sd15 import random_edlora, sd15_components
from core.ml.components import SDComponents, load_components
from core.ml.edlora.adapter import load_adapter, save_adapter
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.edlora.lora import fresh_lora_layers, lora_scope
from core.ml.fusion.paths import attach_concepts
from core.ml.fusion.request import ConceptPlacement
from core.training_options import EDLoRAConfig
from services.demo import sample_images
from services.embedded import Stack
from services.processes import wait_for

GENERATION_STEPS = 30
SD15_PRESET = "sd15-random"  # the folder name the SD 1.5-shaped components are saved under for the reload arm


@dataclass
class ColdStart:
    """Client-side wall seconds (submit to terminal) of a fresh worker's first job and the same job warm."""

    first: float
    warm: list[float]
    ready_seconds: float
    first_stages: dict[str, float]
    warm_stages: dict[str, float]
    job: str


@dataclass
class Switch:
    """Median seconds of a concept switch (kept wrappers, fresh injection) and of a pipeline reload."""

    reused: float
    fresh: float
    reload: float
    size: str


# ---- 1. first job vs warm, through the service ----------------------------------------------------------------


def _wait_ready(stack: Stack, name: str) -> float:
    """Seconds until worker ``name`` serves its metrics (Celery's worker_ready: it consumes from then on)."""
    started = time.perf_counter()
    url = f"http://{stack.host}:{stack.metrics_ports[name]}/metrics"
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, what=name, timeout=120, child=stack.children[name])
    return time.perf_counter() - started


def _run_job(client: TesseraClient, body: dict[str, Any]) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    final = client.wait(client.create_generation(body).id, poll=0.01)
    elapsed = time.perf_counter() - started
    if final.status != "succeeded":
        raise RuntimeError(f"generation {final.id} {final.status}: {final.error}")
    return elapsed, dict(final.metrics.stages)


def measure_cold_start(root: Path, *, threads: int, warm_jobs: int, quick: bool) -> ColdStart:
    """The first generation job on a freshly started worker and the same job ``warm_jobs`` times after it."""
    # The worker runs with this process's thread count, as every in-process arm does.
    env = {"OMP_NUM_THREADS": str(threads), "TESSERA_MODELS__CPU_THREADS": str(threads)}
    stack = Stack(data_dir=root / "stack", preset="tiny", extra_env=env)
    with stack, TesseraClient(stack.url, stack.api_key) as client:
        body: dict[str, Any] = {"prompt": "a photo of a star", "seed": 1}
        if quick:
            body["num_inference_steps"] = 5
            worker = "worker"
            job = "a 5-step 64 px generation without a concept, on the stack's first worker"
        else:
            files = [client.upload_file(data).id for data in sample_images("star", 64, 2)]
            options = {"max_train_steps": 2, "batch_size": 1, "separation_loss_weight": 0.0, "seed": 0}
            training = client.create_training(
                {"concept": {"name": "star", "class_word": "star"}, "images": files, "options": options}
            )
            final = client.wait(training.id, poll=0.05)
            if final.status != "succeeded":
                raise RuntimeError(f"training {final.status}: {final.error}")
            # A new worker on a new machine: no process state and no local adapter files (the preset stays on
            # disk, as it would in the worker's image).
            old = stack.children.pop("worker")
            old.kill()
            old.stop()
            shutil.rmtree(stack.data_dir / "adapter-cache", ignore_errors=True)
            child = stack.start_worker()
            worker = next(name for name, c in stack.children.items() if c is child)
            body.update(prompt="a photo of a <star>", concepts=[{"concept": "star"}])
            job = "a 64 px generation of one concept (the preset's defaults: 20 steps, conductor), on a new worker"
        ready = _wait_ready(stack, worker)
        first, first_stages = _run_job(client, body)
        warm = [_run_job(client, body) for _ in range(warm_jobs)]
    return ColdStart(first, [w for w, _ in warm], ready, first_stages, warm[-1][1], job)


# ---- 2. concept switch vs reload --------------------------------------------------------------------------------


def _page_in(components: SDComponents) -> float:
    """Touch every page of every weight (loaded weights are memory-mapped: the first use reads them)."""
    total = 0.0
    for model in (components.text_encoder, components.vae, components.unet):
        for parameter in model.parameters():
            total += float(parameter.detach().reshape(-1)[::1024].sum())  # one float per 4 KiB page
    return total


def save_preset(components: SDComponents, folder: Path) -> None:
    """Write ``components`` as a preset folder in the diffusers layout (what ``load_components`` reads)."""
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(components, part).save_pretrained(folder / part)


def measure_switch(
    components: SDComponents, preset: str, models_root: Path, workdir: Path, *, repeats: int, size: str
) -> Switch:
    """Median seconds of a concept switch with kept wrappers and with fresh injection, and of a reload."""
    rank = EDLoRAConfig().rank
    paths = []
    for i, name in enumerate(("first", "second")):
        path = workdir / f"{name}.safetensors"
        save_adapter(random_edlora(components, name, "dog", rank=rank, seed=i), path)
        paths.append(path)
    num_layers = len(cross_attention_layer_names(components.unet))
    turn = iter(range(1_000_000))

    def switch() -> None:
        weights = load_adapter(paths[next(turn) % 2])
        with lora_scope(components.text_encoder, components.unet):
            attach_concepts(components, [ConceptPlacement(weights)], num_layers)

    def switch_fresh() -> None:
        with fresh_lora_layers():
            switch()

    def reload() -> None:
        loaded = load_components(preset, models_root, device=components.device, dtype=components.dtype)
        _page_in(loaded)
        del loaded
        gc.collect()  # free the reloaded copy before the next arm runs, as a worker replacing its pipeline would

    switch()  # the wrappers the kept arm reuses are made by its first switch
    times = alternate({"reused": switch, "fresh": switch_fresh, "reload": reload}, repeats)
    return Switch(median(times["reused"]), median(times["fresh"]), median(times["reload"]), size)


# ---- 3. a 30-step generation ------------------------------------------------------------------------------------


def step_seconds(components: SDComponents, side: int, timed_steps: int, warmup_side: int) -> float:
    """Median seconds of one classifier-free-guided UNet step (batch 2) at ``side`` pixels, after one step at
    ``warmup_side`` (first-call allocations and paging the weights in)."""
    scale = components.vae_scale_factor
    channels = int(components.unet.config.in_channels)
    width = int(components.text_encoder.config.hidden_size)
    context = torch.randn(2, int(components.tokenizer.model_max_length), width, dtype=components.dtype)

    def step(at: int) -> Callable[[], object]:
        latents = torch.randn(2, channels, at // scale, at // scale, dtype=components.dtype)
        return lambda: components.unet(latents, torch.tensor(500), encoder_hidden_states=context)

    with torch.no_grad():
        step(warmup_side)()
        return median(alternate({"step": step(side)}, timed_steps, warmup=0)["step"])


# ---- rows ---------------------------------------------------------------------------------------------------


def build_rows(cold: ColdStart, switch: Switch, step: float, step_size: str, timed_steps: int) -> list[Row]:
    """The suite's rows from the three measurements."""
    warm = median(cold.warm)
    generation = GENERATION_STEPS * step
    share = 100 * switch.reused / generation
    first_loading, warm_loading = cold.first_stages.get("loading", 0.0), cold.warm_stages.get("loading", 0.0)
    return [
        Row(
            "cold_start.first_vs_warm",
            cold.first / warm,
            "x",
            f"the same job warm (median of {len(cold.warm)})",
            None,
            f"Tiny preset through the embedded service: {cold.job}; the first job {cold.first:.2f} s, warm "
            f"{warm:.2f} s (submit to succeeded). Worker start-up to ready ({cold.ready_seconds:.1f} s) not counted.",
        ),
        Row(
            "cold_start.first_job_extra_s",
            cold.first - warm,
            "s",
            "the same job warm",
            None,
            f"What a fresh worker's first job pays on top (tiny preset; its loading stage, preset from disk and "
            f"adapter from the object store, {first_loading:.2f} s vs {warm_loading:.3f} s warm).",
        ),
        Row(
            "concept_switch.vs_reload",
            switch.reused / switch.reload,
            "x",
            "reloading the pipeline's components from disk",
            "< 1",
            f"{switch.size}: switching concepts on the resident pipeline (read the adapter file, attach its LoRA to "
            f"text encoder and UNet, detach) {1000 * switch.reused:.0f} ms vs load_components + paging the weights in "
            f"{1000 * switch.reload:.0f} ms (page cache warm: a reload from a cold disk costs more).",
        ),
        Row(
            "concept_switch.reuse_speedup",
            switch.fresh / switch.reused,
            "x",
            "the same switch with fresh peft injection (before kept wrappers)",
            None,
            f"{switch.size}: {1000 * switch.fresh:.0f} ms injecting new peft layers per concept vs "
            f"{1000 * switch.reused:.0f} ms reattaching kept ones: Python per layer, the same on any device.",
        ),
        Row(
            "concept_switch.share_of_30_steps",
            share,
            "%",
            f"{GENERATION_STEPS} guided UNet steps at {step_size}",
            "< 5",
            f"Switch measured at {switch.size} ({1000 * switch.reused:.0f} ms); the generation is "
            f"{GENERATION_STEPS} x "
            f"one guided UNet step (batch 2) at {step_size}, {step:.2f} s timed over {timed_steps} step(s) "
            f"(text encoding, VAE decode and LoRA cost left out, so the real share is smaller). The switch is "
            f"host-side Python that a GPU does not shorten: it stays under 5% while 30 steps take over "
            f"{20 * switch.reused:.2f} s (with fresh peft injection: {20 * switch.fresh:.2f} s).",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three measurements, print the detail, and write the rows (``--rows``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every arm (the worker's too)")
    parser.add_argument("--side", type=int, default=256, help="image side of the timed generation steps (SD 1.5)")
    parser.add_argument("--timed-steps", type=int, default=1, help="generation steps timed (then x 30)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds of the switch and reload arms")
    parser.add_argument("--warm-jobs", type=int, default=3, help="warm repeats of the service job")
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        root = Path(tmp)
        cold = measure_cold_start(
            root, threads=args.threads, warm_jobs=2 if args.quick else args.warm_jobs, quick=args.quick
        )
        print(f"worker ready after {cold.ready_seconds:.1f} s; first job {cold.first:.3f} s {cold.first_stages}")
        print(f"warm jobs {[round(w, 3) for w in cold.warm]} s, last {cold.warm_stages}")

        models_root = root / "models"
        if args.quick:
            # Quick: the tiny preset stands in for SD 1.5 in every arm (the rows say so).
            components = load_components("tiny", models_root)
            preset, size, side, warmup_side = "tiny", "the tiny preset (quick run)", 64, 64
        else:
            (root / "sd15-tokenizer").mkdir()
            components = sd15_components(root / "sd15-tokenizer")
            save_preset(components, models_root / SD15_PRESET)
            preset, size, side, warmup_side = SD15_PRESET, "SD 1.5 shape", args.side, 128
        print(f"{size}: components ready after {time.perf_counter() - started:.0f} s")
        switch = measure_switch(
            components, preset, models_root, root, repeats=2 if args.quick else args.repeats, size=size
        )
        print(
            f"switch {1000 * switch.reused:.1f} ms (fresh injection {1000 * switch.fresh:.1f} ms), "
            f"reload {1000 * switch.reload:.1f} ms"
        )
        timed_steps = 2 if args.quick else args.timed_steps
        step = step_seconds(components, side, timed_steps, warmup_side)
        step_size = f"{side} px ({'tiny preset' if args.quick else 'SD 1.5 shape'})"
        print(f"one guided UNet step at {step_size}: {step:.3f} s")

    rows = build_rows(cold, switch, step, step_size, timed_steps)
    for row in rows:
        print(f"{row.name}: {row.value:.4g} {row.unit} (target {row.target}, ok {row.ok})")
    print(f"total {time.perf_counter() - started:.0f} s")
    write_rows(rows, args.rows)


if __name__ == "__main__":
    main()
