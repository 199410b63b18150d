"""RKE (RKE1, legacy): cluster.yml and `rke up` on the rancher node, which reaches every node over SSH."""

from __future__ import annotations

from pathlib import Path

from labctl.kube import artifacts, remote, render
from labctl.kube.cluster import Control
from labctl.lab import Lab
from labctl.progress import Reporter
from labctl.transport import Executor


def workdir(lab: Lab) -> str:
    return f"/home/{lab.ssh_user}/labctl-rke"


def key_path(lab: Lab) -> str:
    return f"/home/{lab.ssh_user}/.ssh/labctl_rke_ed25519"


def kubeconfig_path(lab: Lab) -> str:
    return f"{workdir(lab)}/kube_config_cluster.yml"


def control(lab: Lab) -> Control:
    node = render.rancher_node(lab)
    assert node is not None
    return Control(node=node.name, kubectl="/usr/local/bin/kubectl", kubeconfig=kubeconfig_path(lab), sudo=False)


def rke_command(lab: Lab, verb: str) -> str:
    return f"cd {workdir(lab)} && rke {verb} --config cluster.yml"


def install_tools(lab: Lab, executor: Executor, reporter: Reporter) -> None:
    kube = lab.kubernetes
    reporter.phase(executor.name, "rke", f"installing rke {kube.rke_version} and kubectl")
    if kube.artifacts is not None:
        local = artifacts.rke_dir(kube.artifacts, kube.rke_version)
        staged = f"{remote.STAGE_DIR}/rke/{kube.rke_version}"
        remote.stage(executor, local, artifacts.files_under(local), staged)
        remote.sh(executor, f"install -m 0755 {staged}/bin/rke {staged}/bin/kubectl /usr/local/bin/")
        return
    kubectl_version = kube.pinned_version.split("-")[0]
    remote.sh(executor, " && ".join([
        f"curl -fsSL -o /usr/local/bin/rke https://github.com/rancher/rke/releases/download/{kube.rke_version}/rke_linux-amd64",
        f"curl -fsSL -o /usr/local/bin/kubectl https://dl.k8s.io/release/{kubectl_version}/bin/linux/amd64/kubectl",
        "chmod 0755 /usr/local/bin/rke /usr/local/bin/kubectl",
    ]), timeout=900)


def bootstrap(lab: Lab, executors: dict[str, Executor], reporter: Reporter, *, ssh_private_key: Path) -> Control:
    node = render.rancher_node(lab)
    assert node is not None  # check_lab requires it for distro rke
    executor = executors[node.name]
    install_tools(lab, executor, reporter)
    remote.sh(executor, f"mkdir -p {workdir(lab)}", sudo=False)
    executor.push(ssh_private_key.read_bytes(), key_path(lab), mode=0o600)
    executor.push(render.rke_cluster_yml(lab, key_path(lab)).encode(), f"{workdir(lab)}/cluster.yml")
    reporter.phase(node.name, "rke", "rke up")
    remote.sh(executor, rke_command(lab, "up"), sudo=False, timeout=3600)
    return control(lab)
