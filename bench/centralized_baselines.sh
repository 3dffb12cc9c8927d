#!/usr/bin/env bash
# The centralized baseline (one site, all of Fashion-MNIST, the quickstart's generator and 1250 generator steps)
# under a few settings, in process; prints the final FID_LeNet of each. The federated quickstart's figure is in
# bench/README.md. Usage: bench/centralized_baselines.sh [OUT_DIR]   (1-4 minutes per variant on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-centralized}
mkdir -p "$out"
variants=(
  "d1-g1e-3-d2e-4|d-steps = 1\nlr-generator = 1e-3\nlr-discriminator = 2e-4"
  "d1-g2e-4-d2e-4|d-steps = 1\nlr-generator = 2e-4\nlr-discriminator = 2e-4"
  "d10-g1e-3-d2e-4|d-steps = 10\nlr-generator = 1e-3\nlr-discriminator = 2e-4"
  "d10-g2e-4-d2e-4|d-steps = 10\nlr-generator = 2e-4\nlr-discriminator = 2e-4"
)
for variant in "${variants[@]}"; do
  name=${variant%%|*}; body=${variant#*|}
  grep -v '^lr-\|^d-steps' scenarios/centralized.toml \
    | sed "s/^\[training\]/[training]\n$body/; s/^name = \"flower\"/name = \"inprocess\"/" \
    | sed "s/^name = \"centralized\"/name = \"centralized-$name\"/" > "$out/$name.toml"
  [ -f "$out/$name/summary.json" ] || .venv/bin/fedgan run "$out/$name.toml" --out "$out/$name" --quiet >/dev/null
  .venv/bin/python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:<18} FID_LeNet {s['fid_lenet']:6.1f}  KID {s['kid']:6.2f}  {s['train_seconds']:5.0f} s\")" "$out/$name/summary.json" "$name"
done
