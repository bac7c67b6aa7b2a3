import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.store import FeatureStore
from pipeline.cli import app
from tests.conftest import REPO_ROOT, fill_disk, make_image_folder

runner = CliRunner()
TINY = ["--backbone", "vgg16", "--weights", "none", "--input-size", "32", "--pooling", "avg",
        "--batch-size", "4"]


def _one_error_line(result):
    # What computes is said once work starts, before whatever then goes wrong.
    lines = [ln for ln in result.output.strip().splitlines()
             if ln.strip() and not ln.startswith("computing on ")]
    text = " ".join(lines)
    assert text.startswith("error:"), result.output
    assert "Traceback" not in result.output
    return text


def test_extract_default_output_and_inspect(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets")
    result = runner.invoke(app, ["extract", str(data), *TINY])
    assert result.exit_code == 0, result.output
    out = artifacts / "features" / "pets__vgg16__avg.h5"
    assert out.exists()
    with FeatureStore(out) as store:
        assert store.shape == (12, 512)
    again = runner.invoke(app, ["extract", str(data), *TINY])
    assert again.exit_code == 0 and "up to date" in again.output
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0
    assert "12 x 512" in shown.output and "train=" in shown.output


def test_an_up_to_date_extract_answers_without_tensorflow(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets", per_class=2)
    out = tmp_path / "pets.h5"
    assert runner.invoke(app, ["extract", str(data), *TINY, "--out", str(out)]).exit_code == 0
    again = (f"import sys; from typer.testing import CliRunner; from pipeline.cli import app; "
             f"r = CliRunner().invoke(app, {['extract', str(data), *TINY, '--out', str(out)]!r});"
             f"print(r.output, r.exit_code, 'tensorflow' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", again], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert "up to date" in shown.stdout and shown.stdout.split()[-2:] == ["0", "False"], (
        shown.stdout + shown.stderr)


BASE = ["--weights", "none", "--input-size", "32", "--pooling", "avg"]


def test_extract_with_taps_and_mirror_records_them_in_its_own_store(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets")
    result = runner.invoke(app, ["extract", str(data), *TINY, "--taps", "block4_pool",
                                 "--mirror"])
    assert result.exit_code == 0, result.output
    (store_path,) = (artifacts / "features").glob("pets__vgg16__avg__taps-*__mirror.h5")
    with FeatureStore(store_path) as store:
        assert store.shape == (12, 512 + 512)
        assert (store.spec.taps, store.spec.views) == ("block4_pool", "image+mirror")
    shown = runner.invoke(app, ["inspect", str(store_path)])
    assert "image+mirror" in shown.output and "block4_pool" in shown.output


def test_a_joined_backbone_extracts_trains_and_classifies_images(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets", per_class=6)
    joined = "efficientnet_lite0+efficientnet_lite1"
    result = runner.invoke(app, ["extract", str(data), "--backbone", joined, "--taps",
                                 "stages"])
    assert result.exit_code == 0, result.output
    store_path = artifacts / "features" / f"pets__{joined}__stages.h5"
    with FeatureStore(store_path) as store:
        assert store.spec.backbone == joined and store.spec.input_size == 240
        assert store.shape == (12, 2 * 1280 + 2 * (80 + 112 + 192 + 320))
    trained = runner.invoke(app, ["train", str(store_path), "--classifier", "logreg",
                                  "--cv", "2"])
    assert trained.exit_code == 0, trained.output
    model = artifacts / "classifiers" / f"pets__{joined}__stages__logreg.joblib"
    image = data / "cat" / "cat_000.jpg"
    pred = runner.invoke(app, ["predict", str(model), str(image), "--json"])
    assert pred.exit_code == 0, pred.output
    assert json.loads(pred.stdout)[0]["label"] == "cat"
    refused = runner.invoke(app, ["finetune", str(store_path), "--warmup-epochs", "1"])
    assert refused.exit_code == 2
    assert "pass --backbone with one of them" in _one_error_line(refused)


def test_extract_finetune_and_scratch_flags_are_their_settings_fields():
    # A new option is a settings field and its flag, nothing between: a field without a
    # flag, or a flag the settings do not know, fails here.
    import dataclasses
    import inspect

    from features.settings import NetworkSettings
    from pipeline.cli import stage1, stage3
    from pipeline.stage3 import FinetuneSettings, ScratchSettings
    from pipeline.workflows import ExtractSettings

    def flags(command):
        return set(inspect.signature(command).parameters)

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert flags(stage1.extract) == names(ExtractSettings) - {"network"} | names(NetworkSettings)
    augmentation = {"no_augment", "rotation", "shift", "shear", "zoom", "flip"}
    head = {"head_pooling", "head_units", "head_dropout"}
    not_flags = {"augmentation", "workers"}
    assert flags(stage3.finetune) - augmentation - head == names(FinetuneSettings) - not_flags - {
        "head"}
    assert flags(stage3.scratch) - augmentation == names(ScratchSettings) - not_flags


@pytest.mark.parametrize("args,message", [
    (["extract", "{tmp}/missing", *BASE], "does not exist"),
    (["extract", "{data}", "--backbone", "alexnet", *BASE], "unknown backbone 'alexnet'"),
    (["extract", "{data}", "--layer", "nope", *BASE], "unknown layer 'nope'"),
    (["extract", "{data}", "--weights", "none", "--input-size", "8"], "below the minimum"),
    (["extract", "{one}", *BASE], "only one class"),
    (["extract", "{data}", "--pooling", "mean", "--weights", "none"], "unknown pooling"),
    (["extract", "{data}", "--test-size", "1.5", *BASE], "test size"),
    (["extract", "{data}", "--backbone", "vgg16", "--taps", "stages", *BASE],
     "vgg16 has no 'stages' taps"),
    (["extract", "{data}", "--backbone", "vgg16+xception", *BASE], "cannot join vgg16"),
    (["backbones", "--layers", "vgg16+vgg19"], "one network at a time, e.g. --layers vgg16"),
    (["inspect", "{tmp}/missing.h5"], "does not exist"),
    (["extract", "{data}/cat", *BASE], "cat holds 2 image(s) but no class sub-folders; a "
     "dataset is a folder with one sub-folder of images per class"),
    (["train", "{data}"], "is a folder, not a feature store; if it holds images, run "
     "'tlearn extract {data}' first"),
    (["inspect", "{data}"], "run 'tlearn extract {data}' first"),
    (["extract", "{data}", *BASE, "--out", "{tmp}", "--overwrite"], "is a folder"),
    (["extract", "{data}", *BASE, "--out", "{data}/cat/cat_000.jpg/x.h5"],
     "cat_000.jpg is a file, not a folder"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, artifacts, args, message):
    data = make_image_folder(tmp_path / "d", per_class=2)
    one = make_image_folder(tmp_path / "one", classes=("x",), per_class=2)
    argv = [a.format(tmp=tmp_path, data=data, one=one) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message.format(data=data) in _one_error_line(result)
    written = list((artifacts / "features").glob("*")) if (artifacts / "features").exists() else []
    assert written == []


def test_backbones_table_lists_sizes():
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0
    for name in ("vgg16", "resnet50", "inception_v3", "xception", "efficientnet_lite0",
                 "convnext_tiny", "efficientnetv2_m"):
        assert name in result.output
    # vgg16's flatten size; efficientnetv2_m's (15 x 15 x 1,280 at 480 px)
    assert "25,088" in result.output and "288,000" in result.output
    assert "none: RGB in [0, 255], normalised inside the network" in result.output


def test_backbone_layers_listing():
    result = runner.invoke(app, ["backbones", "--layers", "vgg16"])
    assert result.exit_code == 0
    assert re.search(r"block4_pool\s.*\(14, 14, 512\)", result.output)


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_commands_help_shows_its_text_whole():
    # Brackets ("[default: ...]", "tlearn[ray]") once vanished as markup and long words were
    # cut with an ellipsis. Help is rich markup (for its panels), so a literal '[' is
    # written '\\[': each text must show whole, its brackets kept, in a terminal wide enough
    # to hold it on one line (panels interleave wrapped columns), and nothing may be cut
    # at 80 columns.
    import inspect

    import typer

    def squeezed(text):
        return re.sub(r"\s+", "", text)

    for path, command in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"})
        assert result.exit_code == 0, (path, result.output)
        shown = squeezed(result.output)
        written = [inspect.cleandoc(command.help or "")]
        for param in command.params:
            assert param.help, (path, param.name)  # every option says what it is for
            written.append(param.help)
        for text in written:
            assert squeezed(text.replace("\\[", "[")) in shown, (path, text, result.output)
        narrow = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert "\u2026" not in narrow.output, (path, narrow.output)


def test_help_groups_commands_and_options_in_panels():
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    panels = ["Data", "Stage 1: features", "Stage 2: classifiers", "Stage 3: fine-tuning",
              "Use a model"]
    assert [p for p in re.findall(r"─ ([^─]+?) ─", shown) if p in panels] == panels, shown
    for command, expected in (("extract", ["Network", "Output", "Runtime", "Split", "Engine"]),
                              ("finetune", ["Network", "Training", "Split", "Augmentation"])):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"}).output
        assert set(expected) <= set(re.findall(r"─ ([^─]+?) ─", shown)), shown


def test_help_lists_the_registries_choices():
    from features.runtimes import RUNTIMES
    from features.spec import POOLINGS

    shown = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "200"}).output
    assert f"[{'|'.join(RUNTIMES.names())}]" in shown
    assert f"[{'|'.join(POOLINGS)}]" in shown
    fetch = runner.invoke(app, ["datasets", "fetch", "--help"], env={"COLUMNS": "200"}).output
    assert "[digits|flowers17|cifar10]" in fetch


@pytest.mark.parametrize("argv,line", [
    (["extract", "d", "--runtime", "onnx"], "unknown runtime 'onnx'; choose one of: "
     "tensorflow, openvino"),
    (["extract", "d", "--pooling", "avg+mean"], "unknown pooling 'mean'; choose one of: "
     "flatten, avg, max"),
    (["extract", "d", "--precision", "int4"], "unknown precision 'int4'; choose one of: "
     "float32, bfloat16, float16, int8; did you mean int8?"),
    (["train", "s.h5", "--engine", "spark"], "unknown engine 'spark'; choose one of: local, "
     "ray"),
    (["train", "s.h5", "--classifier", "knn"], "unknown classifier 'knn'; choose one of: "),
    (["train", "s.h5", "--class-weight", "even"], "unknown class weight 'even'; choose one "
     "of: balanced"),
    (["datasets", "fetch", "mnist"], "unknown dataset 'mnist'; choose one of: digits, "),
])
def test_a_wrong_choice_is_one_line_before_any_work(tmp_path, argv, line):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert _one_error_line(result).startswith(f"error: {line}"), result.output


def test_help_imports_no_heavy_library():
    # 'tlearn --help' and a command's --help build every command: the libraries a command
    # runs with are imported in its body, never to list what it offers.
    heavy = ["tensorflow", "keras", "sklearn", "h5py", "ray", "openvino", "onnx", "fastapi",
             "uvicorn", "matplotlib"]
    code = ("import sys\nfrom pipeline.cli import main\n"
            "for argv in (['--help'], ['extract', '--help'], ['serve', '--help']):\n"
            "    sys.argv = ['tlearn', *argv]\n"
            "    try:\n        main()\n    except SystemExit:\n        pass\n"
            f"print('LOADED', [m for m in {heavy!r} if m in sys.modules])")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert shown.stdout.strip().splitlines()[-1] == "LOADED []", shown.stdout + shown.stderr


@pytest.fixture
def trained(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "pets", per_class=8)
    assert runner.invoke(app, ["extract", str(data), *TINY]).exit_code == 0
    store = artifacts / "features" / "pets__vgg16__avg.h5"
    result = runner.invoke(app, ["train", str(store), "--classifier", "logreg", "--cv", "2"])
    assert result.exit_code == 0, result.output
    return store, artifacts / "classifiers" / "pets__vgg16__avg__logreg.joblib", data


def test_train_compare_predict_evaluate(trained):
    store, model, data = trained
    assert model.exists()
    shown = runner.invoke(app, ["compare"])
    assert shown.exit_code == 0 and "pets__vgg16__avg__logreg" in shown.output
    assert "comparison.md" in shown.output
    assert "report page: " in shown.output and "pets/index.html" in shown.output
    pred = runner.invoke(app, ["predict", str(model), str(data / "cat" / "cat_000.jpg"),
                               "--json"])
    assert pred.exit_code == 0
    assert json.loads(pred.stdout)[0]["label"] == "cat"
    assert isinstance(json.loads(pred.stdout)[0]["unknown"], bool)
    table = runner.invoke(app, ["predict", str(model), str(data / "cat" / "cat_000.jpg")])
    assert table.exit_code == 0 and "unknown" in table.output
    assert "no unknown score" not in table.output
    ev = runner.invoke(app, ["evaluate", str(model), str(store)])
    assert ev.exit_code == 0 and "summary.md" in ev.output


def test_predict_out_counts_classified_images_apart_from_unreadable_ones(tmp_path, trained):
    _, model, data = trained
    (data / "cat" / "broken.jpg").write_bytes(b"not a picture")
    out = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(model), str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 16 image(s) classified, skipped 1 unreadable" in result.output
    assert "broken.jpg" in result.output


def test_output_outside_a_terminal_is_whole_lines(tmp_path, trained, monkeypatch):
    # A log's narrow width once gave bars cut to "12/1…", tables cut mid-column and
    # model paths broken mid-word.
    store, model, data = trained
    monkeypatch.setenv("COLUMNS", "50")
    extracted = runner.invoke(app, ["extract", str(data), *TINY, "--out",
                                    str(tmp_path / "again.h5")])
    assert extracted.exit_code == 0, extracted.output
    assert "extract vgg16: 16/16 img (100%) in " in extracted.output
    retrained = runner.invoke(app, ["train", str(store), "--cv", "2", "--overwrite"])
    assert any(line.startswith(f"{model}  (report: ")
               for line in retrained.output.splitlines()), retrained.output
    compared = runner.invoke(app, ["compare"])
    lines = compared.output.splitlines()
    assert "  model: pets__vgg16__avg__logreg" in lines, compared.output
    assert any(line.startswith("  accuracy, 95% CI: 1.000 [") for line in lines)
    for output in (extracted.output, retrained.output, compared.output):
        assert "…" not in output and "━" not in output and "┃" not in output


def test_stage2_user_mistakes(tmp_path, trained):
    store, model, data = trained
    junk = tmp_path / "junk.h5"
    junk.write_text("nope")
    tampered = tmp_path / "t.joblib"
    tampered.write_bytes(model.read_bytes() + b"!")
    (tmp_path / "t.json").write_text(model.with_suffix(".json").read_text())
    before = model.read_bytes()
    cases = [
        (["train", str(tmp_path / "missing.h5")], "does not exist"),
        (["train", str(junk)], "not a readable HDF5"),
        (["train", str(store), "--classifier", "knn"], "unknown classifier 'knn'"),
        (["train", str(store), "--cv", "9", "--overwrite"], "fewer than the 9"),
        (["train", str(store), "--grid", "a,b"], "not a comma-separated list"),
        (["train", str(store), "--cv", "3"], "cv: 3 here, 2 in the saved model"),
        (["predict", str(tampered), str(data / "cat" / "cat_000.jpg")], "tampered"),
        (["evaluate", str(model), str(junk)], "not a readable HDF5"),
        (["compare", str(tmp_path / "x.txt")], "does not exist"),
    ]
    for argv, message in cases:
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert message in _one_error_line(result), argv
    assert model.read_bytes() == before


def test_compare_without_reports(artifacts):
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2
    assert "no reports found" in _one_error_line(result)


def test_datasets_commands(tmp_path, artifacts):
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0
    assert all(n in listed.output for n in ("digits", "flowers17", "cifar10"))
    made = runner.invoke(app, ["datasets", "digits", "--dest", str(tmp_path / "d")])
    assert made.exit_code == 0 and (tmp_path / "d" / "9").is_dir()
    bad = runner.invoke(app, ["datasets", "fetch", "mnist"])
    assert bad.exit_code == 2 and "unknown dataset 'mnist'" in _one_error_line(bad)


def test_demo_on_a_small_slice(artifacts):
    result = runner.invoke(app, ["demo", "--limit-per-class", "8"])
    assert result.exit_code == 0, result.output
    for step in ("1/4", "2/4", "3/4", "4/4"):
        assert step in result.output
    assert "logreg" in result.output and "predicted" in result.output
    assert (artifacts / "features" / "digits8__efficientnet_lite0.h5").exists()
    assert len(list((artifacts / "classifiers").glob("*.joblib"))) == 4


def test_demo_heads_the_score_column_with_the_best_models_score_kind(monkeypatch, tmp_path):
    # linear_svm is Platt-scaled: its scores are probabilities, not margins.
    from pipeline import workflows

    best = workflows.TrainOutcome("digits__svm", tmp_path / "m.joblib", tmp_path / "r",
                                  {"classifier": "linear_svm"})
    first = workflows.TrainOutcome("digits__logreg", tmp_path / "l.joblib", tmp_path / "r",
                                   {"classifier": "logreg"})
    result = workflows.DemoResult(
        tmp_path, tmp_path / "s.h5", [first, best], [], truths=["3"], best=best,
        predictions=[{"path": "a.png", "label": "3", "score": 0.9, "score_kind": "probability"}])
    monkeypatch.setattr(workflows, "run_demo", lambda **kwargs: result)
    monkeypatch.setenv("COLUMNS", "200")  # headers unwrapped
    output = runner.invoke(app, ["demo"]).output
    assert "probability" in output and "margin" not in output
    assert f"tlearn predict {tmp_path / 'm.joblib'} IMAGE" in output  # the best model's file


def test_stage3_commands_and_bad_input(trained, tmp_path):
    store, _, data = trained
    bad = runner.invoke(app, ["finetune", str(store), "--unfreeze", "nope"])
    assert bad.exit_code == 2 and "--unfreeze 'nope'" in _one_error_line(bad)
    ok = runner.invoke(app, ["scratch", str(store), "--input-size", "16", "--epochs", "1",
                             "--val-share", "0.2", "--batch-size", "8"])
    assert ok.exit_code == 0, ok.output
    assert "scratch_minivggnet" in ok.output
    grown = runner.invoke(app, ["augment", str(data), "--out", str(tmp_path / "big"),
                                "--per-class", "10"])
    assert grown.exit_code == 0, grown.output
    assert len(list((tmp_path / "big" / "cat").iterdir())) == 10


def test_serve_refuses_bad_model_and_port(tmp_path, trained):
    _, model, _ = trained
    missing = runner.invoke(app, ["serve", str(tmp_path / "none.joblib")])
    assert missing.exit_code == 2 and "does not exist" in _one_error_line(missing)
    other = tmp_path / "model.txt"
    other.write_text("x")
    wrong = runner.invoke(app, ["serve", str(other)])
    assert wrong.exit_code == 2 and "neither a .joblib" in _one_error_line(wrong)
    port = runner.invoke(app, ["serve", str(model), "--port", "70000"])
    assert port.exit_code == 2 and "--port" in _one_error_line(port)


def test_no_color_gives_progress_lines_even_in_a_terminal():
    import io

    from rich.console import Console

    from pipeline.progress import progress_bar

    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, no_color=True, width=40)
    with progress_bar("extract x", console=terminal) as progress:
        for done in range(0, 11):
            progress(done, 10)
    lines = out.getvalue().splitlines()
    assert lines[0] == "extract x: 0/10 img (0%)" and len(lines) == 11
    assert lines[-1].startswith("extract x: 10/10 img (100%) in ")


@pytest.mark.parametrize("damage", [b"[1,2]", b"null", b'{"model": "x"}', b"\xff\xfe{}"])
def test_a_damaged_metrics_json_is_skipped_with_one_warning(trained, artifacts, damage):
    bad = artifacts / "reports" / "pets__vgg16__avg__broken" / "metrics.json"
    bad.parent.mkdir()
    bad.write_bytes(damage)
    for argv in (["compare"], ["report"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and f"skipped {bad}: damaged" in warnings[0], result.output
        assert "Traceback" not in result.output
    assert "pets__vgg16__avg__logreg" in runner.invoke(app, ["compare"]).output


def _unshare_works() -> bool:
    import shutil
    import subprocess

    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


def run_with_read_only_folder(folder, argv):
    """Run the CLI in a subprocess that sees ``folder`` mounted read-only (EROFS).

    A private mount namespace (unshare -rm) changes nothing outside the subprocess, and
    works for root too, whom a chmod would not stop.
    """
    import subprocess
    import sys

    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), sys.executable, "-c",
         "from pipeline.cli import main; main()", *map(str, argv)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


needs_unshare = pytest.mark.skipif(not _unshare_works(),
                                   reason="unshare -rm (user and mount namespaces) is not "
                                          "allowed here")


def _one_line_about(result, folder):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to "), result.stderr
    assert f"{folder}: the folder is on a read-only file system" in lines[0]


@pytest.mark.slow
@needs_unshare
def test_read_only_output_folders_give_one_line_and_nothing_half_written(trained, tmp_path):
    _, model, data = trained
    ro = tmp_path / "ro"
    ro.mkdir()
    cases = [
        ["predict", model, data / "cat" / "cat_000.jpg", "--out", ro / "p.csv"],
        ["export", model, "--out", ro / "exported", "--format", "onnx"],
        ["augment", data, "--out", ro / "grown", "--per-class", "10"],
        ["datasets", "digits", "--dest", ro / "digits"],
    ]
    for argv in cases:
        _one_line_about(run_with_read_only_folder(ro, argv), ro)
    assert list(ro.iterdir()) == []


@pytest.mark.slow
@needs_unshare
def test_train_into_a_read_only_reports_folder_then_again_when_writable(trained, artifacts):
    store = trained[0]
    reports = artifacts / "reports"
    argv = ["train", store, "--classifier", "ovr", "--cv", "2"]
    _one_line_about(run_with_read_only_folder(reports, argv), reports)
    # the model was saved before its report; a rerun finishes the report, no --overwrite
    again = runner.invoke(app, [str(a) for a in argv])
    assert again.exit_code == 0, again.output
    assert (reports / "pets__vgg16__avg__ovr" / "metrics.json").exists()


@pytest.mark.parametrize("command", ["extract", "train", "finetune", "scratch", "augment"])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_every_seed_option_gives_its_range_in_one_line(tmp_path, command, seed):
    argv = [command, str(tmp_path / "data"), "--seed", seed]
    if command == "augment":
        argv += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert f"--seed must be an integer from 0 to 4294967295, got {seed}" in _one_error_line(
        result)
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("code,why", [(13, "is not writable"),
                                      (30, "is on a read-only file system")])
def test_a_permission_error_names_the_folder_in_one_line(tmp_path, capsys, code, why):
    """EACCES as root cannot be made real here (root writes anywhere): raised by hand."""
    import os

    import typer

    from pipeline.cli.errors import user_errors

    @user_errors
    def writes():
        raise OSError(code, os.strerror(code), str(tmp_path / "out" / ".model.tmp"))

    with pytest.raises(typer.Exit) as raised:
        writes()
    assert raised.value.exit_code == 2
    assert " ".join(capsys.readouterr().err.split()) == (
        f"error: cannot write to {tmp_path / 'out'}: the folder {why}; choose another "
        "output folder or make it writable")


def test_an_unreadable_input_is_not_called_an_unwritable_folder(tmp_path, capsys,
                                                               monkeypatch):
    import os

    import typer

    from pipeline.cli.errors import user_errors

    image = tmp_path / "photo.jpg"
    image.write_bytes(b"x")
    # root reads anything: os.access stands in for a file another user keeps to himself
    monkeypatch.setattr(os, "access", lambda path, mode: False)

    @user_errors
    def reads():
        raise PermissionError(13, "Permission denied", str(image))

    with pytest.raises(typer.Exit):
        reads()
    assert " ".join(capsys.readouterr().err.split()) == (
        f"error: cannot read {image}: permission denied; make it readable")


def test_other_os_errors_are_not_taken_for_permission_problems(tmp_path):
    from pipeline.cli.errors import user_errors

    @user_errors
    def fails():
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "x"))

    with pytest.raises(FileNotFoundError):
        fails()


def test_outputs_on_a_read_only_or_full_disk_are_one_line(tmp_path, trained, tmpfs,
                                                         monkeypatch):
    store, model, data = trained
    read_only = tmpfs("ro", size="1m", options="ro")
    result = runner.invoke(app, ["extract", str(data), *TINY, "--out", str(read_only / "f.h5")])
    assert result.exit_code == 2, result.output
    assert "read-only file system" in _one_error_line(result)
    full = tmpfs("full", size="1m")
    fill_disk(full)
    result = runner.invoke(app, ["predict", str(model), str(data), "--out", str(full / "p.csv")])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in _one_error_line(result)
    assert sorted(p.name for p in full.iterdir()) == ["ballast"]
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(full))
    result = runner.invoke(app, ["train", str(store), "--classifier", "logreg", "--cv", "2"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output  # progress lines, then the one error line
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "No space left on device" in last
    assert [p for p in (full / "classifiers").iterdir()] == []


def test_predict_with_a_model_saved_before_the_unknown_score_says_so(tmp_path):
    old = Path(__file__).parent / "fixtures" / "models_v0" / "store__logreg.joblib"
    image = make_image_folder(tmp_path / "data", per_class=1) / "cat" / "cat_000.jpg"
    result = runner.invoke(app, ["predict", str(old), str(image)])
    assert result.exit_code == 0, result.output
    assert "has no unknown score" in result.output and "cat_000" in result.output
    out = tmp_path / "p.csv"
    assert runner.invoke(app, ["predict", str(old), str(image), "--out", str(out)]).exit_code == 0
    import csv

    row = next(csv.DictReader(out.open()))
    assert row["unknown"] == "" and row["unknown_score"] == "" and row["label"]
    refused = runner.invoke(app, ["predict", str(old), str(image), "--coverage", "0.9"])
    assert refused.exit_code != 0 and "has no unknown score" in refused.output
    assert "Traceback" not in refused.output
