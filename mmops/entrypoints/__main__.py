"""``python -m mmops.entrypoints`` runs the CLI (the tests use it to run without the script)."""

from mmops.entrypoints.cli import main

main()
