"""Where a default fit's time goes on high-dimensional (API-sized) vectors, phase by phase.

    python benchmarks/high_dim.py --n 50000 --d 3072 --steps 10 --full-fit --out results/high_dim

Builds a synthetic corpus (clustered unit vectors, as in speed.py), then (``--full-fit``) times one
default fit end to end, and runs the phases of ``MatryoshkaAdaptor.fit`` one by one with the same
functions the estimator calls, timing each: sampling + normalising, the uncentred PCA, rotating the
rows by it, neighbour mining, and ``--steps`` training steps
of each architecture variant (learned Cayley rotation or fixed PCA rotation; hidden width), plus one
held-out validation pass. A full fit's time is extrapolated as
prepare + mine + steps_default x ms/step + validations x val time; the numbers are per phase so
a run can stop early and still say where the time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

from matryoshka_adaptor import MatryoshkaAdaptor
from matryoshka_adaptor.config import DEFAULTS, default_dims
from matryoshka_adaptor.pca import pca_rotation
from matryoshka_adaptor.eval.benchmark import machine_description
from matryoshka_adaptor.fitting import rotate_rows
from matryoshka_adaptor.neighbors import mine_neighbors
from matryoshka_adaptor.nn.module import AdaptorNet
from matryoshka_adaptor.nn.training import LOSS_TERMS, Trainer, TrainingData, stage_weights, weighted_sum
from matryoshka_adaptor.validation import l2_normalize

_spec = importlib.util.spec_from_file_location("speed", Path(__file__).with_name("speed.py"))
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per variant")
    ap.add_argument("--variants", default="rot512:512:512,rot512:768,fixed:768",
                    help="comma list of rotation:hidden[:residual]; rotation = rot (learned Cayley, all d), rot<r> "
                         "(learned in the leading r PCA coordinates) or fixed (PCA); residual = the leading "
                         "coordinates the MLP acts on (default all)")
    ap.add_argument("--full-fit", action="store_true", help="also time one default fit end to end (fit_summary kept)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"synthetic-{args.n}x{args.d}.npy"
    if not path.is_file():
        speed.synthetic_corpus(path, args.n, args.d)
    if args.full_fit:  # first, so that a time limit on the run still leaves this number
        t = time.perf_counter()
        est = MatryoshkaAdaptor(seed=0, device="cpu", progress=False).fit(np.load(path, mmap_mode="r"))
        full = {"wall_s": round(time.perf_counter() - t, 1), "hidden_dim": est.hidden_dim_,
                "rotation_dims": est.settings_.rotation_dims, "summary": est.fit_summary_}
        print("full fit", full, flush=True)
        (out / "high_dim_full_fit.json").write_text(json.dumps(full, indent=2))
    res = {"machine": machine_description(), "commit": speed.commit(), "n": args.n, "d": args.d,
           "torch_threads": torch.get_num_threads(), "phases": {}, "variants": {}}
    print(res["machine"], flush=True)
    config = DEFAULTS.replace(dims=default_dims(args.d), seed=0, progress=False, query_fraction=0.0, steps=0)
    x = np.load(path, mmap_mode="r")
    sample, t = timed(lambda: l2_normalize(np.asarray(x, dtype=np.float32)))
    res["phases"]["read_normalise_s"] = round(t, 2)
    rotation, t = timed(lambda: pca_rotation(sample, np.random.default_rng(0)))
    res["phases"]["pca_s"] = round(t, 2)
    print(res["phases"], flush=True)
    # As the fit does: rows rotated once by the PCA start, neighbours mined on the rotated rows.
    rotated, t = timed(lambda: rotate_rows(sample, rotation))
    res["phases"]["rotate_s"] = round(t, 2)
    nb, t = timed(lambda: mine_neighbors(rotated, rotated, 10, exclude=np.arange(len(sample)), method="auto",
                                         seed=0, device="cpu", pca_ordered=True))
    res["phases"]["mine_s"] = round(t, 2)
    res["phases"]["mine_method"] = nb.method
    res["phases"]["mine_recall"] = nb.recall_at_k
    print(res["phases"], flush=True)
    dims = default_dims(args.d)
    for spec in [v for v in args.variants.split(",") if v]:
        kind, hidden, *residual = spec.split(":")  # rot (all d learned), rot<r> (leading r learned) or fixed
        torch.manual_seed(0)
        fixed_start = kind != "rot"  # the net keeps a fixed rotation: its rows are rotated once, as in a fit
        net = AdaptorNet(args.d, int(hidden), 2, torch.from_numpy(rotation), learn_rotation=kind.startswith("rot"),
                         rotation_dims=int(kind[3:]) if kind.startswith("rot") and kind[3:] else None,
                         residual_dims=int(residual[0]) if residual else None, prerotated=fixed_start)
        rows = rotated if fixed_start else sample
        data = TrainingData(rows, rows, nb.indices, nb.scores, len(sample))
        trainer = Trainer(net, dims, config, data, device="cpu")
        # steps=0 sets the trainer up and runs one validation pass (timed); then the optimisation
        # step itself (as Trainer.fit_unsupervised runs it) is timed after one warm-up step.
        _, val_s = timed(trainer.fit_unsupervised)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        draw = trainer._anchor_sampler(np.arange(len(sample)), config.batch_size, 0.0)
        weights = stage_weights(config, 1)
        unsupervised = [term for term in LOSS_TERMS if not term.supervised]

        def one_step():
            with parametrize.cached():
                loss, _ = weighted_sum(unsupervised, weights, trainer.unsupervised_batch(draw(), weights))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        one_step()
        _, t = timed(lambda: [one_step() for _ in range(args.steps)])
        step_s = t / args.steps
        n_val = DEFAULTS.steps // DEFAULTS.eval_every + 1
        row = {"ms_per_step": round(1000 * step_s, 1), "validation_s": round(val_s, 2),
               "train_estimate_s": round(DEFAULTS.steps * step_s + n_val * val_s, 1)}
        row["fit_estimate_s"] = round(row["train_estimate_s"] + sum(
            v for k, v in res["phases"].items() if k.endswith("_s")), 1)
        res["variants"][spec] = row
        print(spec, row, flush=True)
        (out / "high_dim.json").write_text(json.dumps(res, indent=2))
    (out / "high_dim.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
