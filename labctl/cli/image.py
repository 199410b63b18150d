"""labctl image list|pull|import|build|rm."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Column, Table

from labctl import api, images, names
from labctl.progress import Reporter


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size else "-"


@click.group()
def image() -> None:
    """Base images: list, pull from the catalog, import, build; baked layers."""


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the records as JSON")
def list_command(as_json: bool) -> None:
    """Images in the local cache and catalog images not pulled yet."""
    records = images.list_images()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    rows = Table(Column("name", no_wrap=True), "source", "suite", "present", "size", "virtual", "sha256")
    for r in records:
        rows.add_row(r.name, r.source, r.suite or "-", "yes" if r.present else "no", _mib(r.size),
                     _mib(r.virtual_size), r.sha256[:12] or "-")
    Console().print(rows)


@image.command()
@click.argument("name")
def pull(name: str) -> None:
    """Download a catalog image and verify it against the publisher's checksums."""
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(name, total=None)
        record = images.pull(name, progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"{record.name}: {record.path} ({_mib(record.size)}, sha256 {record.sha256})")


@image.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="name lab files use for this image, like debian-12")
@click.option("--suite", type=click.Choice(sorted(images.FAMILIES)), default=None,
              help="apt suite of the image's release (default: the catalog's for NAME)")
def import_command(file: Path, name: str, suite: str | None) -> None:
    """Copy a local qcow2 image into the cache under NAME."""
    record = images.import_image(file, name, suite=suite)
    click.echo(f"{record.name}: {record.path} ({_mib(record.size)}, virtual {_mib(record.virtual_size)})")


@image.command()
@click.argument("name", type=click.Choice(sorted(images.BUILDABLE)))
def build(name: str) -> None:
    """Build an image from distribution packages (root; uses the host's apt)."""
    from labctl import imagebuild

    release = name.removeprefix("debian-")
    record = imagebuild.build_debian(release, name=name, log=lambda message: click.echo(message, err=True))
    click.echo(f"{record.name}: {record.path} ({_mib(record.size)}, sha256 {record.sha256})")


@image.command()
@click.argument("lab")
@click.option("--json", "as_json", is_flag=True, help="print the layers as JSON")
@click.pass_obj
def bake(obj: dict, lab: str, as_json: bool) -> None:
    """Pre-install the packages LAB's nodes get into qcow2 layers that `up` then starts from."""
    model = api.load(lab)
    with Reporter() as reporter:
        layers = api.bake_images(model, obj["uri"], reporter=reporter)
    if as_json:
        click.echo(json.dumps([asdict(layer) for layer in layers], indent=2))
        return
    rows = Table(Column("layer", no_wrap=True), "image", "nodes", "packages", "size", "baked in")
    for layer in layers:
        rows.add_row(layer.name, layer.image, ", ".join(layer.nodes), str(len(layer.packages)), _mib(layer.size),
                     f"{layer.seconds} s" if layer.seconds is not None else "(already baked)")
    Console().print(rows)


@image.command()
@click.option("--json", "as_json", is_flag=True, help="print the layers as JSON")
@click.pass_obj
def layers(obj: dict, as_json: bool) -> None:
    """Baked layers in libvirt's images pool, and the lab disks each one backs."""
    found = api.baked_layers(obj["uri"])
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = Table(Column("layer", no_wrap=True), "size", "backs")
    for layer in found:
        rows.add_row(layer["name"], _mib(layer["size"]), "\n".join(layer["used_by"]) or "-")
    Console().print(rows)


@image.command()
@click.argument("name")
@click.pass_obj
def rm(obj: dict, name: str) -> None:
    """Forget an image and delete its file, or delete a baked layer (baked-...) no lab uses."""
    if name.startswith(names.LAYER_PREFIX):
            api.remove_layer(obj["uri"], name)
    else:
        images.remove(name)


COMMANDS: list[click.Command] = [image]
