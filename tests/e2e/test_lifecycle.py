"""Issue: foundation. The real CLI brings up three real guests, runs commands on them, tears down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.labs import ok, write_three_node_lab

LAB_NAME = "e2e-life"
NODES = ("rancher-host", "kube-master", "kube-worker")


@pytest.fixture(scope="module")
def lab_file(labctl_home: Path) -> Path:
    return write_three_node_lab(labctl_home, LAB_NAME, "192.168.150.0/24", provisioning={"enabled": False})


def test_up_status_ssh_and_down_leave_nothing(netns, labctl, labctl_home, lab_file, debian_image):
    ok(labctl("up", str(lab_file), timeout=1500))

    status = json.loads(ok(labctl("status", str(lab_file), "--json")).stdout)
    assert [s["name"] for s in status] == list(NODES)
    assert {s["state"] for s in status} == {"running"}
    assert [s["ip"] for s in status] == ["192.168.150.11", "192.168.150.12", "192.168.150.13"]
    assert {(s["vcpus"], s["memory_mib"]) for s in status} == {(1, 1024)}

    for node in NODES:
        assert ok(labctl("ssh", str(lab_file), node, "--", "hostname")).stdout.strip() == node
        others = [n for n in NODES if n != node]
        for other in others:
            # The name resolves through the lab network's DNS, and the other node's sshd answers.
            reach = labctl("ssh", str(lab_file), node, "--",
                           f"getent hosts {other} && timeout 5 bash -c '</dev/tcp/{other}/22'")
            assert reach.returncode == 0, reach.stdout + reach.stderr
    assert labctl("ssh", str(lab_file), "kube-worker", "--", "false").returncode == 1
    assert labctl("ssh", str(lab_file), "kube-worker", "--", "sh", "-c", "exit 7").returncode == 7

    running_before = netns.virsh("list").stdout  # domain ids change if a domain restarts
    again = ok(labctl("up", str(lab_file), timeout=300))
    assert again.stderr.count("already up") == len(NODES), again.stderr
    assert netns.virsh("list").stdout == running_before

    ok(labctl("down", str(lab_file), timeout=300))
    assert [d for d in netns.virsh("list", "--all", "--name").stdout.split() if LAB_NAME in d] == []
    assert [n for n in netns.virsh("net-list", "--all", "--name").stdout.split() if LAB_NAME in n] == []
    assert [p for p in netns.virsh("pool-list", "--all", "--name").stdout.split() if LAB_NAME in p] == []
    assert not (labctl_home / "labs" / LAB_NAME).exists()
    assert not (labctl_home / "storage" / LAB_NAME).exists()
    images_pool = netns.virsh("vol-list", "labctl-images").stdout
    assert LAB_NAME not in images_pool and "kube-" not in images_pool


def test_bad_lab_file_exits_2_before_touching_anything(netns, labctl, labctl_home):
    bad = labctl_home / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  - name: n1\n    roles: [master]\n    memroy: 2GiB\n")
    proc = labctl("up", str(bad))
    assert proc.returncode == 2
    assert "bad.yaml" in proc.stderr and "memroy" in proc.stderr and "fix:" in proc.stderr
    assert "labctl-bad" not in netns.virsh("net-list", "--all", "--name").stdout
