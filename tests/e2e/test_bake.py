"""Issue: provisioning, `labctl image bake`. Packages installed once into qcow2 layers; `up` starts
new nodes from them, and the playbooks then find every package installed.

The layers live in the session's images pool, so the module removes them at the end: other
modules must provision from the plain base image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.labs import ok, on, write_three_node_lab

LAB_NAME = "e2e-bake"
NODES = ("rancher-host", "kube-master", "kube-worker")


@pytest.fixture(scope="module")
def lab_file(labctl_home: Path) -> Path:
    return write_three_node_lab(labctl_home, LAB_NAME, "192.168.153.0/24", packages={"source": "local"})


@pytest.fixture(scope="module")
def baked(netns, labctl, lab_file, debian_image, host_labctl):
    host_labctl("repo-build", str(lab_file))
    start = time.monotonic()
    layers = json.loads(ok(labctl("image", "bake", str(lab_file), "--json", timeout=3000)).stdout)
    yield {"layers": layers, "seconds": time.monotonic() - start}
    labctl("down", str(lab_file), timeout=300)
    for layer in json.loads(ok(labctl("image", "layers", "--json")).stdout):
        ok(labctl("image", "rm", layer["name"]))


@pytest.fixture(scope="module")
def up_from_layers(labctl, lab_file, baked):
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3000))
    return {"up": up, "seconds": time.monotonic() - start}


def test_bake_makes_one_layer_per_package_set(baked):
    layers = baked["layers"]
    served = sorted(node for layer in layers for node in layer["nodes"])
    assert served == sorted(NODES), "every node has exactly one layer"
    for layer in layers:
        assert layer["name"].startswith("baked-") and layer["seconds"] is not None
        assert "firewalld" in layer["packages"]
        assert layer["size"] > 50 * 2**20, "the packages are in the layer"


def test_baking_again_reuses_the_layers(labctl, lab_file, baked):
    start = time.monotonic()
    again = json.loads(ok(labctl("image", "bake", str(lab_file), "--json", timeout=600)).stdout)
    assert [layer["name"] for layer in again] == [layer["name"] for layer in baked["layers"]]
    assert all(layer["seconds"] is None for layer in again)
    assert time.monotonic() - start < 60


def test_up_starts_every_node_from_its_layer_and_installs_nothing(labctl, labctl_home, lab_file, up_from_layers):
    assert "disk over a baked layer" in up_from_layers["up"].stderr
    for node in NODES:
        ok(on(labctl, lab_file, node, "dpkg-query -W -f='${Status}' firewalld | grep -q 'install ok installed'"))
        log = (labctl_home / "labs" / LAB_NAME / "logs" / node / "firewalld.log").read_text()
        assert "firewalld is already the newest version" in log, log[-2000:]
        assert "Unpacking" not in log, "the package came with the layer, not from this run"


def test_layers_carry_nothing_of_the_bake_vm(labctl, lab_file, up_from_layers):
    machine_ids = {ok(on(labctl, lab_file, node, "cat /etc/machine-id")).stdout.strip() for node in NODES}
    assert len(machine_ids) == len(NODES), "kube-master and kube-worker share a layer, not a machine id"
    for node in NODES:
        assert ok(on(labctl, lab_file, node, "hostname")).stdout.strip() == node
        assert "layer-" not in ok(on(labctl, lab_file, node, "cat /etc/hosts")).stdout
        # The bake VM's user went with its key: the lab's key is the only one let in.
        assert ok(on(labctl, lab_file, node, "wc -l < ~/.ssh/authorized_keys")).stdout.strip() == "1"
        assert ok(on(labctl, lab_file, node, "cloud-init status")).stdout.split()[-1] == "done"


def test_a_provisioned_node_reboots_with_cloud_init_and_firewalld(labctl, lab_file, up_from_layers):
    """firewalld and cloud-init form a boot ordering cycle unless firewalld waits for the network."""
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    before = ok(on(labctl, lab_file, "kube-worker", boot_id)).stdout
    on(labctl, lab_file, "kube-worker", "sudo systemctl reboot")
    deadline = time.monotonic() + 900
    while (probe := on(labctl, lab_file, "kube-worker", f"{boot_id}; cloud-init status --wait >/dev/null")).returncode \
            or probe.stdout.splitlines()[:1] == before.splitlines():
        assert time.monotonic() < deadline, f"kube-worker did not come back: {probe.stderr}"
        time.sleep(10)
    ok(on(labctl, lab_file, "kube-worker", "test \"$(sudo firewall-cmd --state)\" = running"))
    journal = ok(on(labctl, lab_file, "kube-worker", "sudo journalctl -b -o cat")).stdout
    assert "ordering cycle" not in journal
    assert "Job cloud-init.service/start deleted" not in journal
    ok(on(labctl, lab_file, "kube-worker", "systemctl is-active cloud-init.service"))


def test_a_layer_in_use_is_not_removed(labctl, lab_file, up_from_layers, baked):
    name = baked["layers"][0]["name"]
    refused = labctl("image", "rm", name)
    assert refused.returncode == 2 and "lab disk" in refused.stderr
    listed = {layer["name"]: layer for layer in json.loads(ok(labctl("image", "layers", "--json")).stdout)}
    assert listed[name]["used_by"], "the running lab's disks are backed by it"
