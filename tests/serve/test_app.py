"""The embeddings server's HTTP contract: OpenAI request/response shapes, limits, auth, errors."""

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import clustered  # noqa: E402
from fakes import FakeModel  # noqa: E402
from matryoshka_adaptor import MatryoshkaAdaptor  # noqa: E402
from matryoshka_adaptor.serve.app import ServerLimits, create_app  # noqa: E402
from matryoshka_adaptor.serve.server import BackgroundServer, build_app  # noqa: E402
from matryoshka_adaptor.validation import InputError  # noqa: E402

D = 16


@pytest.fixture(scope="module")
def adaptor():
    return MatryoshkaAdaptor(dims=(4, 8, 16), steps=20, progress=False, device="cpu").fit(clustered(200, D))


@pytest.fixture(scope="module")
def server(adaptor):
    model = FakeModel(D)
    app = create_app(model, model_name="fake-adapted", adaptor=adaptor, api_key="client-key",
                     limits=ServerLimits(max_inputs=5, max_text_chars=100))
    with BackgroundServer(app) as url:
        yield url, model


def post(url, body, key="client-key"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/embeddings", json=body, headers=headers, timeout=10)


def test_adapted_vectors_cut_to_dimensions(server, adaptor):
    url, model = server
    texts = ["first text", "second text", "third"]
    r = post(url, {"model": "fake-adapted", "input": texts, "dimensions": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    want = adaptor.transform(np.stack([model.vector(t) for t in texts]), 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["object"] == "list" and body["model"] == "fake-adapted" and body["usage"]["total_tokens"] > 0


def test_base64_and_single_string_input(server, adaptor):
    url, model = server
    r = post(url, {"model": "fake-adapted", "input": "just one", "dimensions": 4, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    got = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(got, adaptor.transform(model.vector("just one")[None], 4)[0], atol=1e-6)


def test_no_dimensions_gives_the_full_adapted_vector(server):
    url, _ = server
    r = post(url, {"model": "fake-adapted", "input": ["x"]})
    assert len(r.json()["data"][0]["embedding"]) == D


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "fake-adapted", "input": ""}, 400, "input[0] is empty"),
    ({"model": "fake-adapted", "input": []}, 400, "empty list"),
    ({"model": "fake-adapted", "input": 5}, 400, "non-empty string, a list of strings"),
    ({"model": "fake-adapted", "input": [1, 2, 3]}, 400, "needs the model's tokenizer"),
    ({"model": "fake-adapted", "input": ["a", 2]}, 400, "Do not mix"),
    ({"model": "fake-adapted"}, 400, "`input`"),
    ({"input": "x"}, 400, "`model`"),
    ({"model": "fake-adapted", "input": "x", "dimensions": "64"}, 400, "must be an integer"),
    ({"model": "fake-adapted", "input": "x", "dimensions": 0}, 400, "between 1 and 16"),
    ({"model": "fake-adapted", "input": "x", "dimensions": 17}, 400, "between 1 and 16"),
    ({"model": "fake-adapted", "input": "x", "encoding_format": "int8"}, 400, "'float' or 'base64'"),
    ({"model": "fake-adapted", "input": ["a"] * 6}, 400, "limit of 5 per request"),
    ({"model": "fake-adapted", "input": "y" * 101}, 400, "limit of 100"),
    ({"model": "text-embedding-3-large", "input": "x"}, 404, "serves 'fake-adapted'"),
    ({"model": "fake-adapted", "input": "x", "extra": "y" * 1000}, 400, "Unrecognized request argument supplied: extra"),
])
def test_bad_requests_get_a_status_and_a_message(server, body, status, needle):
    r = post(server[0], body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_not_json_is_a_400(server):
    r = httpx.post(f"{server[0]}/embeddings", content=b"not json", timeout=10,
                   headers={"Authorization": "Bearer client-key", "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("key", [None, "wrong"])
def test_token_required(server, key):
    r = post(server[0], {"model": "fake-adapted", "input": "x"}, key=key)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]


def test_health_and_models(server):
    url, _ = server
    root = url.removesuffix("/v1")
    assert httpx.get(f"{root}/livez").json() == {"status": "ok"}  # the bare probe stays open
    assert httpx.get(f"{root}/health").status_code == 401
    assert httpx.get(f"{root}/health", headers={"Authorization": "Bearer client-key"}).json()["status"] == "ok"
    assert httpx.get(f"{url}/models").status_code == 401
    card = httpx.get(f"{url}/models", headers={"Authorization": "Bearer client-key"}).json()["data"][0]
    assert card["id"] == "fake-adapted" and card["dimensions"] == {"min": 1, "max": 16, "trained": [4, 8, 16]}


def test_concurrent_requests_are_batched_into_fewer_model_calls(adaptor):
    import concurrent.futures as cf

    model = FakeModel(D)
    app = create_app(model, model_name="m", adaptor=adaptor, limits=ServerLimits(batch_window_ms=50))
    with BackgroundServer(app) as url:
        with cf.ThreadPoolExecutor(16) as pool:
            rs = list(pool.map(lambda i: post(url, {"model": "m", "input": f"text {i}", "dimensions": 4}, key=None),
                               range(32)))
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):  # each caller gets its own row back
        want = adaptor.transform(model.vector(f"text {i}")[None], 4)[0]
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-6)
    assert model.calls < 32


def test_model_failure_is_a_500_in_openai_shape(adaptor):
    app = create_app(FakeModel(D, fail_on="boom"), model_name="m", adaptor=adaptor)
    with BackgroundServer(app) as url:
        r = post(url, {"model": "m", "input": ["boom"]}, key=None)
    assert r.status_code == 500 and "fails on purpose" in r.json()["error"]["message"]


def test_upstream_401_passes_through_and_never_shows_the_key(adaptor, tmp_path, monkeypatch):
    adaptor.save(tmp_path / "ad")
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret")
    upstream = create_app(FakeModel(D), model_name="fake", api_key="another-key", native_dim=D)
    with BackgroundServer(upstream) as up_url:
        app, name = build_app(adaptor=tmp_path / "ad", upstream=up_url, upstream_model="fake",
                              upstream_api_key_env="UPSTREAM_KEY", limits=ServerLimits(upstream_retries=0))
        with BackgroundServer(app) as url:
            r = post(url, {"model": name, "input": "x"}, key=None)
    # A permanent upstream 401 is passed through as a 401 (not a retryable 502), without the key.
    assert r.status_code == 401 and "HTTP 401" in r.json()["error"]["message"]
    assert "sk-upstream-secret" not in r.text and "UPSTREAM_KEY" not in r.text and up_url not in r.text


def test_unreachable_upstream_is_a_prompt_503_with_retry_after(adaptor, tmp_path):
    adaptor.save(tmp_path / "ad")
    app, name = build_app(adaptor=tmp_path / "ad", upstream="http://127.0.0.1:9/v1", upstream_model="fake",
                          limits=ServerLimits(upstream_retries=0, upstream_timeout_s=2))
    with BackgroundServer(app) as url:
        r = post(url, {"model": name, "input": "x"}, key=None)
    # No answer is worth retrying later: 503 with Retry-After, not a 502.
    assert r.status_code == 503 and "no answer" in r.json()["error"]["message"] and r.headers["retry-after"]


def test_pass_through_serves_native_vectors_only():
    app = create_app(FakeModel(D), model_name="raw", native_dim=D)
    with BackgroundServer(app) as url:
        ok = post(url, {"model": "raw", "input": "x"}, key=None)
        cut = post(url, {"model": "raw", "input": "x", "dimensions": 8}, key=None)
    assert len(ok.json()["data"][0]["embedding"]) == D
    assert cut.status_code == 400 and "no adaptor" in cut.json()["error"]["message"]


def test_build_app_needs_exactly_one_backend():
    with pytest.raises(InputError, match="exactly one backend"):
        build_app()
    with pytest.raises(InputError, match="--upstream-model"):
        build_app(upstream="http://127.0.0.1:9/v1")
