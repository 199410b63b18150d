"""What the doubles share: a call log, behaviour baked in at build time, kubeconfigs, HTTP to the API double."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pkgutil
import secrets
import socket
import string
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import yaml

# Root's calls go to /var/log; a user's (rke, kubectl on the rancher node) to their home.
# LABCTL_DOUBLES_LOG moves them, for the doubles' own tests on the host.
LOG_DIR = Path(os.environ.get("LABCTL_DOUBLES_LOG") or (
    "/var/log/labctl-doubles" if os.geteuid() == 0 else Path.home() / ".labctl-doubles" / "log"))
API_PORT = 6443
# The canal DaemonSet's tolerations in upstream Calico's canal.yaml, RKE's canal template and the rke2-canal
# chart alike (calico-node's in calico.yaml too): every NoSchedule and NoExecute taint.
CANAL_TOLERATIONS = [{"effect": "NoSchedule", "operator": "Exists"},
                     {"key": "CriticalAddonsOnly", "operator": "Exists"},
                     {"effect": "NoExecute", "operator": "Exists"}]


def record(tool: str, **fields: Any) -> None:
    """Append one JSON line per call to LOG_DIR/<tool>.log; tests read these to follow the data flow."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    entry = {"time": time.time(), "argv": sys.argv[1:], **fields}
    with open(LOG_DIR / f"{tool}.log", "a") as log:
        log.write(json.dumps(entry) + "\n")


def die(tool: str, message: str, code: int = 1) -> NoReturn:
    record(tool, error=message, exit=code)
    print(message, file=sys.stderr)
    sys.exit(code)


def behaviour() -> dict[str, Any]:
    """Settings a test baked into this build (behaviour.json in the zipapp), e.g. a step to fail."""
    try:
        data = pkgutil.get_data(__package__, "behaviour.json")
    except FileNotFoundError:
        return {}
    return json.loads(data or b"{}")


def new_token() -> str:
    """A bootstrap token in kubeadm's format: [a-z0-9]{6}.[a-z0-9]{16}."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(6)) + "." + "".join(secrets.choice(alphabet) for _ in range(16))


def new_ca() -> str:
    """A stand-in CA certificate: PEM armour around random bytes (the doubles never do TLS)."""
    body = base64.encodebytes(b"labctl-double-ca:" + secrets.token_bytes(96)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def ca_hash(ca_pem: str) -> str:
    """The discovery hash of a CA, `sha256:<hex>` as kubeadm prints it (here over the PEM body)."""
    body = "".join(line for line in ca_pem.splitlines() if not line.startswith("-----"))
    return "sha256:" + hashlib.sha256(base64.b64decode(body)).hexdigest()


def kubeconfig_text(cluster: str, server: str, ca_pem: str, user: str, credential: str) -> str:
    """A kubeconfig in the shape kubeadm and RKE write; the credential stands where the client key goes."""
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(), "server": server}}],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
        "users": [{"name": user, "user": {
            "client-certificate-data": base64.b64encode(f"certificate of {user}".encode()).decode(),
            "client-key-data": base64.b64encode(credential.encode()).decode()}}],
    }, sort_keys=False)


def bootstrap_kubeconfig_text(cluster: str, server: str, ca_pem: str, token: str) -> str:
    """bootstrap-kubelet.conf: the bootstrap token as the user's token, as kubeadm join writes it."""
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(), "server": server}}],
        "contexts": [{"name": f"tls-bootstrap-token-user@{cluster}",
                      "context": {"cluster": cluster, "user": "tls-bootstrap-token-user"}}],
        "current-context": f"tls-bootstrap-token-user@{cluster}",
        "users": [{"name": "tls-bootstrap-token-user", "user": {"token": token}}],
    }, sort_keys=False)


class Kubeconfig:
    """The parts of a kubeconfig the doubles use: the server and the credential of the current context."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        config = yaml.safe_load(self.path.read_text())
        context_name = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
        context = contexts.get(context_name) or (next(iter(contexts.values())) if contexts else {})
        clusters = {c["name"]: c["cluster"] for c in config["clusters"]}
        users = {u["name"]: u["user"] for u in config.get("users") or []}
        cluster = clusters.get(context.get("cluster")) or config["clusters"][0]["cluster"]
        user = users.get(context.get("user")) or {}
        self.server: str = cluster["server"]
        self.ca_pem = base64.b64decode(cluster.get("certificate-authority-data", "")).decode()
        if "client-key-data" in user:
            self.credential = base64.b64decode(user["client-key-data"]).decode()
        else:
            self.credential = user.get("token", "")


class APIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def api(server: str, method: str, path: str, body: Any = None, *, credential: str = "", timeout: float = 10) -> Any:
    """Call the API double. It serves plain HTTP on the port the kubeconfig names for HTTPS."""
    url = server.replace("https://", "http://", 1).rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if credential:
        request.add_header("Authorization", f"Bearer {credential}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = str(exc.reason)
        raise APIError(exc.code, message) from exc


def cri_call(endpoint: str, method: str, *, timeout: float = 30) -> dict[str, Any]:
    """One call to the cri-dockerd double: a JSON line each way on its socket, in place of CRI's gRPC."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(endpoint.removeprefix("unix://"))
        connection.sendall(json.dumps({"method": method}).encode() + b"\n")
        reply = json.loads(connection.makefile().readline() or "{}")
    if "error" in reply or not reply:
        raise OSError(reply.get("error", "the runtime closed the connection"))
    return reply


def wait_for(check, *, timeout: float, interval: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except (OSError, APIError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def parse_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--name=value` and `--name value` flags (a bare `--name` is "true"), and the positional words."""
    flags: dict[str, str] = {}
    words: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--") and len(arg) > 2:
            name, equals, value = arg[2:].partition("=")
            if not equals:
                following = argv[index + 1] if index + 1 < len(argv) else None
                if following is not None and not following.startswith("-"):
                    value = following
                    index += 1
                else:
                    value = "true"
            flags[name] = value
        else:
            words.append(arg)
        index += 1
    return flags, words


def write(path: Path | str, text: str, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def notify_ready() -> None:
    """sd_notify(READY=1): systemd's start of a Type=notify unit returns now."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


def serve_in_background(listeners: list) -> None:
    """Each HTTP server on a daemon thread: the double's process lives as long as its caller wants."""
    for listener in listeners:
        threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()


def close(listeners: list) -> None:
    for listener in listeners:
        listener.shutdown()
        listener.server_close()
