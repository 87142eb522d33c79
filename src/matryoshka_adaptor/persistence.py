"""Saving and loading an adaptor folder: ``config.json`` + ``model.safetensors`` (no pickle).

Saving writes both files to a temporary sibling folder first, so a crash never leaves a
half-written adaptor. An adaptor owns only those two files: saving into a folder that
already holds other things replaces only them and leaves the rest alone, and a folder
that is not an adaptor but has content is refused unless ``overwrite=True``.

Loading trusts nothing: the config's fields are type- and range-checked, the weights'
shapes must follow the architecture the config states, every weight must be finite,
and the config records the weights' SHA-256 so that a mixed old/new pair is caught.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes, check_writable, current_umask, staging_folder  # noqa: F401  (atomic_write_bytes re-exported)
from .errors import AdaptorFileError, InputError

FORMAT_NAME = "matryoshka-adaptor"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OWNED_FILES = (WEIGHTS_FILE, CONFIG_FILE)  # renamed into place in this order: config last


def json_safe(value):
    """``value`` with every NaN/inf float replaced by None (JSON has no such numbers; ``-Infinity``
    breaks strict parsers). numpy scalars and arrays become plain Python values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(value, *, indent: int | None = 2, sort_keys: bool = True) -> str:
    """Strict JSON text: non-finite numbers are written as ``null`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(value), indent=indent, sort_keys=sort_keys, allow_nan=False)


def _is_our_config(path: Path) -> bool:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT_NAME


def check_save_target(path: str | Path, *, overwrite: bool = False) -> Path:
    """Raise now if an adaptor cannot be saved at ``path``; called before training.

    Allowed: a new path, an empty folder, an adaptor folder (its ``config.json`` and
    ``model.safetensors`` are replaced, anything else in it is kept). A folder with other
    content that is not an adaptor is refused unless ``overwrite``; even then only the two
    adaptor files are written and nothing else in the folder is touched.
    """
    path = Path(path)
    check_writable(path, folder=True)
    if path.is_dir() and not overwrite:
        entries = [p.name for p in path.iterdir()]
        if entries and not _is_our_config(path):
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise AdaptorFileError(
                f"{path} is a non-empty folder that is not an adaptor; refusing to write into it (it holds {shown}). "
                "Choose a new folder, or pass overwrite=True (CLI: --overwrite) to add the adaptor's "
                f"{CONFIG_FILE} and {WEIGHTS_FILE} there; nothing else in the folder is touched."
            )
    return path


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    """SHA-256 over the weights' names, shapes and float32 bytes (what load must find)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name], dtype=np.float32)
        h.update(f"{name}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def install_folder(staging: str | Path, path: str | Path, *, overwrite: bool = False) -> Path:
    """Move a complete adaptor from ``staging`` to ``path``, replacing only the files an adaptor owns."""
    staging, path = Path(staging), Path(path)
    check_save_target(path, overwrite=overwrite)
    if not path.exists():
        os.replace(staging, path)
        return path
    for name in OWNED_FILES:  # weights first, config last: config names the weights' digest
        os.replace(staging / name, path / name)
    return path


def save_folder(path: str | Path, config: dict, weights: dict[str, np.ndarray], *, overwrite: bool = False) -> Path:
    """Write an adaptor folder (see :func:`check_save_target` for what may be replaced)."""
    from safetensors.numpy import save_file

    path = Path(path)
    check_save_target(path, overwrite=overwrite)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
    if bad:
        raise InputError(f"refusing to save an adaptor whose weights {bad} hold NaN or infinite values "
                         "(training diverged); refit with a smaller learning rate.")
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config,
              "weights_sha256": weights_digest(tensors)}
    text = dumps_json(config) + "\n"
    with staging_folder(path) as staging:
        folder = staging / "adaptor"
        folder.mkdir()
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        (folder / CONFIG_FILE).write_text(text)
        for name in OWNED_FILES:  # safetensors writes 0600 whatever the umask
            os.chmod(folder / name, 0o666 & ~current_umask())
        install_folder(folder, path, overwrite=overwrite)
    return path


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config, where: str) -> dict:
    """Check the fields of a loaded ``config.json``; raise :class:`AdaptorFileError` naming the bad one."""
    def bad(field: str, got, want: str) -> AdaptorFileError:
        return AdaptorFileError(f"{where}: field {field!r} is {got!r}; it must be {want}. "
                                "The adaptor folder is damaged or was edited by hand; refit or restore it.")

    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise AdaptorFileError(f"{where} is not a matryoshka-adaptor config (format={got!r}).")
    if "format_version" not in config:
        raise AdaptorFileError(f"{where} has no 'format_version'; it was not written by matryoshka-adaptor "
                               "or has been edited. Refit the adaptor or restore the file.")
    version = config["format_version"]
    if not _is_int(version) or version < 1:
        raise bad("format_version", version, f"a whole number from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise AdaptorFileError(
            f"{where} uses adaptor format version {version}, newer than this library supports ({FORMAT_VERSION}); "
            "upgrade matryoshka-adaptor to load it."
        )
    d = config.get("input_dim")
    if not _is_int(d) or d < 1:
        raise bad("input_dim", d, "a positive whole number")
    dims = config.get("dims")
    if (not isinstance(dims, list) or not dims or not all(_is_int(m) and 1 <= m <= d for m in dims)
            or dims != sorted(set(dims))):
        raise bad("dims", dims, f"a non-empty increasing list of whole numbers between 1 and input_dim={d}")
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise bad("architecture", arch, "an object with hidden_dim, depth and rotation")
    for field in ("hidden_dim", "depth"):
        if not _is_int(arch.get(field)) or arch[field] < 1:
            raise bad(f"architecture.{field}", arch.get(field), "a positive whole number")
    if not isinstance(arch.get("rotation", False), bool):
        raise bad("architecture.rotation", arch.get("rotation"), "true or false")
    for field in ("params", "training"):
        if not isinstance(config.get(field, {}), dict):
            raise bad(field, config.get(field), "an object")
    recipe = config.get("params", {}).get("recipe", "default")
    if not isinstance(recipe, str):
        raise bad("params.recipe", recipe, "a recipe name")
    if not isinstance(config.get("supervised", False), bool):
        raise bad("supervised", config.get("supervised"), "true or false")
    return config


def expected_weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the architecture in ``config`` needs (torch Linear layout: out x in)."""
    d, arch = config["input_dim"], config["architecture"]
    sizes = [d] + [arch["hidden_dim"]] * (arch["depth"] - 1) + [d]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.weight"] = (b, a)
        shapes[f"layers.{i}.bias"] = (b,)
    if arch.get("rotation"):
        shapes["rotation"] = (d, d)
    return shapes


def validate_weights(weights: dict[str, np.ndarray], config: dict, where: str) -> None:
    """Shapes as the config's architecture says, every value finite, digest as recorded."""
    expected = expected_weight_shapes(config)
    if set(weights) != set(expected):
        raise AdaptorFileError(f"{where}: weights {sorted(weights)} do not match the architecture in "
                               f"{CONFIG_FILE} (expected {sorted(expected)}); the folder is corrupt.")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise AdaptorFileError(f"{where}: weight {name!r} has shape {tuple(weights[name].shape)} but the "
                                   f"architecture in {CONFIG_FILE} needs {shape}; the folder is corrupt.")
        if not np.isfinite(weights[name]).all():
            raise AdaptorFileError(f"{where}: weight {name!r} holds NaN or infinite values; the adaptor would "
                                   "return NaN vectors. Refit it (with a smaller learning rate if training diverged).")
    digest = config.get("weights_sha256")
    if digest is not None and digest != weights_digest(weights):
        raise AdaptorFileError(f"{where}: the weights are not the ones {CONFIG_FILE} was saved with (an interrupted "
                               "save or a hand-copied file); refit or restore the folder.")


def load_folder(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check an adaptor folder; return (config, weights)."""
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
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdaptorFileError(f"{cfg_path} is not valid JSON ({exc}); the adaptor folder is corrupt.") from exc
    validate_config(config, str(cfg_path))
    w_path = path / WEIGHTS_FILE
    if not w_path.is_file():
        raise AdaptorFileError(f"{path} is not a complete adaptor: {WEIGHTS_FILE} is missing.")
    try:
        weights = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdaptorFileError(f"{w_path} could not be read as safetensors ({exc}); the file is corrupt.") from exc
    validate_weights(weights, config, str(path))
    return config, weights
