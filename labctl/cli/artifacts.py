"""labctl artifacts fetch."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Column, Table

from labctl import api
from labctl.kube import fetch as fetching
from labctl.progress import Reporter


@click.group()
def artifacts() -> None:
    """Air-gapped artifacts directories (kubernetes.artifacts, kubernetes.rancher.artifacts)."""


@artifacts.command("fetch")
@click.argument("lab")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="print what would be fetched, and how each file is verified")
@click.option("--json", "as_json", is_flag=True, help="print the plan (or, after fetching, the manifest) as JSON")
def fetch_command(lab: str, directory: Path, dry_run: bool, as_json: bool) -> None:
    """Download and verify everything LAB's air-gapped install needs into DIRECTORY.

    Run it on a connected machine, copy DIRECTORY to the lab host, and point
    kubernetes.artifacts (and kubernetes.rancher.artifacts) at it. Files already fetched and
    recorded in DIRECTORY/MANIFEST.json are kept.
    """
    model = api.load(lab)
    dest = directory.resolve()
    if dry_run:
        rows = [fetching.describe(item, dest) for item in fetching.plan(model, dest)]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        table = Table(Column("path", no_wrap=True), Column("source", overflow="fold"),
                      Column("verified by", overflow="fold"), title=f"into {dest}")
        for row in rows:
            table.add_row(row["path"], row["source"], row["verified_by"])
        Console().print(table)
        return
    with Reporter() as reporter:
        record = fetching.build(model, dest, reporter)
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(f"{len(record)} files in {dest}, listed in {dest / fetching.MANIFEST}")
    click.echo(f"set kubernetes.artifacts (and kubernetes.rancher.artifacts) to {dest} in the lab file", err=True)


COMMANDS = [artifacts]
