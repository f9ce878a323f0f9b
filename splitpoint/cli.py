"""The ``splitpoint`` command line.

Each subcommand is a thin shell over the public API; it never reaches into
the controller's internals.
"""
import sys

import click

from splitpoint import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitpoint")
def main():
    """splitpoint: consistent backups without stopping I/O.

    A controller mirrors a primary LUN to rotating backup pools; a TRIGGER
    (serial control channel, special LUN, special path or opcode) cuts a
    point-in-time copy in sequence with the writes.
    """


@main.command()
def kernels():
    """Show which kernel implementation (compiled or pure Python) is in use."""
    from splitpoint import pyx

    for name, impl in pyx.implementations().items():
        click.echo(f"{name:10s} {impl}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
