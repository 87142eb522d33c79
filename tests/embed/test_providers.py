"""Gemini and Cohere sources over real HTTP against loopback fakes of their documented APIs."""

import logging

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from typer.testing import CliRunner  # noqa: E402

from matryoshka_adaptor.cli import app as cli_app  # noqa: E402
from matryoshka_adaptor.embed.cohere import CohereSource  # noqa: E402
from matryoshka_adaptor.embed.gemini import GeminiSource  # noqa: E402
from matryoshka_adaptor.embed.input_types import PrefixedSource, resolve_prefix  # noqa: E402
from matryoshka_adaptor.embed.sources import make_source  # noqa: E402
from matryoshka_adaptor.errors import InputError, UpstreamError  # noqa: E402
from matryoshka_adaptor.serve.app import create_app  # noqa: E402
from matryoshka_adaptor.serve.server import BackgroundServer  # noqa: E402
from fakes import FakeModel  # noqa: E402
from provider_fakes import cohere_app, gemini_app  # noqa: E402

TEXTS = [f"passage {i} on topic {i % 5}" for i in range(23)]
KEYS = {"gemini": "g-secret-key", "cohere": "co-secret-key"}
QUERY_FIELD = {"gemini": "RETRIEVAL_QUERY", "cohere": "search_query"}


def fake_app(provider, model, failures=None):
    make = gemini_app if provider == "gemini" else cohere_app
    return make(model, api_key=KEYS[provider], failures=failures)


def base_url(provider, url):
    root = url.removesuffix("/v1")
    return f"{root}/v1beta" if provider == "gemini" else root


def source(provider, url, tmp_path=None, *, api_key=None, input_type="query", **kw):
    sleeps = []
    cls = GeminiSource if provider == "gemini" else CohereSource
    model = "gemini-embedding-001" if provider == "gemini" else "embed-v4.0"
    src = cls(model, base_url=base_url(provider, url), api_key=api_key or KEYS[provider], input_type=input_type,
              backoff_base_s=0.01, sleep=sleeps.append,
              cache_path=(tmp_path / "cache.sqlite") if tmp_path else None, **kw)
    return src, sleeps


def expected(model, provider, input_type, texts, dim=None):
    field = {"gemini": {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"},
             "cohere": {"query": "search_query", "document": "search_document"}}[provider][input_type]
    vecs = np.stack([model.vector(f"{field}|{t}") for t in texts])
    return vecs[:, :dim] if dim else vecs


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
def test_request_and_response_shapes(provider):
    model = FakeModel()
    app = fake_app(provider, model)
    with BackgroundServer(app) as url:
        src, _ = source(provider, url, batch_size=10, dimensions=8, concurrency=2)
        out = src.encode(TEXTS, progress=False)
    np.testing.assert_allclose(out, expected(model, provider, "query", TEXTS, dim=8), atol=1e-6)
    rec = app.state.recorder
    assert len(rec.requests) == 3  # 23 texts, batches of 10
    body, headers = rec.requests[0], rec.headers[0]
    if provider == "gemini":
        first = body["requests"][0]
        assert first["model"] == "models/gemini-embedding-001" and first["taskType"] == "RETRIEVAL_QUERY"
        assert first["outputDimensionality"] == 8 and first["content"]["parts"][0]["text"] in TEXTS
        assert headers["x-goog-api-key"] == KEYS["gemini"] and "authorization" not in headers
    else:
        assert body["input_type"] == "search_query" and body["embedding_types"] == ["float"]
        assert body["output_dimension"] == 8 and body["model"] == "embed-v4.0"
        assert headers["authorization"] == f"Bearer {KEYS['cohere']}"
    assert src.last_stats.calls == 3 and src.last_stats.retries == 0


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
def test_cache_is_keyed_by_input_type(provider, tmp_path):
    model = FakeModel()
    with BackgroundServer(fake_app(provider, model)) as url:
        q, _ = source(provider, url, tmp_path, input_type="query")
        queries = q.encode(TEXTS, progress=False)
        d, _ = source(provider, url, tmp_path, input_type="document")
        documents = d.encode(TEXTS, progress=False)
        assert d.last_stats.cached == 0 and d.last_stats.embedded == len(TEXTS)  # not served the query vectors
        again, _ = source(provider, url, tmp_path, input_type="query")
        np.testing.assert_array_equal(again.encode(TEXTS, progress=False), queries)
        assert again.last_stats.calls == 0 and again.last_stats.cached == len(TEXTS)
    np.testing.assert_allclose(documents, expected(model, provider, "document", TEXTS), atol=1e-6)
    assert not np.allclose(queries, documents)


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
def test_429_with_and_without_retry_after_and_5xx_are_retried(provider, tmp_path):
    model = FakeModel()
    app = fake_app(provider, model, failures=[(429, 2), (429, None), (503, None), (500, None)])
    with BackgroundServer(app) as url:
        src, sleeps = source(provider, url, tmp_path, batch_size=50)
        out = src.encode(TEXTS, progress=False)
    np.testing.assert_allclose(out, expected(model, provider, "query", TEXTS), atol=1e-6)
    assert src.last_stats.calls == 5 and src.last_stats.retries == 4
    assert sleeps[0] == 2.0  # Retry-After honoured
    assert all(0 <= s <= 0.01 * 2 ** i for i, s in enumerate(sleeps[1:], start=1))  # jittered backoff
    assert len(model.seen) == len(TEXTS)  # nothing embedded twice


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
def test_gives_up_after_max_retries_with_the_status(provider):
    with BackgroundServer(fake_app(provider, FakeModel(), failures=[(503, None)] * 5)) as url:
        src, sleeps = source(provider, url, max_retries=2)
        with pytest.raises(UpstreamError, match="HTTP 503.*gave up after 2 retries") as err:
            src.encode(["one"], progress=False)
    assert err.value.status == 503 and len(sleeps) == 2


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
@pytest.mark.parametrize("case", ["bad-key", "bad-model"])
def test_4xx_fails_at_once_with_the_providers_message_and_no_key(provider, case, caplog):
    caplog.set_level(logging.DEBUG)  # httpx / httpcore log every request at DEBUG: the key must not be there
    model = FakeModel()
    with BackgroundServer(fake_app(provider, model)) as url:
        cls = GeminiSource if provider == "gemini" else CohereSource
        good_model = "gemini-embedding-001" if provider == "gemini" else "embed-v4.0"
        src = cls("no-such-model" if case == "bad-model" else good_model, base_url=base_url(provider, url),
                  api_key="wrong-secret-key" if case == "bad-key" else KEYS[provider], input_type="document",
                  sleep=lambda s: pytest.fail("a 4xx must not be retried"))
        with pytest.raises(UpstreamError) as err:
            src.encode(["x"], progress=False)
    message = str(err.value)
    if case == "bad-key":
        assert err.value.status == (400 if provider == "gemini" else 401)
        assert ("API key not valid" if provider == "gemini" else "invalid api token") in message
        assert "CO_API_KEY" in message or "GEMINI_API_KEY" in message
    else:
        assert err.value.status == 404 and "not found" in message and "--model" in message
    for key in ("wrong-secret-key", *KEYS.values()):
        assert key not in message and key not in repr(src) and key not in caplog.text
    assert "HTTP Request: POST" in caplog.text  # the logs were captured
    assert src.last_stats.calls == 1


def test_provider_400_bodies_reach_the_user():
    """A request the provider refuses as invalid: its own error body, quoted (Cohere's batch limit here)."""
    with BackgroundServer(fake_app("cohere", FakeModel())) as url:
        src, _ = source("cohere", url)
        src.batch_size = 97  # bypass the constructor's check to see the server's own refusal
        with pytest.raises(UpstreamError, match="at most 96 - received 97") as err:
            src.encode([f"t{i}" for i in range(97)], progress=False)
    assert err.value.status == 400


def test_gemini_without_key_gets_the_403_hint():
    with BackgroundServer(fake_app("gemini", FakeModel())) as url:
        src = GeminiSource("gemini-embedding-001", base_url=base_url("gemini", url), api_key="", api_key_env="NOPE")
        with pytest.raises(UpstreamError, match=r"unregistered callers.*\$NOPE") as err:
            src.encode(["x"], progress=False)
    assert err.value.status == 403


def test_bad_options_are_refused_before_any_call():
    with pytest.raises(InputError, match="Cohere needs an input type"):
        CohereSource("embed-v4.0")
    with pytest.raises(InputError, match="limit of 96"):
        CohereSource("embed-v4.0", input_type="query", batch_size=200)
    with pytest.raises(InputError, match="limit of 100"):
        GeminiSource("gemini-embedding-001", batch_size=101)
    with pytest.raises(InputError, match="query, document"):
        make_source("gemini", "gemini-embedding-001", input_type="question")
    with pytest.raises(InputError, match="unknown provider"):
        make_source("vertex", "x")


def test_prefixes_of_models_trained_with_them():
    assert resolve_prefix("intfloat/e5-small-v2", "query") == "query: "
    assert resolve_prefix("intfloat/multilingual-e5-base", "document") == "passage: "
    assert resolve_prefix("BAAI/bge-base-en-v1.5", "query").startswith("Represent this sentence")
    assert resolve_prefix("BAAI/bge-base-en-v1.5", "document") == ""
    assert resolve_prefix("nomic-ai/nomic-embed-text-v1.5", "document") == "search_document: "
    assert resolve_prefix("text-embedding-3-large", "query") == ""
    assert resolve_prefix("intfloat/e5-mistral-7b-instruct", "query") == ""  # needs a user-written task
    assert resolve_prefix("intfloat/e5-small-v2", None) == ""
    assert resolve_prefix("intfloat/e5-small-v2", "query", prefix="") == ""  # explicit wins


def test_openai_compatible_e5_gets_its_prefix_over_http(tmp_path):
    """An e5 model behind an OpenAI-compatible server: the prefix is sent, and keys the cache apart."""
    model = FakeModel()
    with BackgroundServer(create_app(model, model_name="e5-small-v2")) as url:
        kw = dict(base_url=url, api_key="unused", cache_path=tmp_path / "c.sqlite")
        q = make_source("openai", "e5-small-v2", input_type="query", **kw)
        assert isinstance(q, PrefixedSource)
        queries = q.encode(["what is dna"], progress=False)
        docs = make_source("openai", "e5-small-v2", input_type="document", **kw).encode(["what is dna"], progress=False)
        with pytest.raises(InputError, match="position 0"):
            q.encode(["  "], progress=False)  # an empty text is refused, not sent as "query: "
    assert model.seen == ["query: what is dna", "passage: what is dna"]
    np.testing.assert_allclose(queries[0], model.vector("query: what is dna"), atol=1e-6)
    assert not np.allclose(queries, docs)


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
def test_cli_embed_with_input_type(provider, tmp_path, monkeypatch):
    (tmp_path / "q.txt").write_text("first query\nsecond query\n")
    model = FakeModel()
    monkeypatch.setenv("MY_KEY", KEYS[provider])
    with BackgroundServer(fake_app(provider, model)) as url:
        model_name = "gemini-embedding-001" if provider == "gemini" else "embed-v4.0"
        args = ["embed", "--provider", provider, "--model", model_name, "--base-url", base_url(provider, url),
                "--api-key-env", "MY_KEY", "--input", tmp_path / "q.txt", "--out", tmp_path / "q.npy",
                "--cache", tmp_path / "c.sqlite", "-q"]
        result = CliRunner().invoke(cli_app, [str(a) for a in args + ["--input-type", "query"]])
        assert result.exit_code == 0, result.output
        assert "2 embedded in 1 API calls" in result.output
        out = np.load(tmp_path / "q.npy")
        np.testing.assert_allclose(out, expected(model, provider, "query", ["first query", "second query"]), atol=1e-6)
        if provider == "cohere":
            result = CliRunner().invoke(cli_app, [str(a) for a in args])
            assert result.exit_code == 2 and "Cohere needs an input type" in result.output
