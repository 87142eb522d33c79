"""Texts to embed, from the files people have: BEIR-style JSONL, or plain text one per line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


def read_texts(path: str | Path, *, text_field: str | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts) from ``.jsonl`` or ``.txt``.

    JSONL rows follow BEIR: ``_id`` (or ``id``), and ``title`` + ``text`` joined by a space
    as BEIR and sentence-transformers evaluate documents; ``text_field`` picks another field.
    A ``.txt`` file gives one text per non-empty line, with the line number as id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist.")
    ids: list[str] = []
    texts: list[str] = []
    if path.suffix == ".txt":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                ids.append(str(n))
                texts.append(line.strip())
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n} is not valid JSON ({exc.msg}).") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{n} is not a JSON object.")
                if text_field:
                    if text_field not in row:
                        raise InputError(f"{path}:{n} has no field {text_field!r} (fields: {sorted(row)}).")
                    text = str(row[text_field] or "")
                else:
                    text = f"{row.get('title') or ''} {row.get('text') or ''}".strip()
                if not text:
                    raise InputError(f"{path}:{n} has no text (expected 'text' and/or 'title', or pass --text-field).")
                ids.append(str(row.get("_id", row.get("id", n))))
                texts.append(text)
    else:
        raise InputError(f"{path}: expected a .jsonl (BEIR corpus/queries) or .txt (one text per line) file.")
    if not texts:
        raise InputError(f"{path} holds no texts.")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path} repeats ids; each row needs its own '_id'.")
    return ids, texts
