"""Training: the paper's step and its parts, the CLI end to end, the frame cache, recipes, resume, export."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli, write_clip, write_noisy_images
from vidcycle.errors import RecipeError
from vidcycle.training.amp import Amp
from vidcycle.training.cyclegan import ImagePool, build_nets, build_optimizers, stability_motions, train_step
from vidcycle.training.losses import gan_loss, move, moved_output_loss, temporal_loss
from vidcycle.training.recipe import load_recipe, recipe_from_dict, shipped_recipes
from vidcycle.training.run_folder import CHECKPOINT, direction_names, load_checkpoint
from vidcycle.training.schedule import Schedule

@pytest.fixture
def domains(tmp_path):
    """X: a short synthetic clip and three photos; Y: four photos."""
    x = write_noisy_images(tmp_path / "summer", 3, (60, 160, 60))
    write_clip(x / "clip.mp4", frames=8, size=(48, 40))
    y = write_noisy_images(tmp_path / "winter", 4, (220, 220, 240), seed=1)
    return x, y


# ---------------------------------------------------------------- parts of the step

def test_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(3, seed=0)
    first = [torch.full((1, 3, 2, 2), float(i)) for i in range(3)]
    for image in first:
        assert torch.equal(pool.query(image), image)  # filling: the new image comes back
    returned_old = 0
    for i in range(200):
        new = torch.full((1, 3, 2, 2), 100.0 + i)
        out = pool.query(new)
        stored = {float(image[0, 0, 0, 0]) for image in pool.images}
        if torch.equal(out, new):
            assert 100.0 + i not in stored or len(stored) == 3
        else:
            returned_old += 1
            assert 100.0 + i in stored  # the new image took the returned one's place
        assert len(pool.images) == 3
    assert 70 < returned_old < 130  # about half


def test_pool_zero_is_pass_through_and_state_round_trips():
    assert torch.equal(ImagePool(0).query(torch.ones(2, 3, 4, 4)), torch.ones(2, 3, 4, 4))
    pool = ImagePool(4, seed=3)
    for i in range(6):
        pool.query(torch.rand(2, 3, 4, 4))
    copy = ImagePool(4, seed=99)
    copy.load_state_dict(pool.state_dict(), "cpu")
    probe = torch.rand(3, 3, 4, 4)
    assert torch.equal(pool.query(probe), copy.query(probe))


def test_schedule_matches_the_reference_rule():
    schedule = Schedule(constant=100, decay=100, per_unit=10)  # epochs of 10 iterations
    assert schedule.total_iterations == 2000
    assert schedule.lr_factor(0) == 1.0 and schedule.lr_factor(999) == 1.0
    assert schedule.lr_factor(1000) == pytest.approx(1 - 1 / 101)
    assert schedule.lr_factor(1999) == pytest.approx(1 / 101)
    by_iteration = Schedule.from_recipe(load_recipe(overrides={"schedule.iterations": 4,
                                                               "schedule.iterations_decay": 4}), 99)
    assert by_iteration.total_iterations == 8
    assert [round(by_iteration.lr_factor(i), 3) for i in range(8)] == [1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2]


def test_losses():
    score = torch.full((1, 1, 3, 3), 0.5)
    assert gan_loss(score, True).item() == pytest.approx(0.25)
    assert gan_loss(score, False).item() == pytest.approx(0.25)
    assert gan_loss(torch.zeros(1, 1, 2, 2), True, "vanilla").item() == pytest.approx(np.log(2))
    x, x_next = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    fake = torch.zeros(2, 3, 4, 4, requires_grad=True)
    # Output did not change while the input did: penalised, but only for samples with a neighbour.
    assert temporal_loss(fake, fake, x, x_next, torch.tensor([True, False])).item() == pytest.approx(1.0)
    none = temporal_loss(fake, fake, x, x_next, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad
    assert temporal_loss(fake, fake + 1, x, x_next, torch.tensor([True, True])).item() == 0.0


def tiny_recipe(**overrides):
    return load_recipe(shipped_recipes()["tiny"], overrides)


def test_train_step_updates_generators_then_discriminators_and_reports_losses():
    recipe = tiny_recipe()
    nets = build_nets(recipe)
    optimizers = build_optimizers(nets, recipe)
    pools = {"x": ImagePool(50, 1), "y": ImagePool(50, 2)}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
    batch = {"x": torch.rand(2, 3, 32, 32) * 2 - 1, "y": torch.rand(2, 3, 32, 32) * 2 - 1}
    losses = train_step(nets, optimizers, pools, batch, recipe.loss, Amp(torch.device("cpu"), torch.float32))
    assert set(losses) == {"g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "temporal", "stability",
                           "d_x", "d_y"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses.values())
    assert losses["idt_x"] > 0 and losses["temporal"] == losses["stability"] == 0
    for name, net in nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
        assert all(p.requires_grad for p in net.parameters())  # discriminators unfrozen after their step
    assert len(pools["x"].images) == 2 and len(pools["y"].images) == 2


def test_the_optimisers_are_the_papers_adam_fused_on_the_cpu():
    recipe = tiny_recipe(**{"optim.lr": 0.01})
    nets = build_nets(recipe)
    optimizers = build_optimizers(nets, recipe)
    params = list(nets.g_xy.parameters()) + list(nets.g_yx.parameters())
    start = [p.detach().clone() for p in params]
    plain_params = [p.detach().clone().requires_grad_(True) for p in params]
    plain = torch.optim.Adam(plain_params, lr=0.01, betas=(recipe.optim.beta1, recipe.optim.beta2))
    assert optimizers.g.defaults["fused"] and optimizers.d.defaults["fused"]
    assert not plain.defaults["fused"] and not plain.defaults["foreach"]  # torch's loop on the CPU
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for fused_param, plain_param in zip(params, plain_params):
            fused_param.grad = torch.randn(fused_param.shape, generator=generator)
            plain_param.grad = fused_param.grad.clone()
        optimizers.g.step()
        plain.step()
    for fused_param, plain_param in zip(params, plain_params):
        torch.testing.assert_close(fused_param, plain_param, rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(fused_param, before) for fused_param, before in zip(params, start))


def test_identity_weight_zero_skips_the_identity_forward():
    recipe = tiny_recipe(**{"loss.identity": 0})
    nets = build_nets(recipe)
    calls = []
    nets.g_xy.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    batch = {"x": torch.rand(1, 3, 32, 32), "y": torch.rand(1, 3, 32, 32)}
    losses = train_step(nets, build_optimizers(nets, recipe), {"x": ImagePool(0), "y": ImagePool(0)}, batch,
                        recipe.loss, Amp(torch.device("cpu"), torch.float32))
    assert losses["idt_x"] == losses["idt_y"] == 0.0
    assert len(calls) == 2  # G(x) and G(F(y)) only


def test_lazy_identity_runs_every_nth_iteration_weighted_n_times():
    every_step = tiny_recipe()
    lazy = tiny_recipe(**{"loss.identity_every": 4})
    batch = {"x": torch.rand(1, 3, 32, 32) * 2 - 1, "y": torch.rand(1, 3, 32, 32) * 2 - 1}

    def step(recipe, iteration):
        torch.manual_seed(0)
        nets = build_nets(recipe)
        images = []
        nets.g_xy.register_forward_hook(lambda module, args, out: images.append(args[0].shape[0]))
        losses = train_step(nets, build_optimizers(nets, recipe), {"x": ImagePool(0), "y": ImagePool(0)}, batch,
                            recipe.loss, Amp(torch.device("cpu"), torch.float32), iteration)
        return losses, sum(images)

    reference, reference_images = step(every_step, 5)
    on, on_images = step(lazy, 8)
    off, off_images = step(lazy, 9)
    assert reference_images == on_images == 3 and off_images == 2  # G(x), G(F(y)), and G(y) when it is on
    assert on["idt_x"] == pytest.approx(4 * reference["idt_x"], rel=1e-5)
    assert on["idt_y"] == pytest.approx(4 * reference["idt_y"], rel=1e-5)
    assert off["idt_x"] == off["idt_y"] == 0.0
    assert on["cycle_x"] == pytest.approx(reference["cycle_x"], rel=1e-5)


def papers_step_one_pass_at_a_time(nets, batch, loss):
    """The reference implementation's step, each network called on one input at a time (pools of size 0):
    its losses, and the gradients it leaves on each network."""
    g_xy, g_yx, d_x, d_y = nets.g_xy, nets.g_yx, nets.d_x, nets.d_y
    real_x, real_y, lam = batch["x"], batch["y"], loss.cycle
    fake_y, fake_x = g_xy(real_x), g_yx(real_y)
    rec_x, rec_y = g_yx(fake_y), g_xy(fake_x)
    losses = {"g_xy": gan_loss(d_y(fake_y), True), "g_yx": gan_loss(d_x(fake_x), True),
              "cycle_x": (rec_x - real_x).abs().mean() * lam, "cycle_y": (rec_y - real_y).abs().mean() * lam,
              "idt_y": (g_xy(real_y) - real_y).abs().mean() * lam * loss.identity,
              "idt_x": (g_yx(real_x) - real_x).abs().mean() * lam * loss.identity}
    torch.autograd.backward(sum(losses.values()), inputs=[*g_xy.parameters(), *g_yx.parameters()])
    losses["d_y"] = 0.5 * (gan_loss(d_y(real_y), True) + gan_loss(d_y(fake_y.detach()), False))
    losses["d_x"] = 0.5 * (gan_loss(d_x(real_x), True) + gan_loss(d_x(fake_x.detach()), False))
    torch.autograd.backward(losses["d_x"] + losses["d_y"], inputs=[*d_x.parameters(), *d_y.parameters()])
    return {name: float(value.detach()) for name, value in losses.items()}


def test_the_batched_step_is_the_papers_step_one_pass_at_a_time():
    """The step runs the passes that share a network as one batch; instance norm keeps each image to itself,
    so its losses and gradients are those of separate passes."""
    recipe = tiny_recipe()
    torch.manual_seed(3)
    nets = build_nets(recipe)
    twin = build_nets(recipe)
    for name, net in nets.items():
        getattr(twin, name).load_state_dict(net.state_dict())
    batch = {"x": torch.rand(2, 3, 32, 32) * 2 - 1, "y": torch.rand(2, 3, 32, 32) * 2 - 1}
    optimizers = build_optimizers(nets, recipe)
    optimizers.g.step = optimizers.d.step = lambda: None  # compare the gradients, before any update
    losses = train_step(nets, optimizers, {"x": ImagePool(0), "y": ImagePool(0)}, batch, recipe.loss,
                        Amp(torch.device("cpu"), torch.float32))
    expected = papers_step_one_pass_at_a_time(twin, batch, recipe.loss)
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, rel=1e-5), name
    for name, net in nets.items():
        mine = torch.cat([p.grad.flatten() for p in net.parameters()])
        theirs = torch.cat([p.grad.flatten() for p in getattr(twin, name).parameters()])
        assert float((mine - theirs).norm()) <= 1e-5 * float(theirs.norm()), name


def test_temporal_loss_enters_the_step():
    recipe = tiny_recipe(**{"loss.temporal": 2.0})
    nets = build_nets(recipe)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = {"x": x, "y": torch.rand(2, 3, 32, 32), "x_next": x.roll(1, -1), "has_next": torch.tensor([True, False])}
    losses = train_step(nets, build_optimizers(nets, recipe), {"x": ImagePool(0), "y": ImagePool(0)}, batch,
                        recipe.loss, Amp(torch.device("cpu"), torch.float32))
    assert losses["temporal"] > 0


def test_the_stability_term_asks_each_generator_to_move_with_its_input():
    """||G(M(x)) - M(G(x))|| + ||F(M(y)) - M(F(y))||, one motion per crop drawn from the given generator, on top
    of the paper's terms, which it leaves as they were; its gradient reaches both generators."""
    torch.manual_seed(4)
    plain, steady = tiny_recipe(), tiny_recipe(**{"loss.stability": 2.0})
    batch = {"x": torch.rand(2, 3, 32, 32) * 2 - 1, "y": torch.rand(2, 3, 32, 32) * 2 - 1}
    first = build_nets(plain)

    def step(recipe):
        nets = build_nets(recipe)
        for name, net in first.items():
            getattr(nets, name).load_state_dict(net.state_dict())
        optimizers = build_optimizers(nets, recipe)
        optimizers.g.step = optimizers.d.step = lambda: None  # compare the gradients, before any update
        losses = train_step(nets, optimizers, {"x": ImagePool(0), "y": ImagePool(0)}, batch, recipe.loss,
                            Amp(torch.device("cpu"), torch.float32), motions=torch.Generator().manual_seed(7))
        return losses, nets

    without, _ = step(plain)
    losses, nets = step(steady)
    motion_x, motion_y = stability_motions(batch["x"], batch["y"], torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = 2.0 * sum(moved_output_loss(net(move(real, motion)), net(real), motion, 8) for net, real, motion
                             in ((first.g_xy, batch["x"], motion_x), (first.g_yx, batch["y"], motion_y)))
    assert losses["stability"] == pytest.approx(float(expected), rel=1e-5) and losses["stability"] > 0
    for name in ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "d_x", "d_y"):
        assert losses[name] == pytest.approx(without[name], rel=1e-5), name
    _, bare = step(plain)
    for name in ("g_xy", "g_yx"):
        moved = torch.cat([p.grad.flatten() for p in getattr(nets, name).parameters()])
        still = torch.cat([p.grad.flatten() for p in getattr(bare, name).parameters()])
        assert float((moved - still).norm()) > 1e-3 * float(still.norm()), name


def test_a_stability_term_on_crops_too_small_for_its_margin_is_refused(domains, tmp_path):
    x, y = domains
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--set", "loss.stability=1", "--set", "data.crop_size=24",
                     "--set", "data.load_size=24", "--out", tmp_path / "run")
    assert result.exit_code == RecipeError.exit_code and result.output.count("\n") == 1
    assert "loss.stability leaves 8 px out" in result.output and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- recipes

def test_shipped_recipes_load_and_state_only_differences():
    shipped = shipped_recipes()
    for name in ("horse2zebra", "summer2winter", "monet2photo", "cyclegan128", "cyclegan128-budget", "cpu-small",
                 "tiny", "cut128", "fastcut128", "fastcut-cpu-small"):
        recipe = load_recipe(shipped[name])
        assert recipe.name == name
    for name, method in (("cut128", "cut"), ("fastcut128", "fastcut"), ("fastcut-cpu-small", "fastcut")):
        assert load_recipe(shipped[name]).method == method
    # the one-sided recipes are their CycleGAN counterparts' network and data, learned another way
    for one_sided, counterpart in (("cut128", "cyclegan128"), ("fastcut-cpu-small", "cpu-small")):
        a, b = load_recipe(shipped[one_sided]), load_recipe(shipped[counterpart])
        assert (a.model, a.data) == (b.model, b.data)
    assert load_recipe(shipped["summer2winter"]).model.n_blocks == 9
    assert load_recipe(shipped["summer2winter"]).data.crop_size == 256
    small = load_recipe(shipped["cyclegan128"])
    assert (small.model.n_blocks, small.data.load_size, small.data.crop_size) == (6, 143, 128)
    assert load_recipe(shipped["monet2photo"]).loss.identity == 0.5
    budget = load_recipe(shipped["cyclegan128-budget"])  # cyclegan128 at half width, decaying from the start, steadied
    assert (budget.model, budget.data) == (replace(small.model, ngf=32), replace(small.data, keep_aspect=True))
    assert (budget.schedule.epochs, budget.schedule.epochs_decay) == (0, 200)
    assert budget.loss == replace(small.loss, stability=10)


def test_recipe_errors_through_the_cli_exit_with_the_recipe_code(domains, tmp_path):
    x, y = domains
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--set", "optim.lrr=0.1", "--set", "model.ngf=-3",
                     "--out", tmp_path / "run")
    assert result.exit_code == RecipeError.exit_code, result.output
    assert "optim.lrr: unknown key (did you mean 'optim.lr'?)" in result.output
    assert "model.ngf" in result.output and "minimum" in result.output
    assert result.output.count("\n") == 1  # one error line, naming both problems
    result = run_cli("train", "--x", x, "--y", y, "--recipe", "no-such-recipe")
    assert result.exit_code == RecipeError.exit_code and "tiny" in result.output
    assert not (tmp_path / "run").exists()


def test_direction_names():
    assert direction_names("summer2winter", None, [], []) == {
        "name": "summer2winter", "reverse_name": "winter2summer", "x_domain": "summer", "y_domain": "winter"}
    plain = direction_names("style", None, ["/data/photos"], ["/data/monet"])
    assert (plain["reverse_name"], plain["x_domain"], plain["y_domain"]) == ("style-reverse", "photos", "monet")
    assert direction_names(None, None, ["/a/horse/"], ["/b/zebra"])["name"] == "horse2zebra"
    assert direction_names(None, None, ["/a/summer_clips"], ["/b/winter_clips"])["reverse_name"] == \
        "winter_clips2summer_clips"


def test_a_versioned_name_reverses_as_eval_looks_for_it(domains, tmp_path):
    """One x2y rule for training and eval: a suffix or prefix stays where it is."""
    from vidcycle.quality.evaluation import default_reverse_model
    x, y = domains
    result = run_cli("train", "--x", x, "--y", y, "--name", "photo2monet_v2", *TINY, "--max-steps", 1,
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["photo2monet_v2", "monet2photo_v2"]
    info = json.loads(run_cli("models", "info", "monet2photo_v2", "--json").stdout)
    assert (info["from"], info["to"]) == ("monet", "photo")
    assert default_reverse_model("photo2monet_v2") == "monet2photo_v2"
    scored = run_cli("eval", "--model", "photo2monet_v2", "--x", y, "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["cycle"]["reverse_model"] == "monet2photo_v2"
    assert direction_names("demo-summer2winter", None, [], [])["reverse_name"] == "demo-winter2summer"


# ---------------------------------------------------------------- end to end

def test_train_cli_runs_exports_and_reuses_the_frame_cache(domains, tmp_path, monkeypatch):
    import vidcycle.training.framecache as data
    decodes = []
    real_sample_clip = data.sample_clip
    monkeypatch.setattr(data, "sample_clip", lambda *a, **k: decodes.append(a[0]) or real_sample_clip(*a, **k))
    x, y = domains
    run = tmp_path / "run"
    result = run_cli("train", "--x", x, "--y", y, "--name", "summer2winter", *TINY, "--max-steps", 6,
                     "--set", "schedule.checkpoint_every=4", "--set", "schedule.log_every=2", "--out", run)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["summer2winter", "winter2summer"]
    assert len(decodes) == 1  # the clip, once
    assert "recipe: name=tiny" in result.stderr and "model.ngf=8" in result.stderr
    assert load_checkpoint(run / CHECKPOINT)["iteration"] == 6
    assert recipe_from_dict(load_checkpoint(run / CHECKPOINT)["recipe"]).schedule.checkpoint_every == 4
    assert (run / "recipe.toml").is_file() and (run / "loss_curves.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [2, 4, 6] and "cycle_x" in rows[0]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["iter_000000.png", "iter_000006.png"]
    listed = run_cli("models", "info", "winter2summer", "--json")
    info = json.loads(listed.stdout)
    assert (info["from"], info["to"], info["train_size"], info["ngf"]) == ("winter", "summer", 32, 8)
    assert info["recipe"]["schedule"]["checkpoint_every"] == 4

    again = run_cli("train", "--x", x, "--y", y, "--name", "summer2winter", *TINY, "--max-steps", 2,
                    "--out", tmp_path / "run2", "--no-export")
    assert again.exit_code == 0, again.output
    assert len(decodes) == 1  # second run: frames come from the cache, nothing decoded


def test_train_refuses_existing_run_folder_and_foreign_store_names(domains, tmp_path, tiny_model_file):
    x, y = domains
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 8 and "--resume" in result.output
    from vidcycle.models.modelfile import load_model_file, save_model
    from vidcycle.models.store import stored_path
    generator, info = load_model_file(tiny_model_file)
    save_model(stored_path("b2a"), generator, info)
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--name", "a2b", "--out", tmp_path / "run3")
    assert result.exit_code == 8 and "'b2a' already exists" in result.output
    assert not (tmp_path / "run3").exists()  # refused before anything was written


def test_empty_domain_is_a_training_error(tmp_path, domains):
    x, _ = domains
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"not an image")
    result = run_cli("train", "--x", x, "--y", tmp_path / "empty", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 10 and "--y" in result.output and "no usable frames" in result.output


@pytest.mark.parametrize("term, capability", [([], None), (["--set", "loss.stability=1"], None),
                                              (["--set", "model.ngf=64"], "AVX2")],
                         ids=["paper", "stability", "winograd"])
def test_resume_continues_exactly(domains, tmp_path, monkeypatch, term, capability):
    """6 iterations straight == 3, stop, resume, 3 more: nets, optimizers, pools, RNG and data order, the
    stability term's camera motions, and with Winograd's convolutions (as on an AVX2 CPU)."""
    if capability:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    x, y = domains
    common = ["--x", x, "--y", y, *TINY, "--no-export", "--set", "schedule.checkpoint_every=3",
              "--set", "optim.pool_size=2", "--set", "schedule.log_every=1", *term]
    straight = run_cli("train", *common, "--max-steps", 6, "--out", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output
    first = run_cli("train", *common, "--max-steps", 3, "--out", tmp_path / "split")
    assert first.exit_code == 0, first.output
    second = run_cli("train", "--resume", tmp_path / "split", "--max-steps", 6, "--workers", "0", "--no-export")
    assert second.exit_code == 0, second.output
    said = [line for line in second.stderr.splitlines() if "continuing" in line]
    assert len(said) == 1 and re.fullmatch(r"vidcycle: continuing: iteration 3 of \d+ already done \(.*split\)", said[0])
    a, b = load_checkpoint(tmp_path / "straight" / CHECKPOINT), load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert a["iteration"] == b["iteration"] == 6
    for net in ("g_xy", "g_yx", "d_x", "d_y"):
        for key, value in a["nets"][net].items():
            assert torch.equal(value, b["nets"][net][key]), (net, key)
    assert torch.equal(a["ranks"][0]["pools"]["x"]["images"], b["ranks"][0]["pools"]["x"]["images"])
    assert a["optimizers"]["g"]["state"][0]["step"] == b["optimizers"]["g"]["state"][0]["step"]
    logs = [[json.loads(line) for line in (tmp_path / run / "losses.jsonl").open()] for run in ("straight", "split")]
    assert [row["iteration"] for row in logs[1]] == [1, 2, 3, 4, 5, 6]
    for row_a, row_b in zip(*logs):
        # "end" is where each row's run was to stop: 6 straight, 3 for the rows before the stop
        assert {k: v for k, v in row_a.items() if k not in ("time", "end")} == \
            {k: v for k, v in row_b.items() if k not in ("time", "end")}


def test_resume_refuses_recipe_flags_and_missing_checkpoints(tmp_path, domains):
    x, _ = domains
    result = run_cli("train", "--resume", tmp_path, "--x", x)
    assert result.exit_code == 2 and "--resume continues" in result.output
    result = run_cli("train", "--resume", tmp_path)
    assert result.exit_code == 10 and "not a vidcycle run folder" in result.output


def test_exported_model_reproduces_the_checkpoint_generator(domains, tmp_path):
    from vidcycle.models.modelfile import load_model_file
    from vidcycle.models.nets import build_generator
    from vidcycle.models.store import stored_path
    from vidcycle.training.gan import generator_spec
    x, y = domains
    run = tmp_path / "run"
    assert run_cli("train", "--x", x, "--y", y, *TINY, "--max-steps", 2, "--out", run, "--no-export").exit_code == 0
    result = run_cli("models", "export", run, "--name", "warm2cold")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["warm2cold", "cold2warm"]
    state = load_checkpoint(run / CHECKPOINT)
    recipe = recipe_from_dict(state["recipe"])
    probe = torch.rand(1, 3, 44, 52) * 2 - 1
    for name, net in (("warm2cold", "g_xy"), ("cold2warm", "g_yx")):
        reference = build_generator(generator_spec(recipe), init=False)
        reference.load_state_dict(state["average"]["nets"][net])  # the averaged weights: the default export
        exported, info = load_model_file(stored_path(name))
        assert info.recipe == state["recipe"] and info.source.startswith("trained: ")
        with torch.no_grad():
            assert torch.equal(exported(probe), reference(probe))
    again = run_cli("models", "export", run, "--name", "warm2cold")
    assert again.exit_code == 0  # the same run may replace its own exports


def test_the_last_checkpoint_is_written_beside_the_last_grid(domains, tmp_path, monkeypatch):
    """The final checkpoint is written on another thread while the last sample grid is drawn; it is whole
    and in place when the run returns (a write that fails: the next test)."""
    import threading

    from vidcycle.training import run_folder
    x, y = domains
    real_save = run_folder.save_checkpoint
    writers = []

    def recorded(path, state):
        writers.append((threading.current_thread().name, state["iteration"]))
        real_save(path, state)

    monkeypatch.setattr(run_folder, "save_checkpoint", recorded)
    result = run_cli("train", "--x", x, "--y", y, *TINY, "--max-steps", 3, "--out", tmp_path / "run", "--no-export")
    assert result.exit_code == 0, result.output
    assert writers == [("vidcycle-checkpoint", 3)]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["iteration"] == 3
    assert (tmp_path / "run" / "samples" / "iter_000003.png").is_file()


def test_a_checkpoint_skips_the_crc32_that_torch_load_never_reads_and_loads_back_exactly(tmp_path):
    """torch.save's per-record CRC32 is pure cost to resume (torch.load does not check it); the setting is
    torch's process-wide one, so it is left as it was found."""
    import zipfile

    from torch.utils.serialization import config

    from vidcycle.training import run_folder
    state = {"format": run_folder.CHECKPOINT_FORMAT, "version": run_folder.CHECKPOINT_VERSION, "iteration": 7,
             "weights": torch.randn(64, 3, 7, 7)}
    run_folder.save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert config.save.compute_crc32 is True
    with zipfile.ZipFile(tmp_path / "checkpoint.pt") as archive:
        assert {record.CRC for record in archive.infolist()} == {0}
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["iteration"] == 7 and torch.equal(loaded["weights"], state["weights"])


def test_a_full_disk_ends_the_run_in_one_line_that_says_how_to_go_on(domains, tmp_path, monkeypatch):
    """torch.save on a full disk: the run ends with one line naming the checkpoint, TrainingError's exit code,
    no half-written checkpoint, and the way on: resume from the last checkpoint, or start again without one."""
    import errno
    import io

    from vidcycle.errors import TrainingError
    from vidcycle.training import run_folder
    x, y = domains
    opened = []

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def open_on_a_disk_that_fills(path, mode):
        opened.append(path)
        return (FullDisk if len(opened) > writable else io.FileIO)(path, mode)

    monkeypatch.setattr(run_folder, "open", open_on_a_disk_that_fills, raising=False)
    said = {}
    for writable, out in ((0, tmp_path / "first"), (1, tmp_path / "second")):
        opened.clear()
        failed = run_cli("train", "--x", x, "--y", y, *TINY, "--max-steps", 3, "--out", out,
                         "--set", "schedule.checkpoint_every=2")
        assert failed.exit_code == TrainingError.exit_code and "Traceback" not in failed.output, failed.output
        said[writable] = failed.output.strip().splitlines()[-1]
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []   # no partial checkpoint left
    assert said[0] == (f"vidcycle: error: {tmp_path / 'first' / CHECKPOINT}: No space left on device; the run "
                       f"stopped at iteration 2: mend that and start it again (it has no checkpoint yet: remove "
                       f"{tmp_path / 'first'} first)")
    assert not (tmp_path / "first" / CHECKPOINT).exists()
    assert said[1] == (f"vidcycle: error: {tmp_path / 'second' / CHECKPOINT}: No space left on device; the run "
                       f"stopped at iteration 3: mend that and continue it from its last checkpoint with "
                       f"vidcycle train --resume {tmp_path / 'second'}")
    assert load_checkpoint(tmp_path / "second" / CHECKPOINT)["iteration"] == 2


def test_a_store_that_cannot_take_the_model_ends_the_run_in_one_line(domains, tmp_path, monkeypatch):
    """The run trained and checkpointed, the export failed (safetensors' error on a full disk): one line that
    names the model file and says how to export again; nothing half-written in the store."""
    from safetensors import SafetensorError

    from vidcycle.errors import TrainingError
    from vidcycle.models import modelfile
    from vidcycle.models.store import stored_path
    x, y = domains

    def full_disk(state, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modelfile, "save_file", full_disk)
    run = tmp_path / "run"
    failed = run_cli("train", "--x", x, "--y", y, *TINY, "--max-steps", 3, "--out", run, "--name", "unsaved")
    assert failed.exit_code == TrainingError.exit_code and "Traceback" not in failed.output, failed.output
    assert failed.output.strip().splitlines()[-1] == (
        f"vidcycle: error: {stored_path('unsaved')}: cannot write the model (Error while serializing: I/O error: "
        f"No space left on device (os error 28)); the run is done and checkpointed at iteration 3: mend that and "
        f"export it with vidcycle models export {run}")
    assert load_checkpoint(run / CHECKPOINT)["iteration"] == 3
    assert not stored_path("unsaved").exists() and list(stored_path("unsaved").parent.glob(".*")) == []
