"""`roadwork ensemble`: diverse members, DoRA folds and a stacking meta-learner, from the cache.

Read top to bottom: load the cache, make K folds of the labelled non-test rows grouped by
video, and train every member once per fold (validation and early stopping on the held-out
fold), so each member has an out-of-fold (OOF) logit on every training row. A member is then
the bag of its K fold models: its test logit is their mean, and that bag is what is deployed
(no refit on all rows: it would cost one more training per member and lose the early-stopping
signal). Mean, MCC-weighted and stacked (logistic regression) combinations are fitted on the
OOF logits and scored cross-fitted over the same folds; the chosen one is temperature-scaled
and its MCC-best threshold folded in so that 0.5 is the cut.

DoRA folds: one member (the best, or --dora-member) is adapted to a labelled target set (a
cache given with --target, else the test split) per fold of that set, grouped by video; each
fold's adapter trains on the other folds (minus whole videos held back for early stopping),
so every target row gets an honest adapted logit. Adapted or not, every model is scored on
the target with cross-fitted thresholds, so DoRA has to beat a re-tuned threshold to win.
The adapted bag is deployed only where it wins. Optional: a distilled student.

Everything lands in the output folder (see `roadwork_cache.ensemble_bundle`), with one table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.combine import Calibration, LogitNorm
from roadwork_cache.inference.bundles import load_ensemble, load_head
from roadwork_cache.inference.ensemble_folder import (
    AUDIT_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    STUDENT_FOLDER,
    TABLE_FILE,
    TARGET_PREDICTIONS_FILE,
    EnsembleManifest,
    MemberEntry,
    MemberFile,
    claim_ensemble_folder,
    dora_folder,
    fold_folder,
    read_member,
    start_ensemble_folder,
    write_manifest,
    write_member,
)
from roadwork_cache.inference.head_folder import HeadRecord, write_head
from roadwork_cache.reports.tables import ensemble_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import write_json
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.training.combining import Combined, combine
from roadwork_cache.training.dataset import (
    CacheData,
)
from roadwork_cache.training.dora_folds import DoraRun, run_dora
from roadwork_cache.training.ensemble_scores import (
    Deployment,
    Scored,
    add_dora_entries,
    choose_deployment,
    metric_rows,
    score_entries,
)
from roadwork_cache.training.loop import EpochLog, TrainConfig
from roadwork_cache.training.members import (
    CLEAN,
    Context,
    FoldJob,
    FoldOutput,
    MemberResult,
    assemble_member,
    digest,
    run_folds,
)
from roadwork_cache.training.plan import EnsembleOptions, Prepared, context, plan_ensemble
from roadwork_cache.training.stacking import METHODS
from roadwork_cache.training.student import run_student

# ---- options --------------------------------------------------------------------------------


def reuse_member(out: Path, name: str, fingerprint: dict, signature: str) -> MemberResult | None:
    """A member finished by an earlier run into the same folder with the same settings."""
    found = read_member(out, name)
    if found is None:
        return None
    info = found.info
    if info.get("cache_fingerprint") != fingerprint:
        old = info.get("cache_fingerprint") or {}
        raise UserError(
            f"member {name} in {out} was trained on cache {old.get('path')} "
            f"(created {old.get('created')}), not on {fingerprint['path']} "
            f"(created {fingerprint['created']}); use a new --out"
        )
    if info.get("signature") != signature:
        console.print(f"member {name}: settings changed since the last run, retraining")
        return None
    console.print(f"member {name}: reusing the folds trained by an earlier run")
    logits = found.logits
    return MemberResult(
        name,
        HeadConfig.from_dict(info["head"]),
        logits["oof"],
        logits["test"],
        logits["target"],
        found.full,
        info["folders"],
        info,
    )


def save_member(out: Path, member: MemberResult) -> None:
    """What a later run into the same folder reuses: logits and member.json."""
    logits = {"oof": member.oof, "test": member.test, "target": member.target}
    write_member(out, member.name, MemberFile(member.info, logits, member.full))


# ---- the stage --------------------------------------------------------------------------------


def plan_members(
    opts: EnsembleOptions, p: Prepared, ctx: Context
) -> tuple[dict[str, MemberResult], list[FoldJob], dict[str, dict]]:
    """Members an earlier run into the same folder finished (same cache, same settings) are
    reused; every other member gets one job per fold."""
    folds_signature = digest(
        {"ids": [p.data.ids[i] for i in p.pool], "folds": [va.tolist() for _, va in p.folds]}
    )
    base_train = opts.train.to_dict()
    reused: dict[str, MemberResult] = {}
    jobs: list[FoldJob] = []
    infos: dict[str, dict] = {}
    for spec in p.specs:
        train = {
            **base_train,
            **spec.train,
            "loss": {**base_train["loss"], **(spec.train.get("loss") or {})},
        }
        TrainConfig.from_dict(train)  # fail on a bad value now, not in a worker
        weights = None if p.gps_weights is None else p.gps_weights**spec.gps_strength
        info = {
            "spec": spec.to_dict(),
            "head": p.configs[spec.name].to_dict(),
            "train": train,
            "variants": p.member_variants[spec.name],
            "cache_fingerprint": p.fingerprint,
            "gps_strength": spec.gps_strength,
        }
        info["signature"] = digest(
            {
                **info,
                "folds": folds_signature,
                "weights": digest(weights),
                "target": ctx.spec.target_cache,
                "eval": p.eval_variants,
            }
        )
        infos[spec.name] = info
        done = reuse_member(opts.out, spec.name, p.fingerprint, info["signature"])
        if done is not None:
            reused[spec.name] = done
            continue
        for k, (tr, va) in enumerate(p.folds):
            jobs.append(
                FoldJob(
                    spec.name,
                    k,
                    spec.seed * 1000 + k,
                    p.configs[spec.name].to_dict(),
                    train,
                    p.member_variants[spec.name],
                    p.pool[tr],
                    p.pool[va],
                    None if weights is None else weights[tr],
                    str(opts.out / fold_folder(spec.name, k + 1)),
                )
            )
    return reused, jobs, infos


def member_record(p: Prepared, **fields: Any) -> HeadRecord:
    """The record of a head folder inside this ensemble: what it reads, where it came from."""
    fields.setdefault("leaky_fields", p.leaky)
    return HeadRecord(
        backbone=p.data.meta.backbone,
        views=p.data.meta.views,
        cache=p.fingerprint["path"],
        cache_fingerprint=p.fingerprint,
        **fields,
    )


def write_member_configs(
    out: Path, p: Prepared, results: dict[str, MemberResult], member_cal: dict[str, Calibration]
) -> None:
    """Each fold folder's config.json (so `load_head` and `load_bundle` read a fold on its
    own), with the member's OOF-tuned cut mapped onto the fold model's own logit."""
    for n, res in results.items():
        for k, rel in enumerate(res.folders):
            norm = LogitNorm.from_dict(res.info["folds"][k]["logit_norm"])
            record = member_record(
                p,
                kind="ensemble-member",
                head=res.config.to_dict(),
                member=n,
                fold=k + 1,
                train=res.info["train"],
                variants=res.info["variants"],
                threshold=norm.raw_threshold(member_cal[n].cut()),
                logit_norm=norm.to_dict(),
            )
            write_head(out / rel, None, record)


def run_ensemble(opts: EnsembleOptions) -> dict[str, Any]:
    claim_ensemble_folder(opts.out, opts.overwrite)  # before any work
    started = time.perf_counter()
    device = resolve_device(opts.device)
    p = plan_ensemble(opts)
    names = p.names
    start_ensemble_folder(opts.out)
    ctx = context(p, device)
    results, jobs, infos = plan_members(opts, p, ctx)

    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task(
            "ensemble", total=len(jobs) + opts.dora_folds + int(opts.distill), rate=""
        )
        # ---- members: K folds each, in this process or in workers ------------------------
        t0 = time.perf_counter()

        def on_epoch(job: FoldJob, log: EpochLog) -> None:
            bar.update(
                task,
                rate=f"{job.member} fold {job.fold + 1} epoch {log.epoch} "
                f"val MCC {log.val_mcc:+.3f}",
            )

        def on_done(out: FoldOutput) -> None:
            bar.update(
                task,
                advance=1,
                rate=f"{out.member} fold {out.fold + 1} val MCC {out.best_val_mcc:+.3f}",
            )

        outputs = run_folds(ctx, jobs, opts.jobs, on_epoch, on_done)
        member_seconds = time.perf_counter() - t0
        for n in names:
            if n not in results:
                results[n] = assemble_member(
                    n,
                    p.configs[n],
                    [o for o in outputs if o.member == n],
                    p.folds,
                    len(p.pool),
                    [fold_folder(n, k + 1) for k in range(len(p.folds))],
                    infos[n],
                )
                save_member(opts.out, results[n])
        results = {n: results[n] for n in names}

        # ---- combinations on the OOF logits, then every model scored -------------------------
        c = combine(opts, p, results)
        write_member_configs(opts.out, p, results, c.member_cal)
        entries = score_entries(p, results, c)

        # ---- DoRA folds on the target, and what is deployed ----------------------------------
        dora = None
        if opts.dora_folds:
            member = opts.dora_member or max(names, key=lambda n: c.member_mcc[n])

            def load_base(rel: str) -> RoadworkHead:
                return load_head(opts.out / rel, device)[0]

            def save_dora_fold(fold: int, model: RoadworkHead, fields: dict) -> str:
                rel = dora_folder(fold)
                record = member_record(p, kind="dora-fold", head=model.config.to_dict(), **fields)
                write_head(opts.out / rel, model, record)
                return rel

            dora = run_dora(opts, p, results[member], device, load_base, save_dora_fold, bar, task)
            add_dora_entries(entries, p, c, dora)
        deploy = choose_deployment(p, c, entries, dora)
        console.print(
            f"deployed: {deploy.kind} ({deploy.reason}); temperature "
            f"{deploy.calibration.temperature:.3f}, threshold "
            f"{deploy.calibration.threshold:.3f} folded to 0.5"
        )
        z_full = np.stack([results[n].full for n in names], 1)
        if deploy.kind == "ensemble+dora":
            z_full[:, names.index(dora.member)] = dora.full
        deployed_prob = deploy.calibration.folded(c.combos[c.method].apply(z_full))

        # ---- distilled student ---------------------------------------------------------------
        student = None
        if opts.distill:
            soft = c.cal[c.method].prob(c.oof[c.method][CLEAN])

            def save_student(model: RoadworkHead, fields: dict) -> str:
                record = member_record(
                    p, kind="distilled-student", head=model.config.to_dict(), **fields
                )
                write_head(opts.out / STUDENT_FOLDER, model, record)
                return STUDENT_FOLDER

            student = run_student(opts, p, soft, device, entries, save_student, bar, task)

    # ---- the output folder ------------------------------------------------------------------
    manifest = write_outputs_manifest(opts, p, results, c, deploy, dora, student)
    # The bundle must reproduce what this stage computed (same weights, same arithmetic; on
    # CUDA bf16 autocast with other batch shapes moves the last digits, hence the wider bound).
    bundle = load_ensemble(opts.out, device)
    check = np.arange(min(len(p.data), 64))
    bundle_diff = float(
        np.max(np.abs(bundle.predict(p.data.features["clean"][check]) - deployed_prob[check]))
    )
    if bundle_diff > (1e-4 if device.type == "cpu" else 5e-2):
        raise RuntimeError(
            f"the saved ensemble does not reproduce the stage's predictions "
            f"(max difference {bundle_diff:.2e})"
        )
    if student is not None:
        student.update(speed(bundle, opts.out / "student", p.data, p.test_idx, device))

    rows = metric_rows(p, entries)
    table = ensemble_table(rows, p.random_init, p.target.name if p.target else None)
    write_predictions(opts.out, p, results, c, deployed_prob, deploy)
    write_target_predictions(opts.out, p, c, entries)
    metrics = {
        "deployed": deploy.kind,
        "reason": deploy.reason,
        "method": c.method,
        "calibration": deploy.calibration.to_dict(),
        "calibration_rows": deploy.calibration_set,
        "oof_mcc": {**c.member_mcc, **c.oof_mcc},
        "members": {n: results[n].info for n in names},
        "dora": dora.info if dora else None,
        "student": student,
        "bundle_max_diff": bundle_diff,
        "seconds": {
            "members": member_seconds,
            "dora": dora.info["seconds"] if dora else 0.0,
            "total": time.perf_counter() - started,
        },
        "random_init_backbone": p.random_init,
        "rows": rows,
    }
    write_json(opts.out / METRICS_FILE, metrics)
    from rich.console import Console

    with open(opts.out / TABLE_FILE, "w") as handle:
        Console(file=handle, width=160).print(table)
    return {"table": table, "metrics": metrics, "manifest": manifest, "out": opts.out}


# ---- outputs ----------------------------------------------------------------------------------


def write_outputs_manifest(
    opts: EnsembleOptions,
    p: Prepared,
    results: dict[str, MemberResult],
    c: Combined,
    deploy: Deployment,
    dora: DoraRun | None,
    student: dict | None,
) -> dict[str, Any]:
    members = []
    for n in p.names:
        adapted = deploy.kind == "ensemble+dora" and n == dora.member
        members.append(
            MemberEntry(
                n, dora.folders if adapted else results[n].folders, "dora" if adapted else "members"
            )
        )
    combination = c.combos[c.method]
    meta_learner = {
        "method": c.method,
        "combination": combination.to_dict(),
        "all_methods": {m: c.combos[m].to_dict() for m in METHODS},
        "calibration": deploy.calibration.to_dict(),
        "oof_mcc": {**c.member_mcc, **c.oof_mcc},
    }
    manifest = EnsembleManifest(
        members=members,
        method=c.method,
        combination=combination.to_dict(),
        calibration=deploy.calibration.to_dict(),
        cache=p.fingerprint["path"],
        cache_fingerprint=p.fingerprint,
        backbone=p.data.meta.backbone,
        views=p.data.meta.views,
        temperature=deploy.calibration.temperature,
        threshold=deploy.calibration.threshold,  # folded in: 0.5 is the cut
        calibration_rows=deploy.calibration_set,
        deployed=deploy.kind,
        reason=deploy.reason,
        folds=len(p.folds),  # fewer than asked on small data (training.splits)
        seed=opts.seed,
        target=p.target.name if p.target else None,
        dora=dora.info if dora else None,
        student=student["folder"] if student else None,
        leaky_fields=p.leaky,
        gps=p.gps_info,
        variants=p.member_variants,
    )
    write_manifest(opts.out, manifest, meta_learner)
    write_json(opts.out / AUDIT_FILE, [a.to_dict() for a in p.audits])
    return manifest.to_dict()


def write_predictions(
    out: Path,
    p: Prepared,
    results: dict[str, MemberResult],
    c: Combined,
    deployed_prob: np.ndarray,
    deploy: Deployment,
) -> None:
    """One row per cache row: member and combination logits (OOF on training rows), the
    deployed folded probability (what the bundle returns) and, on the calibration rows, the
    folded OOF probability the threshold was tuned on."""
    data, pool, test_idx = p.data, p.pool, p.test_idx
    n = len(data)
    set_of = np.full(n, "unlabelled", dtype=object)
    set_of[pool], set_of[test_idx] = "train", "test"  # train rows hold OOF logits
    cols: dict[str, Any] = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
    }
    for name in p.names:
        z = results[name].full.copy()
        z[pool] = results[name].oof[CLEAN]
        cols[name] = z
    for m in METHODS:
        z = np.full(n, np.nan)
        z[pool] = c.oof[m][CLEAN]
        z[test_idx] = c.combos[m].apply(c.z_test[CLEAN])
        cols[m] = z
    cols["deployed"] = deployed_prob
    cal = np.full(n, np.nan)
    if deploy.calibration_set == "oof":
        cal[pool] = deploy.calibration.folded(deploy.calibration_logits)
    cols["calibration"] = cal
    pq.write_table(pa.table(cols), out / PREDICTIONS_FILE)


def write_target_predictions(
    out: Path, p: Prepared, c: Combined, entries: dict[str, dict[str, Scored]]
) -> None:
    """A separate target's labelled rows: each model's clean, metadata-free logit."""
    if p.target is None or not p.target.separate:
        return
    cols: dict[str, Any] = {
        "id": [p.target.data.ids[i] for i in p.target.rows],
        "label": p.target.labels.tolist(),
    }
    for name, by_set in entries.items():
        if "target" in by_set:
            cols[name] = by_set["target"].logits[CLEAN]
    pq.write_table(pa.table(cols), out / TARGET_PREDICTIONS_FILE)


def speed(
    bundle, student_folder: Path, data: CacheData, test_idx: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Rows per second of the deployed ensemble (every head of every member) and of the
    student, on the same rows and device (metadata-free, as deployed)."""
    from roadwork_cache.inference.bundles import load_bundle

    rows = test_idx if len(test_idx) else np.arange(len(data))
    feats = data.features["clean"][rows[:2048]]
    student = load_bundle(student_folder, device)
    out = {}
    for name, model in (("ensemble", bundle), ("student", student)):
        model.predict(feats[:8])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.predict(feats)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_rows_per_s"] = len(feats) / max(time.perf_counter() - start, 1e-9)
    out["speedup"] = out["student_rows_per_s"] / out["ensemble_rows_per_s"]
    out["ensemble_heads"] = sum(len(heads) for _, heads in bundle.members)
    return out
