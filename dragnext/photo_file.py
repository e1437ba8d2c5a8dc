"""The edited picture as a file: `output.format` (png | jpeg | webp | avif) at
`output.quality`, the input's ICC profile and EXIF carried over (orientation 1: the pixels
are upright; no thumbnail) unless `output.strip_metadata`, and always a provenance record in
XMP: that the picture was edited, by which tool and version, for which item and config.

PNG keeps 16 bits and alpha; JPEG has neither (16 bits round to 8, a transparent input is
laid over white); WebP and AVIF keep alpha in 8 bits.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image, PngImagePlugin, features

from dragnext.config import OutputConfig
from dragnext.photo import Photo, compose, eight_bit, photo_of

PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}
FORMAT_OF_SUFFIX = {**{suffix: fmt for fmt, suffix in SUFFIX.items()}, ".jpeg": "jpeg"}


def tool_version() -> str:
    try:
        return version("dragnext")
    except PackageNotFoundError:  # a checkout run without installing
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """What the output says about how it was made."""
    item_id: str
    config_hash: str
    action: str = "edited"

    def xmp(self) -> bytes:
        fields = {"dragnext:action": self.action, "dragnext:item_id": self.item_id,
                  "dragnext:config_hash": self.config_hash, "dragnext:tool_version": tool_version()}
        attributes = " ".join(f"{name}={quoteattr(value)}" for name, value in fields.items())
        return (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
            'xmlns:dragnext="https://dragnext.invalid/ns/1.0/" '
            f'xmp:CreatorTool={quoteattr("dragnext " + tool_version())} {attributes}/>'
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def available(fmt: str) -> bool:
    """Whether this Pillow writes `fmt`."""
    return fmt not in ("webp", "avif") or bool(features.check(fmt))


def _picture(own: np.ndarray, alpha: np.ndarray | None, fmt: str) -> Image.Image:
    if own.dtype == np.uint16 and fmt == "png" and alpha is None and own.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(own[..., 0]))  # uint16: I;16
    eight = eight_bit(own)
    picture = Image.fromarray(eight[..., 0], "L") if eight.shape[-1] == 1 else Image.fromarray(eight, "RGB")
    if alpha is None:
        return picture
    mask = Image.fromarray(eight_bit(alpha), "L")
    if fmt == "jpeg":
        return Image.composite(picture, Image.new(picture.mode, picture.size, 255), mask)
    picture.putalpha(mask)
    return picture


def encode(own: np.ndarray, alpha: np.ndarray | None, photo: Photo | None, output: OutputConfig,
           provenance: Provenance) -> bytes:
    """The file's bytes (`dragnext.photo.compose` gives `own` and `alpha`)."""
    fmt = output.format
    picture = _picture(own, alpha, fmt)
    if fmt == "png":  # Pillow writes PNG's XMP only as its iTXt chunk
        text = PngImagePlugin.PngInfo()
        text.add_itxt("XML:com.adobe.xmp", provenance.xmp().decode(), zip=True)
        options: dict = {"pnginfo": text}
    else:
        options = {"xmp": provenance.xmp(), "quality": output.quality}
    if photo is not None and not output.strip_metadata:
        if photo.icc is not None:
            options["icc_profile"] = photo.icc
        if photo.exif is not None:
            options["exif"] = photo.exif
    out = io.BytesIO()
    picture.save(out, format=PIL_FORMAT[fmt], **options)
    return out.getvalue()


def edited_file(result, provenance: Provenance) -> bytes:
    """An `EditResult`'s picture as its file, in the input's own pixels where the edit did
    not touch it (`dragnext.photo.compose`)."""
    from dragnext.stages import region_drags

    item = result.item
    photo = item.photo or photo_of(item.image)
    # the drags at full resolution only move an alpha channel: an opaque picture needs none
    drags = region_drags(item, (item.image.height, item.image.width)) if photo.alpha is not None else []
    own, alpha = compose(photo, result.image, result.weight, drags)
    return encode(own, alpha, photo, result.config.output, provenance)
