#!/usr/bin/env bash
# The GPU checks of the many-sites work, as one prepared run on a lent GPU machine (nothing here runs in CI).
# On the device: the GPU tests, then bench/scale.py on CUDA with the reference's model (DCGAN width 64, batch 64):
# the per-site loop against vmap groups in process, the same groups under bfloat16 autocast (engine.precision), and
# Flower with site groups, at 100 and 1,000 sites; then one unlearning stage at 100 and 300 sites, per site and stacked.
# Writes everything under ${OUT:-bench/results/gpu}. Usage (from the repository root, Flower and Ray importable):
#   bench/gpu_check.sh [SITES=100,1000]
set -uo pipefail
out=${OUT:-bench/results/gpu}
sites=${1:-100,1000}
mkdir -p "$out"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PYTHONUNBUFFERED=1
python3 -c "import sys, torch; print(sys.version, torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
python3 -m pytest -q tests/test_gpu.py tests/test_site_group.py 2>&1 | tail -5 | tee "$out/tests.txt"
python3 bench/scale.py --device cuda --batching vmap --width 64 --sites "$sites" --configs loop,batched \
  --nodes 1 --rounds 10 --warmup 3 --out "$out/scale-gpu-inprocess.json" | tee "$out/scale-gpu-inprocess.log"
python3 bench/scale.py --device cuda --batching vmap --width 64 --sites "$sites" --configs batched \
  --nodes 1 --rounds 10 --warmup 3 --precision bfloat16 --out "$out/scale-gpu-bf16.json" | tee "$out/scale-gpu-bf16.log"
python3 bench/scale.py --device cuda --batching vmap --width 64 --sites "$sites" --configs batched,flower-group \
  --nodes 4 --rounds 10 --warmup 3 --out "$out/scale-gpu-flower.json" | tee "$out/scale-gpu-flower.log"
python3 bench/stage_batching.py --device cuda --width 64 --sites 100,300 --repeat 2 \
  --out "$out/stage-batching-gpu.json" | tee "$out/stage-batching-gpu.log"
