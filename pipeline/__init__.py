"""Configuration, datasets and splits, workflows, reports and the ``tlearn`` command line."""
