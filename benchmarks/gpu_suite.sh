#!/usr/bin/env bash
# The GPU figures of the project in one command, built to work the first time on a machine lent once, for
# minutes, with no internet (issue 29). Steps, each with its own timeout, log and JSON:
#   preflight  what the steps need and what lacks: packages, Fashion-MNIST, shipped teachers, /dev/shm, the GPU
#   kd         KD seconds per 50,000-image epoch of a ResNet-18 student from a ResNet-18 teacher (bf16,
#              channels_last, fused Adam) against a plain DataLoader pipeline, with the teacher-logit cache
#              and 4 students at once (benchmarks/kd_throughput.py)
#   overhead   the env's overhead per ResNet-34 student on the GPU (benchmarks/env_overhead.py)
#   fidelity   the fidelity rank table at the paper setting: the rank and fast fidelities' Spearman rho
#              against N2N's paper fidelity (5 epochs), 10 ResNet-20 students on Fashion-MNIST
#              (benchmarks/fidelity_rank.py)
#   ray        1 Ray worker against 4 sharing the GPU (0.25 each), scores checked against this process
#              within a tolerance (benchmarks/ray_workers.py); only where `import ray` works
#   table      optional, if the budget has time left: the reference column of a tabular benchmark, a sample
#              of its students scored at the `reference` fidelity (python -m netcomp build-table)
#
#   bash benchmarks/gpu_suite.sh                        # on a CUDA machine; figures under $OUT
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_suite.sh     # CPU plumbing: every step, tiny sizes, < 2 minutes
#   DEVICE=cpu SMOKE=1 HIDE="gymnasium ray" bash benchmarks/gpu_suite.sh   # as on an image without them
#
# Settings (environment): PYTHON (python3), DEVICE (cuda), SMOKE (0), OUT (gpu_suite_out), NETCOMP_DATA
# (.data: Fashion-MNIST's four .gz files in .data/FashionMNIST/raw/, read in place; else Debian's
# /usr/share/datasets/fashion-mnist), STEPS (all of the above, in that order), BUDGET_S (390 on a GPU: no
# step starts, and every step's timeout ends, by then), HIDE (modules made unimportable, for a dry run), PACK
# (1: the per-step files go into $OUT/steps.tar.gz, rebuilt after every step, so $OUT holds 3 files: the
# device tool brings back 8 at most), TABLE_SPEC, TABLE_SAMPLE, STEP_TIMEOUT_S (one timeout for every step:
# `DEVICE=cpu STEP_TIMEOUT_S=30` starts each GPU-sized step on a CPU, to check its arguments and first minute).
# A failed or timed-out step is reported and the next one runs. $OUT gets suite.log (everything printed),
# summary.json (every step's status, seconds and figures) and, per step, NAME.log and NAME.json.
# Exit status: 0 if no step failed (skipped steps are not failures), else 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SMOKE="${SMOKE:-0}"
OUT="${OUT:-gpu_suite_out}"
PACK="${PACK:-0}"
HIDE="${HIDE:-}"
STEPS="${STEPS:-preflight kd overhead fidelity ray table}"
TABLE_SPEC="${TABLE_SPEC:-channel-ratio-resnet20-fashionmnist-stage}"  # a ResNet-20 table: on CPU its reference column is a 500-student sample of 1,727
export NETCOMP_DATA="${NETCOMP_DATA:-.data}" PYTHONUNBUFFERED=1
GPU_BUDGET_S=390  # a GPU run's default BUDGET_S: with the machine's start, about 8 minutes
if [ "$SMOKE" = 1 ]; then
  BUDGET_S="${BUDGET_S:-900}"
  TABLE_SAMPLE="${TABLE_SAMPLE:-3}"
  # Tiny models on a shared CPU: one thread each is faster than threads fighting over the cores.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
else
  BUDGET_S="${BUDGET_S:-$GPU_BUDGET_S}"
  TABLE_SAMPLE="${TABLE_SAMPLE:-64}"
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
if [ "$PACK" = 1 ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")" || exit 2
  trap 'rm -rf "$WORK"' EXIT  # packed into $OUT/steps.tar.gz after every step
else
  WORK="$OUT/steps"
  mkdir -p "$WORK" || exit 2
fi
RECORDS="$WORK/steps.jsonl"
HAVE="$WORK/have.txt"
: >"$RECORDS"
rm -f "$HAVE"
FAILED=0

# ---------------------------------------------------------------------------------------------- estimate
# Seconds per step on one H200 (estimates from the work each step does, not yet measured: no GPU has run this
# suite), each step's timeout on a GPU, and what the machine's start and the wheel install add.
declare -A EST=([preflight]=15 [kd]=90 [overhead]=15 [fidelity]=110 [ray]=60 [table]=60)
declare -A CAP=([preflight]=60 [kd]=150 [overhead]=60 [fidelity]=200 [ray]=120 [table]=390)
declare -A MIN=([preflight]=5 [kd]=60 [overhead]=10 [fidelity]=90 [ray]=45 [table]=45)
START_S=90   # the device machine's start (a minute or more) and the transfers
WHEELS_S=10  # installing the carried wheels
if [ "$SMOKE" = 1 ]; then
  for s in "${!CAP[@]}"; do CAP[$s]=240; MIN[$s]=5; done
fi
if [ -n "${STEP_TIMEOUT_S:-}" ]; then  # one timeout for every step (e.g. to start each GPU step on a CPU)
  for s in "${!CAP[@]}"; do CAP[$s]=$STEP_TIMEOUT_S; [ "${MIN[$s]}" -gt "$STEP_TIMEOUT_S" ] && MIN[$s]=$STEP_TIMEOUT_S; done
fi

selected() { [[ " $STEPS " == *" $1 "* ]]; }

print_estimate() {
  local total=0 s line="" ray_note=""
  for s in preflight kd overhead fidelity ray table; do
    selected "$s" || continue
    total=$((total + EST[$s]))
    line+=" $s ${EST[$s]}"
  done
  selected ray && ray_note=" (ray only where Ray imports: ${EST[ray]} s less without it)"
  local budget="$BUDGET_S"
  [ "$SMOKE" = 1 ] && budget="$GPU_BUDGET_S"
  local all=$((total + START_S + WHEELS_S)) worst=$((budget + START_S + WHEELS_S))
  echo "GPU wall-time estimate (one H200):${line} s = ${total} s of steps${ray_note}"
  echo "  + machine start ~${START_S} s + wheel install ~${WHEELS_S} s = ~${all} s ($((all / 60)) min $((all % 60)) s)"
  echo "  on a GPU the suite starts no step and cuts every timeout at BUDGET_S=${budget} s: at most ~${worst} s" \
       "($((worst / 60)) min $((worst % 60)) s) with the start"
}

# ---------------------------------------------------------------------------------------------- helpers
json_str() {  # a JSON string of $1
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/ }"
  printf '"%s"' "${s//$'\t'/ }"
}

record() {  # step status rc seconds timeout reason json-file (file names relative to the steps' folder)
  printf '{"step": %s, "status": %s, "rc": %s, "seconds": %s, "timeout": %s, "reason": %s, "log": %s, "json": %s}\n' \
    "$(json_str "$1")" "$(json_str "$2")" "${3:-null}" "${4:-0}" "${5:-null}" "$(json_str "$6")" \
    "$(json_str "$1.log")" "$(json_str "$7")" >>"$RECORDS"
}

has_need() {  # whether the need $1 (module:X, data:fashionmnist, device:cuda, shm, tables) is met
  if [ -f "$HAVE" ]; then
    grep -qx -- "$1" "$HAVE"
    return
  fi
  case "$1" in  # the preflight did not run: check directly
    module:*) "$PYTHON" -c "import ${1#module:}" >/dev/null 2>&1 ;;
    device:cuda) "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" >/dev/null 2>&1 ;;
    data:fashionmnist) [ -f "$NETCOMP_DATA/FashionMNIST/raw/train-images-idx3-ubyte.gz" ] \
                         || [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ;;
    shm) [ -w /dev/shm ] ;;
    tables) [ -f netcomp/tables.py ] && [ -f envs/build_table.py ] ;;
    *) return 1 ;;
  esac
}

pack() {  # the per-step files into $OUT/steps.tar.gz (PACK=1), atomically
  [ "$PACK" = 1 ] || return 0
  tar -czf "$OUT/steps.tar.gz.tmp" -C "$WORK" . 2>/dev/null && mv -f "$OUT/steps.tar.gz.tmp" "$OUT/steps.tar.gz"
}

summarise() {
  local meta
  meta="{\"device\": $(json_str "$DEVICE"), \"smoke\": $(json_str "$SMOKE"), \"budget_s\": $BUDGET_S,"
  meta+=" \"elapsed_s\": $SECONDS, \"steps_selected\": $(json_str "$STEPS"), \"hidden\": $(json_str "$HIDE"),"
  if [ "$PACK" = 1 ]; then
    meta+=" \"step_files\": \"steps.tar.gz\"}"
  else
    meta+=" \"step_files\": $(json_str "$WORK")}"
  fi
  "$PYTHON" benchmarks/suite_tools.py summary --steps "$RECORDS" --json "$OUT/summary.json" --meta "$meta" \
    >"$WORK/summary.txt" 2>&1 || echo "(summary failed: see $WORK/summary.txt)"
  pack
}

# run_step NAME NEEDS -- COMMAND...: runs COMMAND under timeout if every need is met and time is left;
# the step's figures are expected in $WORK/NAME.json.
run_step() {
  local name="$1" needs="$2" need missing=() t left rc start status reason=""
  shift 3
  selected "$name" || return 0
  echo
  echo "== $name ($(date -u +%H:%M:%S), ${SECONDS} s into the suite)"
  for need in $needs; do
    has_need "$need" || missing+=("$need")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    reason="missing: ${missing[*]} (see preflight)"
    echo "skipped: $reason" | tee "$WORK/$name.log"
    record "$name" skipped null 0 null "$reason" ""
    summarise
    return 0
  fi
  left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt "${MIN[$name]}" ]; then
    reason="${left} s left of BUDGET_S=${BUDGET_S}, the step needs ${MIN[$name]} s"
    echo "skipped: $reason" | tee "$WORK/$name.log"
    record "$name" skipped null 0 null "$reason" ""
    summarise
    return 0
  fi
  t="${CAP[$name]}"
  [ "$left" -lt "$t" ] && t="$left"
  start=$SECONDS
  if declare -F "$1" >/dev/null; then  # a step function: timeout runs it in a new bash (it is exported)
    set -- bash -c '"$@"' "$name" "$@"
  fi
  if command -v timeout >/dev/null; then
    timeout -k 15 "$t" "$@" 2>&1 | tee "$WORK/$name.log"
    rc="${PIPESTATUS[0]}"
  else
    echo "(no timeout command here: the step runs without one)"
    "$@" 2>&1 | tee "$WORK/$name.log"
    rc="${PIPESTATUS[0]}"
  fi
  if [ "$rc" = 0 ]; then
    status=ok
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status=timeout
    reason="killed at its timeout of ${t} s"
    FAILED=1
  else
    status=failed
    reason="exit status $rc: $(grep -v '^[[:space:]]*$' "$WORK/$name.log" | tail -n 1 | cut -c1-300)"
    FAILED=1
  fi
  echo "-- $name: $status in $((SECONDS - start)) s (timeout ${t} s)${reason:+; $reason}"
  record "$name" "$status" "$rc" "$((SECONDS - start))" "$t" "$reason" "$name.json"
  summarise
}

# ---------------------------------------------------------------------------------------------- steps
# A step that is more than one command is a function, exported, which run_step starts in a new bash under
# timeout.
# shellcheck disable=SC2317  # invoked indirectly, by run_step
step_table() {
  local file="$WORK/tables/$TABLE_SPEC.$1.jsonl.gz" rc
  mkdir -p "$WORK/tables"
  shift
  "$PYTHON" -m netcomp build-table "$TABLE_SPEC" --out "$file" --quiet "$@"
  rc=$?
  [ -f "$file" ] && "$PYTHON" -m netcomp table-info "$file" --json >"$WORK/table.json"
  return "$rc"
}

main() {
  local hidden=""
  [ -n "$HIDE" ] && hidden=" HIDE=\"$HIDE\""
  echo "netcomp-gym GPU suite: DEVICE=$DEVICE SMOKE=$SMOKE PYTHON=$PYTHON BUDGET_S=$BUDGET_S OUT=$OUT" \
       "NETCOMP_DATA=$NETCOMP_DATA STEPS=\"$STEPS\"$hidden; started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  print_estimate
  [ "$SMOKE" = 1 ] && echo "this run: the CPU plumbing (tiny sizes), about 1.5 min on 2 cores"
  if [ -n "$HIDE" ]; then  # a dry run as on an image without these modules: importing them fails
    mkdir -p "$WORK/hide"
    local m
    for m in $HIDE; do
      printf 'raise ModuleNotFoundError("No module named %s (hidden by HIDE)", name="%s")\n' "'$m'" "$m" \
        >"$WORK/hide/$m.py"
    done
    export PYTHONPATH="$WORK/hide${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! command -v "$PYTHON" >/dev/null; then
    echo "MISSING: $PYTHON (set PYTHON=...)"
  fi

  local kd_workers=4 dev="$DEVICE" cuda_need="" threads=()
  [ "$DEVICE" = cpu ] || cuda_need="device:cuda"
  [ "$SMOKE" = 1 ] && threads=(--threads 1)

  run_step preflight "" -- "$PYTHON" benchmarks/suite_tools.py preflight --device "$dev" \
    --data-root "$NETCOMP_DATA" --json "$WORK/preflight.json" --have "$HAVE"
  has_need shm || kd_workers=0

  if [ "$SMOKE" = 1 ]; then
    run_step kd "module:torch module:torchvision" -- "$PYTHON" benchmarks/kd_throughput.py --device "$dev" \
      --student resnet20 --teacher resnet20 --images 32 --batch-size 16 --repeats 1 --warmup-steps 1 --together 2 \
      --workers "$((kd_workers > 0 ? 1 : 0))" --json "$WORK/kd.json"
    run_step overhead "module:torch" -- "$PYTHON" benchmarks/env_overhead.py --arch resnet20 --device "$dev" \
      --repeats 2 --json "$WORK/overhead.json"
    run_step fidelity "module:gymnasium module:scipy data:fashionmnist" -- "$PYTHON" -m benchmarks.fidelity_rank \
      --space removal --arch resnet20 --dataset fashionmnist --students 4 --fidelities smoke --reference smoke \
      --batch 4 --device "$dev" "${threads[@]}" --json "$WORK/fidelity.json"
    run_step ray "module:ray module:gymnasium" -- "$PYTHON" -m benchmarks.ray_workers --device "$dev" \
      --fidelity smoke --teacher-recipe smoke --students 2 --workers 1 --repeats 1 --json "$WORK/ray.json" \
      --dataset-kwargs '{"image_size": 16, "train_size": 256, "val_size": 64, "test_size": 64}'
    run_step table "tables module:gymnasium data:fashionmnist" -- step_table smoke --fidelity smoke \
      --sample "$TABLE_SAMPLE" --batch "$TABLE_SAMPLE" --device "$dev" "${threads[@]}"
  else
    run_step kd "$cuda_need module:torch module:torchvision" -- "$PYTHON" benchmarks/kd_throughput.py \
      --device "$dev" --images 50000 --repeats 2 --workers "$kd_workers" --together 4 --json "$WORK/kd.json"
    run_step overhead "$cuda_need module:torch" -- "$PYTHON" benchmarks/env_overhead.py --arch resnet34 \
      --device "$dev" --repeats 10 --json "$WORK/overhead.json"
    run_step fidelity "$cuda_need module:gymnasium module:scipy data:fashionmnist" -- "$PYTHON" \
      -m benchmarks.fidelity_rank --space removal --arch resnet20 --dataset fashionmnist --students 10 \
      --fidelities rank fast --reference paper --batch 10 --device "$dev" --json "$WORK/fidelity.json"
    run_step ray "$cuda_need module:ray module:gymnasium" -- "$PYTHON" -m benchmarks.ray_workers --device "$dev" \
      --workers 1,4 --worker-gpus 0.25 --json "$WORK/ray.json"
    run_step table "$cuda_need tables module:gymnasium data:fashionmnist" -- step_table reference \
      --fidelity reference --sample "$TABLE_SAMPLE" --batch 16 --device "$dev"
  fi

  echo
  echo "== summary ($SECONDS s; BUDGET_S=$BUDGET_S)"
  summarise
  cat "$WORK/summary.txt"
  if [ "$PACK" = 1 ]; then
    echo "per-step logs and JSON: $OUT/steps.tar.gz; all figures: $OUT/summary.json; everything printed: $OUT/suite.log"
  else
    echo "per-step logs and JSON: $WORK/; all figures: $OUT/summary.json; everything printed: $OUT/suite.log"
  fi
  return "$FAILED"
}

export -f step_table
export PYTHON WORK TABLE_SPEC
main 2>&1 | tee "$OUT/suite.log"
exit "${PIPESTATUS[0]}"
