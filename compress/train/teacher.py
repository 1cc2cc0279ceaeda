"""Teacher training: CycleGAN (LSGAN + cycle + identity, image pool) or Pix2Pix (GAN + L1).

The recipes are the originals' (pytorch-CycleGAN-and-pix2pix): Adam 2e-4 (0.5, 0.999), cycle
λ 10, identity 0.5, pool 50, constant then linear LR decay; Pix2Pix GAN + 100·L1 with hinge by
default (DMAD's scripts). Only sizes and step counts are scaled down by default so a CPU can run
it; the same code runs on CUDA unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress.arch import profile
from dmad.compress.checkpoint import save_model
from dmad.compress.config import RUN_HELP, opt, to_dict
from dmad.compress.errors import DmadError
from dmad.compress.losses import GAN_MODES, GANLoss, ImagePool
from dmad.compress.models import (
    DiscriminatorSpec,
    PatchDiscriminator,
    ResnetGenerator,
    ResnetSpec,
    UnetGenerator,
    UnetSpec,
)
from dmad.compress.train import distributed, loop
from dmad.compress.train.amp import PRECISIONS, Precision, use_channels_last
from dmad.compress.train.common import (
    BatchSource,
    default_load_size,
    open_train_test,
    pick_device,
    resolve_data,
    save_grid,
    seed_everything,
    set_requires_grad,
)

TASKS = ("cyclegan", "pix2pix")


@dataclass
class ScaleOptions:
    """How a stage runs at scale (schedule in epochs, loader, precision, layout): the same
    fields on every training stage; search and fine-tune pass them to their TeacherConfig."""

    epochs: float = opt(0.0, RUN_HELP["epochs"])
    decay_epochs: float = opt(-1.0, RUN_HELP["decay_epochs"])
    workers: int = opt(-1, RUN_HELP["workers"])
    prefetch: int = opt(2, RUN_HELP["prefetch"])
    precision: str = opt("fp32", RUN_HELP["precision"])
    channels_last: str = opt("auto", RUN_HELP["channels_last"])
    tensorboard: bool = opt(True, RUN_HELP["tensorboard"])


@dataclass
class TeacherConfig(ScaleOptions):
    """Settings of ``dmad teacher``; empty/zero/None fields are filled from the task."""

    task: str = opt(
        "cyclegan",
        "cyclegan (unpaired, two generators) | pix2pix (paired, one generator)",
    )
    data: str = opt(
        "",
        "dataset root (trainA/trainB/testA/testB or train/val); '' = the embedded default",
    )
    arch: str = opt("", "generator: resnet | unet ('' = resnet for cyclegan, unet for pix2pix)")
    ngf: int = opt(64, "generator base width in channels (the originals: 64)")
    n_blocks: int = opt(9, "ResNet residual blocks (9 = ResNet-9, 6 = ResNet-6)")
    num_downs: int = opt(
        0,
        "UNet depth in down-samplings; 0 = log2(size) capped at 8 (unet_256 at 256²)",
    )
    norm: str = opt(
        "",
        "instance | instance_affine | batch ('' = instance for resnet, batch for unet)",
    )
    padding: str = opt("reflect", "ResNet padding: reflect (the originals) | zero")
    separable: bool = opt(False, "true = the mobile ResNet with depthwise-separable block convs")
    dropout: bool | None = opt(
        None,
        "dropout in the generator; none = off for resnet, on for unet (as the originals)",
    )
    ndf: int = opt(64, "PatchGAN discriminator base width in channels")
    n_layers_d: int = opt(3, "PatchGAN strided layers (3 = the 70×70 PatchGAN)")
    size: int = opt(64, "crop side in pixels = the model's input size")
    load_size: int = opt(
        0,
        "resize side in pixels before the random crop; 0 = 286/256·size cyclegan, size pix2pix",
    )
    flip: bool | None = opt(
        None,
        "random horizontal flips; none = on for cyclegan, off for pix2pix",
    )
    direction: str = opt(
        "AtoB",
        "AtoB | BtoA: which side is the input (pix2pix; the first generator of cyclegan)",
    )
    steps: int = opt(1000, "training steps (one batch each)")
    decay_steps: int = opt(-1, "steps of linear LR decay to 0 at the end; -1 = half of steps")
    batch_size: int = opt(
        1,
        "images per step in each process; the global batch is batch_size × processes (torchrun)",
    )
    lr: float = opt(2e-4, "Adam learning rate of G and D")
    beta1: float = opt(0.5, "Adam beta1")
    gan_mode: str = opt("", "lsgan | vanilla | hinge ('' = lsgan for cyclegan, hinge for pix2pix)")
    lambda_cycle: float = opt(10.0, "weight of the cycle-consistency L1 (cyclegan)")
    lambda_identity: float = opt(
        0.5,
        "weight of the identity loss, relative to lambda_cycle (cyclegan)",
    )
    lambda_l1: float = opt(100.0, "weight of the L1 to ground truth (pix2pix)")
    pool_size: int = opt(50, "image pool of past fakes shown to D (0 = none)")
    seed: int = opt(0, "seed of weights, batch order and augmentation (same seed, same run)")
    checkpoint_every: int = opt(100, RUN_HELP["checkpoint_every"])
    log_every: int = opt(10, RUN_HELP["log_every"])
    device: str = opt("auto", RUN_HELP["device"])
    skip_bad: bool = opt(False, RUN_HELP["skip_bad"])

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DmadError:
            return DmadError(f"field {name}: {why}")

        if self.precision not in PRECISIONS:
            raise bad("precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad("channels_last", f"{self.channels_last!r} is not one of auto, on, off")
        if self.epochs < 0 or self.workers < -1 or self.prefetch < 1:
            raise bad("epochs/workers/prefetch", "epochs >= 0, workers >= -1, prefetch >= 1")
        if self.task not in TASKS:
            raise bad("task", f"{self.task!r} is not one of {', '.join(TASKS)}")
        self.arch = self.arch or ("resnet" if self.task == "cyclegan" else "unet")
        if self.arch not in ("resnet", "unet"):
            raise bad("arch", f"{self.arch!r} is not one of resnet, unet")
        self.norm = self.norm or ("instance" if self.arch == "resnet" else "batch")
        if self.dropout is None:
            self.dropout = self.arch == "unet"
        if self.flip is None:
            self.flip = self.task == "cyclegan"
        self.gan_mode = self.gan_mode or ("lsgan" if self.task == "cyclegan" else "hinge")
        if self.gan_mode not in GAN_MODES:
            raise bad("gan_mode", f"{self.gan_mode!r} is not one of {', '.join(GAN_MODES)}")
        if self.direction not in ("AtoB", "BtoA"):
            raise bad("direction", f"{self.direction!r} is not AtoB or BtoA")
        for name in (
            "ngf",
            "ndf",
            "size",
            "steps",
            "batch_size",
            "n_layers_d",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.n_blocks < 0 or self.pool_size < 0 or self.lr <= 0:
            raise bad("n_blocks/pool_size/lr", "must be non-negative (lr positive)")
        if self.arch == "unet":
            if self.num_downs == 0:
                self.num_downs = min(8, int(math.log2(self.size)))
            if self.size % (2**self.num_downs):
                raise bad(
                    "size",
                    f"{self.size} is not a multiple of 2**num_downs = {2**self.num_downs} (UNet)",
                )
        elif self.size % 4:
            raise bad("size", f"{self.size} is not a multiple of 4 (ResNet generator)")
        if self.load_size == 0:
            self.load_size = default_load_size(self.size) if self.task == "cyclegan" else self.size
        if self.load_size < self.size:
            raise bad("load_size", f"{self.load_size} is smaller than size {self.size}")
        if self.decay_steps < 0:
            self.decay_steps = self.steps // 2
        if self.decay_steps > self.steps:
            raise bad("decay_steps", f"{self.decay_steps} exceeds steps {self.steps}")

    def generator_spec(self, input_nc: int = 3, output_nc: int = 3) -> ResnetSpec | UnetSpec:
        if self.arch == "resnet":
            return ResnetSpec(
                input_nc,
                output_nc,
                self.ngf,
                self.n_blocks,
                self.norm,
                self.padding,
                self.separable,
                bool(self.dropout),
            )
        return UnetSpec(
            input_nc, output_nc, self.ngf, self.num_downs, self.norm, bool(self.dropout)
        )

    def discriminator_spec(self) -> DiscriminatorSpec:
        norm = "batch" if self.norm == "batch" else "instance"
        return DiscriminatorSpec(
            3 if self.task == "cyclegan" else 6, self.ndf, self.n_layers_d, norm
        )


def build_generator(spec: ResnetSpec | UnetSpec) -> nn.Module:
    return ResnetGenerator(spec) if isinstance(spec, ResnetSpec) else UnetGenerator(spec)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, zero bias; norm weight N(1, 0.02), bias 0 (the original's
    ``init_weights``; DMAD's N(0, 1) BatchNorm bias is its bug §7.12 and is not copied)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class TeacherStage(loop.Stage):
    """Both objectives behind one stage; ``task`` picks the step."""

    name = "teacher"

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        seed_everything(cfg.seed)
        self.train_set, self.test_set = self.open_data()
        self.global_batch = cfg.batch_size * self.world
        self.resolve_epochs()
        self.amp = Precision(cfg.precision, self.device)
        self.channels_last = use_channels_last(cfg.channels_last, self.device, cfg.precision)
        self.batches = BatchSource(self.train_set, cfg.batch_size, cfg.seed, self.device,
                                   workers=cfg.workers, prefetch=cfg.prefetch, rank=self.rank,
                                   world=self.world, channels_last=self.channels_last)
        self.gan = GANLoss(cfg.gan_mode)
        self.l1 = nn.L1Loss()
        names = self.directions()
        self.G: dict[str, nn.Module] = {}
        self.D: dict[str, nn.Module] = {}
        for n in names:
            g, d = self.make_models(n)
            self.G[n] = self._place(g)
            self.D[n] = self._place(d)
        if self.world > 1:  # same initial weights everywhere; per-rank dropout draws
            torch.manual_seed(cfg.seed + 104_729 * self.rank)
        self.ddp = distributed.Wrappers()
        self.scalers = {"G": self.amp.scaler(), "D": self.amp.scaler()}
        betas = (cfg.beta1, 0.999)
        self.opt_G = torch.optim.Adam(
            [p for g in self.G.values() for p in g.parameters()], lr=cfg.lr, betas=betas
        )
        self.opt_D = torch.optim.Adam(
            [p for d in self.D.values() for p in d.parameters()], lr=cfg.lr, betas=betas
        )
        self.pools = {
            n: ImagePool(cfg.pool_size if cfg.task == "cyclegan" else 0, cfg.seed + i + 1)
            for i, n in enumerate(names)
        }

    def _place(self, module: nn.Module) -> nn.Module:
        """On this rank's device, in training mode, global BatchNorm under torchrun, NHWC when
        channels_last is on."""
        module = distributed.sync_batchnorm(module.to(self.device).train())
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def resolve_epochs(self) -> None:
        """``epochs``/``decay_epochs`` → steps at the global batch (the original recipes count
        epochs over the larger side of the training set, which ``len`` is)."""
        c = self.cfg
        if c.epochs <= 0:
            return
        per_epoch = len(self.train_set) / self.global_batch
        c.steps = max(1, math.ceil(c.epochs * per_epoch))
        c.decay_steps = (min(c.steps, math.ceil(c.decay_epochs * per_epoch))
                         if c.decay_epochs >= 0 else c.steps // 2)

    def backward_step(self, loss: torch.Tensor, which: str) -> None:
        """Backpropagate ``loss`` and step optimiser ``which`` (``G``/``D``), with loss scaling
        under fp16 (skipping a step whose gradients overflowed)."""
        opt = self.optimizers()[which]
        scaler = self.scalers[which]
        scaler.scale(loss).backward()
        self.reduce_gradients(which)
        scaler.step(opt)
        scaler.update()

    def reduce_gradients(self, which: str) -> None:
        """Between backward and step: where a stage averages, over the torchrun ranks, the
        gradients of trained modules DDP does not wrap (none here)."""

    def pool_query(self, name: str, fake: torch.Tensor) -> torch.Tensor:
        """The image pool over the global batch: under torchrun every rank queries the same
        pool with every rank's fakes in rank order (as one process with the global batch
        would) and keeps its own share, so the pool's choices do not depend on the world
        size."""
        if self.world == 1:
            return self.pools[name].query(fake)
        out = self.pools[name].query(distributed.all_gather_cat(fake.detach()))
        return out.chunk(self.world, 0)[self.rank]

    #: the user's images (``dmad compress``): search and fine-tune set it, the teacher never does
    split: Any = None
    #: with a split: also load the B half of aligned images (extra ground truth)
    paired_gt: bool = False
    #: with a split: multi-scale crops up to this short side (0 = the original resize-and-crop)
    scale_max: int = 0
    #: with a split: unlabelled photographs added to the training images
    extra_images: list[str] | None = None

    def open_data(self):  # type: ignore[no-untyped-def]
        """(training set, held-out set): the split's images when a stage has one, else the
        task's dataset layout."""
        cfg = self.cfg
        if self.split is not None:
            from dmad.compress.data.split import split_datasets

            return split_datasets(self.split, cfg.size, cfg.load_size, bool(cfg.flip),
                                  paired=self.paired_gt, scale_max=self.scale_max,
                                  extra=self.extra_images)
        return open_train_test(resolve_data(cfg.data, cfg.size), cfg.task, cfg.size,
                               cfg.load_size, bool(cfg.flip), cfg.direction, cfg.skip_bad)

    def directions(self) -> list[str]:
        """Generators this stage trains: both for CycleGAN, A→B for Pix2Pix."""
        return ["AtoB", "BtoA"] if self.cfg.task == "cyclegan" else ["AtoB"]

    def make_models(self, direction: str) -> tuple[nn.Module, nn.Module]:
        """Fresh N(0, 0.02)-initialised G and D; later stages override this to start elsewhere."""
        g = build_generator(self.cfg.generator_spec())
        d = PatchDiscriminator(self.cfg.discriminator_spec())
        init_weights(g)
        init_weights(d)
        return g, d

    def extra_generator_loss(self) -> dict[str, torch.Tensor]:
        """Terms added to the generator objective (the search adds its mask sparsity here)."""
        return {}

    # -- loop.Stage -----------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {
            **{f"G_{k}": v for k, v in self.G.items()},
            **{f"D_{k}": v for k, v in self.D.items()},
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_G, "D": self.opt_D}

    def extra_state(self) -> dict[str, Any]:
        return {"pools": {k: p.state_dict() for k, p in self.pools.items()},
                "scalers": {k: s.state_dict() for k, s in self.scalers.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for k, p in self.pools.items():
            p.load_state_dict(state["pools"][k])
        for k, s in self.scalers.items():
            if (state.get("scalers") or {}).get(k):
                s.load_state_dict(state["scalers"][k])

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        b = self.batches.get(step)
        self.batch = b
        if self.cfg.task == "cyclegan":
            return self._cyclegan_step(b["A"], b["B"])
        return self._pix2pix_step(b["A"], b["B"])

    def _d_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.gan(d(real), True) + self.gan(d(fake.detach()), False))

    def _cyclegan_step(
        self, real_A: torch.Tensor, real_B: torch.Tensor
    ) -> dict[str, torch.Tensor | float]:
        c = self.cfg
        G_A, G_B, D_A, D_B = self.G["AtoB"], self.G["BtoA"], self.D["AtoB"], self.D["BtoA"]
        # trained networks are called through their DDP wrappers; D inside G's step is frozen
        # and called bare (no gradient for its weights, so nothing for DDP to reduce)
        fG_A, fG_B = self.ddp(G_A), self.ddp(G_B)
        set_requires_grad([D_A, D_B], False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            # Each generator's first call is on its real input (distillation records those).
            fake_B = fG_A(real_A)
            fake_A = fG_B(real_B)
            rec_A = fG_B(fake_B)
            rec_B = fG_A(fake_A)
            losses: dict[str, torch.Tensor] = {}
            if c.lambda_identity > 0:
                w = c.lambda_cycle * c.lambda_identity
                losses["idt_A"] = self.l1(fG_A(real_B), real_B) * w
                losses["idt_B"] = self.l1(fG_B(real_A), real_A) * w
            losses["G_A"] = self.gan(D_A(fake_B), True, for_discriminator=False)
            losses["G_B"] = self.gan(D_B(fake_A), True, for_discriminator=False)
            losses["cycle_A"] = self.l1(rec_A, real_A) * c.lambda_cycle
            losses["cycle_B"] = self.l1(rec_B, real_B) * c.lambda_cycle
            losses.update(self.extra_generator_loss())
            loss_G = sum(losses.values())
        self.backward_step(loss_G, "G")  # type: ignore[arg-type]
        set_requires_grad([D_A, D_B], True)
        self.opt_D.zero_grad(set_to_none=True)
        with self.amp.autocast():
            losses["D_A"] = self._d_loss(self.ddp(D_A), real_B, self.pool_query("AtoB", fake_B))
            losses["D_B"] = self._d_loss(self.ddp(D_B), real_A, self.pool_query("BtoA", fake_A))
        self.backward_step(losses["D_A"] + losses["D_B"], "D")
        return {"G": loss_G, **losses}  # type: ignore[dict-item]

    def _pix2pix_step(
        self, real_A: torch.Tensor, real_B: torch.Tensor
    ) -> dict[str, torch.Tensor | float]:
        c = self.cfg
        G, D = self.G["AtoB"], self.D["AtoB"]
        with self.amp.autocast():
            fake_B = self.ddp(G)(real_A)
        set_requires_grad([D], True)
        self.opt_D.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss_D = self._d_loss(self.ddp(D), torch.cat([real_A, real_B], 1),
                                  torch.cat([real_A, fake_B], 1))
        self.backward_step(loss_D, "D")
        set_requires_grad([D], False)
        self.opt_G.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss_gan = self.gan(D(torch.cat([real_A, fake_B], 1)), True, for_discriminator=False)
            loss_l1 = self.l1(fake_B, real_B) * c.lambda_l1
            extra = self.extra_generator_loss()
            loss_G = loss_gan + loss_l1 + sum(extra.values())
        self.backward_step(loss_G, "G")  # type: ignore[arg-type]
        set_requires_grad([D], True)
        return {"G": loss_G, "G_GAN": loss_gan, "L1": loss_l1, **extra, "D": loss_D}

    def finish(self, run_dir: Path) -> dict[str, Any]:
        c = self.cfg
        out: dict[str, Any] = {"task": c.task, "generators": {}}
        rows = []
        for name, g in self.G.items():
            g.eval()
            for net, kind, role in ((g, "G", "teacher"),
                                    (self.D[name], "D", "teacher-discriminator")):
                save_model(net, run_dir / f"{kind}_{name}.pt", task=c.task, direction=name,
                           role=role, run=str(run_dir), size=c.size)
            prof = profile(g, (1, g.spec.input_nc, c.size, c.size))
            prof256 = profile(g, (1, g.spec.input_nc, 256, 256))
            out["generators"][name] = {
                "file": f"G_{name}.pt",
                "params": prof.params,
                f"gmacs_paper_{c.size}": prof.macs_paper / 1e9,
                f"gmacs_true_{c.size}": prof.macs_true / 1e9,
                "gmacs_paper_256": prof256.macs_paper / 1e9,
                "gmacs_true_256": prof256.macs_true / 1e9,
            }
        with torch.no_grad():
            for i in range(min(4, len(self.test_set))):
                item = self.test_set.get(i, None)
                a = item["A"].unsqueeze(0).to(self.device)
                row = [item["A"], self.G["AtoB"](a)[0]]
                if c.task == "cyclegan":
                    bb = item["B"].unsqueeze(0).to(self.device)
                    row += [item["B"], self.G["BtoA"](bb)[0]]
                else:
                    row.append(item["B"])
                rows.append(row)
        save_grid(rows, run_dir / "samples.png")
        for g in self.G.values():
            g.train()
        return out


@loop.stage_verb
def train_teacher(
    cfg: TeacherConfig,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train a teacher into ``out``; the one verb behind ``dmad teacher``."""
    loop.prepare_run_dir(out, resume=resume, force=force)
    cfg.batch_size = loop.per_rank_batch(out, resume, cfg.batch_size)
    stage = TeacherStage(cfg)
    return loop.run(
        stage,
        out,
        loop.Schedule(cfg.steps, cfg.decay_steps),
        to_dict(cfg),
        resume=resume,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        max_steps=max_steps,
        tensorboard=cfg.tensorboard,
    )

