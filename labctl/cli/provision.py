"""labctl provision | provision-script | ssh-config | inventory."""

from __future__ import annotations

import time

import click

from labctl import api, inventory, paths
from labctl.lab import load_lab
from labctl.progress import Reporter
from labctl.provision.config import PackagesConfig
from labctl.provision.playbook import load_playbook
from labctl.provision.run import run_playbooks
from labctl.provision.standalone import standalone_script


@click.command()
@click.argument("lab")
@click.option("--step", "only_step", metavar="NAME", help="run only this playbook step (see docs/provisioning.md)")
@click.option("--force", is_flag=True, help="run steps again even where a node has already done them")
def provision(lab: str, only_step: str | None, force: bool) -> None:
    """Run the playbooks on a running lab; steps a node has already done are skipped."""
    model, _ = load_lab(lab)
    keys = api.lab_keys(model)
    executors = api.executors(model, keys)
    start = time.monotonic()
    try:
        with Reporter() as reporter:
            summary = run_playbooks(model, executors, reporter=reporter, state_dir=paths.lab_dir(model.name),
                                    only_step=only_step, force=force, keys=keys)
    finally:
        for executor in executors.values():
            executor.close()
    click.echo(f"lab {model.name} provisioned: {summary.count('done')} steps run, "
               f"{summary.count('skipped')} already done, in {time.monotonic() - start:.1f}s")


@click.command("provision-script")
@click.argument("lab")
@click.argument("node")
@click.option("--package-source", type=click.Choice(["lab", "distro", "mirror"]), default="lab", show_default=True,
              help="override packages.source: machines labctl did not boot cannot reach its local repository")
def provision_script(lab: str, node: str, package_source: str) -> None:
    """Print one bash script that provisions NODE as `labctl provision` would (used by the Vagrantfile)."""
    model, _ = load_lab(lab)
    if package_source != "lab":
        packages = PackagesConfig.model_validate({**model.packages.model_dump(), "source": package_source})
        model = model.model_copy(update={"packages": packages})
    click.echo(standalone_script(load_playbook(), model, model.node(node), api.lab_keys(model)), nl=False)


@click.command("ssh-config")
@click.argument("lab")
def ssh_config(lab: str) -> None:
    """Print an OpenSSH config block for the lab (append it to ~/.ssh/config, then `ssh kube-master`)."""
    model, _ = load_lab(lab)
    click.echo(inventory.ssh_config(model, api.lab_keys(model)), nl=False)


@click.command("inventory")
@click.argument("lab")
@click.option("--format", "fmt", type=click.Choice(["ansible", "json"]), default="ansible", show_default=True,
              help="ansible: INI with kubespray's groups; json: what `ansible-inventory --list` prints")
def inventory_command(lab: str, fmt: str) -> None:
    """Print the lab as an Ansible inventory (kube_control_plane, etcd, kube_node, k8s_cluster, rancher)."""
    model, _ = load_lab(lab)
    keys = api.lab_keys(model)
    text = inventory.ansible_ini(model, keys) if fmt == "ansible" else inventory.ansible_json(model, keys)
    click.echo(text, nl=False)


COMMANDS: list[click.Command] = [provision, provision_script, ssh_config, inventory_command]
