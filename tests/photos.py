"""Real-photo inputs for tests: a Display P3 ICC profile written here (no profile file ships
with the system) and phone-style files."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

# Display P3's primaries adapted to the PCS white (D50), as Apple's profile gives them
P3_COLORANTS = {"rXYZ": (0.515121, 0.241196, -0.001053), "gXYZ": (0.291977, 0.692245, 0.041885),
                "bXYZ": (0.157104, 0.066574, 0.784073)}
D50 = (0.964203, 1.0, 0.824905)


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(values) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in values)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def display_p3_icc(gamma: float = 2.2) -> bytes:
    """A v2 matrix/TRC monitor profile with Display P3's primaries (a pure gamma curve)."""
    description = b"Display P3 (test)\0"
    desc = (b"desc" + bytes(4) + struct.pack(">I", len(description)) + description
            + bytes(4) + bytes(4) + bytes(2) + bytes(1) + bytes(67))
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))
    tags = {"desc": desc, "cprt": b"text" + bytes(4) + b"none\0", "wtpt": _xyz(D50),
            **{name: _xyz(v) for name, v in P3_COLORANTS.items()},
            "rTRC": curve, "gTRC": curve, "bTRC": curve}
    table_size = 4 + 12 * len(tags)
    offset, table, body = 128 + table_size, b"", b""
    for name, data in tags.items():
        table += name.encode() + struct.pack(">II", offset + len(body), len(data))
        body += _padded(data)
    size = 128 + table_size + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 12, 7, 0, 0, 0) + b"acsp" + b"APPL" + bytes(4) + bytes(4) + bytes(4)
              + bytes(8) + bytes(4) + b"".join(_s15(v) for v in D50) + b"lcms" + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def jpeg_bytes(image: Image.Image, orientation: int = 1, icc: bytes | None = None,
               quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: carried over to the output
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, exif=exif.tobytes(),
               **({"icc_profile": icc} if icc else {}))
    return out.getvalue()


def stored_sideways(upright: np.ndarray) -> np.ndarray:
    """What a phone held upright stores with EXIF orientation 6: the picture turned a quarter
    anticlockwise (a viewer turns it back clockwise)."""
    return np.rot90(upright, k=1).copy()
