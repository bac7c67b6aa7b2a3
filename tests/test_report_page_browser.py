"""Open a dataset's report page from disk in Debian's headless Chromium, offline."""

import base64
import json

from pipeline.report_page import write_dataset_report
from tests.conftest import NEEDS_CHROMIUM, REPO_ROOT, headless_chromium
from tests.test_report_page import reports  # noqa: F401 - module fixture

pytestmark = NEEDS_CHROMIUM


def test_page_renders_offline_with_chart_and_gallery(reports, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    page = write_dataset_report("pets", reports)
    # no name resolves: a reference to any host would fail, and be logged
    driver = headless_chromium(tmp_path / "chrome", "--host-resolver-rules=MAP * ~NOTFOUND",
                               window="1100,900",
                               capabilities={"goog:loggingPrefs": {"performance": "ALL"}})
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        driver.get_log("performance")  # drop what the start page loaded: only ours counts
        driver.get(page.as_uri())
        chart = driver.find_element(By.CSS_SELECTOR, "svg.chart")
        assert chart.is_displayed() and chart.size["width"] > 600
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart g.row")) == 3
        mistakes = driver.find_elements(By.CSS_SELECTOR, "#mistakes figure.mistake")
        assert len(mistakes) == 1 and mistakes[0].is_displayed()
        assert "said: dog (0.95)" in mistakes[0].text
        # every embedded image decoded (a blocked or broken one has no natural width)
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert widths and all(w > 0 for w in widths), widths
        # readable at 1100 px: nothing wider than the window
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1100
        sent = [json.loads(entry["message"])["message"]["params"]
                for entry in driver.get_log("performance")
                if '"Network.requestWillBeSent"' in entry["message"]]
        # Only the page's own requests: Chromium's start page keeps loading its favicons
        # (chrome://favicon2/...) after the navigation, which is not the page fetching.
        requested = [p["request"]["url"] for p in sent if p.get("documentURL") == page.as_uri()]
        assert requested and all(url.startswith(("file:", "data:")) for url in requested), \
            requested
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"],
                     "scale": 1}})
        shots = REPO_ROOT / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        (shots / "report_page.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()


def test_long_model_names_and_every_column_fit_1200_px(tmp_path):
    from selenium.webdriver.common.by import By

    from tests.conftest import write_image
    from tests.test_report_page import _model

    images = [write_image(tmp_path / "data" / f"c{i % 3}" / f"i{i}.png", (90, 9, 9), seed=i)
              for i in range(12)]
    truth = [i % 3 for i in range(12)]
    root = tmp_path / "reports"
    repeats = {"n": 10, "accuracy_mean": 0.9861, "accuracy_std": 0.0123, "accuracy_min": 0.9,
               "accuracy_max": 1.0}
    names = ["dogcat__efficientnet_lite0__finetune_efficientnet_lite0",
             "dogcat__efficientnet_lite2__block6a_expand_activation__max__linear_svm",
             "dogcat__efficientnet_lite0+efficientnet_lite2__logreg",
             "dogcat__convnext_tiny__avg__mirror__logreg"]
    for i, name in enumerate(names):
        _model(root, name, images, truth, {i: (0 if truth[i] else 1, 0.7)}, dataset="dogcat",
               stage="finetune" if "finetune" in name else "features", repeats=repeats,
               extraction_images_per_second=1234.5, chosen={"C": 0.0031622776601683794})
    page = write_dataset_report("dogcat", root)
    driver = headless_chromium(tmp_path / "chrome", window="1200,900")
    try:
        driver.get(page.as_uri())
        table = driver.find_element(By.CSS_SELECTOR, "table.compare")
        headers = [h.text for h in table.find_elements(By.CSS_SELECTOR, "th")]
        assert {"re-splits", "images/s", "chosen", "fit s"} <= set(headers), headers
        box = driver.find_element(By.CSS_SELECTOR, ".table-box")
        # the table fits its box and its section: no column cut off or scrolled out of sight
        assert driver.execute_script("return arguments[0].scrollWidth", box) <= \
            driver.execute_script("return arguments[0].clientWidth", box)
        assert driver.execute_script(
            "return arguments[0].getBoundingClientRect().right", table) <= \
            driver.execute_script("return document.getElementById('models')"
                                  ".getBoundingClientRect().right")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1200
        # every model's name in the chart is whole and inside the picture
        labels = driver.find_elements(By.CSS_SELECTOR, "svg.chart text.name")
        assert len(labels) == 4 and not any("…" in t.text for t in labels)
        assert min(driver.execute_script("return arguments[0].getBBox().x", t)
                   for t in labels) >= 0
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": metrics["width"], "height": 900, "scale": 1}})
        shots = REPO_ROOT / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        (shots / "report_page_1200.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()
