"""Weights & Biases logging that never stops a training run."""

from __future__ import annotations

import netrc
import os
import socket
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_warn

_DEFAULT_HOST = "https://api.wandb.ai"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, but a run that cannot reach W&B online keeps training and logs offline.

    Online mode needs an API key (``wandb login`` or ``WANDB_API_KEY``) and the W&B server. Without a key, or when
    the server does not answer within ``connect_timeout`` seconds, the run switches to offline mode with one warning;
    its data stays in ``save_dir`` for ``wandb sync`` later. ``WANDB_MODE=offline`` needs neither.

    Args:
        connect_timeout: seconds to wait for the W&B server before going offline.
        **kwargs: Lightning ``WandbLogger`` arguments (``project``, ``name``, ``tags``, ``save_dir``, ``log_model``,
            ``offline``, ...) and ``wandb.init`` arguments.
    """

    def __init__(self, *args: Any, connect_timeout: float = 10.0, **kwargs: Any) -> None:
        mode = kwargs.get("mode") or ("offline" if kwargs.get("offline") else os.environ.get("WANDB_MODE", "online"))
        if mode not in ("offline", "disabled", "dryrun"):
            reason = _online_blocker(connect_timeout)
            if reason:
                rank_zero_warn(
                    f"W&B: {reason}; this run logs offline to {kwargs.get('save_dir') or '.'}/wandb "
                    "(upload it later with `wandb sync`)."
                )
                kwargs["mode"] = "offline"
        super().__init__(*args, **kwargs)


def _online_blocker(timeout: float) -> str | None:
    """Why online logging cannot work here, or ``None`` if it can."""
    host = os.environ.get("WANDB_BASE_URL", _DEFAULT_HOST)
    hostname = urlparse(host).hostname or host
    if not os.environ.get("WANDB_API_KEY"):
        try:
            path = os.environ.get("NETRC") or None
            found = netrc.netrc(path).authenticators(hostname)
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            found = None
        if not found:
            return "not logged in (run `wandb login` or set WANDB_API_KEY)"
    port = urlparse(host).port or (443 if host.startswith("https") else 80)
    try:
        socket.create_connection((hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"cannot reach {host} ({err})"
    return None
