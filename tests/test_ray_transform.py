"""`transform --engine ray` and `index add --engine ray` on a real local Ray instance started by the
test (and a real LanceDB table for the index)."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray Data is the optional `ray` extra: pip install 'matryoshka-adaptor[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

from matryoshka_adaptor import MatryoshkaAdaptor  # noqa: E402
from matryoshka_adaptor.distributed.ray_transform import transform_parquet_shards  # noqa: E402
from matryoshka_adaptor.errors import InputError  # noqa: E402
from matryoshka_adaptor.formats import read_embeddings, write_embeddings  # noqa: E402

D = 24


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def adaptor():
    x = np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)
    return MatryoshkaAdaptor(dims=(8, D), steps=5, progress=False, device="cpu", seed=0).fit(x)


def write_shards(folder, sizes, seed=1, ids=True):
    rng = np.random.default_rng(seed)
    parts = []
    for i, n in enumerate(sizes):
        x = rng.standard_normal((n, D)).astype(np.float32)
        names = [f"doc-{i}-{j}" for j in range(n)] if ids else None
        write_embeddings(folder / f"part-{i:03d}.parquet", x, names)
        parts.append((x, names))
    return parts


def test_shards_equal_single_process_transform_with_ids_and_order(tmp_path, local_ray, adaptor):
    parts = write_shards(tmp_path / "in", [700, 1, 2500])
    report = transform_parquet_shards(adaptor, tmp_path / "in", tmp_path / "out", dim=8, num_workers=2,
                                      batch_rows=256)
    assert len(report.written) == 3 and report.rows_written == 3201 and not report.skipped
    for i, (x, names) in enumerate(parts):
        got, got_ids = read_embeddings(tmp_path / "out" / f"part-{i:03d}.parquet")
        assert got_ids == names  # ids kept, rows in input order
        np.testing.assert_allclose(got, adaptor.transform(x, 8), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-000.parquet", "part-001.parquet",
                                                                      "part-002.parquet"]


def test_rerun_skips_complete_shards_and_redoes_partial_ones(tmp_path, local_ray, adaptor):
    parts = write_shards(tmp_path / "in", [400, 300], ids=False)
    out = tmp_path / "out"
    transform_parquet_shards(adaptor, str(tmp_path / "in" / "part-*.parquet"), out, dim=8, num_workers=2)
    done = out / "part-000.parquet"
    before = done.stat().st_mtime_ns
    # A crash mid-shard: a truncated output (wrong row count) and a leftover temporary file.
    write_embeddings(out / "part-001.parquet", np.ones((10, 8), np.float32))
    (out / ".partial-part-001.parquet").write_bytes(b"half")
    report = transform_parquet_shards(adaptor, tmp_path / "in", out, dim=8, num_workers=2)
    assert report.skipped == [str(done)] and report.written == [str(out / "part-001.parquet")]
    assert done.stat().st_mtime_ns == before
    got, ids = read_embeddings(out / "part-001.parquet")
    assert ids is None
    np.testing.assert_allclose(got, adaptor.transform(parts[1][0], 8), atol=1e-6)
    assert not list(out.glob(".partial-*"))


def test_bad_input_fails_before_work_with_one_line(tmp_path, local_ray, adaptor):
    folder = tmp_path / "in"
    write_embeddings(folder / "a.parquet", np.ones((5, D + 1), np.float32))
    with pytest.raises(InputError, match=f"{D + 1}-dim vectors but the adaptor expects {D}"):
        transform_parquet_shards(adaptor, folder, tmp_path / "out")
    with pytest.raises(InputError, match="no .parquet files"):
        transform_parquet_shards(adaptor, tmp_path / "empty-*.parquet", tmp_path / "out")


def test_nan_row_inside_a_worker_is_reported_as_input_error(tmp_path, local_ray, adaptor):
    x = np.random.default_rng(0).standard_normal((50, D)).astype(np.float32)
    x[7, 3] = np.nan
    write_embeddings(tmp_path / "in" / "a.parquet", x)
    with pytest.raises(InputError, match="a.parquet.*NaN"):
        transform_parquet_shards(adaptor, tmp_path / "in", tmp_path / "out", num_workers=1)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written left behind


def test_cli_engine_ray(tmp_path, local_ray, adaptor):
    from typer.testing import CliRunner

    from matryoshka_adaptor.cli import app

    parts = write_shards(tmp_path / "in", [300, 200])
    adaptor.save(tmp_path / "ad")
    args = ["transform", str(tmp_path / "ad"), str(tmp_path / "in"), str(tmp_path / "out"), "--dim", "8",
            "--engine", "ray", "--workers", "2", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 shard(s), 500 rows" in result.output
    got, ids = read_embeddings(tmp_path / "out" / "part-001.parquet")
    assert ids == parts[1][1]
    np.testing.assert_allclose(got, adaptor.transform(parts[1][0], 8), atol=1e-6)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "wrote 0 shard(s), 0 rows" in again.output and "2 already complete" in again.output
    bad = CliRunner().invoke(app, args[:4] + ["--engine", "spark"])
    assert bad.exit_code == 2 and "--engine must be 'local' or 'ray'" in bad.output


@pytest.mark.parametrize("precision,rescore_with", [("binary", "original"), ("int8", "adapted")])
def test_index_add_on_ray_equals_local_add_and_resumes(tmp_path, local_ray, adaptor, precision, rescore_with):
    pytest.importorskip("lancedb")
    from matryoshka_adaptor.distributed.ray_index import add_parquet_shards_to_index
    from matryoshka_adaptor.index.funnel import FunnelIndex

    parts = write_shards(tmp_path / "in", [500, 3, 900])
    x = np.concatenate([p[0] for p in parts])
    ids = [i for p in parts for i in p[1]]
    make = dict(adaptor=adaptor, dim=8, precision=precision, rescore_with=rescore_with, calibration=x)
    local = FunnelIndex.create(tmp_path / "local", **make)
    # in the Ray run's batches (each shard in 128-row batches): OpenBLAS may round a product's last bit
    # differently with the number of rows, which can move an int8 code by one step
    local.add([(p[1][s : s + 128], p[0][s : s + 128]) for p in parts for s in range(0, len(p[1]), 128)])
    FunnelIndex.create(tmp_path / "ray", **make)
    # A first run that stops after its first shard's rows (as a killed run would have committed them).
    first = add_parquet_shards_to_index(tmp_path / "ray", tmp_path / "in" / "part-000.parquet", adaptor=adaptor,
                                        num_workers=2, batch_rows=128)
    assert first.added == 500
    res = add_parquet_shards_to_index(tmp_path / "ray", tmp_path / "in", adaptor=adaptor, num_workers=2,
                                      batch_rows=128)
    assert (res.added, res.skipped) == (903, 500)
    cols = ["id", "row", "prefix", "full"]
    got = FunnelIndex.open(tmp_path / "ray", adaptor=adaptor).table.to_arrow().select(cols).sort_by("row")
    want = local.table.to_arrow().select(cols).sort_by("row")
    assert got.column("id").to_pylist() == ids  # input order
    assert got.column("prefix").to_pylist() == want.column("prefix").to_pylist()  # same codes
    np.testing.assert_allclose(np.array(got.column("full").to_pylist()), np.array(want.column("full").to_pylist()),
                               atol=1e-6)
    q = x[:5]
    assert FunnelIndex.open(tmp_path / "ray", adaptor=adaptor).search(q, k=5).ids == local.search(q, k=5).ids


def test_index_add_on_ray_refuses_bad_input_before_work(tmp_path, local_ray, adaptor):
    pytest.importorskip("lancedb")
    from typer.testing import CliRunner

    from matryoshka_adaptor.cli import app
    from matryoshka_adaptor.distributed.ray_index import add_parquet_shards_to_index
    from matryoshka_adaptor.errors import FunnelIndexError
    from matryoshka_adaptor.index.funnel import FunnelIndex

    write_shards(tmp_path / "noids", [50], ids=False)
    write_shards(tmp_path / "in", [60])
    FunnelIndex.create(tmp_path / "db", adaptor=adaptor, dim=8)
    with pytest.raises(InputError, match="no id column 'id'"):
        add_parquet_shards_to_index(tmp_path / "db", tmp_path / "noids", adaptor=adaptor)
    other = MatryoshkaAdaptor(dims=(8, D), steps=5, progress=False, device="cpu", seed=1).fit(
        np.random.default_rng(5).standard_normal((300, D)).astype(np.float32))
    with pytest.raises(FunnelIndexError, match="was built with adaptor"):
        add_parquet_shards_to_index(tmp_path / "db", tmp_path / "in", adaptor=other)
    assert FunnelIndex.open(tmp_path / "db", adaptor=adaptor).table.count_rows() == 0  # nothing written
    adaptor.save(tmp_path / "ad")
    ok = CliRunner().invoke(app, ["index", "add", str(tmp_path / "db"), "--vectors", str(tmp_path / "in"),
                                  "--adaptor", str(tmp_path / "ad"), "--engine", "ray", "-q"])
    assert ok.exit_code == 0, ok.output
    assert "added 60 rows (0 already present)" in ok.output
    bad = CliRunner().invoke(app, ["index", "add", str(tmp_path / "db"), "--vectors", str(tmp_path / "in"),
                                   "--adaptor", str(tmp_path / "ad"), "--engine", "ray", "--payload", "text"])
    assert bad.exit_code == 2 and "--texts, --ids and --payload need --engine local" in bad.output
