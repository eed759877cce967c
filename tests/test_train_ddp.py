"""DistributedDataParallel on the CPU: two gloo processes train together, hold identical weights,
and only rank 0 writes anything."""

import pytest
import torch
import torch.multiprocessing as mp

from conftest import as_rank, free_port, write_noisy_images


def write_images(folder, count, colour, seed):
    return write_noisy_images(folder, count, colour, seed=seed, spread=60, size=(44, 36))


METHODS = {"cyclegan": ({}, ("g_xy", "g_yx", "d_x", "d_y"), ["a2b.safetensors", "b2a.safetensors"]),
           "cut": ({"method": "cut", "nce.layers": "0,4,7,10"}, ("g_xy", "d_y", "head"), ["a2b.safetensors"])}


def _rank(rank, root, port, method="cyclegan"):
    as_rank(rank, port, VIDCYCLE_HOME=str(root / f"home{rank}"))
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    from vidcycle.training.run import Run
    from vidcycle.training.trainer import RunOptions, train

    def keep_weights(self, original=Run.close):
        # Test spy: what each rank holds when training ends.
        torch.save(self.method.nets.state_dict(), root / f"weights{rank}.pt")
        self.loader.sampler.set_epoch(0)
        torch.save(torch.tensor(list(self.loader.sampler)), root / f"shard{rank}.pt")
        original(self)
    Run.close = keep_weights
    recipe = load_recipe(shipped_recipes()["tiny"], {"schedule.checkpoint_every": 2, "schedule.log_every": 1,
                                                     **METHODS[method][0]})
    # Rank 1 is pointed at its own folder: if it wrote anything, that folder would appear.
    out = root / ("run" if rank == 0 else "run-rank1")
    train(recipe, RunOptions(x_inputs=[root / "x"], y_inputs=[root / "y"], out=out, name="a2b", workers=0,
                             precision="fp32", max_steps=3, cache_dir=root / "cache"))


@pytest.mark.parametrize("method", METHODS)
def test_two_gloo_processes_hold_identical_weights_and_only_rank0_writes(tmp_path, method):
    _, nets, exported = METHODS[method]
    write_images(tmp_path / "x", 8, (200, 80, 40), 0)
    write_images(tmp_path / "y", 8, (40, 80, 200), 1)
    mp.spawn(_rank, args=(tmp_path, free_port(), method), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in (0, 1))
    assert set(rank0) == set(nets)
    for net in nets:
        for key, value in rank0[net].items():
            assert torch.equal(value, rank1[net][key]), (net, key)
    from vidcycle.training.recipe import recipe_from_dict
    from vidcycle.models.nets import GeneratorSpec, build_generator
    from vidcycle.training.run_folder import load_checkpoint
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["iteration"] == 3
    assert all(torch.equal(v, saved["nets"]["g_xy"][k]) for k, v in rank0["g_xy"].items())
    recipe = recipe_from_dict(saved["recipe"])
    torch.manual_seed(recipe.seed)  # as the run built its first generator
    initial = build_generator(GeneratorSpec(n_blocks=recipe.model.n_blocks, ngf=recipe.model.ngf))
    assert not all(torch.equal(v, initial.state_dict()[k]) for k, v in rank0["g_xy"].items())  # it trained
    shards = [set(torch.load(tmp_path / f"shard{r}.pt").tolist()) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # each rank its own shard
    assert not (tmp_path / "run-rank1").exists()
    assert not (tmp_path / "home1" / "models").exists()  # rank 1 exported nothing
    assert sorted(p.name for p in (tmp_path / "home0" / "models").iterdir()) == exported
    assert (tmp_path / "run" / "losses.jsonl").exists() and (tmp_path / "run" / "samples").is_dir()


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """The documented command: torchrun --nproc_per_node=2 -m vidcycle train ... (gloo on CPU)."""
    import os
    import subprocess
    import sys
    write_images(tmp_path / "x", 8, (200, 80, 40), 0)
    write_images(tmp_path / "y", 8, (40, 80, 200), 1)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(free_port()), "-m", "vidcycle", "train", "--x", str(tmp_path / "x"), "--y", str(tmp_path / "y"),
               "--recipe", "tiny", "--workers", "0", "--max-steps", "3", "--name", "a2b", "--out",
               str(tmp_path / "run"), "--precision", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["a2b", "b2a"]  # rank 0 alone reports and exports
    assert "2 processes" in result.stderr


def _rank_resume(rank, root, ports):
    """Per rank: 4 steps straight, then 2 steps, stop, and resume to 4 (each run its own process group)."""
    import os
    as_rank(rank, VIDCYCLE_HOME=str(root / "home"))
    from vidcycle.training.recipe import load_recipe, shipped_recipes
    from vidcycle.training.trainer import RunOptions, resume, train
    # A pool of one: from the second step on, each rank's pool swaps by its own RNG.
    recipe = load_recipe(shipped_recipes()["tiny"], {"schedule.checkpoint_every": 2, "optim.pool_size": 1})
    options = dict(x_inputs=[root / "x"], y_inputs=[root / "y"], workers=0, precision="fp32", export=False,
                   cache_dir=root / "cache")
    for port, out, steps in ((ports[0], "straight", 4), (ports[1], "split", 2)):
        os.environ["MASTER_PORT"] = str(port)
        train(recipe, RunOptions(out=root / out, max_steps=steps, **options))
    os.environ["MASTER_PORT"] = str(ports[2])
    resume(root / "split", RunOptions(max_steps=4, workers=0, export=False))


def test_torchrun_resume_continues_exactly_on_every_rank(tmp_path):
    """Every rank's pools and RNG are in the checkpoint: 4 steps straight == 2, stop, resume, 2 more."""
    write_images(tmp_path / "x", 8, (200, 80, 40), 0)
    write_images(tmp_path / "y", 8, (40, 80, 200), 1)
    mp.spawn(_rank_resume, args=(tmp_path, [free_port() for _ in range(3)]), nprocs=2, join=True)
    from vidcycle.training.run_folder import load_checkpoint
    straight, split = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "split"))
    assert straight["iteration"] == split["iteration"] == 4
    assert len(straight["ranks"]) == len(split["ranks"]) == 2
    for net in ("g_xy", "g_yx", "d_x", "d_y"):
        for key, value in straight["nets"][net].items():
            assert torch.equal(value, split["nets"][net][key]), (net, key)
    for rank in (0, 1):
        for domain in ("x", "y"):
            assert torch.equal(straight["ranks"][rank]["pools"][domain]["images"],
                               split["ranks"][rank]["pools"][domain]["images"])
    assert not torch.equal(straight["ranks"][0]["pools"]["x"]["images"],
                           straight["ranks"][1]["pools"]["x"]["images"])  # the ranks' pools are their own
