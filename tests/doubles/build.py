"""Pack the doubles into single-file programs and lay them out as labctl's air-gapped artifacts directory.

Each double is a zipapp run by the guest's /usr/bin/python3 (cloud-init brings python3 and
python3-yaml): this package, labctl's kubeadm field sets (labctl/kube/schema.py, so the doubles
reject exactly what labctl's own checks reject), and behaviour.json, the settings a test bakes in
(the version the tool claims, or a step it must fail).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import zipapp
from pathlib import Path
from typing import Any

import yaml

from labctl.kube import artifacts, compat

from .common import CANAL_TOLERATIONS

DOUBLES_DIR = Path(__file__).resolve().parent
LABCTL_DIR = DOUBLES_DIR.parent.parent / "labctl"


def build(tool: str, target: Path, behaviour: dict[str, Any]) -> Path:
    """Write the double of `tool` (a module of this package with main(argv)) to target, executable."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        package = root / "doubles"
        package.mkdir()
        for source in DOUBLES_DIR.glob("*.py"):
            if source.name not in ("build.py", "image.py") and not source.name.startswith("test_"):
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
    the plugin with its tolerations, and net-conf.json with the pod network upstream ships (compat.CNI_MANIFEST_POD_CIDR)."""
    namespace = "kube-system" if cni == "canal" else "kube-flannel"
    containers = ["calico-node", "kube-flannel"] if cni == "canal" else ["kube-flannel"]
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"{cni}-config" if cni == "canal" else "kube-flannel-cfg", "namespace": namespace},
              "data": {"net-conf.json": json.dumps({"Network": compat.CNI_MANIFEST_POD_CIDR[cni],
                                                    "Backend": {"Type": "vxlan"}})}}
    # kube-flannel.yml tolerates every NoSchedule taint only.
    tolerations = CANAL_TOLERATIONS if cni == "canal" else [{"effect": "NoSchedule", "operator": "Exists"}]
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "canal" if cni == "canal" else "kube-flannel-ds", "namespace": namespace},
        "spec": {"template": {"metadata": {"labels": {"k8s-app": cni}}, "spec": {
            "tolerations": tolerations,
            "initContainers": [{"name": "install-cni", "image": f"docker.io/example/{cni}-cni:double"}],
            "containers": [{"name": name, "image": f"docker.io/example/{name}:double"} for name in containers]}}},
    }
    return yaml.safe_dump_all([config, daemonset], sort_keys=False)


def kubeadm_artifacts(root: Path, version: str, *, cni: str = "canal", fail: str | None = None,
                      runtime: str = "containerd", cache: Path | None = None) -> Path:
    """DIR/kubeadm/<version>/bin/{kubeadm,kubelet,kubectl,crictl}, DIR/kubeadm/<version>/images, DIR/cni/<cni>.yaml;
    DIR/cri-dockerd/bin/cri-dockerd for runtime docker. With cache (the host's apt builds it), images holds
    the etcd image, whose etcdutl restores snapshots (tests/doubles/image.py); without, images is empty."""
    behaviour = {"version": version, **({"fail": fail} if fail else {})}
    base = artifacts.kubeadm_dir(root, version)
    for tool in ("kubeadm", "kubelet", "kubectl", "crictl"):
        build(tool, base / "bin" / tool, behaviour)
    if runtime == "docker":
        build("cri_dockerd", root / "cri-dockerd" / "bin" / "cri-dockerd", {"version": "0.3.20"})
    (base / "images").mkdir(exist_ok=True)
    if cache is not None:
        from . import image  # only the restore needs the host's apt
        image.write_image(image.etcd_image(), artifacts.image_tarball(base / "images", image.ETCD_IMAGE), cache=cache)
    (root / "cni").mkdir(parents=True, exist_ok=True)
    (root / "cni" / f"{cni}.yaml").write_text(cni_manifest(cni))
    return root


def rke_artifacts(root: Path, rke_version: str) -> Path:
    """DIR/rke/<rke_version>/bin/{rke,kubectl}."""
    base = artifacts.rke_dir(root, rke_version)
    build("rke", base / "bin" / "rke", {"version": rke_version, "kubernetes": list(compat.RKE_RELEASES[rke_version])})
    build("kubectl", base / "bin" / "kubectl", {"version": rke_version})
    return root


# The air-gap install script's job, as get.rke2.io does it with INSTALL_RKE2_ARTIFACT_PATH: check
# the tarball against the release's checksum file, unpack it under /usr/local.
RKE2_INSTALL_SH = """#!/bin/sh
# install.sh double (tests/doubles): the artifact-path branch of https://get.rke2.io
set -eu
: "${INSTALL_RKE2_ARTIFACT_PATH:?this double installs from INSTALL_RKE2_ARTIFACT_PATH only}"
case "${INSTALL_RKE2_TYPE:-server}" in server|agent) ;; *) echo "invalid INSTALL_RKE2_TYPE" >&2; exit 1 ;; esac
cd "$INSTALL_RKE2_ARTIFACT_PATH"
grep ' rke2.linux-amd64.tar.gz$' sha256sum-amd64.txt | sha256sum -c -
tar -xzf rke2.linux-amd64.tar.gz -C /usr/local
systemctl daemon-reload
"""
RKE2_UNINSTALL_SH = """#!/bin/sh
# rke2-uninstall.sh double (tests/doubles)
systemctl stop rke2-server rke2-agent 2>/dev/null || true
systemctl disable rke2-server rke2-agent 2>/dev/null || true
rm -rf /var/lib/rancher/rke2 /etc/rancher/rke2
rm -f /usr/local/lib/systemd/system/rke2-server.service /usr/local/lib/systemd/system/rke2-agent.service \\
  /usr/local/bin/rke2 /usr/local/share/rke2/kubectl /usr/local/bin/rke2-uninstall.sh
systemctl daemon-reload
"""
RKE2_UNIT = """[Unit]
Description=Rancher Kubernetes Engine v2 ({kind}) - test double
Wants=network-online.target
After=network-online.target
Conflicts={other}.service

[Service]
Type=notify
ExecStart=/usr/local/bin/rke2 {kind}
Restart=always
RestartSec=5s
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
"""


def rke2_artifacts(root: Path, version: str) -> Path:
    """DIR/rke2/<version>/{install.sh, rke2.linux-amd64.tar.gz, rke2-images.linux-amd64.tar.zst, sha256sum-amd64.txt}.

    The tarball holds the rke2 double, its units, rke2-uninstall.sh and the kubectl double the
    server puts in /var/lib/rancher/rke2/bin; the image tarball is filler the doubles only look for.
    """
    base = artifacts.rke2_dir(root, version)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        build("rke2", tree / "bin" / "rke2", {"version": version})
        build("kubectl", tree / "share" / "rke2" / "kubectl", {"version": version})
        (tree / "bin" / "rke2-uninstall.sh").write_text(RKE2_UNINSTALL_SH)
        (tree / "bin" / "rke2-uninstall.sh").chmod(0o755)
        units = tree / "lib" / "systemd" / "system"
        units.mkdir(parents=True)
        for kind, other in (("server", "rke2-agent"), ("agent", "rke2-server")):
            (units / f"rke2-{kind}.service").write_text(RKE2_UNIT.format(kind=kind, other=other))
        with tarfile.open(base / "rke2.linux-amd64.tar.gz", "w:gz") as tar:
            for path in sorted(tree.rglob("*")):
                tar.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False)
    (base / "rke2-images.linux-amd64.tar.zst").write_bytes(b"image tarball filler for the rke2 double\n")
    (base / "install.sh").write_text(RKE2_INSTALL_SH)
    sums = "".join(f"{hashlib.sha256((base / name).read_bytes()).hexdigest()}  {name}\n"
                   for name in ("rke2.linux-amd64.tar.gz", "rke2-images.linux-amd64.tar.zst"))
    (base / "sha256sum-amd64.txt").write_text(sums)
    return root


# The rancher chart's values.yaml (https://github.com/rancher/rancher/blob/main/chart/values.yaml): its keys
# and defaults, with null for the keys it documents only in comments (hostname, extraEnv, proxy, ...).
# The helm double accepts exactly these keys; an empty map or null takes anything below it.
RANCHER_VALUES: dict[str, Any] = {
    "additionalTrustedCAs": False, "antiAffinity": "preferred", "topologyKey": "kubernetes.io/hostname",
    "auditLog": {"enabled": False, "destination": "sidecar", "hostPath": "/var/log/rancher/audit/", "level": 0,
                 "maxAge": 1, "maxBackup": 1, "maxSize": 100, "resources": {},
                 "image": {"repository": "rancher/mirrored-bci-micro", "tag": "15.6.24.2", "pullPolicy": "IfNotPresent"}},
    "addLocal": "true", "debug": False, "agentTLSMode": "", "extraEnv": None, "hostname": None, "imagePullSecrets": [],
    "ingress": {"enabled": True, "includeDefaultExtraAnnotations": True, "extraAnnotations": {}, "ingressClassName": "",
                "pathType": "ImplementationSpecific", "path": "/", "servicePort": 80, "configurationSnippet": None,
                "tls": {"source": "rancher", "secretName": "tls-rancher-ingress"}},
    "service": {"type": "", "annotations": {}},
    "letsEncrypt": {"email": None, "environment": "production", "ingress": {"class": ""}},
    "privateCA": False, "proxy": None, "noProxy": "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,.svc,.cluster.local",
    "rancherImage": "rancher/rancher", "rancherImageTag": None, "rancherImagePullPolicy": None, "replicas": 3,
    "priorityClassName": "rancher-critical", "resources": {}, "tls": "ingress", "systemDefaultRegistry": "",
    "useBundledSystemChart": False, "certmanager": {"version": ""},
    "customLogos": {"enabled": False, "volumeSubpaths": {"emberUi": "ember", "vueUi": "vue"},
                    "volumeKind": "persistentVolumeClaim", "volumeName": None, "storageClass": None,
                    "accessMode": "ReadWriteOnce", "size": "1Gi"},
    "postDelete": {"enabled": True, "image": {"repository": "rancher/shell", "tag": ""},
                   "namespaceList": ["cattle-fleet-system", "cattle-system", "rancher-operator-system"],
                   "timeout": 120, "ignoreTimeoutError": False},
    "bootstrapPassword": "",
    "startupProbe": {"timeoutSeconds": 5, "periodSeconds": 10, "failureThreshold": 12},
    "extraTolerations": {}, "extraNodeSelectorTerms": {},
    "livenessProbe": {"timeoutSeconds": 5, "periodSeconds": 30, "failureThreshold": 5},
    "readinessProbe": {"timeoutSeconds": 5, "periodSeconds": 30, "failureThreshold": 5},
    "webhook": "", "fleet": "",
}
# The top of cert-manager's values.yaml (deploy/charts/cert-manager/values.yaml): global settings, the CRD
# switches and the controller's; the chart's values.schema.json closes it to unknown keys, as the double does.
CERT_MANAGER_VALUES: dict[str, Any] = {
    "global": {"imagePullSecrets": [], "commonLabels": {}, "priorityClassName": "",
               "rbac": {"create": True, "aggregateClusterRoles": True},
               "podSecurityPolicy": {"enabled": False, "useAppArmor": True}, "logLevel": 2, "logFormat": "text",
               "leaderElection": {"namespace": "kube-system"}},
    "installCRDs": False, "crds": {"enabled": False, "keep": True}, "replicaCount": 1, "strategy": {},
    "podDisruptionBudget": {"enabled": False}, "featureGates": "", "maxConcurrentChallenges": 60,
    "image": {"repository": "quay.io/jetstack/cert-manager-controller", "pullPolicy": "IfNotPresent"},
    "clusterResourceNamespace": "", "namespace": "", "serviceAccount": {"create": True, "automountServiceAccountToken": True},
    "enableCertificateOwnerRef": False, "config": {}, "extraArgs": [], "extraEnv": [], "resources": {},
}


def chart_archive(path: Path, chart: dict[str, Any], values: dict[str, Any]) -> Path:
    """A chart .tgz as `helm package` lays it out: <name>/Chart.yaml and <name>/values.yaml."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("Chart.yaml", yaml.safe_dump(chart, sort_keys=False)), ("values.yaml", yaml.safe_dump(values))):
            data = text.encode()
            info = tarfile.TarInfo(f"{chart['name']}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def rancher_chart(version: str) -> dict[str, Any]:
    """Chart.yaml of rancher <version>: kubeVersion caps Kubernetes at the release's newest supported minor,
    as upstream writes it (`< 1.N.0-0`)."""
    support = compat.rancher_support(version)
    assert support is not None, f"no support row for Rancher {version}"
    newest = support.kubernetes[1]
    return {"apiVersion": "v2", "name": "rancher", "version": version.removeprefix("v"), "appVersion": version,
            "kubeVersion": f"< {newest[0]}.{newest[1] + 1}.0-0"}


def rancher_artifacts(root: Path, *, version: str = compat.DEFAULT_RANCHER,
                      cert_manager_version: str = compat.DEFAULT_CERT_MANAGER,
                      cluster_version: str = compat.DEFAULT_RANCHER_CLUSTER, fail: str | None = None) -> Path:
    """DIR/helm/bin/helm, DIR/charts/{cert-manager-<v>,rancher-<v>}.tgz and DIR/rke2/<cluster_version>/ (Rancher's own
    RKE2); fail names a release the helm double refuses to install."""
    build("helm", root / "helm" / "bin" / "helm", {"version": compat.DEFAULT_HELM, **({"fail": fail} if fail else {})})
    chart_archive(root / "charts" / f"cert-manager-{cert_manager_version}.tgz",
                  {"apiVersion": "v2", "name": "cert-manager", "version": cert_manager_version,
                   "appVersion": cert_manager_version, "kubeVersion": ">= 1.22.0-0"}, CERT_MANAGER_VALUES)
    chart_archive(root / "charts" / f"rancher-{version.removeprefix('v')}.tgz", rancher_chart(version), RANCHER_VALUES)
    return rke2_artifacts(root, cluster_version)


def rancher_docker_artifacts(root: Path, *, cache: Path, version: str = compat.DEFAULT_RANCHER) -> Path:
    """DIR/images/rancher_rancher_<version>.tar: the Rancher double's container image (tests/doubles/image.py)."""
    from . import image  # only docker-mode tests need the host's apt
    image.write_image(image.rancher_image(version), artifacts.image_tarball(root / "images", f"rancher/rancher:{version}"),
                      cache=cache)
    return root
