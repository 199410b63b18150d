"""Provision a lab: render the playbooks per node, serve packages if asked, run what is not done."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import InvalidInput, LabctlError
from labctl.keys import LabKeys, ensure_keys
from labctl.lab import Lab
from labctl.parallel import in_parallel
from labctl.progress import Reporter
from labctl.provision import packages, ports
from labctl.provision.playbook import PLAYBOOKS_DIR, RenderedStep, load_playbook, render_steps
from labctl.provision.runner import NodeRun, StepOutcome, probe, run_nodes
from labctl.transport import Executor


@dataclass(frozen=True)
class ProvisionSummary:
    outcomes: list[StepOutcome]

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def run_playbooks(
    lab: Lab,
    executors: Mapping[str, Executor],
    *,
    reporter: Reporter,
    state_dir: Path,
    only_step: str | None = None,
    force: bool = False,
    keys: LabKeys | None = None,
    playbook_dir: Path = PLAYBOOKS_DIR,
    retry_wait: Callable[[int], float] | None = None,
) -> ProvisionSummary:
    """Bring every node to the state the playbooks describe; skip steps a node has already done.

    Raises LabctlError naming node, step, exit status and the output's last lines when a step fails.
    """
    if not lab.provisioning.enabled:
        reporter.info("provisioning is off for this lab (provisioning.enabled: false)")
        return ProvisionSummary([])
    ports.check_node_ports(lab)
    packages.check_source(lab)
    missing = [n.name for n in lab.nodes if n.name not in executors]
    if missing:
        raise LabctlError(f"no connection to node {', '.join(missing)} was given to the provisioner")
    keys = keys or ensure_keys(lab, state_dir / "ssh")
    playbook = load_playbook(playbook_dir)
    if only_step is not None and only_step not in playbook.step_names():
        raise InvalidInput(f"no playbook step {only_step!r}",
                           resolution=f"use one of: {', '.join(playbook.step_names())}")
    rendered = {node.name: render_steps(playbook, lab, node, keys) for node in lab.nodes}
    plans = {name: [s for s in steps if only_step in (None, s.name)] for name, steps in rendered.items()}
    plans = {name: steps for name, steps in plans.items() if steps}

    facts = dict(zip(plans, in_parallel(plans, lambda name: probe(executors[name], wait=retry_wait),
                                        "reading the provisioning state")))
    runs = {
        name: NodeRun(executors[name], steps, facts[name].markers, reporter=reporter, log_dir=state_dir / "logs",
                      force=force, attempts=lab.provisioning.retries,
                      default_timeout=lab.provisioning.step_timeout, wait=retry_wait)
        for name, steps in plans.items()
    }
    pending = {name: run.pending() for name, run in runs.items()}
    with _package_source(lab, rendered, pending, facts, reporter):
        outcomes = run_nodes(runs)
    return ProvisionSummary(outcomes)


@contextlib.contextmanager
def _package_source(lab, rendered, pending, facts, reporter: Reporter) -> Iterator[None]:
    """Serve the local repository while any step runs (steps run apt); with nothing to do, nothing."""
    if lab.packages.source != "local" or not any(pending.values()):
        yield
        return
    releases = {(facts[name].codename, facts[name].arch) for name, steps in pending.items() if steps}
    if len(releases) != 1:
        raise InvalidInput(
            "packages.source local serves one guest release, but the nodes run "
            + ", ".join(f"{c}/{a}" for c, a in sorted(releases)),
            resolution="give every node the same image, or use packages.source mirror or distro",
        )
    (codename, arch), = releases
    # Every step's packages on every node, not only the pending ones, so the repository (and its
    # cache key) does not change with which steps happen to be left.
    wanted = _packages_of(rendered)
    with packages.local_repository(lab, wanted, suite=codename, arch=arch, reporter=reporter):
        yield


def lab_packages(lab: Lab, keys: LabKeys, *, playbook_dir: Path = PLAYBOOKS_DIR) -> list[str]:
    """The apt packages the playbooks install on the lab's nodes: the local repository's content."""
    return sorted({p for packages in node_packages(lab, keys, playbook_dir=playbook_dir).values() for p in packages})


def node_packages(lab: Lab, keys: LabKeys, *, playbook_dir: Path = PLAYBOOKS_DIR) -> dict[str, tuple[str, ...]]:
    """{node name: the apt packages the playbooks install on it}, each sorted."""
    playbook = load_playbook(playbook_dir)
    return {n.name: tuple(_packages_of({n.name: render_steps(playbook, lab, n, keys)})) for n in lab.nodes}


def _packages_of(plans: Mapping[str, list[RenderedStep]]) -> list[str]:
    return sorted({p for steps in plans.values() for s in steps for p in s.packages})
