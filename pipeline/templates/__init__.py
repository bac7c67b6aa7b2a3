"""The HTML, CSS and JavaScript of tlearn's pages, shipped as package files.

Kept out of the Python source so each is edited (and linted) as what it is; read
through :mod:`importlib.resources`, which finds them in an installed wheel as in a
checkout.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def read_template(name: str) -> str:
    """The text of the template file ``name`` (e.g. ``"serve_page.html"``) of this package."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
