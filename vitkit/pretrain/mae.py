"""MAE: masked autoencoding; the encoder sees only the visible patches and a small decoder predicts the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from vitkit.backbone import Backbone
from vitkit.module import _default_optimizer
from vitkit.pretrain.base import PretrainModule, require_vit


class MAE(PretrainModule):
    """Masked autoencoder (He et al., 2021) with lightly's masked ViT, decoder and masking, for timm ViTs.

    A random ``mask_ratio`` of each image's patches is hidden; the backbone encodes the visible ones (cheap: a
    quarter of the tokens at 0.75), the decoder fills in mask tokens and predicts the hidden patches' pixels, and
    the loss is their mean squared error. Only the backbone is kept for fine-tuning.

    Args:
        backbone: a timm VisionTransformer (``vit_*``, ``deit_*``; not distilled DeiTs or CNNs).
        mask_ratio: share of patches hidden from the encoder.
        decoder_dim, decoder_depth, decoder_heads: width, blocks and attention heads of the decoder.
        norm_pix_loss: predict each patch's pixels normalised by its own mean and variance (sharper features).
        min_scale: smallest random crop, as a share of the image area (lightly's ``MAETransform``).
        optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t: see :class:`~vitkit.pretrain.PretrainModule`.
    """

    def __init__(
        self,
        backbone: Backbone,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = False,
        min_scale: float = 0.2,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        knn_k: int = 20,
        knn_t: float = 0.1,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler, scheduler_interval, knn_k, knn_t)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MAE: mask_ratio must be in (0, 1), got {mask_ratio}.")
        vit = backbone.model
        require_vit(vit, "MAE")
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM

        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.min_scale = min_scale
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_patches = vit.patch_embed.num_patches
        self.num_prefix_tokens = vit.num_prefix_tokens
        # lightly's masked view of the backbone's ViT: it holds the same modules, so it is kept out of the module
        # tree (a tuple is not registered) and the encoder's weights stay under backbone.model.* only once.
        self._masked_vit = (
            MaskedVisionTransformerTIMM(vit, weight_initialization="skip", pos_embed_initialization="skip"),
        )
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_prefix_tokens=self.num_prefix_tokens,
        )
        self.prediction_head = nn.Linear(decoder_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels)
        self.criterion = nn.MSELoss()

    def train_transform(self, data_config: dict[str, Any]) -> Callable:
        from lightly.transforms import MAETransform

        normalize = {"mean": list(data_config["mean"]), "std": list(data_config["std"])}
        return MAETransform(tuple(data_config["input_size"][1:]), min_scale=self.min_scale, normalize=normalize)

    def random_masks(self, batch_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx_keep, idx_mask)`` token indices per image: prefix tokens (class, registers) are always kept,
        ``mask_ratio`` of the patches are masked."""
        from lightly.models.utils import random_token_mask

        keep, mask = random_token_mask((batch_size, self.num_patches), self.mask_ratio, True, device)
        prefix = torch.arange(self.num_prefix_tokens, device=device).expand(batch_size, -1)
        return torch.cat([prefix, keep + self.num_prefix_tokens], dim=1), mask + self.num_prefix_tokens

    def reconstruction_loss(self, images: torch.Tensor) -> torch.Tensor:
        """MSE between the predicted and the true pixels of the masked patches of ``images``."""
        from lightly.models import utils

        batch_size = images.shape[0]
        idx_keep, idx_mask = self.random_masks(batch_size, images.device)
        encoded = self._masked_vit[0].encode(images, idx_keep=idx_keep)
        tokens = self.decoder_embed(encoded)
        # scatter the visible tokens into a full-length sequence; the decoder puts mask tokens at idx_mask
        full = tokens.new_zeros(batch_size, self.num_patches + self.num_prefix_tokens, tokens.shape[-1])
        decoded = self.decoder(utils.set_at_index(full, idx_keep, tokens), idx_mask=idx_mask)
        predicted = self.prediction_head(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - self.num_prefix_tokens)
        if self.norm_pix_loss:
            target = utils.normalize_mean_var(target, dim=-1)
        return self.criterion(predicted, target.to(predicted.dtype))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0][0]  # MAETransform gives one view per image
        loss = self.reconstruction_loss(images)
        self.log_loss(loss, images.shape[0])
        return loss
