import json
import os
import re

import pytest
from typer.testing import CliRunner

from features.store import FeatureStore
from pipeline.cli import app
from tests.conftest import REPO_ROOT, make_image_folder

runner = CliRunner()
TINY = ["--backbone", "vgg16", "--weights", "none", "--input-size", "32", "--pooling", "avg",
        "--batch-size", "4"]


def _one_error_line(result):
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
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
    assert json.loads(pred.output)[0]["label"] == "cat"
    refused = runner.invoke(app, ["finetune", str(store_path), "--warmup-epochs", "1"])
    assert refused.exit_code == 2
    assert "pass --backbone with one of them" in _one_error_line(refused)


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
    assert message in _one_error_line(result)
    written = list((artifacts / "features").glob("*")) if (artifacts / "features").exists() else []
    assert written == []


def test_backbones_table_lists_sizes():
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0
    for name in ("vgg16", "resnet50", "inception_v3", "xception", "efficientnet_lite0"):
        assert name in result.output
    assert "25,088" in result.output


def test_backbone_layers_listing():
    result = runner.invoke(app, ["backbones", "--layers", "vgg16"])
    assert result.exit_code == 0
    assert re.search(r"block4_pool\s.*\(14, 14, 512\)", result.output)


def test_help_of_every_command():
    for command in ("extract", "backbones", "inspect", "train", "compare", "predict",
                    "evaluate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command


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
    assert json.loads(pred.output)[0]["label"] == "cat"
    ev = runner.invoke(app, ["evaluate", str(model), str(store)])
    assert ev.exit_code == 0 and "summary.md" in ev.output


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
        (["train", str(store), "--cv", "3"], "--overwrite"),
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


def _readme_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    commands = set()
    in_bash = False
    for line in readme.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        line = line.strip().lstrip("$ ")
        if in_bash and line.startswith("tlearn "):
            words = line.split()[1:]
            command = [words[0]]
            if words[0] == "datasets" and len(words) > 1 and not words[1].startswith("-"):
                command.append(words[1])
            commands.add(tuple(command))
    return sorted(commands)


def test_readme_documents_real_commands():
    commands = _readme_commands()
    assert len(commands) >= 8, commands
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_readme_mentions_every_command():
    documented = {c[0] for c in _readme_commands()}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    registered |= {g.name for g in app.registered_groups}
    assert registered <= documented, registered - documented


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


def _fill(folder):
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    for block in (1 << 16, 4096, 512, 1):
        try:
            while True:
                os.write(fd, b"x" * block)
        except OSError:
            pass
    os.close(fd)


def test_outputs_on_a_read_only_or_full_disk_are_one_line(tmp_path, trained, tmpfs,
                                                         monkeypatch):
    store, model, data = trained
    read_only = tmpfs("ro", size="1m", options="ro")
    result = runner.invoke(app, ["extract", str(data), *TINY, "--out", str(read_only / "f.h5")])
    assert result.exit_code == 2, result.output
    assert "Read-only file system" in _one_error_line(result)
    full = tmpfs("full", size="1m")
    _fill(full)
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
