"""Inventory and ssh-config output, checked with Ansible's and OpenSSH's own parsers."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from labctl import inventory
from labctl.keys import ensure_keys
from tests.unit.helpers import make_lab

ansible_inventory = shutil.which("ansible-inventory")
needs_ansible = pytest.mark.skipif(ansible_inventory is None, reason="ansible-core is in the test extra: pip install -e .[test]")


@pytest.fixture
def lab():
    return make_lab(nodes=[
        {"name": "rancher-host", "roles": ["rancher"]},
        {"name": "kube-master", "roles": ["master", "etcd"]},
        {"name": "kube-worker", "roles": ["worker"]},
        {"name": "kube-worker2", "roles": ["worker"]},
    ])


@pytest.fixture
def keys(lab, tmp_path):
    return ensure_keys(lab, tmp_path / "lab dir" / "ssh")


def ansible_list(tmp_path, text: str, suffix: str) -> dict:
    path = tmp_path / f"inventory{suffix}"
    path.write_text(text)
    out = subprocess.run([ansible_inventory, "-i", str(path), "--list"], capture_output=True, check=True,
                         env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})
    return json.loads(out.stdout)


def normalized(document: dict) -> dict:
    """Lists sorted; newer Ansible adds a `profile` note to _meta, which is not inventory data."""
    return {k: ({kk: sorted(vv) if isinstance(vv, list) else vv for kk, vv in v.items()} if k != "_meta"
                else {"hostvars": v["hostvars"]})
            for k, v in document.items()}


def test_groups_follow_kubespray(lab):
    assert inventory.groups(lab) == {
        "kube_control_plane": ["kube-master"], "etcd": ["kube-master"],
        "kube_node": ["kube-worker", "kube-worker2"], "rancher": ["rancher-host"],
    }


def test_etcd_on_control_plane_when_no_node_has_the_etcd_role():
    lab = make_lab(nodes=[{"name": "m", "roles": ["master"]}, {"name": "w", "roles": ["worker"]}])
    assert inventory.groups(lab)["etcd"] == ["m"]


@needs_ansible
def test_ansible_reads_the_ini_with_groups_and_connection_vars(lab, keys, tmp_path):
    listed = ansible_list(tmp_path, inventory.ansible_ini(lab, keys), ".ini")
    assert listed["kube_control_plane"]["hosts"] == ["kube-master"]
    assert listed["etcd"]["hosts"] == ["kube-master"]
    assert sorted(listed["kube_node"]["hosts"]) == ["kube-worker", "kube-worker2"]
    assert sorted(listed["k8s_cluster"]["children"]) == ["kube_control_plane", "kube_node"]
    assert listed["rancher"]["hosts"] == ["rancher-host"]
    worker = listed["_meta"]["hostvars"]["kube-worker"]
    assert worker["ansible_host"] == str(lab.node("kube-worker").ip)
    assert worker["ansible_user"] == "labctl"
    assert worker["ansible_ssh_private_key_file"] == str(keys.private_key_path)
    assert f"UserKnownHostsFile={keys.known_hosts_path}" in worker["ansible_ssh_common_args"]


@needs_ansible
def test_json_is_what_ansible_lists_for_the_ini(lab, keys, tmp_path):
    from_ini = ansible_list(tmp_path, inventory.ansible_ini(lab, keys), ".ini")
    ours = json.loads(inventory.ansible_json(lab, keys))
    assert normalized(ours) == normalized(from_ini)


def test_ssh_config_parses_and_checks_host_keys(lab, keys, tmp_path):
    config = tmp_path / "config"
    config.write_text(inventory.ssh_config(lab, keys))
    out = subprocess.run(["ssh", "-G", "-F", str(config), "kube-worker"], capture_output=True, text=True, check=True).stdout
    settings = dict(line.split(" ", 1) for line in out.splitlines())
    assert settings["hostname"] == str(lab.node("kube-worker").ip)
    assert settings["user"] == "labctl"
    assert settings["stricthostkeychecking"] == "true"
    assert settings["userknownhostsfile"] == str(keys.known_hosts_path)
    assert settings["identityfile"] == str(keys.private_key_path)
    by_fqdn = subprocess.run(["ssh", "-G", "-F", str(config), "kube-worker.lab.test"], capture_output=True,
                             text=True, check=True).stdout
    assert f"hostname {lab.node('kube-worker').ip}" in by_fqdn
