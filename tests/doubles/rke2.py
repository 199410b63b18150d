"""rke2 double: `rke2 server` and `rke2 agent` as systemd Type=notify services, `rke2 etcd-snapshot`, cluster-reset.

Both read /etc/rancher/rke2/config.yaml and accept only the keys of RKE2's server or agent
reference (labctl's field sets; real RKE2 skips an unknown key with a warning, which would
silently drop a setting, so the double fails instead), and need the air-gap image tarball in
/var/lib/rancher/rke2/agent/images, as an offline node has no registry. The first server
creates the cluster: the API server double on 6443 and the supervisor port 9345, the node token
in /var/lib/rancher/rke2/server/node-token, /etc/rancher/rke2/rke2.yaml and the bundled kubectl
in /var/lib/rancher/rke2/bin; it deploys the CNI with cluster-cidr and CoreDNS. An agent trades
the token at `server:` for a node credential (the API rejects tokens it never issued) and
heartbeats. Each tells systemd READY only when that worked, so `systemctl start` fails otherwise.
A server also runs the pods placed on its node whose images the doubles implement (workloads.py:
the Rancher server, the cattle-cluster-agent). `rke2 server --cluster-reset` restores a snapshot
into the datastore and exits, and refuses while the server still runs.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from labctl.kube import schema

from . import apiserver, workloads
from .common import (
    APIError,
    api,
    behaviour,
    die,
    kubeconfig_text,
    new_ca,
    notify_ready,
    parse_flags,
    record,
    wait_for,
    write,
)

TOOL = "rke2"
CONFIG = Path("/etc/rancher/rke2/config.yaml")
DATA = Path("/var/lib/rancher/rke2")
SERVER_DB = DATA / "server" / "db"
ETCD_DIR = SERVER_DB / "etcd"
SNAPSHOTS = SERVER_DB / "snapshots"
NODE_TOKEN = DATA / "server" / "node-token"
IMAGES = DATA / "agent" / "images"
KUBECONFIG = Path("/etc/rancher/rke2/rke2.yaml")
BUNDLED_KUBECTL = Path("/usr/local/share/rke2/kubectl")
SUPERVISOR_PORT = 9345


def load_config(allowed: frozenset[str]) -> dict[str, Any]:
    try:
        config = yaml.safe_load(CONFIG.read_text()) or {}
    except OSError:
        config = {}
    unknown = sorted(set(config) - allowed)
    if unknown:
        die(TOOL, f"{CONFIG}: unknown keys {unknown} (RKE2 would skip them with a warning)")
    if not any(IMAGES.glob("rke2-images*.tar*")):
        die(TOOL, f"no image tarball in {IMAGES}: an air-gapped node cannot pull rke2's images")
    return config


def heartbeat_forever(server: str, name: str, address: str, credential: str, config: dict[str, Any]) -> None:
    max_pods = next((int(arg.split("=", 1)[1]) for arg in config.get("kubelet-arg", []) if arg.startswith("max-pods=")), 110)
    ready = False
    while True:
        try:
            api(server, "PUT", f"/nodes/{name}", {"address": address, "kubelet_version": behaviour()["version"],
                                                  "max_pods": max_pods, "runtime": "containerd://rke2"},
                credential=credential)
            if not ready:
                notify_ready()
                ready = True
        except (OSError, APIError) as exc:
            print(f"node status update failed: {exc}", file=sys.stderr, flush=True)
        time.sleep(5)


def addons(config: dict[str, Any]) -> list[dict[str, Any]]:
    cni = config.get("cni", "canal")
    network = config.get("cluster-cidr", "10.42.0.0/16")
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"rke2-{cni}-config", "namespace": "kube-system"},
         "data": {"net-conf.json": json.dumps({"Network": network, "Backend": {"Type": "vxlan"}})}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": f"rke2-{cni}", "namespace": "kube-system"},
         "spec": {"template": {"metadata": {"labels": {"k8s-app": cni}},
                               "spec": {"initContainers": [{"name": "install-cni"}], "containers": [{"name": "kube-flannel"}]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rke2-coredns-rke2-coredns", "namespace": "kube-system"},
         "spec": {"replicas": 1, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                               "spec": {"containers": [{"name": "coredns"}]}}}},
    ]


def cluster_reset(restore_path: str) -> None:
    """`rke2 server --cluster-reset --cluster-reset-restore-path=FILE`: the datastore becomes the snapshot, then exit."""
    if not restore_path:
        die(TOOL, "this rke2 double resets from a snapshot only: give --cluster-reset-restore-path")
    snapshot = Path(restore_path)
    if not snapshot.is_file():
        die(TOOL, f"failed to restore etcd: snapshot {restore_path} not found")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6443)) == 0:
            die(TOOL, "etcd cluster-reset needs rke2-server stopped: the API server still answers on 6443")
    try:
        json.loads(snapshot.read_text())
    except ValueError:
        die(TOOL, f"failed to restore etcd: {restore_path} is not a snapshot")
    ETCD_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(snapshot, apiserver.state_path(ETCD_DIR))
    record(TOOL, command="cluster-reset", restore_path=restore_path)
    print("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. "
          "Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes")


def server() -> None:
    config = load_config(schema.RKE2_SERVER_KEYS)
    if "server" in config:
        die(TOOL, "this rke2 double runs the first server only; joining servers are not implemented")
    name = config.get("node-name") or socket.gethostname()
    address = config.get("node-ip") or socket.gethostbyname(name)
    state_file = apiserver.state_path(ETCD_DIR)
    if not state_file.exists():
        ca = new_ca()
        token = f"K10{hashlib.sha256(ca.encode()).hexdigest()}::server:{secrets.token_hex(16)}"
        service = config.get("service-cidr", "10.43.0.0/16")
        state = apiserver.initial_state(
            cluster={"name": "default", "pod_subnet": config.get("cluster-cidr", "10.42.0.0/16"),
                     "service_subnet": service, "dns_domain": config.get("cluster-domain", "cluster.local"),
                     "kubernetes_version": behaviour()["version"], "endpoint": f"{address}:6443"},
            ca_pem=ca, admin_credential=secrets.token_hex(16))
        state["tokens"][token] = {"created": time.time()}
        state["own_credential"] = secrets.token_hex(16)
        state["node_credentials"][state["own_credential"]] = {"node": name, "token": None}
        apiserver.write_state(ETCD_DIR, state)
        write(NODE_TOKEN, token + "\n", 0o600)
    state = apiserver.read_state(ETCD_DIR)
    mode = int(str(config.get("write-kubeconfig-mode", "0600")), 8)
    write(KUBECONFIG, kubeconfig_text("default", "https://127.0.0.1:6443", state["ca"], "default", state["admin"]), mode)
    (DATA / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_KUBECTL, DATA / "bin" / "kubectl")
    apiserver.Server("0.0.0.0", 6443, ETCD_DIR, extra_ports=(SUPERVISOR_PORT,)).start()
    local = "https://127.0.0.1:6443"
    if not wait_for(lambda: api(local, "GET", "/healthz") == "ok", timeout=60):
        die(TOOL, "kube-apiserver did not become healthy")
    api(local, "POST", "/objects", {"items": addons(config)}, credential=state["admin"])
    record(TOOL, command="server", node=name, token=NODE_TOKEN.read_text().strip(), config=config)
    threading.Thread(target=workloads.run_forever, args=(local, state["admin"], name, SERVER_DB), daemon=True).start()
    heartbeat_forever(local, name, address, state["own_credential"], config)


def agent() -> None:
    config = load_config(schema.RKE2_AGENT_KEYS)
    if not config.get("server") or not config.get("token"):
        die(TOOL, "rke2 agent needs server and token in its config")
    name = config.get("node-name") or socket.gethostname()
    address = config.get("node-ip") or socket.gethostbyname(name)
    credential = ""

    def join() -> bool:
        nonlocal credential
        credential = api(config["server"], "POST", "/bootstrap", {"token": config["token"], "node": name})["credential"]
        return True

    try:
        join()
    except APIError as exc:
        die(TOOL, f"failed to get CA certs: {exc}")
    except OSError:
        if not wait_for(join, timeout=300, interval=5):
            die(TOOL, f"failed to reach the server at {config['server']}")
    record(TOOL, command="agent", node=name, token=config["token"], server=config["server"])
    heartbeat_forever(config["server"], name, address, credential, config)


def etcd_snapshot(words: list[str], flags: dict[str, str]) -> None:
    if not apiserver.state_path(ETCD_DIR).exists():
        die(TOOL, "etcd database not found in /var/lib/rancher/rke2/server/db: is this a server node?")
    if words == ["save"]:
        name = f"{flags.get('name', 'on-demand')}-{socket.gethostname()}-{int(time.time())}"
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(apiserver.state_path(ETCD_DIR), SNAPSHOTS / name)
        record(TOOL, command="etcd-snapshot save", name=name)
        print(f"Snapshot {name} saved.")
    elif words in (["list"], ["ls"]):
        print("Name Location Size Created")
        for path in sorted(SNAPSHOTS.glob("*")):
            print(f"{path.name} file://{path} {path.stat().st_size} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(path.stat().st_mtime))}")
    else:
        die(TOOL, f"this rke2 double does not implement `rke2 etcd-snapshot {' '.join(words)}`")


def main(argv: list[str]) -> None:
    flags, words = parse_flags(argv)
    if words[:1] == ["server"] and flags.get("cluster-reset") == "true":
        cluster_reset(flags.get("cluster-reset-restore-path", ""))
    elif words[:1] == ["server"]:
        server()
    elif words[:1] == ["agent"]:
        agent()
    elif words[:1] == ["etcd-snapshot"]:
        etcd_snapshot(words[1:], flags)
    elif flags.get("version") == "true":
        print(f"rke2 version {behaviour()['version']}")
    else:
        die(TOOL, f"this rke2 double does not implement `rke2 {' '.join(argv)}`")
