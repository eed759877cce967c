"""Recipes: what to learn, as frozen dataclasses read from TOML.

Two kinds: `Recipe` trains a generator from two unpaired collections by a
method of the table vidcycle.training.methods (CycleGAN, the default, with
the paper's values, shared docs, cyclegan.md; or CUT / FastCUT, one-sided,
with their paper's values), whose record gives its defaults and the settings
only it uses; `DistillRecipe` distils a trained generator into a cheaper
student (defaults are recipes/distill.toml's measured choices).
A recipe file states only what differs. Unknown keys and bad values are
collected and reported all at once, each with its key path and a "did you mean".
"""

import difflib
import tomllib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from vidcycle.errors import RecipeError
from vidcycle.training.methods import method_names, method_record, methods, sections


def _opt(default, choices=None, minimum=None):
    """A recipe value with its checks: the allowed choices, or a minimum."""
    return field(default=default, metadata={"choices": choices, "min": minimum})


@dataclass(frozen=True)
class ModelConfig:
    n_blocks: int = _opt(9, minimum=1)  # residual blocks in each generator (paper: 9 at 256 px, 6 at 128 px)
    ngf: int = _opt(64, minimum=1)  # generator width (filters of the first conv)
    ndf: int = _opt(64, minimum=1)  # discriminator width
    d_layers: int = _opt(3, minimum=1)  # PatchGAN layers (3 gives the 70x70 receptive field)


@dataclass(frozen=True)
class DataConfig:
    # images are resized to load_size x load_size (the paper), or their shorter side to load_size with
    # keep_aspect, before cropping
    load_size: int = _opt(286, minimum=4)
    # resize the shorter side and keep the aspect ratio, so 16:9 footage is not squashed in training while
    # apply sees it unsquashed
    keep_aspect: bool = False
    crop_size: int = _opt(256, minimum=4)  # random square crop used for training
    flip: bool = True  # random horizontal flip
    fps: float = _opt(0.0, minimum=0)  # video frames taken per second of footage (0: use every_nth)
    every_nth: int = _opt(1, minimum=1)  # take every Nth decoded frame when fps is 0
    max_frames_per_clip: int = _opt(500, minimum=0)  # cap on frames taken from one clip (0: no cap)
    # skip a frame whose mean abs difference to the last kept one is below this (0-255 scale; 0 keeps all)
    dedup_threshold: float = _opt(2.0, minimum=0)


@dataclass(frozen=True)
class LossConfig:
    gan_mode: str = _opt("lsgan", choices=("lsgan", "vanilla"))  # adversarial loss
    cycle: float = _opt(10.0, minimum=0)  # lambda: weight of the L1 cycle loss
    identity: float = _opt(0.5, minimum=0)  # identity weight as a fraction of lambda (0 disables it)
    # the identity term (a third of the generators' work) on every Nth iteration only, weighted N times:
    # the same gradient on average, as StyleGAN2's lazy regularisation (1: every iteration, as the paper).
    # 4: 0.77x the step; at 40 minutes +0.13 dB and 39% more flicker over three seeds (benchmarks/README.md)
    identity_every: int = _opt(1, minimum=1)
    temporal: float = _opt(0.0, minimum=0)  # weight of the temporal loss on consecutive video frames (0: off)
    # weight of the stability term (0: off): G(M(x)) = M(G(x)) and F(M(y)) = M(F(y)) for a small random camera
    # motion M of each crop (Eilertsen et al. 2019), so still photos teach what a pan needs: less shimmer
    stability: float = _opt(0.0, minimum=0)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _opt(2e-4, minimum=0)  # Adam learning rate
    beta1: float = _opt(0.5, minimum=0)  # Adam beta1
    beta2: float = _opt(0.999, minimum=0)  # Adam beta2
    batch_size: int = _opt(1, minimum=1)  # images per step and per process
    pool_size: int = _opt(50, minimum=0)  # fake images kept per discriminator's history pool (0: no pool)
    # averaged weights exported instead of the last iterate: their half-life in iterations (0: the last
    # iterate), at most ema_rampup of the iterations done (vidcycle.training.averaging). 1000 and 0.1:
    # in four 40-minute runs on the season benchmark, +0.16 dB on average and 21-45% less flicker than
    # the last iterate of the same run (benchmarks/README.md, "Training to a budget")
    ema_halflife: float = _opt(1000.0, minimum=0)
    ema_rampup: float = _opt(0.1, minimum=0)


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = _opt(100, minimum=0)  # epochs at constant learning rate
    epochs_decay: int = _opt(100, minimum=0)  # epochs of linear decay to 0 after that
    iterations: int = _opt(0, minimum=0)  # if set: iterations at constant lr (replaces epochs)
    iterations_decay: int = _opt(0, minimum=0)  # if iterations is set: iterations of linear decay
    checkpoint_every: int = _opt(1000, minimum=1)  # iterations between checkpoints
    sample_every: int = _opt(500, minimum=1)  # iterations between sample grids
    log_every: int = _opt(10, minimum=1)  # iterations between loss-log lines


@dataclass(frozen=True)
class NceConfig:
    """PatchNCE (Park et al. 2020): the settings of the one-sided methods, CUT's values by default."""

    weight: float = _opt(1.0, minimum=0)  # lambda_NCE: weight of the PatchNCE loss (CUT 1, FastCUT 10)
    identity: bool = True  # also PatchNCE between y and G(y) (CUT yes, FastCUT no)
    flip_equivariance: bool = False  # flip half the inputs and ask the same features back (FastCUT)
    # generator layers whose outputs are compared: the RGB input, both downsamplings, residual blocks 1 and 5
    # (CUT's nce_layers 0,4,8,12,16 on this generator, which downsamples without anti-aliasing)
    layers: tuple[int, ...] = _opt((0, 4, 7, 10, 14), minimum=0)
    patches: int = _opt(256, minimum=1)  # patches sampled per layer and image
    temperature: float = _opt(0.07, minimum=1e-6)  # tau of the contrastive softmax
    head_width: int = _opt(256, minimum=1)  # width of the two-layer MLP projection head (netF_nc)


@dataclass(frozen=True)
class Recipe:
    name: str = "cyclegan"  # what this recipe is for
    # a name in vidcycle.training.methods: cyclegan (G and F, cycle loss, both directions), cut / fastcut (G
    # alone, PatchNCE, X -> Y only)
    method: str = "cyclegan"
    seed: int = 0  # random seed for weights, sampling and augmentation
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    nce: NceConfig | None = None  # the one-sided methods' PatchNCE (absent for cyclegan)

    @property
    def one_sided(self) -> bool:
        """Whether the method learns X -> Y alone (and exports that one direction)."""
        return method_record(self.method).one_sided


def default_recipe(method: str = "cyclegan") -> Recipe:
    """The defaults of a method: the paper's, with what its record (vidcycle.training.methods) sets over
    them, its own section starting from its class's defaults. Raises RecipeError."""
    record = method_record(method)
    own_section = {record.section: _section_class(record.section)()} if record.section else {}
    base = replace(Recipe(), method=method, **own_section)
    problems: list[str] = []
    recipe = _build(Recipe, record.defaults, "", problems, base)
    if problems:
        raise RecipeError(f"method {method}'s defaults: " + "; ".join(problems))
    return recipe


def _section_class(section: str) -> type:
    """The settings class of a method's own section (a `Class | None` field of Recipe)."""
    hint = typing.get_type_hints(Recipe)[section]
    return next(kind for kind in typing.get_args(hint) if kind is not type(None))


@dataclass(frozen=True)
class StudentConfig:
    # a kind of models.nets.GENERATOR_KINDS (checked where the student is built, which loads torch):
    # "resnet": the teacher's architecture, narrower or shallower; "mobile": depthwise-separable residual
    # blocks (GAN Compression's). The default is the best quality per frame per second measured on a CPU.
    kind: str = "resnet"
    n_blocks: int = _opt(6, minimum=1)  # residual blocks
    ngf: int = _opt(16, minimum=1)  # width (filters of the first conv)


@dataclass(frozen=True)
class DistillLossConfig:
    l1: float = _opt(1.0, minimum=0)  # weight of ||student(x) - teacher(x)||_1
    ssim: float = _opt(1.0, minimum=0)  # weight of 1 - SSIM(student(x), teacher(x)) (structure, contrast)
    # weight of GAN Compression's feature distillation: 1x1-mapped student block activations against the
    # teacher's, mean squared (0: off)
    features: float = _opt(0.0, minimum=0)
    # weight of ||S(M(x)) - M(S(x))||_1 for a small random camera motion M per crop (Eilertsen et al. 2019):
    # an output that moves with the picture, learnt from single frames (0: off)
    stability: float = _opt(0.0, minimum=0)


@dataclass(frozen=True)
class DistillOptimConfig:
    lr: float = _opt(1e-3, minimum=0)  # Adam learning rate
    beta1: float = _opt(0.9, minimum=0)  # Adam beta1 (a regression, not a GAN: the usual 0.9)
    beta2: float = _opt(0.999, minimum=0)  # Adam beta2
    batch_size: int = _opt(4, minimum=1)  # crops per step
    # averaged weights exported instead of the last iterate: their half-life in iterations (0: the last
    # iterate), at most ema_rampup of the iterations done (vidcycle.training.averaging)
    ema_halflife: float = _opt(0.0, minimum=0)
    ema_rampup: float = _opt(0.05, minimum=0)


@dataclass(frozen=True)
class DistillRecipe:
    name: str = "distill"  # what this recipe is for
    seed: int = 0  # random seed for the student's weights, sampling and augmentation
    held_out: int = _opt(8, minimum=1)  # frames kept out of distillation to measure fidelity on
    # distinct crops drawn per frame, cycled epoch after epoch: the teacher runs once per crop and its
    # output is kept (0: a fresh crop every epoch, the teacher run on each)
    views: int = _opt(4, minimum=0)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(load_size=180, keep_aspect=True, crop_size=128))
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(
        epochs=0, epochs_decay=0, iterations=750, iterations_decay=750, checkpoint_every=250,
        sample_every=250, log_every=10))


def recipe_kind(data: dict) -> type:
    """The recipe class a recipe's data belongs to: a distillation recipe has a student."""
    return DistillRecipe if isinstance(data, dict) and "student" in data else Recipe


def load_recipe(path=None, overrides: dict | None = None, kind: type = Recipe):
    """Read a TOML recipe of `kind` (or its defaults) and apply `section.key` overrides.

    Raises RecipeError naming every unknown key and bad value at once.
    """
    data = {}
    if path is not None:
        data = _read_toml(Path(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    source = str(path) if path else "recipe"
    if overrides:
        source += " with " + ", ".join(f"{key}={value}" for key, value in overrides.items())
    return recipe_from_dict(data, source=source, kind=kind)


def recipe_from_dict(data: dict, source: str = "recipe", kind: type = Recipe):
    problems: list[str] = []
    base = kind()
    if kind is Recipe and isinstance(data, dict):
        method = _check_value(str, data.get("method", "cyclegan"), _method_field(), "method", problems)
        if method is not MISSING and method not in method_names():
            problems.append(f"method: {method!r} is not one of {', '.join(method_names())}")
        elif method is not MISSING:
            base = default_recipe(method)
            problems += _foreign_settings(data, method)
    recipe = _build(kind, data, "", problems, base)
    if recipe.data.crop_size > recipe.data.load_size:
        problems.append(f"data.crop_size: {recipe.data.crop_size} is larger than data.load_size "
                        f"{recipe.data.load_size}")
    if getattr(recipe.loss, "stability", 0) > 0 and recipe.data.crop_size < 4 * MOTION_MARGIN:
        problems.append(f"loss.stability leaves {MOTION_MARGIN} px out at each edge of a crop: data.crop_size "
                        f"{recipe.data.crop_size} leaves too little; raise it to {4 * MOTION_MARGIN} or more, "
                        "or set loss.stability = 0")
    if getattr(recipe, "nce", None) is not None:
        problems += _layers_past_encoder(recipe.nce.layers, recipe.model.n_blocks)
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(dict.fromkeys(problems)))
    return recipe


def _method_field():
    return next(f for f in fields(Recipe) if f.name == "method")


def _foreign_settings(data: dict, method: str) -> list[str]:
    """Settings of another method in a recipe (its section, or a setting only it uses): refused, so nobody
    believes a setting is in effect that is not."""
    own = method_record(method)
    found = []
    for section in sorted(sections() - {own.section}):
        if section in data:
            owners = [record.name for record in methods() if record.section == section]
            found.append(f"{section}: settings of method {' and '.join(owners)}; this recipe's method is {method} "
                         f"(set method = \"{owners[0]}\" to use them)")
    for record in methods():
        for dotted in record.own_settings if record.name != method else ():
            section, key = dotted.split(".")
            if isinstance(data.get(section), dict) and key in data[section]:
                found.append(f"{dotted}: a {record.name} setting, which method {method} does not use"
                             + (f" (its own settings are under [{own.section}])" if own.section else ""))
    return found


# The stability term's margin (training.losses.moved_output_loss): pixels at each edge of a crop left out
# of the comparison, as at most about 5 px of a 128-px crop move in from outside it under its motions.
MOTION_MARGIN = 8


# The ResNet generator's layer list (models.nets.GeneratorKind.resnet_layers; here so a recipe is checked
# without torch): 0 pad, 1-3 the 7x7 stem (conv, norm, ReLU), 4-6 and 7-9 the two stride-2
# downsamplings, from 10 on the residual blocks, then the decoder.
FIRST_DOWNSAMPLING, SECOND_DOWNSAMPLING, FIRST_BLOCK = 4, 7, 10


def encoder_end(n_blocks: int) -> int:
    """Index of the last residual block in the generator's layer list: the end of its encoder."""
    return FIRST_BLOCK + n_blocks - 1


def _layers_past_encoder(layers: tuple, n_blocks: int) -> list[str]:
    """PatchNCE compares encoder features; a layer of the decoder is a mistake."""
    last = encoder_end(n_blocks)
    past = [layer for layer in layers if layer > last]
    if not past:
        return []
    fitting = ",".join(str(n) for n in NceConfig().layers if n <= last)
    return [f"nce.layers: {past[0]} is past the encoder of a {n_blocks}-block generator (layers 0-{last}); "
            f"for it, for example: nce.layers = [{fitting}]"]


def recipe_to_dict(recipe) -> dict:
    """The recipe as plain data; what a method does not have (a CycleGAN recipe's nce, a one-sided
    recipe's cycle settings) is left out, so the data reads back as the same recipe."""
    data = {key: value for key, value in asdict(recipe).items() if value is not None}
    if isinstance(recipe, Recipe):
        for record in methods():
            for dotted in record.own_settings if record.name != recipe.method else ():
                section, key = dotted.split(".")
                data[section].pop(key, None)
    return data


def defaults_of(recipe):
    """The recipe of the same kind (and method) with nothing changed."""
    return default_recipe(recipe.method) if isinstance(recipe, Recipe) else type(recipe)()


def recipe_to_toml(recipe) -> str:
    """The resolved recipe as TOML: scalars first, then one table per section."""
    top, tables = [], []
    for key, value in recipe_to_dict(recipe).items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items()))
        else:
            top.append(f"{key} = {_toml_value(value)}\n")
    return "".join(top) + "".join(tables)


SHIPPED_DIR = Path(__file__).parents[1] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with the package, by name: top-level recipes/*.toml, which vidcycle/recipes links to
    (a symlink, so editable installs see it and package_data copies the files into wheels)."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.toml"))}


def shipped_recipe_methods() -> dict[str, str]:
    """What each shipped recipe is for, by name: its training method ("cyclegan", "cut", "fastcut"), or
    "distill" for a distillation recipe (one with a [student] section). Reads the small TOML files only, so
    --help can list them without loading anything heavy."""
    methods = {}
    for name, path in shipped_recipes().items():
        data = _read_toml(path)
        methods[name] = "distill" if "student" in data else str(data.get("method", "cyclegan"))
    return methods


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as error:
        raise RecipeError(f"{path}: recipe file not found") from error
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML: {error}") from error


def _set_dotted(data: dict, dotted: str, value) -> None:
    *sections, key = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{dotted}: '{section}' is a value, not a section")
    node[key] = value


def _build(cls, data, prefix: str, problems: list[str], base):
    """`base` (an instance of cls: the defaults) with the values of `data` checked and put in."""
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.')}: expected a table, got {data!r}")
        return base
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}")
    values = {}
    for name, spec in known.items():
        if name not in data:
            continue
        kind, current = hints[name], getattr(base, name)
        if is_dataclass(current):
            values[name] = _build(type(current), data[name], f"{prefix}{name}.", problems, current)
        elif current is None and name in sections():
            continue  # a section this method does not have: refused by _foreign_settings
        else:
            converted = _check_value(kind, data[name], spec, f"{prefix}{name}", problems)
            if converted is not MISSING:
                values[name] = converted
    return replace(base, **values)


def _check_value(kind, value, spec, path: str, problems: list[str]):
    converted = _coerce(kind, value)
    if converted is MISSING:
        problems.append(f"{path}: expected {_type_name(kind)}, got {value!r}")
        return MISSING
    choices, minimum = spec.metadata.get("choices"), spec.metadata.get("min")
    if choices and converted not in choices:
        problems.append(f"{path}: {converted!r} is not one of {', '.join(choices)}")
        return MISSING
    if isinstance(converted, tuple):
        if not converted:
            problems.append(f"{path}: give at least one value")
            return MISSING
        if minimum is not None and min(converted) < minimum:
            problems.append(f"{path}: {min(converted)!r} is below the minimum {minimum}")
            return MISSING
        return converted
    if minimum is not None and converted < minimum:
        problems.append(f"{path}: {converted!r} is below the minimum {minimum}")
        return MISSING
    return converted


def _type_name(kind) -> str:
    return "a list of integers" if typing.get_origin(kind) is tuple else kind.__name__


def _coerce(kind, value):
    """Accept the TOML type, or a string from the command line that parses as it ("0,4,7" for a list)."""
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = [_parse_text(int, part) for part in value.split(",")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            return MISSING
        return tuple(value)
    if isinstance(value, str) and kind is not str:
        return _parse_text(kind, value)
    if kind is bool:
        return value if isinstance(value, bool) else MISSING
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else MISSING
    if kind is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING
    return value if isinstance(value, kind) else MISSING


def _parse_text(kind, text: str):
    if kind is bool:
        lowered = text.strip().lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(lowered, MISSING)
    try:
        return kind(text)
    except ValueError:
        return MISSING


def _toml_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
