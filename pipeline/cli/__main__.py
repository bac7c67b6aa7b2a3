"""``python -m pipeline.cli``: the ``tlearn`` command without its console script."""

from pipeline.cli import main

main()
