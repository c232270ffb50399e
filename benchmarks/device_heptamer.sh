#!/usr/bin/env bash
# Heptamer at the paper's settings, 8 seeds vmapped, on a lent GPU machine (device tool).
# That machine has jax/flax/optax/chex but no ase and no network: carry wheels in .whl/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ase==3.29.0
#   (and flax/optax/chex into .whl/extra/, used only if the machine's own versions fail)
# Usage there: bash benchmarks/device_heptamer.sh SECONDS [extra experiments/heptamer.py args]
set -u
budget=${1:-500}; shift || true
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
start=$(date +%s)
timeout "$budget" python3 experiments/heptamer.py --seeds 8 --workdir /tmp/h8 --no-progress "$@" \
  > "$out/heptamer8.log" 2>&1
echo "rc $? after $(( $(date +%s) - start )) s"
cp /tmp/h8/metrics.jsonl /tmp/h8/config.json "$out/" 2>/dev/null
tail -15 "$out/heptamer8.log"
