"""Recipes whose strategies need GPUs: check that their settings build the objects they name."""

from __future__ import annotations

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from timm.models.vision_transformer import Block

from vitkit.recipes import RECIPES_DIR as RECIPES


def test_fsdp_recipe_wraps_and_checkpoints_each_timm_block():
    strategy_config = yaml.safe_load((RECIPES / "fsdp_vit_large.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate(parser.parse_object({"strategy": strategy_config})).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy.sharding_strategy.name == "FULL_SHARD"


def test_ddp_recipe_is_ddp_bf16_on_all_gpus():
    trainer = yaml.safe_load((RECIPES / "ddp_bf16.yaml").read_text())["trainer"]
    assert (trainer["strategy"], trainer["precision"], trainer["devices"]) == ("ddp", "bf16-mixed", "auto")
    assert trainer["accelerator"] == "auto"  # every GPU when there are any (and the CPU for a smoke test)
