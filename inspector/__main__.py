"""``python3 -m inspector``: the same command as the ``inspector`` console script."""

from inspector.cli import main

main()
