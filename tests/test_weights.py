"""Weights that do not fit are refused in one sentence, and weights that fit give the reference
library's own features: transformers folders (with a layer missing, under a prefix), timm
`_qkvb` files and Meta files with non-zero q / v biases, bad files through the CLI, nothing
printed on stdout under `predict --json`, and the satellite normalisation followed from the
cache to `predict` and the detector."""

import json
import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import DINOv3ViTModel

from helpers import HEAD_32, natix_row, run_cli, write_shard
from roadwork_cache.backbone.loading import load_backbone
from roadwork_cache.backbone.presets import PRESETS
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.inference.head_folder import HeadRecord, write_head
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.store.cache import Cache

TINY = PRESETS["tiny"]
VIEW = 32
SMALL_HEAD = HEAD_32


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (3, VIEW, VIEW, 3), dtype=torch.uint8, generator=g)


def normalise(views: torch.Tensor) -> torch.Tensor:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's: the LVD weights
    x = views.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def hf_folder(root, seed=7):
    torch.manual_seed(seed)
    model = DINOv3ViTModel(TINY.hf_config()).eval()
    model.save_pretrained(root)
    return model


def rewrite_tensors(folder, change):
    path = folder / "model.safetensors"
    state = load_file(path)
    save_file(change(state), path)


def one_sentence(message: str) -> None:
    assert "\n" not in message and not message.endswith("."), message


# ---- 1. transformers folders whose tensors do not fit -------------------------------------------


def test_a_transformers_folder_missing_a_layer_is_refused_naming_what_is_missing(tmp_path):
    hf_folder(tmp_path / "m")
    rewrite_tensors(tmp_path / "m", lambda s: {k: v for k, v in s.items() if ".1." not in k})
    with pytest.raises(UserError) as info:
        load_backbone("tiny", tmp_path / "m", view_size=VIEW)
    message = str(info.value)
    one_sentence(message)
    # every tensor of block 1 is missing (norms, qkv, q/v biases, proj, layer scales, mlp)
    n_block = sum(k.startswith("blocks.1.") for k in tiny_timm(qkv_bias=True).state_dict())
    assert f"{n_block} tensors are missing (e.g. blocks.1." in message


def test_missing_and_unexpected_tensors_are_named_together(tmp_path):
    hf_folder(tmp_path / "m")

    def change(state):
        del state["layer.1.mlp.up_proj.weight"]
        del state["layer.0.attention.q_proj.weight"]
        state["layer.1.attention.extra.weight"] = torch.zeros(2)
        state["pooler.dense.weight"] = torch.zeros(2)
        return state

    rewrite_tensors(tmp_path / "m", change)
    with pytest.raises(UserError) as info:
        load_backbone("tiny", tmp_path / "m", view_size=VIEW)
    message = str(info.value)
    one_sentence(message)
    assert "2 tensors are missing (e.g. blocks.0.attn.qkv.weight, blocks.1.mlp.fc1.weight)" in (
        message
    )
    assert "4 are unexpected (e.g. " in message  # extra, pooler and layer 0's orphaned k / v


def test_a_prefixed_transformers_folder_gives_the_models_own_features(tmp_path, views):
    """Every tensor under `backbone.` (a wrapper saved it): the common prefix is stripped,
    and the features are transformers' own, so loading it is safe."""
    model = hf_folder(tmp_path / "m")
    rewrite_tensors(tmp_path / "m", lambda s: {f"backbone.{k}": v for k, v in s.items()})
    backbone = load_backbone("tiny", tmp_path / "m", view_size=VIEW)
    with torch.no_grad():
        expected = model(pixel_values=normalise(views)).last_hidden_state[:, 0]
    torch.testing.assert_close(backbone(views), expected, rtol=1e-4, atol=1e-5)


def test_a_prefixed_folder_with_a_tensor_outside_the_prefix_is_refused(tmp_path):
    hf_folder(tmp_path / "m")

    def change(state):
        state = {f"backbone.{k}": v for k, v in state.items()}
        state["classifier.weight"] = torch.zeros(2, TINY.embed_dim)
        return state

    rewrite_tensors(tmp_path / "m", change)
    with pytest.raises(UserError, match=r"1 are unexpected \(e.g. classifier.weight\)"):
        load_backbone("tiny", tmp_path / "m", view_size=VIEW)


# ---- 3. non-zero q / v biases are kept -----------------------------------------------------------


def tiny_timm(**over):
    torch.manual_seed(9)
    model = timm.create_model(
        TINY.timm_name,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=VIEW,
        **{**TINY.timm_kwargs, **over},
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.5)  # timm initialises them at 0: make them count
            elif name.endswith(("gamma_1", "gamma_2")):
                p.fill_(1.0)  # layer scales of 1e-5 would hide what the blocks do
    return model


def timm_cls(model, views):
    with torch.no_grad():
        return model.forward_features(normalise(views))[:, 0]


def meta_state(model) -> dict:
    """timm names -> Meta's DINOv3 names, with q / k / v biases fused into `qkv.bias`."""
    state = model.state_dict()
    meta = {}
    for key, value in state.items():
        if key.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        key = key.replace("reg_token", "storage_tokens")
        meta[key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = value
    for i in range(TINY.depth):
        q, v = state[f"blocks.{i}.attn.q_bias"], state[f"blocks.{i}.attn.v_bias"]
        meta[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    meta["mask_token"] = torch.zeros(1, TINY.embed_dim)
    return meta


def test_a_timm_qkvb_file_keeps_its_biases(tmp_path, views):
    model = tiny_timm(qkv_bias=True)
    assert any(k.endswith("q_bias") for k in model.state_dict())
    torch.save(model.state_dict(), tmp_path / "qkvb.pth")
    backbone = load_backbone("tiny", tmp_path / "qkvb.pth", view_size=VIEW)
    reference = timm_cls(model, views)
    torch.testing.assert_close(backbone(views), reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(timm_cls(tiny_timm(qkv_bias=False), views), reference, atol=1e-3)


def test_a_meta_file_with_a_fused_qkv_bias_keeps_its_q_and_v_biases(tmp_path, views):
    model = tiny_timm(qkv_bias=True)
    torch.save({"model": meta_state(model)}, tmp_path / "dinov3_meta.pth")
    backbone = load_backbone("tiny", tmp_path / "dinov3_meta.pth", view_size=VIEW)
    assert backbone.kind == "meta"
    torch.testing.assert_close(backbone(views), timm_cls(model, views), rtol=1e-4, atol=1e-5)


# ---- 4. bad files through the CLI: one sentence, exit 2 ----------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    write_shard(folder / "train-00000-of-00001.parquet", [natix_row(i) for i in range(6)])
    return folder


def bad_weights(kind: str, root):
    if kind == "empty":
        (path := root / "empty.pth").write_bytes(b"")
    elif kind == "random bytes":
        (path := root / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "pickled module":
        torch.save(tiny_timm(), path := root / "whole_model.pth")
    elif kind == "list":
        torch.save([torch.zeros(2)], path := root / "list.pth")
    elif kind == "folder without config":
        (path := root / "folder").mkdir()
        save_file({"x": torch.zeros(2)}, path / "model.safetensors")
    else:  # a transformers folder's weights file passed alone
        hf_folder(root / "hf")
        path = root / "hf" / "model.safetensors"
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("empty", "it is empty"),
        ("random bytes", "cannot read weights file"),
        ("pickled module", "holds Python objects"),
        ("list", "holds a list, not a dictionary of tensors"),
        ("folder without config", "has no config.json"),
        ("transformers file", "pass the folder it came from"),
    ],
)
def test_bad_weights_are_one_sentence_through_the_cli(
    monkeypatch, capsys, tmp_path, source, kind, words
):
    weights = bad_weights(kind, tmp_path)
    capsys.readouterr()
    code = run_cli(
        monkeypatch,
        "extract",
        f"{source}/*.parquet",
        "--cache",
        tmp_path / "cache",
        "--weights",
        weights,
        "--view-size",
        VIEW,
        "--workers",
        "0",
        "--no-text",
        "--no-progress",
        "--device",
        "cpu",
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert words in errors[0] and "Traceback" not in err
    assert "weights_only" not in err  # never advise unpickling a downloaded file
    assert not (tmp_path / "cache").exists()  # refused before anything was created


# ---- 2. nothing a library prints reaches stdout under --json ------------------------------------


def model_for(folder, backbone_info: dict, views_info: dict) -> None:
    config = HeadConfig.from_dict({"in_dim": backbone_info["feature_dim"], **SMALL_HEAD})
    with torch.random.fork_rng():
        torch.manual_seed(3)
        head = RoadworkHead(config)
    record = HeadRecord(
        kind="train-head",
        head=config.to_dict(),
        backbone=backbone_info,
        views=views_info,
        cache="nowhere",
    )
    write_head(folder, head, record)


def test_predict_json_is_valid_json_with_a_meta_checkpoint_and_a_noisy_library(
    monkeypatch, capsys, tmp_path
):
    from helpers import jpeg

    weights = tmp_path / "dinov3_meta.pth"
    torch.save({"model": meta_state(tiny_timm(qkv_bias=True))}, weights)
    info = load_backbone("tiny", weights, view_size=VIEW).info
    model_for(tmp_path / "model", info, {"layout": "grid3x3-v1", "n_views": 12})
    (tmp_path / "a.jpg").write_bytes(jpeg((200, 90, 30), (48, 40)))

    created = timm.create_model

    def noisy_create_model(*args, **kwargs):
        print("a library talking on stdout")  # as timm's old checkpoint filter did
        return created(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", noisy_create_model)
    capsys.readouterr()
    code = run_cli(
        monkeypatch,
        "predict",
        tmp_path / "a.jpg",
        "--model",
        tmp_path / "model",
        "--weights",
        weights,
        "--json",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    answers = json.loads(captured.out)  # stdout holds the answers and nothing else
    assert len(answers) == 1 and 0.0 <= answers[0]["probability"] <= 1.0
    assert "a library talking on stdout" in captured.err  # moved, not lost


# ---- 5. the satellite normalisation, from the cache to predict ---------------------------------


def test_sat_normalisation_is_recorded_and_followed_by_predict(monkeypatch, source, tmp_path):
    from roadwork_cache import RoadworkDetector
    from roadwork_cache.inference.predictor import Predictor
    from roadwork_cache.readers.images import decode_image
    from roadwork_cache.readers.sources import open_source
    from roadwork_cache.views.batching import image_views

    weights = tmp_path / "timm.pth"  # layer scales of 1: features that depend on the pixels
    torch.save(tiny_timm(qkv_bias=True).state_dict(), weights)
    for kind in ("sat", "lvd"):
        assert (
            run_cli(
                monkeypatch,
                "extract",
                f"{source}/*.parquet",
                "--cache",
                tmp_path / kind,
                "--weights",
                weights,
                "--normalisation",
                kind,
                "--view-size",
                VIEW,
                "--workers",
                "0",
                "--no-text",
                "--no-progress",
                "--device",
                "cpu",
            )
            == 0
        )
    sat, lvd = Cache.open(tmp_path / "sat"), Cache.open(tmp_path / "lvd")
    assert sat.attrs["backbone"]["normalisation"] == "sat"
    assert lvd.attrs["backbone"]["normalisation"] == "lvd"
    assert not np.allclose(sat.features("clean"), lvd.features("clean"), atol=1e-2)

    model_for(tmp_path / "model", sat.attrs["backbone"], sat.attrs["views"])
    predictor = Predictor.load(tmp_path / "model", weights, device="cpu")
    assert predictor.backbone.info["normalisation"] == "sat"
    samples = list(open_source(f"{source}/*.parquet").iter_samples(0, 6))
    img = decode_image(samples[0].image_bytes)
    views = torch.from_numpy(image_views(img, ("clean",), VIEW))[None]
    feats = predictor.features(views)[0]
    np.testing.assert_allclose(feats, sat.features("clean")[0].astype(np.float32), atol=2e-3)
    assert not np.allclose(feats, lvd.features("clean")[0].astype(np.float32), atol=1e-2)

    detector = RoadworkDetector.load(tmp_path / "model", weights=weights, device="cpu")
    assert detector.predictor.backbone.info["normalisation"] == "sat"

    # a model trained on sat features refuses a backbone that normalises otherwise
    record = json.loads((tmp_path / "model" / "config.json").read_text())
    from roadwork_cache.inference.predictor import check_backbone

    lvd_info = load_backbone("tiny", weights, view_size=VIEW).info
    with pytest.raises(UserError, match="normalisation = sat"):
        check_backbone(record, lvd_info, tmp_path / "model")


def test_unknown_normalisation_is_refused():
    with pytest.raises(UserError, match="unknown normalisation 'imagenet'; choose lvd or sat"):
        load_backbone("tiny", view_size=VIEW, normalisation="imagenet")


def test_pickled_state_is_never_unpickled(tmp_path):
    """A .pth whose pickle would run code: refused, the code never runs."""

    class Boom:
        def __reduce__(self):
            return (print, ("the file ran code",))

    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"x": Boom()}, handle)
    with pytest.raises(UserError, match="cannot read weights file"):
        load_backbone("tiny", tmp_path / "evil.pth", view_size=VIEW)
