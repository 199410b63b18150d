"""What works with what: the one table labctl checks a lab's `kubernetes:` section against.

Every entry names its source. When upstream moves on, edit this file (and docs/kubernetes.md,
which shows the same table) rather than the checks that read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Minor = tuple[int, int]

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def minor_of(version: str) -> Minor:
    """'v1.35.3', '1.35.3', 'v1.35.3+rke2r3', 'v1.32.5-rancher1-1' -> (1, 35)."""
    match = _VERSION_RE.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a version such as v1.35.3")
    return int(match.group(1)), int(match.group(2))


def patch_of(version: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a version such as v1.35.3")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def show(minor: Minor) -> str:
    return f"{minor[0]}.{minor[1]}"


# Kubernetes minors the kubeadm path installs. The floor is the oldest minor published on
# pkgs.k8s.io (the legacy apt.kubernetes.io repository is frozen); the ceiling is the newest
# released minor at the time this table was written.
# Source: https://kubernetes.io/blog/2023/08/15/pkgs-k8s-io-introduction/ and
# https://kubernetes.io/releases/
KUBEADM_MINORS: tuple[Minor, Minor] = ((1, 24), (1, 37))

# kubeadm config API: v1beta4 is read from Kubernetes 1.31 on; v1beta3 before that.
# Source: https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/ (changes: v1.31)
KUBEADM_V1BETA4_FROM: Minor = (1, 31)

# kube-proxy nftables mode: alpha 1.29 (feature gate), beta 1.31, GA 1.33.
# Source: https://github.com/kubernetes/enhancements/blob/master/keps/sig-network/3866-nftables-proxy/kep.yaml
NFTABLES_BETA: Minor = (1, 31)
NFTABLES_GA: Minor = (1, 33)


@dataclass(frozen=True)
class RancherSupport:
    minor: Minor
    kubernetes: tuple[Minor, Minor]
    manages_rke1: bool
    source: str


# Kubernetes minors each Rancher minor supports, for the cluster Rancher runs on and the
# clusters it manages (imported ones included).
RANCHER: tuple[RancherSupport, ...] = (
    RancherSupport((2, 9), ((1, 27), (1, 30)), True, "https://github.com/rancher/rancher/issues/45882"),
    RancherSupport((2, 10), ((1, 28), (1, 31)), True, "https://github.com/rancher/rancher/issues/47591"),
    RancherSupport((2, 11), ((1, 30), (1, 32)), True, "https://github.com/rancher/rancher/issues/48628"),
    # RKE1 reached end of life on 2025-07-31; Rancher 2.12 and later no longer manage RKE1
    # clusters (Rancher v2.11.3 release notes).
    RancherSupport((2, 12), ((1, 31), (1, 33)), False, "https://github.com/rancher/rancher/issues/49679"),
    RancherSupport((2, 13), ((1, 32), (1, 34)), False, "https://github.com/rancher/rancher/issues/51253"),
    RancherSupport((2, 14), ((1, 33), (1, 35)), False, "https://github.com/rancher/rancher/issues/53764"),
    RancherSupport((2, 15), ((1, 34), (1, 36)), False, "https://github.com/rancher/rancher/issues/55306"),
)


def rancher_support(version: str) -> RancherSupport | None:
    minor = minor_of(version)
    return next((row for row in RANCHER if row.minor == minor), None)


@dataclass(frozen=True)
class CertManagerSupport:
    minor: Minor
    kubernetes: tuple[Minor, Minor]


# Source: https://cert-manager.io/docs/releases/ (supported releases table)
CERT_MANAGER: tuple[CertManagerSupport, ...] = (
    CertManagerSupport((1, 18), ((1, 29), (1, 33))),
    CertManagerSupport((1, 19), ((1, 31), (1, 35))),
    CertManagerSupport((1, 20), ((1, 32), (1, 35))),
    CertManagerSupport((1, 21), ((1, 33), (1, 36))),
)


def cert_manager_support(version: str) -> CertManagerSupport | None:
    minor = minor_of(version)
    return next((row for row in CERT_MANAGER if row.minor == minor), None)


# RKE1 releases and the exact Kubernetes versions each shipped (`rke config --list-version --all`,
# as printed in each release's notes). RKE1 accepts only these strings in cluster.yml.
# Sources: https://github.com/rancher/rke/releases/tag/<release>
RKE_RELEASES: dict[str, tuple[str, ...]] = {
    "v1.3.24": (
        "v1.18.20-rancher1-3", "v1.19.16-rancher2-1", "v1.20.15-rancher2-2", "v1.21.14-rancher1-1",
        "v1.22.17-rancher1-2", "v1.23.16-rancher2-3", "v1.24.17-rancher1-1",
    ),
    "v1.4.7": ("v1.23.16-rancher2-3", "v1.24.15-rancher1-1", "v1.25.11-rancher1-1", "v1.26.6-rancher1-1"),
    "v1.8.3": ("v1.30.12-rancher1-1", "v1.31.8-rancher1-1", "v1.32.4-rancher1-1"),
    "v1.8.4": ("v1.30.13-rancher1-1", "v1.31.9-rancher1-1", "v1.32.5-rancher1-1"),
}
RKE_DEFAULT_RELEASE = "v1.8.4"
RKE_EOL = "2025-07-31"

# Defaults: pinned releases that exist upstream and fit together in the tables above.
# Kubernetes v1.35.3: https://github.com/rancher/rke2/releases/tag/v1.35.3%2Brke2r3 carries it.
DEFAULT_VERSIONS = {
    "kubeadm": "v1.35.3",
    "rke2": "v1.34.6+rke2r3",  # https://github.com/rancher/rke2/releases/tag/v1.34.6%2Brke2r3
    "rke": "v1.32.5-rancher1-1",
}
DEFAULT_RANCHER = "v2.14.1"
DEFAULT_CERT_MANAGER = "v1.21.2"
# The single-node RKE2 the rancher host runs for `rancher.mode: helm`.
DEFAULT_RANCHER_CLUSTER = "v1.34.6+rke2r3"
DEFAULT_HELM = "v3.19.0"

# canal everywhere: it is what the provisioning firewall tables open ports for (8472/udp, 9099/tcp).
DEFAULT_CNI = {"kubeadm": "canal", "rke2": "canal", "rke": "canal"}

# CNI manifests the kubeadm path applies (pinned; the same files go into an artifacts dir).
# Calico/Canal: https://docs.tigera.io/calico/latest/getting-started/kubernetes/self-managed-onprem/onpremises
# Flannel: https://github.com/flannel-io/flannel#deploying-flannel-with-kubectl
CNI_MANIFESTS = {
    "calico": "https://raw.githubusercontent.com/projectcalico/calico/v3.31.2/manifests/calico.yaml",
    "canal": "https://raw.githubusercontent.com/projectcalico/calico/v3.31.2/manifests/canal.yaml",
    "flannel": "https://github.com/flannel-io/flannel/releases/download/v0.27.4/kube-flannel.yml",
}
# The pod network written into those manifests, replaced with the lab's pod_subnet.
CNI_MANIFEST_POD_CIDR = {"calico": "192.168.0.0/16", "canal": "10.244.0.0/16", "flannel": "10.244.0.0/16"}
