"""Tokens, roles, rate limits and TLS through the real server builder and real channels on port 0."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import auth
from common.grpc_server import ServiceBinding, build_server
from common.ratelimit import RateLimiter
from common.settings import SecuritySettings
from protos.zdm.v1 import classifier_pb2, explainer_pb2, trainer_pb2, trainer_pb2_grpc
from tests.tls_support import make_pki

TOKENS = {"line-3": ("line", "tok-line"), "qa": ("auditor", "tok-auditor"), "sched": ("scheduler", "tok-sched"),
          "root": ("admin", "tok-admin")}


def write_tokens(path: Path, tokens: dict[str, tuple[str, str]] = TOKENS) -> Path:
    entries = [{"name": name, "roles": [role], "sha256": auth.token_sha256(secret)}
               for name, (role, secret) in tokens.items()]
    text = json.dumps({"tokens": entries}) if path.suffix == ".json" else yaml.safe_dump({"tokens": entries})
    path.write_text(text)
    return path


class _Trainer(trainer_pb2_grpc.TrainerServicer):
    """Answers with the caller's name, so a test sees who the service thinks is calling."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def GetJob(self, request, context):
        return trainer_pb2.Job(job_id=auth.caller())

    def SubmitJob(self, request, context):
        return trainer_pb2.SubmitJobResponse(job_id=f"by-{auth.caller()}")

    def ListJobs(self, request, context):
        return trainer_pb2.ListJobsResponse(jobs=[trainer_pb2.Job(job_id=f"job-of-{auth.caller()}")])

    def SetAlias(self, request, context):
        raise NotImplementedError  # never reached in these tests: the interceptor refuses first

    def WatchJob(self, request, context):
        yield trainer_pb2.JobEvent(job_id=auth.caller(), sequence=1)
        while context.is_active() and not self.release.wait(0.05):
            pass


def _serve(tmp_path: Path, **security: object):
    servicer = _Trainer()
    settings = SecuritySettings(auth_tokens_file=write_tokens(tmp_path / "tokens.json"), **security)
    server = build_server("127.0.0.1", 0, [ServiceBinding(servicer, trainer_pb2_grpc.add_TrainerServicer_to_server,
                                                         "zdm.v1.Trainer")], security=settings)
    return server, servicer


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[trainer_pb2_grpc.TrainerStub, grpc.Channel]]:
    server, servicer = _serve(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield trainer_pb2_grpc.TrainerStub(channel), channel
    servicer.release.set()
    server.stop(0)


def bearer(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[name][1]}")]


def _call(stub: trainer_pb2_grpc.TrainerStub, method: str, metadata: list[tuple[str, str]] | None) -> None:
    """Call any Trainer RPC with an empty request (streams: read the first answer)."""
    desc = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].methods_by_name[method]
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(desc.input_type)()
    result = getattr(stub, method)(iter([request]) if desc.client_streaming else request, metadata=metadata,
                                   timeout=5)
    if desc.server_streaming:
        next(result)


def test_every_rpc_without_a_valid_token_is_unauthenticated(secured) -> None:
    stub, _ = secured
    methods = [m.name for m in trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].methods]
    for metadata in (None, [("authorization", "Bearer nope")], [("authorization", "Basic tok-admin")]):
        for method in methods:
            with pytest.raises(grpc.RpcError) as err:
                _call(stub, method, metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)


def test_roles_allow_what_they_should_and_nothing_more(secured) -> None:
    stub, _ = secured
    req = trainer_pb2.SubmitJobRequest()
    for name in ("line-3", "qa"):
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(req, metadata=bearer(name))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scheduler" in err.value.details()
    assert stub.SubmitJob(req, metadata=bearer("sched")).job_id == "by-sched"
    assert stub.SubmitJob(req, metadata=bearer("root")).job_id == "by-root"
    with pytest.raises(grpc.RpcError) as err:
        stub.SetAlias(trainer_pb2.SetAliasRequest(), metadata=bearer("sched"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The handler sees who called, in unary and streaming handlers.
    assert stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("root")).job_id == "root"
    assert next(stub.WatchJob(trainer_pb2.WatchJobRequest(), metadata=bearer("sched"))).job_id == "sched"


def test_health_and_reflection_stay_open(secured) -> None:
    _, channel = secured
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status in (
        health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


def test_an_rpc_without_a_role_entry_is_admin_only(secured, monkeypatch: pytest.MonkeyPatch) -> None:
    stub, _ = secured
    monkeypatch.delitem(auth.RPC_ROLES, "zdm.v1.Trainer/GetJob")
    with pytest.raises(grpc.RpcError) as err:
        stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("sched"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in err.value.details()
    assert stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("root")).job_id == "root"


def test_role_table_names_real_rpcs_and_covers_the_issue_list() -> None:
    services = [fd.services_by_name[n].full_name for fd, n in
                ((trainer_pb2.DESCRIPTOR, "Trainer"), (classifier_pb2.DESCRIPTOR, "Classifier"),
                 (explainer_pb2.DESCRIPTOR, "Explainer"))]
    ours = set(auth.rpcs_of(services))
    foreign = {rpc for rpc in auth.RPC_ROLES if rpc.split("/")[0] not in services}
    assert ours >= set(auth.RPC_ROLES) - foreign, "an entry names an RPC that does not exist"
    assert {rpc.split("/")[0] for rpc in foreign} <= {"inference.GRPCInferenceService"}
    assert set(auth.RPC_ROLES.values()) <= set(auth.ROLES)
    # Every RPC of ours is either mapped or falls back to admin (which is then the listed minimum).
    assert all(auth.required_role("/" + rpc) == auth.RPC_ROLES.get(rpc, "admin") for rpc in ours)
    assert auth.required_role("/zdm.v1.Classifier/SetThreshold") == "admin"
    assert auth.required_role("/zdm.v1.Trainer/NotYetWritten") == "admin"
    assert auth.required_role("/grpc.health.v1.Health/Check") is None
    assert auth.required_role("/inference.GRPCInferenceService/ModelInfer") == "line"


def test_tokens_file_is_yaml_or_json_hashes_only_and_reloaded(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens.yaml", {"a": ("line", "secret-a")})
    tokens = auth.TokenFile(path, check_seconds=0.0)
    assert tokens.lookup("secret-a") == auth.Identity("a", frozenset({"line"}))
    assert tokens.lookup("secret-b") is None and tokens.lookup(auth.token_sha256("secret-a")) is None
    write_tokens(path, {"b": ("admin", "secret-b")})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert tokens.lookup("secret-b").name == "b" and tokens.lookup("secret-a") is None
    path.write_text("tokens: [")  # a broken edit: logged, the previous tokens stay
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert tokens.lookup("secret-b").name == "b"
    bad = tmp_path / "plain.json"
    bad.write_text(json.dumps({"tokens": [{"name": "x", "roles": ["line"], "sha256": "tok-line"}]}))
    with pytest.raises(ValueError, match="64 hex"):
        auth.TokenFile(bad)
    bad.write_text(json.dumps({"tokens": [{"name": "x", "roles": ["root"], "sha256": "0" * 64}]}))
    with pytest.raises(ValueError, match="roles"):
        auth.TokenFile(bad)


def test_open_service_only_on_loopback_unless_allowed(tmp_path: Path) -> None:
    binding = [ServiceBinding(_Trainer(), trainer_pb2_grpc.add_TrainerServicer_to_server, "zdm.v1.Trainer")]
    with pytest.raises(SystemExit, match="ZDM_AUTH_TOKENS_FILE"):
        build_server("0.0.0.0", 0, binding, security=SecuritySettings())
    server = build_server("0.0.0.0", 0, binding, security=SecuritySettings(allow_insecure=True))
    server.stop(0)
    for host in ("127.0.0.1", "::1", "localhost", "[::1]"):
        assert auth.is_loopback(host)
    assert not auth.is_loopback("10.0.0.5") and not auth.is_loopback("0.0.0.0")
    # Open on loopback: everyone is the anonymous admin, and no tokens means no per-token rate limits.
    server = build_server("127.0.0.1", 0, binding,
                          security=SecuritySettings(rate_limits={"zdm.v1.Trainer/GetJob": 1}))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for _ in range(3):
            assert trainer_pb2_grpc.TrainerStub(channel).GetJob(trainer_pb2.GetJobRequest()).job_id == "anonymous"
    server.stop(0)


def test_rate_limiter_buckets_per_caller_and_method() -> None:
    now = [0.0]
    limiter = RateLimiter({"s/Costly": 2.0}, clock=lambda: now[0])
    assert limiter.acquire("a", "s/Costly") == 0 and limiter.acquire("a", "s/Costly") == 0
    wait = limiter.acquire("a", "s/Costly")
    assert 29 < wait <= 30  # 2 per minute: the next one in 30 s
    assert limiter.acquire("b", "s/Costly") == 0, "another token has its own bucket"
    assert limiter.acquire("a", "s/Cheap") == 0, "unlisted methods are unlimited"
    now[0] += 30.0
    assert limiter.acquire("a", "s/Costly") == 0


def test_rate_limited_rpc_is_resource_exhausted_per_token(tmp_path: Path) -> None:
    server, servicer = _serve(tmp_path, rate_limits={"zdm.v1.Trainer/GetJob": 2})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            for _ in range(2):
                stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("root"))
            with pytest.raises(grpc.RpcError) as err:
                stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("root"))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in err.value.details()
            assert stub.GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("sched")).job_id == "sched"
            assert stub.SubmitJob(trainer_pb2.SubmitJobRequest(), metadata=bearer("root")).job_id == "by-root"
    finally:
        server.stop(0)


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    from client.sdk import Credentials, TrainerClient

    pki = make_pki(tmp_path / "pki")
    binding = [ServiceBinding(_Trainer(), trainer_pb2_grpc.add_TrainerServicer_to_server, "zdm.v1.Trainer")]
    tls_only = build_server("127.0.0.1", 0, binding, security=SecuritySettings(
        tls_cert=pki.server.cert, tls_key=pki.server.key))
    mutual = build_server("127.0.0.1", 0, binding, security=SecuritySettings(
        tls_cert=pki.server.cert, tls_key=pki.server.key, tls_ca=pki.ca))
    try:
        def job_id(port: int, credentials: Credentials) -> str:
            client = TrainerClient(f"127.0.0.1:{port}", credentials)
            try:
                return client.stub.GetJob(trainer_pb2.GetJobRequest(), timeout=5).job_id
            finally:
                client.close()

        assert job_id(tls_only.port, Credentials(tls_ca=pki.ca)) == "anonymous"
        with pytest.raises(grpc.RpcError) as err:  # plain text against a TLS port
            job_id(tls_only.port, Credentials())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        client_cert = Credentials(tls_ca=pki.ca, tls_cert=pki.client.cert, tls_key=pki.client.key)
        assert job_id(mutual.port, client_cert) == "anonymous"
        for creds in (Credentials(tls_ca=pki.ca),
                      Credentials(tls_ca=pki.ca, tls_cert=pki.stranger.cert, tls_key=pki.stranger.key)):
            with pytest.raises(grpc.RpcError) as err:
                job_id(mutual.port, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        tls_only.stop(0)
        mutual.stop(0)
    with pytest.raises(ValueError, match="go together"):
        SecuritySettings(tls_cert=pki.server.cert)
    with pytest.raises(ValueError, match="needs"):
        SecuritySettings(tls_ca=pki.ca)


def test_sdk_sends_the_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from client.sdk import TrainerClient

    server, _ = _serve(tmp_path)
    try:
        monkeypatch.setenv("ZDM_TOKEN", TOKENS["sched"][1])
        client = TrainerClient(f"127.0.0.1:{server.port}")
        assert client.stub.GetJob(trainer_pb2.GetJobRequest(), timeout=5).job_id == "sched"
        assert next(client.watch("j")).job_id == "sched"
        with pytest.raises(grpc.RpcError) as err:
            client.set_alias("m", "production", 1)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        client.close()
    finally:
        server.stop(0)


def test_cli_takes_a_token_and_makes_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from client.cli import app

    server, _ = _serve(tmp_path)
    monkeypatch.delenv("ZDM_TOKEN", raising=False)
    try:
        env = {"ZDM_TRAINER_ADDR": f"127.0.0.1:{server.port}", "ZDM_TOKEN": None}  # restored after each run
        result = CliRunner().invoke(app, ["--token", TOKENS["sched"][1], "train", "list"], env=env)
        assert result.exit_code == 0 and "job-of-sched" in result.output, result.output
        result = CliRunner().invoke(app, ["train", "list"], env=env)
        assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output
    finally:
        server.stop(0)
    result = CliRunner().invoke(app, ["token", "line-9", "--role", "line"])
    token_line, entry_line = result.output.strip().splitlines()
    entry = json.loads(entry_line)
    assert entry["name"] == "line-9" and entry["roles"] == ["line"]
    assert entry["sha256"] == auth.token_sha256(token_line.rsplit(" ", 1)[1])


def test_health_only_port_is_plain_text_and_serves_nothing_else(tmp_path: Path) -> None:
    """For the kubelet's gRPC probe (no TLS, no tokens): health answers there, the services do not."""
    pki = make_pki(tmp_path / "pki")
    binding = [ServiceBinding(_Trainer(), trainer_pb2_grpc.add_TrainerServicer_to_server, "zdm.v1.Trainer")]
    server = build_server("127.0.0.1", 0, binding, health_port=0, security=SecuritySettings(
        auth_tokens_file=write_tokens(tmp_path / "tokens.json"), tls_cert=pki.server.cert, tls_key=pki.server.key,
        tls_ca=pki.ca))
    try:
        assert server.health_port not in (0, server.port)
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="zdm.v1.Trainer")
            assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.set_serving(True)
            assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                trainer_pb2_grpc.TrainerStub(channel).GetJob(trainer_pb2.GetJobRequest(), metadata=bearer("root"),
                                                             timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)


@pytest.mark.parametrize(("module", "service"), [(trainer_pb2, "Trainer"), (classifier_pb2, "Classifier"),
                                                 (explainer_pb2, "Explainer")])
def test_every_rpc_of_every_service_needs_a_token_and_its_role(tmp_path: Path, module, service: str) -> None:  # noqa: ANN001
    """From the descriptors: no token -> UNAUTHENTICATED, too small a role -> PERMISSION_DENIED, enough ->
    the (unimplemented) servicer answers UNIMPLEMENTED, i.e. the call got through."""
    import importlib

    from google.protobuf import message_factory

    grpc_module = importlib.import_module(module.__name__.replace("_pb2", "_pb2_grpc"))
    full_name = module.DESCRIPTOR.services_by_name[service].full_name
    binding = ServiceBinding(getattr(grpc_module, f"{service}Servicer")(),
                             getattr(grpc_module, f"add_{service}Servicer_to_server"), full_name)
    server = build_server("127.0.0.1", 0, [binding], security=SecuritySettings(
        auth_tokens_file=write_tokens(tmp_path / "tokens.json"), rate_limits={}))
    levels = {role: name for name, (role, _) in TOKENS.items()}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = getattr(grpc_module, f"{service}Stub")(channel)
            for method in module.DESCRIPTOR.services_by_name[service].methods:
                request = message_factory.GetMessageClass(method.input_type)()
                needed = auth.required_role(f"/{full_name}/{method.name}")

                def code(metadata, method=method, request=request) -> grpc.StatusCode:  # noqa: ANN001
                    call = getattr(stub, method.name)
                    with pytest.raises(grpc.RpcError) as err:
                        result = call(iter([request]) if method.client_streaming else request, metadata=metadata,
                                      timeout=5)
                        if method.server_streaming:
                            next(result)
                    return err.value.code()

                assert code(None) == grpc.StatusCode.UNAUTHENTICATED, method.name
                for role in auth.ROLES:
                    expected = (grpc.StatusCode.UNIMPLEMENTED if auth.ROLES.index(role) >= auth.ROLES.index(needed)
                                else grpc.StatusCode.PERMISSION_DENIED)
                    assert code(bearer(levels[role])) == expected, (method.name, role)
    finally:
        server.stop(0)
