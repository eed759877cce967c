"""Winograd's F(4x4, 3x3) convolutions: the same convolution and gradients as torch's, the same networks,
chosen where they pay (float32 on an AVX2 CPU) and used by training there."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, run_cli, write_noisy_images
from vidcycle.models.nets import GeneratorSpec, NLayerDiscriminator, ResnetGenerator
from vidcycle.runtime import winograd
from vidcycle.runtime.winograd import WinogradConv2d, filters_shared, use_winograd, winograd_conv3x3, winograd_pays
from vidcycle.training.adam import FusedAdam


def relative(a, b):
    return float(((a - b).norm() / b.norm()).detach())


class Transforms:
    """How the transforms run in a test, counting the bands (or whole calls) they transform."""

    def __init__(self, library=None):
        self.library, self.bands = library, 0

    def __getattr__(self, name):      # the C kernels' other functions, uncounted
        return getattr(self.library, name)

    def input_transform(self, *args):
        self.bands += 1
        return self.library.input_transform(*args)


@pytest.fixture(params=["torch operations", "C kernels"])
def transforms(request, monkeypatch):
    """Each test that takes this runs twice: with the transforms as torch operations, and fused with their
    layout changes in the C kernels (`winograd_kernels.c`, built here by the machine's compiler)."""
    if request.param == "torch operations":
        counted = Transforms()
        output_tiles = winograd._output_tiles

        def counting(*args):
            counted.bands += 1
            return output_tiles(*args)
        monkeypatch.setattr(winograd, "_output_tiles", counting)
        monkeypatch.setattr(winograd, "fused_transforms", lambda: None)
        return counted
    library = winograd.fused_transforms()
    if library is None:
        pytest.skip("no C compiler on this machine: the C kernels cannot be built")
    counted = Transforms(library)
    monkeypatch.setattr(winograd, "fused_transforms", lambda: counted)
    return counted


@pytest.mark.parametrize("shape", [(2, 16, 34, 34), (1, 8, 13, 22), (3, 4, 3, 7), (2, 20, 10, 41)],
                         ids=["whole-tiles", "ragged", "one-row", "ragged-channel-block"])
def test_values_and_gradients_are_torchs_convolution(shape, transforms):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    weight = torch.randn(24, shape[1], 3, 3, generator=generator, requires_grad=True)
    bias = torch.randn(24, generator=generator, requires_grad=True)
    expected = F.conv2d(x, weight, bias)
    got = winograd_conv3x3(x, weight, bias)
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-5
    assert transforms.bands == 1     # the whole batch at once where autograd is on
    upstream = torch.randn(expected.shape, generator=generator)
    for mine, theirs in zip(torch.autograd.grad(got, (x, weight, bias), upstream),
                            torch.autograd.grad(expected, (x, weight, bias), upstream)):
        assert relative(mine, theirs) < 1e-5
    unbiased = torch.autograd.grad(winograd_conv3x3(x, weight), (x, weight), upstream)
    for mine, theirs in zip(unbiased, torch.autograd.grad(F.conv2d(x, weight), (x, weight), upstream)):
        assert relative(mine, theirs) < 1e-5


def chained_gradients(seed: int, convolve) -> list:
    """A 16-channel image through three 3 x 3 convolutions that differ in size (16 -> 24 -> 8 -> 24), then
    the gradients of all inputs and weights: each call's temporaries are consumed before the next."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 30, 26, generator=generator, requires_grad=True)
    weights = [torch.randn(out, into, 3, 3, generator=generator, requires_grad=True)
               for into, out in ((16, 24), (24, 8), (8, 24))]
    y = x
    for weight in weights:
        y = torch.relu(convolve(y, weight))
    upstream = torch.randn(y.shape, generator=generator)
    return list(torch.autograd.grad(y, [x, *weights], upstream))


def test_calls_of_other_sizes_in_turns_and_on_two_threads_keep_torchs_gradients(transforms):
    """The C path reuses each thread's transform-domain temporaries from call to call."""
    import threading
    expected = {seed: chained_gradients(seed, F.conv2d) for seed in (0, 1)}
    got = {}

    def work(seed):
        for _ in range(8):
            got[seed] = chained_gradients(seed, winograd_conv3x3)
    threads = [threading.Thread(target=work, args=(seed,)) for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in (0, 1):
        assert all(relative(mine, theirs) < 1e-5 for mine, theirs in zip(got[seed], expected[seed]))
    assert transforms.bands >= 48


@pytest.mark.parametrize("filters, channels", [(24, 20), (5, 3)])
def test_the_weights_transform_and_its_gradient_are_the_matrix_products(filters, channels, transforms):
    """G w G^T of each 3 x 3 filter, as the 36 (C, F) matrices, and the weight's gradient back from them."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(filters, channels, 3, 3, generator=generator, requires_grad=True)
    by_products = (winograd.FILTER_TRANSFORM @ weight.reshape(filters, channels, 9).permute(2, 1, 0).reshape(9, -1))
    by_products = by_products.view(36, channels, filters)
    got = winograd.transformed_filters(weight)
    assert got.shape == (36, channels, filters) and relative(got, by_products) < 1e-6
    upstream = torch.randn(got.shape, generator=generator)
    mine, = torch.autograd.grad(got, weight, upstream)
    theirs, = torch.autograd.grad(by_products, weight, upstream)
    assert relative(mine, theirs) < 1e-6


def test_a_converted_generator_is_the_same_network(monkeypatch):
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: "AuthenticAMD")
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=64, n_blocks=2))  # 256-channel blocks
    before = {key: value.clone() for key, value in net.state_dict().items()}
    parameters = list(net.parameters())
    x = torch.rand(2, 3, 44, 36) * 2 - 1
    expected = net(x)
    assert use_winograd(net) == 4  # the residual blocks' 3x3 convolutions; not the 7x7 nor the strided ones
    assert use_winograd(ResnetGenerator(GeneratorSpec(ngf=32, n_blocks=2))) == 0  # 128 channels: too narrow
    assert sum(isinstance(module, WinogradConv2d) for module in net.modules()) == 4
    assert list(net.parameters()) == parameters and net.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in net.state_dict().items())
    assert relative(net(x), expected) < 1e-5
    with torch.autocast("cpu", torch.bfloat16):  # bf16 is torch's convolution, as before
        assert torch.equal(net(x), ResnetGenerator.forward(net, x))
    assert use_winograd(NLayerDiscriminator(ndf=8)) == 0  # 4x4 kernels


@pytest.mark.parametrize("vendor, converted", [("AuthenticAMD", {64: 4, 32: 0, 16: 0}),
                                               ("GenuineIntel", {64: 4, 32: 4, 16: 0}), ("", {64: 4, 32: 0, 16: 0})])
def test_the_narrowest_convolution_converted_follows_the_cpu(monkeypatch, vendor, converted):
    """128-channel blocks paid on an Intel CPU and lost on an AMD one; 64 channels lost on both."""
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: vendor)
    for ngf, count in converted.items():
        assert use_winograd(ResnetGenerator(GeneratorSpec(ngf=ngf, n_blocks=2))) == count, ngf
    assert use_winograd(ResnetGenerator(GeneratorSpec(ngf=16, n_blocks=2)), floor=64) == 4


def test_calls_that_do_not_pay_run_torchs_convolution(monkeypatch):
    calls = []
    monkeypatch.setattr(winograd, "convolve_transformed", lambda *args: calls.append(args) or torch.zeros(1))
    conv = torch.nn.Conv2d(256, 256, 3)
    assert use_winograd(conv) == 1
    x = torch.rand(1, 256, 8, 8)
    conv(x)
    assert len(calls) == 1
    conv.double()(x.double())
    with torch.autocast("cpu", torch.bfloat16):
        conv.float()(x)
    assert len(calls) == 1


def test_within_a_step_each_weight_is_transformed_once_and_its_changes_are_seen(monkeypatch):
    """A generator runs two or three times in a training step: inside `filters_shared` each convolution's
    weight is transformed once, with the same outputs and gradients; a step of torch's fused Adam (which
    torch does not count as a change) or of training's FusedAdam and a loaded state are seen; leaving keeps
    nothing."""
    transforms = []
    transform = winograd.transformed_filters
    monkeypatch.setattr(winograd, "transformed_filters", lambda weight: transforms.append(1) or transform(weight))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3)
    use_winograd(conv, floor=8)
    first, second = torch.randn(2, 8, 10, 10), torch.randn(1, 8, 13, 9)

    def loss():
        return conv(first).square().sum() + conv(second).abs().sum()
    expected = torch.autograd.grad(loss(), conv.weight)[0]
    transforms.clear()
    with filters_shared():
        got = torch.autograd.grad(loss(), conv.weight)[0]
        assert len(transforms) == 1
        assert relative(got, expected) < 1e-6
        for optimizer in (torch.optim.Adam(conv.parameters(), lr=0.1, fused=True),
                          FusedAdam(conv.parameters(), lr=0.1, betas=(0.9, 0.999))):   # training's, on the CPU
            conv.weight.grad = got
            optimizer.step()
            assert relative(conv(first), F.conv2d(first, conv.weight, conv.bias)) < 1e-5
        conv.load_state_dict({"weight": torch.zeros(8, 8, 3, 3), "bias": torch.ones(8)})
        assert torch.allclose(conv(first), torch.ones(2, 8, 8, 8))
    transforms.clear()
    conv(first), conv(first)
    assert len(transforms) == 2  # outside, every call transforms its weight


@pytest.mark.parametrize("capability, vendor, device, dtype, pays", [
    ("AVX2", "AuthenticAMD", "cpu", torch.float32, True),
    ("AVX2", "GenuineIntel", "cpu", torch.float32, True),
    ("AVX512", "GenuineIntel", "cpu", torch.float32, True),
    ("AVX512", "AuthenticAMD", "cpu", torch.float32, False),  # MKL's product runs at half speed there
    ("AVX2", "AuthenticAMD", "cpu", torch.bfloat16, False),   # too coarse for the transform domain
    ("AVX2", "GenuineIntel", "cuda", torch.float32, False),   # cuDNN chooses its own
])
def test_winograd_is_chosen_for_float32_where_mkls_product_keeps_up(monkeypatch, capability, vendor, device,
                                                                   dtype, pays):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: vendor)
    assert winograd_pays(torch.device(device), dtype) is pays


def test_training_uses_it_where_it_pays_and_learns_the_same(tmp_path, monkeypatch):
    """Two float32 runs of the same seed, as an AMD AVX-512 CPU runs them (torch's convolutions) and as an
    AVX2 CPU does (Winograd's): Winograd's calls only in the second, and the same losses."""
    x = write_noisy_images(tmp_path / "summer", 3, (60, 160, 60))
    y = write_noisy_images(tmp_path / "winter", 3, (220, 220, 240), seed=1)
    common = ["--x", x, "--y", y, *TINY, "--no-export", "--max-steps", 3, "--set", "schedule.log_every=1",
              "--set", "model.ngf=64"]  # 256-channel blocks, wide enough for Winograd's
    calls = []
    convolution = winograd.convolve_transformed
    monkeypatch.setattr(winograd, "convolve_transformed", lambda *args: calls.append(1) or convolution(*args))
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: "AuthenticAMD")
    for capability in ("AVX512", "AVX2"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        result = run_cli("train", *common, "--out", tmp_path / capability)
        assert result.exit_code == 0, result.output
        assert bool(calls) is (capability == "AVX2")
        assert ("cpu fp32 (Winograd's 3x3 convolutions)" in result.output) is (capability == "AVX2")
    logs = [[json.loads(line) for line in (tmp_path / run / "losses.jsonl").open()] for run in ("AVX512", "AVX2")]
    assert len(logs[0]) == len(logs[1]) == 3
    # the first iteration's losses are the same networks' to float32 rounding; after it, Adam's first steps
    # (about lr * sign(gradient)) let rounding-sized differences in near-zero gradients move weights by lr
    for tolerance, torchs, winograds in zip((1e-5, 1e-2, 1e-2), *logs):
        for name in ("g_xy", "g_yx", "cycle_x", "cycle_y", "d_x", "d_y"):
            assert winograds[name] == pytest.approx(torchs[name], rel=tolerance), (torchs["iteration"], name)


@pytest.mark.parametrize("shape, bands_per_image", [((3, 16, 34, 30), 4), ((1, 8, 13, 22), 2), ((2, 4, 3, 7), 1)],
                         ids=["whole-tiles", "ragged", "one-row"])
def test_without_autograd_it_runs_in_bands_and_is_still_torchs_convolution(monkeypatch, shape, bands_per_image,
                                                                          transforms):
    """Translating frames needs no gradient: each image then runs in bands of tile rows (two rows each here,
    the band made small; a ragged last band, a one-row image), and the output is torch's convolution, in
    inference mode and under no_grad."""
    tile_cols = -(-(shape[3] - 2) // 4)
    monkeypatch.setattr(winograd, "BAND_TILE_CHANNELS", 2 * tile_cols * shape[1])   # two rows of tiles
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight, bias = torch.randn(24, shape[1], 3, 3, generator=generator), torch.randn(24, generator=generator)
    expected = F.conv2d(x, weight, bias)
    for mode in (torch.inference_mode, torch.no_grad):
        transforms.bands = 0
        with mode():
            got = winograd_conv3x3(x, weight, bias)
        assert got.shape == expected.shape and relative(got, expected) < 1e-5
        assert transforms.bands == shape[0] * bands_per_image
    assert relative(winograd_conv3x3(x, weight), F.conv2d(x, weight)) < 1e-5   # no bias, no gradient wanted


def test_a_traced_graph_keeps_torchs_convolution(monkeypatch):
    """An ONNX export or a TorchScript trace of a converted network records torch's convolutions."""
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: "AuthenticAMD")
    net = ResnetGenerator(GeneratorSpec(ngf=64, n_blocks=1)).eval()
    assert use_winograd(net) == 2
    with torch.no_grad():
        graph = torch.jit.trace(net, torch.rand(1, 3, 16, 16)).inlined_graph
    kinds = [node.kind() for node in graph.nodes()]
    assert kinds.count("aten::_convolution") == 8 and "aten::bmm" not in kinds


@pytest.mark.parametrize("capability, vendor, converted", [("AVX2", "AuthenticAMD", True),
                                                          ("AVX512", "AuthenticAMD", False),
                                                          ("AVX512", "GenuineIntel", False)])
def test_apply_runs_winograds_where_it_pays_and_translates_the_same(monkeypatch, tmp_path, capability, vendor,
                                                                   converted):
    """`vidcycle apply`'s torch engine converts a wide generator's blocks where frames run faster so (AVX2;
    not Intel's AVX-512, where training does) and says so; the frames are those of torch's convolutions to a
    level of 255. The narrowest Winograd convolution is made 64 channels, so that an ngf-16 model has some."""
    from vidcycle.models.modelfile import ModelInfo, save_model
    from vidcycle.runtime.translator import load_model
    torch.manual_seed(0)
    spec = GeneratorSpec(n_blocks=2, ngf=16)
    path = tmp_path / "wide.safetensors"
    save_model(path, ResnetGenerator(spec), ModelInfo(spec=spec, source="test"))
    frames = torch.randint(0, 256, (3, 36, 52, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = load_model(path, "cpu", "fp32", engine="torch").translate_tensor(frames)
    monkeypatch.setattr(winograd, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", {})
    monkeypatch.setattr(winograd, "DEFAULT_MIN_CHANNELS", 64)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    translator = load_model(path, "cpu", "fp32", engine="torch")
    blocks = sum(isinstance(module, WinogradConv2d) for module in translator.generator.modules())
    assert blocks == (4 if converted else 0)
    assert ("Winograd's 3x3 convolutions" in translator.describe()) is converted
    got = translator.translate_tensor(frames)
    assert (got.int() - expected.int()).abs().max() <= 1
