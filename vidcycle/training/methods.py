"""The training methods a recipe can name, as a table: name -> `MethodRecord`.

Everything that differs between methods reads it: the recipe (the `method` names, each method's
defaults, its own settings refused under another), the run's setup (the builder, the networks
`--compile` compiles), the exports (the directions learned), and the CLI (its help, the losses shown
in the progress bar).

A method is one module that defines its record; a built-in one is listed in `_builtin`, another is
added with `register(record)`. The table imports no method module until a name is looked up, so a
recipe is read without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vidcycle.errors import RecipeError

# A direction a method learns: (name key in the run record, network key in the checkpoint, from, to)
X_TO_Y = ("name", "g_xy", "x_domain", "y_domain")
Y_TO_X = ("reverse_name", "g_yx", "y_domain", "x_domain")


@dataclass(frozen=True)
class MethodRecord:
    """What the scaffold and the command line need to know of one method learning from two collections."""

    name: str                          # the recipe's `method` value
    build: Callable                    # (recipe, RunData, device, Distributed) -> a training.run.Method
    defaults: object                   # its default Recipe (the paper's values), `method` set to `name`
    summary: str                       # one line for `train --help`
    loss_names: tuple = ()             # the losses the progress bar shows
    exports: tuple = (X_TO_Y, Y_TO_X)  # the directions it learns and exports
    section: str | None = None         # its own settings' section of the recipe (e.g. "nce"), or None
    own_settings: tuple = ()           # "section.key" settings only it uses, refused under other methods
    compiled: tuple = ()               # fields of the method's `nets` that --compile compiles

    @property
    def one_sided(self) -> bool:
        return len(self.exports) == 1


_TABLE: dict[str, MethodRecord] = {}


def _builtin() -> tuple:
    from vidcycle.training import contrastive, cyclegan  # lazy: the methods load torch; recipes are read without it
    return (cyclegan.METHOD, contrastive.CUT, contrastive.FASTCUT)


def _table() -> dict[str, MethodRecord]:
    if not _TABLE:
        for record in _builtin():
            _TABLE.setdefault(record.name, record)
    return _TABLE


def register(record: MethodRecord) -> MethodRecord:
    """Add a method (or replace one of the same name); returns the record."""
    _table()[record.name] = record
    return record


def method_names() -> tuple:
    return tuple(_table())


def method_record(name: str) -> MethodRecord:
    """The record of method `name`. Raises RecipeError for a name no method has."""
    try:
        return _table()[name]
    except KeyError:
        raise RecipeError(f"method: {name!r} is not one of {', '.join(method_names())}") from None


def sections() -> set:
    """The settings' sections some method owns: absent from a recipe whose method has none."""
    return {record.section for record in _table().values() if record.section}


def methods() -> tuple:
    """Every method's record, the built-in ones first."""
    return tuple(_table().values())
