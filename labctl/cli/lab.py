"""labctl up|down|status|ssh|render."""

import click

COMMANDS: list[click.Command] = []
