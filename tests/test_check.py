"""tlearn check and near-duplicate grouping at extraction, on tiny generated photos."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from features.errors import UserInputError
from features.store import FeatureStore, FeatureStoreWriter
from pipeline.cli import app
from tests.conftest import TINY_EXTRACT, extract

runner = CliRunner()
CLASSES = {"red": (200, 50, 40), "green": (50, 180, 60), "blue": (40, 70, 200)}


def photo(seed: int, colour) -> Image.Image:
    """A 96 x 80 'photo': a class colour with smooth random light and dark blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:80, 0:96]
    light = np.zeros((80, 96))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 80), rng.uniform(0, 96), rng.uniform(10, 30)
        light += rng.choice([-1, 1]) * 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
    pixels = np.clip(np.array(colour)[None, None] + light[..., None], 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def near_copy(source: Path, target: Path, how: str) -> Path:
    """``source`` resized, re-encoded, cropped or brightened, as the copies people keep."""
    with Image.open(source) as image:
        img = image.convert("RGB")
    w, h = img.size
    if how == "resized":
        img = img.resize((int(w * 0.6), int(h * 0.6)))
    elif how == "cropped":
        img = img.crop((3, 2, w - 2, h - 3))
    elif how == "brightened":
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + 10, 0, 255).astype(np.uint8))
    target.parent.mkdir(parents=True, exist_ok=True)
    img.save(target, "JPEG", quality=55 if how == "re-encoded" else 80)
    return target


def make_dataset(root: Path, per_class: int = 10) -> Path:
    for c, (name, colour) in enumerate(CLASSES.items()):
        for i in range(per_class):
            path = root / name / f"{name}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(100 * c + i, colour).save(path)
    return root


COPIES = {"red/red_00.png": "resized", "green/green_01.png": "re-encoded",
          "blue/blue_02.png": "cropped", "red/red_03.png": "brightened"}


def plant_copies(root: Path) -> dict[str, str]:
    """Copy -> source (absolute paths), each copy beside its source."""
    out = {}
    for source, how in COPIES.items():
        target = root / Path(source).parent / f"copy_{how}.jpg"
        near_copy(root / source, target, how)
        out[str(target)] = str(root / source)
    return out


def rows_by_path(store: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    with FeatureStore(store) as fs:
        return {p: i for i, p in enumerate(fs.paths)}, fs.groups, fs.split


@pytest.fixture
def planted(tmp_path, artifacts):
    root = make_dataset(tmp_path / "photos")
    return root, plant_copies(root)


def test_extract_keeps_every_near_copy_with_its_photo_and_distinct_photos_apart(planted,
                                                                              tmp_path):
    root, copies = planted
    report = extract(root, out=tmp_path / "s.h5", test_size=0.5, seed=3, **TINY_EXTRACT)
    assert report.result.near_duplicate_groups == len(copies)
    row, groups, split = rows_by_path(report.result.path)
    for copy, source in copies.items():
        assert groups[row[copy]] == groups[row[source]]
        assert split[row[copy]] == split[row[source]]
    # every other photo is a group of its own: look-alikes of one class are not joined
    assert len(np.unique(groups)) == len(groups) - len(copies)
    with FeatureStore(report.result.path) as fs:
        assert fs.attrs["n_near_duplicate_groups"] == len(copies)
        assert fs.attrs["n_groups"] == len(groups) - len(copies)


def test_without_near_duplicates_a_copy_straddles_and_check_calls_it_a_leak(planted, tmp_path):
    root, copies = planted
    store = extract(root, out=tmp_path / "old.h5", test_size=0.5, seed=3,
                    near_duplicates=False, **TINY_EXTRACT).result.path
    row, _groups, split = rows_by_path(store)
    straddling = {c for c, s in copies.items() if split[row[c]] != split[row[s]]}
    assert straddling  # the store an older tlearn made: copies on both sides of the split
    from pipeline.workflows.check import check_store

    report = check_store(store)
    leaks = {(f.path, f.related_path) for f in report.findings if f.issue == "leak"}
    pairs = {tuple(sorted((f.path, f.related_path))) for f in report.findings
             if f.issue in ("leak", "near_duplicate")}
    assert pairs == {tuple(sorted(p)) for p in copies.items()}
    assert {tuple(sorted(p)) for p in leaks} == {tuple(sorted((c, copies[c])))
                                                 for c in straddling}


def test_check_finds_flipped_labels_and_an_off_topic_photo_and_writes_the_csv(tmp_path,
                                                                           artifacts):
    root = make_dataset(tmp_path / "photos", per_class=12)
    flipped = [(root / "red" / "red_05.png", "green"), (root / "blue" / "blue_07.png", "red")]
    for path, label in flipped:
        path.rename(root / label / f"flipped_{path.name}")
    odd = np.indices((80, 96)).sum(axis=0) // 8 % 2 * 255  # a black and white checkerboard
    Image.fromarray(np.repeat(odd[..., None], 3, axis=2).astype(np.uint8)).save(
        root / "green" / "checkerboard.png")
    store = extract(root, out=tmp_path / "s.h5", **TINY_EXTRACT).result.path
    out = tmp_path / "issues.csv"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["check", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([*before, "issues.csv"])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    labels = [r for r in rows if r["issue"] == "label"]
    found = {Path(r["path"]).name: r["suggested_label"] for r in labels[:4]}
    assert found.get("flipped_red_05.png") == "red"
    assert found.get("flipped_blue_07.png") == "blue"
    scores = [float(r["score"]) for r in labels]
    assert scores == sorted(scores, reverse=True)
    outliers = [Path(r["path"]).name for r in rows if r["issue"] == "outlier"]
    assert outliers[:1] == ["checkerboard.png"]
    assert "label" in result.output and "outlier" in result.output
    # the issues.csv itself, given back to extract: every image it names is left out
    again = extract(root, out=tmp_path / "clean.h5", exclude=out, **TINY_EXTRACT)
    named = {r["path"] for r in rows}
    assert again.exclusions["excluded"] == len(named)
    with FeatureStore(again.result.path) as fs:
        assert not named & set(fs.paths) and fs.n_rows == 37 - len(named)


def test_exclusion_file_leaves_out_and_relabels_and_is_recorded(tmp_path, artifacts):
    root = make_dataset(tmp_path / "photos", per_class=6)
    listing = tmp_path / "fix.csv"
    listing.write_text("path,label\nphotos/red/red_01.png,\nphotos/blue/blue_02.png,green\n"
                       "photos/nowhere.png,\n")
    result = runner.invoke(app, ["extract", str(root), "--out", str(tmp_path / "s.h5"),
                                 "--exclude", str(listing), "--backbone", "vgg16",
                                 "--weights", "none", "--input-size", "32", "--pooling", "avg"])
    assert result.exit_code == 0, result.output
    assert "left out 1 image(s), relabelled 1; 1 listed image(s) are not in the dataset" \
        in result.output
    with FeatureStore(tmp_path / "s.h5") as fs:
        paths = dict(zip(fs.paths, fs.labels, strict=True))
        assert str(root / "red" / "red_01.png") not in paths
        assert fs.label_names[paths[str(root / "blue" / "blue_02.png")]] == "green"
        assert fs.attrs["exclude_file"] == str(listing) and fs.attrs["n_excluded"] == 1


def test_unknown_column_in_the_exclusion_file_is_one_line(tmp_path, artifacts):
    root = make_dataset(tmp_path / "photos", per_class=3)
    listing = tmp_path / "fix.csv"
    listing.write_text("path,lable\nphotos/red/red_01.png,green\n")
    out = tmp_path / "s.h5"
    result = runner.invoke(app, ["extract", str(root), "--out", str(out), "--exclude",
                                 str(listing), "--weights", "none"])
    assert result.exit_code == 2
    assert "unknown column(s) 'lable'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_check_of_a_store_without_labels_is_one_line(tmp_path):
    store = tmp_path / "unlabelled.h5"
    writer = FeatureStoreWriter(store, planned_paths=[f"/x/{i}.jpg" for i in range(6)],
                                attrs={}, settings_key="k", feature_dim=4, label_names=["all"])
    writer.append(np.random.default_rng(0).normal(size=(6, 4)), np.zeros(6), np.zeros(6),
                  np.arange(6))
    writer.commit(6)
    writer.finalize()
    result = runner.invoke(app, ["check", str(store)])
    assert result.exit_code == 2
    assert "needs a store extracted from a labelled dataset" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_check_never_replaces_a_file_it_did_not_write(shapes_store, tmp_path):
    store, _ = shapes_store
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own\n")
    result = runner.invoke(app, ["check", str(store), "--out", str(mine)])
    assert result.exit_code == 2 and "is not an issues CSV" in result.output
    assert mine.read_text() == "my,own\n"


def test_label_findings_put_the_least_probable_given_label_first():
    from classifiers.label_issues import rank_label_issues

    # both rows labelled 0 and more probably 1; the second's label is the less probable
    # (0.2 against 0.3) though its margin over it is the smaller (0.25 against 0.4)
    probabilities = np.array([[0.3, 0.7, 0.0], [0.2, 0.45, 0.35],
                              [0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    rows, score, suggested = rank_label_issues(probabilities, np.array([0, 0, 0, 1, 2]))
    assert rows.tolist() == [1, 0]
    np.testing.assert_allclose(score, [0.8, 0.7])
    assert suggested.tolist() == [1, 1]


def test_a_store_grouped_by_another_rule_is_not_up_to_date(planted, tmp_path, monkeypatch):
    # the signature rule decides the recorded groups and split as much as the features'
    # threshold does: a store made under another rule must be made again, not reused
    root, _copies = planted
    out = tmp_path / "s.h5"
    extract(root, out=out, test_size=0.5, seed=3, **TINY_EXTRACT)
    assert extract(root, out=out, test_size=0.5, seed=3, **TINY_EXTRACT).result.up_to_date
    import features.extraction

    monkeypatch.setitem(features.extraction.GROUPING_RULE, "candidate", 0.5)
    try:
        again = extract(root, out=out, test_size=0.5, seed=3, **TINY_EXTRACT).result
    except UserInputError as exc:  # made with other settings: --overwrite to replace it
        assert "--overwrite" in str(exc)
    else:
        assert not again.up_to_date


def test_stores_of_one_folder_record_one_split_whatever_the_network(planted, tmp_path):
    # near-duplicates are found from the pixels, so two backbones, input sizes or
    # poolings group the same rows and record the same split: their models are tested
    # on the same images and 'tlearn compare' pairs them
    root, copies = planted
    for i, cut in enumerate((5, 7, 9)):  # crops of 5-9 % of 96 x 80: alike by pixels only
        source = root / "green" / f"green_0{4 + i}.png"
        with Image.open(source) as image:
            image.crop((cut, cut, 96, 80)).save(root / "green" / f"copy_crop{cut}.jpg", quality=60)
        copies[str(root / "green" / f"copy_crop{cut}.jpg")] = str(source)
    made = [extract(root, out=tmp_path / f"{i}.h5", test_size=0.5, seed=3,
                    **{**TINY_EXTRACT, **other}).result.path
            for i, other in enumerate([{}, {"input_size": 48, "pooling": "max"},
                                       {"backbone": "resnet50", "input_size": 40}])]
    recorded = []
    for path in made:
        row, groups, split = rows_by_path(path)
        recorded.append({p: (str(split[i]), int((groups == groups[i]).sum()))
                         for p, i in row.items()})
    assert recorded[0] == recorded[1] == recorded[2]
    assert sum(size == 2 for _, size in recorded[0].values()) == 2 * len(copies)


def test_rows_without_signatures_are_checked_by_their_features(tmp_path):
    # a store an older Ray engine wrote has zero signatures: its copies are still found,
    # by their features, and those of the rows with signatures by their pixels
    rng = np.random.default_rng(7)
    X = rng.normal(size=(12, 8))
    X[1] = X[0] + 1e-3 * rng.normal(size=8)  # rows 0 and 1: near-identical features
    pictures = rng.uniform(0, 255, size=(12, 32, 32, 3))
    pictures[11] = pictures[10] * 0.9 + 10  # rows 10 and 11: one picture, darker
    from features.neighbours import pixel_signatures

    signatures = pixel_signatures(pictures)
    signatures[:2] = 0  # not known
    store = tmp_path / "old.h5"
    writer = FeatureStoreWriter(store, planned_paths=[f"/x/{i}.jpg" for i in range(12)],
                                attrs={}, settings_key="k", feature_dim=8,
                                label_names=["a", "b"])
    writer.append(X, np.arange(12) % 2, np.zeros(12), np.arange(12), signatures=signatures)
    writer.commit(12)
    writer.finalize()
    from pipeline.workflows.check import check_store

    pairs = {(f.related_path, f.path) for f in check_store(store, folds=2).findings
             if f.issue in ("near_duplicate", "leak")}
    assert pairs == {("/x/0.jpg", "/x/1.jpg"), ("/x/10.jpg", "/x/11.jpg")}
