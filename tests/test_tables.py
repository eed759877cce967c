"""Methods and engines are tables: a new one is one module and one registration, and the command line
takes it with no other file touched (vidcycle.training.methods, vidcycle.runtime.engines)."""

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from conftest import run_cli, write_noisy_images
from vidcycle.models.frames import RunsBatches
from vidcycle.models.modelfile import read_info
from vidcycle.models.nets import build_generator
from vidcycle.models.store import models_dir
from vidcycle.runtime import engines
from vidcycle.runtime.engines import EngineRecord
from vidcycle.training import methods, trainer
from vidcycle.training.exports import export_states
from vidcycle.training.gan import generator_spec, pads_keep_dtype
from vidcycle.training.methods import X_TO_Y, MethodRecord
from vidcycle.training.recipe import load_recipe
from vidcycle.training.run import to_device

# ---------------------------------------------------------------- a toy method: this block is all it takes


@dataclass
class Toy:
    """G alone, pulled towards y by L1: no adversary, just enough to run on the scaffold."""

    data: object
    g: torch.nn.Module
    optimizer: torch.optim.Optimizer
    label: str = "train"
    loss_panels: dict = field(default_factory=lambda: {"toy": ("l1",)})

    def step(self, run, batch, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch, run.device)
        self.optimizer.zero_grad(set_to_none=True)
        with run.amp.autocast():
            loss = (self.g(batch["x"]) - batch["y"]).abs().mean()
        run.amp.backward_step(loss, self.optimizer)
        run.amp.end_step()
        return {"l1": float(loss.detach())}

    def sample_rows(self, run):
        real_x = self.data.held_x.to(run.device)
        with run.amp.autocast():
            return [("real x", real_x), ("G(x)", self.g(real_x))]

    def state(self, run, all_ranks):
        return {"nets": {"g_xy": self.g.state_dict()}, "optimizer": self.optimizer.state_dict()}

    def restore(self, run, state):
        self.g.load_state_dict(state["nets"]["g_xy"])
        self.optimizer.load_state_dict(state["optimizer"])

    def checkpointed(self, run):
        pass

    def generator_xy(self):
        return self.g

    def generators(self):
        return {"g_xy": self.g}

    def score(self, run):
        return None

    def export(self, run):
        return export_states(run, {"g_xy": self.g.state_dict()})

    def summary(self, run):
        return "toy: G alone, L1 to y"


def build_toy(recipe, data, device, dist):
    torch.manual_seed(recipe.seed)
    g = pads_keep_dtype(build_generator(generator_spec(recipe))).to(device)
    return Toy(data, g, torch.optim.Adam(g.parameters(), lr=recipe.optim.lr))


TOY = MethodRecord(name="toy", defaults={"name": "toy"},
                   summary="G alone, L1 towards y", loss_names=("l1",), exports=(X_TO_Y,))

# ----------------------------------------------------------------


@pytest.fixture
def toy_method():
    trainer.register_method(TOY, build_toy)
    yield TOY
    methods._TABLE.pop("toy")
    trainer.BUILDERS.pop("toy")


def test_a_method_registered_in_one_call_trains_and_exports_through_the_cli(toy_method, tmp_path):
    x = write_noisy_images(tmp_path / "x", 3, (200, 80, 40), seed=0, size=(40, 36))
    y = write_noisy_images(tmp_path / "y", 3, (40, 80, 200), seed=1, size=(40, 36))
    result = run_cli("train", "--x", x, "--y", y, "--recipe", "tiny", "--set", "method=toy", "--max-steps", 2,
                     "--workers", 0, "--precision", "fp32", "--name", "toyx2y", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert sorted(p.name for p in models_dir().glob("*.safetensors")) == ["toyx2y.safetensors"]  # X -> Y only
    assert read_info(models_dir() / "toyx2y.safetensors").method == "toy"
    resumed = run_cli("train", "--resume", tmp_path / "run", "--max-steps", 3, "--workers", 0)
    assert resumed.exit_code == 0, resumed.output


def test_a_method_the_table_lacks_is_refused_naming_those_it_has():
    with pytest.raises(Exception) as raised:
        load_recipe(None, {"method": "toy"})
    assert "method: 'toy' is not one of cyclegan, cut, fastcut" in str(raised.value)


def test_a_registered_method_refuses_the_settings_of_others(toy_method):
    assert load_recipe(None, {"method": "toy"}).one_sided
    with pytest.raises(Exception) as raised:
        load_recipe(None, {"method": "toy", "loss.cycle": 3.0, "nce.weight": 2.0})
    assert "loss.cycle: a cyclegan setting" in str(raised.value) and "nce: settings of method cut" in str(raised.value)


def test_a_method_with_a_record_and_no_builder_is_refused_in_one_line(tmp_path):
    methods.register(MethodRecord(name="unbuilt", summary="a record alone", exports=(X_TO_Y,)))
    try:
        x = write_noisy_images(tmp_path / "x", 2, (200, 80, 40), seed=0, size=(40, 36))
        y = write_noisy_images(tmp_path / "y", 2, (40, 80, 200), seed=1, size=(40, 36))
        result = run_cli("train", "--x", x, "--y", y, "--recipe", "tiny", "--set", "method=unbuilt", "--max-steps",
                         1, "--workers", 0, "--name", "unbuiltx2y", "--out", tmp_path / "run")
    finally:
        methods._TABLE.pop("unbuilt")
    assert result.exit_code != 0
    assert "method unbuilt has a record but no builder" in result.output and "Traceback" not in result.output


def test_recipes_of_every_method_are_read_without_torch_or_any_method_code():
    script = ("import sys\n"
              "from vidcycle.training.recipe import load_recipe\n"
              "for method in ('cyclegan', 'cut', 'fastcut'):\n"
              "    assert load_recipe(None, {'method': method}).method == method\n"
              "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('vidcycle.training.cyclegan', "
              "'vidcycle.training.contrastive'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_method_s_defaults_are_its_record_s_values_over_the_paper_s_recipe():
    fastcut = load_recipe(None, {"method": "fastcut"})
    assert (fastcut.name, fastcut.nce.weight, fastcut.nce.identity, fastcut.schedule.epochs) == ("fastcut", 10.0,
                                                                                                 False, 150)
    assert fastcut.optim == load_recipe(None).optim and fastcut.nce.patches == 256  # the rest: the paper's, CUT's


# ---------------------------------------------------------------- a toy engine: this block is all it takes

class Negative(RunsBatches):
    """Not a generator at all: every frame comes out as its negative, so the output shows who ran."""

    precision = "fp32"
    calls = 0

    def run(self, batch):
        Negative.calls += 1
        return -batch.float()


TOY_ENGINE = EngineRecord("toy", "the toy engine", load=lambda path, device, precision, loaded=None: Negative())

# ----------------------------------------------------------------


@pytest.fixture
def toy_engine():
    engines.register(TOY_ENGINE)
    yield TOY_ENGINE
    engines._TABLE.pop("toy")


def test_an_engine_registered_in_one_call_runs_apply_through_the_cli(toy_engine, tiny_model_file, tmp_path):
    import cv2
    picture = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), picture)
    result = run_cli("apply", tmp_path / "a.png", "-m", tiny_model_file, "--engine", "toy", "--device", "cpu",
                     "-o", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    assert Negative.calls >= 1
    assert np.array_equal(cv2.imread(str(tmp_path / "b.png")), 255 - picture)
    assert "toy" in engines.engine_names() and engines.pick_engine("auto", torch.device("cpu"), "fp32") != "toy"


def test_an_engine_the_table_lacks_is_refused_naming_those_it_has(tiny_model_file, tmp_path):
    result = run_cli("apply", tmp_path / "a.png", "-m", tiny_model_file, "--engine", "toy")
    assert result.exit_code == 2 and "'toy' is not one of 'auto', 'torch', 'onnxruntime'" in result.output
