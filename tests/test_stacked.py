"""Heads stacked into one computation at inference (heads.stacked): the same outputs as the
heads one by one, weights held once, and the ensemble bundle and exported detector using it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SMALL_HEAD
from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.heads.combine import Calibration, Combination, LogitNorm
from roadwork_cache.heads.forward import head_logits, stacked_logits
from roadwork_cache.heads.probe import LinearProbe, ProbeConfig
from roadwork_cache.heads.stacked import CPU_STACK_MAX_ROWS, StackedHeads
from roadwork_cache.inference.bundles import EnsembleBundle

CONFIG = HeadConfig.from_dict({"in_dim": 24, "keep": 8, **SMALL_HEAD})
CPU = torch.device("cpu")


def heads(n: int, config: HeadConfig = CONFIG, seed: int = 0) -> list[RoadworkHead]:
    torch.manual_seed(seed)
    return [RoadworkHead(config).eval() for _ in range(n)]


def test_stacked_heads_give_what_each_head_gives(one_thread) -> None:
    bag = heads(3)
    x = torch.randn(9, 12, 24)
    meta = MetadataBatch.null(9, CONFIG.n_weather, CONFIG.text_dim)
    meta.gps[:4] = torch.tensor([0.7, -1.5])  # some rows with a GPS pair
    meta.gps_mask[:4] = True
    with torch.no_grad():
        alone = [h(x, meta) for h in bag]
        stack = StackedHeads(bag, cpu_max_rows=len(x))
        assert stack.runs_stacked(len(x), CPU)
        logits, embedding = stack(x, meta)
    assert logits.shape == (3, 9, 2) and embedding.shape == (3, 9, CONFIG.dim)
    for k, out in enumerate(alone):
        torch.testing.assert_close(logits[k], out.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(embedding[k], out.embedding, atol=1e-5, rtol=1e-5)
    # the heads differ, so a stack that ran one head K times would fail above
    assert (alone[0].logits - alone[1].logits).abs().max() > 1e-3


def test_stacked_weights_are_held_once_and_heads_still_run_alone(one_thread) -> None:
    bag = heads(2)
    x = torch.randn(5, 12, 24)
    with torch.no_grad():
        before = bag[1](x).logits
        stack = StackedHeads(bag)
        weight = stack.params["input.proj.weight"]
        assert bag[1].input.proj.weight.data_ptr() == weight[1].data_ptr()
        torch.testing.assert_close(bag[1](x).logits, before)  # a view of the same values
        weight[1].zero_()  # the head reads its slice of the stack
        assert not torch.allclose(bag[1](x).logits, before)


def test_stack_refuses_heads_of_two_configs() -> None:
    other = HeadConfig.from_dict({**CONFIG.to_dict(), "keep": None})
    with pytest.raises(ValueError, match="one head config"):
        StackedHeads([heads(1)[0], heads(1, other)[0]])


def test_heads_stack_only_when_two_or_more_share_one_config() -> None:
    other = HeadConfig.from_dict({**CONFIG.to_dict(), "keep": None})
    probe = LinearProbe(ProbeConfig(in_dim=24, views=list(range(12))))
    assert isinstance(StackedHeads.of(heads(2)), StackedHeads)
    assert StackedHeads.of(heads(1)) is None  # one head runs alone
    assert StackedHeads.of([heads(1)[0], heads(1, other)[0]]) is None
    assert StackedHeads.of([*heads(2), probe]) is None


def test_many_rows_on_the_cpu_run_one_head_after_another(one_thread) -> None:
    """Past CPU_STACK_MAX_ROWS the stack runs its heads one by one on the CPU (measured
    faster there: bench/predict.py); the logits are the same either way."""
    bag = heads(2)
    stack = StackedHeads(bag)
    n = CPU_STACK_MAX_ROWS + 4
    assert not stack.runs_stacked(n, CPU) and stack.runs_stacked(n, torch.device("cuda"))
    feats = np.random.default_rng(0).normal(size=(n, 12, 24)).astype(np.float32)
    # batches of 4, 4, ...: stacked each time
    got = stacked_logits(stack, feats, None, CPU, batch_size=CPU_STACK_MAX_ROWS)
    want = np.stack([head_logits(h, feats, None, CPU) for h in bag])
    assert got.shape == (2, n)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(stacked_logits(stack, feats, None, CPU), want, atol=1e-5)


def test_ensemble_bundle_stacks_a_members_folds_and_keeps_its_output(one_thread) -> None:
    norms = [LogitNorm(0.1, 2.0), LogitNorm(-0.3, 0.5), LogitNorm(0.0, 1.0)]
    folds = heads(3, seed=1)
    single = heads(1, seed=2)
    rows = CPU_STACK_MAX_ROWS  # the stacked path on the CPU
    feats = np.random.default_rng(1).normal(size=(rows, 12, 24)).astype(np.float32)
    with torch.no_grad():
        expected_members = np.stack(
            [
                np.mean(
                    [
                        n.apply(head_logits(h, feats, None, CPU))
                        for h, n in zip(folds, norms, strict=True)
                    ],
                    axis=0,
                ),
                norms[0].apply(head_logits(single[0], feats, None, CPU)),
            ],
            axis=1,
        )
    bundle = EnsembleBundle(
        [("folds", list(zip(folds, norms, strict=True))), ("single", [(single[0], norms[0])])],
        Combination("mean", ["folds", "single"], [0.5, 0.5]),
        Calibration(1.0, 0.5),
        {},
        CPU,
    )
    assert list(bundle.stacks) == ["folds"]  # a lone head has nothing to stack with
    np.testing.assert_allclose(bundle.member_logits(feats), expected_members, atol=1e-5)
