"""What running work as a job costs over calling the pipeline directly, measured side by side.

Runs the same tiny-preset training and the same 2-concept generation (a) as direct calls of
``core.ml`` in this process and (b) through a running embedded stack (HTTP API → Redis → Celery
worker → local object store), both warm, alternating, and prints the wall times and their ratio.

    .venv/bin/python -m bench.job_overhead [--repeats 5] [--train-steps 20] [--sample-steps 10] [--rows FILE]

Suite rows: ``service_overhead.generation_p50_ms`` (the median over rounds of service minus direct, target < 50 ms:
what a user pays for the API, the queue and the worker around the pipeline, the job created with ``Prefer: wait``
so the answer comes when it ends; its ``about`` breaks the service arm down by the job record's timestamps and
stages), ``service_overhead.generation_polled_p50_ms`` (the same job polled every 20 ms instead, informative) and
``service_overhead.training_ratio``.

Rounds interleave trainings and generations on the same worker, as a real one sees them: a training's diagnostic
once dropped the generation's kept LoRA wrappers, so every generation after a training injected them again (+115
ms here; ``core.ml.edlora.lora`` now hands kept slots between adapter names).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image
from tessera_client import TesseraClient

from bench.rows import Row, add_rows_argument, write_rows
from core.ml.components import load_components
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.trainer import train_edlora
from core.ml.fusion.regional import ConceptPlacement, SamplingRequest, generate_regional
from core.training_options import EDLoRAConfig
from services.demo import sample_images
from services.embedded import Stack


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _parts(job: dict[str, Any], total: float, seen: float) -> dict[str, float]:
    """Where a service generation's wall time went (seconds): from the job record's timestamps and stages."""
    created, started, completed = (_stamp(job[k]) for k in ("created_at", "started_at", "completed_at"))
    stages = job["metrics"]["stages"]
    return {
        "total": total,
        "queue": started - created,
        **stages,
        "worker other": (completed - started) - sum(stages.values()),
        "to client": seen - completed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both arms (the worker's default)")
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.train_steps, args.sample_steps = 2, 4, 4
    # Same thread budget in both arms: the worker process gets what this process has.
    threads = args.threads
    torch.set_num_threads(threads)
    images = {k: sample_images(k, 64, 3) for k in ("star", "ring")}
    options = {"max_train_steps": args.train_steps, "seed": 0, "batch_size": 2}
    generation = {
        "prompt": "a <star> on the left and a <ring> on the right",
        "width": 64,
        "height": 64,
        "num_inference_steps": args.sample_steps,
        "guidance_scale": 4.0,
        "seed": 1,
        "fusion": "regional",
    }

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        components = load_components("tiny", root / "direct-models")
        pil = {k: [Image.open(io.BytesIO(d)).convert("RGB") for d in v] for k, v in images.items()}

        def direct_train(name: str) -> EDLoRAWeights:
            return train_edlora(
                components, pil[name], concept_name=name, class_word=name, config=EDLoRAConfig(**options)
            )

        stack = Stack(
            data_dir=root / "stack",
            preset="tiny",
            extra_env={"OMP_NUM_THREADS": str(threads), "TESSERA_WORKER__CPU_THREADS": str(threads)},
        )
        with stack, TesseraClient(stack.url, stack.api_key) as client:
            files = {k: [client.upload_file(d).id for d in v] for k, v in images.items()}
            counter = iter(range(10_000))

            def service_train(name: str) -> str:
                concept = f"{name}-{next(counter)}"
                job = client.create_training(
                    {"concept": {"name": concept, "class_word": name}, "images": files[name], "options": options}
                )
                final = client.wait(job.id, poll=0.02)
                assert final.status == "succeeded", final.error
                return concept

            # Warm both arms: model load, first-call allocations, adapter caches.
            weights = {k: direct_train(k) for k in ("star", "ring")}
            concepts = {k: service_train(k) for k in ("star", "ring")}
            placements = [
                ConceptPlacement(weights=weights["star"], region=(0, 0, 0.5, 1)),
                ConceptPlacement(weights=weights["ring"], region=(0.5, 0, 1, 1)),
            ]
            service_body = {
                **generation,
                "prompt": f"a <{concepts['star']}> on the left and a <{concepts['ring']}> on the right",
                "concepts": [
                    {"concept": concepts["star"], "region": {"box": [0, 0, 0.5, 1]}},
                    {"concept": concepts["ring"], "region": {"box": [0.5, 0, 1, 1]}},
                ],
            }

            def direct_generate() -> None:
                request = SamplingRequest.create(
                    prompt=generation["prompt"],
                    placements=placements,
                    width=64,
                    height=64,
                    num_inference_steps=args.sample_steps,
                    guidance_scale=4.0,
                    seed=1,
                )
                generate_regional(components, request)

            def service_generate() -> None:
                # Prefer: wait: the API answers the create call when the job's event stream says it ended.
                t0 = time.perf_counter()
                final = client.create_generation(service_body, wait=60)
                seen = time.time()
                assert final.status == "succeeded", final.error
                parts.append(_parts(final.model_dump(mode="json"), time.perf_counter() - t0, seen))

            def service_generate_polled() -> None:
                final = client.wait(client.create_generation(service_body).id, poll=0.02)
                assert final.status == "succeeded", final.error

            parts: list[dict[str, float]] = []
            direct_generate()
            service_generate()
            parts.clear()  # the warm-up is not a sample
            times: dict[str, list[float]] = {
                k: [] for k in ("train direct", "train service", "gen direct", "gen service", "gen service polled")
            }
            for _ in range(args.repeats):
                arms: tuple[tuple[str, Callable[[], object]], ...] = (
                    ("train direct", lambda: direct_train("star")),
                    ("train service", lambda: service_train("star")),
                    ("gen direct", direct_generate),
                    ("gen service", service_generate),
                    ("gen service polled", service_generate_polled),
                )
                for label, fn in arms:
                    start = time.perf_counter()
                    fn()
                    times[label].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"tiny preset, {args.train_steps} training steps, {args.sample_steps} sampling steps, "
        f"{args.repeats} alternating repeats, medians:"
    )
    for kind in ("train", "gen"):
        d, s = med[f"{kind} direct"], med[f"{kind} service"]
        print(f"  {kind:<5} direct {d:7.3f}s  service {s:7.3f}s  ratio {s / d:5.2f}  overhead {s - d:+.3f}s")
    part_ms = {key: statistics.median(p.get(key, 0.0) for p in parts) * 1000 for key in parts[0]}
    part_ms["sampling"] -= med["gen direct"] * 1000  # the worker's sampling beyond the same call in process
    print("  service generation, median ms per part (sampling: beyond the direct call):")
    for key, value in part_ms.items():
        print(f"    {key:<13} {value:7.1f}")
    breakdown = ", ".join(f"{key} {value:.0f}" for key, value in part_ms.items() if key != "total")
    # Paired per round (the arms ran back to back), so slow phases of a noisy machine cancel.
    added = statistics.median(s - d for s, d in zip(times["gen service"], times["gen direct"], strict=True))
    added_polled = statistics.median(
        s - d for s, d in zip(times["gen service polled"], times["gen direct"], strict=True)
    )
    polled = med["gen service polled"]
    print(f"  gen   service, polled every 20 ms: {polled:7.3f}s  overhead {added_polled * 1000:+.0f} ms")
    write_rows(
        [
            Row(
                "service_overhead.generation_p50_ms",
                added * 1000,
                "ms",
                "the same 2-concept regional generation called in process (tiny preset, warm)",
                "< 50",
                "What the API, the Redis job store, the Celery queue, the worker's input fetch and output upload add "
                f"to one generation ({args.sample_steps} steps, 64 px), median over {args.repeats} paired rounds. "
                f"Median parts, ms: {breakdown} (queue: created to started; sampling: the worker's beyond the direct "
                "call; to client: completion to the answer). The client creates the job with Prefer: wait=60, so "
                "the API answers when the job's event stream says it ended, as a latency-minded client would.",
            ),
            Row(
                "service_overhead.generation_polled_p50_ms",
                added_polled * 1000,
                "ms",
                "the same 2-concept regional generation called in process (tiny preset, warm)",
                None,
                "The same generation created without waiting and polled with GET /v1/jobs/{id} every 20 ms (same "
                f"rounds): the poll interval adds about half of itself on average. Median over {args.repeats} "
                "paired rounds; informative.",
            ),
            Row(
                "service_overhead.training_ratio",
                med["train service"] / med["train direct"],
                "x",
                f"the same {args.train_steps}-step ED-LoRA training called in process (tiny preset, warm)",
                None,
                "A training job through the service vs in process; the service adds image fetch, the adapter "
                "upload and the concept record, which a real (minutes-long) training makes negligible.",
            ),
        ],
        args.rows,
    )


if __name__ == "__main__":
    main()
