"""Measuring generators without downloads: a cached LeNet evaluator, metrics through it, and run pictures.

`classifier` trains/loads the evaluator, `metrics` turns generated samples into numbers (FID_LeNet, KID, class
histogram and coverage, Inception-Score analogue, label fidelity), `plots` writes PNGs. `plots` is not re-exported
here so that importing the metrics does not pull in matplotlib.
"""
from fedgan.evaluation.classifier import Evaluator, EvaluatorNet, load_or_train_evaluator
from fedgan.evaluation.metrics import (
    DEFAULT_METRICS,
    METRICS,
    MetricInputs,
    class_coverage,
    class_histogram,
    evaluate_generator_samples,
    inception_score_lenet,
    label_fidelity,
    register_metric,
)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "Evaluator",
    "EvaluatorNet",
    "MetricInputs",
    "class_coverage",
    "class_histogram",
    "evaluate_generator_samples",
    "inception_score_lenet",
    "label_fidelity",
    "load_or_train_evaluator",
    "register_metric",
]
