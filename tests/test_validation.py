"""Bad input gets an error that names the problem and the fix."""

import json

import numpy as np
import pytest

from matryoshka_adaptor import AdaptorFileError, InputError, MatryoshkaAdaptor

FAST = dict(steps=5, eval_every=5, progress=False, device="cpu")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import clustered

    x = clustered(n=100, d=32)
    est = MatryoshkaAdaptor(dims=(4, 8), **FAST).fit(x)
    path = tmp_path_factory.mktemp("ad") / "adaptor"
    est.save(path)
    return est, path


def bad(x, *, row, value):
    x = x.copy()
    x[row, 3] = value
    return x


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda x: bad(x, row=5, value=np.nan), r"NaN or infinite.*row 5.*drop or re-embed"),
        (lambda x: bad(x, row=7, value=np.inf), r"NaN or infinite.*row 7"),
        (lambda x: np.concatenate([x[:3], np.zeros((1, 32), np.float32), x[3:]]), r"zero vector.*row 3.*Remove"),
        (lambda x: x[0], r"1-D.*reshape\(1, -1\)"),
        (lambda x: x[:0], r"empty"),
        (lambda x: x.astype(str), r"dtype"),
    ],
)
def test_fit_rejects_bad_vectors(corpus, make, match):
    with pytest.raises(InputError, match=match):
        MatryoshkaAdaptor(dims=(4,), **FAST).fit(make(corpus))


@pytest.mark.parametrize("dims,match", [((4, 64), r"64 is larger than the embedding dimension 32"),
                                        ((0, 8), r"dims=\(0, 8\) is not valid: dims must be positive integers"),
                                        ((-3,), r"dims=\(-3,\) is not valid"), ((), r"dims=\(\) is not valid")])
def test_fit_rejects_bad_dims(corpus, dims, match):
    with pytest.raises(InputError, match=match):
        MatryoshkaAdaptor(dims=dims, **FAST).fit(corpus)


def test_query_corpus_dimension_mismatch(corpus):
    with pytest.raises(InputError, match="queries have dimension 16 but the corpus has 32"):
        MatryoshkaAdaptor(dims=(4,), **FAST).fit(corpus, corpus[:10, :16])


def test_qrels_naming_unknown_ids(corpus):
    q = corpus[:5]
    qids = [f"q{i}" for i in range(5)]
    with pytest.raises(InputError, match="query id.*'nope'"):
        MatryoshkaAdaptor(dims=(4,), **FAST).fit(corpus, q, {"nope": {"0": 1}}, query_ids=qids)
    with pytest.raises(InputError, match="document id 'missing'.*corpus_ids"):
        MatryoshkaAdaptor(dims=(4,), **FAST).fit(corpus, q, {"q0": {"missing": 1}}, query_ids=qids)
    with pytest.raises(InputError, match="qrels were given without queries"):
        MatryoshkaAdaptor(dims=(4,), **FAST).fit(corpus, None, {"q0": {"0": 1}})


def test_transform_rejects_wrong_dimension_and_bad_dim(fitted, corpus):
    est, _ = fitted
    with pytest.raises(InputError, match="dimension 16 but this adaptor expects 32"):
        est.transform(corpus[:, :16])
    with pytest.raises(InputError, match="out of range.*1 to 32"):
        est.transform(corpus, dim=33)
    with pytest.raises(InputError, match="out of range"):
        est.transform(corpus, dim=0)
    with pytest.raises(InputError, match="NaN"):
        est.transform(bad(corpus, row=1, value=np.nan))


def test_load_refuses_foreign_corrupt_and_newer_folders(fitted, tmp_path):
    _, path = fitted
    with pytest.raises(AdaptorFileError, match="does not exist"):
        MatryoshkaAdaptor.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdaptorFileError, match="config.json is missing"):
        MatryoshkaAdaptor.load(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(AdaptorFileError, match="not a matryoshka-adaptor config"):
        MatryoshkaAdaptor.load(foreign)
    config = json.loads((path / "config.json").read_text())
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    (newer / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(AdaptorFileError, match="newer than this library supports.*upgrade"):
        MatryoshkaAdaptor.load(newer)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(config))
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AdaptorFileError, match="corrupt"):
        MatryoshkaAdaptor.load(corrupt)
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(AdaptorFileError, match="not valid JSON"):
        MatryoshkaAdaptor.load(corrupt)


def test_save_refuses_to_overwrite_a_foreign_folder(fitted, tmp_path):
    est, _ = fitted
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("x")
    with pytest.raises(AdaptorFileError, match="not an adaptor; refusing"):
        est.save(tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").exists()
