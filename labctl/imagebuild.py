"""Build a cloud-init-enabled Debian qcow2 from Debian packages alone, as root, without systemd on the host.

Steps: the package closure comes from a local repository (aptrepo.build_repo, the host's apt is
the only thing that talks to the archive); debootstrap installs from it through file://;
the tree is configured for labctl's guests (NoCloud only, no apt sources, no timers that reach
out, serial console, no host keys or machine-id); mkfs.ext4 -d writes the tree into partition 1
of a raw disk; extlinux boots it; qemu-img converts it into a compressed qcow2.

A build is cached by a hash of its inputs (this recipe, its data files, the package list and
the repository's Packages index), so building again with the same inputs returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import string
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from labctl import aptrepo, images, paths, runner
from labctl.errors import CommandFailed, InvalidInput

_DATA = Path(__file__).resolve().parent / "data" / "image"
_MBR_CANDIDATES = (Path("/usr/lib/EXTLINUX/mbr.bin"), Path("/usr/lib/syslinux/mbr/mbr.bin"))
PARTITION_OFFSET = 1 << 20


@dataclass(frozen=True)
class Release:
    suite: str
    packages: tuple[str, ...]


_BASE_PACKAGES = (
    # debootstrap installs Priority: required from the repository, so the repository must hold them
    "?priority(required)", "apt", "usr-is-merged",
    "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools", "zstd",
    "cloud-init", "cloud-guest-utils", "fdisk", "e2fsprogs", "openssh-server", "qemu-guest-agent", "sudo",
    # cloud-init renders network-config v2 as /etc/network/interfaces (its ENI renderer) for ifupdown
    "ifupdown", "isc-dhcp-client", "iproute2", "netbase", "procps",
    # as in Debian's own cloud images: the online install paths fetch with curl (get.rke2.io, helm, rke)
    "curl", "ca-certificates",
    # debootstrap does not resolve virtual packages: this provides python3-cryptography's python3-cffi-backend-api-*
    "python3-cffi-backend",
)

RELEASES = {"12": Release("bookworm", _BASE_PACKAGES)}

# Units that would reach the network on their own or only slow the boot of a lab guest.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "systemd-timesyncd.service", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
)

# ext4 and crc32c are built into Debian's cloud kernel; the disk drivers are modules
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod")

DISK_SIZE = 2 << 30


def build_debian(release: str = "12", *, name: str = "debian-12", disk_size: int = DISK_SIZE,
                 log: Callable[[str], None] | None = None) -> images.ImageRecord:
    """Build (or return the cached) Debian image and register it as a built image called name."""
    if release not in RELEASES:
        raise InvalidInput(f"cannot build Debian {release}", resolution=f"use one of: {', '.join(RELEASES)}")
    if os.geteuid() != 0:
        raise InvalidInput("building an image needs root (debootstrap, chroot, loop devices)",
                           resolution="run `labctl image build` as root")
    say = log or (lambda message: None)
    spec = RELEASES[release]
    started = time.monotonic()
    say(f"package repository for {spec.suite}")
    repo = aptrepo.build_repo(spec.packages, suite=spec.suite)
    key = build_key(spec, disk_size, aptrepo.packages_digest(repo, spec.suite))
    target = images.image_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_suffix(".lock")):
        cached = _cached(target, name, key, spec.suite)
        if cached is not None:
            return cached
        _build(spec, repo, key, target, disk_size, say)
        record = images.register(target, name, source="built", suite=spec.suite)
        _stamp(target).write_text(json.dumps({"key": key, "sha256": record.sha256}) + "\n")
    say(f"built {name} in {time.monotonic() - started:.0f}s: {record.size / 2**20:.0f} MiB")
    return record


def _stamp(target: Path) -> Path:
    """Next to a built image: the build key it was made from and the file's sha256."""
    return target.with_suffix(".build")


def _cached(target: Path, name: str, key: str, suite: str) -> images.ImageRecord | None:
    """The image built before from the same inputs, if the file is still that build's output."""
    try:
        stamp = json.loads(_stamp(target).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key or not target.is_file():
        return None
    registered = next((r for r in images.list_images() if r.name == name), None)
    if registered is not None and registered.source == "built" and registered.sha256 == stamp.get("sha256"):
        return registered
    # an index that does not know the file (a cache shared by several homes) or an image imported over it
    record = images.register(target, name, source="built", suite=suite)
    if record.sha256 == stamp.get("sha256"):
        return record
    return None


def _build(spec: Release, repo: Path, key: str, target: Path, disk_size: int, say: Callable[[str], None]) -> None:
    work_root = paths.cache_dir() / "build"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.stem}.", dir=work_root))
    try:
        root = work / "root"
        say("debootstrap")
        _debootstrap(root, spec, repo)
        root_uuid = str(uuid.UUID(key[:32]))  # stable across identical builds
        say("configure")
        _configure(root, root_uuid)
        say("disk")
        raw = work / "disk.raw"
        _make_disk(raw, root, root_uuid, disk_size)
        shutil.rmtree(root)
        say("qcow2")
        part = target.with_name(target.name + ".part")
        runner.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, part])
        part.replace(target)
    finally:
        _remove_tree(work)


def build_key(spec: Release, disk_size: int, packages_digest: str) -> str:
    recipe = hashlib.sha256(Path(__file__).read_bytes())
    for data in sorted(_DATA.iterdir()):
        recipe.update(data.name.encode() + b"\0" + data.read_bytes())
    material = {"suite": spec.suite, "packages": sorted(spec.packages), "disk_size": disk_size,
                "packages_digest": packages_digest, "recipe": recipe.hexdigest()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _debootstrap(root: Path, spec: Release, repo: Path) -> None:
    includes = [p for p in spec.packages if not p.startswith("?")]
    try:
        runner.run(["debootstrap", "--variant=minbase", "--no-check-gpg", "--merged-usr", "--components=main",
                    f"--include={','.join(includes)}", spec.suite, root, f"file://{repo}"], capture=True)
    except CommandFailed as exc:
        # debootstrap's log names the failing package; the tree holding it is deleted next
        log = root / "debootstrap" / "debootstrap.log"
        if log.is_file():
            exc.details = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise


def _configure(root: Path, root_uuid: str) -> None:
    """Turn the debootstrapped tree into a labctl guest image."""
    _write(root / "etc/cloud/cloud.cfg.d/90-labctl.cfg", (_DATA / "90-labctl.cfg").read_text())
    _write(root / "etc/fstab", f"UUID={root_uuid} / ext4 rw,discard,errors=remount-ro 0 1\n")
    _write(root / "etc/hostname", "localhost\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/default/locale", "LANG=C.UTF-8\n")
    # cloud-init renders the lab's network-config into interfaces.d; lo stays here
    _write(root / "etc/network/interfaces",
           "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n")
    extlinux = string.Template((_DATA / "extlinux.conf").read_text()).substitute(root_uuid=root_uuid)
    _write(root / "boot/extlinux/extlinux.conf", extlinux)
    # only the drivers a libvirt/QEMU root disk needs: a smaller initrd loads and unpacks faster under TCG
    _write(root / "etc/initramfs-tools/conf.d/labctl", "MODULES=list\n")
    _write(root / "etc/initramfs-tools/modules", "".join(f"{module}\n" for module in INITRD_MODULES))
    runner.run(["chroot", root, "update-initramfs", "-u", "-k", "all"], capture=True)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # copied from the build host or left by debootstrap: nothing of the host may leak into guests
    for leftover in ("etc/resolv.conf", "etc/apt/sources.list", "etc/ssh/ssh_host_*", "var/lib/apt/lists/*_*",
                     "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/*.log", "var/log/apt/*",
                     "var/lib/dbus/machine-id"):
        for path in root.glob(leftover):
            path.unlink()
    # empty, not absent: systemd then generates a fresh one at first boot
    _write(root / "etc/machine-id", "")


def _make_disk(raw: Path, root: Path, root_uuid: str, disk_size: int) -> None:
    """A raw disk: MBR with extlinux's boot code, one bootable ext4 partition filled from root."""
    with open(raw, "wb") as disk:
        disk.truncate(disk_size)
    label_id = "0x" + root_uuid[:8]
    layout = f"label: dos\nlabel-id: {label_id}\nstart={PARTITION_OFFSET // 512}, type=83, bootable\n"
    runner.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw], input=layout.encode())
    fs_kib = (disk_size - PARTITION_OFFSET) // 1024
    # extlinux cannot boot ext4 with 64bit block numbers
    runner.run(["mkfs.ext4", "-F", "-q", "-L", "root", "-U", root_uuid, "-O", "^64bit",
                "-E", f"offset={PARTITION_OFFSET}", "-d", root, raw, f"{fs_kib}k"])
    with _mounted_partition(raw, disk_size - PARTITION_OFFSET) as mountpoint:
        runner.run(["extlinux", "--install", mountpoint / "boot/extlinux"], capture=True)
    mbr = next((p for p in _MBR_CANDIDATES if p.is_file()), None)
    if mbr is None:
        raise CommandFailed("extlinux's mbr.bin is missing on the host", resolution="apt-get install extlinux syslinux-common")
    with open(raw, "r+b") as disk:
        disk.write(mbr.read_bytes()[:440])


@contextlib.contextmanager
def _mounted_partition(raw: Path, size: int) -> Iterator[Path]:
    device = runner.output(["losetup", "--find", "--show", "--offset", str(PARTITION_OFFSET),
                            "--sizelimit", str(size), raw]).strip()
    mountpoint = Path(tempfile.mkdtemp(prefix="labctl-root.", dir=raw.parent))
    try:
        runner.run(["mount", device, mountpoint])
        try:
            yield mountpoint
        finally:
            runner.run(["umount", mountpoint])
    finally:
        runner.run(["losetup", "-d", device])
        mountpoint.rmdir()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One build of an image at a time; a second labctl waits, then finds it cached."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text)


def _remove_tree(work: Path) -> None:
    """Delete a build directory, refusing while anything is still mounted below it."""
    prefix = os.fspath(work.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(prefix)]
    if mounts:
        raise CommandFailed(f"build directory {work} still has mounts: {', '.join(mounts)}",
                           resolution=f"umount them, then delete {work}")
    shutil.rmtree(work, ignore_errors=True)
