"""Local apt repositories: indexing, host source selection, cache keys, serving, and one real build."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labctl import aptrepo, runner
from labctl.errors import CommandFailed, InvalidInput

INDEXTARGETS = """\
deb Packages amd64 http://deb.example.org/debian/ bookworm main
deb Packages amd64 http://deb.example.org/debian/ bookworm contrib
deb Packages i386 http://deb.example.org/debian/ bookworm main
deb Translations amd64 http://deb.example.org/debian/ bookworm main
deb Packages amd64 http://deb.example.org/debian/ bookworm-updates main
deb Packages amd64 http://security.example.org/debian-security/ bookworm-security main
deb Packages amd64 http://deb.example.org/debian/ trixie main
deb-src Sources amd64 http://deb.example.org/debian/ bookworm main
deb Packages amd64 http://other.example.org/apt/ bookwormish main
"""


def make_deb(pool: Path, name: str, version: str = "1.0") -> Path:
    """A minimal binary package built with dpkg-deb, no network involved."""
    tree = pool.parent / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        f"Description: test package {name}\n")
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "README").write_text(name)
    pool.mkdir(parents=True, exist_ok=True)
    deb = pool / f"{name}_{version}_all.deb"
    runner.run(["dpkg-deb", "--build", "--root-owner-group", tree, deb], capture=True)
    return deb


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    make_deb(repo / "pool/main", "labctl-alpha")
    make_deb(repo / "pool/main", "labctl-beta", "2.3")
    aptrepo.index(repo, suite="bookworm", arch="amd64")
    return repo


def test_index_writes_packages_gz_and_release(tiny_repo):
    binary = tiny_repo / "dists/bookworm/main/binary-amd64"
    packages = (binary / "Packages").read_text()
    assert "Package: labctl-alpha" in packages
    assert "Filename: pool/main/labctl-beta_2.3_all.deb" in packages
    assert gzip.decompress((binary / "Packages.gz").read_bytes()).decode() == packages
    release = (tiny_repo / "dists/bookworm/Release").read_text()
    for line in ("Suite: bookworm", "Codename: bookworm", "Architectures: amd64", "Components: main"):
        assert line in release.splitlines()
    assert "main/binary-amd64/Packages.gz" in release


def test_indexed_repo_is_usable_by_apt(tiny_repo, tmp_path):
    """apt itself, isolated from the host's configuration, finds the packages through file://."""
    state = tmp_path / "apt"
    (state / "lists/partial").mkdir(parents=True)
    (state / "status").touch()
    sources = tmp_path / "guest.list"
    sources.write_text(aptrepo.guest_source_line(f"file://{tiny_repo}", "bookworm") + "\n")
    options = [f"-oDir::State={state}", f"-oDir::State::status={state}/status", f"-oDir::Cache={state}",
               f"-oDir::Etc::sourcelist={sources}", "-oDir::Etc::sourceparts=/nonexistent",
               "-oAPT::Architecture=amd64"]
    runner.run(["apt-get", "-q", *options, "update"], capture=True)
    shown = runner.output(["apt-cache", *options, "show", "labctl-beta"])
    assert "Version: 2.3" in shown


def test_index_refuses_an_empty_pool(tmp_path):
    (tmp_path / "pool").mkdir()
    with pytest.raises(CommandFailed, match="no .deb files"):
        aptrepo.index(tmp_path, suite="bookworm")


def test_host_sources_keep_the_suite_and_its_companions(monkeypatch):
    monkeypatch.setattr(runner, "output", lambda argv, **kw: INDEXTARGETS)
    sources = aptrepo.host_sources("bookworm", "amd64")
    assert [s.line() for s in sources] == [
        "deb http://deb.example.org/debian/ bookworm main contrib",
        "deb http://deb.example.org/debian/ bookworm-updates main",
        "deb http://security.example.org/debian-security/ bookworm-security main",
    ]


def test_host_sources_missing_suite_is_invalid_input(monkeypatch):
    monkeypatch.setattr(runner, "output", lambda argv, **kw: INDEXTARGETS)
    with pytest.raises(InvalidInput, match="no sources for noble") as info:
        aptrepo.host_sources("noble")
    assert "sources.list.d" in info.value.resolution


def test_repo_key_ignores_order_and_duplicates_but_not_inputs():
    sources = [aptrepo.Source("http://deb.example.org/debian/", "bookworm", ("main",))]
    key = aptrepo.repo_key(["curl", "gnupg"], "bookworm", "amd64", sources)
    assert key == aptrepo.repo_key(["gnupg", "curl", "curl"], "bookworm", "amd64", sources)
    assert key != aptrepo.repo_key(["curl"], "bookworm", "amd64", sources)
    assert key != aptrepo.repo_key(["curl", "gnupg"], "trixie", "amd64", sources)
    assert key != aptrepo.repo_key(["curl", "gnupg"], "bookworm", "arm64", sources)
    other = [aptrepo.Source("http://mirror.example.org/debian/", "bookworm", ("main",))]
    assert key != aptrepo.repo_key(["curl", "gnupg"], "bookworm", "amd64", other)


def test_guest_source_line():
    assert aptrepo.guest_source_line("http://10.0.0.1:8080", "bookworm") == \
        "deb [trusted=yes] http://10.0.0.1:8080/ bookworm main"


def test_serve_answers_on_the_given_address_and_stops(tiny_repo):
    with aptrepo.serve(tiny_repo, "127.0.0.1", 0) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "dists/bookworm/Release", timeout=5) as response:
            assert b"Codename: bookworm" in response.read()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "dists/bookworm/Release", timeout=5)


def test_serve_refuses_a_directory_that_is_no_repo(tmp_path):
    with pytest.raises(InvalidInput, match="no dists"):
        with aptrepo.serve(tmp_path, "127.0.0.1", 0):
            pass


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One labctl cache for the tests that talk to the archive, so apt's lists download once."""
    return tmp_path_factory.mktemp("labctl-home")


@pytest.fixture
def archive_cache(shared_cache, monkeypatch):
    monkeypatch.setenv("LABCTL_HOME", str(shared_cache))
    return shared_cache


def test_build_repo_real_closure_of_hello(archive_cache):
    """SLOW (a few seconds) and needs the host's apt to reach the Debian archive: fails, never skips."""
    first = aptrepo.build_repo(["hello"], suite="bookworm")
    names = {deb.name.split("_")[0] for deb in (first / "pool/main").glob("*.deb")}
    assert {"hello", "libc6"} <= names
    assert "Package: hello" in (first / "dists/bookworm/main/binary-amd64/Packages").read_text()
    stamp = (first / "dists/bookworm/Release").stat().st_mtime_ns
    assert aptrepo.build_repo(["hello"], suite="bookworm") == first
    assert (first / "dists/bookworm/Release").stat().st_mtime_ns == stamp
    assert len(aptrepo.packages_digest(first, "bookworm")) == 64
    # the closure does not depend on the host: apt's Essential set is not pulled in
    assert "coreutils" not in names


def test_build_repo_unknown_package_fails_clearly(archive_cache):
    repos = aptrepo.paths.cache_dir() / "repos"
    before = sorted(repos.glob("*")) if repos.exists() else []
    with pytest.raises(CommandFailed, match="apt-get") as info:
        aptrepo.build_repo(["labctl-no-such-package"], suite="bookworm")
    assert "labctl-no-such-package" in str(info.value.details)
    assert [p for p in sorted(repos.glob("*")) if not p.name.endswith(".lock")] == \
        [p for p in before if not p.name.endswith(".lock")]
