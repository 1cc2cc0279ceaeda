"""``MaskSearch``: DMAD's search driven by the user's own loop, to the budget, pruned exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from dmad.compress.arch import profile
from dmad.compress.errors import DmadError
from dmad.compress.mask_search import MaskSearch
from dmad.compress.models import ResnetGenerator, ResnetSpec, UnetGenerator, UnetSpec


def _drive(search: MaskSearch, teacher: torch.nn.Module, steps: int, size: int) -> list[float]:
    """A user's distillation loop: L1 to the teacher plus the search's regulariser."""
    opt = torch.optim.Adam(search.model_parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.l1_loss(search.model(x), y) + search.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        search.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("family", ["resnet", "unet"])
def test_a_users_loop_reaches_the_budget_and_the_pruned_model_is_exact(family: str) -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3)) if family == "resnet" else \
        UnetGenerator(UnetSpec(ngf=8, num_downs=5))
    teacher = copy.deepcopy(g).eval()
    full = profile(g, (1, 3, 256, 256)).macs_paper / 1e9
    target = full / 3
    search = MaskSearch(g, target_gmacs=target, steps=40, bound_updates=10)
    mask_params = {id(m.weight) for m in search.masks["AtoB"].values()}
    assert not mask_params & {id(p) for p in search.model_parameters()}
    _drive(search, teacher, 40, 32)
    assert search.done
    student = search.prune()
    macs = profile(student, (1, 3, 256, 256)).macs_paper / 1e9
    assert (1 - search.scfg.budget_tolerance) * target <= macs <= target * (1 + 1e-6)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(student(x), search.model.eval()(x), atol=1e-5)


def test_the_masks_move_and_the_schedule_runs_in_the_users_loop() -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3))
    teacher = copy.deepcopy(g).eval()
    search = MaskSearch(g, target_gmacs=0.2, steps=12, bound_updates=4)
    before = {n: m.weight.detach().clone() for n, m in search.masks["AtoB"].items()}
    _drive(search, teacher, 6, 32)
    assert any(not torch.equal(before[n], m.weight) for n, m in search.masks["AtoB"].items())
    assert search.updates >= 1  # bound updates happened
    bound = float(next(iter(search.masks["AtoB"].values())).bound)
    assert bound < 1.0
    with pytest.raises(DmadError, match="more than steps"):
        _drive(search, teacher, 7, 32)


def test_prune_before_the_end_fits_to_budget_now_and_bad_fields_are_named() -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3))
    search = MaskSearch(g, target_gmacs=0.2, steps=100)
    student = search.prune()
    assert profile(student, (1, 3, 256, 256)).macs_paper / 1e9 <= 0.2 * (1 + 1e-6)
    assert search.events[-1]["reason"] == "pruned before the end of the schedule"
    with pytest.raises(DmadError, match="lambda_gan"):
        MaskSearch(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3)), target_gmacs=0.2, steps=10,
                   lambda_gan=1.0)
    with pytest.raises(DmadError, match=r"target_gmacs.*smallest"):
        MaskSearch(ResnetGenerator(ResnetSpec(ngf=8, n_blocks=3)), target_gmacs=1e-6, steps=10)


@pytest.mark.parametrize("arch", ["cut-antialias", "in-house", "pix2pixhd", "pixel-shuffle"])
def test_a_generator_dmad_does_not_know_is_searched_through_its_graph(arch: str) -> None:
    """CUT with its blur layers and an in-house generator (bilinear upsampling, long skip):
    masks on the traced sites, the budget met within its tolerance, the pruned GraphModule
    equal to the masked model, and its MACs what the budget counted."""
    from dmad.compress.graph_cost import GraphSpec
    from tests.reference_generators import CutResnet, InHouse, Pix2PixHDGlobal, ShuffleUp

    torch.manual_seed(0)
    g = {"cut-antialias": lambda: CutResnet(ngf=8, n_blocks=2, antialias=True),
         "in-house": lambda: InHouse(8),
         "pix2pixhd": lambda: Pix2PixHDGlobal(ngf=4, n_down=3, n_blocks=2),
         "pixel-shuffle": lambda: ShuffleUp(8)}[arch]()
    teacher = copy.deepcopy(g).eval()
    full = GraphSpec.of(g, 64).macs({}, 64)[0] / 1e9
    search = MaskSearch(g, target_gmacs=full / 3, steps=60, macs_size=64)
    assert search.family == "graph" and len(search.masks["AtoB"]) >= 4
    opt = torch.optim.Adam(search.model_parameters(), lr=2e-4)
    for _ in range(60):
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            y = teacher(x)
        loss = (search.model(x) - y).abs().mean() + search.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        search.step()
    assert search.done and search.cut["AtoB"]["within_tolerance"]
    student = search.prune()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (student(x) - search.model.eval()(x)).abs().max().item() < 1e-5
    got = search.cost().macs("paper")
    assert got <= full / 3 * 1e9 and got >= 0.97 * full / 3 * 1e9
    if arch != "cut-antialias":  # no fixed filters: arch.profile counts every MAC it has
        assert profile(student, (1, 3, 64, 64)).macs_paper == got
