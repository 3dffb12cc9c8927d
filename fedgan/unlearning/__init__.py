"""Unlearning methods behind one registry (`METHODS`), and the orchestrator that serves forget requests.

Each method is one small class in its own file, registered by name and selected per scenario
(`[unlearning] methods = [...]`). A method acts on an `UnlearningJob`: the running federation (server + engine) and
the resolved forget sets; `retrain` is the exception and is run by the orchestrator (a fresh federation).
"""
from fedgan.unlearning import cascaded, finetune, noise, retrain, uniform  # noqa: F401  (registration)
from fedgan.unlearning.base import METHODS, UnlearningJob, UnlearningMethod, register_method

__all__ = ["METHODS", "UnlearningJob", "UnlearningMethod", "register_method"]
