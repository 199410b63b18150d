"""labctl kubeconfig | etcd snapshot save|restore|list | reset --kubernetes."""

from __future__ import annotations

import os
from pathlib import Path

import click

from labctl import api, paths
from labctl.errors import InvalidInput
from labctl.kube import ops
from labctl.kube.cluster import write_private
from labctl.progress import Reporter


def _state(lab) -> Path:
    return paths.lab_dir(lab.name)


@click.command()
@click.argument("lab")
@click.option("--merge", is_flag=True, help="add the lab as context labctl-LAB to ~/.kube/config (or $KUBECONFIG)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the kubeconfig to this file (0600) instead of printing it")
def kubeconfig(lab: str, merge: bool, output: Path | None) -> None:
    """Print or write the lab's admin kubeconfig, its server set to an address this host reaches."""
    model = api.load(lab)
    text = ops.kubeconfig(model, _state(model))
    if merge:
        first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        target = Path(first) if first else Path.home() / ".kube" / "config"
        ops.merge_kubeconfig(text, f"labctl-{model.name}", target)
        click.echo(f"context labctl-{model.name} written to {target}", err=True)
    elif output is not None:
        write_private(output, text)
    else:
        click.echo(text, nl=False)


@click.group()
def etcd() -> None:
    """etcd of a lab's cluster."""


@etcd.group()
def snapshot() -> None:
    """Save, list and restore etcd snapshots (rke etcd, rke2 etcd-snapshot, etcdctl on kubeadm)."""


@snapshot.command("save")
@click.argument("lab")
@click.argument("name")
def snapshot_save(lab: str, name: str) -> None:
    """Take a snapshot called NAME."""
    model = api.load(lab)
    click.echo(ops.snapshot_save(model, api.executors(model), name), nl=False)


@snapshot.command("list")
@click.argument("lab")
def snapshot_list(lab: str) -> None:
    """List the snapshots on the control plane."""
    model = api.load(lab)
    click.echo(ops.snapshot_list(model, api.executors(model)), nl=False)


@snapshot.command("restore")
@click.argument("lab")
@click.argument("name")
@click.confirmation_option(prompt="Restoring replaces the cluster's state and stops its API meanwhile. Continue?")
def snapshot_restore(lab: str, name: str) -> None:
    """Restore snapshot NAME."""
    model = api.load(lab)
    with Reporter() as reporter:
        ops.snapshot_restore(model, api.executors(model), name, reporter)


@click.command()
@click.argument("lab")
@click.option("--kubernetes", "kubernetes_only", is_flag=True,
              help="remove Kubernetes and Rancher from the nodes, keeping the VMs")
def reset(lab: str, kubernetes_only: bool) -> None:
    """Tear part of a lab down without deleting its VMs."""
    if not kubernetes_only:
        raise InvalidInput("say what to reset", resolution="use `labctl reset LAB --kubernetes`")
    model = api.load(lab)
    with Reporter() as reporter:
        ops.reset_kubernetes(model, api.executors(model), _state(model), reporter)


COMMANDS: list[click.Command] = [kubeconfig, etcd, reset]
