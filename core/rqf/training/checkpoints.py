"""Checkpoints: atomic saves, loading restricted to tensors, the step files, best weights."""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rqf.errors import RqfError
from rqf.io import atomic_path

CHECKPOINT_FORMAT = "rqf-checkpoint-1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)


def load_tensors(path: Path, what: str, file_format: str | None = None,
                 map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data, with one-line errors.

    A file that holds other Python objects is refused without loading them (unpickling can run
    code), and without torch's advice to load it unrestricted. With ``file_format``, the file
    must be a mapping whose ``format`` is that.
    """
    payload = _load_tensors(path, what, map_location)
    if file_format is not None and (not isinstance(payload, dict)
                                    or payload.get("format") != file_format):
        raise RqfError(f"{path}: not a {what} file (expected format {file_format!r})")
    return payload


def _load_tensors(path: Path, what: str, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RqfError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise RqfError(f"{path}: expected a {what} file, found a directory") from None
    except Exception as exc:
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in text or "global" in text):
            raise RqfError(f"{path}: refused: it holds Python objects other than tensors and "
                           f"plain data, which rqf never writes; loading them could run "
                           "code") from None
        # torch's own text advises loading the file unrestricted: never repeat that
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        first = detail.group(1) if detail else (
            "" if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text
            else text.splitlines()[0][:160] if text else "")
        raise RqfError(f"{path}: not a readable {what}, corrupted or truncated "
                       f"({type(exc).__name__}{': ' + first if first else ''})") from None


def _plain(value: Any) -> Any:
    """``value`` as data a tensors-only load reads back (no numpy scalars, paths or tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)


def save_model_file(path: Path, model: Any) -> None:
    """A model's ``model.pt``: its format tag, resolved config, data description and
    ``model.state()`` (what is its own: weights, codebooks, the catalogue), written whole."""
    payload = {"format": model.file_format, "config": _plain(model.config),
               "data_info": _plain(model.data_info), **model.state()}
    save_checkpoint(path, payload)


def load_model_file(cls: Any, path: Path, device: str = "auto") -> Any:
    """The model ``save_model_file`` wrote, on ``device`` (refused in one line when it is not
    there), or a one-line error for a file that is not this model's or whose state does not
    fit its saved configuration."""
    from rqf.training.runtime import resolve_device

    where = resolve_device(device, "device")
    path = Path(path)
    payload = load_tensors(path, f"{cls.name} model", cls.file_format)
    config = {**cls.config_added, **payload["config"]}
    model = cls(payload["data_info"], **config)
    try:
        model.load_state(payload)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RqfError(f"{path}: the saved state does not fit the saved configuration "
                       f"({first})") from None
    model.place(where)
    return model


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by rqf; a clear error for anything else."""
    return load_tensors(path, "rqf checkpoint", CHECKPOINT_FORMAT, map_location)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


class BestWeights:
    """The weights with the best ``monitor`` value seen at validation, kept in memory and in
    ``checkpoints/best.pt`` (so a resumed run still knows them), restored at the end."""

    def __init__(self, monitor: str | None, mode: str, directory: Path | None, is_main: bool,
                 resume: bool = False) -> None:
        self.monitor, self.mode, self.is_main = monitor, mode, is_main
        self.path = directory / "best.pt" if directory else None
        self.step: int | None = None
        self.value: float | None = None
        self.state: dict[str, torch.Tensor] | None = None
        if monitor and resume and self.path is not None and self.path.exists():
            payload = load_checkpoint(self.path)
            if payload.get("monitor") == monitor:
                self.step, self.value = int(payload["step"]), float(payload["value"])
                self.state = payload["model"]

    def offer(self, record: Mapping[str, Any], module: torch.nn.Module) -> None:
        if not self.monitor:
            return
        if self.monitor not in record:
            known = ", ".join(k for k in record if k != "step") or "none"
            raise RqfError(f"train.monitor: {self.monitor!r} is not a validation metric of this "
                           f"model (it reports: {known})")
        value = float(record[self.monitor])
        better = self.value is None or (value > self.value if self.mode == "max"
                                        else value < self.value)
        if not better or not math.isfinite(value):
            return
        self.step, self.value = int(record["step"]), value
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        if self.is_main and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.path, {"format": CHECKPOINT_FORMAT, "step": self.step,
                                        "monitor": self.monitor, "value": value,
                                        "model": self.state})

    def restore(self, module: torch.nn.Module) -> bool:
        if self.state is None:
            return False
        module.load_state_dict(self.state)
        return True
