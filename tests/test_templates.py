"""The pages' templates ship in the wheel and are found there, not only in a checkout."""

import shutil
import subprocess
import sys
import zipfile

from pipeline.templates import read_template
from tests.conftest import REPO_ROOT

TEMPLATES = sorted(p.name for p in (REPO_ROOT / "pipeline" / "templates").iterdir()
                   if p.suffix in (".html", ".css"))


def test_every_template_is_read_from_the_package():
    assert TEMPLATES == ["report_page.css", "report_page.html", "serve_page.html"]
    for name in TEMPLATES:
        assert read_template(name) == (REPO_ROOT / "pipeline" / "templates" / name).read_text()


def test_the_installed_package_finds_its_templates(tmp_path):
    # A wheel built from the sources (no network: the venv's setuptools), unpacked as
    # site-packages would hold it, and asked from a fresh interpreter that finds it first.
    src = tmp_path / "src"
    for part in ("features", "classifiers", "pipeline"):
        shutil.copytree(REPO_ROOT / part, src / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("tlearn-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            "from importlib.resources import files\n"
            "import pipeline.templates as t\n"
            "assert t.__file__.startswith(sys.argv[1]), t.__file__\n"
            "print(' '.join(n for n in sys.argv[2:] "
            "if files('pipeline.templates').joinpath(n).is_file()))\n")
    found = subprocess.run([sys.executable, "-I", "-c", code, str(site), *TEMPLATES],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert found.stdout.split() == TEMPLATES
