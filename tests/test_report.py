"""`roadwork report` on a real (tiny) train-head run: a self-contained page whose numbers agree
with the run's files."""

import base64
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import planted_cache, run_cli
from roadwork_cache.reports.analysis import GroupScore, choose_set, score_groups
from roadwork_cache.reports.html import table_html
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.stages.demo import DEMO_HEAD
from roadwork_cache.stages.report import load_run, write_report
from roadwork_cache.stages.train_head import run_train_head
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.metrics import binary_metrics
from roadwork_cache.training.prepare import TrainHeadOptions

SMALL_HEAD = DEMO_HEAD
BANNER = "scores demonstrate the machinery, not quality"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run on a weak planted signal (so the test set has errors) and its page."""
    root = tmp_path_factory.mktemp("report")
    cache, _, _ = planted_cache(root / "cache", n=180, dim=16, signal=1.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny head: a second thread only spins on a shared machine
    try:
        run_train_head(
            TrainHeadOptions(
                cache=cache,
                out=root / "run",
                head=dict(SMALL_HEAD),
                train=TrainConfig(epochs=2, batch_size=64),
                device="cpu",
                progress=False,
            )
        )
    finally:
        torch.set_num_threads(threads)
    page = write_report(root / "run")
    return root, page


def table(html: str, table_id: str) -> list[list[str]]:
    """Cell texts of the rows (header excluded) of the table with this id."""
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert body, f"no table {table_id}"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows[1:]]


def test_page_is_self_contained_with_plots(run):
    root, page = run
    assert page == root / "run" / "report.html" and page.is_file()
    html = page.read_text()
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    sources = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(sources) >= 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_holds_metrics_and_audit_tables(run):
    root, page = run
    html = page.read_text()
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    shown = table(html, "metrics")
    assert len(shown) == len(metrics["rows"])
    first = metrics["rows"][0]
    assert shown[0][:5] == [
        first["model"],
        first["set"],
        first["variant"],
        first["metadata"],
        first["threshold_kind"],
    ]
    assert shown[0][6] == f"{first['mcc']:+.3f}"
    audit = json.loads((root / "run" / "audit.json").read_text())
    assert [r[0] for r in table(html, "audit")] == [a["field"] for a in audit]
    assert BANNER not in html  # the planted cache does not claim random weights


def set_rows(root, set_name="test") -> tuple[float, list[dict]]:
    """The tuned threshold and the labelled prediction rows of one set, read independently."""
    threshold = json.loads((root / "run" / "config.json").read_text())["threshold"]
    preds = pq.read_table(root / "run" / "predictions.parquet").to_pylist()
    return threshold, [r for r in preds if r["set"] == set_name and r["label"] is not None]


def test_hardest_errors_are_misclassified_rows_of_the_test_set(run):
    root, page = run
    threshold, rows = set_rows(root)
    wrong = [r for r in rows if int(r["head_clean_none"] > threshold) != r["label"]]
    assert wrong, "the fixture should leave errors on the test set"
    shown = [r[0] for r in table(page.read_text(), "hardest")]
    assert shown and set(shown) <= {r["id"] for r in wrong}
    # The most confidently wrong row comes first.
    worst = max(wrong, key=lambda r: abs(r["head_clean_none"] - r["label"]))
    assert shown[0] == worst["id"]


def test_group_mcc_equals_binary_metrics_for_one_group(run):
    root, page = run
    threshold, rows = set_rows(root)
    daytime = {r["id"]: r["daytime"] for r in Cache.open(root / "cache").samples().to_pylist()}
    light = [r for r in rows if daytime[r["id"]] == "Light"]
    y = [r["label"] for r in light]
    assert len(light) >= 5 and 0 < sum(y) < len(y)
    expected = binary_metrics(y, [r["head_clean_none"] for r in light], threshold)["mcc"]
    shown = {r[0]: r for r in table(page.read_text(), "groups-daytime")}
    assert shown["Light"] == ["Light", str(len(light)), str(sum(y)), f"{expected:+.3f}"]


def test_small_or_single_class_groups_are_not_scored():
    labels = np.array([0, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0])
    prob = np.linspace(0.1, 0.9, 12)
    groups = [["small"]] * 4 + [["one class"]] * 5 + [["ok"]] * 3
    groups = [g + ["all"] for g in groups]
    scores = {s.name: s for s in score_groups(groups, labels, prob, 0.5)}
    assert scores["small"] == GroupScore("small", 4, 2, None)
    assert scores["one class"].mcc is None and scores["one class"].n == 5
    assert scores["all"].mcc == pytest.approx(binary_metrics(labels, prob, 0.5)["mcc"])


def test_random_weights_banner_through_the_cli(run, tmp_path, monkeypatch, capsys):
    root, _ = run
    copy = shutil.copytree(root / "run", tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    config["backbone"]["random_init"] = True
    (copy / "config.json").write_text(json.dumps(config))
    out = tmp_path / "pages" / "val.html"
    assert run_cli(monkeypatch, "report", copy, "--out", out, "--set", "val") == 0
    assert str(out) in capsys.readouterr().out
    html = out.read_text()
    assert BANNER in html and "(val set)" in html


def test_page_renders_when_the_cache_is_gone(run, tmp_path):
    root, _ = run
    cache = shutil.copytree(root / "cache", tmp_path / "cache")
    copy = shutil.copytree(root / "run", tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    config["cache"] = str(cache)
    (copy / "config.json").write_text(json.dumps(config))
    shutil.rmtree(cache)
    html = write_report(copy).read_text()
    assert "per-field breakdowns are unavailable" in html.lower()
    assert 'id="groups-' not in html
    assert table(html, "hardest") and table(html, "metrics")
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', html)) >= 4


def test_bad_input_is_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, "report", tmp_path / "nowhere") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    (tmp_path / "notarun").mkdir()
    assert run_cli(monkeypatch, "report", tmp_path / "notarun") == 2
    err = capsys.readouterr().err.strip()
    assert "not a train-head run" in err and len(err.splitlines()) == 1


def test_unknown_set_is_refused(run, monkeypatch, capsys):
    root, _ = run
    assert run_cli(monkeypatch, "report", root / "run", "--set", "train") == 2
    assert "--set must be one of" in capsys.readouterr().err


def test_default_set_falls_back_to_val_without_labelled_test_rows(run, tmp_path):
    root, _ = run
    copy = shutil.copytree(root / "run", tmp_path / "run")
    preds = pq.read_table(copy / "predictions.parquet").to_pydict()
    preds["label"] = [
        None if s == "test" else y for s, y in zip(preds["set"], preds["label"], strict=True)
    ]
    pq.write_table(pa.table(preds), copy / "predictions.parquet")
    assert choose_set(load_run(copy), None).name == "val"
    with pytest.raises(UserError, match="no labelled rows"):
        choose_set(load_run(copy), "test")


def test_strings_from_data_are_escaped():
    html = table_html(["city"], [["<script>alert(1)</script>"]])
    assert "<script>" not in html and "&lt;script&gt;" in html
