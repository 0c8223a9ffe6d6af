"""`python -m snncompile` runs the CLI."""

from .cli import main

main()
