"""Unlearning methods behind one registry (`METHODS`); the service that serves forget requests is `orchestrator`.

Each method is one small class in its own file, registered by name and selected per scenario
(`[unlearning] methods = [...]`). A method acts on an `UnlearningJob` (`base.py`): the running federation and the
resolved forget sets. `retrain` is the reference method every certificate compares with.
"""
from fedgan.unlearning import cascaded, finetune, fnn, noise, retrain, uniform  # noqa: F401  (registration)
from fedgan.unlearning.base import METHODS, UnlearningJob, UnlearningMethod, register_method

__all__ = ["METHODS", "UnlearningJob", "UnlearningMethod", "register_method"]
