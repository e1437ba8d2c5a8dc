"""The studio's web app: the Author and Review pages (`studio/static`) and the JSON API they
call. Every handler is a thin call into `studio.author`, `studio.jobs` or `studio.review`;
bad input answers 400 (or 422) with one sentence naming the field, never a traceback or
the input echoed back. Every URI a page sends is checked against the studio's roots
(`studio/roots.py`) and every request passes `studio/guard.py` first (Host, Origin, token,
body size, Content-Security-Policy). Store calls give up after STORE_TIMEOUT_S."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as CallTimedOut
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dragnext.config import ConfigError, EditConfig, build_config
from dragnext.instruction import InvalidItemError
from dragnext.model import DEFAULT_MODEL, ModelSource, checked_config, load_model
from flows.selection import SelectionError
from manifests.append import ManifestBusy
from manifests.items import read_manifest
from manifests.schema import ManifestError
from manifests.storage import OutputUnwritable, StoreUnavailable
from studio.author import Images, ManifestWriter, instant_preview, png, state_of_row
from studio.guard import Door, Guard
from studio.jobs import EditJobs, QueueFull
from studio.review import NotServable, Query, ResultsCache, send_back
from studio.roots import Refused, Roots
from studio.segment import DEFAULT_SAM, Box, Segmenter
from studio.state import MAX_BRUSH_RADIUS, AuthorState, instruction_of

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# A request body: an upload is base64 (4/3 of the file), anything else is a drawing.
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES * 4 // 3 + 4096
MAX_BODY = 16 * 1024 * 1024
LISTED_ROWS = 5000
# Store calls in flight at once, and how long one may take before the page hears why.
STORE_CALLS = 8
STORE_TIMEOUT_S = float(os.environ.get("DRAGNEXT_STUDIO_STORE_TIMEOUT_S", "60"))


@dataclass
class StudioSettings:
    model: str = DEFAULT_MODEL
    manifest: str | None = None  # the manifest Author opens rows of and adds rows to
    results: str | None = None  # the results Review opens first
    overrides: dict = field(default_factory=dict)
    workdir: Path | None = None  # uploaded images; a temporary folder by default
    sam: str | None = DEFAULT_SAM
    prefect: bool = False  # a Prefect server is configured: Review can launch retry-failed
    prefect_ui: str = ""  # its UI, where Review links the retry run it launched
    roots: Roots = field(default_factory=Roots)  # where the pages may read and write
    host: str = "127.0.0.1"  # the address it is bound to: the Host header must name it
    port: int = 7860
    insecure: bool = False  # bound beyond loopback without a token (behind an authenticating proxy)


class Upload(BaseModel):
    data: str = Field(max_length=MAX_UPLOAD_BYTES * 4 // 3 + 16)  # base64, or a data: URL
    name: str = "upload"


class RowRef(BaseModel):
    manifest: str
    item_id: str


class SegmentRequest(BaseModel):
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    box: Box


class EditRequest(BaseModel):
    state: AuthorState
    overrides: dict = Field(default_factory=dict)


class AppendRequest(BaseModel):
    state: AuthorState
    manifest: str
    params: dict = Field(default_factory=dict)


class QueryRequest(BaseModel):
    results: str
    query: Query = Field(default_factory=Query)
    reload: bool = False


class SendBackRequest(BaseModel):
    results: str
    items: list[str]
    overrides: dict = Field(default_factory=dict)
    launch: Literal["command", "deployment"] = "command"


def _data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def _decoded(data: str) -> bytes:
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"data: not base64 ({error})") from None


def _field(location: tuple) -> str:
    """A pydantic error's location as the library names fields (`state.drags[1].handle`)."""
    named = ""
    for part in location:
        named += f"[{part}]" if isinstance(part, int) else (f".{part}" if named else str(part))
    return named or "body"


def one_sentence(error: ValidationError | RequestValidationError) -> str:
    """The first problem of a validation error, naming its field, without the input."""
    problems = error.errors()
    first = problems[0]
    location = tuple(first["loc"][1:] if first["loc"][:1] == ("body",) else first["loc"])
    if first["type"] == "json_invalid":
        return "the request body is not valid JSON"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{_field(location)}: {first['msg']}{more}"


def _message(error: Exception) -> str:
    """The library's one sentence; a bare KeyError or a missing file says what was not found."""
    if isinstance(error, KeyError):
        named = str(error.args[0]) if error.args else ""
        return named if ": " in named else f"not found: '{named}'"
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such file: {error.filename}"
    return str(error)


def _body_limit(path: str) -> int:
    return MAX_UPLOAD_BODY if path == "/api/images" else MAX_BODY


def create_app(settings: StudioSettings) -> FastAPI:
    app = FastAPI(title="DragNeXt studio", docs_url=None, redoc_url=None, openapi_url=None)
    door = Door.for_bind(settings.host, settings.port, settings.insecure, _body_limit)
    app.add_middleware(Guard, door=door)
    app.state.token = door.token  # the command prints it in the URL
    roots = settings.roots
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="dragnext-studio-"))
    images = Images(workdir / "images")
    base = checked_config(ModelSource(model=settings.model), settings.overrides)
    jobs = EditJobs(lambda: load_model(ModelSource(model=settings.model)), base)
    writer, results, segmenter = ManifestWriter(), ResultsCache(roots.file_policy), Segmenter(settings.sam)
    store = ThreadPoolExecutor(max_workers=STORE_CALLS, thread_name_prefix="studio-store")
    app.router.on_shutdown.append(jobs.close)
    app.router.on_shutdown.append(lambda: store.shutdown(wait=False, cancel_futures=True))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def config_for(overrides: dict) -> EditConfig:
        return build_config(base.to_record(), overrides) if overrides else base

    def timed(call, *args):
        """A store call that answers within STORE_TIMEOUT_S (503 after; the call itself is
        left to finish on its own thread)."""
        try:
            return store.submit(call, *args).result(timeout=STORE_TIMEOUT_S)
        except CallTimedOut:
            raise StoreUnavailable(f"the store did not answer within {STORE_TIMEOUT_S:.0f} s") from None

    def run(field: str, uri: str, reload: bool = False):
        """The results file the page named, read only where the roots allow."""
        return timed(results.get, roots.readable(field, uri), reload)

    def manifest_rows_of(uri: str) -> list[dict]:
        return timed(lambda: read_manifest(roots.readable("manifest", uri)).table.to_pylist())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": one_sentence(error)}, status_code=422)

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, error: ValidationError) -> JSONResponse:
        return JSONResponse({"error": one_sentence(error)}, status_code=400)

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=403)

    @app.exception_handler(NotServable)
    async def not_servable(request: Request, error: NotServable) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=415)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=429)

    @app.exception_handler(ManifestBusy)
    async def manifest_busy(request: Request, error: ManifestBusy) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=409)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("studio: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"the studio failed on this request ({type(error).__name__}); "
                                      "its log has the details"}, status_code=500)

    @app.exception_handler(InvalidItemError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(ManifestError)
    @app.exception_handler(SelectionError)
    @app.exception_handler(FileNotFoundError)
    @app.exception_handler(KeyError)
    @app.exception_handler(ValueError)
    async def bad_input(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": _message(error)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(OutputUnwritable)
    async def store_error(request: Request, error: OSError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/author")

    @app.get("/author")
    def author_page() -> Response:
        return Response((STATIC / "author.html").read_bytes(), media_type="text/html")

    @app.get("/review")
    def review_page() -> Response:
        return Response((STATIC / "review.html").read_bytes(), media_type="text/html")

    @app.get("/api/settings")
    def studio_settings() -> dict:
        return {"model": settings.model, "manifest": settings.manifest, "results": settings.results,
                "prefect": settings.prefect, "prefect_ui": settings.prefect_ui, "config": base.to_record(),
                "cwd": os.getcwd(), "read": list(roots.read), "write": list(roots.write),
                "max_brush_radius": MAX_BRUSH_RADIUS}

    @app.post("/api/images")
    def upload(body: Upload) -> dict:
        image_id, image = images.add(_decoded(body.data), body.name)
        return {"image_id": image_id, "width": image.width, "height": image.height}

    @app.get("/api/images/{image_id}")
    def image(image_id: str) -> Response:
        return Response(png(images.get(image_id)), media_type="image/png")

    @app.get("/api/manifest/rows")
    def manifest_rows(manifest: str) -> dict:
        ids = [r["item_id"] for r in manifest_rows_of(manifest)]
        return {"items": [i for i in ids if i is not None][:LISTED_ROWS], "rows": len(ids)}

    @app.post("/api/manifest/open")
    def open_row(ref: RowRef) -> dict:
        rows = [r for r in manifest_rows_of(ref.manifest) if r["item_id"] == ref.item_id]
        if not rows:
            raise KeyError(f"item_id: '{ref.item_id}' is not in the manifest")
        uri = roots.readable("manifest", ref.manifest)
        state = timed(state_of_row, rows[0], uri, images, roots.read)
        width, height = images.get(state.image_id).size
        return {"state": state.model_dump(), "width": width, "height": height}

    @app.post("/api/author/check")
    def check(state: AuthorState) -> dict:
        _, found, shown = instruction_of(state, images.get(state.image_id))
        drawn, warped, seconds = instant_preview(shown)
        return {"findings": [f.model_dump() for f in found], "overlay": _data_url(drawn),
                "warp": _data_url(warped), "seconds": round(seconds, 4),
                "ready": not any(f.level == "error" for f in found)}

    @app.post("/api/segment")
    def segment(request: SegmentRequest) -> dict:
        from dragnext.inline_mask import encode

        mask = segmenter(images.get(request.image_id), request.box)
        return {"rle": encode(mask).rle.model_dump(), "pixels": int(mask.sum()), "method": segmenter.method}

    def ready_item(state: AuthorState):
        item, found, _ = instruction_of(state, images.get(state.image_id))
        errors = [f for f in found if f.level == "error"]
        if errors:
            raise InvalidItemError(state.item_id, errors[0].field, errors[0].message)
        return item

    @app.post("/api/edit")
    def edit_now(request: EditRequest) -> dict:
        return jobs.submit(ready_item(request.state), config_for(request.overrides)).view()

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict:
        return jobs.get(job_id).view()

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        return jobs.cancel(job_id).view()

    @app.get("/api/jobs/{job_id}/{picture}.png")
    def job_picture(job_id: str, picture: Literal["sheet", "edited"]) -> Response:
        found = getattr(jobs.get(job_id), picture)
        if found is None:
            raise HTTPException(404, f"job {job_id} has no {picture} yet")
        return Response(png(found), media_type="image/png")

    @app.post("/api/manifest/append")
    def append(request: AppendRequest) -> dict:
        item = ready_item(request.state)
        config_for(request.params)  # a bad key is refused before anything is written
        params = json.dumps(request.params) if request.params else None
        manifest = roots.writable("manifest", request.manifest)
        rows, problems = timed(writer.append, manifest, item, params, base)
        return {"manifest": manifest, "rows": rows, "problems": [str(p) for p in problems]}

    @app.get("/api/results/facets")
    def facets(results_uri: str, reload: bool = False) -> dict:
        return run("results_uri", results_uri, reload).facets()

    @app.post("/api/results/query")
    def query(request: QueryRequest) -> dict:
        return run("results", request.results, request.reload).query(request.query)

    @app.get("/api/results/item")
    def item(results_uri: str, item_id: str) -> dict:
        return timed(run("results_uri", results_uri).item, item_id)

    @app.get("/api/results/file")
    def result_file(results_uri: str, item_id: str, kind: str) -> Response:
        found = timed(run("results_uri", results_uri).file, item_id, kind)
        if found is None:
            raise HTTPException(404, f"{kind}: item '{item_id}' has none")
        data, media = found
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=300"})

    @app.post("/api/results/send-back")
    def send(request: SendBackRequest) -> dict:
        if request.launch == "deployment" and not settings.prefect:
            raise ValueError("launch: no Prefect server is configured (PREFECT_API_URL); "
                             "run the command instead")
        return timed(send_back, run("results", request.results), request.items, request.overrides,
                     request.launch)

    return app
