"""Issue 3, host firewalld: a real firewalld whose default zone blocks DHCP, in a namespace of its own.

libvirtd does not see this firewalld, so the lab bridge falls into the default zone (public, no
dhcp service), the state a host is in when firewalld started after libvirtd. labctl must move the
bridge into trusted for the guest to get its address, and `down` must undo exactly that.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from labctl import hostfirewall, names
from labctl.lab import parse_lab
from tests.e2e.harness import HarnessError, Labctl, LabNamespace, PrivateFirewalld

LAB_NAME = "e2e-hostfw"
NODE = "fw-node"
BLOCKING_ZONE = "public"
LAB = {
    "name": LAB_NAME,
    "ssh_user": "labctl",
    "network": {"subnet": "192.168.152.0/24", "domain": "lab.test"},
    "defaults": {"image": "debian-12", "vcpus": 1, "memory": "1GiB", "disk": "4GiB"},
    "nodes": [{"name": NODE, "roles": ["master"]}],
    "provisioning": {"enabled": False},
}
# A second DHCP client on the guest's NIC that asks for a lease once, changes nothing (-sf true)
# and gives up after 15 s; exit 0 means a DHCP server answered through the host's firewall.
DHCP_PROBE = (
    "dev=$(ls /sys/class/net | grep -vx lo | head -n1) && printf 'timeout 15;\\n' >/tmp/probe.conf"
    " && sudo timeout 40 dhclient -1 -v -cf /tmp/probe.conf -sf /bin/true"
    " -lf /tmp/probe.leases -pf /tmp/probe.pid \"$dev\"; status=$?;"
    " sudo dhclient -x -pf /tmp/probe.pid 2>/dev/null; sudo rm -f /tmp/probe.leases; exit $status"
)


@pytest.fixture(scope="module")
def firewalled() -> Iterator[tuple[LabNamespace, PrivateFirewalld]]:
    """A namespace of its own (its firewall must not reach the shared one's labs) with firewalld running."""
    try:
        with LabNamespace(keep_workdir=os.environ.get("LABCTL_E2E_KEEP") == "1") as ns, \
                PrivateFirewalld(ns, default_zone=BLOCKING_ZONE) as firewalld:
            yield ns, firewalld
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_up_trusts_the_bridge_so_dhcp_works_and_down_undoes_it(firewalled, labctl, debian_image):
    ns, firewalld = firewalled
    fw_labctl = Labctl(ns, labctl.script)
    lab_file = fw_labctl.home / f"{LAB_NAME}.yaml"
    lab_file.write_text(yaml.safe_dump(LAB))
    bridge = names.bridge_name(parse_lab(LAB))
    record = fw_labctl.home / "labs" / LAB_NAME / hostfirewall.RECORD
    assert _ok(firewalld.cmd("--get-default-zone")).stdout.strip() == BLOCKING_ZONE
    assert "dhcp" not in _ok(firewalld.cmd(f"--zone={BLOCKING_ZONE}", "--list-services")).stdout.split()

    def labctl_fw(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return fw_labctl(*args, timeout=timeout, env=firewalld.env)

    def zone_of_bridge() -> str:
        # firewall-cmd prints a zone on stdout, "no zone" on stderr.
        proc = firewalld.cmd(f"--get-zone-of-interface={bridge}")
        return (proc.stdout + proc.stderr).strip()

    up = _ok(labctl_fw("up", str(lab_file), timeout=1200))
    assert f"bridge {bridge} moved from zone (none) to trusted" in up.stderr, up.stderr
    assert zone_of_bridge() == "trusted"
    assert json.loads(record.read_text()) == {
        "bridge": bridge, "zone": "trusted", "previous_zone": None, "changed": True}

    again = _ok(labctl_fw("up", str(lab_file)))
    assert "moved from zone" not in again.stderr, again.stderr
    assert json.loads(record.read_text())["previous_zone"] is None

    # The guest's DHCP goes through while trusted and is dropped once the bridge is back in public.
    _ok(labctl_fw("ssh", str(lab_file), NODE, "--", DHCP_PROBE, timeout=120))
    _ok(firewalld.cmd(f"--zone={BLOCKING_ZONE}", f"--change-interface={bridge}"))
    try:
        blocked = labctl_fw("ssh", str(lab_file), NODE, "--", DHCP_PROBE, timeout=120)
    finally:
        _ok(firewalld.cmd("--zone=trusted", f"--change-interface={bridge}"))
    assert blocked.returncode != 0, blocked.stdout + blocked.stderr
    assert "No DHCPOFFERS" in blocked.stdout + blocked.stderr, blocked.stdout + blocked.stderr

    _ok(labctl_fw("down", str(lab_file)))
    assert not record.exists()
    # firewalld keeps runtime bindings of vanished interfaces: only labctl's undo removes it.
    assert bridge not in _ok(firewalld.cmd("--zone=trusted", "--list-interfaces")).stdout.split()
    assert zone_of_bridge() == "no zone"
    assert bridge not in ns.run(["ip", "-o", "link", "show"], check=True).stdout
