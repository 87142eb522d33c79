"""Issue 14, items 1-3: nothing already on disk is lost or replaced by a bad or unlucky command."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka_adaptor import InputError, MatryoshkaAdaptor
from matryoshka_adaptor.cli import app
from matryoshka_adaptor.formats import transform_file

FAST = dict(steps=5, eval_every=5, progress=False, device="cpu")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder):
    """Path -> sha256 of every file under ``folder`` (to prove nothing else changed)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory):
    from conftest import clustered

    path = tmp_path_factory.mktemp("ad") / "adaptor"
    MatryoshkaAdaptor(dims=(4, 8), **FAST).fit(clustered(n=100, d=32)).save(path)
    return path


# ---------------------------------------------------------------- item 1
def test_refit_into_an_adaptor_folder_replaces_only_the_adaptor_files(tmp_path, corpus):
    folder = tmp_path / "work"
    MatryoshkaAdaptor(dims=(4,), **FAST).fit(corpus).save(folder)
    np.save(folder / "corpus.npy", corpus)  # the input lives in the output folder
    (folder / "notes.txt").write_text("mine")
    (folder / "runs").mkdir()
    (folder / "runs" / "log.txt").write_text("keep me")
    others = {k: v for k, v in snapshot(folder).items() if k not in ("config.json", "model.safetensors")}
    r = invoke("fit", folder / "corpus.npy", "--out", folder, "--dims", "8", "--steps", "3", "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output
    after = snapshot(folder)
    assert {k: after[k] for k in others} == others  # input, files and subfolders untouched
    assert set(after) == set(others) | {"config.json", "model.safetensors"}
    assert MatryoshkaAdaptor.load(folder).dims_ == (8,)


def test_fit_refuses_a_folder_with_other_content_before_training_unless_overwrite(tmp_path, corpus):
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "corpus.npy", corpus)
    (folder / "notes.txt").write_text("mine")
    before = snapshot(folder)
    # --steps 100000 would take minutes: the refusal must come before any training
    r = invoke("fit", folder / "corpus.npy", "--out", folder, "--steps", "100000", "-q", "--device", "cpu")
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "--overwrite" in r.output
    assert snapshot(folder) == before
    r = invoke("fit", folder / "corpus.npy", "--out", folder, "--dims", "8", "--steps", "3", "-q", "--device", "cpu",
               "--overwrite")
    assert r.exit_code == 0, r.output
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert MatryoshkaAdaptor.load(folder).dims_ == (8,)


def test_fit_refuses_an_out_that_is_the_input_file(tmp_path, corpus):
    np.save(tmp_path / "c.npy", corpus)
    before = snapshot(tmp_path)
    r = invoke("fit", tmp_path / "c.npy", "--out", tmp_path / "c.npy", "--steps", "3", "-q")
    assert r.exit_code == 2 and "error:" in r.output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- item 2
@pytest.mark.parametrize("rows", [-1, 0])
def test_bad_chunk_rows_is_refused_and_an_existing_output_survives(tmp_path, adaptor, corpus, rows):
    np.save(tmp_path / "in.npy", corpus)
    np.save(tmp_path / "out.npy", np.arange(12, dtype=np.float32).reshape(3, 4))  # a good file already there
    before = snapshot(tmp_path)
    r = invoke("transform", adaptor, tmp_path / "in.npy", tmp_path / "out.npy", "--dim", "8",
               "--chunk-rows", rows, "-q")
    assert r.exit_code == 2, r.output
    assert "chunk_rows must be a whole number >= 1" in r.output and "Traceback" not in r.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("rows", [-1, 0, 2.5, True])
def test_api_refuses_bad_chunk_rows(tmp_path, adaptor, corpus, rows):
    est = MatryoshkaAdaptor.load(adaptor)
    with pytest.raises(InputError, match="chunk_rows"):
        est.transform(corpus, 8, chunk_rows=rows)
    np.save(tmp_path / "in.npy", corpus)
    with pytest.raises(InputError, match="chunk_rows"):
        transform_file(tmp_path / "in.npy", tmp_path / "o.parquet", lambda x, off: x, 32, chunk_rows=rows)
    assert not (tmp_path / "o.parquet").exists()


def test_transform_refuses_a_short_read_instead_of_renaming_it_into_place(tmp_path, corpus):
    np.save(tmp_path / "in.npy", corpus)
    np.save(tmp_path / "out.npy", corpus[:3])
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="shape"):
        transform_file(tmp_path / "in.npy", tmp_path / "out.npy", lambda x, off: x[:-1], 32, chunk_rows=64)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- item 3
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_output_equal_to_input_is_refused(tmp_path, adaptor, corpus, suffix, monkeypatch):
    from matryoshka_adaptor.formats import write_embeddings

    src = tmp_path / f"in{suffix}"
    write_embeddings(src, corpus, [f"d{i}" for i in range(len(corpus))] if suffix != ".npy" else None)
    before = snapshot(tmp_path)
    r = invoke("transform", adaptor, src, src, "--dim", "8", "-q")
    assert r.exit_code == 2 and "is the input file" in r.output
    monkeypatch.chdir(tmp_path)  # the same file by another spelling
    r = invoke("transform", adaptor, src, f"./sub/../in{suffix}", "--dim", "8", "-q")
    assert r.exit_code == 2 and "is the input file" in r.output
    (tmp_path / f"link{suffix}").symlink_to(src)
    r = invoke("transform", adaptor, src, tmp_path / f"link{suffix}", "--dim", "8", "-q")
    assert r.exit_code == 2 and "is the input file" in r.output
    (tmp_path / f"link{suffix}").unlink()
    assert snapshot(tmp_path) == before
