"""Declared experiments (`scenarios/*.toml`) and the runner that turns one into a simulation and a report."""
