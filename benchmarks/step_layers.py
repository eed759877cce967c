"""Where a CycleGAN training step's time goes, by layer, from timers (torch's profiler misread the step
with the C kernels by 40%: benchmarks/README.md).

    python benchmarks/step_layers.py [--recipe cyclegan128] [--reps 7]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/step_layers.py

Each leaf layer of the four networks, as `vidcycle train` builds and converts them (Winograd's 3x3, the
tap products), is timed alone, forward and backward, at each call the step makes of its network, with
the gradients that call needs: each generator once at batch 2 (the real image and the identity term's;
no gradient into the real images) and once at batch 1 (the cycle pass), weights trained; each
discriminator once at batch 1 (the generators' loss: weights frozen, the input's gradient) and once at
batch 2 (its own loss: real and pooled fake, weights trained, nothing into the images). Each layer's
median over --reps calls (the layers in turns), times its calls, gives its milliseconds a step; the
table groups them by kind and sets their sum beside the step itself, timed in the same process. The
sum leaves out what lies between layers (the residual additions, the losses, the optimisers, autograd's
bookkeeping), so it falls short of the step by that much; isolated layers run with warm caches, so the
shares are estimates. Winograd's weights are transformed at each timed call (training does it once a
step), an overestimate of a few milliseconds.
"""

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from machine import cpu_description  # noqa: E402
from train_speed import make_step  # noqa: E402
from vidcycle.runtime.allocator import keep_freed_memory  # noqa: E402
from vidcycle.runtime.convolutions import use_faster_convolutions  # noqa: E402
from vidcycle.runtime.device import pick_training_precision, precision_name  # noqa: E402
from vidcycle.runtime.winograd import WinogradConv2d, filters_shared  # noqa: E402
from vidcycle.training.cyclegan import build_nets  # noqa: E402
from vidcycle.training.recipe import load_recipe, shipped_recipes  # noqa: E402

LEAVES = (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.ReLU, nn.LeakyReLU, nn.ReflectionPad2d, nn.Tanh)
# (network, batch, gradient into the network's input images, weights trained)
CALLS = {"G": [(2, False, True), (1, True, True)], "D": [(1, True, False), (2, False, True)]}


def kind(module: nn.Module, net: str, first: bool) -> str:
    """The row of the table a layer belongs to."""
    if isinstance(module, nn.ConvTranspose2d):
        return "G transposed 3x3, stride 2"
    if isinstance(module, nn.Conv2d):
        if net == "D":
            size = f"{module.kernel_size[0]}x{module.kernel_size[1]}, stride {module.stride[0]}"
            return f"D {size}{', one score' if module.out_channels == 1 else ''}"
        if isinstance(module, WinogradConv2d):
            return "G 3x3 blocks, Winograd's"
        if module.stride[0] == 2:
            return "G 3x3, stride 2"
        if module.kernel_size[0] == 7:
            return "G 7x7 from RGB" if first else "G 7x7 to RGB (tap products)"
        return f"G {module.kernel_size[0]}x{module.kernel_size[1]} conv"
    return f"{net} {type(module).__name__}"


def leaves_with_inputs(net: nn.Module, size: int, channels: int = 3) -> list:
    """(layer, its input's shape without the batch) in running order, from one forward pass."""
    seen = []
    hooks = [module.register_forward_pre_hook(lambda m, args: seen.append((m, tuple(args[0].shape[1:]))))
             for module in net.modules() if isinstance(module, LEAVES)]
    with torch.no_grad():
        net(torch.zeros(1, channels, size, size))
    for hook in hooks:
        hook.remove()
    return seen


def layer_call(module: nn.Module, shape: tuple, batch: int, input_grad: bool, weights_grad: bool):
    """A closure: the layer's forward and backward at this call, with these gradients."""
    parameters = list(module.parameters())
    if not input_grad and not (weights_grad and parameters):
        return None                     # nothing to take back through this layer at this call
    x = torch.randn(batch, *shape, requires_grad=input_grad)
    inplace = getattr(module, "inplace", False)
    forward = (lambda t: F.relu(t)) if type(module) is nn.ReLU and inplace else \
        (lambda t: F.leaky_relu(t, module.negative_slope)) if isinstance(module, nn.LeakyReLU) and inplace else module
    with torch.no_grad():
        gradient = torch.randn_like(forward(x))

    def call():
        for parameter in parameters:    # a layer's calls differ in what they train
            parameter.requires_grad_(weights_grad)
        with filters_shared():
            forward(x).backward(gradient)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="cyclegan128")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    recipe = load_recipe(shipped_recipes()[args.recipe])
    dtype = pick_training_precision("auto", torch.device("cpu"), recipe.model.ngf)
    print(cpu_description() + f"; {args.threads} threads; {args.recipe}, {precision_name(dtype)}", flush=True)
    if dtype != torch.float32:
        print("(layers are timed in float32; this CPU trains in another precision)")
    nets = build_nets(recipe)
    use_faster_convolutions(nets.g_xy, torch.device("cpu"), torch.float32, layers_read=False)  # as CycleGAN
    size = recipe.data.crop_size
    calls = []   # (row, closure, how many times a step)
    for net_name, net in (("G", nets.g_xy), ("D", nets.d_y)):
        on_the_images = True   # layers up to the first convolution take the images, not trained activations
        for module, shape in leaves_with_inputs(net, size):
            for batch, image_grad, weights_grad in CALLS[net_name]:
                call = layer_call(module, shape, batch, image_grad or not on_the_images, weights_grad)
                if call is not None:   # the two generators and the two discriminators make each call once
                    calls.append((kind(module, net_name, shape[0] == 3), call, 2))
            on_the_images = on_the_images and not isinstance(module, nn.Conv2d)
    times = [[] for _ in calls]
    for _ in range(2):
        for _, call, _ in calls:
            call()
    for _ in range(args.reps):
        for index, (_, call, _) in enumerate(calls):
            started = time.perf_counter()
            call()
            times[index].append(time.perf_counter() - started)
    rows = defaultdict(float)
    for (row, _, count), spent in zip(calls, times):
        rows[row] += statistics.median(spent) * count
    step = make_step(recipe, dtype, False)
    for _ in range(3):
        step()
    step_seconds = statistics.median(timed(step) for _ in range(args.reps))
    total = sum(rows.values())
    print(f"{'layers':<36} {'ms a step':>9} {'of the sum':>10} {'of the step':>11}")
    for row, seconds in sorted(rows.items(), key=lambda item: -item[1]):
        print(f"{row:<36} {seconds * 1000:>9.1f} {seconds / total:>10.1%} {seconds / step_seconds:>11.1%}")
    print(f"{'sum of the layers':<36} {total * 1000:>9.1f} {1:>10.1%} {total / step_seconds:>11.1%}")
    print(f"{'the step, timed whole':<36} {step_seconds * 1000:>9.1f}")


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
