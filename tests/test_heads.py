"""Behaviour of the stage-two head modules (roadwork_cache.heads), on small CPU tensors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from roadwork_cache.heads import (
    HeadConfig,
    HeadOutput,
    MetadataBatch,
    MetadataEncoder,
    RoadworkHead,
)
from roadwork_cache.heads.attention import GatedAttentionBlock, GatedAttentionStack
from roadwork_cache.heads.gafm import GAFM
from roadwork_cache.heads.layers import InputProjection, MultiScalePyramid, SwiGLU
from roadwork_cache.heads.pruning import TokenPruning
from roadwork_cache.runtime.errors import UserError

B, V, D = 4, 12, 32


def small_config(**overrides) -> HeadConfig:
    values = dict(
        in_dim=D,
        dim=64,
        layers=1,
        heads=4,
        keep=8,
        pyramid_dims=(64, 32, 16),
        gate_dim=16,
        gps_dim=16,
        tag_dim=8,
        text_dim=24,
        fusion_dim=64,
        classifier_dim=32,
        dropout=0.0,
    )
    values.update(overrides)
    return HeadConfig(**values)


def full_meta(config: HeadConfig, batch: int = B) -> MetadataBatch:
    g = torch.Generator().manual_seed(1)
    return MetadataBatch(
        gps=torch.stack(
            [torch.rand(batch, generator=g) * 180 - 90, torch.rand(batch, generator=g) * 360 - 180],
            dim=1,
        ),
        gps_mask=torch.ones(batch, dtype=torch.bool),
        weather=(torch.rand(batch, config.n_weather, generator=g) > 0.5).float(),
        daytime=torch.randint(0, len(config.daytime_vocab), (batch,), generator=g),
        scene=torch.randint(0, len(config.scene_vocab), (batch,), generator=g),
        text=torch.randn(batch, config.text_dim, generator=g),
        text_mask=torch.ones(batch, dtype=torch.bool),
    )


# --- shapes -------------------------------------------------------------------------------


def test_module_shapes():
    x = torch.randn(B, V, D)
    kept, index, scores = TokenPruning(D, keep=8)(x)
    assert kept.shape == (B, 8, D) and index.shape == (B, 8) and scores.shape == (B, V)
    h = InputProjection(D, 64, V)(kept, index)
    assert h.shape == (B, 8, 64)
    assert MultiScalePyramid(64, (64, 32, 16))(h).shape == (B, 8, 64)
    assert SwiGLU(64, 96)(h).shape == (B, 8, 64)
    assert GatedAttentionBlock(64, 4)(h).shape == (B, 8, 64)
    assert GatedAttentionStack(64, 4, layers=2)(h).shape == (B, 8, 64)
    pooled, view_logits, gates = GAFM(64, 4, gate_dim=16)(h)
    assert pooled.shape == (B, 64) and view_logits.shape == (B, 8, 2) and gates.shape == (B, 8)
    assert ((gates > 0) & (gates < 1)).all()
    config = small_config()
    assert MetadataEncoder(config)(full_meta(config)).shape == (B, config.meta_dim)
    assert HeadConfig(in_dim=1280).meta_dim == 128 + 64 + 64 + 64 + 384


def test_head_output_shapes():
    config = small_config()
    out = RoadworkHead(config)(torch.randn(B, V, D), full_meta(config))
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (B, 2)
    assert out.view_logits.shape == (B, 8, 2)
    assert out.embedding.shape == (B, 64)
    assert out.view_scores.shape == (B, V)
    assert out.weather_logits.shape == (B, config.n_weather)


def test_head_rejects_features_of_another_shape():
    with pytest.raises(UserError, match=r"\[B, 12, 32\]"):
        RoadworkHead(small_config())(torch.randn(B, V, D + 1))


# --- token pruning ------------------------------------------------------------------------


def test_pruning_keeps_top_k_by_score_scaled_by_sigmoid():
    torch.manual_seed(0)
    pruning = TokenPruning(D, keep=8)
    x = torch.randn(B, V, D)
    kept, index, scores = pruning(x)
    expected = scores.topk(8, dim=1).indices.sort(dim=1).values
    assert torch.equal(index, expected)
    # every dropped view scores no higher than every kept one
    dropped = torch.ones(B, V, dtype=torch.bool).scatter(1, index, False)
    for row in range(B):
        assert scores[row][dropped[row]].max() <= scores[row][index[row]].min()
    weight = torch.sigmoid(scores.gather(1, index)).unsqueeze(-1)
    torch.testing.assert_close(kept, x.gather(1, index[..., None].expand(-1, -1, D)) * weight)


def test_pruning_scorer_receives_gradient():
    pruning = TokenPruning(D, keep=8)
    kept, _, _ = pruning(torch.randn(B, V, D))
    kept.square().sum().backward()
    for p in pruning.scorer.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("keep", [None, 12, 20])
def test_no_pruning_keeps_all_views_in_order(keep):
    x = torch.randn(B, V, D)
    kept, index, _ = TokenPruning(D, keep=keep)(x)
    assert torch.equal(kept, x)
    assert torch.equal(index, torch.arange(V).expand(B, V))


def test_head_without_pruning_has_no_scores_and_sees_all_views():
    out = RoadworkHead(small_config(keep=None))(torch.randn(B, V, D))
    assert out.view_scores is None
    assert out.view_logits.shape == (B, V, 2)
    assert torch.equal(out.view_index, torch.arange(V).expand(B, V))


def test_view_embedding_uses_original_view_index():
    proj = InputProjection(D, 16, V)
    x = torch.randn(1, 2, D)
    a = proj(x, torch.tensor([[0, 5]]))
    b = proj(x, torch.tensor([[0, 6]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1], b[:, 1])


# --- gated attention ----------------------------------------------------------------------


def test_attention_uses_named_linear_projections():
    block = GatedAttentionBlock(64, 4)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj"):
        layer = getattr(block.attn, name)
        assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (64, 64)


def test_closed_gate_removes_attention():
    torch.manual_seed(0)
    block = GatedAttentionBlock(64, 4).eval()
    with torch.no_grad():
        block.attn.gate_proj.weight.zero_()
        block.attn.gate_proj.bias.fill_(-1e4)  # sigmoid -> 0
        block.attn.out_proj.bias.zero_()
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = torch.randn(B, 8, 64)
    torch.testing.assert_close(block(x), x)  # only the residual path is left


def test_closed_gate_makes_tokens_independent_and_open_gate_does_not():
    torch.manual_seed(0)
    block = GatedAttentionBlock(64, 4).eval()
    x = torch.randn(1, 8, 64)
    y = x.clone()
    y[:, 1:] = torch.randn(1, 7, 64)  # change every other token
    assert not torch.allclose(block(x)[:, 0], block(y)[:, 0])  # open gate: tokens interact
    with torch.no_grad():
        block.attn.gate_proj.weight.zero_()
        block.attn.gate_proj.bias.fill_(-1e4)
    torch.testing.assert_close(block(x)[:, 0], block(y)[:, 0])


# --- metadata -----------------------------------------------------------------------------


def garbage_null_meta(config: HeadConfig, batch: int = B) -> MetadataBatch:
    """All fields NULL by their masks, with random junk (and NaN) under the masks."""
    meta = MetadataBatch.null(batch, config.n_weather, config.text_dim)
    meta.gps = torch.randn(batch, 2) * 100
    meta.gps[0, 0] = float("nan")
    meta.text = torch.randn(batch, config.text_dim)
    meta.text[1, 3] = float("inf")
    return meta


def test_all_null_metadata_gives_one_encoding_whatever_is_masked():
    config = small_config(meta_fields=("gps", "weather", "daytime", "scene", "text"))
    encoder = MetadataEncoder(config).eval()
    meta = garbage_null_meta(config)
    out = encoder(meta)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, out[:1].expand_as(out))
    torch.testing.assert_close(out, encoder(MetadataBatch.null(B, config.n_weather, 24)))
    # the text slot of a NULL row is zero, the other slots are the learnable NULLs
    assert out[:, -config.text_dim :].abs().max() == 0
    out.sum().backward()  # NaN under a mask must not reach the gradients either
    for p in encoder.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_field_dropout_one_in_training_equals_all_null():
    config = small_config(
        field_dropout=1.0, meta_fields=("gps", "weather", "daytime", "scene", "text")
    )
    encoder = MetadataEncoder(config)
    meta = full_meta(config)
    null = encoder.eval()(MetadataBatch.null(B, config.n_weather, config.text_dim))
    assert not torch.allclose(encoder.eval()(meta), null)  # eval: no dropout
    torch.testing.assert_close(encoder.train()(meta), null)


def test_field_dropout_drops_fields_independently():
    config = small_config(field_dropout=0.5, record_dropout=0.0)  # field dropout alone
    encoder = MetadataEncoder(config).train()
    meta = full_meta(config, batch=512)
    out = encoder(meta)
    null = encoder(MetadataBatch.null(1, config.n_weather, config.text_dim))[0]
    gps_null = (out[:, :16] == null[:16]).all(-1).float()
    scene_null = (out[:, 16 + 16 : 16 + 24] == null[16 + 16 : 16 + 24]).all(-1).float()
    assert 0.35 < gps_null.mean() < 0.65 and 0.35 < scene_null.mean() < 0.65
    assert (gps_null != scene_null).any()  # not one coin for all fields


def test_disabled_fields_are_always_null():
    config = small_config(meta_fields=("weather",))
    encoder = MetadataEncoder(config).eval()
    out = encoder(full_meta(config))
    null = encoder(MetadataBatch.null(B, config.n_weather, config.text_dim))
    weather = slice(config.gps_dim, config.gps_dim + config.tag_dim)
    assert not torch.allclose(out[:, weather], null[:, weather])
    out[:, weather] = null[:, weather]
    torch.testing.assert_close(out, null)


def test_text_is_off_by_default():
    # presence of scene_description is the label in NATIX data (docs/design.md §1)
    assert "text" not in HeadConfig(in_dim=8).meta_fields


def test_metadata_from_values_maps_vocabularies_and_unknowns_to_null():
    config = small_config()
    meta = MetadataBatch.from_values(
        config,
        gps=[(39.77, -86.18), None],
        weather=[["Sunny", "Rainy"], ["Hail"]],
        daytime=["Light", None],
        scene=["Urban", "Moon"],
    )
    assert meta.gps_mask.tolist() == [True, False]
    assert meta.weather[0].sum() == 2 and meta.weather[1].sum() == 0
    assert meta.daytime.tolist() == [config.daytime_vocab.index("Light"), -1]
    assert meta.scene.tolist() == [config.scene_vocab.index("Urban"), -1]
    assert not meta.text_mask.any()
    assert len(meta.select(slice(1, 2))) == 1 and meta.to("cpu").gps.shape == (2, 2)


# --- head ---------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_meta", [True, False])
def test_head_forward_backward(train, with_meta):
    config = small_config(dropout=0.1, field_dropout=0.3)
    head = RoadworkHead(config).train(train)
    meta = full_meta(config) if with_meta else None
    out = head(torch.randn(B, V, D).half(), meta)  # the cache stores float16
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 1, 0]))
    loss = loss + out.view_logits.sum() * 0 + out.weather_logits.square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert head.pruning.scorer[0].weight.grad.abs().sum() > 0
    assert head.blocks.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    assert head.gafm.gate[0].weight.grad.abs().sum() > 0


def test_head_meta_none_equals_all_null_meta():
    config = small_config()
    head = RoadworkHead(config).eval()
    x = torch.randn(B, V, D)
    a = head(x, None).logits
    b = head(x, garbage_null_meta(config)).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, head(x, full_meta(config)).logits)


def test_same_seed_same_model_same_output():
    x = torch.randn(B, V, D)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(RoadworkHead(small_config()).eval()(x).logits)
    torch.manual_seed(124)
    other = RoadworkHead(small_config()).eval()(x).logits
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert not torch.allclose(outputs[0], other)


# --- config -------------------------------------------------------------------------------


def test_config_round_trip_through_json():
    config = small_config(keep=None, weather_vocab=("Sunny", "Rainy"), mlp_ratio=8 / 3)
    data = json.loads(json.dumps(config.to_dict()))
    assert HeadConfig.from_dict(data) == config


def test_config_unknown_key_is_a_user_error():
    data = small_config().to_dict()
    data["depth"] = 3
    data["widht"] = 1
    with pytest.raises(UserError, match="depth, widht"):
        HeadConfig.from_dict(data)


@pytest.mark.parametrize(
    "bad", [{"dim": 63}, {"meta_fields": ["gps", "city"]}, {"field_dropout": 1.5}, {"keep": 0}]
)
def test_config_invalid_values_are_user_errors(bad):
    with pytest.raises(UserError):
        HeadConfig.from_dict({**small_config().to_dict(), **bad})


# --- planted signal -----------------------------------------------------------------------


def planted(n: int, signal: float, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random views; positives carry `signal * direction` on 1-2 random views."""
    x = torch.randn(n, V, D)
    y = torch.randint(0, 2, (n,))
    for row in torch.nonzero(y).squeeze(1).tolist():
        views = torch.randperm(V)[: torch.randint(1, 3, ()).item()]
        x[row, views] += signal * direction
    return x, y


def test_head_learns_a_planted_signal(one_thread):
    torch.manual_seed(0)
    direction = F.normalize(torch.randn(D), dim=0)
    x, y = planted(256, 5.0, direction)
    x_new, y_new = planted(512, 5.0, direction)
    head = RoadworkHead(small_config())
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(60):
        loss = F.cross_entropy(head(x).logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        train_accuracy = (head(x).logits.argmax(-1) == y).float().mean().item()
        new_accuracy = (head(x_new).logits.argmax(-1) == y_new).float().mean().item()
    assert train_accuracy > 0.9, train_accuracy
    # 256 rows of 12 x 32 noise can be memorised without the signal (training accuracy is
    # then 1.0 too), so fresh rows are what show the head found the direction (chance 0.5).
    assert new_accuracy > 0.75, new_accuracy
