"""Cost of one generation step: regional, Concept Conductor and styling against plain sampling, side by side.

For N = 1, 2, 3 concepts (each a random rank-4 LoRA on every attention projection, as ED-LoRA has) and one image
with classifier-free guidance (2 UNet rows), it times one denoising step of

- ``plain``: the base UNet alone (no adapter attached, diffusers' SDPA processors) at batch 2: ordinary sampling;
- ``regional``: regional fusion as the service runs it: one forward at batch 2 whose attention layers apply each
  region's LoRA per token and attend to N region prompts (and N negative prompts) inside the regions
  (``core.ml.fusion.regional_attention``); no target (the issue asks only for the ratio);
- ``batched``: Concept Conductor as the service runs it: one forward at batch (N+1)·2, per-row LoRA, up-block
  feature injection (``core.ml.fusion.multipath``). Its FLOPs are N+1 plain steps, so ``batched / plain`` is held
  to ``<= 1.15 · (N+1)``;
- ``sequential``: the same N+1 paths as N+1 forwards at batch 2, switching the active peft adapter between them;
  ``sequential / batched`` is the batching speed-up, held to ``>= 1.5`` at N = 2;
- ``styled``: a styling step (``core.ml.styling.pipeline``): the ControlNet forward plus the UNet forward with the
  IP-Adapter's processors and the ControlNet residuals, at batch 2;
- ``reference`` (N = 2 only): a denoising step the way the Concept Conductor reference code takes it: per concept
  a deep copy of the UNet, its LoRA merged into the copy's state dict and loaded, a forward, ``gc.collect()``; then
  the base UNet; autograd anomaly detection on (the reference turns it on at import).

Arms take turns within each round (order reversed every other round, so drift on a shared machine hits every arm
alike); each figure is the median over rounds of the mean step time of a few steps after a warm-up step.
Conductor's layout-guidance and refinement steps are not in the per-step figures; the full-image line below has
them.

Sizes: the ``tiny`` preset at 64 px always (the rows named ``generation.*``); in the default run also an SD 1.5-shaped
UNet with random weights (``bench.sd15``) at ``--sd15-side`` px (64 by default: the real architecture on an 8×8
latent), N = 2 only, when a probe forward says it fits ``--budget`` (rows ``generation.sd15.*``). On a CPU both sizes
are dominated by per-op overhead and by reading weights rather than by FLOPs, so batching gets more than its FLOP
share for free there; the FLOP-bound case is the GPU (``bench/gpu.py``).

The reference code samples 200 steps; the service samples 50 for SD 1.5 (its generation default; step windows
for guidance and refinement are fractions of the trajectory, so 50 steps cover the same part of it). The run
prints the time of one full 2-concept Conductor image at 50 steps (guidance and refinement included) next to the
reference's settings and its measured per-step cost.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.fusion_cost [--quick] [--rows FILE] [--no-sd15] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer

from bench.rows import Row, add_rows_argument, format_table, write_rows
from bench.sd15 import SD15_IMAGE_EMBED_DIM, random_edlora, sd15_components, sd15_controlnet, write_ip_adapter
from core.ml.components import SDComponents, load_components
from core.ml.edlora.attention import cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.lora import UNET_TARGETS, activate_lora, add_lora, lora_scope, lora_state_dict
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.multipath import MultipathState, multipath_attention, path_adapter_names
from core.ml.fusion.regional_attention import RegionalState, regional_attention
from core.ml.fusion.request import DEFAULT_LORA_WEIGHT, ConceptPlacement, SamplingRequest
from core.ml.styling.scales import ip_adapter_scales
from core.ml.styling.weights import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS, load_styling_weights

Step = Callable[[], object]
Arm = Callable[[], AbstractContextManager[Step]]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

FLOP_MARGIN = 1.15
"""Conductor's per-step cost may exceed its FLOP ratio (N+1 plain steps) by at most this factor (the issue's)."""
SPEEDUP_TARGET = 1.5
"""Batched Conductor must be at least this much faster than per-path sequential forwards at N = 2."""
REFERENCE_STEPS = 200
OUR_STEPS = 50  # the service's SD 1.5 generation default (core.config)
CONTROL_SCALE = 0.6  # the styling stage's default controlnet_conditioning_scale


@dataclass
class Costs:
    """Median milliseconds per step of each arm at one size, plus what the rows need to say about it."""

    label: str
    side: int
    ms: dict[str, float]
    runs: dict[str, list[float]] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)


def shallow_copy(module: ModuleT) -> ModuleT:
    """A new module tree that shares every parameter and buffer with ``module`` (no weight memory).

    Adapters injected into one tree later replace child modules of that tree only, so the copy stays adapter-free.
    """
    memo: dict[int, object] = {id(p): p for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rounds(arms: dict[str, Arm], *, rounds: int, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per step of each arm in each round.

    Each arm enters its context (installing its processors), takes one untimed warm-up step, then ``steps`` timed
    ones; the order of the arms is reversed every other round.
    """
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(rounds):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for name in order:
            with arms[name]() as step:
                step()
                _sync(device)
                started = time.perf_counter()
                for _ in range(steps):
                    step()
                _sync(device)
                times[name].append((time.perf_counter() - started) * 1000 / steps)
    return times


def attach_random_adapters(unet: UNet2DConditionModel, count: int, seed: int = 0) -> list[str]:
    """Add ``count`` random rank-4 peft adapters (scale ``DEFAULT_LORA_WEIGHT``) to ``unet``; their names."""
    names = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(count):
            name = f"bench_{i}"
            add_lora(unet, name, rank=4, targets=UNET_TARGETS, multiplier=DEFAULT_LORA_WEIGHT)
            for n, p in unet.named_parameters():
                if f"lora_B.{name}." in n:
                    torch.nn.init.normal_(p, std=0.01)  # peft starts B at zero; a real adapter is not a no-op
            names.append(name)
    return names


def _enable_adapters(unet: torch.nn.Module) -> None:
    # `activate_lora(unet, None)` disables adapters layer by layer, and a disabled peft layer ignores `adapter_names`
    # (it returns the base output): switch them back on so that later batched forwards really apply the LoRA.
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(True)


def merged_copy(unet: UNet2DConditionModel, lora: dict[str, torch.Tensor], multiplier: float) -> UNet2DConditionModel:
    """What the reference does per concept and step: deep-copy the UNet, merge the LoRA into a copy of its state
    dict (``W + multiplier · B A``) and load it."""
    custom = copy.deepcopy(unet)
    state = custom.state_dict()
    for key, down in lora.items():
        if ".lora_A." not in key:
            continue
        up = lora[key.replace(".lora_A.", ".lora_B.")]
        target = key.replace(".lora_A.weight", ".weight")
        state[target] = state[target] + multiplier * (up.to(state[target]) @ down.to(state[target]))
    custom.load_state_dict(state)
    return custom


@dataclass
class Styling:
    """A styling step's parts: a UNet tree with the IP-Adapter loaded, its ControlNet, the image-embedding width."""

    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    embed_dim: int


def prepare_styling(
    components: SDComponents, unet: UNet2DConditionModel, ip_root: Path, controlnet: ControlNetModel, embed_dim: int
) -> Styling:
    """Load the IP-Adapter at ``ip_root`` into ``unet`` (a tree of its own) as ``style_images`` does, style mode."""
    pipe = StableDiffusionControlNetPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.load_ip_adapter(
        str(ip_root),
        subfolder=IP_ADAPTER_SUBFOLDER,
        weight_name=IP_ADAPTER_WEIGHTS,
        image_encoder_folder=None,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(ip_adapter_scales(unet, "style", 1.0))
    unet.to(components.device, components.dtype)
    return Styling(unet=unet, controlnet=controlnet, embed_dim=embed_dim)


def measure(
    components: SDComponents,
    *,
    label: str,
    side: int,
    concepts: Sequence[int],
    rounds: int,
    steps: int,
    styling: Callable[[UNet2DConditionModel], Styling] | None,
    reference: bool,
) -> Costs:
    """Time every arm (module docstring) for ``concepts`` (values of N) on ``components.unet``.

    ``styling`` builds the styling parts for an adapter-free UNet tree (None: no styling arm). ``components.unet``
    gets adapters and processors only inside this call.
    """
    unet, device, dtype = components.unet, components.device, components.dtype
    latent = side // 8
    layers = len(cross_attention_layer_names(unet))
    dim = int(unet.config.cross_attention_dim)
    rows = 2  # one image, classifier-free guidance
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, latent, latent, generator=generator).to(device, dtype)
    t = torch.tensor(500, device=device)
    context = torch.randn(1, layers, 77, dim, generator=generator).to(device, dtype)  # layer-wise (ED-LoRA) states
    plain_states = context[:, 0].expand(rows, -1, -1)  # [2, 77, dim]: ordinary conditioning
    plain_unet = shallow_copy(unet)
    styled = styling(shallow_copy(unet)) if styling is not None else None
    arms: dict[str, Arm] = {}
    peaks: dict[str, float] = {}

    @contextmanager
    def plain() -> Iterator[Step]:
        yield lambda: plain_unet(x, t, encoder_hidden_states=plain_states)

    arms["plain"] = plain
    if styled is not None:
        control = torch.rand(rows, 3, side, side, generator=generator).to(device, dtype)
        embeds = torch.randn(1, 1, styled.embed_dim, generator=generator).to(device, dtype)
        image_embeds = [torch.cat([torch.zeros_like(embeds), embeds])]  # [2, 1, D]: zeros for the negative half

        def styling_step() -> object:
            down, mid = styled.controlnet(
                x,
                t,
                encoder_hidden_states=plain_states,
                controlnet_cond=control,
                conditioning_scale=CONTROL_SCALE,
                return_dict=False,
            )
            return styled.unet(
                x,
                t,
                encoder_hidden_states=plain_states,
                added_cond_kwargs={"image_embeds": image_embeds},
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )

        arms["styled"] = lambda: nullcontext(styling_step)

    with torch.no_grad(), lora_scope(unet):
        adapters = attach_random_adapters(unet, max(concepts))
        for n in concepts:
            paths: list[str | None] = [None, *adapters[:n]]
            masks = torch.zeros(n, 1, latent, latent, device=device)
            for k in range(n):
                masks[k, :, :, k * latent // n : (k + 1) * latent // n] = 1
            regions = RegionalState(
                list(adapters[:n]),
                masks[:, 0],
                context.expand(n, -1, -1, -1),
                cfg=True,
                negatives=context.expand(n, -1, -1, -1),
            )
            state = MultipathState(paths=n + 1, adapter_names=path_adapter_names(paths, rows), masks=masks, cfg=True)

            @contextmanager
            def regional(regions: RegionalState = regions) -> Iterator[Step]:
                with regional_attention(unet, regions):
                    yield lambda: unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1))

            @contextmanager
            def batched(state: MultipathState = state) -> Iterator[Step]:
                batch_x = x.repeat(state.paths, 1, 1, 1)
                batch_states = context.expand(rows * state.paths, -1, -1, -1)
                with multipath_attention(unet, state):
                    yield lambda: unet(batch_x, t, encoder_hidden_states=batch_states)

            @contextmanager
            def sequential(paths: list[str | None] = paths) -> Iterator[Step]:
                def step() -> None:
                    for adapter in paths:
                        activate_lora(unet, adapter, DEFAULT_LORA_WEIGHT)
                        unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1))

                try:
                    with layerwise_cross_attention(unet):
                        yield step
                finally:
                    _enable_adapters(unet)

            arms[f"regional.n{n}"] = regional
            arms[f"batched.n{n}"] = batched
            arms[f"sequential.n{n}"] = sequential
            if device.type == "cuda":
                with batched() as step:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    step()
                    peaks[f"batched.n{n}"] = torch.cuda.max_memory_allocated(device) / 2**20
        if reference and 2 in concepts:
            loras = [lora_state_dict(unet, name) for name in adapters[:2]]

            @contextmanager
            def reference_arm() -> Iterator[Step]:
                def step() -> None:
                    for lora in loras:
                        custom = merged_copy(plain_unet, lora, DEFAULT_LORA_WEIGHT)
                        custom(x, t, encoder_hidden_states=plain_states)
                        del custom
                        gc.collect()
                    plain_unet(x, t, encoder_hidden_states=plain_states)

                anomaly = torch.is_anomaly_enabled()
                torch.autograd.set_detect_anomaly(True)
                try:
                    yield step
                finally:
                    torch.autograd.set_detect_anomaly(anomaly)

            arms["reference.n2"] = reference_arm
        times = run_rounds(arms, rounds=rounds, steps=steps, device=device)
    return Costs(
        label=label, side=side, ms={k: statistics.median(v) for k, v in times.items()}, runs=times, peak_mib=peaks
    )


def print_costs(costs: Costs, threads: int) -> None:
    ms = costs.ms
    print(f"\n{costs.label}: {costs.side}x{costs.side} px, 1 image (CFG batch 2), {threads} torch thread(s)")
    print(f"  plain       {ms['plain']:9.1f} ms/step")
    if "styled" in ms:
        print(f"  styled      {ms['styled']:9.1f} ms/step ({ms['styled'] / ms['plain']:4.2f}x plain)")
    for n in (1, 2, 3):
        if f"batched.n{n}" not in ms:
            continue
        regional, batched, sequential = ms[f"regional.n{n}"], ms[f"batched.n{n}"], ms[f"sequential.n{n}"]
        peak = costs.peak_mib.get(f"batched.n{n}")
        print(
            f"  N={n} regional {regional:9.1f} ms/step ({regional / ms['plain']:4.2f}x plain)"
            f" | conductor batched {batched:9.1f} ms/step ({batched / ms['plain']:4.2f}x plain,"
            f" FLOP ratio {n + 1}, target <= {FLOP_MARGIN * (n + 1):.2f})"
            f" | sequential {sequential:9.1f} ms/step | batched speed-up {sequential / batched:4.2f}x"
            + (f" | peak {peak:.0f} MiB" if peak is not None else "")
        )
    if "reference.n2" in ms:
        print(
            f"  N=2 reference-style step (deep copy + LoRA merge per concept, anomaly detection) "
            f"{ms['reference.n2']:9.1f} ms/step ({ms['reference.n2'] / ms['batched.n2']:4.1f}x batched)"
        )


def cost_rows(costs: Costs, prefix: str, size: str) -> list[Row]:
    """The suite rows of one size (``prefix`` ``generation`` or ``generation.sd15``)."""
    ms = costs.ms
    plain = ms["plain"]
    where = f"{size}, {costs.side} px, one image with CFG, this machine's CPU" if "cuda" not in size else size
    rows: list[Row] = []
    if "regional.n2" in ms:
        rows.append(
            Row(
                f"{prefix}.regional.vs_plain",
                ms["regional.n2"] / plain,
                "x",
                f"plain sampling step ({plain:.1f} ms)",
                None,
                f"Regional fusion step with N = 2 concepts (per-token LoRA of each region on every projection, "
                f"region and negative prompts attended inside regions) over a plain UNet step ({where}). The ideal "
                "is ~1x (same batch); the extra is 2N low-rank products per projection and 2N cross-attentions "
                "per layer, which small models feel as per-op overhead.",
            )
        )
    for n in (1, 2, 3):
        if f"batched.n{n}" not in ms:
            continue
        ratio = ms[f"batched.n{n}"] / plain
        bound = FLOP_MARGIN * (n + 1)
        rows.append(
            Row(
                f"{prefix}.conductor.n{n}.vs_plain",
                ratio,
                "x",
                f"plain sampling step ({plain:.1f} ms); FLOP ratio {n + 1}",
                f"<= {bound:.2f}",
                f"Concept Conductor step with N = {n} (one forward at batch {2 * (n + 1)}: base + {n} concept paths, "
                f"per-row LoRA, up-block injection) over a plain step at batch 2 ({where}); its FLOPs are {n + 1}x, "
                f"the target {FLOP_MARGIN}x that. "
                + (
                    f"Below {n + 1}x here because the plain step does not fill the CPU (per-op overhead and weight "
                    "reads are shared by the batch); on a GPU the FLOP ratio is the floor."
                    if ratio < n + 1
                    else f"Above its FLOP ratio by {ratio / (n + 1):.2f}x: per-row LoRA and injection overhead."
                ),
            )
        )
    if "sequential.n2" in ms:
        speedup = ms["sequential.n2"] / ms["batched.n2"]
        rows.append(
            Row(
                f"{prefix}.conductor.n2.sequential_vs_batched",
                speedup,
                "x",
                f"Conductor N = 2 batched step ({ms['batched.n2']:.1f} ms)",
                f">= {SPEEDUP_TARGET}",
                f"The same 3 paths as 3 forwards at batch 2 with the active adapter switched between them, over one "
                f"batched forward ({where}). Already cheaper than the reference code, which also deep-copies the "
                "UNet and re-merges LoRA per path and step"
                + (
                    f" (measured: {ms['reference.n2'] / ms['batched.n2']:.1f}x batched)."
                    if "reference.n2" in ms
                    else "."
                ),
            )
        )
    if "styled" in ms:
        rows.append(
            Row(
                f"{prefix}.styling.vs_plain",
                ms["styled"] / plain,
                "x",
                f"plain sampling step ({plain:.1f} ms)",
                None,
                f"Styling step (ControlNet forward + UNet with IP-Adapter processors and ControlNet residuals, batch "
                f"2) over a plain step ({where}). The ControlNet is the UNet's encoder half again (+~50% FLOPs at SD "
                "1.5 size); the IP-Adapter adds 4 image tokens to every cross-attention.",
            )
        )
    return rows


def image_seconds(components: SDComponents, steps: int) -> float:
    """Wall seconds of one 2-concept Conductor image at the default config (guidance and refinement included)."""
    side = components.default_resolution
    placements = [
        ConceptPlacement(random_edlora(components, name, word, seed=i))
        for i, (name, word) in enumerate((("bench-dog", "dog"), ("bench-cat", "cat")))
    ]

    def image(count: int) -> None:
        request = SamplingRequest.create(
            prompt="a <bench-dog> and a <bench-cat> on the beach",
            placements=placements,
            width=side,
            height=side,
            num_inference_steps=count,
            guidance_scale=7.5,
            seed=0,
        )
        generate_conductor(components, request)

    image(2)  # warm-up
    _sync(components.device)
    started = time.perf_counter()
    image(steps)
    _sync(components.device)
    return time.perf_counter() - started


def reference_line(costs: Costs, steps: int, seconds: float) -> str:
    """Our step count and time for a 2-concept Conductor image next to the reference implementation's settings."""
    per_step = costs.ms.get("reference.n2", float("nan")) / costs.ms["batched.n2"]
    image = per_step * REFERENCE_STEPS / steps
    return (
        f"2-concept Conductor image, {costs.label} at {costs.side} px: ours {steps} steps (guidance on the first 30%, "
        f"7 mask refinements; one batched forward per step) in {seconds:.2f} s. Reference implementation: "
        f"{REFERENCE_STEPS} steps, per step and concept a UNet deep copy + LoRA re-merge, anomaly detection on; "
        f"its denoising step measured here costs {per_step:.1f}x ours, so the image is ~{image:.0f}x "
        "ours before its guidance steps (61 of its 200; each adds N + 2 forwards, copies again, and a backward)."
    )


def _tiny_styling(components: SDComponents, models_root: Path) -> Callable[[UNet2DConditionModel], Styling]:
    weights = load_styling_weights("tiny", models_root, device=components.device, dtype=components.dtype)
    embed_dim = int(weights.image_encoder.config.projection_dim)
    return lambda unet: prepare_styling(
        components, unet, weights.ip_adapter_root, weights.controlnet("canny"), embed_dim
    )


def _sd15_styling(components: SDComponents, workdir: Path) -> Callable[[UNet2DConditionModel], Styling]:
    def build(unet: UNet2DConditionModel) -> Styling:
        root = write_ip_adapter(unet, workdir, SD15_IMAGE_EMBED_DIM)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            controlnet = sd15_controlnet(unet).to(components.device, components.dtype).eval().requires_grad_(False)
        return prepare_styling(components, unet, root, controlnet, SD15_IMAGE_EMBED_DIM)

    return build


def sd15_fits(components: SDComponents, side: int, seconds_left: float) -> tuple[bool, float]:
    """Whether the SD 1.5-shaped arms fit in ``seconds_left``, from one probe forward; and the probe's seconds.

    Estimate: per round, plain 1 + batched N=2 ~3 (FLOP-bound; less when overhead-bound) + sequential 3 + styled
    ~1.5 plain steps, each arm run twice a round (warm-up + one timed step), two rounds, plus the ControlNet build.
    """
    unet, device, dtype = components.unet, components.device, components.dtype
    latent = side // 8
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    states = torch.randn(2, 77, int(unet.config.cross_attention_dim), device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=states)
        _sync(device)
        started = time.perf_counter()
        unet(x, t, encoder_hidden_states=states)
        _sync(device)
        probe = time.perf_counter() - started
    estimate = probe * (1 + 3 + 3 + 1.5) * 2 * 2 + 10
    return estimate <= seconds_left, probe


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sd15", action="store_true", help="tiny preset only")
    parser.add_argument("--sd15-side", type=int, default=64, help="image side for the SD 1.5-shaped UNet")
    parser.add_argument("--budget", type=float, default=110.0, help="seconds the whole run may take (SD 1.5 part)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models-root", type=Path, default=Path(".models"))
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    components = load_components("tiny", args.models_root, device=args.device, dtype=dtype)
    tiny = measure(
        components,
        label="tiny preset",
        side=64,
        concepts=(1, 2, 3),
        rounds=3 if args.quick else 7,
        steps=2 if args.quick else 3,
        styling=_tiny_styling(components, args.models_root),
        reference=True,
    )
    print_costs(tiny, threads)
    rows = cost_rows(tiny, "generation", "tiny preset")
    steps = 10 if args.quick else OUR_STEPS
    seconds = image_seconds(components, steps)
    print("\n" + reference_line(tiny, steps, seconds))
    if not args.quick and not args.no_sd15:
        with tempfile.TemporaryDirectory(prefix="tessera-fusion-cost-") as tmp:
            sd15 = sd15_components(Path(tmp), device=args.device, dtype=dtype)
            left = args.budget - (time.perf_counter() - started)
            fits, probe = sd15_fits(sd15, args.sd15_side, left)
            if fits:
                costs = measure(
                    sd15,
                    label="SD 1.5-shaped UNet (random weights)",
                    side=args.sd15_side,
                    concepts=(2,),
                    rounds=2,
                    steps=1,
                    styling=_sd15_styling(sd15, Path(tmp)),
                    reference=False,
                )
                print_costs(costs, threads)
                rows += cost_rows(costs, "generation.sd15", "SD 1.5-shaped UNet")
            else:
                print(
                    f"\nSD 1.5-shaped UNet at {args.sd15_side} px skipped: a plain forward took {probe:.1f} s, the "
                    f"arms would not fit the {left:.0f} s left of --budget {args.budget:.0f} s"
                )
    print(f"\n{time.perf_counter() - started:.0f} s in all\n")
    print(format_table(rows))
    write_rows(rows, args.rows)


if __name__ == "__main__":
    main()
