"""The GPU recipes' real hub path, offline: timm's own download code reads a local Hugging Face cache holding
randomly initialised timm-format repos (:mod:`tests.hub`), and each recipe runs a 2-step epoch on the CPU.

``vit_base_classify`` and ``ddp_bf16`` (also under torchrun) run in the README test, as its commands.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import vitkit
from tests.hub import fill_hub_cache, offline_hub_env
from tests.readme.test_readme import CPU_SMOKE
from vitkit.synthetic import make_multilabel_manifest, make_regression_manifest, make_shapes_folder

pytestmark = pytest.mark.slow

MODEL = "vit_base_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("hf-cache")
    fill_hub_cache(cache, MODEL)
    return offline_hub_env(cache)


def shapes(folder):
    return ["--data.root", make_shapes_folder(folder, per_class=6, sizes=(24, 48)), "--trainer.devices", "2"]


@pytest.mark.parametrize(
    "recipe, data",
    [
        ("multilabel_vit_base", lambda folder: ["--data.csv", make_multilabel_manifest(folder, n=16, size=40)]),
        ("regression_vit_base", lambda folder: ["--data.csv", make_regression_manifest(folder, n=16, size=40)]),
        ("ddp_bf16", shapes),  # DDP with 2 processes
    ],
)
def test_gpu_recipe_runs_with_hub_weights_and_their_data_settings(recipe, data, hub, tmp_path):
    args = ["fit", "--config", recipe, *data(tmp_path / "data"), *CPU_SMOKE]
    result = vitkit(*args, env=hub, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    (last,) = (tmp_path / "runs").glob("*/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["backbone"]["init_args"]["model_name"] == MODEL
    # The transforms followed the weights' pretrained config (augreg: mean/std 0.5, bicubic), not ImageNet's; the
    # evaluation sees the whole image (Backbone eval_crop "whole", the default), not the config's 0.9 centre crop.
    config = checkpoint["vitkit"]["data_config"]
    assert (config["mean"], config["std"]) == ([0.5] * 3, [0.5] * 3)
    assert (config["interpolation"], config["input_size"]) == ("bicubic", [3, 224, 224])
    assert (config["crop_pct"], config["crop_mode"]) == (1.0, "squash")
