"""Baked layers: a node's packages installed once and kept as a qcow2 layer over its base image.

`labctl image bake LAB` boots one throw-away VM per distinct (image, packages) pair of the lab,
installs the packages from the lab's own package source, removes what belongs to that one
machine (its user, host keys, cloud-init state, machine id, apt lists and sources) and keeps the
VM's disk, a qcow2 file whose backing file is the base image, in the images pool. `up` backs a
new node with the layer whose key matches it: its provisioning steps then find their packages
installed and only configure. The key covers the base image, the package source and the
package list, so a layer never serves a node it was not made for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from dataclasses import dataclass

from labctl import names
from labctl.lab import Lab, parse_lab
from labctl.provision.playbook import MARKER_DIR, Playbook, RenderedStep

# Throw-away bake labs take the first of these no libvirt network uses.
SUBNETS = [ipaddress.IPv4Network(f"192.168.{octet}.0/24") for octet in range(240, 255)]
STEP = "bake-packages"


@dataclass(frozen=True)
class Layer:
    key: str
    image: str
    base_volume: str
    packages: tuple[str, ...]
    disk: int  # the smallest disk of the nodes it serves: an overlay cannot be smaller than its backing
    nodes: tuple[str, ...]

    @property
    def volume(self) -> str:
        return names.layer_volume(self.key)


def source_id(lab: Lab) -> str:
    """The package source as it decides what gets installed (versions differ between sources)."""
    packages = lab.packages
    return f"mirror {packages.mirror_url}" if packages.source == "mirror" else packages.source


def layer_key(base_volume: str, source: str, packages: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join([base_volume, source, *packages]).encode()).hexdigest()[:16]


def plan(lab: Lab, base_volumes: dict[str, str], packages: dict[str, tuple[str, ...]]) -> list[Layer]:
    """The layers the lab's nodes can use: one per distinct (base image, packages) pair."""
    groups: dict[str, list] = {}
    for node in lab.nodes:
        if packages[node.name]:
            key = layer_key(base_volumes[node.image], source_id(lab), packages[node.name])
            groups.setdefault(key, []).append(node)
    return [
        Layer(key, nodes[0].image, base_volumes[nodes[0].image], packages[nodes[0].name],
              min(n.disk for n in nodes), tuple(n.name for n in nodes))
        for key, nodes in groups.items()
    ]


def bake_lab(lab: Lab, layers: list[Layer], subnet: ipaddress.IPv4Network) -> Lab:
    """The throw-away lab that bakes the layers: one node per layer, the lab's package source.

    Its provisioning is off, so its own nodes never start from a baked layer.
    """
    nodes = []
    for index, layer in enumerate(layers, 1):
        model = lab.node(layer.nodes[0])
        nodes.append({"name": f"layer-{index}", "image": layer.image, "roles": [r.value for r in model.roles],
                      "vcpus": model.vcpus, "memory": model.memory, "disk": layer.disk})
    digest = hashlib.sha256("".join(layer.key for layer in layers).encode()).hexdigest()[:8]
    return parse_lab({
        "name": f"bake-{digest}", "ssh_user": lab.ssh_user, "accel": lab.accel.value,
        "network": {"subnet": str(subnet), "domain": lab.network.domain},
        "nodes": nodes,
        "packages": lab.packages.model_dump(mode="json"),
        "provisioning": {"enabled": False, "retries": lab.provisioning.retries,
                         "step_timeout": lab.provisioning.step_timeout},
        "timeouts": {"ready": lab.timeouts.ready},
    }, source="the bake lab labctl derived")


def install_step(playbook: Playbook, layer: Layer) -> RenderedStep:
    script = (f"{playbook.prelude}\n# step: {STEP}\n"
              f"apt_install {' '.join(shlex.quote(p) for p in layer.packages)}\n"
              "firewalld_boot_order\napt-get clean\n")
    return RenderedStep(STEP, script, layer.packages, layer.key, None)


def cleanup_script(ssh_user: str) -> str:
    """Remove what belongs to the bake VM alone, then power off once the SSH session has ended."""
    user = shlex.quote(ssh_user)
    return f"""set -e
rm -f /etc/apt/sources.list.d/labctl.list
if [ -d /etc/apt/labctl-disabled ]; then
  for f in /etc/apt/labctl-disabled/*; do
    [ -e "$f" ] || continue
    case "${{f##*/}}" in sources.list) mv "$f" /etc/apt/ ;; *) mv "$f" /etc/apt/sources.list.d/ ;; esac
  done
  rmdir /etc/apt/labctl-disabled
fi
rm -rf /var/lib/apt/lists/* {shlex.quote(MARKER_DIR)}
cloud-init clean --logs --seed
rm -f /etc/ssh/ssh_host_* /var/lib/docker/engine-id /var/lib/dbus/machine-id
rm -rf /var/log/journal/*
truncate -s 0 /etc/machine-id
systemd-run --no-block --on-active=3 /bin/sh -c \\
  'userdel --force --remove {user}; rm -f /etc/sudoers.d/90-cloud-init-users; sync; systemctl poweroff'
"""
