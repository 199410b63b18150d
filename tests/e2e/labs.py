"""Lab files and checks shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def write_three_node_lab(directory: Path, name: str, subnet: str, **sections) -> Path:
    """The reference shape (rancher-host, kube-master, kube-worker), small enough for TCG."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "ssh_user": "labctl",
        "network": {"subnet": subnet, "domain": "lab.test"},
        "defaults": {"image": "debian-12", "vcpus": 1, "memory": "1GiB", "disk": "4GiB"},
        "nodes": [{"name": "rancher-host", "roles": ["rancher"]},
                  {"name": "kube-master", "roles": ["master", "etcd"]},
                  {"name": "kube-worker", "roles": ["worker"]}],
        **sections,
    }))
    return path


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """The process, after asserting it succeeded; its output is the failure message otherwise."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def on(labctl, lab_file: Path, node: str, command: str) -> subprocess.CompletedProcess[str]:
    """A shell command on a node through `labctl ssh`, whatever its exit status."""
    return labctl("ssh", str(lab_file), node, "--", "sh", "-c", command, timeout=300)
