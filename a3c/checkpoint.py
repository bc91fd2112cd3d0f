"""Checkpoints: atomic save (the previous one kept as .prev), validated load that never runs code from the file, and
what a resume takes from one."""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from a3c.config import Config, ConfigError, coerce
from a3c.shared_optim import apply_settings

log = logging.getLogger(__name__)

FORMAT = "a3c-checkpoint"
VERSION = 1
# Said when Ctrl-C stops a run at once: whatever was being written then, the files that were saved stay whole.
STOPPED_AT_ONCE = "a3c: stopped at once by Ctrl-C; checkpoints on disk are the last complete saves"
# Settings that shape the network or what it sees: a resumed or evaluated run takes them from its checkpoint.
NETWORK_FIELDS = (
    "arch",
    "hidden_size",
    "fc_layer",
    "standardize_frames",
    "frame_size",
    "frame_stack",
    "frame_skip",
    "crop_top",
    "crop_bottom",
)
# What a setting newer than a checkpoint was in the run that saved it: the behaviour before the setting existed,
# which is not always today's default (the default recipe changed in issue #23).
BEFORE_IT_EXISTED = {"standardize_frames": False, "fc_layer": True, "crop_top": 0, "crop_bottom": 0}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file, why, and what to do."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write payload to path so that a crash at any moment leaves a loadable checkpoint there.

    Order: the new file is written beside it and fsynced; the old one is hard-linked to <path>.prev; then the new
    file is renamed over path. path always names a complete file (old or new); a full disk fails before any rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # in memory first: torch's zip writer turns a full disk into a RuntimeError
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())  # ENOSPC / EFBIG surface here as an OSError
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            prev = path.with_name(path.name + ".prev")
            prev_tmp = path.with_name(f".{path.name}.prev.{os.getpid()}.tmp")
            prev_tmp.unlink(missing_ok=True)
            os.link(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint with torch.load(weights_only=True): tensors and plain data only."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train once without --use-trained, or pass --checkpoint-dir")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names weights_only in every unpickling failure; only "Unsupported global" means the file asks to
        # build objects (and so could run code) rather than being damaged.
        if "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path} holds more than tensors and plain data, so it is refused (it could run code); "
                "use a checkpoint written by a3c"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({_first_line(error)}); restore {path}.prev or retrain"
        ) from None
    except Exception as error:  # noqa: BLE001 - the unpickler raises KeyError, IndexError, ... on arbitrary bytes
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint ({type(error).__name__}: {_first_line(error)}); "
            f"restore {path.name}.prev or retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an a3c checkpoint; point --checkpoint-dir at one written by a3c")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this a3c reads version {VERSION}"
        )
    missing = {"env_name", "model_spec", "model", "optimizer", "counters", "history"} - payload.keys()
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(sorted(missing))}; it is damaged: restore {path.name}.prev or retrain"
        )
    problem = contents_problem(payload)
    if problem is not None:
        raise CheckpointError(f"{path} {problem}; it is damaged: restore {path.name}.prev or retrain")
    return payload


def _tensors(tree: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of nested dicts and lists with its path (model.lstm.weight_ih_l0, optimizer.state.3.exp_avg)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{where}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{where}.{i}")
    else:
        yield where, tree


def damage_in(payload: dict[str, Any]) -> str | None:
    """The first non-finite weight or optimizer statistic of a payload, in a few words, or None when all are finite:
    what a save checks in the very copies it writes, and a load in what it read."""
    for part in ("model", "optimizer"):
        for where, value in _tensors(payload.get(part, {}), part):
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                return f"holds non-finite values in {where} ({bad:,} of {value.numel():,})"
    return None


def contents_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a loaded payload's contents, before anything is built from them, or None: the weights must
    be tensors, the statistics torch's state_dict, the counters non-negative numbers, the history equal columns of
    numbers, and the saved network settings within Config's bounds."""
    if not isinstance(payload["env_name"], str) or not isinstance(payload["model_spec"], dict):
        return "has no valid env_name or model_spec"
    model = payload["model"]
    if not isinstance(model, dict) or not model or not all(torch.is_tensor(v) for v in model.values()):
        return "holds no model weights"
    optimizer = payload["optimizer"]
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or "param_groups" not in state:
        return "holds no optimizer statistics"
    counters = payload["counters"]
    if not isinstance(counters, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in counters.values()
    ):
        return "holds counters that are not non-negative numbers"
    columns = payload["history"].get("columns") if isinstance(payload["history"], dict) else None
    if not isinstance(columns, list) or len({len(c) if isinstance(c, list) else -1 for c in columns}) > 1:
        return "holds a history that is not columns of one length"
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for column in columns for x in column):
        return "holds a history with values that are not numbers"
    saved = payload.get("config", {})
    if not isinstance(saved, dict):
        return "holds a config that is not a table of settings"
    try:
        network = {name: coerce(name, saved[name], "the checkpoint") for name in NETWORK_FIELDS if name in saved}
        Config(**network).validate()
    except (ConfigError, TypeError) as error:
        return f"holds network settings this a3c would not build ({error})"
    return damage_in(payload)


def check_compatible(payload: dict[str, Any], env_name: str, model_spec: dict[str, Any], path: str | Path) -> None:
    """Raise CheckpointError if the checkpoint was trained on another game or with another network."""
    if payload["env_name"] != env_name:
        raise CheckpointError(
            f"{path} was trained on {payload['env_name']}, not {env_name}: use --env-name {payload['env_name']} "
            "or another --checkpoint-dir"
        )
    # Keys added after version 1: older checkpoints were trained without them.
    saved = BEFORE_IT_EXISTED | payload["model_spec"]
    differences = [f"{key} {saved.get(key)} vs {value}" for key, value in model_spec.items() if saved.get(key) != value]
    if differences:
        raise CheckpointError(
            f"{path} holds another network ({'; '.join(differences)}, saved vs asked); "
            "use the settings it was trained with or another --checkpoint-dir"
        )


def trained_network(cfg: Config, payload: dict[str, Any]) -> Config:
    """cfg with the network and frame settings the checkpoint was trained with (flags cannot change a trained
    network; a setting the checkpoint predates takes its value from before it existed)."""
    saved = payload.get("config", {})
    if not saved:
        return cfg
    return cfg.replace(
        **{name: saved.get(name, BEFORE_IT_EXISTED.get(name, getattr(Config, name))) for name in NETWORK_FIELDS}
    )


def resumed_config(cfg: Config, payload: dict[str, Any]) -> Config:
    """A resumed run goes on with the network and frames it was trained with: a checkpoint from before the default
    recipe changed resumes as it was saved. Where this run's settings (flags, config file or defaults) asked for
    something else, the log names both; an lr that differs from the saved one is named too, as this run's lr is the
    one used."""
    trained = trained_network(cfg, payload)
    changed = [
        f"{name} {getattr(trained, name)} (asked {getattr(cfg, name)})"
        for name in NETWORK_FIELDS
        if getattr(trained, name) != getattr(cfg, name)
    ]
    if changed:
        log.warning("resuming with the checkpoint's network settings: %s", ", ".join(changed))
    saved_lr = payload.get("config", {}).get("lr")
    if saved_lr is not None and saved_lr != cfg.lr:
        log.warning(
            "resuming at lr %g; the checkpoint was trained at %g (give --lr %g to keep it)", cfg.lr, saved_lr, saved_lr
        )
    return trained


def restore(
    payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, spec: dict
) -> None:
    """Load a checkpoint's weights into model and, when it used the same optimizer, its statistics into optimizer
    (with this run's settings: lr, betas, eps). CheckpointError if it was trained on another game or network."""
    path = cfg.checkpoint_path
    check_compatible(payload, cfg.env_name, spec, path)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        details = " ".join(line.strip() for line in str(error).splitlines()[1:])[:400]
        raise CheckpointError(
            f"{path} does not fit this network ({details}); use the settings it was trained with or another "
            "--checkpoint-dir"
        ) from None
    saved_opt = payload["optimizer"]
    if saved_opt.get("name") == cfg.opt:
        optimizer.load_state_dict(saved_opt["state"])
        apply_settings(optimizer, cfg)
        optimizer.share_memory()  # load_state_dict made fresh, private tensors
    else:
        log.warning("checkpoint used --opt %s; starting fresh %s statistics", saved_opt.get("name"), cfg.opt)
    counters = payload["counters"]
    log.info(
        "resumed %s: %s frames, %d games, %.1f hours trained",
        path,
        f"{int(counters.get('frames', 0)):,}",
        len(payload["history"]["columns"][0]) if payload["history"]["columns"] else 0,
        counters.get("elapsed_s", 0.0) / 3600,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
