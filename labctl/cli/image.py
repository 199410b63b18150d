"""labctl image list|pull|import|build."""

import click

COMMANDS: list[click.Command] = []
