"""SSH keys of a lab, made on the host before any node boots.

One ed25519 key pair for the lab's user, and one ed25519 host key per node. Handing each node
its host key through cloud-init lets every SSH connection be verified from the very first one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from labctl.lab import Lab


@dataclass(frozen=True)
class HostKey:
    private_openssh: str
    public_openssh: str


@dataclass(frozen=True)
class LabKeys:
    private_key_path: Path
    public_key: str
    known_hosts_path: Path
    host_keys: dict[str, HostKey]


def _new_key(comment: str) -> HostKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return HostKey(private, f"{public} {comment}")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def ensure_keys(lab: Lab, ssh_dir: Path) -> LabKeys:
    """Load the lab's keys from ssh_dir, generating whatever is missing; idempotent."""
    user_key = ssh_dir / "id_ed25519"
    if not user_key.exists():
        pair = _new_key(f"labctl-{lab.name}")
        _write_private(user_key, pair.private_openssh)
        (ssh_dir / "id_ed25519.pub").write_text(pair.public_openssh + "\n")
    host_keys = {}
    for node in lab.nodes:
        private = ssh_dir / "host_keys" / f"{node.name}_ed25519"
        public = private.with_suffix(".pub")
        if not private.exists():
            pair = _new_key(f"root@{node.name}")
            _write_private(private, pair.private_openssh)
            public.write_text(pair.public_openssh + "\n")
        host_keys[node.name] = HostKey(private.read_text(), public.read_text().strip())
    known_hosts = ssh_dir / "known_hosts"
    known_hosts.write_text("".join(
        f"{node.name},{lab.fqdn(node)},{node.ip} {' '.join(host_keys[node.name].public_openssh.split()[:2])}\n"
        for node in lab.nodes
    ))
    return LabKeys(
        private_key_path=user_key,
        public_key=(ssh_dir / "id_ed25519.pub").read_text().strip(),
        known_hosts_path=known_hosts,
        host_keys=host_keys,
    )
