"""The studio and the Prefect UI in a real headless Chromium (Debian's `chromium` and
`chromium-driver`), as a person uses them: `dragnext studio` in its own process on the
fixture model, the pages clicked and typed into.

Author: open a demo scene, draw a polygon region, place handle and target, see the instant
preview and a drag's error as it is made, Edit now to the end while a second tab reviews,
add the row to a new manifest, which validates and `dragnext run` edits. Review: open the
demo run, filter to one status, open an item, send two back and retry them. Prefect:
launch bulk-edit from the deployment's form, open a preview link from its artifacts, and
launch retry-failed from the studio.

`DRAGNEXT_SCREENSHOTS=DIR` saves the pages' screenshots there (`make studio-screenshots`
writes docs/); `.ci/run` sets `DRAGNEXT_REQUIRE_BROWSER=1` so a missing browser fails."""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixture import FIXTURE_MODEL
from flows.local_api import free_port
from flows.results import read_results
from flows.selection import read_selection
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table
from tests.conftest import wait_for
from tests.scenes import dragnext_command

pytestmark = pytest.mark.ui
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = os.environ.get("DRAGNEXT_SCREENSHOTS")


@pytest.fixture
def evidence(browser, tmp_path):
    """On a failure, the page as it was: a screenshot and its text, in the test's folder."""
    yield
    if browser.session_id:
        browser.save_screenshot(str(tmp_path / "last-page.png"))
        (tmp_path / "last-page.txt").write_text(f"{browser.current_url}\n{browser.page_source[:200_000]}")


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        driver.execute_script("window.scrollTo(0, 0)")
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / name))


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        message = "Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("DRAGNEXT_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1150"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def clean_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", **extra}


class Studio:
    """`dragnext studio` in its own process."""

    def __init__(self, home: Path, *args: str, env: dict | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / "studio.log", "w")
        self.process = subprocess.Popen(
            dragnext_command() + ["studio", "--port", str(self.port), "--sam", "", *args], cwd=ROOT,
            env=env or clean_env(home), stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.up, 120, "the studio")

    def up(self) -> bool:
        assert self.process.poll() is None, (Path(self.log.name).read_text())
        try:
            return urllib.request.urlopen(f"{self.url}/api/settings", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> str:
    """The main job, as a user runs it: `dragnext demo` (progress bar on, default workers)."""
    home = tmp_path_factory.mktemp("demo")
    out = home / "out"
    done = subprocess.run(dragnext_command() + ["demo", "--out", str(out)], cwd=ROOT, env=clean_env(home),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(out / "results.parquet")


@pytest.fixture(scope="module")
def studio(tmp_path_factory, demo_results):
    home = tmp_path_factory.mktemp("studio")
    server = Studio(home, "--results", demo_results)
    yield server
    server.stop()


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def click_image_point(driver, x: float, y: float, width: int, height: int) -> None:
    """A click on the canvas at image pixel (x, y)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = by_id(driver, "canvas")
    scale = canvas.get_property("width") / width
    offset_x = (x + 0.5) * scale - canvas.get_property("clientWidth") / 2
    offset_y = (y + 0.5) * scale - canvas.get_property("clientHeight") / 2
    ActionChains(driver).move_to_element_with_offset(canvas, round(offset_x), round(offset_y)).click() \
        .perform()


def demo_row(item_id: str) -> dict:
    [row] = [r for r in read_table(str(DEMO_MANIFEST)).to_pylist() if r["item_id"] == item_id]
    return row


def draw_drag(driver, row: dict, size: tuple[int, int], with_target: bool = True) -> None:
    """The row's handle region as a polygon around its mask, then its handle and target."""
    drag = row["drags"][0]
    mask = np.asarray(Image.open(DEMO_MANIFEST.parent / drag["handle_mask_uri"])) > 0
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1
    driver.find_element("css selector", "[data-mode=polygon]").click()
    for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
        click_image_point(driver, x, y, *size)
    by_id(driver, "close-polygon").click()
    driver.find_element("css selector", "[data-mode=handle]").click()
    click_image_point(driver, drag["handle"]["x"], drag["handle"]["y"], *size)
    if with_target:
        click_image_point(driver, drag["target"]["x"], drag["target"]["y"], *size)


def image_loaded(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0;",
        element_id)


def test_author_a_drag_edit_it_now_and_add_it_to_a_manifest_that_runs(browser, studio, tmp_path, evidence):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{studio.url}/author")
    row = demo_row("translate-0100")
    by_id(browser, "upload").send_keys(str(DEMO_MANIFEST.parent / row["image_uri"]))
    wait.until(lambda d: d.execute_script("return state !== null && picture.complete"))
    size = tuple(browser.execute_script("return size"))
    by_id(browser, "add-drag").click()
    draw_drag(browser, row, size)
    wait.until(lambda d: by_id(d, "preview-time").get_attribute("data-ready") == "true")
    assert image_loaded(browser, "overlay") and image_loaded(browser, "warp")
    server_ms = float(by_id(browser, "preview-time").text.split("server ")[1].split(" ms")[0])
    assert server_ms < 1000  # the instant preview
    drawn = json.loads(browser.execute_script("return JSON.stringify(state.drags[0])"))
    assert drawn["region"]["polygons"] and abs(drawn["target"][0] - row["drags"][0]["target"]["x"]) <= 0.6

    # a rotate drag without its centre: the library's error appears next to that drag
    Select(by_id(browser, "new-type")).select_by_visible_text("rotate")
    by_id(browser, "add-drag").click()
    draw_drag(browser, demo_row("rotate-0100"), size)
    finding = '#drags [data-drag="1"] .finding.error'
    wait.until(lambda d: any("drags[1].center: required for a rotate drag" in e.text
                             for e in d.find_elements("css selector", finding)))
    browser.find_elements("css selector", '#drags [data-drag="1"] .remove')[0].click()
    wait.until(lambda d: not d.find_elements("css selector", finding))

    # Edit now runs off the UI thread: a second tab reviews while it runs
    by_id(browser, "edit-now").click()
    wait.until(lambda d: by_id(d, "job-status").get_attribute("data-status") in ("loading model", "running"))
    author, job_id = browser.current_window_handle, browser.execute_script("return currentJob")
    browser.switch_to.new_window("tab")
    started = time.time()
    browser.get(f"{studio.url}/review")
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements("css selector", ".card")) > 0)
    assert time.time() - started < 10
    job = json.loads(urllib.request.urlopen(f"{studio.url}/api/jobs/{job_id}", timeout=5).read())
    assert job["status"] in ("loading model", "running")  # the review page loaded during the edit
    browser.close()
    browser.switch_to.window(author)
    WebDriverWait(browser, 300).until(lambda d: by_id(d, "job-status").get_attribute("data-status")
                                      in ("succeeded", "failed"))
    assert by_id(browser, "job-status").get_attribute("data-status") == "succeeded", \
        by_id(browser, "job-status").text
    wait.until(lambda d: image_loaded(d, "sheet"))
    assert "timings_s" in by_id(browser, "record").text
    screenshot(browser, "studio-author.png")

    manifest = tmp_path / "authored" / "manifest.parquet"
    by_id(browser, "item-id").clear()
    by_id(browser, "item-id").send_keys("authored-translate")
    by_id(browser, "target-manifest").send_keys(str(manifest))
    by_id(browser, "append").click()
    wait.until(lambda d: "validates clean" in by_id(d, "append-result").text)

    env = clean_env(tmp_path)
    check = subprocess.run(dragnext_command() + ["manifest", "validate", str(manifest)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "1 rows, 0 invalid" in check.stdout, check.stdout + check.stderr
    out = tmp_path / "edited"
    run = subprocess.run(dragnext_command() + ["run", str(manifest), "--output", str(out), "--model",
                                               str(FIXTURE_MODEL)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = read_results(str(out / "results.parquet"))
    assert result["item_id"] == "authored-translate" and result["status"] == "succeeded"


def test_review_a_run_filter_open_an_item_and_send_two_back(browser, studio, demo_results, tmp_path,
                                                            evidence):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{studio.url}/review")
    wait.until(lambda d: "8 items" in by_id(d, "facets").text)
    before = {r["item_id"]: r for r in read_results(demo_results)}
    succeeded = sum(r["status"] == "succeeded" for r in before.values())
    Select(by_id(browser, "flag")).select_by_value("")
    browser.find_element("css selector", '#statuses input[value="succeeded"]').click()
    by_id(browser, "apply").click()
    wait.until(lambda d: by_id(d, "shown").text == f"{succeeded} shown")
    cards = browser.find_elements("css selector", ".card")
    assert len(cards) == succeeded and all("succeeded" in c.text for c in cards)
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"))

    first = cards[0].get_attribute("data-item")
    cards[0].find_element("css selector", ".open-item").click()
    wait.until(lambda d: by_id(d, "detail").is_displayed() and by_id(d, "detail-title").text == first)
    wait.until(lambda d: image_loaded(d, "detail-preview"))
    assert "pbsi" in by_id(browser, "detail-timings").text
    assert '"timings_s"' in by_id(browser, "detail-record").text

    chosen = [c.get_attribute("data-item") for c in cards[:2]]
    for card in cards[:2]:
        card.find_element("css selector", ".pick").click()
    assert by_id(browser, "selected-count").text == "2"
    by_id(browser, "overrides").send_keys('{"seed": 1}')
    by_id(browser, "send-back").click()
    wait.until(lambda d: "dragnext retry" in by_id(d, "send-result").text)
    screenshot(browser, "studio-review.png")
    selection_uri = by_id(browser, "send-result").text.split("wrote ")[1].split(" (")[0]
    selection = read_selection(selection_uri, demo_results)
    assert sorted(selection.items) == sorted(chosen) and selection.overrides == {"seed": 1}

    retry = subprocess.run(dragnext_command() + ["retry", demo_results, "--selection", selection_uri],
                           cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    after = {r["item_id"]: r for r in read_results(demo_results)}
    for item_id, row in after.items():
        changed = row["config_hash"] != before[item_id]["config_hash"]
        assert changed == (item_id in chosen), item_id  # only the two, with their new seed
        assert row["status"] == before[item_id]["status"]
    assert all(json.loads(Path(after[i]["record_uri"]).read_text())["config"]["seed"] == 1 for i in chosen)


def test_the_prefect_form_launches_a_run_whose_artifact_links_open_and_the_studio_launches_its_retry(
        browser, tmp_path, evidence):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.postgres import postgresql
    from tests.test_work_pool import Stack, eight_items

    studio_port = free_port()
    (tmp_path / "prefect").mkdir()
    stack_database = ExitStack()
    # production's database (infra/README.md): on SQLite a busy server answers the form's
    # Submit with 503 ("Oops. Something went wrong.") while workers poll it every second
    stack = Stack(tmp_path / "prefect", stack_database.enter_context(postgresql()))
    stack.env["DRAGNEXT_STUDIO_URL"] = f"http://127.0.0.1:{studio_port}"  # links to local outputs
    studio = None
    try:
        stack.deploy()
        stack.start("control", "worker", "start", "--pool", "control", "--name", "control", "--limit", "2")
        stack.start("gpu", "worker", "start", "--pool", "gpu", "--name", "gpu", "--limit", "1")
        manifest, out = eight_items(tmp_path / "job"), tmp_path / "out"

        base = stack.url.removesuffix("/api")
        wait = WebDriverWait(browser, 60)
        browser.get(f"{base}/deployments")
        wait.until(lambda d: d.find_elements(By.LINK_TEXT, "bulk-edit"))
        deployment = browser.find_element(By.LINK_TEXT, "bulk-edit").get_attribute("href").rstrip("/")
        browser.get(f"{deployment}/run")
        wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='manifest_uri']"))
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "Property is type" not in page  # no parameter renders a None branch
        assert "the Parquet manifest (a local path or s3://bucket/key)" in page  # descriptions

        def field(name: str):
            label = f"//*[normalize-space(.)='{name}' or normalize-space(.)='{name} (Optional)']"
            return browser.find_element(By.XPATH, f"{label}/following::textarea[1]")

        typed = {"manifest_uri": manifest, "output_uri": str(out), "model": str(FIXTURE_MODEL)}
        for name, value in typed.items():
            field(name).clear()
            field(name).send_keys(value)
        screenshot(browser, "prefect-run-form.png")
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Submit']").click()
        wait.until(lambda d: not d.current_url.endswith("/run"))  # on to the deployment's runs

        with temporary_settings({PREFECT_API_URL: stack.url}), get_client(sync_client=True) as client:
            bulk = DeploymentFilter(id=DeploymentFilterId(any_=[client.read_deployment_by_name(
                "bulk-edit/bulk-edit").id]))
            [run] = wait_for(lambda: client.read_flow_runs(deployment_filter=bulk), 60, "the form's run")
            assert run.parameters["manifest_uri"] == manifest and run.parameters["output_uri"] == str(out)
            run = wait_for(lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 600, "the run")
            assert run.state.is_completed(), run.state.message
            browser.get(f"{base}/runs/flow-run/{run.id}")
            wait.until(lambda d: d.find_elements(By.ID, "artifacts")).pop().click()  # the tab
            previews = "//*[normalize-space(text())='bulk-edit-previews']"
            wait.until(lambda d: d.find_elements(By.XPATH, previews)).pop().click()  # its card
            links = wait.until(lambda d: d.find_elements(By.LINK_TEXT, "preview"))
            href = links[0].get_attribute("href")
            assert href.startswith(stack.env["DRAGNEXT_STUDIO_URL"] + "/api/results/file?")

            studio = Studio(tmp_path, env=clean_env(tmp_path, PREFECT_API_URL=stack.url), port=studio_port)
            browser.get(href)  # the link from the artifact opens the image
            wait.until(lambda d: d.execute_script("return document.images.length === 1 && "
                                                  "document.images[0].naturalWidth > 0"))

            # the studio, with the Prefect server configured, launches retry-failed for a selection
            browser.get(f"{studio.url}/review?results={out / 'results.parquet'}")
            wait.until(lambda d: "8 items" in by_id(d, "facets").text)
            Select(by_id(browser, "flag")).select_by_value("")
            by_id(browser, "apply").click()
            wait.until(lambda d: by_id(d, "shown").text == "8 shown")
            browser.find_elements(By.CSS_SELECTOR, ".card .pick")[0].click()
            by_id(browser, "overrides").send_keys('{"seed": 2}')
            assert by_id(browser, "launch").is_displayed()
            by_id(browser, "launch").click()
            wait.until(lambda d: "launched flow run" in by_id(d, "send-result").text)
            retry_id = by_id(browser, "send-result").text.split("(")[-1].rstrip(")")
            retry = wait_for(lambda: (r := client.read_flow_run(retry_id)).state.is_final() and r, 600,
                             "the retry run")
            assert retry.state.is_completed(), retry.state.message
            assert json.loads((out / "summary.json").read_text())["retry_runs"] == [retry_id]
    finally:
        if studio is not None:
            studio.stop()
        stack.stop()
        stack_database.close()
