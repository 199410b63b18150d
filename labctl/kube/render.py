"""Files labctl hands to Kubernetes tools, as pure functions of the lab.

Formats follow the upstream references: kubeadm config API (v1beta4, v1beta3 before 1.31),
RKE2 config.yaml (https://docs.rke2.io/reference/server_config), RKE cluster.yml
(https://rancher.com/docs/rke/latest/en/config-options/), Rancher chart options
(https://ranchermanager.docs.rancher.com/getting-started/installation-and-upgrade/installation-references/helm-chart-options).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from labctl.kube import compat
from labctl.kube.config import KubernetesConfig
from labctl.lab import Lab, Node, Role

API_PORT = 6443
RKE2_SUPERVISOR_PORT = 9345
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"
CRI_DOCKERD_SOCKET = "unix:///var/run/cri-dockerd.sock"
KUBEADM_CONFIG_PATH = "/etc/labctl/kubeadm.yaml"
KUBEADM_JOIN_CONFIG_PATH = "/etc/labctl/kubeadm-join.yaml"
RKE2_CONFIG_PATH = "/etc/rancher/rke2/config.yaml"


def _dump(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)


def cluster_name(lab: Lab) -> str:
    return lab.kubernetes.cluster_name or lab.name


def masters(lab: Lab) -> tuple[Node, ...]:
    return lab.nodes_with(Role.master)


def workers(lab: Lab) -> tuple[Node, ...]:
    """Nodes that join as workers: worker or etcd role, and not a master."""
    return tuple(n for n in lab.nodes if n.has_role(Role.worker, Role.etcd) and not n.has_role(Role.master))


def rancher_node(lab: Lab) -> Node | None:
    found = lab.nodes_with(Role.rancher)
    return found[0] if found else None


def api_balancer(lab: Lab) -> Node | None:
    """The rancher node when it runs haproxy in front of the API: kubeadm with several masters."""
    balancer = rancher_node(lab)
    if len(masters(lab)) > 1 and lab.kubernetes.distro == "kubeadm" and balancer is not None:
        return balancer
    return None


def api_host(lab: Lab) -> str:
    """Where clients reach the API server: the only master, or the load balancer on the rancher node."""
    balancer = api_balancer(lab)
    return str(balancer.ip if balancer is not None else masters(lab)[0].ip)


def rancher_hostname(lab: Lab) -> str:
    return lab.kubernetes.rancher.hostname or f"rancher.{lab.name}.{lab.network.domain}"


def kubeadm_api_version(kube: KubernetesConfig) -> str:
    return "kubeadm.k8s.io/v1beta4" if kube.minor >= compat.KUBEADM_V1BETA4_FROM else "kubeadm.k8s.io/v1beta3"


def _args(kube: KubernetesConfig, args: dict[str, str]) -> Any:
    """extraArgs: a list of name/value pairs in v1beta4, a plain map in v1beta3."""
    if kube.minor >= compat.KUBEADM_V1BETA4_FROM:
        return [{"name": name, "value": value} for name, value in args.items()]
    return dict(args)


def cri_socket(kube: KubernetesConfig) -> str:
    """The CRI socket kubeadm and the kubelet use: cri-dockerd's on runtime docker, else containerd's."""
    return CRI_DOCKERD_SOCKET if kube.runtime == "docker" else CONTAINERD_SOCKET


def dedicated_master(lab: Lab, node: Node) -> bool:
    """A master without the worker role while some worker-role node takes the workloads: tainted against them.
    In a lab of masters only the masters run the workloads (Rancher's cluster agent among them)."""
    return not node.has_role(Role.worker) and bool(lab.nodes_with(Role.worker))


def _node_registration(lab: Lab, node: Node, *, control_plane: bool) -> dict[str, Any]:
    registration: dict[str, Any] = {
        "criSocket": cri_socket(lab.kubernetes),
        "imagePullPolicy": "IfNotPresent",
        "name": node.name,
        "kubeletExtraArgs": _args(lab.kubernetes, {"node-ip": str(node.ip)}),
    }
    # Only a dedicated master keeps kubeadm's default control-plane taint.
    if control_plane and not dedicated_master(lab, node):
        registration["taints"] = []
    return registration


def kubeadm_init_config(lab: Lab) -> str:
    """InitConfiguration, ClusterConfiguration, KubeProxyConfiguration, KubeletConfiguration."""
    kube = lab.kubernetes
    first = masters(lab)[0]
    api_version = kubeadm_api_version(kube)
    controller_args = {}
    if kube.node_cidr_mask_size is not None:
        controller_args["node-cidr-mask-size"] = str(kube.node_cidr_mask_size)
    init = {
        "apiVersion": api_version,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": str(first.ip), "bindPort": API_PORT},
        "nodeRegistration": _node_registration(lab, first, control_plane=True),
    }
    cluster: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "ClusterConfiguration",
        "clusterName": cluster_name(lab),
        "kubernetesVersion": kube.pinned_version,
        "controlPlaneEndpoint": f"{api_host(lab)}:{API_PORT}",
        "certificatesDir": "/etc/kubernetes/pki",
        "imageRepository": "registry.k8s.io",
        "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
        "networking": {
            "dnsDomain": kube.dns_domain,
            "podSubnet": str(kube.pod_subnet_or_default),
            "serviceSubnet": str(kube.service_subnet_or_default),
        },
        "apiServer": {"certSANs": sorted({api_host(lab), *(str(n.ip) for n in masters(lab)),
                                          *(n.name for n in masters(lab))})},
    }
    if controller_args:
        cluster["controllerManager"] = {"extraArgs": _args(kube, controller_args)}
    proxy = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": kube.kube_proxy_mode,
        "clusterCIDR": str(kube.pod_subnet_or_default),
    }
    kubelet = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "maxPods": kube.kubelet.max_pods,
        "containerLogMaxSize": kube.kubelet.container_log_max_size,
        "containerLogMaxFiles": kube.kubelet.container_log_max_files,
    }
    return _dump([init, cluster, proxy, kubelet])


@dataclass(frozen=True)
class JoinInfo:
    """What a node needs to join: read from the running cluster, never invented."""

    endpoint: str
    token: str
    ca_cert_hashes: tuple[str, ...]
    certificate_key: str | None = None


_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_join_command(text: str) -> JoinInfo:
    """Parse `kubeadm token create --print-join-command` output."""
    words = shlex.split(text.strip())
    if words[:2] != ["kubeadm", "join"] or len(words) < 3:
        raise ValueError(f"not a kubeadm join command: {text.strip()!r}")
    endpoint, token, hashes = words[2], None, []
    for flag, value in zip(words, words[1:]):
        if flag == "--token":
            token = value
        elif flag == "--discovery-token-ca-cert-hash":
            hashes.append(value)
    if token is None or not _TOKEN_RE.match(token):
        raise ValueError(f"join command has no valid --token: {text.strip()!r}")
    if not hashes or not all(_HASH_RE.match(h) for h in hashes):
        raise ValueError(f"join command has no valid --discovery-token-ca-cert-hash: {text.strip()!r}")
    return JoinInfo(endpoint=endpoint, token=token, ca_cert_hashes=tuple(hashes))


def kubeadm_join_config(lab: Lab, node: Node, join: JoinInfo) -> str:
    """JoinConfiguration for a worker, or for an extra control-plane node when join has a certificate key."""
    api_version = kubeadm_api_version(lab.kubernetes)
    control_plane = node.has_role(Role.master)
    document: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "JoinConfiguration",
        "nodeRegistration": _node_registration(lab, node, control_plane=control_plane),
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": join.endpoint,
                "token": join.token,
                "caCertHashes": list(join.ca_cert_hashes),
            }
        },
    }
    if control_plane:
        if join.certificate_key is None:
            raise ValueError(f"{node.name} joins the control plane and needs the certificate key")
        document["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": str(node.ip), "bindPort": API_PORT},
            "certificateKey": join.certificate_key,
        }
    return _dump([document])


def haproxy_config(lab: Lab) -> str:
    """TCP load balancer for the API of a multi-master kubeadm cluster, on the rancher node."""
    backends = "\n".join(
        f"    server {n.name} {n.ip}:{API_PORT} check" for n in masters(lab)
    )
    return (
        "global\n    log stdout format raw local0\n\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n"
        f"frontend kube-apiserver\n    bind *:{API_PORT}\n    default_backend masters\n\n"
        f"backend masters\n    balance roundrobin\n{backends}\n"
    )


def _rke2_proxy_args(kube: KubernetesConfig) -> list[str]:
    return [] if kube.kube_proxy_mode == "iptables" else [f"proxy-mode={kube.kube_proxy_mode}"]


def rke2_config(lab: Lab, node: Node, *, server_url: str | None = None, token: str | None = None) -> str:
    """/etc/rancher/rke2/config.yaml: the first server gets neither server_url nor token."""
    kube = lab.kubernetes
    is_server = node.has_role(Role.master)
    if (server_url is None) != (token is None):
        raise ValueError("server_url and token go together")
    config: dict[str, Any] = {"node-name": node.name, "node-ip": str(node.ip)}
    if server_url is not None:
        config["server"] = server_url
        config["token"] = token
    if is_server:
        config |= {
            "write-kubeconfig-mode": "0600",
            "tls-san": sorted({str(n.ip) for n in masters(lab)} | {n.name for n in masters(lab)}),
            "cni": kube.cni_or_default,
            "cluster-cidr": str(kube.pod_subnet_or_default),
            "service-cidr": str(kube.service_subnet_or_default),
            "cluster-dns": str(kube.cluster_dns_ip),
            "cluster-domain": kube.dns_domain,
            "etcd-snapshot-schedule-cron": f"0 */{kube.etcd_snapshot_interval_hours} * * *",
            "etcd-snapshot-retention": kube.etcd_snapshot_retention,
        }
        if kube.node_cidr_mask_size is not None:
            config["kube-controller-manager-arg"] = [f"node-cidr-mask-size={kube.node_cidr_mask_size}"]
        if proxy := _rke2_proxy_args(kube):
            config["kube-proxy-arg"] = proxy
        if dedicated_master(lab, node):
            # The taint https://docs.rke2.io/install/ha (2a, server node taints) gives a dedicated server;
            # CNI and CoreDNS tolerate it. RKE2's servers are schedulable by default.
            config["node-taint"] = ["CriticalAddonsOnly=true:NoExecute"]
    config["kubelet-arg"] = [
        f"max-pods={kube.kubelet.max_pods}",
        f"container-log-max-size={kube.kubelet.container_log_max_size}",
        f"container-log-max-files={kube.kubelet.container_log_max_files}",
    ]
    return yaml.safe_dump(config, sort_keys=False)


def rancher_local_rke2_config(lab: Lab, node: Node) -> str:
    """Config of Rancher's own single-node RKE2 cluster on the rancher host."""
    return yaml.safe_dump({
        "node-name": node.name,
        "node-ip": str(node.ip),
        "write-kubeconfig-mode": "0600",
        "tls-san": [str(node.ip), node.name, rancher_hostname(lab)],
    }, sort_keys=False)


def _rke_roles(node: Node) -> list[str]:
    roles = []
    if node.has_role(Role.master):
        roles += ["controlplane", "etcd"]
    elif node.has_role(Role.etcd):
        roles.append("etcd")
    if node.has_role(Role.worker):
        roles.append("worker")
    return roles


def rke_cluster_yml(lab: Lab, ssh_key_path: str) -> str:
    """cluster.yml for `rke up`, run on the rancher node holding the lab's private key at ssh_key_path."""
    kube = lab.kubernetes
    nodes = [
        {
            "address": str(node.ip),
            "hostname_override": node.name,
            "user": lab.ssh_user,
            "role": _rke_roles(node),
            "ssh_key_path": ssh_key_path,
        }
        for node in lab.nodes if _rke_roles(node)
    ]
    kubeproxy: dict[str, Any] = {}
    if kube.kube_proxy_mode != "iptables":
        kubeproxy["extra_args"] = {"proxy-mode": kube.kube_proxy_mode}
    kube_controller: dict[str, Any] = {
        "cluster_cidr": str(kube.pod_subnet_or_default),
        "service_cluster_ip_range": str(kube.service_subnet_or_default),
    }
    if kube.node_cidr_mask_size is not None:
        kube_controller["extra_args"] = {"node-cidr-mask-size": str(kube.node_cidr_mask_size)}
    cluster = {
        "cluster_name": cluster_name(lab),
        "kubernetes_version": kube.pinned_version,
        "nodes": nodes,
        "ssh_key_path": ssh_key_path,
        "network": {"plugin": kube.cni_or_default},
        "services": {
            "etcd": {
                "backup_config": {
                    "enabled": True,
                    "interval_hours": kube.etcd_snapshot_interval_hours,
                    "retention": kube.etcd_snapshot_retention,
                },
            },
            "kube-api": {"service_cluster_ip_range": str(kube.service_subnet_or_default)},
            "kube-controller": kube_controller,
            "kubelet": {
                "cluster_domain": kube.dns_domain,
                "cluster_dns_server": str(kube.cluster_dns_ip),
                "extra_args": {
                    "max-pods": str(kube.kubelet.max_pods),
                    "container-log-max-size": kube.kubelet.container_log_max_size,
                    "container-log-max-files": str(kube.kubelet.container_log_max_files),
                },
            },
            "kubeproxy": kubeproxy,
        },
        "authorization": {"mode": "rbac"},
        "ingress": {"provider": "nginx"},
    }
    return yaml.safe_dump(cluster, sort_keys=False)


def rancher_helm_values(lab: Lab, bootstrap_password: str) -> dict[str, Any]:
    """Values for the rancher chart: hostname, Rancher-generated TLS via cert-manager, one replica."""
    return {
        "hostname": rancher_hostname(lab),
        "bootstrapPassword": bootstrap_password,
        "replicas": 1,
        "ingress": {"tls": {"source": "rancher"}},
    }


def cert_manager_install_args(lab: Lab, chart: str) -> list[str]:
    """`helm` arguments that install cert-manager with its CRDs (chart: repo name or a .tgz path)."""
    version = lab.kubernetes.rancher.cert_manager_version
    args = ["upgrade", "--install", "cert-manager", chart, "--namespace", "cert-manager",
            "--create-namespace", "--set", "crds.enabled=true", "--wait", "--timeout", "10m"]
    if not chart.endswith(".tgz"):
        args += ["--version", version]
    return args
