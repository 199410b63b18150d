"""The doubles themselves, on the host: they must reject what the real tools reject, or the e2e tests prove nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from labctl.kube import compat, render, schema
from labctl.lab import parse_lab
from tests.doubles import apiserver, build, common, kubeadm, rke, rke2
from tests.doubles.common import APIError, api, ca_hash, new_ca, new_token

LAB = {
    "name": "doubles",
    "network": {"subnet": "192.168.150.0/24"},
    "nodes": [{"name": "m", "roles": ["master"], "memory": "2GiB"}, {"name": "w", "roles": ["worker"]}],
    "kubernetes": {"distro": "kubeadm", "pod_subnet": "10.244.0.0/21"},
}


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "LOG_DIR", tmp_path / "log")


def test_kubeadm_double_reads_labctls_config_and_rejects_an_unknown_field(tmp_path, capsys):
    lab = parse_lab(LAB)
    path = tmp_path / "kubeadm.yaml"
    path.write_text(render.kubeadm_init_config(lab))
    documents = kubeadm.load_config(str(path), {"InitConfiguration"})
    assert set(documents) == {"InitConfiguration", "ClusterConfiguration", "KubeProxyConfiguration",
                              "KubeletConfiguration"}
    broken = yaml.safe_load_all(path.read_text())
    docs = list(broken)
    docs[1]["networking"]["podCIDR"] = "10.0.0.0/8"
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(SystemExit):
        kubeadm.load_config(str(path), {"InitConfiguration"})
    assert "ClusterConfiguration.networking.podCIDR: unknown field" in capsys.readouterr().err


@pytest.fixture
def server(tmp_path):
    state = apiserver.initial_state(cluster={"name": "c", "pod_subnet": "10.244.0.0/21", "service_subnet": "10.96.0.0/12",
                                             "dns_domain": "cluster.local", "kubernetes_version": "v1.35.3",
                                             "endpoint": "127.0.0.1:0"},
                                    ca_pem=new_ca(), admin_credential="admin-secret")
    state["tokens"]["abcdef.0123456789abcdef"] = {"created": 0}
    apiserver.write_state(tmp_path, state)
    double = apiserver.Server("127.0.0.1", 0, tmp_path)
    double.start()
    yield f"https://127.0.0.1:{double.httpd.server_address[1]}"
    double.stop()


def test_api_double_accepts_only_issued_tokens_and_own_node_credentials(server):
    with pytest.raises(APIError) as refused:
        api(server, "POST", "/bootstrap", {"token": new_token(), "node": "w"})
    assert refused.value.status == 401
    credential = api(server, "POST", "/bootstrap", {"token": "abcdef.0123456789abcdef", "node": "w"})["credential"]
    with pytest.raises(APIError) as other_node:
        api(server, "PUT", "/nodes/m", {"address": "10.0.0.1"}, credential=credential)
    assert other_node.value.status == 403
    api(server, "PUT", "/nodes/w", {"address": "10.0.0.2"}, credential=credential)
    with pytest.raises(APIError):
        api(server, "GET", "/nodes", credential=credential)
    node, = api(server, "GET", "/nodes", credential="admin-secret")["items"]
    assert node["status"]["conditions"][0]["status"] == "False"
    assert node["labctlDouble"]["registeredWith"] == "abcdef.0123456789abcdef"


def test_nodes_get_ready_only_with_a_cni_on_the_cluster_pod_subnet(server):
    credential = api(server, "POST", "/bootstrap", {"token": "abcdef.0123456789abcdef", "node": "w"})["credential"]
    api(server, "PUT", "/nodes/w", {"address": "10.0.0.2"}, credential=credential)
    addons = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
               "spec": {"replicas": 2, "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                                     "spec": {"containers": [{"name": "coredns"}]}}}}]
    api(server, "POST", "/objects", {"items": addons}, credential="admin-secret")
    shipped = list(yaml.safe_load_all(build.cni_manifest("canal")))  # upstream's 10.244.0.0/16, not the lab's /21
    api(server, "POST", "/objects", {"items": shipped}, credential="admin-secret")
    node, = api(server, "GET", "/nodes", credential="admin-secret")["items"]
    assert node["status"]["conditions"][0]["status"] == "False"
    assert "not the cluster's pod subnet" in node["status"]["conditions"][0]["message"]
    assert {p["status"]["phase"] for p in api(server, "GET", "/pods", credential="admin-secret")["items"]} == {"Pending"}
    rewritten = list(yaml.safe_load_all(build.cni_manifest("canal").replace("10.244.0.0/16", "10.244.0.0/21")))
    api(server, "POST", "/objects", {"items": rewritten}, credential="admin-secret")
    node, = api(server, "GET", "/nodes", credential="admin-secret")["items"]
    assert node["status"]["conditions"][0]["status"] == "True"
    dns = [p for p in api(server, "GET", "/pods", credential="admin-secret")["items"]
           if p["metadata"]["labels"].get("k8s-app") == "kube-dns"]
    assert [p["status"]["phase"] for p in dns] == ["Running", "Running"]


def test_join_command_hash_is_the_cas():
    ca = new_ca()
    assert ca_hash(ca).startswith("sha256:") and len(ca_hash(ca)) == 71
    assert ca_hash(ca) != ca_hash(new_ca())


def test_built_double_runs_on_python3_alone(tmp_path):
    kubectl = build.build("kubectl", tmp_path / "kubectl", {"version": "v1.35.3"})
    proc = subprocess.run([sys.executable, "-I", str(kubectl), "get", "nodes", "--kubeconfig", str(tmp_path / "none")],
                          capture_output=True, text=True, env={"LABCTL_DOUBLES_LOG": str(tmp_path / "log")})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: stat {tmp_path / 'none'}: no such file or directory"
    assert "no such file" in (tmp_path / "log" / "kubectl.log").read_text()


RKE_LAB = {
    "name": "doubles-rke",
    "network": {"subnet": "192.168.150.0/24"},
    "nodes": [{"name": "r", "roles": ["rancher"]}, {"name": "m", "roles": ["master", "etcd"], "memory": "2GiB"},
              {"name": "w", "roles": ["worker"]}],
    "kubernetes": {"distro": "rke"},
}


@pytest.fixture
def rke_double(monkeypatch):
    monkeypatch.setattr(rke, "behaviour", lambda: {"version": compat.RKE_DEFAULT_RELEASE,
                                                   "kubernetes": list(compat.RKE_RELEASES[compat.RKE_DEFAULT_RELEASE])})
    return rke


def test_rke_double_reads_labctls_cluster_yml(tmp_path, rke_double):
    key = tmp_path / "key"
    key.write_text("private")
    path = tmp_path / "cluster.yml"
    path.write_text(render.rke_cluster_yml(parse_lab(RKE_LAB), str(key)))
    cluster = rke_double.load_cluster(path)
    assert [(n["hostname_override"], n["role"]) for n in cluster["nodes"]] == [
        ("m", ["controlplane", "etcd"]), ("w", ["worker"])]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["services"]["etcd"].update(snapshot=True), "cluster.yml.services.etcd.snapshot: unknown field"),
    (lambda c: c.update(kubernetes_version="v1.33.1-rancher1-1"), "is not supported by rke"),
    (lambda c: c["nodes"].pop(), "at least one worker plane host"),
    (lambda c: c["nodes"][0].update(ssh_key_path="/nonexistent"), "Failed to parse key file"),
])
def test_rke_double_rejects_what_rke_rejects(tmp_path, capsys, rke_double, change, message):
    key = tmp_path / "key"
    key.write_text("private")
    cluster = yaml.safe_load(render.rke_cluster_yml(parse_lab(RKE_LAB), str(key)))
    change(cluster)
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(cluster))
    with pytest.raises(SystemExit):
        rke_double.load_cluster(path)
    assert message in capsys.readouterr().err


RKE2_LAB = {**RKE_LAB, "name": "doubles-rke2",
            "nodes": [{"name": "m", "roles": ["master"], "memory": "4GiB"}, {"name": "w", "roles": ["worker"]}],
            "kubernetes": {"distro": "rke2"}}


@pytest.fixture
def rke2_node(tmp_path, monkeypatch):
    """The rke2 double with its config file and air-gap images dir under tmp_path."""
    monkeypatch.setattr(rke2, "CONFIG", tmp_path / "config.yaml")
    monkeypatch.setattr(rke2, "IMAGES", tmp_path / "images")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "rke2-images.linux-amd64.tar.zst").write_bytes(b"x")
    return tmp_path


def test_rke2_double_reads_labctls_server_and_agent_configs(rke2_node):
    lab = parse_lab(RKE2_LAB)
    master, worker = lab.nodes
    (rke2_node / "config.yaml").write_text(render.rke2_config(lab, master))
    assert rke2.load_config(schema.RKE2_SERVER_KEYS)["cni"] == "canal"
    (rke2_node / "config.yaml").write_text(render.rke2_config(lab, worker, server_url="https://m:9345", token="K10x::server:y"))
    assert rke2.load_config(schema.RKE2_AGENT_KEYS)["server"] == "https://m:9345"


def test_rke2_double_rejects_server_keys_on_an_agent_and_a_node_without_images(rke2_node, capsys):
    lab = parse_lab(RKE2_LAB)
    (rke2_node / "config.yaml").write_text(render.rke2_config(lab, lab.nodes[0]))
    with pytest.raises(SystemExit):
        rke2.load_config(schema.RKE2_AGENT_KEYS)
    assert "unknown keys ['cluster-cidr', 'cluster-dns'" in capsys.readouterr().err
    (rke2_node / "images" / "rke2-images.linux-amd64.tar.zst").unlink()
    with pytest.raises(SystemExit):
        rke2.load_config(schema.RKE2_SERVER_KEYS)
    assert "cannot pull rke2's images" in capsys.readouterr().err
