"""Stage one and fine-tuning on a GPU, through each Keras backend the machine has.

For every backend installed here (jax, torch, tensorflow; each in its own process, as
Keras fixes its backend per process) and for VGG16, ResNet50 and EfficientNet-Lite0
with random weights (speed does not depend on the weights):

* ``forward``: ``predict_on_batch`` of a preprocessed batch already on the device (a
  jax or torch device array), float32 and float16, batch 64 and 256: the network alone;
* ``end_to_end``: ``features.extraction.extract_features`` from JPEG files to a store,
  on generated 320-px photos and 12-megapixel ones, decoding with tlearn's reader on
  the CPU (``--workers auto``), batch 256: what a user gets;
* ``gpu_decode``: 12-megapixel JPEGs through tlearn's reader with nvJPEG
  (``features.images.load_images`` with ``nvjpeg_decoder()``: ``torchvision.io.decode_jpeg``
  on the GPU, resized there) against the reader on all CPU cores: img/s and the largest
  pixel difference, where torch with CUDA is installed. Under the torch backend the
  end-to-end cases decode large JPEGs on the GPU the same way (``decoding`` says which);
  under jax on the CPU;
* ``finetune``: one epoch of fine-tuning Lite0 (the head, then the whole network) on a
  few hundred images through ``pipeline.stage3.finetune``.

The JSON (``bench/results/gpu.json``) records the device line
(:func:`features.devices.describe_device`), the CPU, versions, and each case; a case
past the time budget is recorded as skipped, so one run stays under 8 minutes.

Run on a lent GPU machine (torch and jax with CUDA, no TensorFlow, no internet). Keras
and its small pure-Python needs travel as wheels; everything else tlearn needs for
these paths is on that image. Here, once (``make bench-gpu-wheels``)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl keras==3.15.1 namex==0.1.0 optree==0.18.0

then one ``run`` with ``carry=[".whl"]`` and the command (``make bench-gpu``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD \\
        && PYTHONUNBUFFERED=1 python3 bench/gpu.py --out $OUT/gpu.json

``--smoke`` is a tiny run (one small network, a few images, float32, a minute on a CPU)
that the tests use to keep this script working where no GPU is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MODELS = ("vgg16", "resnet50", "efficientnet_lite0")
PRECISIONS = ("float32", "float16")
BATCHES = (64, 256)
E2E_BATCH = 256
BUDGET_S = 390  # all backends together; the rest of 8 minutes is start-up and images


def available_backends() -> list[str]:
    """Keras backends installed here, GPU ones first."""
    return [b for b in ("jax", "torch", "tensorflow") if importlib.util.find_spec(b)]


# -- images -------------------------------------------------------------------------------------

def make_images(folder: Path, count: int, size: tuple[int, int], classes: int = 2) -> Path:
    """``count`` JPEGs of ``size`` under ``folder/<class>/`` (a dataset folder)."""
    from decode import make_large_jpegs

    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    if size[0] * size[1] >= 4_000_000:
        from concurrent.futures import ProcessPoolExecutor

        parts = [folder / f"part{i}" for i in range(0, count, 8)]
        for part in parts:
            part.mkdir()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            made = [p for chunk in pool.map(make_large_jpegs, parts,
                                            [min(8, count - i) for i in range(0, count, 8)],
                                            range(len(parts))) for p in chunk]
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        made = []
        for i in range(count):
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
            path = folder / f"p{i:05d}.jpg"
            img.save(path, quality=90)
            made.append(str(path))
    for i, path in enumerate(made):
        os.replace(path, folder / f"class{i % classes}" / f"{i:05d}_{Path(path).name}")
    for part in folder.glob("part*"):
        part.rmdir()  # emptied: not a class
    return folder


# -- one backend, in its own process ------------------------------------------------------------

class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _device_array(backend: str, x: np.ndarray):
    if backend == "jax":
        import jax

        return jax.device_put(x)
    if backend == "torch":
        import torch

        return torch.as_tensor(x, device="cuda" if torch.cuda.is_available() else "cpu")
    return x


def _sync(backend: str, value) -> None:
    # Keras hands back numpy for predict_on_batch, which waits for the device already;
    # kept for clarity where the output stays on the device.
    np.asarray(value)


def forward_case(backend: str, model: str, precision: str, batch: int, input_size: int | None,
                 repeats: int) -> dict:
    from features.factory import create_extractor

    t0 = time.perf_counter()
    extractor = create_extractor(model, weights="none", input_size=input_size,
                                 precision=precision)
    size = extractor.spec.input_size
    x = extractor.preprocess_input(
        np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8))
    x = _device_array(backend, x)
    _sync(backend, extractor.model.predict_on_batch(x))  # compile
    ready = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = extractor.model.predict_on_batch(x)
    _sync(backend, out)
    seconds = time.perf_counter() - t0
    return {"case": "forward", "model": model, "precision": precision, "batch": batch,
            "img_s": batch * repeats / seconds, "compile_s": ready}


def end_to_end_case(model: str, precision: str, folder: Path, images: str, batch: int,
                    input_size: int | None, tmp: Path) -> dict:
    from features.batches import device_decoder
    from features.extraction import extract_features
    from features.settings import NetworkSettings
    from pipeline.datasets import load_dataset

    labeled, _ = load_dataset(folder, test_size=0.25, val_size=0.0, seed=0)
    settings = NetworkSettings(model, weights="none", input_size=input_size,
                               precision=precision)
    out = tmp / f"{model}_{precision}_{images}.h5".replace(" ", "_")
    result = extract_features(labeled, out, settings, batch_size=batch, overwrite=True)
    return {"case": "end_to_end", "model": model, "precision": precision, "batch": batch,
            "images": images, "files": len(labeled), "img_s": result.images_per_second,
            "seconds": result.seconds,
            # large JPEGs go to nvJPEG under torch with CUDA (features.batches.device_decoder)
            "decoding": "gpu for large JPEGs" if device_decoder() else "cpu"}


def gpu_decode_case(folder: Path, size: int, limit: int) -> dict:
    """tlearn's reader with nvJPEG (features.images.load_images) against it on every CPU core."""
    from concurrent.futures import ThreadPoolExecutor

    from features.devices import available_cores
    from features.images import load_image, load_images, nvjpeg_decoder

    decoder = nvjpeg_decoder()
    if decoder is None:
        raise RuntimeError("no GPU JPEG decoder here (torch, torchvision and CUDA)")
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))[:limit]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(available_cores()) as pool:
        cpu = list(pool.map(lambda p: load_image(p, size), paths))
    cpu_rate = len(paths) / (time.perf_counter() - t0)
    load_images(paths[:2], size, device_decoder=decoder)  # nvJPEG's start-up
    t0 = time.perf_counter()
    gpu = []
    for i in range(0, len(paths), 32):
        gpu += load_images(paths[i:i + 32], size, device_decoder=decoder)
    gpu_rate = len(paths) / (time.perf_counter() - t0)
    diffs = [np.abs(g.astype(int) - c.astype(int)) for g, c in zip(gpu, cpu, strict=True)]
    return {"case": "gpu_decode", "files": len(paths), "cpu_threads": available_cores(),
            "cpu_img_s": cpu_rate, "gpu_img_s": gpu_rate,
            "max_abs_pixel_diff": int(max(d.max() for d in diffs)),
            "mean_abs_pixel_diff": float(np.mean([d.mean() for d in diffs]))}


def finetune_case(folder: Path, input_size: int | None, batch: int, tmp: Path) -> dict:
    from pipeline.augmentation import AugmentationConfig
    from pipeline.stage3 import FinetuneSettings, finetune

    os.environ["TLEARN_ARTIFACTS"] = str(tmp / "artifacts")
    settings = FinetuneSettings(
        source=folder, backbone="efficientnet_lite0", weights="none", input_size=input_size,
        warmup_epochs=1, finetune_epochs=1, batch_size=batch, overwrite=True,
        workers=os.cpu_count() or 2, augmentation=AugmentationConfig(enabled=False))
    t0 = time.perf_counter()
    result = finetune(settings)
    return {"case": "finetune", "model": "efficientnet_lite0", "batch": batch,
            "epochs": [{"phase": r.get("phase"), "seconds": r.get("seconds")}
                       for r in result.history],
            "total_s": time.perf_counter() - t0}


def run_backend(backend: str, folders: dict[str, Path], smoke: bool, seconds: float) -> dict:
    """Every case on ``backend`` (the process's Keras backend), within ``seconds``."""
    import keras

    from features.devices import backend_versions, compute_device

    assert keras.backend.backend() == backend, keras.backend.backend()
    device = compute_device(backend)
    budget = Budget(seconds)
    models = ("vgg16",) if smoke else MODELS
    precisions = ("float32", "float16") if device.is_gpu else ("float32",)
    batches = (4,) if smoke else BATCHES
    repeats = 3 if smoke else 20
    input_size = 32 if smoke else None
    rows: list[dict] = []
    skipped: list[str] = []

    def attempt(name: str, make, *args) -> None:
        if budget.left() <= 0:
            skipped.append(f"{name}: out of time")
            return
        try:
            rows.append({"backend": backend, **make(*args)})
            print(f"{backend} {json.dumps(rows[-1])}", flush=True)
        except Exception as exc:  # a failed case is a result; the others still run
            skipped.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            print(f"{backend} {name} failed: {skipped[-1]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="tlearn-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        # In order of what matters most, so that a short budget drops the least: batch 256
        # forward and end to end of every network, fine-tuning, nvJPEG, then batch 64.
        big, small = E2E_BATCH if not smoke else 4, min(batches)
        cases: list[tuple] = []
        for model in models:
            for precision in precisions:
                cases.append((f"forward {model} {precision} {big}", forward_case, backend,
                              model, precision, big, input_size, repeats))
                for images, folder in folders.items():
                    if images == "12 MP" and model == "resnet50":
                        continue  # decode-bound like the others: two networks show it
                    cases.append((f"end_to_end {model} {precision} {images}", end_to_end_case,
                                  model, precision, folder, images, big, input_size, tmp))
        cases.append(("finetune", finetune_case, folders["320 px"], input_size,
                      4 if smoke else 64, tmp))
        if backend == "torch" and device.is_gpu and "12 MP" in folders:
            cases.append(("gpu_decode", gpu_decode_case, folders["12 MP"], 224, 128))
        if small != big:
            cases += [(f"forward {model} {precision} {small}", forward_case, backend, model,
                       precision, small, input_size, repeats)
                      for model in models for precision in precisions]
        for case in cases:
            attempt(*case)
    return {"backend": backend, "device": device.to_dict(), "versions": backend_versions(),
            "rows": rows, "skipped": skipped}


# -- the parent ---------------------------------------------------------------------------------

def table(results: list[dict]) -> str:
    lines = ["| backend | case | model | precision | batch | images | img/s |",
             "|---|---|---|---|---:|---|---:|"]
    for result in results:
        for r in result.get("rows", []):
            if r["case"] in ("forward", "end_to_end"):
                lines.append(f"| {r['backend']} | {r['case']} | {r['model']} | "
                             f"{r['precision']} | {r['batch']} | {r.get('images', 'device')} "
                             f"| {r['img_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (tests, CPU)")
    parser.add_argument("--backends", default=None, help="comma-separated; default: all here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folders", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=BUDGET_S, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        folders = {k: Path(v) for k, v in json.loads(args.folders).items()}
        result = run_backend(args.child, folders, args.smoke, args.seconds)
        args.out.write_text(json.dumps(result, indent=2))
        return

    from machine import cpu_info, describe

    started = time.perf_counter()
    backends = args.backends.split(",") if args.backends else available_backends()
    machine = cpu_info(device=False)
    results = []
    with tempfile.TemporaryDirectory(prefix="tlearn-gpu-images-") as tmp_name:
        tmp = Path(tmp_name)
        counts = {"320 px": 32, "12 MP": 8} if args.smoke else {"320 px": 2048, "12 MP": 128}
        sizes = {"320 px": (320, 240), "12 MP": (400, 300) if args.smoke else (4000, 3000)}
        folders = {name: make_images(tmp / name.replace(" ", ""), counts[name], sizes[name])
                   for name in counts}
        print(f"images generated in {time.perf_counter() - started:.0f}s", flush=True)
        share = max(30.0, (BUDGET_S - (time.perf_counter() - started)) / max(1, len(backends)))
        for backend in backends:
            out = tmp / f"{backend}.json"
            env = {**os.environ, "KERAS_BACKEND": backend,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                               os.environ.get("PYTHONPATH")]))}
            command = [sys.executable, __file__, "--child", backend, "--out", str(out),
                       "--folders", json.dumps({k: str(v) for k, v in folders.items()}),
                       "--seconds", str(share)] + (["--smoke"] if args.smoke else [])
            done = subprocess.run(command, env=env)
            if done.returncode == 0 and out.is_file():
                results.append(json.loads(out.read_text()))
            else:
                results.append({"backend": backend, "failed": f"exit code {done.returncode}"})
    report = {"benchmark": "gpu", "smoke": args.smoke, "machine": machine,
              "cpu": describe(machine), "load_average": os.getloadavg(),
              "seconds": time.perf_counter() - started, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        "# Stage one on " + ", ".join(r.get("device", {}).get("line", r["backend"])
                                      for r in results) + f"\n\n{table(results)}\n")
    print(table(results))
    print(f"wrote {args.out} in {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
