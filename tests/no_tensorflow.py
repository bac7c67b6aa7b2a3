"""Run ``tlearn ARGS...`` with ``import tensorflow`` made to fail, as on a GPU machine
that has jax or torch and no TensorFlow: ``python tests/no_tensorflow.py ARGS...``.

Its last line is ``TENSORFLOW_LOADED True|False``; the exit code is tlearn's.
"""

import importlib.abc
import sys


class _NoTensorflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is not installed here (tests/no_tensorflow.py)")
        return None


sys.meta_path.insert(0, _NoTensorflow())

if __name__ == "__main__":
    from pipeline.cli import main

    sys.argv = ["tlearn", *sys.argv[1:]]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    print("TENSORFLOW_LOADED", "tensorflow" in sys.modules, flush=True)
    sys.exit(code)
