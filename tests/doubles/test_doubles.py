"""The doubles themselves, on the host: they must reject what the real tools reject, or the e2e tests prove nothing."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.parse

import pytest
import yaml

from labctl.kube import compat, render, schema
from labctl.lab import parse_lab
from tests.doubles import apiserver, build, common, etcd, kubeadm, rke, rke2
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
    # A kubelet reads what it needs to run its pods, and writes nothing but its node.
    assert [n["metadata"]["name"] for n in api(server, "GET", "/nodes", credential=credential)["items"]] == ["w"]
    assert api(server, "GET", "/pods", credential=credential)["items"] == []
    with pytest.raises(APIError) as write:
        api(server, "POST", "/objects", {"items": []}, credential=credential)
    assert write.value.status == 401
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


def deployment(name: str, tolerations: list[dict] | None = None, replicas: int = 1) -> dict:
    spec = {"containers": [{"name": name}], **({"tolerations": tolerations} if tolerations is not None else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def placements(server: str) -> dict[str, list[str]]:
    """Each workload's pods: the node it runs on, or "" while Pending."""
    placed: dict[str, list[str]] = {}
    for pod in api(server, "GET", "/pods", credential="admin-secret")["items"]:
        assert (pod["status"]["phase"] == "Running") == bool(pod["spec"]["nodeName"])
        placed.setdefault(pod["metadata"]["name"].rsplit("-", 1)[0], []).append(pod["spec"]["nodeName"])
    return placed


def test_pods_go_only_to_ready_nodes_whose_taints_they_tolerate(server):
    for name in ("m", "w"):
        credential = api(server, "POST", "/bootstrap", {"token": "abcdef.0123456789abcdef", "node": name})["credential"]
        api(server, "PUT", f"/nodes/{name}", {"address": "10.0.0.2"}, credential=credential)
    # RKE's controlplane+etcd node, as rke's double taints it.
    api(server, "PATCH", "/nodes/m", rke.role_labels_and_taints(["controlplane", "etcd"]), credential="admin-secret")
    canal = list(yaml.safe_load_all(build.cni_manifest("canal").replace("10.244.0.0/16", "10.244.0.0/21")))
    workloads = [deployment("plain", replicas=2),
                 deployment("controlplane-only", [{"key": "node-role.kubernetes.io/controlplane", "operator": "Exists",
                                                   "effect": "NoSchedule"}]),
                 deployment("everything", [{"operator": "Exists"}], replicas=2)]
    api(server, "POST", "/objects", {"items": canal + workloads}, credential="admin-secret")
    assert placements(server) == {"canal": ["m", "w"], "plain": ["w", "w"], "controlplane-only": ["w"],
                                  "everything": ["m", "w"]}
    # Every node tainted: what tolerates none of it stays Pending, as on a real cluster.
    api(server, "PATCH", "/nodes/w", {"taints": [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]},
        credential="admin-secret")
    assert placements(server) == {"canal": ["m", "w"], "plain": ["", ""], "controlplane-only": [""],
                                  "everything": ["m", "w"]}


@pytest.mark.parametrize("toleration, tolerated", [
    ({"key": "k", "operator": "Exists"}, True),  # no effect: every effect
    ({"key": "k", "value": "v", "effect": "NoExecute"}, True),  # Equal is the default operator
    ({"key": "k", "operator": "Equal", "value": "other"}, False),
    ({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, False),
    ({"key": "other", "operator": "Exists"}, False),
    ({"operator": "Exists"}, True),  # no key with Exists: every taint
])
def test_tolerations_match_taints_as_kubernetes_matches_them(toleration, tolerated):
    assert apiserver.tolerates(toleration, {"key": "k", "value": "v", "effect": "NoExecute"}) is tolerated
    # PreferNoSchedule only steers the scheduler: it never keeps a pod off.
    assert apiserver.schedulable({"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}, [toleration])


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


RANCHER_LAB = {**RKE2_LAB, "name": "doubles-rancher",
               "nodes": [{"name": "r", "roles": ["rancher"], "memory": "4GiB"}, *RKE2_LAB["nodes"]],
               "kubernetes": {"distro": "rke2", "rancher": {"enabled": True}}}


@pytest.fixture
def rancher_parts(tmp_path):
    """The rancher artifacts (helm double, fake charts) and an RKE2-versioned API double to install into."""
    root = build.rancher_artifacts(tmp_path / "artifacts")
    state = apiserver.initial_state(cluster={"name": "local", "pod_subnet": "10.42.0.0/16", "service_subnet": "10.43.0.0/16",
                                             "dns_domain": "cluster.local", "kubernetes_version": compat.DEFAULT_RANCHER_CLUSTER,
                                             "endpoint": "127.0.0.1:0"},
                                    ca_pem=new_ca(), admin_credential="admin-secret")
    state["node_credentials"]["node-secret"] = {"node": "r", "token": None}
    apiserver.write_state(tmp_path / "db", state)
    double = apiserver.Server("127.0.0.1", 0, tmp_path / "db")
    double.start()
    server = f"https://127.0.0.1:{double.httpd.server_address[1]}"
    api(server, "PUT", "/nodes/r", {"address": "127.0.0.1"}, credential="node-secret")
    api(server, "POST", "/objects", {"items": list(yaml.safe_load_all(build.cni_manifest("canal").replace(
        "10.244.0.0/16", "10.42.0.0/16")))}, credential="admin-secret")
    kubeconfig = tmp_path / "rke2.yaml"
    kubeconfig.write_text(common.kubeconfig_text("default", server, state["ca"], "default", "admin-secret"))
    yield {"root": root, "server": server, "kubeconfig": kubeconfig, "tmp": tmp_path}
    double.stop()


def helm(parts, *args: str) -> subprocess.CompletedProcess[str]:
    """The built helm double, as labctl runs it on the rancher node (KUBECONFIG in the environment)."""
    return subprocess.run([sys.executable, "-I", str(parts["root"] / "helm" / "bin" / "helm"), *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"KUBECONFIG": str(parts["kubeconfig"]), "LABCTL_DOUBLES_LOG": str(parts["tmp"] / "log")})


def rancher_install_args(parts, lab) -> list[str]:
    values = parts["tmp"] / "rancher-values.yaml"
    values.write_text(yaml.safe_dump(render.rancher_helm_values(lab, "bootstrap-secret-pw")))
    return ["upgrade", "--install", "rancher", str(parts["root"] / "charts" / "rancher-2.14.1.tgz"),
            "--namespace", "cattle-system", "--create-namespace", "--values", str(values)]


def test_helm_double_installs_labctls_charts_and_registers_the_releases(rancher_parts):
    lab = parse_lab(RANCHER_LAB)
    chart = str(rancher_parts["root"] / "charts" / f"cert-manager-{compat.DEFAULT_CERT_MANAGER}.tgz")
    assert helm(rancher_parts, *render.cert_manager_install_args(lab, chart)).returncode == 0
    installed = helm(rancher_parts, *rancher_install_args(rancher_parts, lab))
    assert installed.returncode == 0, installed.stderr
    assert "REVISION: 1" in installed.stdout
    objects = api(rancher_parts["server"], "GET", "/objects", credential="admin-secret")["items"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Secret", "sh.helm.release.v1.rancher.v1"), ("Secret", "sh.helm.release.v1.cert-manager.v1"),
            ("Namespace", "cattle-system"), ("Deployment", "rancher"), ("Issuer", "rancher")} <= names
    deployment, = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "rancher"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"rancher/rancher:{compat.DEFAULT_RANCHER}"
    assert "REVISION: 2" in helm(rancher_parts, *rancher_install_args(rancher_parts, lab)).stdout


@pytest.mark.parametrize("change, message", [
    (lambda args, root: [*args[:3], str(root / "charts" / "rancher-9.9.9.tgz"), *args[4:]], 'Error: path "'),
    (lambda args, root: [a for a in args if a != "--create-namespace"],
     'Error: INSTALLATION FAILED: create: failed to create: namespaces "cattle-system" not found'),
    (lambda args, root: [*args, "--set", "ingress.tls.sourc=rancher"],
     "- (root): Additional property ingress.tls.sourc is not allowed"),
    (lambda args, root: [*args, "--timeout", "ten minutes"], 'invalid duration "ten minutes"'),
])
def test_helm_double_rejects_what_helm_rejects(rancher_parts, change, message):
    lab = parse_lab(RANCHER_LAB)
    chart = str(rancher_parts["root"] / "charts" / f"cert-manager-{compat.DEFAULT_CERT_MANAGER}.tgz")
    assert helm(rancher_parts, *render.cert_manager_install_args(lab, chart)).returncode == 0
    refused = helm(rancher_parts, *change(rancher_install_args(rancher_parts, lab), rancher_parts["root"]))
    assert refused.returncode == 1
    assert message in refused.stderr, refused.stderr


def test_helm_double_needs_cert_managers_crds_and_a_chart_for_the_clusters_kubernetes(rancher_parts):
    lab = parse_lab(RANCHER_LAB)
    chart = str(rancher_parts["root"] / "charts" / f"cert-manager-{compat.DEFAULT_CERT_MANAGER}.tgz")
    without_crds = [a for a in render.cert_manager_install_args(lab, chart) if a not in ("--set", "crds.enabled=true")]
    assert helm(rancher_parts, *without_crds).returncode == 0
    refused = helm(rancher_parts, *rancher_install_args(rancher_parts, lab))
    assert 'no matches for kind "Issuer" in version "cert-manager.io/v1"' in refused.stderr
    # Rancher 2.11's chart stops at Kubernetes 1.32; the cluster runs 1.34.
    build.chart_archive(rancher_parts["root"] / "charts" / "rancher-2.14.1.tgz", build.rancher_chart("v2.11.3"),
                        build.RANCHER_VALUES)
    refused = helm(rancher_parts, *rancher_install_args(rancher_parts, lab))
    assert refused.returncode == 1
    assert f"chart requires kubeVersion: < 1.33.0-0 which is incompatible with Kubernetes {compat.DEFAULT_RANCHER_CLUSTER}" \
        in refused.stderr


def test_helm_double_built_to_fail_fails_the_rancher_release(rancher_parts):
    build.rancher_artifacts(rancher_parts["root"], fail="rancher")
    refused = helm(rancher_parts, *rancher_install_args(rancher_parts, parse_lab(RANCHER_LAB)))
    assert refused.returncode == 1
    assert "this helm double was built to fail the install of release rancher" in refused.stderr


class LocalNode:
    """Runs the rancher node's commands here; Rancher's URLs move from port 443 to the double's port."""

    name = "r"

    def __init__(self, hostname: str, port: int):
        self.rewrite = (f"https://{hostname}/", f"https://{hostname}:{port}/")

    def run(self, command, *, sudo=False, check=True, timeout=None, stdin=None):
        from labctl import runner
        from labctl.transport import Result
        command = command.replace(*self.rewrite)
        proc = runner.run(["sh", "-c", command], check=False, capture=True, input=stdin, timeout=timeout)
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def rancher_server(tmp_path):
    from tests.doubles import rancher
    lab = parse_lab(RANCHER_LAB)
    server = rancher.Rancher(tmp_path / "rancher.json", hostname=render.rancher_hostname(lab),
                             bootstrap_password="right-password", version=compat.DEFAULT_RANCHER, address="127.0.0.1", port=0)
    server.start()
    yield lab, server
    server.stop()


def test_rancher_double_answers_labctls_import_calls(rancher_server):
    from labctl.errors import CommandFailed, WaitTimeout
    from labctl.kube.rancher import RancherAPI, wait_up
    lab, server = rancher_server
    node = LocalNode(render.rancher_hostname(lab), server.port)
    wait_up(lab, node, timeout=10)
    refused = RancherAPI(lab, node)
    with pytest.raises(CommandFailed) as wrong:
        refused.login("wrong-password")
    assert "the server answered HTTP 401" in wrong.value.details and "authentication failed" in wrong.value.details
    with pytest.raises(CommandFailed):
        refused.call("GET", "/v3/clusters")  # no token: 401 must authenticate
    client = RancherAPI(lab, node)
    client.login("right-password")
    cluster_id, url = client.register("doubles-rancher", timeout=20)
    assert url.startswith(f"https://{render.rancher_hostname(lab)}/v3/import/") and url.endswith(".yaml")
    again = RancherAPI(lab, node)
    again.login("right-password")
    assert again.register("doubles-rancher", timeout=20) == (cluster_id, url)  # found, not created twice
    from labctl.kube.rancher import https_command
    manifest = node.run(https_command("GET", url)).stdout
    agent, = [d for d in yaml.safe_load_all(manifest) if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in agent["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CATTLE_SERVER"] == f"https://{render.rancher_hostname(lab)}"
    # Rancher's default tolerations: the agent runs on a controlplane-only node, not on RKE's etcd node.
    tolerations = agent["spec"]["template"]["spec"]["tolerations"]
    assert apiserver.schedulable(rke.role_labels_and_taints(["controlplane"]), tolerations)
    assert not apiserver.schedulable(rke.role_labels_and_taints(["controlplane", "etcd"]), tolerations)
    assert [c["state"] for c in server.state["clusters"].values() if c["name"] == "doubles-rancher"] == ["pending"]
    # No agent has connected: waiting for the cluster to turn active gives up naming its state.
    with pytest.raises(WaitTimeout, match="state 'pending'"):
        client.wait_active(cluster_id, timeout=0)


def test_cluster_agent_reaches_rancher_through_its_host_alias_only(rancher_server, rancher_parts):
    from tests.doubles import kubectl, rancher
    lab, server = rancher_server
    host = render.rancher_hostname(lab)
    token = "token-x"
    server.state["tokens"][token] = {"user": "user-admin"}
    call = lambda method, path, body=None: server.route(method, path, {"Authorization": f"Bearer {token}"}, body)
    # The agent dials the URL's port; here the double's, on 443 in the lab.
    call("PUT", "/v3/settings/server-url", {"value": f"https://{host}:{server.port}"})
    _, cluster = call("POST", "/v3/clusters", {"type": "cluster", "name": "imported"})
    _, registration = call("POST", "/v3/clusterregistrationtokens", {"type": "clusterRegistrationToken", "clusterId": cluster["id"]})
    _, manifest = server.route("GET", urllib.parse.urlsplit(registration["manifestUrl"]).path, {}, None)
    lab_api = rancher_parts["server"]
    api(lab_api, "POST", "/objects", {"items": list(yaml.safe_load_all(manifest))}, credential="admin-secret")
    pod = rancher.Pod(lab_api, "admin-secret", "cattle-system", rancher.AGENT, rancher_parts["tmp"])
    with pytest.raises(OSError, match=f"lookup {host}: no such host"):
        rancher.connect_agent(pod)
    deployment, = [o for o in api(lab_api, "GET", "/objects", credential="admin-secret")["items"]
                   if o["kind"] == "Deployment" and o["metadata"]["name"] == rancher.AGENT]
    aliased = kubectl.merge_patch(deployment, {"spec": {"template": {"spec": {"hostAliases": [
        {"ip": "127.0.0.1", "hostnames": [host]}]}}}})
    api(lab_api, "POST", "/objects", {"items": [aliased]}, credential="admin-secret")
    assert rancher.connect_agent(pod) == cluster["id"]
    _, shown = call("GET", f"/v3/clusters/{cluster['id']}")
    assert (shown["state"], shown["driver"]) == ("active", "imported")
    assert shown["version"]["gitVersion"] == compat.DEFAULT_RANCHER_CLUSTER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unpacked_image(archive, rootfs) -> tuple[dict, dict]:
    """A `docker save` archive's manifest entry and image config, its one layer unpacked into rootfs
    (checked against the config's diff_id, as `docker load` and `ctr images import` check it)."""
    import hashlib
    import io
    import os
    import tarfile

    if os.geteuid() != 0:
        pytest.fail("chroot needs root (the e2e tests need it too)")
    with tarfile.open(archive) as outer:
        manifest, = json.load(outer.extractfile("manifest.json"))
        config = json.load(outer.extractfile(manifest["Config"]))
        layer = outer.extractfile(manifest["Layers"][0]).read()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extractall(rootfs)
    return manifest, config


def test_rancher_image_is_a_docker_archive_that_serves_only_privileged_and_keeps_its_state(tmp_path):
    """The docker-mode image, run here in a chroot: what `docker run --privileged -v ...` gives its entry point."""
    import shutil

    from labctl.errors import CommandFailed
    from labctl.kube.rancher import RancherAPI, wait_up
    from tests.doubles import image
    from tests.e2e.harness import persistent_cache

    root = build.rancher_docker_artifacts(tmp_path / "artifacts", cache=persistent_cache(), version="v2.11.3")
    rootfs = tmp_path / "rootfs"
    manifest, config = unpacked_image(root / "images" / "rancher_rancher_v2.11.3.tar", rootfs)
    assert manifest["RepoTags"] == ["rancher/rancher:v2.11.3"]
    assert config["config"] == image.rancher_config("v2.11.3")
    assert set(config["config"]["ExposedPorts"]) == {"80/tcp", "443/tcp"} and "/var/lib/rancher" in config["config"]["Volumes"]
    entrypoint = config["config"]["Entrypoint"]
    https_port, http_port = free_port(), free_port()
    argv = [shutil.which("chroot") or "chroot", str(rootfs), entrypoint[0], f"--http-listen-port={http_port}", f"--https-listen-port={https_port}"]
    env = {"PATH": "/usr/bin:/bin", "LABCTL_DOUBLES_LOG": "/var/lib/rancher/log"}

    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "ERROR: Rancher must be ran with the --privileged flag when running outside of Kubernetes"

    (rootfs / "dev").mkdir()
    (rootfs / "dev" / "kmsg").touch()  # a privileged container sees the host's /dev
    lab = parse_lab(RANCHER_LAB)
    node = LocalNode(render.rancher_hostname(lab), https_port)

    def started(extra_env):
        server = subprocess.Popen(argv, env={**env, **extra_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_up(lab, node, timeout=60)
        except Exception:
            server.kill()
            raise AssertionError(server.communicate()[0])
        return server

    server = started({"CATTLE_BOOTSTRAP_PASSWORD": "first-password"})
    try:
        client = RancherAPI(lab, node)
        client.login("first-password")
        client.register("imported", timeout=20)
        with pytest.raises(CommandFailed):
            RancherAPI(lab, node).login("other-password")
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Restarted with another bootstrap password: the state in the volume wins, as in Rancher.
    server = started({"CATTLE_BOOTSTRAP_PASSWORD": "ignored-now"})
    try:
        again = RancherAPI(lab, node)
        again.login("first-password")
        assert [c["name"] for c in again.call("GET", "/v3/clusters?name=imported")["data"]] == ["imported"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (rootfs / "var/lib/rancher" / "labctl-double-rancher.json").exists()


def etcd_flags(name: str, data_dir, client: int, peer: int, cluster: dict[str, int], state: str) -> dict[str, str]:
    """The flags kubeadm's etcd manifest gives a member, on loopback ports."""
    return {"name": name, "data-dir": str(data_dir), "advertise-client-urls": f"https://127.0.0.1:{client}",
            "listen-client-urls": f"https://127.0.0.1:{client}", "initial-advertise-peer-urls": f"https://127.0.0.1:{peer}",
            "listen-peer-urls": f"https://127.0.0.1:{peer}", "initial-cluster-state": state,
            "initial-cluster": ",".join(f"{member}=https://127.0.0.1:{port}" for member, port in cluster.items())}


@pytest.fixture
def stacked_etcd(tmp_path):
    """Two etcd members as two kubeadm masters run them, and an API server on each."""
    state = apiserver.initial_state(cluster={"name": "c", "pod_subnet": "10.244.0.0/21", "service_subnet": "10.96.0.0/12",
                                             "dns_domain": "cluster.local", "kubernetes_version": "v1.35.3",
                                             "endpoint": "127.0.0.1:0"},
                                    ca_pem=new_ca(), admin_credential="admin-secret")
    apiserver.write_state(tmp_path / "first", state)
    client1, peer1, client2, peer2 = (free_port() for _ in range(4))
    first = etcd.Member(etcd_flags("m1", tmp_path / "first", client1, peer1, {"m1": peer1}, "new"))
    first.start()
    joining = etcd_flags("m2", tmp_path / "second", client2, peer2, {"m1": peer1, "m2": peer2}, "existing")
    with pytest.raises(etcd.NotAMember, match="m2"):
        etcd.Member(joining)
    status, _ = etcd.forward(f"https://127.0.0.1:{client1}", "POST", "/members", {
        "name": "m2", "peerURLs": [f"https://127.0.0.1:{peer2}"], "clientURLs": [f"https://127.0.0.1:{client2}"]})
    assert status == 201
    second = etcd.Member(joining)
    second.start()
    servers = [apiserver.Server("127.0.0.1", 0, etcd=f"https://127.0.0.1:{port}") for port in (client1, client2)]
    for server in servers:
        server.start()
    yield [f"https://127.0.0.1:{s.httpd.server_address[1]}" for s in servers], tmp_path / "first"
    for part in (*servers, second, first):
        part.stop()


def test_api_servers_of_two_masters_serve_the_first_members_data(stacked_etcd):
    (first, second), data_dir = stacked_etcd
    api(second, "POST", "/tokens", {"token": "abcdef.0123456789abcdef"}, credential="admin-secret")
    api(first, "POST", "/node-credentials", {"credential": "node-2", "node": "m2"}, credential="admin-secret")
    api(second, "PUT", "/nodes/m2", {"address": "127.0.0.1"}, credential="node-2")
    assert [n["metadata"]["name"] for n in api(first, "GET", "/nodes", credential="admin-secret")["items"]] == ["m2"]
    # The first member's data dir is the only copy: etcdctl snapshots on the first master see the write.
    assert "abcdef.0123456789abcdef" in apiserver.read_state(data_dir)["tokens"]
    members = api(second, "GET", "/etcd-members", credential="admin-secret")["members"]
    assert [m["name"] for m in members] == ["m1", "m2"]


def test_stale_etcd_write_is_refused(stacked_etcd):
    (first, _), _ = stacked_etcd
    members = api(first, "GET", "/etcd-members", credential="admin-secret")["members"]
    store = apiserver.EtcdStore(members[1]["clientURLs"][0])
    state, revision = store.load()
    store.save({**state, "objects": []}, revision)
    with pytest.raises(apiserver.Conflict):
        store.save(state, revision)  # another API server wrote since this one read


class RKE2Servers:
    """Two `rke2 server` nodes in this process, on loopback: m1 on 127.0.0.1, m2 on 127.0.0.2, each with its own
    db dir and etcd ports (rke2.ETCD_DIR and etcd's ports are switched to the node acting)."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp, self.monkeypatch, self.running = tmp_path, monkeypatch, []
        self.ports = {"m1": (free_port(), free_port()), "m2": (free_port(), free_port())}
        monkeypatch.setattr(rke2, "behaviour", lambda: {"version": compat.DEFAULT_VERSIONS["rke2"]})
        monkeypatch.setattr(rke2, "NODE_TOKEN", tmp_path / "m1" / "node-token")
        monkeypatch.setattr(rke2, "API_PORT", free_port())  # nothing listens: cluster-reset's probe finds it stopped
        self.on("m1")
        rke2.new_cluster({"cluster-cidr": "10.52.0.0/16"}, "m1", "127.0.0.1")
        self.token = rke2.NODE_TOKEN.read_text().strip()

    def on(self, node):
        self.monkeypatch.setattr(rke2, "ETCD_DIR", self.tmp / node / "etcd")
        client, peer = self.ports[node]
        self.monkeypatch.setattr(etcd, "CLIENT_PORT", client)
        self.monkeypatch.setattr(etcd, "PEER_PORT", peer)

    def start(self, node, members, state):
        """The node's etcd member and an API server on it, as rke2 server runs them; the API's URL."""
        self.on(node)
        address = "127.0.0.1" if node == "m1" else "127.0.0.2"
        member = etcd.Member(etcd.member_flags(node, rke2.ETCD_DIR, address, members, state))
        member.start()
        server = apiserver.Server(address, 0, etcd=f"https://127.0.0.1:{etcd.CLIENT_PORT}")
        server.start()
        self.running += [server, member]
        return f"https://{address}:{server.httpd.server_address[1]}"

    def start_first(self):
        return self.start("m1", {"m1": f"https://127.0.0.1:{self.ports['m1'][1]}"}, "new")

    def join_second(self, first, token=None):
        self.on("m2")
        _, members = rke2.join_cluster(first, token or self.token, "m2", "127.0.0.2")
        return self.start("m2", members, "existing")

    def stop(self):
        for part in reversed(self.running):
            part.stop()
        self.running = []


@pytest.fixture
def rke2_servers(tmp_path, monkeypatch):
    servers = RKE2Servers(tmp_path, monkeypatch)
    yield servers
    servers.stop()


def test_rke2_server_joins_with_the_token_and_serves_the_first_servers_state(rke2_servers, capsys):
    first = rke2_servers.start_first()
    pin, _, password = rke2_servers.token.partition("::server:")
    with pytest.raises(SystemExit):
        rke2_servers.join_second(first, token=f"{pin}::server:{'0' * 32}")
    assert f"failed to get bootstrap data from {first}: 401 Unauthorized" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rke2_servers.join_second(first, token=f"K10{'0' * 64}::server:{password}")
    assert "token CA hash does not match the Cluster CA certificate hash" in capsys.readouterr().err
    second = rke2_servers.join_second(first)
    admin = apiserver.read_state(rke2_servers.tmp / "m1" / "etcd")["admin"]
    assert [m["name"] for m in api(second, "GET", "/etcd-members", credential=admin)["members"]] == ["m1", "m2"]
    # One state behind both API servers: a write through the second is what the first serves.
    api(second, "POST", "/objects", {"items": [{"kind": "ConfigMap", "metadata": {"name": "via-m2"}}]}, credential=admin)
    assert "via-m2" in [o["metadata"]["name"] for o in api(first, "GET", "/objects", credential=admin)["items"]]
    # A restart of the joined server keeps its membership: no second MemberAdd (etcd would refuse the peer URL).
    rke2_servers.on("m2")
    assert rke2.join_cluster(first, rke2_servers.token, "m2", "127.0.0.2")[1] == {
        "m1": f"https://127.0.0.1:{rke2_servers.ports['m1'][1]}", "m2": f"https://127.0.0.2:{rke2_servers.ports['m2'][1]}"}
    added = [json.loads(line) for line in (common.LOG_DIR / "etcd.log").read_text().splitlines()]
    assert [e["name"] for e in added if e.get("event") == "member add"] == ["m2"]


def test_rke2_cluster_reset_leaves_one_member_and_the_second_rejoins_with_its_db_deleted(rke2_servers, capsys):
    first = rke2_servers.start_first()
    rke2_servers.join_second(first)
    admin = apiserver.read_state(rke2_servers.tmp / "m1" / "etcd")["admin"]
    snapshot = rke2_servers.tmp / "snapshot"
    snapshot.write_text(json.dumps(apiserver.read_state(rke2_servers.tmp / "m1" / "etcd")))
    api(first, "POST", "/objects", {"items": [{"kind": "ConfigMap", "metadata": {"name": "after"}}]}, credential=admin)
    rke2_servers.stop()
    rke2_servers.on("m1")
    rke2.cluster_reset(str(snapshot))
    assert "restart without --cluster-reset flag now" in capsys.readouterr().out
    first = rke2_servers.start_first()
    # The second kept its db dir: its member is gone from the reset cluster, so its etcd does not start.
    with pytest.raises(etcd.NotAMember, match="m2"):
        rke2_servers.join_second(first)
    shutil.rmtree(rke2_servers.tmp / "m2")
    second = rke2_servers.join_second(first)
    assert "after" not in [o["metadata"]["name"] for o in api(second, "GET", "/objects", credential=admin)["items"]]
    assert [m["name"] for m in api(second, "GET", "/etcd-members", credential=admin)["members"]] == ["m1", "m2"]


def test_etcdutl_restores_only_a_whole_snapshot_into_an_empty_dir_and_etcd_serves_it(tmp_path, capsys):
    from tests.doubles import etcdutl

    state = apiserver.initial_state(cluster={"name": "c"}, ca_pem=new_ca(), admin_credential="admin-secret")
    apiserver.write_state(tmp_path / "etcd", state)
    snapshot = tmp_path / "snap.db"
    snapshot.write_text(etcd.snapshot(tmp_path / "etcd"))
    apiserver.write_state(tmp_path / "etcd", {**state, "tokens": {"after.snapshot": {}}})

    def refused(argv, message):
        with pytest.raises(SystemExit):
            etcdutl.main(argv)
        assert message in capsys.readouterr().err

    client, peer = free_port(), free_port()
    member = ["--name", "m1", "--initial-cluster", f"m1=https://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
              f"https://127.0.0.1:{peer}"]
    refused(["snapshot", "restore", str(snapshot), "--data-dir", str(tmp_path / "etcd"), *member],
            f'Error: data-dir "{tmp_path / "etcd"}" not empty or could not be read')
    tampered = tmp_path / "tampered.db"
    tampered.write_text(snapshot.read_text().replace('"name": "c"', '"name": "d"'))
    refused(["snapshot", "restore", str(tampered), "--data-dir", str(tmp_path / "new")], "Error: expected sha256")
    (tmp_path / "state.json").write_text(json.dumps(state))
    refused(["snapshot", "restore", str(tmp_path / "state.json"), "--data-dir", str(tmp_path / "new")], "is not an etcd snapshot")
    refused(["snapshot", "restore", str(snapshot), "--data-dir", str(tmp_path / "new"), "--name", "m2"],
            'couldn\'t find local name "m2" in the initial cluster configuration')
    assert not (tmp_path / "new").exists()

    # Without member flags, etcd's defaults name the member (the snapshot's membership is dropped).
    etcdutl.main(["snapshot", "restore", str(snapshot), "--data-dir", str(tmp_path / "default")])
    assert [m["name"] for m in json.loads((tmp_path / "default" / etcd.MEMBERS_FILE).read_text())] == ["default"]
    (tmp_path / "restored").mkdir()  # an empty dir is fine
    etcdutl.main(["snapshot", "restore", str(snapshot), "--data-dir", str(tmp_path / "restored"), *member])
    logged = [json.loads(line) for line in (common.LOG_DIR / "etcdutl.log").read_text().splitlines()]
    assert sum("error" in e for e in logged) == 4
    assert [e["data_dir"] for e in logged if e.get("command") == "snapshot restore"] == [
        str(tmp_path / "default"), str(tmp_path / "restored")]

    served = etcd.Member(etcd_flags("m1", tmp_path / "restored", client, peer, {"m1": peer}, "new"))
    served.start()
    try:
        assert etcd.forward(f"https://127.0.0.1:{client}", "GET", "/state")[1]["state"] == state
        # The member on the restored dir publishes its client URLs (etcdutl wrote none).
        members = etcd.forward(f"https://127.0.0.1:{client}", "GET", "/members")[1]["members"]
    finally:
        served.stop()
    assert members == [{"name": "m1", "peerURLs": [f"https://127.0.0.1:{peer}"], "clientURLs": [f"https://127.0.0.1:{client}"]}]


def test_etcd_image_runs_etcdutl_under_the_tag_of_kubeadms_etcd_manifest(tmp_path):
    """The etcd image of the kubeadm artifacts, run in a chroot as labctl's `ctr run` runs it, /var/lib the node's."""
    import shutil

    from labctl.kube import artifacts
    from tests.e2e.harness import persistent_cache

    root = build.kubeadm_artifacts(tmp_path / "artifacts", "v1.35.3", cache=persistent_cache())
    pod = yaml.safe_load(kubeadm.etcd_manifest("registry.k8s.io", "m1", "127.0.0.1", "/var/lib/etcd", {}, "new"))
    tag = pod["spec"]["containers"][0]["image"]
    archive = artifacts.image_tarball(artifacts.kubeadm_dir(root, "v1.35.3") / "images", tag)
    rootfs = tmp_path / "rootfs"
    manifest, config = unpacked_image(archive, rootfs)
    assert manifest["RepoTags"] == [tag] == ["registry.k8s.io/etcd:3.6.5-0"]
    state = apiserver.initial_state(cluster={"name": "c"}, ca_pem=new_ca(), admin_credential="admin-secret")
    apiserver.write_state(rootfs / "var/lib/etcd", state)
    (rootfs / "var/lib/labctl/etcd-snapshots").mkdir(parents=True)
    (rootfs / "var/lib/labctl/etcd-snapshots/s.db").write_text(etcd.snapshot(rootfs / "var/lib/etcd"))
    env = dict(entry.split("=", 1) for entry in config["config"]["Env"])
    run = subprocess.run([shutil.which("chroot") or "chroot", str(rootfs), "etcdutl", "snapshot", "restore",
                          "/var/lib/labctl/etcd-snapshots/s.db", "--data-dir", "/var/lib/etcd-restore-s"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert apiserver.read_state(rootfs / "var/lib/etcd-restore-s") == state
    # The call log is under /var/lib, which labctl's `ctr run` bind-mounts from the node.
    logged, = (rootfs / "var/lib/labctl-doubles/log/etcdutl.log").read_text().splitlines()
    assert json.loads(logged)["snapshot"] == "/var/lib/labctl/etcd-snapshots/s.db"


@pytest.fixture
def control_plane_pki(tmp_path, monkeypatch):
    monkeypatch.setattr(kubeadm, "PKI", tmp_path / "pki")
    for name in kubeadm.SHARED_CERTS:
        common.write(tmp_path / "pki" / name, f"contents of {name}\n")
    return tmp_path / "pki"


def test_certificate_key_opens_only_the_last_upload(server, control_plane_pki, capsys):
    with pytest.raises(SystemExit):
        kubeadm.download_certs(server, "abcdef.0123456789abcdef", "ab" * 32)
    assert 'Secret "kubeadm-certs" was not found in the "kube-system" Namespace' in capsys.readouterr().err
    old_key = kubeadm.upload_certs(server, "admin-secret")
    new_key = kubeadm.upload_certs(server, "admin-secret")
    assert old_key != new_key and re.fullmatch("[0-9a-f]{64}", new_key)
    bundle = kubeadm.download_certs(server, "abcdef.0123456789abcdef", new_key)
    assert bundle["etcd/ca.key"] == "contents of etcd/ca.key\n" and bundle["admin-credential"] == "admin-secret"
    with pytest.raises(SystemExit):
        kubeadm.download_certs(server, "abcdef.0123456789abcdef", old_key)
    assert ("error downloading certs: error decoding secret data with provided key: cipher: message authentication failed"
            in capsys.readouterr().err)
    # The API holds only ciphertext.
    assert "contents of" not in json.dumps(api(server, "GET", "/secrets/kubeadm-certs", credential="admin-secret"))
    with pytest.raises(APIError) as refused:
        api(server, "GET", "/secrets/kubeadm-certs", credential="ghijkl.0123456789abcdef")
    assert refused.value.status == 401


class FakeDocker(socketserver.ThreadingUnixStreamServer):
    """Docker's /info on a unix socket."""

    def __init__(self, path):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps({"ServerVersion": "26.1.5+dfsg1", "CgroupDriver": "systemd"}).encode()
                self.send_response(200 if self.path == "/info" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

            def address_string(self):
                return "docker.sock"

        super().__init__(str(path), Handler)


def activated_cri_dockerd(tmp_path, docker_endpoint):
    """The built double as systemd starts it for cri-docker.socket: the listening socket as fd 3, LISTEN_PID/FDS."""
    binary = build.build("cri_dockerd", tmp_path / "cri-dockerd", {"version": "0.3.20"})
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "cri-dockerd.sock"))
    listening.listen()
    # exec keeps the pid, so LISTEN_PID names the double as systemd's would.
    activate = (f"import os, sys; os.dup2({listening.fileno()}, 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execv(sys.executable, [sys.executable, '-I', *sys.argv[1:]])")
    proc = subprocess.Popen(
        [sys.executable, "-c", activate, str(binary), "--container-runtime-endpoint", "fd://",
         "--docker-endpoint", docker_endpoint],
        pass_fds=(listening.fileno(),),
        env={"LABCTL_DOUBLES_LOG": str(tmp_path / "log"), "LISTEN_FDS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listening.close()
    return proc, f"unix://{tmp_path / 'cri-dockerd.sock'}"


def test_cri_dockerd_double_serves_the_activated_socket_while_docker_answers(tmp_path):
    docker = FakeDocker(tmp_path / "docker.sock")
    threading.Thread(target=docker.serve_forever, daemon=True).start()
    proc, endpoint = activated_cri_dockerd(tmp_path, f"unix://{tmp_path / 'docker.sock'}")
    try:
        reply = common.cri_call(endpoint, "RuntimeConfig", timeout=30)
        assert (reply["runtimeName"], reply["runtimeVersion"], reply["cgroupDriver"]) == ("docker", "26.1.5+dfsg1", "systemd")
        docker.shutdown()
        docker.server_close()
        with pytest.raises(OSError, match="Cannot connect to the Docker daemon"):
            common.cri_call(endpoint, "Version", timeout=30)
    finally:
        proc.kill()
        proc.wait()


def test_cri_dockerd_double_exits_without_docker_or_a_passed_socket(tmp_path):
    proc, _ = activated_cri_dockerd(tmp_path, f"unix://{tmp_path / 'no-docker.sock'}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Unable to connect to docker: Cannot connect to the Docker daemon at unix://" in err
    binary = tmp_path / "cri-dockerd"
    plain = subprocess.run([sys.executable, "-I", str(binary), "--container-runtime-endpoint", "fd://"],
                           capture_output=True, text=True, env={"LABCTL_DOUBLES_LOG": str(tmp_path / "log")})
    assert plain.returncode == 1 and "no sockets passed by systemd" in plain.stderr


def test_crictl_talks_only_to_a_runtime_socket_that_exists(tmp_path, capsys, monkeypatch):
    from tests.doubles import crictl

    monkeypatch.setattr(crictl, "STATIC_PODS", tmp_path / "static-pods.json")
    with pytest.raises(SystemExit):
        crictl.main(["--runtime-endpoint", f"unix://{tmp_path}/cri-dockerd.sock", "ps", "--name", "etcd", "-q"])
    assert f"dial unix {tmp_path}/cri-dockerd.sock: connect: no such file or directory" in capsys.readouterr().err
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "cri-dockerd.sock"))
    try:
        crictl.main(["--runtime-endpoint", f"unix://{tmp_path}/cri-dockerd.sock", "ps", "--name", "etcd", "-q"])
    finally:
        listening.close()
    assert capsys.readouterr() == ("", "")  # no kubelet double runs here, so no static pod either
