"""labctl artifacts fetch: the plan agrees with what the install checks; fetching from a loopback server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from labctl.cli import cli
from labctl.errors import CommandFailed
from labctl.kube import artifacts, compat, fetch
from labctl.progress import QuietReporter
from tests.unit.helpers import make_lab
from tests.unit.test_images import _Ranged, http_server

KUBEADM_IMAGES = ["registry.k8s.io/kube-apiserver:v1.35.3", "registry.k8s.io/pause:3.10.1"]
CANAL_IMAGES = ["docker.io/calico/cni:v3.31.2", "docker.io/calico/node:v3.31.2"]


def lab_with(**kubernetes):
    return make_lab(kubernetes=kubernetes)


def planned_files(items) -> set[Path]:
    return {item.path for item in items if isinstance(item, fetch.Download)}


@pytest.mark.parametrize("kubernetes, extra", [
    ({"distro": "kubeadm"}, set()),
    ({"distro": "kubeadm", "runtime": "docker", "cni": "flannel"}, set()),
    ({"distro": "rke2"}, set()),
    ({"distro": "rke2", "cni": "calico"}, {"rke2/v1.34.6+rke2r3/rke2-images-calico.linux-amd64.tar.zst"}),
    ({"distro": "rke"}, set()),
    ({"distro": "kubeadm", "rancher": {"enabled": True}}, set()),
    ({"distro": "none", "rancher": {"enabled": True, "import_cluster": False}}, set()),
    ({"distro": "rke2", "version": "v1.34.6+rke2r3", "rancher": {"enabled": True}}, set()),
])
def test_plan_fetches_exactly_what_the_install_requires(tmp_path, kubernetes, extra):
    lab = lab_with(**kubernetes)
    required = set(artifacts.required(fetch.at(lab, tmp_path)))
    assert required
    assert planned_files(fetch.plan(lab, tmp_path)) == required | {tmp_path / path for path in extra}


def test_plan_urls_and_checksums_follow_each_publisher(tmp_path):
    items = fetch.plan(lab_with(distro="kubeadm", runtime="docker", rancher={"enabled": True}), tmp_path)
    by_path = {item.path.relative_to(tmp_path).as_posix(): item for item in items if isinstance(item, fetch.Download)}
    kubeadm = by_path["kubeadm/v1.35.3/bin/kubeadm"]
    assert kubeadm.url == "https://dl.k8s.io/release/v1.35.3/bin/linux/amd64/kubeadm"
    assert kubeadm.checksum == fetch.Checksum("hash-file", kubeadm.url + ".sha256") and kubeadm.mode == 0o755
    crictl = by_path["kubeadm/v1.35.3/bin/crictl"]
    assert crictl.url.endswith("/v1.35.0/crictl-v1.35.0-linux-amd64.tar.gz") and crictl.member == "crictl"
    assert by_path["cni/canal.yaml"].url == compat.CNI_MANIFESTS["canal"]
    assert by_path["cri-dockerd/bin/cri-dockerd"].checksum.kind == "none"
    rke2 = by_path["rke2/v1.34.6+rke2r3/rke2.linux-amd64.tar.gz"]
    assert rke2.url == "https://github.com/rancher/rke2/releases/download/v1.34.6%2Brke2r3/rke2.linux-amd64.tar.gz"
    assert rke2.checksum == fetch.Checksum("list", "https://github.com/rancher/rke2/releases/download/v1.34.6%2Brke2r3/"
                                           "sha256sum-amd64.txt", "rke2.linux-amd64.tar.gz")
    assert by_path["helm/bin/helm"].checksum.url == "https://get.helm.sh/helm-v3.19.0-linux-amd64.tar.gz.sha256sum"
    rancher_chart = by_path["charts/rancher-2.14.1.tgz"]
    assert rancher_chart.url == "https://releases.rancher.com/server-charts/stable/rancher-2.14.1.tgz"
    assert rancher_chart.checksum.kind == "chart-index" and rancher_chart.checksum.version == "2.14.1"
    exports = [item for item in items if isinstance(item, fetch.ImageExport)]
    assert exports[0].source == fetch.Listed((str(tmp_path / "kubeadm/v1.35.3/bin/kubeadm"), "config", "images", "list",
                                              "--kubernetes-version", "v1.35.3"))
    assert {e.directory for e in exports[2:]} == {tmp_path / "rke2/v1.34.6+rke2r3/images"}
    assert isinstance(items[-1], fetch.ImageExport), "images come after the downloads they are listed from"


def test_plan_of_rancher_in_docker_mode_is_the_rancher_image(tmp_path):
    items = fetch.plan(lab_with(rancher={"enabled": True, "mode": "docker", "import_cluster": False}), tmp_path)
    assert items == [fetch.ImageExport(tmp_path / "images", fetch.Named(("rancher/rancher:v2.14.1",)))]


def test_manifest_images_reads_every_document_once():
    text = yaml.safe_dump_all([
        {"kind": "DaemonSet", "spec": {"template": {"spec": {
            "initContainers": [{"image": "docker.io/calico/cni:v3.31.2"}],
            "containers": [{"image": "docker.io/calico/node:v3.31.2"}, {"image": "docker.io/calico/cni:v3.31.2"}]}}}},
        {"kind": "CustomResourceDefinition", "properties": {"image": {"type": "string"}}},
    ])
    assert fetch.manifest_images(text) == CANAL_IMAGES


# A fake publisher on 127.0.0.1 laid out like dl.k8s.io and the cri-tools releases.

class _Logged(_Ranged):
    paths: list[str] = []
    ranges: list[str] = []

    def do_GET(self):
        type(self).paths.append(self.path)
        super().do_GET()


def _publish(path: Path, data: bytes, checksum: str | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if checksum is not None:
        Path(f"{path}{checksum}").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return data


def _tar_gz(member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def publisher(tmp_path, monkeypatch):
    """Serves kubeadm v1.35.3 files; the kubeadm "binary" prints its image list as the real one does."""
    site = tmp_path / "site"
    bins = site / "k8s" / "v1.35.3" / "bin" / "linux" / "amd64"
    kubeadm_script = ("#!/bin/sh\n[ \"$*\" = 'config images list --kubernetes-version v1.35.3' ] || exit 3\n"
                      + "".join(f"echo {ref}\n" for ref in KUBEADM_IMAGES))
    files = {"kubeadm": _publish(bins / "kubeadm", kubeadm_script.encode(), ".sha256")}
    for tool in ("kubelet", "kubectl"):
        files[tool] = _publish(bins / tool, f"{tool} binary\n".encode() * 5000, ".sha256")
    files["crictl"] = b"crictl binary\n"
    _publish(site / "cri" / "v1.35.0" / "crictl-v1.35.0-linux-amd64.tar.gz", _tar_gz("crictl", files["crictl"]), ".sha256")
    files["canal.yaml"] = _publish(site / "canal.yaml", yaml.safe_dump(
        {"spec": {"containers": [{"image": CANAL_IMAGES[1]}], "initContainers": [{"image": CANAL_IMAGES[0]}]}}).encode())
    _Logged.paths, _Logged.ranges = [], []
    with http_server(site, _Logged) as base:
        monkeypatch.setattr(fetch, "K8S_RELEASES", f"{base}/k8s")
        monkeypatch.setattr(fetch, "CRI_TOOLS_RELEASES", f"{base}/cri")
        monkeypatch.setitem(compat.CNI_MANIFESTS, "canal", f"{base}/canal.yaml")
        yield site, files


@pytest.fixture
def fake_skopeo(tmp_path, monkeypatch):
    """A skopeo on PATH that writes `archive of docker://REF` where `docker-archive:PATH:REF` says; logs its argv."""
    bin_dir, log = tmp_path / "bin", tmp_path / "skopeo.log"
    bin_dir.mkdir()
    script = bin_dir / "skopeo"
    script.write_text(f"""#!{sys.executable}
import json, pathlib, sys
with open({str(log)!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
verb, source, target = sys.argv[1:]
pathlib.Path(target.split(":", 2)[1]).write_bytes(b"archive of " + source.encode())
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_build_fetches_verifies_exports_and_records(tmp_path, publisher, fake_skopeo):
    _, files = publisher
    dest = tmp_path / "dest"
    lab = lab_with(distro="kubeadm")
    record = fetch.build(lab, dest, QuietReporter())

    home = dest / "kubeadm" / "v1.35.3"
    for tool in ("kubeadm", "kubelet", "kubectl", "crictl"):
        assert (home / "bin" / tool).read_bytes() == files[tool]
        assert (home / "bin" / tool).stat().st_mode & 0o777 == 0o755
    assert (dest / "cni" / "canal.yaml").read_bytes() == files["canal.yaml"]
    exported = sorted(KUBEADM_IMAGES + CANAL_IMAGES)
    assert sorted(call[1] for call in _calls(fake_skopeo)) == [f"docker://{ref}" for ref in exported]
    for call in _calls(fake_skopeo):
        ref = call[1].removeprefix("docker://")
        assert call[0] == "copy" and call[2].endswith(f":{ref}")
    tars = sorted(p.name for p in (home / "images").iterdir())
    assert tars == sorted(ref.replace("/", "_").replace(":", "_") + ".tar" for ref in exported)

    manifest = json.loads((dest / fetch.MANIFEST).read_text())["files"]
    assert manifest == json.loads(json.dumps(record))
    kubeadm = manifest["kubeadm/v1.35.3/bin/kubeadm"]
    assert kubeadm["sha256"] == hashlib.sha256(files["kubeadm"]).hexdigest()
    assert kubeadm["size"] == len(files["kubeadm"]) and kubeadm["url"].endswith("/k8s/v1.35.3/bin/linux/amd64/kubeadm")
    assert kubeadm["verified"].startswith("publisher's checksum")
    assert manifest["cni/canal.yaml"]["verified"].startswith("none published")
    crictl = manifest["kubeadm/v1.35.3/bin/crictl"]
    assert crictl["member"] == "crictl" and crictl["sha256"] == hashlib.sha256(files["crictl"]).hexdigest()
    assert manifest["kubeadm/v1.35.3/images/registry.k8s.io_pause_3.10.1.tar"]["url"] == "docker://registry.k8s.io/pause:3.10.1"
    assert not (dest / fetch.PARTIAL_DIR).exists()
    artifacts.check(fetch.at(lab, dest))


def test_second_run_downloads_and_exports_nothing(tmp_path, publisher, fake_skopeo):
    dest = tmp_path / "dest"
    lab = lab_with(distro="kubeadm")
    fetch.build(lab, dest, QuietReporter())
    first_calls = len(_calls(fake_skopeo))
    _Logged.paths = []
    reporter = QuietReporter()
    fetch.build(lab, dest, reporter)
    assert _Logged.paths == []
    assert len(_calls(fake_skopeo)) == first_calls
    assert {phase for _, phase, _ in reporter.events} == {"in place"}


def test_a_changed_file_is_fetched_again(tmp_path, publisher, fake_skopeo):
    dest = tmp_path / "dest"
    lab = lab_with(distro="kubeadm")
    fetch.build(lab, dest, QuietReporter())
    kubectl = dest / "kubeadm" / "v1.35.3" / "bin" / "kubectl"
    kubectl.write_bytes(b"tampered")
    _Logged.paths = []
    fetch.build(lab, dest, QuietReporter())
    assert [p for p in _Logged.paths if not p.endswith(".sha256")] == ["/k8s/v1.35.3/bin/linux/amd64/kubectl"]
    assert kubectl.read_bytes() == publisher[1]["kubectl"]


def test_checksum_mismatch_leaves_no_file(tmp_path, publisher, fake_skopeo):
    site, _ = publisher
    (site / "k8s" / "v1.35.3" / "bin" / "linux" / "amd64" / "kubelet.sha256").write_text("0" * 64 + "\n")
    dest = tmp_path / "dest"
    with pytest.raises(CommandFailed, match="does not match its publisher's checksum") as failure:
        fetch.build(lab_with(distro="kubeadm"), dest, QuietReporter())
    assert "0" * 64 in failure.value.details
    assert not (dest / "kubeadm" / "v1.35.3" / "bin" / "kubelet").exists()
    assert not list((dest / fetch.PARTIAL_DIR).glob("*kubelet*"))
    assert "kubeadm/v1.35.3/bin/kubelet" not in json.loads((dest / fetch.MANIFEST).read_text())["files"]


def test_an_interrupted_download_resumes_from_its_part_file(tmp_path, publisher, fake_skopeo):
    _, files = publisher
    dest = tmp_path / "dest"
    part = dest / fetch.PARTIAL_DIR / "kubeadm__v1.35.3__bin__kubelet.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["kubelet"][:1000])
    fetch.build(lab_with(distro="kubeadm"), dest, QuietReporter())
    assert _Logged.ranges == ["bytes=1000-"]
    assert (dest / "kubeadm" / "v1.35.3" / "bin" / "kubelet").read_bytes() == files["kubelet"]


def test_without_skopeo_or_docker_nothing_is_downloaded(tmp_path, publisher, monkeypatch):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(CommandFailed, match="needs skopeo or docker") as failure:
        fetch.build(lab_with(distro="kubeadm"), tmp_path / "dest", QuietReporter())
    assert "apt-get install skopeo" in failure.value.resolution
    assert _Logged.paths == []


def test_cli_dry_run_prints_the_plan_as_json(tmp_path):
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "name": "airgap", "network": {"subnet": "192.168.150.0/24"},
        "defaults": {"memory": "4GiB", "disk": "8GiB", "vcpus": 2},
        "nodes": [{"name": "rancher-host", "roles": ["rancher"]}, {"name": "kube-master", "roles": ["master", "etcd"]},
                  {"name": "kube-worker", "roles": ["worker"]}],
        "kubernetes": {"distro": "rke"},
    }))
    result = CliRunner().invoke(cli, ["artifacts", "fetch", str(lab_file), str(tmp_path / "out"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["path"] for row in rows] == ["rke/v1.8.4/bin/rke", "rke/v1.8.4/bin/kubectl"]
    assert rows[0]["verified_by"] == "sha256 in https://github.com/rancher/rke/releases/download/v1.8.4/sha256sum.txt (rke_linux-amd64)"
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_lab_without_kubernetes_or_rancher(tmp_path):
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump({
        "name": "plain", "network": {"subnet": "192.168.150.0/24"}, "nodes": [{"name": "one", "roles": ["worker"]}],
    }))
    result = CliRunner().invoke(cli, ["artifacts", "fetch", str(lab_file), str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 2 and "needs no artifacts" in result.output
