"""Initial ResNet38 weights: coverage is reported and too few matching keys is refused with one line
(``doei.models.initial_weights``), before any stage of ``doei run``; MXNet ``.params`` files (written
here in the NDArray list format by the test itself) are read without MXNet into our key names; the
CRF seed-score cache gives the same files with a worker pool as serially."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from doei.errors import DoeiError

SMALL = {"width": 0.0625}


def _aff():
    from doei.engine.train_aff import build_affinity_model

    torch.manual_seed(0)
    return build_affinity_model("psa_resnet38_aff_small", SMALL, radius=4)


# ------------------------------------------------------------------ MXNet NDArray list writer (test side)
def _mx_name(key: str) -> str:
    """Our ResNet38 key → the MXNet parameter name of the ImageNet release (the inverse of the reader)."""
    leaf = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    if key.startswith("bn7."):
        param = key.split(".")[1]
        return f"{'aux' if 'running' in param else 'arg'}:bn7_{leaf[param]}"
    block, layer, param = key.split(".")
    stage, _, unit = block[1:].partition("_")
    unit = "a" if not unit else f"b{unit}"
    kind, branch = layer.split("_branch")
    if kind == "conv":
        return f"arg:res{stage}{unit}_branch{branch}_weight"
    return f"{'aux' if 'running' in param else 'arg'}:bn{stage}{unit}_branch{branch}_{leaf[param]}"


def write_ndarray_list(path, arrays: dict[str, np.ndarray], legacy: bool = False) -> None:
    """An MXNet ``mx.nd.save`` file: list magic, arrays (V2 dense, or the legacy layout), names."""
    flags = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    for a in arrays.values():
        a = np.ascontiguousarray(a)
        if legacy:
            out.append(struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
        else:
            out.append(struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape))
        out.append(struct.pack("<iii", 1, 0, flags[a.dtype]) + a.astype(a.dtype.newbyteorder("<")).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        b = name.encode()
        out.append(struct.pack("<Q", len(b)) + b)
    path.write_bytes(b"".join(out))


def _imagenet_like(model) -> dict[str, np.ndarray]:
    """The backbone of ``model`` under MXNet names (no heads, no counters) + the ImageNet classifier."""
    from doei.models.initial_weights import expected_new_keys

    new = set(expected_new_keys(model))
    arrays = {_mx_name(k): v.numpy() for k, v in model.state_dict().items() if k not in new}
    arrays["arg:linear1000_weight"] = np.ones((3, 4), np.float32)
    return arrays


@pytest.mark.parametrize("legacy", [False, True])
def test_mxnet_params_load_into_our_keys_with_full_coverage(tmp_path, legacy):
    from doei.models.initial_weights import load_initial_weights
    from doei.models.mxnet_params import read_ndarray_file

    src = _aff()
    arrays = _imagenet_like(src)
    arrays["arg:conv1a_weight"] = arrays["arg:conv1a_weight"].astype(np.float16)     # dtype flag 2, read as float32
    f = tmp_path / "resnet38.params"
    write_ndarray_list(f, arrays, legacy=legacy)
    back = read_ndarray_file(f)
    assert list(back) == list(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    from doei.engine.train_aff import build_affinity_model

    torch.manual_seed(1)
    fresh = build_affinity_model("psa_resnet38_aff_small", SMALL, radius=4)
    cov = load_initial_weights(fresh, f, "psa_resnet38_aff_small")
    assert cov.fraction == 1.0 and cov.unused == 0
    assert {k.split(".")[0] for k in cov.new if not k.endswith("num_batches_tracked")} == {"f8_3", "f8_4", "f8_5", "f9"}
    for k, v in src.state_dict().items():
        if k.startswith(("f8_", "f9")) or k.endswith("num_batches_tracked"):
            continue
        want = v.half().float() if k == "conv1a.weight" else v
        assert torch.equal(fresh.state_dict()[k], want), k


def test_not_an_mxnet_file_and_foreign_names_are_one_line_errors(tmp_path):
    from doei.models.mxnet_params import read_ndarray_file, resnet38_state_dict_from_mxnet

    bad = tmp_path / "x.params"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(DoeiError, match="not an MXNet .params file"):
        read_ndarray_file(bad)
    write_ndarray_list(bad, {"arg:features.0.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(DoeiError, match="not a ResNet-38 name"):
        resnet38_state_dict_from_mxnet(bad)
    write_ndarray_list(bad, {"arg:conv1a_weight": np.zeros((2, 2), np.float32)})
    (tmp_path / "t.params").write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DoeiError, match="truncated"):
        read_ndarray_file(tmp_path / "t.params")


def test_too_few_matching_keys_is_refused_with_one_line(tmp_path):
    from doei.engine.train_aff import build_affinity_model
    from doei.models.initial_weights import MIN_COVERAGE

    sd = {f"backbone.{k}": v for k, v in _aff().state_dict().items()}     # every key renamed: 0 % match
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(DoeiError) as e:
        build_affinity_model("psa_resnet38_aff_small", SMALL, str(tmp_path / "renamed.pth"), radius=4)
    msg = str(e.value)
    assert "\n" not in msg and "only 0 of" in msg and "renamed.pth" in msg
    half = dict(list(_aff().state_dict().items())[: len(sd) // 2])
    torch.save(half, tmp_path / "half.pth")
    with pytest.raises(DoeiError, match=f"at least {100 * MIN_COVERAGE:.0f} % required"):
        build_affinity_model("psa_resnet38_aff_small", SMALL, str(tmp_path / "half.pth"), radius=4)


def test_coverage_is_logged_and_heads_listed(tmp_path):
    from doei.engine.train_seg import build_seg_model

    torch.manual_seed(0)
    src = build_seg_model("deeplab_resnet38_small", 11, SMALL)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("fc8_seg")}
    sd["fc8.weight"] = torch.zeros(3)                                    # a classifier head: unused, fine
    torch.save({"state_dict": sd}, tmp_path / "cls.pth")
    lines: list[str] = []
    build_seg_model("deeplab_resnet38_small", 11, SMALL, str(tmp_path / "cls.pth"), log=lines.append)
    assert len(lines) == 1 and "(100.0 %)" in lines[0] and "fc8_seg_conv1, fc8_seg_conv2" in lines[0]
    assert "1 file keys unused" in lines[0]


def test_doei_run_refuses_bad_init_weights_before_any_stage(tmp_path):
    from doei.pipeline import run_pipeline
    from tests.pipeline_common import make_synth, tiny_config

    synth = make_synth(tmp_path)
    torch.save({"x.weight": torch.zeros(2)}, tmp_path / "wrong.pth")
    cfg = tiny_config(synth, tmp_path / "run", seg__train__init_weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(DoeiError, match=r"seg.train.init_weights = .*wrong.pth: only 0 of"):
        run_pipeline(cfg, log=lambda *_: None)
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "run" / "cls").exists()
    cfg = tiny_config(synth, tmp_path / "run2", refine__train__init_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(DoeiError, match="refine.train.init_weights = .*missing.pth: .*not found"):
        run_pipeline(cfg, log=lambda *_: None)


def test_eval_train_split_must_be_inside_the_cam_split(tmp_path):
    from doei.pipeline import run_pipeline
    from tests.pipeline_common import make_synth, tiny_config

    synth = make_synth(tmp_path)
    cfg = tiny_config(synth, tmp_path / "run", eval__train_split="val")
    with pytest.raises(DoeiError, match="eval.train_split = 'val': 2 of its 2 ids"):
        run_pipeline(cfg, log=lambda *_: None)
    assert not (tmp_path / "run" / "stages").exists()


def test_crf_score_cache_with_workers_equals_serial(tmp_path):
    from doei.data.build import build_dataset
    from doei.engine.train_aff import precompute_crf_scores
    from tests.pipeline_common import N_TRAIN, make_synth, tiny_config, write_cams_from_masks

    synth = make_synth(tmp_path)
    write_cams_from_masks(synth, tmp_path / "cam")
    outs = {}
    for w in (0, 2):
        cfg = tiny_config(synth, tmp_path / f"run{w}", refine__train__cam_dir=str(tmp_path / "cam"),
                          refine__train__crf_workers=w)
        sec = cfg.refine.train
        n = precompute_crf_scores(build_dataset("synth", synth, "train"), sec.cam_dir, tmp_path / f"s{w}", sec,
                                  progress=False)
        assert n == N_TRAIN
        outs[w] = sorted((tmp_path / f"s{w}").glob("*.npz"))
    assert [p.name for p in outs[0]] == [p.name for p in outs[2]] and len(outs[0]) == N_TRAIN
    for a, b in zip(outs[0], outs[2]):
        with np.load(a) as za, np.load(b) as zb:
            assert all(np.array_equal(za[k], zb[k]) for k in ("la", "ha"))


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_resnet38_nets_use_every_trainable_parameter(frozen_bn):
    """Why ``doei.engine.sgd_loop`` wraps them in DDP with ``find_unused_parameters=False``."""
    from doei.engine.train_aff import build_affinity_model
    from doei.engine.train_seg import build_seg_model

    torch.manual_seed(0)
    for model, size in ((build_affinity_model("psa_resnet38_aff_small", {**SMALL, "frozen_bn": frozen_bn}, radius=4), 72),
                        (build_seg_model("deeplab_resnet38_small", 11, {**SMALL, "frozen_bn": frozen_bn}), 48)):
        model.train()
        model(torch.randn(2, 3, size, size)).sum().backward()
        assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
