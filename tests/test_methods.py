"""The one-sided methods (CUT, FastCUT) beside CycleGAN: PatchNCE as the paper writes it, each method
learning, exact resume, one exported direction that applies and distils, and recipes that cannot mix
one method's settings into another's."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_cli, write_clip
from test_train_learns import THRESHOLD, X_DARK, X_LIGHT, Y_DARK, Y_LIGHT, paint, progress, scenes, write_domain
from vidcycle.errors import RecipeError
from vidcycle.models.modelfile import read_info
from vidcycle.models.store import models_dir
from vidcycle.training.patchnce import ProjectionHead, encoder_features, patch_nce_loss
from vidcycle.training.recipe import load_recipe, recipe_from_dict, shipped_recipes
from vidcycle.training.trainer import RunOptions, train

TINY_LAYERS = "0,4,7,10"  # the tiny recipe's generator has one residual block: the encoder ends at 10


def tiny(method, **overrides):
    settings = {"method": method, "nce.layers": TINY_LAYERS} if method != "cyclegan" else {"method": method}
    return load_recipe(shipped_recipes()["tiny"], {**settings, **overrides})


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    return (write_domain(root / "summer", scenes(24, seed=1), X_DARK, X_LIGHT),
            write_domain(root / "winter", scenes(24, seed=2), Y_DARK, Y_LIGHT))


# ---------------------------------------------------------------- the loss itself

def direct_patch_nce(query, key, batch, tau):
    """The paper's formula, patch by patch: -log(exp(q.k+/t) / (exp(q.k+/t) + sum_neg exp(q.k-/t))),
    the negatives being the other patches of the same image."""
    patches = query.shape[0] // batch
    losses = []
    for b in range(batch):
        for i in range(patches):
            q = query[b * patches + i].double()
            positive = math.exp(float(q @ key[b * patches + i].double()) / tau)
            negatives = sum(math.exp(float(q @ key[b * patches + j].double()) / tau)
                            for j in range(patches) if j != i)
            losses.append(-math.log(positive / (positive + negatives)))
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_patch_nce_is_the_papers_formula_with_negatives_from_the_same_image(tau):
    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(2 * 5, 8, generator=generator), dim=1)
    key = torch.nn.functional.normalize(torch.randn(2 * 5, 8, generator=generator), dim=1)
    ours = patch_nce_loss(query, key, batch=2, temperature=tau)
    assert ours.shape == (10,)
    assert torch.allclose(ours.double(), direct_patch_nce(query, key, 2, tau), rtol=1e-5, atol=1e-6)
    # Patches of the other image are no negatives: changing them changes nothing.
    other = key.clone()
    other[5:] = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    assert torch.allclose(patch_nce_loss(query, other, 2, tau)[:5], ours[:5])
    # Matching features make the positive win: the loss falls towards 0 as tau shrinks.
    assert patch_nce_loss(key, key, 2, 0.01).max() < 1e-3 < patch_nce_loss(query, key, 2, 0.01).mean()


def test_keys_carry_no_gradient_and_queries_are_sampled_where_the_keys_were():
    torch.manual_seed(0)
    from vidcycle.models.nets import GeneratorSpec, build_generator
    generator = build_generator(GeneratorSpec(n_blocks=1, ngf=8))
    head = ProjectionHead([3, 16], width=32)
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    keys, positions = head(encoder_features(generator, image, (0, 4)), patches=20)
    queries, again = head(encoder_features(generator, image, (0, 4)), patches=20, positions=positions)
    assert [k.shape for k in keys] == [(20, 32), (20, 32)]
    assert all(torch.equal(a, b) for a, b in zip(positions, again))
    assert all(torch.allclose(q, k) for q, k in zip(queries, keys))  # same features, same places
    patch_nce_loss(queries[0], keys[0], 1, 0.07).mean().backward()
    assert image.grad is not None  # through the queries only
    assert torch.allclose(keys[0].norm(dim=1), torch.ones(20))


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("method", ["cut", "fastcut"])
def test_each_one_sided_method_learns_the_translation(method, domains, tmp_path, one_thread):
    """The test_train_learns task: colours most of the way to Y, content kept, PatchNCE falling."""
    from vidcycle.runtime.translator import load_model
    x, y = domains
    recipe = tiny(method, **{"schedule.iterations": 50, "schedule.iterations_decay": 50, "optim.lr": 5e-4})
    result = train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp_path / "run", name=f"{method}-s2w",
                                      precision="fp32", workers=0))
    assert result.iteration == 100 and [m.name for m in result.exported] == [f"{method}-s2w"]

    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    first, last = np.mean([r["nce_x"] for r in rows[:3]]), np.mean([r["nce_x"] for r in rows[-3:]])
    assert last < 0.8 * first, (first, last)

    held_out = scenes(16, seed=99)
    x_test = np.stack([paint(t, X_DARK, X_LIGHT) for t in held_out])
    y_test = np.stack([paint(t, Y_DARK, Y_LIGHT) for t in held_out])
    translated = load_model(f"{method}-s2w", device="cpu", precision="fp32").translate_batch(x_test)
    assert progress(translated, x_test, y_test) >= THRESHOLD
    error = np.abs(translated.astype(float) - y_test).mean()
    assert error < 0.5 * np.abs(x_test.astype(float) - y_test).mean()


def test_cyclegan_lowers_its_cycle_loss_on_the_same_budget(domains, tmp_path, one_thread):
    x, y = domains
    recipe = tiny("cyclegan", **{"schedule.iterations": 20, "schedule.iterations_decay": 20})
    train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp_path / "run", export=False, workers=0,
                             precision="fp32"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert rows[-1]["cycle_x"] < 0.7 * rows[0]["cycle_x"]


def test_a_one_sided_run_exports_x_to_y_with_its_method_and_no_head(domains, tmp_path, one_thread):
    x, y = domains
    recipe = tiny("fastcut", **{"schedule.iterations": 4, "schedule.iterations_decay": 0})
    result = train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp_path / "run", name="a2b", workers=0))
    (stored,) = result.exported
    info = read_info(stored.path)
    assert (info.method, info.direction, info.recipe["method"]) == ("fastcut", "a -> b", "fastcut")
    from safetensors import safe_open
    with safe_open(str(stored.path), "pt") as handle:
        assert all(key.startswith("model.") for key in handle.keys())  # the generator alone
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(checkpoint["nets"]) == {"g_xy", "d_y", "head"}
    assert not (models_dir() / "b2a.safetensors").exists()

    # Exporting again from the run folder gives the same single direction.
    again = run_cli("models", "export", str(tmp_path / "run"), "--name", "c2d")
    assert again.exit_code == 0, again.output
    assert read_info(models_dir() / "c2d.safetensors").method == "fastcut"
    assert not (models_dir() / "d2c.safetensors").exists()


def test_the_exported_model_applies_to_a_clip_and_a_photo_and_distils(domains, tmp_path, one_thread):
    x, y = domains
    recipe = tiny("cut", **{"schedule.iterations": 4, "schedule.iterations_decay": 0})
    train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp_path / "run", name="cut-a2b", workers=0))
    clip = write_clip(tmp_path / "in.mp4", frames=6)
    applied = run_cli("apply", str(clip), str(next(x.iterdir())), "-o", str(tmp_path / "out"), "--model", "cut-a2b")
    assert applied.exit_code == 0, applied.output
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".mp4", ".png"]

    distilled = run_cli("distill", "cut-a2b", "--data", str(x), "--name", "cut-a2b-fast",
                        "--recipe", "distill-tiny", "--workers", "0", "--set", "student.ngf=4",
                        "--set", "student.n_blocks=1", "--max-steps", "3")
    assert distilled.exit_code == 0, distilled.output
    student = read_info(models_dir() / "cut-a2b-fast.safetensors")
    assert student.method == "cut" and student.teacher["name"] == "cut-a2b"


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("data, named", [
    ({"method": "cut", "loss": {"cycle": 5.0}}, "loss.cycle"),
    ({"method": "fastcut", "optim": {"pool_size": 10}}, "optim.pool_size"),
    ({"method": "cut", "loss": {"identity": 0.0}}, "loss.identity"),
    ({"method": "cut", "loss": {"stability": 1.0}}, "loss.stability"),
    ({"nce": {"weight": 2.0}}, "nce"),
    ({"method": "cyclegan", "nce": {"identity": False}}, "nce"),
])
def test_a_setting_of_another_method_is_refused_naming_it(data, named):
    with pytest.raises(RecipeError) as raised:
        recipe_from_dict(data)
    message = str(raised.value)
    assert "\n" not in message and f"{named}:" in message


def test_the_cli_refuses_a_mixed_recipe_in_one_line(domains, tmp_path):
    x, y = domains
    recipe = tmp_path / "mixed.toml"
    recipe.write_text('method = "fastcut"\n[loss]\ncycle = 10.0\n')
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", str(recipe), "--out", str(tmp_path / "r"))
    assert result.exit_code != 0 and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "loss.cycle" in line and "fastcut" in line
    assert not (tmp_path / "r").exists()


def test_method_defaults_are_the_papers_and_a_resolved_recipe_reads_back():
    cut, fastcut = load_recipe(shipped_recipes()["cut128"]), load_recipe(shipped_recipes()["fastcut128"])
    assert (cut.nce.weight, cut.nce.identity, cut.nce.flip_equivariance) == (1.0, True, False)
    assert (fastcut.nce.weight, fastcut.nce.identity, fastcut.nce.flip_equivariance) == (10.0, False, True)
    assert (cut.nce.patches, cut.nce.temperature, cut.nce.head_width) == (256, 0.07, 256)
    assert (cut.schedule.epochs, cut.schedule.epochs_decay) == (200, 200)
    assert (fastcut.schedule.epochs, fastcut.schedule.epochs_decay) == (150, 50)
    assert load_recipe(shipped_recipes()["cyclegan128"]).nce is None
    import tomllib
    from vidcycle.training.recipe import recipe_to_toml
    for recipe in (cut, fastcut, load_recipe(shipped_recipes()["fastcut-cpu-small"])):
        assert recipe_from_dict(tomllib.loads(recipe_to_toml(recipe))) == recipe


def test_layers_past_the_encoder_are_refused_with_the_fitting_choice(domains, tmp_path):
    x, y = domains
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", "tiny", "--set", "method=cut",
                     "--out", str(tmp_path / "r"), "--workers", "0")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "nce.layers: 14 is past the encoder of a 1-block generator" in result.stderr
    assert "nce.layers = [0,4,7,10]" in result.stderr


def test_reverse_name_is_refused_for_a_one_sided_method(domains, tmp_path):
    x, y = domains
    result = run_cli("train", "--x", str(x), "--y", str(y), "--recipe", "fastcut128", "--name", "a2b",
                     "--reverse-name", "b2a", "--out", str(tmp_path / "r"))
    assert result.exit_code != 0 and "learns X -> Y only" in result.stderr
