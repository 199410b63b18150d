"""rke double (RKE1): up, etcd snapshot-save and snapshot-restore, remove, all driven by cluster.yml over SSH.

`rke up` validates cluster.yml as RKE does (known keys via labctl's field sets, a Kubernetes
version this release ships, roles, one node per plane at least), then reaches every node over SSH
with the node's ssh_key_path and strict host key checking, and asks each node's Docker for its
version as the node's user (RKE drives Docker through the SSH connection). Where RKE would start
containers, the double copies itself to the node and starts its node agents there: the API
server double on the first controlplane node, a kubelet double on every node, which heartbeats
from the node's own address and runs the pods placed there whose images the doubles implement
(workloads.py: the cattle-cluster-agent of a Rancher import). It labels the nodes with their roles and
taints those without the worker role as RKE does, then deploys the network plugin
and CoreDNS and writes kube_config_cluster.yml and cluster.rkestate next to cluster.yml.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from labctl.kube import schema

from . import apiserver, workloads
from .common import CANAL_TOLERATIONS, APIError, api, behaviour, die, kubeconfig_text, new_ca, parse_flags, record, wait_for

TOOL = "rke"
ROLES = {"controlplane", "etcd", "worker"}
AGENT_DIR = ".labctl-rke-double"
SNAPSHOT_DIR = "/opt/rke/etcd-snapshots"


def load_cluster(path: Path) -> dict[str, Any]:
    try:
        cluster = yaml.safe_load(path.read_text())
    except OSError:
        die(TOOL, f"FATA[0000] Failed to resolve cluster file: open {path}: no such file or directory")
    problems = schema.unknown_rke_fields(cluster)
    if problems:
        die(TOOL, "FATA[0000] Failed to validate cluster: " + "; ".join(problems))
    version = cluster.get("kubernetes_version")
    if version not in behaviour()["kubernetes"]:
        die(TOOL, f"FATA[0000] Failed to validate cluster: kubernetes version {version} is not supported by rke "
                  f"{behaviour()['version']}; supported: {', '.join(behaviour()['kubernetes'])}")
    nodes = cluster.get("nodes") or []
    for index, node in enumerate(nodes):
        roles = set(node.get("role") or [])
        if not node.get("address") or not node.get("user") or not roles or not roles <= ROLES:
            die(TOOL, f"FATA[0000] Failed to validate cluster: nodes[{index}] needs address, user and role in {sorted(ROLES)}")
        key = Path(os.path.expanduser(node.get("ssh_key_path") or cluster.get("ssh_key_path") or "~/.ssh/id_rsa"))
        if not key.is_file():
            die(TOOL, f"FATA[0000] Failed to parse key file: open {key}: no such file or directory")
        node["ssh_key_path"] = str(key)
    for plane in ("etcd", "controlplane", "worker"):
        if not any(plane in node["role"] for node in nodes):
            die(TOOL, f"FATA[0000] Cluster must have at least one {plane} plane host: please specify one or more {plane} in cluster config")
    return cluster


def node_name(node: dict[str, Any]) -> str:
    return node.get("hostname_override") or node["address"]


def ssh(node: dict[str, Any], command: str, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = ["ssh", "-i", node["ssh_key_path"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15", "-p", str(node.get("port", 22)),
            f"{node['user']}@{node['address']}", command]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=300)


def ssh_ok(node: dict[str, Any], command: str, what: str, *, stdin: bytes | None = None) -> str:
    result = ssh(node, command, stdin=stdin)
    if result.returncode != 0:
        die(TOOL, f"FATA[0010] [{what}] Failed on host [{node['address']}]: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def start_agent(node: dict[str, Any], name: str, args: list[str]) -> None:
    """Run one of the double's node agents on the node in the background, replacing a running one."""
    pid_file = f"~/{AGENT_DIR}/{name}.pid"
    ssh_ok(node, f"if [ -f {pid_file} ]; then kill $(cat {pid_file}) 2>/dev/null || true; fi; "
                 f"setsid -f ~/{AGENT_DIR}/agent node-agent {name} --pid-file {pid_file} {shlex.join(args)} "
                 f"> ~/{AGENT_DIR}/{name}.log 2>&1 < /dev/null", f"start {name}")


def start_apiserver(control: dict[str, Any]) -> None:
    """The API server double on the controlplane node, serving the datastore in its etcd directory."""
    server = f"https://{control['address']}:6443"
    start_agent(control, "apiserver", ["--advertise-address", control["address"], "--secure-port", "6443",
                                       "--data-dir", f"/home/{control['user']}/{AGENT_DIR}/etcd"])
    if not wait_for(lambda: api(server, "GET", "/healthz") == "ok", timeout=120):
        die(TOOL, f"FATA[0060] [controlPlane] Failed to bring up Control Plane: kube-apiserver on {server} is not healthy")


def up(config_path: Path) -> None:
    cluster = load_cluster(config_path)
    nodes = cluster["nodes"]
    reached = []
    for node in nodes:
        result = ssh(node, "docker version --format '{{.Server.Version}}'")
        if result.returncode != 0:
            die(TOOL, f"FATA[0005] Failed to set up SSH tunneling for host [{node['address']}]: "
                      f"Can't retrieve Docker Info: {result.stderr.decode().strip()}")
        reached.append({"address": node["address"], "user": node["user"], "docker": result.stdout.decode().strip()})
    state_path = config_path.with_name("cluster.rkestate")
    previous = json.loads(state_path.read_text()) if state_path.exists() else {}
    ca = previous.get("ca") or new_ca()
    admin = previous.get("admin") or secrets.token_hex(16)
    control = next(node for node in nodes if "controlplane" in node["role"])
    server = f"https://{control['address']}:6443"
    services = cluster.get("services", {})
    controller = services.get("kube-controller", {})
    kubelet = services.get("kubelet", {})
    pod_subnet = controller.get("cluster_cidr", "10.42.0.0/16")
    state = apiserver.initial_state(
        cluster={"name": cluster.get("cluster_name", "local"), "pod_subnet": pod_subnet,
                 "service_subnet": controller.get("service_cluster_ip_range", "10.43.0.0/16"),
                 "dns_domain": kubelet.get("cluster_domain", "cluster.local"),
                 "kubernetes_version": cluster["kubernetes_version"], "endpoint": f"{control['address']}:6443"},
        ca_pem=ca, admin_credential=admin)
    own = Path(sys.argv[0]).read_bytes()
    for node in nodes:
        ssh_ok(node, f"mkdir -p ~/{AGENT_DIR} && cat > ~/{AGENT_DIR}/agent && chmod 0755 ~/{AGENT_DIR}/agent",
               "copy agent", stdin=own)
    ssh_ok(control, f"~/{AGENT_DIR}/agent node-agent init-state --data-dir ~/{AGENT_DIR}/etcd", "etcd",
           stdin=json.dumps(state).encode())
    start_apiserver(control)
    for node in nodes:
        credential = secrets.token_hex(16)
        api(server, "POST", "/node-credentials", {"credential": credential, "node": node_name(node)}, credential=admin)
        start_agent(node, "kubelet", ["--server", server, "--credential", credential, "--node-name", node_name(node),
                                      "--node-ip", node["address"], "--max-pods",
                                      str(kubelet.get("extra_args", {}).get("max-pods", 110))])
    names = {node_name(node) for node in nodes}
    if not wait_for(lambda: names <= {n["metadata"]["name"] for n in api(server, "GET", "/nodes", credential=admin)["items"]},
                    timeout=120):
        die(TOOL, "FATA[0120] [workerPlane] Failed to bring up Worker Plane: kubelets did not register")
    for node in nodes:
        api(server, "PATCH", f"/nodes/{node_name(node)}", role_labels_and_taints(node["role"]), credential=admin)
    api(server, "POST", "/objects", {"items": addons(cluster, pod_subnet)}, credential=admin)
    config_path.with_name(f"kube_config_{config_path.name}").write_text(
        kubeconfig_text(state["cluster"]["name"], server, ca, "kube-admin-local", admin))
    state_path.write_text(json.dumps({"ca": ca, "admin": admin, "nodes": sorted(names)}))
    record(TOOL, command="up", ssh_key_path=cluster.get("ssh_key_path"), reached=reached, server=server)
    print("INFO[0100] Finished building Kubernetes cluster successfully")


def role_labels_and_taints(roles: list[str]) -> dict[str, Any]:
    """RKE's role labels, and the taints its worker plane gives a node without the worker role (rke's
    services/workerplane.go): etcd NoExecute, controlplane NoSchedule."""
    taints = [] if "worker" in roles else [
        {"key": f"node-role.kubernetes.io/{role}", "value": "true", "effect": effect}
        for role, effect in (("etcd", "NoExecute"), ("controlplane", "NoSchedule")) if role in roles]
    return {"labels": {f"node-role.kubernetes.io/{role}": "true" for role in roles}, "taints": taints}


# RKE's addon templates: flannel tolerates every NoSchedule and NoExecute taint; canal and calico the same
# and CriticalAddonsOnly; CoreDNS those three.
PLUGIN_TOLERATIONS = {"flannel": [{"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "NoExecute"}]}
COREDNS_TOLERATIONS = [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                       {"effect": "NoExecute", "operator": "Exists"}, {"effect": "NoSchedule", "operator": "Exists"}]


def addons(cluster: dict[str, Any], pod_subnet: str) -> list[dict[str, Any]]:
    """The network plugin (its pod network from services.kube-controller.cluster_cidr) and CoreDNS."""
    plugin = cluster.get("network", {}).get("plugin", "canal")
    tolerations = PLUGIN_TOLERATIONS.get(plugin, CANAL_TOLERATIONS)
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{plugin}-config", "namespace": "kube-system"},
         "data": {"net-conf.json": json.dumps({"Network": pod_subnet, "Backend": {"Type": "vxlan"}})}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": plugin, "namespace": "kube-system"},
         "spec": {"template": {"metadata": {"labels": {"k8s-app": plugin}},
                               "spec": {"tolerations": tolerations, "initContainers": [{"name": "install-cni"}],
                                        "containers": [{"name": "kube-flannel"}]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
         "spec": {"replicas": 1, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {
             "tolerations": COREDNS_TOLERATIONS, "containers": [{"name": "coredns"}]}}}},
    ]


def snapshot_save(config_path: Path, name: str) -> None:
    cluster = load_cluster(config_path)
    for node in cluster["nodes"]:
        if "etcd" not in node["role"]:
            continue
        # RKE writes the snapshot from a container running as root; the double uses sudo for that.
        ssh_ok(node, f"cd ~/{AGENT_DIR}/etcd && sudo -n mkdir -p {SNAPSHOT_DIR} && "
                     f"sudo -n python3 -m zipfile -c {SNAPSHOT_DIR}/{shlex.quote(name)}.zip {apiserver.STATE_FILE}",
               "etcd snapshot")
    record(TOOL, command="snapshot-save", name=name)
    print(f"INFO[0010] Finished saving/uploading [{name}] snapshot")


def snapshot_restore(config_path: Path, name: str) -> None:
    """As RKE does: the snapshot must be on every etcd host first; then the datastore becomes it and the
    control plane restarts on it."""
    cluster = load_cluster(config_path)
    etcd_nodes = [node for node in cluster["nodes"] if "etcd" in node["role"]]
    snapshot = f"{SNAPSHOT_DIR}/{shlex.quote(name)}.zip"
    for node in etcd_nodes:
        if ssh(node, f"sudo -n test -f {snapshot}").returncode != 0:
            die(TOOL, f"FATA[0003] [etcd] Failed to restore etcd snapshot: snapshot file [{name}] does not exist "
                      f"on host [{node['address']}]")
    control = next(node for node in cluster["nodes"] if "controlplane" in node["role"])
    ssh_ok(control, f"if [ -f ~/{AGENT_DIR}/apiserver.pid ]; then kill $(cat ~/{AGENT_DIR}/apiserver.pid) || true; fi",
           "stop kube-apiserver")
    for node in etcd_nodes:
        ssh_ok(node, f"mkdir -p ~/{AGENT_DIR}/etcd && cd ~/{AGENT_DIR}/etcd && sudo -n python3 -m zipfile -e {snapshot} . "
                     f"&& sudo -n chown $(id -u):$(id -g) {apiserver.STATE_FILE}", "etcd restore")
    start_apiserver(control)
    record(TOOL, command="snapshot-restore", name=name)
    print(f"INFO[0030] Finished restoring snapshot [{name}] on all etcd hosts")


def remove(config_path: Path) -> None:
    cluster = load_cluster(config_path)
    for node in cluster["nodes"]:
        ssh_ok(node, f"for pid in ~/{AGENT_DIR}/*.pid; do if [ -f \"$pid\" ]; then kill $(cat \"$pid\") || true; fi; done; "
                     f"rm -rf ~/{AGENT_DIR}", "remove")
    for name in ("cluster.rkestate", f"kube_config_{config_path.name}"):
        config_path.with_name(name).unlink(missing_ok=True)
    record(TOOL, command="remove")
    print("INFO[0010] Cluster removed successfully")


def node_agent(argv: list[str]) -> None:
    """What the double runs on a node where RKE would run a container."""
    kind, (flags, _) = argv[0], parse_flags(argv[1:])
    if "pid-file" in flags:
        Path(os.path.expanduser(flags["pid-file"])).write_text(str(os.getpid()))
    if kind == "init-state":
        if not apiserver.state_path(os.path.expanduser(flags["data-dir"])).exists():
            apiserver.write_state(os.path.expanduser(flags["data-dir"]), json.load(sys.stdin))
    elif kind == "apiserver":
        apiserver.Server(flags["advertise-address"], int(flags["secure-port"]), flags["data-dir"]).serve_forever()
    elif kind == "kubelet":
        pods = Path(os.path.expanduser(f"~/{AGENT_DIR}/pods"))
        threading.Thread(target=workloads.run_forever, args=(flags["server"], flags["credential"], flags["node-name"], pods),
                         daemon=True).start()
        while True:
            try:
                api(flags["server"], "PUT", f"/nodes/{flags['node-name']}",
                    {"address": flags["node-ip"], "kubelet_version": "rke-double", "max_pods": int(flags["max-pods"]),
                     "runtime": "docker://" + socket.gethostname()}, credential=flags["credential"])
            except (OSError, APIError) as exc:
                print(f"node status update failed: {exc}", file=sys.stderr, flush=True)
            time.sleep(5)
    else:
        die(TOOL, f"unknown node agent {kind}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["node-agent"]:
        node_agent(argv[1:])
        return
    flags, words = parse_flags(argv)
    config_path = Path(flags.get("config", "cluster.yml")).resolve()
    record(TOOL, words=words, config=str(config_path))
    if words == ["up"]:
        up(config_path)
    elif words == ["etcd", "snapshot-save"]:
        snapshot_save(config_path, flags.get("name") or f"rke_etcd_snapshot_{time.strftime('%Y-%m-%dT%H:%M:%S')}")
    elif words == ["etcd", "snapshot-restore"] and flags.get("name"):
        snapshot_restore(config_path, flags["name"])
    elif words == ["remove"]:
        remove(config_path)
    elif flags.get("version") == "true":
        print(f"rke version {behaviour()['version']}")
    else:
        die(TOOL, f"this rke double does not implement `rke {' '.join(argv)}`")
