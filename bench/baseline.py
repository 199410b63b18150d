"""Bare libvirt baseline: boot N guests from one qcow2 image by hand and time them to "ready".

No labctl code: qcow2 overlays, NoCloud seeds (pycdlib), a NAT network with static DHCP
reservations and the domains are made here directly. "Ready" is labctl's definition, so the two
are comparable: SSH logs in and `cloud-init status --wait` succeeds. Prints one JSON object on
stdout, progress on stderr, and removes everything it created, also on failure.

Run it where guests may be reached: inside the test harness's network namespace.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import paramiko
import pycdlib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PREFIX = "labctl-baseline"
BRIDGE = "virbr-lbase"
USER = "bench"


def log(message: str) -> None:
    print(f"[baseline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kvm_usable() -> bool:
    """KVM only with vmx/svm flags and a /dev/kvm that is not the paravirtual kvm-pvm device."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    flags = Path("/proc/cpuinfo").read_text().split()
    return "vmx" in flags or "svm" in flags


def new_key() -> tuple[paramiko.Ed25519Key, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private)), public


class Node:
    def __init__(self, index: int, network: ipaddress.IPv4Network, workdir: Path):
        self.name = f"{PREFIX}-{index}"
        self.mac = f"52:54:00:bb:00:{index:02x}"
        self.ip = str(network.network_address + 10 + index)
        self.overlay = workdir / f"{self.name}.qcow2"
        self.seed = workdir / f"{self.name}-seed.iso"
        self.console = workdir / f"{self.name}-console.log"
        self.banner_at: float | None = None
        self.ready_at: float | None = None


def write_seed(node: Node, public_key: str) -> None:
    user_data = f"""#cloud-config
hostname: {node.name}
users:
  - name: {USER}
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys: ["{public_key}"]
ssh_pwauth: false
"""
    network_config = f"""version: 2
ethernets:
  nic0:
    match: {{macaddress: "{node.mac}"}}
    dhcp4: true
"""
    meta_data = f"instance-id: {node.name}-{int(time.time())}\nlocal-hostname: {node.name}\n"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    files = {"user-data": user_data, "meta-data": meta_data, "network-config": network_config}
    for index, (name, text) in enumerate(files.items()):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index};1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(node.seed))
    iso.close()


def network_xml(nodes: list[Node], network: ipaddress.IPv4Network) -> str:
    gateway = network.network_address + 1
    hosts = "\n".join(f"<host mac='{n.mac}' name='{n.name}' ip='{n.ip}'/>" for n in nodes)
    return f"""<network>
  <name>{PREFIX}</name>
  <forward mode='nat'/>
  <bridge name='{BRIDGE}' stp='on' delay='0'/>
  <ip address='{gateway}' netmask='{network.netmask}'>
    <dhcp>
      <range start='{network.network_address + 200}' end='{network.network_address + 250}'/>
      {hosts}
    </dhcp>
  </ip>
</network>"""


def domain_xml(node: Node, *, domain_type: str, memory_mib: int, vcpus: int) -> str:
    cpu = "<cpu mode='host-passthrough' check='none'/>" if domain_type == "kvm" else ""
    return f"""<domain type='{domain_type}'>
  <name>{node.name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {cpu}
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{node.overlay}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{node.seed}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='{PREFIX}'/>
      <mac address='{node.mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><log file='{node.console}' append='off'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""


def ssh_banner(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=3) as sock:
            sock.settimeout(5)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def cloud_init_done(ip: str, key: paramiko.Ed25519Key) -> bool:
    client = paramiko.SSHClient()
    # A measuring tool on throwaway guests: their host keys are not worth pinning.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(ip, username=USER, pkey=key, timeout=10, banner_timeout=10, auth_timeout=10,
                       allow_agent=False, look_for_keys=False)
        _, stdout, _ = client.exec_command("cloud-init status --wait", timeout=600)
        return stdout.channel.recv_exit_status() == 0
    except (OSError, paramiko.SSHException):
        return False
    finally:
        client.close()


def wait_ready(node: Node, domain: libvirt.virDomain, key: paramiko.Ed25519Key, start: float,
               deadline: float) -> None:
    while time.monotonic() < deadline:
        state, _ = domain.state()
        if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            raise RuntimeError(f"{node.name} is no longer running (libvirt state {state})\n{console_tail(node)}")
        if node.banner_at is None:
            if ssh_banner(node.ip):
                node.banner_at = time.monotonic() - start
                log(f"{node.name}: SSH banner at {node.banner_at:.1f} s")
        elif cloud_init_done(node.ip, key):
            node.ready_at = time.monotonic() - start
            log(f"{node.name}: ready at {node.ready_at:.1f} s")
            return
        time.sleep(1)
    raise TimeoutError(f"{node.name} not ready before the deadline\n{console_tail(node)}")


def console_tail(node: Node, lines: int = 30) -> str:
    try:
        text = node.console.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no console output)"
    return f"last console lines of {node.name}:\n" + "\n".join(text)


def allocated_bytes(path: Path) -> int:
    info = json.loads(subprocess.run(["qemu-img", "info", "--force-share", "--output=json", str(path)],
                                     check=True, capture_output=True, text=True).stdout)
    return info["actual-size"]


def cleanup(conn: libvirt.virConnect, nodes: list[Node]) -> None:
    for node in nodes:
        try:
            domain = conn.lookupByName(node.name)
        except libvirt.libvirtError:
            continue
        if domain.isActive():
            domain.destroy()
        domain.undefine()
    try:
        network = conn.networkLookupByName(PREFIX)
    except libvirt.libvirtError:
        return
    if network.isActive():
        network.destroy()
    network.undefine()


def run(args: argparse.Namespace, workdir: Path) -> dict:
    network = ipaddress.IPv4Network(args.subnet)
    nodes = [Node(i, network, workdir) for i in range(1, args.nodes + 1)]
    domain_type = "kvm" if kvm_usable() else "qemu"
    key, public_key = new_key()
    conn = libvirt.open(args.connect)
    try:
        start = time.monotonic()
        for node in nodes:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                            "-b", str(args.image.resolve()), str(node.overlay), str(args.disk_bytes)], check=True)
            write_seed(node, public_key)
        net = conn.networkDefineXML(network_xml(nodes, network))
        try:
            net.create()
        except libvirt.libvirtError:
            time.sleep(1)  # a freshly started libvirtd can refuse the first start
            net.create()
        domains = []
        for node in nodes:
            domain = conn.defineXML(domain_xml(node, domain_type=domain_type, memory_mib=args.memory_mib,
                                               vcpus=args.vcpus))
            domain.create()
            domains.append(domain)
        log(f"{len(nodes)} {domain_type} guests started after {time.monotonic() - start:.1f} s")
        deadline = start + args.timeout
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for future in [pool.submit(wait_ready, n, d, key, start, deadline) for n, d in zip(nodes, domains)]:
                future.result()
        boot_seconds = time.monotonic() - start
        disk = {node.name: allocated_bytes(node.overlay) for node in nodes}
        teardown_start = time.monotonic()
        cleanup(conn, nodes)
        teardown_seconds = time.monotonic() - teardown_start
    finally:
        cleanup(conn, nodes)
        conn.close()
    return {
        "nodes": args.nodes,
        "domain_type": domain_type,
        "memory_mib": args.memory_mib,
        "vcpus": args.vcpus,
        "boot_seconds": round(boot_seconds, 1),
        "teardown_seconds": round(teardown_seconds, 1),
        "per_node": {n.name: {"ssh_banner_seconds": round(n.banner_at, 1), "ready_seconds": round(n.ready_at, 1)}
                     for n in nodes},
        "overlay_bytes": disk,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="bootable qcow2 with cloud-init (NoCloud); used read-only")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--disk-bytes", type=int, default=8 * 2**30, help="virtual size of each overlay")
    parser.add_argument("--subnet", default="192.168.160.0/24", help="the baseline's NAT network")
    parser.add_argument("--timeout", type=float, default=900, help="seconds until every node must be ready")
    parser.add_argument("--connect", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    args = parser.parse_args()
    if not args.image.is_file():
        parser.error(f"image {args.image} does not exist")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # The QEMU user must reach the overlays: not a 0700 temporary directory.
    workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/var/tmp"))
    workdir.chmod(0o755)
    try:
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
