"""Fold models trained together (training.batched) against the same folds trained one at a
time: on the CPU in fp32 with dropout off, the same weights within 1e-5; with dropout on,
the same quality; and in the ensemble, the same fold outputs with --batch-folds on or off."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import planted_cache
from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.heads.io import WEIGHTS_FILE
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.batched import FoldBatchTrainer
from roadwork_cache.training.fold_runs import batch_groups, run_folds
from roadwork_cache.training.loop import TrainConfig, Trainer, stacked_features
from roadwork_cache.training.losses import LossWeights
from roadwork_cache.training.plan import EnsembleOptions, context, plan_ensemble, plan_members
from roadwork_cache.training.selection import Selection, SelectionData

pytestmark = pytest.mark.usefixtures("one_thread")  # small heads (conftest)

CPU = torch.device("cpu")
SMALL = dict(
    in_dim=16, dim=32, layers=1, heads=4, pyramid_dims=(32, 16), fusion_dim=32,
    classifier_dim=16, gate_dim=16,
)  # fmt: skip
NO_DROPOUT = dict(dropout=0.0, attn_dropout=0.0, field_dropout=0.0, record_dropout=0.0)
TOL = 1e-5


def planted(n: int, dim: int, seed: int = 0, signal: float = 3.0):
    """Two float16 variants [n, 12, dim] whose positives carry `signal * u` in 1-2 tiles,
    labels, and metadata with every field set on some rows."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    base = rng.normal(size=(n, 12, dim)).astype(np.float32)
    for i in np.flatnonzero(labels):
        base[i, rng.choice(np.arange(1, 10), size=rng.integers(1, 3), replace=False)] += signal * u
    variants = [(base + 0.3 * v * rng.normal(size=base.shape)).astype(np.float16) for v in (0, 1)]
    meta = MetadataBatch.null(n, 6, 384)
    meta.gps[:] = torch.from_numpy(rng.normal([40.0, -90.0], 3.0, size=(n, 2)).astype(np.float32))
    meta.gps_mask[:] = torch.from_numpy(rng.random(n) < 0.8)
    for i in range(n):
        if i % 3 != 2:
            meta.weather[i, i % 6] = 1.0
    meta.daytime[:] = torch.from_numpy(rng.integers(-1, 4, size=n))
    meta.scene[:] = torch.from_numpy(rng.integers(-1, 4, size=n))
    return variants, labels, meta


def folds(n: int, k: int, seed: int):
    """K (train, val, sampling weights) of deliberately different sizes."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    step = n // (8 * k)
    cuts = np.linspace(0, n, k + 1).astype(int)
    cuts[1:-1] += np.arange(1, k) * step - (k // 2) * step
    out = []
    for j in range(k):
        val = np.sort(perm[cuts[j] : cuts[j + 1]])
        train = np.setdiff1d(perm, val)
        out.append((train, val, rng.uniform(0.5, 2.0, size=len(train))))
    return out


def models(config: HeadConfig, seeds):
    out = []
    for s in seeds:
        torch.manual_seed(s)  # as run_fold: the fold seed makes the init
        out.append(RoadworkHead(config))
    return out


def sequential(init, cfg, seeds, data, fold_list, selection):
    variants, labels, meta = data
    trained, results = [copy.deepcopy(m) for m in init], []
    for m, s, (tr, va, w) in zip(trained, seeds, fold_list, strict=True):
        trainer = Trainer(m, replace(cfg, seed=s), variants, labels, meta, CPU, selection)
        results.append(trainer.fit(tr, va, w))
    return trained, results


def batched(init, cfg, seeds, data, fold_list, selection, optimizer="fused"):
    variants, labels, meta = data
    trained = [copy.deepcopy(m) for m in init]
    trainer = FoldBatchTrainer(
        trained, cfg, seeds, variants, labels, meta, CPU, selection, optimizer=optimizer
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no vmap fallback (a loop over the folds) anywhere
        results = trainer.fit(*(list(f) for f in zip(*fold_list, strict=True)))
    return trained, results


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


@pytest.fixture(scope="module")
def data():
    return planted(240, 16, seed=0)


def natix_pair(variants) -> SelectionData:
    """Early stopping scores two variants pooled, as on a cache with natix-0 and natix-1."""
    return SelectionData(Selection(("natix-0", "natix-1"), (0.5, 0.5)), list(variants))


@pytest.mark.parametrize(
    "keep,consistency,optimizer,no_stop_rows",
    [
        (8, 0.1, "fused", False),
        (None, 0.1, "fused", True),
        (8, 0.0, "fused", False),
        (8, 0.1, "flat", True),
    ],
    ids=["pruning", "no-pruning-fixed-epochs", "unused-view-head", "flat-adamw"],
)
def test_batched_training_equals_sequential(data, keep, consistency, optimizer, no_stop_rows):
    """Consistency 0: GAFM.view_head gets no gradient, which AdamW skips (weight decay
    too); the batched optimiser must leave it alone as well. No stop rows for a fold: it
    trains its fixed epochs, keeping the last, while the others stop early."""
    config = HeadConfig(**SMALL, keep=keep, **NO_DROPOUT)
    # accumulation 2, batch 32 over 150-180 rows: odd batch counts (a last accumulation
    # group of one batch), last batches of different sizes, folds with different numbers
    # of optimiser steps and schedules; patience 1 makes some folds stop early.
    cfg = TrainConfig(
        epochs=3, batch_size=32, accum_steps=2, patience=1, lr=2e-3,
        loss=LossWeights(consistency=consistency),
    )  # fmt: skip
    fold_list = folds(240, 3, seed=1)
    if no_stop_rows:
        fold_list[2] = (fold_list[2][0], fold_list[2][1][:0], fold_list[2][2])
    assert len({-(-len(t) // 32) for t, _, _ in fold_list}) > 1
    seeds = [101, 202, 303]
    init = models(config, seeds)
    selection = natix_pair(data[0])
    seq, seq_res = sequential(init, cfg, seeds, data, fold_list, selection)
    bat, bat_res = batched(init, cfg, seeds, data, fold_list, selection, optimizer)

    diffs = [max_diff(a, b) for a, b in zip(seq, bat, strict=True)]
    assert max(diffs) < TOL, diffs
    assert [r.best_epoch for r in bat_res] == [r.best_epoch for r in seq_res]
    assert [len(r.history) for r in bat_res] == [len(r.history) for r in seq_res]
    assert [r.best_val_mcc for r in bat_res] == pytest.approx([r.best_val_mcc for r in seq_res])
    if no_stop_rows:
        assert len(seq_res[2].history) == 3 and seq_res[2].best_epoch == 3
    else:
        assert any(r.stopped_early for r in seq_res)  # the pruning of stopped folds ran
    for r, s in zip(bat_res, seq_res, strict=True):
        for a, b in zip(r.history, s.history, strict=True):
            assert a.lr == pytest.approx(b.lr, rel=1e-12, abs=1e-15)
            assert a.loss == pytest.approx(b.loss, rel=1e-4)
            assert a.weather == pytest.approx(b.weather, rel=1e-4)
            assert a.val_mcc == pytest.approx(b.val_mcc, abs=1e-6, nan_ok=True)
    # training moved the weights far beyond the tolerance: the equality is not vacuous
    assert min(max_diff(a, b) for a, b in zip(init, seq, strict=True)) > 100 * TOL
    if consistency == 0:
        name = "gafm.view_head.weight"
        assert torch.equal(bat[0].get_parameter(name), init[0].get_parameter(name))

    # The comparison can fail: one fold's sampling seed changed, that fold (only) differs.
    bad, _ = batched(init, cfg, [101, 999, 303], data, fold_list, selection, optimizer)
    off = [max_diff(a, b) for a, b in zip(seq, bad, strict=True)]
    assert off[1] > 100 * TOL and off[0] < TOL and off[2] < TOL


def test_dropout_on_learns_as_well():
    """With dropout the masks are independent draws (vmap randomness='different'): only the
    quality compares. Same folds, inits and sampling streams, a planted signal; best
    validation MCC per fold."""
    variants, labels, meta = planted(360, 16, seed=3, signal=8.0)
    config = HeadConfig(**SMALL, keep=8, dropout=0.1, attn_dropout=0.1, field_dropout=0.3)
    cfg = TrainConfig(epochs=8, batch_size=32, lr=3e-3, patience=8)
    fold_list = folds(360, 3, seed=2)
    seeds = [1, 2, 3]
    init = models(config, seeds)
    data, selection = (variants, labels, meta), SelectionData.single(variants[0])
    _, seq = sequential(init, cfg, seeds, data, fold_list, selection)
    _, bat = batched(init, cfg, seeds, data, fold_list, selection)
    s = np.array([r.best_val_mcc for r in seq])
    b = np.array([r.best_val_mcc for r in bat])
    assert s.max() > 0.9 and b.max() > 0.9  # the planted signal is learnt
    assert np.abs(s - b).max() < 0.15 and abs(s.mean() - b.mean()) < 0.1
    # and the runs really differ (dropout is on): not the equality above
    assert any(
        abs(x.loss - y.loss) > 1e-4
        for r, q in zip(seq, bat, strict=True)
        for x, y in zip(r.history, q.history, strict=False)
    )


@pytest.mark.parametrize("optimizer", ["flat", "fused"])
def test_fold_adamw_matches_torch_adamw(data, optimizer):
    """The [K, P] AdamW against torch.optim.AdamW (two groups, one per fold) on the same
    gradients, with folds skipping steps: bit-identical for "flat" (the op order of torch's
    single-tensor AdamW), within rounding for the fused kernel; frozen columns untouched."""
    from roadwork_cache.training.batched_adamw import FoldAdamW

    variants, labels, meta = data
    # no clipping (the same gradients); consistency 0 leaves GAFM's view head frozen
    cfg = TrainConfig(lr=3e-3, weight_decay=0.05, clip=1e9, loss=LossWeights(consistency=0.0))
    trainer = FoldBatchTrainer(
        models(HeadConfig(**SMALL, keep=8, **NO_DROPOUT), [1, 2, 3]),
        cfg, [1, 2, 3], variants, labels, meta, CPU,
    )  # fmt: skip
    layout = trainer.layout
    d1, d2 = layout.decay_end, layout.train_end
    assert 0 < d1 < d2 < trainer.flat.shape[1]
    flat = trainer.flat.clone().requires_grad_(True)
    optim = FoldAdamW(flat, layout, cfg, optimizer)
    ref = [
        (torch.nn.Parameter(flat[k, :d1].detach().clone()),
         torch.nn.Parameter(flat[k, d1:d2].detach().clone()))
        for k in range(3)
    ]  # fmt: skip
    opts = [
        torch.optim.AdamW(
            [{"params": [a], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}], lr=3e-3
        )
        for a, b in ref
    ]
    gen = torch.Generator().manual_seed(0)
    steps = [0, 0, 0]
    for it in range(6):
        g = torch.randn(flat.shape, generator=gen)
        flat.grad = g.clone()
        rows = [k for k, on in enumerate([True, it % 2 == 0, it != 3]) if on]
        lr = [1e-3 * (1 + it + k) for k in rows]
        for k in rows:
            steps[k] += 1
        optim.step(flat, rows, lr, [steps[k] for k in rows])
        for k, rate in zip(rows, lr, strict=True):
            ref[k][0].grad, ref[k][1].grad = g[k, :d1].clone(), g[k, d1:d2].clone()
            for group in opts[k].param_groups:
                group["lr"] = rate
            opts[k].step()
        assert torch.equal(flat.grad[rows], torch.zeros_like(flat.grad[rows]))
    diff = max(
        (flat.data[k, :d2] - torch.cat([a.data, b.data])).abs().max().item()
        for k, (a, b) in enumerate(ref)
    )
    assert diff == 0.0 if optimizer == "flat" else diff < 1e-6
    assert torch.equal(flat.data[:, d2:], trainer.flat[:, d2:])


def test_masks_are_refused(data):
    variants, labels, meta = data
    config = HeadConfig(**SMALL, **NO_DROPOUT)
    with pytest.raises(UserError, match="no masks"):
        FoldBatchTrainer(
            models(config, [1]), TrainConfig(), [1], variants, labels, meta, CPU,
            masks=[np.zeros((240, 12, 16), np.float16), None],
        )  # fmt: skip


# ---- the ensemble: --batch-folds on and off -------------------------------------------------

HEAD = dict(
    dim=32, layers=1, heads=4, pyramid_dims=[32, 16], fusion_dim=32, classifier_dim=16,
    gate_dim=16, **NO_DROPOUT,
)  # fmt: skip
MEMBERS = [
    {"name": "a", "seed": 1, "head": HEAD},
    {"name": "a-gps", "seed": 2, "head": HEAD, "gps_strength": 2.0},  # batches with "a"
    {"name": "deep", "seed": 3, "head": {**HEAD, "layers": 2, "keep": None}},
    {"name": "probe", "seed": 4, "kind": "probe"},
]


def test_ensemble_folds_batched_equal_one_at_a_time(tmp_path):
    cache, _, _ = planted_cache(tmp_path / "cache", n=450, dim=16, signal=4.0)
    (tmp_path / "members.json").write_text(json.dumps(MEMBERS))
    outputs = {}
    for batch in (False, True):
        opts = EnsembleOptions(
            cache=cache,
            out=tmp_path / f"ens-{batch}",
            members=str(tmp_path / "members.json"),
            folds=3,
            train=TrainConfig(epochs=4, batch_size=32, lr=5e-3, patience=2, warmup_epochs=0.5),
            device="cpu",
            progress=False,
        )
        p = plan_ensemble(opts)
        ctx = context(p, CPU)
        folder = opts.out / "members"
        _, jobs, _ = plan_members(
            opts, p, ctx, lambda *a: None, lambda n, k, folder=folder: str(folder / n / str(k))
        )
        if batch:
            groups = [[(j.member, j.fold) for j in g] for g in batch_groups(jobs)]
            assert sorted(map(len, groups)) == [1, 1, 1, 3, 6]  # probes alone, a + a-gps
        done = run_folds(ctx, jobs, 1, batch_folds=batch)
        outputs[batch] = {(o.member, o.fold): o for o in done}
        # every fold model of the run trained on one stacked copy of the features
        stacked = ctx.train_features(jobs[0].variants)
        assert stacked is ctx.train_features(list(jobs[0].variants))
        assert ctx._stacked.keys() == {tuple(jobs[0].variants)}
    assert outputs[True].keys() == outputs[False].keys() and len(outputs[True]) == 12
    stopped = 0
    for key, one in outputs[False].items():
        two = outputs[True][key]
        assert (two.best_epoch, two.epochs_run) == (one.best_epoch, one.epochs_run), key
        assert two.best_val_mcc == pytest.approx(one.best_val_mcc, abs=1e-6)
        stopped += one.epochs_run < 4
        for part in ("val", "test"):
            a, b = getattr(one, part), getattr(two, part)
            assert a.keys() == b.keys()
            for name in a:
                np.testing.assert_allclose(b[name], a[name], atol=1e-4, err_msg=f"{key} {name}")
        np.testing.assert_allclose(two.full, one.full, atol=1e-4)
        member, fold = key
        if member != "probe":  # the weights saved in each fold folder agree as well
            one_w, two_w = (
                load_file(tmp_path / f"ens-{b}" / "members" / member / str(fold + 1) / WEIGHTS_FILE)
                for b in (False, True)
            )
            assert one_w.keys() == two_w.keys()
            # lr 5e-3 for 4 epochs: Adam turns rounding in near-zero gradients into steps
            # of up to lr, so the bound is 1e-4 here (4e-5 seen), 1e-5 in the tests above
            assert max((one_w[n] - two_w[n]).abs().max().item() for n in one_w) < 1e-4
    assert stopped > 0  # early stopping happened in some fold
    trained = [o for k, o in outputs[True].items() if k[0] != "probe"]
    assert all(abs(o.full).max() > 0.1 for o in trained)  # the folds learnt something


def test_a_trainer_takes_the_features_stacked_without_copying_them(data):
    variants, labels, meta = data
    stacked = stacked_features(variants, CPU)
    assert stacked.shape == (2, *variants[0].shape)
    config = HeadConfig(**SMALL, **NO_DROPOUT)
    cfg = TrainConfig(epochs=1, batch_size=64)
    for trainer in (
        Trainer(RoadworkHead(config), cfg, stacked, labels, meta, CPU),
        FoldBatchTrainer([RoadworkHead(config)], cfg, [0], stacked, labels, meta, CPU),
    ):
        assert trainer.features is stacked
    init = models(config, [3])
    tr, va, w = folds(240, 2, seed=0)[0]
    a, b = copy.deepcopy(init[0]), copy.deepcopy(init[0])
    Trainer(a, replace(cfg, seed=3), variants, labels, meta, CPU).fit(tr, va, w)
    Trainer(b, replace(cfg, seed=3), stacked, labels, meta, CPU).fit(tr, va, w)
    assert max_diff(a, b) == 0.0  # the same training, from either form
