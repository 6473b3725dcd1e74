"""Self-supervised pretraining of a :class:`~vitkit.Backbone` on unlabelled images: MAE, DINO and distillation.

The methods wire the ``lightly`` library's heads, losses, masking and transforms (the ``pretrain`` extra:
``pip install 'vitkit[pretrain]'``) to vitkit's backbone, data and trainer; ``vitkit pretrain`` runs them. Every
method trains ``self.backbone``, so checkpoints hold the encoder under the same ``backbone.model.*`` keys as
:class:`~vitkit.TransferModule`: ``--model.backbone.init_args.weights PRETRAIN.ckpt`` starts any fit recipe from it.
Decoders, heads and teachers live under other names (``decoder.*``, ``head.*``, ``teacher_backbone.*``,
``teacher.*``). At the end of training the encoder is also written as a timm-layout safetensors file
(:class:`EncoderExport`), which ``Backbone(model_name, weights=FILE)`` loads.
"""

from vitkit.pretrain.base import EncoderExport, PretrainModule, embedding_spread, knn_accuracy, save_encoder
from vitkit.pretrain.dino import DINO
from vitkit.pretrain.distillation import Distillation
from vitkit.pretrain.mae import MAE

__all__ = [
    "DINO",
    "MAE",
    "Distillation",
    "EncoderExport",
    "PretrainModule",
    "embedding_spread",
    "knn_accuracy",
    "save_encoder",
]
