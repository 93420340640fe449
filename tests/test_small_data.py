"""Small data: `train-head` and `ensemble` on the 60 rows of `roadwork synth --rows 60` (nine
training videos, two of them negative) choose a split and folds that keep both labels on
both sides, and say so."""

import json

import pytest

from helpers import run_cli

SMALL = ("--dim", "32", "--layers", "1", "--heads", "2")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    mp = pytest.MonkeyPatch()
    try:
        assert run_cli(mp, "synth", root / "data", "--rows", "60", "--seed", "0") == 0
        code = run_cli(
            mp,
            "extract",
            f"{root}/data/*.parquet",
            "--cache",
            root / "cache",
            "--view-size",
            "32",
            "--workers",
            "0",
            "--no-text",
            "--no-progress",
            "--device",
            "cpu",
        )
        assert code == 0
    finally:
        mp.undo()
    return root / "cache"


def test_train_head_on_60_rows_chooses_a_split_with_both_labels(
    monkeypatch, capsys, cache, tmp_path
):
    capsys.readouterr()
    code = run_cli(
        monkeypatch,
        "train-head",
        "--cache",
        cache,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        *SMALL,
        "--device",
        "cpu",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "has only label" in err and ("hold-out keeping both labels" in err or " of 5 (" in err)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    val = [r for r in metrics["rows"] if r["set"] == "val" and r["model"] == "head"]
    assert val  # validation rows were scored: both labels are there


def test_ensemble_on_60_rows_uses_fewer_folds(monkeypatch, capsys, cache, tmp_path):
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            [
                {
                    "name": "a",
                    "seed": 1,
                    "head": {"dim": 32, "layers": 1, "heads": 2, "pyramid_dims": [32]},
                }
            ]
        )
    )
    capsys.readouterr()
    code = run_cli(
        monkeypatch,
        "ensemble",
        "--cache",
        cache,
        "--out",
        tmp_path / "ens",
        "--members",
        members,
        "--folds",
        "5",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "folds, not 5" in err
    manifest = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert 2 <= manifest["folds"] < 5
    assert len(manifest["members"][0]["folders"]) == manifest["folds"]
