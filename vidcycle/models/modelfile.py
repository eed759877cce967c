"""Self-describing model files: one generator direction per safetensors file.

The weights are safetensors (no pickle); the header metadata carries the
format version, the architecture, the domains, the training size, the recipe,
a content hash, the training method and the counted cost (GMAC per 256x256 frame), so a file
rebuilds its own network. A distilled student's header also names its teacher
(name and content hash) and its fidelity to it on held-out frames. Reference
`.pth` checkpoints are read with `torch.load(weights_only=True)` only.
"""

import hashlib
import json
import pickle
from dataclasses import dataclass, field, replace

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vidcycle.errors import ModelError, first_line
from vidcycle.files import atomic_path
from vidcycle.models.nets import GeneratorSpec, ResnetGenerator, build_generator, count_gmacs, generator_from_state

FORMAT = "vidcycle-generator"
# Version 2 adds the mobile generator kind. A file is written with the lowest version that describes it,
# so ResNet files (students included) stay readable by vidcycle versions that read only version 1.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelInfo:
    """Everything a model file says about itself besides its weights."""

    spec: GeneratorSpec
    from_domain: str = "x"
    to_domain: str = "y"
    train_size: int = 256
    recipe: dict = field(default_factory=dict)
    source: str = ""
    content_hash: str = ""
    source_sha256: str = ""
    gmacs_256: float | None = None   # multiply-adds (G) of one 256x256 frame, counted when saved
    teacher: dict = field(default_factory=dict)   # a student's teacher: name, content_hash
    fidelity: dict = field(default_factory=dict)  # a student's PSNR, SSIM against its teacher, frames
    method: str = ""   # how vidcycle trained it: cyclegan, cut, fastcut (a student: its teacher's); "" unknown
    weights: str = ""  # which weights of its run: "last" (iterate) or "average (half-life ...)"; "" unknown

    @property
    def direction(self) -> str:
        return f"{self.from_domain} -> {self.to_domain}"

    @property
    def architecture(self) -> str:
        return self.spec.label

    @property
    def gmacs(self) -> float:
        """GMAC per 256x256 frame: the header's (counted when saved), or counted now for older files."""
        return self.gmacs_256 if self.gmacs_256 is not None else count_gmacs(self.spec)


def state_hash(state: dict) -> str:
    """sha256 over the tensors' names, shapes, dtypes and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model(path, generator: ResnetGenerator, info: ModelInfo) -> ModelInfo:
    """Write atomically and durably (a model is worth a fsync). Returns the info with its hash. Raises
    ModelError where it cannot be written (a full disk, no permission)."""
    state = {k: v.detach().cpu().float().contiguous() for k, v in generator.state_dict().items()}
    info = replace(info, content_hash=state_hash(state), gmacs_256=round(count_gmacs(info.spec), 4))
    try:
        with atomic_path(path, durable=True) as tmp:
            save_file(state, str(tmp), metadata=_metadata(info))
    except (SafetensorError, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise ModelError(f"{path}: cannot write the model ({reason})") from error
    return info


def read_info(path) -> ModelInfo:
    """Read only the header: fast, for listings. Raises ModelError if it is not a vidcycle model."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable model file ({error})") from error
    return _info_from_metadata(meta, path)


def load_model_file(path) -> tuple[ResnetGenerator, ModelInfo]:
    """Rebuild the generator from the file alone; the content hash is checked."""
    info = read_info(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelError(f"{path}: weights are unreadable ({error})") from error
    if info.content_hash and state_hash(state) != info.content_hash:
        raise ModelError(f"{path}: content hash mismatch; the file is damaged, import or pull it again")
    try:
        net = build_generator(info.spec, init=False)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from error
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"{path}: weights do not match the architecture it claims") from error
    return net, info


def load_reference_checkpoint(path) -> tuple[ResnetGenerator, GeneratorSpec]:
    """Load a reference-project `.pth` generator without ever unpickling arbitrary objects."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(f"{path}: refused: the file holds pickled objects other than tensors "
                         "(it may run code); only plain state dicts are loaded") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({first_line(error)})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a generator state dict")
    try:
        net = generator_from_state(state)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from error
    return net, net.spec


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata(info: ModelInfo) -> dict[str, str]:
    version = "1" if info.spec.kind == "resnet" else str(FORMAT_VERSION)
    return {"format": FORMAT, "format_version": version, **header_fields(info)}


def header_fields(info: ModelInfo) -> dict[str, str]:
    """What a model says of itself, as strings: the safetensors header and an ONNX export's metadata."""
    meta = {
        "architecture": json.dumps(info.spec.as_dict()),
        "from_domain": info.from_domain,
        "to_domain": info.to_domain,
        "train_size": str(info.train_size),
        "recipe": json.dumps(info.recipe),
        "source": info.source,
        "content_hash": info.content_hash,
        "source_sha256": info.source_sha256,
    }
    if info.gmacs_256 is not None:
        meta["gmacs_256"] = repr(info.gmacs_256)
    if info.teacher:
        meta["teacher"] = json.dumps(info.teacher)
    if info.fidelity:
        meta["fidelity"] = json.dumps(info.fidelity)
    if info.method:
        meta["method"] = info.method
    if info.weights:
        meta["weights"] = info.weights
    return meta


def _info_from_metadata(meta: dict, path) -> ModelInfo:
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a vidcycle model file (no '{FORMAT}' header)")
    version = int(meta.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ModelError(f"{path}: model format {version} is newer than this vidcycle reads "
                         f"({FORMAT_VERSION}); upgrade vidcycle")
    try:
        return info_from_fields(meta)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{path}: model header is damaged ({error})") from error


def info_from_fields(meta: dict) -> ModelInfo:
    """The ModelInfo that `header_fields` wrote. Raises KeyError, TypeError or ValueError if damaged."""
    return ModelInfo(spec=GeneratorSpec(**json.loads(meta["architecture"])), from_domain=meta.get("from_domain", "x"),
                     to_domain=meta.get("to_domain", "y"), train_size=int(meta.get("train_size", 256)),
                     recipe=json.loads(meta.get("recipe", "{}")), source=meta.get("source", ""),
                     content_hash=meta.get("content_hash", ""), source_sha256=meta.get("source_sha256", ""),
                     gmacs_256=float(meta["gmacs_256"]) if "gmacs_256" in meta else None,
                     teacher=json.loads(meta.get("teacher", "{}")), fidelity=json.loads(meta.get("fidelity", "{}")),
                     method=meta.get("method", ""), weights=meta.get("weights", ""))

