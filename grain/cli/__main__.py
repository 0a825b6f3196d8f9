"""``python -m grain.cli``: the same as the ``grain`` command."""

from .main import cli

if __name__ == "__main__":
    cli(prog_name="grain")
