"""DMAD's search as an object a user's own training loop drives, as Torch-Pruning's pruners are.

    search = MaskSearch(generator, target_gmacs=5.7, steps=2000)
    opt = torch.optim.Adam(search.model_parameters(), lr=2e-4)
    for x in batches:                       # the user's data, loss and optimiser
        loss = my_loss(search.model(x), x) + search.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        search.step()                       # masks: their own step, bound, budget, freeze
    student = search.prune()                # the dense generator at the budget, exactly

The mask logic is :class:`~dmad.compress.train.mask_schedule.MaskSchedule`, the same code
``dmad search`` runs: the sparsity terms, the bound schedule, the residual-group coefficients,
Taylor importance, the early stop under budget and the exact freeze. What the search's own
stage adds (the teacher's GAN objective or distillation, data, checkpoints, torchrun) is the
user's here. The masks train with their own optimiser at their own rate (``mask_lr``), so the
user's optimiser must not hold them: build it from :meth:`MaskSearch.model_parameters`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmad.compress import budget
from dmad.compress.errors import DmadError
from dmad.compress.graph_cost import GraphSpec
from dmad.compress.graph_prune import attach_graph_masks, prune_graph
from dmad.compress.masks import attach_masks
from dmad.compress.models import ResnetGenerator, UnetGenerator
from dmad.compress.train.mask_schedule import MaskSchedule, mask_rates

#: the ``dmad search`` fields that shape the mask schedule (the rest are its training's)
SCHEDULE_FIELDS = ("target_gmacs", "target_ms", "latency_table", "macs_convention",
                   "macs_size", "budget_tolerance", "width_multiple", "mask_weight_decay",
                   "lambda_update", "upconv_coeff", "mask_lr", "bound_schedule",
                   "bound_updates", "frozen_threshold", "fit_rank")


def as_generator(module: nn.Module) -> nn.Module:
    """A dmad generator for ``module``: itself when it is one, else a pytorch-CycleGAN-and-
    pix2pix ResnetGenerator / UnetGenerator mapped by ``dmad import``'s rules (a new module
    with the same weights). :class:`MaskSearch` takes any other generator through its traced
    graph (``compress/structure.py``)."""
    if isinstance(module, ResnetGenerator | UnetGenerator):
        return module
    from dmad.compress.importer import import_checkpoint, infer_arch

    with tempfile.TemporaryDirectory(prefix="dmad-search-") as tmp:
        path = Path(tmp) / "latest_net_G.pth"
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
        arch = infer_arch(path)
        if arch is None:
            raise DmadError(f"{type(module).__name__}: not a ResNet or UNet generator that dmad "
                            "can map (see `dmad import`)")
        model, _report = import_checkpoint(path, arch)
    return model


class MaskSearch(MaskSchedule):
    """DMAD's differentiable-mask search on ``generator`` in the caller's loop (module doc).

    ``steps`` is how many times :meth:`step` will be called; the bound reaches 0 at 75 % of
    them and the architecture is fitted to the budget by the last. Any other ``dmad search``
    field that shapes the schedule is a keyword (:data:`SCHEDULE_FIELDS`); ``lr`` is the
    model's learning rate, from which the default mask rate and sparsity weight follow."""

    def __init__(self, generator: nn.Module, *, steps: int, lr: float = 2e-4,
                 **settings: Any) -> None:
        from dmad.compress.train.search import SearchConfig

        bad = sorted(set(settings) - set(SCHEDULE_FIELDS))
        if bad:
            raise DmadError(f"MaskSearch: unknown field(s) {', '.join(bad)} (known: "
                            f"{', '.join(SCHEDULE_FIELDS)})")
        self.scfg = SearchConfig(teacher="(in memory)", steps=steps, **settings)
        try:
            self.model = as_generator(generator)
        except DmadError:  # not a class dmad knows: its structure comes from its traced graph
            self.model = generator
        if isinstance(self.model, ResnetGenerator | UnetGenerator):
            self.model.spec_full = self.model.spec  # type: ignore[assignment]
            self.masks = {"AtoB": attach_masks(self.model)}
            self.family = self.model.spec.family
        else:
            self.model.spec_full = GraphSpec.of(  # type: ignore[assignment]
                self.model, side=min(self.scfg.macs_size, 64))
            self.masks = {"AtoB": attach_graph_masks(self.model)}
            self.family = "graph"
        self.G = {"AtoB": self.model}
        self.searched = ["AtoB"]
        self._steps = steps
        self.mask_lr, self.mask_wd, self.lambda_update = mask_rates(self.scfg, lr, steps,
                                                                    self.family)
        self.interval = max(1, round(0.75 * steps / self.scfg.bound_updates))
        self.updates, self.n = 0, 0
        self.frozen_at: dict[str, int] = {}
        self.cut: dict[str, dict[str, Any]] = {}
        self.last_cost: dict[str, budget.Cost] = {}
        self.events: list[dict[str, Any]] = []
        self._set_budget()
        self._check_reachable()
        self.opt = torch.optim.Adam([m.weight for m in self.masks["AtoB"].values()],
                                    lr=self.mask_lr, betas=(0.5, 0.999))

    @property
    def total_steps(self) -> int:
        return self._steps

    def model_parameters(self) -> list[nn.Parameter]:
        """The generator's own parameters, for the user's optimiser (the masks are the
        search's)."""
        ids = {id(m.weight) for m in self.masks["AtoB"].values()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    def regularizer(self) -> torch.Tensor:
        """DMAD's sparsity terms on the masks; add it to the loss before ``backward``."""
        ref = next(self.model.parameters())
        return self.extra_generator_loss().get("mask", torch.zeros((), device=ref.device))

    def step(self) -> dict[str, Any]:
        """After the user's ``backward`` (and optimiser step): step the masks, then the
        schedule (bound, group coefficients, budget check, freeze). Returns what changed."""
        if self.n >= self._steps:
            raise DmadError(f"MaskSearch.step: called more than steps={self._steps} times")
        if "AtoB" not in self.frozen_at:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        info = self.after_step(self.n)
        self.n += 1
        return info

    @property
    def done(self) -> bool:
        """The architecture is fixed (under budget, or the schedule ended)."""
        return "AtoB" in self.frozen_at

    def cost(self) -> budget.Cost:
        """The cost the masks leave now (widths, MACs, predicted ms with a latency table)."""
        return self._cost("AtoB")

    def prune(self) -> nn.Module:
        """The dense generator at the budget (fitted now if the search has not frozen yet),
        whose output equals the masked generator's."""
        from dmad.compress.prune import prune

        if not self.done:
            self._freeze_to_budget("AtoB", self.n, "pruned before the end of the schedule")
        if self.family == "graph":
            return prune_graph(self.model.eval())
        return prune(self.model.eval())


__all__ = ["SCHEDULE_FIELDS", "MaskSearch", "as_generator"]
