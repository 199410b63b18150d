"""kubelet double, run by systemd from the unit labctl installs.

Checks its flags and --config as the kubelet does (KubeletConfiguration fields, a container
runtime socket that exists, the cgroup driver of containerd's config or of Docker as the
cri-dockerd double reports it), runs the control plane's static pods from /etc/kubernetes/manifests
(the etcd double and the API server double on it), trades the bootstrap token in
--bootstrap-kubeconfig for a node credential written to --kubeconfig (TLS bootstrap), then
heartbeats its node and runs the pods placed on it whose images the doubles implement (workloads.py:
the cattle-cluster-agent of a Rancher import).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

import yaml

from labctl.kube import schema

from . import apiserver, etcd, workloads
from .common import (APIError, Kubeconfig, api, behaviour, cri_call, die, kubeconfig_text, parse_flags, record,
                     write)

MANIFESTS = Path("/etc/kubernetes/manifests")
STATIC_PODS = Path("/run/labctl-doubles/static-pods.json")
CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
PODS_DIR = Path("/var/lib/kubelet/pods")


def socket_path(endpoint: str) -> Path:
    return Path(endpoint.removeprefix("unix://"))


def check_config(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        die("kubelet", f'E0000 run.go: "command failed" err="failed to load kubelet config file, path: {path}, error: {exc}"')
    problems = schema.unknown_fields(config)
    if problems or config.get("kind") != "KubeletConfiguration":
        die("kubelet", f"failed to load kubelet config file {path}: " + "; ".join(problems or ["not a KubeletConfiguration"]))
    return config


def check_runtime(endpoint: str, config: dict) -> None:
    path = socket_path(endpoint)
    try:
        is_socket = stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        die("kubelet", f'validate service connection: validate CRI v1 runtime API for endpoint "{endpoint}": '
                       f'dial unix {path}: connect: no such file or directory')
    if "cri-dockerd" in str(path):
        # cri-dockerd reports Docker's cgroup driver; the kubelet's must match it.
        try:
            runtime = cri_call(endpoint, "RuntimeConfig")
        except OSError as exc:
            die("kubelet", f'validate service connection: validate CRI v1 runtime API for endpoint "{endpoint}": {exc}')
        if runtime["cgroupDriver"] != config.get("cgroupDriver", "cgroupfs"):
            die("kubelet", f"cgroup driver {config.get('cgroupDriver', 'cgroupfs')!r} differs from the runtime's "
                           f"{runtime['cgroupDriver']!r} (docker {runtime['runtimeVersion']} through cri-dockerd)")
        record("kubelet", event="runtime", endpoint=endpoint, runtime=runtime)
    elif "containerd" in str(path) and CONTAINERD_CONFIG.exists():
        systemd_cgroups = "SystemdCgroup = true" in CONTAINERD_CONFIG.read_text()
        if systemd_cgroups != (config.get("cgroupDriver") == "systemd"):
            die("kubelet", f"cgroup driver {config.get('cgroupDriver', 'cgroupfs')!r} differs from containerd's "
                           f"(SystemdCgroup = {str(systemd_cgroups).lower()} in {CONTAINERD_CONFIG})")


def container_args(manifest: Path) -> dict[str, str]:
    pod = yaml.safe_load(manifest.read_text())
    command = pod["spec"]["containers"][0]["command"]
    flags, _ = parse_flags(command[1:])
    return flags


class StaticPods:
    """etcd.yaml runs the etcd double, kube-apiserver.yaml the API server double on that etcd."""

    def __init__(self) -> None:
        self.etcd: etcd.Member | None = None
        self.server: apiserver.Server | None = None
        self.running: dict[str, str] = {}

    def sync(self) -> None:
        etcd_manifest, api_manifest = MANIFESTS / "etcd.yaml", MANIFESTS / "kube-apiserver.yaml"
        if etcd_manifest.exists() and self.etcd is None:
            etcd_args = container_args(etcd_manifest)
            try:
                self.etcd = etcd.Member(etcd_args)
                self.etcd.start()
            except (OSError, KeyError, ValueError, etcd.NotAMember) as exc:
                print(f"static pod etcd failed to start: {exc}", file=sys.stderr, flush=True)
                self.etcd = None
            else:
                self.running.update(etcd=_container_id("etcd"), **{"data-dir": etcd_args["data-dir"]})
        elif not etcd_manifest.exists() and self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
            for key in ("etcd", "data-dir"):
                self.running.pop(key, None)
        if api_manifest.exists() and self.server is None:
            api_args = container_args(api_manifest)
            try:
                etcd_server = api_args["etcd-servers"].split(",")[0]
                # kube-apiserver serves only once its storage answers (until then a load balancer's
                # TCP check must not find it).
                if etcd.forward(etcd_server, "GET", "/health")[0] != 200:
                    raise OSError(f"etcd at {etcd_server} is not healthy")
                self.server = apiserver.Server(api_args["advertise-address"], int(api_args["secure-port"]),
                                               etcd=etcd_server)
            except (OSError, KeyError, ValueError) as exc:
                print(f"static pod kube-apiserver failed to start: {exc}", file=sys.stderr, flush=True)
            else:
                self.server.start()
                self.running["kube-apiserver"] = _container_id("kube-apiserver")
        elif not api_manifest.exists() and self.server is not None:
            self.server.stop()
            self.server = None
            self.running.pop("kube-apiserver", None)
        write(STATIC_PODS, json.dumps({"kubelet_pid": os.getpid(), "pods": self.running}))


def _container_id(name: str) -> str:
    return hashlib.sha256(f"{name}{time.time()}".encode()).hexdigest()[:13]


def obtain_credential(name: str, kubeconfig: str, bootstrap: str | None) -> Kubeconfig | None:
    if Path(kubeconfig).exists():
        return Kubeconfig(kubeconfig)
    if bootstrap is None or not Path(bootstrap).exists():
        return None
    bootstrap_config = Kubeconfig(bootstrap)
    answer = api(bootstrap_config.server, "POST", "/bootstrap", {"token": bootstrap_config.credential, "node": name})
    write(kubeconfig, kubeconfig_text("default-cluster", bootstrap_config.server, bootstrap_config.ca_pem,
                                      f"system:node:{name}", answer["credential"]), mode=0o600)
    record("kubelet", event="tls-bootstrap", node=name, token=bootstrap_config.credential)
    return Kubeconfig(kubeconfig)


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv)
    record("kubelet", flags=flags)
    if "config" not in flags or "kubeconfig" not in flags:
        die("kubelet", "this kubelet double runs as kubeadm configures it: --config and --kubeconfig are required")
    config = check_config(flags["config"])
    endpoint = flags.get("container-runtime-endpoint") or config.get("containerRuntimeEndpoint") \
        or "unix:///run/containerd/containerd.sock"
    check_runtime(endpoint, config)
    name = flags.get("hostname-override") or socket.gethostname()
    address = flags.get("node-ip") or socket.gethostbyname(name)
    pods = StaticPods()
    credential: Kubeconfig | None = None
    started: set[tuple[str, str]] = set()
    while True:
        pods.sync()
        try:
            credential = credential or obtain_credential(name, flags["kubeconfig"], flags.get("bootstrap-kubeconfig"))
            if credential is not None:
                api(credential.server, "PUT", f"/nodes/{name}", {
                    "address": address, "kubelet_version": behaviour().get("version", ""),
                    "max_pods": config.get("maxPods", 110), "runtime": endpoint,
                }, credential=credential.credential)
                workloads.start_pods(credential.server, credential.credential, name, PODS_DIR, started)
        except (OSError, APIError) as exc:
            print(f"node status update failed: {exc}", file=sys.stderr, flush=True)
            if isinstance(exc, APIError) and exc.status in (401, 403):
                credential = None
        time.sleep(5)
