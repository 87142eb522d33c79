"""Issue 14, item 4: a response that does not answer the request is refused before anything is cached."""

import math
import sqlite3

import numpy as np
import pytest

from fakes import ScriptedEmbeddingsServer, embeddings_body
from matryoshka_adaptor.embed.cache import EmbeddingCache, text_hash
from matryoshka_adaptor.embed.openai_api import OpenAICompatibleSource, UpstreamError

TEXTS = [f"text number {i}" for i in range(6)]


def vec(text: str, dim: int) -> list[float]:
    rng = np.random.default_rng(int(text_hash(text)[:8], 16))
    return rng.standard_normal(dim).tolist()


def honest(dim: int):
    """Answers every request correctly with ``dim``-long vectors (or the requested dimensions)."""
    def respond(body):
        return 200, embeddings_body([vec(t, body.get("dimensions", dim)) for t in body["input"]])
    return respond


def source(url, tmp_path, **kw):
    return OpenAICompatibleSource("fake", base_url=url, api_key="k", cache_path=tmp_path / "c.sqlite",
                                  max_retries=0, sleep=lambda s: None, **kw)


def cached_count(tmp_path) -> int:
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        return cache.count()


def broken(kind):
    def respond(body):
        n = len(body["input"])
        vectors = [vec(t, 8) for t in body["input"]]
        if kind == "wrong-dimensions":  # asked for 4, answers 8
            return 200, embeddings_body(vectors)
        if kind == "too-few":
            return 200, embeddings_body(vectors[:-1])
        if kind == "ragged":
            vectors[-1] = vectors[-1][:5]
        if kind == "zero":
            vectors[0] = [0.0] * 8
        if kind == "nan":
            vectors[1][2] = math.nan
        if kind == "huge":  # beyond float32
            vectors[1][2] = 1e300
        if kind == "strings":
            vectors[0] = "not a vector"
        body_ = embeddings_body(vectors) if kind != "strings" else \
            {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
        if kind == "duplicate-index":
            body_["data"][1]["index"] = 0
        if kind == "no-data":
            body_ = {"object": "list"}
        if kind == "not-json":
            return 200, b"<html>gateway</html>"
        return 200, body_
    return respond


@pytest.mark.parametrize("kind", ["wrong-dimensions", "too-few", "ragged", "zero", "nan", "huge", "strings",
                                  "duplicate-index", "no-data", "not-json"])
def test_a_bad_response_is_an_error_and_nothing_of_it_is_cached(tmp_path, kind):
    with ScriptedEmbeddingsServer(broken(kind)) as url:
        src = source(url, tmp_path, dimensions=4 if kind == "wrong-dimensions" else None)
        with pytest.raises(UpstreamError, match="nothing from it was cached") as err:
            src.encode(TEXTS, progress=False)
    assert err.value.status == 200
    assert cached_count(tmp_path) == 0
    if kind == "wrong-dimensions":
        assert "8-dimensional vectors; asked for 4" in str(err.value)


def test_batches_of_different_lengths_are_refused_and_a_rerun_is_not_stuck(tmp_path):
    calls = {"n": 0}

    def drifting(body):  # the first batch 8-d, later ones 16-d (e.g. a model swapped behind the name)
        calls["n"] += 1
        return 200, embeddings_body([vec(t, 8 if calls["n"] == 1 else 16) for t in body["input"]])

    with ScriptedEmbeddingsServer(drifting) as url:
        with pytest.raises(UpstreamError, match="16-dimensional vectors; expected .* 8"):
            source(url, tmp_path, batch_size=2, concurrency=1).encode(TEXTS, progress=False)
    assert cached_count(tmp_path) == 2  # only the first, consistent batch
    with ScriptedEmbeddingsServer(honest(8)) as url:
        src = source(url, tmp_path, batch_size=2, concurrency=1)
        out = src.encode(TEXTS, progress=False)
    assert out.shape == (6, 8) and src.last_stats.cached == 2 and src.last_stats.embedded == 4


def test_unusable_vectors_already_in_the_cache_are_fetched_again(tmp_path):
    # What older versions could leave behind: mixed lengths, a zero vector, under the same key.
    src = OpenAICompatibleSource("fake", cache_path=tmp_path / "c.sqlite")
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("CREATE TABLE vectors (source TEXT NOT NULL, hash TEXT NOT NULL, dim INTEGER NOT NULL, "
               "vector BLOB NOT NULL, PRIMARY KEY (source, hash))")
    rows = [(t, np.asarray(vec(t, 8), np.float32)) for t in TEXTS[:3]]
    rows.append((TEXTS[3], np.asarray(vec(TEXTS[3], 5), np.float32)))
    rows.append((TEXTS[4], np.zeros(8, np.float32)))
    db.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?)",
                   [(src.source_key, text_hash(t), len(v), v.tobytes()) for t, v in rows])
    db.commit()
    db.close()
    with ScriptedEmbeddingsServer(honest(8)) as url:
        src = source(url, tmp_path)
        out = src.encode(TEXTS, progress=False)
    assert out.shape == (6, 8) and src.last_stats.cached == 3 and src.last_stats.embedded == 3
    np.testing.assert_allclose(out[3], vec(TEXTS[3], 8), rtol=1e-6)


def test_requested_dimensions_are_checked_against_the_cache_too(tmp_path):
    with ScriptedEmbeddingsServer(honest(8)) as url:
        first = source(url, tmp_path, dimensions=4)
        assert first.encode(TEXTS, progress=False).shape == (6, 4)
        again = source(url, tmp_path, dimensions=4)
        again.encode(TEXTS, progress=False)
    assert again.last_stats.calls == 0


def test_the_cache_itself_refuses_vectors_no_one_should_reuse(tmp_path):
    from matryoshka_adaptor.errors import InputError

    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        for bad in (np.zeros((2, 4)), np.full((2, 4), np.nan), np.ones((3, 4)), np.ones((2, 0))):
            with pytest.raises(InputError, match="nothing of this batch was cached"):
                cache.put_many("src", ["a", "b"], bad)
        assert cache.count() == 0
