"""A Triton client session against a running classifier, run in its own interpreter.

``tritonclient.grpc`` defines the ``inference`` protobuf package itself, so it cannot share a process
with the classifier's own :mod:`protos.inference`. The test starts the classifier in-process and runs
this script: ``python oip_tritonclient.py SPEC.json`` prints one JSON object with what the client saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def _outputs(result: triton.InferResult, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        array = result.as_numpy(name)
        out[name] = [x.decode() for x in array.tolist()] if array.dtype == np.object_ else array.tolist()
    response = result.get_response()
    out["model_name"], out["model_version"], out["id"] = response.model_name, response.model_version, response.id
    return out


def _bytes_input(paths: list[str], name: str = "image") -> triton.InferInput:
    data = np.array([Path(p).read_bytes() for p in paths], dtype=np.object_)
    tensor = triton.InferInput(name, [len(paths)], "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def _status(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def main(spec: dict[str, Any]) -> dict[str, Any]:
    client = triton.InferenceServerClient(spec["url"])
    model, images, outputs = spec["model"], spec["images"], spec["outputs"]
    seen: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True),
    }
    requested = [triton.InferRequestedOutput(n) for n in outputs]
    result = client.infer(
        model, [_bytes_input(images)], outputs=requested, request_id="oip-1", parameters={"part_id": spec["part_id"]}
    )
    seen["bytes"] = _outputs(result, outputs)
    seen["alias"] = _outputs(client.infer(model, [_bytes_input(images[:1])], model_version=spec["alias"]), outputs)
    seen["pinned"] = _outputs(client.infer(model, [_bytes_input(images[:1])], model_version="1"), outputs)
    pixels = np.load(spec["pixels"]).astype(np.float32)
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    seen["pixels"] = _outputs(client.infer(model, [tensor]), outputs)
    bad_shape = triton.InferInput("pixels", [1, 3, 8, 8], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    junk = triton.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    seen["errors"] = {
        "unknown_model": _status(lambda: client.infer("no-such-model", [_bytes_input(images[:1])])),
        "unknown_version": _status(lambda: client.infer(model, [_bytes_input(images[:1])], model_version="99")),
        "unknown_metadata": _status(lambda: client.get_model_metadata("no-such-model")),
        "bad_image": _status(lambda: client.infer(model, [junk])),
        "bad_shape": _status(lambda: client.infer(model, [bad_shape])),
        "unknown_output": _status(
            lambda: client.infer(model, [_bytes_input(images[:1])], outputs=[triton.InferRequestedOutput("logits")])
        ),
    }
    client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(json.loads(Path(sys.argv[1]).read_text()))))
