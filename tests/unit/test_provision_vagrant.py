"""The Vagrantfile parses and renders every node's provisioning script (`vagrant validate`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("lab", ["inventories/default.yaml", "inventories/rancher-lab.yaml"])
def test_vagrant_validate(lab, tmp_path):
    env = {**os.environ, "LAB": lab, "VAGRANT_HOME": str(tmp_path / "vagrant"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["vagrant", "validate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
