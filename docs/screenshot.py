"""Make ``docs/images/report_page.png``: a small demo run's report page, in headless Chromium.

Run by hand when the report page changes: ``python docs/screenshot.py`` (needs Debian's
``chromium`` and ``chromium-driver``, as the browser tests do; a few minutes on 2 cores).
``--artifacts DIR`` reuses the outputs of an earlier ``tlearn demo`` run there.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "docs" / "images" / "report_page.png"
LIMIT_PER_CLASS = 40
WIDTH = 1100
MAX_BYTES = 300_000


def run_demo(artifacts: Path) -> None:
    env = {**os.environ, "TLEARN_ARTIFACTS": str(artifacts)}
    subprocess.run([sys.executable, "-m", "pipeline.cli", "--no-color", "demo",
                    "--limit-per-class", str(LIMIT_PER_CLASS)], check=True, env=env,
                   cwd=REPO_ROOT)


def capture(page: Path, profile: Path) -> bytes:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import headless_chromium

    driver = headless_chromium(profile, window=f"{WIDTH},900")
    try:
        driver.get(page.as_uri())
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                     "scale": 1}})
    finally:
        driver.quit()
    return base64.b64decode(shot["data"])


def shrink(png: bytes) -> bytes:
    """The top of the page (summary, chart, table, mistakes), in 128 colours: under 300 KB."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, 1400)))
    for colours in (128, 64, 32):
        buffer = io.BytesIO()
        image.quantize(colours).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < MAX_BYTES:
            return buffer.getvalue()
    raise SystemExit("the screenshot stays over 300 KB; crop it further")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, help="outputs of an earlier demo run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts
        if artifacts is None:
            artifacts = Path(tmp) / "artifacts"
            run_demo(artifacts)
        (page,) = (artifacts / "reports").glob("digits*/index.html")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(shrink(capture(page, Path(tmp) / "chrome")))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
