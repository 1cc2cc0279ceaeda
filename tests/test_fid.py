"""FID/KID maths against closed forms and direct implementations; the FID Inception's layout.

No real weights are needed (they are never downloaded): the architecture tests save a randomly
initialised network in the key layout of ``pt_inception-2015-12-05-6726825d.pth`` and load it
back through :func:`compress.fid.load_inception`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmad.compress import fid
from dmad.compress.errors import DmadError
from dmad.compress.fid import (
    FIDInception,
    activation_stats,
    fid_kid,
    frechet_distance,
    kid,
    load_inception,
    load_real_stats,
    quantize_images,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread (the machine is shared); the previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Fréchet distance


def _random_cov(rng: np.random.Generator, d: int, n: int | None = None) -> np.ndarray:
    """A random full covariance (rank min(n, d) when ``n`` samples are given)."""
    a = rng.standard_normal((n or 3 * d, d)) @ rng.standard_normal((d, d))
    return np.cov(a, rowvar=False)


def test_frechet_identical_is_zero() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), _random_cov(rng, 32)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_identical_singular_is_zero() -> None:
    """Fewer samples than dimensions (singular Σ, the usual case for small test sets)."""
    rng = np.random.default_rng(1)
    mu, sigma = activation_stats(np.abs(rng.standard_normal((20, 256))))
    assert np.linalg.matrix_rank(sigma) == 19
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_1d_closed_form() -> None:
    # N(1, 4) vs N(-2, 9): (1 + 2)² + 4 + 9 - 2·√36 = 9 + 1 = 10
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                            np.array([[9.0]])) == pytest.approx(10.0, abs=1e-12)
    # scalars are accepted too (np.atleast_1d/2d as pytorch-fid)
    assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(10.0, abs=1e-12)


def test_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    v1, v2 = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expect, rel=1e-12)


def test_frechet_commuting_full_covariances_closed_form() -> None:
    """Σ1 = Q D1 Qᵀ, Σ2 = Q D2 Qᵀ share eigenvectors: the trace term is Σ √(d1 d2)."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    d1, d2 = rng.uniform(0.01, 5, 12), rng.uniform(0.01, 5, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    got = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expect, rel=1e-10)


def test_frechet_random_full_covariance_independent() -> None:
    """Against tr √(Σ1Σ2) from the general (non-symmetric) eigenvalues of the product.

    ``np.linalg.eigvals`` of Σ1Σ2 is a different algorithm from the implementation's two
    symmetric eigendecompositions of Σ1^½ Σ2 Σ1^½; both must agree.
    """
    rng = np.random.default_rng(4)
    d = 24
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    lam = np.linalg.eigvals(s1 @ s2)
    assert np.abs(lam.imag).max() < 1e-8 * np.abs(lam).max()
    tr_sqrt = np.sqrt(np.clip(lam.real, 0, None)).sum()
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-9)


def test_frechet_symmetric_and_positive() -> None:
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16) + 0.5
    s1, s2 = _random_cov(rng, 16, n=10), _random_cov(rng, 16)
    ab, ba = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-10)


def test_frechet_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.array([[1.0, np.nan], [np.nan, 1.0]]), np.zeros(2),
                         np.eye(2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


def test_activation_stats_matches_numpy() -> None:
    x = np.random.default_rng(6).standard_normal((50, 5)).astype(np.float32)
    mu, sigma = activation_stats(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.shape == (5, 5)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        activation_stats(x[:1])


# --------------------------------------------------------------------------------------------
# KID


def _mmd2_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, written out as double sums (O(n²) loops)."""
    d, m = x.shape[1], x.shape[0]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "per-subset"])
def test_kid_matches_direct_double_sum(gram: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One subset of the full size is a permutation of each set: MMD² of the full sets."""
    if not gram:
        monkeypatch.setattr(fid, "_MAX_GRAM_ENTRIES", 0)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((25, 6)), rng.standard_normal((25, 6)) * 1.3 + 0.2
    mean, std = kid(x, y, subsets=1, subset_size=25)
    assert mean == pytest.approx(_mmd2_direct(x, y), rel=1e-10)
    assert std == 0.0
    # with several subsets of the full size all subsets are the same permutation-invariant sum
    mean3, std3 = kid(x, y, subsets=3, subset_size=1000)
    assert mean3 == pytest.approx(mean, rel=1e-10) and std3 < 1e-12


def test_kid_gram_and_per_subset_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((60, 8)), rng.standard_normal((45, 8)) + 0.3
    fast = kid(x, y, subsets=10, subset_size=20, seed=3)
    monkeypatch.setattr(fid, "_MAX_GRAM_ENTRIES", 0)
    slow = kid(x, y, subsets=10, subset_size=20, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-14)


def test_kid_same_distribution_near_zero_and_shift_positive() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    mean, std = kid(x, y, subsets=20, subset_size=200)
    shifted_mean, shifted_std = kid(x, y + 1.0, subsets=20, subset_size=200)
    assert std > 0
    assert abs(mean) < 3 * std
    assert shifted_mean > 0.1 and shifted_mean > 20 * shifted_std
    assert shifted_mean > 20 * abs(mean)


def test_kid_subset_size_capped_and_seeded() -> None:
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((30, 4))
    a = kid(x, y, subsets=5, subset_size=1000, seed=1)
    assert a == kid(x, y, subsets=5, subset_size=1000, seed=1)
    assert a != kid(x, y, subsets=5, subset_size=1000, seed=2)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)
    with pytest.raises(ValueError, match="widths"):
        kid(x, y[:, :3])


# --------------------------------------------------------------------------------------------
# FID Inception

# (name, shape) of tensors of pt_inception-2015-12-05-6726825d.pth
REAL_FILE_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7dbl_2.conv.weight": (128, 128, 7, 1),
    "Mixed_6e.branch7x7_2.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
}

# InceptionV3 (torchvision, 1000 classes, with AuxLogits) has 27,161,264 parameters; less the
# AuxLogits head (conv0 98,304 + bn 256, conv1 2,457,600 + bn 1,536, fc 769,000 = 3,326,696)
# and the 1000-class fc (2,049,000) leaves the trunk: 21,785,568.
TRUNK_PARAMS = 21_785_568


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random FIDInception saved like the real file: trunk state dict + 1008-class fc.

    Convs get a variance-preserving init and BNs non-trivial statistics so that features are
    O(1) and a wrongly loaded tensor would change them.
    """
    torch.manual_seed(0)
    model = FIDInception()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    state = dict(model.state_dict())
    state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def inception(weights_file: Path) -> FIDInception:
    return load_inception(weights_file)


def test_architecture_keys_shapes_and_param_count() -> None:
    model = FIDInception()
    state = model.state_dict()
    for key, shape in REAL_FILE_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("AuxLogits", "fc.")) for k in state)
    convs = [m for m in model.modules() if isinstance(m, fid.BasicConv2d)]
    assert len(convs) == 94
    assert all(c.bn.eps == 0.001 and c.conv.bias is None for c in convs)
    assert len(state) == 94 * 6  # conv weight + BN weight/bias/mean/var/num_batches_tracked
    assert sum(p.numel() for p in model.parameters()) == TRUNK_PARAMS
    assert not model.training


def test_fid_specific_pooling() -> None:
    """The FID patches: A/C/E_1 pool without counting padding, E_2 (Mixed_7c) max-pools."""
    model = FIDInception()
    assert not model.Mixed_7b.max_pool and model.Mixed_7c.max_pool
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(fid._avg_pool_no_pad(x), x)  # zeros in the padding would lower corners


def test_load_and_features(inception: FIDInception, weights_file: Path) -> None:
    saved = torch.load(weights_file, weights_only=True)
    for key, value in inception.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert all(not p.requires_grad or p.dtype == torch.float32 for p in inception.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[1] = x[1, :1]  # the second image is grey (three equal channels)
    a = inception.features(x)
    assert a.shape == (2, fid.FEATURE_DIM) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and (a >= 0).all() and a.abs().max() > 1e-3
    assert not torch.allclose(a[0], a[1])
    # features = pytorch-fid's forward on the uint8-quantised image in [0, 1], bit for bit
    # (which also shows the computation is deterministic)
    with torch.no_grad():
        ref = inception(torch.round((x + 1) / 2 * 255) / 255)
    assert torch.equal(a, ref)
    # batching does not change the result; the train/eval mode is restored
    inception.train()
    b = inception.features(x, batch_size=1)
    assert inception.training
    inception.eval()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # one 1 x H x W image: a batch axis is added and grey becomes RGB
    torch.testing.assert_close(inception.features(x[1, :1]), a[1:], rtol=1e-4, atol=1e-5)


def test_quantize_images() -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, float("nan")])
    assert quantize_images(x, "round").mul(255).tolist() == [0, 0, 128, 255, 255, 0]
    assert quantize_images(x, "floor").mul(255).tolist() == [0, 0, 127, 255, 255, 0]
    # a real uint8 image that went through ToTensor + Normalize comes back exactly (round)
    u = torch.arange(256, dtype=torch.float32)
    back = quantize_images((u / 255 - 0.5) / 0.5, "round") * 255
    assert torch.equal(back.round(), u) and (back - u).abs().max() < 1e-4
    with pytest.raises(ValueError):
        quantize_images(x, "bad")  # type: ignore[arg-type]


def _one_line_error(path: Path) -> str:
    with pytest.raises(DmadError) as info:
        load_inception(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


class NotATensor:
    """Saved by reference: ``weights_only=True`` must refuse to import it."""


def test_load_inception_rejects_wrong_files(weights_file: Path, tmp_path: Path) -> None:
    state = torch.load(weights_file, weights_only=True)
    del state["Mixed_6e.branch7x7dbl_5.bn.running_var"]
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    state["Mixed_5b.branch_pool.conv.weight"] = torch.zeros(64, 192, 1, 1)
    torch.save(state, tmp_path / "wrong.pth")
    msg = _one_line_error(tmp_path / "wrong.pth")
    assert "1 missing, e.g. Mixed_6e.branch7x7dbl_5.bn.running_var" in msg
    assert "1 unexpected, e.g. AuxLogits.fc.weight" in msg
    assert "1 wrong shape, e.g. Mixed_5b.branch_pool.conv.weight (64, 192, 1, 1)" in msg

    torch.save({"Conv2d_1a_3x3.conv.weight": NotATensor()}, tmp_path / "code.pth")
    assert "refused" in _one_line_error(tmp_path / "code.pth")

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert "state dict" in _one_line_error(tmp_path / "list.pth")

    assert "no such file" in _one_line_error(tmp_path / "absent.pth")
    (tmp_path / "trunc.pth").write_bytes(weights_file.read_bytes()[:1000])
    assert "truncated" in _one_line_error(tmp_path / "trunc.pth")


def test_load_inception_without_num_batches_tracked(weights_file: Path, tmp_path: Path) -> None:
    """Files saved by old torch versions have no num_batches_tracked; eval mode never uses it."""
    state = torch.load(weights_file, weights_only=True)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    model = load_inception(tmp_path / "old.pth")
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight,
                       state["Mixed_7c.branch_pool.conv.weight"])


def test_fid_kid_end_to_end(inception: FIDInception, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(2)
    real = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    fake = torch.rand(3, 3, 48, 48, generator=gen) * 2 - 1
    same = fid_kid(iter([real[0], real[1]]), real[:2], inception, kid_subsets=2)
    assert same["n_real"] == same["n_fake"] == 2
    assert abs(same["fid"]) < 1e-6  # 2 samples in 2048-d: singular covariances

    extracted: list[np.ndarray] = []
    original = fid.extract_features

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        extracted.append(original(*args, **kwargs))  # type: ignore[arg-type]
        return extracted[-1]

    monkeypatch.setattr(fid, "extract_features", spy)
    out = fid_kid([real], [fake[:2], fake[2:]], inception, kid_subsets=2)
    assert set(out) == {"fid", "kid_mean", "kid_std", "n_real", "n_fake"}
    assert out["n_real"] == out["n_fake"] == 3
    feats_r, feats_f = extracted
    assert feats_r.shape == feats_f.shape == (3, 2048) and feats_r.dtype == np.float64
    # FID from the features by an independent low-rank route: with centred features A (n x D),
    # Σ = AᵀA/(n-1), so the non-zero eigenvalues of Σr Σf are those of (Ar Afᵀ)(Af Arᵀ)/((n-1)²)
    # and tr √(Σr Σf) is the nuclear norm of Ar Afᵀ over n-1.
    a_r, a_f = feats_r - feats_r.mean(0), feats_f - feats_f.mean(0)
    tr_sqrt = np.linalg.svd(a_r @ a_f.T, compute_uv=False).sum() / 2
    expect = (np.sum((feats_r.mean(0) - feats_f.mean(0)) ** 2) + np.sum(a_r**2) / 2
              + np.sum(a_f**2) / 2 - 2 * tr_sqrt)
    assert out["fid"] > 0
    assert out["fid"] == pytest.approx(expect, rel=1e-9)
    # with 3 images per side every subset is the whole set: KID equals the direct double sum
    assert out["kid_mean"] == pytest.approx(_mmd2_direct(feats_r, feats_f), rel=1e-9)
    with pytest.raises(DmadError, match="at least 2"):
        fid_kid([real[:1]], [fake], inception)


def test_load_real_stats(tmp_path: Path) -> None:
    mu, sigma = np.arange(3.0), np.eye(3)
    np.savez(tmp_path / "stats.npz", mu=mu.astype(np.float32), sigma=sigma)
    got_mu, got_sigma = load_real_stats(tmp_path / "stats.npz")
    assert got_mu.dtype == np.float64 and np.array_equal(got_mu, mu)
    assert np.array_equal(got_sigma, sigma)

    np.savez(tmp_path / "nosigma.npz", mu=mu)
    np.savez(tmp_path / "badshape.npz", mu=mu, sigma=np.eye(2))
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"a": 1}], dtype=object), sigma=sigma)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, words in (("nosigma", "'sigma'"), ("badshape", "shape"), ("pickled", "readable"),
                        ("junk", "readable"), ("absent", "no such file")):
        with pytest.raises(DmadError, match=words) as info:
            load_real_stats(tmp_path / f"{name}.npz")
        assert "\n" not in str(info.value) and f"{name}.npz" in str(info.value)


def test_fid_stats_file_and_eval_against_it(weights_file: Path, inception: FIDInception,
                                            tmp_path: Path) -> None:
    """``dmad fid-stats`` writes mu/sigma of a folder's features with its protocol; ``dmad eval
    --real-stats`` scores the student's and the teacher's outputs against them (the same
    generator as both: the same FID) and records the protocol."""
    import json
    import subprocess

    from PIL import Image

    from dmad.compress.checkpoint import save_model
    from dmad.compress.evaluate import EvalConfig, evaluate
    from dmad.compress.fid import folder_features, stats_protocol
    from dmad.compress.models import ResnetSpec, build
    from tests.conftest import dmad_cmd

    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(real / f"{i}.png")
    out = tmp_path / "stats.npz"
    cmd = dmad_cmd("fid-stats", str(real), "--inception", str(weights_file), "--out", str(out))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    feats, names = folder_features(real, inception)
    got_mu, got_sigma = load_real_stats(out)
    mu, sigma = activation_stats(feats)
    assert np.allclose(got_mu, mu, rtol=1e-4) and len(names) == 4
    # another process (other thread count) rounds differently: compare at sigma's own scale
    assert np.abs(got_sigma - sigma).max() <= 1e-3 * np.abs(sigma).max()
    assert stats_protocol(out)["count"] == 4  # type: ignore[index]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--force" in again.stderr  # never replaced silently

    torch.manual_seed(0)
    g = build(ResnetSpec(ngf=4, n_blocks=1))
    save_model(g, tmp_path / "g.pt")
    ev = evaluate(EvalConfig(student=str(tmp_path / "g.pt"), teacher=str(tmp_path / "g.pt"),
                             images=str(real), size=32, inception=str(weights_file),
                             real_stats=str(out), device="cpu"), tmp_path / "ev")
    fr = ev["fid_vs_real_stats"]
    assert fr["student"] == pytest.approx(fr["teacher"]) and fr["student"] > 0
    assert fr["generated_images"] == 4 and fr["real_protocol"]["images"] == str(real)
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["fid_vs_real_stats"]
    with pytest.raises(DmadError, match="needs --inception"):
        EvalConfig(student="x", real_stats=str(out))
