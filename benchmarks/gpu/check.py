"""`make gpu-check`: the GPU path proven in one short run on the lent GPU machine (README.md here).

Steps, each a subprocess with its own time limit inside one budget (7 minutes by default):

1. stage   assemble the staged onnxruntime-gpu wheel from its parts (sha256 checked) and install it,
           with any carried wheels (nvImageCodec, nvJPEG, grpc...), into <stage>/site
2. info    the device, onnxruntime and its providers, TensorRT's libraries, nvImageCodec
3. pytest  `pytest -m gpu tests/gpu` (CUDA/TensorRT masks vs CPU, IO binding, CUDA graphs, device decode)
4. engine  benchmarks/gpu/engine_bench.py: bare ORT, CPU decode vs device decode, CUDA graphs
5. bench   `segserve bench --gpu` for CUDA (and TensorRT where its libraries load)

then writes one JSON (device name, every step, figures, the issue's goals) to --results-dir
(benchmarks/results) and a copy to $OUT when set. --dry-run does all of it except the GPU parts: the
pytest step runs (its tests skip without a GPU), the engine bench runs on the CPU with a few frames,
the `segserve bench` command line is checked by the CLI's own parser instead of being run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
BENCH_IMAGES = ROOT / "tests" / "fixtures" / "camvid" / "train" / "images"


class Clock:
    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, message: str) -> None:
        print(f"[gpu-check {self.elapsed():6.1f}s/{self.budget_s:.0f}s] {message}", flush=True)


@dataclass
class Step:
    status: str  # ok | failed | timeout | skipped
    seconds: float
    note: str = ""


@dataclass
class Ran:
    rc: int | None  # None: killed at its time limit
    tail: str


def run(cmd: list[str], timeout: float, env: dict, clock: Clock, prefix: str) -> Ran:
    """Run ``cmd`` with its output shown line by line; kill its whole process group at ``timeout``."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(f"  {prefix}| {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        clock.say(f"{prefix}: over its {timeout:.0f} s: stopping it")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    reader.join(timeout=5)
    return Ran(rc, "\n".join(tail))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StageError(RuntimeError):
    pass


def installable_here(wheel: Path) -> bool:
    """Whether this interpreter can install the wheel (the carried ones are built for the GPU machine's
    Python 3.12: a dry run elsewhere leaves the others out)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pragma: no cover - pip always vendors it
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    return bool(parse_wheel_filename(wheel.name)[3] & set(sys_tags()))


def stage(stage_dir: Path, extra_dirs: list[Path], clock: Clock, timeout: float, dry_run: bool) -> dict:
    """Assemble <stage>/part.* into <stage>/$(cat NAME), check SHA256, pip-install it and the carried
    wheels into <stage>/site (once: a marker names what is installed). Returns what it did."""
    out: dict = {"site": str(stage_dir / "site"), "wheels": []}
    wheels: list[Path] = []
    name_file, sha_file = stage_dir / "NAME", stage_dir / "SHA256"
    if name_file.is_file():
        wheel = stage_dir / name_file.read_text().strip()
        expected = sha_file.read_text().split()[0] if sha_file.is_file() else ""
        if not (wheel.is_file() and sha256(wheel) == expected):
            parts = sorted(stage_dir.glob("part.*"))
            if not parts:
                raise StageError(f"{stage_dir}: NAME is there but no part.* files: stage them first")
            clock.say(f"stage: assembling {wheel.name} from {len(parts)} parts ...")
            with open(wheel, "wb") as whole:
                for part in parts:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, whole)
            got = sha256(wheel)
            if got != expected:
                raise StageError(
                    f"{wheel.name}: sha256 {got[:16]}... is not the staged {expected[:16]}... "
                    f"({len(parts)} parts: one is missing or damaged; stage again)"
                )
        wheels.append(wheel)
    seen = {w.name for w in wheels}
    for folder in extra_dirs:
        for extra in sorted(folder.glob("*.whl")):
            if extra.name not in seen:
                wheels.append(extra)
                seen.add(extra.name)
    if dry_run:
        foreign = [w for w in wheels if not installable_here(w)]
        wheels = [w for w in wheels if w not in foreign]
        if foreign:
            out["not_for_this_python"] = [w.name for w in foreign]
    out["wheels"] = [w.name for w in wheels]
    if not wheels:
        where = f"{stage_dir} or {', '.join(map(str, extra_dirs))}"
        out["note"] = (
            "nothing for this Python" if out.get("not_for_this_python") else f"nothing staged in {where}"
        )
        return out
    site = stage_dir / "site"
    marker = site / ".segserve-installed"
    key = json.dumps(sorted((w.name, w.stat().st_size) for w in wheels))
    if marker.is_file() and marker.read_text() == key:
        out["note"] = "already installed"
        return out
    clock.say(f"stage: installing {len(wheels)} wheels into {site} ...")
    shutil.rmtree(site, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    ran = run(cmd, timeout, os.environ.copy(), clock, "pip")
    if ran.rc != 0:
        raise StageError(f"pip install into {site} failed ({ran.rc}): {ran.tail[-500:]}")
    marker.write_text(key)
    return out


def child_env(site: Path) -> dict:
    """PYTHONPATH: the staged site first (onnxruntime-gpu over the machine's CPU build), then this tree;
    LD_LIBRARY_PATH: pip's NVIDIA libraries (PyTorch's CUDA, cuDNN; carried nvJPEG), for the
    `segserve serve` subprocess of the bench, which onnxruntime's preload_dlls does not reach."""
    env = os.environ.copy()
    paths = [str(site), str(SERVICE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    libs = []
    for base in [site, *map(Path, sys.path)]:
        libs += sorted(str(p) for p in Path(base).glob("nvidia/*/lib") if p.is_dir())
    libs += [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(libs))
    env["PYTHONUNBUFFERED"] = "1"
    return env


INFO = r"""
import json, subprocess
info = {}
try:
    import onnxruntime as ort
    try:
        ort.preload_dlls()
    except (AttributeError, OSError):
        pass
    from segserve import providers as prov
    available = ort.get_available_providers()
    info.update(onnxruntime=ort.__version__, onnxruntime_file=ort.__file__, providers_available=available,
                providers_unusable=prov.unusable(available), tensorrt_libraries=prov.tensorrt_libraries())
except Exception as exc:
    info["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
try:
    from nvidia import nvimgcodec
    info["nvimgcodec"] = nvimgcodec.__version__
except Exception as exc:
    info["nvimgcodec"] = None
    info["nvimgcodec_error"] = f"{type(exc).__name__}: {exc}"
print("INFO " + json.dumps(info))
"""


# The bench's command line, checked by segserve's own parser (in a subprocess, as the real run would).
PARSE = r"""
import sys
from pathlib import Path
from segserve.cli import build_parser
args = build_parser().parse_args(sys.argv[1:])
assert args.gpu and args.frames == int(sys.argv[sys.argv.index("--frames") + 1])
assert Path(args.images) == Path(sys.argv[sys.argv.index("--images") + 1])
"""


def device_info(dry_run: bool) -> dict:
    if dry_run:
        return {"name": "dry-run (no GPU used)"}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"name": "unknown", "error": str(exc)}
    if out.returncode != 0 or not out.stdout.strip():
        return {"name": "unknown", "error": (out.stderr or out.stdout).strip()[:300]}
    name, driver, memory = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return {"name": name, "driver": driver, "memory": memory}


def junit_summary(path: Path) -> dict:
    if not path.is_file():
        return {"error": "pytest wrote no report"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, skips = [], {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            detail = next(c for c in case if c.tag in ("failure", "error"))
            failures.append({"test": name, "message": (detail.get("message") or "")[:500]})
        elif "skipped" in kinds:
            counts["skipped"] += 1
            reason = next(c for c in case if c.tag == "skipped").get("message") or ""
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures, "skip_reasons": skips}


def bench_command(provider: str, frames: int, out: Path) -> list[str]:
    return [
        "bench",
        "--gpu",
        "--providers",
        provider,
        "--frames",
        str(frames),
        "--streams",
        "1,8",
        "--images",
        str(BENCH_IMAGES),
        "--out",
        str(out),
        "--tag",
        f"gpu-check-{provider}",
    ]


def goals(results: dict) -> dict:
    """The issue's goals, from a `segserve bench` results.json."""
    layers = results.get("layers", {})
    p50 = layers.get("segment_rpc", {}).get("p50")
    s8 = layers.get("stream", {}).get("8", {})
    hist = s8.get("batch_sizes") or {}
    typical = max(hist, key=lambda k: hist[k]) if hist else "1"
    bare = layers.get("bare_ort", {}).get(str(typical), {}).get("per_frame_ms")
    cost = s8.get("per_frame_cost_ms")
    ratio = round(cost / bare, 3) if cost and bare else None
    return {
        "segment_1080p_single_stream_p50_ms": {"value": p50, "target": "< 8", "pass": bool(p50 and p50 < 8)},
        "stream_8_aggregate_fps": {
            "value": s8.get("fps"),
            "target": ">= 400",
            "pass": (s8.get("fps") or 0) >= 400,
        },
        "per_frame_cost_over_bare_ort": {
            "value": ratio,
            "batch": typical,
            "target": "<= 1.3 (stream 8 per-frame cost / bare ORT per frame at the batch size it ran in)",
            "pass": bool(ratio and ratio <= 1.3),
        },
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="everything but the GPU parts (runs on a CPU)")
    parser.add_argument("--stage", type=Path, default=ROOT / ".gpustage", help="staged parts [.gpustage]")
    parser.add_argument(
        "--extra",
        type=Path,
        action="append",
        default=None,
        help="folder of carried wheels to install too (repeatable) [<stage>/extra, .gpuwhl/extra]",
    )
    parser.add_argument("--budget-s", type=float, default=420, help="the whole run's time limit [420]")
    parser.add_argument("--frames", type=int, default=500, help="frames per figure after warm-up [500]")
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="[benchmarks/results; dry run: a temp dir]"
    )
    args = parser.parse_args(argv)
    clock = Clock(args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="segserve-gpu-check-"))
    steps: dict[str, Step] = {}
    report: dict = {
        "kind": "segserve gpu-check",
        "dry_run": args.dry_run,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
    }
    clock.say(f"{'DRY RUN: ' if args.dry_run else ''}repository {ROOT}, stage {args.stage}")

    def step(name: str, fn, *fargs) -> object:
        t0 = time.monotonic()
        clock.say(f"{name} ...")
        try:
            value, status, note = fn(*fargs)
        except StageError as exc:
            value, status, note = None, "failed", str(exc)
        steps[name] = Step(status, round(time.monotonic() - t0, 1), note)
        clock.say(f"{name}: {status}{': ' + note if note else ''}")
        return value

    # 1. stage
    extra_dirs = args.extra or [args.stage / "extra", ROOT / ".gpuwhl" / "extra"]
    staged = step(
        "stage",
        lambda: (stage(args.stage, extra_dirs, clock, min(180, clock.left()), args.dry_run), "ok", ""),
    )
    report["stage"] = staged
    env = child_env(args.stage / "site")
    ready = steps["stage"].status == "ok"

    # 2. info
    report["device"] = device_info(args.dry_run)

    def info():
        ran = run([sys.executable, "-c", INFO], min(90, clock.left()), env, clock, "info")
        line = next((ln for ln in ran.tail.splitlines() if ln.startswith("INFO ")), None)
        if ran.rc != 0 or line is None:
            return {}, "failed", ran.tail[-500:]
        return json.loads(line[5:]), "ok", ""

    report["environment"] = step("info", info) or {}
    environment = report["environment"]
    available = environment.get("providers_available", [])
    unusable = environment.get("providers_unusable", {})
    trt = "TensorrtExecutionProvider" in available and "TensorrtExecutionProvider" not in unusable
    gpu = not args.dry_run and "CUDAExecutionProvider" in available
    if not args.dry_run and not gpu:
        note = "no CUDA provider in this onnxruntime: was onnxruntime-gpu staged? (README.md here)"
        steps["info"] = Step("failed", steps["info"].seconds, note)
        clock.say(note)

    # 3. pytest -m gpu
    def tests():
        junit = work / "junit.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "tests/gpu",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ]
        cmd += ["--junitxml", str(junit)]
        ran = run(cmd, min(200, clock.left() - 90), env, clock, "pytest")
        summary = junit_summary(junit)
        if ran.rc is None:
            return summary, "timeout", ""
        bad = ran.rc not in (0, 5) or summary.get("failed", 0) > 0
        return (
            summary,
            "failed" if bad else "ok",
            f"{summary.get('passed')} passed, {summary.get('skipped')} skipped",
        )

    report["pytest"] = step("pytest", tests) if ready else None

    # 4. engine bench
    def engine():
        out = work / "engine.json"
        cmd = [sys.executable, "benchmarks/gpu/engine_bench.py", "--out", str(out)]
        if args.dry_run:
            cmd += ["--providers", "cpu", "--frames", "4", "--batches", "1,2", "--warmup", "1"]
        else:
            cmd += ["--providers", "cuda,tensorrt" if trt else "cuda", "--frames", str(args.frames)]
        ran = run(cmd, min(150, clock.left() - 60), env, clock, "engine")
        if ran.rc is None:
            return None, "timeout", ""
        if ran.rc != 0 or not out.is_file():
            return None, "failed", ran.tail[-500:]
        return json.loads(out.read_text()), "ok", ""

    report["engine_bench"] = step("engine_bench", engine) if ready else None

    # 5. segserve bench --gpu
    def bench():
        providers = ["cuda", "tensorrt"] if trt else ["cuda"]
        results: dict = {}
        if args.dry_run:
            for provider in providers:
                argv = bench_command(provider, args.frames, work / f"bench-{provider}")
                ran = run([sys.executable, "-c", PARSE, *argv], min(60, clock.left()), env, clock, "parse")
                if ran.rc != 0:
                    return results, "failed", f"`segserve {' '.join(argv)}` does not parse: {ran.tail[-600:]}"
                results[provider] = {"command": ["segserve", *argv], "status": "not run (dry run)"}
            return results, "skipped", "dry run: the command lines parse"
        statuses = []
        for provider in providers:
            left = clock.left() - 15
            if left < 60:
                results[provider] = {"status": f"not run: {left:.0f} s left in the budget"}
                statuses.append("timeout")
                continue
            out = work / f"bench-{provider}"
            ran = run(
                [sys.executable, "-m", "segserve", *bench_command(provider, args.frames, out)],
                left,
                env,
                clock,
                provider,
            )
            found = sorted(out.glob("**/results.json"))
            if ran.rc is None:
                results[provider] = {"status": "timeout", "tail": ran.tail[-800:]}
                statuses.append("timeout")
            elif ran.rc != 0 or not found:
                results[provider] = {"status": "failed", "tail": ran.tail[-800:]}
                statuses.append("failed")
            else:
                data = json.loads(found[-1].read_text())
                results[provider] = {"status": "ok", "goals": goals(data), "results": data}
                statuses.append("ok")
        worst = next((s for s in ("failed", "timeout") if s in statuses), "ok")
        return results, worst, ""

    report["segserve_bench"] = step("segserve_bench", bench) if ready else None
    for name in ("pytest", "engine_bench", "segserve_bench"):
        if not ready:
            steps[name] = Step("skipped", 0.0, "nothing could be installed: see the stage step")

    report["steps"] = {k: asdict(v) for k, v in steps.items()}
    report["seconds"] = round(clock.elapsed(), 1)
    if not gpu:
        report["note"] = (
            "dry run: no GPU figure was measured" if args.dry_run else "no CUDA provider: no GPU figure"
        )
    dry_results = Path(tempfile.gettempdir()) / "segserve-gpu-check"
    results_dir = args.results_dir or (dry_results if args.dry_run else ROOT / "benchmarks" / "results")
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = "dry-run" if args.dry_run else slug(report["device"].get("name", "unknown"))
    path = results_dir / f"gpu-check-{kind}-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    clock.say(f"wrote {path}")
    if os.environ.get("OUT"):
        copy = Path(os.environ["OUT"]) / "gpu-check.json"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        clock.say(f"copied to {copy}")
    shutil.rmtree(work, ignore_errors=True)
    failed = [k for k, v in steps.items() if v.status in ("failed", "timeout")]
    clock.say("done: " + ("all steps ok" if not failed else f"not ok: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
