"""Image catalog and cache: catalog shape, pull with checksum verification, import, index persistence."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from labctl import images, runner
from labctl.cli import cli
from labctl.errors import CommandFailed, InvalidInput


def make_qcow2(path: Path, size: str = "64M") -> Path:
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size])
    return path


@contextlib.contextmanager
def http_server(directory: Path, handler_class=None):
    """A loopback HTTP server for directory; the default handler ignores Range, so no resume."""
    handler = functools.partial(handler_class or _Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Ranged(_Quiet):
    """Honours `Range: bytes=N-`, as the publishers' servers do; records the ranges asked for."""

    ranges: list[str] = []

    def do_GET(self):
        asked = self.headers.get("Range")
        if not asked:
            return super().do_GET()
        type(self).ranges.append(asked)
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        start = int(asked.removeprefix("bytes=").rstrip("-"))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def published(tmp_path):
    """A fake publisher: a small qcow2 and a SHA512SUMS file listing it among others."""
    site = tmp_path / "site"
    site.mkdir()
    image = make_qcow2(site / "fake-genericcloud-amd64.qcow2")
    digest = hashlib.sha512(image.read_bytes()).hexdigest()
    (site / "SHA512SUMS").write_text(f"{'0' * 128}  other.raw\n{digest}  {image.name}\n")
    with http_server(site) as base:
        entry = images.CatalogEntry("fake-12", f"{base}/{image.name}", f"{base}/SHA512SUMS", "sha512", "bookworm")
        yield entry, site


def test_catalog_entries_are_well_formed():
    assert {"debian-12", "ubuntu-24.04", "ubuntu-22.04"} <= set(images.CATALOG)
    for name, entry in images.CATALOG.items():
        assert entry.name == name
        for url in (entry.url, entry.checksums_url):
            assert urlparse(url).scheme == "https" and urlparse(url).netloc
        assert entry.checksums_url.rsplit("/", 1)[-1] == f"{entry.algorithm.upper()}SUMS"
        assert entry.url.rsplit("/", 1)[0] == entry.checksums_url.rsplit("/", 1)[0]
        assert images.FAMILIES[entry.suite] == name.split("-")[0]


def test_list_includes_catalog_entries_not_pulled():
    records = {r.name: r for r in images.list_images()}
    assert set(records) == set(images.CATALOG)
    debian = records["debian-12"]
    assert (debian.source, debian.present, debian.suite, debian.family) == ("catalog", False, "bookworm", "debian")


def test_pull_verifies_and_registers(published):
    entry, site = published
    seen = []
    record = images.pull("fake-12", catalog={"fake-12": entry}, progress=lambda done, total: seen.append((done, total)))
    assert record.present and record.source == "catalog" and record.suite == "bookworm"
    assert record.path.read_bytes() == (site / "fake-genericcloud-amd64.qcow2").read_bytes()
    assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()
    assert record.virtual_size == 64 << 20
    assert seen[-1] == (record.size, record.size)
    assert images.resolve("fake-12") == record


def test_pull_checksum_mismatch_leaves_nothing(published):
    entry, site = published
    (site / "SHA512SUMS").write_text(f"{'ab' * 64}  {entry.filename}\n")
    with pytest.raises(CommandFailed, match="does not match the publisher's sha512 checksum"):
        images.pull("fake-12", catalog={"fake-12": entry})
    assert list(images.paths.images_dir().glob("fake-12*")) == []
    assert "fake-12" not in {r.name for r in images.list_images()}


def test_pull_fails_when_checksum_file_does_not_list_the_image(published):
    entry, site = published
    (site / "SHA512SUMS").write_text(f"{'ab' * 64}  something-else.qcow2\n")
    with pytest.raises(CommandFailed, match="lists no checksum for fake-genericcloud-amd64.qcow2"):
        images.pull("fake-12", catalog={"fake-12": entry})


def test_pull_restarts_a_partial_download_the_server_cannot_resume(published):
    entry, _ = published
    part = images.image_path("fake-12").with_name("fake-12.qcow2.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage from an interrupted run")
    assert images.pull("fake-12", catalog={"fake-12": entry}).present
    assert not part.exists()


def test_pull_resumes_a_partial_download(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    image = make_qcow2(site / "fake.qcow2")
    data = image.read_bytes()
    (site / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()} *fake.qcow2\n")
    part = images.image_path("fake").with_name("fake.qcow2.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    _Ranged.ranges = []
    with http_server(site, _Ranged) as base:
        entry = images.CatalogEntry("fake", f"{base}/fake.qcow2", f"{base}/SHA256SUMS", "sha256", "noble")
        record = images.pull("fake", catalog={"fake": entry})
    assert _Ranged.ranges == ["bytes=1000-"]
    assert record.path.read_bytes() == data and record.family == "ubuntu"


def test_pull_unknown_name_is_invalid_input():
    with pytest.raises(InvalidInput, match="not in the catalog"):
        images.pull("no-such-os")


def test_import_registers_a_real_qcow2_and_persists(tmp_path):
    source = make_qcow2(tmp_path / "mine.qcow2", "1G")
    record = images.import_image(source, "debian-12")
    assert (record.source, record.virtual_size, record.suite) == ("imported", 1 << 30, "bookworm")
    index = json.loads(images.index_path().read_text())
    assert index["images"]["debian-12"]["sha256"] == record.sha256
    listed = {r.name: r for r in images.list_images()}
    assert listed["debian-12"] == record
    assert listed["ubuntu-24.04"].present is False
    assert images.resolve("debian-12").path == images.image_path("debian-12")


def test_import_rejects_raw_images_and_bad_names(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(InvalidInput, match="not qcow2") as info:
        images.import_image(raw, "mine")
    assert "qemu-img convert" in info.value.resolution
    with pytest.raises(InvalidInput, match="invalid image name"):
        images.import_image(make_qcow2(tmp_path / "a.qcow2"), "Bad Name")
    with pytest.raises(InvalidInput, match="no such file"):
        images.import_image(tmp_path / "missing.qcow2", "mine")


def test_import_rejects_an_overlay(tmp_path):
    base = make_qcow2(tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay])
    with pytest.raises(InvalidInput, match="backing file"):
        images.import_image(overlay, "mine")


def test_resolve_says_how_to_get_a_missing_image():
    with pytest.raises(InvalidInput) as info:
        images.resolve("debian-12")
    assert "debian-12" in info.value.brief
    assert "labctl image pull debian-12" in info.value.resolution
    assert "labctl image build debian-12" in info.value.resolution
    with pytest.raises(InvalidInput) as info:
        images.resolve("ubuntu-24.04")
    assert "build" not in info.value.resolution
    with pytest.raises(InvalidInput, match="unknown image plan9") as info:
        images.resolve("plan9")
    assert "labctl image import FILE --name plan9" in info.value.resolution


def test_resolve_reports_a_registered_image_whose_file_vanished(tmp_path):
    record = images.import_image(make_qcow2(tmp_path / "x.qcow2"), "mine")
    record.path.unlink()
    with pytest.raises(InvalidInput, match="its file .* is missing"):
        images.resolve("mine")
    assert next(r for r in images.list_images() if r.name == "mine").present is False


def test_remove_forgets_and_deletes(tmp_path):
    record = images.import_image(make_qcow2(tmp_path / "x.qcow2"), "mine")
    images.remove("mine")
    assert not record.path.exists()
    assert "mine" not in {r.name for r in images.list_images()}


def test_cli_list_json_and_import(tmp_path):
    cli_runner = CliRunner()
    source = make_qcow2(tmp_path / "mine.qcow2")
    result = cli_runner.invoke(cli, ["image", "import", str(source), "--name", "mine", "--suite", "bookworm"])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(cli, ["image", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["mine"]["source"] == "imported" and rows["mine"]["family"] == "debian"
    assert rows["debian-12"]["present"] is False


def test_cli_bad_input_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["image", "import", str(tmp_path / "nope.qcow2"), "--name", "x"])
    assert result.exit_code == 2
    assert "no such file" in result.output
