"""Issue: Kubernetes. `labctl up` bootstraps kubeadm, then RKE, then RKE2 on real guests through the
air-gapped artifacts path, with test doubles (tests/doubles) in place of the Kubernetes binaries.

One lab serves the whole module, in order: kubeadm up, kubeconfig, etcd snapshot; reset and a
kubeadm built to fail its init; reset and kubeadm with two masters (kube-worker joins the control
plane through haproxy on rancher-host) on Docker through cri-dockerd, imported by the current Rancher
running in Docker on rancher-host; the same VMs switched to RKE (rke up
from the rancher node over the SSH mesh) with Rancher in Docker (a real container of the Rancher double's
image) importing it, its snapshot and a restore; reset again and RKE2 (server, agent joining with the server's
token), its snapshot and a restore; reset again and RKE2 with two servers (kube-worker joins the first
server's supervisor port with its token, its etcd member added, each serving the one state), a snapshot and
the documented multi-server restore; Rancher added in helm mode to that two-server cluster (a helm built to
fail first, then the real install and the import of the RKE2 cluster); down. Packages come from the local repository labctl serves
(guests have no route out); `labctl repo-build` makes it on the host beforehand.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from labctl.kube import artifacts, compat, rancher
from tests.doubles import build, image
from tests.e2e.harness import persistent_cache
from tests.e2e.labs import ok

LAB_NAME = "e2e-kube"
SUBNET = "192.168.152"
NODES = ("rancher-host", "kube-master", "kube-worker")
MASTER_IP, WORKER_IP = f"{SUBNET}.12", f"{SUBNET}.13"
KUBEADM_VERSION = "v1.35.3"
# The course's kubeadm settings (inventories/kubeadm-lab.yaml): the doubles check each one arrives.
KUBEADM = {
    "distro": "kubeadm", "version": KUBEADM_VERSION, "cluster_name": "tk8s", "dns_domain": "tk8s.k8s",
    "pod_subnet": "10.244.0.0/21", "service_subnet": "10.98.0.0/24", "node_cidr_mask_size": 25,
    "kube_proxy_mode": "nftables",
    "kubelet": {"max_pods": 80, "container_log_max_size": "1Mi", "container_log_max_files": 3},
    "ready_timeout": 600,
}
RKE = {"distro": "rke", "version": compat.DEFAULT_VERSIONS["rke"], "rke_version": compat.RKE_DEFAULT_RELEASE,
       "pod_subnet": "10.42.0.0/16", "ready_timeout": 600}
RKE2 = {"distro": "rke2", "version": compat.DEFAULT_VERSIONS["rke2"], "pod_subnet": "10.52.0.0/16", "ready_timeout": 600}


def write_lab(path: Path, kubernetes: dict, worker_roles: tuple[str, ...] = ("worker",)) -> Path:
    path.write_text(yaml.safe_dump({
        "name": LAB_NAME,
        "ssh_user": "labctl",
        "network": {"subnet": f"{SUBNET}.0/24", "domain": "lab.test"},
        "defaults": {"image": "debian-12", "vcpus": 1, "memory": "1GiB", "disk": "4GiB"},
        # Rancher's floor for its host (labctl.kube.checks), for the Rancher tests at the end.
        "nodes": [{"name": "rancher-host", "roles": ["rancher"], "memory": "3584MiB"},
                  # RKE2's floor for a server (labctl.kube.checks); TCG guests touch only what they use.
                  {"name": "kube-master", "roles": ["master", "etcd"], "memory": "3584MiB"},
                  # A second master in the multi-master phases, so RKE2's server floor too; the same size
                  # in every phase, so the VM is never redefined.
                  {"name": "kube-worker", "roles": list(worker_roles), "memory": "3584MiB"}],
        "packages": {"source": "local"},
        "kubernetes": kubernetes,
    }))
    return path


def on(labctl, lab_file: Path, node: str, command: str) -> str:
    return ok(labctl("ssh", str(lab_file), node, "--", "sh", "-c", command, timeout=300)).stdout


def double_log(labctl, lab_file: Path, node: str, tool: str, *, user: bool = False,
               log_dir: str = "/var/log/labctl-doubles") -> list[dict]:
    """The JSON lines a double logged on a node: root's calls under log_dir (/var/log unless the double ran
    in a container that logs elsewhere), a user's under ~."""
    path = f"~/.labctl-doubles/log/{tool}.log" if user else f"{log_dir}/{tool}.log"
    text = on(labctl, lab_file, node, f"sudo cat {path}" if not user else f"cat {path}")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def restore_drops_what_came_after(labctl, lab_file: Path, node: str, kubectl: str, name: str,
                                  also_on: tuple[str, ...] = ()) -> None:
    """Save snapshot name, add a ConfigMap, restore through labctl: the ConfigMap is gone, every node Ready again.
    also_on: more nodes whose kubectl (their own API server) must show the same before and after."""
    ok(labctl("etcd", "snapshot", "save", str(lab_file), name, timeout=600))
    marker = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after-snapshot", "namespace": "default"}})
    on(labctl, lab_file, node, f"echo '{marker}' | {kubectl} apply -f -")

    def configmaps(where: str) -> set[str]:
        return {c["metadata"]["name"] for c in json.loads(on(labctl, lab_file, where, f"{kubectl} get configmaps -o json"))["items"]}

    assert all("after-snapshot" in configmaps(where) for where in (node, *also_on))
    ok(labctl("etcd", "snapshot", "restore", str(lab_file), name, "--yes", timeout=1800))

    def all_ready() -> bool:
        nodes = json.loads(on(labctl, lab_file, node, f"{kubectl} get nodes -o json"))["items"]
        return len(nodes) == 2 and all(n["status"]["conditions"][0]["status"] == "True" for n in nodes)

    deadline = time.monotonic() + 120
    while not all_ready():
        assert time.monotonic() < deadline, "nodes not Ready again within 120 s of the restore"
        time.sleep(5)
    assert [where for where in (node, *also_on) if "after-snapshot" in configmaps(where)] == []


@pytest.fixture(scope="module")
def lab_file(labctl_home: Path) -> Path:
    return write_lab(labctl_home / f"{LAB_NAME}.yaml", {**KUBEADM, "artifacts": str(labctl_home / "artifacts-kubeadm")})


@pytest.fixture(scope="module")
def local_repos(lab_file: Path, host_labctl) -> None:
    """Provisioning's and kubeadm's repositories, built on the host: the guests have no route out."""
    host_labctl("repo-build", str(lab_file))


@pytest.fixture(scope="module")
def kubeadm_lab(netns, labctl, labctl_home, lab_file, debian_image, local_repos):
    # With the etcd image (the etcdutl double) that `up` imports into containerd, for the restore.
    build.kubeadm_artifacts(labctl_home / "artifacts-kubeadm", KUBEADM_VERSION, cache=persistent_cache())
    start = time.monotonic()
    up = labctl("up", str(lab_file), timeout=3600)
    seconds = time.monotonic() - start
    print(f"\nkubeadm lab: labctl up took {seconds:.0f} s")
    try:
        yield ok(up)
    finally:
        down = labctl("down", str(lab_file), timeout=600)
        assert down.returncode == 0, down.stderr
        assert [d for d in netns.virsh("list", "--all", "--name").stdout.split() if LAB_NAME in d] == []
        assert [n for n in netns.virsh("net-list", "--all", "--name").stdout.split() if LAB_NAME in n] == []
        assert not (labctl_home / "labs" / LAB_NAME).exists()
        assert not (labctl_home / "storage" / LAB_NAME).exists()


def test_kubeadm_join_uses_the_token_the_cluster_issued(labctl, lab_file, kubeadm_lab):
    master = double_log(labctl, lab_file, "kube-master", "kubeadm")
    init = [e for e in master if e.get("command") == "init"]
    created = [e for e in master if e.get("command") == "token create"]
    assert len(init) == 1 and len(created) == 1, master
    joins = [e for e in double_log(labctl, lab_file, "kube-worker", "kubeadm") if e.get("command") == "join"]
    assert len(joins) == 1
    join = joins[0]
    # labctl read the join command from the cluster: a token the API issued, the CA hash init made.
    assert join["token"] == created[0]["token"] != init[0]["token"]
    assert join["ca_hashes"] == [init[0]["ca_hash"]]
    assert join["endpoint"] == f"{MASTER_IP}:6443"
    bootstrap = [e for e in double_log(labctl, lab_file, "kube-worker", "kubelet") if e.get("event") == "tls-bootstrap"]
    assert [e["token"] for e in bootstrap] == [join["token"]]


def test_kubeadm_config_carries_the_lab_settings(labctl, lab_file, kubeadm_lab):
    init, = [e for e in double_log(labctl, lab_file, "kube-master", "kubeadm") if e.get("command") == "init"]
    docs = init["documents"]
    assert docs["InitConfiguration"]["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert docs["InitConfiguration"]["localAPIEndpoint"] == {"advertiseAddress": MASTER_IP, "bindPort": 6443}
    assert docs["ClusterConfiguration"]["networking"] == {
        "dnsDomain": "tk8s.k8s", "podSubnet": "10.244.0.0/21", "serviceSubnet": "10.98.0.0/24"}
    assert docs["ClusterConfiguration"]["clusterName"] == "tk8s"
    assert docs["KubeProxyConfiguration"]["mode"] == "nftables"
    kubelet = docs["KubeletConfiguration"]
    assert (kubelet["maxPods"], kubelet["containerLogMaxSize"], kubelet["containerLogMaxFiles"]) == (80, "1Mi", 3)
    # The worker's kubelet runs with the cluster's kubelet config, fetched when it joined.
    worker_config = yaml.safe_load(on(labctl, lab_file, "kube-worker", "sudo cat /var/lib/kubelet/config.yaml"))
    assert worker_config["maxPods"] == 80 and worker_config["clusterDomain"] == "tk8s.k8s"
    assert worker_config["clusterDNS"] == ["10.98.0.10"]


def test_nodes_ready_are_the_kubelets_that_registered(labctl, lab_file, kubeadm_lab):
    nodes = json.loads(on(labctl, lab_file, "kube-master",
                          "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json"))["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == {"kube-master", "kube-worker"}
    for name, ip in (("kube-master", MASTER_IP), ("kube-worker", WORKER_IP)):
        assert by_name[name]["status"]["conditions"][0]["status"] == "True", by_name[name]
        # The heartbeat came from the node itself, over the lab network.
        assert by_name[name]["labctlDouble"]["peer"] == ip
        assert by_name[name]["status"]["addresses"][0]["address"] == ip
    assert "node-role.kubernetes.io/control-plane" in by_name["kube-master"]["metadata"]["labels"]
    # `up` ends with the summary: kubeconfig path and `kubectl get nodes -o wide`.
    assert re.search(r"^kube-worker\s+Ready\s", kubeadm_lab.stdout, re.MULTILINE), kubeadm_lab.stdout
    assert "kubeconfig: " in kubeadm_lab.stdout
    applied = double_log(labctl, lab_file, "kube-master", "kubectl")
    assert any(e.get("command") == "apply" and "DaemonSet/canal" in e["kinds"] for e in applied), applied


def test_kubeconfig_points_at_the_master(labctl, labctl_home, lab_file, kubeadm_lab):
    text = ok(labctl("kubeconfig", str(lab_file))).stdout
    config = yaml.safe_load(text)
    assert config["clusters"][0]["cluster"]["server"] == f"https://{MASTER_IP}:6443"
    admin = yaml.safe_load(on(labctl, lab_file, "kube-master", "sudo cat /etc/kubernetes/admin.conf"))
    assert config["users"] == admin["users"]
    target = labctl_home / "kube" / "config"
    target.parent.mkdir(exist_ok=True)
    ok(labctl("kubeconfig", str(lab_file), "-o", str(target)))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert yaml.safe_load(target.read_text()) == config


def test_etcd_snapshot_save_and_list(labctl, lab_file, kubeadm_lab):
    saved = ok(labctl("etcd", "snapshot", "save", str(lab_file), "before-change", timeout=600))
    assert "Snapshot saved at /var/lib/etcd/before-change.db" in saved.stdout
    listing = ok(labctl("etcd", "snapshot", "list", str(lab_file))).stdout
    assert "before-change.db" in listing
    snapshot = json.loads(on(labctl, lab_file, "kube-master", "sudo cat /var/lib/labctl/etcd-snapshots/before-change.db"))
    assert sorted(snapshot["state"]["nodes"]) == ["kube-master", "kube-worker"]
    assert snapshot["state"]["cluster"]["pod_subnet"] == "10.244.0.0/21"


def test_etcd_snapshot_restore_runs_etcdutl_of_the_imported_etcd_image(labctl, lab_file, kubeadm_lab):
    restore_drops_what_came_after(labctl, lab_file, "kube-master", "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf",
                                  "kubeadm-restore-point")
    # etcdutl is only in the etcd image `up` imported into containerd; under `ctr run` it logged through
    # the node's /var/lib that labctl bind-mounts.
    assert image.ETCD_IMAGE in on(labctl, lab_file, "kube-master", "sudo ctr -n k8s.io images ls -q").split()
    assert on(labctl, lab_file, "kube-master", "command -v etcdutl || echo none") == "none\n"
    restored, = [e for e in double_log(labctl, lab_file, "kube-master", "etcdutl", log_dir=image.ETCD_IMAGE_LOG)
                 if e.get("command") == "snapshot restore"]
    assert restored["snapshot"] == "/var/lib/labctl/etcd-snapshots/kubeadm-restore-point.db"
    assert restored["data_dir"] == "/var/lib/etcd-restore-kubeadm-restore-point"
    # The member keeps its name and peer URL from etcd.yaml, and the snapshot held both nodes.
    assert restored["members"] == {"kube-master": f"https://{MASTER_IP}:2380"}
    assert restored["nodes"] == ["kube-master", "kube-worker"]
    # The kubelet started etcd again after the restore, on the restored dir.
    started = [e for e in double_log(labctl, lab_file, "kube-master", "etcd") if e.get("event") == "start"]
    assert started[-1]["time"] > restored["time"]
    # The data dir it replaced stays beside it (until `reset --kubernetes`).
    assert on(labctl, lab_file, "kube-master", "sudo ls /var/lib/etcd.before-restore") != ""


def test_up_again_keeps_the_cluster(labctl, lab_file, kubeadm_lab):
    again = ok(labctl("up", str(lab_file), timeout=1800))
    assert "kube-master: kubeadm (control plane already initialised)" in again.stderr, again.stderr
    assert "kube-worker: kubeadm (already joined)" in again.stderr
    assert [e.get("command") for e in double_log(labctl, lab_file, "kube-master", "kubeadm")].count("init") == 1
    assert re.search(r"^kube-worker\s+Ready\s", again.stdout, re.MULTILINE), again.stdout


def test_failed_kubeadm_init_fails_up_naming_the_step(labctl, labctl_home, lab_file, kubeadm_lab):
    ok(labctl("reset", str(lab_file), "--kubernetes", timeout=900))
    resets = [e for e in double_log(labctl, lab_file, "kube-worker", "kubeadm") if e.get("command") == "reset"]
    assert len(resets) == 1
    # kubeadm reset emptied /var/lib/etcd; labctl removed the data dir the restore replaced.
    assert on(labctl, lab_file, "kube-master", "sudo ls -A /var/lib/etcd; ls -d /var/lib/etcd*") == "/var/lib/etcd\n"
    assert labctl("kubeconfig", str(lab_file)).returncode != 0
    failing = build.kubeadm_artifacts(labctl_home / "artifacts-failing", KUBEADM_VERSION, fail="init")
    write_lab(lab_file, {**KUBEADM, "artifacts": str(failing)})
    up = labctl("up", str(lab_file), timeout=3600)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "kube-master: `kubeadm init --config /etc/labctl/kubeadm.yaml` exited with status 1" in up.stderr, up.stderr
    assert "[ERROR LabctlDouble]" in up.stderr
    assert "kubeconfig:" not in up.stdout + up.stderr
    assert labctl("kubeconfig", str(lab_file)).returncode != 0


RANCHER_IP = f"{SUBNET}.11"
CRI_DOCKERD_SOCKET = "unix:///var/run/cri-dockerd.sock"


@pytest.fixture(scope="module")
def kubeadm_ha_lab(labctl, labctl_home, lab_file, host_labctl, kubeadm_lab):
    """After the failed init: kube-worker a second master behind haproxy on rancher-host, runtime docker, and
    Rancher (the current release, in Docker on rancher-host: the Rancher double's image) importing the cluster."""
    ok(labctl("reset", str(lab_file), "--kubernetes", timeout=900))
    artifacts = build.kubeadm_artifacts(labctl_home / "artifacts-ha", KUBEADM_VERSION, runtime="docker")
    rancher_artifacts = build.rancher_docker_artifacts(labctl_home / "artifacts-rancher-docker-ha", cache=persistent_cache())
    write_lab(lab_file, {**KUBEADM, "runtime": "docker", "artifacts": str(artifacts),
                         "rancher": {"enabled": True, "mode": "docker", "artifacts": str(rancher_artifacts)}},
              worker_roles=("master", "etcd"))
    host_labctl("repo-build", str(lab_file))  # haproxy comes into the local repository
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3600))
    print(f"\nkubeadm HA lab (2 masters, docker, Rancher importing it): labctl up took {time.monotonic() - start:.0f} s")
    return up


def last_reset_time(labctl, lab_file: Path, node: str) -> float:
    return [e for e in double_log(labctl, lab_file, node, "kubeadm") if e.get("command") == "reset"][-1]["time"]


def test_second_master_joins_the_control_plane_with_the_last_uploaded_key(labctl, lab_file, kubeadm_ha_lab):
    master = double_log(labctl, lab_file, "kube-master", "kubeadm")
    init = [e for e in master if e.get("command") == "init"][-1]
    assert init["documents"]["ClusterConfiguration"]["controlPlaneEndpoint"] == f"{RANCHER_IP}:6443"
    # `init --upload-certs`, then labctl's `init phase upload-certs`, whose key replaced the first.
    uploads = [e for e in master if e.get("command") == "upload-certs" and e["time"] > init["time"]]
    assert len(uploads) == 2, uploads
    joined = [e for e in double_log(labctl, lab_file, "kube-worker", "kubeadm") if e.get("control_plane")]
    assert len(joined) == 1, joined
    join = joined[0]
    assert join["certificate_key"] == uploads[-1]["certificate_key"] != uploads[0]["certificate_key"]
    assert join["time"] > uploads[-1]["time"]
    assert join["endpoint"] == f"{RANCHER_IP}:6443"
    assert join["documents"]["JoinConfiguration"]["controlPlane"]["localAPIEndpoint"] == {
        "advertiseAddress": WORKER_IP, "bindPort": 6443}
    added = [e for e in double_log(labctl, lab_file, "kube-master", "etcd") if e.get("event") == "member add"]
    assert added[-1]["name"] == "kube-worker" and added[-1]["time"] > init["time"]


def test_both_masters_ready_with_one_cluster_state(labctl, lab_file, kubeadm_ha_lab):
    admin = "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf"
    # admin.conf on both masters names the balancer; kubectl through it works from either.
    for node in ("kube-master", "kube-worker"):
        config = yaml.safe_load(on(labctl, lab_file, node, "sudo cat /etc/kubernetes/admin.conf"))
        assert config["clusters"][0]["cluster"]["server"] == f"https://{RANCHER_IP}:6443"
    nodes = json.loads(on(labctl, lab_file, "kube-worker", f"{admin} get nodes -o json"))["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == {"kube-master", "kube-worker"}
    for name, ip in (("kube-master", MASTER_IP), ("kube-worker", WORKER_IP)):
        assert by_name[name]["status"]["conditions"][0]["status"] == "True", by_name[name]
        assert "node-role.kubernetes.io/control-plane" in by_name[name]["metadata"]["labels"]
        # Each kubelet heartbeats its own master's API server.
        assert by_name[name]["labctlDouble"]["peer"] == ip
    # No worker-role node in this lab: the masters take the workloads, untainted.
    assert [by_name[name]["spec"]["taints"] for name in ("kube-master", "kube-worker")] == [[], []]
    # Each master's own API server answers with the same nodes: one etcd behind both.
    for node, ip in (("kube-master", MASTER_IP), ("kube-worker", WORKER_IP)):
        direct = json.loads(on(labctl, lab_file, node, f"{admin} --server https://{ip}:6443 get nodes -o json"))["items"]
        assert sorted(n["metadata"]["name"] for n in direct) == ["kube-master", "kube-worker"]
    assert re.search(r"^kube-worker\s+Ready\s", kubeadm_ha_lab.stdout, re.MULTILINE), kubeadm_ha_lab.stdout


def test_ha_kubeconfig_and_haproxy_point_at_both_masters(labctl, lab_file, kubeadm_ha_lab):
    config = yaml.safe_load(ok(labctl("kubeconfig", str(lab_file))).stdout)
    assert config["clusters"][0]["cluster"]["server"] == f"https://{RANCHER_IP}:6443"
    haproxy = on(labctl, lab_file, "rancher-host", "cat /etc/haproxy/haproxy.cfg; systemctl is-active haproxy")
    assert f"server kube-master {MASTER_IP}:6443 check" in haproxy
    assert f"server kube-worker {WORKER_IP}:6443 check" in haproxy
    assert haproxy.rstrip().endswith("active")


def test_masters_run_docker_through_cri_dockerd(labctl, lab_file, kubeadm_ha_lab):
    for node in ("kube-master", "kube-worker"):
        since = last_reset_time(labctl, lab_file, node)
        units = on(labctl, lab_file, node, "systemctl is-active docker cri-docker.socket cri-docker.service").split()
        assert units == ["active", "active", "active"], (node, units)
        kubelets = [e for e in double_log(labctl, lab_file, node, "kubelet") if "flags" in e and e["time"] > since]
        assert kubelets and {e["flags"]["container-runtime-endpoint"] for e in kubelets} == {CRI_DOCKERD_SOCKET}, kubelets
        runtime = [e for e in double_log(labctl, lab_file, node, "kubelet") if e.get("event") == "runtime"][-1]
        assert runtime["runtime"]["runtimeName"] == "docker" and runtime["runtime"]["cgroupDriver"] == "systemd"
        # The runtime version came from the guest's Docker, through cri-dockerd's activated socket.
        docker_version = on(labctl, lab_file, node, "sudo docker version --format '{{.Server.Version}}'").strip()
        assert runtime["runtime"]["runtimeVersion"] == docker_version
        serving = [e for e in double_log(labctl, lab_file, node, "cri-dockerd") if e.get("event") == "serving"]
        assert serving and serving[-1]["socket"] == "/run/cri-dockerd.sock"
    init = [e for e in double_log(labctl, lab_file, "kube-master", "kubeadm") if e.get("command") == "init"][-1]
    join = [e for e in double_log(labctl, lab_file, "kube-worker", "kubeadm") if e.get("control_plane")][-1]
    # containerd is not kubeadm's CRI here.
    assert init["documents"]["InitConfiguration"]["nodeRegistration"]["criSocket"] == CRI_DOCKERD_SOCKET
    assert join["documents"]["JoinConfiguration"]["nodeRegistration"]["criSocket"] == CRI_DOCKERD_SOCKET


def test_kubeadm_cluster_imported_and_active_in_rancher(labctl, labctl_home, lab_file, kubeadm_ha_lab):
    assert_rancher_summary(kubeadm_ha_lab, labctl_home)
    cluster = imported_cluster(labctl, lab_file, rancher_password(labctl_home), kubeadm_ha_lab, kubectl_node="kube-master",
                               agent_node="kube-master", user=False, name=KUBEADM["cluster_name"])
    assert (cluster["version"]["gitVersion"], cluster["nodeCount"]) == (KUBEADM_VERSION, 2)


# Seed 000: Rancher in Docker on rancher-host importing the RKE cluster; 2.11 is the last Rancher that manages RKE1.
RKE_RANCHER = {"enabled": True, "mode": "docker", "version": "v2.11.3"}
RANCHER_URL = f"https://rancher.{LAB_NAME}.lab.test"


@pytest.fixture(scope="module")
def rke_lab(labctl, labctl_home, lab_file, kubeadm_lab):
    """The same VMs, Kubernetes reset, the lab file switched to RKE with Rancher in Docker on rancher-host
    (the Rancher double's image, built here from Debian packages) importing the RKE cluster."""
    ok(labctl("reset", str(lab_file), "--kubernetes", timeout=900))
    # The reset took labctl's haproxy off rancher-host (the multi-master phase put it there).
    # SO_REUSEADDR as servers set it: connections haproxy closed may linger in TIME_WAIT; only a listener counts.
    gone = ("command -v haproxy || echo none; python3 -c \"import socket; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 6443)); s.listen()\" && echo free")
    assert on(labctl, lab_file, "rancher-host", gone).split() == ["none", "free"]
    artifacts = build.rke_artifacts(labctl_home / "artifacts-rke", RKE["rke_version"])
    rancher_artifacts = build.rancher_docker_artifacts(labctl_home / "artifacts-rancher-docker", cache=persistent_cache(),
                                                       version=RKE_RANCHER["version"])
    write_lab(lab_file, {**RKE, "artifacts": str(artifacts), "rancher": {**RKE_RANCHER, "artifacts": str(rancher_artifacts)}})
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3600))
    print(f"\nRKE lab with Rancher in Docker: labctl up took {time.monotonic() - start:.0f} s")
    return up


def test_rke_up_reaches_every_node_over_the_ssh_mesh(labctl, lab_file, rke_lab):
    assert "RKE1 reached end of life" in rke_lab.stderr
    log = double_log(labctl, lab_file, "rancher-host", "rke", user=True)
    up, = [e for e in log if e.get("command") == "up"]
    assert up["ssh_key_path"] == "/home/labctl/.ssh/labctl_rke_ed25519"
    assert {(n["address"], n["user"]) for n in up["reached"]} == {(MASTER_IP, "labctl"), (WORKER_IP, "labctl")}
    assert all(n["docker"] for n in up["reached"])
    workdir = on(labctl, lab_file, "rancher-host", "ls ~/labctl-rke").split()
    assert {"cluster.yml", "cluster.rkestate", "kube_config_cluster.yml"} <= set(workdir)
    nodes = json.loads(on(labctl, lab_file, "rancher-host",
                          "kubectl --kubeconfig ~/labctl-rke/kube_config_cluster.yml get nodes -o json"))["items"]
    peers = {n["metadata"]["name"]: n["labctlDouble"]["peer"] for n in nodes}
    assert peers == {"kube-master": MASTER_IP, "kube-worker": WORKER_IP}
    # RKE taints the node without the worker role against workloads.
    assert {n["metadata"]["name"]: n["spec"]["taints"] for n in nodes} == {"kube-master": [
        {"key": "node-role.kubernetes.io/etcd", "value": "true", "effect": "NoExecute"},
        {"key": "node-role.kubernetes.io/controlplane", "value": "true", "effect": "NoSchedule"}], "kube-worker": []}
    assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes)
    config = yaml.safe_load(ok(labctl("kubeconfig", str(lab_file))).stdout)
    assert config["clusters"][0]["cluster"]["server"] == f"https://{MASTER_IP}:6443"


def test_rke_etcd_snapshot(labctl, lab_file, rke_lab):
    ok(labctl("etcd", "snapshot", "save", str(lab_file), "rke-before", timeout=600))
    assert "rke-before.zip" in ok(labctl("etcd", "snapshot", "list", str(lab_file))).stdout


def rancher_container(labctl, lab_file: Path) -> dict:
    return json.loads(on(labctl, lab_file, "rancher-host", "sudo docker container inspect rancher"))[0]


def test_rancher_container_runs_the_loaded_image_privileged_with_its_volume(labctl, labctl_home, lab_file, rke_lab):
    container = rancher_container(labctl, lab_file)
    image = f"rancher/rancher:{RKE_RANCHER['version']}"
    assert container["State"]["Running"] and container["Config"]["Image"] == image
    # The image docker loaded is the one built here: its id is the digest of the archive's config.
    with tarfile.open(artifacts.image_tarball(labctl_home / "artifacts-rancher-docker" / "images", image)) as archive:
        config_name = json.load(archive.extractfile("manifest.json"))[0]["Config"]
    assert container["Image"] == "sha256:" + config_name.removesuffix(".json")
    host = container["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped" and host["Privileged"] is True
    assert {port: [b["HostPort"] for b in bindings] for port, bindings in host["PortBindings"].items()} == {
        "80/tcp": ["80"], "443/tcp": ["443"]}
    assert [(m["Type"], m["Source"], m["Destination"]) for m in container["Mounts"]] == [
        ("bind", rancher.DATA_DIR, "/var/lib/rancher")]
    password = rancher_password(labctl_home)
    assert f"CATTLE_BOOTSTRAP_PASSWORD={password}" in container["Config"]["Env"]
    assert password not in on(labctl, lab_file, "rancher-host", "ps -eo args")
    serving = [json.loads(line) for line in on(labctl, lab_file, "rancher-host",
               f"sudo cat {rancher.DATA_DIR}/labctl-doubles-log/rancher.log").splitlines() if '"serving"' in line]
    assert [(e["mode"], e["version"], e["port"], e["http_port"]) for e in serving] == [
        ("container", RKE_RANCHER["version"], 443, 80)]


def test_rke_up_prints_rancher_url_and_password_file(labctl_home, rke_lab):
    assert_rancher_summary(rke_lab, labctl_home)


def test_rke_cluster_imported_and_active_in_rancher(labctl, labctl_home, lab_file, rke_lab):
    # The agent tolerates the controlplane taint, not the etcd one: it runs on the worker.
    cluster = imported_cluster(labctl, lab_file, rancher_password(labctl_home), rke_lab, kubectl_node="rancher-host",
                               agent_node="kube-worker", user=True)
    assert (cluster["version"]["gitVersion"], cluster["nodeCount"]) == (RKE["version"], 2)


def test_rancher_in_docker_keeps_password_and_cluster_across_a_restart(labctl, labctl_home, lab_file, rke_lab):
    before = rancher_container(labctl, lab_file)["State"]["StartedAt"]
    on(labctl, lab_file, "rancher-host", "sudo docker restart rancher")
    assert rancher_container(labctl, lab_file)["State"]["StartedAt"] != before
    deadline = time.monotonic() + 120
    while on(labctl, lab_file, "rancher-host", rancher.https_command("GET", f"{RANCHER_URL}/ping") + " || true") != "pong":
        assert time.monotonic() < deadline, "Rancher did not answer /ping within 120 s of `docker restart`"
        time.sleep(5)
    status, answer = rancher_call(labctl, lab_file, rancher_password(labctl_home), f"/v3/clusters?name={LAB_NAME}")
    assert status == 0, answer
    assert [(c["state"], c["driver"]) for c in answer["data"]] == [("active", "imported")]


def test_rke_etcd_snapshot_restore(labctl, lab_file, rke_lab):
    restore_drops_what_came_after(labctl, lab_file, "rancher-host",
                                  "kubectl --kubeconfig ~/labctl-rke/kube_config_cluster.yml", "rke-restore-point")
    restored, = [e for e in double_log(labctl, lab_file, "rancher-host", "rke", user=True)
                 if e.get("command") == "snapshot-restore"]
    assert restored["name"] == "rke-restore-point"


@pytest.fixture(scope="module")
def rke2_lab(labctl, labctl_home, lab_file, rke_lab):
    """The same VMs once more, RKE removed, the lab file switched to RKE2."""
    ok(labctl("reset", str(lab_file), "--kubernetes", timeout=900))
    assert "remove" in [e.get("command") for e in double_log(labctl, lab_file, "rancher-host", "rke", user=True)]
    # Rancher's container, its data and its ports are gone: the helm phase later needs 80 and 443 on that node.
    assert on(labctl, lab_file, "rancher-host", "sudo docker ps -aq --filter name=^rancher$") == ""
    assert on(labctl, lab_file, "rancher-host",
              f"sudo sh -c 'test ! -e {rancher.DATA_DIR} && test ! -e {rancher.ENV_FILE} && echo gone'") == "gone\n"
    assert not (labctl_home / "labs" / LAB_NAME / rancher.PASSWORD_FILE).exists()
    listening = on(labctl, lab_file, "rancher-host", "python3 -c 'import socket\nfor port in (80, 443):\n"
                   "    print(port, socket.socket().connect_ex((\"127.0.0.1\", port)) == 0)'")
    assert listening.split("\n") == ["80 False", "443 False", ""], listening
    artifacts = build.rke2_artifacts(labctl_home / "artifacts-rke2", RKE2["version"])
    write_lab(lab_file, {**RKE2, "artifacts": str(artifacts)})
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3600))
    print(f"\nRKE2 lab: labctl up took {time.monotonic() - start:.0f} s")
    return up


def test_rke2_agent_joins_with_the_token_the_server_wrote(labctl, lab_file, rke2_lab):
    server, = [e for e in double_log(labctl, lab_file, "kube-master", "rke2") if e.get("command") == "server"]
    agent, = [e for e in double_log(labctl, lab_file, "kube-worker", "rke2") if e.get("command") == "agent"]
    assert agent["token"] == server["token"] and server["token"].startswith("K10")
    assert agent["server"] == f"https://{MASTER_IP}:9345"
    assert server["config"]["cluster-cidr"] == "10.52.0.0/16" and server["config"]["cni"] == "canal"
    # kube-worker takes the workloads: the server is dedicated.
    assert server["config"]["node-taint"] == ["CriticalAddonsOnly=true:NoExecute"]
    nodes = json.loads(on(labctl, lab_file, "kube-master", "sudo /var/lib/rancher/rke2/bin/kubectl "
                          "--kubeconfig /etc/rancher/rke2/rke2.yaml get nodes -o json"))["items"]
    assert {n["metadata"]["name"]: n["labctlDouble"]["peer"] for n in nodes} == {
        "kube-master": "127.0.0.1", "kube-worker": WORKER_IP}
    assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes)
    config = yaml.safe_load(ok(labctl("kubeconfig", str(lab_file))).stdout)
    assert config["clusters"][0]["cluster"]["server"] == f"https://{MASTER_IP}:6443"


def test_rke2_etcd_snapshot(labctl, lab_file, rke2_lab):
    saved = ok(labctl("etcd", "snapshot", "save", str(lab_file), "rke2-before", timeout=600)).stdout
    assert saved.startswith("Snapshot rke2-before-kube-master-")
    assert "rke2-before-kube-master-" in ok(labctl("etcd", "snapshot", "list", str(lab_file))).stdout


def test_rke2_etcd_snapshot_restore(labctl, lab_file, rke2_lab):
    restore_drops_what_came_after(labctl, lab_file, "kube-master",
                                  "sudo /var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml", "restore-point")
    log = double_log(labctl, lab_file, "kube-master", "rke2")
    reset, = [e for e in log if e.get("command") == "cluster-reset"]
    restore_point, = [e["name"] for e in log if e.get("command") == "etcd-snapshot save" and e["name"].startswith("restore-point-")]
    # The cluster was reset from the file `rke2 etcd-snapshot save` wrote, found by labctl from the snapshot's name.
    assert reset["restore_path"] == f"/var/lib/rancher/rke2/server/db/snapshots/{restore_point}"


RKE2_KUBECTL = "sudo /var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml"
HA_ROLES = ("master", "etcd")


@pytest.fixture(scope="module")
def rke2_ha_lab(labctl, labctl_home, lab_file, rke2_lab):
    """After the single-server phase: Kubernetes reset, kube-worker a second RKE2 server. It joins at the first
    server's supervisor port with the token the first wrote; no fixed registration address in front (the
    rancher node's Rancher, in helm mode later, runs its own RKE2 on 6443 and 9345; docs/kubernetes.md)."""
    ok(labctl("reset", str(lab_file), "--kubernetes", timeout=900))
    write_lab(lab_file, {**RKE2, "artifacts": str(labctl_home / "artifacts-rke2")}, worker_roles=HA_ROLES)
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3600))
    print(f"\nRKE2 HA lab (2 servers): labctl up took {time.monotonic() - start:.0f} s")
    return up


def last_rke2_server(labctl, lab_file: Path, node: str) -> dict:
    return [e for e in double_log(labctl, lab_file, node, "rke2") if e.get("command") == "server"][-1]


def test_rke2_second_server_joins_with_the_token_the_first_wrote(labctl, lab_file, rke2_ha_lab):
    first, joined = (last_rke2_server(labctl, lab_file, node) for node in ("kube-master", "kube-worker"))
    assert "server" not in first["config"] and first["token"].startswith("K10")
    assert (joined["config"]["server"], joined["config"]["token"]) == (f"https://{MASTER_IP}:9345", first["token"])
    assert joined["token"] == first["token"]  # its node-token is the cluster's
    # Its embedded etcd was added through the first member and lists both.
    assert joined["etcd_members"] == ["kube-master", "kube-worker"]
    added = [e for e in double_log(labctl, lab_file, "kube-master", "etcd") if e.get("event") == "member add"][-1]
    assert (added["name"], added["peer_urls"]) == ("kube-worker", [f"https://{WORKER_IP}:2380"])
    assert added["time"] > first["time"]
    # Two servers run two etcd members: labctl says that tolerates no more failures than one.
    assert "2 masters run 2 etcd members, whose quorum is 2" in rke2_ha_lab.stderr, rke2_ha_lab.stderr


def test_rke2_both_servers_ready_as_control_plane_on_one_state(labctl, lab_file, rke2_ha_lab):
    configs = [yaml.safe_load(on(labctl, lab_file, node, "sudo cat /etc/rancher/rke2/rke2.yaml"))
               for node in ("kube-master", "kube-worker")]
    # Each server wrote its own kubeconfig, for its own API server, with the cluster's admin credential.
    assert [c["clusters"][0]["cluster"]["server"] for c in configs] == ["https://127.0.0.1:6443"] * 2
    assert configs[0]["users"] == configs[1]["users"]
    # Each server's API, on its own address over the lab network, answers with the same nodes.
    for ip in (MASTER_IP, WORKER_IP):
        nodes = json.loads(on(labctl, lab_file, "kube-master", f"{RKE2_KUBECTL} --server https://{ip}:6443 get nodes -o json"))["items"]
        by_name = {n["metadata"]["name"]: n for n in nodes}
        assert set(by_name) == {"kube-master", "kube-worker"}, ip
        for name, node in by_name.items():
            assert node["status"]["conditions"][0]["status"] == "True", node
            labels = node["metadata"]["labels"]
            assert {labels.get(f"node-role.kubernetes.io/{role}") for role in ("control-plane", "etcd", "master")} == {"true"}
            # Each server's kubelet heartbeats its own API server.
            assert node["labctlDouble"]["peer"] == "127.0.0.1"
            # No worker-role node in this lab: the servers run the workloads (Rancher's agent later), untainted.
            assert node["spec"]["taints"] == [], node
    config = yaml.safe_load(ok(labctl("kubeconfig", str(lab_file))).stdout)
    assert config["clusters"][0]["cluster"]["server"] == f"https://{MASTER_IP}:6443"
    assert re.search(r"^kube-worker\s+Ready\s+control-plane", rke2_ha_lab.stdout, re.MULTILINE), rke2_ha_lab.stdout


def test_rke2_ha_etcd_snapshot_restore(labctl, lab_file, rke2_ha_lab):
    restore_drops_what_came_after(labctl, lab_file, "kube-master", RKE2_KUBECTL, "ha-restore-point", also_on=("kube-worker",))
    reset = [e for e in double_log(labctl, lab_file, "kube-master", "rke2") if e.get("command") == "cluster-reset"][-1]
    assert reset["restore_path"].startswith("/var/lib/rancher/rke2/server/db/snapshots/ha-restore-point-kube-master-")
    # The reset cluster had one member; the second server, its db deleted, was added again after the reset.
    rejoined = [e for e in double_log(labctl, lab_file, "kube-master", "etcd") if e.get("event") == "member add"][-1]
    assert rejoined["name"] == "kube-worker" and rejoined["time"] > reset["time"]
    assert last_rke2_server(labctl, lab_file, "kube-worker")["etcd_members"] == ["kube-master", "kube-worker"]


def write_rancher_lab(lab_file: Path, labctl_home: Path, rancher_artifacts: Path) -> None:
    """The two-server RKE2 lab as it runs, plus Rancher in helm mode from rancher_artifacts."""
    write_lab(lab_file, {**RKE2, "artifacts": str(labctl_home / "artifacts-rke2"),
                         "rancher": {"enabled": True, "mode": "helm", "artifacts": str(rancher_artifacts)}},
              worker_roles=HA_ROLES)


@pytest.fixture(scope="module")
def failed_rancher_up(labctl, labctl_home, lab_file, rke2_ha_lab):
    """`up` with Rancher added, its helm double built to fail the rancher release."""
    write_rancher_lab(lab_file, labctl_home, build.rancher_artifacts(labctl_home / "artifacts-rancher-failing", fail="rancher"))
    return labctl("up", str(lab_file), timeout=3600)


def test_failed_rancher_install_fails_up_naming_the_step(failed_rancher_up):
    assert failed_rancher_up.returncode == 1, failed_rancher_up.stdout + failed_rancher_up.stderr
    err = failed_rancher_up.stderr
    assert "rancher-host: `KUBECONFIG=/etc/rancher/rke2/rke2.yaml" in err and "/usr/local/bin/helm upgrade --install" in err, err
    assert "exited with status 1" in err
    assert "this helm double was built to fail the install of release rancher" in err
    assert "Rancher:" not in failed_rancher_up.stdout


@pytest.fixture(scope="module")
def rancher_lab(labctl, labctl_home, lab_file, failed_rancher_up):
    write_rancher_lab(lab_file, labctl_home, build.rancher_artifacts(labctl_home / "artifacts-rancher"))
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3600))
    print(f"\nRancher (helm) added: labctl up took {time.monotonic() - start:.0f} s")
    return up


def rancher_call(labctl, lab_file: Path, password: str, path: str) -> tuple[int, dict]:
    """Log in to Rancher from its node as labctl does, then GET path: (the login's exit status, the answer)."""
    base = RANCHER_URL
    login = json.dumps({"username": "admin", "password": password, "responseType": "json"})
    command = rancher.https_command("POST", f"{base}/v3-public/localProviders/local?action=login", body=True)
    status, _, answer = on(labctl, lab_file, "rancher-host",
                           f'answer=$(echo {shlex.quote(login)} | {command}); echo $?; echo "$answer"').partition("\n")
    if status != "0":
        return int(status), json.loads(answer)
    token = json.loads(answer)["token"]
    return 0, json.loads(on(labctl, lab_file, "rancher-host", rancher.https_command("GET", base + path, token=token)))


def rancher_password(labctl_home: Path) -> str:
    return (labctl_home / "labs" / LAB_NAME / rancher.PASSWORD_FILE).read_text().strip()


def assert_rancher_summary(up, labctl_home: Path) -> None:
    """`up` ended with Rancher's URL and password file (0600), the kubeconfig and the nodes."""
    password_file = labctl_home / "labs" / LAB_NAME / rancher.PASSWORD_FILE
    assert f"Rancher:    {RANCHER_URL}  (user admin, password in {password_file})" in up.stdout
    assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
    assert "kubeconfig: " in up.stdout
    assert re.search(r"^kube-worker\s+Ready\s", up.stdout, re.MULTILINE), up.stdout


def imported_cluster(labctl, lab_file: Path, password: str, up, *, kubectl_node: str, agent_node: str, user: bool,
                     name: str = LAB_NAME) -> dict:
    """The lab's cluster in Rancher, active when `up` returned: imported through the manifest labctl applied with
    kubectl on kubectl_node, the agent patched with Rancher's host alias, connected from agent_node (user: doubles
    run as the SSH user). Earlier phases' imports are in the same logs: the newest entries count."""
    assert f"rancher-host: rancher (waiting for cluster {name} to turn active)" in up.stderr, up.stderr
    status, answer = rancher_call(labctl, lab_file, password, f"/v3/clusters?name={name}")
    assert status == 0, answer
    cluster, = answer["data"]
    assert cluster["state"] == "active", cluster
    assert cluster["driver"] == "imported"
    kubectl = double_log(labctl, lab_file, kubectl_node, "kubectl", user=user)
    assert any(e.get("command") == "apply" and "Deployment/cattle-cluster-agent" in e["kinds"] for e in kubectl), kubectl
    patched = [e for e in kubectl if e.get("command") == "patch"][-1]
    aliases = patched["patch"]["spec"]["template"]["spec"]["hostAliases"]
    assert aliases == [{"ip": f"{SUBNET}.11", "hostnames": [f"rancher.{LAB_NAME}.lab.test"]}]
    connected = [e for e in double_log(labctl, lab_file, agent_node, "cattle-cluster-agent", user=user)
                 if e.get("event") == "connected"]
    # Cluster ids are random: the agent connected to this Rancher's cluster, once.
    assert [e["cluster"] for e in connected].count(cluster["id"]) == 1 and connected[-1]["cluster"] == cluster["id"]
    return cluster


def test_rancher_up_prints_url_password_file_and_nodes(labctl_home, rancher_lab):
    assert_rancher_summary(rancher_lab, labctl_home)


def test_rancher_installed_by_helm_with_labs_values(labctl, labctl_home, lab_file, rancher_lab):
    password = rancher_password(labctl_home)
    installs = [e for e in double_log(labctl, lab_file, "rancher-host", "helm") if e.get("command") == "upgrade"]
    cert_manager = [e for e in installs if e["release"] == "cert-manager"]
    assert cert_manager and cert_manager[-1]["values"] == {"crds": {"enabled": True}}
    rancher_release, = [e for e in installs if e["release"] == "rancher"]
    assert (rancher_release["namespace"], rancher_release["chart_version"]) == ("cattle-system", compat.DEFAULT_RANCHER[1:])
    assert rancher_release["values"] == {"hostname": f"rancher.{LAB_NAME}.lab.test", "bootstrapPassword": password,
                                         "replicas": 1, "ingress": {"tls": {"source": "rancher"}}}
    status, refused = rancher_call(labctl, lab_file, password + "-wrong", "/v3/clusters")
    assert (status, refused["status"], refused["message"]) == (22, 401, "authentication failed")


def test_lab_cluster_imported_and_active_in_rancher(labctl, labctl_home, lab_file, rancher_lab):
    cluster = imported_cluster(labctl, lab_file, rancher_password(labctl_home), rancher_lab, kubectl_node="kube-master",
                               agent_node="kube-master", user=False)
    assert (cluster["version"]["gitVersion"], cluster["nodeCount"]) == (RKE2["version"], 2)
