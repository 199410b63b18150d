"""kubeadm: runtime and pinned tools on every node, init on the first master, joins read from the cluster."""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterator

from labctl.errors import CommandFailed, WaitTimeout
from labctl.parallel import in_parallel
from labctl.kube import artifacts, compat, remote, render
from labctl.kube.cluster import Control
from labctl.lab import Lab, Node
from labctl.progress import Reporter
from labctl.provision import packages
from labctl.transport import Executor

ADMIN_CONF = "/etc/kubernetes/admin.conf"
CONTROL_KUBECTL = "kubectl"
CNI_PATH = "/etc/labctl/cni.yaml"

# Units from the kubeadm "without a package manager" instructions, with binaries in /usr/local/bin.
KUBELET_UNIT = """[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROPIN = """[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""
CRI_DOCKERD_VERSION = "0.3.20"
CRI_DOCKERD_URL = (f"https://github.com/Mirantis/cri-dockerd/releases/download/v{CRI_DOCKERD_VERSION}/"
                   f"cri-dockerd-{CRI_DOCKERD_VERSION}.amd64.tgz")
# cri-dockerd's own systemd units (https://github.com/Mirantis/cri-dockerd/tree/master/packaging/systemd).
CRI_DOCKERD_SETUP = f"""
if [ ! -x /usr/local/bin/cri-dockerd ]; then
  if [ -x {remote.STAGE_DIR}/cri-dockerd/bin/cri-dockerd ]; then
    install -m 0755 {remote.STAGE_DIR}/cri-dockerd/bin/cri-dockerd /usr/local/bin/
  else
    curl -fsSL {CRI_DOCKERD_URL} \\
      | tar -xz -C /usr/local/bin --strip-components=1 cri-dockerd/cri-dockerd
  fi
fi
cat > /etc/systemd/system/cri-docker.socket <<'UNIT'
[Unit]
Description=CRI Docker Socket for the API
PartOf=cri-docker.service

[Socket]
ListenStream=%t/cri-dockerd.sock
SocketMode=0660
SocketUser=root
SocketGroup=docker

[Install]
WantedBy=sockets.target
UNIT
cat > /etc/systemd/system/cri-docker.service <<'UNIT'
[Unit]
Description=CRI Interface for Docker Application Container Engine
After=network-online.target firewalld.service docker.service
Wants=network-online.target
Requires=cri-docker.socket

[Service]
Type=notify
ExecStart=/usr/local/bin/cri-dockerd --container-runtime-endpoint fd://
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now cri-docker.socket cri-docker.service
"""


# Debian packages the install script takes from the lab's package source on every node.
NODE_PACKAGES = ("conntrack", "socat", "ethtool", "iptables", "ca-certificates", "curl", "gpg")


def node_packages(lab: Lab) -> list[str]:
    return [*NODE_PACKAGES, "docker.io" if lab.kubernetes.runtime == "docker" else "containerd"]


def apt_packages(lab: Lab) -> list[str]:
    """Every Debian package the kubeadm path installs: the local repository's content (packages.source local)."""
    extra = ["haproxy"] if len(render.masters(lab)) > 1 else []
    return sorted({*node_packages(lab), *extra})


@contextlib.contextmanager
def package_source(lab: Lab, executor: Executor, reporter: Reporter) -> Iterator[None]:
    """Serve the local repository while nodes install (provisioning's stops when provisioning ends)."""
    if lab.packages.source != "local":
        yield
        return
    codename, arch = remote.sh(executor, ". /etc/os-release && echo $VERSION_CODENAME $(dpkg --print-architecture)",
                               sudo=False).stdout.split()
    with packages.local_repository(lab, apt_packages(lab), suite=codename, arch=arch, reporter=reporter):
        yield


def package_version(version: str) -> str:
    """pkgs.k8s.io Debian package version of a release: v1.35.3 -> 1.35.3-1.1."""
    return f"{version.removeprefix('v')}-1.1"


def install_script(lab: Lab) -> str:
    kube = lab.kubernetes
    version = "v" + kube.pinned_version.removeprefix("v")
    staged = f"{remote.STAGE_DIR}/{artifacts.kubeadm_subdir(version)}" if kube.artifacts else ""
    docker = kube.runtime == "docker"
    return remote.script(
        "kubeadm-install.sh",
        staged=staged,
        runtime=kube.runtime,
        packages=" ".join(node_packages(lab)),
        minor=compat.show(kube.minor),
        version=version,
        package_version=package_version(version),
        kubelet_unit=KUBELET_UNIT,
        kubeadm_dropin=KUBEADM_DROPIN,
        cri_dockerd=CRI_DOCKERD_SETUP,
        image_import="docker load -i" if docker else "ctr -n k8s.io images import",
    )


def install(lab: Lab, node: Node, executor: Executor, reporter: Reporter) -> None:
    kube = lab.kubernetes
    if kube.artifacts is not None:
        reporter.phase(node.name, "kubeadm", "pushing artifacts")
        subdirs = [artifacts.kubeadm_subdir(kube.pinned_version)]
        if kube.runtime == "docker":
            subdirs.append("cri-dockerd")
        for subdir in subdirs:
            local = kube.artifacts / subdir
            remote.stage(executor, local, artifacts.files_under(local), f"{remote.STAGE_DIR}/{subdir}")
    reporter.phase(node.name, "kubeadm", f"installing {kube.runtime} and kubeadm {kube.pinned_version}")
    remote.run_script(executor, install_script(lab), timeout=2400)


def admin_control(lab: Lab) -> Control:
    return Control(node=render.masters(lab)[0].name, kubectl=CONTROL_KUBECTL, kubeconfig=ADMIN_CONF)


_CERT_KEY_RE = re.compile(r"^[0-9a-f]{64}$", re.MULTILINE)


def init(lab: Lab, executor: Executor, reporter: Reporter) -> None:
    """kubeadm init on the first master with the rendered config, unless it already ran."""
    first = render.masters(lab)[0]
    if remote.succeeds(executor, f"test -f {ADMIN_CONF}"):
        reporter.phase(first.name, "kubeadm", "control plane already initialised")
        return
    text = render.kubeadm_init_config(lab)
    remote.sh(executor, "mkdir -p /etc/labctl")
    executor.push(text.encode(), render.KUBEADM_CONFIG_PATH, mode=0o600, sudo=True)
    reporter.phase(first.name, "kubeadm", "kubeadm init")
    upload = " --upload-certs" if len(render.masters(lab)) > 1 else ""
    remote.sh(executor, f"kubeadm init --config {render.KUBEADM_CONFIG_PATH}{upload}", timeout=1800)


def wait_endpoint(lab: Lab, executor: Executor, reporter: Reporter, *, timeout: float = 300,
                  after: str = "kubeadm init") -> None:
    """Wait until admin.conf's server (the controlPlaneEndpoint) answers. Behind haproxy the first master
    counts only once the balancer's health checks pass, seconds after `kubeadm init` returns; after a
    restore, the kubelet has yet to start etcd and the API server again."""
    control = admin_control(lab)
    endpoint = f"{render.api_host(lab)}:{render.API_PORT}"
    reporter.phase(control.node, "kubeadm", f"waiting for the API at {endpoint}")
    if remote.wait_until(lambda: control.try_json(executor, "get nodes") is not None, timeout=timeout, interval=5):
        return
    balancer = render.api_balancer(lab)
    journal = executor.run("journalctl -u kubelet -n 40 --no-pager", sudo=True, check=False, timeout=60)
    raise WaitTimeout(
        f"the API server did not answer at {endpoint} within {timeout:.0f} s of {after}",
        details=f"the kubelet's last lines on {control.node}:\n{(journal.stdout or journal.stderr).strip()}",
        resolution=(f"look at haproxy on {balancer.name} (systemctl status haproxy, /etc/haproxy/haproxy.cfg) "
                    "and the rancher node's firewall" if balancer is not None else
                    f"look at the kubelet and the static pods on {control.node} (journalctl -u kubelet)"),
    )


def join_info(lab: Lab, executor: Executor) -> render.JoinInfo:
    """Token and CA hash from the cluster; a fresh certificate key when masters join."""
    printed = remote.sh(executor, "kubeadm token create --print-join-command").stdout
    try:
        join = render.parse_join_command(printed)
    except ValueError as exc:
        raise CommandFailed(f"{executor.name}: kubeadm printed no usable join command", details=str(exc)) from exc
    if len(render.masters(lab)) == 1:
        return join
    uploaded = remote.sh(executor, "kubeadm init phase upload-certs --upload-certs").stdout
    keys = _CERT_KEY_RE.findall(uploaded)
    if not keys:
        raise CommandFailed(f"{executor.name}: kubeadm printed no certificate key", details=uploaded[-2000:])
    return render.JoinInfo(join.endpoint, join.token, join.ca_cert_hashes, certificate_key=keys[-1])


def join(lab: Lab, node: Node, executor: Executor, info: render.JoinInfo, reporter: Reporter) -> None:
    if remote.succeeds(executor, "test -f /etc/kubernetes/kubelet.conf"):
        reporter.phase(node.name, "kubeadm", "already joined")
        return
    remote.sh(executor, "mkdir -p /etc/labctl")
    executor.push(render.kubeadm_join_config(lab, node, info).encode(), render.KUBEADM_JOIN_CONFIG_PATH,
                  mode=0o600, sudo=True)
    reporter.phase(node.name, "kubeadm", "kubeadm join")
    remote.sh(executor, f"kubeadm join --config {render.KUBEADM_JOIN_CONFIG_PATH}", timeout=1800)


def cni_script(lab: Lab) -> str:
    """Put the CNI manifest at CNI_PATH with the lab's pod network written in."""
    kube = lab.kubernetes
    cni = kube.cni_or_default
    shipped, wanted = compat.CNI_MANIFEST_POD_CIDR[cni], str(kube.pod_subnet_or_default)
    lines = ["set -euo pipefail", "mkdir -p /etc/labctl"]
    if kube.artifacts is None:
        lines.append(f"curl -fsSL {shlex.quote(compat.CNI_MANIFESTS[cni])} -o {CNI_PATH}")
    if cni == "calico":
        # calico.yaml ships the pool CIDR commented out; uncomment it so the pool is the lab's.
        lines.append(f"sed -i -e 's|# - name: CALICO_IPV4POOL_CIDR|- name: CALICO_IPV4POOL_CIDR|' "
                     f"-e 's|#   value: \"{shipped}\"|  value: \"{wanted}\"|' {CNI_PATH}")
    else:
        lines.append(f"sed -i 's|{shipped}|{wanted}|g' {CNI_PATH}")
    lines.append(f"grep -q '{wanted}' {CNI_PATH}")
    return "\n".join(lines) + "\n"


def apply_cni(lab: Lab, executor: Executor, reporter: Reporter) -> None:
    kube = lab.kubernetes
    reporter.phase(render.masters(lab)[0].name, "kubeadm", f"applying CNI {kube.cni_or_default}")
    if kube.artifacts is not None:
        remote.sh(executor, "mkdir -p /etc/labctl")
        remote.push_file(executor, kube.artifacts / "cni" / f"{kube.cni_or_default}.yaml", CNI_PATH)
    remote.run_script(executor, cni_script(lab))
    admin_control(lab).run(executor, f"apply -f {CNI_PATH}")


# `reset --kubernetes` takes haproxy off the rancher node: a later distro's API server (RKE2 for
# Rancher in helm mode) binds the same port 6443.
REMOVE_BALANCER = ("systemctl disable --now haproxy 2>/dev/null || true; "
                   "DEBIAN_FRONTEND=noninteractive apt-get purge -y haproxy; rm -rf /etc/haproxy")


def balancer(lab: Lab, executor: Executor, reporter: Reporter) -> None:
    """haproxy on the rancher node in front of several masters."""
    node = render.api_balancer(lab)
    assert node is not None
    reporter.phase(node.name, "kubeadm", "API load balancer (haproxy)")
    remote.sh(executor, "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy", timeout=900)
    executor.push(render.haproxy_config(lab).encode(), "/etc/haproxy/haproxy.cfg", sudo=True)
    remote.sh(executor, "systemctl restart haproxy && systemctl enable haproxy")


def bootstrap(lab: Lab, executors: dict[str, Executor], reporter: Reporter) -> Control:
    masters = render.masters(lab)
    first, extra_masters, workers = masters[0], masters[1:], render.workers(lab)
    nodes = [*masters, *workers]
    with package_source(lab, executors[first.name], reporter):
        balancer_node = render.api_balancer(lab)
        if balancer_node is not None:
            balancer(lab, executors[balancer_node.name], reporter)
        in_parallel(nodes, lambda n: install(lab, n, executors[n.name], reporter), "installing kubeadm")
    primary = executors[first.name]
    init(lab, primary, reporter)
    wait_endpoint(lab, primary, reporter)
    apply_cni(lab, primary, reporter)
    info = join_info(lab, primary)
    for node in extra_masters:  # one at a time: each grows etcd by a member
        join(lab, node, executors[node.name], info, reporter)
    in_parallel(workers, lambda n: join(lab, n, executors[n.name], info, reporter), "kubeadm join")
    return admin_control(lab)
