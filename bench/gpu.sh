#!/usr/bin/env bash
# The GPU benchmarks of issue 15 (items 4-6) in one go, on an H100 or H200:
#
#     bash bench/gpu.sh                      # all four steps, within BUDGET_S (700 s)
#     bash bench/gpu.sh extract predict      # some steps only, in the order given
#     BUDGET_S=300 bash bench/gpu.sh train_head ensemble   # first of two device calls
#     BUDGET_S=400 bash bench/gpu.sh extract predict       # second
#
# A device call is limited to 10 minutes and a session to 15 minutes of device time, its
# start included: the two calls above (700 s) are the plan. Each step runs under `timeout`:
# at most its cap, and never past the deadline (start + BUDGET_S). A failing step does not
# stop the next. Output goes to stdout and, if $OUT is set, to $OUT/<step>.log too. Caps,
# from the H100 figures in docs/benchmarks.md (estimates where no figure exists yet):
#   train_head  100 s  2 head epochs (3.6 s each), the step under 4 recipes (one compile)
#   ensemble    200 s  the members' folds one at a time (121 s for 1 epoch), batched, and
#                      the kernel ceiling
#   extract     200 s  builds, 4 SDPA backend rows, torch.compile (68 s to compile), a short
#                      end to end; --no-baseline: fp32 eager (6.56x slower) is measured
#   predict     200 s  2 settings x (eager, heads stacked, compiled), 10 repeats each
set -u

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET_S=${BUDGET_S:-700}
deadline=$(($(date +%s) + BUDGET_S))

declare -A CAP=([train_head]=100 [ensemble]=200 [extract]=200 [predict]=200)
declare -A CMD=(
    [train_head]="python bench/train_head.py --backbone-images 0"
    [ensemble]="python bench/ensemble.py --compare-sequential --epochs 1 --dora-epochs 1"
    [extract]="python bench/extract.py --preset vith16plus --view-size 512 --compile \
--no-baseline --rows 32 --variants clean,aug-0"
    [predict]="python bench/predict.py --preset vith16plus --device cuda --compile \
--batch-images 16 --repeats 10"
)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(train_head ensemble extract predict)
for step in "${steps[@]}"; do
    if [ -z "${CMD[$step]+x}" ]; then
        echo "unknown step $step; the steps are: train_head ensemble extract predict" >&2
        exit 2
    fi
done

log() {  # stdout, and $OUT/<name>.log when $OUT is set
    if [ -n "${OUT:-}" ]; then tee -a "$OUT/$1.log"; else cat; fi
}

[ -n "${OUT:-}" ] && mkdir -p "$OUT"
{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi -L || echo "nvidia-smi: not available"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); budget ${BUDGET_S} s"
} 2>&1 | log env

declare -A RESULT
for step in "${steps[@]}"; do
    left=$((deadline - $(date +%s)))
    limit=$((left < CAP[$step] ? left : CAP[$step]))
    if [ "$limit" -lt 10 ]; then
        RESULT[$step]="skipped (no time left)"
        echo "== $step: skipped, ${left} s left" | log "$step"
        continue
    fi
    echo "== $step: ${CMD[$step]}  (timeout ${limit} s)" | log "$step"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the command is words
    timeout --kill-after=10 "$limit" ${CMD[$step]} 2>&1 | log "$step"
    rc=${PIPESTATUS[0]}
    took=$(($(date +%s) - start))
    case $rc in
        0) RESULT[$step]="passed (${took} s)" ;;
        124 | 137) RESULT[$step]="TIMED OUT after ${took} s (limit ${limit} s)" ;;
        *) RESULT[$step]="FAILED with status $rc (${took} s)" ;;
    esac
done

{
    echo "== summary"
    for step in "${steps[@]}"; do printf '%-11s %s\n' "$step" "${RESULT[$step]}"; done
} | log summary
