"""The wheel ships every package and every shipped scenario (what `pip install .` gives a new user).

Built from the pyproject's own package discovery, without building a wheel (that is CI's wheel step, which also
installs it into a clean environment and runs it from outside the checkout: .ci/wheel-check).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_package_discovery_covers_every_package_folder_of_the_project():
    # Prepare: every folder with an __init__.py under the app's top-level packages.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for top in ("fedgan", "server", "clients", "scenarios")
               for p in (ROOT / top).rglob("__init__.py")}

    # Execute
    found = set(find_packages(str(ROOT), include=config["include"]))

    # Assert
    assert "fedgan.unlearning" in on_disk
    assert on_disk <= found, sorted(on_disk - found)
    assert not any(name.startswith(("tests", "bench")) for name in found)


def test_the_shipped_scenarios_are_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data["scenarios"] == ["*.toml"]
    assert (ROOT / "scenarios" / "quickstart.toml").is_file()
