"""Image files with OpenCV: every kind of photo users have, in and out.

Reads 8- and 16-bit, grayscale, RGB, RGBA and CMYK pictures (JPEG, PNG,
WebP, BMP, TIFF) from bytes, so names with any characters work, and turns
them upright by their EXIF orientation. The network sees a uint8 RGB frame;
alpha rides beside it untouched and 16-bit comes back as 16-bit (scaled by
257, never clipped). Encoding keeps the input's format unless told another.
"""

from dataclasses import dataclass
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
    if suffix != ".tiff":  # OpenCV's TIFF reader applies the orientation tag itself
        image = _upright(image, _exif_orientation(types, metadata))
    image, depth = _to_supported_depth(image, name)
    alpha = image[..., 3].copy() if image.shape[2] == 4 else None
    colour = image[..., :3]
    if depth == 16:
        colour = np.round(colour / 257.0).astype(np.uint8)
    rgb = np.ascontiguousarray(colour[..., ::-1])
    return Picture(rgb=rgb, alpha=alpha, depth=depth, suffix=suffix, gray=gray)


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
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(colour), _QUALITY.get(suffix, []))
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


def _exif_orientation(types, metadata) -> int:
    for kind, chunk in zip(types if types is not None else [], metadata if metadata is not None else []):
        if int(kind) == cv2.IMAGE_METADATA_EXIF:
            return _orientation_from_exif(np.asarray(chunk, np.uint8).tobytes())
    return 1


def _orientation_from_exif(exif: bytes) -> int:
    """The Orientation tag (1-8) of an EXIF block (a TIFF header and IFD0); 1 when absent or malformed."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return 1
    order = "little" if exif[:2] == b"II" else "big"
    offset = int.from_bytes(exif[4:8], order)
    if offset + 2 > len(exif):
        return 1
    count = int.from_bytes(exif[offset:offset + 2], order)
    for entry in range(count):
        start = offset + 2 + 12 * entry
        if start + 12 > len(exif):
            break
        if int.from_bytes(exif[start:start + 2], order) == _ORIENTATION_TAG:
            value = int.from_bytes(exif[start + 8:start + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


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
