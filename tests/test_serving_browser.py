"""Upload an image through the served page in Debian's headless Chromium."""

import socket
import threading
import time

import pytest

from pipeline.image_classifiers import load_image_classifier
from pipeline.serving import create_app
from tests.conftest import NEEDS_CHROMIUM, REPO_ROOT, headless_chromium
from tests.test_serving import model_path  # noqa: F401 - module fixture

pytestmark = NEEDS_CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "page-token-" + "z" * 24


@pytest.fixture(params=[None, TOKEN], ids=["open", "token"])
def server(model_path, request):  # noqa: F811
    import uvicorn

    port = _free_port()
    app = create_app(load_image_classifier(model_path[0]), token=request.param)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}/", model_path[1], request.param
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_shows_the_predicted_label(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, data, token = server
    driver = headless_chromium(tmp_path / "chrome")
    try:
        driver.get(url)
        image = data / "dog" / "dog_003.PNG"
        broken = tmp_path / "broken.png"
        broken.write_bytes(image.read_bytes()[:60])
        field = driver.find_element(By.ID, "token")
        assert field.is_displayed() == (token is not None)
        if token is not None:
            status = driver.find_element(By.ID, "status")
            # chromedriver adds to a multiple file input's list: empty it between uploads
            empty = "document.getElementById('files').value = ''"
            driver.find_element(By.ID, "files").send_keys(str(image))
            assert "Enter the access token" in status.text  # nothing sent without one
            driver.execute_script(empty)
            field.send_keys(token[:-1] + "!")
            driver.find_element(By.ID, "files").send_keys(str(image))
            WebDriverWait(driver, 60).until(
                lambda d: "refused the access token" in status.text)
            driver.execute_script(empty)
            field.clear()
            field.send_keys(token)
        # under the page's Content-Security-Policy, one good image beside a bad one
        driver.find_element(By.ID, "files").send_keys(f"{broken}\n{image}")
        label = WebDriverWait(driver, 60).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=label]")))
        assert label.text.startswith("dog (") and "% probability" in label.text
        names = driver.find_elements(By.CSS_SELECTOR, "[data-testid=filename]")
        assert [n.text for n in names] == ["dog_003.PNG"]
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".error")]
        assert errors == ["broken.png: truncated image"]
        status = driver.find_element(By.ID, "status").text
        assert "Scores are probabilities" in status and "1 of 2 files skipped" in status
        bars = driver.find_elements(By.CSS_SELECTOR, ".bar")
        assert len(bars) == 2  # one probability bar per class
        # the token stays in the page's memory: nothing in the browser's storage
        assert driver.execute_script("return sessionStorage.length + localStorage.length") == 0
        shots = REPO_ROOT / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        name = "serve_page.png" if token is None else "serve_page_token.png"
        assert driver.save_screenshot(str(shots / name))
    finally:
        driver.quit()
