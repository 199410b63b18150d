"""Field sets of the kubeadm configuration documents labctl writes, and a checker for them.

Written from the upstream API references:
  https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/
  https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta3/
  https://kubernetes.io/docs/reference/config-api/kubelet-config.v1beta1/
  https://kubernetes.io/docs/reference/config-api/kube-proxy-config.v1alpha1/
The kubeadm types are listed in full. KubeletConfiguration and KubeProxyConfiguration have
dozens of tuning fields; only the real fields labctl may set are listed, so anything else in a
rendered document is reported rather than silently passed on.

A schema node is a dict of field name -> child; a child is None (scalar), a dict (object), or
a one-element list holding the schema of each list item.
"""

from __future__ import annotations

from typing import Any

import yaml

Schema = dict[str, Any]

_TYPE_META = {"apiVersion": None, "kind": None}
_ENDPOINT = {"advertiseAddress": None, "bindPort": None}
_TAINT = {"key": None, "value": None, "effect": None, "timeAdded": None}
_HOST_PATH_MOUNT = {"name": None, "hostPath": None, "mountPath": None, "readOnly": None, "pathType": None}
_ENV = {"name": None, "value": None, "valueFrom": {}}
_ARG = {"name": None, "value": None}
_BOOTSTRAP_TOKEN = {"token": None, "description": None, "ttl": None, "expires": None, "usages": None, "groups": None}
_PATCHES = {"directory": None}


def _node_registration(v1beta4: bool) -> Schema:
    fields: Schema = {
        "name": None, "criSocket": None, "taints": [_TAINT],
        "kubeletExtraArgs": [_ARG] if v1beta4 else {"*": None},
        "ignorePreflightErrors": None, "imagePullPolicy": None,
    }
    if v1beta4:
        fields["imagePullSerial"] = None
    return fields


def _component(v1beta4: bool) -> Schema:
    fields: Schema = {
        "extraArgs": [_ARG] if v1beta4 else {"*": None},
        "extraVolumes": [_HOST_PATH_MOUNT],
    }
    if v1beta4:
        fields["extraEnvs"] = [_ENV]
    return fields


def _kubeadm(v1beta4: bool) -> dict[str, Schema]:
    image_meta = {"imageRepository": None, "imageTag": None}
    local_etcd = {**image_meta, "dataDir": None, "extraArgs": _component(v1beta4)["extraArgs"],
                  "serverCertSANs": None, "peerCertSANs": None}
    external_etcd = {"endpoints": None, "caFile": None, "certFile": None, "keyFile": None}
    api_server = {**_component(v1beta4), "certSANs": None}
    dns = dict(image_meta)
    discovery = {
        "bootstrapToken": {"token": None, "apiServerEndpoint": None, "caCertHashes": None,
                           "unsafeSkipCAVerification": None},
        "file": {"kubeConfigPath": None},
        "tlsBootstrapToken": None,
    }
    init = {**_TYPE_META, "bootstrapTokens": [_BOOTSTRAP_TOKEN], "nodeRegistration": _node_registration(v1beta4),
            "localAPIEndpoint": _ENDPOINT, "certificateKey": None, "skipPhases": None, "patches": _PATCHES}
    cluster = {
        **_TYPE_META, "etcd": {"local": local_etcd, "external": external_etcd},
        "networking": {"serviceSubnet": None, "podSubnet": None, "dnsDomain": None},
        "kubernetesVersion": None, "controlPlaneEndpoint": None, "apiServer": api_server,
        "controllerManager": _component(v1beta4), "scheduler": _component(v1beta4), "dns": dns,
        "certificatesDir": None, "imageRepository": None, "featureGates": {"*": None}, "clusterName": None,
    }
    join = {**_TYPE_META, "nodeRegistration": _node_registration(v1beta4), "caCertPath": None,
            "discovery": discovery, "controlPlane": {"localAPIEndpoint": _ENDPOINT, "certificateKey": None},
            "skipPhases": None, "patches": _PATCHES}
    if v1beta4:
        timeouts = {key: None for key in ("controlPlaneComponentHealthCheck", "kubeletHealthCheck",
                                          "kubernetesAPICall", "etcdAPICall", "tlsBootstrap", "discovery",
                                          "upgradeManifests")}
        init |= {"dryRun": None, "timeouts": timeouts}
        join |= {"dryRun": None, "timeouts": timeouts}
        local_etcd["extraEnvs"] = [_ENV]
        dns["disabled"] = None
        cluster |= {"proxy": {"disabled": None}, "encryptionAlgorithm": None,
                    "certificateValidityPeriod": None, "caCertificateValidityPeriod": None}
    else:
        api_server["timeoutForControlPlane"] = None
        discovery["timeout"] = None
    return {"InitConfiguration": init, "ClusterConfiguration": cluster, "JoinConfiguration": join}


_KUBELET = {
    **_TYPE_META, "maxPods": None, "containerLogMaxSize": None, "containerLogMaxFiles": None,
    "cgroupDriver": None, "clusterDNS": None, "clusterDomain": None, "podLogsDir": None,
    "failSwapOn": None, "rotateCertificates": None, "serverTLSBootstrap": None, "resolvConf": None,
    "evictionHard": {"*": None}, "kubeReserved": {"*": None}, "systemReserved": {"*": None},
}
_KUBE_PROXY = {
    **_TYPE_META, "mode": None, "clusterCIDR": None, "bindAddress": None, "metricsBindAddress": None,
    "featureGates": {"*": None},
    "ipvs": {"scheduler": None, "strictARP": None, "syncPeriod": None, "minSyncPeriod": None},
    "iptables": {"masqueradeAll": None, "masqueradeBit": None, "syncPeriod": None, "minSyncPeriod": None},
    "nftables": {"masqueradeAll": None, "masqueradeBit": None, "syncPeriod": None, "minSyncPeriod": None},
}

SCHEMAS: dict[tuple[str, str], Schema] = {
    **{("kubeadm.k8s.io/v1beta4", kind): schema for kind, schema in _kubeadm(True).items()},
    **{("kubeadm.k8s.io/v1beta3", kind): schema for kind, schema in _kubeadm(False).items()},
    ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"): _KUBELET,
    ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"): _KUBE_PROXY,
}


def unknown_fields(document: dict[str, Any]) -> list[str]:
    """Paths of fields the document's apiVersion/kind does not define; a bad kind is one entry."""
    key = (document.get("apiVersion"), document.get("kind"))
    schema = SCHEMAS.get(key)  # type: ignore[arg-type]
    if schema is None:
        return [f"apiVersion/kind {key[0]}/{key[1]} is not a known kubeadm config type"]
    problems: list[str] = []
    _walk(document, schema, key[1] or "", problems)
    return problems


def _walk(value: Any, schema: Any, path: str, problems: list[str]) -> None:
    if isinstance(schema, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for index, item in enumerate(value):
            _walk(item, schema[0], f"{path}[{index}]", problems)
        return
    if not isinstance(schema, dict) or "*" in schema or not schema:
        return  # a scalar, or a free-form map such as featureGates
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping")
        return
    for name, child in value.items():
        if name not in schema:
            problems.append(f"{path}.{name}: unknown field")
        elif child is not None:
            _walk(child, schema[name], f"{path}.{name}", problems)


def check_kubeadm_yaml(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document kubeadm config; raise ValueError listing every unknown field."""
    documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    problems = [problem for doc in documents for problem in unknown_fields(doc)]
    if problems:
        raise ValueError("kubeadm config has fields its API does not define:\n  " + "\n  ".join(problems))
    return documents


# RKE2 config.yaml keys labctl writes, from the server and agent references
# (https://docs.rke2.io/reference/server_config, https://docs.rke2.io/reference/linux_agent_config).
RKE2_SERVER_KEYS = frozenset({
    "server", "token", "node-name", "node-ip", "node-taint", "write-kubeconfig-mode", "tls-san", "cni",
    "cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "etcd-snapshot-schedule-cron",
    "etcd-snapshot-retention", "kube-controller-manager-arg", "kube-proxy-arg", "kubelet-arg",
})
RKE2_AGENT_KEYS = frozenset({"server", "token", "node-name", "node-ip", "node-taint", "kubelet-arg", "kube-proxy-arg"})

# RKE cluster.yml keys (https://rancher.com/docs/rke/latest/en/config-options/ and its
# nodes/, services/ and add-ons/network-plugins/ pages).
RKE_CLUSTER: Schema = {
    "cluster_name": None, "kubernetes_version": None, "ssh_key_path": None,
    "nodes": [{"address": None, "internal_address": None, "hostname_override": None, "user": None,
               "role": None, "ssh_key_path": None, "port": None, "docker_socket": None, "labels": {"*": None}}],
    "network": {"plugin": None, "options": {"*": None}},
    "services": {
        "etcd": {"backup_config": {"enabled": None, "interval_hours": None, "retention": None},
                 "extra_args": {"*": None}},
        "kube-api": {"service_cluster_ip_range": None, "service_node_port_range": None, "extra_args": {"*": None}},
        "kube-controller": {"cluster_cidr": None, "service_cluster_ip_range": None, "extra_args": {"*": None}},
        "kubelet": {"cluster_domain": None, "cluster_dns_server": None, "extra_args": {"*": None}},
        "kubeproxy": {"extra_args": {"*": None}},
        "scheduler": {"extra_args": {"*": None}},
    },
    "authorization": {"mode": None},
    "ingress": {"provider": None},
}


def unknown_rke_fields(cluster: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    _walk(cluster, RKE_CLUSTER, "cluster.yml", problems)
    return problems
