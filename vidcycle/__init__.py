"""vidcycle: train CycleGAN generator pairs on unpaired footage and apply them to whole videos and photo folders.

The Python API is importable without loading torch until it is used:

    import vidcycle
    vidcycle.available_models()
    model = vidcycle.load_model("demo-summer2winter")
    winter = model.translate(frame)          # uint8 HxWx3 RGB, any size
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "translator",
    "Translator": "translator",
    "available_models": "store",
    "list_models": "store",
    "load_recipe": "recipe",
    "Recipe": "recipe",
    "VidcycleError": "errors",
    "translate_video": "apply",
    "translate_image": "apply",
    "translate_folder": "apply",
    "ApplyOptions": "apply",
    "train": "training",
    "RunOptions": "training",
    "distill": "distillation",
    "DistillOptions": "distillation",
    "DistillRecipe": "recipe",
    "evaluate": "evaluation",
    "measure_flicker": "flicker",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidcycle' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
