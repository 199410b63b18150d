"""Benchmark labctl against a bare libvirt baseline, inside a fresh network namespace.

For one lab (the default lab unless told otherwise) it measures: `labctl up` from nothing to
every node provisioned, the moment every node was ready (booted, SSH, cloud-init done) as
labctl's progress lines report it, a second `up` on the running lab, `labctl down`, each node's
disk overlay allocation after `up`, and labctl's peak resident memory. Then bench/baseline.py
boots as many guests of the same size from the same image with nothing but libvirt-python.

Prints a table and writes bench/results/latest.json. Run as root from the repository:
    .venv/bin/python -m bench.run [--lab default] [--baseline-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labctl import aptrepo, images, names
from labctl.keys import ensure_keys
from labctl.lab import Lab, load_lab
from labctl.provision.run import lab_packages
from tests.e2e.harness import Labctl, LabNamespace

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "latest.json"
IMAGE = "debian-12"
SUITE = "bookworm"
# Reporter's non-terminal format: "[  54.3s] kube-master: ready (192.168.150.12)"
READY_LINE = re.compile(r"^\[\s*([\d.]+)s\] (\S+): ready\b", re.MULTILINE)


class Measured:
    def __init__(self, result: subprocess.CompletedProcess[str], seconds: float, peak_rss_kib: int):
        self.result = result
        self.seconds = seconds
        self.peak_rss_kib = peak_rss_kib


def measure(argv: list[str], env: dict[str, str], timeout: float) -> Measured:
    """Run argv; wall time and the process's peak RSS (VmHWM, polled while it runs)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_kib(proc.pid))
            if time.monotonic() - start > timeout:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"{' '.join(argv)} exceeded {timeout:.0f} s")
            time.sleep(0.2)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return Measured(result, seconds, peak)


def _vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def vms_ready_seconds(progress: str, node_names: list[str]) -> float | None:
    """When the last node first reported `ready`, from labctl's timestamped progress lines."""
    first: dict[str, float] = {}
    for seconds, node in READY_LINE.findall(progress):
        first.setdefault(node, float(seconds))
    if set(first) != set(node_names):
        return None
    return max(first.values())


def overlay_bytes(ns: LabNamespace, domains: list[str]) -> dict[str, int]:
    """Host disk each domain's writable disk occupies (qcow2 allocation above the shared base)."""
    sizes = {}
    for domain in domains:
        rows = ns.virsh("domblklist", domain, "--details", check=True).stdout.splitlines()
        path = next(row.split()[3] for row in rows if row.split()[1:2] == ["disk"])
        info = ns.run(["qemu-img", "info", "--force-share", "--output=json", path], check=True).stdout
        sizes[domain] = json.loads(info)["actual-size"]
    return sizes


def bench_labctl(ns: LabNamespace, labctl: Labctl, lab: Lab, lab_ref: str, timeout: float, bake: bool) -> dict:
    node_names = [node.name for node in lab.nodes]

    def step(*args: str) -> Measured:
        print(f"== labctl {' '.join(args)}", file=sys.stderr, flush=True)
        return measure(ns.command(labctl.argv(*args)), ns.full_env(labctl.env), timeout)

    # Image and package repository come from the Debian archive through the host's apt, so they
    # are made in the main namespace; both are cached by content hash and quick once made.
    print(f"== labctl image build {IMAGE} (main namespace)", file=sys.stderr, flush=True)
    build = measure(labctl.argv("image", "build", IMAGE), {**os.environ, **labctl.env}, timeout)
    repo_start = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        aptrepo.build_repo(lab_packages(lab, ensure_keys(lab, Path(scratch))), suite=SUITE, arch="amd64")
    repo_seconds = time.monotonic() - repo_start
    cold = step("up", lab_ref)
    disks = overlay_bytes(ns, [names.domain_name(lab, node) for node in lab.nodes])
    warm = step("up", lab_ref)
    down = step("down", lab_ref)
    leftovers = ns.virsh("list", "--all", "--name").stdout.split()
    if leftovers:
        raise RuntimeError(f"labctl down left domains behind: {leftovers}")
    baked = bench_bake(step, lab_ref) if bake else {}
    return {
        "image_build_seconds": round(build.seconds, 1),
        "repo_build_seconds": round(repo_seconds, 1),
        "up_cold_seconds": round(cold.seconds, 1),
        "vms_ready_seconds": vms_ready_seconds(cold.result.stderr, node_names),
        "up_warm_seconds": round(warm.seconds, 1),
        "down_seconds": round(down.seconds, 1),
        "disk_bytes_per_node": disks,
        "peak_rss_mib": round(max(m.peak_rss_kib for m in (build, cold, warm, down)) / 1024, 1),
        **baked,
    }


def bench_bake(step, lab_ref: str) -> dict:
    """`labctl image bake`, then `up` cold from the layers; the layers are removed afterwards."""
    bake = step("image", "bake", lab_ref, "--json")
    layers = json.loads(bake.result.stdout)
    cold = step("up", lab_ref)
    step("down", lab_ref)
    for layer in layers:
        step("image", "rm", layer["name"])
    return {
        "bake_seconds": round(bake.seconds, 1),
        "baked_layers": len(layers),
        "layer_bytes": sum(layer["size"] for layer in layers),
        "up_cold_baked_seconds": round(cold.seconds, 1),
    }


def bench_baseline(ns: LabNamespace, image: Path, lab: Lab, timeout: float) -> dict:
    """The baseline boots as many guests as the lab has, sized like its first node."""
    node = lab.nodes[0]
    print(f"== baseline: {len(lab.nodes)} guests", file=sys.stderr, flush=True)
    argv = [sys.executable, str(REPO / "bench" / "baseline.py"), str(image), "--nodes", str(len(lab.nodes)),
            "--vcpus", str(node.vcpus), "--memory-mib", str(node.memory_mib),
            "--disk-bytes", str(node.disk_bytes), "--timeout", str(timeout)]
    result = ns.run(argv, timeout=timeout + 120)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"baseline failed with exit status {result.returncode}")
    return json.loads(result.stdout)


def table(results: dict) -> str:
    rows = []
    lab = results.get("labctl")
    base = results["baseline"]
    if lab:
        mean_disk = sum(lab["disk_bytes_per_node"].values()) / len(lab["disk_bytes_per_node"])
        rows += [
            ("labctl image build (cached after the first run)", f"{lab['image_build_seconds']} s"),
            ("package repository build (cached likewise)", f"{lab['repo_build_seconds']} s"),
            (f"labctl up, cold, {base['nodes']} nodes, provisioned", f"{lab['up_cold_seconds']} s"),
            ("  of which until every node was ready", _seconds(lab["vms_ready_seconds"])),
            ("labctl up, warm (lab running)", f"{lab['up_warm_seconds']} s"),
            ("labctl down", f"{lab['down_seconds']} s"),
        ]
        if "bake_seconds" in lab:
            rows += [
                (f"labctl image bake ({lab['baked_layers']} layers, {lab['layer_bytes'] / 2**20:.0f} MiB)",
                 f"{lab['bake_seconds']} s"),
                ("labctl up, cold from the baked layers, provisioned", f"{lab['up_cold_baked_seconds']} s"),
            ]
        rows += [
            ("disk per node after up (overlay)", f"{mean_disk / 2**20:.0f} MiB"),
            ("labctl peak RSS", f"{lab['peak_rss_mib']} MiB"),
        ]
    rows.append((f"baseline boot, {base['nodes']} nodes, to ready", f"{base['boot_seconds']} s"))
    if lab and lab["vms_ready_seconds"]:
        rows.append(("ratio labctl ready / baseline ready", f"{results['ratio_ready']:.2f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _seconds(value: float | None) -> str:
    return "n/a (no ready lines in labctl's progress)" if value is None else f"{value} s"


def main() -> int:
    parser = argparse.ArgumentParser(description="labctl benchmark against a bare libvirt baseline")
    parser.add_argument("--lab", default="default", help="lab name or file (default: the embedded default lab)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="skip labctl; boot only the baseline guests from the cached image")
    parser.add_argument("--no-bake", action="store_true", help="skip `labctl image bake` and the up from its layers")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds any one step may take")
    args = parser.parse_args()
    # Turn both into exceptions, even where a background launch ignores SIGINT, so the namespace
    # and its guests are torn down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    results: dict = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
    }
    with LabNamespace() as ns:
        labctl = Labctl(ns, Path(sys.executable).parent / "labctl")
        os.environ.update(labctl.env)  # labctl's own modules below read the same home
        lab, _ = load_lab(args.lab)
        results["lab"] = {"name": lab.name, "nodes": len(lab.nodes), "vcpus": lab.nodes[0].vcpus,
                          "memory_mib": lab.nodes[0].memory_mib}
        if not args.baseline_only:
            results["labctl"] = bench_labctl(ns, labctl, lab, args.lab, args.timeout, bake=not args.no_bake)
        image = images.image_path(IMAGE)
        if not image.is_file():
            parser.error(f"{image} is missing: run `labctl image build {IMAGE}` first (or drop --baseline-only)")
        results["baseline"] = bench_baseline(ns, image, lab, args.timeout)
    results["host"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    lab = results.get("labctl")
    if lab and lab["vms_ready_seconds"]:
        results["ratio_ready"] = round(lab["vms_ready_seconds"] / results["baseline"]["boot_seconds"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
