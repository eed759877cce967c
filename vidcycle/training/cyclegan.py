"""The paper's method: the four networks, the history pool, and one CycleGAN step in the paper's order.

Zhu et al. 2017 (shared docs, cyclegan.md) with the reference implementation's
defaults. G is `g_xy` (X -> Y), F is `g_yx`; `d_y` judges Y, `d_x` judges X.
"""

from dataclasses import dataclass

import torch
from torch import nn

from vidcycle.training.distributed import unwrap
from vidcycle.training.losses import cycle_loss, gan_loss, identity_loss, temporal_loss
from vidcycle.models.nets import GeneratorSpec, NLayerDiscriminator, build_generator, init_weights
from vidcycle.training.amp import Amp
from vidcycle.training.recipe import Recipe

LOSS_NAMES = ("g_xy", "g_yx", "cycle_x", "cycle_y", "idt_x", "idt_y", "temporal", "d_x", "d_y")
# The loss-curve panels: the generators' weighted terms, and the discriminators'.
LOSS_PANELS = {"generators (weighted terms)": LOSS_NAMES[:7], "discriminators": LOSS_NAMES[7:]}


# ---------------------------------------------------------------- networks and their helpers

@dataclass
class Nets:
    g_xy: nn.Module
    g_yx: nn.Module
    d_x: nn.Module
    d_y: nn.Module

    def state_dict(self) -> dict:
        return {name: unwrap(net).state_dict() for name, net in self.items()}

    def items(self):
        return (("g_xy", self.g_xy), ("g_yx", self.g_yx), ("d_x", self.d_x), ("d_y", self.d_y))


def generator_spec(recipe: Recipe) -> GeneratorSpec:
    return GeneratorSpec(n_blocks=recipe.model.n_blocks, ngf=recipe.model.ngf)


def build_nets(recipe: Recipe) -> Nets:
    """The four networks, initialised N(0, 0.02) from the recipe's seed."""
    torch.manual_seed(recipe.seed)
    spec = generator_spec(recipe)
    model = recipe.model
    return Nets(g_xy=pads_keep_dtype(build_generator(spec)), g_yx=pads_keep_dtype(build_generator(spec)),
                d_x=init_weights(NLayerDiscriminator(3, model.ndf, model.d_layers)),
                d_y=init_weights(NLayerDiscriminator(3, model.ndf, model.d_layers)))


class _ReflectionPadKeepDtype(nn.ReflectionPad2d):
    """ReflectionPad2d that pads in its input's dtype under autocast.

    CPU autocast lists reflection padding as a float32 op, so every pad in a
    bf16 generator cast the activation up and the next convolution cast it back
    down: four full-size copies per residual block. Padding is exact in any
    dtype, so nothing is lost by skipping them. No parameters: state dicts are
    unchanged.
    """

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


def pads_keep_dtype(net: nn.Module) -> nn.Module:
    for name, child in net.named_children():
        if type(child) is nn.ReflectionPad2d:
            setattr(net, name, _ReflectionPadKeepDtype(child.padding))
        else:
            pads_keep_dtype(child)
    return net


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


class ImagePool:
    """The history of generated images a discriminator is trained on (Shrivastava et al., as in the paper).

    Until `size` images are stored, each query stores and returns the new image;
    then each new image is, with probability 0.5, swapped for a random stored
    one (which is returned) or returned as is. Size 0 returns the input.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0).float()
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(1, generator=self.rng).item() > 0.5:
                slot = int(torch.randint(0, self.size, (1,), generator=self.rng))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.cat(out).to(images.dtype)

    def state_dict(self) -> dict:
        stored = torch.cat(self.images).cpu() if self.images else torch.zeros(0)
        return {"images": stored, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device) -> None:
        stored = state["images"]
        self.images = [image.unsqueeze(0).to(device) for image in stored] if stored.numel() else []
        self.rng.set_state(state["rng"])


@dataclass
class Optimizers:
    g: torch.optim.Optimizer
    d: torch.optim.Optimizer

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.g, self.d):
            for group in optimizer.param_groups:
                group["lr"] = lr


def build_optimizers(nets: Nets, recipe: Recipe) -> Optimizers:
    betas = (recipe.optim.beta1, recipe.optim.beta2)
    g_params = list(unwrap(nets.g_xy).parameters()) + list(unwrap(nets.g_yx).parameters())
    d_params = list(unwrap(nets.d_x).parameters()) + list(unwrap(nets.d_y).parameters())
    return Optimizers(g=torch.optim.Adam(g_params, lr=recipe.optim.lr, betas=betas),
                      d=torch.optim.Adam(d_params, lr=recipe.optim.lr, betas=betas))


# ---------------------------------------------------------------- the step

def train_step(nets: Nets, optimizers: Optimizers, pools: dict, batch: dict, loss, amp: Amp) -> dict:
    """One CycleGAN iteration in the paper's order; returns each weighted loss as a float.

    `loss` is the recipe's LossConfig. The generators are updated first with
    the discriminators frozen, then D_X and D_Y on real images and on fakes
    drawn from their history pools, each with its loss halved.
    """
    g_xy, g_yx, d_x, d_y = nets.g_xy, nets.g_yx, nets.d_x, nets.d_y
    real_x, real_y = batch["x"], batch["y"]
    mode, lam, lam_idt = loss.gan_mode, loss.cycle, loss.identity * loss.cycle
    zero = real_x.new_zeros(())

    # Generators. The discriminators only judge here: frozen, and called unwrapped so a
    # frozen net takes no part in DDP's gradient sync.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), False)
    optimizers.g.zero_grad(set_to_none=True)
    with amp.autocast():
        fake_y = g_xy(real_x)                                   # G(x)
        rec_x = g_yx(fake_y)                                    # F(G(x))
        fake_x = g_yx(real_y)                                   # F(y)
        rec_y = g_xy(fake_x)                                    # G(F(y))
        loss_g_xy = gan_loss(unwrap(d_y)(fake_y), True, mode)   # G fools D_Y
        loss_g_yx = gan_loss(unwrap(d_x)(fake_x), True, mode)   # F fools D_X
        loss_cycle_x = cycle_loss(rec_x, real_x) * lam          # ||F(G(x)) - x||_1
        loss_cycle_y = cycle_loss(rec_y, real_y) * lam          # ||G(F(y)) - y||_1
        loss_idt_x = loss_idt_y = zero
        if lam_idt > 0:
            idt_y = g_xy(real_y)                                # G(y) should stay y
            idt_x = g_yx(real_x)                                # F(x) should stay x
            loss_idt_y = identity_loss(idt_y, real_y) * lam_idt
            loss_idt_x = identity_loss(idt_x, real_x) * lam_idt
        loss_temporal = zero
        if loss.temporal > 0 and "x_next" in batch:
            fake_y_next = g_xy(batch["x_next"])                 # G(x_{t+1})
            loss_temporal = temporal_loss(fake_y, fake_y_next, real_x, batch["x_next"],
                                          batch["has_next"]) * loss.temporal
        loss_g = (loss_g_xy + loss_g_yx + loss_cycle_x + loss_cycle_y + loss_idt_x + loss_idt_y
                  + loss_temporal)
    amp.backward_step(loss_g, optimizers.g)

    # Discriminators, on real images and on pooled fakes: 0.5 * (real + fake) each.
    set_requires_grad((unwrap(d_x), unwrap(d_y)), True)
    optimizers.d.zero_grad(set_to_none=True)
    pooled_fake_y = pools["y"].query(fake_y)
    pooled_fake_x = pools["x"].query(fake_x)
    with amp.autocast():
        loss_d_y = 0.5 * (gan_loss(d_y(real_y), True, mode) + gan_loss(d_y(pooled_fake_y), False, mode))
        loss_d_x = 0.5 * (gan_loss(d_x(real_x), True, mode) + gan_loss(d_x(pooled_fake_x), False, mode))
    amp.backward_step(loss_d_x + loss_d_y, optimizers.d)
    amp.end_step()

    values = torch.stack([loss_g_xy, loss_g_yx, loss_cycle_x, loss_cycle_y, loss_idt_x, loss_idt_y,
                          loss_temporal, loss_d_x, loss_d_y]).detach().float().tolist()
    return dict(zip(LOSS_NAMES, values))
