"""Faults on demand, for the tests and `make chaos`: a TCP proxy on 127.0.0.1 in front of
the S3 endpoint that refuses every connection while it is down (the store's data, held by
the server behind it, survives the outage), and every malformed manifest row seen so far."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import s3fs

from flows.local_api import free_port


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        proxy: StoreProxy = self.server.proxy  # type: ignore[attr-defined]
        if proxy.is_down.is_set():
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return  # closed at once with a reset: the client sees a refused/broken connection
        with socket.create_connection(proxy.upstream, timeout=30) as upstream:
            proxy.active.add(self.request)
            try:
                pump = threading.Thread(target=_copy, args=(upstream, self.request, proxy.count_served),
                                        daemon=True)
                pump.start()
                _copy(self.request, upstream)
                pump.join()
            finally:
                proxy.active.discard(self.request)


def _copy(source: socket.socket, sink: socket.socket, count=lambda n: None) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
            count(len(data))
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class StoreProxy:
    """`http://127.0.0.1:PORT` forwarding to `upstream` (host, port); `down()`/`up()` switch
    the outage, `outage(seconds)` schedules one; `served` counts the bytes the store sent."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.is_down = threading.Event()
        self.active: set[socket.socket] = set()  # open client connections (kept alive by clients)
        self._server = _Server(("127.0.0.1", 0), _Pipe)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.outages = 0
        self.served = 0
        self._count_lock = threading.Lock()
        threading.Thread(target=self._server.serve_forever, daemon=True, name="store-proxy").start()

    def down(self) -> None:
        """Refuse new connections and break the open ones (clients pool them)."""
        self.outages += 1
        self.is_down.set()
        for connection in list(self.active):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self.is_down.clear()

    def count_served(self, n: int) -> None:
        with self._count_lock:
            self.served += n

    def outage(self, seconds: float) -> threading.Timer:
        """Down now, up again after `seconds`."""
        self.down()
        timer = threading.Timer(seconds, self.up)
        timer.daemon = True
        timer.start()
        return timer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def store_behind_proxy(bucket: str) -> Iterator[tuple[StoreProxy, s3fs.S3FileSystem]]:
    """moto's S3 server on 127.0.0.1 with `bucket`, behind a `StoreProxy`; the standard AWS
    variables point at the proxy (worker processes inherit them) for the block, and the
    filesystem yielded reaches the server directly. Restores the variables after."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = StoreProxy(("127.0.0.1", port))
    env = {"AWS_ENDPOINT_URL_S3": proxy.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
           "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    direct = s3fs.S3FileSystem(key="testing", secret="testing", use_listings_cache=False,
                               client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"})
    direct.mkdir(bucket)
    try:
        yield proxy, direct
    finally:
        proxy.up()
        proxy.close()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FaultUnavailable(RuntimeError):
    """This machine cannot inject the fault (e.g. mounting needs root)."""


@contextmanager
def capped_disk(path, size: str) -> Iterator[None]:
    """A tmpfs of `size` (e.g. "1500k") mounted at `path` for the block: a disk that fills.
    `resize_disk(path, size)` grows it, `read_only_disk(path)` makes it refuse writes."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        raise FaultUnavailable(f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize_disk(path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def read_only_disk(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size (a decompression bomb is a few hundred bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def _drag(row: dict, **changes) -> dict:
    return {**row, "drags": [{**row["drags"][0], **changes}]}


# Runs of 2**62 written 13 characters long: added in int64 they wrap to exactly 64 x 64,
# which once passed the check and made the decoder write past its buffer (SIGSEGV).
WRAPPING_RLE = {"size": [64, 64], "counts": "PPPPPPPPPPPP4PPPPPPPPPPPP4PPPPPPPPPPPP4PP4"}


def zigzag(width: int, height: int, vertices: int) -> list[float]:
    """A polygon of `vertices` edges each an image wide: pycocotools walks its perimeter at
    5x resolution, 2.9 GB and 18 s for 100 000 vertices on 512 px."""
    return [float(v) for i in range(vertices) for v in (i % 2 * (width - 1), i * (height - 1) / vertices)]


# Every malformed kind a manifest has been seen with: (item id, how a good single-drag row
# is broken, what the error must say). `write_malformed_files` puts the files they name
# beside the manifest (and one above it, which no row may reach).
MALFORMED = [
    (None, lambda r: r, "item_id"),
    (".", lambda r: r, "item_id"),
    ("..", lambda r: r, "item_id"),
    ("bomb", lambda r: {**r, "image_uri": "bomb.png"}, "image_uri: image has 400,000,000 pixels"),
    ("huge", lambda r: {**r, "image_uri": "huge.png"}, "image_uri: image is 12000x12000"),
    ("size", lambda r: {**r, "params": json.dumps({"size": 100000})},
     "params: invalid config: size: Input should be less than or equal to 2048"),
    ("rotate-no-center", lambda r: _drag(r, type="rotate"), "drags[0].center: required"),
    ("translate-center", lambda r: _drag(r, center={"x": 5.0, "y": 5.0}), "drags[0].center: only allowed"),
    ("nan", lambda r: _drag(r, handle={"x": float("nan"), "y": 3.0}), "drags[0].handle: "),
    ("outside-image", lambda r: _drag(r, target={"x": 500.0, "y": 3.0}),
     "drags[0].target: [500.0, 3.0] lies"),
    ("abs-path", lambda r: {**r, "image_uri": "/etc/hostname"}, "image_uri: '/etc/hostname' is outside"),
    ("abs-missing", lambda r: {**r, "image_uri": "/etc/no-such-file"}, "image_uri: '/etc/no-such-file' is"),
    ("file-uri", lambda r: {**r, "image_uri": "file:///etc/hostname"}, "image_uri: 'file:///etc/host"),
    ("other-bucket", lambda r: {**r, "image_uri": "s3://another-bucket/x.png"}, "image_uri: 's3://another-"),
    ("http", lambda r: {**r, "image_uri": "http://127.0.0.1:9/x.png"},
     "image_uri: 'http://127.0.0.1:9/x.png'"),
    ("escape", lambda r: {**r, "image_uri": "../outside.png"}, "image_uri: '../outside.png' is outside"),
    ("mask-escape", lambda r: _drag(r, handle_mask_uri="../outside.png"), "drags[0].handle_mask_uri: '../o"),
    ("tiny-image", lambda r: {**r, "image_uri": "tiny.png"},
     "image_uri: image is 8x8; each side must be at least"),
    ("thin-image", lambda r: {**r, "image_uri": "thin.png"},
     "image_uri: image is 400x20, an aspect ratio of 20.0:1"),
    ("null-drag", lambda r: {**r, "drags": [None]}, "drags[0]: Input should be a valid dictionary"),
    ("many-drags", lambda r: {**r, "drags": r["drags"] * 17}, "drags: 17 drags; at most 16 per item"),
    ("deep-params", lambda r: {**r, "params": "[" * 8000 + "]" * 8000}, "params: is nested too deeply"),
    ("huge-params", lambda r: {**r, "params": json.dumps({"seed": 0, "x": "y" * 100_000})},
     "params: is 100,020 characters; at most 16,384"),
    ("inf-params", lambda r: {**r, "params": '{"pbsi.lam": Infinity}'},
     "params: invalid config: pbsi.lam: Input "
     "should be a finite number"),
    ("blocks-params", lambda r: {**r, "params": json.dumps({"features.blocks": [99]})},
     "params: invalid config: features.blocks.0: Input should be less than or equal to 16"),
    ("seed-params", lambda r: {**r, "params": json.dumps({"seed": -1})},
     "params: invalid config: seed: Input should be greater than or equal to 0"),
    ("newline\n", lambda r: r, "item_id"),
    ("rle-wrap", lambda r: _drag(r, handle_mask_uri=None,
                                 handle_mask={"polygons": None, "rle": WRAPPING_RLE}),
     "drags[0].handle_mask.rle.counts: run 0 is a number of 13 characters; at most 7"),
    ("polygon-bomb", lambda r: {**r, "editable_mask": {"polygons": [zigzag(96, 64, 100_000)], "rle": None}},
     "editable_mask.polygons: outlines 9,500,000 pixels long; at most 1,000,000"),
]


def malformed_rows(good: dict) -> list[dict]:
    return [{**make(good), "item_id": item_id} for item_id, make, _ in MALFORMED]


def malformed_files() -> dict[str, bytes]:
    """The files the malformed rows name, by path relative to the manifest's folder."""
    return {"bomb.png": png_claiming(20000, 20000), "huge.png": png_claiming(12000, 12000),
            "tiny.png": _png_bytes(8, 8), "thin.png": _png_bytes(400, 20)}


def _png_bytes(width: int, height: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(out, format="PNG")
    return out.getvalue()


def careless_manifest(rows: list[dict]) -> bytes:
    """Parquet bytes of `rows` as a careless producer writes them (null item ids allowed)."""
    import pyarrow as pa

    from manifests.schema import MANIFEST, table_bytes

    nullable_ids = MANIFEST.set(0, MANIFEST.field(0).with_nullable(True))
    return table_bytes(pa.Table.from_pylist(rows, schema=nullable_ids))


def item_workers() -> list:
    """This process's item worker processes (`tasks.pool`), to kill one."""
    import psutil

    commands = {p: " ".join(p.cmdline()) for p in psutil.Process().children()}
    return [p for p, command in commands.items()
            if "spawn_main" in command and "resource_tracker" not in command]
