"""A plain CycleGAN step and data path written the way the reference implementation writes them.

The yardstick for benchmarks/train_speed.py and benchmarks/train_loop_speed.py:
junyanz/pytorch-CycleGAN-and-pix2pix (models/networks.py ResnetGenerator,
ResnetBlock, NLayerDiscriminator, GANLoss; models/cycle_gan_model.py
optimize_parameters; util/image_pool.py; data/unaligned_dataset.py with
base_dataset.get_transform), re-typed here without vidcycle's extras: plain
nn.ReflectionPad2d, InstanceNorm2d(affine=False), float32, no autocast, no
input padding or output crop, losses read back only when printed. Nothing
here imports vidcycle, so the two can be timed side by side.
"""

import random

import torch
from torch import nn


def instance_norm(channels):
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), instance_norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), instance_norm(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-3, tanh; no dropout (the CycleGAN default)."""

    def __init__(self, input_nc=3, output_nc=3, ngf=64, n_blocks=6):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True), instance_norm(ngf),
                  nn.ReLU(True)]
        for i in range(2):
            mult = 2 ** i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                       instance_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=True),
                       instance_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """The 70x70 PatchGAN: C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel conv."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=True),
                       instance_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=True),
                   instance_norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net, gain=0.02):
    """The reference's 'normal' init: conv and linear weights N(0, gain), biases 0."""
    for module in net.modules():
        name = type(module).__name__
        if hasattr(module, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(module.weight.data, 0.0, gain)
            if getattr(module, "bias", None) is not None:
                nn.init.constant_(module.bias.data, 0.0)
    return net


class GANLoss(nn.Module):
    """LSGAN: MSE against a 1.0 / 0.0 label buffer expanded to the prediction's shape."""

    def __init__(self):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(1.0))
        self.register_buffer("fake_label", torch.tensor(0.0))
        self.loss = nn.MSELoss()

    def __call__(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


class ImagePool:
    """The reference's history buffer: python `random`, images kept as they come."""

    def __init__(self, pool_size):
        self.pool_size, self.num_imgs, self.images = pool_size, 0, []

    def query(self, images):
        if self.pool_size == 0:
            return images
        returned = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image)
                returned.append(image)
            elif random.uniform(0, 1) > 0.5:
                slot = random.randint(0, self.pool_size - 1)
                returned.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                returned.append(image)
        return torch.cat(returned, 0)


def set_requires_grad(nets, requires_grad):
    for net in nets:
        for param in net.parameters():
            param.requires_grad = requires_grad


class CycleGANModel:
    """cycle_gan_model.py's training half: A -> B is G_A (netD_A judges B), B -> A is G_B."""

    def __init__(self, ngf=64, ndf=64, n_blocks=6, n_layers=3, lr=2e-4, beta1=0.5, pool_size=50, lambda_a=10.0,
                 lambda_b=10.0, lambda_identity=0.5, seed=0):
        torch.manual_seed(seed)
        random.seed(seed)
        self.net_g_a = init_weights(ResnetGenerator(3, 3, ngf, n_blocks))
        self.net_g_b = init_weights(ResnetGenerator(3, 3, ngf, n_blocks))
        self.net_d_a = init_weights(NLayerDiscriminator(3, ndf, n_layers))
        self.net_d_b = init_weights(NLayerDiscriminator(3, ndf, n_layers))
        self.fake_a_pool, self.fake_b_pool = ImagePool(pool_size), ImagePool(pool_size)
        self.criterion_gan, self.criterion_cycle, self.criterion_idt = GANLoss(), nn.L1Loss(), nn.L1Loss()
        self.lambda_a, self.lambda_b, self.lambda_idt = lambda_a, lambda_b, lambda_identity
        g_params = list(self.net_g_a.parameters()) + list(self.net_g_b.parameters())
        d_params = list(self.net_d_a.parameters()) + list(self.net_d_b.parameters())
        self.optimizer_g = torch.optim.Adam(g_params, lr=lr, betas=(beta1, 0.999))
        self.optimizer_d = torch.optim.Adam(d_params, lr=lr, betas=(beta1, 0.999))

    def set_input(self, batch):
        self.real_a, self.real_b = batch["A"], batch["B"]

    def forward(self):
        self.fake_b = self.net_g_a(self.real_a)
        self.rec_a = self.net_g_b(self.fake_b)
        self.fake_a = self.net_g_b(self.real_b)
        self.rec_b = self.net_g_a(self.fake_a)

    def backward_g(self):
        if self.lambda_idt > 0:
            self.idt_a = self.net_g_a(self.real_b)
            self.loss_idt_a = self.criterion_idt(self.idt_a, self.real_b) * self.lambda_b * self.lambda_idt
            self.idt_b = self.net_g_b(self.real_a)
            self.loss_idt_b = self.criterion_idt(self.idt_b, self.real_a) * self.lambda_a * self.lambda_idt
        else:
            self.loss_idt_a = self.loss_idt_b = 0
        self.loss_g_a = self.criterion_gan(self.net_d_a(self.fake_b), True)
        self.loss_g_b = self.criterion_gan(self.net_d_b(self.fake_a), True)
        self.loss_cycle_a = self.criterion_cycle(self.rec_a, self.real_a) * self.lambda_a
        self.loss_cycle_b = self.criterion_cycle(self.rec_b, self.real_b) * self.lambda_b
        self.loss_g = (self.loss_g_a + self.loss_g_b + self.loss_cycle_a + self.loss_cycle_b
                       + self.loss_idt_a + self.loss_idt_b)
        self.loss_g.backward()

    def backward_d_basic(self, net_d, real, fake):
        loss_real = self.criterion_gan(net_d(real), True)
        loss_fake = self.criterion_gan(net_d(fake.detach()), False)
        loss_d = (loss_real + loss_fake) * 0.5
        loss_d.backward()
        return loss_d

    def optimize_parameters(self):
        self.forward()
        set_requires_grad([self.net_d_a, self.net_d_b], False)
        self.optimizer_g.zero_grad()
        self.backward_g()
        self.optimizer_g.step()
        set_requires_grad([self.net_d_a, self.net_d_b], True)
        self.optimizer_d.zero_grad()
        fake_b = self.fake_b_pool.query(self.fake_b)
        self.loss_d_a = self.backward_d_basic(self.net_d_a, self.real_b, fake_b)
        fake_a = self.fake_a_pool.query(self.fake_a)
        self.loss_d_b = self.backward_d_basic(self.net_d_b, self.real_a, fake_a)
        self.optimizer_d.step()

    def current_losses(self):
        """get_current_losses: a float per term (the reference reads them every print_freq iterations)."""
        names = ("d_a", "g_a", "cycle_a", "idt_a", "d_b", "g_b", "cycle_b", "idt_b")
        return {name: float(getattr(self, f"loss_{name}")) for name in names}

    def set_lr(self, lr):
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def state_dicts(self):
        return {"G_A": self.net_g_a.state_dict(), "G_B": self.net_g_b.state_dict(),
                "D_A": self.net_d_a.state_dict(), "D_B": self.net_d_b.state_dict()}


# ---------------------------------------------------------------- data, as unaligned_dataset.py loads it

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(folder):
    from pathlib import Path
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def get_transform(load_size=286, crop_size=256, flip=True):
    """resize_and_crop: Resize to load x load (bicubic), RandomCrop, RandomHorizontalFlip, ToTensor,
    Normalize to [-1, 1]."""
    from torchvision import transforms
    steps = [transforms.Resize([load_size, load_size], transforms.InterpolationMode.BICUBIC),
             transforms.RandomCrop(crop_size)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    return transforms.Compose(steps)


class UnalignedDataset(torch.utils.data.Dataset):
    """A frame i % len(A), a random B frame (serial_batches off); PIL load, convert('RGB'), transform."""

    def __init__(self, dir_a, dir_b, load_size=286, crop_size=256, flip=True):
        self.a_paths, self.b_paths = image_paths(dir_a), image_paths(dir_b)
        self.transform = get_transform(load_size, crop_size, flip)

    def __len__(self):
        return max(len(self.a_paths), len(self.b_paths))

    def __getitem__(self, index):
        from PIL import Image
        a_path = self.a_paths[index % len(self.a_paths)]
        b_path = self.b_paths[random.randint(0, len(self.b_paths) - 1)]
        a_img = Image.open(a_path).convert("RGB")
        b_img = Image.open(b_path).convert("RGB")
        return {"A": self.transform(a_img), "B": self.transform(b_img), "A_paths": a_path, "B_paths": b_path}


def make_loader(dataset, batch_size=1, num_threads=4, shuffle=True):
    """CustomDatasetDataLoader: shuffle unless serial_batches, num_workers=opt.num_threads (default 4)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=int(num_threads))
