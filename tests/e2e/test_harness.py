"""The harness itself: isolation of the namespace, libvirt inside it, and complete teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e import harness
from tests.e2e.harness import LabNamespace

REPO = Path(__file__).resolve().parents[2]


def nat_network_xml(name: str, bridge: str) -> str:
    return f"""<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}' stp='on' delay='0'/>
  <ip address='192.168.251.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.251.100' end='192.168.251.200'/></dhcp>
  </ip>
</network>"""


def start_network(ns: LabNamespace, name: str, bridge: str) -> None:
    xml = ns.workdir / f"{name}.xml"
    xml.write_text(nat_network_xml(name, bridge))
    ns.virsh("net-define", str(xml), check=True)
    # libvirtd can refuse the first net-start right after it started.
    if ns.virsh("net-start", name).returncode != 0:
        time.sleep(1)
        ns.virsh("net-start", name, check=True)


def dnsmasq_pids(ns: LabNamespace, network: str) -> list[int]:
    pids = []
    for pid in ns.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if harness.process_name(pid) == "dnsmasq" and f"/{network}.conf" in cmdline:
            pids.append(pid)
    return pids


def host_has_link(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def test_namespace_has_only_loopback_and_no_route_out(netns):
    for family in ("-4", "-6"):
        routes = netns.run(["ip", family, "route", "show", "table", "all"], check=True).stdout
        assert not harness.has_default_route(routes), routes
    links = netns.run(["ip", "-o", "link", "show"], check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()][:1] == ["lo"]
    assert not any("veth" in line for line in links.splitlines())


def test_nat_network_and_dnsmasq_live_only_inside_the_namespace(netns):
    name, bridge = "e2e-harness", "virbr-e2eh"
    start_network(netns, name, bridge)
    try:
        assert name in netns.virsh("net-list", "--name").stdout.split()
        assert dnsmasq_pids(netns, name), "no dnsmasq for the network runs in the namespace"
        assert netns.run(["ip", "link", "show", "dev", bridge]).returncode == 0
        assert not host_has_link(bridge), f"bridge {bridge} is visible in the main namespace"
        routes = netns.run(["ip", "route"], check=True).stdout
        assert not harness.has_default_route(routes), routes
    finally:
        netns.virsh("net-destroy", name)
        netns.virsh("net-undefine", name)


def assert_run_is_gone(name: str, workdir: Path, pids: list[int]) -> None:
    assert name not in harness.namespaces()
    assert not workdir.exists()
    assert not [pid for pid in pids if harness.alive(pid)], f"still running: {pids}"


def test_leaving_the_namespace_stops_everything_it_started():
    with LabNamespace() as ns:
        start_network(ns, "e2e-teardown", "virbr-e2et")
        libvirtd = int((ns.workdir / "libvirtd.pid").read_text())
        pids = ns.pids()
        assert libvirtd in pids
        assert dnsmasq_pids(ns, "e2e-teardown")
    assert_run_is_gone(ns.name, ns.workdir, pids)


def test_leftovers_of_a_killed_run_are_removed():
    # A child process sets up a namespace and is killed with SIGKILL, as CI does on a timeout.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tests.e2e.harness import LabNamespace\n"
         "ns = LabNamespace().__enter__()\n"
         "print(ns.name, ns.workdir, flush=True)\n"
         "time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        name, workdir = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    pids = harness.namespace_pids(name)
    assert pids, "the killed run left no daemons: nothing to clean up, the test proves nothing"
    assert name in harness.clean_stale()
    assert_run_is_gone(name, Path(workdir), pids)


def test_labctl_runs_in_the_namespace_against_its_libvirtd(labctl, labctl_home):
    result = labctl("status", "default", "--json", check=True)
    assert {node["state"] for node in json.loads(result.stdout)} == {"absent"}
    assert (labctl_home / "cache").resolve() == harness.persistent_cache().resolve()
    assert labctl_home.stat().st_mode & 0o755 == 0o755
