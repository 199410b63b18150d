"""Base images: a catalog of publishers' cloud images, and the local cache of pulled, imported and built ones.

The cache lives in images_dir(): NAME.qcow2 files plus index.json, which records for each
image where it came from, its SHA-256, virtual size and apt suite. Lab files name images like
`debian-12` or `ubuntu-24.04`; `resolve` turns such a name into a record or says how to get it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from labctl import download, paths, runner
from labctl.errors import CommandFailed, InvalidInput

Source = Literal["catalog", "imported", "built"]

FAMILIES = {"bookworm": "debian", "trixie": "debian", "jammy": "ubuntu", "noble": "ubuntu"}
BUILDABLE = {"debian-12"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


@dataclass(frozen=True)
class CatalogEntry:
    """A publisher's cloud image and the checksum file the publisher signs its releases with."""

    name: str
    url: str
    checksums_url: str
    algorithm: Literal["sha256", "sha512"]
    suite: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in (
    CatalogEntry("ubuntu-24.04",
                 "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img",
                 "https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS", "sha256", "noble"),
    CatalogEntry("ubuntu-22.04",
                 "https://cloud-images.ubuntu.com/releases/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img",
                 "https://cloud-images.ubuntu.com/releases/jammy/release/SHA256SUMS", "sha256", "jammy"),
    CatalogEntry("debian-12",
                 "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                 "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS", "sha512", "bookworm"),
    CatalogEntry("debian-13",
                 "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2",
                 "https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS", "sha512", "trixie"),
)}


@dataclass(frozen=True)
class ImageRecord:
    name: str
    source: Source
    path: Path
    size: int  # bytes on disk; 0 when not present
    virtual_size: int  # bytes the guest sees; 0 when not known yet
    sha256: str  # of the qcow2 file; "" when not present
    present: bool
    suite: str | None  # apt suite of the guest release, e.g. bookworm; None when unknown

    @property
    def family(self) -> str | None:
        """Distribution family for apt (debian, ubuntu)."""
        return FAMILIES.get(self.suite) if self.suite else None

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path), "family": self.family}


def index_path() -> Path:
    return paths.images_dir() / "index.json"


def image_path(name: str) -> Path:
    return paths.images_dir() / f"{name}.qcow2"


def list_images() -> list[ImageRecord]:
    """Every registered image, and every catalog image not pulled yet (present=False)."""
    registered = _load_index()
    records = [_record(name, fields) for name, fields in registered.items()]
    records += [_absent(entry) for name, entry in CATALOG.items() if name not in registered]
    return sorted(records, key=lambda r: r.name)


def resolve(name: str) -> ImageRecord:
    """The usable image called name, or InvalidInput saying how to get it."""
    fields = _load_index().get(name)
    if fields is not None:
        record = _record(name, fields)
        if record.present:
            return record
    fixes = []
    if name in CATALOG:
        fixes.append(f"`labctl image pull {name}`")
    if name in BUILDABLE:
        fixes.append(f"`labctl image build {name}`")
    if fields is not None:
        brief = f"image {name} is registered but its file {fields['path']} is missing"
    elif fixes:
        brief = f"image {name} is not in the local cache"
    else:
        brief = f"unknown image {name}"
        known = ", ".join(sorted(set(CATALOG) | set(_load_index()))) or "none"
        fixes.append(f"`labctl image import FILE --name {name}`, or use one of: {known}")
    raise InvalidInput(brief, resolution=" or ".join(fixes) if fixes else None)


def pull(name: str, *, catalog: Mapping[str, CatalogEntry] = CATALOG, progress: download.Progress | None = None) -> ImageRecord:
    """Download a catalog image, verify it against the publisher's checksum file, register it.

    An interrupted download resumes from NAME.qcow2.part when the server honours Range.
    On a checksum mismatch nothing is left behind.
    """
    entry = catalog.get(name)
    if entry is None:
        raise InvalidInput(f"image {name} is not in the catalog",
                           resolution=f"use one of: {', '.join(sorted(catalog))}, or `labctl image import`")
    expected = _published_checksum(entry)
    target = image_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    download.stream(entry.url, part, progress)
    actual = download.file_digest(part, entry.algorithm)
    if actual != expected:
        part.unlink()
        raise CommandFailed(
            f"image {name} does not match the publisher's {entry.algorithm} checksum",
            details=f"expected {expected}\ngot      {actual}\nfrom {entry.url}",
            resolution=f"retry `labctl image pull {name}`; if it persists the mirror serves a different release",
        )
    try:
        _check_qcow2(part, name)
    except InvalidInput:
        part.unlink()
        raise
    part.replace(target)
    return register(target, name, source="catalog", suite=entry.suite)


def import_image(path: Path, name: str, *, suite: str | None = None) -> ImageRecord:
    """Copy a local qcow2 into the cache under name. suite defaults to the catalog's for that name."""
    _check_name(name)
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file", resolution="give the path of a qcow2 image")
    _check_qcow2(path, str(path))
    if suite is not None and suite not in FAMILIES:
        raise InvalidInput(f"unknown suite {suite} for image {name}",
                           resolution=f"use one of: {', '.join(sorted(FAMILIES))}")
    if suite is None and name in CATALOG:
        suite = CATALOG[name].suite
    target = image_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    shutil.copyfile(path, part)
    part.replace(target)
    return register(target, name, source="imported", suite=suite)


def register(path: Path, name: str, *, source: Source, suite: str | None) -> ImageRecord:
    """Record a qcow2 already in the cache directory in index.json."""
    _check_name(name)
    info = _check_qcow2(path, str(path))
    # Relative to the cache so a cache shared between homes (or moved) still resolves.
    stored = path.relative_to(paths.images_dir()) if path.is_relative_to(paths.images_dir()) else path
    fields = {"source": source, "path": str(stored), "virtual_size": int(info["virtual-size"]),
              "sha256": download.file_digest(path), "suite": suite}
    with _index_lock():
        index = _load_index()
        index[name] = fields
        _save_index(index)
    return _record(name, fields)


def remove(name: str) -> None:
    """Forget an image and delete its file."""
    with _index_lock():
        index = _load_index()
        fields = index.pop(name, None)
        if fields is None:
            raise InvalidInput(f"image {name} is not in the local cache", resolution="see `labctl image list`")
        (paths.images_dir() / fields["path"]).unlink(missing_ok=True)
        _save_index(index)


def _record(name: str, fields: dict) -> ImageRecord:
    path = paths.images_dir() / fields["path"]
    present = path.is_file()
    return ImageRecord(name=name, source=fields["source"], path=path, size=path.stat().st_size if present else 0,
                       virtual_size=fields["virtual_size"], sha256=fields["sha256"] if present else "",
                       present=present, suite=fields.get("suite"))


def _absent(entry: CatalogEntry) -> ImageRecord:
    return ImageRecord(name=entry.name, source="catalog", path=image_path(entry.name), size=0, virtual_size=0,
                       sha256="", present=False, suite=entry.suite)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"invalid image name {name!r}",
                           resolution="use lower-case letters, digits, dots and dashes, like debian-12")


def _check_qcow2(path: Path, label: str) -> dict:
    try:
        info = json.loads(runner.output(["qemu-img", "info", "--output=json", path]))
    except CommandFailed as exc:
        raise InvalidInput(f"{label}: not a disk image qemu-img can read", details=exc.details,
                           resolution="give a qcow2 image") from exc
    if info.get("format") != "qcow2":
        raise InvalidInput(f"{label}: format is {info.get('format')}, not qcow2",
                           resolution=f"convert it: qemu-img convert -O qcow2 {path} OUT.qcow2")
    if info.get("backing-filename"):
        raise InvalidInput(f"{label}: has a backing file ({info['backing-filename']})",
                           resolution=f"flatten it: qemu-img convert -O qcow2 {path} OUT.qcow2")
    return info


def _published_checksum(entry: CatalogEntry) -> str:
    """The checksum the publisher lists for the image's file name."""
    text = download.fetch(entry.checksums_url).decode(errors="replace")
    checksum = download.listed_checksum(text, entry.filename)
    if checksum is None:
        raise CommandFailed(f"{entry.checksums_url} lists no checksum for {entry.filename}",
                            resolution="the publisher may have renamed the image; update the catalog entry")
    return checksum


def _load_index() -> dict[str, dict]:
    try:
        data = json.loads(index_path().read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidInput(f"{index_path()}: not valid JSON ({exc})",
                           resolution="delete it and pull, import or build the images again") from exc
    return data.get("images", {})


def _save_index(index: dict[str, dict]) -> None:
    path = index_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "images": index}, indent=2, sort_keys=True))
    tmp.replace(path)


@contextlib.contextmanager
def _index_lock() -> Iterator[None]:
    paths.images_dir().mkdir(parents=True, exist_ok=True)
    with open(paths.images_dir() / "index.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
