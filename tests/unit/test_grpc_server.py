"""The server builder: error mapping for unary and streaming calls, health, reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.errors import InvalidArgument, NotFound
from common.grpc_server import ServiceBinding, build_server
from protos.zdm.v1 import trainer_pb2, trainer_pb2_grpc


class _Faulty(trainer_pb2_grpc.TrainerServicer):
    def GetJob(self, request, context):
        if request.job_id == "boom":
            raise RuntimeError("kaboom")
        raise NotFound(f"unknown job {request.job_id!r}")

    def WatchJob(self, request, context):
        yield trainer_pb2.JobEvent(job_id=request.job_id, sequence=1)
        raise InvalidArgument("bad stream")


@pytest.fixture
def server():
    running = build_server("127.0.0.1", 0, [ServiceBinding(_Faulty(), trainer_pb2_grpc.add_TrainerServicer_to_server,
                                                          "zdm.v1.Trainer")])
    yield running
    running.stop(0)


def test_errors_map_to_status_codes(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(trainer_pb2.GetJobRequest(job_id="x"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "unknown job" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(trainer_pb2.GetJobRequest(job_id="boom"), metadata=[("x-request-id", "rid42")])
        assert err.value.code() == grpc.StatusCode.INTERNAL and "rid42" in err.value.details()
        stream = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id="j"))
        assert next(stream).sequence == 1
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_not_serving_until_ready_and_reflection(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        req = health_pb2.HealthCheckRequest(service="zdm.v1.Trainer")
        assert health.Check(req).status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        assert health.Check(req).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"zdm.v1.Trainer", "grpc.health.v1.Health"} <= names


def test_request_id_comes_back_in_trailing_metadata(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(trainer_pb2.GetJobRequest(job_id="x"), metadata=[("x-request-id", "mine")])
        assert dict(err.value.trailing_metadata())["x-request-id"] == "mine"
        stream = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id="j"))
        with pytest.raises(grpc.RpcError):
            list(stream)
        generated = dict(stream.trailing_metadata())["x-request-id"]
        assert len(generated) == 12
        health = health_pb2_grpc.HealthStub(channel)  # a call that succeeds carries one too
        _, call = health.Check.with_call(health_pb2.HealthCheckRequest())
        assert dict(call.trailing_metadata())["x-request-id"] not in ("", generated)
