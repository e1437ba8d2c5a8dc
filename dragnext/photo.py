"""Real photos in and out: what a file says about its picture, kept from input to output.

In (`photo_of`): the EXIF orientation is applied before anything reads a coordinate (an
instruction's points and masks are on the upright picture, as every viewer shows it); the
model gets 8-bit sRGB RGB, converted through the file's ICC profile (ImageCms) and, where
the file is transparent, laid over white. The file's own upright pixels are kept as they
are (their colour space, 8 or 16 bits, grey or colour, alpha apart).

Out (`compose`): where the edit's weight is above 0 (the region it may touch), the edit
converted back into the input's colour space and depth; everywhere else the input's own
pixels, bit for bit. Alpha follows the drags inside the edit (each target region takes its
source's alpha through Π(1); what a handle region vacates takes the alpha around it),
blended with the edit's weight. `dragnext.photo_file` writes it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageCms

from dragnext.geometry import dilate, sample

ORIENTATION = 0x0112  # EXIF tag
_SWAPS_SIDES = {5, 6, 7, 8}  # the orientations that turn the stored picture a quarter
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_SRGB = ImageCms.createProfile("sRGB")


class PhotoError(ValueError):
    """A file whose pixels or colour profile cannot be read as a picture."""


def register_heif() -> bool:
    """Let Pillow open HEIC/HEIF (iPhone pictures) when pillow-heif is installed (the `photo`
    extra); whether it can."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()  # idempotent: Pillow's registry keeps one opener per format
    return True


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8; 1 when absent or nonsense)."""
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # a malformed EXIF block reads as no orientation, as viewers do
        return 1
    return value if value in range(1, 9) else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the picture, from the header alone."""
    width, height = image.size
    return (height, width) if orientation(image) in _SWAPS_SIDES else (width, height)


@dataclass(frozen=True)
class Photo:
    """An input picture, upright: what the model sees and what the file holds."""
    image: Image.Image  # 8-bit sRGB RGB, over white where transparent: what the model edits
    own: np.ndarray  # (H, W, C) the file's own pixels, C = 3 (colour) or 1 (grey), uint8 or uint16
    alpha: np.ndarray | None  # (H, W), the own pixels' dtype; None when opaque
    icc: bytes | None  # the input's profile (None: sRGB, untagged)
    exif: bytes | None  # the input's EXIF, orientation 1, no thumbnail
    source_mode: str  # the file's own mode (RGB, RGBA, L, P, CMYK, I;16, …)

    @property
    def bits(self) -> int:
        return 16 if self.own.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _exif_without_orientation(image: Image.Image) -> bytes | None:
    try:
        exif = image.getexif()
    except Exception:
        return None
    if not exif:
        return None
    exif[ORIENTATION] = 1
    exif.pop(0x0201, None), exif.pop(0x0202, None)  # a thumbnail of the unedited picture would lie
    return exif.tobytes()


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """An RGB, L or CMYK image as sRGB RGB through its profile (untagged: already sRGB)."""
    if icc is None:
        return image.convert("RGB")
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        raise PhotoError(f"its ICC profile cannot be used ({error})") from None


def _from_srgb(image: Image.Image, icc: bytes, mode: str) -> Image.Image:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, _SRGB, profile, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as error:  # a profile that converts one way only
        raise PhotoError(f"the edit cannot be converted back into its ICC profile ({error})") from None


def eight_bit(own: np.ndarray) -> np.ndarray:
    return own if own.dtype == np.uint8 else ((own.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _own_pixels(upright: Image.Image) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    """(own pixels, alpha, the 8-bit picture in the file's colour space) of an upright image."""
    if upright.mode in _GREY16:
        own = np.asarray(upright, dtype=np.uint32).clip(0, 65535).astype(np.uint16)[..., None]
        return own, None, Image.fromarray(eight_bit(own)[..., 0], "L")
    if upright.mode == "P":
        upright = upright.convert("RGBA" if "transparency" in upright.info else "RGB")
    alpha = None
    if upright.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        alpha = np.asarray(upright.getchannel("A"))
        upright = upright.convert("L" if upright.mode in ("LA", "La") else "RGB")
    if upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    own = np.asarray(upright)
    return (own[..., None] if own.ndim == 2 else own), alpha, upright


def photo_of(image: Image.Image) -> Photo:
    """A loaded image as a `Photo` (module docstring). Raises `PhotoError`."""
    icc = image.info.get("icc_profile") or None
    turn = _TRANSPOSE.get(orientation(image))
    upright = image.transpose(turn) if turn is not None else image
    if upright.mode == "CMYK":  # printed colour: through its profile (or Pillow's formula) to sRGB
        rgb = _to_srgb(upright, icc)
        own, alpha, icc = np.asarray(rgb), None, None
    else:
        own, alpha, shown = _own_pixels(upright)
        rgb = _to_srgb(shown, icc)
    if alpha is not None:  # over white: a cut-out product is edited on the page it is shown on
        white = Image.new("RGB", rgb.size, (255, 255, 255))
        rgb = Image.composite(rgb, white, Image.fromarray(eight_bit(alpha)))
    return Photo(image=rgb, own=own, alpha=alpha, icc=icc, exif=_exif_without_orientation(image),
                 source_mode=image.mode)


def moved_alpha(alpha: np.ndarray, drags) -> np.ndarray:
    """The input's alpha moved by the drags (`RegionDrag`s at the input size), as float in
    [0, 1]: each final target region takes its source's alpha through Π(1); what a handle
    region vacates takes the median alpha of the ring just outside it (the background's)."""
    a = torch.from_numpy(alpha.astype(np.float32) / np.iinfo(alpha.dtype).max)
    out = a.clone()
    for drag in drags:
        ring = dilate(drag.handle_mask, 3) & ~drag.handle_mask
        background = float(a[ring].median()) if ring.any() else 0.0
        rho = drag.target_region(1.0)
        out = torch.where(drag.handle_mask & ~rho, torch.tensor(background), out)
        out = torch.where(rho, sample(a[None, None], drag.correspondence(1.0))[0, 0], out)
    return out.numpy()


def compose(photo: Photo, edited: Image.Image, weight: np.ndarray | None,
            drags) -> tuple[np.ndarray, np.ndarray | None]:
    """The output's own pixels and alpha. `edited` is the edit at the input size in 8-bit sRGB,
    already blended over the input with `weight` (`dragnext.stages.paste_weight`; None: the
    edit everywhere); `drags` are the item's `RegionDrag`s at the input size."""
    channels = photo.own.shape[-1]
    mode = "L" if channels == 1 else "RGB"
    theirs = _from_srgb(edited, photo.icc, mode) if photo.icc is not None else edited.convert(mode)
    theirs = np.asarray(theirs).reshape(photo.own.shape)
    if photo.bits == 16:
        theirs = theirs.astype(np.uint16) * 257
    touched = np.ones(photo.own.shape[:2], bool) if weight is None else weight > 0
    own = np.where(touched[..., None], theirs, photo.own).astype(photo.own.dtype)
    if photo.alpha is None:
        return own, None
    w = touched.astype(np.float64) if weight is None else weight.astype(np.float64)
    inside = moved_alpha(photo.alpha, drags) * np.iinfo(photo.alpha.dtype).max
    alpha = np.where(touched, (w * inside + (1 - w) * photo.alpha).round(), photo.alpha)
    return own, alpha.astype(photo.alpha.dtype)
