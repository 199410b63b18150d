"""What every distro's bootstrap ends with: a kubectl on the cluster, readiness, and a kubeconfig."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from labctl.errors import WaitTimeout
from labctl.kube import remote
from labctl.kube.render import API_PORT, api_host
from labctl.lab import Lab, Role
from labctl.progress import Reporter
from labctl.transport import Executor

KUBECONFIG_NAME = "kubeconfig"


@dataclass(frozen=True)
class Control:
    """Where kubectl runs for a cluster: the node, the kubectl command, and the admin kubeconfig there."""

    node: str
    kubectl: str
    kubeconfig: str
    sudo: bool = True

    def run(self, executor: Executor, args: str, *, stdin: bytes | None = None, timeout: float = 600):
        return remote.sh(executor, f"{self.kubectl} --kubeconfig {self.kubeconfig} {args}",
                         sudo=self.sudo, stdin=stdin, timeout=timeout)

    def try_json(self, executor: Executor, args: str) -> dict | None:
        command = f"{self.kubectl} --kubeconfig {self.kubeconfig} {args} -o json"
        result = executor.run(command, sudo=self.sudo, check=False, timeout=60)
        if not result.ok:
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            return None


def cluster_node_names(lab: Lab) -> set[str]:
    return {n.name for n in lab.nodes if n.has_role(Role.master, Role.worker, Role.etcd)}


def ready_nodes(nodes: dict | None) -> set[str]:
    ready = set()
    for item in (nodes or {}).get("items", []):
        conditions = item.get("status", {}).get("conditions", [])
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.add(item["metadata"]["name"])
    return ready


def dns_running(pods: dict | None) -> bool:
    items = (pods or {}).get("items", [])
    return bool(items) and all(
        item.get("status", {}).get("phase") == "Running"
        and all(c.get("ready") for c in item.get("status", {}).get("containerStatuses", []) or [{}])
        for item in items
    )


def wait_ready(control: Control, executor: Executor, expected: set[str], *, timeout: float,
               reporter: Reporter, interval: float = 10.0) -> None:
    """Wait until every expected node is Ready and CoreDNS runs; on timeout report the cluster's state."""
    missing: set[str] = set(expected)

    def check() -> bool:
        nonlocal missing
        missing = expected - ready_nodes(control.try_json(executor, "get nodes"))
        if missing:
            return False
        return dns_running(control.try_json(executor, "-n kube-system get pods -l k8s-app=kube-dns"))

    reporter.phase(control.node, "kubernetes", "waiting for nodes Ready and CoreDNS")
    if remote.wait_until(check, timeout=timeout, interval=interval):
        return
    state = executor.run(f"{control.kubectl} --kubeconfig {control.kubeconfig} get nodes,pods -A -o wide",
                         sudo=control.sudo, check=False, timeout=60)
    what = f"nodes not Ready: {', '.join(sorted(missing))}" if missing else "CoreDNS is not running"
    raise WaitTimeout(
        f"the cluster did not become ready within {timeout:.0f} s ({what})",
        details=(state.stdout or state.stderr).strip() or "kubectl get nodes,pods -A gave no output",
        resolution="look at the pods above; raise kubernetes.ready_timeout on a slow host (TCG guests are slow)",
    )


def rewrite_server(kubeconfig_text: str, server: str) -> str:
    """Point every cluster entry of a kubeconfig at server (the node IP the host can reach)."""
    config = yaml.safe_load(kubeconfig_text)
    for cluster in config.get("clusters", []):
        cluster["cluster"]["server"] = server
    return yaml.safe_dump(config, sort_keys=False)


def save_kubeconfig(lab: Lab, executor: Executor, remote_path: str, state_dir: Path, *, sudo: bool = True) -> Path:
    """Fetch the admin kubeconfig into the lab state dir (0600), server rewritten to the API address."""
    text = executor.pull(remote_path, sudo=sudo).decode()
    path = state_dir / KUBECONFIG_NAME
    write_private(path, rewrite_server(text, f"https://{api_host(lab)}:{API_PORT}"))
    return path


def write_private(path: Path, text: str) -> None:
    """Write text readable by the owner only, replacing path atomically (an existing file's mode too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
