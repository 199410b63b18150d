"""Bootstrap orchestration against scripted fake executors: order, data flow, and failures that raise."""

import json
import re
import threading

import pytest
import yaml

from labctl import api
from labctl.errors import CommandFailed, InvalidInput, WaitTimeout
from labctl.kube import bootstrap as kube_bootstrap
from labctl.kube import artifacts, cluster, remote, render, schema
from labctl.lab import parse_lab
from labctl.progress import QuietReporter
from labctl.transport import Result
from tests.doubles import build

TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "1" * 64


class FakeExecutor:
    """Records commands and pushed files; answers from (regex, Result) rules, first match wins."""

    def __init__(self, name, rules=(), files=None):
        self.name = name
        self.rules = list(rules)
        self.commands: list[tuple[str, bool, bytes | None]] = []
        self.files: dict[str, bytes] = dict(files or {})
        self.lock = threading.Lock()

    def run(self, command, *, sudo=False, check=True, timeout=None, stdin=None):
        with self.lock:
            self.commands.append((command, sudo, stdin))
        result = Result(0, "", "")
        for pattern, answer in self.rules:
            if re.search(pattern, command):
                result = answer(command) if callable(answer) else answer
                break
        if check and not result.ok:
            raise CommandFailed(f"{self.name}: `{command}` exited with status {result.exit_status}")
        return result

    def push(self, data, remote_path, *, mode=0o644, sudo=False):
        self.files[remote_path] = data

    def pull(self, remote_path, *, sudo=False):
        return self.files[remote_path]

    def close(self):
        pass

    def ran(self, pattern):
        return [c for c, _, _ in self.commands if re.search(pattern, c)]


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)


def ok(stdout=""):
    return Result(0, stdout, "")


def fail(stderr="boom"):
    return Result(1, "", stderr)


NODES_READY = json.dumps({"items": [
    {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    for name in ("kube-master", "kube-worker")]})
NODES_READY_WITH_MASTER2 = json.dumps({"items": [
    {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    for name in ("kube-master", "kube-worker", "kube-master2")]})
DNS_RUNNING = json.dumps({"items": [{"status": {"phase": "Running", "containerStatuses": [{"ready": True}]}}]})
KUBECONFIG = yaml.safe_dump({"apiVersion": "v1", "kind": "Config",
                             "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}]})


def kubectl_rules():
    return [
        (r"get nodes -o json", ok(NODES_READY)),
        (r"k8s-app=kube-dns -o json", ok(DNS_RUNNING)),
        (r"get nodes -o wide", ok("NAME STATUS\nkube-master Ready\nkube-worker Ready\n")),
    ]


NODES = [
    {"name": "rancher-host", "roles": ["rancher"]},
    {"name": "kube-master", "roles": ["master"]},
    {"name": "kube-worker", "roles": ["worker"]},
]


def lab_with(kubernetes, nodes=NODES):
    return parse_lab({"name": "ref", "nodes": nodes, "kubernetes": kubernetes})


def kubeadm_fleet(init_rules=()):
    master = FakeExecutor("kube-master", [
        *init_rules,
        (r"^test -f /etc/kubernetes/admin.conf", fail()),
        (r"kubeadm token create --print-join-command",
         ok(f"kubeadm join 192.168.1.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH}\n")),
        *kubectl_rules(),
    ], files={"/etc/kubernetes/admin.conf": KUBECONFIG.encode()})
    worker = FakeExecutor("kube-worker", [(r"^test -f /etc/kubernetes/kubelet.conf", fail())])
    return {"rancher-host": FakeExecutor("rancher-host"), "kube-master": master, "kube-worker": worker}


def test_kubeadm_bootstrap_flow(tmp_path):
    lab = lab_with({"distro": "kubeadm", "kube_proxy_mode": "nftables", "ready_timeout": 60})
    fleet = kubeadm_fleet()
    outcome = kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    master, worker = fleet["kube-master"], fleet["kube-worker"]
    # install script pinned to the package repo version and held
    (install,) = [stdin.decode() for c, _, stdin in master.commands if c == "bash -s" and b"apt-mark hold" in stdin]
    assert "kubeadm=1.35.3-1.1" in install and "pkgs.k8s.io/core:/stable:/v1.35/deb" in install
    # init with the rendered config, which passes the schema check
    assert master.ran(r"^kubeadm init --config /etc/labctl/kubeadm.yaml$")
    schema.check_kubeadm_yaml(master.files[render.KUBEADM_CONFIG_PATH].decode())
    # the worker joins with the token the cluster printed
    (join_doc,) = schema.check_kubeadm_yaml(worker.files[render.KUBEADM_JOIN_CONFIG_PATH].decode())
    assert join_doc["discovery"]["bootstrapToken"]["token"] == TOKEN
    assert join_doc["discovery"]["bootstrapToken"]["caCertHashes"] == [CA_HASH]
    assert worker.ran(r"^kubeadm join --config")
    # order: init before CNI before token before join
    sequence = [c for c, _, _ in master.commands]
    assert sequence.index(master.ran("kubeadm init")[0]) < sequence.index(master.ran("apply -f /etc/labctl/cni.yaml")[0])
    # kubeconfig saved 0600 with the master's address
    saved = yaml.safe_load(outcome.kubeconfig.read_text())
    assert saved["clusters"][0]["cluster"]["server"] == f"https://{lab.node('kube-master').ip}:6443"
    assert outcome.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "kube-worker Ready" in outcome.summary()


def test_kubeadm_init_failure_raises_and_nothing_joins(tmp_path):
    lab = lab_with({"distro": "kubeadm"})
    fleet = kubeadm_fleet(init_rules=[(r"^kubeadm init", fail("[ERROR Port-6443]: Port 6443 is in use"))])
    with pytest.raises(CommandFailed, match="kubeadm init"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert not fleet["kube-worker"].ran("kubeadm join")
    assert not (tmp_path / cluster.KUBECONFIG_NAME).exists()


def test_kubeadm_garbage_join_command_raises(tmp_path):
    lab = lab_with({"distro": "kubeadm"})
    fleet = kubeadm_fleet(init_rules=[(r"--print-join-command", ok("W1123 warning only\n"))])
    with pytest.raises(CommandFailed, match="no usable join command"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)


def test_join_failure_on_one_worker_raises(tmp_path):
    nodes = NODES + [{"name": "kube-worker2", "roles": ["worker"]}]
    lab = lab_with({"distro": "kubeadm"}, nodes)
    fleet = kubeadm_fleet()
    fleet["kube-worker2"] = FakeExecutor("kube-worker2", [(r"^test -f", fail()), (r"^kubeadm join", fail())])
    with pytest.raises(CommandFailed, match="kube-worker2"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert fleet["kube-worker"].ran("kubeadm join")  # the others still ran


def test_extra_masters_get_certificate_key_and_balancer(tmp_path):
    nodes = NODES + [{"name": "kube-master2", "roles": ["master"]}]
    lab = lab_with({"distro": "kubeadm", "ready_timeout": 60}, nodes)
    key = "f" * 64
    fleet = kubeadm_fleet(init_rules=[(r"upload-certs --upload-certs$", ok(f"[upload-certs] Using certificate key:\n{key}\n"))])
    fleet["kube-master2"] = FakeExecutor("kube-master2", [(r"^test -f", fail())])
    master_ready = json.loads(NODES_READY)
    master_ready["items"].append({"metadata": {"name": "kube-master2"},
                                  "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    fleet["kube-master"].rules.insert(0, (r"get nodes -o json", ok(json.dumps(master_ready))))
    outcome = kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert fleet["kube-master"].ran(r"kubeadm init --config .* --upload-certs")
    # The saved kubeconfig goes through the balancer, the cluster's controlPlaneEndpoint.
    server = yaml.safe_load(outcome.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    assert server == f"https://{lab.node('rancher-host').ip}:6443"
    (doc,) = schema.check_kubeadm_yaml(fleet["kube-master2"].files[render.KUBEADM_JOIN_CONFIG_PATH].decode())
    assert doc["controlPlane"]["certificateKey"] == key
    assert "server kube-master2" in fleet["rancher-host"].files["/etc/haproxy/haproxy.cfg"].decode()


def two_master_lab():
    return lab_with({"distro": "kubeadm", "ready_timeout": 60}, NODES + [{"name": "kube-master2", "roles": ["master"]}])


def test_cni_waits_until_the_balancer_passes_the_api(tmp_path):
    """Behind haproxy the endpoint refuses until its health check passed, after kubeadm init returned."""
    lab = two_master_lab()
    answers = iter([Result(1, "", "Unable to connect to the server: EOF")] * 2)
    fleet = kubeadm_fleet(init_rules=[
        (r"upload-certs --upload-certs$", ok(f"[upload-certs] Using certificate key:\n{'a' * 64}\n")),
        (r"get nodes -o json", lambda command: next(answers, ok(NODES_READY_WITH_MASTER2))),
    ])
    fleet["kube-master2"] = FakeExecutor("kube-master2", [(r"^test -f", fail())])
    kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    commands = [c for c, _, _ in fleet["kube-master"].commands]
    apply_at = next(i for i, c in enumerate(commands) if "apply -f /etc/labctl/cni.yaml" in c)
    init_at = next(i for i, c in enumerate(commands) if c.startswith("kubeadm init --config"))
    polls = [i for i, c in enumerate(commands[:apply_at]) if "get nodes -o json" in c]
    assert len(polls) == 3 and polls[0] > init_at  # two refused, the third answered, then the CNI


def test_api_endpoint_never_answering_names_the_balancer(tmp_path, monkeypatch):
    fleet = kubeadm_fleet(init_rules=[(r"get nodes -o json", fail())])
    fleet["kube-master2"] = FakeExecutor("kube-master2", [(r"^test -f", fail())])
    times = iter(range(0, 10_000, 50))
    monkeypatch.setattr(remote.time, "monotonic", lambda: next(times))
    with pytest.raises(WaitTimeout) as caught:
        kube_bootstrap.bootstrap(two_master_lab(), fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert "did not answer at" in caught.value.brief and "haproxy on rancher-host" in caught.value.resolution
    assert not fleet["kube-master"].ran("apply -f")


def test_wait_ready_times_out_with_cluster_state(monkeypatch):
    master = FakeExecutor("kube-master", [
        (r"get nodes -o json", ok(json.dumps({"items": []}))),
        (r"get nodes,pods -A -o wide", ok("NAME READY\npod/coredns-1 0/1 Pending\n")),
    ])
    control = cluster.Control("kube-master", "kubectl", "/etc/kubernetes/admin.conf")
    times = iter(range(0, 10_000, 50))
    monkeypatch.setattr(remote.time, "monotonic", lambda: next(times))
    with pytest.raises(WaitTimeout) as caught:
        cluster.wait_ready(control, master, {"kube-master"}, timeout=120, reporter=QuietReporter())
    assert "kube-master" in caught.value.brief
    assert "coredns-1 0/1 Pending" in caught.value.details


def test_rke2_agents_get_token_read_from_server(tmp_path):
    lab = lab_with({"distro": "rke2", "ready_timeout": 60})
    master = FakeExecutor("kube-master", [
        (r"cat /var/lib/rancher/rke2/server/node-token", ok("K10abc::server:secret\n")),
        *kubectl_rules(),
    ], files={"/etc/rancher/rke2/rke2.yaml": KUBECONFIG.encode()})
    worker = FakeExecutor("kube-worker")
    fleet = {"rancher-host": FakeExecutor("rancher-host"), "kube-master": master, "kube-worker": worker}
    outcome = kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    server_cfg = yaml.safe_load(master.files[render.RKE2_CONFIG_PATH])
    agent_cfg = yaml.safe_load(worker.files[render.RKE2_CONFIG_PATH])
    assert "token" not in server_cfg
    assert agent_cfg["token"] == "K10abc::server:secret"
    assert agent_cfg["server"] == f"https://{lab.node('kube-master').ip}:9345"
    assert master.ran("systemctl start rke2-server") and worker.ran("systemctl start rke2-agent")
    assert master.ran(r"/var/lib/rancher/rke2/bin/kubectl --kubeconfig /etc/rancher/rke2/rke2.yaml get nodes")
    (script,) = [stdin.decode() for c, _, stdin in master.commands if c == "bash -s"]
    assert "INSTALL_RKE2_VERSION=v1.34.6+rke2r3 INSTALL_RKE2_TYPE=server" in script
    assert yaml.safe_load(outcome.kubeconfig.read_text())["clusters"][0]["cluster"]["server"].endswith(":6443")


def test_rke2_second_server_joins_the_first_before_any_agent(tmp_path):
    lab = lab_with({"distro": "rke2", "ready_timeout": 60}, NODES + [{"name": "kube-master2", "roles": ["master"]}])
    order = []

    def started(name):
        return lambda command: order.append(name) or ok()

    master = FakeExecutor("kube-master", [
        (r"systemctl start rke2-server", started("kube-master")),
        (r"cat /var/lib/rancher/rke2/server/node-token", ok("K10abc::server:secret\n")),
        (r"get nodes -o json", ok(NODES_READY_WITH_MASTER2)), *kubectl_rules(),
    ], files={"/etc/rancher/rke2/rke2.yaml": KUBECONFIG.encode()})
    fleet = {"rancher-host": FakeExecutor("rancher-host"), "kube-master": master,
             "kube-master2": FakeExecutor("kube-master2", [(r"systemctl start rke2-server", started("kube-master2"))]),
             "kube-worker": FakeExecutor("kube-worker", [(r"systemctl start rke2-agent", started("kube-worker"))])}
    reporter = QuietReporter()
    kube_bootstrap.bootstrap(lab, fleet, reporter=reporter, state_dir=tmp_path)
    assert order == ["kube-master", "kube-master2", "kube-worker"]
    joining = yaml.safe_load(fleet["kube-master2"].files[render.RKE2_CONFIG_PATH])
    assert set(joining) <= schema.RKE2_SERVER_KEYS
    first_ip = str(lab.node("kube-master").ip)
    # The same token and the first server's supervisor port; the cluster-wide settings match the first's.
    assert (joining["server"], joining["token"]) == (f"https://{first_ip}:9345", "K10abc::server:secret")
    first = yaml.safe_load(master.files[render.RKE2_CONFIG_PATH])
    assert {k: v for k, v in joining.items() if k not in ("server", "token", "node-name", "node-ip")} == {
        k: v for k, v in first.items() if k not in ("node-name", "node-ip")}
    assert {first_ip, str(lab.node("kube-master2").ip)} <= set(first["tls-san"])
    assert any(kind == "warn" and "quorum is 2" in message for _, kind, message in reporter.events)


def test_rke2_empty_token_raises(tmp_path):
    lab = lab_with({"distro": "rke2"})
    fleet = {name: FakeExecutor(name) for name in ("rancher-host", "kube-master", "kube-worker")}
    with pytest.raises(CommandFailed, match="node-token is empty"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert not fleet["kube-worker"].ran("rke2-agent")


def test_rke_runs_from_rancher_host_with_pushed_key(tmp_path):
    lab = lab_with({"distro": "rke", "ready_timeout": 60})
    key = tmp_path / "ssh" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("PRIVATE KEY")
    rancher_host = FakeExecutor("rancher-host", kubectl_rules(), files={
        "/home/labctl/labctl-rke/kube_config_cluster.yml": KUBECONFIG.encode()})
    fleet = {"rancher-host": rancher_host, "kube-master": FakeExecutor("kube-master"), "kube-worker": FakeExecutor("kube-worker")}
    reporter = QuietReporter()
    kube_bootstrap.bootstrap(lab, fleet, reporter=reporter, state_dir=tmp_path)
    assert rancher_host.files["/home/labctl/.ssh/labctl_rke_ed25519"] == b"PRIVATE KEY"
    cluster_yml = yaml.safe_load(rancher_host.files["/home/labctl/labctl-rke/cluster.yml"])
    assert {n["ssh_key_path"] for n in cluster_yml["nodes"]} == {"/home/labctl/.ssh/labctl_rke_ed25519"}
    (up,) = rancher_host.ran(r"rke up")
    assert up == "cd /home/labctl/labctl-rke && rke up --config cluster.yml"
    assert any(kind == "warn" and "RKE2" in text for _, kind, text in reporter.events)


def test_rke_up_failure_raises(tmp_path):
    lab = lab_with({"distro": "rke"})
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "id_ed25519").write_text("k")
    fleet = {"rancher-host": FakeExecutor("rancher-host", [(r"rke up", fail("FATA[0010] Failed to set up SSH tunneling"))]),
             "kube-master": FakeExecutor("kube-master"), "kube-worker": FakeExecutor("kube-worker")}
    with pytest.raises(CommandFailed, match="rke up"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)


def test_missing_artifacts_are_listed_before_any_vm_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path / "home"))
    lab = lab_with({"distro": "kubeadm", "artifacts": str(tmp_path / "art")})
    with pytest.raises(InvalidInput) as caught:
        api.up(lab, "test:///default", reporter=QuietReporter())
    assert "kubeadm/v1.35.3/bin/kubeadm" in caught.value.details
    assert not (tmp_path / "home").exists()  # no keys, no state, no disks


def chart(path, name, version):
    build.chart_archive(path, {"apiVersion": "v2", "name": name, "version": version}, {})


def test_a_chart_of_another_version_than_pinned_is_refused(tmp_path):
    lab = lab_with({"distro": "none", "rancher": {"enabled": True, "import_cluster": False, "version": "v2.14.1", "cert_manager_version": "v1.21.2",
                                                   "artifacts": str(tmp_path)}})
    for path in artifacts.required(lab):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    chart(tmp_path / "charts/cert-manager-v1.21.2.tgz", "cert-manager", "v1.21.2")
    # A newer chart saved under the pinned name: installing it would drift the lab.
    chart(tmp_path / "charts/rancher-2.14.1.tgz", "rancher", "2.13.3")
    with pytest.raises(InvalidInput) as caught:
        artifacts.check(lab)
    assert caught.value.details == (f"  {tmp_path}/charts/rancher-2.14.1.tgz: the chart says version 2.13.3, "
                                    "kubernetes.rancher.version pins v2.14.1")
    chart(tmp_path / "charts/rancher-2.14.1.tgz", "rancher", "2.14.1")
    artifacts.check(lab)


def test_air_gapped_kubeadm_pushes_binaries_and_imports_images(tmp_path):
    art = tmp_path / "art"
    for tool in ("kubeadm", "kubelet", "kubectl", "crictl"):
        (art / "kubeadm/v1.35.3/bin").mkdir(parents=True, exist_ok=True)
        (art / "kubeadm/v1.35.3/bin" / tool).write_text(f"#!/bin/sh\n# {tool}\n")
    (art / "kubeadm/v1.35.3/images").mkdir()
    (art / "kubeadm/v1.35.3/images/pause.tar").write_bytes(b"tar")
    (art / "cni").mkdir()
    (art / "cni/canal.yaml").write_text('"Network": "10.244.0.0/16"\n')
    lab = lab_with({"distro": "kubeadm", "artifacts": str(art), "ready_timeout": 60})
    fleet = kubeadm_fleet()
    kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    master = fleet["kube-master"]
    assert master.files["/var/lib/labctl/artifacts/kubeadm/v1.35.3/bin/kubeadm"] == b"#!/bin/sh\n# kubeadm\n"
    assert master.files["/etc/labctl/cni.yaml"].startswith(b'"Network"')
    (install,) = [stdin.decode() for c, _, stdin in master.commands if c == "bash -s" and b"kubelet.service" in stdin]
    assert "pkgs.k8s.io" not in install and "ctr -n k8s.io images import" in install
    assert not any(b"curl" in (stdin or b"") and b"cni.yaml" in (stdin or b"") for _, _, stdin in master.commands)


def test_rancher_helm_install_and_import(tmp_path):
    lab = lab_with({"distro": "rke2", "ready_timeout": 60, "rancher": {"enabled": True}})
    registered = {"token": 0, "polls": 0}

    def tokens(command):
        registered["token"] += 1
        url = "https://rancher.ref.lab.test/v3/import/abc.yaml" if registered["token"] > 1 else ""
        return ok(json.dumps({"data": [{"manifestUrl": url}]}))

    def cluster(command):
        registered["polls"] += 1
        return ok(json.dumps({"id": "c-abc", "state": "active" if registered["polls"] > 2 else "pending"}))

    rancher_host = FakeExecutor("rancher-host", [
        (r"/ping", ok("pong")),
        (r"action=login", ok(json.dumps({"token": "token-x:y"}))),
        (r"GET .*/v3/clusters\?name=ref", ok(json.dumps({"data": []}))),
        (r"POST .*/v3/clusters'?$", ok(json.dumps({"id": "c-abc"}))),
        (r"GET .*clusterregistrationtokens\?clusterId=c-abc", tokens),
        (r"v3/import/abc.yaml", ok("kind: Namespace\n")),
        (r"GET .*/v3/clusters/c-abc'?$", cluster),
    ])
    master = FakeExecutor("kube-master", [
        (r"node-token", ok("K10tok\n")), *kubectl_rules()], files={"/etc/rancher/rke2/rke2.yaml": KUBECONFIG.encode()})
    fleet = {"rancher-host": rancher_host, "kube-master": master, "kube-worker": FakeExecutor("kube-worker")}
    reporter = QuietReporter()
    outcome = kube_bootstrap.bootstrap(lab, fleet, reporter=reporter, state_dir=tmp_path)
    password_file = tmp_path / "rancher-bootstrap-password"
    password = password_file.read_text().strip()
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert sum(password in text for _, _, text in reporter.events) == 1  # printed once
    values = yaml.safe_load(rancher_host.files["/etc/labctl/rancher-values.yaml"])
    assert values == {"hostname": "rancher.ref.lab.test", "bootstrapPassword": password, "replicas": 1,
                      "ingress": {"tls": {"source": "rancher"}}}
    assert rancher_host.ran(r"helm upgrade --install cert-manager jetstack/cert-manager .*crds.enabled=true")
    assert rancher_host.ran(r"helm upgrade --install rancher rancher-stable/rancher .*--version 2.14.1")
    login = [stdin for c, _, stdin in rancher_host.commands if "action=login" in c][0]
    assert json.loads(login)["password"] == password
    applied = [stdin for c, _, stdin in master.commands if c.endswith("apply -f -")]
    assert applied == [b"kind: Namespace\n"]
    assert master.ran("patch deployment cattle-cluster-agent")
    # up returns only once Rancher shows the cluster active
    assert registered["polls"] == 3
    assert outcome.rancher_url == "https://rancher.ref.lab.test"
    # a second run reuses the stored password without printing it again
    kube_bootstrap.bootstrap(lab, fleet, reporter=reporter, state_dir=tmp_path)
    assert sum(password in text for _, _, text in reporter.events) == 1


def test_rancher_import_that_never_turns_active_times_out_naming_the_state(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(remote.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    lab = lab_with({"distro": "rke2", "ready_timeout": 60, "rancher": {"enabled": True}})
    rancher_host = FakeExecutor("rancher-host", [
        (r"/ping", ok("pong")),
        (r"action=login", ok(json.dumps({"token": "token-x:y"}))),
        (r"GET .*/v3/clusters\?name=ref", ok(json.dumps({"data": [{"id": "c-abc"}]}))),
        (r"GET .*clusterregistrationtokens\?clusterId=c-abc",
         ok(json.dumps({"data": [{"manifestUrl": "https://rancher.ref.lab.test/v3/import/abc.yaml"}]}))),
        (r"v3/import/abc.yaml", ok("kind: Namespace\n")),
        (r"GET .*/v3/clusters/c-abc'?$", ok(json.dumps({"state": "waiting", "transitioningMessage": "agent not connected"}))),
    ])
    master = FakeExecutor("kube-master", [(r"node-token", ok("K10tok\n")), *kubectl_rules()],
                          files={"/etc/rancher/rke2/rke2.yaml": KUBECONFIG.encode()})
    fleet = {"rancher-host": rancher_host, "kube-master": master, "kube-worker": FakeExecutor("kube-worker")}
    with pytest.raises(WaitTimeout, match="did not turn active in Rancher within 60 s .state 'waiting': agent not connected"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)


def test_rancher_rejecting_password_raises(tmp_path):
    lab = lab_with({"distro": "rke2", "ready_timeout": 60, "rancher": {"enabled": True}})
    rancher_host = FakeExecutor("rancher-host", [(r"/ping", ok("pong")), (r"action=login", ok(json.dumps({"message": "unauthorized"})))])
    master = FakeExecutor("kube-master", [(r"node-token", ok("K10tok\n")), *kubectl_rules()],
                          files={"/etc/rancher/rke2/rke2.yaml": KUBECONFIG.encode()})
    fleet = {"rancher-host": rancher_host, "kube-master": master, "kube-worker": FakeExecutor("kube-worker")}
    with pytest.raises(CommandFailed, match="refused the bootstrap password"):
        kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)


def test_rancher_docker_mode_loads_the_air_gapped_image_and_runs_the_container(tmp_path):
    images = tmp_path / "rancher-art" / "images"
    images.mkdir(parents=True)
    (images / "rancher_rancher_v2.14.1.tar").write_bytes(b"image archive")
    lab = lab_with({"distro": "none", "rancher": {"enabled": True, "mode": "docker", "import_cluster": False,
                                                  "artifacts": str(tmp_path / "rancher-art")}})
    rancher_host = FakeExecutor("rancher-host", [(r"^docker container inspect rancher$", fail("No such container")),
                                                 (r"/ping", ok("pong"))])
    fleet = {"rancher-host": rancher_host, "kube-master": FakeExecutor("kube-master"), "kube-worker": FakeExecutor("kube-worker")}
    kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    password = (tmp_path / "rancher-bootstrap-password").read_text().strip()
    assert rancher_host.files["/var/lib/labctl/artifacts/rancher-images/rancher_rancher_v2.14.1.tar"] == b"image archive"
    assert rancher_host.files["/etc/labctl/rancher.env"] == f"CATTLE_BOOTSTRAP_PASSWORD={password}\n".encode()
    (run,) = rancher_host.ran(r"^docker run ")
    assert run == ("docker run -d --name rancher --restart=unless-stopped --privileged -p 80:80 -p 443:443 "
                   "-v /var/lib/labctl/rancher:/var/lib/rancher --env-file /etc/labctl/rancher.env rancher/rancher:v2.14.1")
    assert not any(password in command for command, _, _ in rancher_host.commands)
    commands = [command for command, _, _ in rancher_host.commands]
    (load,) = rancher_host.ran("docker load")
    assert commands.index(load) < commands.index(run)


def test_rancher_docker_mode_starts_an_existing_container_instead_of_a_second_one(tmp_path):
    lab = lab_with({"distro": "none", "rancher": {"enabled": True, "mode": "docker", "import_cluster": False}})
    rancher_host = FakeExecutor("rancher-host", [(r"/ping", ok("pong"))])
    fleet = {"rancher-host": rancher_host, "kube-master": FakeExecutor("kube-master"), "kube-worker": FakeExecutor("kube-worker")}
    kube_bootstrap.bootstrap(lab, fleet, reporter=QuietReporter(), state_dir=tmp_path)
    assert rancher_host.ran(r"^docker start rancher$") and not rancher_host.ran(r"^docker run ")


def test_rancher_docker_mode_needs_the_image_in_its_artifacts(tmp_path):
    lab = lab_with({"distro": "none", "rancher": {"enabled": True, "mode": "docker", "import_cluster": False,
                                                  "artifacts": str(tmp_path / "rancher-art")}})
    with pytest.raises(InvalidInput) as caught:
        artifacts.check(lab)  # `up` runs it before any VM exists
    assert "rancher-art/images/rancher_rancher_v2.14.1.tar" in caught.value.details
