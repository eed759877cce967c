"""vidcycle: train CycleGAN generator pairs on unpaired footage and apply them to whole videos and photo folders.

The Python API is importable without loading torch until it is used:

    import vidcycle
    vidcycle.available_models()
    model = vidcycle.load_model("demo-summer2winter")
    winter = model.translate(frame)          # uint8 HxWx3 RGB, any size
"""

from typing import TYPE_CHECKING

from vidcycle.errors import (DeviceError, DownloadError, FeaturesMissing, MediaError, ModelError, OutputExistsError,
                             PartialFailure, RecipeError, TrainingError, UsageError, VidcycleError)
from vidcycle.version import __version__

if TYPE_CHECKING:  # what type checkers and editors see; at run time each name loads on first use (_LAZY)
    from vidcycle.apply.jobs import ApplyOptions, translate_folder, translate_image, translate_video
    from vidcycle.models.store import available_models, list_models
    from vidcycle.quality.evaluation import evaluate
    from vidcycle.quality.fidelity import evaluate_unpaired
    from vidcycle.quality.flicker import measure_flicker
    from vidcycle.runtime.translator import Translator, load_model
    from vidcycle.training.distillation import DistillOptions, distill
    from vidcycle.training.recipe import DistillRecipe, Recipe, load_recipe
    from vidcycle.training.trainer import RunOptions, train

ERRORS = ["VidcycleError", "UsageError", "RecipeError", "MediaError", "ModelError", "DownloadError", "FeaturesMissing",
          "DeviceError", "OutputExistsError", "PartialFailure", "TrainingError"]
_LAZY = {
    "load_model": "runtime.translator",
    "Translator": "runtime.translator",
    "available_models": "models.store",
    "list_models": "models.store",
    "load_recipe": "training.recipe",
    "Recipe": "training.recipe",
    "translate_video": "apply.jobs",
    "translate_image": "apply.jobs",
    "translate_folder": "apply.jobs",
    "ApplyOptions": "apply.jobs",
    "train": "training.trainer",
    "RunOptions": "training.trainer",
    "distill": "training.distillation",
    "DistillOptions": "training.distillation",
    "DistillRecipe": "training.recipe",
    "evaluate": "quality.evaluation",
    "evaluate_unpaired": "quality.fidelity",
    "measure_flicker": "quality.flicker",
}


__all__ = ["__version__", *ERRORS, *_LAZY]
_TRAINING = {"train", "RunOptions", "distill", "DistillOptions"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidcycle' has no attribute {name!r}")
    import importlib
    import sys

    if "torch" not in sys.modules:  # the policy acts before torch loads OpenMP, as the CLI's does
        from vidcycle.runtime.threads import prepare  # lazy: `import vidcycle` stays instant
        prepare("train" if name in _TRAINING else "apply")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # loaded once: later uses are plain attributes, with no policy to run
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
