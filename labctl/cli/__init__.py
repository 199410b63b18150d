"""The labctl command line: parses arguments, calls one API function per verb, prints results."""

from __future__ import annotations

import logging
import sys

import click

from labctl.errors import LabctlError


class LabctlGroup(click.Group):
    """Turns LabctlError into a clear message and its exit status (1 runtime, 2 bad input)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LabctlError as exc:
            click.secho(f"error: {exc.brief}", fg="red", err=True)
            if exc.details:
                click.echo(exc.details, err=True)
            if exc.resolution:
                click.secho(f"fix: {exc.resolution}", fg="yellow", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LabctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connect", "-c", envvar="LIBVIRT_DEFAULT_URI", default="qemu:///system",
              show_default=True, help="libvirt connection URI")
@click.option("--verbose", "-v", is_flag=True, help="log every host command and libvirt call")
@click.version_option(package_name="labctl")
@click.pass_context
def cli(ctx: click.Context, connect: str, verbose: bool) -> None:
    """Turn this host into a reproducible Kubernetes lab on libvirt/QEMU."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"uri": connect}


def _register() -> None:
    from labctl.cli import artifacts, image, kube, lab, provision

    for module in (lab, image, provision, kube, artifacts):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="labctl")
    sys.exit(0)
