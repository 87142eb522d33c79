"""Property-based reliability layer (issue 14): generated bad arrays, files, configs and HTTP responses
thrown at the API, the command line and the embeddings client.

Each property: the result is correct, or the error is a clear one (a ``MatryoshkaError`` in the API;
exit code != 0 with exactly one ``error:`` line and no traceback in the CLI); never a stray exception,
and never a changed file that should not change (hashes before and after).
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

from fakes import ScriptedEmbeddingsServer
from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.cli import app
from matryoshka_adaptor.errors import AdaptorFileError, MatryoshkaError, UpstreamError
from matryoshka_adaptor.formats import read_qrels
from matryoshka_adaptor.formats import read_embeddings, write_embeddings

D = 8
FAST = dict(steps=3, eval_every=3, progress=False, device="cpu")
PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def adaptor_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("prop") / "adaptor"
    MatryoshkaAdaptor(dims=(2, 4), **FAST).fit(rng.standard_normal((60, D)).astype(np.float32)).save(path)
    return path


@pytest.fixture(scope="module")
def adaptor(adaptor_dir):
    return MatryoshkaAdaptor.load(adaptor_dir)


def hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error_line(result):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def assert_unit_rows(out, n, dim):
    assert out.shape == (n, dim) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- arrays -> API
finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from(
    [0.0, -0.0, 1e-38, 1e-45, 3e38, -3e38, 1e30, np.nan, np.inf])
arrays = st.one_of(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(D)), elements=st.floats(-1e6, 1e6, width=32)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6), elements=finite_or_not),
    hnp.arrays(st.sampled_from([np.float64, np.float16, np.int8, np.int64, np.uint8, np.bool_, np.complex64]),
               st.tuples(st.integers(0, 5), st.sampled_from([D, D - 1, 0])), elements=None),
)


@PROPERTY
@given(x=arrays, dim=st.one_of(st.none(), st.integers(1, D), st.sampled_from([-1, 0, D + 1, 2.0, True, "4"])),
       chunk_rows=st.one_of(st.integers(1, 7), st.just(8192), st.sampled_from([-2, -1, 0, 1.5, False])))
def test_transform_gives_unit_vectors_or_a_clear_error(adaptor, x, dim, chunk_rows):
    try:
        out = adaptor.transform(x, dim, chunk_rows=chunk_rows)
    except MatryoshkaError as exc:
        event(f"refused: {str(exc).split(';')[0][-40:]}")
        return
    event("transformed")
    assert_unit_rows(out, x.shape[0], D if dim is None else int(dim))


# --------------------------------------------------------------------------- files -> CLI
def valid_file_bytes(kind: str, rng) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v.{kind}"
        x = rng.standard_normal((5, D)).astype(np.float32)
        write_embeddings(path, x, [f"d{i}" for i in range(5)] if kind != "npy" else None)
        return path.read_bytes()


@PROPERTY
@given(kind=st.sampled_from(["npy", "npz", "parquet"]), seed=st.integers(0, 2**16),
       cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       out_kind=st.sampled_from(["npy", "npz", "parquet"]), extra=st.sampled_from([[], ["--chunk-rows", "2"],
                                                                                   ["--dim", "3"], ["--dim", "99"],
                                                                                   ["--id-column", "nope"]]))
def test_damaged_input_files_give_a_result_or_one_error_line_and_change_nothing(
        adaptor_dir, tmp_path, kind, seed, cut, flips, out_kind, extra):
    data = bytearray(valid_file_bytes(kind, np.random.default_rng(seed)))
    data = data[: max(0, int(len(data) * cut))] if cut < 0.97 else data
    for where, value in flips:
        if data:
            data[int(where * (len(data) - 1))] = value
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / f"in.{kind}").write_bytes(bytes(data))
    (work / f"out.{out_kind}").write_bytes(b"an earlier output that must survive a failure")
    before = hashes(work)
    r = CliRunner().invoke(app, ["transform", str(adaptor_dir), str(work / f"in.{kind}"), str(work / f"out.{out_kind}"),
                                 "-q", *extra])
    after = hashes(work)
    assert after[f"in.{kind}"] == before[f"in.{kind}"]  # the input is never touched
    assert set(after) == set(before)  # no temporary file left behind
    event(f"exit {r.exit_code}")
    if r.exit_code == 0:
        out, _ = read_embeddings(work / f"out.{out_kind}", mmap=False)
        assert_unit_rows(np.asarray(out), out.shape[0], 3 if "--dim" in extra else D)
    else:
        assert_one_error_line(r)
        assert after == before
    shutil.rmtree(work)


# --------------------------------------------------------------------------- adaptor configs -> load
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10_000) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
CONFIG_FIELDS = ["format", "format_version", "input_dim", "dims", "architecture", "architecture.hidden_dim",
                 "architecture.depth", "architecture.rotation", "params", "params.recipe", "params.depth",
                 "supervised", "training", "weights_sha256"]


@PROPERTY
@given(field=st.sampled_from(CONFIG_FIELDS), value=json_values | st.just("__delete__"))
def test_edited_configs_load_correctly_or_are_refused(adaptor_dir, tmp_path, field, value):
    work = Path(tempfile.mkdtemp(dir=tmp_path)) / "ad"
    shutil.copytree(adaptor_dir, work)
    config = json.loads((work / "config.json").read_text())
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    if value == "__delete__":
        node.pop(leaf, None)
    else:
        node[leaf] = value
    (work / "config.json").write_text(json.dumps(config))
    try:
        est = MatryoshkaAdaptor.load(work)
    except MatryoshkaError:
        event("refused")
        r = CliRunner().invoke(app, ["info", str(work)])
        assert_one_error_line(r)
        return
    event("loaded")
    x = np.random.default_rng(1).standard_normal((4, D)).astype(np.float32)
    assert_unit_rows(est.transform(x, 2), 4, 2)


@PROPERTY
@given(data=st.binary(max_size=200))
def test_random_bytes_as_weights_are_refused(adaptor_dir, tmp_path, data):
    work = Path(tempfile.mkdtemp(dir=tmp_path)) / "ad"
    shutil.copytree(adaptor_dir, work)
    (work / "model.safetensors").write_bytes(data)
    with pytest.raises(AdaptorFileError):
        MatryoshkaAdaptor.load(work)


# --------------------------------------------------------------------------- qrels and ids files
cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\t\n\r"), max_size=6)


@PROPERTY
@given(rows=st.lists(st.lists(cells | st.sampled_from(["1", "0", "2.0", "-1", "nan", "inf", "1e400"]),
                              min_size=0, max_size=4), max_size=5))
def test_qrels_files_parse_or_are_refused(tmp_path, rows):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "q.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows), encoding="utf-8")
    try:
        qrels = read_qrels(path)
    except MatryoshkaError:
        return
    assert all(isinstance(g, int) for docs in qrels.values() for g in docs.values())


@PROPERTY
@given(ids=json_values)
def test_ids_json_of_any_shape_fits_or_gives_one_error_line(tmp_path, ids):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    np.save(work / "c.npy", np.random.default_rng(0).standard_normal((12, D)).astype(np.float32))
    (work / "ids.json").write_text(json.dumps(ids))
    r = CliRunner().invoke(app, ["fit", str(work / "c.npy"), "-o", str(work / "ad"), "--ids", str(work / "ids.json"),
                                 "--dims", "4", "--steps", "1", "-q", "--device", "cpu"])
    event(f"exit {r.exit_code}")
    if r.exit_code != 0:
        assert_one_error_line(r)
        assert not (work / "ad").exists()


# --------------------------------------------------------------------------- HTTP responses -> client
def embedding_items(n):
    vector = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 3) | st.none()
                      | st.text(max_size=2), min_size=0, max_size=5)
    item = st.fixed_dictionaries({"index": st.integers(-1, n) | st.none() | st.text(max_size=1),
                                  "embedding": vector | st.none() | st.text(max_size=3)})
    return st.lists(item, max_size=n + 1)


bodies = st.one_of(
    st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), embedding_items(n).map(lambda d: {"data": d}))),
    st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), json_values)),
    # valid in shape: the right count and indices, one length; content generated (zeros, tiny values)
    st.tuples(st.integers(1, 3), st.integers(1, 4)).flatmap(lambda nl: st.tuples(st.just(nl[0]), st.lists(
        st.lists(st.floats(-2, 2, width=32), min_size=nl[1], max_size=nl[1]), min_size=nl[0], max_size=nl[0]).map(
        lambda vs: {"data": [{"index": i, "embedding": v} for i, v in reversed(list(enumerate(vs)))]}))),
    # mostly-valid answers: the right count and indices, vectors of a generated length and content
    st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), st.lists(
        st.lists(st.floats(-2, 2) | st.just(0.0), min_size=1, max_size=4), min_size=n, max_size=n).map(
        lambda vs: {"data": [{"index": i, "embedding": v} for i, v in enumerate(vs)]}))),
)


@pytest.fixture(scope="module")
def scripted():
    holder = {"body": {}}
    server = ScriptedEmbeddingsServer(lambda request: (200, holder["body"]))
    with server as url:
        yield url, holder


@PROPERTY
@given(case=bodies, dimensions=st.sampled_from([None, 3]))
def test_client_accepts_only_responses_that_answer_the_request(scripted, tmp_path, case, dimensions):
    from matryoshka_adaptor.embed.cache import EmbeddingCache
    from matryoshka_adaptor.embed.openai_api import OpenAICompatibleSource

    n, body = case
    url, holder = scripted
    holder["body"] = body
    cache = Path(tempfile.mkdtemp(dir=tmp_path)) / "c.sqlite"
    src = OpenAICompatibleSource("fake", base_url=url, api_key="k", cache_path=cache, max_retries=0,
                                 dimensions=dimensions, sleep=lambda s: None)
    texts = [f"t{i}" for i in range(n)]
    try:
        out = src.encode(texts, progress=False)
    except UpstreamError as exc:
        event("refused")
        assert exc.status == 200
        with EmbeddingCache(cache) as c:
            assert c.count() == 0  # nothing of a refused answer is cached
        return
    event("accepted")
    assert out.shape[0] == n and np.isfinite(out).all() and (np.abs(out).max(axis=1) > 0).all()
    if dimensions:
        assert out.shape[1] == dimensions
    expected = {item["index"]: item["embedding"] for item in body["data"]}
    np.testing.assert_allclose(out, np.asarray([expected[i] for i in range(n)], np.float32))
