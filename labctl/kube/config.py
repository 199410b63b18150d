"""The `kubernetes:` section of a lab file.

Everything that can be checked without nodes is checked here, at load time, against the
compatibility table in labctl/kube/compat.py. Checks that need the node list live in
labctl.kube.checks.check_lab.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labctl.kube import compat

_MOVING_TAGS = {"latest", "stable", "testing"}
_VERSION_PATTERNS = {
    "kubeadm": (re.compile(r"^v?\d+\.\d+\.\d+$"), "v1.35.3"),
    "rke2": (re.compile(r"^v\d+\.\d+\.\d+\+rke2r\d+$"), "v1.34.6+rke2r3"),
    "rke": (re.compile(r"^v\d+\.\d+\.\d+-rancher\d+-\d+$"), "v1.32.5-rancher1-1"),
}
_SIZE_RE = re.compile(r"^\d+(Ki|Mi|Gi)$")


def _reject_moving(value: str | None) -> str | None:
    if value is not None and value.strip().lower() in _MOVING_TAGS:
        raise ValueError(f"{value!r} moves over time; pin a release so the lab is reproducible")
    return value


def _in_range(minor: compat.Minor, bounds: tuple[compat.Minor, compat.Minor]) -> bool:
    return bounds[0] <= minor <= bounds[1]


def _range(bounds: tuple[compat.Minor, compat.Minor]) -> str:
    return f"{compat.show(bounds[0])} to {compat.show(bounds[1])}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubeletSettings(_Strict):
    max_pods: int = Field(110, ge=10, le=1000, description="pods per node, 10 to 1000 (kubelet maxPods)")
    container_log_max_size: str = Field(
        "10Mi", description="size at which a container log is rotated, such as '1Mi' or '10Mi'"
    )
    container_log_max_files: int = Field(
        5, ge=2, le=100, description="rotated log files kept per container, 2 to 100"
    )

    @field_validator("container_log_max_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE_RE.match(value):
            raise ValueError(f"{value!r} is not a kubelet quantity; write it like '1Mi' or '10Mi'")
        return value


class RancherConfig(_Strict):
    enabled: bool = Field(False, description="install Rancher on the rancher-role node: true or false")
    version: str = Field(compat.DEFAULT_RANCHER, description="a pinned Rancher release such as v2.14.1")
    cert_manager_version: str = Field(
        compat.DEFAULT_CERT_MANAGER, description="a pinned cert-manager release such as v1.21.2 (helm mode)"
    )
    hostname: str | None = Field(
        None, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$",
        description="DNS name of the Rancher UI; default rancher.<lab>.<network.domain>",
    )
    mode: Literal["helm", "docker"] = Field(
        "helm", description="helm (own single-node RKE2 on the rancher host) or docker (single container)"
    )
    cluster_version: str = Field(
        compat.DEFAULT_RANCHER_CLUSTER,
        description="RKE2 release of Rancher's own single-node cluster in helm mode, such as v1.34.6+rke2r3",
    )
    import_cluster: bool = Field(True, description="import the lab's cluster into Rancher: true or false")
    artifacts: Path | None = Field(
        None, description="directory with Rancher's helm, charts and image tarballs for an air-gapped install"
    )

    @field_validator("version", "cert_manager_version", "cluster_version")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return _reject_moving(value)

    @model_validator(mode="after")
    def _supported(self) -> RancherConfig:
        support = compat.rancher_support(self.version)
        if support is None:
            known = ", ".join(f"{compat.show(r.minor)}.x" for r in compat.RANCHER)
            raise ValueError(f"kubernetes.rancher.version {self.version}: labctl knows Rancher {known}; pick one of those")
        if not _VERSION_PATTERNS["rke2"][0].match(self.cluster_version):
            raise ValueError(f"kubernetes.rancher.cluster_version {self.cluster_version!r} is not an RKE2 release such as v1.34.6+rke2r3")
        if self.mode == "helm":
            local = compat.minor_of(self.cluster_version)
            if not _in_range(local, support.kubernetes):
                raise ValueError(
                    f"kubernetes.rancher.cluster_version {self.cluster_version}: Rancher {self.version} runs on Kubernetes "
                    f"{_range(support.kubernetes)} ({support.source}); pick an RKE2 release in that range"
                )
            manager = compat.cert_manager_support(self.cert_manager_version)
            if manager is None:
                known = ", ".join(f"v{compat.show(r.minor)}.x" for r in compat.CERT_MANAGER)
                raise ValueError(f"kubernetes.rancher.cert_manager_version {self.cert_manager_version}: labctl knows cert-manager {known}")
            if not _in_range(local, manager.kubernetes):
                raise ValueError(
                    f"kubernetes.rancher.cert_manager_version {self.cert_manager_version} supports Kubernetes "
                    f"{_range(manager.kubernetes)}, but rancher.cluster_version is {self.cluster_version}; "
                    "pick a cert-manager release that covers it (https://cert-manager.io/docs/releases/)"
                )
        return self


class KubernetesConfig(_Strict):
    distro: Literal["kubeadm", "rke2", "rke", "none"] = Field(
        "none", description="one of kubeadm, rke2, rke (legacy RKE1), none"
    )
    version: str | None = Field(
        None,
        description="a pinned release: v1.35.3 for kubeadm, v1.34.6+rke2r3 for rke2, v1.32.5-rancher1-1 for rke",
    )
    cni: Literal["calico", "canal", "flannel"] | None = Field(
        None, description="calico, canal or flannel; default canal"
    )
    pod_subnet: ipaddress.IPv4Network | None = Field(
        None, description="pod network such as 10.244.0.0/16; default 10.244.0.0/16 (kubeadm) or 10.42.0.0/16"
    )
    service_subnet: ipaddress.IPv4Network | None = Field(
        None, description="service network such as 10.96.0.0/12; default 10.96.0.0/12 (kubeadm) or 10.43.0.0/16"
    )
    node_cidr_mask_size: int | None = Field(
        None, ge=16, le=28, description="prefix length of each node's pod range, 16 to 28 (controller-manager)"
    )
    dns_domain: str = Field(
        "cluster.local", pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", description="cluster DNS domain such as cluster.local"
    )
    cluster_name: str | None = Field(
        None, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", description="cluster name; default the lab name"
    )
    kube_proxy_mode: Literal["iptables", "ipvs", "nftables"] = Field(
        "iptables", description="iptables, ipvs or nftables (nftables needs Kubernetes 1.31 or later)"
    )
    kubelet: KubeletSettings = KubeletSettings()
    runtime: Literal["containerd", "docker"] = Field(
        "containerd", description="container runtime for kubeadm: containerd, or docker (with cri-dockerd)"
    )
    rke_version: str = Field(
        compat.RKE_DEFAULT_RELEASE, description=f"RKE1 release for distro rke, one of {', '.join(compat.RKE_RELEASES)}"
    )
    etcd_snapshot_interval_hours: int = Field(6, ge=1, le=168, description="hours between automatic etcd snapshots")
    etcd_snapshot_retention: int = Field(6, ge=1, le=100, description="automatic etcd snapshots kept")
    ready_timeout: int = Field(
        1200, ge=60, description="seconds to wait for every node Ready and CoreDNS running after bootstrap"
    )
    artifacts: Path | None = Field(
        None, description="directory of binaries, packages and image tarballs pushed to nodes instead of downloading"
    )
    rancher: RancherConfig = RancherConfig()

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        return _reject_moving(value)

    @model_validator(mode="after")
    def _check(self) -> KubernetesConfig:
        if self.distro == "none":
            if self.rancher.enabled and self.rancher.import_cluster:
                raise ValueError(
                    "kubernetes.rancher.import_cluster: distro none has no cluster to import; "
                    "set import_cluster: false or pick a distro"
                )
            return self
        version = self.version or compat.DEFAULT_VERSIONS[self.distro]
        pattern, example = _VERSION_PATTERNS[self.distro]
        if not pattern.match(version):
            raise ValueError(f"kubernetes.version {version!r} is not a {self.distro} release; write it like {example}")
        minor = compat.minor_of(version)
        if self.distro == "kubeadm" and not _in_range(minor, compat.KUBEADM_MINORS):
            raise ValueError(
                f"kubernetes.version {version}: labctl installs kubeadm {_range(compat.KUBEADM_MINORS)} "
                "from pkgs.k8s.io; pick a version in that range"
            )
        if self.distro == "rke":
            shipped = compat.RKE_RELEASES.get(self.rke_version)
            if shipped is None:
                raise ValueError(f"kubernetes.rke_version {self.rke_version}: use one of {', '.join(compat.RKE_RELEASES)}")
            if version not in shipped:
                raise ValueError(
                    f"kubernetes.version {version}: RKE {self.rke_version} never shipped it; it ships "
                    f"{', '.join(shipped)} (https://github.com/rancher/rke/releases/tag/{self.rke_version})"
                )
        if self.runtime == "docker" and self.distro != "kubeadm":
            raise ValueError(f"kubernetes.runtime docker applies to kubeadm only; {self.distro} brings its own runtime")
        if self.kube_proxy_mode == "nftables" and minor < compat.NFTABLES_BETA:
            raise ValueError(
                f"kubernetes.kube_proxy_mode nftables needs Kubernetes {compat.show(compat.NFTABLES_BETA)} or later "
                f"(beta there, GA in {compat.show(compat.NFTABLES_GA)}); version is {version}"
            )
        if self.rancher.enabled and self.rancher.import_cluster:
            support = compat.rancher_support(self.rancher.version)
            assert support is not None  # RancherConfig rejected unknown versions
            if not _in_range(minor, support.kubernetes):
                raise ValueError(
                    f"kubernetes.version {version}: Rancher {self.rancher.version} manages Kubernetes "
                    f"{_range(support.kubernetes)} ({support.source}); pick a version in that range or another Rancher"
                )
            if self.distro == "rke" and not support.manages_rke1:
                raise ValueError(
                    f"kubernetes.rancher.version {self.rancher.version} no longer manages RKE1 clusters "
                    "(RKE1 end of life); use distro rke2, or Rancher 2.11.x for the legacy course"
                )
        pod, service = self.pod_subnet_or_default, self.service_subnet_or_default
        if pod.overlaps(service):
            raise ValueError(f"kubernetes.pod_subnet {pod} overlaps service_subnet {service}; pick disjoint networks")
        if self.node_cidr_mask_size is not None and self.node_cidr_mask_size < pod.prefixlen:
            raise ValueError(
                f"kubernetes.node_cidr_mask_size /{self.node_cidr_mask_size} is larger than pod_subnet {pod}"
            )
        return self

    @property
    def pinned_version(self) -> str:
        """The Kubernetes release to install: the lab's, or the distro's default."""
        if self.distro == "none":
            raise ValueError("distro none installs no Kubernetes")
        return self.version or compat.DEFAULT_VERSIONS[self.distro]

    @property
    def minor(self) -> compat.Minor:
        return compat.minor_of(self.pinned_version)

    @property
    def cni_or_default(self) -> str:
        return self.cni or compat.DEFAULT_CNI.get(self.distro, "canal")

    @property
    def pod_subnet_or_default(self) -> ipaddress.IPv4Network:
        default = "10.244.0.0/16" if self.distro == "kubeadm" else "10.42.0.0/16"
        return self.pod_subnet or ipaddress.IPv4Network(default)

    @property
    def service_subnet_or_default(self) -> ipaddress.IPv4Network:
        default = "10.96.0.0/12" if self.distro == "kubeadm" else "10.43.0.0/16"
        return self.service_subnet or ipaddress.IPv4Network(default)

    @property
    def cluster_dns_ip(self) -> ipaddress.IPv4Address:
        """The tenth address of the service network, where every distro puts CoreDNS."""
        return self.service_subnet_or_default.network_address + 10

    def warnings(self) -> list[str]:
        """Accepted but worth telling the user; `labctl up` prints these."""
        notes = []
        if self.distro == "rke":
            notes.append(
                f"RKE1 reached end of life on {compat.RKE_EOL} and gets no more fixes; "
                "RKE2 is its successor (distro: rke2)"
            )
        if self.distro != "none" and self.kube_proxy_mode == "nftables" and self.minor < compat.NFTABLES_GA:
            notes.append(
                f"kube-proxy nftables mode is beta in Kubernetes {compat.show(self.minor)} "
                f"(GA from {compat.show(compat.NFTABLES_GA)})"
            )
        if self.distro == "kubeadm" and self.runtime == "docker":
            notes.append("runtime docker goes through cri-dockerd, which the Kubernetes project does not maintain")
        return notes
