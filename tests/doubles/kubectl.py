"""kubectl double: get nodes/pods (json, wide, table), apply -f, rollout status and patch of a Deployment,
against the API server double.

The server and credential come from --kubeconfig (or $KUBECONFIG, ~/.kube/config) as kubectl
reads them; an unreachable server fails the way kubectl does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .common import APIError, Kubeconfig, api, die, record

TOOL = "kubectl"
SHORT = {"-n": "namespace", "-o": "output", "-l": "selector", "-f": "filename", "-p": "patch", "-s": "server"}
VALUED = {"kubeconfig", "namespace", "output", "selector", "filename", "patch", "timeout", "server"}
RESOURCES = {"node": "nodes", "nodes": "nodes", "no": "nodes", "pod": "pods", "pods": "pods", "po": "pods",
             "configmap": "configmaps", "configmaps": "configmaps", "cm": "configmaps"}
NAMESPACED = {"pods", "configmaps"}


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    words: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("-A", "--all-namespaces"):
            flags["all-namespaces"] = "true"
        elif arg in SHORT or (arg.startswith("--") and arg[2:].split("=")[0] in VALUED):
            name = SHORT.get(arg) or arg[2:].split("=")[0]
            if "=" in arg:
                flags[name] = arg.split("=", 1)[1]
            else:
                index += 1
                if index >= len(argv):
                    die(TOOL, f"error: flag needs an argument: {arg}")
                flags[name] = argv[index]
        elif arg.startswith("-") and arg != "-":
            die(TOOL, f"error: unknown flag: {arg}")
        else:
            words.append(arg)
        index += 1
    return flags, words


def kubeconfig(flags: dict[str, str]) -> Kubeconfig:
    path = flags.get("kubeconfig") or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    try:
        config = Kubeconfig(path)
    except OSError:
        die(TOOL, f"error: stat {path}: no such file or directory")
    config.server = flags.get("server", config.server)
    return config


def call(config: Kubeconfig, method: str, path: str, body: Any = None) -> Any:
    try:
        return api(config.server, method, path, body, credential=config.credential)
    except APIError as exc:
        die(TOOL, f"error: You must be logged in to the server ({exc})" if exc.status == 401 else f"Error from server: {exc}")
    except OSError as exc:
        host = config.server.split("://", 1)[-1]
        if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            die(TOOL, f"The connection to the server {host} was refused - did you specify the right host or port?")
        # A load balancer with no healthy backend closes the connection: kubectl says EOF.
        die(TOOL, f"Unable to connect to the server: {getattr(exc, 'reason', exc)}")


def _selected(item: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = item["metadata"].get("labels", {})
    return all(labels.get(key) == value for key, _, value in (term.partition("=") for term in selector.split(",")))


def _ready(node: dict[str, Any]) -> str:
    return "Ready" if node["status"]["conditions"][0]["status"] == "True" else "NotReady"


def _table(resource: str, items: list[dict[str, Any]], wide: bool, all_namespaces: bool) -> str:
    if resource == "nodes":
        rows = [["NAME", "STATUS", "ROLES", "VERSION", *(["INTERNAL-IP", "CONTAINER-RUNTIME"] if wide else [])]]
        for node in items:
            roles = ",".join(label.split("/", 1)[1] for label in node["metadata"]["labels"]
                             if label.startswith("node-role.kubernetes.io/")) or "<none>"
            info = node["status"]["nodeInfo"]
            rows.append([node["metadata"]["name"], _ready(node), roles, info["kubeletVersion"],
                         *([node["status"]["addresses"][0]["address"], info["containerRuntimeVersion"]] if wide else [])])
    elif resource == "configmaps":
        rows = [[*(["NAMESPACE"] if all_namespaces else []), "NAME", "DATA"]]
        rows += [[*([cm["metadata"]["namespace"]] if all_namespaces else []), cm["metadata"]["name"], str(len(cm.get("data", {})))]
                 for cm in items]
    else:
        rows = [[*(["NAMESPACE"] if all_namespaces else []), "NAME", "READY", "STATUS", *(["NODE"] if wide else [])]]
        for pod in items:
            statuses = pod["status"]["containerStatuses"]
            ready = f"{sum(1 for s in statuses if s['ready'])}/{len(statuses)}"
            rows.append([*([pod["metadata"]["namespace"]] if all_namespaces else []), pod["metadata"]["name"], ready,
                         pod["status"]["phase"], *([pod["spec"]["nodeName"] or "<none>"] if wide else [])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def get(flags: dict[str, str], words: list[str]) -> None:
    if not words:
        die(TOOL, "error: you must specify the type of resource to get")
    resources = []
    for name in words[0].split(","):
        if name not in RESOURCES:
            die(TOOL, f'error: the server doesn\'t have a resource type "{name}"')
        resources.append(RESOURCES[name])
    config = kubeconfig(flags)
    output = flags.get("output", "")
    all_namespaces = flags.get("all-namespaces") == "true"
    namespace = flags.get("namespace", "default")
    found: list[tuple[str, list[dict[str, Any]]]] = []
    for resource in resources:
        if resource == "configmaps":
            items = [{**o, "metadata": {"namespace": "default", **o["metadata"]}}
                     for o in call(config, "GET", "/objects")["items"] if o["kind"] == "ConfigMap"]
        else:
            items = call(config, "GET", f"/{resource}")["items"]
        if resource in NAMESPACED and not all_namespaces:
            items = [item for item in items if item["metadata"]["namespace"] == namespace]
        found.append((resource, [item for item in items if _selected(item, flags.get("selector"))]))
    if output == "json":
        items = [item for _, chunk in found for item in chunk]
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}},
                         indent=4))
        return
    if output not in ("", "wide"):
        die(TOOL, f"error: this kubectl double prints json, wide or tables, not {output!r}")
    tables = [_table(resource, items, output == "wide", all_namespaces) for resource, items in found if items]
    if not tables:
        print(f"No resources found in {namespace} namespace.", file=sys.stderr)
    print("\n\n".join(tables))


def apply(flags: dict[str, str]) -> None:
    source = flags.get("filename")
    if not source:
        die(TOOL, "error: must specify one of -f and -k")
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError:
        die(TOOL, f'error: the path "{source}" does not exist')
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        die(TOOL, f"error: error parsing {source}: {exc}")
    for doc in documents:
        missing = [field for field in ("apiVersion", "kind") if not doc.get(field)]
        if missing or not (doc.get("metadata") or {}).get("name"):
            die(TOOL, f"error: error validating \"{source}\": error validating data: "
                      f"[{', '.join(f'{m} not set' for m in missing) or 'metadata.name not set'}]")
    config = kubeconfig(flags)
    answer = call(config, "POST", "/objects", {"items": documents})
    record(TOOL, command="apply", source=source, kinds=[f"{d['kind']}/{d['metadata']['name']}" for d in documents])
    for result in answer["results"]:
        print(f"{result['kind'].lower()}/{result['name']} {result['result']}")


def _deployment(objects: list[dict[str, Any]], namespace: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == name and obj["metadata"].get("namespace", "default") == namespace:
            return obj
    die(TOOL, f'Error from server (NotFound): deployments.apps "{name}" not found')


def _deployment_name(words: list[str]) -> str:
    """deploy/NAME, deployment/NAME or `deployment NAME`."""
    kind, _, name = words[0].partition("/") if words else ("", "", "")
    if not name and len(words) > 1:
        kind, name = words[0], words[1]
    if kind not in ("deploy", "deployment", "deployments") or not name:
        die(TOOL, f"error: this kubectl double handles deployments only, not {' '.join(words)!r}")
    return name


def _timeout(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text or 0)


def rollout_status(flags: dict[str, str], words: list[str]) -> None:
    """Waits, as kubectl does, until the Deployment's replicas are available (its pods run)."""
    name, namespace = _deployment_name(words), flags.get("namespace", "default")
    config = kubeconfig(flags)
    deadline = time.monotonic() + (_timeout(flags.get("timeout", "0")) or float("inf"))
    while True:
        wanted = _deployment(call(config, "GET", "/objects")["items"], namespace, name)["spec"].get("replicas", 1)
        running = [p for p in call(config, "GET", "/pods")["items"]
                   if p["metadata"]["namespace"] == namespace and p["metadata"]["name"].rsplit("-", 1)[0] == name
                   and p["status"]["phase"] == "Running"]
        if len(running) >= wanted:
            record(TOOL, command="rollout status", deployment=name, namespace=namespace)
            print(f'deployment "{name}" successfully rolled out')
            return
        print(f'Waiting for deployment "{name}" rollout to finish: {len(running)} of {wanted} updated replicas are available...',
              flush=True)
        if time.monotonic() >= deadline:
            die(TOOL, "error: timed out waiting for the condition")
        time.sleep(2)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return patch
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def patch(flags: dict[str, str], words: list[str]) -> None:
    """kubectl patch deployment NAME -p JSON: a merge patch (lists replaced whole, as for hostAliases)."""
    name, namespace = _deployment_name(words), flags.get("namespace", "default")
    try:
        change = json.loads(flags.get("patch", ""))
    except ValueError:
        die(TOOL, "error: unable to parse \"" + flags.get("patch", "") + "\": not JSON")
    config = kubeconfig(flags)
    patched = merge_patch(_deployment(call(config, "GET", "/objects")["items"], namespace, name), change)
    call(config, "POST", "/objects", {"items": [patched]})
    record(TOOL, command="patch", deployment=name, namespace=namespace, patch=change)
    print(f"deployment.apps/{name} patched")


def main(argv: list[str]) -> None:
    flags, words = parse(argv)
    record(TOOL, words=words)
    if words[:1] == ["get"]:
        get(flags, words[1:])
    elif words[:1] == ["apply"]:
        apply(flags)
    elif words[:2] == ["rollout", "status"]:
        rollout_status(flags, words[2:])
    elif words[:1] == ["patch"]:
        patch(flags, words[1:])
    else:
        die(TOOL, f"this kubectl double does not implement `kubectl {' '.join(words)}`")
