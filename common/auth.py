"""Bearer-token authentication and roles for every service: one server interceptor (see docs/security.md).

Callers send ``authorization: Bearer <token>``. The tokens file (``ZDM_AUTH_TOKENS_FILE``, JSON or YAML)
holds only SHA-256 hashes::

    {"tokens": [{"name": "line-3", "roles": ["line"], "sha256": "<hex sha256 of the token>"}]}

Roles are levels, each allowed what the ones below it are: ``line`` < ``auditor`` < ``scheduler`` <
``admin``. ``RPC_ROLES`` names the least role of each RPC; an RPC missing there needs ``admin``, so a
new RPC is never open by accident. Health and reflection stay open (probes and tooling).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pool

from common.errors import PermissionDenied
from common.ratelimit import RateLimiter

log = logging.getLogger(__name__)

ROLES = ("line", "auditor", "scheduler", "admin")  # ascending: each role may do what the ones before may

# The least role each RPC needs, by "package.Service/Method". Add a new RPC here (any service, also one a
# proto of another package defines); an RPC not listed needs "admin". `unmapped_rpcs()` lists ours that
# fall back to admin, and a test checks that every name here is spelled like a real RPC.
RPC_ROLES: dict[str, str] = {
    # line: the factory line asks for verdicts
    "zdm.v1.Classifier/Classify": "line",
    "zdm.v1.Classifier/ClassifyBatch": "line",
    "zdm.v1.Classifier/ClassifyStream": "line",
    "zdm.v1.Classifier/GetModelInfo": "line",
    # Open Inference Protocol (KServe v2) on the classifier: verdicts and readiness, like Classify
    "inference.GRPCInferenceService/ModelInfer": "line",
    "inference.GRPCInferenceService/ServerLive": "line",
    "inference.GRPCInferenceService/ServerReady": "line",
    "inference.GRPCInferenceService/ModelReady": "line",
    "inference.GRPCInferenceService/ServerMetadata": "line",
    "inference.GRPCInferenceService/ModelMetadata": "line",
    # auditor: explanations, evaluations, the audit trail and the model list (read only)
    "zdm.v1.Explainer/Explain": "auditor",
    "zdm.v1.Explainer/EvaluateDataset": "auditor",
    "zdm.v1.Explainer/SearchDefaults": "auditor",  # with store=true: admin (checked by the servicer)
    "zdm.v1.Classifier/QueryAudit": "auditor",
    "zdm.v1.Trainer/ListModels": "auditor",
    "zdm.v1.Trainer/GetModel": "auditor",
    # scheduler: training jobs
    "zdm.v1.Trainer/SubmitJob": "scheduler",
    "zdm.v1.Trainer/GetJob": "scheduler",
    "zdm.v1.Trainer/WatchJob": "scheduler",
    "zdm.v1.Trainer/CancelJob": "scheduler",
    "zdm.v1.Trainer/ListJobs": "scheduler",
    "zdm.v1.Trainer/CheckDataset": "scheduler",  # reads a dataset the way SubmitJob does, without training
    # admin only (listed for the reader; unlisted RPCs are admin anyway): SetThreshold, SetAlias, CompareModels
    "zdm.v1.Classifier/SetThreshold": "admin",
    "zdm.v1.Trainer/SetAlias": "admin",
    "zdm.v1.Trainer/CompareModels": "admin",
}
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
AUTH_HEADER = "authorization"


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's name and its highest role."""

    name: str
    roles: frozenset[str]

    @property
    def level(self) -> int:
        return max((ROLES.index(r) for r in self.roles), default=-1)

    def may(self, role: str) -> bool:
        return self.level >= ROLES.index(role)


# Without a tokens file (loopback only) every caller is this one and may do everything.
ANONYMOUS = Identity("anonymous", frozenset({"admin"}))
current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("zdm_identity", default=ANONYMOUS)


def caller() -> str:
    """The calling token's name inside a handler ("anonymous" when authentication is off)."""
    return current_identity.get().name


def require(role: str, what: str) -> None:
    """Raise PERMISSION_DENIED unless the caller has ``role`` (for choices inside a request, e.g. store=true)."""
    identity = current_identity.get()
    if not identity.may(role):
        raise PermissionDenied(f"{what} needs the {role} role; token {identity.name!r} has {sorted(identity.roles)}")


def required_role(method: str) -> str | None:
    """The least role for ``/package.Service/Method``; None for the open services (health, reflection)."""
    service, _, _name = method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    return RPC_ROLES.get(method.lstrip("/"), "admin")


def rpcs_of(service_names: Iterable[str]) -> list[str]:
    """Every "package.Service/Method" of these services, from the proto descriptors (generated code imported)."""
    pool = descriptor_pool.Default()
    return [f"{name}/{method.name}" for name in service_names for method in pool.FindServiceByName(name).methods]


def unmapped_rpcs(service_names: Iterable[str]) -> list[str]:
    """RPCs of these services without an entry in RPC_ROLES (they need admin)."""
    return [rpc for rpc in rpcs_of(service_names) if rpc not in RPC_ROLES]


def log_policy(service_names: list[str], tokens: TokenFile | None) -> None:
    if tokens is None:
        return
    log.info("authentication on: %d tokens from %s", len(tokens), tokens.path)
    admin_only = unmapped_rpcs(service_names)
    if admin_only:
        log.info("RPCs without a role in common/auth.py RPC_ROLES (admin only): %s", ", ".join(admin_only))


def token_sha256(token: str) -> str:
    """The hex digest a tokens file stores for ``token`` (``zdm token hash`` prints it)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Entry:
    identity: Identity
    sha256: str


def _parse_tokens(path: Path) -> list[_Entry]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ValueError(f"{path}: expected an object with a 'tokens' list")
    entries = []
    for i, item in enumerate(data["tokens"]):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: token {i} is not an object")
        name, roles, digest = item.get("name"), item.get("roles"), str(item.get("sha256", "")).lower()
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: token {i} has no name")
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise ValueError(f"{path}: token {name!r}: roles must be a non-empty list of {list(ROLES)}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}: token {name!r}: sha256 must be 64 hex digits (the hash, never the token)")
        entries.append(_Entry(Identity(name, frozenset(roles)), digest))
    return entries


class TokenFile:
    """The tokens file, re-read when its modification time or size changes (checked at most every second).

    A file that fails to parse at start raises; a bad edit later is logged and the previous tokens stay.
    """

    def __init__(self, path: Path, *, check_seconds: float = 1.0) -> None:
        self.path = path
        self._check_seconds = check_seconds
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._entries = _parse_tokens(path)
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            return
        with self._lock:
            if now - self._checked < self._check_seconds:
                return
            self._checked = now
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return
                self._entries = _parse_tokens(self.path)
                self._stamp = stamp
                log.info("tokens file %s reloaded (%d tokens)", self.path, len(self._entries))
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.error("tokens file %s not reloaded, keeping the previous tokens: %s", self.path, exc)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Identity | None:
        """The identity whose hash matches; every entry is compared (constant time per entry, no early exit)."""
        self._maybe_reload()
        digest = token_sha256(token)
        found = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry.identity
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_check(host: str, tokens_file: Path | None, allow_insecure: bool) -> None:
    """Refuse an open service on a non-loopback address (unless allowed); warn when serving open at all."""
    if tokens_file is not None:
        return
    if is_loopback(host):
        log.warning("no ZDM_AUTH_TOKENS_FILE: serving WITHOUT authentication on loopback %s", host)
        return
    if not allow_insecure:
        raise SystemExit(f"refusing to serve on {host} without authentication: set ZDM_AUTH_TOKENS_FILE "
                         "(or ZDM_ALLOW_INSECURE=true to accept an open service)")
    log.warning("no ZDM_AUTH_TOKENS_FILE and ZDM_ALLOW_INSECURE=true: serving WITHOUT authentication on %s", host)


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as ``handler`` that fails the call at once (streams are never read)."""
    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    return _same_kind(handler, refuse, refuse, parse=False)


def _same_kind(handler: Any, unary_behavior: Callable, stream_behavior: Callable, *, parse: bool = True) -> Any:
    """A handler of ``handler``'s kind; ``parse=False`` leaves requests as bytes (a refusal never parses one)."""
    des, ser = (handler.request_deserializer if parse else None), handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_behavior, des, ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream_behavior, des, ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary_behavior, des, ser)
    return grpc.stream_stream_rpc_method_handler(stream_behavior, des, ser)


def _as(identity: Identity, handler: Any) -> Any:
    """``handler`` with ``current_identity`` set to ``identity`` while it runs."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        token = current_identity.set(identity)
        try:
            return behavior(request, context)
        finally:
            current_identity.reset(token)

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        token = current_identity.set(identity)
        try:
            yield from behavior(request, context)
        finally:
            try:
                current_identity.reset(token)
            except ValueError:  # generator resumed in another context
                pass

    return _same_kind(handler, unary, stream)


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates (UNAUTHENTICATED), authorises by role (PERMISSION_DENIED), rate-limits per token
    (RESOURCE_EXHAUSTED), then runs the handler with ``current_identity`` set.

    Args:
        tokens: the tokens file; None = authentication off (everyone is ANONYMOUS, an admin).
        limiter: per-token call rates of the costly RPCs; None = unlimited (the builder passes none without
            tokens: an open loopback service is a developer's or a test's, and has no tokens to count by).
    """

    def __init__(self, tokens: TokenFile | None, limiter: RateLimiter | None = None) -> None:
        self._tokens = tokens
        self._limiter = limiter

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        role = required_role(method)
        handler = continuation(handler_call_details)
        if handler is None or role is None:
            return handler
        if self._tokens is None:
            if self._limiter is None:
                return handler  # open: current_identity stays at its default, ANONYMOUS
            identity = ANONYMOUS
        else:
            token = bearer_token(handler_call_details.invocation_metadata)
            if token is None:
                return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                                "missing credentials: send 'authorization: Bearer <token>' (SDK: ZDM_TOKEN)")
            found = self._tokens.lookup(token)
            if found is None:
                log.info("%s: unknown token refused", method)
                return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            identity = found
            if not identity.may(role):
                log.info("%s: token %r (%s) refused, needs %s", method, identity.name, sorted(identity.roles), role)
                return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                                f"{method.lstrip('/')} needs the {role} role; token {identity.name!r} "
                                f"has {sorted(identity.roles)}")
        if self._limiter is not None:
            wait = self._limiter.acquire(identity.name, method.lstrip("/"))
            if wait > 0:
                return _refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"rate limit of {method.lstrip('/')} for {identity.name!r} reached; "
                                f"retry in {wait:.1f} s")
        return _as(identity, handler)
