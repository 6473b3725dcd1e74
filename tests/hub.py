"""A local Hugging Face hub cache holding timm-format repos of randomly initialised models.

With ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``, ``timm.create_model(name, pretrained=True)`` runs
timm's own download code (``hf_hub_download``), which reads the cache exactly as it reads real downloads: the same
``models--<org>--<name>/{blobs,snapshots/<commit>,refs/main}`` layout, files linked from snapshots to blobs named by
their SHA-256. No network is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, model_name: str, **model_kwargs) -> str:
    """Put ``model_name`` (a timm name with its pretrained tag), randomly initialised, into the cache ``cache``;
    return its hub repo id. ``model_kwargs`` shrink it (the recipe using it must build the same shapes)."""
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    repo_id = model.pretrained_cfg["hf_hub_id"]
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    if (repo / "refs" / "main").is_file():
        return repo_id
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hf(model, tmp, safe_serialization=True)  # config.json + model.safetensors, as timm pushes them
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir()
        for file in sorted(Path(tmp).iterdir()):
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.move(str(file), repo / "blobs" / digest)
            os.symlink(Path("..", "..", "blobs", digest), snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo_id


def offline_hub_env(cache: Path) -> dict[str, str]:
    """Environment variables that make the Hugging Face hub read only ``cache``."""
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
