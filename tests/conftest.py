"""Shared fixtures: tiny generated image datasets, broken files, and the ../shared folder."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["COLUMNS"] = "200"  # rich wraps CLI tables at 80 columns otherwise

import shutil

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
LITE0_FIXTURE = SHARED / "fixtures" / "efficientnet_lite0_reference.npz"

# Colours that make classes separable even through a randomly initialised CNN.
# Backbones whose tests build a network of 10-45 s on the project's 2 cores: their rows
# of per-backbone tables run with -m slow; ConvNeXt-T and EfficientNetV2-B0 stand for
# their families in every run.
HEAVY_BACKBONES = frozenset({
    "convnext_small", "convnext_base", "efficientnetv2_b1", "efficientnetv2_b2",
    "efficientnetv2_b3", "efficientnetv2_s", "efficientnetv2_m", "dinov2_base"})


def by_weight(*values):
    """A parameter row, marked slow when its backbone (the first value) is heavy."""
    marks = [pytest.mark.slow] if values[0] in HEAVY_BACKBONES else []
    return pytest.param(*values, marks=marks)


CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)]


def write_image(path: Path, colour, size=(40, 32), seed=0, fmt=None, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)
    noise = rng.normal(0, 25, size=(size[1], size[0], 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=(40, 32)) -> Path:
    """A folder per class of small noisy solid-colour images (JPEG and PNG mixed)."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = ".jpg" if i % 2 == 0 else ".PNG"
            write_image(root / name / f"{name}_{i:03d}{ext}", CLASS_COLOURS[c % 4], size,
                        seed=c * 1000 + i)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes, six images each."""
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def broken_files(tmp_path) -> dict[str, Path]:
    """One file of every broken kind, keyed by what is wrong with it."""
    root = tmp_path / "broken"
    root.mkdir()
    good = write_image(root / "good.jpg", (120, 30, 30), (64, 48))
    data = good.read_bytes()
    files = {
        "empty": root / "empty.jpg",
        "truncated": root / "truncated.jpg",
        "not_image": root / "not_image.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_image"].write_text("this is not a picture\n")
    return files


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: shared datasets and fixtures are not available here")
    return SHARED


@pytest.fixture
def lite0_reference():
    if not LITE0_FIXTURE.is_file():
        pytest.skip(f"{LITE0_FIXTURE} is absent: the EfficientNet-Lite0 reference is not here")
    return np.load(LITE0_FIXTURE)


# Stage 1 settings that make a store in about a second: random weights, 32 px inputs.
TINY_EXTRACT = {"backbone": "vgg16", "weights": "none", "input_size": 32, "pooling": "avg",
                "batch_size": 8}


def extract(data, **options):
    """:func:`pipeline.workflows.extract_dataset` of flat options, as ``tlearn extract``
    hands over its flags (:meth:`pipeline.workflows.ExtractSettings.from_options`)."""
    from pipeline.workflows import ExtractSettings, extract_dataset

    return extract_dataset(ExtractSettings.from_options({"data": data, **options}))


@pytest.fixture
def shapes_store(tmp_path, artifacts):
    """A store of three colour classes x 10 tiny images, and the image folder."""
    data = make_image_folder(tmp_path / "shapes", classes=("red", "green", "blue"), per_class=10)
    return extract(data, **TINY_EXTRACT).result.path, data


@pytest.fixture(scope="session", autouse=True)
def _converted_network_cache(tmp_path_factory):
    """Networks converted by features.runtimes go to a folder of this test run, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLEARN_CACHE", str(tmp_path_factory.mktemp("tlearn-cache")))
        yield


@pytest.fixture
def artifacts(tmp_path, monkeypatch) -> Path:
    """Point TLEARN_ARTIFACTS at a temporary folder."""
    path = tmp_path / "artifacts"
    monkeypatch.setenv("TLEARN_ARTIFACTS", str(path))
    return path


def save_stage3_model(path: Path, label_names: list[str], *, size: int = 16,
                      temperature: float = 1.0, known: list[Path] | None = None) -> Path:
    """A small convolutional stage 3 ``.keras`` model (seeded) with the sidecar stage 3 writes.

    With ``known`` images (of classes ``i % len(label_names)`` in turn), its "unknown"
    score too, fitted on their penultimate features as stage 3 fits it.
    """
    import json

    import keras

    from classifiers.persistence import sha256_file, sidecar_path
    from pipeline.stage3 import keras_versions

    keras.utils.set_random_seed(0)
    network = keras.Sequential([
        keras.Input((size, size, 3), name="image"), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(label_names), activation="softmax")])
    network.save(path)
    sidecar_path(path).write_text(json.dumps({
        "model": path.name, "sha256": sha256_file(path), "label_names": list(label_names),
        "input_size": size, "preprocessing": "scale_to_unit", "backbone": "minivggnet",
        "temperature": temperature, "library_versions": keras_versions(),
        **({} if known is None else {"unknown": _stage3_unknown(network, known, size,
                                                                len(label_names))})}))
    return path


def _stage3_unknown(network, known: list[Path], size: int, classes: int) -> dict:
    import keras

    from features.images import load_image
    from pipeline.stage3.commands import fit_penultimate_score

    features = keras.Model(network.inputs, network.layers[-1].input).predict(
        np.stack([load_image(p, size) for p in known]) / 255.0, verbose=0)
    return fit_penultimate_score(features, np.arange(len(known)) % classes, 0,
                                 say=lambda line: None).to_json()


# -- headless Chromium (browser tests) --------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
NEEDS_CHROMIUM = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() or not shutil.which("chromedriver"),
                       reason="Debian's chromium and chromium-driver are not installed "
                              "(apt-get install chromium chromium-driver)"),
]


def headless_chromium(profile: Path, *flags: str, window: str = "1100,800",
                      capabilities: dict | None = None):
    """A Selenium driver of Debian's Chromium, headless, with nothing fetched in the background."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 f"--window-size={window}", *flags):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


# -- small file systems (a disk that fills up, a read-only folder) -----------------------------

def fill_disk(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte (a file ``ballast`` in it)."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    for block in (1 << 16, 4096, 512, 1):
        try:
            while True:
                os.write(fd, b"x" * block)
        except OSError:
            pass
    os.close(fd)


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, size="16m", options="")``: a fresh tmpfs at ``tmp_path / name``.

    Real ENOSPC and EROFS come from a real file system; mounting one needs root (or
    the permission), so without it the test is skipped, saying why.
    """
    import subprocess

    mounted: list[Path] = []

    def mount(name: str, size: str = "16m", options: str = "") -> Path:
        point = tmp_path / name
        point.mkdir()
        opts = ",".join(o for o in (f"size={size}", options) if o)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot mount a tmpfs here ({exc}); this test needs a real small "
                        "file system (run it as root)")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); this test needs "
                        "a real small file system (run it as root)")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)
