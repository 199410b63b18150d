"""Readiness waits: phases in order, a dead VM fails at once, a timeout names node, phase and console."""

from dataclasses import dataclass

import pytest

from labctl.errors import LabctlError, WaitTimeout
from labctl.progress import QuietReporter
from labctl.ready import NodeWait
from labctl.transport import Result, SSHUnreachable


@dataclass
class Info:
    state: str


class FakeHypervisor:
    def __init__(self, states, lease_after=0):
        self.states = list(states)
        self.lease_after = lease_after
        self.lease_polls = 0

    def domain_info(self, dom):
        return Info(self.states.pop(0) if len(self.states) > 1 else self.states[0])

    def dhcp_ip(self, net, mac):
        self.lease_polls += 1
        return "192.168.150.11" if self.lease_polls > self.lease_after else None


class FakeSSH:
    host = "192.168.150.11"

    def __init__(self, *, refuse=0, cloud_init="status: done\n"):
        self.refuse = refuse
        self.cloud_init = cloud_init
        self.commands = []

    def probe(self):
        if self.refuse:
            self.refuse -= 1
            raise SSHUnreachable("connection refused")

    def run(self, command, check=True, timeout=None):
        self.commands.append(command)
        if command == "cloud-init status --wait":
            return Result(0 if "done" in self.cloud_init else 1, self.cloud_init, "")
        return Result(0, "status: error\nerrors: boom\n", "")


def wait(hv, ssh, tmp_path, timeout=30):
    log = tmp_path / "console.log"
    log.write_text("SeaBIOS\nLinux version 6.1\nlogin:\n")
    return NodeWait(hv, None, None, "kube-master", "52:54:00:00:00:01", ssh, log, QuietReporter(), timeout)


def test_phases_run_in_order_until_ready(tmp_path):
    node = wait(FakeHypervisor(["running"], lease_after=1), FakeSSH(refuse=1), tmp_path)
    node.run()
    phases = [phase for _, phase, _ in node.reporter.events]
    assert phases == ["dhcp", "ssh", "cloud-init", "ready"]


def test_a_paused_vm_fails_at_once_with_its_console(tmp_path):
    node = wait(FakeHypervisor(["paused"]), FakeSSH(), tmp_path)
    with pytest.raises(LabctlError) as info:
        node.run()
    assert "kube-master: the VM is paused during the dhcp phase" in info.value.brief
    assert "login:" in info.value.details


def test_a_panicked_kernel_fails_at_once_though_libvirt_says_running(tmp_path):
    node = wait(FakeHypervisor(["running"], lease_after=10**6), FakeSSH(), tmp_path, timeout=600)
    node.console_log.write_text("x" * 20000 + "\n[ 0.000000] ---[ end Kernel panic - not syncing: IO-APIC + timer doesn't work! ]---\n")
    with pytest.raises(LabctlError) as info:
        node.run()
    assert "kube-master: the kernel panicked during the dhcp phase" in info.value.brief
    assert "IO-APIC" in info.value.details


def test_timeout_names_node_phase_and_console(tmp_path):
    node = wait(FakeHypervisor(["running"], lease_after=10**6), FakeSSH(), tmp_path, timeout=2)
    with pytest.raises(WaitTimeout) as info:
        node.run()
    assert "kube-master" in info.value.brief and "dhcp phase" in info.value.brief
    assert "Linux version 6.1" in info.value.details and "timeouts.ready" in info.value.resolution


def test_cloud_init_error_is_reported_not_ready(tmp_path):
    node = wait(FakeHypervisor(["running"]), FakeSSH(cloud_init="status: error\n"), tmp_path)
    with pytest.raises(LabctlError) as info:
        node.run()
    assert "cloud-init did not finish cleanly" in info.value.brief
    assert "errors: boom" in info.value.details
    assert ("kube-master", "ready", "192.168.150.11") not in node.reporter.events
