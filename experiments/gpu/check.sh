#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent machine (one NVIDIA GPU, the CUDA JAX image,
# no package registry): what issue 29 (item 5) and issue 27 (reproduction rows) ask of a device.
#
# Here, before the call (from the repository root; both folders are git-ignored and travel with
# `carry: [".whl", ".gpu"]`):
#   bash ../shared/gpu/wheels.sh tensorboardX==2.6.5 wordllama==0.4.0.post1 importlib_resources==6.5.2
#   (plus pydantic's wheels, which wordllama needs: see experiments/gpu/README.md)
#   mkdir -p .gpu && (cd ../shared/data && python3 -m zipfile -c $PWD/../../main/.gpu/ml-1m.zip ml-1m/ \
#                     && tar czf .../.gpu/amazon.tgz amazon-s3rec)
# There:
#   OUT=<folder> BUDGET=<seconds> bash experiments/gpu/check.sh
#
# In order, each bounded so that the whole script ends within BUDGET seconds and leaves its
# records in $OUT (at most 8 files come back from a device call):
#   1. the environment (nvidia-smi, jax devices);
#   2. the real data unpacked and prepared once (CPU), so that concurrent runs share it;
#   3. the benchmark alone on the GPU: bench.py --preset h200_reference (xrec's step against a
#      plain Flax step, MFU against a bf16 matmul peak measured in the same run), then the
#      ML-1M shape (--preset cpu_ml1m: the shape, on whatever device is there);
#   3b. time to quality on real ML-1M (experiments/bench/time_to_quality.py), alone on the device;
#   4. the reproduction rows (experiments/reproduce/config.py), one process per row sharing the
#      GPU, started in their own sessions so that a follow-up call can collect rows still running;
#   5. the test suite with the GPU visible (JAX_PLATFORMS=cuda), beside the rows;
#   6. records packed into $OUT/reproduce.tgz (no checkpoints) and logs.
# SMOKE=1 runs the same steps on CPU at toy sizes (to check the script itself, here).
set -u
OUT=${OUT:-/tmp/gpu_out}
BUDGET=${BUDGET:-520}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stamp() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/check.log"; }
mkdir -p "$OUT"
ROOT=$PWD

if [ "${SMOKE:-0}" = 1 ]; then
  PLATFORM=cpu; PRESETS="smoke"; EXTRA=(--config.train.num_epochs=2.9)
  TESTS=(tests/test_bench.py); RUNDIR=/tmp/gpu_smoke_runs; PREP=/tmp/gpu_smoke_prepared
else
  PLATFORM=cuda; PRESETS="h200_reference cpu_ml1m"; EXTRA=(); TESTS=(tests); RUNDIR=/tmp/gpu_runs; PREP=/tmp/prepared
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/check.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$ROOT PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export XREC_REAL_DATA=/tmp/real XREC_DATA_DIR=$PREP
# every row of the reproduction config, by index (ROWS="0 4" runs those only)
ROWS=${ROWS:-$(JAX_PLATFORMS=cpu python3 -c "import importlib.util as u
s = u.spec_from_file_location('c', 'experiments/reproduce/config.py'); c = u.module_from_spec(s)
s.loader.exec_module(c); print(' '.join(map(str, range(len(c.ROWS)))))")}
stamp "start (budget ${BUDGET}s, rows: $ROWS)"

# 1. environment
{ nvidia-smi 2>&1 | head -20; python3 -c "import sys, jax, flax, optax; print(sys.version); print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())" 2>&1; nproc; } > "$OUT/env.txt"
stamp "environment: $(tail -2 "$OUT/env.txt" | head -1)"

# 2. real data: unpacked, then each file prepared once (CPU only)
mkdir -p /tmp/real "$RUNDIR/logs"
[ -d /tmp/real/ml-1m ] || python3 -m zipfile -e .gpu/ml-1m.zip /tmp/real
[ -d /tmp/real/amazon-s3rec ] || tar xzf .gpu/amazon.tgz -C /tmp/real
JAX_PLATFORMS=cpu python3 - <<'EOF' > "$RUNDIR/logs/prepare.log" 2>&1
import importlib.util
spec = importlib.util.spec_from_file_location("c", "experiments/reproduce/config.py")
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
from xrec.data import pipeline
for row in ("ml1m_sasrec", "beauty_sasrec", "sports_sasrec", "toys_sasrec"):
  cfg = c.get_config()
  for key, value in c.ROWS[row].items():
    node = cfg
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  d = pipeline.load_domain(cfg.data)
  print(f"prepared {row}: {d.num_users} users, {d.num_items} items")
EOF
stamp "data prepared: $(grep -c '^prepared' "$RUNDIR/logs/prepare.log") files"

# 3. the benchmark, alone on the device
for preset in $PRESETS; do
  cap=$([ "$preset" = h200_reference ] && echo 110 || echo 50)
  timeout $(( $(left) > cap ? cap : $(left) )) python3 experiments/bench/bench.py --preset "$preset" \
    --out "$OUT/bench_$preset.json" > "$RUNDIR/logs/bench_$preset.log" 2>&1
  stamp "bench $preset: rc $? $(grep -o '"speedup_vs_naive": [0-9.]*' "$OUT/bench_$preset.json" 2>/dev/null)"
done

# 3b. time to quality on real ML-1M (xrec's run vs the plain Flax loop; issue 29 item 1), alone:
# xrec with SASRec's reference-code recipe (block, init 0.02, dropout 0.1) against the plain loop
# with Flax's defaults (the bench README's CPU table, here in one run on a quiet device)
REF=(--xrec_set model.sasrec.block="'reference'" --xrec_set model.item_init_std=0.02 --xrec_set model.dropout=0.1)
if [ "${SMOKE:-0}" = 1 ]; then TTQ=(--steps 4 --eval_every 2 --levels 0.01 "${REF[@]}"); else TTQ=(--steps 4700 --eval_every 235 "${REF[@]}"); fi
timeout $(( $(left) > 200 ? 200 : $(left) )) python3 experiments/bench/time_to_quality.py --data /tmp/real "${TTQ[@]}" \
  --out "$OUT/ttq.json" --plot "$RUNDIR/logs/ttq.png" > "$RUNDIR/logs/ttq.log" 2>&1
stamp "time to quality: rc $? $(python3 -c "import json; print(json.load(open('$OUT/ttq.json'))['time_to'])" 2>/dev/null)"

# 4. the reproduction rows, one process per row (own session: a later call may collect them)
for i in $ROWS; do
  setsid nohup timeout "${ROW_SECONDS:-1200}" python3 launch.py --config experiments/reproduce/config.py \
    --workdir "$RUNDIR/reproduce" --only "$i" "${EXTRA[@]}" > "$RUNDIR/logs/row$i.log" 2>&1 < /dev/null &
done
stamp "rows started"

# 5. the test suite with the GPU visible, beside the rows
TEST_SECONDS=$(( $(left) - 45 ))
JAX_PLATFORMS=$PLATFORM timeout "$TEST_SECONDS" python3 -m pytest -q -n "${TEST_WORKERS:-4}" -p no:cacheprovider \
  -rfE --durations=15 "${TESTS[@]}" > "$OUT/tests.log" 2>&1
stamp "tests: rc $? ($(tail -1 "$OUT/tests.log"))"

# 6. wait for the rows while the budget lasts, then pack what there is
while [ "$(left)" -gt 25 ] && pgrep -f "launch.py --config experiments/reproduce" > /dev/null; do sleep 5; done
python3 experiments/reproduce/curves.py "$RUNDIR/reproduce" --out "$RUNDIR/curves.json" >> "$OUT/check.log" 2>&1
tar czf "$OUT/reproduce.tgz" --exclude=checkpoints --exclude=best -C "$RUNDIR" reproduce logs curves.json 2>> "$OUT/check.log"
stamp "packed; rows still running: $(pgrep -fc 'launch.py --config experiments/reproduce')"
for f in "$RUNDIR"/reproduce/runs.jsonl; do [ -f "$f" ] && stamp "finished cells: $(wc -l < "$f")"; done
exit 0
