"""The provisioning commands: exit statuses and what they print."""

from __future__ import annotations

import subprocess

from click.testing import CliRunner

from labctl import api
from labctl.cli import cli
from labctl.transport import Result
from tests.unit.test_provision_runner import FakeNode


def lab_file(tmp_path, source="distro"):
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\nnetwork: {subnet: 192.168.150.0/24}\n"
        "nodes:\n  - {name: kube-master, roles: [master]}\n  - {name: kube-worker, roles: [worker]}\n"
        f"packages: {{source: {source}}}\n"
    )
    return path


def fake_nodes(monkeypatch):
    nodes = {"kube-master": FakeNode("kube-master"), "kube-worker": FakeNode("kube-worker")}
    monkeypatch.setattr(api, "executors", lambda lab, keys=None: nodes)
    return nodes


def test_failing_step_exits_1_with_node_step_and_output(tmp_path, monkeypatch):
    nodes = fake_nodes(monkeypatch)
    nodes["kube-worker"].scripted["kernel"] = [Result(3, "", "sysctl: cannot stat /proc/sys/net/bridge\n")]
    result = CliRunner().invoke(cli, ["provision", str(lab_file(tmp_path))])
    assert result.exit_code == 1
    assert "kube-worker: step kernel failed (exit status 3)" in result.output
    assert "sysctl: cannot stat /proc/sys/net/bridge" in result.output
    assert "provisioned" not in result.output


def test_rerun_reports_every_step_already_done(tmp_path, monkeypatch):
    fake_nodes(monkeypatch)
    path = str(lab_file(tmp_path))
    first = CliRunner().invoke(cli, ["provision", path])
    assert first.exit_code == 0, first.output
    assert "10 steps run, 0 already done" in first.output
    second = CliRunner().invoke(cli, ["provision", path])
    assert "0 steps run, 10 already done" in second.output


def test_unknown_step_is_bad_input(tmp_path, monkeypatch):
    fake_nodes(monkeypatch)
    result = CliRunner().invoke(cli, ["provision", str(lab_file(tmp_path)), "--step", "nope"])
    assert result.exit_code == 2
    assert "no playbook step 'nope'" in result.output and "kernel" in result.output


def test_provision_script_is_bash_with_every_step_guarded(tmp_path):
    result = CliRunner().invoke(cli, ["provision-script", str(lab_file(tmp_path, "local")), "kube-worker",
                                      "--package-source", "distro"])
    assert result.exit_code == 0, result.output
    script = result.output
    assert subprocess.run(["bash", "-n"], input=script.encode()).returncode == 0
    for step in ("hosts", "ssh-mesh", "kernel", "firewalld", "docker"):
        assert f"step {step}: running" in script
    assert "apt-source" not in script  # distro: sources left alone


def test_inventory_and_ssh_config_commands(tmp_path):
    path = str(lab_file(tmp_path))
    ini = CliRunner().invoke(cli, ["inventory", path])
    assert "[kube_control_plane]\nkube-master\n" in ini.output
    as_json = CliRunner().invoke(cli, ["inventory", path, "--format", "json"])
    assert '"kube_node"' in as_json.output
    config = CliRunner().invoke(cli, ["ssh-config", path])
    assert "Host kube-worker kube-worker.lab.test\n    HostName 192.168.150." in config.output
