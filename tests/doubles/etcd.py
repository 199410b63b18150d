"""etcd double: the static pod kubeadm writes for stacked etcd, run by the kubelet double.

It holds the API server doubles' cluster state and hands it out whole, with a revision: a write
names the revision it read and is refused (409) if another write came first, as an etcd
transaction's compare would refuse it. The first member (--initial-cluster-state new) keeps the
data in --data-dir. A member that joined (--initial-cluster-state existing, after kubeadm's
MemberAdd) keeps no copy: it forwards every call to the first member's peer URL over the lab
network, so every API server serves the same data. There is no Raft: no quorum, no failover;
the first member is the only copy. Plain HTTP on the URLs the manifest names with https.

A snapshot (etcdctl snapshot save in the crictl double) is the whole keyspace with its checksum;
`etcdutl snapshot restore` (etcdutl.py, in the etcd image) makes a fresh data dir of it with the
membership its flags name, as etcdutl does; the member started on that dir publishes its client URLs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import apiserver
from .common import api, close, record, serve_in_background

MEMBERS_FILE = "labctl-double-etcd-members.json"
CLIENT_PORT, PEER_PORT = 2379, 2380
SNAPSHOT_FORMAT = "labctl-double-etcd-snapshot/v1"


def _urls(text: str) -> list[str]:
    return [url for url in text.split(",") if url]


def _plain(url: str) -> str:
    return url.replace("https://", "http://", 1).rstrip("/")


def initial_cluster(text: str) -> dict[str, str]:
    """--initial-cluster `name=peerURL,...` as a map."""
    return dict(entry.split("=", 1) for entry in _urls(text))


def member_flags(name: str, data_dir: Path | str, advertise: str, members: dict[str, str], state: str) -> dict[str, str]:
    """The flags of a stacked member on a control-plane node, as kubeadm's etcd manifest and RKE2's embedded etcd set them."""
    return {"name": name, "data-dir": str(data_dir),
            "advertise-client-urls": f"https://{advertise}:{CLIENT_PORT}",
            "listen-client-urls": f"https://127.0.0.1:{CLIENT_PORT},https://{advertise}:{CLIENT_PORT}",
            "initial-advertise-peer-urls": f"https://{advertise}:{PEER_PORT}",
            "listen-peer-urls": f"https://{advertise}:{PEER_PORT}",
            "initial-cluster": ",".join(f"{member}={url}" for member, url in members.items()),
            "initial-cluster-state": state}


def add_member(server: str, admin_credential: str, name: str, advertise: str) -> tuple[int, Any]:
    """MemberAdd for a joining control-plane node, at the first member's client URL the API server lists."""
    members = api(server, "GET", "/etcd-members", credential=admin_credential)["members"]
    return forward(members[0]["clientURLs"][0], "POST", "/members", {
        "name": name, "peerURLs": [f"https://{advertise}:{PEER_PORT}"], "clientURLs": [f"https://{advertise}:{CLIENT_PORT}"]})


class NotAMember(Exception):
    pass


class Member:
    """One etcd member from the flags of its static pod (name, data-dir, listen and advertise URLs)."""

    def __init__(self, flags: dict[str, str]):
        self.name = flags["name"]
        self.data_dir = Path(flags["data-dir"])
        self.peer_url = flags["initial-advertise-peer-urls"]
        self.client_url = flags["advertise-client-urls"]
        self.lock = threading.Lock()
        self.revision = 0
        self.leader: str | None = None
        if flags.get("initial-cluster-state", "new") == "existing":
            others = {name: url for name, url in initial_cluster(flags["initial-cluster"]).items() if name != self.name}
            self.leader = _plain(next(iter(others.values())))
            members = forward(self.leader, "GET", "/members")[1]["members"]
            if not any(m["name"] == self.name and self.peer_url in m["peerURLs"] for m in members):
                raise NotAMember(f"member {self.name} ({self.peer_url}) has not been added to the cluster "
                                 f"(members: {[m['name'] for m in members]})")
        else:
            self.state = apiserver.read_state(self.data_dir)
            members_path = self.data_dir / MEMBERS_FILE
            if not members_path.exists():
                self._write_members([{"name": self.name, "peerURLs": [self.peer_url], "clientURLs": [self.client_url]}])
            else:
                # A data dir that exists decides the membership (the --initial-* flags are ignored); the member
                # publishes its name and client URLs, as etcd does on every start.
                self._write_members([{**m, "name": self.name, "clientURLs": [self.client_url]}
                                     if self.peer_url in m["peerURLs"] else m for m in self.members()])
        handler = type("Handler", (_Handler,), {"member": self})
        self.listeners = []
        for url in {*_urls(flags["listen-client-urls"]), *_urls(flags["listen-peer-urls"])}:
            parts = urlsplit(url)
            self.listeners.append(ThreadingHTTPServer((parts.hostname, parts.port), handler))
        for listener in self.listeners:
            listener.daemon_threads = True
        record("etcd", event="start", name=self.name, leader=self.leader, peer_url=self.peer_url)

    def members(self) -> list[dict[str, Any]]:
        return json.loads((self.data_dir / MEMBERS_FILE).read_text())

    def _write_members(self, members: list[dict[str, Any]]) -> None:
        (self.data_dir / MEMBERS_FILE).write_text(json.dumps(members))

    def start(self) -> None:
        serve_in_background(self.listeners)

    def stop(self) -> None:
        close(self.listeners)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.leader is not None:
            try:
                return forward(self.leader, method, path, body)
            except OSError as exc:
                return 503, {"message": f"etcdserver: request timed out (leader {self.leader}: {exc})"}
        with self.lock:
            if method == "GET" and path == "/health":
                return 200, {"health": "true"}
            if method == "GET" and path == "/state":
                return 200, {"revision": self.revision, "state": self.state}
            if method == "PUT" and path == "/state":
                if body.get("revision") != self.revision:
                    return 409, {"message": f"revision {body.get('revision')} is stale (now {self.revision})"}
                self.state, self.revision = body["state"], self.revision + 1
                apiserver.write_state(self.data_dir, self.state)
                return 200, {"revision": self.revision}
            if method == "GET" and path == "/members":
                return 200, {"members": self.members()}
            if method == "POST" and path == "/members":
                members = self.members()
                if any(set(m["peerURLs"]) & set(body["peerURLs"]) for m in members):
                    return 409, {"message": "etcdserver: Peer URLs already exists"}
                members.append({"name": body["name"], "peerURLs": body["peerURLs"], "clientURLs": body["clientURLs"]})
                self._write_members(members)
                record("etcd", event="member add", name=body["name"], peer_urls=body["peerURLs"])
                return 201, {"members": members}
        return 404, {"message": f"this etcd double has no {method} {path}"}


def snapshot(data_dir: Path | str) -> str:
    """The snapshot file's text: the keyspace and its SHA-256, which etcdutl checks before restoring."""
    state = json.dumps(apiserver.read_state(data_dir), sort_keys=True)
    return json.dumps({"format": SNAPSHOT_FORMAT, "state": json.loads(state),
                       "sha256": hashlib.sha256(state.encode()).hexdigest()})


def read_snapshot(path: Path) -> dict[str, Any]:
    """The keyspace of a snapshot file; ValueError for anything etcdctl did not write whole."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        raise ValueError(f"snapshot file {path} is not an etcd snapshot (it has no valid database)") from None
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT or "state" not in data:
        raise ValueError(f"snapshot file {path} is not an etcd snapshot (it has no valid database)")
    digest = hashlib.sha256(json.dumps(data["state"], sort_keys=True).encode()).hexdigest()
    if digest != data.get("sha256"):
        raise ValueError(f"expected sha256 {data.get('sha256')}, got {digest}")
    return data["state"]


def restore(data_dir: Path, state: dict[str, Any], members: dict[str, str]) -> None:
    """A fresh data dir holding state, its membership members (name: peer URL) as etcdutl writes it."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    apiserver.write_state(data_dir, state)
    (data_dir / MEMBERS_FILE).write_text(json.dumps(
        [{"name": name, "peerURLs": [url], "clientURLs": []} for name, url in members.items()]))


def forward(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(_plain(base) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class _Handler(BaseHTTPRequestHandler):
    member: Member

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        status, answer = self.member.answer(method, self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")
