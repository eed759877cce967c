"""The model store: named generators in a folder, built-in demo models, and the reference pretrained ones.

Store layout: `$VIDCYCLE_HOME/models/NAME.safetensors` (default home: the
user's cache dir, `~/.cache/vidcycle`). Built-in models ship inside the
package. `pull` downloads the reference project's published generators,
verifies them and converts them into self-describing files.
"""

import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import DownloadError, ModelError
from .modelfile import ModelInfo, file_sha256, load_reference_checkpoint, read_info, save_model

MODEL_SUFFIX = ".safetensors"
DEFAULT_PRETRAINED_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
PRETRAINED_URL_ENV = "VIDCYCLE_PRETRAINED_URL"
BUILTIN_DIR = Path(__file__).parent / "builtin_models"

# The reference project's published generators, with the domains each maps between.
PRETRAINED = {
    "apple2orange": ("apple", "orange"), "orange2apple": ("orange", "apple"),
    "summer2winter_yosemite": ("summer", "winter"), "winter2summer_yosemite": ("winter", "summer"),
    "horse2zebra": ("horse", "zebra"), "zebra2horse": ("zebra", "horse"),
    "monet2photo": ("monet", "photo"), "style_monet": ("photo", "monet"),
    "style_cezanne": ("photo", "cezanne"), "style_ukiyoe": ("photo", "ukiyoe"),
    "style_vangogh": ("photo", "vangogh"), "sat2map": ("satellite", "map"), "map2sat": ("map", "satellite"),
    "cityscapes_photo2label": ("photo", "label"), "cityscapes_label2photo": ("label", "photo"),
    "facades_photo2label": ("photo", "label"), "facades_label2photo": ("label", "photo"),
    "iphone2dslr_flower": ("iphone", "dslr"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    info: ModelInfo
    origin: str  # "store" or "built-in"


def store_home() -> Path:
    home = os.environ.get("VIDCYCLE_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vidcycle"


def models_dir() -> Path:
    return store_home() / "models"


def list_models() -> list[StoredModel]:
    """Store models first, then built-in ones not shadowed by a store model of the same name."""
    found: dict[str, StoredModel] = {}
    for origin, folder in (("store", models_dir()), ("built-in", BUILTIN_DIR)):
        for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")) if folder.is_dir() else []:
            name = path.name[: -len(MODEL_SUFFIX)]
            if name in found:
                continue
            try:
                found[name] = StoredModel(name, path, read_info(path), origin)
            except ModelError:
                continue  # a damaged file must not hide the others; `models info` reports it
    return list(found.values())


def available_models() -> list[str]:
    """Names usable as --model right now (store and built-in)."""
    return [model.name for model in list_models()]


def resolve_model_path(name_or_path) -> Path:
    """A model file path, from a path or a store/built-in name. Raises ModelError listing what exists."""
    candidate = Path(str(name_or_path)).expanduser()
    if candidate.suffix in (MODEL_SUFFIX, ".pth", ".pt") or os.sep in str(name_or_path):
        if candidate.is_file():
            return candidate
        raise ModelError(f"{name_or_path}: model file not found")
    for folder in (models_dir(), BUILTIN_DIR):
        path = folder / f"{name_or_path}{MODEL_SUFFIX}"
        if path.is_file():
            return path
    if candidate.is_file():
        return candidate
    raise ModelError(_unknown_model_message(str(name_or_path)))


def _unknown_model_message(name: str) -> str:
    have = available_models()
    text = f"unknown model '{name}'; available: {', '.join(have) if have else 'none yet'}"
    if name in PRETRAINED:
        return f"model '{name}' is not in the store yet; run: vidcycle models pull {name}"
    return text + f"; pullable: {', '.join(PRETRAINED)}"


def stored_path(name: str) -> Path:
    if not _NAME.match(name):
        raise ModelError(f"bad model name {name!r}: use letters, digits, '_', '-' and '.'")
    return models_dir() / f"{name}{MODEL_SUFFIX}"


def import_reference(pth_path, name: str, from_domain: str = "x", to_domain: str = "y",
                     overwrite: bool = False, source: str = "", source_sha256: str = "",
                     train_size: int = 256) -> StoredModel:
    """Import a reference `.pth` generator into the store (architecture read from its keys)."""
    target = stored_path(name)
    if target.exists() and not overwrite:
        raise ModelError(f"model '{name}' already exists in {target.parent}; pass --overwrite to replace it")
    net, spec = load_reference_checkpoint(pth_path)
    info = ModelInfo(spec=spec, from_domain=from_domain, to_domain=to_domain, train_size=train_size,
                     source=source or f"imported from {Path(pth_path).name}",
                     source_sha256=source_sha256 or file_sha256(pth_path))
    info = save_model(target, net, info)
    return StoredModel(name, target, info, "store")


def pretrained_url(name: str) -> str:
    base = os.environ.get(PRETRAINED_URL_ENV, DEFAULT_PRETRAINED_URL).rstrip("/")
    return f"{base}/{name}.pth"


def pull(name: str, overwrite: bool = False, progress=None) -> StoredModel:
    """Download, verify and store one of the reference project's pretrained generators.

    The download goes to a temporary file in the store and is checked (complete,
    loads as a 9-block generator with strict keys) before the model appears
    under its name; any failure leaves nothing behind. Raises DownloadError.
    """
    if name not in PRETRAINED:
        raise ModelError(f"unknown pretrained model '{name}'; pullable: {', '.join(PRETRAINED)}")
    target = stored_path(name)
    if target.exists() and not overwrite:
        raise ModelError(f"model '{name}' is already in the store; pass --overwrite to download again")
    target.parent.mkdir(parents=True, exist_ok=True)
    url = pretrained_url(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            _download(url, handle, progress)
        source_sha = file_sha256(tmp)
        try:
            stored = import_reference(tmp, name, *PRETRAINED[name], overwrite=True, source=url,
                                      source_sha256=source_sha)
        except ModelError as error:
            raise DownloadError(f"{url}: downloaded file is not a valid generator: {error}") from error
        if (stored.info.spec.n_blocks, stored.info.spec.ngf) != (9, 64):
            stored.path.unlink()
            raise DownloadError(f"{url}: expected a 9-block ngf-64 generator, got {stored.info.architecture}")
        return replace(stored, info=stored.info)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(url: str, handle, progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            received = 0
            if progress:
                progress.start(expected)
            while chunk := response.read(1 << 16):
                handle.write(chunk)
                received += len(chunk)
                if progress:
                    progress.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: server answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: download failed ({reason})") from error
    finally:
        if progress:
            progress.close()
    if expected and received != expected:
        raise DownloadError(f"{url}: download interrupted after {received} of {expected} bytes; try again")
