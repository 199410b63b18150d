"""Checks of the `kubernetes:` section that need the lab's nodes."""

from __future__ import annotations

from labctl.errors import InvalidInput
from labctl.lab import Lab, Role

_MIN_MEMORY_MIB = {"kubeadm": 1700, "rke2": 3500, "rke": 1700}
_RANCHER_MIN_MEMORY_MIB = 3500


def check_lab(lab: Lab, *, source: str = "lab file") -> None:
    """Raise InvalidInput naming `kubernetes.<field>` and the fix if the nodes cannot carry the section."""
    kube = lab.kubernetes
    problems: list[str] = []
    masters = lab.nodes_with(Role.master)
    ranchers = lab.nodes_with(Role.rancher)
    if kube.distro != "none":
        if not masters:
            problems.append(
                f"kubernetes.distro {kube.distro}: no node has role master; "
                "fix: give one node `roles: [master]`, or set distro: none"
            )
        floor = _MIN_MEMORY_MIB[kube.distro]
        for node in masters:
            if node.memory_mib < floor:
                problems.append(
                    f"kubernetes.distro {kube.distro}: master {node.name} has {node.memory_mib} MiB; "
                    f"fix: give it memory of at least {floor}MiB"
                )
        if kube.distro == "rke" and not ranchers:
            problems.append(
                "kubernetes.distro rke: `rke up` runs from the rancher-role node and there is none; "
                "fix: add a node with `roles: [rancher]`"
            )
        if kube.distro == "rke" and not lab.nodes_with(Role.worker):
            # `rke up` refuses a cluster without a worker plane host; it taints the nodes without the role.
            problems.append(
                "kubernetes.distro rke: RKE needs a worker plane host and no node has role worker; "
                "fix: add `worker` to a node's roles, e.g. `roles: [master, worker]`"
            )
        if len(masters) > 1 and kube.distro == "kubeadm" and not ranchers:
            problems.append(
                f"kubernetes.distro kubeadm with {len(masters)} masters needs a load balancer for the API, "
                "which labctl runs on the rancher-role node; fix: add a node with `roles: [rancher]`"
            )
    if kube.rancher.enabled:
        if len(ranchers) != 1:
            problems.append(
                f"kubernetes.rancher.enabled: Rancher ({kube.rancher.mode} mode) goes on exactly one "
                f"rancher-role node, found {len(ranchers)}; fix: give exactly one node `roles: [rancher]`"
            )
        for node in ranchers:
            if node.has_role(Role.master, Role.worker, Role.etcd):
                problems.append(
                    f"kubernetes.rancher.enabled: {node.name} is both the Rancher host and a cluster node; "
                    "fix: give Rancher its own node with only `roles: [rancher]`"
                )
            if node.memory_mib < _RANCHER_MIN_MEMORY_MIB:
                problems.append(
                    f"kubernetes.rancher.enabled: {node.name} has {node.memory_mib} MiB; "
                    f"fix: give it memory of at least {_RANCHER_MIN_MEMORY_MIB}MiB"
                )
    if problems:
        raise InvalidInput(
            f"{source}: the kubernetes section does not fit the nodes ({len(problems)} problem"
            f"{'s' * (len(problems) > 1)})",
            details="\n".join(f"  {problem}" for problem in problems),
        )


def warnings(lab: Lab) -> list[str]:
    """Node layouts that work but are worth telling the user; `labctl up` prints these."""
    masters = lab.nodes_with(Role.master)
    if lab.kubernetes.distro in ("kubeadm", "rke2") and len(masters) > 1 and len(masters) % 2 == 0:
        # https://docs.rke2.io/install/ha: quorum of n members is n/2+1.
        return [f"{len(masters)} masters run {len(masters)} etcd members, whose quorum is {len(masters) // 2 + 1}: "
                f"they survive no more failed masters than {len(masters) - 1} would; an odd number is recommended"]
    return []
