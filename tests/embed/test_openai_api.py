"""The OpenAI-compatible client, over real HTTP against this package's own pass-through server."""

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from matryoshka_adaptor.embed.cache import EmbeddingCache  # noqa: E402
from matryoshka_adaptor.embed.openai_api import (  # noqa: E402
    OpenAICompatibleSource,
    UpstreamError,
    make_batches,
    parse_retry_after,
)
from matryoshka_adaptor.serve.app import create_app  # noqa: E402
from matryoshka_adaptor.serve.server import BackgroundServer  # noqa: E402
from matryoshka_adaptor.validation import InputError  # noqa: E402
from fakes import FakeModel  # noqa: E402

TEXTS = [f"document number {i} about topic {i % 7}" for i in range(23)]


def client(url, tmp_path=None, **kw):
    sleeps = []
    src = OpenAICompatibleSource("fake", base_url=url, api_key="sk-test-secret", backoff_base_s=0.01,
                                 cache_path=(tmp_path / "cache.sqlite") if tmp_path else None,
                                 sleep=sleeps.append, **kw)
    return src, sleeps


def test_batches_respect_count_and_token_limits():
    texts = ["a" * 30, "b" * 30, "c" * 30, "d" * 300, "e"]
    assert make_batches(texts, max_count=2, max_tokens=10_000) == [[0, 1], [2, 3], [4]]
    assert make_batches(texts, max_count=100, max_tokens=25) == [[0, 1], [2], [3], [4]]  # 10 tokens each, 100 for d


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_vectors_come_back_in_order_and_match_the_model():
    model = FakeModel()
    with BackgroundServer(create_app(model, model_name="fake")) as url:
        src, _ = client(url, batch_size=5, concurrency=3)
        out = src.encode(TEXTS, progress=False)
    np.testing.assert_allclose(out, np.stack([model.vector(t) for t in TEXTS]), atol=1e-6)
    assert src.last_stats.calls == 5 and src.last_stats.retries == 0  # 23 texts in batches of 5


def test_survives_429_and_503_honouring_retry_after(tmp_path):
    model = FakeModel()
    with BackgroundServer(create_app(model, model_name="fake", inject_failures=[429, 503])) as url:
        src, sleeps = client(url, tmp_path, batch_size=50)
        out = src.encode(TEXTS, progress=False)
    assert out.shape == (23, 16)
    assert src.last_stats.calls == 3 and src.last_stats.retries == 2
    assert sleeps[0] == 1.0  # the injected 429 sends Retry-After: 1
    assert 0 <= sleeps[1] <= 0.02  # the 503 has no Retry-After: jittered backoff, base 0.01 * 2**1
    assert sorted(model.seen) == sorted(TEXTS)  # nothing embedded twice


def test_gives_up_with_the_status_after_max_retries():
    with BackgroundServer(create_app(FakeModel(), model_name="fake", inject_failures=[503] * 5)) as url:
        src, sleeps = client(url, max_retries=2)
        with pytest.raises(UpstreamError, match="HTTP 503.*gave up after 2 retries") as err:
            src.encode(["one text"], progress=False)
    assert err.value.status == 503 and len(sleeps) == 2


@pytest.mark.parametrize("case", ["wrong-model", "wrong-key"])
def test_client_errors_fail_at_once_without_leaking_the_key(case):
    app = create_app(FakeModel(), model_name="fake", api_key="server-key")
    with BackgroundServer(app) as url:
        src = OpenAICompatibleSource("other" if case == "wrong-model" else "fake", base_url=url,
                                     api_key="server-key" if case == "wrong-model" else "sk-test-secret",
                                     sleep=lambda s: pytest.fail("a 4xx must not be retried"))
        with pytest.raises(UpstreamError) as err:
            src.encode(["x"], progress=False)
    assert err.value.status == (404 if case == "wrong-model" else 401)
    assert "sk-test-secret" not in str(err.value) and "server-key" not in str(err.value)
    assert ("--model" if case == "wrong-model" else "API key") in str(err.value)
    assert src.last_stats.calls == 1
    assert "secret" not in repr(src)


def test_unreachable_endpoint_is_retried_then_reported():
    src, sleeps = client("http://127.0.0.1:9/v1", max_retries=1, timeout_s=2)
    with pytest.raises(UpstreamError, match="no answer") as err:
        src.encode(["x"], progress=False)
    assert err.value.status is None and len(sleeps) == 1


def test_a_crash_loses_nothing_and_a_rerun_pays_only_for_the_rest(tmp_path):
    texts = TEXTS + ["boom"] + [t + " again" for t in TEXTS]
    broken = FakeModel(fail_on="boom")
    with BackgroundServer(create_app(broken, model_name="fake")) as url:
        src, _ = client(url, tmp_path, batch_size=4, concurrency=1, max_retries=1)
        with pytest.raises(UpstreamError, match="HTTP 500"):
            src.encode(texts, progress=False)
    done_first = len(broken.seen)
    assert done_first == 20  # 23 texts -> batches of 4; the 6th batch holds "boom"
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        assert cache.count() == done_first  # every batch received was committed
    healthy = FakeModel()
    with BackgroundServer(create_app(healthy, model_name="fake")) as url:
        src, _ = client(url, tmp_path, batch_size=4, concurrency=2)
        out = src.encode(texts, progress=False)
        assert len(healthy.seen) == len(texts) - done_first  # no text paid for twice
        assert src.last_stats.cached == done_first
        again, _ = client(url, tmp_path)
        again.encode(texts, progress=False)
    assert again.last_stats.calls == 0 and again.last_stats.cached == len(texts)
    np.testing.assert_allclose(out, np.stack([healthy.vector(t) for t in texts]), atol=1e-6)


def test_bad_inputs_are_refused_before_any_call():
    src = OpenAICompatibleSource("fake", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(InputError, match="empty"):
        src.encode([], progress=False)
    with pytest.raises(InputError, match="position 1"):
        src.encode(["ok", "  "], progress=False)
    with pytest.raises(InputError, match="dimensions"):
        OpenAICompatibleSource("fake", dimensions=0)
