"""Where labctl keeps state and caches. LABCTL_HOME relocates all of it."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of labctl's own files: LABCTL_HOME, else the XDG data dir."""
    if env := os.environ.get("LABCTL_HOME"):
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "labctl"


def cache_dir() -> Path:
    """Downloads and builds that can be made again: images, package repositories."""
    if os.environ.get("LABCTL_HOME"):
        return home() / "cache"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "labctl"


def images_dir() -> Path:
    return cache_dir() / "images"


def labs_dir() -> Path:
    return home() / "labs"


def lab_dir(lab_name: str) -> Path:
    """State of one lab: keys, rendered seeds, console logs, state.json, step logs."""
    return labs_dir() / lab_name


def storage_dir() -> Path:
    """Parent of the libvirt storage pools labctl creates (base images and per-lab disks).

    It must be reachable by the QEMU user, so under qemu:///system as root it defaults to
    libvirt's own images directory rather than a 0700 home directory.
    """
    if env := os.environ.get("LABCTL_STORAGE_DIR"):
        return Path(env)
    if os.environ.get("LABCTL_HOME"):
        return home() / "storage"
    if os.geteuid() == 0:
        return Path("/var/lib/libvirt/images/labctl")
    return home() / "storage"
