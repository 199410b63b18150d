"""`labctl up`'s Kubernetes phase: the lab's cluster, Rancher, the import, and a kubeconfig on the host."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labctl.kube import checks, cluster, kubeadm, rancher, render, rke, rke2
from labctl.lab import Lab
from labctl.progress import Reporter
from labctl.transport import Executor


@dataclass(frozen=True)
class Outcome:
    kubeconfig: Path | None
    rancher_url: str | None
    rancher_password_file: Path | None
    nodes: str

    def summary(self) -> str:
        lines = []
        if self.rancher_url:
            lines.append(f"Rancher:    {self.rancher_url}  (user admin, password in {self.rancher_password_file})")
        if self.kubeconfig:
            lines.append(f"kubeconfig: {self.kubeconfig}  (export KUBECONFIG={self.kubeconfig})")
        if self.nodes:
            lines.append(self.nodes.rstrip())
        return "\n".join(lines)


def remote_kubeconfig(lab: Lab) -> tuple[str, bool]:
    """Path of the admin kubeconfig on the control node, and whether reading it needs root."""
    distro = lab.kubernetes.distro
    if distro == "kubeadm":
        return kubeadm.ADMIN_CONF, True
    if distro == "rke2":
        return rke2.KUBECONFIG, True
    return rke.kubeconfig_path(lab), False


def control_for(lab: Lab) -> cluster.Control:
    """Where kubectl runs for the lab's cluster once it exists."""
    distro = lab.kubernetes.distro
    if distro == "kubeadm":
        return kubeadm.admin_control(lab)
    if distro == "rke2":
        return rke2.control(render.masters(lab)[0])
    return rke.control(lab)


def bootstrap(lab: Lab, executors: dict[str, Executor], *, reporter: Reporter, state_dir: Path,
              ssh_private_key: Path | None = None) -> Outcome:
    """Install the lab's Kubernetes and Rancher; any failed step raises, so a return means it worked.

    ssh_private_key is the lab user's key (default state_dir/ssh/id_ed25519); RKE needs it on the
    rancher node to reach the other nodes.
    """
    kube = lab.kubernetes
    for note in [*kube.warnings(), *checks.warnings(lab)]:
        reporter.warn(note)
    control = None
    if kube.distro == "kubeadm":
        control = kubeadm.bootstrap(lab, executors, reporter)
    elif kube.distro == "rke2":
        control = rke2.bootstrap(lab, executors, reporter)
    elif kube.distro == "rke":
        control = rke.bootstrap(lab, executors, reporter,
                                ssh_private_key=ssh_private_key or state_dir / "ssh" / "id_ed25519")
    kubeconfig = nodes = None
    if control is not None:
        executor = executors[control.node]
        cluster.wait_ready(control, executor, cluster.cluster_node_names(lab), timeout=kube.ready_timeout,
                           reporter=reporter)
        path, sudo = remote_kubeconfig(lab)
        kubeconfig = cluster.save_kubeconfig(lab, executor, path, state_dir, sudo=sudo)
        nodes = control.run(executor, "get nodes -o wide").stdout
    rancher_url = password_file = None
    if kube.rancher.enabled:
        password = rancher.install(lab, executors, state_dir, reporter)
        rancher_url = f"https://{render.rancher_hostname(lab)}"
        password_file = state_dir / rancher.PASSWORD_FILE
        if control is not None and kube.rancher.import_cluster:
            rancher.import_cluster(lab, executors, control, password, reporter, timeout=kube.ready_timeout)
    return Outcome(kubeconfig=kubeconfig, rancher_url=rancher_url, rancher_password_file=password_file,
                   nodes=nodes or "")
