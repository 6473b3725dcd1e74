"""Backbone: timm models by name, pooled features, data config, and weights from local files."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_VIT
from vitkit import Backbone, WeightsError


def tiny_timm(**overrides) -> torch.nn.Module:
    kwargs = {**TINY_VIT["model_kwargs"], **overrides}
    return timm.create_model(TINY_VIT["model_name"], **kwargs)


def assert_same_weights(backbone: Backbone, reference: dict[str, torch.Tensor]) -> None:
    state = backbone.model.state_dict()
    assert state.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key


def test_forward_returns_pooled_features_of_num_features_width():
    backbone = Backbone(**TINY_VIT)
    out = backbone(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, backbone.num_features) == (3, 192)


def test_data_config_follows_img_size_not_the_pretrained_default():
    config = Backbone(**TINY_VIT).data_config
    assert config["input_size"] == (3, 32, 32)
    assert config["mean"] == (0.5, 0.5, 0.5)  # augreg ViT statistics from timm's pretrained cfg, not ImageNet's
    assert config["interpolation"] == "bicubic"


def test_non_vit_timm_models_work():
    backbone = Backbone("resnet18")
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert backbone.data_config["input_size"] == (3, 224, 224)


def test_none_model_kwargs_are_dropped_so_timm_defaults_apply():
    backbone = Backbone(TINY_VIT["model_name"], model_kwargs={**TINY_VIT["model_kwargs"], "drop_path_rate": None})
    assert backbone.num_features == 192


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_reproduces_saved_tensors_exactly_and_drops_classifier(tmp_path, suffix):
    source = tiny_timm(num_classes=10)  # a file with a 10-class classifier head, as hub files have
    state = source.state_dict()
    path = tmp_path / f"weights{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    backbone = Backbone(**TINY_VIT, weights=path)
    assert_same_weights(backbone, {k: v for k, v in state.items() if not k.startswith("head.")})


def test_hub_code_path_with_a_local_file(tmp_path):
    """`pretrained=True` goes through timm's hub loader; pretrained_cfg_overlay points it at a local file."""
    state = tiny_timm(num_classes=1000).state_dict()
    save_file(state, str(tmp_path / "model.safetensors"))
    overlay = {"file": str(tmp_path / "model.safetensors")}
    kwargs = {**TINY_VIT["model_kwargs"], "pretrained_cfg_overlay": overlay}
    backbone = Backbone(TINY_VIT["model_name"], pretrained=True, model_kwargs=kwargs)
    assert_same_weights(backbone, {k: v for k, v in state.items() if not k.startswith("head.")})


def test_position_embeddings_are_resampled_for_another_img_size(tmp_path):
    save_file(tiny_timm().state_dict(), str(tmp_path / "w.safetensors"))
    backbone = Backbone(
        TINY_VIT["model_name"],
        weights=tmp_path / "w.safetensors",
        model_kwargs={**TINY_VIT["model_kwargs"], "img_size": 64},
    )
    assert backbone.model.pos_embed.shape[1] == 1 + (64 // 8) ** 2


def test_mismatched_weights_list_missing_unexpected_and_shape_errors(tmp_path):
    state = tiny_timm().state_dict()
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 5)
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError) as err:
        Backbone(**TINY_VIT, weights=tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "bad.safetensors" in message
    assert "missing keys (1): norm.weight" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "blocks.0.mlp.fc1.weight: file (5, 5) vs model (768, 192)" in message


def test_weights_from_a_deeper_model_name_the_extra_blocks(tmp_path):
    save_file(tiny_timm(depth=3).state_dict(), str(tmp_path / "deep.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected keys \(\d+\): blocks\.2\."):
        Backbone(**TINY_VIT, weights=tmp_path / "deep.safetensors")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file not found: .*nope\.pth"):
        Backbone(**TINY_VIT, weights=tmp_path / "nope.pth")


def test_pretrained_and_weights_together_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="either pretrained=True"):
        Backbone(**TINY_VIT, pretrained=True, weights=tmp_path / "w.pth")


def test_timm_fused_attention_stays_on():
    """vitkit never disables timm's scaled_dot_product_attention path (the fast one on GPUs)."""
    backbone = Backbone(**TINY_VIT)
    assert all(block.attn.fused_attn for block in backbone.model.blocks)
