"""Which inbound ports each node opens in its firewall, from the upstream port-requirement tables.

The tables depend on how Kubernetes is installed (kubernetes.distro); `none` uses the upstream
Kubernetes table, so a lab whose cluster is installed by hand still has the ports kubeadm needs.
Every row keeps the page it comes from; docs/provisioning.md shows the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.errors import InvalidInput
from labctl.kube import render
from labctl.lab import Lab, Node

KUBERNETES_PORTS = "https://kubernetes.io/docs/reference/networking/ports-and-protocols/"
RKE2_PORTS = "https://docs.rke2.io/install/requirements#inbound-network-rules"
RKE_PORTS = "https://rke.docs.rancher.com/os#ports"
RANCHER_PORTS = (
    "https://ranchermanager.docs.rancher.com/getting-started/installation-and-upgrade/"
    "installation-requirements/port-requirements#ports-for-rancher-server-nodes-on-rke"
)


@dataclass(frozen=True)
class PortRule:
    port: str  # "6443/tcp", "30000-32767/tcp"
    purpose: str
    source: str


def _rules(source: str, *rows: tuple[str, str]) -> tuple[PortRule, ...]:
    return tuple(PortRule(port, purpose, source) for port, purpose in rows)


CALICO_PORTS = "https://docs.tigera.io/calico/latest/getting-started/kubernetes/requirements#network-requirements"
FLANNEL_PORTS = "https://github.com/flannel-io/flannel/blob/master/Documentation/backends.md#vxlan"

RANCHER_SERVER = _rules(
    RANCHER_PORTS,
    ("80/tcp", "Rancher UI/API (HTTP, redirects to HTTPS)"),
    ("443/tcp", "Rancher agents, UI and API (HTTPS)"),
)

# Ports of the Kubernetes components, per distro and lab role.
TABLES: dict[str, dict[str, tuple[PortRule, ...]]] = {
    "kubeadm": {
        "master": _rules(
            KUBERNETES_PORTS,
            ("6443/tcp", "Kubernetes API server"),
            ("2379-2380/tcp", "etcd server client API"),
            ("10250/tcp", "kubelet API"),
            ("10259/tcp", "kube-scheduler"),
            ("10257/tcp", "kube-controller-manager"),
        ),
        "etcd": _rules(KUBERNETES_PORTS, ("2379-2380/tcp", "etcd server client API")),
        "worker": _rules(
            KUBERNETES_PORTS,
            ("10250/tcp", "kubelet API"),
            ("10256/tcp", "kube-proxy health"),
            ("30000-32767/tcp", "NodePort Services"),
        ),
        "rancher": RANCHER_SERVER,
    },
    "rke2": {
        "master": _rules(
            RKE2_PORTS,
            ("6443/tcp", "Kubernetes API"),
            ("9345/tcp", "RKE2 supervisor API"),
            ("10250/tcp", "kubelet metrics"),
            ("2379/tcp", "etcd client port"),
            ("2380/tcp", "etcd peer port"),
            ("2381/tcp", "etcd metrics port"),
            ("30000-32767/tcp", "NodePort port range"),
        ),
        "etcd": _rules(
            RKE2_PORTS,
            ("9345/tcp", "RKE2 supervisor API"),
            ("10250/tcp", "kubelet metrics"),
            ("2379/tcp", "etcd client port"),
            ("2380/tcp", "etcd peer port"),
            ("2381/tcp", "etcd metrics port"),
        ),
        "worker": _rules(
            RKE2_PORTS,
            ("10250/tcp", "kubelet metrics"),
            ("30000-32767/tcp", "NodePort port range"),
        ),
        "rancher": RANCHER_SERVER,
    },
    "rke": {
        "master": _rules(
            RKE_PORTS,
            ("80/tcp", "ingress controller (HTTP)"),
            ("443/tcp", "ingress controller (HTTPS)"),
            ("6443/tcp", "Kubernetes API server"),
            ("10250/tcp", "kubelet"),
            ("10254/tcp", "ingress controller health checks"),
            ("30000-32767/tcp", "NodePort port range"),
            ("30000-32767/udp", "NodePort port range"),
        ),
        "etcd": _rules(
            RKE_PORTS,
            ("2379/tcp", "etcd client requests"),
            ("2380/tcp", "etcd peer communication"),
            ("10250/tcp", "kubelet"),
        ),
        "worker": _rules(
            RKE_PORTS,
            ("80/tcp", "ingress controller (HTTP)"),
            ("443/tcp", "ingress controller (HTTPS)"),
            ("10250/tcp", "kubelet"),
            ("10254/tcp", "ingress controller health checks"),
            ("30000-32767/tcp", "NodePort port range"),
            ("30000-32767/udp", "NodePort port range"),
        ),
        "rancher": RANCHER_SERVER,
    },
}
TABLES["none"] = TABLES["kubeadm"]
# haproxy on the rancher node in front of several kubeadm masters (labctl.kube.kubeadm.balancer).
API_BALANCER = _rules(KUBERNETES_PORTS, ("6443/tcp", "Kubernetes API (haproxy in front of the masters)"))

# Ports of the pod network, on every Kubernetes node (not on a rancher-only node). A bare name
# such as "ipip" is an IP protocol, opened with firewalld's --add-protocol.
CNI_TABLES: dict[str, tuple[PortRule, ...]] = {
    "canal": _rules(RKE2_PORTS, ("8472/udp", "Canal (flannel VXLAN) overlay"), ("9099/tcp", "Canal health checks")),
    "calico": _rules(
        RKE2_PORTS,
        ("179/tcp", "Calico BGP"),
        ("4789/udp", "Calico VXLAN"),
        ("5473/tcp", "Calico Typha"),
        ("9098/tcp", "Calico Typha health checks"),
        ("9099/tcp", "Calico health checks"),
    ) + _rules(CALICO_PORTS, ("ipip", "Calico IP-in-IP encapsulation (IP protocol 4)")),
    "flannel": _rules(FLANNEL_PORTS, ("8472/udp", "flannel VXLAN (Linux kernel default port)")),
}
# RKE2 builds flannel with the IANA VXLAN port.
RKE2_FLANNEL = _rules(RKE2_PORTS, ("4789/udp", "flannel VXLAN"))
KUBERNETES_ROLES = ("master", "worker", "etcd")


def rules_for(lab: Lab, node: Node) -> list[PortRule]:
    """The upstream rules for the node's roles, then the lab file's extra ports, without repeats."""
    table = TABLES[lab.kubernetes.distro]
    firewall = lab.provisioning.firewall
    rules: list[PortRule] = []
    for role in node.roles:
        rules += table[role.value]
    if node.has_role(*KUBERNETES_ROLES):
        rules += _cni_rules(lab)
    balancer = render.api_balancer(lab)
    if balancer is not None and balancer.name == node.name:
        rules += API_BALANCER
    for role in node.roles:
        rules += [PortRule(p, "lab file", f"provisioning.firewall.role_ports.{role.value}")
                  for p in firewall.role_ports.get(role.value, ())]
    rules += [PortRule(p, "lab file", f"provisioning.firewall.node_ports.{node.name}")
              for p in firewall.node_ports.get(node.name, ())]
    unique: dict[str, PortRule] = {}
    for rule in rules:
        unique.setdefault(rule.port, rule)
    return list(unique.values())


def _cni_rules(lab: Lab) -> tuple[PortRule, ...]:
    cni = lab.kubernetes.cni_or_default
    if cni == "flannel" and lab.kubernetes.distro == "rke2":
        return RKE2_FLANNEL
    return CNI_TABLES[cni]


def ports_for(lab: Lab, node: Node) -> list[str]:
    """The node's inbound ports as firewalld writes them ('6443/tcp'), sorted."""
    return sorted({r.port for r in rules_for(lab, node) if "/" in r.port}, key=_port_key)


def protocols_for(lab: Lab, node: Node) -> list[str]:
    """IP protocols (such as ipip) the node accepts besides its ports."""
    return sorted({r.port for r in rules_for(lab, node) if "/" not in r.port})


def check_node_ports(lab: Lab) -> None:
    """Reject node_ports entries that name no node of the lab."""
    known = {n.name for n in lab.nodes}
    unknown = sorted(set(lab.provisioning.firewall.node_ports) - known)
    if unknown:
        raise InvalidInput(
            f"provisioning.firewall.node_ports names no node {', '.join(unknown)}",
            resolution=f"use node names of lab {lab.name}: {', '.join(sorted(known))}",
        )


def _port_key(port: str) -> tuple[str, int]:
    number, proto = port.split("/")
    return proto, int(number.split("-")[0])
