"""`roadwork ensemble`: diverse members, DoRA folds and a stacking meta-learner, from the cache.

Read top to bottom: load the cache, make K folds of the labelled non-test rows grouped by
video, and train every member once per fold (validation and early stopping on the held-out
fold), so each member has an out-of-fold (OOF) logit on every training row. A member is then
the bag of its K fold models: its test logit is their mean, and that bag is what is deployed
(no refit on all rows: it would cost one more training per member and lose the early-stopping
signal). Mean, MCC-weighted and stacked (logistic regression) combinations are fitted on the
OOF logits and scored cross-fitted over the same folds; the chosen one is temperature-scaled
and its MCC-best threshold folded in so that 0.5 is the cut.

DoRA folds: one member (the best, or --dora-member) is adapted to a labelled target set
(`--target test`, the cache's own test split, or another cache) per fold of that set,
grouped by video; each fold's adapter trains on the other folds (minus whole videos held
back for early stopping), so every target row gets an honest adapted logit. Adapted or
not, every model is scored on the target with cross-fitted thresholds, so DoRA has to beat
a re-tuned threshold to win.
The adapted bag is deployed only where it wins. Optional: a distilled student.

Everything lands in the output folder (`inference/ensemble_folder.py` owns its layout), with
one table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.combine import Calibration, LogitNorm
from roadwork_cache.heads.probe import ProbeConfig
from roadwork_cache.inference.bundles import load_ensemble, load_head, speed
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
from roadwork_cache.inference.head_folder import HeadRecord, seen_record, write_head
from roadwork_cache.reports.tables import ensemble_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import write_json
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.training.combining import Combined, combine
from roadwork_cache.training.dora_folds import DoraRun, run_dora
from roadwork_cache.training.ensemble_scores import (
    Deployment,
    add_dora_entries,
    bundle_rows,
    choose_deployment,
    metric_rows,
    prediction_columns,
    score_entries,
    target_columns,
)
from roadwork_cache.training.fold_runs import run_folds
from roadwork_cache.training.loop import EpochLog
from roadwork_cache.training.members import (
    CLEAN,
    FoldJob,
    FoldOutput,
    MemberResult,
    assemble_member,
)
from roadwork_cache.training.plan import (
    EnsembleOptions,
    Prepared,
    context,
    plan_ensemble,
    plan_members,
)
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
    config = (
        ProbeConfig.from_dict(info["head"])
        if info["spec"].get("kind") == "probe"
        else HeadConfig.from_dict(info["head"])
    )
    return MemberResult(
        name,
        config,
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
                architecture="probe" if isinstance(res.config, ProbeConfig) else "head",
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
    results, jobs, infos = plan_members(
        opts,
        p,
        ctx,
        lambda name, signature: reuse_member(opts.out, name, p.fingerprint, signature),
        lambda name, fold: str(opts.out / fold_folder(name, fold)),
    )

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

        outputs = run_folds(ctx, jobs, opts.jobs, on_epoch, on_done, opts.batch_folds)
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
            member = opts.dora_member or max(p.head_names, key=lambda n: c.member_mcc[n])

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

    # ---- the output folder, then the deployed model scored through its own bundle ----------
    manifest = write_outputs_manifest(opts, p, results, c, deploy, dora, student)
    bundle = load_ensemble(opts.out, device)
    rows, rewards = metric_rows(p, entries)
    # A bag adapted with DoRA on this cache's test rows saw their labels: its test score is
    # in-sample, and is titled so in the table and metrics.json.
    in_sample = "test" in deployed_seen(p, deploy)["splits"]
    test_set = "test (in-sample)" if in_sample else "test"
    deployed_rows, deployed_rewards = bundle_rows(bundle.predict, p, test_set)
    rows += deployed_rows
    rewards["deployed"] = deployed_rewards
    # The stage's own arithmetic and the bundle's must agree; if not, the bundle's numbers
    # are the reported ones, and the run still writes everything before saying so.
    check = np.arange(min(len(p.data), 64))
    bundle_diff = float(
        np.max(np.abs(bundle.predict(p.data.features["clean"][check]) - deployed_prob[check]))
    )
    if student is not None:
        rows_sample = p.test_idx if len(p.test_idx) else np.arange(len(p.data))
        feats = p.data.features["clean"][rows_sample[:2048]]
        student.update(speed(bundle, opts.out / STUDENT_FOLDER, feats, device))
    table = ensemble_table(rows, rewards, p.random_init, p.target.name if p.target else None)
    pq.write_table(
        pa.table(prediction_columns(p, results, c, deployed_prob, deploy)),
        opts.out / PREDICTIONS_FILE,
    )
    if (columns := target_columns(p, c, entries)) is not None:
        pq.write_table(pa.table(columns), opts.out / TARGET_PREDICTIONS_FILE)
    headline = next(
        (
            r
            for r in deployed_rows
            if r["metadata"] == "none"
            and r["variant"] == ("clean" if p.selection.fallback else "natix")
        ),
        None,
    )
    metrics = {
        "deployed": deploy.kind,
        "reason": deploy.reason,
        "method": c.method,
        "selection": {**p.selection.to_dict(), "fallback_warning": p.selection.fallback},
        "calibration": deploy.calibration.to_dict(),
        "calibration_rows": deploy.calibration_set,
        "oof_mcc": {**c.member_mcc, **c.oof_mcc},
        "headline": headline,
        "headline_in_sample": in_sample,
        "expected_reward": deployed_rewards.get(test_set),
        "expected_rewards": rewards,
        "members": {n: results[n].info for n in names},
        "dora": dora.info if dora else None,
        "student": student,
        "bundle_max_diff": bundle_diff,
        "batch_folds": opts.batch_folds,
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
    # CUDA's bf16 autocast with other batch shapes moves the last digits: a wider bound there.
    if bundle_diff > (1e-4 if device.type == "cpu" else 5e-2):
        raise BundleMismatch(
            f"the saved ensemble in {opts.out} does not reproduce the stage's own predictions "
            f"(max difference {bundle_diff:.2e}); every score reported comes from the saved "
            "bundle, and all outputs are written",
            {"table": table, "metrics": metrics, "manifest": manifest, "out": opts.out},
        )
    return {"table": table, "metrics": metrics, "manifest": manifest, "out": opts.out}


# ---- outputs ----------------------------------------------------------------------------------


class BundleMismatch(UserError):
    """The saved ensemble disagrees with the stage: outputs are written, the run exits 2."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


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
        selection=p.selection.to_dict(),
        seen=deployed_seen(p, deploy),
    )
    write_manifest(opts.out, manifest, meta_learner)
    write_json(opts.out / AUDIT_FILE, [a.to_dict() for a in p.audits])
    return manifest.to_dict()


def deployed_seen(p: Prepared, deploy: Deployment) -> dict[str, Any]:
    """The labelled rows the deployed models were fitted on: the members' pool, and the
    target's rows when the DoRA-adapted bag (adapted on every target row) is deployed."""
    splits = [str(n) for n in set(p.data.split_names()[p.pool])]
    target = None
    if deploy.kind == "ensemble+dora":
        if p.target.separate:
            t = p.target
            splits_t = sorted({str(n) for n in t.data.split_names()[t.rows]})
            target = {"cache": str(t.data.root.resolve()), "rows": len(t.rows), "splits": splits_t}
        else:
            splits.append("test")
    return seen_record(p.fingerprint["path"], splits, target)
