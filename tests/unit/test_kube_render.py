"""Rendered files parse into their upstream formats and carry the lab's settings."""

import pytest
import yaml

from labctl.kube import render, schema
from labctl.lab import parse_lab

NODES = [
    {"name": "rancher-host", "roles": ["rancher"]},
    {"name": "kube-master", "roles": ["master"]},
    {"name": "kube-worker", "roles": ["worker"]},
]
SEED_001 = {
    "distro": "kubeadm", "version": "v1.35.3", "kube_proxy_mode": "nftables", "cluster_name": "tk8s",
    "pod_subnet": "10.244.0.0/21", "service_subnet": "10.98.0.0/24", "dns_domain": "tk8s.k8s",
    "node_cidr_mask_size": 25,
    "kubelet": {"max_pods": 80, "container_log_max_size": "1Mi", "container_log_max_files": 3},
}


def lab_with(kubernetes, nodes=NODES):
    return parse_lab({"name": "ref", "nodes": nodes, "kubernetes": kubernetes})


def by_kind(text):
    return {doc["kind"]: doc for doc in schema.check_kubeadm_yaml(text)}


def test_kubeadm_init_covers_seed_001():
    lab = lab_with(SEED_001)
    master = lab.node("kube-master")
    docs = by_kind(render.kubeadm_init_config(lab))
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"] == {"advertiseAddress": str(master.ip), "bindPort": 6443}
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert init["nodeRegistration"]["name"] == "kube-master"
    assert cluster["clusterName"] == "tk8s"
    assert cluster["kubernetesVersion"] == "v1.35.3"
    assert cluster["controlPlaneEndpoint"] == f"{master.ip}:6443"
    assert cluster["networking"] == {"dnsDomain": "tk8s.k8s", "podSubnet": "10.244.0.0/21", "serviceSubnet": "10.98.0.0/24"}
    assert cluster["controllerManager"]["extraArgs"] == [{"name": "node-cidr-mask-size", "value": "25"}]
    assert docs["KubeProxyConfiguration"]["mode"] == "nftables"
    kubelet = docs["KubeletConfiguration"]
    assert (kubelet["maxPods"], kubelet["containerLogMaxSize"], kubelet["containerLogMaxFiles"]) == (80, "1Mi", 3)
    assert kubelet["cgroupDriver"] == "systemd"


def test_kubeadm_before_131_uses_v1beta3_maps():
    lab = lab_with({**SEED_001, "version": "v1.30.4", "kube_proxy_mode": "ipvs"})
    docs = by_kind(render.kubeadm_init_config(lab))
    assert docs["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    assert docs["ClusterConfiguration"]["controllerManager"]["extraArgs"] == {"node-cidr-mask-size": "25"}
    assert docs["InitConfiguration"]["nodeRegistration"]["kubeletExtraArgs"]["node-ip"]


def test_docker_runtime_uses_cri_dockerd_socket():
    docs = by_kind(render.kubeadm_init_config(lab_with({**SEED_001, "runtime": "docker"})))
    assert docs["InitConfiguration"]["nodeRegistration"]["criSocket"] == "unix:///var/run/cri-dockerd.sock"


def test_unknown_fields_are_caught():
    text = render.kubeadm_init_config(lab_with(SEED_001)).replace("clusterName:", "clustername:")
    with pytest.raises(ValueError, match=r"ClusterConfiguration.clustername: unknown field"):
        schema.check_kubeadm_yaml(text)


def test_nested_unknown_field_and_wrong_version_field_are_caught():
    v1beta3_only = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
                    "apiServer": {"timeoutForControlPlane": "4m"}}
    assert schema.unknown_fields(v1beta3_only) == ["ClusterConfiguration.apiServer.timeoutForControlPlane: unknown field"]
    map_args_in_v1beta4 = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
                           "controllerManager": {"extraArgs": {"node-cidr-mask-size": "25"}}}
    assert schema.unknown_fields(map_args_in_v1beta4) == ["ClusterConfiguration.controllerManager.extraArgs: expected a list"]


def test_unknown_kind_is_caught():
    assert "not a known kubeadm config type" in schema.unknown_fields({"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "Bogus"})[0]


def test_join_command_is_parsed_and_rejects_garbage():
    text = ("kubeadm join 192.168.1.10:6443 --token abcdef.0123456789abcdef "
            "--discovery-token-ca-cert-hash sha256:" + "a" * 64 + " \n")
    join = render.parse_join_command(text)
    assert join.endpoint == "192.168.1.10:6443" and join.token == "abcdef.0123456789abcdef"
    with pytest.raises(ValueError):
        render.parse_join_command("kubeadm join 1.2.3.4:6443 --token nope --discovery-token-ca-cert-hash sha256:aa")
    with pytest.raises(ValueError):
        render.parse_join_command("error: connection refused")


def test_worker_join_config():
    lab = lab_with(SEED_001)
    join = render.JoinInfo("10.0.0.1:6443", "abcdef.0123456789abcdef", ("sha256:" + "b" * 64,))
    (doc,) = schema.check_kubeadm_yaml(render.kubeadm_join_config(lab, lab.node("kube-worker"), join))
    assert doc["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.0.1:6443", "token": join.token, "caCertHashes": list(join.ca_cert_hashes)}
    assert "controlPlane" not in doc


def test_extra_master_join_needs_certificate_key():
    nodes = NODES + [{"name": "kube-master2", "roles": ["master"]}]
    lab = lab_with(SEED_001, nodes)
    join = render.JoinInfo("10.0.0.1:6443", "abcdef.0123456789abcdef", ("sha256:" + "b" * 64,))
    with pytest.raises(ValueError, match="certificate key"):
        render.kubeadm_join_config(lab, lab.node("kube-master2"), join)
    keyed = render.JoinInfo(join.endpoint, join.token, join.ca_cert_hashes, certificate_key="c" * 64)
    (doc,) = schema.check_kubeadm_yaml(render.kubeadm_join_config(lab, lab.node("kube-master2"), keyed))
    assert doc["controlPlane"]["certificateKey"] == "c" * 64


def test_ha_kubeadm_endpoint_is_the_balancer_on_rancher_host():
    nodes = NODES + [{"name": "kube-master2", "roles": ["master"]}, {"name": "kube-master3", "roles": ["master"]}]
    lab = lab_with(SEED_001, nodes)
    balancer = lab.node("rancher-host").ip
    cluster = by_kind(render.kubeadm_init_config(lab))["ClusterConfiguration"]
    assert cluster["controlPlaneEndpoint"] == f"{balancer}:6443"
    config = render.haproxy_config(lab)
    assert config.count("server kube-master") == 3


def test_rke2_server_and_agent_configs():
    lab = lab_with({"distro": "rke2", "kube_proxy_mode": "ipvs", "cni": "calico", "dns_domain": "lab.local"})
    server = yaml.safe_load(render.rke2_config(lab, lab.node("kube-master")))
    assert set(server) <= schema.RKE2_SERVER_KEYS
    assert "token" not in server and "server" not in server
    assert server["cni"] == "calico" and server["cluster-domain"] == "lab.local"
    assert server["cluster-cidr"] == "10.42.0.0/16" and server["service-cidr"] == "10.43.0.0/16"
    assert server["kube-proxy-arg"] == ["proxy-mode=ipvs"]
    assert str(lab.node("kube-master").ip) in server["tls-san"]
    agent = yaml.safe_load(render.rke2_config(lab, lab.node("kube-worker"), server_url="https://10.0.0.1:9345", token="K10::x"))
    assert set(agent) <= schema.RKE2_AGENT_KEYS
    assert agent["server"] == "https://10.0.0.1:9345" and agent["token"] == "K10::x"
    with pytest.raises(ValueError):
        render.rke2_config(lab, lab.node("kube-worker"), server_url="https://10.0.0.1:9345")


def test_rke2_servers_are_tainted_only_when_a_worker_takes_the_workloads():
    lab = lab_with({"distro": "rke2"})
    server = yaml.safe_load(render.rke2_config(lab, lab.node("kube-master")))
    assert server["node-taint"] == ["CriticalAddonsOnly=true:NoExecute"]
    servers_only = lab_with({"distro": "rke2"}, nodes=[NODES[0], {"name": "kube-master", "roles": ["master", "etcd"]},
                                                        {"name": "kube-master2", "roles": ["master", "etcd"]}])
    for name in ("kube-master", "kube-master2"):
        assert "node-taint" not in yaml.safe_load(render.rke2_config(servers_only, servers_only.node(name)))
    # A server that is also a worker is never tainted.
    both = lab_with({"distro": "rke2"}, nodes=[NODES[0], {"name": "kube-master", "roles": ["master", "worker"]}, NODES[2]])
    assert "node-taint" not in yaml.safe_load(render.rke2_config(both, both.node("kube-master")))


def test_kubeadm_masters_keep_the_default_taint_only_when_a_worker_takes_the_workloads():
    lab = lab_with(SEED_001)
    # No taints field: kubeadm applies its default control-plane taint.
    assert "taints" not in by_kind(render.kubeadm_init_config(lab))["InitConfiguration"]["nodeRegistration"]
    masters_only = lab_with(SEED_001, [NODES[0], {"name": "kube-master", "roles": ["master", "etcd"]},
                                       {"name": "kube-master2", "roles": ["master", "etcd"]}])
    init = by_kind(render.kubeadm_init_config(masters_only))["InitConfiguration"]
    assert init["nodeRegistration"]["taints"] == []
    join = render.JoinInfo("10.0.0.1:6443", "abcdef.0123456789abcdef", ("sha256:" + "b" * 64,), certificate_key="c" * 64)
    (doc,) = schema.check_kubeadm_yaml(render.kubeadm_join_config(masters_only, masters_only.node("kube-master2"), join))
    assert doc["nodeRegistration"]["taints"] == []


def test_rke_cluster_yml():
    lab = lab_with({"distro": "rke", "etcd_snapshot_interval_hours": 12, "etcd_snapshot_retention": 3})
    cluster = yaml.safe_load(render.rke_cluster_yml(lab, "/home/labctl/.ssh/k"))
    assert schema.unknown_rke_fields(cluster) == []
    assert cluster["kubernetes_version"] == "v1.32.5-rancher1-1"
    assert cluster["network"]["plugin"] == "canal"
    roles = {n["hostname_override"]: n["role"] for n in cluster["nodes"]}
    assert roles == {"kube-master": ["controlplane", "etcd"], "kube-worker": ["worker"]}
    assert all(n["user"] == "labctl" and n["ssh_key_path"] == "/home/labctl/.ssh/k" for n in cluster["nodes"])
    assert cluster["services"]["etcd"]["backup_config"] == {"enabled": True, "interval_hours": 12, "retention": 3}


def test_rke_schema_catches_unknown_keys():
    assert schema.unknown_rke_fields({"services": {"etcd": {"snapshot_config": {}}}}) == [
        "cluster.yml.services.etcd.snapshot_config: unknown field"]


def test_rancher_values_and_cert_manager_args():
    lab = lab_with({"distro": "rke2", "rancher": {"enabled": True}})
    values = render.rancher_helm_values(lab, "s3cret")
    assert values["hostname"] == "rancher.ref.lab.test"
    assert values["bootstrapPassword"] == "s3cret"
    args = render.cert_manager_install_args(lab, "jetstack/cert-manager")
    assert args[:4] == ["upgrade", "--install", "cert-manager", "jetstack/cert-manager"]
    assert "crds.enabled=true" in args and args[-2:] == ["--version", "v1.21.2"]
    offline = render.cert_manager_install_args(lab, "/opt/labctl/charts/cert-manager-v1.21.2.tgz")
    assert "--version" not in offline
