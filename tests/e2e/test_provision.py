"""Issue: provisioning. `labctl up` hands over three real guests wired, firewalled, with Docker.

Guests have no route out of the test's network namespace, so packages come from the local
repository labctl serves on the lab network (packages.source: local). The repository is built
on the host beforehand (the host's apt reaches the Debian archive); labctl finds it in the cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.labs import ok, on, write_three_node_lab


LAB_NAME = "e2e-prov"
NODES = ("rancher-host", "kube-master", "kube-worker")
STEPS_PER_NODE = {"rancher-host": 5, "kube-master": 6, "kube-worker": 6}


@pytest.fixture(scope="module")
def lab_file(labctl_home: Path) -> Path:
    return write_three_node_lab(labctl_home, LAB_NAME, "192.168.151.0/24", packages={"source": "local"})


@pytest.fixture(scope="module")
def local_repo(lab_file: Path, host_labctl) -> None:
    """The lab's repository, built from the host's apt into the shared cache, outside the namespace."""
    host_labctl("repo-build", str(lab_file))


@pytest.fixture(scope="module")
def provisioned(netns, labctl, lab_file, debian_image, local_repo):
    start = time.monotonic()
    up = ok(labctl("up", str(lab_file), timeout=3000))
    yield {"up": up, "seconds": time.monotonic() - start}
    ok(labctl("down", str(lab_file), timeout=300))


def test_docker_runs_a_locally_imported_image_on_every_node(labctl, lab_file, provisioned):
    # A root filesystem of one binary and its loader, taken from the guest itself: no registry.
    rootfs = ("tar -C / -ch usr/bin/true lib64/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/libc.so.6"
              " | docker import - labctl/tiny:1 >/dev/null && docker run --rm labctl/tiny:1 /usr/bin/true && echo ran")
    for node in NODES:
        ok(on(labctl, lab_file, node, "docker info --format '{{.CgroupDriver}}' | grep -qx systemd"))
        assert ok(on(labctl, lab_file, node, rootfs)).stdout.strip() == "ran", node


def test_firewalld_runs_everywhere(labctl, lab_file, provisioned):
    for node in NODES:
        assert ok(on(labctl, lab_file, node, "sudo firewall-cmd --state")).stdout.strip() == "running"


def test_a_needed_port_is_open_and_an_unneeded_one_blocked(labctl, lab_file, provisioned):
    serve = "sudo setsid -f python3 -m http.server {port} >/dev/null 2>&1 </dev/null; sleep 2"
    for port in (6443, 7777):
        ok(on(labctl, lab_file, "kube-master", serve.format(port=port)))
        # Both listen: a refusal from another node is the firewall's doing.
        ok(on(labctl, lab_file, "kube-master", f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 5)\""))
    connect = "python3 -c \"import socket; socket.create_connection(('kube-master', {port}), 5)\""
    ok(on(labctl, lab_file, "kube-worker", connect.format(port=6443)))
    blocked = on(labctl, lab_file, "kube-worker", connect.format(port=7777))
    assert blocked.returncode != 0
    assert "Connection refused" in blocked.stderr or "timed out" in blocked.stderr or "No route" in blocked.stderr


def test_ssh_mesh_with_strict_host_keys(labctl, lab_file, provisioned):
    for source in ("rancher-host", "kube-master"):
        for target in NODES:
            if target == source:
                continue
            for name in (target, f"{target}.lab.test"):
                hop = on(labctl, lab_file, source, f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes {name} true")
                assert hop.returncode == 0, (source, name, hop.stderr)
    # The worker holds no key to drive others.
    assert on(labctl, lab_file, "kube-worker", "ssh -o BatchMode=yes kube-master true").returncode != 0


def test_hosts_hostname_swap_and_sysctls(labctl, lab_file, provisioned):
    for node in NODES:
        hosts = ok(on(labctl, lab_file, node, "cat /etc/hosts")).stdout
        for other, octet in zip(NODES, (11, 12, 13)):
            assert f"192.168.151.{octet} {other}.lab.test {other}\n" in hosts, (node, hosts)
        assert ok(on(labctl, lab_file, node, "hostname -f")).stdout.strip() == f"{node}.lab.test"
    for node in ("kube-master", "kube-worker"):
        # /proc, not swapon/sysctl: those live in sbin, off the SSH user's PATH.
        swaps = ok(on(labctl, lab_file, node, "tail -n +2 /proc/swaps")).stdout
        assert swaps.strip() == "", swaps
        sysctls = ok(on(labctl, lab_file, node, "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables"))
        assert sysctls.stdout.split() == ["1", "1"]
        fstab = ok(on(labctl, lab_file, node, "cat /etc/fstab")).stdout
        assert all(line.startswith("#") or " swap " not in line for line in fstab.splitlines()), fstab


def test_second_run_skips_every_step_in_seconds(labctl, lab_file, provisioned):
    start = time.monotonic()
    again = ok(labctl("provision", str(lab_file), timeout=300))
    seconds = time.monotonic() - start
    total = sum(STEPS_PER_NODE.values())
    assert f"0 steps run, {total} already done" in again.stdout, again.stdout + again.stderr
    assert seconds < 30, f"a warm re-run took {seconds:.1f}s"
    up_again = ok(labctl("up", str(lab_file), timeout=600))
    assert up_again.stderr.count("skipped (already done)") == total, up_again.stderr


def test_a_failing_step_exits_1_naming_it_and_resumes_after_the_fix(labctl, lab_file, provisioned):
    # Root cannot execute a file without any x bit: the kernel step's modprobe fails.
    ok(on(labctl, lab_file, "kube-worker", "sudo chmod 0 /usr/sbin/modprobe"))
    failed = labctl("provision", str(lab_file), "--step", "kernel", "--force", timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "kube-worker: step kernel failed (exit status 126)" in failed.stderr, failed.stderr
    assert "modprobe" in failed.stderr and "Permission denied" in failed.stderr
    ok(on(labctl, lab_file, "kube-worker", "sudo chmod 0755 /usr/sbin/modprobe"))
    fixed = ok(labctl("provision", str(lab_file), timeout=600))
    total = sum(STEPS_PER_NODE.values())
    assert f"1 steps run, {total - 1} already done" in fixed.stdout, fixed.stdout
