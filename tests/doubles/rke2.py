"""rke2 double: `rke2 server` and `rke2 agent` as systemd Type=notify services, `rke2 etcd-snapshot`, cluster-reset.

Both read /etc/rancher/rke2/config.yaml and accept only the keys of RKE2's server or agent
reference (labctl's field sets; real RKE2 skips an unknown key with a warning, which would
silently drop a setting, so the double fails instead), and need the air-gap image tarball in
/var/lib/rancher/rke2/agent/images, as an offline node has no registry. The first server
creates the cluster: its embedded etcd (the etcd double, data in server/db/etcd), the API server
double on that etcd on 6443 and the supervisor port 9345, the server token in
/var/lib/rancher/rke2/server/node-token, /etc/rancher/rke2/rke2.yaml and the bundled kubectl in
/var/lib/rancher/rke2/bin; it deploys the CNI with cluster-cidr and CoreDNS. A server with
`server:` and `token:` joins: it checks the CA the server sends against the token's K10 pin,
fetches the bootstrap data with the token (the API refuses a token it never issued), adds its
etcd member through the first member (a joined member forwards to it, as kubeadm's stacked etcd
double does), and serves the same state on its own 6443 and 9345 with its own rke2.yaml.
Servers are labelled control-plane, etcd and master and carry their node-taint. An agent trades
the token at `server:` for a node credential and heartbeats. Each tells systemd READY only when
that worked, so `systemctl start` fails otherwise. A server also runs the pods placed on its node
whose images the doubles implement (workloads.py: the Rancher server, the cattle-cluster-agent).
`rke2 server --cluster-reset` restores a snapshot into the datastore, makes the membership this
server alone and exits, and refuses while the server still runs; a joined server whose db dir
is kept fails to start after that (its member is gone), one whose db dir was deleted rejoins.
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
from typing import Any, Callable, TypeVar

import yaml

from labctl.kube import schema

from . import apiserver, etcd, workloads
from .common import (
    APIError,
    CANAL_TOLERATIONS,
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
API_PORT = 6443
# In a joined server's db dir: the etcd members it joined with, as its etcd data dir would hold them.
MEMBER_FILE = "labctl-double-joined-members.json"
T = TypeVar("T")


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


def heartbeat_forever(server: str, name: str, address: str, credential: str, config: dict[str, Any],
                      registered: Callable[[], None] = lambda: None) -> None:
    """Post the node's status every 5 s; after the first one (and registered()) tell systemd READY."""
    max_pods = next((int(arg.split("=", 1)[1]) for arg in config.get("kubelet-arg", []) if arg.startswith("max-pods=")), 110)
    ready = False
    while True:
        try:
            api(server, "PUT", f"/nodes/{name}", {"address": address, "kubelet_version": behaviour()["version"],
                                                  "max_pods": max_pods, "runtime": "containerd://rke2"},
                credential=credential)
            if not ready:
                registered()
                notify_ready()
                ready = True
        except (OSError, APIError) as exc:
            print(f"node status update failed: {exc}", file=sys.stderr, flush=True)
        time.sleep(5)


def at_server(url: str, call: Callable[[], T], refused: str) -> T:
    """call against `server:`, retried while nothing answers there (it may still be starting); a refusal is final."""
    deadline = time.monotonic() + 300
    while True:
        try:
            return call()
        except APIError as exc:
            die(TOOL, f"{refused}: {exc.status} {exc}")
        except OSError:
            if time.monotonic() > deadline:
                die(TOOL, f"failed to reach the server at {url}")
            time.sleep(5)


def server_labels(config: dict[str, Any]) -> dict[str, Any]:
    """The roles RKE2 labels a server with and the taints of its node-taint (key=value:Effect)."""
    taints = []
    for taint in config.get("node-taint", []):
        key_value, _, effect = taint.partition(":")
        key, _, value = key_value.partition("=")
        taints.append({"key": key, "value": value, "effect": effect})
    return {"labels": {f"node-role.kubernetes.io/{role}": "true" for role in ("control-plane", "etcd", "master")},
            "taints": taints}


# The rke2-coredns chart's: CriticalAddonsOnly (its cluster-service template) and the server roles' taints (its values).
RKE2_COREDNS_TOLERATIONS = [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "node-role.kubernetes.io/etcd", "operator": "Exists", "effect": "NoExecute"}]


def addons(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The CNI (rke2-canal's tolerations whatever the cni; its network from cluster-cidr) and CoreDNS."""
    cni = config.get("cni", "canal")
    network = config.get("cluster-cidr", "10.42.0.0/16")
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"rke2-{cni}-config", "namespace": "kube-system"},
         "data": {"net-conf.json": json.dumps({"Network": network, "Backend": {"Type": "vxlan"}})}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": f"rke2-{cni}", "namespace": "kube-system"},
         "spec": {"template": {"metadata": {"labels": {"k8s-app": cni}},
                               "spec": {"tolerations": CANAL_TOLERATIONS, "initContainers": [{"name": "install-cni"}],
                                        "containers": [{"name": "kube-flannel"}]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rke2-coredns-rke2-coredns", "namespace": "kube-system"},
         "spec": {"replicas": 1, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {
             "tolerations": RKE2_COREDNS_TOLERATIONS, "containers": [{"name": "coredns"}]}}}},
    ]


def cluster_reset(restore_path: str) -> None:
    """`rke2 server --cluster-reset --cluster-reset-restore-path=FILE`: the datastore becomes the snapshot, its
    etcd membership this one server again, then exit. The other servers rejoin with their db dir deleted."""
    if not restore_path:
        die(TOOL, "this rke2 double resets from a snapshot only: give --cluster-reset-restore-path")
    snapshot = Path(restore_path)
    if not snapshot.is_file():
        die(TOOL, f"failed to restore etcd: snapshot {restore_path} not found")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", API_PORT)) == 0:
            die(TOOL, "etcd cluster-reset needs rke2-server stopped: the API server still answers on 6443")
    try:
        json.loads(snapshot.read_text())
    except ValueError:
        die(TOOL, f"failed to restore etcd: {restore_path} is not a snapshot")
    ETCD_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(snapshot, apiserver.state_path(ETCD_DIR))
    (ETCD_DIR / etcd.MEMBERS_FILE).unlink(missing_ok=True)
    record(TOOL, command="cluster-reset", restore_path=restore_path)
    print("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. "
          "Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes")


def new_cluster(config: dict[str, Any], name: str, address: str) -> None:
    """The first server's datastore: the cluster state with the server token, and that token in node-token."""
    ca = new_ca()
    token = f"K10{hashlib.sha256(ca.encode()).hexdigest()}::server:{secrets.token_hex(16)}"
    state = apiserver.initial_state(
        cluster={"name": "default", "pod_subnet": config.get("cluster-cidr", "10.42.0.0/16"),
                 "service_subnet": config.get("service-cidr", "10.43.0.0/16"),
                 "dns_domain": config.get("cluster-domain", "cluster.local"),
                 "kubernetes_version": behaviour()["version"], "endpoint": f"{address}:{API_PORT}"},
        ca_pem=ca, admin_credential=secrets.token_hex(16))
    state["tokens"][token] = {"created": time.time(), "server": True}
    state["own_credential"] = secrets.token_hex(16)
    state["node_credentials"][state["own_credential"]] = {"node": name, "token": None}
    apiserver.write_state(ETCD_DIR, state)
    write(NODE_TOKEN, token + "\n", 0o600)


def join_cluster(url: str, token: str, name: str, address: str) -> tuple[dict[str, str], dict[str, str]]:
    """A joining server at `server:`: the CA checked against the token's pin, the bootstrap data fetched with
    the token, its etcd member added (once: a restart keeps its membership in the db dir).
    Returns the bootstrap data (ca, admin) and the members its etcd starts with."""
    ca = at_server(url, lambda: api(url, "GET", "/cluster-info")["ca"], "failed to get CA certs")
    pin, digest = token.removeprefix("K10").split("::", 1)[0], hashlib.sha256(ca.encode()).hexdigest()
    if token.startswith("K10") and pin != digest:
        die(TOOL, f"token CA hash does not match the Cluster CA certificate hash: {pin} != {digest}")
    bootstrap = at_server(url, lambda: api(url, "GET", "/v1-rke2/server-bootstrap", credential=token),
                          f"failed to get bootstrap data from {url}")
    member_file = ETCD_DIR / MEMBER_FILE
    if member_file.exists():
        return bootstrap, json.loads(member_file.read_text())
    status, answer = etcd.add_member(url, bootstrap["admin"], name, address)
    if status != 201:
        die(TOOL, f"failed to join etcd cluster: etcdserver: {answer.get('message')}")
    members = {m["name"]: m["peerURLs"][0] for m in answer["members"]}
    write(member_file, json.dumps(members), 0o600)
    return bootstrap, members


def server() -> None:
    """The first server creates the cluster (or restarts on its datastore); with `server:` and `token:` it joins."""
    config = load_config(schema.RKE2_SERVER_KEYS)
    name = config.get("node-name") or socket.gethostname()
    address = config.get("node-ip") or socket.gethostbyname(name)
    joining = "server" in config
    if joining:
        if not config.get("token"):
            die(TOOL, "a server joining at server: needs the cluster's token")
        bootstrap, members = join_cluster(config["server"], config["token"], name, address)
        ca, admin = bootstrap["ca"], bootstrap["admin"]
        write(NODE_TOKEN, config["token"] + "\n", 0o600)
    else:
        if not apiserver.state_path(ETCD_DIR).exists():
            new_cluster(config, name, address)
        state = apiserver.read_state(ETCD_DIR)
        ca, admin = state["ca"], state["admin"]
        members = {name: f"https://{address}:{etcd.PEER_PORT}"}
    try:
        member = etcd.Member(etcd.member_flags(name, ETCD_DIR, address, members, "existing" if joining else "new"))
    except etcd.NotAMember as exc:
        die(TOOL, f"etcd: {exc}; delete {SERVER_DB} to rejoin")
    member.start()
    mode = int(str(config.get("write-kubeconfig-mode", "0600")), 8)
    write(KUBECONFIG, kubeconfig_text("default", f"https://127.0.0.1:{API_PORT}", ca, "default", admin), mode)
    (DATA / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_KUBECTL, DATA / "bin" / "kubectl")
    apiserver.Server("0.0.0.0", API_PORT, extra_ports=(SUPERVISOR_PORT,),
                     etcd=f"https://127.0.0.1:{etcd.CLIENT_PORT}").start()
    local = f"https://127.0.0.1:{API_PORT}"
    if not wait_for(lambda: api(local, "GET", "/healthz") == "ok", timeout=60):
        die(TOOL, "kube-apiserver did not become healthy")
    api(local, "POST", "/objects", {"items": addons(config)}, credential=admin)
    token = NODE_TOKEN.read_text().strip()
    # The first server's kubelet credential is in the datastore; a joining one trades the token, as an agent does.
    credential = (api(local, "POST", "/bootstrap", {"token": token, "node": name})["credential"] if joining
                  else apiserver.read_state(ETCD_DIR)["own_credential"])
    record(TOOL, command="server", node=name, token=token, config=config, etcd_members=sorted(members))
    threading.Thread(target=workloads.run_forever, args=(local, admin, name, SERVER_DB), daemon=True).start()
    heartbeat_forever(local, name, address, credential, config,
                      registered=lambda: api(local, "PATCH", f"/nodes/{name}", server_labels(config), credential=admin))


def agent() -> None:
    config = load_config(schema.RKE2_AGENT_KEYS)
    if not config.get("server") or not config.get("token"):
        die(TOOL, "rke2 agent needs server and token in its config")
    name = config.get("node-name") or socket.gethostname()
    address = config.get("node-ip") or socket.gethostbyname(name)
    credential = at_server(config["server"], lambda: api(config["server"], "POST", "/bootstrap",
                                                         {"token": config["token"], "node": name})["credential"],
                           "failed to get CA certs")
    record(TOOL, command="agent", node=name, token=config["token"], server=config["server"])
    heartbeat_forever(config["server"], name, address, credential, config)


def etcd_snapshot(words: list[str], flags: dict[str, str]) -> None:
    if not ETCD_DIR.is_dir():
        die(TOOL, "etcd database not found in /var/lib/rancher/rke2/server/db: is this a server node?")
    if words == ["save"]:
        # From the running local member, which on a joined server holds no copy but answers for the cluster.
        try:
            status, answer = etcd.forward(f"https://127.0.0.1:{etcd.CLIENT_PORT}", "GET", "/state")
        except OSError as exc:
            die(TOOL, f"etcd-snapshot: the local etcd does not answer ({exc}): is rke2-server running?")
        if status != 200:
            die(TOOL, f"etcd-snapshot: etcdserver: {answer.get('message')}")
        name = f"{flags.get('name', 'on-demand')}-{socket.gethostname()}-{int(time.time())}"
        SNAPSHOTS.mkdir(parents=True, exist_ok=True)
        write(SNAPSHOTS / name, json.dumps(answer["state"], indent=1, sort_keys=True), 0o600)
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
