"""Local apt repositories built on the host with the host's own apt, for guests without internet.

`build_repo` downloads the full dependency closure of some packages for a guest release with
apt-get --download-only against an empty dpkg status file and private state, cache and
configuration directories, so the result depends neither on what the host has installed nor on
its pins. It uses the host's configured apt sources for that suite (SUITE, SUITE-updates,
SUITE-security). apt-ftparchive indexes the result in the standard suite layout:

    dists/SUITE/Release
    dists/SUITE/main/binary-ARCH/Packages, Packages.gz
    pool/main/*.deb

A repository is cached under cache_dir()/repos/HASH, HASH being a content hash of the sorted
package list, suite, architecture and source lines, so asking again returns at once.

Guests use it, while `serve` runs, with this one apt source line (see `guest_source_line`):

    deb [trusted=yes] http://GATEWAY:PORT/ SUITE main

debootstrap uses the same layout through file:///PATH (with --no-check-gpg).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl import paths, runner
from labctl.errors import CommandFailed, InvalidInput

COMPONENT = "main"


@dataclass(frozen=True)
class Source:
    """One host apt source for the guest's release: `deb URI SUITE COMPONENT...`."""

    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(self.components)}"


def guest_source_line(url: str, suite: str) -> str:
    """The apt source line a guest uses for a repository served at url."""
    return f"deb [trusted=yes] {url.rstrip('/')}/ {suite} {COMPONENT}"


def host_sources(suite: str, arch: str = "amd64") -> list[Source]:
    """The host's binary sources for suite and its -updates/-security companions, as apt parses them."""
    out = runner.output(["apt-get", "indextargets", "--format",
                         "$(TARGET_OF) $(IDENTIFIER) $(ARCHITECTURE) $(REPO_URI) $(RELEASE) $(COMPONENT)"])
    components: dict[tuple[str, str], list[str]] = {}
    for row in out.splitlines():
        fields = row.split()
        if len(fields) != 6:
            continue
        target_of, identifier, target_arch, uri, release, component = fields
        if target_of != "deb" or identifier != "Packages" or target_arch != arch:
            continue
        if release != suite and not release.startswith(f"{suite}-"):
            continue
        found = components.setdefault((uri, release), [])
        if component not in found:
            found.append(component)
    if not components:
        raise InvalidInput(
            f"the host's apt has no sources for {suite} ({arch})",
            details="labctl downloads guest packages with the host's apt and its configured sources",
            resolution=f"add a source for {suite} to /etc/apt/sources.list.d/ and run `apt-get update`",
        )
    return [Source(uri, release, tuple(comps)) for (uri, release), comps in sorted(components.items())]


def repo_key(packages: Sequence[str], suite: str, arch: str, sources: Sequence[Source]) -> str:
    material = json.dumps({"packages": sorted(set(packages)), "suite": suite, "arch": arch,
                           "sources": [s.line() for s in sources]}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def build_repo(packages: Sequence[str], *, suite: str = "bookworm", arch: str = "amd64",
               cache: Path | None = None) -> Path:
    """A repository holding packages and everything they depend on for suite/arch; cached under
    cache (default: labctl's cache_dir()).

    Items may be package names or apt patterns such as ?priority(required). Recommends are
    not followed.
    """
    if not packages:
        raise InvalidInput("no packages given for the local repository",
                           resolution="name at least one package")
    sources = host_sources(suite, arch)
    cache = cache or paths.cache_dir()
    root = cache / "repos"
    repo = root / repo_key(packages, suite, arch, sources)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{repo.name}.lock"):
        if (repo / "dists" / suite / "Release").is_file():
            return repo
        work = Path(tempfile.mkdtemp(prefix=f"{repo.name}.", dir=root))
        try:
            debs = _download(packages, suite, arch, sources, work / "apt", cache / "apt-lists")
            pool = work / "repo" / "pool" / COMPONENT
            pool.mkdir(parents=True)
            for deb in debs:
                deb.rename(pool / deb.name)
            index(work / "repo", suite=suite, arch=arch)
            shutil.rmtree(repo, ignore_errors=True)
            (work / "repo").rename(repo)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return repo


def packages_digest(repo: Path, suite: str, arch: str = "amd64") -> str:
    """SHA-256 of the repository's Packages index: changes whenever any package does."""
    packages = repo / "dists" / suite / COMPONENT / f"binary-{arch}" / "Packages"
    return hashlib.sha256(packages.read_bytes()).hexdigest()


def index(repo: Path, *, suite: str, arch: str = "amd64") -> None:
    """Write Packages, Packages.gz and Release for the .deb files under repo/pool."""
    binary = repo / "dists" / suite / COMPONENT / f"binary-{arch}"
    binary.mkdir(parents=True, exist_ok=True)
    # relative paths: the Filename fields must resolve against the repository root
    listing = runner.run(["apt-ftparchive", "packages", "pool"], cwd=repo, capture=True).stdout
    if not listing.strip():
        raise CommandFailed(f"no .deb files to index under {repo / 'pool'}")
    (binary / "Packages").write_bytes(listing)
    runner.run(["gzip", "-9nkf", binary / "Packages"])
    settings = {"Origin": "labctl", "Label": "labctl", "Suite": suite, "Codename": suite,
                "Architectures": arch, "Components": COMPONENT}
    options = [arg for key, value in settings.items() for arg in ("-o", f"APT::FTPArchive::Release::{key}={value}")]
    release = runner.run(["apt-ftparchive", *options, "release", f"dists/{suite}"], cwd=repo, capture=True).stdout
    (repo / "dists" / suite / "Release").write_bytes(release)


def _download(packages: Sequence[str], suite: str, arch: str, sources: Sequence[Source], work: Path,
              lists_root: Path) -> list[Path]:
    """Fetch the closure into work with apt isolated from the host's state; return the .deb files."""
    for sub in ("etc/sources.list.d", "etc/preferences.d", "archives/partial"):
        (work / sub).mkdir(parents=True)
    (work / "status").touch()
    source_lines = "".join(f"{s.line()}\n" for s in sources)
    (work / "etc/sources.list.d/guest.list").write_text(source_lines)
    # package lists are shared by every repository from the same sources: updating them is then a few
    # If-Modified-Since requests instead of downloading megabytes of indexes
    lists = lists_root / hashlib.sha256(f"{arch}\n{source_lines}".encode()).hexdigest()[:16]
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    options = {
        "Dir::State": work,
        "Dir::State::lists": lists,
        "Dir::State::status": work / "status",
        "Dir::Cache": work,
        "Dir::Cache::archives": work / "archives",
        "Dir::Etc::sourcelist": "/dev/null",
        "Dir::Etc::sourceparts": work / "etc/sources.list.d",
        "Dir::Etc::preferences": "/dev/null",
        "Dir::Etc::preferencesparts": work / "etc/preferences.d",
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "APT::Install-Recommends": "false",
    }
    if os.geteuid() == 0:
        # root's apt downloads as _apt, which cannot enter the private dirs; it would warn and go on as root
        options["APT::Sandbox::User"] = "root"
    argv = ["apt-get", "-q", "-y"] + [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]
    with _locked(lists.with_suffix(".lock")):
        runner.run([*argv, "update"], capture=True)
        runner.run([*argv, "install", "--download-only", *packages], capture=True)
    return sorted((work / "archives").glob("*.deb"))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise builds of the same repository by concurrent labctl runs."""
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve(repo: Path, host: str, port: int = 8080) -> Iterator[str]:
    """Serve repo over HTTP on host:port only (port 0 picks a free one); yields the base URL."""
    if not (repo / "dists").is_dir():
        raise InvalidInput(f"{repo} is not a repository built by labctl (no dists/ directory)",
                           resolution="build it with aptrepo.build_repo first")
    handler = functools.partial(_QuietHandler, directory=os.fspath(repo))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise CommandFailed(f"cannot serve the package repository on {host}:{port}: {exc.strerror}",
                            resolution="free the port or choose another one (packages.local_port)") from exc
    thread = threading.Thread(target=server.serve_forever, name=f"aptrepo-{host}:{port}", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
