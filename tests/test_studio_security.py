"""The studio against the attacks of issue 31, through its API (FastAPI's TestClient): a
results row or a page naming a file or URL outside the studio's roots, a script stored in
an item id, requests from another site or under another Host name, a body too large, a
drawing too costly, a full Edit now queue and a store that does not answer. Each is
refused with one sentence and nothing read, fetched or written. The same attacks through
a real Chromium are in tests/test_studio_browser.py."""

import base64
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from command.main import main
from manifests.schema import read_table, write_table
from studio import app as studio_app
from studio import jobs as studio_jobs
from studio.app import StudioSettings
from studio.author import png
from studio.jobs import EditJobs, QueueFull
from studio.roots import Refused, Roots
from studio.state import MAX_VERTICES
from tests.attacker import Attacker
from tests.conftest import FAST_OVERRIDES
from tests.test_studio import results_file, scene_image, state_for, studio_client, upload

STATIC = Path(studio_app.__file__).parent / "static"
SCRIPT = "<img src=x onerror=window.pwned=1>"


@pytest.fixture
def roots(tmp_path) -> Roots:
    (tmp_path / "run").mkdir()
    return Roots.of(results=str(tmp_path / "run" / "results.parquet"),
                    write_prefixes=[str(tmp_path / "authored")])


def make_studio(tiny_model_dir, tmp_path, roots: Roots, **settings):
    return studio_client(StudioSettings(model=str(tiny_model_dir), overrides=FAST_OVERRIDES,
                                        workdir=tmp_path / "work", sam=None, roots=roots, **settings))


@pytest.fixture
def studio(tiny_model_dir, tmp_path, roots):
    with make_studio(tiny_model_dir, tmp_path, roots) as client:
        yield client


def crafted_run(folder: Path, **files: str) -> str:
    """A results file whose first row names `files` (preview_uri=…, record_uri=…)."""
    uri = results_file(folder, 2)
    table = read_table(uri)
    for kind, value in files.items():
        column = [value, None]
        table = table.set_column(table.schema.get_field_index(kind), kind, pa.array(column, pa.string()))
    write_table(table, uri)
    return uri


def one_line(answer) -> str:
    message = answer.json()["error"] if answer.headers["content-type"].startswith("application/json") \
        else answer.text
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def test_a_results_row_naming_a_file_outside_the_run_and_the_roots_is_never_served(studio, tmp_path):
    run = crafted_run(tmp_path / "run", preview_uri="/etc/passwd", image_uri="file:///etc/passwd",
                      record_uri="../../../../../../etc/passwd")
    for kind in ("preview_uri", "image_uri", "record_uri"):
        answer = studio.get("/api/results/file",
                            params={"results_uri": run, "item_id": "item-00000", "kind": kind})
        assert answer.status_code == 403 and "root:" not in answer.text, answer.text
        assert kind in one_line(answer)
    record = studio.get("/api/results/item", params={"results_uri": run, "item_id": "item-00000"}).json()
    assert "root:" not in str(record) and "the record cannot be read" in record["record"]["error"]


def test_a_results_file_outside_the_roots_is_not_opened(studio, tmp_path):
    elsewhere = results_file(tmp_path, 2)  # tmp_path itself is not a root, only tmp_path/run
    answer = studio.get("/api/results/facets", params={"results_uri": elsewhere})
    assert answer.status_code == 403 and "results_uri: the studio may not read" in one_line(answer)
    assert studio.post("/api/results/query", json={"results": "/etc/passwd"}).status_code == 403


def test_a_file_of_the_run_is_served_as_what_its_bytes_are_never_as_what_it_claims(studio, tmp_path):
    folder = tmp_path / "run" / "items" / "item-00000"
    folder.mkdir(parents=True)
    (folder / "preview.png").write_bytes(png(scene_image()[0]))
    (folder / "record.json").write_text("<script>alert(1)</script>")
    (folder / "image.png").write_text("<html><script>alert(1)</script></html>")
    run = crafted_run(tmp_path / "run", preview_uri="items/item-00000/preview.png",
                      record_uri=str(folder / "record.json"), image_uri=str(folder / "image.png"))

    def get(kind):
        return studio.get("/api/results/file",
                          params={"results_uri": run, "item_id": "item-00000", "kind": kind})

    preview = get("preview_uri")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.headers["x-content-type-options"] == "nosniff"
    for kind in ("record_uri", "image_uri"):
        refused = get(kind)
        assert refused.status_code == 415 and "alert" not in refused.text and kind in one_line(refused)


def test_http_and_file_and_other_bucket_uris_are_refused_without_a_request(studio, tmp_path):
    with Attacker() as other:
        for uri in (f"{other.url}/results.parquet", "file:///etc/passwd",
                    "s3://someone-else/results.parquet"):
            facets = studio.get("/api/results/facets", params={"results_uri": uri})
            assert facets.status_code == 403 and "may not read" in one_line(facets)
        rows = studio.get("/api/manifest/rows", params={"manifest": f"{other.url}/manifest.parquet"})
        assert rows.status_code == 403
        state = state_for(upload(studio, scene_image()[0]))
        append = studio.post("/api/manifest/append", json={"state": state.model_dump(),
                                                           "manifest": f"{other.url}/manifest.parquet"})
        assert append.status_code == 403 and "manifest: the studio may not write" in one_line(append)
        assert other.seen == []  # not one request reached the other server


def test_an_allowed_http_prefix_is_read(tiny_model_dir, tmp_path):
    """`--allow-prefix http://…` opts in, as for a run's images."""
    run = results_file(tmp_path, 2)
    with Attacker({"/results.parquet": ("application/octet-stream", Path(run).read_bytes())}) as server:
        roots = Roots.of(allow_prefixes=[server.url])
        with make_studio(tiny_model_dir, tmp_path, roots) as studio:
            facets = studio.get("/api/results/facets",
                                params={"results_uri": f"{server.url}/results.parquet"})
        assert facets.status_code == 200 and facets.json()["rows"] == 2


def test_a_manifest_is_written_only_under_a_write_root_and_a_script_id_never(studio, tmp_path):
    state = state_for(upload(studio, scene_image()[0]))
    outside = tmp_path / "chosen-by-the-page" / "manifest.parquet"
    answer = studio.post("/api/manifest/append", json={"state": state.model_dump(), "manifest": str(outside)})
    assert answer.status_code == 403 and not outside.parent.exists()

    inside = tmp_path / "authored" / "manifest.parquet"
    scripted = state.model_copy(update={"item_id": SCRIPT}).model_dump()
    refused = studio.post("/api/manifest/append", json={"state": scripted, "manifest": str(inside)})
    assert refused.status_code == 400 and "item_id: must be 1-128 characters" in one_line(refused)
    assert not inside.parent.exists()  # refused before anything was written
    check = studio.post("/api/author/check", json=scripted).json()
    assert [f["field"] for f in check["findings"] if f["level"] == "error"] == ["item_id"]
    ok = studio.post("/api/manifest/append", json={"state": state.model_dump(), "manifest": str(inside)})
    assert ok.status_code == 200 and ok.json()["manifest"] == str(inside)


def test_a_foreign_host_is_misdirected_and_a_foreign_origin_cannot_change_state(studio):
    rebound = studio.get("/api/settings", headers={"Host": "attacker.example:7860"})
    assert rebound.status_code == 421 and "127.0.0.1:7860" in one_line(rebound)
    assert studio.get("/api/settings", headers={"Host": "localhost:7860"}).status_code == 200
    body = {"data": base64.b64encode(png(scene_image()[0])).decode()}
    for headers in ({"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"},
                    {"Origin": "http://attacker.example"}):
        forged = studio.post("/api/images", json=body, headers=headers)
        assert forged.status_code == 403 and "another site" in one_line(forged)
    cross_site = {"Origin": "", "Sec-Fetch-Site": "cross-site"}
    assert studio.post("/api/images", json=body, headers=cross_site).status_code == 403
    assert studio.post("/api/images", json=body).status_code == 200  # the studio's own origin


def test_off_loopback_every_request_needs_the_token_exchanged_for_a_strict_cookie(tiny_model_dir, tmp_path,
                                                                                   roots):
    with make_studio(tiny_model_dir, tmp_path, roots, host="0.0.0.0") as studio:
        token = studio.app.state.token
        assert token and len(token) >= 32
        refused = studio.get("/api/settings")
        assert refused.status_code == 401 and "token" in one_line(refused)
        assert studio.get("/author?token=wrong").status_code == 401
        signed = studio.get(f"/review?results=x&token={token}", follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/review?results=x"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token in cookie
        assert studio.get("/api/settings").status_code == 200  # the client keeps the cookie
    with make_studio(tiny_model_dir, tmp_path, roots, host="0.0.0.0", insecure=True) as open_studio:
        assert open_studio.app.state.token is None
        assert open_studio.get("/api/settings").status_code == 200


def test_a_body_over_the_limit_is_refused_short_without_an_echo(studio, monkeypatch):
    monkeypatch.setattr(studio_app, "MAX_BODY", 1024 * 1024)
    big = b'{"image_id": "' + b"A" * (2 * 1024 * 1024) + b'"}'
    answer = studio.post("/api/author/check", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and len(answer.content) < 200 and b"AAAA" not in answer.content

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"A" * 65536

    streamed = studio.post("/api/author/check", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and b"AAAA" not in streamed.content


def test_a_validation_error_is_one_sentence_naming_the_field_without_the_input(studio):
    state = state_for("0" * 64).model_dump()
    state["drags"][0]["type"] = SCRIPT
    answer = studio.post("/api/author/check", json=state)
    assert answer.status_code == 422
    message = one_line(answer)
    assert message.startswith("drags[0].type: ") and "onerror" not in message
    broken = studio.post("/api/author/check", content=b"{not json",
                         headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and one_line(broken) == "the request body is not valid JSON"


def test_drawings_too_costly_to_rasterise_are_refused_before_any_work(studio):
    image_id = upload(studio, scene_image()[0])
    many = [[float(i % 100), float(i % 90)] for i in range(MAX_VERTICES + 1)]
    state = state_for(image_id).model_dump()
    state["drags"][0]["region"] = {"polygons": [many[:3], many], "strokes": [], "rle": None}
    too_many = studio.post("/api/author/check", json=state)
    assert too_many.status_code == 422 and "drags[0].region" in one_line(too_many)
    state["drags"][0]["region"] = {"polygons": [], "strokes": [{"points": many[:10_000], "radius": 250}]}
    started = time.perf_counter()
    too_wide = studio.post("/api/author/check", json=state)
    assert too_wide.status_code == 422 and "brush" in one_line(too_wide)
    assert time.perf_counter() - started < 2


def test_the_edit_now_queue_is_bounded_and_a_job_can_be_cancelled_queued_or_running(monkeypatch):
    release = threading.Event()

    def endless(image, instruction, model, config, item_id, callback):
        while True:  # an edit's steps, until cancelled
            callback("pbsi", 1, 10)
            release.wait(0.01)

    monkeypatch.setattr(studio_jobs, "edit", endless)
    model = type("Model", (), {"architecture": None})()
    config = type("Config", (), {"check_model": lambda self, architecture: None})()
    jobs = EditJobs(lambda: model, config)
    item = type("Item", (), {"item_id": "a", "image": None, "instruction": None})()
    try:
        running, queued = jobs.submit(item), jobs.submit(item)
        with pytest.raises(QueueFull, match="already has 2 edits"):
            jobs.submit(item)
        assert jobs.cancel(queued.id).status == "cancelled"
        deadline = time.time() + 10
        while running.status != "running" and time.time() < deadline:
            time.sleep(0.02)
        jobs.cancel(running.id)
        while running.status != "cancelled" and time.time() < deadline:
            time.sleep(0.02)
        assert running.status == "cancelled" and queued.status == "cancelled"
        assert jobs.submit(item).status == "queued"  # room again
    finally:
        release.set()
        for job in list(jobs._jobs):
            jobs.cancel(job)
        jobs.close()


def test_a_store_that_does_not_answer_times_out_with_one_sentence(studio, tmp_path, monkeypatch):
    run = results_file(tmp_path / "run", 2)
    monkeypatch.setattr(studio_app, "STORE_TIMEOUT_S", 0.3)
    monkeypatch.setattr("studio.review.read_table", lambda uri: time.sleep(3))
    started = time.perf_counter()
    answer = studio.get("/api/results/facets", params={"results_uri": run})
    assert answer.status_code == 503 and "did not answer within" in one_line(answer)
    assert time.perf_counter() - started < 2


def test_every_page_forbids_inline_script_and_the_scripts_never_parse_data_as_html(studio):
    for page in ("/author", "/review", "/static/author.js"):
        answer = studio.get(page)
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    for html in STATIC.glob("*.html"):
        text = html.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), html  # no inline script
        assert not re.search(r"\son\w+=|style=", text), html  # no inline handler or style
    for script in STATIC.glob("*.js"):
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write",
                             script.read_text()), script


def test_the_studio_command_refuses_a_relative_or_empty_prefix(capsys):
    assert main(["studio", "--allow-prefix", "relative/folder", "--port", "1"]) == 2
    assert "relative" in capsys.readouterr().err
    assert main(["studio", "--write-prefix", " ", "--port", "1"]) == 2
    assert "--write-prefix" in capsys.readouterr().err


def test_roots_follow_the_uri_policy_of_the_pipeline(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "escape").symlink_to("/etc")
    roots = Roots.of(results=str(tmp_path / "run" / "results.parquet"))
    assert roots.readable("results", str(tmp_path / "run" / "results.parquet"))
    for uri in (str(tmp_path / "run" / "escape" / "passwd"), str(tmp_path / "run" / ".." / "x"),
                f"file://{tmp_path}/run/results.parquet", "http://127.0.0.1/run/results.parquet", ""):
        with pytest.raises(Refused, match="results: the studio may not read"):
            roots.readable("results", uri)
    with pytest.raises(Refused, match="may not write"):
        roots.writable("manifest", str(tmp_path / "run" / "manifest.parquet"))
