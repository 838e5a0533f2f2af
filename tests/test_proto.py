"""The committed stubs must be what `make proto` generates from the .proto today."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "service" / "segserve" / "_proto"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_have_not_drifted(tmp_path):
    written = _generator().generate(tmp_path)
    assert {p.suffix for p in written} == {".py", ".pyi"}
    fresh = {
        p.relative_to(tmp_path): p.read_text()
        for p in tmp_path.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    committed = {
        p.relative_to(COMMITTED): p.read_text()
        for p in COMMITTED.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    assert fresh.keys() == committed.keys()
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs differ from protos/: run `make proto` and commit ({stale})"
