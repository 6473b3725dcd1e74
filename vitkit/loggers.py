"""Loggers: Weights & Biases logging that never stops a training run, and every logger's files in the run folder."""

from __future__ import annotations

import csv
import importlib
import inspect
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

_DEFAULT_HOST = "https://api.wandb.ai"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, but a run that cannot reach W&B online keeps training and logs offline.

    Online mode needs an API key (``wandb login`` or ``WANDB_API_KEY``) and the W&B server. Without a key, or when
    the server does not answer within ``connect_timeout`` seconds, the run switches to offline mode with one warning;
    its data stays in ``save_dir`` for ``wandb sync`` later. ``WANDB_MODE=offline`` needs neither.

    Args:
        connect_timeout: seconds to wait for the W&B server before going offline.
        quiet: print no run history and summary when the run ends (``vitkit tune`` sets it for its trials).
        **kwargs: Lightning ``WandbLogger`` arguments (``project``, ``name``, ``tags``, ``save_dir``, ``log_model``,
            ``offline``, ...) and ``wandb.init`` arguments.
    """

    def __init__(self, *args: Any, connect_timeout: float = 10.0, quiet: bool = False, **kwargs: Any) -> None:
        if quiet and "settings" not in kwargs:  # no run history and summary printed at its end (sweep trials)
            import wandb

            kwargs["settings"] = wandb.Settings(quiet=True)
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
        # Lightning always passes `anonymous` to wandb.init, which then warns that the setting has no effect.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger``, but resuming a run (``--ckpt_path last``) keeps the rows of ``metrics.csv`` from
    before (Lightning's starts the file afresh, and warns that the old rows will be deleted): they are logged again,
    first, so the file holds the whole run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = Path(self.log_dir) / "metrics.csv"
        self._earlier: list[tuple[dict[str, float], int | None]] = []
        if path.is_file() and rank_zero_only.rank == 0:
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    step = row.pop("step", "")
                    values = {k: _number(v) for k, v in row.items() if k and v not in ("", None)}
                    self._earlier.append((values, int(_number(step)) if step else None))
            path.unlink()  # rewritten whole from the rows above and the new ones

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        earlier, self._earlier = self._earlier, []
        for values, earlier_step in earlier:
            super().log_metrics(values, earlier_step)
        super().log_metrics(metrics, step)


def _number(text: str) -> float | int:
    """A CSV cell as it was logged: ``3`` an int (epochs), ``0.25`` a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


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


def finish_logger_runs(trainer: Any) -> None:
    """End the W&B runs of ``trainer``'s loggers (a failed start: their files are about to be discarded), quietly."""
    for logger in getattr(trainer, "loggers", None) or []:
        run = getattr(logger, "_experiment", None)  # only a run that was started: never start one here
        if isinstance(logger, _LightningWandbLogger) and run is not None:
            import wandb

            run.finish(exit_code=1)
            wandb.teardown(exit_code=1)  # the service writes its last files now, not after they are discarded


def configure_loggers(
    config: Any, folder: Path, wandb_id: str | None = None, name: str | None = None, default_on: bool = True
) -> Any:
    """A recipe's ``trainer.logger`` config with every logger's files put in ``folder`` (the run folder).

    W&B keeps its ``wandb/`` folder there, names the run ``name`` unless the recipe names it (e.g.
    ``quickstart/version_3``), and continues run ``wandb_id`` when resuming; CSV and TensorBoard loggers
    write straight into ``folder`` (no ``lightning_logs/version_N`` inside a run's own version folder); other
    loggers get ``save_dir`` where they take one. Lightning's default logger (``None`` or ``True``) becomes a
    CSVLogger in ``folder`` when ``default_on``, else no logger.
    """
    if config is None or config is True:
        if not default_on and config is None:
            return False
        config = Namespace(class_path="vitkit.loggers.CSVLogger", init_args=Namespace())
        _point_at(config, folder, wandb_id, name)
        return config
    if config is False:
        return False
    for item in config if isinstance(config, list) else [config]:
        if isinstance(item, Namespace) and item.get("class_path"):
            _point_at(item, folder, wandb_id, name)
    return config


def _point_at(item: Namespace, folder: Path, wandb_id: str | None, name: str | None) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.loggers import WandbLogger as LightningWandb

    module, _, class_name = item.class_path.rpartition(".")  # not `name`: that is the run's name
    cls = getattr(importlib.import_module(module), class_name)
    if item.get("init_args") is None:
        item.init_args = Namespace()
    args = item.init_args
    if issubclass(cls, LightningWandb):
        args.save_dir = str(folder)
        if name and not args.get("name"):
            args.name = name
        if wandb_id:
            args.id = wandb_id  # Lightning's W&B logger passes resume="allow": the same run continues
    elif issubclass(cls, (CSVLogger, TensorBoardLogger)):
        args.save_dir, args.name, args.version = str(folder), "", ""
        if cls is CSVLogger:  # vitkit's keeps the metrics of a run it resumes
            item.class_path = f"{__name__}.CSVLogger"
    elif "save_dir" in inspect.signature(cls).parameters:
        args.save_dir = str(folder)
