"""`roadwork export`: the folder a miner publishes, and its standalone detector.py.

The detector is loaded from the written folder as a miner loads it (a module from a file) and
compared with the package's `Predictor` and with `roadwork predict` on the real photographs:
a train-head run and an ensemble, with and without TTA (FOODS and mean), over the tiny preset
and over a vits16-shaped random model saved in the transformers format.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    FOODS_CANDIDATES,
    add_foods,
    run_cli,
    shared_real,
    tiny_models,
    write_transformers,
)
from roadwork_cache.backbone import convert
from roadwork_cache.backbone.loading import read_folder_weights
from roadwork_cache.inference.amalgamate import (
    STANDALONE_IMPORTS,
    AmalgamationError,
    Part,
    detector_source,
)
from roadwork_cache.inference.export import import_detector, predict_bytes
from roadwork_cache.inference.export_format import ExportConfig
from roadwork_cache.inference.predictor import DEFAULT_TTA, Predictor
from roadwork_cache.reports.model_card import model_card
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.stages.export import CheckOptions, ExportOptions, run_check, run_export
from roadwork_cache.stages.predict import PredictOptions, run_predict

HOTKEY = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"
FOODS_VARIANTS = FOODS_CANDIDATES


def photos() -> list[Path]:
    real = shared_real()
    found = sorted(p for p in real.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    assert len(found) == 5, f"expected the 5 real photographs in {real} (or set ROADWORK_SHARED)"
    return found


@dataclass
class Models:
    weights: Path | None  # None: the tiny preset's own random weights
    run: Path
    ensemble: Path

    def opts(self) -> dict:
        return {"weights": str(self.weights)} if self.weights else {}


def models(root: Path, preset: str, view_size: int, seed: int) -> Models:
    weights = write_transformers(root / f"dinov3-{preset}", seed, preset)
    run, ensemble = tiny_models(root, view_size=view_size, preset=preset, weights=weights)
    return Models(weights, run, ensemble)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Models:
    """The tiny preset's shape, in the transformers format, with layer scales of 1 (the tiny
    preset's own random weights, with layer scales of 1e-5, give every image nearly the same
    feature: a comparison of near-constants would prove little)."""
    found = models(tmp_path_factory.mktemp("tiny"), "tiny", 64, seed=1)
    add_foods(found.run)  # the run's TTA goes through FOODS, the ensemble's through the mean
    return found


@pytest.fixture(scope="module")
def vits16(tmp_path_factory) -> Models:
    return models(tmp_path_factory.mktemp("vits16"), "vits16", 32, seed=1)


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory) -> Models:
    run, ensemble = tiny_models(tmp_path_factory.mktemp("random"))
    return Models(None, run, ensemble)


def export(model: Path, out: Path, **over) -> Path:
    run_export(
        ExportOptions(model=model, out=out, hotkey=HOTKEY, device="cpu", progress=False, **over)
    )
    return out


def predict_answers(model: Path, paths: list[Path], **over) -> list[float]:
    """`roadwork predict` on the files: the stage the command runs."""
    opts = PredictOptions([str(p) for p in paths], model, workers=0, progress=False, **over)
    answers, _ = run_predict(opts)
    assert all(a.error is None for a in answers)
    return [float(a.probability) for a in answers]


# ---- detector.py is the package's own code, standing alone --------------------------------


def test_detector_source_imports_only_torch_timm_safetensors_numpy_pillow(tmp_path):
    source = detector_source()
    allowed = set(STANDALONE_IMPORTS) | set(sys.stdlib_module_names)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr == "load":
            assert ast.unparse(node) != "torch.load", "the detector must not unpickle"
    assert imported - allowed == set(), f"detector.py imports {sorted(imported - allowed)}"
    assert {"torch", "timm", "safetensors", "numpy", "PIL"} <= imported
    assert not imported & {"roadwork_cache", "transformers", "sklearn", "scipy", "pickle"}
    # Every name it uses is defined: pyflakes' checks over the whole file.
    path = tmp_path / "detector.py"
    path.write_text(source)
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F", str(path)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    tree = ast.parse(source)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"RoadworkDetector", "RoadworkHead", "HeadConfig", "UserError"} <= classes


@pytest.mark.parametrize(
    "parts, message",
    [
        ((Part("roadwork_cache.inference.foods"),), "sklearn"),  # FoodsStats.fit, if whole
        ((Part("roadwork_cache.heads.head"),), "no earlier part defines"),
        ((Part("roadwork_cache.heads.config"), Part("roadwork_cache.heads.config")), "both"),
        ((Part("roadwork_cache.views.variants", ("no_such_name",)),), "defines no no_such_name"),
    ],
)
def test_amalgamation_refuses_what_would_break_the_detector(parts, message):
    with pytest.raises(AmalgamationError, match=message):
        detector_source(parts)


def test_the_detector_runs_without_the_package_transformers_or_sklearn(random_tiny, tmp_path):
    out = export(random_tiny.ensemble, tmp_path / "out", verify=False)
    script = (
        "import json, sys, importlib.util\n"
        "sys.path = [p for p in sys.path if 'roadwork' not in p and p not in ('', '.')]\n"
        "spec = importlib.util.spec_from_file_location('detector', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['detector'] = m\n"
        "spec.loader.exec_module(m)\n"
        "from PIL import Image\n"
        "p = m.RoadworkDetector(device='cpu')(Image.new('RGB', (300, 200), (90, 120, 60)))\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('roadwork_cache', 'transformers', 'sklearn', 'scipy'))\n"
        "print(json.dumps({'p': p, 'bad': bad}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out / "detector.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["p"] <= 1.0
    assert result["bad"] == []


# ---- the exported detector answers what predict answers ----------------------------------


@pytest.mark.parametrize("which", ["run", "ensemble"])
@pytest.mark.parametrize("tta", [False, True])
def test_exported_detector_matches_predict_on_real_photos(tiny, tmp_path, which, tta):
    model = tiny.run if which == "run" else tiny.ensemble
    out = export(model, tmp_path / "out", tta=tta, verify=False, **tiny.opts())
    module = import_detector(out)
    detector = module.RoadworkDetector(out, device="cpu")  # the export's default TTA
    if tta:  # the run's FOODS candidates; the ensemble, without FOODS, predict's default
        assert detector.variants == (FOODS_VARIANTS if which == "run" else DEFAULT_TTA)
        assert (detector.foods is not None) == (which == "run")
    else:
        assert detector.variants == ("clean",)
    paths = photos()[:3] if tta else photos()  # 9 variants x 12 views each: keep it short
    want = predict_answers(model, paths, tta=tta, **tiny.opts())
    got = [detector(Image.open(p)) for p in paths]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # Not a constant: the photographs get different answers, and TTA changes them.
    assert np.ptp(got) > 1e-4
    if tta:
        clean = module.RoadworkDetector(out, device="cpu", tta=False)
        assert max(abs(a - clean(Image.open(p))) for a, p in zip(got, paths, strict=True)) > 1e-5


def test_exported_detector_follows_a_sat_backbones_normalisation(tiny, tmp_path):
    """A model whose cache was made with the SAT-493M pixel statistics: the detector must
    normalise as `roadwork predict` does, not with ImageNet's statistics."""
    model = tmp_path / "sat-run"
    shutil.copytree(tiny.run, model)
    (model / "foods.safetensors").unlink()  # fitted for the lvd record's digest
    config = json.loads((model / "config.json").read_text())
    config["backbone"]["normalisation"] = "sat"
    (model / "config.json").write_text(json.dumps(config))
    out = export(model, tmp_path / "out", tta=False, verify=False, **tiny.opts())
    assert json.loads((out / "config.json").read_text())["backbone"]["normalisation"] == "sat"
    detector = import_detector(out).RoadworkDetector(out, device="cpu")
    paths = photos()
    want = predict_answers(model, paths, **tiny.opts())
    got = [detector(Image.open(p)) for p in paths]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The statistics matter here: the lvd model answers otherwise on the same photographs.
    lvd = predict_answers(tiny.run, paths, **tiny.opts())
    assert max(abs(a - b) for a, b in zip(got, lvd, strict=True)) > 1e-4
    # An export written before the normalisation was recorded used ImageNet's statistics.
    exported = json.loads((out / "config.json").read_text())
    del exported["backbone"]["normalisation"]
    (out / "config.json").write_text(json.dumps(exported))
    older = import_detector(out).RoadworkDetector(out, device="cpu")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    torch.testing.assert_close(older.mean, mean)


def test_fewer_variants_trade_accuracy_for_latency(tiny, tmp_path):
    out = export(tiny.run, tmp_path / "out", **tiny.opts())
    module = import_detector(out)
    detector = module.RoadworkDetector(out, device="cpu", tta=True, max_variants=3)
    assert detector.variants == FOODS_VARIANTS[:3]
    predictor = Predictor.load(
        tiny.run, tiny.weights, device="cpu", tta=True, tta_variants=list(FOODS_VARIANTS[:3])
    )
    for path in photos()[:3]:
        want = predict_bytes(predictor, path.read_bytes())
        assert abs(detector(Image.open(path)) - want) < 1e-5


def test_a_large_jpeg_is_draft_decoded_as_predict_decodes_it(tiny, tmp_path):
    """With 64 px views a JPEG decodes at half scale in extract and predict: the detector,
    handed the JPEG not yet loaded, must do the same."""
    out = export(tiny.run, tmp_path / "out", **tiny.opts())
    big = tmp_path / "big.jpg"
    Image.open(photos()[1]).convert("RGB").resize((900, 520)).save(big, quality=90)
    detector = import_detector(out).RoadworkDetector(out, device="cpu")
    drafted = detector(Image.open(big))
    assert abs(drafted - predict_answers(tiny.run, [big], **tiny.opts())[0]) < 1e-5
    full = detector(Image.open(big).convert("RGB"))  # already decoded: no draft possible
    assert abs(full - drafted) > 1e-6  # the draft changes the pixels, so it had to match


def test_vits16_transformers_weights_are_converted_to_timm(vits16, tmp_path):
    out = export(vits16.run, tmp_path / "out", verify=False, **vits16.opts())
    from safetensors.torch import load_file

    saved = load_file(out / "backbone.safetensors")
    expected = convert.transformers_to_timm(read_folder_weights(vits16.weights))
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["format"] == "transformers"
    assert config["backbone"]["timm"]["model_name"] == "vit_small_patch16_dinov3"
    assert str(vits16.weights) not in (out / "config.json").read_text()  # no local paths
    # TTA and ensembles over vits16 are compared in bench/subnet_env.py: slow on 2 cores.
    detector = import_detector(out).RoadworkDetector(out, device="cpu")
    want = predict_answers(vits16.run, photos()[:3], **vits16.opts())
    got = [detector(Image.open(p)) for p in photos()[:3]]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(got) > 1e-4
    card = (out / "README.md").read_text()
    assert "DINOv3 License" in card and "license_name: dinov3-license" in card


def test_precision_follows_the_gpu_generation(random_tiny, tmp_path, monkeypatch):
    module = import_detector(export(random_tiny.run, tmp_path / "out", verify=False))
    assert module.compute_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert module.compute_dtype(torch.device("cuda")) == torch.float16  # GTX 1660: no bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert module.compute_dtype(torch.device("cuda")) == torch.bfloat16


# ---- refusals, one sentence each -----------------------------------------------------------


def test_weights_other_than_the_caches_are_refused(random_tiny, tiny, vits16, tmp_path):
    with pytest.raises(UserError, match="backbone preset = tiny") as info:
        export(random_tiny.run, tmp_path / "a", backbone="vits16", **vits16.opts())
    assert "\n" not in str(info.value)
    other = write_transformers(tmp_path / "other-tiny", seed=2, preset="tiny")
    with pytest.raises(UserError, match="was trained on features of weights") as info:
        export(tiny.run, tmp_path / "b", weights=str(other))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_or_corrupted_files_are_refused_in_one_sentence(
    random_tiny, tmp_path, monkeypatch, capsys
):
    source = export(random_tiny.ensemble, tmp_path / "source")

    def damaged(name: str, how) -> Path:
        folder = tmp_path / f"{name}-{how.__name__}"
        shutil.copytree(source, folder)
        how(folder / name)
        return folder

    def remove(path: Path) -> None:
        path.unlink()

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:100])

    cases = [
        (damaged("heads.safetensors", remove), "is missing heads.safetensors"),
        (damaged("backbone.safetensors", flip), "backbone.safetensors is corrupted"),
        (damaged("detector.py", flip), "detector.py is corrupted"),
        (damaged("model_card.json", remove), "is missing model_card.json"),
        (damaged("config.json", remove), "is not an exported model folder"),
    ]
    for folder, message in cases:
        assert run_cli(monkeypatch, "export", "--check", folder) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    # Without the sha256 check, a truncated file still gets one sentence from safetensors.
    folder = damaged("backbone.safetensors", truncate)
    module = import_detector(folder)
    with pytest.raises(module.UserError, match="not a whole safetensors file"):
        module.RoadworkDetector(folder, device="cpu", verify=False)


def test_a_backbone_of_another_architecture_or_format_version_is_refused(
    random_tiny, vits16, tmp_path
):
    tiny_out = export(random_tiny.run, tmp_path / "tiny", verify=False)
    vits_out = export(vits16.run, tmp_path / "vits", verify=False, **vits16.opts())
    module = import_detector(tiny_out)
    shutil.copy(vits_out / "backbone.safetensors", tiny_out / "backbone.safetensors")
    with pytest.raises(module.UserError, match="do not fit the architecture"):
        module.RoadworkDetector(tiny_out, device="cpu", verify=False)
    config = json.loads((vits_out / "config.json").read_text())
    config["format_version"] = 99
    (vits_out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="version 99, but this detector reads version 1"):
        run_check(CheckOptions(vits_out, runs=1, device="cpu"))


def test_bad_card_fields_and_a_used_folder_are_refused(random_tiny, tmp_path):
    run, ensemble = random_tiny.run, random_tiny.ensemble
    with pytest.raises(UserError, match="X.Y.Z"):
        export(run, tmp_path / "a", version="1.0")
    with pytest.raises(UserError, match="ss58"):
        run_export(ExportOptions(model=run, out=tmp_path / "b", hotkey="not a key"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="choose an empty folder"):
        export(run, used, force=True)
    out = export(run, tmp_path / "out", verify=False)
    with pytest.raises(UserError, match="--force"):
        export(run, out)
    export(ensemble, out, force=True, verify=False)
    assert json.loads((out / "config.json").read_text())["kind"] == "ensemble"


# ---- the folder: model card, check ---------------------------------------------------------


def test_model_card_shows_the_runs_metrics_or_says_there_are_none(random_tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(random_tiny.run, run)
    bare = export(run, tmp_path / "bare", verify=False)
    card = json.loads((bare / "model_card.json").read_text())
    assert list(card) == ["model_name", "description", "version", "submitted_by", "submission_time"]
    assert card["submitted_by"] == HOTKEY and isinstance(card["submission_time"], int)
    readme = (bare / "README.md").read_text()
    assert readme.startswith("---\nlicense: mit")
    assert "no `metrics.json`" in readme and "tests and demonstrations only" in readme

    row = {"model": "head", "threshold_kind": "tuned", "threshold": 0.4, "mcc": 0.61}
    row.update(accuracy=0.8, precision=0.7, recall=0.9, f1=0.79, auc=0.88, reward=0.5, n=40)
    rows = [
        {**row, "set": "test", "variant": "natix", "metadata": "none", "mcc": 0.456},
        {**row, "set": "test", "variant": "clean", "metadata": "all", "mcc": 0.789},
        {**row, "threshold_kind": "0.5", "set": "test", "variant": "clean", "mcc": 0.111},
    ]
    metrics = {"rows": rows, "expected_reward": {"mean": 0.4321, "p5": 0.2109}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    readme = (export(run, tmp_path / "with", verify=False) / "README.md").read_text()
    assert "| test | natix | none | +0.456 |" in readme
    assert "+0.789" in readme and "+0.111" not in readme  # the deployed (tuned) cut only
    assert "mean 0.432, p5 0.211" in readme


def card_config(kind: str = "train-head") -> ExportConfig:
    """The smallest consistent export config a model card can be written from."""
    backbone = {"timm": {"model_name": "vit_tiny"}, "pool": "cls", "view_size": 64}
    backbone.update(feature_dim=32, preset="tiny", format="random", random_init=True)
    return ExportConfig(
        kind=kind,
        backbone=backbone,
        views={"view_size": 64},
        heads=[{"config": {}}],
        threshold=0.4,
        tta={"enabled": False, "variants": ["clean"], "combine": "mean"},
        source={"tool_version": "0.0.0"},
    )


CARD = {"model_name": "m", "description": "d", "version": "1.0.0"}


def test_model_card_publishes_no_local_path_of_the_seen_record():
    seen = {
        "cache": "/home/u/caches/natix",
        "splits": ["train", "val"],
        "target": {"cache": "/home/u/caches/target", "rows": 500},
    }
    record = {"cache": "/home/u/caches/natix", "seen": seen}
    readme = model_card(card_config(), CARD, record, None)
    line = next(x for x in readme.splitlines() if x.startswith("- Labelled rows seen"))
    assert "/home/u" not in readme and "/" not in line
    assert "`natix`" in line and "train, val" in line and "`target`, 500 rows" in line


def test_model_card_scores_only_held_out_sets():
    row = {"model": "head", "threshold_kind": "tuned", "variant": "clean", "metadata": "none"}
    val = {**row, "set": "val", "mcc": 0.777}
    test = {**row, "set": "test", "mcc": 0.444}
    fitted = {"cache": "/c/natix", "splits": ["train", "val"]}
    readme = model_card(card_config(), CARD, {"seen": fitted}, {"rows": [val, test]})
    assert "| head | test | clean | none | +0.444 |" in readme
    assert "+0.777" not in readme and "| val |" not in readme  # where the cut was tuned

    # Only the in-sample val row: one sentence, no table.
    readme = model_card(card_config(), CARD, {"seen": fitted}, {"rows": [val]})
    assert "No held-out score exists" in readme
    assert "+0.777" not in readme and "| model |" not in readme

    # A test split the model was adapted on (DoRA on test) is not held-out either, for an
    # ensemble too, whose out-of-fold rows fitted its combination.
    adapted = {"cache": "/c/natix", "splits": ["test", "train", "val"]}
    oof = {**row, "model": "ensemble", "set": "oof", "mcc": 0.555}
    rows = [oof, {**test, "model": "ensemble"}]
    readme = model_card(card_config("ensemble"), CARD, {"seen": adapted}, {"rows": rows})
    assert "No held-out score exists" in readme
    assert "+0.444" not in readme and "+0.555" not in readme


def test_export_check_prints_latency_device_and_dtype(random_tiny, tmp_path, monkeypatch, capsys):
    out = export(random_tiny.ensemble, tmp_path / "out", tta=True, verify=False)
    args = ["--check", out, "--runs", "3", "--device", "cpu", "--max-variants", "3"]
    assert run_cli(monkeypatch, "export", *args) == 0
    text = capsys.readouterr().out
    for word in ("p50", "p95", "device", "cpu", "float32", "3 (clean, tta-0, tta-1), mean"):
        assert word in text, text
    summary = run_check(CheckOptions(out, runs=2, device="cpu", tta=False))
    assert summary.describe["variants"] == ["clean"] and summary.p95_ms >= summary.p50_ms > 0


def test_export_command_writes_a_complete_repository(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repo"
    args = ["--model", tiny.run, "--out", out, "--weights", tiny.weights, "--tta"]
    assert run_cli(monkeypatch, "export", *args, "--version", "2.1.0") == 0
    names = sorted(p.name for p in out.iterdir())
    expected = ["backbone.safetensors", "config.json", "detector.py", "heads.safetensors"]
    assert names == sorted([*expected, "README.md", "model_card.json", "miner"])
    config = json.loads((out / "config.json").read_text())
    assert config["tta"]["enabled"] and config["tta"]["combine"] == "foods"
    assert config["tta"]["variants"] == list(FOODS_VARIANTS) and config["threshold"] == 0.4
    assert config["views"]["layout"] == "grid3x3-v1"
    assert json.loads((out / "model_card.json").read_text())["version"] == "2.1.0"
    shown = capsys.readouterr()
    assert "max |difference|" in shown.out
    assert "export" in shown.err and "3/3" in shown.err  # the steps' bar, on stderr
    # The detector takes a decoded PNG as well as a file's bytes.
    predictor = Predictor.load(tiny.run, tiny.weights, device="cpu", tta=True)
    detector = import_detector(out).RoadworkDetector(out, device="cpu")
    data = io.BytesIO()
    Image.open(photos()[0]).save(data, "PNG")
    want = predict_bytes(replace(predictor), data.getvalue())
    assert abs(detector(Image.open(data)) - want) < 1e-5
    assert abs(detector(data.getvalue()) - want) < 1e-5
    assert run_cli(monkeypatch, "export", "--out", out) == 2


# A stand-in for the subnet's base_miner package, written from its documented contract (the
# registry's register_module / [name], and FeatureDetector: the device kept only when it is
# the string "cuda", the YAML's keys set as attributes, then load_model()).
REGISTRY_STUB = """
class Registry:
    def __init__(self):
        self.data = {}

    def register_module(self, module_name=None):
        def register(cls):
            self.data[module_name or cls.__name__] = cls
            return cls
        return register

    def __getitem__(self, key):
        return self.data[key]


DETECTOR_REGISTRY = Registry()
"""
FEATURE_DETECTOR_STUB = """
from pathlib import Path

import torch
import yaml


class FeatureDetector:
    def __init__(self, model_name, config_name=None, device="cpu"):
        self.model_name = model_name
        cuda = device == "cuda" and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        if config_name:
            path = Path(__file__).parent / "configs" / config_name
            for key, value in yaml.safe_load(path.read_text()).items():
                setattr(self, key, value)
        self.load_model()
"""


def test_the_miner_files_register_the_detector_in_a_subnet_like_miner(tiny, tmp_path):
    out = export(
        tiny.ensemble, tmp_path / "out", verify=False, hf_repo="me/roadwork", **tiny.opts()
    )
    assert "hf_repo: 'me/roadwork'" in (out / "miner" / "roadwork_dinov3.yaml").read_text()
    subnet = tmp_path / "subnet"
    detectors = subnet / "base_miner" / "detectors"
    (detectors / "configs").mkdir(parents=True)
    (subnet / "base_miner" / "__init__.py").write_text("")
    (subnet / "base_miner" / "registry.py").write_text(REGISTRY_STUB)
    (detectors / "feature_detector.py").write_text(FEATURE_DETECTOR_STUB)
    shutil.copy(out / "miner" / "roadwork_dinov3_detector.py", detectors)
    (detectors / "__init__.py").write_text(
        "from .feature_detector import FeatureDetector\n"
        "from .roadwork_dinov3_detector import RoadworkDinoV3Detector\n"
    )
    config = (out / "miner" / "roadwork_dinov3.yaml").read_text()
    config = config.replace("me/roadwork", str(out))  # a local folder instead of the hub
    (detectors / "configs" / "roadwork_dinov3.yaml").write_text(config)
    sys.path.insert(0, str(subnet))
    try:
        import base_miner.detectors  # noqa: F401  (registers the class, as the miner does)
        from base_miner.registry import DETECTOR_REGISTRY

        detector = DETECTOR_REGISTRY["ROADWORK_DINOV3"](
            config_name="roadwork_dinov3.yaml", device=torch.device("cpu")
        )
        data = photos()[2].read_bytes()
        got = detector(Image.open(io.BytesIO(data)))  # as neurons/miner.py hands it over
    finally:
        sys.path.remove(str(subnet))
        for name in [n for n in sys.modules if n.split(".")[0] == "base_miner"]:
            del sys.modules[name]
    want = predict_answers(tiny.ensemble, [photos()[2]], **tiny.opts())[0]
    assert abs(got - want) < 1e-5
