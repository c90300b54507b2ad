"""Trains the ``shapes`` preset from scratch on a CPU: VAE, then text encoder and UNet together.

Stage 1 trains an ``AutoencoderKL`` (64x64x3 <-> 8x8x4) on the *wide* world (random hues, extra shapes,
stripes), so it can represent the held-out concepts as well; stage 1b refines its decoder alone, and stage 1c
the whole VAE on stripe-rich batches while an anchor keeps base-world latents where they were. Stage 2
pre-encodes base-world latents once and trains a ``CLIPTextModel`` and a ``UNet2DConditionModel`` jointly with
SD 1.5's noise schedule, epsilon prediction, Min-SNR-5 weighting, caption dropout and an EMA of the weights.
The result is written as a diffusers folder that ``StableDiffusionPipeline`` loads like SD 1.5.

Run ``tessera shapes train --help`` (or ``python -m tessera_shapes.training --help``); partial runs leave usable
checkpoints in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPTextModel

from tessera_shapes import sampling, world
from tessera_shapes.tokenizer import write_tokenizer
from tessera_shapes.training.config import PRESET_DIR, ShapesTrainingConfig, StepCallback
from tessera_shapes.training.data import caption_ids, encode_latents
from tessera_shapes.training.denoiser import train_denoiser
from tessera_shapes.training.preset import save_preset
from tessera_shapes.training.vae import (
    harden_preset_vae,
    harden_vae_decoder,
    psnr_db,
    reconstruct,
    refine_preset_vae,
    refine_vae_anchored,
    refine_vae_decoder,
    train_vae,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainingReport:
    """What a run did: seconds per stage, steps, losses and the VAE latent scaling factor."""

    config: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)
    vae_loss: float = float("nan")
    decoder_loss: float = float("nan")
    anchor_loss: float = float("nan")
    harden_loss: float = float("nan")
    vae_psnr_db: float = float("nan")
    scaling_factor: float = float("nan")
    unet_steps_done: int = 0
    unet_loss: float = float("nan")


def _log_step(every: int) -> StepCallback:
    started: dict[str, float] = {}

    def log(stage: str, step: int, total: int, loss: float) -> None:
        start = started.setdefault(stage, time.monotonic())
        if step % every == 0 or step == total:
            elapsed = time.monotonic() - start
            logger.info(
                "%s step %d/%d loss %.4f (%.0f s, %.2f it/s)",
                stage,
                step,
                total,
                loss,
                elapsed,
                (step - 1) / max(elapsed, 1e-9),
            )

    return log


def train_shapes(
    output_dir: Path = PRESET_DIR,
    *,
    config: ShapesTrainingConfig | None = None,
    work_dir: Path = Path(".cache/shapes"),
    reuse_vae: bool = True,
    on_step: StepCallback | None = None,
    vae_from: Path | None = None,
    init_from: Path | None = None,
) -> TrainingReport:
    """Trains the shapes preset from scratch and writes it to ``output_dir``.

    Args:
        output_dir: the preset folder to write (``core/ml/presets/shapes`` by default).
        config: hyperparameters; the defaults reproduce the shipped weights.
        work_dir: scratch space for the tokenizer, the stage-1 VAE, latents, checkpoints and ``report.json``.
        reuse_vae: skip stage 1 when ``work_dir/vae`` already holds a VAE (resume after an interrupted run).
        vae_from: a trained VAE folder (e.g. ``<preset>/vae``); stages 1, 1b and 1c are then skipped.
        init_from: a preset folder whose UNet and text encoder start stage 2 (:func:`warm_start`).
        on_step: progress callback; defaults to logging every 50 steps.

    Returns:
        the run's :class:`TrainingReport` (also written to ``work_dir/report.json``).
    """
    config = config or ShapesTrainingConfig()
    # The thread count is process-wide: set it for the run and give the caller's back afterwards.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train_shapes(output_dir, config, work_dir, reuse_vae, on_step or _log_step(50), vae_from, init_from)
    finally:
        torch.set_num_threads(previous_threads)


def _train_shapes(
    output_dir: Path,
    config: ShapesTrainingConfig,
    work_dir: Path,
    reuse_vae: bool,
    on_step: StepCallback,
    vae_from: Path | None,
    init_from: Path | None = None,
) -> TrainingReport:
    work_dir.mkdir(parents=True, exist_ok=True)
    report = TrainingReport(config=dataclasses.asdict(config))
    tokenizer = write_tokenizer(world.VOCABULARY, work_dir / "tokenizer")

    vae_dir = work_dir / "vae"

    def stage(
        name: str,
        steps: int,
        folder: Path,
        current: AutoencoderKL | None,
        run: Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]],
    ) -> tuple[AutoencoderKL | None, float]:
        """One VAE stage, or its saved result when resuming; the loss is NaN when reused or skipped."""
        started = time.monotonic()
        result, loss = current, float("nan")
        if steps > 0 and reuse_vae and (folder / "config.json").exists():
            logger.info("reusing the %s stage's VAE in %s", name, folder)
            result = AutoencoderKL.from_pretrained(folder).train(False)
        elif steps > 0:
            result, loss = run(current)
            result.save_pretrained(folder, safe_serialization=True)
        report.seconds[name] = time.monotonic() - started
        return result, loss

    def _then(
        refine: Callable[..., tuple[AutoencoderKL, float]],
    ) -> Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]]:
        def run(previous: AutoencoderKL | None) -> tuple[AutoencoderKL, float]:
            assert previous is not None  # stage 1 ran or was reused before any refinement
            return refine(previous, config, on_step=on_step)

        return run

    if vae_from is not None:
        # Stage 2 alone on a trained VAE (e.g. the shipped preset's): its latents are the ones the UNet learns.
        logger.info("using the VAE in %s; stages 1, 1b and 1c skipped", vae_from)
        vae = AutoencoderKL.from_pretrained(vae_from, torch_dtype=torch.float32).train(False)
    else:
        # Stages 1, 1b, 1c and 1d in order, each on the previous one's VAE (stage 1 starts from nothing).
        stages: list[tuple[str, int, Path, Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]], str]] = [
            ("vae", config.vae_steps, vae_dir, lambda _: train_vae(config, on_step=on_step), "vae_loss"),
            ("vae_decoder", config.decoder_steps, work_dir / "vae_decoder", _then(refine_vae_decoder), "decoder_loss"),
            (
                "vae_anchored",
                config.anchor_steps,
                work_dir / "vae_anchored",
                _then(refine_vae_anchored),
                "anchor_loss",
            ),
            ("vae_hardened", config.harden_steps, work_dir / "vae_hardened", _then(harden_vae_decoder), "harden_loss"),
        ]
        current: AutoencoderKL | None = None
        for name, steps, folder, run, loss_field in stages:
            current, loss = stage(name, steps, folder, current, run)
            setattr(report, loss_field, loss)
        assert current is not None  # vae_steps >= 1
        vae = current

    started = time.monotonic()
    dataset = sampling.draw_base_dataset(config.num_images, config.seed)
    images = dataset.images
    report.seconds["draw_dataset"] = time.monotonic() - started
    started = time.monotonic()
    held = sampling.draw_base_dataset(min(256, config.num_images), config.seed + 7)[0]
    report.vae_psnr_db = psnr_db(held, reconstruct(vae, held))
    latents = encode_latents(vae, images)
    report.scaling_factor = float(1.0 / latents[:, 0].std())
    vae.register_to_config(scaling_factor=report.scaling_factor)
    if vae_from is None:
        vae.save_pretrained(vae_dir, safe_serialization=True)
    latents = latents * report.scaling_factor
    input_ids = caption_ids(tokenizer, dataset, config.caption_variants, seed=config.seed)
    report.seconds["encode_latents"] = time.monotonic() - started
    logger.info(
        "VAE PSNR %.2f dB on held-out base images; scaling factor %.4f", report.vae_psnr_db, report.scaling_factor
    )

    def checkpoint(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, step: int) -> None:
        save_preset(
            work_dir / "checkpoint",
            vae=vae,
            text_encoder=text_encoder,
            tokenizer_dir=work_dir / "tokenizer",
            unet=unet,
            extra={"training_steps": step},
        )
        logger.info("checkpoint at step %d written to %s", step, work_dir / "checkpoint")

    started = time.monotonic()
    unet, text_encoder, report.unet_loss = train_denoiser(
        config, latents, input_ids, tokenizer, on_step=on_step, on_checkpoint=checkpoint, init_from=init_from
    )
    report.seconds["unet"] = time.monotonic() - started
    report.unet_steps_done = config.unet_steps
    save_preset(
        output_dir,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer_dir=work_dir / "tokenizer",
        unet=unet,
        extra={"training_steps": config.unet_steps, "vae_decoder_steps": config.decoder_steps, "seed": config.seed},
    )
    (work_dir / "report.json").write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return report


_CLI_FIELDS = (
    "seed",
    "threads",
    "vae_steps",
    "decoder_steps",
    "anchor_steps",
    "unet_steps",
    "num_images",
    "caption_variants",
    "batch_size",
    "checkpoint_every",
    "warmup_steps",
    "harden_steps",
)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    """``python -m tessera_shapes.training`` (``tessera shapes train``): trains the preset and logs progress to
    stderr. ``prog`` names the command in ``--help``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, default=PRESET_DIR)
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/shapes"))
    parser.add_argument("--fresh-vae", action="store_true", help="retrain the VAE even if work-dir has one")
    parser.add_argument("--vae-from", type=Path, help="a trained VAE folder; train only stage 2 on its latents")
    parser.add_argument("--init-from", type=Path, help="a preset folder whose UNet and text encoder start stage 2")
    parser.add_argument(
        "--harden-preset-vae",
        action="store_true",
        help="run only stage 1d on the VAE in --output-dir and store it back (the UNet stays valid)",
    )
    parser.add_argument(
        "--refine-preset-vae",
        action="store_true",
        help="run only stage 1c on the VAE in --output-dir and store it back (the UNet stays valid)",
    )
    defaults = ShapesTrainingConfig()
    for name in _CLI_FIELDS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr, help="stage-2 peak learning rate")
    parser.add_argument(
        "--min-snr-gamma", type=float, default=defaults.min_snr_gamma, help="stage-2 Min-SNR weighting (0: off)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = dataclasses.replace(
        defaults,
        **{n: getattr(args, n) for n in _CLI_FIELDS},
        lr=args.lr,
        min_snr_gamma=args.min_snr_gamma,
    )
    if args.harden_preset_vae:
        torch.set_num_threads(config.threads)
        harden_preset_vae(args.output_dir, config, on_step=_log_step(50))
        logger.info("stage 1d done")
        return
    if args.refine_preset_vae:
        torch.set_num_threads(config.threads)
        drift = refine_preset_vae(args.output_dir, config, on_step=_log_step(50))
        logger.info("stage 1c done; base-world latents moved by %.4f std (RMS)", drift)
        return
    report = train_shapes(
        args.output_dir,
        config=config,
        work_dir=args.work_dir,
        reuse_vae=not args.fresh_vae,
        vae_from=args.vae_from,
        init_from=args.init_from,
    )
    logger.info("done: %s", json.dumps(dataclasses.asdict(report)["seconds"]))
