"""Random walk vs psa_randomwalk.npz (both variants, every stored intermediate; README §5.4).

Features are ``elu(f9_preelu)`` from psa_affinity.npz (same image), so no network is built."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doei.errors import DoeiError
from doei.models.affinity import affinity_from_features, dense_affinity
from doei.models.pairs import pair_indices, pair_offsets
from doei.refine.random_walk import (MCTFORMER_DEFAULTS, PSA_DEFAULTS, cam_vector, cam_with_background,
                                     random_walk_dense, random_walk_refine, random_walk_stencil, stencil_weights)

VARIANTS = {"mct": MCTFORMER_DEFAULTS, "psa": PSA_DEFAULTS}


def close(out, ref) -> None:
    out = out.numpy() if isinstance(out, torch.Tensor) else out
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def fixtures(reference):
    za, z = reference("psa_affinity.npz"), reference("psa_randomwalk.npz")
    assert np.array_equal(za["image_uint8"], z["image_uint8"])
    feats = F.elu(torch.from_numpy(za["f9_preelu"]))[0]
    return za, z, feats


def bg_kwargs(v: dict) -> dict:
    return {k: v[k] for k in ("bg_mode", "bg_threshold", "alpha") if k in v}


def test_pair_indices_match_official(fixtures):
    za, _, _ = fixtures
    fr, to = pair_indices(13, 17)
    assert np.array_equal(fr.numpy(), za["ind_from"]) and np.array_equal(to.numpy(), za["ind_to"])
    assert len(pair_offsets(5)) == 34


def test_affinity_from_stored_features(fixtures):
    za, _, feats = fixtures
    aff = affinity_from_features(feats[None])
    close(aff, za["aff"])
    close(dense_affinity(aff[0], 13, 17), za["aff_dense"])


@pytest.mark.parametrize("variant", ["mct", "psa"])
def test_intermediates_of_official_formulation(fixtures, variant):
    za, z, _ = fixtures
    v = VARIANTS[variant]
    vec = cam_vector(cam_with_background(z["cam"], z["cam_keys"], 21, **bg_kwargs(v)))
    close(vec, z[f"{variant}_cam_vec"])
    rw, trans = random_walk_dense(vec, torch.from_numpy(za["aff_dense"]), v["beta"], v["logt"])
    close(trans, z[f"{variant}_trans_mat"])
    close(rw.view(1, 21, 13, 17), z[f"{variant}_cam_rw_lowres"])


@pytest.mark.parametrize("variant", ["mct", "psa"])
def test_stencil_walk_and_pseudo_mask(fixtures, variant):
    za, z, feats = fixtures
    v = VARIANTS[variant]
    pred, low = random_walk_refine(z["cam"], z["cam_keys"], feats, return_scores=True, **v)
    close(low[None], z[f"{variant}_cam_rw_lowres"])
    up = F.interpolate(low[None], size=(104, 136), mode="bilinear", align_corners=False)[0, [0, 3, 15]]
    close(up, z[f"{variant}_cam_rw_up_used_channels"])
    assert pred.dtype == np.uint8 and pred.shape == (100, 130)
    assert int((pred != z[f"{variant}_official_pred"]).sum()) == 0
    # the stencil on the official sparse affinities reproduces the official walked scores too
    vec = cam_vector(cam_with_background(z["cam"], z["cam_keys"], 21, **bg_kwargs(v)))
    rw = random_walk_stencil(vec, stencil_weights(torch.from_numpy(za["aff"][0]), 13, 17, v["beta"]), v["logt"])
    close(rw.view(1, 21, 13, 17), z[f"{variant}_cam_rw_lowres"])


def test_dense_affinity_input_gives_same_mask(fixtures):
    za, z, _ = fixtures
    pred = random_walk_refine(z["cam"], z["cam_keys"], torch.from_numpy(za["aff_dense"]), **MCTFORMER_DEFAULTS)
    assert np.array_equal(pred, z["mct_official_pred"])


def test_stencil_equals_exact_matrix_power_on_random_grid():
    g = torch.Generator().manual_seed(3)
    h, w = 11, 14
    aff = affinity_from_features(torch.rand(1, 16, h, w, generator=g))[0]
    vec = torch.zeros(21, h * w)
    vec[[0, 5, 9]] = torch.rand(3, h * w, generator=g)
    exact, _ = random_walk_dense(vec.double(), dense_affinity(aff.double(), h, w), 8, 5)
    out = random_walk_stencil(vec, stencil_weights(aff, h, w, 8), 5)
    assert torch.all(out[[1, 2, 3]] == 0)                             # absent classes stay exactly 0
    assert float((out.double() - exact).abs().max()) < 1e-6


def test_bad_inputs_are_one_line_errors(fixtures):
    _, z, feats = fixtures
    with pytest.raises(DoeiError, match="expected features"):
        random_walk_refine(z["cam"], z["cam_keys"], torch.zeros(5, 5))
    with pytest.raises(DoeiError, match=r"expected \[C,13,17\]"):
        random_walk_refine(z["cam"], z["cam_keys"], feats[:, :12])
    with pytest.raises(DoeiError, match="0-based foreground ids"):
        cam_with_background(z["cam"], [2, 20])
    with pytest.raises(DoeiError, match="bg_mode"):
        cam_with_background(z["cam"], z["cam_keys"], bg_mode="median")
