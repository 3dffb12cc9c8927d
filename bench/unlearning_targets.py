"""Check a forget scenario's run directory against issue 8's targets and print the table.

    .venv/bin/fedgan run scenarios/class-forget.toml --out runs/class-forget
    .venv/bin/python bench/unlearning_targets.py runs/class-forget

Targets (measured, never loosened): class requests — forget-class rate after <= max(1 %, retrain's + 0.5 point),
FID_LeNet on retained classes within 10 % of before (not more than 10 % worse); a class kept at other holders —
|rate after - retrain's| <= 1 point; item requests — |AUC(F vs N) after - retrain's| <= 0.03 with AUC(R vs N)
before >= 0.6; speed-up over retrain >= 100x in generator rounds and in wall seconds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def checks(entry: dict) -> list[tuple[str, float, str, bool | None]]:
    """(target, measured, bound, met) rows for one certificate entry (met None: information only)."""
    rows = []
    request = entry["request"]
    if "class" in request:
        rate = entry["forget_class_rate"]
        if request.get("everywhere") or rate["retrain"] < 0.01:
            bound = max(0.01, rate["retrain"] + 0.005)
            rows.append(("forget-class rate after", rate["after"], f"<= {bound:.4f}", rate["after"] <= bound))
        else:
            gap = abs(rate["after"] - rate["retrain"])
            rows.append(("|rate after - retrain| (shared class)", gap, "<= 0.01", gap <= 0.01))
        fid = entry["fid_lenet_retained"]
        change = fid["after"] / fid["before"] - 1
        # "within 10 % of before" read as: not more than 10 % worse (an improvement is no failure)
        rows.append(("FID_LeNet retained, change vs before", change, "<= +10 %", change <= 0.10))
    else:
        f_vs_n = entry["mia_auc_forget_vs_nonmember"]
        r_vs_n = entry["mia_auc_member_vs_nonmember"]
        gap = abs(f_vs_n["after"] - f_vs_n["retrain"])
        rows.append(("AUC(R vs N) before (attack power)", r_vs_n["before"], ">= 0.6", r_vs_n["before"] >= 0.6))
        rows.append(("|AUC(F vs N) after - retrain|", gap, "<= 0.03", gap <= 0.03))
    rows += spread_rows(entry)
    rows.append(("speed-up, generator rounds", entry["speedup_rounds_vs_retrain"], ">= 100",
                 entry["speedup_rounds_vs_retrain"] >= 100))
    rows.append(("speed-up, wall seconds", entry["speedup_vs_retrain"], ">= 100", entry["speedup_vs_retrain"] >= 100))
    return rows


def spread_rows(entry: dict) -> list[tuple[str, float, str, bool | None]]:
    """With `retrain-seeds` > 1: the gap to the retrains' mean beside their sd (information, not a target)."""
    spread = entry.get("retrain_spread") or {}
    key = "forget_class_rate" if "class" in entry["request"] else "mia_auc_forget_vs_nonmember"
    m = spread.get(key)
    if not m:
        return []
    seeds = len(spread["training_seeds"])
    return [(f"|{key} after - mean of {seeds} retrains|", abs(m["after"] - m["mean"]), "info", None),
            (f"sd of {key} over the {seeds} retrains", m["sd"], "info", None)]


def main(run_dir: str) -> None:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    for entry in summary.get("unlearning", []):
        request = entry["request"]
        what = f"class {request['class']}" if "class" in request else f"{len(request['items'])} items"
        print(f"\n{request['request_id']} (site {request['site']}, {what}) — {entry['method']}: "
              f"{entry['seconds']:.1f} s / {entry['rounds']} rounds vs retrain {entry.get('retrain_seconds', 0):.1f} s"
              f" / {entry.get('retrain_rounds', 0)} rounds")
        for name, value, bound, met in checks(entry):
            verdict = "INFO" if met is None else "PASS" if met else "MISS"
            print(f"  {verdict}  {name:<42} {value:10.4f}  ({'target ' if met is not None else ''}{bound})")


if __name__ == "__main__":
    main(sys.argv[1])
