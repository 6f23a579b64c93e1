#!/usr/bin/env bash
# The prepared GPU check for a session that is lent a device machine (one H100 or H200, a few
# minutes of device time): prepare here, then one call of the device tool runs one mode.
#
# Here, on the CPU machine, once per checkout:
#   bash scripts/gpu-session.sh prepare
#     copies the three datasets into .gpu/data, fetches faiss-cpu's wheel for the device's
#     Python 3.12 into .gpu/whl, keeps .gpu/ out of git (.git/info/exclude) and prints the call.
#
# There, through the device tool's `run` with carry [".gpu"]:
#   bash scripts/gpu-session.sh pipeline [LIMIT_S [EXAMPLE ARGS...]]
#     SASRec + RaSeRec on Beauty, the whole pipeline (stage 1, bank, RAFT, test), seed 0, alone
#     on the GPU and timed. Results files, the log and the device's name come back in $OUT.
#   bash scripts/gpu-session.sh check [PIPELINE_LIMIT_S]
#     The whole check in one call: tests/test_cuda.py (the library on the GPU against the CPU),
#     the full test suite with CUDA present (8 workers), benchmarks/speed_kernels.py --device
#     cuda, then the pipeline mode. Logs, results files and the device's name come back in $OUT.
#   bash scripts/gpu-session.sh tests
#     The device checks of check mode alone (about a minute on an H200).
#   bash scripts/gpu-session.sh raft ENCODER [OLD_TREE]
#     tests/test_cuda.py and speed_kernels.py --device cuda, then RAFT alone (bank, RAFT, test;
#     seed 0) on a trained SASRec state_dict ENCODER (carried under .gpu), with this tree and,
#     when given, with OLD_TREE (an older commit's raserec_adapter/ and examples/, e.g.
#     `git archive OLD raserec_adapter examples | tar -x -C .gpu/old`), old first, in one run.
#   bash scripts/gpu-session.sh train BACKBONE SEEDS LIMIT_S [EXAMPLE ARGS...]
#     examples/BACKBONE.py for each seed of SEEDS (comma-separated), all in parallel on the GPU,
#     each stopped after LIMIT_S seconds. Each seed comes back as $OUT/seed<N>.tar.gz: its
#     stage-1 state file, results files (when it finished) and log. A run cut by the limit goes
#     on here, on the CPU, with the same example command plus --resume (--device cpu).
#     Example: train bert4rec 0,1,2 480 --objective next-item --dropout 0.5 --attn-dropout 0.5
#
# LIMIT_S must end the command inside the tool's timeout_s: leave a minute for packing.
# A dry run here: OUT=/tmp/out GPU_SESSION_DEVICE=cpu bash scripts/gpu-session.sh pipeline 600 --demo
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FAISS_WHEEL="faiss-cpu==1.15.1"
DEVICE="${GPU_SESSION_DEVICE:-cuda}"
mode="${1:-}"
[ $# -gt 0 ] && shift

prepare() {
  local data="${RASEREC_DATA_DIR:-$ROOT/../shared/data}"
  [ -f "$data/Beauty.txt" ] || { echo "no Beauty.txt in $data: set RASEREC_DATA_DIR" >&2; exit 1; }
  mkdir -p .gpu/data .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  cp "$data"/*.txt .gpu/data/
  [ -f "$data/SHA256SUMS" ] && cp "$data/SHA256SUMS" .gpu/data/
  ls .gpu/whl/faiss_cpu-*.whl >/dev/null 2>&1 || python3 -m pip download --quiet --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl "$FAISS_WHEEL"
  # the device's copy of the tree has no .git: results files take the commit from here
  { git rev-parse HEAD; git status --porcelain --untracked-files=no | grep -q . && echo dirty || true; } \
    | paste -sd- >.gpu/commit.txt
  echo "commit recorded for the device's results files: $(cat .gpu/commit.txt)"
  du -sh .gpu
  cat <<'EOF'
Now one device call (mode and limit as planned; timeout_s leaves a minute over the limit):
  run(command="bash scripts/gpu-session.sh pipeline 480", carry=[".gpu"], timeout_s=560)
EOF
}

device_setup() {
  [ -n "${GPU_SESSION_READY:-}" ] && return 0  # check mode: set up once, then the pipeline
  GPU_SESSION_READY=1
  [ -d .gpu/whl ] || { echo "no .gpu/: run 'bash scripts/gpu-session.sh prepare' here first and carry .gpu" >&2; exit 1; }
  : "${OUT:?OUT is not set: this mode runs on the device machine}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  RASEREC_GIT_COMMIT="$(cat .gpu/commit.txt 2>/dev/null || echo unknown)"
  export RASEREC_GIT_COMMIT
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c 'import torch, faiss, numpy; print("torch", torch.__version__, "faiss", faiss.__version__, "numpy", numpy.__version__, "cuda", torch.cuda.is_available())'
    echo "commit (recorded by prepare): $RASEREC_GIT_COMMIT"
  } | tee "$OUT/device.txt"
}

pipeline() {
  local limit="${1:-480}"
  [ $# -gt 0 ] && shift
  device_setup
  local start=$SECONDS
  set +e
  timeout --signal=INT "$limit" python3 examples/sasrec.py --dataset beauty --data-dir .gpu/data \
    --seed 0 --device "$DEVICE" --out /tmp/w --results-dir "$OUT" --protocols full "$@" 2>&1 \
    | tee "$OUT/pipeline.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "pipeline: rc $rc, $((SECONDS - start)) s wall (limit $limit s)" | tee -a "$OUT/device.txt"
}

device_checks() {  # [full]: the whole suite too; logs to $OUT/check.log
  set +e
  { echo "== tests/test_cuda.py"
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
    echo "rc $?"
    if [ "${1:-}" = full ]; then
      echo "== full suite, CUDA present"
      timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 tests
      echo "rc $?"
    fi
    echo "== benchmarks/speed_kernels.py --device cuda"
    timeout 90 python3 benchmarks/speed_kernels.py --device cuda --repeats 20
    echo "rc $?"
    cp benchmarks/results/speed-kernels-cuda.json "$OUT/"
  } 2>&1 | tee "$OUT/check.log"
  set -e
}

check() {
  local limit="${1:-360}"
  device_setup
  local start=$SECONDS
  device_checks full
  echo "check before the pipeline: $((SECONDS - start)) s" | tee -a "$OUT/device.txt"
  pipeline "$limit"
}

raft() {
  [ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: raft ENCODER [OLD_TREE]" >&2; exit 2; }
  local enc="$ROOT/$1" old="${2:-}"
  device_setup
  device_checks
  set +e
  local tree name start
  for tree in ${old:+"$ROOT/$old"} "$ROOT"; do
    name=$([ "$tree" = "$ROOT" ] && echo new || echo old)
    start=$SECONDS
    (cd "$tree" && timeout --signal=INT 150 python3 examples/sasrec.py --dataset beauty \
      --data-dir "$ROOT/.gpu/data" --seed 0 --device "$DEVICE" --encoder-checkpoint "$enc" \
      --out "/tmp/w-$name" --tag "raft-$name" --results-dir "$OUT" --protocols full) \
      >"/tmp/raft-$name.log" 2>&1
    echo "raft $name: rc $?, $((SECONDS - start)) s wall" | tee -a "$OUT/device.txt"
    { echo "== raft $name ($tree)"; cat "/tmp/raft-$name.log"; } >>"$OUT/raft.log"
    grep -E "RAFT epoch [0-9]+: loss|^raserec|^pretrained" "/tmp/raft-$name.log" | tail -n 4
  done
  set -e
}

train() {
  [ $# -ge 3 ] || { echo "usage: train BACKBONE SEEDS LIMIT_S [EXAMPLE ARGS...]" >&2; exit 2; }
  local backbone="$1" seeds="$2" limit="$3"
  shift 3
  [ -f "examples/$backbone.py" ] || { echo "no examples/$backbone.py" >&2; exit 2; }
  device_setup
  local start=$SECONDS seed
  IFS=, read -ra list <<<"$seeds"
  for seed in "${list[@]}"; do
    mkdir -p "/tmp/w/seed$seed"
    timeout --signal=INT "$limit" python3 "examples/$backbone.py" --dataset beauty \
      --data-dir .gpu/data --seed "$seed" --device "$DEVICE" --threads 4 --out "/tmp/w/seed$seed" "$@" \
      >"/tmp/w/seed$seed/log.txt" 2>&1 &
  done
  set +e
  wait
  set -e
  for seed in "${list[@]}"; do
    (cd /tmp/w && find "seed$seed" \( -name pretrain-state.pt -o -name '*.json' -o -name log.txt \) \
      -print0 | tar -czf "$OUT/seed$seed.tar.gz" --null -T -)
    tail -n 3 "/tmp/w/seed$seed/log.txt"
  done
  ls -la "$OUT"
  echo "train $backbone seeds $seeds: $((SECONDS - start)) s wall (limit $limit s)" | tee -a "$OUT/device.txt"
}

case "$mode" in
  prepare) prepare ;;
  pipeline) pipeline "$@" ;;
  check) check "$@" ;;
  tests) device_setup; device_checks full ;;
  raft) raft "$@" ;;
  train) train "$@" ;;
  *) sed -n '2,33p' "$0"; exit 2 ;;
esac
