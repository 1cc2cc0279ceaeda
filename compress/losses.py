"""GAN objectives and the image pool, shared by teacher training, search and fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

GAN_MODES = ("lsgan", "vanilla", "hinge")


class GANLoss(nn.Module):
    """LSGAN (MSE to 1/0), vanilla (BCE with logits) or hinge.

    For hinge the generator side is −mean(D(fake)) and the discriminator side
    mean(relu(1 − D(real))) / mean(relu(1 + D(fake))), as in DMAD's ``GANLoss``.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"gan_mode: {mode!r} is not one of {', '.join(GAN_MODES)}")
        self.mode = mode

    def forward(
        self, pred: torch.Tensor, target_real: bool, for_discriminator: bool = True
    ) -> torch.Tensor:
        if self.mode == "lsgan":
            target = torch.ones_like(pred) if target_real else torch.zeros_like(pred)
            return nn.functional.mse_loss(pred, target)
        if self.mode == "vanilla":
            target = torch.ones_like(pred) if target_real else torch.zeros_like(pred)
            return nn.functional.binary_cross_entropy_with_logits(pred, target)
        if not for_discriminator:
            return -pred.mean()
        if target_real:
            return nn.functional.relu(1 - pred).mean()
        return nn.functional.relu(1 + pred).mean()


class ImagePool:
    """History of generated images for the discriminator (Shrivastava et al.; CycleGAN pool 50).

    Randomness comes from its own (CPU) generator and the stored images are plain tensors, so
    the pool is saved in checkpoints and a resumed run makes the same choices. Images stay on the
    device they came from (no copy to the host, so no GPU sync per step); ``state_dict`` moves
    them to the CPU.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() > 0.5:
                i = int(torch.randint(0, self.size, (1,), generator=self.gen).item())
                old = self.images[i].to(img.device)
                self.images[i] = img.clone()
                out.append(old)
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, object]:
        return {"images": [t.cpu().clone() for t in self.images], "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.images = [t.clone() for t in state["images"]]  # type: ignore[attr-defined]
        self.gen.set_state(state["gen"])  # type: ignore[arg-type]
