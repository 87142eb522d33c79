"""Saving and loading an adaptor folder: ``config.json`` + ``model.safetensors`` (no pickle).

The folder is written to a temporary sibling and renamed into place, so a crash
never leaves a half-written adaptor where a previous one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import AdaptorFileError, InputError

FORMAT_NAME = "matryoshka-adaptor"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_folder(path: str | Path, config: dict, weights: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdaptorFileError(f"{path} exists and is a file; give a folder path to save an adaptor into.")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise AdaptorFileError(
            f"{path} is a non-empty folder that is not an adaptor; refusing to overwrite it. Choose a new folder."
        )
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(staging, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def load_folder(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.exists():
        raise AdaptorFileError(f"no adaptor at {path}: the path does not exist.")
    if not path.is_dir():
        raise AdaptorFileError(f"{path} is a file; an adaptor is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}.")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise AdaptorFileError(f"{path} is not an adaptor folder: {CONFIG_FILE} is missing.")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdaptorFileError(f"{cfg_path} is not valid JSON ({exc}); the adaptor folder is corrupt.") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise AdaptorFileError(
            f"{cfg_path} is not a matryoshka-adaptor config (format={config.get('format') if isinstance(config, dict) else None!r})."
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdaptorFileError(
            f"{path} uses adaptor format version {version}, newer than this library supports ({FORMAT_VERSION}); "
            "upgrade matryoshka-adaptor to load it."
        )
    w_path = path / WEIGHTS_FILE
    if not w_path.is_file():
        raise AdaptorFileError(f"{path} is not a complete adaptor: {WEIGHTS_FILE} is missing.")
    try:
        weights = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdaptorFileError(f"{w_path} could not be read as safetensors ({exc}); the file is corrupt.") from exc
    return config, weights
