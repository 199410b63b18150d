"""`labctl artifacts fetch`: build a lab's air-gapped artifacts directory on a connected machine.

plan() says what goes where and how each file is checked, without touching the network or
the disk. fetch() downloads into resumable .part files, checks each against the checksum its
publisher states (or records the SHA-256 computed here when the publisher states none), saves
container images as docker-archive tarballs with skopeo or docker, and records every file in
MANIFEST.json, so a second run skips what is already in place.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import yaml

from labctl import download, runner
from labctl.errors import CommandFailed, InvalidInput
from labctl.kube import artifacts, compat, kubeadm, rancher, render
from labctl.lab import Lab
from labctl.progress import Reporter

MANIFEST = "MANIFEST.json"
# Partial files live here, outside every directory that is pushed to nodes.
PARTIAL_DIR = ".partial"

# Release locations, as each project's install instructions give them.
K8S_RELEASES = "https://dl.k8s.io/release"
CRI_TOOLS_RELEASES = "https://github.com/kubernetes-sigs/cri-tools/releases/download"
RKE2_RELEASES = "https://github.com/rancher/rke2/releases/download"
RKE2_INSTALL_SCRIPT = "https://get.rke2.io"
RKE_RELEASES = "https://github.com/rancher/rke/releases/download"
HELM_DOWNLOADS = "https://get.helm.sh"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Checksum:
    """Where a file's publisher states its SHA-256.

    hash-file: the file at url starts with the hash (dl.k8s.io `.sha256`, get.helm.sh `.sha256sum`);
    list: the `HASH  NAME` list at url has a line for entry (RKE2's sha256sum-amd64.txt);
    chart-index: the Helm repository index at url gives the digest of chart entry at version;
    none: nothing is published; the SHA-256 computed here goes into MANIFEST.json.
    """

    kind: Literal["hash-file", "list", "chart-index", "none"]
    url: str = ""
    entry: str = ""
    version: str = ""

    def describe(self) -> str:
        if self.kind == "none":
            return "none published: sha256 recorded"
        if self.kind == "chart-index":
            return f"digest of {self.entry} {self.version} in {self.url}"
        return f"sha256 in {self.url}" + (f" ({self.entry})" if self.entry else "")


@dataclass(frozen=True)
class Download:
    url: str
    path: Path
    checksum: Checksum  # of what url serves
    member: str = ""  # when url is a .tar.gz: the member that becomes path
    mode: int = 0o644


@dataclass(frozen=True)
class Named:
    """Image references known up front."""

    refs: tuple[str, ...]

    def describe(self) -> str:
        return " ".join(self.refs)

    def references(self) -> list[str]:
        return list(self.refs)


@dataclass(frozen=True)
class Listed:
    """References a command prints one per line (`kubeadm config images list`)."""

    argv: tuple[str, ...]

    def describe(self) -> str:
        return f"printed by `{shlex.join(self.argv)}`"

    def references(self) -> list[str]:
        return [line.strip() for line in runner.output(self.argv).splitlines() if line.strip()]


@dataclass(frozen=True)
class InManifest:
    """The image: fields of a fetched Kubernetes manifest."""

    path: Path

    def describe(self) -> str:
        return f"image: fields of {self.path.name}"

    def references(self) -> list[str]:
        return manifest_images(self.path.read_text())


@dataclass(frozen=True)
class Rendered:
    """The image: fields of what a command prints (`helm template CHART`)."""

    argv: tuple[str, ...]

    def describe(self) -> str:
        return f"image: fields of `{shlex.join(self.argv)}`"

    def references(self) -> list[str]:
        return manifest_images(runner.output(self.argv))


@dataclass(frozen=True)
class ImageExport:
    """Container images saved as docker-archive tarballs into directory."""

    directory: Path
    source: Named | Listed | InManifest | Rendered


Item = Download | ImageExport


def plan(lab: Lab, dest: Path) -> list[Item]:
    """What `fetch` puts under dest for lab: downloads first, then the images that need them."""
    kube = lab.kubernetes
    if kube.distro == "none" and not kube.rancher.enabled:
        raise InvalidInput(
            f"lab {lab.name} installs neither Kubernetes nor Rancher, so it needs no artifacts",
            resolution="set kubernetes.distro or kubernetes.rancher.enabled in the lab file",
        )
    items: list[Item] = []
    if kube.distro == "kubeadm":
        items += _kubeadm(lab, dest)
    elif kube.distro == "rke2":
        items += _rke2(dest, kube.pinned_version, kube.cni_or_default)
    elif kube.distro == "rke":
        items += _rke(lab, dest)
    if kube.rancher.enabled:
        items += _rancher(lab, dest)
    unique = list(dict.fromkeys(items))  # Rancher's own RKE2 may be the lab's release
    return [i for i in unique if isinstance(i, Download)] + [i for i in unique if isinstance(i, ImageExport)]


def at(lab: Lab, dest: Path) -> Lab:
    """lab with kubernetes.artifacts and rancher.artifacts pointing at dest (where it applies)."""
    kube = lab.kubernetes
    rancher_cfg = kube.rancher.model_copy(update={"artifacts": dest}) if kube.rancher.enabled else kube.rancher
    updated = kube.model_copy(update={"artifacts": dest if kube.distro != "none" else kube.artifacts,
                                      "rancher": rancher_cfg})
    return lab.model_copy(update={"kubernetes": updated})


def _k8s_binary(tag: str, tool: str, path: Path) -> Download:
    url = f"{K8S_RELEASES}/{tag}/bin/linux/amd64/{tool}"
    return Download(url, path, Checksum("hash-file", f"{url}.sha256"), mode=0o755)


def _kubeadm(lab: Lab, dest: Path) -> list[Item]:
    kube = lab.kubernetes
    tag = "v" + kube.pinned_version.removeprefix("v")
    home = artifacts.kubeadm_dir(dest, kube.pinned_version)
    bins = home / "bin"
    items: list[Item] = [_k8s_binary(tag, tool, bins / tool) for tool in ("kubeadm", "kubelet", "kubectl")]
    # cri-tools releases follow Kubernetes minors (https://github.com/kubernetes-sigs/cri-tools#compatibility-matrix-cri-tools--kubernetes).
    crictl = f"v{kube.minor[0]}.{kube.minor[1]}.0"
    archive = f"{CRI_TOOLS_RELEASES}/{crictl}/crictl-{crictl}-linux-amd64.tar.gz"
    items.append(Download(archive, bins / "crictl", Checksum("hash-file", f"{archive}.sha256"),
                          member="crictl", mode=0o755))
    cni = kube.cni_or_default
    manifest = dest / "cni" / f"{cni}.yaml"
    items.append(Download(compat.CNI_MANIFESTS[cni], manifest, Checksum("none")))
    if kube.runtime == "docker":
        items.append(Download(kubeadm.CRI_DOCKERD_URL,
                              dest / "cri-dockerd" / "bin" / "cri-dockerd", Checksum("none"),
                              member="cri-dockerd/cri-dockerd", mode=0o755))
    images = home / "images"
    items.append(ImageExport(images, Listed((str(bins / "kubeadm"), "config", "images", "list",
                                             "--kubernetes-version", tag))))
    items.append(ImageExport(images, InManifest(manifest)))
    return items


def _rke2(dest: Path, version: str, cni: str) -> list[Item]:
    home = artifacts.rke2_dir(dest, version)
    base = f"{RKE2_RELEASES}/{quote(version, safe='')}"  # v1.34.6+rke2r3 -> v1.34.6%2Brke2r3
    sums = f"{base}/sha256sum-amd64.txt"
    names = ["rke2.linux-amd64.tar.gz", "rke2-images.linux-amd64.tar.zst"]
    if cni != "canal":  # the main image archive carries canal only (https://docs.rke2.io/install/airgap)
        names.append(f"rke2-images-{cni}.linux-amd64.tar.zst")
    items: list[Item] = [Download(f"{base}/{name}", home / name, Checksum("list", sums, name)) for name in names]
    items.append(Download(sums, home / "sha256sum-amd64.txt", Checksum("none")))
    items.append(Download(RKE2_INSTALL_SCRIPT, home / "install.sh", Checksum("none"), mode=0o755))
    return items


def _rke(lab: Lab, dest: Path) -> list[Item]:
    kube = lab.kubernetes
    bins = artifacts.rke_dir(dest, kube.rke_version) / "bin"
    base = f"{RKE_RELEASES}/{kube.rke_version}"
    return [
        Download(f"{base}/rke_linux-amd64", bins / "rke", Checksum("list", f"{base}/sha256sum.txt", "rke_linux-amd64"),
                 mode=0o755),
        _k8s_binary(kube.pinned_version.split("-")[0], "kubectl", bins / "kubectl"),
    ]


def _rancher(lab: Lab, dest: Path) -> list[Item]:
    cfg = lab.kubernetes.rancher
    if cfg.mode == "docker":
        return [ImageExport(dest / "images", Named((artifacts.rancher_image(lab),)))]
    helm_archive = f"{HELM_DOWNLOADS}/helm-{compat.DEFAULT_HELM}-linux-amd64.tar.gz"
    helm = dest / "helm" / "bin" / "helm"
    chart_version = cfg.version.removeprefix("v")
    cert_chart, rancher_chart = (archive for _, _, archive in artifacts.rancher_charts(at(lab, dest)))
    items: list[Item] = [
        Download(helm_archive, helm, Checksum("hash-file", f"{helm_archive}.sha256sum"),
                 member="linux-amd64/helm", mode=0o755),
        Download(f"{rancher.JETSTACK_REPO}/charts/{cert_chart.name}", cert_chart,
                 Checksum("chart-index", f"{rancher.JETSTACK_REPO}/index.yaml", "cert-manager", cfg.cert_manager_version)),
        Download(f"{rancher.RANCHER_REPO}/{rancher_chart.name}", rancher_chart,
                 Checksum("chart-index", f"{rancher.RANCHER_REPO}/index.yaml", "rancher", chart_version)),
        *_rke2(dest, cfg.cluster_version, "canal"),
    ]
    # Rancher's own RKE2 imports every tarball in its images directory when it starts.
    images = artifacts.rke2_dir(dest, cfg.cluster_version) / "images"
    kube_version = "v{}.{}.{}".format(*compat.patch_of(cfg.cluster_version))
    for name, chart, values in (("cert-manager", cert_chart, ()),
                                ("rancher", rancher_chart, ("--set", f"hostname={render.rancher_hostname(lab)}"))):
        items.append(ImageExport(images, Rendered((str(helm), "template", name, str(chart),
                                                   "--kube-version", kube_version, *values))))
    return items


def manifest_images(text: str) -> list[str]:
    """Every image: string in a stream of YAML documents, sorted, once each."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.add(value.strip())
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for document in yaml.safe_load_all(text):
        walk(document)
    return sorted(ref for ref in found if ref)


def describe(item: Item, dest: Path) -> dict[str, str]:
    """One row of `--dry-run`."""
    if isinstance(item, Download):
        source = item.url + (f" (member {item.member})" if item.member else "")
        return {"path": item.path.relative_to(dest).as_posix(), "source": source, "verified_by": item.checksum.describe()}
    return {"path": item.directory.relative_to(dest).as_posix() + "/*.tar", "source": item.source.describe(),
            "verified_by": "exported with skopeo or docker: sha256 recorded"}


Export = Callable[[str, Path], None]


def image_exporter() -> tuple[str, Export]:
    """skopeo if present (no daemon needed), else docker pull + save."""
    if shutil.which("skopeo"):
        return "skopeo", lambda ref, out: runner.run(
            ["skopeo", "copy", f"docker://{ref}", f"docker-archive:{out}:{ref}"], timeout=3600)

    def docker_save(ref: str, out: Path) -> None:
        runner.run(["docker", "pull", ref], timeout=3600)
        runner.run(["docker", "save", "-o", out, ref], timeout=3600)

    if shutil.which("docker"):
        return "docker", docker_save
    raise CommandFailed(
        "exporting container images needs skopeo or docker on this machine, and neither is on PATH",
        resolution="install skopeo (apt-get install skopeo) or Docker, then run `labctl artifacts fetch` again",
    )


def fetch(items: list[Item], dest: Path, reporter: Reporter) -> dict[str, dict]:
    """Put every item under dest; returns MANIFEST.json's files (path relative to dest -> record)."""
    exports = [item for item in items if isinstance(item, ImageExport)]
    tool, export = image_exporter() if exports else ("", None)  # before any download: fail early
    dest.mkdir(parents=True, exist_ok=True)
    record = _load_manifest(dest)
    published = _Published()
    try:
        for item in items:
            if isinstance(item, Download):
                _download(item, dest, record, published, reporter)
        for item in exports:
            assert export is not None
            for ref in item.source.references():
                _export(ref, item.directory, tool, export, dest, record, reporter)
    finally:
        _save_manifest(dest, record)
    shutil.rmtree(dest / PARTIAL_DIR, ignore_errors=True)
    return record


def build(lab: Lab, dest: Path, reporter: Reporter) -> dict[str, dict]:
    """Fetch everything lab needs into dest, then check dest holds every file the install looks for."""
    dest = dest.resolve()
    record = fetch(plan(lab, dest), dest, reporter)
    artifacts.check(at(lab, dest))
    return record


def _partial(dest: Path, relative: str) -> Path:
    part = dest / PARTIAL_DIR / (relative.replace("/", "__") + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    return part


def _in_place(path: Path, entry: dict | None, origin: str) -> bool:
    """path is the file MANIFEST.json recorded from origin: same size and mtime, or same SHA-256."""
    if entry is None or entry.get("url") != origin or not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != entry["size"]:
        return False
    return stat.st_mtime_ns == entry.get("mtime_ns") or download.file_digest(path) == entry["sha256"]


def _entry(path: Path, origin: str, verified: str, **extra: str) -> dict:
    stat = path.stat()
    return {"url": origin, "sha256": download.file_digest(path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "verified": verified, **extra}


def _download(item: Download, dest: Path, record: dict[str, dict], published: _Published, reporter: Reporter) -> None:
    relative = item.path.relative_to(dest).as_posix()
    if _in_place(item.path, record.get(relative), item.url):
        reporter.phase(relative, "in place", "verified earlier")
        return
    expected = published.sha256(item.checksum)
    part = _partial(dest, relative)
    reporter.phase(relative, "downloading", item.url)
    download.stream(item.url, part, _throttled(reporter, relative))
    actual = download.file_digest(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise CommandFailed(
            f"{item.url} does not match its publisher's checksum",
            details=f"expected {expected} ({item.checksum.describe()})\ngot      {actual}",
            resolution="run `labctl artifacts fetch` again; if it persists the server serves another file than the one published",
        )
    item.path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if item.member:
        _extract(part, item.member, item.path)
        part.unlink()
        extra = {"archive_sha256": actual, "member": item.member}
    else:
        part.replace(item.path)
    item.path.chmod(item.mode)
    how = f"publisher's checksum ({item.checksum.describe()})" if expected else "none published; sha256 computed here"
    record[relative] = _entry(item.path, item.url, how, **extra)
    reporter.phase(relative, "verified" if expected else "recorded", actual[:12])


def _extract(archive: Path, member: str, target: Path) -> None:
    tmp = archive.with_suffix(".member")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            source = tar.extractfile(member)
            if source is None:
                raise KeyError(member)
            with source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out)
    except (KeyError, tarfile.TarError) as exc:
        tmp.unlink(missing_ok=True)
        raise CommandFailed(f"{archive.name}: no member {member} ({exc})",
                            resolution="the release layout changed; update labctl/kube/fetch.py") from exc
    tmp.replace(target)


def _export(ref: str, directory: Path, tool: str, export: Export, dest: Path, record: dict[str, dict],
            reporter: Reporter) -> None:
    target = artifacts.image_tarball(directory, ref)
    relative = target.relative_to(dest).as_posix()
    origin = f"docker://{ref}"
    if _in_place(target, record.get(relative), origin):
        reporter.phase(relative, "in place", "exported earlier")
        return
    part = _partial(dest, relative)
    part.unlink(missing_ok=True)  # skopeo will not overwrite an archive
    reporter.phase(relative, "exporting", f"{ref} with {tool}")
    export(ref, part)
    if not part.is_file():
        raise CommandFailed(f"{tool} wrote no archive for {ref}", resolution=f"run `{tool}` by hand for {ref} to see why")
    directory.mkdir(parents=True, exist_ok=True)
    part.replace(target)
    record[relative] = _entry(target, origin, f"exported with {tool}; sha256 computed here")
    reporter.phase(relative, "exported", ref)


def _throttled(reporter: Reporter, relative: str) -> download.Progress:
    last = 0.0

    def report(done: int, total: int | None) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 1 or done == total:
            last = now
            size = f"{done / 2**20:,.1f} of {total / 2**20:,.1f} MiB" if total else f"{done / 2**20:,.1f} MiB"
            reporter.phase(relative, "downloading", size)

    return report


class _Published:
    """Checksums publishers state, each checksum file or index read once per run."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._indexes: dict[str, dict] = {}

    def _text(self, url: str) -> str:
        if url not in self._texts:
            self._texts[url] = download.fetch(url).decode(errors="replace")
        return self._texts[url]

    def sha256(self, checksum: Checksum) -> str | None:
        if checksum.kind == "none":
            return None
        value: str | None = None
        if checksum.kind == "hash-file":
            fields = self._text(checksum.url).split()
            value = fields[0].lower() if fields else None
        elif checksum.kind == "list":
            value = download.listed_checksum(self._text(checksum.url), checksum.entry)
        else:
            if checksum.url not in self._indexes:
                self._indexes[checksum.url] = yaml.safe_load(self._text(checksum.url)) or {}
            charts = (self._indexes[checksum.url].get("entries") or {}).get(checksum.entry) or []
            value = next((str(c.get("digest", "")).lower() for c in charts
                          if str(c.get("version")) == checksum.version), None)
        if value is None or not _SHA256.match(value):
            raise CommandFailed(
                f"{checksum.url} states no SHA-256 for {checksum.entry or checksum.url.rsplit('/', 1)[-1]}"
                + (f" {checksum.version}" if checksum.version else ""),
                resolution="the release may not exist or its layout changed; check the version in the lab file",
            )
        return value


def _load_manifest(dest: Path) -> dict[str, dict]:
    path = dest / MANIFEST
    try:
        return json.loads(path.read_text()).get("files", {})
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc})",
                           resolution="delete it; the next fetch checks every file again") from exc


def _save_manifest(dest: Path, record: dict[str, dict]) -> None:
    path = dest / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": dict(sorted(record.items()))}, indent=2) + "\n")
    tmp.replace(path)
