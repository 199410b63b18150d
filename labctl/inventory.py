"""The lab as an Ansible inventory (kubespray's group names), as JSON, or as an OpenSSH config block."""

from __future__ import annotations

import json
from pathlib import Path

from labctl.keys import LabKeys
from labctl.lab import Lab, Node

# kubespray's groups; etcd runs on the control plane when no node has the etcd role (stacked etcd).
CONTROL_PLANE = "kube_control_plane"
ETCD = "etcd"
WORKERS = "kube_node"
CLUSTER = "k8s_cluster"
RANCHER = "rancher"


def groups(lab: Lab) -> dict[str, list[str]]:
    """{group: [node names]}, every group present even when empty, in lab file order."""
    etcd = lab.nodes_with("etcd") or lab.nodes_with("master")
    return {
        CONTROL_PLANE: [n.name for n in lab.nodes_with("master")],
        ETCD: [n.name for n in etcd],
        WORKERS: [n.name for n in lab.nodes_with("worker")],
        RANCHER: [n.name for n in lab.nodes_with("rancher")],
    }


def host_vars(lab: Lab, node: Node, keys: LabKeys) -> dict[str, str]:
    return {
        "ansible_host": str(node.ip),
        "ansible_user": lab.ssh_user,
        "ansible_ssh_private_key_file": str(keys.private_key_path),
        "ip": str(node.ip),
    }


def ssh_common_args(keys: LabKeys) -> str:
    return f"-o UserKnownHostsFile={keys.known_hosts_path} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"


def ansible_ini(lab: Lab, keys: LabKeys) -> str:
    lines = [f"# Ansible inventory of labctl lab {lab.name}; kubespray's group names."]
    lines.append("[all]")
    for node in lab.nodes:
        hv = " ".join(f"{k}={_ini_value(v)}" for k, v in host_vars(lab, node, keys).items())
        lines.append(f"{node.name} {hv}")
    for group, members in groups(lab).items():
        lines += ["", f"[{group}]", *members]
    lines += ["", f"[{CLUSTER}:children]", CONTROL_PLANE, WORKERS]
    lines += ["", "[all:vars]", f"ansible_ssh_common_args={_ini_value(ssh_common_args(keys))}"]
    return "\n".join(lines) + "\n"


def _ini_value(value: str) -> str:
    return f"'{value}'" if any(c.isspace() for c in value) else value


def ansible_json(lab: Lab, keys: LabKeys) -> str:
    """The shape `ansible-inventory --list` prints, so scripts and Ansible read the same thing."""
    members = groups(lab)
    listed = {name: {"hosts": hosts} for name, hosts in members.items() if hosts}
    listed[CLUSTER] = {"children": [g for g in (CONTROL_PLANE, WORKERS) if members[g]]}
    grouped = {h for hosts in members.values() for h in hosts}
    ungrouped = [n.name for n in lab.nodes if n.name not in grouped]
    if ungrouped:
        listed["ungrouped"] = {"hosts": ungrouped}
    # Ansible always lists the implicit group `ungrouped`, even empty.
    top = ["ungrouped"] + [g for g in (ETCD, RANCHER) if members[g]] + [CLUSTER]
    document = {
        "_meta": {"hostvars": {
            n.name: {**host_vars(lab, n, keys), "ansible_ssh_common_args": ssh_common_args(keys)} for n in lab.nodes
        }},
        "all": {"children": top},
        **listed,
    }
    return json.dumps(document, indent=2) + "\n"


def ssh_config(lab: Lab, keys: LabKeys) -> str:
    """Host blocks for OpenSSH: `ssh kube-master` with the lab's key and host keys, strictly checked."""
    blocks = [f"# labctl lab {lab.name}"]
    for node in lab.nodes:
        blocks.append("\n".join([
            f"Host {node.name} {lab.fqdn(node)}",
            f"    HostName {node.ip}",
            f"    User {lab.ssh_user}",
            f"    IdentityFile {_ssh_path(keys.private_key_path)}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {_ssh_path(keys.known_hosts_path)}",
            "    StrictHostKeyChecking yes",
        ]))
    return "\n\n".join(blocks) + "\n"


def _ssh_path(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text
