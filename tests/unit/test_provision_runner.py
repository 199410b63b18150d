"""The playbook runner against fake nodes: skipping, failing, retrying, serving packages."""

from __future__ import annotations

import re
import threading

import pytest

from labctl.errors import InvalidInput, LabctlError
from labctl.progress import QuietReporter
from labctl.provision import packages as packages_module
from labctl.provision.run import run_playbooks
from labctl.provision.runner import StepFailed
from labctl.transport import Result, SSHUnreachable
from tests.unit.helpers import make_lab

STEP_RE = re.compile(r"^# step: (\S+)$", re.MULTILINE)
MARKER_RE = re.compile(r"printf '%s' (\S+) > /var/lib/labctl/steps/(\S+)$")


class FakeNode:
    """An Executor whose guest keeps step markers in memory; step outcomes can be scripted."""

    def __init__(self, name: str):
        self.name = name
        self.markers: dict[str, str] = {}
        self.steps_run: list[str] = []
        self.scripted: dict[str, list] = {}  # step -> list of Result or Exception, used in order
        self.lock = threading.Lock()

    def run(self, command, *, sudo=False, check=True, timeout=None, stdin=None):
        assert sudo, "provisioning commands run as root"
        if stdin is None:  # the probe
            lines = [f"step {k} {v}" for k, v in self.markers.items()] + ["release bookworm amd64"]
            return Result(0, "\n".join(lines) + "\n", "")
        step = STEP_RE.search(stdin.decode())[1]
        with self.lock:
            self.steps_run.append(step)
            outcomes = self.scripted.get(step)
            outcome = outcomes.pop(0) if outcomes else Result(0, f"{step} ok\n", "")
        if isinstance(outcome, Exception):
            raise outcome
        digest, name = MARKER_RE.search(command).groups()
        assert command.startswith(f"rm -f /var/lib/labctl/steps/{name} && ")
        self.markers.pop(name, None)
        if outcome.ok:
            self.markers[name] = digest.strip("'")
        return outcome

    def push(self, data, remote_path, *, mode=0o644, sudo=False):
        raise AssertionError("the runner sends scripts on stdin")

    def pull(self, remote_path, *, sudo=False):
        raise AssertionError("not used")

    def close(self):
        pass


@pytest.fixture
def lab():
    return make_lab(packages={"source": "distro"})


@pytest.fixture
def nodes(lab):
    return {n.name: FakeNode(n.name) for n in lab.nodes}


def provision(lab, nodes, tmp_path, **kwargs):
    reporter = QuietReporter()
    summary = run_playbooks(lab, nodes, reporter=reporter, state_dir=tmp_path / "state",
                            retry_wait=lambda attempt: 0, **kwargs)
    return summary, reporter


def test_first_run_runs_each_step_on_matching_nodes_and_logs_it(lab, nodes, tmp_path):
    summary, reporter = provision(lab, nodes, tmp_path)
    assert nodes["rancher-host"].steps_run == ["hosts", "ssh-mesh", "firewalld", "docker"]
    assert nodes["kube-master"].steps_run == ["hosts", "ssh-mesh", "kernel", "firewalld", "docker"]
    assert summary.count("done") == 14 and summary.count("skipped") == 0
    log = (tmp_path / "state" / "logs" / "kube-worker" / "docker.log").read_text()
    assert "docker ok" in log and "exit status 0" in log
    assert ("kube-worker", "kernel", "running") in reporter.events


def test_second_run_skips_every_step_without_running_any(lab, nodes, tmp_path):
    provision(lab, nodes, tmp_path)
    for node in nodes.values():
        node.steps_run.clear()
    summary, reporter = provision(lab, nodes, tmp_path)
    assert all(not n.steps_run for n in nodes.values())
    assert summary.count("skipped") == 14 and summary.count("done") == 0
    assert ("kube-master", "docker", "skipped (already done)") in reporter.events


def test_a_changed_step_runs_again_where_it_changed(lab, nodes, tmp_path):
    provision(lab, nodes, tmp_path)
    for node in nodes.values():
        node.steps_run.clear()
    changed = make_lab(packages={"source": "distro"},
                       provisioning={"firewall": {"role_ports": {"worker": ["8080/tcp"]}}})
    provision(changed, nodes, tmp_path)
    assert nodes["kube-worker"].steps_run == ["firewalld"]
    assert nodes["kube-master"].steps_run == [] and nodes["rancher-host"].steps_run == []


def test_a_failing_step_stops_that_node_and_names_node_step_status_and_output(lab, nodes, tmp_path):
    nodes["kube-worker"].scripted["kernel"] = [Result(3, "loading br_netfilter\n", "modprobe: FATAL: Module br_netfilter not found\n")]
    with pytest.raises(StepFailed) as failure:
        provision(lab, nodes, tmp_path)
    error = failure.value
    assert (error.node, error.step, error.exit_status) == ("kube-worker", "kernel", 3)
    assert error.exit_code == 1
    text = str(error)
    assert "kube-worker" in text and "kernel" in text and "exit status 3" in text
    assert "Module br_netfilter not found" in text
    assert nodes["kube-worker"].steps_run == ["hosts", "ssh-mesh", "kernel"]
    assert "kernel" not in nodes["kube-worker"].markers
    assert nodes["kube-master"].steps_run[-1] == "docker"  # the other nodes went on

    # Fixed: the next run resumes at the failed step.
    for node in nodes.values():
        node.steps_run.clear()
    provision(lab, nodes, tmp_path)
    assert nodes["kube-worker"].steps_run == ["kernel", "firewalld", "docker"]


def test_failures_on_several_nodes_are_all_reported(lab, nodes, tmp_path):
    nodes["kube-worker"].scripted["docker"] = [Result(100, "", "E: Unable to locate package docker.io\n")]
    nodes["rancher-host"].scripted["hosts"] = [Result(1, "hostname -f gives localhost\n", "")]
    with pytest.raises(LabctlError) as failure:
        provision(lab, nodes, tmp_path)
    text = str(failure.value)
    assert "2 nodes" in text
    assert "kube-worker: step docker failed (exit status 100)" in text
    assert "rancher-host: step hosts failed (exit status 1)" in text


def test_apt_lock_and_ssh_resets_are_retried(lab, nodes, tmp_path):
    locked = Result(100, "", "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (apt-get)\n")
    nodes["kube-master"].scripted["docker"] = [locked, SSHUnreachable("kube-master: SSH session broke"), Result(0, "", "")]
    summary, reporter = provision(lab, nodes, tmp_path)
    assert nodes["kube-master"].steps_run.count("docker") == 3
    assert ("kube-master", "docker", "retry 3/4") in reporter.events
    assert "docker" in nodes["kube-master"].markers
    log = (tmp_path / "state" / "logs" / "kube-master" / "docker.log").read_text()
    assert "attempt 1: apt/dpkg lock held" in log and "attempt 3" in log


def test_a_lock_that_never_frees_fails_after_the_configured_attempts(nodes, tmp_path):
    lab = make_lab(packages={"source": "distro"}, provisioning={"retries": 2})
    locked = Result(100, "", "E: Could not get lock /var/lib/dpkg/lock-frontend\n")
    nodes["kube-master"].scripted["docker"] = [locked, locked, Result(0, "", "")]
    with pytest.raises(StepFailed, match="exit status 100"):
        provision(lab, nodes, tmp_path)
    assert nodes["kube-master"].steps_run.count("docker") == 2


def test_a_real_failure_is_not_retried(lab, nodes, tmp_path):
    nodes["kube-master"].scripted["kernel"] = [Result(1, "", "sysctl: cannot stat\n"), Result(0, "", "")]
    with pytest.raises(StepFailed):
        provision(lab, nodes, tmp_path)
    assert nodes["kube-master"].steps_run.count("kernel") == 1


def test_only_step_runs_just_that_step(lab, nodes, tmp_path):
    provision(lab, nodes, tmp_path, only_step="kernel")
    assert nodes["kube-master"].steps_run == ["kernel"]
    assert nodes["rancher-host"].steps_run == []
    with pytest.raises(InvalidInput, match="no playbook step 'kernal'"):
        provision(lab, nodes, tmp_path, only_step="kernal")


def test_a_forced_step_that_fails_is_no_longer_recorded_as_done(lab, nodes, tmp_path):
    provision(lab, nodes, tmp_path)
    nodes["kube-worker"].scripted["kernel"] = [Result(126, "", "modprobe: Permission denied\n")]
    with pytest.raises(StepFailed):
        provision(lab, nodes, tmp_path, only_step="kernel", force=True)
    for node in nodes.values():
        node.steps_run.clear()
    provision(lab, nodes, tmp_path)
    assert nodes["kube-worker"].steps_run == ["kernel"] and nodes["kube-master"].steps_run == []


def test_force_runs_done_steps_again(lab, nodes, tmp_path):
    provision(lab, nodes, tmp_path, only_step="hosts")
    provision(lab, nodes, tmp_path, only_step="hosts", force=True)
    assert nodes["kube-worker"].steps_run == ["hosts", "hosts"]


def test_local_source_serves_every_steps_packages_only_while_steps_run(nodes, tmp_path, monkeypatch):
    lab = make_lab(packages={"source": "local"})
    served: list[tuple] = []

    class Serving:
        def __init__(self, lab, packages, *, suite, arch, reporter):
            served.append((tuple(packages), suite, arch))

        def __enter__(self):
            return "http://192.168.150.1:8765/"

        def __exit__(self, *exc):
            served.append("stopped")

    monkeypatch.setattr(packages_module, "local_repository", Serving)
    provision(lab, nodes, tmp_path)
    assert served == [(("apparmor", "docker.io", "firewalld", "kmod", "procps"), "bookworm", "amd64"), "stopped"]
    assert nodes["kube-worker"].steps_run[0] == "apt-source"
    served.clear()
    provision(lab, nodes, tmp_path)
    assert served == []  # nothing to install: no repository built or served


def test_docker_ce_cannot_come_from_the_local_repository(nodes, tmp_path):
    lab = make_lab(packages={"source": "local"}, provisioning={"docker": {"package": "docker-ce"}})
    with pytest.raises(InvalidInput, match="docker-ce"):
        provision(lab, nodes, tmp_path)


def test_node_ports_must_name_lab_nodes(nodes, tmp_path):
    lab = make_lab(packages={"source": "distro"},
                   provisioning={"firewall": {"node_ports": {"kube-wrker": ["9000/tcp"]}}})
    with pytest.raises(InvalidInput, match="kube-wrker"):
        provision(lab, nodes, tmp_path)


def test_provisioning_off_touches_no_node(nodes, tmp_path):
    lab = make_lab(provisioning={"enabled": False})
    summary, reporter = provision(lab, nodes, tmp_path)
    assert summary.outcomes == [] and all(not n.steps_run for n in nodes.values())
