"""Every flag reaches its option: each command run with non-default values for its flags,
the stage function replaced by one that records the options it was given. Stage behaviour
is tested elsewhere; this guards the layer between (a flag read into the wrong field, or
never passed on)."""

from __future__ import annotations

import pytest

from helpers import run_cli


@pytest.fixture
def captured(monkeypatch):
    """Replace `module.name` by a recorder; the command then fails harmlessly after it."""
    calls: list = []

    def capture(module, name):
        def record(*args, **kwargs):
            calls.append(args[0] if args else kwargs)
            raise SystemExit(0)

        monkeypatch.setattr(module, name, record)

    return calls, capture


def test_ensemble_flags_reach_the_options(monkeypatch, captured, tmp_path):
    import roadwork_cache.stages.ensemble as stage

    calls, capture = captured
    capture(stage, "run_ensemble")
    code = run_cli(
        monkeypatch,
        "ensemble",
        "--cache", tmp_path / "cache",
        "--out", tmp_path / "ens",
        "--members", "default",
        "--folds", "4",
        "--seed", "7",
        "--dora-folds", "3",
        "--dora-member", "deep",
        "--dora-rank", "4",
        "--dora-lr", "0.002",
        "--dora-epochs", "6",
        "--combine", "stacked",
        "--distill",
        "--jobs", "3",
        "--batch-folds",
        "--epochs", "9",
        "--batch-size", "64",
        "--lr", "0.001",
        "--patience", "2",
        "--variants", "aug-0, natix-1",
        "--target", "target.csv",
        "--gps-brackets", "10:4",
        "--gps-beyond", "0.5",
        "--leak-bound", "0.4",
        "--allow-leaky-metadata",
        "--overwrite",
        "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and len(calls) == 1
    o = calls[0]
    assert (o.folds, o.seed, o.jobs, o.batch_folds) == (4, 7, 3, True)
    assert (o.dora_folds, o.dora_member, o.combine, o.distill) == (3, "deep", "stacked", True)
    assert (o.dora.rank, o.dora.alpha, o.dora.lr, o.dora.epochs) == (4, 8.0, 0.002, 6)
    assert (o.train.epochs, o.train.batch_size, o.train.lr, o.train.patience) == (9, 64, 1e-3, 2)
    assert o.variants == ["aug-0", "natix-1"] and o.target == "target.csv"
    assert o.gps_brackets == ((10.0, 4.0),) and (o.gps_beyond, o.leak_bound) == (0.5, 0.4)
    assert (o.allow_leaky, o.overwrite, o.device, o.progress) == (True, True, "cpu", False)


def test_train_head_flags_reach_the_options(monkeypatch, captured, tmp_path):
    import roadwork_cache.stages.train_head as stage

    calls, capture = captured
    capture(stage, "run_train_head")
    code = run_cli(
        monkeypatch,
        "train-head",
        "--cache", tmp_path / "cache",
        "--out", tmp_path / "run",
        "--epochs", "5",
        "--seed", "3",
        "--layers", "2",
        "--dim", "64",
        "--heads", "4",
        "--no-pruning",
        "--meta-fields", "gps, weather",
        "--field-dropout", "0.2",
        "--dropout", "0.05",
        "--batch-size", "32",
        "--lr", "0.002",
        "--accum-steps", "2",
        "--patience", "1",
        "--w-consistency", "0.3",
        "--w-weather", "0.4",
        "--w-mask", "0.5",
        "--mask-pruning", "0.6",
        "--compare-mask-loss",
        "--variants", "aug-0",
        "--gps-beyond", "0.1",
        "--leak-bound", "0.2",
        "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and len(calls) == 1
    o = calls[0]
    assert o.head == {
        "layers": 2,
        "dim": 64,
        "heads": 4,
        "keep": None,
        "field_dropout": 0.2,
        "dropout": 0.05,
        "meta_fields": ["gps", "weather"],
    }
    t = o.train
    assert (t.epochs, t.seed, t.batch_size, t.lr, t.accum_steps, t.patience) == (
        5,
        3,
        32,
        0.002,
        2,
        1,
    )
    assert (t.loss.consistency, t.loss.weather, t.loss.mask, t.loss.mask_pruning) == (
        0.3,
        0.4,
        0.5,
        0.6,
    )
    assert o.compare_mask_loss and o.variants == ["aug-0"]
    assert (o.gps_beyond, o.leak_bound, o.device, o.progress) == (0.1, 0.2, "cpu", False)


def test_tta_flags_reach_the_options(monkeypatch, captured, tmp_path):
    import roadwork_cache.stages.tta as stage

    calls, capture = captured
    capture(stage, "run_tta")
    code = run_cli(
        monkeypatch,
        "tta",
        "--cache", tmp_path / "cache",
        "--model", tmp_path / "run",
        "--out", tmp_path / "tta.parquet",
        "--split", "all",
        "--variants", "clean,tta:2",
        "--keep", "0.5",
        "--distance", "euclidean",
        "--temperature", "2.0",
        "--no-save-stats",
        "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and len(calls) == 1
    o = calls[0]
    assert o.split == "all" and o.variants == ["clean", "tta-0", "tta-1"]
    assert (o.settings.keep, o.settings.distance, o.settings.temperature) == (
        0.5,
        "euclidean",
        2.0,
    )
    assert (o.save_stats, o.device, o.progress) == (False, "cpu", False)


def test_predict_flags_reach_the_options(monkeypatch, captured, tmp_path):
    import roadwork_cache.stages.predict as stage

    calls, capture = captured
    capture(stage, "run_predict")
    code = run_cli(
        monkeypatch,
        "predict",
        "a.jpg", "images/",
        "--model", tmp_path / "run",
        "--weights", tmp_path / "w.pth",
        "--backbone", "vits16",
        "--tta",
        "--tta-variants", "clean,tta:3",
        "--batch-size", "4",
        "--workers", "0",
        "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and len(calls) == 1
    o = calls[0]
    assert o.inputs == ["a.jpg", "images/"] and o.backbone == "vits16" and o.tta
    assert o.tta_variants == ["clean", "tta-0", "tta-1", "tta-2"]
    assert (o.batch_size, o.workers, o.device, o.progress) == (4, 0, "cpu", False)


def test_export_flags_reach_the_options(monkeypatch, captured, tmp_path):
    import roadwork_cache.stages.export as stage

    calls, capture = captured
    capture(stage, "run_export")
    code = run_cli(
        monkeypatch,
        "export",
        "--model", tmp_path / "run",
        "--out", tmp_path / "hf",
        "--backbone", "vits16",
        "--tta",
        "--tta-variants", "clean,tta:2",
        "--name", "rw",
        "--description", "a roadwork model",
        "--version", "2.0.1",
        "--hotkey", "5Hotkey",
        "--hf-repo", "me/rw",
        "--device", "cpu",
        "--no-verify",
        "--force",
        "--no-progress",
    )  # fmt: skip
    assert code == 0 and len(calls) == 1
    o = calls[0]
    assert (o.backbone, o.tta, o.tta_variants) == ("vits16", True, ["clean", "tta-0", "tta-1"])
    assert (o.name, o.description, o.version) == ("rw", "a roadwork model", "2.0.1")
    assert (o.hotkey, o.hf_repo, o.device, o.verify, o.force, o.progress) == (
        "5Hotkey",
        "me/rw",
        "cpu",
        False,
        True,
        False,
    )
