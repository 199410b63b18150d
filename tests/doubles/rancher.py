"""Rancher double: the server's v3 API over TLS, and the cattle-cluster-agent of an imported cluster.

In helm mode both run as the "containers" of the Deployments the rancher chart and the import
manifest create (workloads.py starts them where the API double places the pod); the server answers
on 443, as RKE2's ingress does for the real one, with a certificate for the Ingress host from its
own CA (ingress.tls.source rancher). In docker mode `main` is the entry point of a real container
image (image.py): like rancher/rancher's entrypoint.sh it refuses to start unless privileged,
serves 80 (redirects) and 443 with a certificate for each name clients ask for, keeps its state in
/var/lib/rancher and takes the admin password from CATTLE_BOOTSTRAP_PASSWORD on its first start.
Either way it answers /ping, the local provider's login (admin and the bootstrap password, 401
otherwise), and, with the login's token only, settings, clusters and cluster registration tokens.
A registration token's manifestUrl exists only once server-url is set, as in Rancher. The import
manifest's agent reaches the server only through its pod's hostAliases (pods do not read the
node's /etc/hosts), checks the CA against CATTLE_CA_CHECKSUM, then registers with its token; the
server marks that cluster active and imported.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import ssl
import string
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from .common import api, behaviour, die, parse_flags, record

TOOL = "rancher"
AGENT = "cattle-cluster-agent"
STATE_FILE = "labctl-double-rancher.json"
ALPHABET = string.ascii_lowercase + string.digits
HOSTNAME = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


class Certificates:
    """Rancher's own CA, made once in directory, and the serving certificates it issues from it.

    hostname fixes the one name served (helm mode: the Ingress host, ingress.tls.source rancher).
    Without it each host name a client asks for through SNI gets its certificate, as the single
    container's dynamiclistener adds names on demand.
    """

    def __init__(self, directory: Path, hostname: str | None = None):
        self.directory, self.hostname = directory, hostname
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.lock = threading.Lock()
        if not (directory / "ca.crt").exists():
            _make_certificate(directory / "ca", "dynamiclistener-ca", None)
        self.ca_pem = (directory / "ca.crt").read_text()

    def context(self, hostname: str) -> ssl.SSLContext:
        """The TLS context serving hostname's certificate (issued once, kept in the directory)."""
        with self.lock:
            if hostname not in self.contexts:
                stem = self.directory / hostname
                if not Path(f"{stem}.crt").exists():
                    _make_certificate(stem, hostname, self.directory / "ca")
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(Path(f"{stem}.crt"), Path(f"{stem}.key"))
                self.contexts[hostname] = context
            return self.contexts[hostname]

    def server_context(self, default: str) -> ssl.SSLContext:
        """The listener's context: the fixed hostname's certificate, or one per SNI name (default without SNI)."""
        context = self.context(self.hostname or default)
        if self.hostname is None:
            def by_name(sock: ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
                if name and HOSTNAME.fullmatch(name):
                    sock.context = self.context(name)
            context.sni_callback = by_name
        return context


def _make_certificate(stem: Path, name: str, ca_stem: Path | None) -> None:
    """stem.crt and stem.key (0600): a CA for name when ca_stem is None, else a serving certificate signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now))
    if ca_stem is None:
        certificate = (builder.issuer_name(subject).not_valid_after(now + datetime.timedelta(days=3650))
                       .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                       .sign(key, hashes.SHA256()))
    else:
        ca = x509.load_pem_x509_certificate(Path(f"{ca_stem}.crt").read_bytes())
        ca_key = serialization.load_pem_private_key(Path(f"{ca_stem}.key").read_bytes(), password=None)
        certificate = (builder.issuer_name(ca.subject).not_valid_after(now + datetime.timedelta(days=365))
                       .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                       .sign(ca_key, hashes.SHA256()))
    stem.parent.mkdir(parents=True, exist_ok=True)
    key_file = Path(f"{stem}.key")
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    Path(f"{stem}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def error(status: int, code: str, message: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    return status, {"type": "error", "baseType": "error", "status": status, "code": code, "message": message, **fields}


class Rancher:
    """The server's state (Rancher keeps it in its local cluster; here a JSON file) and its HTTPS listener."""

    def __init__(self, state_file: Path, *, hostname: str | None, bootstrap_password: str, version: str,
                 address: str = "0.0.0.0", port: int = 443):
        self.state_file, self.hostname, self.version = state_file, hostname, version
        self.lock = threading.Lock()
        self.certificates = Certificates(state_file.parent / "rancher-tls", hostname)
        self.ca_pem = self.certificates.ca_pem
        self.state = json.loads(state_file.read_text()) if state_file.exists() else {
            "admin_password": bootstrap_password, "tokens": {}, "settings": {"server-url": ""},
            "clusters": {"local": {"id": "local", "type": "cluster", "name": "local", "state": "active",
                                   "driver": "rke2", "internal": True}},
            "registration_tokens": [],
        }
        if not state_file.exists():
            self.save()
        context = self.certificates.server_context(default="localhost")
        handler = type("Handler", (_Handler,), {"rancher": self})
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        # The handshake happens in the request's thread, so a stalled client cannot hold up accept().
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    def token_view(self, token: dict[str, Any]) -> dict[str, Any]:
        server = self.state["settings"]["server-url"]
        url = f"{server}/v3/import/{token['token']}_{token['clusterId']}.yaml" if server else ""
        return {**token, "type": "clusterRegistrationToken", "manifestUrl": url,
                "command": f"kubectl apply -f {url}" if url else "",
                "insecureCommand": f"curl --insecure -sfL {url} | kubectl apply -f -" if url else ""}

    def manifest(self, token: dict[str, Any]) -> str:
        server = self.state["settings"]["server-url"]
        checksum = hashlib.sha256(self.ca_pem.encode()).hexdigest()
        secret = f"cattle-credentials-{hashlib.sha256(token['token'].encode()).hexdigest()[:7]}"
        encode = lambda text: base64.b64encode(text.encode()).decode()
        env = {"CATTLE_FEATURES": "", "CATTLE_IS_RKE": "false", "CATTLE_SERVER": server, "CATTLE_CA_CHECKSUM": checksum,
               "CATTLE_CLUSTER": "true", "CATTLE_K8S_MANAGED": "true", "CATTLE_CLUSTER_REGISTRY": ""}
        documents = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cattle-system"}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cattle", "namespace": "cattle-system"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "cattle-admin-binding"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cattle-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": "cattle", "namespace": "cattle-system"}]},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": "cattle-system"}, "type": "Opaque",
             "data": {"url": encode(server), "token": encode(token["token"]), "namespace": encode("")}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": AGENT, "namespace": "cattle-system"},
             "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": AGENT}}, "spec": {
                 "serviceAccountName": "cattle",
                 # pkg/systemtemplate's defaults while Rancher knows no taints of the cluster's controlplane nodes.
                 "tolerations": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/controlplane", "value": "true"},
                                 {"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
                 "containers": [{"name": "cluster-register", "image": f"rancher/rancher-agent:{self.version}",
                                 "env": [{"name": k, "value": v} for k, v in env.items()],
                                 "volumeMounts": [{"name": "cattle-credentials", "mountPath": "/cattle-credentials", "readOnly": True}]}],
                 "volumes": [{"name": "cattle-credentials", "secret": {"secretName": secret, "defaultMode": 320}}]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": AGENT, "namespace": "cattle-system"},
             "spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP", "name": "http"}], "selector": {"app": AGENT}}},
        ]
        return yaml.safe_dump_all(documents, sort_keys=False)

    def route(self, method: str, url: str, headers: Any, body: Any) -> tuple[int, Any]:
        parsed = urllib.parse.urlsplit(url)
        path, query = parsed.path.rstrip("/"), dict(urllib.parse.parse_qsl(parsed.query))
        state = self.state
        if method == "GET" and path == "/ping":
            return 200, "pong"
        if method == "GET" and path == "/v3/settings/cacerts":
            return 200, {"id": "cacerts", "type": "setting", "name": "cacerts", "value": self.ca_pem}
        if path == "/v3-public/localProviders/local" and query.get("action") == "login":
            if method != "POST":
                return error(405, "MethodNotAllowed", f"Method {method} not supported")
            credentials = body if isinstance(body, dict) else {}
            accepted = (credentials.get("username") == "admin"
                        and secrets.compare_digest(str(credentials.get("password", "")), state["admin_password"]))
            record(TOOL, event="login", username=credentials.get("username"), accepted=accepted)
            if not accepted:
                return error(401, "Unauthorized", "authentication failed")
            token = f"token-{_random(5)}:{_random(54)}"
            state["tokens"][token] = {"user": "user-admin", "created": time.time()}
            return 201, {"type": "token", "token": token, "userId": "user-admin", "authProvider": "local"}
        if method == "GET" and path.startswith("/v3/import/") and path.endswith(".yaml"):
            token_text, _, cluster_id = path.removeprefix("/v3/import/").removesuffix(".yaml").rpartition("_")
            found = [t for t in state["registration_tokens"] if t["token"] == token_text and t["clusterId"] == cluster_id]
            if not found:
                return error(404, "NotFound", "invalid registration token")
            record(TOOL, event="manifest", cluster=cluster_id)
            return 200, self.manifest(found[0])
        if method == "POST" and path == "/v3/connect/register":
            return self.register(headers)
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if bearer not in state["tokens"]:
            return error(401, "Unauthorized", "must authenticate")
        parts = path.split("/")[2:]
        if parts == ["settings", "server-url"] and method == "PUT":
            value = (body or {}).get("value", "")
            if urllib.parse.urlsplit(value).scheme != "https" or not urllib.parse.urlsplit(value).hostname:
                return error(422, "InvalidFormat", f"server-url {value!r} must be an https URL", fieldName="value")
            state["settings"]["server-url"] = value
            return 200, {"id": "server-url", "type": "setting", "name": "server-url", "value": value}
        if parts[:1] == ["settings"] and len(parts) == 2 and method == "GET":
            if parts[1] not in state["settings"]:
                return error(404, "NotFound", f"setting {parts[1]} not found")
            return 200, {"id": parts[1], "type": "setting", "name": parts[1], "value": state["settings"][parts[1]]}
        if parts == ["clusters"] and method == "GET":
            return 200, self.collection(list(state["clusters"].values()), query)
        if parts[:1] == ["clusters"] and len(parts) == 2 and method == "GET":
            cluster = state["clusters"].get(parts[1])
            return (200, cluster) if cluster else error(404, "NotFound", f"clusters.management.cattle.io \"{parts[1]}\" not found")
        if parts == ["clusters"] and method == "POST":
            return self.create_cluster(body or {})
        if parts == ["clusterregistrationtokens"] and method == "GET":
            return 200, self.collection([self.token_view(t) for t in state["registration_tokens"]], query)
        if parts == ["clusterregistrationtokens"] and method == "POST":
            cluster_id = (body or {}).get("clusterId", "")
            if (body or {}).get("type") != "clusterRegistrationToken" or cluster_id not in state["clusters"]:
                return error(422, "InvalidReference", f"clusterId {cluster_id!r} is not a cluster", fieldName="clusterId")
            taken = sum(1 for t in state["registration_tokens"] if t["clusterId"] == cluster_id)
            token = {"id": f"{cluster_id}:{'default-token' if not taken else 'crt-' + _random(5)}", "clusterId": cluster_id,
                     "token": _random(54)}
            state["registration_tokens"].append(token)
            return 201, self.token_view(token)
        return error(404, "NotFound", f"{method} {path} not found")

    @staticmethod
    def collection(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        """v3 collections filter on any field given in the query string."""
        data = [i for i in items if all(str(i.get(k)) == v for k, v in query.items() if k not in ("limit", "sort"))]
        return {"type": "collection", "data": data}

    def create_cluster(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body.get("name", "")
        if body.get("type") != "cluster" or not name:
            return error(422, "MissingRequired", "a cluster needs type cluster and a name", fieldName="name")
        if any(c["name"] == name for c in self.state["clusters"].values()):
            return error(422, "NotUnique", "Cluster name must be unique", fieldName="name")
        cluster = {"id": f"c-{_random(5)}", "type": "cluster", "name": name, "state": "pending", "driver": "",
                   "internal": False, "created": time.time()}
        self.state["clusters"][cluster["id"]] = cluster
        record(TOOL, event="cluster create", cluster=cluster["id"], name=name)
        return 201, cluster

    def register(self, headers: Any) -> tuple[int, Any]:
        token_text = headers.get("X-API-Tunnel-Token", "")
        found = [t for t in self.state["registration_tokens"] if secrets.compare_digest(t["token"], token_text)]
        if not found:
            return error(401, "Unauthorized", "invalid tunnel token")
        try:
            params = json.loads(base64.b64decode(headers.get("X-API-Tunnel-Params", "")))["cluster"]
        except (ValueError, KeyError):
            return error(400, "BadRequest", "X-API-Tunnel-Params is not base64 JSON with a cluster")
        cluster = self.state["clusters"][found[0]["clusterId"]]
        cluster.update(state="active", driver="imported", version={"gitVersion": params.get("version", "")},
                       nodeCount=params.get("nodeCount", 0), agentAddress=params.get("address", ""))
        record(TOOL, event="agent connected", cluster=cluster["id"], version=params.get("version"))
        return 200, {"id": cluster["id"], "state": cluster["state"]}


class _Handler(BaseHTTPRequestHandler):
    rancher: Rancher

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, answer = error(422, "InvalidBodyContent", "request body is not JSON")
        else:
            with self.rancher.lock:
                status, answer = self.rancher.route(method, self.path, self.headers, body)
                if method != "GET":
                    self.rancher.save()
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


@dataclass
class Pod:
    """What a container of the doubles sees: its Deployment and Secrets through the API double."""

    server: str
    credential: str
    namespace: str
    deployment: str
    data_dir: Path

    def objects(self) -> list[dict[str, Any]]:
        return api(self.server, "GET", "/objects", credential=self.credential)["items"]

    def find(self, kind: str, name: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
        for obj in objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name and obj["metadata"].get("namespace") == self.namespace:
                return obj
        raise LookupError(f'{kind} "{name}" not found in namespace {self.namespace}')

    def spec(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        return self.find("Deployment", self.deployment, objects)["spec"]["template"]["spec"]

    def secret_value(self, objects: list[dict[str, Any]], name: str, key: str) -> str:
        return base64.b64decode(self.find("Secret", name, objects)["data"][key]).decode()

    def env(self, objects: list[dict[str, Any]]) -> dict[str, str]:
        values = {}
        for item in self.spec(objects)["containers"][0].get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            values[item["name"]] = self.secret_value(objects, ref["name"], ref["key"]) if ref else item.get("value", "")
        return values


def serve(pod: Pod) -> None:
    """The rancher Deployment's container: the server, for the Ingress host, with the chart's bootstrap password."""
    objects = pod.objects()
    spec = pod.spec(objects)
    ingress = pod.find("Ingress", pod.deployment, objects)
    rancher = Rancher(pod.data_dir / STATE_FILE, hostname=ingress["spec"]["rules"][0]["host"],
                      bootstrap_password=pod.env(objects)["CATTLE_BOOTSTRAP_PASSWORD"],
                      version=spec["containers"][0]["image"].rsplit(":", 1)[1])
    record(TOOL, event="serving", hostname=rancher.hostname, version=rancher.version, port=rancher.port)
    rancher.httpd.serve_forever(poll_interval=0.5)



# How rancher/rancher's entrypoint.sh tells it may run: in a pod (service account) or privileged (the host's /dev).
PRIVILEGE_MARKERS = (Path("/run/secrets/kubernetes.io/serviceaccount"), Path("/dev/kmsg"))
NOT_PRIVILEGED = "ERROR: Rancher must be ran with the --privileged flag when running outside of Kubernetes"
CONTAINER_DATA = Path("/var/lib/rancher")


class _Redirect(BaseHTTPRequestHandler):
    """Port 80: every request goes to the same URL over HTTPS."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "localhost").split(":")[0]
        self.send_response(302)
        self.send_header("Location", f"https://{host}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_HEAD = do_GET


def main(argv: list[str]) -> None:
    """The rancher/rancher image's entry point, as a single container (`docker run --privileged ...`).

    State lives in /var/lib/rancher (the container's volume); the admin password is
    CATTLE_BOOTSTRAP_PASSWORD on the first start, a random one printed to the log otherwise, and
    whatever the state holds on later starts.
    """
    flags, _ = parse_flags(argv)
    if not any(marker.exists() for marker in PRIVILEGE_MARKERS):
        die(TOOL, NOT_PRIVILEGED)
    password = os.environ.get("CATTLE_BOOTSTRAP_PASSWORD", "")
    state_file = CONTAINER_DATA / STATE_FILE
    if not password and not state_file.exists():
        password = _random(20)
        print(f"Bootstrap Password: {password}", flush=True)
    rancher = Rancher(state_file, hostname=None, bootstrap_password=password, version=behaviour()["version"],
                      port=int(flags.get("https-listen-port", 443)))
    http = ThreadingHTTPServer(("0.0.0.0", int(flags.get("http-listen-port", 80))), _Redirect)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    record(TOOL, event="serving", mode="container", version=rancher.version, port=rancher.port,
           http_port=http.server_address[1])
    print(f"Rancher double {rancher.version} listening on :{http.server_address[1]} and :{rancher.port}", flush=True)
    rancher.httpd.serve_forever(poll_interval=0.5)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address while TLS checks the certificate against the URL's host name."""

    def __init__(self, address: str, hostname: str, port: int, context: ssl.SSLContext):
        super().__init__(hostname, port, context=context, timeout=20)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _request(address: str, url: str, context: ssl.SSLContext, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = _PinnedHTTPS(address, parts.hostname or "", parts.port or 443, context)
    try:
        connection.request(method, parts.path or "/", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def connect_agent(pod: Pod) -> str:
    """One registration attempt of the cluster agent; returns the cluster id Rancher answered, raises otherwise."""
    objects = pod.objects()
    spec, env = pod.spec(objects), pod.env(objects)
    secret = next(v["secret"]["secretName"] for v in spec.get("volumes", []) if v["name"] == "cattle-credentials")
    token = pod.secret_value(objects, secret, "token")
    server = env["CATTLE_SERVER"]
    host = urllib.parse.urlsplit(server).hostname
    aliases = {name: alias["ip"] for alias in spec.get("hostAliases", []) for name in alias.get("hostnames", [])}
    if host not in aliases:
        raise OSError(f"dial tcp: lookup {host}: no such host (cluster DNS does not know it and the pod has no hostAlias)")
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    status, body = _request(aliases[host], f"{server}/v3/settings/cacerts", insecure)
    cacerts = json.loads(body)["value"] if status == 200 else ""
    checksum = hashlib.sha256(cacerts.encode()).hexdigest()
    if checksum != env["CATTLE_CA_CHECKSUM"]:
        raise ValueError(f"Configured cacerts checksum ({checksum}) does not match given --ca-checksum ({env['CATTLE_CA_CHECKSUM']})")
    nodes = api(pod.server, "GET", "/nodes", credential=pod.credential)["items"]
    params = {"cluster": {"address": pod.server, "version": api(pod.server, "GET", "/version")["gitVersion"],
                          "nodeCount": len(nodes)}}
    status, body = _request(aliases[host], f"{server}/v3/connect/register", ssl.create_default_context(cadata=cacerts), "POST",
                            {"X-API-Tunnel-Token": token,
                             "X-API-Tunnel-Params": base64.b64encode(json.dumps(params).encode()).decode()})
    if status != 200:
        raise ValueError(f"Rancher refused the registration: {status} {body[:300]!r}")
    return json.loads(body)["id"]


def agent(pod: Pod) -> None:
    """The cattle-cluster-agent container: retries, as the real one does, until Rancher takes it."""
    last_error = ""
    while True:
        try:
            cluster_id = connect_agent(pod)
            record(AGENT, event="connected", cluster=cluster_id)
            return
        except (OSError, ValueError, KeyError, LookupError, StopIteration) as exc:
            if str(exc) != last_error:
                record(AGENT, event="error", error=str(exc))
                last_error = str(exc)
        time.sleep(5)
