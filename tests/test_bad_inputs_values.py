"""The second catalogue of bad inputs (issue #22), part 2: near-miss formats, paths the OS refuses, values out
of their domain found late (each refused before anything is written). How a case is judged:
``tests/bad_inputs_common.py``; part 1 (results reused or read back, overrides): ``tests/test_bad_inputs_stale.py``.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.bad_inputs_common import (assert_clean, cases_of, SIZE, Case, cam_argv, copy_tree, eval_argv, make_base,
                                     pipeline_yaml, train_yaml, trains_first)


# ------------------------------------------------------------ near-miss formats
def c_eval_npz_that_is_npy(b, t):
    cams = copy_tree(b["cams"], t / "cams")
    with open(cams / f"{b['ids'][0]}.npz", "wb") as f:
        np.save(f, np.full((1, SIZE, SIZE), 0.5, np.float32))
    return Case(eval_argv(b, t, cams), rf"{b['ids'][0]}\.npz: a plain \.npy array")


def c_eval_cam_classes_last_axis(b, t):
    cams = copy_tree(b["cams"], t / "cams")
    np.savez(cams / f"{b['ids'][1]}.npz", classes=np.array([0, 1]), cams=np.full((SIZE, SIZE, 2), 0.5, np.float32))
    return Case(eval_argv(b, t, cams), rf"{b['ids'][1]}\.npz: .*last axis")


def c_eval_cam_values_0_255(b, t):
    cams = copy_tree(b["cams"], t / "cams")
    for i in b["ids"]:
        np.savez(cams / f"{i}.npz", classes=np.array([0]), cams=np.full((1, SIZE, SIZE), 128.0, np.float32))
    return Case(eval_argv(b, t, cams), r"\.npz: CAM values span \[128, 128\], expected \[0, 1\]")


def c_eval_list_with_bom(b, t):
    (t / "list.txt").write_bytes(b"\xef\xbb\xbf" + (b["root"] / "list.txt").read_bytes())
    return Case(eval_argv(b, t, None, None, t / "list.txt"), accept=True)


def c_eval_list_crlf(b, t):
    (t / "list.txt").write_bytes((b["root"] / "list.txt").read_bytes().replace(b"\n", b"\r\n"))
    return Case(eval_argv(b, t, None, None, t / "list.txt"), accept=True)


def c_eval_classes_not_utf8(b, t):
    names = (b["root"] / "names.txt").read_text().splitlines()
    names[1] = "bi\xe8re"
    (t / "names.txt").write_bytes("\n".join(names).encode("latin-1"))
    argv = eval_argv(b, t)[:-4] + ["--classes", str(t / "names.txt")]
    return Case(argv, r"names\.txt: not UTF-8 text \(byte 0xe8 at offset \d+\)")


def c_eval_gt_100_megapixels(b, t):
    gt = copy_tree(b["gt"], t / "gt")
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, format="PNG")
    (gt / f"{b['ids'][0]}.png").write_bytes(buf.getvalue())
    return Case(eval_argv(b, t, None, gt), rf"{b['ids'][0]}\.png: .*10000x10000 = 100\.0 megapixels")


# ------------------------------------------------------------ paths the OS refuses
def c_eval_out_name_too_long(b, t):
    argv = eval_argv(b, t)
    argv[argv.index("--out") + 1] = str(t / "out" / ("m" * 300 + ".json"))
    return Case(argv, r"longer than the \d+ the file system allows")


def c_cam_out_dangling_symlink(b, t):
    (t / "out").symlink_to(t / "nowhere")
    return Case(cam_argv(b, t), r"--out .*out: .*out is a symbolic link to .*nowhere, which does not exist",
                watch=t / "nowhere")


def c_run_out_dir_symlink_loop(b, t):
    (t / "out").symlink_to(t / "out")
    return Case(["run", "--config", pipeline_yaml(b, t)], r"run\.out_dir .*out: a symbolic link loop", watch=t / "nothing")


def c_train_out_dir_symlink_loop(b, t):
    (t / "out").symlink_to(t / "out")
    return Case(["train-cls", "--config", train_yaml(b, t)], r"out: a symbolic link loop", watch=t / "nothing")


# ------------------------------------------------------------ values out of domain, checks before any write


def c_cam_scales_inf(b, t):
    return Case(cam_argv(b, t) + ["--scales", "1.0,inf"], r"--scales '1\.0,inf': inf is not a finite number")


def c_cam_set_and_flag_disagree(b, t):
    return Case(cam_argv(b, t) + ["--set", "n_layers=1"], r"--set n_layers=1 and the flag --n-layers \(2\) disagree")


def c_run_seg_scales_inf(b, t):
    cfg = pipeline_yaml(b, t, lambda c: c.setdefault("seg", {}).setdefault("infer", {}).__setitem__("scales", [1.0, float("inf")]))
    return Case(["run", "--config", cfg], r"seg\.infer\.scales\[1\]: expected a finite number, found the number inf")


def c_run_device_cuda_without_one(b, t):
    cfg = pipeline_yaml(b, t, lambda c: c["run"].__setitem__("device", "cuda"))
    return Case(["run", "--config", cfg], r"run\.device = 'cuda': CUDA is not available", needs_no_cuda=True)


def c_run_dataset_absent(b, t):
    cfg = pipeline_yaml(b, t, lambda c: c["data"].__setitem__("root", str(t / "nowhere")))
    return Case(["run", "--config", cfg], r"nowhere")


def c_run_cam_kind_the_model_lacks(b, t):
    cfg = pipeline_yaml(b, t, trains_first(kind="gradcam"))
    return Case(["run", "--config", cfg], r"cam\.kind = 'gradcam': expected one of fused, patchcam, mtatt")


def c_run_cam_option_the_model_does_not_read(b, t):
    cfg = pipeline_yaml(b, t, trains_first("tscam_tiny_conv", n_layers=2))
    return Case(["run", "--config", cfg], r"cam\.n_layers = 2: TSCAM .* does not read this CAM option; expected it "
                                          r"unset \(its CAM options: none\)")


def c_run_cam_n_layers_beyond_the_depth(b, t):
    cfg = pipeline_yaml(b, t, trains_first(n_layers=3))
    return Case(["run", "--config", cfg], r"cam\.n_layers = 3: expected 1\.\.2 ")


def c_run_cam_model_other_than_the_classifier(b, t):
    cfg = pipeline_yaml(b, t, trains_first("tscam_tiny_conv", model="mctformer_v2_tiny_conv"))
    return Case(["run", "--config", cfg], r"cam\.model = 'mctformer_v2_tiny_conv': the classifier the train-cls "
                                          r"stage trains has 'tscam_tiny_conv'")


def c_run_cam_doei_other_than_the_classifier(b, t):
    cfg = pipeline_yaml(b, t, trains_first(doei={"enabled": True}))
    return Case(["run", "--config", cfg], r"cam\.doei: differs from classifier\.doei.*override_doei")


def c_ablate_betas_invalid(b, t):
    from doei.utils.repo_configs import configs_dir

    d = yaml.safe_load((configs_dir() / "ablate.yaml").read_text())
    d.setdefault("study", {})["betas"] = "0.9:0.1:0.1"
    (t / "s.yaml").write_text(yaml.safe_dump(d))
    return Case(["ablate", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--seeds", "1"],
                r"s\.yaml: study\.betas")


def c_sweep_param_out_of_domain(b, t):
    return Case(["sweep", "--out", str(t / "out"), "--quick", "--param", "af_p2c=0.5,-1"], r"af_p2c.*-1")


def c_sweep_param_inf(b, t):
    return Case(["sweep", "--out", str(t / "out"), "--quick", "--param", "af_p2c=inf"], r"--param 'af_p2c=inf'.*finite")


def c_demo_train_device_cuda(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--set", "train.device=cuda"],
                r"train\.device = 'cuda': CUDA is not available", needs_no_cuda=True)


CASES = cases_of(globals())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("values"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, base, tmp_path):
    assert_clean(CASES, name, base, tmp_path)
