"""The API server double: the cluster's state as one JSON document, served over HTTP.

The state lives in a data dir's file (RKE's and RKE2's doubles) or in the etcd double kubeadm's
static pods run (tests/doubles/etcd.py), which the API servers of several masters share.
Who may do what mirrors the real API: the admin credential (admin.conf) reads and writes everything;
RKE2's server token also fetches the bootstrap data a joining server needs; a bootstrap token
(issued by `kubeadm init` / `kubeadm token create`) only fetches the kubelet config and kubeadm's
kubeadm-config and kubeadm-certs (encrypted with the certificate key, which the API never sees) and
trades itself for a node credential; a node credential registers and heartbeats its own node only,
and reads nodes, pods and objects (what a kubelet reads to run the pods placed on it). Nodes are
Ready while their kubelet heartbeats and a CNI DaemonSet whose pod network equals the cluster's pod
subnet has been applied. Pods go, as the scheduler places them, only to Ready nodes whose NoSchedule
and NoExecute taints their template tolerates; with none they stay Pending.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import etcd
from .common import close, parse_flags, serve_in_background

STATE_FILE = "labctl-double-apiserver.json"
HEARTBEAT_GRACE = 40.0
# Containers that install a CNI plugin on the node in canal, calico and flannel manifests.
CNI_CONTAINERS = {"install-cni", "kube-flannel", "calico-node"}


def state_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / STATE_FILE


def initial_state(*, cluster: dict[str, Any], ca_pem: str, admin_credential: str,
                  kubelet_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """cluster: name, pod_subnet, service_subnet, dns_domain, kubernetes_version, endpoint."""
    return {"cluster": cluster, "ca": ca_pem, "admin": admin_credential, "tokens": {}, "node_credentials": {},
            "nodes": {}, "objects": [], "kubelet_config": kubelet_config or {}}


def write_state(data_dir: Path | str, state: dict[str, Any]) -> None:
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


def read_state(data_dir: Path | str) -> dict[str, Any]:
    return json.loads(state_path(data_dir).read_text())


def cni_network(objects: list[dict[str, Any]]) -> str | None:
    """The pod network of an applied CNI: its DaemonSet installs the plugin, its net-conf names the network."""
    has_daemonset = any(
        o.get("kind") == "DaemonSet"
        and {c.get("name") for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
             + o.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers", [])} & CNI_CONTAINERS
        for o in objects
    )
    if not has_daemonset:
        return None
    for obj in objects:
        net_conf = (obj.get("data") or {}).get("net-conf.json") if obj.get("kind") == "ConfigMap" else None
        if net_conf:
            return json.loads(net_conf).get("Network")
    # calico without flannel: the IP pool comes from CALICO_IPV4POOL_CIDR.
    for obj in objects:
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for env in container.get("env", []) or []:
                if env.get("name") == "CALICO_IPV4POOL_CIDR":
                    return env.get("value")
    return None


def node_view(state: dict[str, Any], name: str, now: float) -> dict[str, Any]:
    node = state["nodes"][name]
    fresh = now - node["heartbeat"] < HEARTBEAT_GRACE
    network = cni_network(state["objects"])
    cni_ok = network == state["cluster"]["pod_subnet"]
    if not fresh:
        reason, message = "NodeStatusUnknown", "Kubelet stopped posting node status."
    elif network is None:
        reason, message = "KubeletNotReady", "container runtime network not ready: cni plugin not initialized"
    elif not cni_ok:
        reason, message = "KubeletNotReady", f"CNI network {network} is not the cluster's pod subnet {state['cluster']['pod_subnet']}"
    else:
        reason, message = "KubeletReady", "kubelet is posting ready status"
    ready = fresh and cni_ok
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **node.get("labels", {})}},
        "spec": {"taints": node.get("taints", [])},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": reason,
                            "message": message}],
            "addresses": [{"type": "InternalIP", "address": node["address"]}, {"type": "Hostname", "address": name}],
            "capacity": {"pods": str(node.get("max_pods", 110))},
            "nodeInfo": {"kubeletVersion": node.get("kubelet_version", ""),
                         "containerRuntimeVersion": node.get("runtime", "")},
        },
        "labctlDouble": {"peer": node["peer"], "registeredWith": node.get("registered_with")},
    }


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: an empty effect matches every effect, an empty key (with
    Exists) every key; Exists ignores the value, Equal (the default) compares it."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and toleration.get("value", "") == taint.get("value", "")


def schedulable(node: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    """Whether the scheduler may place a pod with tolerations on node: every NoSchedule and NoExecute
    taint tolerated (PreferNoSchedule only steers)."""
    return all(any(tolerates(t, taint) for t in tolerations)
               for taint in node.get("taints", []) if taint.get("effect") in ("NoSchedule", "NoExecute"))


def pod_views(state: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Pods of the applied Deployments and DaemonSets: Running once a Ready node whose taints the pod
    template tolerates takes them, Pending while there is none."""
    ready_nodes = sorted(n for n in state["nodes"]
                         if node_view(state, n, now)["status"]["conditions"][0]["status"] == "True")
    pods = []
    for obj in state["objects"]:
        kind = obj.get("kind")
        if kind not in ("Deployment", "DaemonSet"):
            continue
        meta, spec = obj["metadata"], obj.get("spec", {})
        template = spec.get("template", {})
        labels = template.get("metadata", {}).get("labels", {})
        containers = template.get("spec", {}).get("containers", [])
        tolerations = template.get("spec", {}).get("tolerations") or []
        eligible = [n for n in ready_nodes if schedulable(state["nodes"][n], tolerations)]
        if kind == "Deployment":
            placements = [eligible[i % len(eligible)] if eligible else None for i in range(spec.get("replicas", 1))]
        else:
            placements = eligible or [None]
        for index, node in enumerate(placements):
            running = node is not None
            pods.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{meta['name']}-{index}", "namespace": meta.get("namespace", "default"),
                             "labels": labels},
                "spec": {"nodeName": node or "", "tolerations": tolerations},
                "status": {"phase": "Running" if running else "Pending",
                           "containerStatuses": [{"name": c.get("name"), "ready": running} for c in containers]},
            })
    return pods


class FileStore:
    """The state in this process, saved to the data dir's file (RKE's and RKE2's doubles)."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)
        self.state = read_state(self.data_dir)

    def load(self) -> tuple[dict[str, Any], int | None]:
        return self.state, None

    def save(self, state: dict[str, Any], revision: int | None) -> None:
        write_state(self.data_dir, state)

    def members(self) -> list[dict[str, Any]] | None:
        return None


class Conflict(Exception):
    """Another API server wrote since this one read."""


class EtcdStore:
    """The state in the etcd double at --etcd-servers, read and written whole per request."""

    def __init__(self, url: str):
        self.url = url

    def load(self) -> tuple[dict[str, Any], int | None]:
        status, answer = etcd.forward(self.url, "GET", "/state")
        if status != 200:
            raise OSError(answer.get("message", f"etcd answered {status}"))
        return answer["state"], answer["revision"]

    def save(self, state: dict[str, Any], revision: int | None) -> None:
        status, answer = etcd.forward(self.url, "PUT", "/state", {"revision": revision, "state": state})
        if status == 409:
            raise Conflict(answer["message"])
        if status != 200:
            raise OSError(answer.get("message", f"etcd answered {status}"))

    def members(self) -> list[dict[str, Any]] | None:
        return etcd.forward(self.url, "GET", "/members")[1]["members"]


class Server:
    """One cluster state served on port and on extra_ports (RKE2's supervisor port answers the same API).

    The state lives in data_dir (one process owns it) or, given etcd (a URL), in the etcd double,
    which several API servers share.
    """

    def __init__(self, address: str, port: int, data_dir: Path | str | None = None, extra_ports: tuple[int, ...] = (),
                 *, etcd: str | None = None):
        self.store = EtcdStore(etcd) if etcd else FileStore(data_dir)
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_double": self})
        self.listeners = [ThreadingHTTPServer((address, p), handler) for p in (port, *extra_ports)]
        for listener in self.listeners:
            listener.daemon_threads = True
        self.httpd = self.listeners[0]

    def serve_forever(self) -> None:
        self.start()
        threading.Event().wait()

    def start(self) -> None:
        serve_in_background(self.listeners)

    def stop(self) -> None:
        close(self.listeners)


class _Handler(BaseHTTPRequestHandler):
    server_double: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _credential(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ").strip()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        double = self.server_double
        path = self.path.split("?")[0]
        try:
            body = self._body()
        except ValueError:
            self._send(400, {"message": "request body is not JSON"})
            return
        credential = self._credential()
        for _attempt in range(5):
            try:
                with double.lock:
                    state, revision = double.store.load()
                    admin = bool(credential) and secrets.compare_digest(credential, state["admin"])
                    status, answer, changed = self._route(method, path, body, state, credential, admin)
                    if changed:
                        double.store.save(state, revision)
                break
            except Conflict:
                continue
            except OSError as exc:
                status, answer = 503, {"message": f"etcdserver: {exc}"}
                break
        else:
            status, answer = 409, {"message": "the object has been modified; please apply your changes to the latest version"}
        self._send(status, answer)

    def _route(self, method, path, body, state, credential, admin):
        now = time.time()
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path == "/healthz":
            return 200, "ok", False
        if method == "GET" and path == "/version":
            # Readable without credentials, as on a real API server.
            return 200, {"gitVersion": state["cluster"]["kubernetes_version"]}, False
        if method == "GET" and path == "/cluster-info":
            # kube-public/cluster-info: readable without credentials, as discovery needs it.
            return 200, {"ca": state["ca"], "server": state["cluster"]["endpoint"]}, False
        if method == "GET" and path == "/kubelet-config":
            if not (admin or credential in state["tokens"]):
                return 401, {"message": "Unauthorized"}, False
            return 200, state["kubelet_config"], False
        if method == "GET" and path == "/kubeadm-config":
            # kube-system/kubeadm-config, which bootstrap tokens may read.
            if not (admin or credential in state["tokens"]):
                return 401, {"message": "Unauthorized"}, False
            return 200, state["cluster"], False
        if method == "GET" and path == "/secrets/kubeadm-certs":
            # Readable with a bootstrap token, as kubeadm's RBAC allows; only the certificate key opens it.
            if not (admin or credential in state["tokens"]):
                return 401, {"message": "Unauthorized"}, False
            if "kubeadm_certs" not in state:
                return 404, {"message": 'secrets "kubeadm-certs" not found'}, False
            return 200, state["kubeadm_certs"], False
        if method == "GET" and path == "/v1-rke2/server-bootstrap":
            # RKE2's supervisor hands a joining server the cluster's CA and credentials for the server token only.
            if not state["tokens"].get(credential, {}).get("server"):
                return 401, {"message": "Unauthorized"}, False
            return 200, {"ca": state["ca"], "admin": state["admin"]}, False
        if method == "POST" and path == "/bootstrap":
            token = (body or {}).get("token", "")
            if token not in state["tokens"]:
                return 401, {"message": f"token id {token.split('.')[0]!r} is invalid for this cluster or it has expired"}, False
            node_credential = secrets.token_hex(16)
            state["node_credentials"][node_credential] = {"node": body.get("node"), "token": token}
            return 200, {"credential": node_credential}, True
        if method == "PUT" and len(parts) == 2 and parts[0] == "nodes":
            bound = state["node_credentials"].get(credential)
            if bound is None or bound["node"] != parts[1]:
                return 403, {"message": f"node credential may not update node {parts[1]}"}, False
            node = state["nodes"].setdefault(parts[1], {"labels": {}, "taints": [], "registered_with": bound["token"]})
            node.update({key: body[key] for key in ("address", "kubelet_version", "max_pods", "runtime") if key in body})
            node["heartbeat"] = now
            node["peer"] = self.client_address[0]
            return 200, {"name": parts[1]}, True
        kubelet_read = method == "GET" and path in ("/nodes", "/pods", "/objects") and credential in state["node_credentials"]
        if not (admin or kubelet_read):
            return 401, {"message": "Unauthorized"}, False
        if method == "POST" and path == "/tokens":
            state["tokens"][body["token"]] = {"created": now}
            return 201, {"token": body["token"]}, True
        if method == "PUT" and path == "/secrets/kubeadm-certs":
            state["kubeadm_certs"] = body
            return 200, {}, True
        if method == "GET" and path == "/etcd-members":
            members = self.server_double.store.members()
            if members is None:
                return 404, {"message": "this API server's etcd has no member list"}, False
            return 200, {"members": members}, False
        if method == "POST" and path == "/node-credentials":
            state["node_credentials"][body["credential"]] = {"node": body["node"], "token": None}
            return 201, {}, True
        if method == "PATCH" and len(parts) == 2 and parts[0] == "nodes":
            if parts[1] not in state["nodes"]:
                return 404, {"message": f'nodes "{parts[1]}" not found'}, False
            node = state["nodes"][parts[1]]
            node["labels"].update(body.get("labels", {}))
            node["taints"] = body.get("taints", node["taints"])
            return 200, {}, True
        if method == "GET" and path == "/nodes":
            return 200, {"items": [node_view(state, n, now) for n in sorted(state["nodes"])]}, False
        if method == "GET" and path == "/pods":
            return 200, {"items": pod_views(state, now)}, False
        if method == "GET" and path == "/objects":
            return 200, {"items": state["objects"]}, False
        if method == "POST" and path == "/objects":
            results = []
            for obj in body["items"]:
                key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                old = [o for o in state["objects"]
                       if (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) == key]
                state["objects"] = [o for o in state["objects"] if o not in old]
                state["objects"].append(obj)
                results.append({"kind": obj["kind"], "name": obj["metadata"]["name"],
                                "result": "configured" if old else "created"})
            return 200, {"results": results}, True
        return 404, {"message": f"the server could not find the requested resource ({method} {path})"}, False


def main(argv: list[str]) -> None:
    """`apiserver --advertise-address IP --secure-port N --data-dir DIR`: how rke's double starts it on a node."""
    flags, _ = parse_flags(argv)
    Server(flags["advertise-address"], int(flags.get("secure-port", 6443)), flags["data-dir"]).serve_forever()
