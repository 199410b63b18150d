"""kubeconfig merge, etcd snapshot commands per distro, and reset --kubernetes, on fake executors."""

import pytest
import yaml

from labctl.errors import InvalidInput, LabctlError, WaitTimeout
from labctl.kube import ops, remote
from labctl.lab import parse_lab
from labctl.progress import QuietReporter
from labctl.transport import Result
from tests.unit.test_kube_bootstrap import NODES, FakeExecutor, fail, ok

LAB_KUBECONFIG = yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config",
    "clusters": [{"name": "kubernetes", "cluster": {"server": "https://192.168.1.10:6443", "certificate-authority-data": "Q0E="}}],
    "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": "Q1JU", "client-key-data": "S0VZ"}}],
    "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {"cluster": "kubernetes", "user": "kubernetes-admin"}}],
    "current-context": "kubernetes-admin@kubernetes",
})


def lab_with(kubernetes):
    return parse_lab({"name": "ref", "nodes": NODES, "kubernetes": kubernetes})


def fleet():
    return {name: FakeExecutor(name) for name in ("rancher-host", "kube-master", "kube-worker")}


def test_merge_keeps_other_contexts_and_replaces_own(tmp_path):
    target = tmp_path / "config"
    target.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "work",
        "clusters": [{"name": "work", "cluster": {"server": "https://work:6443"}},
                     {"name": "labctl-ref", "cluster": {"server": "https://stale:6443"}}],
        "users": [{"name": "work", "user": {"token": "t"}}],
        "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}],
    }))
    ops.merge_kubeconfig(LAB_KUBECONFIG, "labctl-ref", target)
    merged = yaml.safe_load(target.read_text())
    assert merged["current-context"] == "work"
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers == {"work": "https://work:6443", "labctl-ref": "https://192.168.1.10:6443"}
    assert {c["name"] for c in merged["contexts"]} == {"work", "labctl-ref"}
    assert target.stat().st_mode & 0o777 == 0o600


def test_merge_into_missing_file_sets_context(tmp_path):
    target = tmp_path / "kube" / "config"
    ops.merge_kubeconfig(LAB_KUBECONFIG, "labctl-ref", target)
    assert yaml.safe_load(target.read_text())["current-context"] == "labctl-ref"


def test_kubeconfig_before_up_says_so(tmp_path):
    with pytest.raises(LabctlError, match="no kubeconfig"):
        ops.kubeconfig(lab_with({"distro": "kubeadm"}), tmp_path)


@pytest.mark.parametrize("distro, node, pattern", [
    ("rke", "rancher-host", r"^cd /home/labctl/labctl-rke && rke etcd snapshot-save --name before-upgrade --config cluster.yml$"),
    ("rke2", "kube-master", r"^rke2 etcd-snapshot save --name before-upgrade$"),
    ("kubeadm", "kube-master", r"^crictl --runtime-endpoint unix:///run/containerd/containerd.sock exec "
                               r"\$\(crictl --runtime-endpoint unix:///run/containerd/containerd.sock ps --name etcd -q"
                               r".* etcdctl .* snapshot save /var/lib/etcd/before-upgrade.db$"),
])
def test_snapshot_save_per_distro(distro, node, pattern):
    nodes = fleet()
    ops.snapshot_save(lab_with({"distro": distro}), nodes, "before-upgrade")
    assert nodes[node].ran(pattern)


def test_snapshot_name_is_checked():
    with pytest.raises(InvalidInput):
        ops.snapshot_save(lab_with({"distro": "rke2"}), fleet(), "x; rm -rf /")


def test_rke2_restore_stops_resets_and_starts():
    nodes = fleet()
    ops.snapshot_restore(lab_with({"distro": "rke2"}), nodes, "snap1", QuietReporter())
    commands = [c for c, _, _ in nodes["kube-master"].commands]
    assert commands[0] == "systemctl stop rke2-server"
    # The snapshot file is resolved before the flag: a glob glued to `--flag=` would reach rke2 unexpanded.
    assert "ls -1t /var/lib/rancher/rke2/server/db/snapshots/snap1-* " in commands[1]
    assert 'rke2 server --cluster-reset --cluster-reset-restore-path="$snapshot"' in commands[1]
    assert commands[2] == "systemctl start rke2-server"


def test_rke2_restore_with_two_servers_rejoins_the_second_after_the_first_is_back():
    lab = parse_lab({"name": "ref", "nodes": [*NODES[:2], {"name": "kube-worker", "roles": ["master"]}],
                     "kubernetes": {"distro": "rke2"}})
    order = []
    nodes = {name: FakeExecutor(name, [(r".", lambda command, name=name: order.append((name, command)) or ok())])
             for name in ("rancher-host", "kube-master", "kube-worker")}
    ops.snapshot_restore(lab, nodes, "snap1", QuietReporter())
    assert [(node, command.split(";")[0]) for node, command in order] == [
        ("kube-master", "systemctl stop rke2-server"),
        ("kube-worker", "systemctl stop rke2-server"),
        ("kube-master", "snapshot=$(ls -1t /var/lib/rancher/rke2/server/db/snapshots/snap1-* 2>/dev/null | head -n1)"),
        ("kube-master", "systemctl start rke2-server"),
        # https://docs.rke2.io/datastore/backup_restore: the other servers rejoin with their db deleted.
        ("kube-worker", "rm -rf /var/lib/rancher/rke2/server/db && systemctl start rke2-server"),
    ]


def answering_master():
    nodes = fleet()
    nodes["kube-master"].rules.append((r"kubectl .* get nodes -o json$", Result(0, '{"items": []}', "")))
    return nodes


def test_kubeadm_restore_returns_once_the_api_answers_again(monkeypatch):
    clock = [0.0]  # each poll's sleep moves the clock on: the 300 s pass at once
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    nodes = fleet()
    nodes["kube-master"].rules.append((r"^journalctl -u kubelet", Result(0, "static pod etcd failed to start: boom", "")))
    with pytest.raises(WaitTimeout, match="within 300 s of the restore") as timeout:
        ops.snapshot_restore(lab_with({"distro": "kubeadm"}), nodes, "snap1", QuietReporter())
    # The error carries the kubelet's own account of why nothing answers.
    assert "kube-master:\nstatic pod etcd failed to start: boom" in timeout.value.details
    answering = answering_master()
    ops.snapshot_restore(lab_with({"distro": "kubeadm"}), answering, "snap1", QuietReporter())
    commands = [c for c, _, _ in answering["kube-master"].commands]
    assert commands[-2:] == ["bash -s", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o json"]


def test_kubeadm_restore_failure_raises():
    nodes = fleet()
    nodes["kube-master"].rules.append((r"bash -s", fail("no such snapshot")))
    with pytest.raises(LabctlError, match="kube-master"):
        ops.snapshot_restore(lab_with({"distro": "kubeadm"}), nodes, "missing", QuietReporter())


def test_kubeadm_restore_waits_for_etcd_to_stop_and_keeps_the_member():
    nodes = answering_master()
    ops.snapshot_restore(lab_with({"distro": "kubeadm"}), nodes, "snap1", QuietReporter())
    (script,) = [stdin.decode() for command, _, stdin in nodes["kube-master"].commands if command == "bash -s"]
    lines = script.splitlines()
    moved = lines.index("mv /etc/kubernetes/manifests/*.yaml /etc/kubernetes/manifests-stopped/")
    waited = next(i for i, line in enumerate(lines) if line.startswith("for _ in") and "$(running)" in line)
    restored = next(i for i, line in enumerate(lines) if line.startswith("ctr -n k8s.io run --rm"))
    swapped = lines.index("mv /var/lib/etcd /var/lib/etcd.before-restore")
    # A kubelet restart keeps running containers: etcd is gone before its data dir moves.
    assert moved < waited < restored < swapped
    crictl = "crictl --runtime-endpoint unix:///run/containerd/containerd.sock"
    assert f"{crictl} ps --name etcd -q; {crictl} ps --name kube-apiserver -q" in script
    assert lines[restored + 1].strip() == ("etcdutl snapshot restore /var/lib/labctl/etcd-snapshots/snap1.db "
                                           "--data-dir /var/lib/etcd-restore-snap1 \\")
    # Without these, etcdutl names the member `default` on http://localhost:2380.
    assert '--name "$member" --initial-cluster "$member=$peer_urls" --initial-advertise-peer-urls "$peer_urls"' in script
    assert lines[-2] == "systemctl restart kubelet"


def test_reset_kubeadm_and_rancher(tmp_path):
    (tmp_path / "kubeconfig").write_text("x")
    (tmp_path / "rancher-bootstrap-password").write_text("p")
    nodes = fleet()
    ops.reset_kubernetes(lab_with({"distro": "kubeadm", "version": "v1.34.2", "rancher": {"enabled": True}}),
                         nodes, tmp_path, QuietReporter())
    assert nodes["kube-master"].ran("kubeadm reset -f") and nodes["kube-worker"].ran("kubeadm reset -f")
    # kubeadm reset empties /var/lib/etcd only: the data dir a restore replaced (the old cluster's) goes too.
    (reset,) = nodes["kube-master"].ran("kubeadm reset -f")
    assert "/var/lib/etcd.before-restore /etc/kubernetes/manifests-stopped /var/lib/etcd-restore-*" in reset
    assert nodes["rancher-host"].ran("rke2-uninstall.sh")
    assert not (tmp_path / "kubeconfig").exists() and not (tmp_path / "rancher-bootstrap-password").exists()


def test_reset_rancher_in_docker_removes_the_container_its_data_and_password(tmp_path):
    (tmp_path / "rancher-bootstrap-password").write_text("p")
    nodes = fleet()
    ops.reset_kubernetes(lab_with({"distro": "rke", "rancher": {"enabled": True, "mode": "docker", "version": "v2.11.3"}}),
                         nodes, tmp_path, QuietReporter())
    (removal,) = nodes["rancher-host"].ran("docker rm -f rancher")
    assert "rm -rf /var/lib/labctl/rancher /etc/labctl/rancher.env" in removal
    assert not (tmp_path / "rancher-bootstrap-password").exists()


def test_reset_multi_master_kubeadm_removes_the_api_balancer(tmp_path):
    nodes = fleet()
    two_masters = [{"name": "rancher-host", "roles": ["rancher"]}, {"name": "kube-master", "roles": ["master"]},
                   {"name": "kube-worker", "roles": ["master"]}]
    lab = parse_lab({"name": "ref", "nodes": two_masters, "kubernetes": {"distro": "kubeadm", "version": "v1.34.2"}})
    ops.reset_kubernetes(lab, nodes, tmp_path, QuietReporter())
    assert nodes["rancher-host"].ran("systemctl disable --now haproxy") and nodes["rancher-host"].ran("apt-get purge -y haproxy")
    assert not nodes["rancher-host"].ran("kubeadm reset")
    # One master: no balancer to remove.
    single = fleet()
    ops.reset_kubernetes(lab_with({"distro": "kubeadm", "version": "v1.34.2"}), single, tmp_path, QuietReporter())
    assert not single["rancher-host"].ran("haproxy")


def test_reset_rke_runs_rke_remove(tmp_path):
    nodes = fleet()
    ops.reset_kubernetes(lab_with({"distro": "rke"}), nodes, tmp_path, QuietReporter())
    assert nodes["rancher-host"].ran("rke remove --force --config cluster.yml")


def test_distro_none_has_nothing_to_reset(tmp_path):
    with pytest.raises(InvalidInput, match="no Kubernetes"):
        ops.reset_kubernetes(lab_with({"distro": "none"}), fleet(), tmp_path, QuietReporter())


def test_kubeadm_on_docker_saves_and_restores_through_cri_dockerd_and_dockers_image_store():
    lab = lab_with({"distro": "kubeadm", "runtime": "docker"})
    nodes = answering_master()
    ops.snapshot_save(lab, nodes, "snap1")
    ops.snapshot_restore(lab, nodes, "snap1", QuietReporter())
    assert nodes["kube-master"].ran(r"^crictl --runtime-endpoint unix:///var/run/cri-dockerd.sock exec ")
    (script,) = [stdin.decode() for command, _, stdin in nodes["kube-master"].commands if command == "bash -s"]
    # `docker load` put the etcd image in Docker's store, where ctr does not look.
    assert 'docker run --rm -v /var/lib:/var/lib "$image" \\\n  etcdutl snapshot restore' in script
    assert "ctr " not in script
    assert "crictl --runtime-endpoint unix:///var/run/cri-dockerd.sock ps --name etcd -q" in script
