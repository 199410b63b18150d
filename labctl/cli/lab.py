"""labctl up | down | status | ssh | render."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from labctl import api
from labctl.errors import InvalidInput
from labctl.lab import Accel
from labctl.progress import Reporter

lab_argument = click.argument("lab")
accel_option = click.option(
    "--accel", type=click.Choice([a.value for a in Accel]), default=None,
    help="accelerator: auto (KVM if usable, else TCG), kvm or tcg; overrides the lab file",
)


def _accel(value: str | None) -> Accel | None:
    return Accel(value) if value else None


def print_statuses(statuses: list[api.NodeStatus], as_json: bool) -> None:
    if as_json:
        click.echo(api.status_json(statuses))
        return
    table = Table("node", "roles", "state", "ip", "vcpus", "memory")
    for s in statuses:
        table.add_row(s.name, ",".join(s.roles), s.state, s.ip, str(s.vcpus), f"{s.memory_mib} MiB")
    Console().print(table)


@click.command()
@lab_argument
@accel_option
@click.option("--json", "as_json", is_flag=True, help="print the final node table as JSON")
@click.pass_obj
def up(obj: dict, lab: str, accel: str | None, as_json: bool) -> None:
    """Create the lab's VMs (or resume a half-made lab) and wait until every node is ready."""
    model = api.load(lab)
    with Reporter() as reporter:
        result = api.up(model, obj["uri"], reporter=reporter, accel_override=_accel(accel))
    print_statuses(result.nodes, as_json)
    if not as_json:
        summary = result.provisioning
        click.echo(f"provisioning: {summary.count('done')} steps ran, {summary.count('skipped')} already done",
                   err=True)
        if result.kubernetes is not None:
            click.echo(result.kubernetes.summary())


@click.command()
@lab_argument
@click.pass_obj
def down(obj: dict, lab: str) -> None:
    """Destroy the lab: domains, disks, seeds, network, state. Nothing labctl did not create."""
    model = api.load(lab)
    with Reporter() as reporter:
        api.down(model, obj["uri"], reporter=reporter)
    click.echo(f"lab {model.name} removed")


@click.command()
@lab_argument
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_obj
def status(obj: dict, lab: str, as_json: bool) -> None:
    """Show the lab's nodes: name, roles, state, IP, vCPUs, memory."""
    model = api.load(lab)
    print_statuses(api.status(model, obj["uri"]), as_json)


@click.command(context_settings={"ignore_unknown_options": True})
@lab_argument
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(lab: str, node: str, command: tuple[str, ...]) -> None:
    """Open a shell on NODE, or run COMMAND there and exit with its status (labctl ssh LAB NODE -- CMD)."""
    model = api.load(lab)
    if command:
        result = api.run_on(model, node, shlex.join(command) if len(command) > 1 else command[0])
        click.echo(result.stdout, nl=False)
        click.echo(result.stderr, nl=False, err=True)
        raise SystemExit(result.exit_status)
    argv = api.ssh_argv(model, node)
    if shutil.which(argv[0]) is None:
        raise InvalidInput("an interactive shell needs the OpenSSH client (ssh)",
                           resolution="install openssh-client, or pass a command: labctl ssh LAB NODE -- CMD")
    os.execvp(argv[0], argv)


@click.command()
@lab_argument
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory to write into")
@accel_option
def render(lab: str, out: Path, accel: str | None) -> None:
    """Write the cloud-init files, seed ISOs and libvirt XML that `up` would use; no hypervisor needed."""
    model = api.load(lab)
    for path in api.render_lab(model, out, accel_override=_accel(accel)):
        click.echo(path)


@click.command("repo-build")
@lab_argument
def repo_build(lab: str) -> None:
    """Build the lab's local apt repositories on the host now (packages.source: local)."""
    model = api.load(lab)
    repos = api.build_package_repos(model)
    if not repos:
        click.echo(f"lab {model.name} uses packages.source {model.packages.source}: nothing to build")
    for repo in repos:
        click.echo(repo)


COMMANDS = [up, down, status, ssh, render, repo_build]
