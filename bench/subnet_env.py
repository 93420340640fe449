"""The exported detector in the subnet's own environment, against `roadwork predict` here.

A StreetVision miner runs the subnet's pinned environment, not this package's: Python 3.11,
torch 2.6.0, torchvision 0.21.0, transformers 4.45.2 (no DINOv3), timm 1.0.22, pillow
10.4.0, numpy 2.2.6, safetensors 0.7.0 (the subnet's poetry.lock). This script builds such a
virtual environment (`python3.11 -m venv` + pip install of exactly those pins; or reuses one
with --venv, after checking its versions), exports models with `roadwork export`, loads each
exported detector.py there (without roadwork_cache on the path) and compares its answers on
the real photographs with `roadwork predict --json` on the same model in this environment.

    python bench/subnet_env.py                            # builds /tmp/roadwork-subnet-venv
    python bench/subnet_env.py --venv /work/subnet-venv   # reuses a pinned one

Cases: {train-head run, two-member ensemble} x {TTA off, on} x {the tiny preset (its own
random weights), a vits16-shaped random model saved in the transformers format (converted to
timm at export), and the tiny shape in the transformers format}. The run carries FOODS
statistics, so its TTA is FOODS-weighted; the ensemble's is the mean of clean + tta:8. The
transformers models have layer scales of 1, so that their features depend on the image: the
tiny preset's own weights (layer scales 1e-5) answer nearly the same for every image, which
the `spread` column shows. Exits 1 when any difference exceeds --tolerance (1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PINS = {
    "torch": "2.6.0",
    "torchvision": "0.21.0",
    "transformers": "4.45.2",
    "timm": "1.0.22",
    "pillow": "10.4.0",
    "numpy": "2.2.6",
    "safetensors": "0.7.0",
}

VERSIONS = """
import json, platform, sys
import numpy, PIL, safetensors, timm, torch, torchvision, transformers
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
    "torchvision": torchvision.__version__, "transformers": transformers.__version__,
    "timm": timm.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__,
    "safetensors": safetensors.__version__}))
"""

# Run by the subnet's python: every case's detector on every photograph, as a miner calls it.
RUNNER = """
import importlib.util, json, sys, time
from PIL import Image
cases, photos = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for name, case in cases.items():
    path = case["folder"] + "/detector.py"
    spec = importlib.util.spec_from_file_location("detector_" + name.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    detector = module.RoadworkDetector(case["folder"], device="cpu", tta=case["tta"])
    start = time.perf_counter()
    answers = [detector(Image.open(p)) for p in photos]
    out[name] = {"answers": answers, "describe": detector.describe(),
                 "seconds": time.perf_counter() - start}
banned = sorted({m.split(".")[0] for m in sys.modules}
                & {"roadwork_cache", "transformers", "sklearn", "scipy"})
print(json.dumps({"cases": out, "banned": banned}))
"""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the subnet's python must not find roadwork_cache."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def venv_versions(python: Path) -> dict[str, str]:
    return json.loads(run([str(python), "-c", VERSIONS], env=clean_env()).stdout)


def check_pins(versions: dict[str, str]) -> list[str]:
    wrong = [
        f"{name} {versions.get(name)} (want {want})"
        for name, want in PINS.items()
        if str(versions.get(name, "")).split("+")[0] != want
    ]
    if not versions.get("python", "").startswith("3.11."):
        wrong.append(f"python {versions.get('python')} (want 3.11)")
    return wrong


def build_venv(path: Path, python: str) -> float:
    """python3.11 -m venv + pip install of exactly the pins; returns the seconds it took."""
    start = time.perf_counter()
    run([python, "-m", "venv", str(path)], env=clean_env())
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, "--upgrade", "pip"], env=clean_env())
    run([*pip, *(f"{k}=={v}" for k, v in PINS.items())], env=clean_env())
    return time.perf_counter() - start


def make_models(root: Path) -> dict[str, dict]:
    """Model folders to export: name -> {model, weights, preset}."""
    from helpers import add_foods, tiny_models, write_transformers

    models = {}
    for label, preset, view_size, weights in (
        ("tiny", "tiny", 64, None),
        ("tiny-hf", "tiny", 64, "write"),
        ("vits16-hf", "vits16", 64, "write"),
    ):
        folder = root / label
        if weights == "write":
            weights = write_transformers(folder / f"dinov3-{preset}", seed=1, preset=preset)
        run_dir, ensemble = tiny_models(folder, view_size, preset, weights)
        add_foods(run_dir)
        for kind, model in (("run", run_dir), ("ensemble", ensemble)):
            models[f"{label}-{kind}"] = {"model": model, "weights": weights, "preset": preset}
    return models


def predict_json(model: Path, weights: Path | None, tta: bool, photos: list[Path]) -> list:
    cmd = [sys.executable, "-m", "roadwork_cache.cli", "predict", "--model", str(model)]
    cmd += ["--json", "--device", "cpu", "--workers", "0"]
    cmd += (["--weights", str(weights)] if weights else []) + (["--tta"] if tta else [])
    done = run(cmd + [str(p) for p in photos], env={**os.environ, "PYTHONPATH": str(ROOT)})
    answers = json.loads(done.stdout[done.stdout.index("[") :])
    return [a["probability"] for a in answers]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="reuse this pinned virtual environment")
    parser.add_argument("--build", type=Path, default=Path("/tmp/roadwork-subnet-venv"))
    parser.add_argument("--python", default="python3.11", help="interpreter to build it with")
    parser.add_argument("--photos", type=Path, default=None, help="default: shared/real")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()

    from helpers import shared_real
    from roadwork_cache.stages.export import ExportOptions, run_export

    build_seconds = None
    venv = args.venv
    if venv is None:
        venv = args.build
        if venv.exists():
            raise SystemExit(f"{venv} exists: pass --venv {venv} to reuse it, or remove it")
        print(f"building {venv} with {args.python} ...", flush=True)
        build_seconds = build_venv(venv, args.python)
    python = venv / "bin" / "python"
    versions = venv_versions(python)
    wrong = check_pins(versions)
    if wrong:
        raise SystemExit(f"{venv} is not the subnet's environment: {', '.join(wrong)}")

    real = args.photos or shared_real()
    photos = sorted(p for p in real.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    work = Path(tempfile.mkdtemp(prefix="subnet-env-"))
    cases, reference = {}, {}
    for name, m in make_models(work / "models").items():
        for tta in (False, True):
            case = f"{name}{'-tta' if tta else ''}"
            out = work / "exports" / case
            weights = str(m["weights"]) if m["weights"] else None
            opts = ExportOptions(
                m["model"], out, weights, tta=tta, device="cpu", verify=False, progress=False
            )
            run_export(opts)
            cases[case] = {"folder": str(out), "tta": tta}
            reference[case] = predict_json(m["model"], m["weights"], tta, photos)
            print(f"exported and predicted {case}", flush=True)

    done = run(
        [str(python), "-c", RUNNER, json.dumps(cases), json.dumps([str(p) for p in photos])],
        env=clean_env(),
        cwd=work,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])

    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPU cores, {platform.processor()}")
    print("subnet venv:", venv, json.dumps(versions))
    if build_seconds is not None:
        print(f"built in {build_seconds:.0f} s")
    import timm
    import torch
    from PIL import __version__ as pillow

    print(f"package env: torch {torch.__version__}, timm {timm.__version__}, pillow {pillow}")
    banned = ", ".join(result["banned"]) or "none"
    print(f"of roadwork_cache, transformers, sklearn, scipy the detectors imported: {banned}")
    print(f"{len(photos)} photographs: {', '.join(p.name for p in photos)}")
    print()
    print("| case | variants | combine | max abs diff | spread of answers | s per image |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    worst = 0.0
    for case in cases:
        got = result["cases"][case]
        diff = max(abs(a - b) for a, b in zip(got["answers"], reference[case], strict=True))
        worst = max(worst, diff)
        d = got["describe"]
        spread = max(got["answers"]) - min(got["answers"])
        print(
            f"| {case} | {len(d['variants'])} | {d['combine']} | {diff:.2e} | {spread:.2e} | "
            f"{got['seconds'] / len(photos):.2f} |"
        )
    ok = worst <= args.tolerance and not result["banned"]
    print(f"\nworst difference {worst:.2e}: {'within' if ok else 'OVER'} {args.tolerance:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
