"""RKE2: the server on the first master, more servers one by one, agents in parallel; token read from the server."""

from __future__ import annotations

from pathlib import Path

from labctl.errors import CommandFailed
from labctl.parallel import in_parallel
from labctl.kube import artifacts, remote, render
from labctl.kube.cluster import Control
from labctl.lab import Lab, Node
from labctl.progress import Reporter
from labctl.transport import Executor

KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"
KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
NODE_TOKEN = "/var/lib/rancher/rke2/server/node-token"


def control(node: Node) -> Control:
    return Control(node=node.name, kubectl=KUBECTL, kubeconfig=KUBECONFIG)


def install(node: Node, executor: Executor, reporter: Reporter, *, version: str, server: bool,
            artifacts_root: Path | None) -> None:
    """Install the rke2 binary of version (from artifacts_root when given) as a server or an agent."""
    staged = ""
    if artifacts_root is not None:
        local = artifacts.rke2_dir(artifacts_root, version)
        staged = f"{remote.STAGE_DIR}/rke2/{version}"
        reporter.phase(node.name, "rke2", "pushing artifacts")
        remote.stage(executor, local, artifacts.files_under(local), staged)
    reporter.phase(node.name, "rke2", f"installing {version}")
    text = remote.script("rke2-install.sh", staged=staged, version=version, type="server" if server else "agent")
    remote.run_script(executor, text, timeout=2400)


def start(node: Node, executor: Executor, config: str, reporter: Reporter, *, server: bool) -> None:
    unit = "rke2-server" if server else "rke2-agent"
    executor.push(config.encode(), render.RKE2_CONFIG_PATH, mode=0o600, sudo=True)
    reporter.phase(node.name, "rke2", f"starting {unit}")
    # `systemctl start` of a Type=notify unit returns once RKE2 reports ready.
    remote.sh(executor, f"systemctl enable {unit} && systemctl start {unit}", timeout=1800)


def read_token(executor: Executor) -> str:
    token = remote.sh(executor, f"cat {NODE_TOKEN}").stdout.strip()
    if not token:
        raise CommandFailed(f"{executor.name}: {NODE_TOKEN} is empty; the RKE2 server did not finish starting")
    return token


def bootstrap(lab: Lab, executors: dict[str, Executor], reporter: Reporter) -> Control:
    kube = lab.kubernetes
    masters = render.masters(lab)
    first, extra_masters, workers = masters[0], masters[1:], render.workers(lab)

    def setup(node: Node) -> None:
        install(node, executors[node.name], reporter, version=kube.pinned_version,
                server=node in masters, artifacts_root=kube.artifacts)

    in_parallel([*masters, *workers], setup, "installing RKE2")
    start(first, executors[first.name], render.rke2_config(lab, first), reporter, server=True)
    token = read_token(executors[first.name])
    url = f"https://{first.ip}:{render.RKE2_SUPERVISOR_PORT}"
    for node in extra_masters:  # one at a time, as RKE2's HA instructions require
        start(node, executors[node.name], render.rke2_config(lab, node, server_url=url, token=token), reporter, server=True)
    in_parallel(
        workers,
        lambda n: start(n, executors[n.name], render.rke2_config(lab, n, server_url=url, token=token), reporter,
                        server=False),
        "starting rke2-agent",
    )
    return control(first)
