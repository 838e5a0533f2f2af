"""Generate the Python gRPC stubs (with .pyi types) from protos/ into a package folder.

Usage: python tools/gen_proto.py [OUT_DIR]   (default: service/segserve/_proto)

grpc_tools writes absolute imports (``from segmentation.v1 import ...``); they are rewritten to
``segserve._proto.segmentation.v1`` so the stubs live inside the package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PACKAGE_PREFIX = "segserve._proto"


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out_dir.rglob("*") if p.suffix in {".py", ".pyi"})
    for path in written:
        text = re.sub(
            r"^from segmentation\.", f"from {PACKAGE_PREFIX}.segmentation.", path.read_text(), flags=re.M
        )
        path.write_text(text)
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "service" / "segserve" / "_proto"
    for p in generate(target):
        print(p.relative_to(target))
