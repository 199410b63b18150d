"""kubeadm double: init, token create, join, reset, config images list, init phase upload-certs.

`init --config` parses the file as kubeadm does (known apiVersion/kind, only known fields, via
labctl's field sets), runs kubeadm's preflight checks, writes /etc/kubernetes (pki, admin.conf,
kubelet.conf, static pod manifests) and /var/lib/kubelet, starts the kubelet, waits for the API
server the kubelet runs, marks the control plane and prints a join command with a fresh token.
`join --config` discovers the cluster at apiServerEndpoint, checks the CA against caCertHashes,
presents the token (the API server double rejects tokens it never issued), and waits for the
kubelet's TLS bootstrap. With a controlPlane section it also needs a cluster with a
controlPlaneEndpoint, opens the kubeadm-certs Secret with certificateKey (`init --upload-certs` and
`init phase upload-certs --upload-certs` seal the shared certificates with a fresh key; a new
upload replaces the old), adds an etcd member through the first member, writes the control
plane's static pods (its API server works on that shared etcd) and marks the node control-plane.
Every call is logged, with the tokens and keys, for the test to compare.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from labctl.kube import schema

from . import apiserver, etcd
from .common import (Kubeconfig, APIError, api, behaviour, bootstrap_kubeconfig_text, ca_hash, cri_call, die, kubeconfig_text,
                     new_ca, new_token, parse_flags, record, wait_for, write)

KUBERNETES = Path("/etc/kubernetes")
PKI = KUBERNETES / "pki"
MANIFESTS = KUBERNETES / "manifests"
KUBELET_DIR = Path("/var/lib/kubelet")
ADMIN_CONF = KUBERNETES / "admin.conf"
KUBELET_CONF = KUBERNETES / "kubelet.conf"
BOOTSTRAP_KUBELET_CONF = KUBERNETES / "bootstrap-kubelet.conf"
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
TOOLS_REQUIRED = ("crictl", "conntrack", "iptables", "mount", "nsenter")
TOOLS_WANTED = ("socat", "ethtool")
CONTROL_PLANE_PORTS = (6443, 10259, 10257, 2379, 2380)
KUBELET_PORT = 10250
PAUSE = "registry.k8s.io/pause:3.10.1"
ETCD_TAG = "3.6.5-0"
TOOL = "kubeadm"


def own_version() -> str:
    return behaviour()["version"]


def images(version: str) -> list[str]:
    return [f"registry.k8s.io/kube-apiserver:{version}", f"registry.k8s.io/kube-controller-manager:{version}",
            f"registry.k8s.io/kube-scheduler:{version}", f"registry.k8s.io/kube-proxy:{version}",
            "registry.k8s.io/coredns/coredns:v1.12.4", PAUSE, f"registry.k8s.io/etcd:{ETCD_TAG}"]


def minor(version: str) -> tuple[int, int]:
    major, minor_part = version.lstrip("v").split(".")[:2]
    return int(major), int(minor_part)


def load_config(path: str, kinds: set[str]) -> dict[str, dict[str, Any]]:
    """Documents by kind, after the strict decoding kubeadm does."""
    try:
        documents = schema.check_kubeadm_yaml(Path(path).read_text())
    except OSError as exc:
        die(TOOL, f"unable to read config from {path!r}: {exc}")
    except ValueError as exc:
        die(TOOL, f"error: strict decoding error: {exc}")
    by_kind = {doc["kind"]: doc for doc in documents}
    if not kinds & set(by_kind):
        die(TOOL, f"no {' or '.join(sorted(kinds))} found in {path}")
    return by_kind


def args_map(extra_args: Any) -> dict[str, str]:
    """extraArgs / kubeletExtraArgs: name/value list (v1beta4) or map (v1beta3)."""
    if isinstance(extra_args, list):
        return {arg["name"]: arg["value"] for arg in extra_args}
    return dict(extra_args or {})


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _is_local(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def preflight(*, control_plane: bool, cri_socket: str) -> None:
    errors, warnings = [], []
    if behaviour().get("fail") == ("init" if control_plane else "join"):
        errors.append("[ERROR LabctlDouble]: this kubeadm double was built to fail here")
    for tool in TOOLS_REQUIRED:
        if shutil.which(tool) is None:
            errors.append(f"[ERROR FileExisting-{tool}]: {tool} not found in system path")
    for tool in TOOLS_WANTED:
        if shutil.which(tool) is None:
            warnings.append(f"[WARNING FileExisting-{tool}]: {tool} not found in system path")
    for path in ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/ipv4/ip_forward"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            value = "missing"
        if value != "1":
            errors.append(f"[ERROR FileContent-{path.replace('/', '-')}]: {path} contents are not set to 1")
    if len(Path("/proc/swaps").read_text().splitlines()) > 1:
        errors.append("[ERROR Swap]: running with swap on is not supported. Please disable swap")
    if not Path(cri_socket.removeprefix("unix://")).is_socket():
        errors.append(f"[ERROR CRI]: container runtime is not running: validate CRI v1 runtime API for endpoint "
                      f"\"{cri_socket}\": dial unix {cri_socket.removeprefix('unix://')}: connect: no such file or directory")
    elif "cri-dockerd" in cri_socket:
        try:
            cri_call(cri_socket, "Version")
        except OSError as exc:
            errors.append(f"[ERROR CRI]: container runtime is not running: validate CRI v1 runtime API for endpoint "
                          f"\"{cri_socket}\": {exc}")
    for port in (*CONTROL_PLANE_PORTS, KUBELET_PORT) if control_plane else (KUBELET_PORT,):
        if not _port_free(port):
            errors.append(f"[ERROR Port-{port}]: Port {port} is in use")
    taken = [KUBELET_CONF, PKI / "ca.crt"]
    if control_plane:
        taken += [MANIFESTS / f"{name}.yaml" for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")]
    for path in taken:
        if path.exists():
            errors.append(f"[ERROR FileAvailable-{str(path).replace('/', '-')}]: {path} already exists")
    if subprocess.run(["systemctl", "is-enabled", "kubelet"], capture_output=True).returncode != 0:
        warnings.append("[WARNING Service-Kubelet]: kubelet service is not enabled, please run 'systemctl enable kubelet.service'")
    for warning in warnings:
        print(f"\t{warning}", file=sys.stderr)
    if errors:
        die(TOOL, "error execution phase preflight: [preflight] Some fatal errors occurred:\n"
                  + "\n".join(f"\t{error}" for error in errors)
                  + "\n[preflight] If you know what you are doing, you can make a check non-fatal with "
                    "`--ignore-preflight-errors=...`")


def static_pod(name: str, image: str, command: list[str]) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"component": name, "tier": "control-plane"}},
        "spec": {"hostNetwork": True, "priorityClassName": "system-node-critical",
                 "containers": [{"name": name, "image": image, "command": command}]},
    }, sort_keys=False)


def check_etcd_dir(data_dir: str) -> None:
    if Path(data_dir).is_dir() and any(Path(data_dir).iterdir()):
        die(TOOL, f"error execution phase preflight: [ERROR DirAvailable-{data_dir.replace('/', '-')}]: {data_dir} is not empty")


def control_plane_manifests(cluster: dict[str, Any], advertise: str, port: int) -> dict[str, str]:
    """kube-apiserver (on the local etcd member, as kubeadm's stacked etcd has it), controller-manager, scheduler."""
    registry, version = cluster["image_repository"], cluster["kubernetes_version"]
    return {
        "kube-apiserver": static_pod("kube-apiserver", f"{registry}/kube-apiserver:{version}", [
            "kube-apiserver", f"--advertise-address={advertise}", f"--secure-port={port}",
            f"--service-cluster-ip-range={cluster['service_subnet']}", "--etcd-servers=https://127.0.0.1:2379"]),
        "kube-controller-manager": static_pod("kube-controller-manager", f"{registry}/kube-controller-manager:{version}",
                                              ["kube-controller-manager",
                                               *(f"--{k}={v}" for k, v in cluster["controller_args"].items())]),
        "kube-scheduler": static_pod("kube-scheduler", f"{registry}/kube-scheduler:{version}", ["kube-scheduler"]),
    }


def etcd_manifest(registry: str, name: str, advertise: str, data_dir: str, members: dict[str, str], state: str) -> str:
    """The etcd member's static pod; a joining member names every member and cluster state `existing`."""
    flags = etcd.member_flags(name, data_dir, advertise, members, state)
    return static_pod("etcd", f"{registry}/etcd:{ETCD_TAG}", [
        "etcd", *(f"--{flag}={value}" for flag, value in flags.items()),
        "--cert-file=/etc/kubernetes/pki/etcd/server.crt", "--key-file=/etc/kubernetes/pki/etcd/server.key"])


def kubelet_flags(registration: dict[str, Any]) -> str:
    flags = {"container-runtime-endpoint": registration["criSocket"], "pod-infra-container-image": PAUSE}
    flags |= args_map(registration.get("kubeletExtraArgs"))
    if registration.get("name") and registration["name"] != socket.gethostname():
        flags["hostname-override"] = registration["name"]
    joined = " ".join(f"--{name}={value}" for name, value in flags.items())
    return f'KUBELET_KUBEADM_ARGS="{joined}"\n'


def restart_kubelet() -> None:
    result = subprocess.run(["systemctl", "restart", "kubelet"], capture_output=True, text=True)
    if result.returncode != 0:
        die(TOOL, f"[kubelet-start] failed to restart the kubelet: {result.stderr.strip()}")


def init(flags: dict[str, str]) -> None:
    documents = load_config(flags.get("config", ""), {"InitConfiguration", "ClusterConfiguration"})
    init_doc = documents.get("InitConfiguration", {})
    cluster_doc = documents.get("ClusterConfiguration", {})
    version = cluster_doc.get("kubernetesVersion", own_version())
    if minor(version) > minor(own_version()) or minor(version) < (minor(own_version())[0], minor(own_version())[1] - 1):
        die(TOOL, f"this version of kubeadm only supports deploying clusters with the control plane version >= "
                  f"{minor(own_version())[0]}.{minor(own_version())[1] - 1}.0. Current version: {version}")
    registration = init_doc.get("nodeRegistration", {})
    registration.setdefault("criSocket", "unix:///run/containerd/containerd.sock")
    preflight(control_plane=True, cri_socket=registration["criSocket"])
    endpoint_doc = init_doc.get("localAPIEndpoint", {})
    advertise = endpoint_doc.get("advertiseAddress") or socket.gethostbyname(socket.gethostname())
    port = int(endpoint_doc.get("bindPort", 6443))
    if not _is_local(advertise):
        die(TOOL, f"advertiseAddress {advertise} is not an address of this host")
    name = registration.get("name") or socket.gethostname()
    networking = cluster_doc.get("networking", {})
    pod_subnet = networking.get("podSubnet", "")
    service_subnet = networking.get("serviceSubnet", "10.96.0.0/12")
    endpoint = cluster_doc.get("controlPlaneEndpoint") or f"{advertise}:{port}"
    data_dir = cluster_doc.get("etcd", {}).get("local", {}).get("dataDir", "/var/lib/etcd")
    check_etcd_dir(data_dir)

    ca = new_ca()
    for path in (PKI / "ca.crt", PKI / "etcd" / "ca.crt", PKI / "etcd" / "server.crt", PKI / "front-proxy-ca.crt"):
        write(path, ca)
    for path in (PKI / "ca.key", PKI / "etcd" / "ca.key", PKI / "etcd" / "server.key", PKI / "front-proxy-ca.key",
                 PKI / "sa.key", PKI / "sa.pub"):
        write(path, secrets.token_hex(32) + "\n", mode=0o600)
    admin_credential, node_credential, token = secrets.token_hex(16), secrets.token_hex(16), new_token()
    kubelet_config = dict(documents.get("KubeletConfiguration", {"apiVersion": "kubelet.config.k8s.io/v1beta1",
                                                                  "kind": "KubeletConfiguration"}))
    kubelet_config.setdefault("clusterDNS", [str(ipaddress.ip_network(service_subnet).network_address + 10)])
    kubelet_config.setdefault("clusterDomain", networking.get("dnsDomain", "cluster.local"))
    state = apiserver.initial_state(
        cluster={"name": cluster_doc.get("clusterName", "kubernetes"), "pod_subnet": pod_subnet,
                 "service_subnet": service_subnet, "dns_domain": kubelet_config["clusterDomain"],
                 "kubernetes_version": version, "endpoint": endpoint,
                 "control_plane_endpoint": cluster_doc.get("controlPlaneEndpoint", ""),
                 "image_repository": cluster_doc.get("imageRepository", "registry.k8s.io"),
                 "controller_args": {"cluster-cidr": pod_subnet, "allocate-node-cidrs": "true",
                                     **args_map(cluster_doc.get("controllerManager", {}).get("extraArgs"))}},
        ca_pem=ca, admin_credential=admin_credential, kubelet_config=kubelet_config)
    state["tokens"][token] = {"created": 0}
    state["node_credentials"][node_credential] = {"node": name, "token": None}
    apiserver.write_state(data_dir, state)

    registry = state["cluster"]["image_repository"]
    manifests = {**control_plane_manifests(state["cluster"], advertise, port),
                 "etcd": etcd_manifest(registry, name, advertise, data_dir, {name: f"https://{advertise}:2380"}, "new")}
    for manifest, text in manifests.items():
        write(MANIFESTS / f"{manifest}.yaml", text, mode=0o600)
    cluster_name = state["cluster"]["name"]
    for conf, user in (("admin.conf", "kubernetes-admin"), ("super-admin.conf", "kubernetes-super-admin"),
                       ("controller-manager.conf", "system:kube-controller-manager"),
                       ("scheduler.conf", "system:kube-scheduler")):
        write(KUBERNETES / conf, kubeconfig_text(cluster_name, f"https://{endpoint}", ca, user, admin_credential), 0o600)
    write(KUBELET_CONF, kubeconfig_text(cluster_name, f"https://{advertise}:{port}", ca, f"system:node:{name}",
                                        node_credential), 0o600)
    write(KUBELET_DIR / "config.yaml", yaml.safe_dump(kubelet_config, sort_keys=False))
    write(KUBELET_DIR / "kubeadm-flags.env", kubelet_flags(registration))
    print("[kubelet-start] Starting the kubelet")
    restart_kubelet()

    server = f"https://{advertise}:{port}"
    print("[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods")
    if not wait_for(lambda: api(server, "GET", "/healthz") == "ok", timeout=240):
        die(TOOL, "error execution phase wait-control-plane: the API server did not become healthy within 4m0s")
    nodes = lambda: {n["metadata"]["name"] for n in api(server, "GET", "/nodes", credential=admin_credential)["items"]}  # noqa: E731
    if not wait_for(lambda: name in nodes(), timeout=180):
        die(TOOL, f"error execution phase mark-control-plane: nodes \"{name}\" not found: the kubelet did not register")
    taints = registration.get("taints")
    if taints is None:
        taints = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    api(server, "PATCH", f"/nodes/{name}", {"labels": {"node-role.kubernetes.io/control-plane": ""}, "taints": taints},
        credential=admin_credential)
    api(server, "POST", "/objects", {"items": addons(documents, registry, version)}, credential=admin_credential)
    hash_ = ca_hash(ca)
    record(TOOL, command="init", token=token, ca_hash=hash_, node=name, endpoint=endpoint, documents=documents)
    print("\nYour Kubernetes control-plane has initialized successfully!\n")
    if flags.get("upload-certs") == "true":
        print(f"[upload-certs] Using certificate key:\n{upload_certs(server, admin_credential)}\n")
    print("Then you can join any number of worker nodes by running the following on each as root:\n")
    print(f"kubeadm join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {hash_} ")


def addons(documents: dict[str, dict[str, Any]], registry: str, version: str) -> list[dict[str, Any]]:
    """CoreDNS and kube-proxy, as kubeadm's addon phase installs them (with its manifests' tolerations)."""
    proxy_config = documents.get("KubeProxyConfiguration", {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                                            "kind": "KubeProxyConfiguration"})
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
         "data": {"config.conf": yaml.safe_dump(proxy_config)}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
         "spec": {"template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}}, "spec": {
             "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}, {"operator": "Exists"}],
             "containers": [{"name": "kube-proxy", "image": f"{registry}/kube-proxy:{version}"}]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
         "spec": {"replicas": 2, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {
             "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                             {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
             "containers": [{"name": "coredns", "image": f"{registry}/coredns/coredns:v1.12.4"}]}}}},
    ]


def admin() -> Kubeconfig:
    if not ADMIN_CONF.exists():
        die(TOOL, f"failed to load admin kubeconfig: open {ADMIN_CONF}: no such file or directory")
    return Kubeconfig(ADMIN_CONF)


def token_create(flags: dict[str, str]) -> None:
    config = admin()
    token = new_token()
    try:
        api(config.server, "POST", "/tokens", {"token": token}, credential=config.credential)
    except (OSError, APIError) as exc:
        die(TOOL, f"failed to create or update bootstrap token with name bootstrap-token-{token.split('.')[0]}: {exc}")
    record(TOOL, command="token create", token=token)
    if flags.get("print-join-command") == "true":
        endpoint = config.server.removeprefix("https://")
        print(f"kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash(config.ca_pem)} ")
    else:
        print(token)


# What `kubeadm init phase upload-certs` puts in the kubeadm-certs Secret (kubeadm's copycerts).
SHARED_CERTS = ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
                "etcd/ca.crt", "etcd/ca.key")
# The double's stand-in for a client certificate the CA key signs: the admin credential travels with the CA.
ADMIN_CREDENTIAL_ENTRY = "admin-credential"


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (hashlib.sha256(key + nonce + counter.to_bytes(8, "big")).digest() for counter in range(length // 32 + 1))
    return b"".join(blocks)[:length]


def seal(key_hex: str, data: bytes) -> str:
    """Encrypt and authenticate with the certificate key (kubeadm uses AES-GCM; the doubles keep to the stdlib)."""
    key, nonce = bytes.fromhex(key_hex), secrets.token_bytes(16)
    ciphertext = bytes(a ^ b for a, b in zip(data, _keystream(key, nonce, len(data))))
    tag = hmac.new(key, nonce + ciphertext, hashlib.sha256).digest()
    return base64.b64encode(nonce + ciphertext + tag).decode()


def unseal(key_hex: str, sealed: str) -> bytes:
    key, blob = bytes.fromhex(key_hex), base64.b64decode(sealed)
    nonce, ciphertext, tag = blob[:16], blob[16:-32], blob[-32:]
    if not hmac.compare_digest(tag, hmac.new(key, nonce + ciphertext, hashlib.sha256).digest()):
        raise ValueError("cipher: message authentication failed")
    return bytes(a ^ b for a, b in zip(ciphertext, _keystream(key, nonce, len(ciphertext))))


def upload_certs(server: str, admin_credential: str) -> str:
    """Encrypt the shared certificates with a fresh key into the cluster's kubeadm-certs; the key is printed only."""
    bundle = {name: (PKI / name).read_text() for name in SHARED_CERTS}
    bundle[ADMIN_CREDENTIAL_ENTRY] = admin_credential
    key = secrets.token_hex(32)
    try:
        api(server, "PUT", "/secrets/kubeadm-certs", {"data": seal(key, json.dumps(bundle).encode())},
            credential=admin_credential)
    except (OSError, APIError) as exc:
        die(TOOL, f"error execution phase upload-certs: error uploading certs: {exc}")
    record(TOOL, command="upload-certs", certificate_key=key, server=server)
    print('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace')
    return key


def download_certs(server: str, token: str, key: str) -> dict[str, str]:
    phase = "error execution phase control-plane-prepare/download-certs: error downloading certs"
    print('[download-certs] Downloading the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace')
    try:
        bytes.fromhex(key)
    except ValueError:
        die(TOOL, f"{phase}: error decoding certificate key: encoding/hex: invalid byte")
    try:
        sealed = api(server, "GET", "/secrets/kubeadm-certs", credential=token)
    except APIError as exc:
        if exc.status == 404:
            die(TOOL, f'{phase}: error downloading the secret: Secret "kubeadm-certs" was not found in the "kube-system" '
                      "Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs "
                      "--upload-certs` on a control plane to generate a new one")
        die(TOOL, f"{phase}: error downloading the secret: {exc}")
    try:
        return json.loads(unseal(key, sealed["data"]))
    except ValueError as exc:
        die(TOOL, f"{phase}: error decoding secret data with provided key: {exc}")


def start_kubelet(registration: dict[str, Any], kubelet_config: dict[str, Any], bootstrap_server: str, ca: str,
                  token: str) -> None:
    """kubeadm join's kubelet-start phase: bootstrap kubeconfig, config and flags, then restart the kubelet."""
    write(BOOTSTRAP_KUBELET_CONF, bootstrap_kubeconfig_text("kubernetes", bootstrap_server, ca, token), 0o600)
    write(KUBELET_DIR / "config.yaml", yaml.safe_dump(kubelet_config, sort_keys=False))
    write(KUBELET_DIR / "kubeadm-flags.env", kubelet_flags(registration))
    print("[kubelet-start] Starting the kubelet\n[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap")
    restart_kubelet()


def wait_tls_bootstrap() -> None:
    if not wait_for(KUBELET_CONF.exists, timeout=240):
        die(TOOL, "error execution phase kubelet-start: timed out waiting for the kubelet to perform the TLS Bootstrap")
    BOOTSTRAP_KUBELET_CONF.unlink()


def join(flags: dict[str, str]) -> None:
    documents = load_config(flags.get("config", ""), {"JoinConfiguration"})
    join_doc = documents["JoinConfiguration"]
    control_plane = join_doc.get("controlPlane")
    registration = join_doc.get("nodeRegistration", {})
    registration.setdefault("criSocket", "unix:///run/containerd/containerd.sock")
    discovery = join_doc.get("discovery", {}).get("bootstrapToken", {})
    token, endpoint, pins = discovery.get("token", ""), discovery.get("apiServerEndpoint", ""), discovery.get("caCertHashes", [])
    if not TOKEN_RE.match(token):
        die(TOOL, f'the bootstrap token "{token}" was not of the form "^([a-z0-9]{{6}})\\.([a-z0-9]{{16}})$"')
    if not pins:
        die(TOOL, "discovery.bootstrapToken: Invalid value: using token-based discovery without caCertHashes can be unsafe")
    preflight(control_plane=control_plane is not None, cri_socket=registration["criSocket"])
    server = f"https://{endpoint}"
    info: dict[str, Any] = {}

    def discover() -> bool:
        info.update(api(server, "GET", "/cluster-info"))
        return True

    print(f"[discovery] Trying to connect to API Server \"{endpoint}\"")
    if not wait_for(discover, timeout=120, interval=5):
        die(TOOL, f"error execution phase preflight: couldn't validate the identity of the API Server: "
                  f"Get \"{server}/api/v1/namespaces/kube-public/configmaps/cluster-info\": connection refused")
    found = ca_hash(info["ca"])
    if found not in pins:
        die(TOOL, f"error execution phase preflight: cluster CA found in cluster-info ConfigMap is invalid: "
                  f"none of the public keys \"{found}\" are pinned")
    try:
        kubelet_config = api(server, "GET", "/kubelet-config", credential=token)
    except APIError as exc:
        die(TOOL, f"error execution phase preflight: couldn't validate the identity of the API Server: {exc}\n"
                  "Use \"kubeadm token create\" on the control-plane node to create a new valid token")
    name = registration.get("name") or socket.gethostname()
    if control_plane is not None:
        join_control_plane(server, token, info["ca"], control_plane, registration, kubelet_config, name)
    else:
        write(PKI / "ca.crt", info["ca"])
        start_kubelet(registration, kubelet_config, server, info["ca"], token)
        wait_tls_bootstrap()
    record(TOOL, command="join", token=token, ca_hashes=pins, endpoint=endpoint, node=name, documents=documents,
           control_plane=control_plane is not None,
           certificate_key=(control_plane or {}).get("certificateKey"))
    if control_plane is not None:
        print("\nThis node has joined the cluster and a new control plane instance was created")
    else:
        print("\nThis node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.")


def join_control_plane(server: str, token: str, ca: str, control_plane: dict[str, Any], registration: dict[str, Any],
                       kubelet_config: dict[str, Any], name: str) -> None:
    """kubeadm's control-plane-prepare, kubelet-start and control-plane-join phases for a stacked etcd member."""
    cluster = api(server, "GET", "/kubeadm-config", credential=token)
    if not cluster.get("control_plane_endpoint"):
        die(TOOL, "error execution phase preflight: \nOne or more conditions for hosting a new control plane instance "
                  "is not satisfied.\n\nunable to add a new control plane instance to a cluster that doesn't have a "
                  "stable controlPlaneEndpoint address")
    local = control_plane.get("localAPIEndpoint", {})
    advertise = local.get("advertiseAddress") or socket.gethostbyname(socket.gethostname())
    port = int(local.get("bindPort", 6443))
    if not _is_local(advertise):
        die(TOOL, f"advertiseAddress {advertise} is not an address of this host")
    data_dir = "/var/lib/etcd"
    check_etcd_dir(data_dir)
    bundle = download_certs(server, token, control_plane.get("certificateKey", ""))
    admin_credential = bundle.pop(ADMIN_CREDENTIAL_ENTRY)
    for entry, text in bundle.items():
        write(PKI / entry, text, mode=0o600 if entry.endswith(".key") else 0o644)
    write(PKI / "etcd" / "server.crt", bundle["etcd/ca.crt"])
    write(PKI / "etcd" / "server.key", secrets.token_hex(32) + "\n", mode=0o600)
    for manifest, text in control_plane_manifests(cluster, advertise, port).items():
        write(MANIFESTS / f"{manifest}.yaml", text, mode=0o600)
    for conf, user in (("admin.conf", "kubernetes-admin"), ("controller-manager.conf", "system:kube-controller-manager"),
                       ("scheduler.conf", "system:kube-scheduler")):
        write(KUBERNETES / conf, kubeconfig_text(cluster["name"], server, ca, user, admin_credential), 0o600)
    # The kubelet of a control-plane node talks to its own API server (kubeadm's ControlPlaneKubeletLocalMode).
    local_server = f"https://{advertise}:{port}"
    start_kubelet(registration, kubelet_config, local_server, ca, token)

    print("[etcd] Announced new etcd member joining to the existing etcd cluster")
    try:
        status, answer = etcd.add_member(server, admin_credential, name, advertise)
    except (OSError, APIError) as exc:
        die(TOOL, f"error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: {exc}")
    if status != 201:
        die(TOOL, f"error execution phase control-plane-join/etcd: etcdserver: {answer.get('message')}")
    member_urls = {m["name"]: m["peerURLs"][0] for m in answer["members"]}
    write(MANIFESTS / "etcd.yaml", etcd_manifest(cluster["image_repository"], name, advertise, data_dir, member_urls,
                                                 "existing"), mode=0o600)
    print("[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s")
    if not wait_for(lambda: api(local_server, "GET", "/healthz") == "ok", timeout=240):
        die(TOOL, "error execution phase control-plane-join/etcd: the local API server did not become healthy within 4m0s")
    wait_tls_bootstrap()
    nodes = lambda: {n["metadata"]["name"] for n in api(local_server, "GET", "/nodes", credential=admin_credential)["items"]}  # noqa: E731
    if not wait_for(lambda: name in nodes(), timeout=180):
        die(TOOL, f"error execution phase control-plane-join/mark-control-plane: nodes \"{name}\" not found")
    taints = registration.get("taints")
    if taints is None:
        taints = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    api(local_server, "PATCH", f"/nodes/{name}",
        {"labels": {"node-role.kubernetes.io/control-plane": ""}, "taints": taints}, credential=admin_credential)


def reset(flags: dict[str, str]) -> None:
    if flags.get("force") != "true" and flags.get("f") != "true":
        die(TOOL, "reset asks for confirmation; this double only runs with -f/--force")
    subprocess.run(["systemctl", "stop", "kubelet"], capture_output=True)
    for path in (MANIFESTS, PKI, KUBELET_DIR):
        shutil.rmtree(path, ignore_errors=True)
    for conf in KUBERNETES.glob("*.conf"):
        conf.unlink()
    etcd = Path("/var/lib/etcd")
    if etcd.is_dir():
        for child in etcd.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    record(TOOL, command="reset", cri_socket=flags.get("cri-socket"))
    print("[reset] Deleted contents of the etcd data directory: /var/lib/etcd\n[reset] Stopping the kubelet service")


def main(argv: list[str]) -> None:
    # `-f` is kubeadm reset's short form of --force.
    flags, words = parse_flags(["--force" if arg == "-f" else arg for arg in argv])
    record(TOOL, words=words)
    if words == ["init", "phase", "upload-certs"]:
        if flags.get("upload-certs") != "true":
            die(TOOL, "[upload-certs] Skipping phase. Please see --upload-certs")
        config = admin()
        print(f"[upload-certs] Using certificate key:\n{upload_certs(config.server, config.credential)}")
    elif words == ["init"]:
        init(flags)
    elif words[:2] == ["token", "create"]:
        token_create(flags)
    elif words == ["join"]:
        join(flags)
    elif words == ["reset"]:
        reset(flags)
    elif words == ["config", "images", "list"]:
        print("\n".join(images(flags.get("kubernetes-version", own_version()))))
    elif words == ["version"]:
        print(own_version() if flags.get("output") == "short" else f'kubeadm version: &version.Info{{GitVersion:"{own_version()}"}}')
    else:
        die(TOOL, f"this kubeadm double does not implement `kubeadm {' '.join(words)}`")
