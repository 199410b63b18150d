"""helm double: `helm upgrade --install RELEASE CHART.tgz ...` and `helm version`, against the API server double.

As helm does, it loads the chart archive (gzip tar with <name>/Chart.yaml and values.yaml), checks
Chart.yaml and its kubeVersion against the cluster's /version, needs the namespace unless
--create-namespace, and merges --values files and --set pairs over the chart's values. Where helm
passes an unknown value through silently (the rancher chart's schema is open), the double fails, as a
misspelt key would otherwise be dropped unnoticed. It renders the two charts labctl installs
(cert-manager, rancher) into the objects their templates make, stores them with a release record
(helm keeps releases in Secrets sh.helm.release.v1.<name>.v<revision>), and with --wait waits for
the release's Deployments to run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .common import APIError, Kubeconfig, api, behaviour, record

TOOL = "helm"
VALUED = {"namespace", "set", "values", "timeout", "version", "kubeconfig"}
SWITCHES = {"install", "create-namespace", "wait"}
SHORT = {"-n": "namespace", "-f": "values"}
REPEATED = {"set", "values"}
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
CRD_KINDS = {"Issuer": "issuers.cert-manager.io", "Certificate": "certificates.cert-manager.io"}


def fail(message: str) -> NoReturn:
    record(TOOL, error=message, exit=1)
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def parse(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    flags: dict[str, Any] = {name: [] for name in REPEATED}
    words: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in SHORT:
            name, equals, value = SHORT[arg], "", ""
        elif arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
        else:
            words.append(arg)
            index += 1
            continue
        if name in SWITCHES:
            flags[name] = True
        elif name in VALUED:
            if not equals:
                index += 1
                if index >= len(argv):
                    fail(f'flag needs an argument: --{name}')
                value = argv[index]
            if name in REPEATED:
                flags[name].append(value)
            else:
                flags[name] = value
        else:
            fail(f"unknown flag: {arg}")
        index += 1
    return flags, words


def duration(text: str) -> float:
    """A Go duration as helm takes it: 10m, 600s, 1h30m, 5m0s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        fail(f'invalid argument "{text}" for "--timeout" flag: time: invalid duration "{text}"')
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def _version_key(text: str) -> tuple[tuple[int, ...], bool]:
    """(1, 35, 3), is_prerelease: build metadata (+rke2r3) does not count, as in semver."""
    core, _, pre = text.lstrip("v").split("+")[0].partition("-")
    numbers = tuple(int(n) for n in core.split("."))
    return numbers + (0,) * (3 - len(numbers)), bool(pre)


def satisfies(version: str, constraint: str) -> bool:
    """helm's kubeVersion check (Masterminds semver): `||` of space- or comma-separated comparisons."""
    actual, _ = _version_key(version)
    for alternative in constraint.split("||"):
        terms = re.findall(r"(<=|>=|!=|=|<|>)?\s*(v?\d+(?:\.\d+){0,2}(?:-[0-9A-Za-z.-]+)?)", alternative)
        checks = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
                  ">=": lambda a, b: a >= b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "": lambda a, b: a == b}
        if terms and all(checks[op](actual, _version_key(bound)[0]) for op, bound in terms):
            return True
    return False


def load_chart(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Chart.yaml and values.yaml of a chart archive, with helm's errors for what it rejects."""
    if not os.path.exists(path):
        fail(f'path "{path}" not found' if path.startswith(("/", ".")) else f'repo {path.split("/")[0]} not found')
    data = Path(path).read_bytes()
    if data[:2] != b"\x1f\x8b":
        fail(f"file '{path}' does not appear to be a gzipped archive; got 'application/octet-stream'")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name.split("/", 1)[-1]] = tar.extractfile(member).read()
    if "Chart.yaml" not in files:
        fail("Chart.yaml file is missing")
    meta = yaml.safe_load(files["Chart.yaml"]) or {}
    for field in ("apiVersion", "name", "version"):
        if not meta.get(field):
            fail(f"validation: chart.metadata.{field} is required")
    if not re.match(r"^v?\d+\.\d+\.\d+", str(meta["version"])):
        fail(f'validation: chart.metadata.version "{meta["version"]}" is invalid')
    return meta, yaml.safe_load(files.get("values.yaml", b"")) or {}


def parse_set(pair: str) -> dict[str, Any]:
    """helm's --set a.b=c,d=e with its typing (true/false, integers, null)."""
    out: dict[str, Any] = {}
    for item in pair.split(","):
        key, equals, raw = item.partition("=")
        if not equals:
            fail(f"failed parsing --set data: key \"{key}\" has no value")
        value: Any = {"true": True, "false": False, "null": None}.get(raw, int(raw) if re.fullmatch(r"-?\d+", raw) else raw)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def unknown_keys(values: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys the chart does not have; an empty map or null in the chart's values takes anything below it."""
    unknown = []
    for key, value in values.items():
        if key not in defaults:
            unknown.append(prefix + key)
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and defaults[key]:
            unknown += unknown_keys(value, defaults[key], f"{prefix}{key}.")
    return unknown


def deployment(name: str, namespace: str, image: str, replicas: int, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": name}},
                                                       "spec": {"containers": [{"name": name, "image": image,
                                                                                "env": env or []}]}}}}


def render_cert_manager(meta: dict[str, Any], values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    tag = meta.get("appVersion") or meta["version"]
    objects = [deployment(f"cert-manager{part}", namespace, f"quay.io/jetstack/cert-manager-{image}:{tag}",
                          values.get("replicaCount", 1))
               for part, image in (("", "controller"), ("-cainjector", "cainjector"), ("-webhook", "webhook"))]
    if values.get("crds", {}).get("enabled") or values.get("installCRDs"):
        objects += [{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": crd}}
                    for crd in sorted(CRD_KINDS.values())]
    return objects


def render_rancher(meta: dict[str, Any], values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    hostname, source = values.get("hostname"), values["ingress"]["tls"]["source"]
    if source not in ("rancher", "letsEncrypt", "secret"):
        fail(f"execution error at (rancher/templates/ingress.yaml): ingress.tls.source {source!r} is not one of rancher, letsEncrypt, secret")
    image = f"{values['rancherImage']}:{values.get('rancherImageTag') or meta.get('appVersion')}"
    password = values.get("bootstrapPassword") or secrets.token_urlsafe(12)
    env = [{"name": "CATTLE_NAMESPACE", "value": namespace}, {"name": "CATTLE_PEER_SERVICE", "value": "rancher"},
           {"name": "CATTLE_BOOTSTRAP_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "bootstrap-secret", "key": "bootstrapPassword"}}}]
    objects = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bootstrap-secret", "namespace": namespace},
         "data": {"bootstrapPassword": base64.b64encode(password.encode()).decode()}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "rancher", "namespace": namespace}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rancher", "namespace": namespace}},
        deployment("rancher", namespace, image, values["replicas"], env),
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "rancher", "namespace": namespace},
         "spec": {"rules": [{"host": hostname}], "tls": [{"hosts": [hostname], "secretName": values["ingress"]["tls"]["secretName"]}]}},
    ]
    if source == "rancher":
        objects.append({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "rancher", "namespace": namespace}})
    return objects


CHARTS = {"cert-manager": render_cert_manager, "rancher": render_rancher}


class Cluster:
    def __init__(self, flags: dict[str, Any]):
        path = flags.get("kubeconfig") or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        try:
            self.config = Kubeconfig(path)
        except OSError:
            fail('Kubernetes cluster unreachable: Get "http://localhost:8080/version": dial tcp 127.0.0.1:8080: connect: connection refused')

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return api(self.config.server, method, path, body, credential=self.config.credential)
        except APIError as exc:
            fail(f"Kubernetes cluster unreachable: {exc}")
        except OSError as exc:
            fail(f'Kubernetes cluster unreachable: Get "{self.config.server}/version": {exc}')

    def objects(self) -> list[dict[str, Any]]:
        return self.call("GET", "/objects")["items"]


def wait_running(cluster: Cluster, namespace: str, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in cluster.call("GET", "/pods")["items"] if p["metadata"]["namespace"] == namespace]
        waiting = [n for n in names if not any(p["metadata"]["name"].rsplit("-", 1)[0] == n and p["status"]["phase"] == "Running"
                                               for p in pods)]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            fail("INSTALLATION FAILED: context deadline exceeded")
        time.sleep(2)


def upgrade(flags: dict[str, Any], words: list[str]) -> None:
    if len(words) != 2:
        fail('"helm upgrade" requires 2 arguments\n\nUsage:  helm upgrade [RELEASE] [CHART] [flags]')
    release, chart_path = words
    namespace = flags.get("namespace") or "default"
    timeout = duration(flags.get("timeout", "5m0s"))
    meta, defaults = load_chart(chart_path)
    cluster = Cluster(flags)
    server_version = cluster.call("GET", "/version")["gitVersion"]
    if meta.get("kubeVersion") and not satisfies(server_version, meta["kubeVersion"]):
        fail(f"chart requires kubeVersion: {meta['kubeVersion']} which is incompatible with Kubernetes {server_version}")
    supplied: dict[str, Any] = {}
    for path in flags["values"]:
        try:
            supplied = merge(supplied, yaml.safe_load(Path(path).read_text()) or {})
        except OSError:
            fail(f"open {path}: no such file or directory")
    for pair in flags["set"]:
        supplied = merge(supplied, parse_set(pair))
    unknown = unknown_keys(supplied, defaults)
    if unknown:
        fail("values don't meet the specifications of the schema(s) in the following chart(s):\n"
             f"{meta['name']}:\n" + "\n".join(f"- (root): Additional property {key} is not allowed" for key in unknown))
    values = merge(defaults, supplied)
    existing = cluster.objects()
    history = sorted(int(o["metadata"]["labels"]["version"]) for o in existing
                     if o["kind"] == "Secret" and o["metadata"].get("namespace") == namespace
                     and o["metadata"].get("labels", {}).get("owner") == "helm" and o["metadata"]["labels"].get("name") == release)
    if not history and not flags.get("install"):
        fail(f'UPGRADE FAILED: "{release}" has no deployed releases')
    namespaces = BUILTIN_NAMESPACES | {o["metadata"]["name"] for o in existing if o["kind"] == "Namespace"}
    objects: list[dict[str, Any]] = []
    if namespace not in namespaces:
        if not flags.get("create-namespace"):
            fail(f'INSTALLATION FAILED: create: failed to create: namespaces "{namespace}" not found')
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if behaviour().get("fail") == release:
        fail(f"INSTALLATION FAILED: this helm double was built to fail the install of release {release}")
    render = CHARTS.get(meta["name"])
    if render is None:
        fail(f"this helm double renders the charts {sorted(CHARTS)} only, not {meta['name']}")
    rendered = render(meta, values, namespace)
    crds = {o["metadata"]["name"] for o in existing + rendered if o["kind"] == "CustomResourceDefinition"}
    for obj in rendered:
        if obj["kind"] in CRD_KINDS and CRD_KINDS[obj["kind"]] not in crds:
            fail("unable to build kubernetes objects from release manifest: resource mapping not found for name: "
                 f'"{obj["metadata"]["name"]}" namespace: "{namespace}" from "": no matches for kind "{obj["kind"]}" '
                 f'in version "{obj["apiVersion"]}"\nensure CRDs are installed first')
    revision = (history[-1] if history else 0) + 1
    info = {"name": release, "namespace": namespace, "revision": revision, "chart": meta["name"],
            "chart_version": str(meta["version"]), "app_version": str(meta.get("appVersion", "")), "values": supplied}
    objects += rendered
    objects.append({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                    "metadata": {"name": f"sh.helm.release.v1.{release}.v{revision}", "namespace": namespace,
                                 "labels": {"name": release, "owner": "helm", "status": "deployed", "version": str(revision)}},
                    "data": {"release": base64.b64encode(json.dumps(info).encode()).decode()}})
    if revision == 1:
        print(f'Release "{release}" does not exist. Installing it now.')
    cluster.call("POST", "/objects", {"items": objects})
    if flags.get("wait"):
        wait_running(cluster, namespace, [o["metadata"]["name"] for o in rendered if o["kind"] == "Deployment"], timeout)
    record(TOOL, command="upgrade", release=release, namespace=namespace, revision=revision, chart=meta["name"],
           chart_version=str(meta["version"]), values=supplied)
    print(f"NAME: {release}\nLAST DEPLOYED: {time.ctime()}\nNAMESPACE: {namespace}\nSTATUS: deployed\nREVISION: {revision}")


def main(argv: list[str]) -> None:
    flags, words = parse(argv)
    if words[:1] == ["upgrade"]:
        upgrade(flags, words[1:])
    elif words[:1] == ["version"]:
        print(f'version.BuildInfo{{Version:"{behaviour().get("version", "v3")}", GitCommit:"labctl-double"}}')
    else:
        fail(f"this helm double does not implement `helm {' '.join(argv)}`")
