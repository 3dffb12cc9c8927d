"""Errors a user can act on: each names the offending field and the fix, in one line.

The CLI turns any `FedganError` into that one line on stderr and exit code 2 (no traceback), so every check
that guards user input (scenario files, data paths, forget requests) raises one of these.
"""
from __future__ import annotations


class FedganError(Exception):
    """A problem with the user's input, reported as `field: problem; fix`."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}; {fix}")

    def __reduce__(self):  # picklable with its three parts (an error raised in a --jobs worker process)
        return (type(self), (self.field, self.problem, self.fix))


class ScenarioError(FedganError):
    """A scenario file is malformed or contradicts itself."""


class DataError(FedganError):
    """A dataset is missing, unreadable, or does not fit the request."""
