"""Shared fixtures: an isolated LABCTL_HOME for every test."""

import pytest


@pytest.fixture(autouse=True)
def labctl_home(tmp_path, monkeypatch):
    home = tmp_path / "labctl-home"
    monkeypatch.setenv("LABCTL_HOME", str(home))
    return home
