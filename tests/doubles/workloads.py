"""The containers a node double runs: for each Running pod the API double places on this node whose
Deployment's image is one the doubles implement, its entry point in a thread (once per Deployment)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from . import rancher
from .common import APIError, api, record

IMAGES = {"rancher/rancher": rancher.serve, "rancher/rancher-agent": rancher.agent}


def start_pods(server: str, credential: str, node: str, data_dir: Path, started: set[tuple[str, str]]) -> None:
    pods = api(server, "GET", "/pods", credential=credential)["items"]
    deployments = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                   for o in api(server, "GET", "/objects", credential=credential)["items"] if o["kind"] == "Deployment"}
    for pod in pods:
        if pod["spec"]["nodeName"] != node or pod["status"]["phase"] != "Running":
            continue
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"].rsplit("-", 1)[0])
        owner = deployments.get(key)
        if owner is None or key in started:
            continue
        image = owner["spec"]["template"]["spec"]["containers"][0].get("image", "")
        entry = IMAGES.get(image.rsplit(":", 1)[0])
        if entry is None:
            continue
        started.add(key)
        record("workloads", event="start", node=node, namespace=key[0], deployment=key[1], image=image)
        pod = rancher.Pod(server, credential, key[0], key[1], data_dir)
        threading.Thread(target=_run, args=(entry, pod, started, key), daemon=True).start()


def _run(entry, pod: rancher.Pod, started: set[tuple[str, str]], key: tuple[str, str]) -> None:
    """A container that exits is started again on the next round, as the kubelet restarts it."""
    try:
        entry(pod)
    except Exception as exc:  # noqa: BLE001 - whatever the container died of goes to the log
        record("workloads", event="crashed", deployment=key[1], error=f"{type(exc).__name__}: {exc}")
        started.discard(key)


def run_forever(server: str, credential: str, node: str, data_dir: Path) -> None:
    started: set[tuple[str, str]] = set()
    while True:
        try:
            start_pods(server, credential, node, data_dir, started)
        except (OSError, APIError) as exc:
            record("workloads", event="error", error=str(exc))
        time.sleep(5)
