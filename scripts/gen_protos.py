"""Regenerate protos/zdm/v1/*_pb2*.py(i) and protos/inference/*_pb2*.py(i) from the .proto files. Run from anywhere.

The include root is the repository root, so generated modules import each other as
`from protos.zdm.v1 import common_pb2` (and `from protos.inference import open_inference_pb2`) without
any rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# zdm.v1 (our API) and inference (the Open Inference Protocol the classifier also serves).
PROTO_DIRS = (ROOT / "protos" / "zdm" / "v1", ROOT / "protos" / "inference")


def generate(out_dir: Path = ROOT) -> None:
    """Write the generated modules under out_dir/protos/... (out_dir = repo root by default)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency; imported lazily so runtime never needs it

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT)) for d in PROTO_DIRS for p in d.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
