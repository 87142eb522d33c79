import json

import pytest

from matryoshka_adaptor.eval import datasets
from matryoshka_adaptor.eval.datasets import load_beir, resolve_dataset
from matryoshka_adaptor.validation import InputError


def write_beir(root, n_docs=6, n_queries=4):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"d{i}", "title": f"Title {i}", "text": f"text of document {i}"}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i in range(n_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": f"question {i}"}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t2\nq0\td1\t1\nq1\td2\t1\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td3\t1\nq3\td4\t1\n")
    return root


def test_load_local_beir_folder(tmp_path):
    ds = load_beir(write_beir(tmp_path / "toy"))
    assert len(ds.corpus) == 6 and len(ds.queries) == 4
    assert ds.qrels["test"]["q0"] == {"d0": 2, "d1": 1}  # graded relevance kept
    assert ds.doc_texts()[0] == "Title 0 text of document 0"
    assert list(ds.split_queries("train")) == ["q2", "q3"]
    with pytest.raises(InputError, match="no qrels/dev.tsv"):
        ds.split_queries("dev")


def test_not_a_beir_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not a BEIR dataset folder"):
        load_beir(tmp_path / "x")


def test_download_offline_fails_fast_with_where_to_put_it(tmp_path, monkeypatch):
    # A closed loopback port stands in for "no network": the real download path runs and fails at once.
    monkeypatch.setattr(datasets, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    with pytest.raises(InputError, match=r"could not download BEIR dataset 'scifact'.*Put the unzipped BEIR folder at"):
        resolve_dataset("scifact", cache_dir=tmp_path)


def test_download_unzips_into_cache(tmp_path, monkeypatch):
    import shutil
    import threading
    from functools import partial
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    src = write_beir(tmp_path / "serve" / "toyset")
    shutil.make_archive(str(tmp_path / "www" / "toyset"), "zip", tmp_path / "serve", "toyset")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(datasets, "BEIR_URL", f"http://127.0.0.1:{server.server_port}/{{name}}.zip")
        ds = resolve_dataset("toyset", cache_dir=tmp_path / "cache")
        assert len(ds.corpus) == 6 and (tmp_path / "cache" / "toyset" / "corpus.jsonl").is_file()
        assert src.exists()
    finally:
        server.shutdown()
