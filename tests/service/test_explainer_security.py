"""The real explainer with a tokens file: SearchDefaults with store=true is admin-only (checked before any
work), and Explain is rate-limited per token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.settings import CommonSettings, ExplainerSettings, SecuritySettings
from protos.zdm.v1 import explainer_pb2, explainer_pb2_grpc
from services.explainer.__main__ import build
from tests.unit.test_auth import bearer, write_tokens


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[explainer_pb2_grpc.ExplainerStub]:
    security = SecuritySettings(auth_tokens_file=write_tokens(tmp_path / "tokens.json"),
                                rate_limits={"zdm.v1.Explainer/Explain": 2})
    settings = ExplainerSettings(port=0, security=security,
                                 common=CommonSettings(registry=tmp_path / "registry", data_roots=[tmp_path]))
    server, _ = build(settings)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield explainer_pb2_grpc.ExplainerStub(channel)
    server.stop(0)


def _code(call) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_search_defaults_store_needs_admin(stub: explainer_pb2_grpc.ExplainerStub) -> None:
    store = explainer_pb2.SearchDefaultsRequest(images_path="nowhere", store=True)
    assert _code(lambda: next(stub.SearchDefaults(store, metadata=bearer("qa")))) == grpc.StatusCode.PERMISSION_DENIED
    # Without store an auditor gets through to the request's own checks; with it, so does an admin.
    look = explainer_pb2.SearchDefaultsRequest(images_path="nowhere")
    for request, who in ((look, "qa"), (store, "root")):
        code = _code(lambda r=request, w=who: next(stub.SearchDefaults(r, metadata=bearer(w))))
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), who
    assert _code(lambda: next(stub.SearchDefaults(look, metadata=bearer("line-3")))) == \
        grpc.StatusCode.PERMISSION_DENIED


def test_explain_is_rate_limited_per_token(stub: explainer_pb2_grpc.ExplainerStub) -> None:
    empty = explainer_pb2.ExplainRequest()
    for _ in range(2):  # refused as a bad request, but each counts
        assert _code(lambda: stub.Explain(empty, metadata=bearer("qa"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.Explain(empty, metadata=bearer("qa"))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(lambda: stub.Explain(empty, metadata=bearer("root"))) == grpc.StatusCode.INVALID_ARGUMENT
