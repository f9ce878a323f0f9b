"""`splitpoint kernels`: which implementation of each Cython kernel is in use."""
import click


@click.command("kernels")
def command():
    """Show whether each kernel runs compiled or as its pure-Python twin."""
    from splitpoint import pyx

    for name, impl in pyx.implementations().items():
        click.echo(f"{name:10s} {impl}")
