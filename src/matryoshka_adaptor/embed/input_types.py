"""Query or document: the input type, and the text prefixes of models trained with one.

Asymmetric retrieval models embed a query and a document differently. The Gemini and
Cohere APIs take the input type as a request field (``taskType``, ``input_type``); open
models such as e5, bge and nomic-embed were trained with a text prefix instead, and
give worse vectors without it. :func:`resolve_prefix` finds that prefix from the model
name, and :class:`PrefixedSource` prepends it before texts reach any source, so the
cache (keyed by the hash of the text sent) keeps query and document vectors apart.
"""

from __future__ import annotations

import re

from ..errors import InputError

INPUT_TYPES = ("query", "document")

_BGE_EN = "Represent this sentence for searching relevant passages: "
_BGE_ZH = "为这个句子生成表示以用于检索相关文章："

# (pattern on the model's last path component, lower-cased; query prefix; document prefix),
# from each model's card. Instruction-tuned variants (e5-mistral, *-instruct) need a task
# description written by the user, so they are left out on purpose: pass ``prefix=``.
MODEL_PREFIXES: tuple[tuple[str, str, str], ...] = (
    (r"(multilingual-)?e5-(small|base|large)(-v2)?", "query: ", "passage: "),
    (r"bge-(small|base|large)-en(-v1\.5)?", _BGE_EN, ""),
    (r"bge-(small|base|large)-zh(-v1\.5)?", _BGE_ZH, ""),
    (r"nomic-embed-text-v1(\.5)?", "search_query: ", "search_document: "),
)


def check_input_type(input_type: str | None) -> str | None:
    """``None``, ``"query"`` or ``"document"``; anything else is refused with the choices."""
    if input_type is not None and input_type not in INPUT_TYPES:
        raise InputError(f"input type must be one of {', '.join(INPUT_TYPES)}; got {input_type!r}.")
    return input_type


def resolve_prefix(model: str, input_type: str | None, prefix: str | None = None) -> str:
    """The text to put before each input for ``model`` and ``input_type``.

    Parameters
    ----------
    model : str
        Model name or folder; only its last path component is matched.
    input_type : {"query", "document"} or None
        None means no prefix (unless ``prefix`` is given).
    prefix : str, optional
        An explicit prefix; it wins over the table (``""`` turns prefixing off).

    Returns
    -------
    str
        The prefix, ``""`` when the model needs none.
    """
    check_input_type(input_type)
    if prefix is not None:
        return prefix
    if input_type is None:
        return ""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for pattern, query_prefix, document_prefix in MODEL_PREFIXES:
        if re.fullmatch(pattern, name):
            return query_prefix if input_type == "query" else document_prefix
    return ""


class PrefixedSource:
    """A source whose every text is sent as ``prefix + text`` (empty texts are still refused first)."""

    def __init__(self, source, prefix: str):
        self.source = source
        self.prefix = prefix

    def encode(self, texts: list[str], **kwargs):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:  # checked here: the prefix would hide an empty text from the source's own check
            raise InputError(f"{len(bad)} input texts are empty or not strings (first at position {bad[0]}); "
                             "drop or fill them first.")
        return self.source.encode([self.prefix + t for t in texts], **kwargs)

    def __getattr__(self, name):  # last_stats, source_key, close, ...
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"PrefixedSource({self.source!r}, prefix={self.prefix!r})"
