"""The training methods a recipe can name, as a table of data: name -> `MethodRecord`.

Everything that differs between methods reads it: the recipe (the `method` names, each method's
defaults, its own settings refused under another), the run's setup (the networks `--compile`
compiles), the exports (the directions learned), and the CLI (its help, the losses shown in the
progress bar). A record is data, so a recipe is read and `--help` drawn without torch or any method's
code; each method's module (training.cyclegan, training.contrastive) holds its networks, step and
builder, and training.trainer, which builds runs, holds the builders by these names. A new method is
added in one call: `trainer.register_method(record, build)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vidcycle.errors import RecipeError

# A direction a method learns: (name key in the run record, network key in the checkpoint, from, to)
X_TO_Y = ("name", "g_xy", "x_domain", "y_domain")
Y_TO_X = ("reverse_name", "g_yx", "y_domain", "x_domain")


@dataclass(frozen=True)
class MethodRecord:
    """What recipes, runs and the command line need to know of one method learning from two collections."""

    name: str                          # the recipe's `method` value
    summary: str                       # one line for `train --help`
    # its defaults: the recipe values it sets over the paper's (training.recipe.Recipe), in a recipe
    # file's shape ({"schedule": {"epochs": 200}}); its own section, if it has one, starts from its class's
    defaults: dict = field(default_factory=dict)
    loss_names: tuple = ()             # the losses the progress bar shows
    exports: tuple = (X_TO_Y, Y_TO_X)  # the directions it learns and exports
    section: str | None = None         # its own settings' section of the recipe (e.g. "nce"), or None
    own_settings: tuple = ()           # "section.key" settings only it uses, refused under other methods
    compiled: tuple = ()               # fields of the method's `nets` that --compile compiles
    reads_layers: bool = False         # its loss reads generator layers' outputs by index (PatchNCE)

    @property
    def one_sided(self) -> bool:
        return len(self.exports) == 1


CYCLEGAN = MethodRecord(
    name="cyclegan", summary="G: X->Y and F: Y->X with a cycle loss; exports both directions",
    loss_names=("g_xy", "g_yx", "cycle_x", "cycle_y", "d_x", "d_y"), exports=(X_TO_Y, Y_TO_X),
    # what the one-sided methods have no use for: no inverse generator to cycle through or keep an
    # identity, no history pool (CUT's discriminator sees the current fakes)
    own_settings=("loss.cycle", "loss.identity", "loss.identity_every", "loss.stability", "optim.pool_size"),
    compiled=("g_xy", "g_yx", "d_x", "d_y"))

# Park et al. 2020, their code's defaults: NCE weight 1 with identity NCE and 200 + 200 epochs for CUT;
# weight 10, flip equivariance, no identity NCE and 150 + 50 epochs for FastCUT.
_CONTRASTIVE_LOSSES = ("g_gan", "nce_x", "nce_y", "d_y")
CUT = MethodRecord(
    name="cut", summary="G alone against a patchwise contrastive loss (Park et al. 2020); exports X->Y only",
    defaults={"name": "cut", "schedule": {"epochs": 200, "epochs_decay": 200}},
    section="nce", exports=(X_TO_Y,), loss_names=_CONTRASTIVE_LOSSES, compiled=("g", "d_y"),
    reads_layers=True)
FASTCUT = MethodRecord(
    name="fastcut", summary="CUT's lighter variant: flip equivariance instead of identity NCE; exports X->Y only",
    defaults={"name": "fastcut", "nce": {"weight": 10.0, "identity": False, "flip_equivariance": True},
              "schedule": {"epochs": 150, "epochs_decay": 50}},
    section="nce", exports=(X_TO_Y,), loss_names=_CONTRASTIVE_LOSSES, compiled=("g", "d_y"),
    reads_layers=True)

_TABLE: dict[str, MethodRecord] = {record.name: record for record in (CYCLEGAN, CUT, FASTCUT)}


def register(record: MethodRecord) -> MethodRecord:
    """Add a method's record (or replace one of the same name); returns it. A run of it needs its builder
    too: `trainer.register_method` adds both."""
    _TABLE[record.name] = record
    return record


def method_names() -> tuple:
    return tuple(_TABLE)


def method_record(name: str) -> MethodRecord:
    """The record of method `name`. Raises RecipeError for a name no method has."""
    try:
        return _TABLE[name]
    except KeyError:
        raise RecipeError(f"method: {name!r} is not one of {', '.join(method_names())}") from None


def sections() -> set:
    """The settings' sections some method owns: absent from a recipe whose method has none."""
    return {record.section for record in _TABLE.values() if record.section}


def methods() -> tuple:
    """Every method's record, the built-in ones first."""
    return tuple(_TABLE.values())
