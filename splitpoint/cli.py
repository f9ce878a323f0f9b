"""The ``splitpoint`` command line.

Each subcommand lives in its own module under ``splitpoint/commands/`` and is
imported only when used, so ``splitpoint --help`` stays fast and one command's
dependencies never slow another. A subcommand is a thin shell over the public
API; it never reaches into the controller's internals.
"""
import importlib
import importlib.util
import sys

import click

from splitpoint import __version__

#: command name -> module under splitpoint.commands exposing a click command named `command`
#: (``module:attribute`` when one module holds several commands)
COMMANDS = {
    "serve": "serve",
    "trigger": "trigger",
    "status": "status",
    "verify": "verify",
    "pin": "pin",
    "unpin": "pin:unpin_command",
    "diff": "diff",
    "restore": "restore",
    "boards": "boards",
    "emulate": "emulate",
    "flash": "flash",
    "demo": "demo",
    "kernels": "kernels",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, mod in COMMANDS.items()
                      if importlib.util.find_spec(f"splitpoint.commands.{mod.split(':')[0]}") is not None)

    def get_command(self, ctx, name):
        mod, _, attr = COMMANDS.get(name, "").partition(":")
        if not mod or importlib.util.find_spec(f"splitpoint.commands.{mod}") is None:
            return None
        return getattr(importlib.import_module(f"splitpoint.commands.{mod}"), attr or "command")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitpoint")
def main():
    """splitpoint: consistent backups without stopping I/O.

    A controller mirrors a primary LUN to rotating backup pools; a TRIGGER
    (serial control channel, special LUN, special path or opcode) cuts a
    point-in-time copy in sequence with the writes.
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
