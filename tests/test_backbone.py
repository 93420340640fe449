"""Backbones: the seeded tiny preset, both local weight formats, pooling, bad weights."""

import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import DINOv3ViTModel

from roadwork_cache.backbone.loading import load_backbone
from roadwork_cache.backbone.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from roadwork_cache.runtime.errors import UserError

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=g)


def normalise(views: torch.Tensor) -> torch.Tensor:
    x = views.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_tiny_is_the_same_model_in_every_process_and_leaves_the_rng_alone(views):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone("tiny", view_size=32)
    assert torch.rand(1) == expected_next  # the fixed seed did not touch the caller's stream
    b = load_backbone("tiny", view_size=32)
    assert torch.equal(a(views), b(views))
    code = (
        "from roadwork_cache.backbone.loading import load_backbone; print(load_backbone('tiny')"
        ".info['state_sha256'])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == a.info["state_sha256"]
    assert a.info["random_init"] is True and a.info["feature_dim"] == 64


def test_transformers_folder_round_trip(tmp_path, views):
    torch.manual_seed(7)
    model = DINOv3ViTModel(TINY.hf_config()).eval()
    model.save_pretrained(tmp_path / "dinov3-tiny")
    backbone = load_backbone("tiny", tmp_path / "dinov3-tiny", view_size=32)
    assert backbone.kind == "transformers" and backbone.info["random_init"] is False
    assert len(backbone.info["weights_sha256"]) == 64
    with torch.no_grad():
        expected = model(pixel_values=normalise(views)).last_hidden_state[:, 0]
    torch.testing.assert_close(backbone(views), expected, rtol=1e-4, atol=1e-5)


def test_cls_plus_mean_excludes_registers(tmp_path, views):
    torch.manual_seed(8)
    model = DINOv3ViTModel(TINY.hf_config()).eval()
    model.save_pretrained(tmp_path / "m")
    backbone = load_backbone("tiny", tmp_path / "m", view_size=32, pool="cls+mean")
    out = backbone(views)
    assert out.shape == (3, 128) and backbone.feature_dim == 128
    with torch.no_grad():
        tokens = model(pixel_values=normalise(views)).last_hidden_state
    n_prefix = 1 + TINY.registers
    assert tokens.shape[1] == n_prefix + 4  # 32 px view: 2x2 patches
    torch.testing.assert_close(out[:, 64:], tokens[:, n_prefix:].mean(1), rtol=1e-4, atol=1e-5)


def tiny_timm(**over):
    kwargs = {**TINY.timm_kwargs, **over}
    torch.manual_seed(9)
    return timm.create_model(
        TINY.timm_name,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=32,
        **kwargs,
    ).eval()


def timm_cls(model, views):
    with torch.no_grad():
        return model.forward_features(normalise(views))[:, 0]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_file(tmp_path, views, suffix):
    model = tiny_timm()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), path)
    backbone = load_backbone("tiny", path, view_size=32)
    assert backbone.kind == "timm"
    torch.testing.assert_close(backbone(views), timm_cls(model, views), rtol=1e-4, atol=1e-5)


def test_meta_checkpoint_names_are_converted(tmp_path, views):
    """Meta's DINOv3 .pth names registers `storage_tokens` and layer scales `ls1.gamma`."""
    model = tiny_timm()
    meta = {}
    for key, value in model.state_dict().items():
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        meta[key] = value
    meta["mask_token"] = torch.zeros(1, TINY.embed_dim)
    assert "storage_tokens" in meta
    torch.save({"model": meta}, tmp_path / "dinov3_meta.pth")
    backbone = load_backbone("tiny", tmp_path / "dinov3_meta.pth", view_size=32)
    torch.testing.assert_close(backbone(views), timm_cls(model, views), rtol=1e-4, atol=1e-5)


def test_weights_of_the_wrong_shape(tmp_path):
    small = tiny_timm(embed_dim=32, num_heads=2)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    with pytest.raises(UserError, match="wrong shape"):
        load_backbone("tiny", tmp_path / "small.pth", view_size=32)
    config = TINY.hf_config()
    config.hidden_size, config.intermediate_size = 32, 64
    DINOv3ViTModel(config).save_pretrained(tmp_path / "hf32")
    with pytest.raises(UserError, match="32-d model but preset tiny is 64-d"):
        load_backbone("tiny", tmp_path / "hf32")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_backbone("tiny", tmp_path / "junk.pth")


@pytest.mark.parametrize(
    ("preset", "weights", "message"),
    [
        ("vit_giant", None, "unknown backbone preset"),
        ("vith16plus", None, "needs --weights"),
        ("vitl16", "/no/such/weights.pth", "do not exist"),
    ],
)
def test_bad_backbone_arguments(preset, weights, message):
    with pytest.raises(UserError, match=message):
        load_backbone(preset, weights)


def test_view_size_must_be_a_patch_multiple():
    with pytest.raises(UserError, match="multiple of the 16 px patch"):
        load_backbone("tiny", view_size=100)
