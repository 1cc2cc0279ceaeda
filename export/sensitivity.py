"""Which layers cost a full-int8 file its fidelity, measured on the calibration images.

Why by measurement and not by layer name: on real weights the tensor that ruins int8 is wherever
the activations have outliers or the grid is too coarse for the signal (a full-resolution
layer, the residual stream, the Tanh grid), and that differs between models and trainings. The
model is quantised the way the export quantises it (:mod:`dmad.compress.quant_aware` restates
the recipe: per-channel weights, per-tensor activations around every convolution, equalised
outputs, the balanced residual stream, the Tanh grid), with fake int8 in PyTorch: a forward
pass per layer and image, no TensorFlow conversion. For each convolution it reports the PSNR of
the whole model against float with only that layer in int8 (what the layer alone costs) and
with every layer but that one (what keeping it float would buy), ranked by the latter. Held-out
images are never used: they judge the file.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from dmad.compress.metrics import psnr
from dmad.compress.quant_aware import observe_ranges, quant_aware_, switch_layers
from dmad.export.tflite import POST_FLOOR_DB

__all__ = ["LOW_CONTRAST", "MAX_HYBRID", "candidate_plans", "choose_float_layers",
           "kept_out_of_int8", "kept_phrase", "layer_sensitivity", "low_contrast"]


#: the contrast of the flat copies the screen adds (a quarter: a photograph's pixel spread is
#: typically 0.2 of the range, a foggy or moonlit one 0.05)
LOW_CONTRAST = 0.25


def low_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` (NCHW in [-1, 1]) with every channel's spread around its mean scaled by
    ``factor``: the same scene, as flat as a photograph taken in fog or at night."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (mean + (x - mean) * factor).clamp(-1.0, 1.0)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, calib: np.ndarray, max_images: int = 4,
                      max_side: int = 128, multiple: int = 4, want_db: float | None = None,
                      max_plan: int = 3, screen: int = 32, contrast: float = LOW_CONTRAST,
                      kinds: tuple[str, ...] = ("float",), subpixel: bool = True
                      ) -> dict[str, Any]:
    """Per-convolution int8 sensitivity of ``model`` on the ``max_images`` calibration images
    where all-int8 does worst (NCHW float in [-1, 1]; centre crops of at most ``max_side``, a
    multiple of ``multiple``, so a large model is judged in seconds). The first ``screen``
    images set the fake ranges (as all calibration images set the file's) and are screened
    with every layer in int8: the worst ``max_images`` of them are judged, since the floor
    applies to every photograph and one dark or flat photograph is where int8 breaks first
    (judging the first few drawn made the choice hinge on the draw). Beside each screened image
    a copy with its contrast scaled by ``contrast`` (:func:`low_contrast`; 0: none) is
    screened too, under the same ranges: a flat photograph (fog, the moon, a wall) is the one
    int8 loses first, and whether a random draw of crops holds one is luck. ``judged`` names
    the calibration images judged (a flat copy by its original), ``judged_low_contrast`` the
    flat copies among them. Each PSNR is that of the
    **worst** judged image: ``psnr_all_int8_db`` (every layer in fake int8, against float; the
    mean over the judged images as ``psnr_all_int8_mean_db``), and per layer
    ``psnr_alone_db``, ``psnr_without_db`` and ``gain_db`` (what keeping that layer float buys
    over all-int8), largest gain first. When all-int8 is under ``want_db``, ``plan``: float
    sets grown greedily (each step the layer whose float copy helps most with the others,
    re-measured; at most ``max_plan`` float and :data:`MAX_HYBRID` hybrid layers), with their
    PSNR, past ``want_db`` with hybrid layers only (:func:`_greedy_plan`). ``kinds``: how a
    layer kept out of int8 may run in the file, ``float`` and ``hybrid`` (int8 weights, its
    input rounded with each image's range, float output;
    :mod:`export.hybrid`): with ``hybrid``, each plain convolution's row also has
    ``hybrid_gain_db`` and the plan tries both kinds of it (a transposed one only when the
    export writes it in ``subpixel`` form)."""
    m = copy.deepcopy(model).float().eval()
    quant_aware_(m)
    h, w = calib.shape[2], calib.shape[3]
    ch = min(h, max_side) // multiple * multiple or h
    cw = min(w, max_side) // multiple * multiple or w
    top, left = (h - ch) // 2, (w - cw) // 2
    pool = [torch.from_numpy(np.ascontiguousarray(calib[i:i + 1, :, top:top + ch,
                                                        left:left + cw], np.float32))
            for i in range(min(len(calib), max(screen, max_images)))]
    flat = [low_contrast(x, contrast) for x in pool] if contrast > 0 else []
    switch_layers(m, set(), tanh=False)
    cands = pool + flat
    cand_refs = [m(x) for x in cands]
    observe_ranges(m, pool)  # the file's ranges come from the calibration images alone
    screened = [psnr(r, m(x)) for r, x in zip(cand_refs, cands, strict=True)]
    worst_first = np.argsort(np.nan_to_num(screened, nan=-np.inf), kind="stable")  # a
    judged = sorted(worst_first[:max_images].tolist())  # non-finite image is the worst
    xs, refs = [cands[i] for i in judged], [cand_refs[i] for i in judged]
    convs = [n for n, mod in m.named_modules()
             if isinstance(mod, nn.Conv2d | nn.ConvTranspose2d) and hasattr(mod, "dmad_qa_in")]
    hybrid_ok = _hybrid_ok(m, convs, subpixel)

    def score(names: set[str] | None, hybrid: set[str] | frozenset[str] = frozenset()
              ) -> float:
        switch_layers(m, names, hybrid=hybrid)
        return min(psnr(r, m(x)) for r, x in zip(refs, xs, strict=True))

    per_image = [screened[i] for i in judged]  # every layer in int8: the screen measured it
    every = min(per_image)
    rows = []
    for name in convs:
        rest = set(convs) - {name}
        row = {"layer": name, "psnr_alone_db": round(score({name}), 2),
               "psnr_without_db": round(score(rest), 2)}
        row["gain_db"] = round(row["psnr_without_db"] - every, 2)
        if "hybrid" in kinds and name in hybrid_ok:
            row["hybrid_gain_db"] = round(score(rest, {name}) - every, 2)
        rows.append(row)
    rows.sort(key=lambda r: -max(r["gain_db"], r.get("hybrid_gain_db", 0.0)))
    plan = _greedy_plan(score, convs, every, rows, want_db, max_plan, kinds, hybrid_ok) \
        if want_db is not None and every < want_db else []
    n = len(pool)
    return {"images": len(xs), "screened": n,
            "judged": list(dict.fromkeys(i % n for i in judged)),
            "judged_low_contrast": [i - n for i in judged if i >= n], "contrast": contrast,
            "kinds": list(kinds), "crop": [ch, cw],
            "psnr_all_int8_db": round(every, 2),
            "psnr_all_int8_mean_db": round(float(np.mean(per_image)), 2),
            "layers": rows, "plan": plan,
            "method": "fake int8 in PyTorch (the export's recipe, compress.quant_aware) on the "
                      "calibration images, worst image"}


def _hybrid_ok(model: nn.Module, convs: list[str], subpixel: bool) -> set[str]:
    """The convolutions a hybrid form exists for: plain ones (a ConvTranspose is one in the
    file when the export writes it as a convolution + depth-to-space)."""
    mods = dict(model.named_modules())
    return {n for n in convs if mods[n].groups == 1
            and (isinstance(mods[n], nn.Conv2d) or subpixel)}


#: short of the floor a layer, float or hybrid, must buy this much (dB, fake int8 on the
#: worst judged image) to be kept
STEP_DB = 0.25


#: a hybrid layer is taken over a float one when it buys at least this share of the float
#: one's gain: it runs at about the int8 rate, a float one at the fp32 rate
HYBRID_SHARE = 0.75


#: hybrid layers the plan may add besides its float ones (each is re-measured at every step)
MAX_HYBRID = 4


#: a layer is a plan candidate when keeping it out of int8 buys anything, or when it alone in
#: int8 costs over a tenth of the noise the target allows (PSNR under the target + 10 dB):
#: while one layer ruins every image (``up2`` on the photo teacher: 17 dB), the others' gains
#: read as nothing, and ``up1`` (−0.33 dB gain, 42.5 dB alone) was never tried, though once
#: ``up2`` was out it bought 1.8 dB
CANDIDATE_DB = 10.0


def _candidates(rows: list[dict[str, Any]], want_db: float, kinds: tuple[str, ...]
                ) -> list[str]:
    def gain(r: dict[str, Any]) -> float:
        return max(r["gain_db"] if "float" in kinds else 0.0, r.get("hybrid_gain_db", 0.0))

    return [r["layer"] for r in rows
            if gain(r) > 0 or not r.get("psnr_alone_db", np.inf) >= want_db + CANDIDATE_DB]


def _greedy_plan(score: Any, convs: list[str], every: float, rows: list[dict[str, Any]],
                 want_db: float, most: int, kinds: tuple[str, ...],
                 hybrid_ok: set[str], most_hybrid: int = MAX_HYBRID) -> list[dict[str, Any]]:
    """Sets of layers kept out of int8, grown one layer at a time, the best re-measured at each
    step, over :func:`_candidates` (not the layers that buy nothing and cost under a tenth of
    the target's noise alone: each try is a pass over the judged images); at most ``most``
    float and ``most_hybrid`` hybrid layers. A layer goes hybrid where that buys
    ``HYBRID_SHARE`` of the best float gain. Past ``want_db`` only hybrid layers are added,
    while one buys ``POST_FLOOR_DB``: they run at about the int8 rate, and a held-out
    photograph can be harder than every calibration image (the photo teacher's moon was
    33.5 dB with the plan that cleared the floor on the crops, and 43.0 dB with ``up1`` and
    ``stem`` hybrid too, the layers this search then found)."""
    tried = _candidates(rows, want_db, kinds)
    plan: list[dict[str, Any]] = []
    fl: list[str] = []
    hy: list[str] = []
    best, reached = every, False
    while True:
        left = [c for c in tried if c not in fl and c not in hy]
        out = set(convs) - set(fl) - set(hy)
        got = {("float", c): score(out - {c}, set(hy)) for c in left
               if "float" in kinds and not reached and len(fl) < most}
        got |= {("hybrid", c): score(out - {c}, {*hy, c}) for c in left
                if "hybrid" in kinds and c in hybrid_ok and len(hy) < most_hybrid}
        if not got:
            break
        step = POST_FLOOR_DB if reached else STEP_DB
        (kind, c), db = max(got.items(), key=lambda kv: kv[1])
        hyb = {k: v for k, v in got.items() if k[0] == "hybrid" and v >= best + step
               and v - best >= HYBRID_SHARE * (db - best)}
        if hyb:
            (kind, c), db = max(hyb.items(), key=lambda kv: kv[1])
        if db < best + step:
            break  # no layer helps enough any more
        (fl if kind == "float" else hy).append(c)
        best = db
        plan.append({"float_layers": list(fl), "hybrid_layers": list(hy),
                     "psnr_db": round(db, 2)})
        reached = reached or db >= want_db
    return plan


def choose_float_layers(sens: dict[str, Any], floor_db: float, most: int,
                        margin_db: float = 1.0) -> tuple[list[str], list[str], str]:
    """The layers to keep out of int8 so fake int8 on the worst calibration image clears
    ``floor_db`` by ``margin_db``, with at most ``most`` float layers (hybrid layers besides:
    they run at about the int8 rate): the first plan that clears it, with the
    hybrid layers the plan added after it (such a layer is float in and out in the file too,
    so the prediction holds for images like the calibration ones; a held-out photograph
    unlike them can still fall below); when none clears it, the most-improving plan if it
    gains at least 1 dB (its shortest prefix within ``STEP_DB`` of it). Returns the float
    layers, the hybrid layers (none when all-int8 already clears the floor) and why."""
    every = float(sens["psnr_all_int8_db"])
    want = floor_db + margin_db
    if every >= want or most < 1:
        return [], [], ""
    plans = _within(sens, most)
    # over the floor: the first plan that clears it, and the hybrid layers the plan added
    # after it (each bought POST_FLOOR_DB at about the int8 rate)
    clear = [p for p in plans if p["psnr_db"] >= want]
    ok = [p for p in clear if p["float_layers"] == clear[0]["float_layers"]][-1:]
    # short of the floor, the shortest plan within STEP_DB of the best: a float layer that
    # buys a few hundredths of a dB costs its full float latency
    best = max((p["psnr_db"] for p in plans), default=None)
    pick = ok[0] if ok else next((p for p in plans if p["psnr_db"] >= best - STEP_DB), None)
    if pick is None or pick["psnr_db"] < every + 1.0:
        return [], [], ""
    fl, hy = list(pick["float_layers"]), list(pick.get("hybrid_layers", []))
    why = (f"fake int8 on the worst calibration image: {every:.1f} dB all-int8, "
           f"{pick['psnr_db']:.1f} dB with {kept_phrase(fl, hy)} "
           f"(floor {floor_db:g} dB + {margin_db:g} dB margin)")
    return fl, hy, why


def _within(sens: dict[str, Any], most: int) -> list[dict[str, Any]]:
    """The sensitivity's plans with at most ``most`` float and MAX_HYBRID hybrid layers."""
    return [p for p in sens.get("plan") or [] if len(p["float_layers"]) <= most
            and len(p.get("hybrid_layers", [])) <= MAX_HYBRID]


def candidate_plans(sens: dict[str, Any], most: int) -> list[tuple[list[str], list[str]]]:
    """(float layers, hybrid layers) to try on real int8 files, fewest first: all-int8 (fake
    int8 can be several dB too pessimistic), then every plan of the sensitivity within the
    limits, in fake int8's order (each adds the layer it found to buy most: the order is what
    fake int8 gets right)."""
    plans = _within(sens, most)
    return [([], []), *((list(p["float_layers"]), list(p.get("hybrid_layers", [])))
                        for p in plans)]


def kept_phrase(float_layers: list[str], hybrid_layers: list[str]) -> str:
    """``a float and b, c hybrid``, or ``all-int8``: a plan in a sentence."""
    kept = [f"{', '.join(float_layers)} float"] * bool(float_layers) + \
        [f"{', '.join(hybrid_layers)} hybrid"] * bool(hybrid_layers)
    return " and ".join(kept) or "all-int8"


def kept_out_of_int8(choice: dict[str, Any] | None) -> list[str]:
    """The layers a choice (``parity.json``'s ``int8_auto_float``) kept out of int8, for a
    report: the float ones by name, then the hybrid ones marked ``(hybrid)``."""
    choice = choice or {}
    return [*(choice.get("float_layers") or []),
            *(f"{h} (hybrid)" for h in choice.get("hybrid_layers") or [])]

