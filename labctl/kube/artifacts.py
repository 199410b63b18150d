"""Air-gapped artifacts: the directory layout labctl pushes to nodes instead of downloading.

    <artifacts>/kubeadm/<version>/bin/{kubeadm,kubelet,kubectl,crictl}
    <artifacts>/kubeadm/<version>/images/*.tar      `kubeadm config images list` images (ctr/docker import)
    <artifacts>/cni/<cni>.yaml                       the CNI manifest (kubeadm)
    <artifacts>/cri-dockerd/bin/cri-dockerd          only for runtime: docker
    <artifacts>/rke2/<version>/{install.sh,rke2.linux-amd64.tar.gz,rke2-images.linux-amd64.tar.zst,sha256sum-amd64.txt}
    <artifacts>/rke/<rke_version>/bin/{rke,kubectl}
    <rancher.artifacts>/helm/bin/helm
    <rancher.artifacts>/charts/{cert-manager-<v>.tgz,rancher-<v>.tgz}
    <rancher.artifacts>/rke2/<cluster_version>/...   as above, for Rancher's own cluster (helm mode)
    <rancher.artifacts>/images/*.tar                 Rancher's image for docker mode (docker load), at least
                                                     rancher_rancher_<version>.tar

The shapes follow each project's air-gap instructions: https://docs.rke2.io/install/airgap,
https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/install-kubeadm/#without-a-package-manager,
https://ranchermanager.docs.rancher.com/getting-started/installation-and-upgrade/other-installation-methods/air-gapped-helm-cli-install
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import yaml

from labctl.errors import InvalidInput
from labctl.lab import Lab

RKE2_FILES = ("install.sh", "rke2.linux-amd64.tar.gz", "rke2-images.linux-amd64.tar.zst", "sha256sum-amd64.txt")


def kubeadm_subdir(version: str) -> str:
    """kubeadm/v1.35.3 whether the lab writes v1.35.3 or 1.35.3."""
    return f"kubeadm/v{version.removeprefix('v')}"


def kubeadm_dir(root: Path, version: str) -> Path:
    return root / kubeadm_subdir(version)


def rke2_dir(root: Path, version: str) -> Path:
    return root / "rke2" / version


def rke_dir(root: Path, rke_version: str) -> Path:
    return root / "rke" / rke_version


def rancher_charts(lab: Lab) -> list[tuple[str, str, Path]]:
    """(the kubernetes.rancher field that pins it, that version, the archive) per chart helm mode installs."""
    rancher = lab.kubernetes.rancher
    if not (rancher.enabled and rancher.artifacts is not None and rancher.mode == "helm"):
        return []
    charts = rancher.artifacts / "charts"
    return [("cert_manager_version", rancher.cert_manager_version, charts / f"cert-manager-{rancher.cert_manager_version}.tgz"),
            ("version", rancher.version, charts / f"rancher-{rancher.version.removeprefix('v')}.tgz")]


def image_tarball(directory: Path, ref: str) -> Path:
    """Where an image is saved as a docker-archive: rancher/rancher:v2.9.2 -> directory/rancher_rancher_v2.9.2.tar."""
    return directory / (re.sub(r"[/:@]", "_", ref) + ".tar")


def rancher_image(lab: Lab) -> str:
    return f"rancher/rancher:{lab.kubernetes.rancher.version}"


def required(lab: Lab) -> list[Path]:
    """Every file the lab's air-gapped install needs (directories of images may be empty)."""
    kube = lab.kubernetes
    needed: list[Path] = []
    if kube.artifacts is not None and kube.distro != "none":
        root, version = kube.artifacts, kube.pinned_version
        if kube.distro == "kubeadm":
            needed += [kubeadm_dir(root, version) / "bin" / tool for tool in ("kubeadm", "kubelet", "kubectl", "crictl")]
            needed.append(root / "cni" / f"{kube.cni_or_default}.yaml")
            if kube.runtime == "docker":
                needed.append(root / "cri-dockerd" / "bin" / "cri-dockerd")
        elif kube.distro == "rke2":
            needed += [rke2_dir(root, version) / name for name in RKE2_FILES]
        else:
            needed += [rke_dir(root, kube.rke_version) / "bin" / tool for tool in ("rke", "kubectl")]
    rancher = kube.rancher
    if rancher.enabled and rancher.artifacts is not None and rancher.mode == "helm":
        root = rancher.artifacts
        needed.append(root / "helm" / "bin" / "helm")
        needed += [archive for _, _, archive in rancher_charts(lab)]
        needed += [rke2_dir(root, rancher.cluster_version) / name for name in RKE2_FILES]
    if rancher.enabled and rancher.artifacts is not None and rancher.mode == "docker":
        needed.append(image_tarball(rancher.artifacts / "images", rancher_image(lab)))
    return needed


def chart_version(archive: Path) -> str:
    """The version a chart archive's Chart.yaml declares ("" if it has none or is no chart)."""
    try:
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")), None)
            text = tar.extractfile(member).read() if member else b""
        return str((yaml.safe_load(text) or {}).get("version", ""))
    except (OSError, tarfile.TarError, yaml.YAMLError, AttributeError):
        return ""


def _chart_mismatches(lab: Lab) -> list[str]:
    """Charts whose Chart.yaml version is not the one the lab pins (a renamed or stale download)."""
    problems = []
    for field, pinned, archive in rancher_charts(lab):
        found = chart_version(archive)
        if found.removeprefix("v") != pinned.removeprefix("v"):
            problems.append(f"  {archive}: the chart says version {found or '(none)'}, "
                            f"kubernetes.rancher.{field} pins {pinned}")
    return problems


def check(lab: Lab) -> None:
    """Raise InvalidInput listing missing artifact files and charts of another version, before anything is pushed."""
    missing = [path for path in required(lab) if not path.is_file()]
    if missing:
        raise InvalidInput(
            f"the artifacts directory lacks {len(missing)} file{'s' * (len(missing) > 1)}",
            details="\n".join(f"  {path}" for path in missing),
            resolution="build it on a connected machine (see docs/kubernetes.md, 'Air-gapped artifacts'), "
            "or remove kubernetes.artifacts / kubernetes.rancher.artifacts to download on the nodes",
        )
    mismatched = _chart_mismatches(lab)
    if mismatched:
        raise InvalidInput(
            "a Helm chart in the artifacts directory is not the version the lab pins",
            details="\n".join(mismatched),
            resolution="fetch the pinned charts again (`labctl artifacts fetch LAB DIR`), "
            "or pin the version the chart declares",
        )


def files_under(directory: Path) -> list[Path]:
    """Files below directory, relative to it, sorted."""
    return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
