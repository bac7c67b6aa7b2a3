"""The README and the documentation site (docs/, mkdocs.yml) against the code they describe.

The site's generated parts come from hooks in docs/hooks/ (the CLI, API, benchmark, backbone
and error references); these tests check what each hook promises, that the commands and
Python examples the pages show work, and that the README stays a short way in.
"""

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import REPO_ROOT, TINY_EXTRACT, extract, make_image_folder

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
runner = CliRunner()


def _hook(name: str):
    """A docs/hooks module (MkDocs loads them by path, so they are no package)."""
    path = DOCS / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


# -- the commands the pages show -------------------------------------------------------------
GLOBAL_OPTIONS = {"--backend"}  # options before the command, each with one value


def _documented_commands() -> list[tuple[str, ...]]:
    commands = set()
    for page in [README, *PAGES]:
        for block in _fenced_blocks(page.read_text(), "bash"):
            for line in block.splitlines():
                line = line.strip().lstrip("$ ")
                if not line.startswith("tlearn "):
                    continue
                words = line.split()[1:]
                while words[0] in GLOBAL_OPTIONS:  # `tlearn --backend jax extract ...`
                    words = words[2:]
                command = [words[0]]
                if words[0] == "datasets" and len(words) > 1 and not words[1].startswith("-"):
                    command.append(words[1])
                commands.add(tuple(command))
    return sorted(commands)


def test_documented_commands_are_real_commands():
    commands = _documented_commands()
    assert len(commands) >= 8, commands
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_the_guide_shows_every_command():
    documented = {c[0] for c in _documented_commands()}
    registered = set(typer.main.get_command(app).commands)
    assert registered <= documented, registered - documented


# options whose synopsis shows a value to try, not the default
EXAMPLES = {"grid", "layers", "class-weight"}


def _claimed_defaults():
    """``(command, option, value)`` for each ``[--option value]`` a synopsis shows.

    A synopsis shows an option with its default (``[--cv 3]``); a placeholder
    (``[--out FILE.h5]``), a choice (``[--pooling flatten|avg|max]``) or one of the
    EXAMPLES claims none.
    """
    claims = []
    for page in PAGES:
        for block in _fenced_blocks(page.read_text(), "bash"):
            command = None
            for line in block.splitlines():
                if line.startswith("tlearn "):
                    words = line.split()
                    command = words[1:3] if words[1] == "datasets" else words[1:2]
                elif not line.startswith(" "):
                    command = None
                for option, value in re.findall(r"\[--([a-z-]+) ([^\]\s|]+)\]",
                                                line.split("#")[0]):
                    if command and option not in EXAMPLES and not re.search(r"[A-Z]", value):
                        claims.append((tuple(command), option, value))
    return claims


def test_synopses_show_the_real_defaults():
    claims = _claimed_defaults()
    assert len(claims) >= 15, claims
    root = typer.main.get_command(app)
    for command, option, value in claims:
        cmd = root
        for name in command:
            cmd = cmd.get_command(cmd.context_class(cmd, info_name=name), name)
        (param,) = [p for p in cmd.params if f"--{option}" in getattr(p, "opts", [])]
        default = param.default
        try:
            assert float(value) == float(default), (command, option, value, default)
        except (TypeError, ValueError):
            assert value == str(default), (command, option, value, default)


# -- the README: a short way in -------------------------------------------------------------
def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    (first,) = [b for b in _fenced_blocks(text, "bash") if "make demo" in b]
    assert [line.split()[:2] for line in first.splitlines()] == [["make", "demo"],
                                                                  ["make", "test"]]
    assert "pip install 'tlearn[gpu]'" in text


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_reach_files(page):
    # MkDocs checks the site's links; the README's are read on GitHub, outside the build
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


# -- the Python examples run ----------------------------------------------------------------
@pytest.fixture(scope="module")
def _tiny_model(tmp_path_factory):
    """One tiny trained model and its images, shared by the examples."""
    root = tmp_path_factory.mktemp("docs-model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_ARTIFACTS", str(root / "artifacts"))
        data = make_image_folder(root / "photos", per_class=8)
        store = extract(data, **TINY_EXTRACT).result.path
        result = runner.invoke(app, ["train", str(store), "--classifier", "logreg", "--cv", "2"])
    assert result.exit_code == 0, result.output
    (model,) = (root / "artifacts" / "classifiers").glob("*.joblib")
    return model, data


@pytest.fixture
def documented_model(_tiny_model, tmp_path, monkeypatch):
    """The pages' model path and image names, made real with the tiny model, in a fresh cwd."""
    model, data = _tiny_model
    work = tmp_path / "work"
    folder = work / "artifacts" / "classifiers"
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "photos__efficientnet_lite0__logreg.joblib")
    shutil.copy(model.with_suffix(".json"), folder / "photos__efficientnet_lite0__logreg.json")
    shutil.copy(data / "cat" / "cat_000.jpg", work / "new1.jpg")
    shutil.copy(data / "dog" / "dog_000.jpg", work / "new2.png")
    monkeypatch.chdir(work)
    return work


def _python_examples() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(REPO_ROOT)}#{i}", block)
            for page in [README, *PAGES]
            for i, block in enumerate(_fenced_blocks(page.read_text(), "python"))]


@pytest.mark.parametrize("where, code", _python_examples(), ids=[w for w, _ in _python_examples()])
def test_python_examples_run(where, code, documented_model, capsys):
    # Blocks fenced ```python run here, on the pages' model path and image names
    # (documented_model); a page fences ```py a block that cannot run on a CPU alone.
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    if "predict" in code:  # the answers name the model's classes
        assert "cat" in printed and "dog" in printed, printed


# -- the generated references cover the code --------------------------------------------------
def _commands(command, path):
    yield path, command
    ctx = command.context_class(command, info_name=path[-1])
    for name in getattr(command, "list_commands", lambda ctx: [])(ctx):
        yield from _commands(command.get_command(ctx, name), [*path, name])


def test_cli_reference_has_every_command_and_option():
    page = _hook("cli_reference").cli_reference()
    for path, command in _commands(typer.main.get_command(app), ["tlearn"]):
        heading = f"{'##' if path == ['tlearn'] else '###'} `{' '.join(path)}`\n"
        assert heading in page, path
        section = page.split(heading, 1)[1].split("\n#", 1)[0]
        for param in command.params:
            for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if opt.startswith("-") and opt != "--help":
                    assert f"`{opt}" in section or f" {opt}" in section, (path, opt)


def test_cli_reference_keeps_literal_brackets_and_defaults():
    page = _hook("cli_reference").cli_reference()
    assert "pip install 'tlearn[ray]'" in page  # '\[' in rich help is a literal bracket
    assert "[default: efficientnet_lite0]" in page


def test_api_reference_names_resolve_to_documented_objects():
    names = _hook("api_reference").public_names()
    exported = {*importlib.import_module("features").__all__,
                *importlib.import_module("classifiers").__all__,
                *importlib.import_module("pipeline.workflows").__all__,
                *importlib.import_module("pipeline.stage3").__all__}
    listed = [path for paths in names.values() for path in paths]
    assert exported <= {path.rsplit(".", 1)[1] for path in listed}
    for path in listed:
        module, name = path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), name), path


def test_store_layout_lists_every_dataset_a_store_writes():
    from features import store

    layout = _hook("code_tables").store_layout()
    for name in [*store._ROW_DATASETS, *store._FINAL_DATASETS, "label_names"]:
        assert f"`{name}`" in layout, name


def test_benchmarks_page_renders_every_result_with_its_cpu():
    hook = _hook("benchmarks")
    page = (DOCS / "benchmarks.md").read_text()
    asked = hook.MARKER.findall(page)
    assert sorted(asked) == hook.result_names()  # every result file, each once
    for name in asked:
        rendered = hook.render(name)
        # a package resolution runs nothing: it names the command it ran, never a CPU
        resolution = "candidates" in json.loads((hook.RESULTS / f"{name}.json").read_text())
        assert rendered.startswith("**No CPU: a package resolution,** `" if resolution
                                   else "**CPU:** "), name
        assert "|---" in rendered or name == "predict", name  # predict's result is one line


def test_auto_results_show_the_sweeps_best_by_cv_beside_its_choice():
    # the sweep chooses by the budgets' rule; its best by cross-validation is another model
    recipe = {"backbone": "efficientnet_lite0", "taps": "stages", "mirror": False,
              "classifier": "linear_svm", "C": 0.01}
    best = {**recipe, "backbone": "efficientnet_lite2", "mirror": True, "classifier": "ovr"}
    sweep = {"recipe": recipe, "test_accuracy": 0.78, "test_accuracy_ci": [0.75, 0.8],
             "elapsed_s": 3600, "why": "the cheapest not significantly worse",
             "candidates": [{"status": "winner"}, {"status": "finalist"}],
             "best_cv": {"recipe": best, "cv_accuracy": 0.77, "is_the_choice": False,
                         "test_accuracy": 0.79, "test_accuracy_ci": [0.76, 0.81],
                         "vs_the_choice": {"p_value": 0.41}}}
    run = {"auto": {"dataset": "flowers5", "budget": "15m", "recipe": recipe,
                    "test_accuracy": 0.78, "test_accuracy_ci": [0.75, 0.8]},
           "auto_vs_sweep": {"p_value": 1.0}, "auto_vs_sweep_best_cv": {"p_value": 0.41}}
    auto = _hook("benchmarks")._auto
    rendered = auto({"runs": [run], "sweeps": {"flowers5": sweep}})
    assert "its choice: p = 1.00; its best by CV: p = 0.41" in rendered
    row = next(line for line in rendered.splitlines() if "| 3600 | 2 |" in line)
    assert "efficientnet_lite2" in row and "(77.0 %)" in row and "p = 0.41" in row
    assert "flowers5, exhaustive sweep: the cheapest not significantly worse" in rendered
    sweeps_only = auto({"runs": [], "sweeps": {"flowers5": sweep}})
    assert sweeps_only.startswith("| dataset | exhaustive sweep's choice")
    assert _hook("benchmarks")._p({"p_value": 0.0015}) == "p = 0.002"  # never "p = 0.00"


def test_benchmark_figures_are_not_typed_by_hand():
    # the prose around the generated tables holds settings and commands, never a result
    prose = re.sub(r"```.*?```|`[^`]*`|<!--.*?-->", "", (DOCS / "benchmarks.md").read_text(),
                   flags=re.DOTALL)
    typed = re.findall(r"\d[\d.,]*\s*(?:%|x\b|img/s|ms\b|MB\b|requests/s)", prose)
    assert typed == [], typed


def test_backbone_rates_are_generated_not_pasted():
    hook = _hook("benchmarks")
    page = (DOCS / "guide" / "backbones.md").read_text()
    asked = hook.BACKBONE_RATES.findall(page)
    assert asked and set(asked) <= set(hook.result_names())
    assert re.findall(r"\d+\.\d / \d+\.\d", page) == []  # no forward / end-to-end rate typed
    rendered = hook.on_page_markdown(page)
    assert all(f"`bench/results/{name}.json`" in rendered for name in asked)
    assert "<!-- generated:" not in rendered


def test_unknown_scores_are_generated_not_pasted():
    hook = _hook("benchmarks")
    page = (DOCS / "guide" / "unknown.md").read_text()
    assert hook.UNKNOWN_SCORES.search(page)
    # no result row typed: the scores' and the class weights' tables are generated
    assert re.findall(r"^\|[^\n]*\| 0\.\d{3} \|", page, re.MULTILINE) == []
    rendered = hook.on_page_markdown(page)
    assert "Result file: `bench/results/unknown.json`" in rendered
    assert "<!-- generated:" not in rendered


def test_common_errors_on_the_troubleshooting_page_exist_in_the_code():
    messages = {message for _, message in _hook("errors").user_errors()}
    page = (DOCS / "troubleshooting.md").read_text()
    table = page.split("## The errors you are most likely to meet", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)
    assert len(listed) >= 10
    assert [m for m in listed if m not in messages] == []


def test_every_module_raising_user_errors_is_collected():
    found = _hook("errors").user_errors()
    collected = {where for where, _ in found}
    raising = {str(p.relative_to(REPO_ROOT))
               for package in ("features", "classifiers", "pipeline")
               for p in (REPO_ROOT / package).rglob("*.py")
               if re.search(r"UserInputError\(\s*f?[\"']", p.read_text())}
    assert raising <= collected, raising - collected
    assert any(m.startswith("dataset {data} does not exist") for _, m in found)


# -- the site builds --------------------------------------------------------------------------
def test_site_configuration_fetches_nothing():
    config = (REPO_ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^  font: false$", config, re.MULTILINE)  # no web fonts at build or view
    assert re.search(r"^strict: true$", config, re.MULTILINE)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    html = "".join(p.read_text() for p in tmp_path.rglob("*.html"))
    assert "fonts.googleapis" not in html and "<!-- generated:" not in html
