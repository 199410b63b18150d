"""Image builder: cache key, tree configuration, disk layout, and the cached path of build_debian."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import yaml

from labctl import aptrepo, imagebuild, images, runner
from labctl.errors import InvalidInput

SPEC = imagebuild.RELEASES["12"]
ROOT_UUID = "1a25132a-bd15-d770-5210-9db168c9021f"


def test_build_key_is_stable_and_tracks_every_input():
    key = imagebuild.build_key(SPEC, 2 << 30, "a" * 64)
    assert key == imagebuild.build_key(SPEC, 2 << 30, "a" * 64)
    assert key != imagebuild.build_key(SPEC, 2 << 30, "b" * 64)
    assert key != imagebuild.build_key(SPEC, 3 << 30, "a" * 64)
    fewer = imagebuild.Release(SPEC.suite, SPEC.packages[:-1])
    assert key != imagebuild.build_key(fewer, 2 << 30, "a" * 64)


def test_package_list_has_what_debootstrap_cannot_infer():
    assert "?priority(required)" in SPEC.packages
    for package in ("usr-is-merged", "python3-cffi-backend", "cloud-init", "linux-image-cloud-amd64",
                    "openssh-server", "ifupdown", "isc-dhcp-client", "cloud-guest-utils"):
        assert package in SPEC.packages


@pytest.fixture
def debootstrapped(tmp_path) -> Path:
    """The parts of a fresh debootstrap tree that configuration must change or remove."""
    root = tmp_path / "root"
    for leftover in ("etc/resolv.conf", "etc/apt/sources.list", "etc/ssh/ssh_host_ed25519_key",
                     "etc/ssh/ssh_host_rsa_key.pub", "var/lib/apt/lists/deb_dists_bookworm_Packages",
                     "var/cache/apt/archives/hello_1_amd64.deb", "var/lib/dbus/machine-id"):
        (root / leftover).parent.mkdir(parents=True, exist_ok=True)
        (root / leftover).write_text("from the build host\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/hostname").write_text("buildhost\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "var/lib/apt/lists/lock").write_text("")
    return root


def test_configure_makes_a_clean_lab_guest(debootstrapped, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", lambda argv, **kw: calls.append([os.fspath(a) for a in argv]))
    root = debootstrapped
    imagebuild._configure(root, ROOT_UUID)

    cloud = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90-labctl.cfg").read_text())
    assert cloud["datasource_list"] == ["NoCloud", "None"]
    assert "locale" not in cloud["cloud_config_modules"] and "ntp" not in cloud["cloud_config_modules"]
    assert {"users-groups", "ssh", "growpart", "resizefs", "set_hostname"} <= set(cloud["cloud_init_modules"])
    assert "scripts-user" in cloud["cloud_final_modules"]

    for leftover in ("etc/resolv.conf", "etc/apt/sources.list", "var/lib/dbus/machine-id"):
        assert not (root / leftover).exists(), leftover
    assert list((root / "etc/ssh").iterdir()) == []
    assert list((root / "var/cache/apt/archives").iterdir()) == []
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["lock"]
    assert (root / "etc/machine-id").read_text() == ""
    assert (root / "etc/hostname").read_text() == "localhost\n"

    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-timesyncd.service"):
        assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null"
    assert (root / "etc/fstab").read_text().startswith(f"UUID={ROOT_UUID} / ext4 ")
    extlinux = (root / "boot/extlinux/extlinux.conf").read_text()
    assert f"root=UUID={ROOT_UUID}" in extlinux and "console=ttyS0" in extlinux
    assert "TIMEOUT 0" in extlinux.splitlines()
    assert (root / "etc/initramfs-tools/conf.d/labctl").read_text() == "MODULES=list\n"
    assert "virtio_blk" in (root / "etc/initramfs-tools/modules").read_text().split()
    assert calls == [["chroot", str(root), "update-initramfs", "-u", "-k", "all"]]


def test_make_disk_partitions_and_boots_with_extlinux(tmp_path):
    """Real sfdisk, mkfs.ext4, loop mount and extlinux: needs root and loop devices (fails, never skips)."""
    assert os.geteuid() == 0, "this test needs root for losetup and mount"
    root = tmp_path / "root"
    (root / "boot/extlinux").mkdir(parents=True)
    (root / "boot/extlinux/extlinux.conf").write_text("DEFAULT x\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=debian\n")
    raw = tmp_path / "disk.raw"
    size = 64 << 20
    imagebuild._make_disk(raw, root, ROOT_UUID, size)

    assert raw.stat().st_size == size
    head = raw.read_bytes()[:512]
    mbr = next(p for p in imagebuild._MBR_CANDIDATES if p.is_file()).read_bytes()[:440]
    assert head[:440] == mbr
    assert head[510:512] == b"\x55\xaa"
    status, kind, start, sectors = head[446], head[450], *struct.unpack("<II", head[454:462])
    assert (status, kind, start) == (0x80, 0x83, imagebuild.PARTITION_OFFSET // 512)
    assert start * 512 + sectors * 512 == size
    fs = f"{raw}?offset={imagebuild.PARTITION_OFFSET}"
    listing = runner.output(["debugfs", "-R", "ls -l /boot/extlinux", fs])
    assert "ldlinux.sys" in listing and "extlinux.conf" in listing
    assert "ID=debian" in runner.output(["debugfs", "-R", "cat /etc/os-release", fs])
    assert ROOT_UUID in runner.output(["dumpe2fs", "-h", fs])
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(tmp_path) in line]


def test_build_refuses_unknown_release_and_non_root(monkeypatch):
    with pytest.raises(InvalidInput, match="cannot build Debian 9"):
        imagebuild.build_debian("9")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(InvalidInput, match="needs root"):
        imagebuild.build_debian("12")


@pytest.fixture
def built_before(tmp_path, monkeypatch):
    """A registered built image with its stamp, and build inputs that still match it."""
    repo = tmp_path / "repo"
    packages = repo / "dists/bookworm/main/binary-amd64/Packages"
    packages.parent.mkdir(parents=True)
    packages.write_text("Package: hello\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(aptrepo, "build_repo", lambda pkgs, suite: repo)
    target = images.image_path("debian-12")
    target.parent.mkdir(parents=True)
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", target, "16M"])
    built = images.register(target, "debian-12", source="built", suite="bookworm")
    key = imagebuild.build_key(SPEC, imagebuild.DISK_SIZE, aptrepo.packages_digest(repo, "bookworm"))
    target.with_suffix(".build").write_text(json.dumps({"key": key, "sha256": built.sha256}))
    return built


def test_build_with_unchanged_inputs_returns_the_cached_image(built_before, monkeypatch):
    def no_commands(argv, **kwargs):
        raise AssertionError(f"a cached build ran {argv}")

    monkeypatch.setattr(runner, "run", no_commands)
    assert imagebuild.build_debian("12") == built_before


def test_cached_build_is_registered_again_in_an_index_that_lost_it(built_before):
    images.index_path().unlink()
    record = imagebuild.build_debian("12")
    assert (record.source, record.sha256) == ("built", built_before.sha256)


def test_an_image_imported_over_the_build_is_not_taken_for_it(built_before, tmp_path, monkeypatch):
    other = tmp_path / "other.qcow2"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", other, "32M"])
    images.import_image(other, "debian-12")
    rebuilds = []
    monkeypatch.setattr(imagebuild, "_build", lambda *args: rebuilds.append(args))
    imagebuild.build_debian("12")
    assert len(rebuilds) == 1
