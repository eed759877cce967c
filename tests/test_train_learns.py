"""The model really learns: green summer scenes -> snowy scenes of the same kind, on the CPU in seconds.

Both domains are the same procedural scenes (sky above a horizon, discs, noise)
painted with a different two-colour palette, so the translation that is
wanted is known exactly. Measure: colour statistics (per-channel mean and
standard deviation over all pixels) of a held-out set of scenes;
d(A, B) = |mean_A - mean_B| + |std_A - std_B| (Euclidean over RGB), and
progress = 1 - d(G(X), Y) / d(X, Y): 0 means G changed nothing, 1 means its
output has Y's colour statistics. Threshold 0.75 ("most of the way"); an
untrained generator must stay below 0.5 (it scores about 0.33 here).
"""

import numpy as np
import pytest
import torch

X_DARK, X_LIGHT = (30, 80, 20), (150, 220, 90)       # summer: dark green ground .. light green sky
Y_DARK, Y_LIGHT = (70, 70, 100), (235, 240, 255)     # winter: blue-grey shade .. snow white
THRESHOLD, UNTRAINED_CEILING = 0.75, 0.5


def scenes(count, seed, size=48):
    """Gray-level layouts in [0, 1]: the content both domains share."""
    rng = np.random.default_rng(seed)
    layouts = []
    for _ in range(count):
        yy, xx = np.mgrid[0:size, 0:size]
        horizon = rng.integers(size // 3, 2 * size // 3)
        t = np.where(yy < horizon, 0.8 + 0.2 * yy / size, 0.3 * (1 - (yy - horizon) / size))
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.integers(0, size, 2)
            radius = rng.integers(3, 10)
            t = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2, rng.uniform(0, 1), t)
        layouts.append(np.clip(t + rng.normal(0, 0.04, t.shape), 0, 1))
    return layouts


def paint(layout, dark, light):
    dark, light = np.array(dark, float), np.array(light, float)
    return np.round(dark + layout[..., None] * (light - dark)).astype(np.uint8)


def colour_stats(images):
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64)
    return pixels.mean(0), pixels.std(0)


def distance(a, b):
    return float(np.linalg.norm(a[0] - b[0]) + np.linalg.norm(a[1] - b[1]))


def progress(translated, x_images, y_images):
    x, y, out = colour_stats(x_images), colour_stats(y_images), colour_stats(translated)
    return 1 - distance(out, y) / distance(x, y)


def write_domain(folder, layouts, dark, light):
    import cv2
    folder.mkdir(parents=True)
    for i, layout in enumerate(layouts):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(paint(layout, dark, light), cv2.COLOR_RGB2BGR))
    return folder


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_colours_move_most_of_the_way_to_the_other_domain(tmp_path, one_thread, precision):
    """bf16 too: the CPU fast path must learn the same, not just run faster."""
    from vidcycle.models.nets import build_generator
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    from vidcycle.training.trainer import RunOptions, train
    from vidcycle.runtime.translator import Translator, load_model

    x = write_domain(tmp_path / "summer", scenes(24, seed=1), X_DARK, X_LIGHT)
    y = write_domain(tmp_path / "winter", scenes(24, seed=2), Y_DARK, Y_LIGHT)
    # The tiny recipe for 100 iterations (50 constant, 50 decaying), lr raised to 5e-4 to be quick.
    recipe = load_recipe(shipped_recipes()["tiny"], {"schedule.iterations": 50, "schedule.iterations_decay": 50,
                                                     "optim.lr": 5e-4})
    result = train(recipe, RunOptions(x_inputs=[x], y_inputs=[y], out=tmp_path / "run", name="summer2winter",
                                      precision=precision, workers=0))
    assert result.iteration == 100

    held_out = scenes(16, seed=99)  # new layouts, painted both ways: X and its known translation
    x_test = np.stack([paint(t, X_DARK, X_LIGHT) for t in held_out])
    y_test = np.stack([paint(t, Y_DARK, Y_LIGHT) for t in held_out])
    model = load_model("summer2winter", device="cpu", precision="fp32")
    trained = progress(model.translate_batch(x_test), x_test, y_test)

    torch.manual_seed(0)
    untrained_net = Translator(build_generator(model.info.spec), model.info, "cpu", "fp32")
    untrained = progress(untrained_net.translate_batch(x_test), x_test, y_test)
    assert untrained < UNTRAINED_CEILING, untrained
    assert trained >= THRESHOLD, f"colour progress {trained:.2f} (untrained {untrained:.2f})"
    # Content survives too: closer, pixel by pixel, to the paired truth than the input was.
    error = np.abs(model.translate_batch(x_test).astype(float) - y_test).mean()
    assert error < 0.5 * np.abs(x_test.astype(float) - y_test).mean()
