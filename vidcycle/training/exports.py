"""What a training run puts into the model store: the directions its method learned (both for
CycleGAN, X -> Y for the one-sided methods), each a generator with a header that records the method
and the recipe."""

from __future__ import annotations

from vidcycle.models.modelfile import ModelInfo
from vidcycle.models.nets import build_generator, count_gmacs
from vidcycle.models.store import StoredModel, check_store_names, put
from vidcycle.training.cyclegan import generator_spec
from vidcycle.training.recipe import Recipe, recipe_to_dict
from vidcycle.training.runs import run_source

# (name key in the run record, network key in the checkpoint, from, to)
X_TO_Y = ("name", "g_xy", "x_domain", "y_domain")
Y_TO_X = ("reverse_name", "g_yx", "y_domain", "x_domain")


def learned(recipe: Recipe) -> tuple:
    return (X_TO_Y,) if recipe.one_sided else (X_TO_Y, Y_TO_X)


def exported_names(recipe: Recipe, names: dict) -> tuple:
    """The store names a run of this recipe writes."""
    return tuple(names[key] for key, *_ in learned(recipe))


def directions(recipe: Recipe, nets: dict, names: dict, source: str, weights: str = "last"):
    """(store name, generator, ModelInfo) of each learned direction, from the generators' state dicts;
    `weights` says which (the last iterate, or an average)."""
    spec = generator_spec(recipe)
    for key, net_name, from_key, to_key in learned(recipe):
        generator = build_generator(spec, init=False)
        generator.load_state_dict(nets[net_name])
        info = ModelInfo(spec=spec, from_domain=names[from_key], to_domain=names[to_key],
                         train_size=recipe.data.crop_size, recipe=recipe_to_dict(recipe), source=source,
                         method=recipe.method, weights=weights)
        yield names[key], generator, info


def export_states(run, nets: dict) -> list[StoredModel]:
    """A run's learned directions into the store, from state dicts in memory."""
    names, source = run.record, run_source(run.run_dir)
    check_store_names(exported_names(run.recipe, names), source, run.options.overwrite)
    return [put(name, generator, info)
            for name, generator, info in directions(run.recipe, nets, names, source, run.weights)]


def count_networks(named: list, spec) -> str:
    """"G: 7.84 M parameters, 14.3 GMAC per 256x256 frame; D_Y: 2.77 M ..." for a run's summary: the
    generators' cost as `vidcycle models` counts it, the other networks' size."""
    parts = []
    for n, (name, net) in enumerate(named):
        size = sum(p.numel() for p in net.parameters()) / 1e6
        cost = f", {count_gmacs(spec):.1f} GMAC per 256x256 frame" if name in ("G", "F") else ""
        parts.append(f"{name}: {size:.2f} M{' parameters' if n == 0 else ''}{cost}")
    return "; ".join(parts)
