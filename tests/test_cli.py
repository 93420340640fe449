"""The command line: bad flags and paths are one sentence naming the flag before any work,
run folders are not overwritten without --overwrite, results go to stdout and logs to
stderr, the help text says what it means, and an interrupted run says how to resume."""

import json
import os

import pytest

from helpers import natix_row, planted_cache, run_cli, write_shard
from roadwork_cache.store.cache import Cache

HEAD = ("--dim", "32", "--layers", "1", "--heads", "2")
FAST = ("--epochs", "1", "--device", "cpu", "--no-progress")
EXTRACT = ("--view-size", "32", "--workers", "0", "--no-text", "--no-progress", "--device", "cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root, _, _ = planted_cache(tmp_path_factory.mktemp("planted") / "cache", n=90)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    write_shard(folder / "train-00000-of-00001.parquet", [natix_row(i) for i in range(8)])
    return folder


def one_error(capsys) -> str:
    """The only line on stderr, which must be the error."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ---- 10. bad paths and flags: one sentence naming the flag, before any work -------------------


def test_extract_into_a_file_or_under_a_file_is_one_sentence(monkeypatch, capsys, source, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for where in (a_file, a_file / "sub"):
        capsys.readouterr()
        code = run_cli(monkeypatch, "extract", f"{source}/*.parquet", "--cache", where, *EXTRACT)
        assert code == 2
        assert "--cache" in one_error(capsys)
    assert a_file.read_text() == "mine"


def test_train_head_out_is_a_file_refused_before_the_audit(monkeypatch, capsys, cache, tmp_path):
    a_file = tmp_path / "run"
    a_file.write_text("mine")
    capsys.readouterr()
    code = run_cli(monkeypatch, "train-head", "--cache", cache, "--out", a_file, *HEAD, *FAST)
    assert code == 2
    assert "--out" in one_error(capsys)  # no audit table, no "rows:" line before it


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "-1"),
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--accum-steps", "0"),
        ("--patience", "-1"),
        ("--dropout", "1.5"),
        ("--keep", "13"),
        ("--w-weather", "-0.1"),
        ("--w-mask", "-1"),
        ("--mask-pruning", "-1"),
    ],
)
def test_a_bad_train_head_flag_is_named_alone_and_leaves_nothing(
    monkeypatch, capsys, cache, tmp_path, flag, value
):
    capsys.readouterr()
    out = tmp_path / "run"
    args = ["train-head", "--cache", cache, "--out", out, *HEAD, *FAST, flag, value]
    assert run_cli(monkeypatch, *args) == 2
    error = one_error(capsys)
    assert f"{flag} " in error and value in error
    others = {"--lr", "--epochs", "--batch-size", "--accum-steps", "--patience"} - {flag}
    assert not any(f"{other} " in error for other in others), error
    assert not out.exists()


def test_a_bad_ensemble_flag_is_named_alone(monkeypatch, capsys, cache, tmp_path):
    for flag, value in (("--folds", "1"), ("--jobs", "0"), ("--dora-folds", "1")):
        capsys.readouterr()
        args = ["ensemble", "--cache", cache, "--out", tmp_path / "ens", *FAST, flag, value]
        assert run_cli(monkeypatch, *args) == 2
        error = one_error(capsys)
        assert f"{flag} " in error
        assert not any(f"{f} " in error for f in ("--folds", "--jobs", "--dora-folds") if f != flag)


def test_a_missing_cache_does_not_exist(monkeypatch, capsys, tmp_path):
    for command in (["train-head"], ["ensemble"]):
        capsys.readouterr()
        args = [*command, "--cache", tmp_path / "nowhere", "--out", tmp_path / "out", *FAST]
        assert run_cli(monkeypatch, *args) == 2
        assert "does not exist" in one_error(capsys)
    assert run_cli(monkeypatch, "cache", "info", tmp_path / "nowhere") == 2
    assert "does not exist" in one_error(capsys)


# ---- 8. run folders are not overwritten without --overwrite -----------------------------------


def train_head(monkeypatch, cache, out, *extra):
    return run_cli(monkeypatch, "train-head", "--cache", cache, "--out", out, *HEAD, *FAST, *extra)


def test_train_head_refuses_a_used_run_folder_unless_overwrite(
    monkeypatch, capsys, cache, tmp_path
):
    out = tmp_path / "run"
    assert train_head(monkeypatch, cache, out) == 0
    (out / "report.html").write_text("an old report")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert train_head(monkeypatch, cache, out) == 2
    error = one_error(capsys)
    assert "--overwrite" in error and "train-head run" in error
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    assert train_head(monkeypatch, cache, out, "--overwrite") == 0
    assert not (out / "report.html").exists()  # the old run's report went with it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"x")
    capsys.readouterr()
    assert train_head(monkeypatch, cache, tmp_path / "other") == 2
    assert "--overwrite" in one_error(capsys)


def test_ensemble_resumes_an_unfinished_folder_but_refuses_a_finished_one(
    monkeypatch, capsys, cache, tmp_path
):
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps([{"name": "a", "seed": 1, "head": {"dim": 32, "layers": 1, "heads": 2}}])
    )
    out = tmp_path / "ens"
    args = ["ensemble", "--cache", cache, "--out", out, "--members", members, "--folds", "2"]
    assert run_cli(monkeypatch, *args, *FAST) == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, *args, *FAST) == 2  # a finished ensemble: refused
    error = one_error(capsys)
    assert "finished ensemble" in error and "--overwrite" in error
    (out / "manifest.json").unlink()  # as a run killed before its end leaves it
    assert run_cli(monkeypatch, *args, *FAST) == 0
    assert "member a: reusing the folds trained by an earlier run" in capsys.readouterr().err
    assert run_cli(monkeypatch, *args, *FAST, "--overwrite") == 0
    assert (out / "manifest.json").is_file()
    capsys.readouterr()
    run = tmp_path / "run"  # what train-head leaves (its record is all the claim looks at)
    run.mkdir()
    (run / "config.json").write_text("{}")
    capsys.readouterr()
    other = ["ensemble", "--cache", cache, "--out", run, "--members", members, "--overwrite"]
    assert run_cli(monkeypatch, *other, *FAST) == 2  # never mixed into a train-head run
    assert "train-head run" in one_error(capsys)


# ---- 12. results on stdout, logs on stderr ------------------------------------------------------


def test_tables_go_to_stdout_and_log_lines_to_stderr(monkeypatch, capsys, cache, source, tmp_path):
    capsys.readouterr()
    assert train_head(monkeypatch, cache, tmp_path / "run") == 0
    captured = capsys.readouterr()
    assert "train-head: as deployed" in captured.out and "MCC" in captured.out
    assert "run folder:" in captured.out
    assert "rows:" in captured.err and "rows:" not in captured.out
    assert "train-head: as deployed" not in captured.err

    assert (
        run_cli(monkeypatch, "extract", f"{source}/*.parquet", "--cache", tmp_path / "c", *EXTRACT)
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "extract:" in captured.out and "source:" in captured.err and "source:" not in captured.out
    )


# ---- 13. help and version ------------------------------------------------------------------------


def help_text(monkeypatch, capsys, *command) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert run_cli(monkeypatch, *command, "--help") == 0
    return capsys.readouterr().out


def test_version(monkeypatch, capsys):
    from roadwork_cache.runtime.version import __version__

    capsys.readouterr()
    assert run_cli(monkeypatch, "--version") == 0
    assert capsys.readouterr().out.strip() == f"roadwork-cache {__version__}"


def test_help_keeps_asterisks_shows_no_bool_and_says_what_meta_fields_leave_out(
    monkeypatch, capsys
):
    text = help_text(monkeypatch, capsys, "train-head")
    assert "aug-*, natix-*" in text
    assert "<bool>" not in text
    assert "text is left out" in " ".join(text.split())
    assert "<bool>" not in help_text(monkeypatch, capsys, "extract")
    assert "'data/*.parquet'" in help_text(monkeypatch, capsys, "extract")
    assert "<bool>" not in help_text(monkeypatch, capsys)


# ---- 15. interrupted runs ------------------------------------------------------------------------


def test_ctrl_c_in_extract_says_a_rerun_resumes(monkeypatch, capsys, source, tmp_path):
    original = Cache.write_features

    def interrupted(self, variant, shard, features):
        if shard.index == 1:
            raise KeyboardInterrupt
        return original(self, variant, shard, features)

    monkeypatch.setattr(Cache, "write_features", interrupted)
    cache = tmp_path / "cache"
    args = ["extract", f"{source}/*.parquet", "--cache", cache, "--shard-rows", "4", *EXTRACT]
    capsys.readouterr()
    assert run_cli(monkeypatch, *args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "interrupted" in err[-1] and "re-run the same command to resume" in err[-1]
    monkeypatch.setattr(Cache, "write_features", original)

    # verify: an interrupted cache needs a re-run, not --repair
    assert run_cli(monkeypatch, "cache", "verify", cache) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "never completed" in text and "--repair" not in text
    assert "re-run `roadwork extract` with the same arguments" in text
    assert run_cli(monkeypatch, *args) == 0
    assert run_cli(monkeypatch, "cache", "verify", cache) == 0

    # a damaged shard: --repair first
    shard_file = next(
        p for p in (cache / "features" / "clean").rglob("*") if p.is_file() and p.name == "0"
    )
    data = bytearray(shard_file.read_bytes())
    data[100:164] = os.urandom(64)
    shard_file.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli(monkeypatch, "cache", "verify", cache) == 1
    out = capsys.readouterr()
    assert "checksum" in out.out + out.err and "--repair" in out.out + out.err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["extract", "src/*.parquet", "--cache", "c", "--view-size", "-16"], "--view-size"),
        (["extract", "src/*.parquet", "--cache", "c", "--view-size", "0"], "--view-size"),
        (["predict", "x.jpg", "--model", "m", "--workers", "-1"], "--workers"),
        (["demo", "d", "--epochs", "0"], "--epochs"),
        (["demo", "d", "--rows", "5"], "--rows"),
    ],
)
def test_bad_stage_flags_are_one_sentence_before_any_work(
    monkeypatch, capsys, tmp_path, args, flag
):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_cli(monkeypatch, *args) == 2
    assert flag in one_error(capsys)
    assert not any(tmp_path.iterdir())  # nothing written
