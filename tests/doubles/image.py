"""Container images of the doubles, in `docker save` format: the Rancher double's for Rancher's
single-container install (rancher.mode docker), the etcd image's etcdutl for kubeadm's snapshot restore.

The root filesystem is Debian's python3 with the modules the doubles need, downloaded with the
host's apt (labctl.aptrepo) and unpacked with `dpkg-deb -x`, so no maintainer script runs; each
double is the zipapp build.py makes. The archive (manifest.json, the image config, one layer tar)
is what `docker load` and `ctr images import` take. Archives are cached by content: the package
index of the closure, the doubles' sources, the image's definition.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labctl import aptrepo, runner

from . import build, kubeadm, rancher

DATA_DIR = str(rancher.CONTAINER_DATA)
# Documentation and translations: nothing in the container reads them.
UNUSED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian")
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The image of the etcd static pod the kubeadm double writes (labctl renders imageRepository registry.k8s.io).
ETCD_IMAGE = f"registry.k8s.io/etcd:{kubeadm.ETCD_TAG}"
# labctl's restore bind-mounts the node's /var/lib into the container: the log lands on the node there.
ETCD_IMAGE_LOG = "/var/lib/labctl-doubles/log"


@dataclass(frozen=True)
class Image:
    """tag: the image reference; doubles: path in the image -> (double, its behaviour)."""

    tag: str
    packages: tuple[str, ...]
    doubles: dict[str, tuple[str, dict]]
    config: dict
    directories: tuple[str, ...] = ()


def rancher_config(version: str) -> dict:
    """The container config rancher/rancher's image declares that labctl's `docker run` relies on."""
    return {
        "Entrypoint": ["/usr/bin/rancher", "--http-listen-port=80", "--https-listen-port=443"],
        "Env": [PATH,
                # The double's call log lands in the volume, where tests on the node can read it.
                f"LABCTL_DOUBLES_LOG={DATA_DIR}/labctl-doubles-log"],
        "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
        "Volumes": {DATA_DIR: {}},
        "WorkingDir": DATA_DIR,
        "Labels": {"org.opencontainers.image.title": f"Rancher double {version} (labctl tests)"},
    }


def rancher_image(version: str) -> Image:
    return Image(f"rancher/rancher:{version}", ("python3", "python3-yaml", "python3-cryptography"),
                 {"usr/bin/rancher": ("rancher", {"version": version})}, rancher_config(version), (DATA_DIR.lstrip("/"),))


def etcd_image() -> Image:
    """registry.k8s.io/etcd as labctl's restore uses it: etcdutl on PATH, no entry point (the pod names the command)."""
    return Image(ETCD_IMAGE, ("python3", "python3-yaml"),
                 {"usr/local/bin/etcdutl": ("etcdutl", {"version": kubeadm.ETCD_TAG})},
                 {"Env": [PATH, f"LABCTL_DOUBLES_LOG={ETCD_IMAGE_LOG}"],
                  "Labels": {"org.opencontainers.image.title": f"etcdutl double of {ETCD_IMAGE} (labctl tests)"}})


def sources_digest() -> str:
    """What the doubles in an image are made of: the doubles' modules and labctl's they import."""
    digest = hashlib.sha256()
    for path in sorted(build.DOUBLES_DIR.glob("*.py")) + [build.LABCTL_DIR / "kube" / "schema.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_image(image: Image, target: Path, *, cache: Path) -> Path:
    """Write image's archive to target (a copy of the cached one, built on first use)."""
    repo = aptrepo.build_repo(list(image.packages), suite="bookworm", cache=cache)
    material = json.dumps({"packages": aptrepo.packages_digest(repo, "bookworm"), "double": sources_digest(),
                           "tag": image.tag, "doubles": image.doubles, "config": image.config,
                           "directories": image.directories}, sort_keys=True)
    cached = cache / "double-images" / f"{hashlib.sha256(material.encode()).hexdigest()[:24]}.tar"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            for deb in sorted((repo / "pool").rglob("*.deb")):
                runner.run(["dpkg-deb", "-x", deb, rootfs])
            for unused in UNUSED:
                shutil.rmtree(rootfs / unused, ignore_errors=True)
            for directory in ("tmp", *image.directories):
                (rootfs / directory).mkdir(parents=True, exist_ok=True)
            (rootfs / "tmp").chmod(0o1777)
            for path, (tool, behaviour) in image.doubles.items():
                build.build(tool, rootfs / path, behaviour)
            partial = Path(tmp) / "image.tar"
            tools = ", ".join(tool for tool, _ in image.doubles.values())
            history = f"labctl tests/doubles/image.py: Debian {' '.join(image.packages)} and the {tools} double"
            docker_archive(rootfs, partial, image.tag, image.config, history)
            partial.replace(cached)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    return target


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # dpkg-deb -x run by a user records that user as the owner; every file of these packages is root's.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def docker_archive(rootfs: Path, target: Path, tag: str, config: dict, history: str) -> Path:
    """rootfs as a one-layer image in `docker save` format, tagged tag."""
    work = target.parent
    layer = work / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.iterdir()):
            tar.add(path, arcname=path.name, filter=_as_root)
    diff_id = "sha256:" + _sha256(layer)
    image = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": history}],
    }, sort_keys=True).encode()
    image_id = hashlib.sha256(image).hexdigest()
    layer_dir = diff_id.removeprefix("sha256:")
    manifest = json.dumps([{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{layer_dir}/layer.tar"]}]).encode()
    with tarfile.open(target, "w") as tar:
        for name, data in ((f"{image_id}.json", image), ("manifest.json", manifest)):
            _add_bytes(tar, name, data)
        tar.add(layer, arcname=f"{layer_dir}/layer.tar", filter=_as_root)
    layer.unlink()
    return target


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
