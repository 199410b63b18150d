"""One function per verb. The CLI only parses arguments, calls these, and prints what they return."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labctl import accel, aptrepo, bake, hostfirewall, images, names, paths, render
from labctl.errors import InvalidInput, NotOwned, WaitTimeout
from labctl.hypervisor import Hypervisor
from labctl.keys import LabKeys, ensure_keys
from labctl.kube import artifacts, kubeadm
from labctl.kube.bootstrap import Outcome, bootstrap
from labctl.kube.checks import check_lab as check_kubernetes
from labctl.lab import Accel, Lab, Node, load_lab
from labctl.parallel import in_parallel
from labctl.progress import Reporter
from labctl.provision.packages import check_source as check_package_source
from labctl.provision.packages import local_repository
from labctl.provision.playbook import load_playbook, render_steps
from labctl.provision.ports import check_node_ports as check_ports
from labctl.provision.run import (
    ProvisionSummary,
    lab_packages,
    node_packages,
    run_playbooks,
)
from labctl.provision.runner import NodeRun
from labctl.ready import NodeWait, probe_quick
from labctl.transport import Result, SSHExecutor


def load(ref: str | Path) -> Lab:
    """A lab file, validated as a whole: the model, then the checks that need several sections."""
    lab, path = load_lab(ref)
    check_kubernetes(lab, source=str(path))
    check_ports(lab)
    check_package_source(lab)
    return lab


@dataclass(frozen=True)
class NodeStatus:
    name: str
    roles: list[str]
    state: str
    ip: str
    vcpus: int
    memory_mib: int


def lab_keys(lab: Lab) -> LabKeys:
    return ensure_keys(lab, paths.lab_dir(lab.name) / "ssh")


def executor(lab: Lab, node: Node, keys: LabKeys | None = None) -> SSHExecutor:
    keys = keys or lab_keys(lab)
    return SSHExecutor(node.name, str(node.ip), user=lab.ssh_user,
                       key_path=keys.private_key_path, known_hosts=keys.known_hosts_path)


def executors(lab: Lab, keys: LabKeys | None = None) -> dict[str, SSHExecutor]:
    keys = keys or lab_keys(lab)
    return {node.name: executor(lab, node, keys) for node in lab.nodes}


def console_log(lab: Lab, node: Node) -> Path:
    return paths.lab_dir(lab.name) / "console" / f"{node.name}.log"


def _state_file(lab: Lab) -> Path:
    return paths.lab_dir(lab.name) / "state.json"


def _load_state(lab: Lab) -> dict:
    try:
        return json.loads(_state_file(lab).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(lab: Lab, state: dict) -> None:
    path = _state_file(lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


# ---- up ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpResult:
    nodes: list[NodeStatus]
    provisioning: ProvisionSummary
    kubernetes: Outcome | None


def up(lab: Lab, uri: str, *, reporter: Reporter, accel_override: Accel | None = None) -> UpResult:
    """Bring the lab to the state its file describes: VMs ready, provisioned, Kubernetes up.

    Every phase skips what is already done, so `up` also resumes a failed or interrupted run.
    """
    # A missing or wrong air-gapped file is reported before any VM exists, not after provisioning.
    artifacts.check(lab)
    keys = lab_keys(lab)
    execs = executors(lab, keys)
    try:
        # The probes' connections to nodes that are already up carry on into provisioning.
        statuses = start_vms(lab, uri, reporter=reporter, accel_override=accel_override, ssh=execs)
        summary = run_playbooks(lab, execs, reporter=reporter, state_dir=paths.lab_dir(lab.name), keys=keys)
        outcome = None
        if lab.kubernetes.distro != "none" or lab.kubernetes.rancher.enabled:
            outcome = bootstrap(lab, execs, reporter=reporter, state_dir=paths.lab_dir(lab.name))
    finally:
        for ssh in execs.values():
            ssh.close()
    return UpResult(statuses, summary, outcome)


def start_vms(lab: Lab, uri: str, *, reporter: Reporter, accel_override: Accel | None = None,
              ssh: dict[str, SSHExecutor] | None = None) -> list[NodeStatus]:
    """Create whatever VM of the lab is missing, start it, and wait until every node is ready.

    Connections in `ssh` are the caller's to close; without it, connections are made and closed here.
    """
    image_records = {name: images.resolve(name) for name in sorted({n.image for n in lab.nodes})}
    keys = lab_keys(lab)
    owned = ssh is None
    ssh = ssh if ssh is not None else executors(lab, keys)
    state = _load_state(lab)
    with Hypervisor(uri) as hv:
        choice = accel.choose(accel_override or lab.accel, local=hv.is_local)
        if choice.warning:
            reporter.warn(choice.warning)
        bases = _ensure_base_volumes(hv, image_records, reporter)
        pool = hv.ensure_pool(names.pool_name(lab), render.pool_xml(names.pool_name(lab), _pool_path(lab)),
                              _pool_path(lab))
        network = hv.ensure_network(names.network_name(lab), render.network_xml(lab), lab.network.subnet)
        if hv.is_local:  # a remote host's firewalld is not ours to change
            hostfirewall.allow_bridge(names.bridge_name(lab), paths.lab_dir(lab.name), reporter=reporter)
        backing = _node_backing(hv, lab, keys, image_records, bases, reporter)
        domains = {node.name: _ensure_domain(hv, pool, lab, node, keys, backing[node.name], choice.domain_type)
                   for node in lab.nodes}
        layered = sorted(name for name, (_, fresh) in domains.items() if fresh and backing[name] not in bases.values())
        if layered:
            reporter.info(f"{', '.join(layered)}: disk over a baked layer (packages already installed)")

        def already_up(node: Node) -> bool:
            dom, fresh = domains[node.name]
            return (not fresh and state.get("ready", {}).get(node.name, False) and dom.isActive()
                    and probe_quick(ssh[node.name]))

        up_now = dict(zip([n.name for n in lab.nodes], in_parallel(lab.nodes, already_up, "probing")))
        waits = []
        for node in lab.nodes:
            dom, _ = domains[node.name]
            if up_now[node.name]:
                if owned:
                    ssh[node.name].close()
                reporter.phase(node.name, "ready", "already up")
                continue
            hv.start_domain(dom)
            reporter.phase(node.name, "boot", choice.domain_type)
            waits.append(NodeWait(hv, network, dom, node.name, node.mac, ssh[node.name], console_log(lab, node),
                                  reporter, lab.timeouts.ready))
        try:
            in_parallel(waits, NodeWait.run, "starting")
        finally:
            for wait in waits:
                wait.executor.close()
        state.setdefault("ready", {}).update({node.name: True for node in lab.nodes})
        _save_state(lab, state)
        return _statuses(hv, lab)


def _pool_path(lab: Lab) -> Path:
    return paths.storage_dir() / lab.name


def _ensure_base_volumes(hv: Hypervisor, records: dict, reporter: Reporter) -> dict[str, str]:
    pool_path = paths.storage_dir() / "images"
    pool = hv.ensure_pool(names.IMAGES_POOL, render.pool_xml(names.IMAGES_POOL, pool_path), pool_path)
    bases = {}
    for name, record in records.items():
        vol_name = names.base_volume(name, record.sha256)
        vol = hv.volume(pool, vol_name)
        if vol is None:
            reporter.info(f"copying image {name} into the libvirt pool {names.IMAGES_POOL}")
            with open(record.path, "rb") as source:
                bases[name] = hv.upload_volume(pool, vol_name, source, record.path.stat().st_size, "qcow2")
        else:
            bases[name] = vol.path()
    return bases


def _node_backing(hv: Hypervisor, lab: Lab, keys: LabKeys, records: dict, bases: dict[str, str],
                  reporter: Reporter) -> dict[str, str]:
    """Each node's backing file: the layer baked for it when there is one that fits, else its base image."""
    backing = {node.name: bases[node.image] for node in lab.nodes}
    if not lab.provisioning.enabled:
        return backing
    pool = hv.pool(names.IMAGES_POOL)
    for layer in _layer_plan(lab, keys, records):
        vol = hv.volume(pool, layer.volume)
        if vol is None:
            continue
        capacity = vol.info()[1]
        for node in map(lab.node, layer.nodes):
            if capacity <= node.disk:
                backing[node.name] = vol.path()
            else:
                reporter.info(f"{node.name}: baked layer {layer.volume} is larger than its disk; using the base image")
    return backing


def _layer_plan(lab: Lab, keys: LabKeys, records: dict) -> list[bake.Layer]:
    """The baked layers the lab's nodes would use, keyed by their base image volumes."""
    volumes = {name: names.base_volume(name, record.sha256) for name, record in records.items()}
    return bake.plan(lab, volumes, node_packages(lab, keys))


def _ensure_domain(hv: Hypervisor, pool, lab: Lab, node: Node, keys: LabKeys, base: str, domain_type: str):
    """The node's domain, defined with its overlay and seed if missing. Returns (domain, fresh)."""
    name = names.domain_name(lab, node)
    dom = hv.domain(name)
    if dom is not None:
        if hv.domain_spec(dom) != render.node_spec_hash(lab, node):
            raise InvalidInput(
                f"node {node.name} exists with another size, image or address than the lab file gives",
                resolution=f"`labctl down {lab.name}` and `up` again to rebuild the lab from the file",
            )
        return dom, False
    for vol_name in (names.disk_volume(node), names.seed_volume(node)):
        stale = hv.volume(pool, vol_name)
        if stale is not None:  # left by an interrupted `up`; the domain never used it
            stale.delete(0)
    disk = hv.create_overlay(pool, names.disk_volume(node), base, node.disk)
    iso = render.seed_iso(render.cloud_init(lab, node, keys))
    seed = hv.upload_volume(pool, names.seed_volume(node), _BytesSource(iso), len(iso), "raw")
    log = console_log(lab, node)
    log.parent.mkdir(parents=True, exist_ok=True)
    xml = render.domain_xml(lab, node, domain_type=domain_type, disk_path=disk, seed_path=seed,
                            console_log=str(log))
    return hv.define_domain(xml), True


class _BytesSource:
    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._offset = 0

    def read(self, size: int) -> bytes:
        chunk = self._data[self._offset:self._offset + size]
        self._offset += len(chunk)
        return bytes(chunk)


def build_package_repos(lab: Lab) -> list[Path]:
    """Build on the host, now, the local apt repositories `up` will serve (packages.source local).

    `up` builds them itself when missing; doing it beforehand lets `up` run where the host
    cannot reach the archive at that moment (an isolated namespace, a train).
    """
    if lab.packages.source != "local":
        return []
    suites = {images.resolve(node.image).suite for node in lab.nodes}
    if len(suites) != 1 or None in suites:
        raise InvalidInput(
            f"packages.source local needs every node on one known release; the images give {sorted(map(str, suites))}",
            resolution="give every node the same catalog or built image, or use packages.source mirror or distro",
        )
    suite = suites.pop()
    package_sets = [lab_packages(lab, lab_keys(lab))]
    if lab.kubernetes.distro == "kubeadm":
        package_sets.append(kubeadm.apt_packages(lab))
    return [aptrepo.build_repo(packages, suite=suite, arch="amd64") for packages in package_sets]


# ---- image bake ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BakedLayer:
    name: str
    image: str
    nodes: list[str]
    packages: list[str]
    size: int  # bytes the layer occupies on the host
    seconds: float | None  # time to bake it; None when it was there already


def bake_images(lab: Lab, uri: str, *, reporter: Reporter) -> list[BakedLayer]:
    """Make the baked layers the lab's nodes would use that do not exist yet (see labctl.bake)."""
    if not lab.provisioning.enabled:
        raise InvalidInput(f"lab {lab.name} has provisioning.enabled: false, so its nodes start from the base image",
                           resolution="enable provisioning in the lab file, or skip `image bake` for this lab")
    records = {name: images.resolve(name) for name in sorted({n.image for n in lab.nodes})}
    with Hypervisor(uri) as hv:
        _ensure_base_volumes(hv, records, reporter)
        layers = _layer_plan(lab, lab_keys(lab), records)
        if not layers:
            raise InvalidInput(f"the playbooks install no packages on lab {lab.name}'s nodes: nothing to bake")
        images_pool = hv.pool(names.IMAGES_POOL)
        todo = [layer for layer in layers if hv.volume(images_pool, layer.volume) is None]
        subnet = hv.free_subnet(bake.SUBNETS) if todo else None
    seconds: dict[str, float] = {}
    if todo:
        temp = bake.bake_lab(lab, todo, subnet)
        down(temp, uri, reporter=reporter)  # what an interrupted bake left
        try:
            seconds = _bake(lab, temp, todo, uri, records, reporter)
        finally:
            down(temp, uri, reporter=reporter)
    with Hypervisor(uri) as hv:
        pool = hv.pool(names.IMAGES_POOL)
        return [BakedLayer(layer.volume, layer.image, list(layer.nodes), list(layer.packages),
                           hv.volume(pool, layer.volume).info()[2], seconds.get(layer.key))
                for layer in layers]


def _bake(lab: Lab, temp: Lab, layers: list[bake.Layer], uri: str, records: dict,
          reporter: Reporter) -> dict[str, float]:
    start = time.monotonic()
    keys = lab_keys(temp)
    playbook = load_playbook()
    execs = executors(temp, keys)
    seconds: dict[str, float] = {}

    def bake_one(pair: tuple[Node, bake.Layer]) -> None:
        node, layer = pair
        ssh = execs[node.name]
        steps = [s for s in render_steps(playbook, temp, node, keys) if s.name == "apt-source"]
        run = NodeRun(ssh, [*steps, bake.install_step(playbook, layer)], {}, reporter=reporter,
                      log_dir=paths.lab_dir(lab.name) / "bake-logs", force=True, attempts=temp.provisioning.retries,
                      default_timeout=temp.provisioning.step_timeout)
        run.run()
        reporter.phase(node.name, "cleaning", "user, keys, cloud-init state, apt lists")
        ssh.run(bake.cleanup_script(temp.ssh_user), sudo=True)
        ssh.close()
        with Hypervisor(uri) as hv:
            dom = hv.domain(names.domain_name(temp, node))
            if not hv.wait_shut_off(dom, timeout=600):
                raise WaitTimeout(f"bake VM {node.name} did not power off within 600 s",
                                  resolution=f"see its console log {console_log(temp, node)}")
            reporter.phase(node.name, "saving", layer.volume)
            disk = hv.volume(hv.pool(names.pool_name(temp)), names.disk_volume(node))
            hv.copy_volume(disk, hv.pool(names.IMAGES_POOL), layer.volume)
        seconds[layer.key] = round(time.monotonic() - start, 1)
        reporter.phase(node.name, "baked", layer.volume)

    source = contextlib.nullcontext()
    if lab.packages.source == "local":
        suite = records[layers[0].image].suite
        source = local_repository(temp, lab_packages(lab, lab_keys(lab)), suite=suite, arch="amd64",
                                  reporter=reporter)
    try:
        start_vms(temp, uri, reporter=reporter, ssh=execs)
        with source:
            in_parallel(list(zip(temp.nodes, layers)), bake_one, "baking")
    finally:
        for ssh in execs.values():
            ssh.close()
    return seconds


def baked_layers(uri: str) -> list[dict]:
    """Every baked layer in the images pool, with the lab volumes backed by it."""
    with Hypervisor(uri) as hv:
        pool = hv.pool(names.IMAGES_POOL)
        if pool is None:
            return []
        pool.refresh(0)
        users = hv.backing_paths()
        return [{"name": vol.name(), "path": vol.path(), "size": vol.info()[2],
                 "used_by": sorted(path for path, backing in users.items() if backing == vol.path())}
                for vol in hv.volumes(pool) if vol.name().startswith(names.LAYER_PREFIX)]


def remove_layer(uri: str, name: str) -> None:
    """Delete a baked layer no lab disk is backed by."""
    layer = next((layer for layer in baked_layers(uri) if layer["name"] == name), None)
    if layer is None:
        raise InvalidInput(f"no baked layer {name}", resolution="see `labctl image layers`")
    if layer["used_by"]:
        raise InvalidInput(f"baked layer {name} backs {len(layer['used_by'])} lab disk(s)",
                           details="\n".join(f"  {path}" for path in layer["used_by"]),
                           resolution="`labctl down` the labs using it first")
    with Hypervisor(uri) as hv:
        hv.volume(hv.pool(names.IMAGES_POOL), name).delete(0)


# ---- status, down, render, ssh ------------------------------------------------------------------


def status(lab: Lab, uri: str) -> list[NodeStatus]:
    with Hypervisor(uri) as hv:
        return _statuses(hv, lab)


def _statuses(hv: Hypervisor, lab: Lab) -> list[NodeStatus]:
    result = []
    for node in lab.nodes:
        dom = hv.domain(names.domain_name(lab, node))
        info = hv.domain_info(dom) if dom is not None else None
        result.append(NodeStatus(
            name=node.name, roles=[r.value for r in node.roles],
            state=info.state if info else "absent", ip=str(node.ip),
            vcpus=info.vcpus if info else node.vcpus,
            memory_mib=info.memory_mib if info else node.memory_mib,
        ))
    return result


def down(lab: Lab, uri: str, *, reporter: Reporter) -> None:
    """Remove every domain, volume, pool and network labctl made for the lab, and its state."""
    refused: list[str] = []
    state_dir = paths.lab_dir(lab.name)
    with Hypervisor(uri) as hv:
        hostfirewall.undo(hostfirewall.recorded_change(state_dir), reporter=reporter)
        for dom in hv.lab_domains(lab.name):
            reporter.phase(dom.name(), "removing")
            hv.delete_domain(dom.name())
        for what, delete in (("pool", hv.delete_pool), ("network", hv.delete_network)):
            try:
                delete(f"labctl-{lab.name}")
            except NotOwned as exc:
                refused.append(str(exc))
    shutil.rmtree(state_dir, ignore_errors=True)
    if refused:
        raise NotOwned("some objects with the lab's names were left alone", details="\n".join(refused))


def render_lab(lab: Lab, out: Path, *, accel_override: Accel | None = None) -> list[Path]:
    """Write what `up` would hand to cloud-init and libvirt, touching no hypervisor."""
    keys = lab_keys(lab)
    choice = accel.choose(accel_override or lab.accel)
    written = []

    def write(path: Path, data: str | bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        written.append(path)

    write(out / "network.xml", render.network_xml(lab))
    for node in lab.nodes:
        files = render.cloud_init(lab, node, keys)
        for name, text in files.items():
            write(out / node.name / name, text)
        write(out / node.name / "seed.iso", render.seed_iso(files))
        write(out / node.name / "domain.xml", render.domain_xml(
            lab, node, domain_type=choice.domain_type,
            disk_path=str(_pool_path(lab) / names.disk_volume(node)),
            seed_path=str(_pool_path(lab) / names.seed_volume(node)),
            console_log=str(console_log(lab, node)),
        ))
    return written


def run_on(lab: Lab, node_name: str, command: str) -> Result:
    """Run a command on a node and return its output and exit status, whatever the status."""
    ssh = executor(lab, lab.node(node_name))
    try:
        return ssh.run(command, check=False)
    finally:
        ssh.close()


def ssh_argv(lab: Lab, node_name: str) -> list[str]:
    """The OpenSSH command line for an interactive shell with the lab's key and host keys."""
    node = lab.node(node_name)
    keys = lab_keys(lab)
    return [
        "ssh", "-i", str(keys.private_key_path), "-o", f"UserKnownHostsFile={keys.known_hosts_path}",
        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", f"{lab.ssh_user}@{node.ip}",
    ]


def status_json(statuses: list[NodeStatus]) -> str:
    return json.dumps([asdict(s) for s in statuses], indent=2)
