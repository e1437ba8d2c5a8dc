"""What the project writes is whole or absent, and what it reads back may be torn: a full
disk never truncates a good file, a torn row or stage counts as missing, and the URI policy
judges what will be read, not how it is spelt."""

import json
import os
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack

import pytest
import torch

from flows.lease import OutputInUse, acquire, check_free, holder, lease_uri, leased
from flows.results import Links, previous_rows, read_rows, write_row
from infra.faults import FaultUnavailable, capped_disk, read_only_disk
from manifests.storage import OutputUnwritable, browser_link, create_exclusive, is_transient, write_bytes
from manifests.uris import PolicyError, UriPolicy
from tasks.stage_store import StageStore


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs (root only), `good.json` on it, then filled to the last byte."""
    disk = tmp_path / "disk"
    with ExitStack() as mounted:
        try:
            mounted.enter_context(capped_disk(disk, "64k"))
        except FaultUnavailable as error:
            pytest.skip(str(error))
        (disk / "good.json").write_text('{"status": "succeeded"}')
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"x" * 1024):
                pass
        except OSError:  # full
            pass
        finally:
            os.close(filler)
        yield disk


def test_a_full_disk_keeps_the_old_file_whole_and_says_disk_full(full_disk):
    with pytest.raises(OutputUnwritable, match="disk full"):
        write_bytes(str(full_disk / "good.json"), b'{"status": "failed", "padding": "' + b"y" * 8192 + b'"}')
    assert json.loads((full_disk / "good.json").read_text()) == {"status": "succeeded"}
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "good.json"]  # no temporary left


def test_a_read_only_output_is_refused_at_once_not_retried(full_disk):
    read_only_disk(full_disk)
    with pytest.raises(OutputUnwritable, match="read-only") as refused:
        write_bytes(str(full_disk / "new.json"), b"{}")
    assert not is_transient(refused.value)


def test_torn_rows_and_results_count_as_missing(tmp_path):
    out = str(tmp_path)
    write_row(out, {"item_id": "good", "status": "succeeded", "attempts": 1}, "run-1")
    (tmp_path / "rows" / "empty.json").write_bytes(b"")
    (tmp_path / "rows" / "torn.json").write_bytes(b'{"item_id": "torn", "sta')
    (tmp_path / "rows" / "other.json").write_text('{"item_id": "not-other", "status": "succeeded"}')
    (tmp_path / "results.parquet").write_bytes(b"PAR1 torn")
    assert set(read_rows(out)) == {"good"}
    assert set(previous_rows(out)) == {"good"}


def test_a_torn_stage_is_computed_again_not_trusted(tmp_path):
    store = StageStore(str(tmp_path))
    store.save("a", "pbsi", "key-1", {"z": torch.ones(2, 2)})
    assert torch.equal(store.load("a", "pbsi", "key-1")["z"], torch.ones(2, 2))
    assert store.load("a", "pbsi", "key-2") is None
    path = tmp_path / "items" / "a" / "stages" / "pbsi.safetensors"
    path.write_bytes(path.read_bytes()[:-5])  # the tail lost
    assert store.load("a", "pbsi", "key-1") is None
    path.write_bytes(b"\xff" * 8)  # a header length that is nonsense
    assert store.key_of("a", "pbsi") is None
    path.write_bytes(b"")
    assert store.load("a", "pbsi", "key-1") is None


def test_the_uri_policy_judges_real_paths_and_decoded_urls(tmp_path):
    folder, outside = tmp_path / "job", tmp_path / "secret.png"
    folder.mkdir()
    outside.write_bytes(b"x")
    (folder / "link.png").symlink_to(outside)
    (folder / "inside.png").write_bytes(b"x")
    policy = UriPolicy(str(folder))
    assert policy.resolve("inside.png") == str(folder / "inside.png")
    assert policy.resolve("link.png") is None  # a symlink out of the folder is outside
    web = UriPolicy(str(folder), ("https://images.example/jobs/1/",))
    assert web.resolve("https://images.example/jobs/1/a.png") == "https://images.example/jobs/1/a.png"
    for sneaky in ("https://images.example/jobs/1/%2e%2e/2/a.png", "https://images.example/jobs/1/..%2f2/a.png",
                   "https://images.example/jobs/1/%252e%252e/2/a.png", "https://images.example/jobs/1/..%5c2/a.png"):
        assert web.resolve(sneaky) is None, sneaky
    for bad in ("", "  ", "relative/folder"):
        with pytest.raises(PolicyError):
            UriPolicy(str(folder), (bad,))


def test_the_lease_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    out = str(tmp_path / "out")
    assert create_exclusive(lease_uri(out), b"{}") and not create_exclusive(lease_uri(out), b"{}")
    os.unlink(lease_uri(out))
    with leased(out, "run-a", stale_after_s=60, every_s=0.05):
        assert holder(out).run_id == "run-a"
        first = holder(out).beat
        time.sleep(0.3)
        assert holder(out).beat > first  # renewed while the run lives
        with pytest.raises(OutputInUse, match="in use by run run-a on host"):
            acquire(out, "run-b", stale_after_s=60)
        acquire(out, "run-a", stale_after_s=60)  # the same run may take its own lease again
    assert holder(out) is None
    (tmp_path / "out" / "lease.json").write_text(json.dumps(
        {"run_id": "gone", "host": os.uname().nodename, "pid": 2**22 + 17, "beat": 1e12}))
    assert check_free(out, "run-c", stale_after_s=60).run_id == "gone"  # its process is gone


def test_artifact_links_open_in_a_browser_presigned_on_s3_and_never_as_bare_paths(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/links/preview.png"
    write_bytes(uri, b"the preview's bytes")
    url = browser_link(uri, expiry_s=120)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert url.startswith("http://127.0.0.1:") and query["Signature"]
    assert abs(int(query["Expires"][0]) - (time.time() + 120)) < 10  # expires when asked
    assert urllib.request.urlopen(url, timeout=10).read() == b"the preview's bytes"  # no credentials needed
    local = str(tmp_path / "preview.png")
    assert browser_link(local, 120) is None  # a web page cannot open file:// links
    links = Links(f"{s3_bucket}/links/results.parquet", 120)
    assert links.markdown("preview", local) == f"`{local}`"
    assert links.markdown("preview", uri).startswith("[preview](http://127.0.0.1:")
    studio = Links(str(tmp_path / "results.parquet"), 120, "http://127.0.0.1:7860")
    assert studio.markdown("preview", uri).startswith("[preview](http://127.0.0.1:")  # signed wins
    assert studio.url(local, "a b", "preview_uri") == (  # a local output opens through the studio
        f"http://127.0.0.1:7860/api/results/file?results_uri={urllib.parse.quote_plus(studio.results_uri)}"
        "&item_id=a+b&kind=preview_uri")
    assert studio.url(studio.results_uri).startswith("http://127.0.0.1:7860/review?results=")
