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
REBOUND = "rebind.test"


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
    # `rebind.test` resolves to 127.0.0.1: a name an attacker re-pointed at the studio (DNS rebinding)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1150",
                     f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"):
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
    server = Studio(home, "--results", demo_results, "--write-prefix", str(home / "authored"),
                    "--allow-prefix", str(DEMO_MANIFEST.parent))  # the run's manifest: its drag types
    server.authored = home / "authored"
    yield server
    server.stop()


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def canvas_offset(driver, x: float, y: float, width: int) -> tuple[int, int]:
    """Where image pixel (x, y) is, in screen px from the canvas's in-view centre: the origin
    of WebDriver's pointer moves (the centre of the part of the canvas on the screen)."""
    driver.execute_script("document.getElementById('canvas-wrap').scrollIntoView({block: 'nearest'})")
    return tuple(driver.execute_script("""
      const c = document.getElementById("canvas"), r = c.getBoundingClientRect(), s = c.width / arguments[2];
      const cx = (Math.max(r.left, 0) + Math.min(r.right, innerWidth)) / 2;
      const cy = (Math.max(r.top, 0) + Math.min(r.bottom, innerHeight)) / 2;
      return [Math.round(r.left + (arguments[0] + 0.5) * s - Math.floor(cx)),
              Math.round(r.top + (arguments[1] + 0.5) * s - Math.floor(cy))];""",
        float(x), float(y), int(width)))  # numpy numbers are no JSON


def click_image_point(driver, x: float, y: float, width: int, height: int) -> None:
    """A click on the canvas at image pixel (x, y)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = by_id(driver, "canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, *canvas_offset(driver, x, y, width)).click() \
        .perform()


def demo_row(item_id: str) -> dict:
    [row] = [r for r in read_table(str(DEMO_MANIFEST)).to_pylist() if r["item_id"] == item_id]
    return row


def author_upload(driver, studio, item_id: str) -> tuple[dict, tuple[int, int]]:
    """Author with a demo scene's image uploaded: its manifest row and the image's size."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{studio.url}/author")
    row = demo_row(item_id)
    by_id(driver, "upload").send_keys(str(DEMO_MANIFEST.parent / row["image_uri"]))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return state !== null && picture.complete"))
    return row, tuple(driver.execute_script("return size"))


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
    row, size = author_upload(browser, studio, "translate-0100")
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

    manifest = studio.authored / "manifest.parquet"
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
    wait.until(lambda d: by_id(d, "compare").get_attribute("data-ready") == "true")
    assert "pbsi" in by_id(browser, "detail-timings").text
    assert not by_id(browser, "detail-record").is_displayed()  # the record is folded
    browser.find_element("css selector", "#record-fold summary").click()
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

            studio = Studio(tmp_path, "--allow-prefix", str(out), port=studio_port,
                            env=clean_env(tmp_path, PREFECT_API_URL=stack.url))
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
            link = by_id(browser, "launched-run")  # the launched run, linked in the Prefect UI
            assert link.is_displayed() and link.get_attribute("href") == f"{base}/runs/flow-run/{retry_id}"
            retry = wait_for(lambda: (r := client.read_flow_run(retry_id)).state.is_final() and r, 600,
                             "the retry run")
            assert retry.state.is_completed(), retry.state.message
            assert json.loads((out / "summary.json").read_text())["retry_runs"] == [retry_id]
    finally:
        if studio is not None:
            studio.stop()
        stack.stop()
        stack_database.close()


# The attacks of issue 31, each in the browser against a studio on loopback, with a second
# local server (tests/attacker.py) standing in for the attacker's site. Each must fail
# safely: nothing read, fetched, written or run, and the page says why in one sentence.
SCRIPT = "<img src=x onerror=window.pwned=1;alert(1)>"


def crafted_results(folder: Path) -> str:
    """A run whose first row names /etc/passwd and whose text fields carry a script."""
    import pyarrow as pa

    from manifests.schema import write_table
    from tests.test_studio import results_file

    uri = results_file(folder, 2)
    rows = read_table(uri).to_pylist()
    rows[0] |= {"status": SCRIPT, "error": SCRIPT, "review_reasons": SCRIPT, "needs_review": True,
                "preview_uri": "/etc/passwd", "record_uri": "/etc/passwd", "metrics": [(SCRIPT, 1.0)],
                "drags": [{"type": SCRIPT}]}
    write_table(pa.Table.from_pylist(rows, schema=read_table(uri).schema), uri)
    return uri


def scripted_manifest(folder: Path) -> str:
    """The demo manifest with an item id that is a script (the API refuses such an id, so it
    is written here as another tool could)."""
    from manifests.schema import write_table

    table = read_table(str(DEMO_MANIFEST))
    ids = [SCRIPT] + table.column("item_id").to_pylist()[1:]
    shutil.copytree(DEMO_MANIFEST.parent, folder, dirs_exist_ok=True)  # its images and masks
    manifest = folder / "manifest.parquet"
    write_table(table.set_column(table.schema.get_field_index("item_id"), "item_id", [ids]), str(manifest))
    return str(manifest)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A studio that reads a crafted run and a scripted manifest and writes under `authored`."""
    home = tmp_path_factory.mktemp("target")
    (home / "run").mkdir()
    (home / "manifests").mkdir()
    server = Studio(home, "--results", crafted_results(home / "run"), "--manifest",
                    scripted_manifest(home / "manifests"), "--write-prefix", str(home / "authored"))
    server.home = home
    yield server
    server.stop()


def no_script_ran(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.accept()
    assert driver.execute_script("return window.pwned === undefined")


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def test_review_shows_a_stored_script_as_text_and_serves_no_file_outside_the_run(browser, target, evidence):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{target.url}/review")
    wait.until(lambda d: "2 items" in by_id(d, "facets").text)
    wait.until(lambda d: len(d.find_elements("css selector", ".card")) >= 1)
    card = browser.find_element("css selector", ".card.flagged")
    assert SCRIPT in card.text and card.find_elements("css selector", "img[src*='preview_uri']")
    assert not card.find_elements("css selector", "img[src='x']")  # the script's markup is text
    assert SCRIPT in [o.text for o in browser.find_elements("css selector", "#metric option")]
    wait.until(lambda d: d.execute_script(  # the preview /etc/passwd: refused, so no image
        "const i = document.querySelector('.card.flagged img'); return i.complete && i.naturalWidth === 0"))
    card.find_element("css selector", ".open-item").click()
    wait.until(lambda d: "record cannot be read" in by_id(d, "detail-record").get_attribute("textContent"))
    assert "root:" not in page_text(browser)
    no_script_ran(browser)

    # the file link itself, opened as a page: one sentence, not the file
    run = target.home / "run" / "results.parquet"
    browser.get(f"{target.url}/api/results/file?results_uri={run}&item_id=item-00000&kind=preview_uri")
    text = page_text(browser)
    assert "root:" not in text and "preview_uri: item 'item-00000' names a file outside" in text


def test_http_and_file_results_are_refused_with_one_sentence_and_never_fetched(browser, target, evidence):
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.attacker import Attacker

    wait = WebDriverWait(browser, 30)
    with Attacker() as other:
        for uri in (f"{other.url}/results.parquet", "file:///etc/passwd"):
            browser.get(f"{target.url}/review?results={uri}")
            wait.until(lambda d: "may not read" in by_id(d, "facets").text)
            assert "results_uri: the studio may not read" in by_id(browser, "facets").text
        assert other.seen == []


def author_rows(browser, target):
    """Author with the target's manifest's rows listed; the page's wait."""
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(f"{target.url}/author")
    wait.until(lambda d: by_id(d, "manifest-uri").get_attribute("value").endswith("manifest.parquet"))
    by_id(browser, "list-rows").click()
    wait.until(lambda d: len(d.find_elements("css selector", "#rows option")) > 1)
    return wait


def test_author_lists_a_stored_script_id_as_text_and_refuses_to_add_it(browser, target, evidence):
    wait = author_rows(browser, target)
    assert browser.find_elements("css selector", "#rows option")[0].text == SCRIPT
    no_script_ran(browser)

    row = demo_row("translate-0100")
    by_id(browser, "upload").send_keys(str(DEMO_MANIFEST.parent / row["image_uri"]))
    wait.until(lambda d: d.execute_script("return state !== null && picture.complete"))
    size = tuple(browser.execute_script("return size"))
    by_id(browser, "add-drag").click()
    draw_drag(browser, row, size)
    by_id(browser, "item-id").clear()
    by_id(browser, "item-id").send_keys(SCRIPT)
    wait.until(lambda d: "item_id: must be 1-128 characters" in by_id(d, "item-findings").text)
    by_id(browser, "target-manifest").send_keys(str(target.home / "authored" / "manifest.parquet"))
    by_id(browser, "append").click()
    wait.until(lambda d: "item_id: must be 1-128 characters" in by_id(d, "append-result").text)
    assert by_id(browser, "append-result").text.startswith("not added: ")
    assert not (target.home / "authored").exists()
    no_script_ran(browser)


def attacker_page(studio_url: str, attacker_url: str, run: Path, folder: Path) -> bytes:
    """One click on this page: forged posts to the studio (a fetch and a form), then the
    studio's Review sent to the attacker's results file, whose script would post on."""
    append = json.dumps({"manifest": str(folder / "evil" / "manifest.parquet"), "state": {}})
    send = json.dumps({"results": str(run), "items": ["item-00001"], "pad": ""})[:-2]
    return f"""<!doctype html><html><body>
<form id="f" method="POST" action="{studio_url}/api/results/send-back" enctype="text/plain">
<input type="hidden" name='{send}' value='"}}'></form>
<script>
fetch("{studio_url}/api/manifest/append", {{method: "POST", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(append)}}}).finally(() => {{
  if (location.hash === "#form") document.getElementById("f").submit();
  else location = "{studio_url}/review?results={attacker_url}/results.parquet";
}});
</script></body></html>""".encode()


def test_the_cross_origin_one_click_chain_is_broken_at_every_link(browser, target, tmp_path, evidence):
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.attacker import Attacker

    wait = WebDriverWait(browser, 30)
    run = target.home / "run" / "results.parquet"
    with Attacker() as other:
        other.pages["/"] = ("text/html", attacker_page(target.url, other.url, run, target.home))
        other.pages["/results.parquet"] = ("application/octet-stream", run.read_bytes())
        browser.get(f"{other.url}/")
        wait.until(lambda d: d.current_url.startswith(target.url))
        wait.until(lambda d: "may not read" in by_id(d, "facets").text)
        no_script_ran(browser)
        browser.get(f"{other.url}/#form")  # the forged form posts to send-back
        wait.until(lambda d: d.current_url.startswith(target.url))
        assert "refused: a request from another site cannot change the studio" in page_text(browser)
        # only its own page was asked for: nothing fetched from it, nothing sent to it
        assert {s.path for s in other.seen} <= {"/", "/favicon.ico"} and all(not s.body for s in other.seen)
    assert not (target.home / "evil").exists() and not (target.home / "run" / "retries").exists()


def test_a_rebound_host_name_is_misdirected(browser, target, evidence):
    browser.get(f"http://{REBOUND}:{target.port}/author")
    assert f"misdirected request: this studio answers only at 127.0.0.1:{target.port}" in page_text(browser)
    assert not browser.find_elements("id", "canvas")


def test_a_manifest_row_s_masks_show_on_the_canvas_as_the_server_decodes_them(browser, target, evidence):
    from selenium.webdriver.support.ui import Select

    wait = author_rows(browser, target)
    item_id = read_table(str(DEMO_MANIFEST)).column("item_id")[1].as_py()  # the first is the script's
    Select(by_id(browser, "rows")).select_by_visible_text(item_id)
    by_id(browser, "open-row").click()
    wait.until(lambda d: d.execute_script("return state !== null && state.item_id === arguments[0]", item_id))
    shown = browser.execute_script("""
      const rle = state.drags[0].region.rle, picture = maskPicture(rle, COLOURS[0]);
      const data = picture.getContext("2d").getImageData(0, 0, picture.width, picture.height).data;
      const on = []; for (let i = 3; i < data.length; i += 4) on.push(data[i] > 0 ? 1 : 0);
      return [picture.width, picture.height, on];""")
    row = demo_row(item_id)
    expected = np.asarray(Image.open(target.home / "manifests" / row["drags"][0]["handle_mask_uri"])) > 0
    width, height, on = shown
    assert (height, width) == expected.shape
    assert np.array_equal(np.array(on, dtype=bool).reshape(height, width), expected)


# Pleasant to use (issue 31), at the size of a common laptop screen.
LAPTOP = (1366, 768)


@pytest.fixture
def laptop(browser):
    size = browser.get_window_size()
    browser.set_window_size(*LAPTOP)
    yield browser
    browser.set_window_size(size["width"], size["height"])


def viewport(driver) -> tuple[int, int]:
    return tuple(driver.execute_script("return [document.documentElement.clientWidth, innerHeight]"))


def rect(driver, selector: str) -> dict:
    return driver.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                                 "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};",
                                 selector)


def drawn(driver) -> dict:
    return json.loads(driver.execute_script("return JSON.stringify(state)"))


def test_author_fits_a_laptop_undoes_moves_points_and_zooms(laptop, studio, evidence):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser = laptop
    wait = WebDriverWait(browser, 60)
    row, size = author_upload(browser, studio, "translate-0100")

    # the three columns side by side, all of them on the screen
    width, _ = viewport(browser)
    columns = [rect(browser, f"section.{name}") for name in ("side", "draw", "results")]
    assert columns[0]["right"] <= columns[1]["left"] and columns[1]["right"] <= columns[2]["left"]
    assert columns[2]["right"] <= width and len({round(c["top"]) for c in columns}) == 1

    # a polygon drawn before its drag exists becomes that drag's handle region
    drag = row["drags"][0]
    mask = np.asarray(Image.open(DEMO_MANIFEST.parent / drag["handle_mask_uri"])) > 0
    ys, xs = np.nonzero(mask)
    for x, y in ((xs.min() - 1, ys.min() - 1), (xs.max() + 1, ys.min() - 1), (xs.max() + 1, ys.max() + 1)):
        click_image_point(browser, x, y, *size)
    by_id(browser, "add-drag").click()
    assert len(drawn(browser)["drags"][0]["region"]["polygons"]) == 1
    browser.find_element("css selector", "[data-mode=handle]").click()
    click_image_point(browser, drag["handle"]["x"], drag["handle"]["y"], *size)
    click_image_point(browser, drag["target"]["x"], drag["target"]["y"], *size)
    wait.until(lambda d: by_id(d, "preview-time").get_attribute("data-ready") == "true")
    placed = drawn(browser)["drags"][0]["target"]

    # a point is moved by dragging it, and the server checks the moved drag
    canvas = by_id(browser, "canvas")
    start = canvas_offset(browser, *placed, size[0])
    scale = canvas.get_property("width") / size[0]
    ActionChains(browser).move_to_element_with_offset(canvas, *start).click_and_hold() \
        .move_by_offset(round(3 * scale), 0).move_by_offset(round(3 * scale), 0).release().perform()
    moved = drawn(browser)["drags"][0]["target"]
    assert abs(moved[0] - placed[0] - 6) <= 0.6 and abs(moved[1] - placed[1]) <= 0.6

    def keys(*pressed: str) -> None:
        chain = ActionChains(browser)
        for key in pressed[:-1]:
            chain.key_down(key)
        chain.send_keys(pressed[-1])
        for key in pressed[:-1]:
            chain.key_up(key)
        chain.perform()

    # undo takes the move back, then the target; redo puts them back
    keys(Keys.CONTROL, "z")
    assert drawn(browser)["drags"][0]["target"] == placed
    keys(Keys.CONTROL, "z")
    assert drawn(browser)["drags"][0]["target"] is None
    keys(Keys.CONTROL, Keys.SHIFT, "z")
    keys(Keys.CONTROL, Keys.SHIFT, "z")
    assert drawn(browser)["drags"][0]["target"] == moved
    by_id(browser, "undo").click()
    assert drawn(browser)["drags"][0]["target"] == placed
    by_id(browser, "redo").click()
    assert drawn(browser)["drags"][0]["target"] == moved

    # in the polygon tool too, dragging a point moves it and the click that ends the move adds
    # no vertex
    browser.find_element("css selector", "[data-mode=polygon]").click()
    handle = drawn(browser)["drags"][0]["handle"]
    ActionChains(browser).move_to_element_with_offset(canvas, *canvas_offset(browser, *handle, size[0])) \
        .click_and_hold().move_by_offset(0, round(2 * scale)).move_by_offset(0, round(2 * scale)).release() \
        .perform()
    assert abs(drawn(browser)["drags"][0]["handle"][1] - handle[1] - 4) <= 0.6
    assert browser.execute_script("return pending.length") == 0

    # zoom: the canvas grows about the view, the wrap scrolls; the brush is sized on the screen
    fit_width = canvas.get_property("width")
    by_id(browser, "zoom-in").click()
    by_id(browser, "zoom-in").click()
    assert abs(canvas.get_property("width") - fit_width * 2.25) <= 2
    assert by_id(browser, "zoom-label").text == "225%"
    assert rect(browser, "#canvas-wrap")["right"] <= columns[1]["right"]  # the view stays its size
    browser.find_element("css selector", "[data-mode=brush]").click()
    wrap = by_id(browser, "canvas-wrap")
    ActionChains(browser).move_to_element(wrap).click_and_hold().move_by_offset(20, 0).release().perform()
    [stroke] = drawn(browser)["drags"][0]["region"]["strokes"]
    brush = float(by_id(browser, "brush").get_attribute("value"))
    assert abs(stroke["radius"] - brush / browser.execute_script("return scale")) <= 0.1
    by_id(browser, "zoom-fit").click()
    assert canvas.get_property("width") == fit_width

    # every region shows as a translucent overlay: the stroke's band is painted on the canvas
    painted = browser.execute_script("""
      const c = document.getElementById("canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      const [x, y] = toCanvas(state.drags[0].region.strokes[0].points[0]);
      const i = (Math.round(y) * c.width + Math.round(x)) * 4;
      return [d[i], d[i + 1], d[i + 2]];""")
    picture = np.asarray(Image.open(DEMO_MANIFEST.parent / row["image_uri"]).convert("RGB"))
    sx, sy = (round(v) for v in stroke["points"][0])
    assert tuple(painted) != tuple(picture[sy, sx])
    screenshot(browser, "studio-author-1366.png")


def test_review_fits_a_laptop_with_the_item_beside_the_cards_before_and_after(laptop, studio, demo_results,
                                                                              evidence):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = laptop
    wait = WebDriverWait(browser, 60)
    browser.get(f"{studio.url}/review")
    wait.until(lambda d: "8 items" in by_id(d, "facets").text)
    Select(by_id(browser, "flag")).select_by_value("")
    types = [o.get_attribute("value") for o in Select(by_id(browser, "drag-type")).options]
    assert types == ["", "deform", "rotate", "scale", "translate"]  # from the run's manifest
    Select(by_id(browser, "drag-type")).select_by_value("rotate")
    by_id(browser, "apply").click()
    wait.until(lambda d: by_id(d, "shown").text == "2 shown")
    cards = browser.find_elements("css selector", ".card")
    assert all(c.get_attribute("data-item").startswith("rotate-") for c in cards)
    assert all("if_ed_ssim" in c.text for c in cards)  # the metrics the results carry
    Select(by_id(browser, "drag-type")).select_by_value("")
    by_id(browser, "apply").click()
    wait.until(lambda d: by_id(d, "shown").text == "8 shown")

    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.find_elements("css selector", ".card .open-item")[-1].click()
    wait.until(lambda d: by_id(d, "compare").get_attribute("data-ready") == "true")
    width, height = viewport(browser)
    detail, cards = rect(browser, "#detail"), rect(browser, "section.cards")
    assert 0 <= detail["top"] < height / 2 and detail["right"] <= width  # in view, wherever the list was
    assert cards["right"] <= detail["left"]  # beside the cards, not below them

    # the big before/after: the preview's input and edited panels at their full size
    item = by_id(browser, "detail-title").text
    [row] = [r for r in read_results(demo_results) if r["item_id"] == item]
    edited = Image.open(row["image_uri"])
    before = browser.execute_script("const c = document.getElementById('before'); return [c.width, c.height]")
    after = browser.execute_script("""const c = document.getElementById('after');
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return [c.width, c.height, Array.from(data)]""")
    strip = np.asarray(Image.open(row["preview_uri"]).convert("RGB"))
    panel = after[0]
    assert before == after[:2] and panel >= edited.width and strip.shape[1] > 3 * panel
    pixels = np.array(after[2], dtype=np.uint8).reshape(after[1], after[0], 4)[..., :3]
    assert np.array_equal(pixels, strip[:, -panel:])  # the edited panel, pixel for pixel
    assert rect(browser, "#before")["right"] - rect(browser, "#before")["left"] >= 250
    by_id(browser, "slider").click()
    browser.execute_script("const r = document.getElementById('compare-at'); r.value = 30; r.oninput()")
    assert "30%" in browser.execute_script(
        "return getComputedStyle(document.querySelector('.compare figure.after')).clipPath")
    assert rect(browser, "#after")["left"] == rect(browser, "#before")["left"]  # one over the other
    assert not by_id(browser, "detail-record").is_displayed()
    screenshot(browser, "studio-review-1366.png")
