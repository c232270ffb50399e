#!/usr/bin/env bash
# Quality arms (benchmarks/quality.py) on a lent GPU machine (device tool), one after another.
# That machine has jax/flax/optax/chex but no ase and no network: carry wheels in .whl/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ase==3.29.0
#   (and flax/optax/chex into .whl/extra/, used only if the machine's own versions fail;
#   matplotlib is optional: without it quality.py writes the JSON and skips the PNG)
# Usage there:
#   bash benchmarks/device_quality.sh SECONDS_PER_ARM "NAME|SYSTEM ARGS" ["NAME|SYSTEM ARGS" ...]
#   e.g. bash benchmarks/device_quality.sh 420 "gpu_heptamer8_paper|heptamer --seeds 8 --preset paper" \
#          "gpu_heptamer8_default|heptamer --seeds 8"
# 8 heptamer seeds at the paper settings (--preset paper; the default is the fast one) took
# 349 s on an H100: two arms fit one 15-minute device budget. Results land in $OUT/NAME.json (copy them to benchmarks/results/).
set -u
budget=${1:-420}; shift || true
out=${OUT:-/tmp/out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=float32
nvidia-smi -L
smoke() {
  python3 experiments/heptamer.py --quick --iterations 1 --workdir /tmp/smoke --no-progress \
    --set n_samples=4 --set train_steps=2 --set n_reverse_steps=3 --set buffer_size=4
}
if ! smoke > "$out/smoke.log" 2>&1; then
  echo "smoke failed with the machine's packages; adding carried flax/optax/chex"
  tail -5 "$out/smoke.log"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/extra/*.whl
  rm -rf /tmp/smoke; smoke > "$out/smoke.log" 2>&1 || { tail -30 "$out/smoke.log"; exit 1; }
fi
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
for arm in "$@"; do
  name=${arm%%|*}; args=${arm#*|}
  rm -rf "/tmp/q/$name"  # the machine keeps /tmp between warm calls: never resume by accident
  start=$(date +%s)
  # shellcheck disable=SC2086  # args are words on purpose
  timeout "$budget" python3 benchmarks/quality.py $args --name "$name" --workdir "/tmp/q/$name" \
    --out "$out" > "$out/$name.log" 2>&1
  echo "$name: rc $? after $(( $(date +%s) - start )) s"
  cp "/tmp/q/$name/metrics.jsonl" "$out/$name.metrics.jsonl" 2>/dev/null
  tail -12 "$out/$name.log"
done
