"""Model presets on disk and the loaded Stable Diffusion components every pipeline takes.

A preset is a folder in the standard diffusers layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``). ``tiny`` is built on first use; ``sd15`` is fetched by the operator (``tessera models pull sd15``);
presets that ship inside the package (``shapes``) live in ``core/ml/presets/<name>/``. Nothing is downloaded here:
every ``from_pretrained`` runs with ``local_files_only=True``.

A preset folder may also hold ``preset.json``; the few keys the pipelines act on are read into ``PresetOptions``
(``SDComponents.options``); a missing file or key means the default, so ``sd15`` and ``tiny`` need none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.prompts import PathPrompt, StandIn
from core.ml.tiny import write_tiny_preset

logger = logging.getLogger(__name__)

PRESET_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PRESET_MARKER = "tessera_preset.json"
SHIPPED_PRESETS = frozenset({"shapes"})
SHIPPED_PRESETS_ROOT = Path(__file__).resolve().parent / "presets"
_PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
PRESET_OPTIONS_FILE = "preset.json"


MergeLayers = Literal["up_blocks", "all"]
"""Where Concept Conductor injects concept features: every up-block attention layer (the reference's choice on
SD 1.5), or every attention layer of the UNet (down and mid blocks too)."""


@dataclass(frozen=True)
class PresetOptions:
    """Per-preset choices the pipelines act on, read from the preset folder's ``preset.json``.

    Args:
        base_path_concept_words: how fusion writes a concept reference in a text that does not apply that concept's
            adapter (the base/global prompt, the other concepts of a concept path, negative prompts):
            ``"class_word"`` (its class word, usually one token: later tokens shift) or ``"learned_embeddings"``
            (its two learned layer-wise embeddings with no LoRA: the slot keeps two tokens, for text encoders that
            bind meaning to token positions). JSON key ``base_path_concept_words``; default ``"class_word"``.
        conductor_refines_masks: whether Concept Conductor refines its masks from self-attention during sampling
            (JSON key ``conductor_refine_masks``; default true, as the reference does on SD 1.5). A model whose
            finest attention grid is too coarse for k-means to find objects in turns it off: its masks then stay
            the requested regions.
        conductor_merge_layers: where Concept Conductor injects each concept's features
            (``MergeLayers``; JSON key ``conductor_merge_layers``): ``"up_blocks"`` (default,
            the reference's layers on SD 1.5) or ``"all"`` (down and mid blocks too, for a model whose base path
            otherwise keeps drawing the class word).
        regional_region_prompt: what each concept's region reads in regional sampling (``core.ml.prompts
            .PathPrompt``; JSON key ``regional_region_prompt``): ``"own_clause"`` (default, Mix-of-Show's region
            prompts: "a <dog> on the left") or ``"every_slot"`` ("a <dog> on the left and a <dog> on the right",
            for a model that learned its scene layouts from whole captions and draws one object for a one-object
            prompt wherever its region is).
    """

    base_path_concept_words: StandIn = "class_word"
    conductor_refines_masks: bool = True
    conductor_merge_layers: MergeLayers = "up_blocks"
    regional_region_prompt: PathPrompt = "own_clause"


def read_preset_options(folder: Path) -> PresetOptions:
    """``PresetOptions`` from ``folder/preset.json``; defaults for a missing file or key (other keys are ignored).

    Raises:
        ModelLoadError: the file is not a JSON object, or a known key has a value outside its choices.
    """
    path = Path(folder) / PRESET_OPTIONS_FILE
    if not path.is_file():
        return PresetOptions()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    words = data.get("base_path_concept_words", PresetOptions.base_path_concept_words)
    if words not in get_args(StandIn):
        raise ModelLoadError(f"{path}: base_path_concept_words must be one of {get_args(StandIn)}, got {words!r}")
    refines = data.get("conductor_refine_masks", PresetOptions.conductor_refines_masks)
    if not isinstance(refines, bool):
        raise ModelLoadError(f"{path}: conductor_refine_masks must be true or false, got {refines!r}")
    merge = data.get("conductor_merge_layers", PresetOptions.conductor_merge_layers)
    if merge not in get_args(MergeLayers):
        raise ModelLoadError(f"{path}: conductor_merge_layers must be one of {get_args(MergeLayers)}, got {merge!r}")
    region = data.get("regional_region_prompt", PresetOptions.regional_region_prompt)
    if region not in get_args(PathPrompt):
        raise ModelLoadError(f"{path}: regional_region_prompt must be one of {get_args(PathPrompt)}, got {region!r}")
    return PresetOptions(
        base_path_concept_words=words,
        conductor_refines_masks=refines,
        conductor_merge_layers=merge,
        regional_region_prompt=region,
    )


@dataclass
class SDComponents:
    """The loaded parts of one Stable Diffusion 1.x model set, shared (read-only) by every job of a worker.

    Pipelines must leave these objects as they found them: no adapters, processors, tokens or ``requires_grad``
    changes survive a call. ``scheduler`` is the *sampling* scheduler (DPM-Solver++); pipelines build their own
    instance from its config so its step state is never shared.
    """

    preset: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DPMSolverMultistepScheduler
    device: torch.device
    dtype: torch.dtype
    options: PresetOptions = field(default_factory=PresetOptions)

    @property
    def base_model_id(self) -> str:
        """``"<preset>@<12 hex digits>"``: the preset plus a hash of the UNet config (private ``_`` keys left out).

        Written into every adapter so an adapter is only applied to the base model it was trained on.
        """
        config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.preset}@{digest[:12]}"

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD 1.5 and tiny)."""
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def default_resolution(self) -> int:
        """The image side the UNet was built for, in pixels (512 for SD 1.5, 64 for tiny)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def _check_preset_name(preset: str) -> None:
    if not _PRESET_NAME.match(preset):
        raise InvalidRequestError(
            f"preset must match {_PRESET_NAME.pattern}, got {preset!r}", field="preset", code="invalid_preset"
        )


def preset_dir(preset: str, models_root: Path) -> Path:
    """Where a preset's folder is: ``core/ml/presets/<name>`` for shipped presets, else ``models_root/<name>``.

    Raises:
        InvalidRequestError: ``preset`` is not a valid preset name.
    """
    _check_preset_name(preset)
    if preset in SHIPPED_PRESETS:
        return SHIPPED_PRESETS_ROOT / preset
    return Path(models_root) / preset


def init_preset(preset: str, models_root: Path) -> Path:
    """Make sure a preset's folder is complete and return it; build ``tiny`` when it is missing.

    Building ``tiny`` is idempotent and safe when several processes race: each builds into its own temporary
    folder beside the target and renames it into place; the loser of the race discards its copy.

    Raises:
        ModelLoadError: a non-tiny preset is missing or incomplete (the message names the missing folder and the
            ``tessera models`` command that makes it), or a ``tiny`` folder exists but is not a finished build.
    """
    folder = preset_dir(preset, models_root)
    if preset == "tiny":
        return _init_tiny(folder)
    for sub in PRESET_SUBFOLDERS:
        if not (folder / sub).is_dir():
            raise ModelLoadError(
                f"preset {preset!r} is incomplete: {folder / sub} does not exist; "
                f"run `tessera models pull {preset}` to make it"
            )
    return folder


def _init_tiny(folder: Path) -> Path:
    if (folder / PRESET_MARKER).is_file():
        return folder
    if folder.exists():
        raise ModelLoadError(
            f"{folder} exists but is not a finished tiny preset (no {PRESET_MARKER}); delete it to rebuild"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the finished preset is as readable as its parent
        write_tiny_preset(staging)
        marker = {"preset": "tiny", "format": 1, "subfolders": list(PRESET_SUBFOLDERS)}
        (staging / PRESET_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process renamed its build into place first; theirs is identical, keep it.
            if not (folder / PRESET_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_components(
    preset: str,
    models_root: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """Load a preset's tokenizer, text encoder, VAE, UNet and sampling scheduler from its local folder.

    The sampling scheduler is ``DPMSolverMultistepScheduler`` (DPM-Solver++, 2nd order) built from the folder's
    scheduler config: it is deterministic (no noise is injected between steps), so the same seed gives the same
    pixels, and it reaches good samples in 20-50 steps, which is what Mix-of-Show samples ED-LoRA with. Training
    uses ``DDPMScheduler.from_config`` of the same config for its noise schedule. Weights are frozen
    (``requires_grad=False``) and in eval mode. ``options`` come from the folder's ``preset.json``
    (``read_preset_options``).

    Raises:
        ModelLoadError: the folder is missing, incomplete, has an invalid ``preset.json``, or a component fails to
            load.
    """
    folder = init_preset(preset, models_root)
    options = read_preset_options(folder)
    torch_device = torch.device(device)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", local_files_only=True, dtype=dtype
        )
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        scheduler_config = DPMSolverMultistepScheduler.load_config(
            folder, subfolder="scheduler", local_files_only=True
        )
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load preset {preset!r} from {folder}: {exc}") from exc
    for model in (text_encoder, vae, unet):
        model.requires_grad_(False)
        model.eval()
        model.to(torch_device)
    logger.info("loaded preset %s from %s on %s (%s)", preset, folder, torch_device, dtype)
    return SDComponents(
        preset=preset,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        device=torch_device,
        dtype=dtype,
        options=options,
    )
