"""Choosing the accelerator: KVM where the CPU and /dev/kvm can really run a guest, else TCG."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import InvalidInput
from labctl.lab import Accel


@dataclass(frozen=True)
class Choice:
    domain_type: str  # libvirt <domain type=...>: "kvm" or "qemu" (TCG)
    reason: str
    warning: str | None = None


def kvm_usable(root: Path = Path("/")) -> tuple[bool, str]:
    """KVM runs a stock guest only with vmx/svm in the CPU flags and a /dev/kvm that is not kvm-pvm."""
    dev = root / "dev/kvm"
    if not dev.exists():
        return False, "/dev/kvm does not exist"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    try:
        cpuinfo = (root / "proc/cpuinfo").read_text()
    except OSError:
        return False, "/proc/cpuinfo is unreadable"
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    if not flags & {"vmx", "svm"}:
        return False, "the CPU shows no vmx or svm flag (no hardware virtualisation here)"
    if (root / "sys/module/kvm_pvm").exists():
        return False, "/dev/kvm is the paravirtual kvm-pvm device, which cannot run a stock guest kernel"
    return True, "vmx/svm present and /dev/kvm usable"


def choose(requested: Accel, *, local: bool = True, root: Path = Path("/")) -> Choice:
    """Pick the domain type. Remote connections cannot be inspected, so auto means KVM there."""
    if requested is Accel.tcg:
        return Choice("qemu", "TCG requested")
    if not local:
        return Choice("kvm", "remote hypervisor: KVM assumed (use --accel tcg where it has none)")
    usable, reason = kvm_usable(root)
    if requested is Accel.kvm:
        if not usable:
            raise InvalidInput(
                f"KVM was requested but cannot be used: {reason}",
                resolution="use --accel tcg (slow software emulation) or run on a host with hardware virtualisation",
            )
        return Choice("kvm", reason)
    if usable:
        return Choice("kvm", reason)
    return Choice(
        "qemu", reason,
        warning=f"KVM unusable ({reason}); guests run under TCG software emulation, several times slower",
    )
