"""Settings: every knob is an environment variable ``TESSERA_<SECTION>__<FIELD>``.

Only the composition roots (the API app factory, the Celery app factory and the CLI) call
``get_settings()``; everything below them receives the objects it needs as arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The built-in URL-signing key: public, so anyone could mint download URLs with it. Production refuses it.
DEVELOPMENT_URL_SECRET = "dev-insecure-url-secret"


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the broker, job records and progress.")
    password: SecretStr | None = Field(
        None, description="Redis password (AUTH), kept out of the URL so it can live in a secret store."
    )

    def dsn(self) -> str:
        """The URL every client connects with: ``url`` with ``password`` in it when one is set (and the URL has
        none). Contains the secret: never log it."""
        if self.password is None:
            return self.url
        parts = urlsplit(self.url)
        if parts.password:
            return self.url
        user = quote(parts.username or "", safe="")
        secret = quote(self.password.get_secret_value(), safe="")
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


class StorageSettings(BaseModel):
    backend: Literal["local", "s3"] = Field("local", description="Object store: a local directory or an S3 API.")
    root: Path = Field(Path("./data/objects"), description="Directory of the local backend.")
    bucket: str = Field("tessera", description="S3 bucket.")
    endpoint_url: str | None = Field(None, description="S3 endpoint the service talks to (MinIO, moto); unset = AWS.")
    public_endpoint_url: str | None = Field(
        None, description="S3 endpoint that presigned URLs are signed for (what browsers reach); unset = endpoint_url."
    )
    region: str = Field("us-east-1", description="S3 region.")
    access_key_id: str | None = Field(None, description="S3 access key; unset = the default AWS credential chain.")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    create_bucket: bool = Field(False, description="Create the bucket at start-up when it is missing.")
    url_expiry_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600, description="Lifetime of signed output URLs.")
    url_secret: SecretStr = Field(
        SecretStr(DEVELOPMENT_URL_SECRET), description="HMAC key for local-backend URLs; set it in production."
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Public address of the API, used in local-backend URLs."
    )
    retry_delays_seconds: list[Annotated[float, Field(ge=0, le=600)]] = Field(
        [1.0, 2.0, 4.0, 8.0],
        max_length=20,
        description="A worker retries a failed object-store call after each of these delays, then fails the job "
        "with storage_unavailable.",
    )


# The shapes world has no style to transfer apart from the colours and patterns its concepts carry, so it ships
# no IP-Adapter or ControlNet (see core/ml/presets/shapes/README.md).
PRESETS_WITHOUT_STYLING = frozenset({"shapes"})


class GenerationDefaults(BaseModel):
    """What a generation request on a preset gets for the sampling fields it leaves out."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    lora_weight: float


# One table, read by the API (to fill a request) and the worker: each preset's native size and the sampling it was
# measured with. The shapes numbers are its preset.json's recommended_steps / recommended_guidance_scale /
# recommended_lora_weight (a test keeps them equal): 7.5, SD's default, over-saturates that small model and drops
# two-object accuracy. lora_weight is a concept's adapter scale when the request gives none: Mix-of-Show's 0.7 on
# SD 1.5, and on shapes too (0.85 drew purple_triangle magenta alone; core/ml/presets/shapes/README.md).
PRESET_GENERATION_DEFAULTS: dict[str, GenerationDefaults] = {
    "sd15": GenerationDefaults(width=512, height=512, num_inference_steps=50, guidance_scale=7.5, lora_weight=0.7),
    "shapes": GenerationDefaults(width=64, height=64, num_inference_steps=20, guidance_scale=4.0, lora_weight=0.7),
    "tiny": GenerationDefaults(width=64, height=64, num_inference_steps=20, guidance_scale=7.5, lora_weight=0.7),
}


class TrainingDefaults(BaseModel):
    """Training options a preset sets for a request that leaves them out (None: ``EDLoRAConfig``'s own default)."""

    model_config = ConfigDict(frozen=True)

    separation_loss_weight: float | None = None


# Training options that differ per preset. On shapes the separation loss at EDLoRAConfig's weight 1 turns the
# green ring into a disc (pair binding 0.02 over 3 training seeds, 0.19 at 0.3 on 2 seeds), while at 0.1 it costs
# nothing measurable (conductor 0.625, as on the same composites without it); with no leakage at weight 0 there,
# it has nothing to lower (core/ml/presets/shapes/README.md).
PRESET_TRAINING_DEFAULTS: dict[str, TrainingDefaults] = {"shapes": TrainingDefaults(separation_loss_weight=0.1)}
NO_TRAINING_DEFAULTS = TrainingDefaults()
"""A preset that sets none: every option keeps ``EDLoRAConfig``'s default."""


class ModelSettings(BaseModel):
    preset: str = Field("tiny", description="Model set: tiny | shapes | sd15.")
    root: Path = Field(Path("./data/models"), description="Directory that holds one folder per preset.")
    device: str = Field("auto", description="Torch device for workers: auto | cpu | cuda | cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto = float16 on CUDA, float32 on CPU."
    )
    cpu_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="torch threads on a CPU worker (0 = torch's default); small models are fastest on one, and "
        "more threads slow down badly when other processes share the cores.",
    )
    adapter_cache_dir: Path = Field(Path("./data/adapter-cache"), description="Worker-local cache of ED-LoRA files.")

    @property
    def generation_defaults(self) -> GenerationDefaults:
        """The sampling a request on this preset gets by default; a preset not in the table gets SD 1.5's."""
        return PRESET_GENERATION_DEFAULTS.get(self.preset, PRESET_GENERATION_DEFAULTS["sd15"])

    @property
    def training_defaults(self) -> TrainingDefaults:
        """The training options a request on this preset gets where it sets none (most presets: none)."""
        return PRESET_TRAINING_DEFAULTS.get(self.preset, NO_TRAINING_DEFAULTS)

    @property
    def has_styling(self) -> bool:
        """Whether the preset ships styling weights (IP-Adapter, ControlNet): ``shapes`` has none."""
        return self.preset not in PRESETS_WITHOUT_STYLING


class LimitSettings(BaseModel):
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted upload, in bytes.")
    max_image_side: int = Field(4096, ge=64, description="Largest accepted image width or height, in pixels.")
    max_image_pixels: int = Field(16_000_000, ge=4096, description="Largest accepted image area, in pixels.")


class WorkerSettings(BaseModel):
    train_time_limit_seconds: int = Field(4 * 3600, ge=60, description="Hard time limit of a training task.")
    generate_time_limit_seconds: int = Field(1800, ge=30, description="Hard time limit of a generation task.")
    max_redeliveries: int = Field(3, ge=0, description="Times a task whose worker died is run again before failing.")
    lease_seconds: float = Field(
        20.0, ge=1.0, le=600.0, description="A running job whose worker sent no heartbeat for this long is re-queued."
    )
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="Port of the worker's Prometheus metrics (0 = off); answers during jobs."
    )
    metrics_host: str = Field(
        "0.0.0.0",
        description="Address the worker's metrics listen on: all interfaces in a container (Prometheus scrapes the "
        "pod); `tessera serve` sets 127.0.0.1, like its API.",
    )
    on_sigterm: Literal["hand_back", "finish"] = Field(
        "hand_back",
        description="What a worker told to stop does with its running job: hand_back (at the next step, for "
        "another worker) or finish (Celery's warm shutdown; for autoscalers that count waiting jobs only, "
        "which would otherwise stop busy workers again and again).",
    )
    stranded_after_seconds: float = Field(
        60.0,
        ge=1.0,
        description="A queued job whose message the broker lost (e.g. Redis restarted) is sent again after this long.",
    )
    visibility_timeout_seconds: int = Field(
        5 * 3600, ge=60, description="Broker visibility timeout; must exceed the longest task."
    )


class QuotaSettings(BaseModel):
    max_active_jobs: int = Field(100, ge=1, description="Queued plus running jobs a tenant may have at once.")
    requests_per_minute: int = Field(
        600, ge=1, description="Requests one API key may make in any 60 seconds (a sliding window)."
    )


class WebhookSettings(BaseModel):
    allow_private: bool = Field(
        False,
        description="Allow webhook targets on loopback and private addresses (local development only); link-local "
        "and cloud metadata addresses stay refused.",
    )
    allow_http: bool = Field(False, description="Allow plain-http webhook targets (local development only).")
    timeout_seconds: float = Field(15.0, gt=0, le=60, description="Time a receiver has to answer one delivery.")
    retry_delays_seconds: list[float] = Field(
        [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
        description="Delays between attempts of a failed delivery (Standard Webhooks schedule), ±20% jitter each.",
    )


class RetentionSettings(BaseModel):
    input_seconds: int = Field(30 * 24 * 3600, ge=60, description="Uploaded files are deleted this long after upload.")
    output_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="Generated images and masks are deleted this long after the job made them."
    )
    sweep_interval_seconds: float = Field(
        300.0, gt=0, description="How often a worker deletes expired files (S3 also gets lifecycle rules)."
    )


class Settings(BaseSettings):
    """The whole configuration, read from ``TESSERA_*`` environment variables (nested with ``__``)."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development",
        description="production refuses to start with the built-in URL secret (local backend) or with webhooks to "
        "private or plain-http targets allowed.",
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    api_keys: SecretStr = Field(
        SecretStr(""), description='Static keys, "tenant-a:key-a,tenant-b:key-b". Empty = no access.'
    )
    events_keepalive_seconds: float = Field(
        15.0, gt=0, le=300, description="Interval of keep-alive comments on job event streams (SSE)."
    )
    job_ttl_seconds: int = Field(30 * 24 * 3600, ge=60, description="How long finished job records are kept.")
    console_enabled: bool = Field(
        True,
        description="Serve the browser console at /console (static pages that call the public API with the user's "
        "key); false answers 404 there.",
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_well_formed(cls, value: SecretStr) -> SecretStr:
        for item in filter(None, (p.strip() for p in value.get_secret_value().split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f'api_keys entries must be "tenant:key", got an entry without one: "{tenant}:…"')
        return value

    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        if self.storage.backend == "local" and self.storage.url_secret.get_secret_value() == DEVELOPMENT_URL_SECRET:
            problems.append(
                "TESSERA_STORAGE__URL_SECRET is the built-in development key (anyone could sign download URLs); "
                "set a random one, e.g. openssl rand -hex 32"
            )
        if self.webhooks.allow_private:
            problems.append("TESSERA_WEBHOOKS__ALLOW_PRIVATE must be false (webhooks could reach internal hosts)")
        if self.webhooks.allow_http:
            problems.append("TESSERA_WEBHOOKS__ALLOW_HTTP must be false (webhook payloads would travel in clear)")
        if problems:
            raise ValueError("TESSERA_ENVIRONMENT=production refuses these settings: " + "; ".join(problems))
        return self

    def tenant_keys(self) -> dict[str, str]:
        """Map every static API key to its tenant."""
        pairs = (p.strip().partition(":") for p in self.api_keys.get_secret_value().split(",") if p.strip())
        return {key: tenant for tenant, _, key in pairs}


def get_settings() -> Settings:
    """Read the settings from the environment (composition roots only)."""
    return Settings()


def _rows(model: type[BaseModel], env_prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{env_prefix}{name.upper()}__")
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "(secret)" if default.get_secret_value() else ""
        shown = "" if default is None else str(default)
        description = (info.description or "").replace("|", "\\|")
        rows.append((f"{env_prefix}{name.upper()}", shown, description))
    return rows


def settings_reference() -> str:
    """The configuration reference as a Markdown table, generated from ``Settings`` (the README embeds it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, description in _rows(Settings, "TESSERA_"):
        lines.append(f"| `{env}` | `{default}` | {description} |" if default else f"| `{env}` | | {description} |")
    return "\n".join(lines) + "\n"
