"""Image files with OpenCV: every kind of photo users have, in and out.

Reads 8- and 16-bit, grayscale, RGB, RGBA and CMYK pictures (JPEG, PNG,
WebP, BMP, TIFF) from bytes, so names with any characters work, and turns
them upright by their EXIF orientation. The network sees a uint8 RGB frame;
alpha rides beside it untouched and 16-bit comes back as 16-bit (scaled by
257, never clipped). Encoding keeps the input's format unless told another.
The colour profile (ICC, CICP), EXIF and XMP go along into PNG, JPEG and WebP
outputs, with the orientation reset to upright since the pixels now are.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import MediaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tif": ".tiff",
           "tiff": ".tiff"}
_SIXTEEN_BIT = {".png", ".tif", ".tiff"}
_ALPHA = {".png", ".webp", ".tif", ".tiff", ".bmp"}
_QUALITY = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 95],
            ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95]}
_ORIENTATION_TAG = 0x0112
_EXIF_PREFIX = b"Exif\x00\x00"
# What each output format takes (OpenCV >= 4.12 writes it); TIFF and BMP outputs go without.
_METADATA_KINDS = {".png": ("icc", "cicp", "exif", "xmp"), ".jpg": ("icc", "exif", "xmp"),
                   ".jpeg": ("icc", "exif", "xmp"), ".webp": ("icc", "exif", "xmp")}
_METADATA_TYPES = {"exif": cv2.IMAGE_METADATA_EXIF, "xmp": cv2.IMAGE_METADATA_XMP,
                   "icc": cv2.IMAGE_METADATA_ICCP, "cicp": cv2.IMAGE_METADATA_CICP}
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation\s*=\s*["\'])[1-8](["\'])|(<tiff:Orientation>)[1-8](</tiff:Orientation>)')
# OpenCV logs its own line for every damaged file; we report each failure once, ourselves.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@dataclass
class Picture:
    """A decoded photo: `rgb` (uint8 HxWx3, upright) for the network, and what to restore on output."""

    rgb: np.ndarray
    alpha: np.ndarray | None  # HxW, dtype of the source (uint8 or uint16)
    depth: int  # 8 or 16 bits per sample
    suffix: str  # the source format, e.g. ".png"
    gray: bool = False
    # "icc", "cicp", "exif" (a TIFF header, no "Exif" prefix), "xmp": bytes, orientation set to upright
    metadata: dict = field(default_factory=dict)


def is_image_path(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def format_suffix(name: str) -> str:
    """--format value -> file suffix. Raises MediaError."""
    key = name.lower().lstrip(".")
    if key not in FORMATS:
        raise MediaError(f"unknown image format {name!r}; use one of {', '.join(sorted(set(FORMATS)))}")
    return FORMATS[key]


def read_image(path) -> Picture:
    """Raises MediaError for unreadable or undecodable files."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror})") from error
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> Picture:
    """Decode image bytes of any supported kind. Raises MediaError."""
    suffix = sniff_suffix(data)
    if not data or suffix is None:
        raise MediaError(f"{name}: not an image (empty file or unknown format)")
    buffer = np.frombuffer(data, np.uint8)
    # UNCHANGED keeps 16-bit and alpha; OpenCV converts CMYK JPEG to BGR itself.
    image, types, metadata = cv2.imdecodeWithMetadata(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise MediaError(f"{name}: image data is damaged or truncated")
    gray = image.ndim == 2 or image.shape[2] == 1
    image = _to_bgr_or_bgra(image)
    found = _read_metadata(types, metadata)
    if suffix != ".tiff":  # OpenCV's TIFF reader applies the orientation tag itself
        image = _upright(image, _orientation_from_exif(found.get("exif", b"")))
    image, depth = _to_supported_depth(image, name)
    alpha = image[..., 3].copy() if image.shape[2] == 4 else None
    colour = image[..., :3]
    if depth == 16:
        colour = np.round(colour / 257.0).astype(np.uint8)
    rgb = np.ascontiguousarray(colour[..., ::-1])
    return Picture(rgb=rgb, alpha=alpha, depth=depth, suffix=suffix, gray=gray, metadata=_as_upright(found))


def encode_image(rgb: np.ndarray, source: Picture, suffix: str | None = None) -> bytes:
    """A translated uint8 RGB frame, restored to the source's depth and alpha, encoded as `suffix`.

    Formats without alpha (JPEG) get the picture composited over white. Raises MediaError.
    """
    suffix = (suffix or source.suffix).lower()
    depth = 16 if source.depth == 16 and suffix in _SIXTEEN_BIT else 8
    colour = rgb[..., ::-1].astype(np.uint16) * 257 if depth == 16 else rgb[..., ::-1]
    alpha = source.alpha
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise MediaError(f"alpha {alpha.shape} does not match the translated size {rgb.shape[:2]}")
    if alpha is not None:
        alpha = _scale_depth(alpha, depth)
        if suffix in _ALPHA:
            colour = np.dstack([colour, alpha])
        else:
            colour = _over_white(colour, alpha, depth)
    ok, encoded = _encode(suffix, np.ascontiguousarray(colour), source.metadata)
    if not ok:
        raise MediaError(f"OpenCV could not encode a {colour.shape} image as {suffix}")
    return encoded.tobytes()


def sniff_suffix(data: bytes) -> str | None:
    """The format of image bytes from their magic number (stdin has no file name)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith(b"BM"):
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tiff"
    return None


def _to_bgr_or_bgra(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        return np.dstack([image[..., 0]] * 3 + [image[..., 1]])
    return image[..., :4]


def _to_supported_depth(image: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    if image.dtype == np.uint8:
        return image, 8
    if image.dtype == np.uint16:
        return image, 16
    if image.dtype in (np.float32, np.float64):  # float TIFF, assumed in [0, 1]
        return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16), 16
    raise MediaError(f"{name}: unsupported sample type {image.dtype}; convert to 8- or 16-bit first")


def _scale_depth(alpha: np.ndarray, depth: int) -> np.ndarray:
    if depth == 16:
        return alpha if alpha.dtype == np.uint16 else alpha.astype(np.uint16) * 257
    return alpha if alpha.dtype == np.uint8 else np.round(alpha / 257.0).astype(np.uint8)


def _over_white(colour: np.ndarray, alpha: np.ndarray, depth: int) -> np.ndarray:
    top = 65535.0 if depth == 16 else 255.0
    weight = alpha[..., None].astype(np.float32) / top
    blended = colour.astype(np.float32) * weight + top * (1.0 - weight)
    return np.round(blended).astype(colour.dtype)


def _encode(suffix: str, image: np.ndarray, metadata: dict):
    kinds = [kind for kind in _METADATA_KINDS.get(suffix, ()) if metadata.get(kind)]
    if not kinds or not hasattr(cv2, "imencodeWithMetadata"):
        return cv2.imencode(suffix, image, _QUALITY.get(suffix, []))
    blobs = [metadata[kind] for kind in kinds]
    if suffix in (".jpg", ".jpeg") and "exif" in kinds:  # JPEG's APP1 segment names itself; PNG and WebP do not
        blobs[kinds.index("exif")] = _EXIF_PREFIX + metadata["exif"]
    try:
        ok, encoded = cv2.imencodeWithMetadata(suffix, image, [_METADATA_TYPES[kind] for kind in kinds],
                                               [np.frombuffer(blob, np.uint8) for blob in blobs],
                                               _QUALITY.get(suffix, []))
    except cv2.error:
        ok = False
    # Metadata the writer refuses (a malformed profile, EXIF too long for JPEG): the picture matters more.
    return (ok, encoded) if ok else cv2.imencode(suffix, image, _QUALITY.get(suffix, []))


def _read_metadata(types, chunks) -> dict:
    names = {int(value): name for name, value in _METADATA_TYPES.items()}
    found = {}
    for kind, chunk in zip(types if types is not None else [], chunks if chunks is not None else []):
        if int(kind) in names:
            found[names[int(kind)]] = np.asarray(chunk, np.uint8).tobytes()
    if found.get("exif", b"").startswith(_EXIF_PREFIX):
        found["exif"] = found["exif"][len(_EXIF_PREFIX):]
    return found


def _as_upright(metadata: dict) -> dict:
    """The metadata of pixels that were turned upright: orientation 1 in EXIF and XMP."""
    metadata = dict(metadata)
    if "exif" in metadata:
        metadata["exif"] = _exif_with_orientation(metadata["exif"], 1)
    if "xmp" in metadata:
        metadata["xmp"] = _XMP_ORIENTATION.sub(
            lambda m: (m.group(1) or m.group(3)) + b"1" + (m.group(2) or m.group(4)), metadata["xmp"])
    return metadata


def _orientation_entry(exif: bytes) -> tuple[int | None, str]:
    """Offset of the Orientation value in a bare EXIF block (TIFF header and IFD0), and the byte order."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return None, "little"
    order = "little" if exif[:2] == b"II" else "big"
    offset = int.from_bytes(exif[4:8], order)
    if offset + 2 > len(exif):
        return None, order
    count = int.from_bytes(exif[offset:offset + 2], order)
    for entry in range(count):
        start = offset + 2 + 12 * entry
        if start + 12 > len(exif):
            break
        if int.from_bytes(exif[start:start + 2], order) == _ORIENTATION_TAG:
            return start + 8, order
    return None, order


def _exif_with_orientation(exif: bytes, orientation: int) -> bytes:
    position, order = _orientation_entry(exif)
    if position is None:
        return exif
    return exif[:position] + orientation.to_bytes(2, order) + exif[position + 2:]


def _orientation_from_exif(exif: bytes) -> int:
    """The Orientation tag (1-8) of an EXIF block; 1 when absent or malformed."""
    if exif.startswith(_EXIF_PREFIX):
        exif = exif[len(_EXIF_PREFIX):]
    position, order = _orientation_entry(exif)
    value = int.from_bytes(exif[position:position + 2], order) if position is not None else 1
    return value if 1 <= value <= 8 else 1


def _upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (the transform a viewer would), so pixels come out as seen."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(image)) if transform else image
