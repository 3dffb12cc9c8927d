"""bench/fnn_compare.py's target verdicts: against the first retrain, and against the retrains' mean."""
from __future__ import annotations

from bench.fnn_compare import classifier_checks, spread_of, verdicts, with_checks


def _row(method: str, retained: float, auc: float = 0.50, seconds: float = 0.1) -> dict:
    return {"method": method, "forget_accuracy": 0.0, "retained_accuracy": retained, "mia_auc": auc,
            "seconds": seconds}


def test_a_high_first_retrain_misses_where_the_mean_of_retrains_passes():
    # the first retrain is a high draw (0.990); the mean of the three is 0.980: the method at 0.972 is 1.8 points
    # from the first and 0.8 from the mean
    retrains = [_row("retrain", 0.990, seconds=2.0), _row("retrain", 0.975, seconds=2.0),
                _row("retrain", 0.975, seconds=2.0)]
    rows = with_checks([_row("original", 0.99), _row("fnn-fixed-all", 0.972), retrains[0]], classifier_checks,
                       spread_of(retrains))
    fnn = next(row for row in rows if row["method"] == "fnn-fixed-all")
    assert not fnn["checks"]["retained"] and fnn["checks_mean"]["retained"]
    assert "checks" not in rows[0] and "checks" not in rows[2]  # original and retrain are not judged
    first, mean = verdicts("classifier (a)", rows), verdicts("classifier (a)", rows, "checks_mean", ", mean")
    assert first[0].split(": ")[1].startswith("MISS") and mean[0].split(": ")[1].startswith("PASS")


def test_without_a_spread_there_is_no_mean_verdict():
    rows = with_checks([_row("uniform", 0.98), _row("retrain", 0.98, seconds=2.0)], classifier_checks)
    assert "checks_mean" not in rows[0] and all(rows[0]["checks"].values())
