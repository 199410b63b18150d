"""Pack the doubles into single-file programs and lay them out as labctl's air-gapped artifacts directory.

Each double is a zipapp run by the guest's /usr/bin/python3 (cloud-init brings python3 and
python3-yaml): this package, labctl's kubeadm field sets (labctl/kube/schema.py, so the doubles
reject exactly what labctl's own checks reject), and behaviour.json, the settings a test bakes in
(the version the tool claims, or a step it must fail).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipapp
from pathlib import Path
from typing import Any

import yaml

from labctl.kube import artifacts, compat

DOUBLES_DIR = Path(__file__).resolve().parent
LABCTL_DIR = DOUBLES_DIR.parent.parent / "labctl"


def build(tool: str, target: Path, behaviour: dict[str, Any]) -> Path:
    """Write the double of `tool` (a module of this package with main(argv)) to target, executable."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = root / "doubles"
        package.mkdir()
        for source in DOUBLES_DIR.glob("*.py"):
            if source.name != "build.py" and not source.name.startswith("test_"):
                shutil.copy(source, package / source.name)
        (package / "behaviour.json").write_text(json.dumps(behaviour))
        kube = root / "labctl" / "kube"
        kube.mkdir(parents=True)
        (root / "labctl" / "__init__.py").write_text("")
        (kube / "__init__.py").write_text("")
        shutil.copy(LABCTL_DIR / "kube" / "schema.py", kube / "schema.py")
        (root / "__main__.py").write_text(f"import sys\nfrom doubles import {tool}\n{tool}.main(sys.argv[1:])\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, target, interpreter="/usr/bin/python3")
    target.chmod(0o755)
    return target


def cni_manifest(cni: str) -> str:
    """The parts of the upstream canal or flannel manifest the doubles look at: the DaemonSet installing
    the plugin, and net-conf.json with the pod network upstream ships (compat.CNI_MANIFEST_POD_CIDR)."""
    namespace = "kube-system" if cni == "canal" else "kube-flannel"
    containers = ["calico-node", "kube-flannel"] if cni == "canal" else ["kube-flannel"]
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"{cni}-config" if cni == "canal" else "kube-flannel-cfg", "namespace": namespace},
              "data": {"net-conf.json": json.dumps({"Network": compat.CNI_MANIFEST_POD_CIDR[cni],
                                                    "Backend": {"Type": "vxlan"}})}}
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "canal" if cni == "canal" else "kube-flannel-ds", "namespace": namespace},
        "spec": {"template": {"metadata": {"labels": {"k8s-app": cni}}, "spec": {
            "initContainers": [{"name": "install-cni", "image": f"docker.io/example/{cni}-cni:double"}],
            "containers": [{"name": name, "image": f"docker.io/example/{name}:double"} for name in containers]}}},
    }
    return yaml.safe_dump_all([config, daemonset], sort_keys=False)


def kubeadm_artifacts(root: Path, version: str, *, cni: str = "canal", fail: str | None = None) -> Path:
    """DIR/kubeadm/<version>/bin/{kubeadm,kubelet,kubectl,crictl}, an empty images dir, DIR/cni/<cni>.yaml."""
    behaviour = {"version": version, **({"fail": fail} if fail else {})}
    base = artifacts.kubeadm_dir(root, version)
    for tool in ("kubeadm", "kubelet", "kubectl", "crictl"):
        build(tool, base / "bin" / tool, behaviour)
    (base / "images").mkdir(exist_ok=True)
    (root / "cni").mkdir(parents=True, exist_ok=True)
    (root / "cni" / f"{cni}.yaml").write_text(cni_manifest(cni))
    return root


def rke_artifacts(root: Path, rke_version: str) -> Path:
    """DIR/rke/<rke_version>/bin/{rke,kubectl}."""
    base = artifacts.rke_dir(root, rke_version)
    build("rke", base / "bin" / "rke", {"version": rke_version, "kubernetes": list(compat.RKE_RELEASES[rke_version])})
    build("kubectl", base / "bin" / "kubectl", {"version": rke_version})
    return root
