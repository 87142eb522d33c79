import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matryoshka_adaptor.formats import read_embeddings, transform_file, write_embeddings
from matryoshka_adaptor.validation import InputError


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_round_trip(tmp_path, corpus, suffix):
    ids = [f"doc{i}" for i in range(len(corpus))]
    path = write_embeddings(tmp_path / f"x{suffix}", corpus, ids)
    x, got_ids = read_embeddings(path)
    np.testing.assert_array_equal(np.asarray(x), corpus)
    assert got_ids == (None if suffix == ".npy" else ids)


def test_npy_is_memory_mapped(tmp_path, corpus):
    np.save(tmp_path / "x.npy", corpus)
    x, _ = read_embeddings(tmp_path / "x.npy")
    assert isinstance(x, np.memmap)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_streaming_transform_equals_in_memory(tmp_path, corpus, suffix):
    ids = [f"d{i}" for i in range(len(corpus))]
    src = write_embeddings(tmp_path / f"in{suffix}", corpus, ids)
    n = transform_file(src, tmp_path / f"out{suffix}", lambda x, off: x[:, :5] * 2, 5, chunk_rows=37)
    out, out_ids = read_embeddings(tmp_path / f"out{suffix}")
    assert n == len(corpus)
    np.testing.assert_allclose(np.asarray(out), corpus[:, :5] * 2)
    assert out_ids == (None if suffix == ".npy" else ids)


def test_failed_transform_leaves_no_output(tmp_path, corpus):
    np.save(tmp_path / "in.npy", corpus)

    def explode(x, offset):
        if offset > 0:
            raise RuntimeError("crash mid-write")
        return x

    with pytest.raises(RuntimeError):
        transform_file(tmp_path / "in.npy", tmp_path / "out.npy", explode, 32, chunk_rows=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_parquet_errors(tmp_path):
    pq.write_table(pa.table({"vec": [[1.0, 2.0], [3.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="no column 'embedding'.*--column"):
        read_embeddings(tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="different lengths"):
        read_embeddings(tmp_path / "ragged.parquet", column="vec")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="unsupported file type"):
        read_embeddings(tmp_path / "x.csv")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.dtype(">f4")])
def test_streaming_npy_reads_other_float_types(tmp_path, corpus, dtype):
    np.save(tmp_path / "in.npy", corpus.astype(dtype))
    transform_file(tmp_path / "in.npy", tmp_path / "out.npy", lambda x, off: x.astype(np.float32), 32, chunk_rows=64)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), corpus.astype(dtype).astype(np.float32))


def test_truncated_npy_is_reported_and_leaves_no_output(tmp_path, corpus):
    np.save(tmp_path / "in.npy", corpus)
    data = (tmp_path / "in.npy").read_bytes()
    (tmp_path / "in.npy").write_bytes(data[: len(data) - 1000])
    # 1,000 bytes are 7.8 rows of 32 float32: the last 8 rows are incomplete
    with pytest.raises(InputError, match=f"truncated: .* promises {len(corpus)} rows but the data ends in row "
                                         f"{len(corpus) - 8};"):
        transform_file(tmp_path / "in.npy", tmp_path / "out.npy", lambda x, off: x, 32, chunk_rows=64)
    assert not (tmp_path / "out.npy").exists()
