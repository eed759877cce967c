"""Image files with OpenCV: every kind of photo users have, in and out, and the frames training reads.

Reads 8- and 16-bit, grayscale, RGB, RGBA and CMYK pictures (JPEG, PNG,
WebP, BMP, TIFF) from bytes, so names with any characters work, and turns
them upright by their EXIF orientation. The network sees a uint8 RGB frame;
alpha rides beside it untouched and 16-bit comes back as 16-bit (scaled by
257, never clipped). Encoding keeps the input's format unless told another.
The colour profile (ICC, CICP), EXIF and XMP go along into PNG, JPEG and WebP
outputs, with the orientation reset to upright since the pixels now are.
Training's own needs live here too: resizing as the reference does, reduced-
scale JPEG decoding for big photos, and the frame files of the frame cache.
"""

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vidcycle.errors import MediaError, UsageError

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


def image_size(source) -> tuple[int, int]:
    """(width, height) an image file or bytes declares in its header, without decoding the pixels
    (Pillow reads headers lazily; OpenCV has no header-only read). Raises MediaError."""
    from PIL import Image, UnidentifiedImageError
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours (--max-pixels) decides
    try:
        opened = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        name = "stdin" if isinstance(source, (bytes, bytearray)) else source
        raise MediaError(f"{name}: not an image (empty file or unknown format)") from error
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    with opened:
        return opened.size


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
    return Picture(rgb=rgb, alpha=alpha, depth=depth, suffix=suffix, metadata=_as_upright(found))


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


# ---------------------------------------------------------------- frames for training

def training_size(width: int, height: int, load_size: int, keep_aspect: bool) -> tuple[int, int]:
    """(width, height) a frame is resized to before cropping: load x load (the reference), or
    the shorter side to load_size with the aspect ratio kept."""
    if not keep_aspect:
        return load_size, load_size
    scale = load_size / min(width, height)
    return max(load_size, round(width * scale)), max(load_size, round(height * scale))


def resize_for_training(rgb: np.ndarray, load_size: int, keep_aspect: bool) -> np.ndarray:
    height, width = rgb.shape[:2]
    return resize_to(rgb, training_size(width, height, load_size, keep_aspect))


def resize_to(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging where both sides shrink (antialiased, like the
    reference's PIL resize), bicubic otherwise."""
    height, width = rgb.shape[:2]
    if size == (width, height):
        return rgb
    shrinking = size[0] <= width and size[1] <= height
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def small_gray(rgb: np.ndarray, width: int) -> np.ndarray:
    """A grayscale float32 copy at most `width` wide, for cheap near-duplicate tests."""
    height, full_width = rgb.shape[:2]
    scale = min(1.0, width / full_width)
    size = (max(1, round(full_width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def write_rgb(path: Path, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write a frame as PNG or JPEG by `path`'s suffix. Raises MediaError, UsageError (cannot write)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if path.suffix == ".png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        # 4:2:0 chroma (the default) loses nothing: the source video is 4:2:0 already.
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise MediaError(f"{path}: could not encode frame")
    try:
        path.write_bytes(data.tobytes())
    except OSError as error:
        raise UsageError(f"{path.parent}: cannot write frames ({error.strerror or error}); "
                         f"free some space or choose another folder") from error


def probe_image(path: Path) -> tuple[int, int]:
    """Decode an image once to check it is readable; its (width, height). Raises MediaError.

    JPEGs are checked at 1/8 scale (libjpeg decodes the whole stream but skips
    most of the inverse DCT), so a folder of camera photos is probed quickly;
    their size is then known to within 8 pixels (rounded up), which is all the
    loader needs to pick its own reduced-scale decoding.
    """
    reduce = 8 if path.suffix.lower() in (".jpg", ".jpeg") else 1
    rgb = read_rgb(path, reduce)
    height, width = rgb.shape[:2]
    return (width * reduce, height * reduce) if reduce > 1 else (width, height)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def read_rgb(path: Path, reduce: int = 1) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB, as `vidcycle apply` sees it (upright by EXIF, 16-bit
    scaled, gray expanded, alpha set aside), or a JPEG decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's scaled inverse DCT; OpenCV applies the EXIF orientation). Raises MediaError.
    """
    if reduce == 1:
        return read_image(path).rgb
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise MediaError(f"{path}: cannot read ({error.strerror or error})") from error
    bgr = cv2.imdecode(data, _REDUCED[reduce]) if data.size else None
    if bgr is None or bgr.size == 0:
        raise MediaError(f"{path}: not an image (empty, damaged or unknown format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_frame_file(path: Path) -> np.ndarray:
    """A frame file vidcycle wrote (plain 8-bit, upright): the short path, ~2x faster than read_rgb."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise MediaError(f"{path}: cannot read cached frame ({error.strerror or error}); "
                         f"was the frame cache deleted during training?") from error
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if bgr is None:
        raise MediaError(f"{path}: cached frame is damaged; delete its folder to extract it again")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
