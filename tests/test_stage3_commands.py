import json

import numpy as np
import pytest

from features.errors import UserInputError
from pipeline.augmentation import AugmentationConfig
from pipeline.stage3 import (
    FinetuneSettings,
    ScratchSettings,
    finetune,
    images_from_store,
    train_from_scratch,
)
from pipeline.workflows import compare_models, predict_files, train_store
from tests.conftest import TINY_EXTRACT, make_image_folder
from tests.test_stage3_training import eager  # noqa: F401 - fixture


@pytest.fixture
def store(shapes_store):
    return shapes_store


def test_finetune_two_phases_on_the_store_split(store, artifacts):
    store_path, data = store
    settings = FinetuneSettings(store_path, warmup_epochs=1, finetune_epochs=1, batch_size=8,
                                val_share=0.2, unfreeze="block5")
    result = finetune(settings)
    assert result.model_path.suffix == ".keras" and result.model_path.exists()
    assert [r["phase"] for r in result.history] == ["warmup", "finetune"]
    assert result.report["stage"] == "finetune"
    test_images = images_from_store(store_path, val_share=0.2).test[0]
    assert result.report["test"]["n_samples"] == len(test_images)
    for name in ("history.csv", "curves.png", "confusion.png", "summary.md"):
        assert (result.report_dir / name).exists(), name
    side = json.loads(result.model_path.with_suffix(".json").read_text())
    assert side["backbone"] == "vgg16" and side["label_names"] == ["blue", "green", "red"]
    # calibration measured like stage 2's, temperature fitted on validation images only
    calibration = result.report["calibration"]
    assert calibration["validation_images"] == len(images_from_store(
        store_path, val_share=0.2).val[0])
    assert side["temperature"] == calibration["temperature"]
    assert calibration["validation_log_loss_after"] <= calibration["validation_log_loss_before"]
    assert result.report["test"]["ece"] is not None
    assert "Calibration:" in (result.report_dir / "summary.md").read_text()
    # predict accepts the .keras model like a joblib one
    out = predict_files(result.model_path, [data / "red" / "red_000.jpg"], top=3)
    assert out[0]["label"] in {"red", "green", "blue"} and len(out[0]["top"]) == 3
    # compare lists it beside the linear classifiers of the same store
    train_store(store_path, classifier="logreg", cv=2)
    rows, _, _ = compare_models([store_path])
    assert {r["stage"] for r in rows} == {"features", "finetune"}
    # rerun with the same settings: nothing to do
    again = finetune(settings)
    assert again.history == result.history


def test_interrupted_epoch_resumes_from_the_last_completed_one(store, artifacts):
    store_path, _ = store
    seen = []

    def interrupt(epoch, batch):
        seen.append((epoch, batch))
        if epoch == 2 and batch == 0:
            raise KeyboardInterrupt

    kwargs = {"input_size": 16, "epochs": 3, "batch_size": 8, "val_share": 0.2, "patience": 5}
    with pytest.raises(KeyboardInterrupt):
        train_from_scratch(ScratchSettings(store_path, **kwargs), on_batch=interrupt)
    state = json.loads((artifacts / "training" / "shapes__vgg16__avg__scratch_minivggnet"
                        / "state.json").read_text())["state"]
    assert len(state["history"]) == 1
    first_epoch = state["history"][0]
    result = train_from_scratch(ScratchSettings(store_path, **kwargs))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[0] == first_epoch  # epoch 1 was not redone


def test_same_seed_same_training(tmp_path, store, monkeypatch):
    store_path, _ = store
    kwargs = {"input_size": 16, "epochs": 2, "batch_size": 8, "val_share": 0.2}
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "a1"))
    first = train_from_scratch(ScratchSettings(store_path, **kwargs))
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(tmp_path / "a2"))
    second = train_from_scratch(ScratchSettings(store_path, **kwargs))
    np.testing.assert_allclose([r["loss"] for r in first.history],
                               [r["loss"] for r in second.history], rtol=1e-5)


def test_scratch_without_augmentation_from_folder(store, artifacts):
    _, data = store
    result = train_from_scratch(ScratchSettings(
        data, input_size=16, epochs=1, batch_size=8, val_share=0.2,
        augmentation=AugmentationConfig(enabled=False)))
    assert result.report["stage"] == "scratch"
    assert result.model_path.exists()


def test_bad_inputs_are_clear_and_train_nothing(store, artifacts):
    store_path, data = store
    with pytest.raises(UserInputError, match="--unfreeze 'block9' is not a layer"):
        finetune(FinetuneSettings(store_path, unfreeze="block9", warmup_epochs=1,
                                  finetune_epochs=1))
    with pytest.raises(UserInputError, match="too few training images for a validation"):
        finetune(FinetuneSettings(store_path, val_share=0.01))
    (data / "red" / "red_000.jpg").rename(data / "moved.jpg")
    with pytest.raises(UserInputError, match=r"1 of 30 images .* missing.*red_000\.jpg"):
        finetune(FinetuneSettings(store_path))
    assert not (artifacts / "training").exists()
    assert not list((artifacts / "classifiers").glob("*.keras")) if (
        artifacts / "classifiers").exists() else True


@pytest.mark.usefixtures("eager")
def test_store_extracted_again_with_another_split_is_not_reused(tmp_path, artifacts):
    from tests.conftest import extract

    data = make_image_folder(tmp_path / "shapes", classes=("red", "green", "blue"),
                             per_class=10)
    store = extract(data, **TINY_EXTRACT, seed=1).result.path
    old_test = images_from_store(store, val_share=0.2).test[0]
    kwargs = {"input_size": 16, "epochs": 2, "batch_size": 8, "val_share": 0.2}

    def interrupt(epoch, batch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_from_scratch(ScratchSettings(store, **kwargs), on_batch=interrupt)
    # the same store path, extracted again with another split seed: same counts per
    # class, other test images
    assert extract(data, **TINY_EXTRACT, seed=2, overwrite=True).result.path == store
    assert images_from_store(store, val_share=0.2).test[0] != old_test
    with pytest.raises(UserInputError, match="unfinished run with other settings or data"):
        train_from_scratch(ScratchSettings(store, **kwargs))  # epoch 1 was trained on the old split
    result = train_from_scratch(ScratchSettings(store, overwrite=True, **kwargs))
    assert [r["epoch"] for r in result.history] == [1, 2]

    extract(data, **TINY_EXTRACT, seed=1, overwrite=True)
    with pytest.raises(UserInputError, match="trained with other settings or data"):
        # not "up to date": the model saw other images
        train_from_scratch(ScratchSettings(store, **kwargs))


@pytest.mark.parametrize("settings,option,value", [
    (FinetuneSettings, "warmup_lr", -1e-3), (FinetuneSettings, "finetune_lr", -1.0),
    (FinetuneSettings, "finetune_lr", 0.0), (FinetuneSettings, "warmup_lr", float("nan")),
    (ScratchSettings, "learning_rate", -0.01), (ScratchSettings, "learning_rate", 0.0),
    (FinetuneSettings, "batch_size", 0), (ScratchSettings, "patience", -1),
])
def test_learning_rates_and_counts_are_checked_before_any_work(tmp_path, artifacts, settings,
                                                               option, value):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(UserInputError, match=rf"^{flag} must be .*got {value}$"):
        settings(tmp_path / "no-such-folder", **{option: value})
    assert not artifacts.exists()


@pytest.mark.parametrize("damage", [b"[1,2]", b"null", b"\xff\xfe{}", b"{"])
def test_a_damaged_stage3_sidecar_reads_as_no_record(tmp_path, damage):
    """Then the model counts as not up to date (no traceback from .get on a list)."""
    from pipeline.stage3.commands import _read_json

    side = tmp_path / "m.json"
    side.write_bytes(damage)
    assert _read_json(side) == {}


def test_recorded_settings_keep_their_form_and_a_new_setting_is_recorded_by_itself():
    # The sidecar's settings and the run key are made of them: the form sidecars were
    # written in keeps their models up to date, and a setting left out would let a model
    # trained otherwise pass for up to date.
    import dataclasses

    from pipeline.stage3.commands import _recorded_settings

    assert _recorded_settings(ScratchSettings("s", epochs=3, seed=1)) == {
        "input_size": 64, "epochs": 3, "learning_rate": 0.01, "batch_size": 32,
        "patience": 5, "seed": 1, "augmentation": AugmentationConfig().to_dict()}

    @dataclasses.dataclass(frozen=True)
    class WithANewSetting(FinetuneSettings):
        label_smoothing: float = 0.1

    recorded = _recorded_settings(WithANewSetting("s"))
    assert recorded["label_smoothing"] == 0.1
    assert recorded["head"] == {"pooling": "avg", "units": 256, "dropout": 0.5}


def test_a_stage3_model_carries_the_unknown_score_through_predict(store, artifacts, tmp_path):
    import keras

    from classifiers.novelty import UnknownScore
    from classifiers.persistence import sidecar_path
    from features.images import load_image
    from pipeline.stage3 import load_keras_classifier
    from pipeline.stage3.models import scale_to_unit
    from pipeline.workflows import evaluate_model
    from tests.conftest import write_image

    store_path, _ = store
    result = train_from_scratch(ScratchSettings(store_path, input_size=16, epochs=2,
                                                batch_size=8, val_share=0.2))
    side = json.loads(sidecar_path(result.model_path).read_text())
    score = UnknownScore.from_json(side["unknown"])
    split = images_from_store(store_path, val_share=0.2)
    # fitted on the train split's features of the network's last layer, never on test
    # images: the held-out training images set the threshold
    assert score.coverage == 0.95 and 0.6 <= score.held_out_coverage <= 1.0
    unknown = result.report["unknown"]
    assert unknown["threshold"] == score.threshold
    assert unknown["risk_coverage"][-1][0] == 1.0  # every test image accepted at the end
    # predict says unknown per image, the score being the distance of the penultimate
    # features (what the network's last layer classifies) to the training ones
    strangers = [write_image(tmp_path / f"grey_{i}.png", (128, 128, 128), seed=i)
                 for i in range(3)]
    paths = [*split.test[0], *map(str, strangers)]
    out = predict_files(result.model_path, paths)
    network = keras.models.load_model(result.model_path)
    penultimate = keras.Model(network.inputs, network.layers[-1].input)
    pixels = np.stack([load_image(p, 16) for p in paths])
    expected = score.score(np.asarray(penultimate.predict(scale_to_unit(pixels), verbose=0)))
    np.testing.assert_allclose([r["unknown_score"] for r in out], expected, rtol=1e-4)
    assert [r["unknown"] for r in out] == list(expected > score.threshold)
    assert {r["label"] for r in out} <= {"red", "green", "blue"}  # still the best class
    # another coverage at predict time, from the held-out scores the sidecar keeps
    loose = predict_files(result.model_path, paths, coverage=0.3)
    assert sum(r["unknown"] for r in loose) >= sum(r["unknown"] for r in out)
    assert load_keras_classifier(result.model_path).unknown_.threshold == score.threshold
    # evaluate reports it on the test images as training did
    evaluated = evaluate_model(result.model_path, store_path).report["unknown"]
    assert evaluated["threshold"] == score.threshold
    assert evaluated["test_accepted"] == unknown["test_accepted"]
    assert evaluated["test_accepted_accuracy"] == unknown["test_accepted_accuracy"]
    assert evaluated["risk_coverage"][-1] == pytest.approx(unknown["risk_coverage"][-1])


@pytest.mark.parametrize("backbone", [pytest.param("convnext_tiny", marks=pytest.mark.slow),
                                      "efficientnetv2_b0"])
def test_finetune_trains_the_keras_applications_backbones_of_this_decade(
        tmp_path, artifacts, backbone):
    data = make_image_folder(tmp_path / "data", classes=("red", "green", "blue"), per_class=8)
    result = finetune(FinetuneSettings(data, backbone=backbone, weights="none", input_size=32,
                                       warmup_epochs=1, finetune_epochs=1, batch_size=8,
                                       val_share=0.2))
    side = json.loads(result.model_path.with_suffix(".json").read_text())
    assert side["backbone"] == backbone
    assert [r["phase"] for r in result.history] == ["warmup", "finetune"]
    out = predict_files(result.model_path, [data / "red" / "red_000.jpg"], top=3)
    assert out[0]["label"] in {"red", "green", "blue"}


def test_finetune_refuses_dinov2_in_one_line(tmp_path, artifacts):
    data = make_image_folder(tmp_path / "data", classes=("red", "green"), per_class=6)
    with pytest.raises(UserInputError, match="fine-tuning dinov2_small is not supported"):
        finetune(FinetuneSettings(data, backbone="dinov2_small", weights="none",
                                  input_size=28))
    assert not (artifacts / "training").exists()
