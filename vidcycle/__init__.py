"""vidcycle: train CycleGAN generator pairs on unpaired footage and apply them to whole videos and photo folders.

The Python API is importable without loading torch until it is used:

    import vidcycle
    vidcycle.available_models()
    model = vidcycle.load_model("demo-summer2winter")
    winter = model.translate(frame)          # uint8 HxWx3 RGB, any size
"""

from vidcycle.version import __version__

_LAZY = {
    "load_model": "runtime.translator",
    "Translator": "runtime.translator",
    "available_models": "models.store",
    "list_models": "models.store",
    "load_recipe": "training.recipe",
    "Recipe": "training.recipe",
    "VidcycleError": "errors",
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


__all__ = ["__version__", *_LAZY]
_TRAINING = {"train", "RunOptions", "distill", "DistillOptions"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidcycle' has no attribute {name!r}")
    import importlib

    from vidcycle.runtime.threads import prepare  # lazy: `import vidcycle` stays instant
    prepare("train" if name in _TRAINING else "apply")  # before torch loads OpenMP, as the CLI does
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
