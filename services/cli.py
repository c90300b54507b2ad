"""The ``tessera`` command: run the service (embedded or as separate parts), the demo, and model tools."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.config import PRESET_GENERATION_DEFAULTS
from core.rules import MAX_REQUEST_SEED
from services.failures import EXIT_CODES_HELP, explain

if TYPE_CHECKING:
    from core.stores.keys import ApiKeyStore

# Locals stay out of tracebacks: they hold API keys and URLs with passwords.
app = typer.Typer(
    help="Tessera: multi-concept image personalization as a service.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
models_app = typer.Typer(help="Model presets: build, check and train them.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys per tenant (stored as hashes in Redis).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
eval_app = typer.Typer(help="Measure quality: concept fidelity, prompt following, leakage.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
shapes_app = typer.Typer(
    help="The shapes toy world (tessera_shapes): train its preset, evaluate it, calibrate its scorer.",
    no_args_is_help=True,
)
app.add_typer(shapes_app, name="shapes")


PRESETS: tuple[str, ...] = tuple(PRESET_GENERATION_DEFAULTS)


def _check_preset(value: str) -> str:
    """The --preset options take the presets the service knows (a custom preset is selected with
    ``TESSERA_MODELS__PRESET`` by ``tessera api`` / ``tessera worker``)."""
    if value not in PRESETS:
        raise typer.BadParameter(f"must be one of {', '.join(PRESETS)}, got {value!r}")
    return value


def _package_version() -> str:
    try:
        return version("tessera")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tessera {_package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    _debug: Annotated[
        bool, typer.Option("--debug", help="On an expected failure, show the traceback instead of one line.")
    ] = False,
) -> None:
    """Tessera: multi-concept image personalization as a service."""


def _logging() -> None:
    from services import logs

    logs.configure()


def _stop_on_signal() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM; installed before starting anything, so a signal that arrives
    during start-up still leads to an orderly stop instead of killing the parent mid-start."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where Redis data, objects, models and logs live.")] = Path("data"),
    preset: Annotated[str, typer.Option(help="Model preset: tiny | shapes | sd15.", callback=_check_preset)] = "tiny",
) -> None:
    """Everything on one machine: a private Redis, the API, one worker, a local object store."""
    from services.embedded import Stack

    stop = _stop_on_signal()
    stack = Stack(data_dir=data_dir, preset=preset, host=host, port=port, log_to_files=False)
    stack.start()
    try:
        typer.echo(f"Tessera listening on {stack.url}  (API key: {stack.api_key}, tenant: local)")
        typer.echo(f"data in {stack.data_dir}; Ctrl-C stops everything")
        stop.wait()
    finally:
        typer.echo("stopping…")
        stack.stop()


@app.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (settings from TESSERA_* variables)."""
    import uvicorn

    _logging()
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


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: train, generate (GPU) or webhooks (no GPU).")
    ] = "train,generate",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a GPU worker: one job at a time, models loaded on the first job."""
    from services.worker.app import make_celery

    _logging()
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


@app.command()
def demo(
    url: Annotated[str | None, typer.Option(help="A running service; omitted = start an embedded one.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TESSERA_API_KEY")] = None,
    data_dir: Annotated[Path, typer.Option()] = Path("data/demo"),
    preset: Annotated[
        str, typer.Option(help="Model preset: shapes (trained toy world) | tiny | sd15.", callback=_check_preset)
    ] = "shapes",
    out: Annotated[
        Path, typer.Option(help="Where to save the generated images and masks (one folder per job).")
    ] = Path("data/demo-output"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_REQUEST_SEED, help="Seed of the generated scene.")] = 7,
) -> None:
    """Upload sample images, train two concepts, generate one image with both, over HTTP."""
    from services.demo import run_demo
    from services.embedded import Stack

    if url is not None:
        if api_key is None:
            raise typer.BadParameter("--api-key (or TESSERA_API_KEY) is required with --url", param_hint="--api-key")
        sys.exit(run_demo(url, api_key, out=out, preset=preset, seed=seed, service_stays_up=True))
    with Stack(data_dir=data_dir, preset=preset) as stack:
        typer.echo(f"embedded service at {stack.url} (logs in {stack.data_dir / 'logs'})")
        code = run_demo(stack.url, stack.api_key, out=out, preset=preset, seed=seed)
    sys.exit(code)


@models_app.command("init")
def models_init(
    preset: Annotated[str, typer.Option(help="tiny | shapes | sd15.", callback=_check_preset)] = "tiny",
    root: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
) -> None:
    """Build the tiny preset (deterministic), or check that a preset's folder is complete."""
    from core.config import get_settings
    from core.ml.components import init_preset

    path = init_preset(preset, root or get_settings().models.root)
    typer.echo(f"preset {preset} ready in {path}")


@models_app.command("pull")
def models_pull(
    preset_name: Annotated[
        str | None, typer.Argument(metavar="[PRESET]", help="The preset to download: sd15 (the default).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Same as the PRESET argument (the older form).")] = None,
    dest: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only these parts: base, sam, ip-adapter, controlnet, eval.")
    ] = None,
) -> None:
    """Download a preset's weights (needs the internet) into the layout the loaders expect, verified.

    `tessera models pull sd15` or `tessera models pull --preset sd15`.
    """
    import os

    from core.config import get_settings
    from core.ml.pull import HubSource, pull_preset

    if preset_name is not None and preset is not None and preset_name != preset:
        raise typer.BadParameter(f"PRESET {preset_name!r} and --preset {preset!r} disagree", param_hint="--preset")
    preset = preset_name or preset or "sd15"

    path = pull_preset(
        preset,
        dest or get_settings().models.root,
        source=HubSource(token=os.environ.get("HF_TOKEN")),
        include=include or None,
    )
    typer.echo(f"preset {preset} in {path}")


# The shapes commands hand every argument, --help included, to the tool's own argparse parser: its options are
# defined (and documented) once, there, and typer would otherwise answer --help with a generic page.
_FORWARD_ALL = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@shapes_app.command("train", context_settings=_FORWARD_ALL)
def shapes_train(ctx: typer.Context) -> None:
    """Train the shapes preset from scratch into core/ml/presets/shapes (--help lists every option)."""
    from tessera_shapes.training import main as train_main

    _logging()
    train_main(list(ctx.args), prog=ctx.command_path)


@shapes_app.command("eval", context_settings=_FORWARD_ALL)
def shapes_eval(ctx: typer.Context) -> None:
    """Measure the shipped shapes model: base accuracy, concept fidelity, leakage, fusion binding.

    Writes eval/shapes.json and eval/shapes.png and prints one table; --quick runs the subset the tests run
    (--help lists every option).
    """
    from tessera_shapes.report import main as eval_main

    eval_main(list(ctx.args), prog=ctx.command_path)


@shapes_app.command("calibrate", context_settings=_FORWARD_ALL)
def shapes_calibrate(ctx: typer.Context) -> None:
    """Calibrate the shapes scorer on true drawings and near misses; prints thresholds and shares as JSON."""
    from tessera_shapes.calibration import main as calibrate_main

    calibrate_main(list(ctx.args), prog=ctx.command_path)


# The names these commands had before the shapes group; scripts and habits still use them.
models_app.command("train-shapes", context_settings=_FORWARD_ALL, help="Same as `tessera shapes train`.")(shapes_train)
eval_app.command("shapes", context_settings=_FORWARD_ALL, help="Same as `tessera shapes eval`.")(shapes_eval)


@eval_app.command("concept")
def eval_concept(
    encoders: Annotated[Path, typer.Option(help="Folder with clip-vit-b32/ and dino-vits16/.")],
    generated: Annotated[Path, typer.Option(help="Folder of generated images.")],
    references: Annotated[Path, typer.Option(help="Folder of the concept's training images.")],
    prompt: Annotated[
        str, typer.Option(help='The prompt the images were generated from, e.g. "a <corgi> on the beach".')
    ],
    class_word: Annotated[str, typer.Option(help="The concept's class word (replaces <name> for CLIP-T).")],
) -> None:
    """CLIP-T, CLIP-I and DINO of generated images against a concept's references (Custom Diffusion protocol)."""
    import json

    from core.ml.metrics import run_concept_eval

    scores = run_concept_eval(encoders, generated, references, prompt, class_word)
    typer.echo(json.dumps(scores, indent=2))


def _key_store() -> ApiKeyStore:
    import redis

    from core.config import get_settings
    from core.stores.keys import ApiKeyStore

    return ApiKeyStore(redis.Redis.from_url(get_settings().redis.dsn()))


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")]) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    record, secret = _key_store().create(tenant)
    typer.echo(f"{record.id}  tenant={record.tenant}\n{secret}")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (id, tenant, prefix, created, revoked); secrets are never shown."""
    for record in _key_store().list(tenant):
        revoked = f"revoked {record.revoked_at.isoformat()}" if record.revoked_at else "active"
        typer.echo(f"{record.id}  {record.tenant}  {record.prefix}…  {record.created_at.isoformat()}  {revoked}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    record = _key_store().revoke(key_id)
    typer.echo(f"{record.id} revoked")


concepts_app = typer.Typer(help="Trained concepts: diagnostics.", no_args_is_help=True)
app.add_typer(concepts_app, name="concepts")


@concepts_app.command("diagnose")
def concepts_diagnose(
    adapter: Annotated[Path, typer.Argument(help="The concept's adapter (.safetensors, or a Mix-of-Show .pth).")],
    images: Annotated[Path, typer.Option(help="Folder of held-out images of the concept (.png/.jpg).")],
    masks: Annotated[
        Path | None,
        typer.Option(help="Folder of masks with the images' file names (.png, white = concept); default: computed."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Model preset the adapter was trained on.", callback=_check_preset)
    ] = "tiny",
    root: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
    caption: Annotated[
        str | None, typer.Option(help='Caption with <concept>; default "a photo of a <concept>".')
    ] = None,
    class_word: Annotated[str, typer.Option(help="Class word, for a Mix-of-Show .pth (it does not store one).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the noise draws.")] = 0,
) -> None:
    """Attention-in-mask of a trained concept on held-out images, per resolution (share of its attention on it)."""
    import json

    import PIL.Image

    from core.config import get_settings
    from core.ml.components import load_components
    from core.ml.edlora.adapter import load_adapter
    from core.ml.edlora.diagnostics import measure_attention_in_mask
    from core.ml.edlora.mixofshow import load_mixofshow_edlora
    from core.ml.masks.sam import load_segmenter
    from core.ml.masks.segmenter import compute_masks

    models_root = root or get_settings().models.root
    components = load_components(preset, models_root)
    if adapter.suffix == ".pth":
        weights = load_mixofshow_edlora(adapter, class_word=class_word, base_model_id=components.base_model_id)
    else:
        weights = load_adapter(adapter)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise typer.BadParameter(f"no .png/.jpg images in {images}", param_hint="--images")
    pictures = [PIL.Image.open(p).convert("RGB") for p in files]
    if masks is not None:
        concept_masks = [PIL.Image.open(masks / f"{p.stem}.png").convert("L") for p in files]
    else:
        segmenter = load_segmenter(preset, models_root)
        concept_masks = [m.concept_image() for m in compute_masks(segmenter, pictures)]
    report = measure_attention_in_mask(components, weights, pictures, concept_masks, seed=seed, caption=caption)
    typer.echo(f"concept <{weights.concept_name}> on {report.num_images} images, timesteps {list(report.timesteps)}")
    for side, share in report.per_resolution.items():
        typer.echo(f"  {side}x{side} latent cells: attention-in-mask {share:.3f}")
    typer.echo(f"  overall: {report.overall:.3f}")
    typer.echo(json.dumps(report.as_dict()))


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tessera`` entry point: an expected failure (Redis or the API unreachable, a refused key, missing
    weights, a refused request) is one line on stderr and its own exit code (``services.failures``); ``--debug``
    shows the traceback instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="tessera")
    except Exception as exc:
        failure = explain(exc)
        if failure is None or "--debug" in args:
            raise
        typer.echo(f"tessera: {failure.message}", err=True)
        sys.exit(failure.code)


if __name__ == "__main__":
    main()
