#!/usr/bin/env bash
# The ablation that chose the quickstart's learning rates: the quickstart scenario at 750 rounds (in process: the
# engines give identical numbers) with four Adam settings; prints FID_LeNet at rounds 250/500/750 for each.
# Usage: bench/quickstart_lr_ablation.sh [OUT_DIR]   (about 3 minutes per variant on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench-lr-ablation}
mkdir -p "$out"
variants=(
  "base|lr-generator = 2e-4\nlr-discriminator = 2e-4"
  "both5e-4|lr-generator = 5e-4\nlr-discriminator = 5e-4"
  "both5e-4-beta2-0.99|lr-generator = 5e-4\nlr-discriminator = 5e-4\nbeta2 = 0.99"
  "g1e-3-d2e-4|lr-generator = 1e-3\nlr-discriminator = 2e-4"
)
for variant in "${variants[@]}"; do
  name=${variant%%|*}; body=${variant#*|}
  # the quickstart with its own lr lines removed and this variant's inserted; 750 rounds, in process
  grep -v '^lr-\|^# G faster' scenarios/quickstart.toml \
    | sed "s/^\[training\]/[training]\n$body/; s/^rounds = .*/rounds = 750/; s/^name = \"flower\"/name = \"inprocess\"/" \
    | sed "s/^name = \"quickstart\"/name = \"lr-$name\"/" > "$out/$name.toml"
  [ -f "$out/$name/summary.json" ] || .venv/bin/fedgan run "$out/$name.toml" --out "$out/$name" --quiet >/dev/null
  .venv/bin/python - "$out/$name" "$name" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"evaluation"' in l]
print(f"{sys.argv[2]:<22}", "  ".join(f"r{l['round']}: {l['fid_lenet']:6.1f}" for l in lines))
PY
done
