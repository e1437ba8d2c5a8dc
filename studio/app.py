"""The studio's web app: the Author and Review pages (`studio/static`) and the JSON API they
call. Every handler is a thin call into `studio.author`, `studio.jobs` or `studio.review`;
bad input answers 400 with the library's message, never a traceback."""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from dragnext.config import ConfigError, EditConfig, build_config
from dragnext.instruction import InvalidItemError
from dragnext.model import DEFAULT_MODEL, ModelSource, checked_config, load_model
from flows.selection import SelectionError
from manifests.items import conform
from manifests.schema import ManifestError, read_table
from manifests.storage import OutputUnwritable, StoreUnavailable, read_bytes
from studio.author import Images, ManifestWriter, instant_preview, png, state_of_row
from studio.jobs import EditJobs
from studio.review import Query, ResultsCache, send_back
from studio.segment import DEFAULT_SAM, Box, Segmenter
from studio.state import AuthorState, instruction_of

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
LISTED_ROWS = 5000


@dataclass
class StudioSettings:
    model: str = DEFAULT_MODEL
    manifest: str | None = None  # the manifest Author opens rows of and adds rows to
    results: str | None = None  # the results Review opens first
    overrides: dict = field(default_factory=dict)
    workdir: Path | None = None  # uploaded images; a temporary folder by default
    sam: str | None = DEFAULT_SAM
    prefect: bool = False  # a Prefect server is configured: Review can launch retry-failed


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


def create_app(settings: StudioSettings) -> FastAPI:
    app = FastAPI(title="DragNeXt studio", docs_url=None, redoc_url=None)
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="dragnext-studio-"))
    images = Images(workdir / "images")
    base = checked_config(ModelSource(model=settings.model), settings.overrides)
    jobs = EditJobs(lambda: load_model(ModelSource(model=settings.model)), base)
    writer, results, segmenter = ManifestWriter(), ResultsCache(), Segmenter(settings.sam)
    app.router.on_shutdown.append(jobs.close)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def config_for(overrides: dict) -> EditConfig:
        return build_config(base.to_record(), overrides) if overrides else base

    @app.exception_handler(InvalidItemError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(ManifestError)
    @app.exception_handler(SelectionError)
    @app.exception_handler(FileNotFoundError)
    @app.exception_handler(KeyError)
    @app.exception_handler(ValueError)
    async def bad_input(request: Request, error: Exception) -> JSONResponse:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return JSONResponse({"error": f"{message}"}, status_code=400)

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
                "prefect": settings.prefect, "config": base.to_record()}

    @app.post("/api/images")
    def upload(body: Upload) -> dict:
        image_id, image = images.add(_decoded(body.data), body.name)
        return {"image_id": image_id, "width": image.width, "height": image.height}

    @app.get("/api/images/{image_id}")
    def image(image_id: str) -> Response:
        return Response(png(images.get(image_id)), media_type="image/png")

    @app.get("/api/manifest/rows")
    def manifest_rows(manifest: str) -> dict:
        ids = conform(read_table(manifest)).table.column("item_id").to_pylist()
        return {"items": [i for i in ids if i is not None][:LISTED_ROWS], "rows": len(ids)}

    @app.post("/api/manifest/open")
    def open_row(ref: RowRef) -> dict:
        rows = [r for r in conform(read_table(ref.manifest)).table.to_pylist() if r["item_id"] == ref.item_id]
        if not rows:
            raise KeyError(f"item '{ref.item_id}' is not in {ref.manifest}")
        state = state_of_row(rows[0], ref.manifest, images)
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
        rows, problems = writer.append(request.manifest, item, params, base)
        return {"manifest": request.manifest, "rows": rows, "problems": [str(p) for p in problems]}

    @app.get("/api/results/facets")
    def facets(results_uri: str, reload: bool = False) -> dict:
        return results.get(results_uri, reload).facets()

    @app.post("/api/results/query")
    def query(request: QueryRequest) -> dict:
        return results.get(request.results, request.reload).query(request.query)

    @app.get("/api/results/item")
    def item(results_uri: str, item_id: str) -> dict:
        return results.get(results_uri).item(item_id)

    @app.get("/api/results/file")
    def result_file(results_uri: str, item_id: str, kind: str) -> Response:
        uri = results.get(results_uri).file_uri(item_id, kind)
        if not uri:
            raise HTTPException(404, f"item '{item_id}' has no {kind}")
        media = "application/json" if kind == "record_uri" else "image/png"
        return Response(read_bytes(uri), media_type=media, headers={"Cache-Control": "max-age=300"})

    @app.post("/api/results/send-back")
    def send(request: SendBackRequest) -> dict:
        if request.launch == "deployment" and not settings.prefect:
            raise ValueError("no Prefect server is configured (PREFECT_API_URL): run the command instead")
        return send_back(results.get(request.results), request.items, request.overrides, request.launch)

    return app
