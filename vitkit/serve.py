"""``vitkit serve``: a trained model behind HTTP with LitServe (the ``serve`` extra): dynamic batching, worker
processes, ``POST /predict`` and an upload page at ``GET /``.

``POST /predict`` takes one image (multipart field ``image``, or JSON ``{"image": base64}``) and answers JSON:
classification ``{"task", "top_k": [{"label", "score"}, ...]}`` with calibrated probabilities; multi-label
``{"task", "labels": [labels over their thresholds], "scores": {label: p}}``; regression ``{"task", "values":
{target: value in its units}}``. With ``?explain=1`` it adds ``attention_png``: the attention rollout over the image
as the model sees it, a base64 PNG. Requests are checked before the workers (:mod:`vitkit.serve_gate`). Importing
this module needs litserve.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import litserve as ls
import torch
from torch import nn

from vitkit.errors import VitkitError
from vitkit.serve_gate import PAGE, RequestGate
from vitkit.tasks import Classification, MultiLabel


def describe(task: nn.Module, prediction: torch.Tensor, top_k: int = 5) -> dict[str, Any]:
    """One image's task prediction as the JSON answer (see the module docstring)."""
    values = prediction.tolist()
    if isinstance(task, Classification):
        order = prediction.argsort(descending=True)[:top_k].tolist()
        return {"task": "classification", "top_k": [{"label": task.names[i], "score": values[i]} for i in order]}
    if isinstance(task, MultiLabel):
        thresholds = task.thresholds.tolist()
        present = [n for n, p, t in zip(task.names, values, thresholds, strict=True) if p >= t]
        return {"task": "multilabel", "labels": present, "scores": dict(zip(task.names, values, strict=True))}
    return {"task": "regression", "values": dict(zip(task.names, values, strict=True))}


class VitkitAPI(ls.LitAPI):
    """A :class:`~vitkit.module.TransferModule` as a LitServe API: decode, batch, predict, describe."""

    def __init__(self, model: nn.Module, top_k: int = 5, max_batch_size: int = 8, batch_timeout: float = 0.01):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model, self.top_k = model.float().eval().cpu(), top_k

    def setup(self, device: str) -> None:
        from timm.data import create_transform

        self.device = device
        self.model = self.model.to(device)
        self.config = self.model.data_config
        self.transform = create_transform(**self.config, is_training=False)

    def decode_request(self, request: dict) -> dict[str, Any]:
        from fastapi import HTTPException

        from vitkit.serve_gate import BadRequest, checked_image

        try:  # checked by the gate already; a request that skipped it still gets a 4xx
            image = checked_image(base64.b64decode(request["image"]))
        except (BadRequest, KeyError, ValueError, TypeError) as err:
            raise HTTPException(getattr(err, "status", 400), getattr(err, "reason", "bad request")) from None
        return {"image": self.transform(image), "explain": bool(request.get("explain"))}

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(inputs)

    def predict(self, inputs: Any) -> Any:
        items = inputs if isinstance(inputs, list) else [inputs]
        images = torch.stack([item["image"] for item in items]).to(self.device)
        explain = any(item["explain"] for item in items)
        with torch.no_grad():
            if explain:
                from vitkit.explain import attention_maps

                outputs, maps = attention_maps(self.model, images, "rollout")
            else:
                outputs, maps = self.model(images), None
            predictions = self.model.task.predict(outputs).cpu()
        results = []
        for i, item in enumerate(items):
            answer = describe(self.model.task, predictions[i], self.top_k)
            if item["explain"]:
                answer["attention_png"] = self.overlay_png(images[i].cpu(), maps[i].cpu())
            results.append(answer)
        return results if isinstance(inputs, list) else results[0]

    def overlay_png(self, image: torch.Tensor, heat: torch.Tensor) -> str:
        from vitkit.explain import overlay

        mean = torch.tensor(self.config["mean"]).view(3, 1, 1)
        std = torch.tensor(self.config["std"]).view(3, 1, 1)
        pixels = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        overlay(pixels, heat.numpy()).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def serve_model(
    model: nn.Module,
    port: int = 8000,
    host: str = "127.0.0.1",
    workers: int = 1,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    top_k: int = 5,
    timeout: float = 30.0,
) -> None:
    """Serve ``model`` (a trained :class:`~vitkit.module.TransferModule`) until interrupted."""
    if workers < 1 or max_batch_size < 1 or not 0 < port < 65536:
        raise VitkitError(f"--workers {workers} --max_batch_size {max_batch_size} --port {port}: expected workers "
                          ">= 1, max_batch_size >= 1 and a port in 1-65535.")  # fmt: skip
    api = VitkitAPI(model, top_k=top_k, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers, timeout=timeout,
                          middlewares=[(RequestGate, {"page": PAGE.read_text()})])  # fmt: skip
    print(f"serving on http://{host}:{port}/ (POST /predict; {workers} worker(s), batches of up to {max_batch_size})",
          flush=True)  # fmt: skip
    server.run(host=host, port=port, generate_client_file=False, log_level="warning", num_api_servers=1)
