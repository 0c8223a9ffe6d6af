"""`python -m snncompile` runs the CLI."""

from .app.cli import main

main()
