"""The model store: named generators in a folder, built-in demo models, the reference pretrained ones,
and `load_generator`, the one reader of model files.

Store layout: `$VIDCYCLE_HOME/models/NAME.safetensors` (default home: the
user's cache dir, `~/.cache/vidcycle`). Built-in models ship inside the
package. `pull` downloads one of the downloadable entries (kept as data: an
https URL and, where known, its sha256), verifies it and converts it into a
self-describing file.
"""

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vidcycle.errors import DownloadError, ModelError, OutputExistsError
from vidcycle.files import scratch_path
from vidcycle.models.modelfile import (ModelInfo, file_sha256, load_model_file, load_reference_checkpoint, read_info,
                                      save_model, state_hash)
from vidcycle.progress import bar

MODEL_SUFFIX = ".safetensors"
DEFAULT_PRETRAINED_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
PRETRAINED_URL_ENV = "VIDCYCLE_PRETRAINED_URL"
BUILTIN_DIR = Path(__file__).parents[1] / "builtin_models"



@dataclass(frozen=True)
class Downloadable:
    """One entry of the registry: where the file is, what it maps, and the sha256 it must have."""

    name: str
    from_domain: str
    to_domain: str
    sha256: str | None = None  # None: the publisher gives no checksum; the file's own is recorded on pull

    def url(self) -> str:
        base = os.environ.get(PRETRAINED_URL_ENV, DEFAULT_PRETRAINED_URL).rstrip("/")
        return f"{base}/{self.name}.pth"


# The reference project's published generators (9 blocks, ngf 64). It publishes no checksums.
_PUBLISHED = {
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
PRETRAINED = {name: Downloadable(name, *domains) for name, domains in _PUBLISHED.items()}
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


def load_generator(name_or_path) -> tuple[torch.nn.Module, ModelInfo]:
    """The one reader of model files: a generator (float32, on the CPU, in eval mode) and what its file says
    of it, from a store name, a built-in name, a `.safetensors` file or a reference `.pth`.

    The info always carries the content hash of the weights (a reference checkpoint, or a model file
    written before hashes were, gets it computed). Raises ModelError.
    """
    path = resolve_model_path(name_or_path)
    if path.suffix in (".pth", ".pt"):
        generator, spec = load_reference_checkpoint(path)
        info = ModelInfo(spec=spec, source=f"reference checkpoint {path.name}")
    else:
        generator, info = load_model_file(path)
    if not info.content_hash:
        info = replace(info, content_hash=state_hash(generator.state_dict()))
    return generator.eval(), info


def stored_path(name: str) -> Path:
    if not _NAME.match(name):
        raise ModelError(f"bad model name {name!r}: use letters, digits, '_', '-' and '.'")
    return models_dir() / f"{name}{MODEL_SUFFIX}"


def import_reference(pth_path, name: str, from_domain: str = "x", to_domain: str = "y",
                     overwrite: bool = False, source: str = "", source_sha256: str = "",
                     train_size: int = 256) -> StoredModel:
    """Import a reference `.pth` generator into the store (architecture read from its keys). Raises ModelError,
    OutputExistsError (the name is taken and not `overwrite`)."""
    target = stored_path(name)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"model '{name}' already exists in {target.parent}; pass overwrite=True to replace it",
                                cli=f"model '{name}' already exists in {target.parent}; pass --overwrite to replace it")
    net, spec = load_reference_checkpoint(pth_path)
    info = ModelInfo(spec=spec, from_domain=from_domain, to_domain=to_domain, train_size=train_size,
                     source=source or f"imported from {Path(pth_path).name}",
                     source_sha256=source_sha256 or file_sha256(pth_path))
    info = save_model(target, net, info)
    return StoredModel(name, target, info, "store")


def pull(name: str, overwrite: bool = False, progress=None) -> StoredModel:
    """Download, verify and store one of the reference project's pretrained generators.

    The file is checked (its sha256 where the registry knows it; it loads as a
    9-block ngf-64 generator with strict keys) before the model appears under
    its name; any failure leaves nothing behind. Raises DownloadError, ModelError, OutputExistsError (in the
    store already, and not `overwrite`).
    """
    if name not in PRETRAINED:
        raise ModelError(f"unknown pretrained model '{name}'; pullable: {', '.join(PRETRAINED)}")
    entry = PRETRAINED[name]
    target = stored_path(name)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"model '{name}' is already in the store; pass overwrite=True to download again",
                                cli=f"model '{name}' is already in the store; pass --overwrite to download again")
    url = entry.url()
    with scratch_path(target.with_suffix(".pth")) as download:
        source_sha = fetch(url, download, entry.sha256, progress)
        try:
            stored = import_reference(download, name, entry.from_domain, entry.to_domain, overwrite=True,
                                      source=url, source_sha256=source_sha)
        except ModelError as error:
            raise DownloadError(f"{url}: downloaded file is not a valid generator: {error}") from error
        if (stored.info.spec.n_blocks, stored.info.spec.ngf) != (9, 64):
            stored.path.unlink()
            raise DownloadError(f"{url}: expected a 9-block ngf-64 generator, got {stored.info.architecture}")
    return stored


def fetch(url: str, dst: Path, sha256: str | None = None, progress=None) -> str:
    """Download `url` into the file `dst` (complete, and with the given sha256 if any); its sha256.

    Our own, not torch.hub.download_url_to_file: that one writes a private 0600
    file and draws its own progress bar. Raises DownloadError.
    """
    with open(dst, "wb") as handle:
        _download(url, handle, progress)
    digest = file_sha256(dst)
    if sha256 and digest != sha256.lower():
        raise DownloadError(f"{url}: sha256 {digest[:16]}... differs from the registry's {sha256[:16]}...; "
                            f"the file is damaged or was replaced, so it was not stored")
    return digest


def _download(url: str, handle, progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            received = 0
            with bar(progress, Path(urllib.parse.urlsplit(url).path).name, expected or None, "B") as counter:
                while chunk := response.read(1 << 16):
                    handle.write(chunk)
                    received += len(chunk)
                    counter.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: server answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: download failed ({reason})") from error
    if expected and received != expected:
        raise DownloadError(f"{url}: download interrupted after {received} of {expected} bytes; try again")


# ---------------------------------------------------------------- writing into the store

def check_store_names(names, source: str, overwrite: bool) -> None:
    """Refuse, before any work, to replace a store model that something other than `source` made.

    Raises OutputExistsError.
    """
    for name in names:
        path = stored_path(name)
        if not path.exists() or overwrite:
            continue
        try:
            made_by = read_info(path).source
        except ModelError:
            made_by = ""
        if made_by != source:
            what = f"model '{name}' already exists in {path.parent}"
            raise OutputExistsError(f"{what}; choose another name, or pass overwrite=True to replace it",
                                    cli=f"{what}; choose another --name, or pass --overwrite to replace it")


def put(name: str, generator, info: ModelInfo) -> StoredModel:
    """Write a generator into the store under `name` (atomically; its hash recorded)."""
    path = stored_path(name)
    return StoredModel(name, path, save_model(path, generator, info), "store")
