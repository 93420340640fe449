"""The K fold models of one ensemble member trained together, as one batched computation.

`FoldBatchTrainer.fit` gives what K `Trainer.fit` runs give (one per fold: same init, the
same rows and batches from the same per-fold sampling stream, accumulation, clipping,
AdamW, learning-rate schedule and early stopping), with the fold dimension vectorised:

* parameters: `torch.func.stack_module_state` of the K models, packed into one leaf
  [K, P] (`batched_adamw.FlatLayout`); a step splits it into per-parameter views [K, ...]
  and runs `vmap(functional_call)` of the head over the folds, so every kernel does the
  work of all K folds. On the CPU under the math SDPA backend: the CPU flash kernel has no
  vmap batching rule and vmap would loop over the folds; CUDA's kernels have one.
* sampling: one torch.Generator per fold, the same calls per epoch as `Trainer`; each
  epoch's plan (rows, variants, batch boundaries, which folds step) is made on the host and
  sent to the device once, so the steps never wait for the host or the host for them.
* unequal folds: a step's batches are padded to the largest with a real row of each fold
  and masked out of every loss term (means over the true rows, `torch.where`, so a padded
  row cannot leak); a fold without a batch at a step gets no optimiser step.
* early stopping per fold in the selection setting (`training.selection`); a stopped fold
  leaves the stack, and its compute stops too. Each fold ends with its best state.
Dropout under vmap (randomness="different") draws each fold its own masks from the global
generator: random draws, but not the ones the sequential run draws. With dropout off the
result equals the sequential one up to float rounding (tests/test_batched.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import fields

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from roadwork_cache.heads import MetadataBatch, RoadworkHead
from roadwork_cache.runtime.devices import autocast
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.batched_adamw import FlatLayout, FoldAdamW, to_device
from roadwork_cache.training.loop import (
    EpochLog,
    TrainConfig,
    TrainResult,
    default_selection,
    head_loss,
    lr_lambda,
    resident,
    stacked_features,
)
from roadwork_cache.training.selection import SelectionData

META = tuple(f.name for f in fields(MetadataBatch))
EVAL_BATCH = 512  # rows per validation forward, as head_outputs


class FoldBatchTrainer:
    """`models`: one per fold, one HeadConfig, each with its own init; `seeds`: each fold's
    sampling seed (cfg.seed is not used). Data as `Trainer` takes it; `fit` takes per-fold
    lists and returns one TrainResult per fold, leaving each model in its best state."""

    def __init__(
        self,
        models: Sequence[RoadworkHead],
        cfg: TrainConfig,
        seeds: Sequence[int],
        variants: Sequence[np.ndarray] | torch.Tensor,
        labels: np.ndarray,
        meta: MetadataBatch,
        device: torch.device,
        selection: SelectionData | None = None,
        optimizer: str = "fused",
        masks: Sequence[np.ndarray | None] | None = None,
    ):
        if masks is not None and any(m is not None for m in masks):
            raise UserError("the batched fold trainer takes no masks: train such folds singly")
        if not models or len(models) != len(seeds):
            raise ValueError("one seed per fold model, and at least one model")
        if any(m.config != models[0].config for m in models):
            raise ValueError("folds trained together must share one head config")
        self.models = [m.to(device) for m in models]  # as Trainer: the models move there
        self.cfg, self.seeds, self.device = cfg, list(seeds), device
        self.base = copy.deepcopy(models[0]).to(device)  # the module functional_call runs
        self.features = stacked_features(variants, device)
        self.host_labels = labels.astype(np.int64)
        self.labels = torch.from_numpy(self.host_labels).to(device)
        self.meta = meta.to(device)
        self.weather_mask = self.meta.weather.sum(dim=1) > 0
        self.selection = default_selection(variants, selection)
        params, _ = stack_module_state(self.models)  # buffers (gps_freqs) are shared
        self.layout = FlatLayout.of(params, self._frozen(labels, meta))
        self.flat = self.layout.flatten(params)
        self.optimizer = optimizer
        # CPU flash attention has no vmap batching rule (vmap would loop over the folds)
        self.sdpa = (
            contextlib.nullcontext
            if device.type == "cuda"
            else (lambda: sdpa_kernel(SDPBackend.MATH))
        )

    # ---- what vmap vectorises: one fold ----------------------------------------------------

    def _fold_loss(self, params, x, *rest) -> torch.Tensor:
        """One fold's masked loss terms [total, focal, consistency, weather] on a (padded)
        batch: `total_loss` over the valid rows only."""
        meta = MetadataBatch(*rest[: len(META)])
        y, wmask, valid = rest[len(META) :]
        out = functional_call(self.base, params, (x, meta))
        parts = head_loss(out, y, meta.weather, wmask, self.cfg, valid)
        return torch.stack([parts.total, parts.focal, parts.consistency, parts.weather])

    def _fold_probs(self, params, x) -> torch.Tensor:
        logits = functional_call(self.base, params, (x, None)).logits
        return torch.softmax(logits.float(), dim=-1)[:, 1]

    def _frozen(self, labels, meta) -> set[str]:
        """Parameters that get no gradient in Trainer (grad None: AdamW skips them, weight
        decay included), e.g. the projection of a metadata field the config leaves out.
        Structural (the head has no data-dependent branches), so two rows find them."""
        probe = copy.deepcopy(self.models[0]).cpu().train()
        rows = slice(0, min(2, len(labels)))
        m = meta.select(rows).to("cpu")
        with torch.random.fork_rng(devices=[]):  # the probe's dropout leaves the RNG alone
            out = probe(self.features[0, rows].cpu().float(), m)
        y = torch.from_numpy(labels[rows].astype(np.int64))
        head_loss(out, y, m.weather, m.weather.sum(dim=1) > 0, self.cfg).total.backward()
        return {n for n, p in probe.named_parameters() if p.grad is None}

    # ---- training ------------------------------------------------------------------------

    def fit(
        self,
        train_idx: Sequence[np.ndarray],
        val_idx: Sequence[np.ndarray],
        sample_weights: Sequence[np.ndarray | None] | None = None,
        on_epoch: Callable[[int, EpochLog], None] | None = None,
    ) -> list[TrainResult]:
        cfg, K, dev = self.cfg, len(self.models), self.device
        weights = sample_weights or [None] * K
        self.gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.weights = [
            torch.ones(len(t), dtype=torch.float64)
            if w is None
            else torch.as_tensor(w, dtype=torch.float64)
            for t, w in zip(train_idx, weights, strict=True)
        ]
        self.train_rows = [torch.from_numpy(np.asarray(t)) for t in train_idx]
        self.sched, self.n_steps = [], [0] * K  # per fold: LambdaLR's factor, steps taken
        for t in train_idx:
            spe = max(1, math.ceil(len(t) / cfg.batch_size / cfg.accum_steps))
            self.sched.append(lr_lambda(max(1, round(cfg.warmup_epochs * spe)), spe * cfg.epochs))
        self._eval_rows(val_idx)
        flat = self.flat.clone().requires_grad_(True)
        optim = FoldAdamW(flat, self.layout, cfg, self.optimizer)
        active = list(range(K))
        best = [(-math.inf, -1)] * K
        self.best_flat = [self.flat[k].clone() for k in range(K)]
        histories: list[list[EpochLog]] = [[] for _ in range(K)]
        loss_fn = vmap(self._fold_loss, randomness="different")

        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            sums, nb = self._epoch(flat, optim, active, loss_fn)
            probs = self._predict(flat, active)
            seconds = time.perf_counter() - start
            keep = []
            for a, k in enumerate(active):
                log, score = self._log(k, epoch, sums[a] / max(nb[a], 1), probs[a], seconds)
                histories[k].append(log)
                if on_epoch:
                    on_epoch(k, log)
                if score > best[k][0]:
                    best[k] = (score, epoch)
                    self.best_flat[k] = flat[a].detach().clone()
                    keep.append(a)
                elif epoch - best[k][1] < cfg.patience:
                    keep.append(a)
            if not keep:
                break
            if len(keep) < len(active):  # stopped folds leave the stack: their compute stops
                rows = to_device(torch.tensor(keep), dev)
                flat = flat.detach()[rows].requires_grad_(True)
                optim.keep(rows, keep)
                active = [active[a] for a in keep]

        for k, model in enumerate(self.models):  # as Trainer: each model ends in its best state
            self.load_into(model, k)
        return [
            TrainResult(h, b[1], b[0], stopped_early=len(h) < cfg.epochs)
            for h, b in zip(histories, best, strict=True)
        ]

    def _epoch(self, flat, optim: FoldAdamW, active: list[int], loss_fn):
        """One epoch of every active fold; returns the summed loss terms [A, 4] (host) and
        each fold's number of batches."""
        cfg, dev, acc = self.cfg, self.device, self.cfg.accum_steps
        self.base.train()
        rows, variant, valid, nb, widths = self._plan(active)  # [S, A, batch_size], host
        here = self.features.device  # where the features are: the device, or the host
        rows_f, variant = to_device(rows, here), to_device(variant, here)
        rows, valid = to_device(rows, dev), to_device(valid, dev)
        sums = torch.zeros(len(active), 4, device=dev)
        for i, b in enumerate(widths):
            r = rows[i, :, :b]
            x = self.features[variant[i, :, :b], rows_f[i, :, :b]]
            meta = self.meta.select(r)
            with autocast(dev), self.sdpa():
                parts = loss_fn(
                    self.layout.unflatten(flat),
                    x.to(dev, non_blocking=True).float(),
                    *(getattr(meta, f) for f in META),
                    self.labels[r],
                    self.weather_mask[r],
                    valid[i, :, :b],
                )
            (parts[:, 0].sum() / acc).backward()
            sums += parts.detach().float()
            # folds whose accumulation group ends here (their last batch ends one too)
            stepping = [a for a, n in enumerate(nb) if i < n and ((i + 1) % acc == 0 or i == n - 1)]
            if stepping:
                lr, t = [], []
                for a in stepping:
                    k = active[a]
                    lr.append(cfg.lr * self.sched[k](self.n_steps[k]))
                    self.n_steps[k] += 1
                    t.append(self.n_steps[k])  # AdamW's step count = the scheduler's
                optim.step(flat, stepping, lr, t)
        return sums.cpu(), nb

    def _plan(self, active: list[int]):
        """Each active fold's draw for this epoch, in Trainer's order (rows by weighted
        sampling with replacement, then a variant per row), cut into batches: rows,
        variants and validity [S, A, batch_size] (padded with a real row of the fold), each
        fold's batch count and each step's widest batch."""
        bs, n_var = self.cfg.batch_size, len(self.features)
        draws = []
        for k in active:
            pick = torch.multinomial(
                self.weights[k], len(self.train_rows[k]), True, generator=self.gens[k]
            )
            d = self.train_rows[k][pick]
            draws.append((d, torch.randint(n_var, (len(d),), generator=self.gens[k])))
        nb = [max(1, math.ceil(len(d) / bs)) for d, _ in draws]
        S, A = max(nb), len(active)
        rows = torch.empty(A, S * bs, dtype=torch.long)
        variant = torch.zeros(A, S * bs, dtype=torch.long)
        valid = torch.zeros(A, S * bs, dtype=torch.bool)
        for a, (d, v) in enumerate(draws):
            rows[a] = self.train_rows[active[a]][0]
            rows[a, : len(d)], variant[a, : len(d)], valid[a, : len(d)] = d, v, True
        widths = valid.view(A, S, bs).sum(dim=2).amax(dim=0).tolist()

        def steps(t: torch.Tensor) -> torch.Tensor:  # [A, S * bs] -> [S, A, bs]
            return t.view(A, S, bs).transpose(0, 1).contiguous()

        return steps(rows), steps(variant), steps(valid), nb, widths

    # ---- validation ----------------------------------------------------------------------

    def _eval_rows(self, val_idx: Sequence[np.ndarray]) -> None:
        """The selection features of every fold's validation rows, once, on the device."""
        self.val_idx = [np.asarray(v) for v in val_idx]
        union = np.unique(np.concatenate(self.val_idx)) if any(map(len, self.val_idx)) else []
        union = np.asarray(union, dtype=np.int64)
        self.val_pos = [torch.from_numpy(np.searchsorted(union, v)) for v in self.val_idx]
        feats = np.stack([f[union] for f in self.selection.features])  # [n_sel, U, V, D]
        self.eval_features = resident(torch.from_numpy(feats), self.device)

    @torch.no_grad()
    def _predict(self, flat, active: list[int]) -> list[list[np.ndarray]]:
        """Per active fold, its validation probabilities in each selection variant: all
        folds in one vmapped forward per chunk of rows (shorter row lists padded)."""
        lens = [len(self.val_idx[k]) for k in active]
        out: list[list[np.ndarray]] = [[] for _ in active]
        if not max(lens):
            return out
        self.base.eval()
        L = max(lens)
        idx = torch.zeros(len(active), L, dtype=torch.long)  # padding: any row, ignored
        for a, k in enumerate(active):
            idx[a, : lens[a]] = self.val_pos[k]
        idx = to_device(idx, self.eval_features.device)
        params = self.layout.unflatten(flat.detach())
        probs = vmap(self._fold_probs)
        for s in range(len(self.eval_features)):
            chunks = []
            for lo in range(0, L, EVAL_BATCH):
                x = self.eval_features[s][idx[:, lo : lo + EVAL_BATCH]]
                with autocast(self.device), self.sdpa():
                    chunks.append(probs(params, x.to(self.device).float()).float())
            p = torch.cat(chunks, dim=1).cpu().numpy()
            for a, n in enumerate(lens):
                out[a].append(p[a, :n])
        return out

    def _log(self, k: int, epoch: int, means: torch.Tensor, probs, seconds: float):
        """Fold k's EpochLog and the score early stopping compares, as Trainer makes them."""
        if len(self.val_idx[k]):
            setting, y = self.selection.selection, self.host_labels[self.val_idx[k]]
            m, _ = setting.at_best_cut(y, probs)
            score = -1.0 if math.isnan(m["mcc"]) else m["mcc"]
        else:  # no rows to stop on: fixed epochs, the last one kept
            m, score = {"mcc": float("nan"), "auc": float("nan")}, float(epoch)
        lr = self.cfg.lr * self.sched[k](self.n_steps[k])
        log = EpochLog(epoch, *means.tolist(), m["mcc"], m["auc"], lr, seconds)
        return log, score

    # ---- the fold models -------------------------------------------------------------------

    def fold_state(self, k: int) -> dict[str, torch.Tensor]:
        """Fold k's best parameters by name."""
        return self.layout.state(self.best_flat[k])

    def load_into(self, model: RoadworkHead, k: int) -> RoadworkHead:
        with torch.no_grad():
            for name, t in self.fold_state(k).items():
                model.get_parameter(name).copy_(t)
        return model
