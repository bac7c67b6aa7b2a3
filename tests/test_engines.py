"""The engine choice: local by default (no Ray imported), one clear line for every mistake."""

import subprocess
import sys

import pytest

from features.errors import UserInputError
from pipeline.engines import RAY_MISSING, Engine, open_engine, resolve_address
from tests.conftest import REPO_ROOT


def test_local_engine_computes_here_and_imports_nothing_from_ray():
    # A fresh interpreter: the test session itself may have imported Ray for other tests.
    code = ("import sys\n"
            "from pipeline.engines import open_engine\n"
            "import pipeline.workflows, pipeline.cli\n"
            "with open_engine('local') as e:\n"
            "    assert e.feature_batches is None and e.fold_runner is None\n"
            "    assert e.score_batches('m.joblib', None) is None\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_engine_and_address_without_ray_are_refused():
    with pytest.raises(UserInputError, match="unknown engine 'spark'; choose one of: local, ray"), \
            open_engine("spark"):
        pass
    with pytest.raises(UserInputError, match="--address needs --engine ray"), \
            open_engine("local", "127.0.0.1:6379"):
        pass


def test_ray_not_installed_gives_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(UserInputError) as caught, open_engine("ray"):
        pass
    assert str(caught.value) == RAY_MISSING == "Ray is not installed; pip install 'tlearn[ray]'"


def test_cli_says_ray_is_missing_without_a_traceback(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from pipeline.cli import main\n"
            f"sys.argv = ['tlearn', 'train', {str(tmp_path / 'x.h5')!r}, '--engine', 'ray']\n"
            "main()\n")
    (tmp_path / "x.h5").write_bytes(b"")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 2
    assert "Ray is not installed; pip install 'tlearn[ray]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_address_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address("10.0.0.2:6379") == "10.0.0.2:6379"
    assert resolve_address(None) == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(None) is None  # a local Ray started for the run


def test_engine_defaults_to_here():
    assert Engine().name == "local" and Engine().score_batches("m", None) is None


def test_cli_hands_engine_and_address_to_every_workflow(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import pipeline.workflows as workflows
    from pipeline.cli import app

    seen = {}

    def stop(name):
        def record(*args, **kwargs):
            given = vars(args[0]) if name == "extract_dataset" else kwargs  # its settings
            seen[name] = (given["engine"], given["address"])
            raise UserInputError(f"{name} stopped by the test")
        return record

    for name in ("extract_dataset", "train_store", "write_predictions", "predict_files"):
        monkeypatch.setattr(workflows, name, stop(name))
    ray_args = ["--engine", "ray", "--address", "10.0.0.1:6379"]
    runner = CliRunner()
    for args in (["extract", str(tmp_path)], ["train", str(tmp_path / "s.h5")],
                 ["predict", "m.joblib", str(tmp_path), "--out", str(tmp_path / "p.csv")],
                 ["predict", "m.joblib", str(tmp_path)]):
        result = runner.invoke(app, [*args, *ray_args])
        assert result.exit_code == 2, result.output
    assert seen == {name: ("ray", "10.0.0.1:6379") for name in
                    ("extract_dataset", "train_store", "write_predictions", "predict_files")}


def test_an_unreachable_cluster_is_one_line_at_once():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tlearn[ray]')")
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserInputError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"), \
            open_engine("ray", f"127.0.0.1:{port}"):
        pass
    with pytest.raises(UserInputError, match="is not HOST:PORT"), open_engine("ray", "head"):
        pass


def test_ray_connects_only_when_work_is_handed_to_it(tmp_path, artifacts, monkeypatch):
    # Bad settings, an up-to-date store and a refused overwrite answer before Ray starts.
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tlearn[ray]')")
    import pipeline.ray_engine as ray_engine
    from pipeline.workflows import train_store
    from tests.conftest import TINY_EXTRACT, extract, make_image_folder

    data = make_image_folder(tmp_path / "pets", per_class=4)
    store = extract(data, **TINY_EXTRACT).result.path
    train_store(store, classifier="logreg", cv=2)
    connections = []

    def no_cluster(address):
        connections.append(address)
        raise AssertionError("connected to Ray")

    monkeypatch.setattr(ray_engine, "connect", no_cluster)
    with pytest.raises(UserInputError, match="unknown pooling 'mean'"):
        extract(data, engine="ray", **{**TINY_EXTRACT, "pooling": "mean"})
    assert extract(data, engine="ray", **TINY_EXTRACT).result.up_to_date
    with pytest.raises(UserInputError, match="already exists with other settings"):
        extract(data, engine="ray", out=store, **{**TINY_EXTRACT, "pooling": "max"})
    assert train_store(store, classifier="logreg", cv=2, engine="ray")[0].up_to_date
    assert connections == []
    with pytest.raises(AssertionError, match="connected to Ray"):
        train_store(store, classifier="logreg", cv=2, engine="ray", overwrite=True)
    assert connections == [None]


def test_the_ray_engine_cannot_be_used_after_its_command(monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'tlearn[ray]')")
    import pipeline.ray_engine as ray_engine

    monkeypatch.setattr(ray_engine, "connect", lambda address: pytest.fail("connected"))
    with open_engine("ray") as engine:
        pass
    with pytest.raises(RuntimeError, match="used after its command ended"):
        engine.feature_batches(None, [], start=0, batch_size=1)
