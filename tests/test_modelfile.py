"""Model files: self-describing, pickle-free, and hostile checkpoints are refused."""

import pickle

import numpy as np
import pytest
import torch

from conftest import reference_state, run_cli
from vidcycle.errors import ModelError
from vidcycle.models.modelfile import ModelInfo, load_model_file, load_reference_checkpoint, read_info, save_model
from vidcycle.models.nets import GeneratorSpec, build_generator
from vidcycle.training.recipe import Recipe, recipe_to_dict


def test_model_file_rebuilds_the_network_from_the_file_alone(tmp_path):
    spec = GeneratorSpec(n_blocks=3, ngf=8)
    net = build_generator(spec).eval()
    recipe = recipe_to_dict(Recipe(name="unit"))
    info = save_model(tmp_path / "m.safetensors", net, ModelInfo(spec, "summer", "winter", 64, recipe, "test"))
    loaded, loaded_info = load_model_file(tmp_path / "m.safetensors")
    assert loaded_info == info and loaded_info.recipe["name"] == "unit"
    assert len(info.content_hash) == 64
    x = torch.rand(1, 3, 20, 28) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), net(x))


def test_damaged_weights_are_detected_by_the_content_hash(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, build_generator(GeneratorSpec(2, 8)), ModelInfo(GeneratorSpec(2, 8)))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash"):
        load_model_file(path)


def test_non_model_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a readable model file"):
        read_info(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = {"model.1.weight": torch.zeros(8, 3, 7, 7), "payload": _RunsCode(marker)}
    with open(path, "wb") as handle:
        pickle.dump(state, handle)  # a plain pickle, as an attacker would ship it
    torch.save({"model.1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, tmp_path / "evil2.pth")
    marker.unlink(missing_ok=True)  # building the files must not leave the marker either
    for evil in (path, tmp_path / "evil2.pth"):
        with pytest.raises(ModelError, match="refused"):
            load_reference_checkpoint(evil)
        result = run_cli("models", "import", str(evil), "--name", "evil")
        assert result.exit_code == ModelError.exit_code
        assert "refused" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    with open(path, "rb") as handle:
        pickle.load(handle)  # the payload is live: plain unpickling does run it
    assert marker.exists()


def test_reference_checkpoint_translates_like_the_reference_network(tmp_path):
    state = reference_state(6, 16)
    torch.save(state, tmp_path / "ref.pth")
    net, spec = load_reference_checkpoint(tmp_path / "ref.pth")
    assert spec == GeneratorSpec(6, 16)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])
    frame = np.random.default_rng(0).integers(0, 255, (31, 47, 3), dtype=np.uint8)
    from vidcycle.runtime.translator import load_model
    out = load_model(tmp_path / "ref.pth", device="cpu", precision="fp32").translate(frame)
    assert out.shape == (31, 47, 3) and out.dtype == np.uint8
