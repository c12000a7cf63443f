"""Regenerate protos/zdm/v1/*_pb2*.py(i) from the .proto files. Run from anywhere.

The include root is the repository root, so generated modules import each other as
`from protos.zdm.v1 import common_pb2` without any rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "zdm" / "v1"


def generate(out_dir: Path = ROOT) -> None:
    """Write the generated modules under out_dir/protos/zdm/v1 (out_dir = repo root by default)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency; imported lazily so runtime never needs it

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
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
