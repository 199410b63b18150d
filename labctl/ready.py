"""Waiting for a node: boot, DHCP, SSH, cloud-init; each phase bounded and reported by name.

"Ready" means SSH works with the lab's key and host key, and cloud-init reports done: SSH
can answer before cloud-init has finished and restarted sshd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from labctl.errors import HypervisorError, LabctlError, WaitTimeout
from labctl.hypervisor import Hypervisor
from labctl.progress import Reporter
from labctl.transport import SSHExecutor, SSHUnreachable

_DEAD_STATES = {"paused", "crashed", "shut-off"}
PANIC = b"Kernel panic - not syncing"


class _NotYet(Exception):
    pass


@dataclass
class NodeWait:
    hv: Hypervisor
    network: libvirt.virNetwork
    domain: libvirt.virDomain
    node_name: str
    mac: str
    executor: SSHExecutor
    console_log: Path
    reporter: Reporter
    timeout: float

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._phase(deadline, "dhcp", self._lease, "waiting for a DHCP lease")
        self._phase(deadline, "ssh", self._ssh, f"waiting for SSH on {self.executor.host}")
        self._cloud_init(deadline)
        self.reporter.phase(self.node_name, "ready", self.executor.host)

    def _phase(self, deadline: float, phase: str, check, detail: str) -> None:
        self.reporter.phase(self.node_name, phase, detail)
        retrying = Retrying(
            retry=retry_if_exception_type((_NotYet, SSHUnreachable)),
            stop=stop_after_delay(max(deadline - time.monotonic(), 0)),
            wait=wait_fixed(1),
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._check_alive(phase)
                    check()
        except RetryError as exc:
            raise self._timeout(phase, str(exc.last_attempt.exception())) from None

    def _check_alive(self, phase: str) -> None:
        state = self.hv.domain_info(self.domain).state
        if state in _DEAD_STATES or self._panicked():
            what = "kernel panicked" if state not in _DEAD_STATES else f"VM is {state}"
            raise LabctlError(
                f"{self.node_name}: the {what} during the {phase} phase",
                details=self._console_tail(),
                resolution="read the console log above; `labctl down` then `labctl up` retries from scratch",
            )

    def _panicked(self) -> bool:
        """A panicked guest kernel stays 'running' to libvirt; its console says so."""
        try:
            with self.console_log.open("rb") as log:
                log.seek(max(log.seek(0, 2) - 8192, 0))
                return PANIC in log.read()
        except OSError:
            return False

    def _lease(self) -> None:
        if self.hv.dhcp_ip(self.network, self.mac) is None:
            raise _NotYet("no DHCP lease yet")

    def _ssh(self) -> None:
        self.executor.probe()

    def _cloud_init(self, deadline: float) -> None:
        self.reporter.phase(self.node_name, "cloud-init", "waiting for cloud-init to finish")
        remaining = max(deadline - time.monotonic(), 1)
        try:
            result = self.executor.run("cloud-init status --wait", check=False, timeout=remaining)
        except (SSHUnreachable, OSError) as exc:
            # sshd restarts when cloud-init installs host keys; reconnect and ask again.
            if time.monotonic() >= deadline:
                raise self._timeout("cloud-init", str(exc)) from None
            return self._cloud_init(deadline)
        if "status: done" in result.stdout:
            return
        long = self.executor.run("cloud-init status --long", check=False, timeout=30)
        raise LabctlError(
            f"{self.node_name}: cloud-init did not finish cleanly (exit {result.exit_status})",
            details=long.tail(30),
            resolution=f"look at /var/log/cloud-init.log on the node (`labctl ssh LAB {self.node_name}`)",
        )

    def _timeout(self, phase: str, last: str) -> WaitTimeout:
        details = [f"last attempt: {last}", "console log (tail):", self._console_tail()]
        if phase == "cloud-init":
            details += ["cloud-init status --long:", self._cloud_init_status()]
        return WaitTimeout(
            f"{self.node_name}: not ready within {self.timeout:.0f} s; stuck in the {phase} phase",
            details="\n".join(details),
            resolution="raise timeouts.ready in the lab file if the host is slow (TCG), "
            "or read the console log for the cause",
        )

    def _cloud_init_status(self) -> str:
        try:
            return self.executor.run("cloud-init status --long", check=False, timeout=20).tail(20)
        except (SSHUnreachable, OSError) as exc:
            return f"(unreachable: {exc})"

    def _console_tail(self, lines: int = 25) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError as exc:
            return f"(console log {self.console_log} unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(console log is empty)"


def probe_quick(executor: SSHExecutor) -> bool:
    """True when the node's sshd lets the lab in right now; used to make a second `up` cheap.

    Authentication alone answers that; running a command would cost another round trip.
    """
    try:
        executor.connect()
        return True
    except (SSHUnreachable, HypervisorError):
        return False
