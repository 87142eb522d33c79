"""Rules for choosing between a supervised fit and the corpus-only adaptor, compared on the same dev fits.

    python benchmarks/fallback_rules_dev.py record --dataset scifact --seeds 0,1 --out results/fallback_rules.jsonl
    python benchmarks/fallback_rules_dev.py record --dataset xquad-r/el --seeds 0,1 --article-groups --out ...
    python benchmarks/fallback_rules_dev.py compare results/fallback_rules.jsonl

``record`` fits with ``supervised_fallback="corpus-only"`` (so the held-out labelled queries are kept
out of the anchors and the corpus-only adaptor is made) and writes, per fit, every candidate's nDCG@10
per dim on the dev split and per dim and held-out labelled query: the supervised weights moved back
toward stage 1 by each shrink of the grid (0 = stage 1, 1 = stage 2 as trained) and the corpus-only
adaptor, and (with ``--article-groups``) each held-out query's group. ``compare`` replays selection
rules on those records (only the held-out queries choose; the dev rows say what the choice was
worth), so rules are compared on identical fits. Dev splits as in
``topic_holdout_dev.py`` (the test split is never read); ``--embeddings`` takes another model's vectors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from matryoshka_adaptor import MatryoshkaAdaptor, fitting
from matryoshka_adaptor.eval.label_curve import label_subset
from matryoshka_adaptor.eval.metrics import evaluate_run
from matryoshka_adaptor.eval.retrieval import retrieve
from matryoshka_adaptor.nn import training
from matryoshka_adaptor.nn.training import Trainer, paired_evidence

from dev_splits import add_dev_set_arguments, use_net_weights, xquad_article
from topic_holdout_dev import DIMS, capture_shrink, load_dev_data

GRID = tuple(str(lam) for lam in Trainer.SHRINK_GRID)
Z = Trainer.EVIDENCE_Z


def record(args) -> None:
    C, cid, qvec, fit_qrels, dev = load_dev_data(args.dataset, Path(args.data_dir),
                                                 Path(args.embeddings) if args.embeddings else None)
    dev_q = list(dev)
    Qdev = np.stack([qvec[q] for q in dev_q])

    def score(est) -> list[float]:
        return [evaluate_run(dev, retrieve(est.transform(Qdev, m), est.transform(C, m), dev_q, cid))["ndcg@10"]
                for m in DIMS]

    box, fits = capture_shrink(), []
    train_adaptor = fitting.train_adaptor

    def keep_each_fit(inputs, config):  # the fallback's corpus-only fit is the second call
        out = train_adaptor(inputs, config)
        fits.append(out[0])
        return out

    fitting.train_adaptor = keep_each_fit
    params = eval(f"dict({args.params})")  # a research script's own command line, as in ablation_dev.py
    for seed in (int(s) for s in args.seeds.split(",")):
        fit_q = list(fit_qrels) if args.labels is None else label_subset(list(fit_qrels), fit_qrels, args.labels, seed)
        groups = [xquad_article(fit_qrels[q]) for q in fit_q] if args.article_groups else None
        box.clear()
        fits.clear()
        t = time.perf_counter()
        est = MatryoshkaAdaptor(dims=DIMS, progress=False, **{"seed": seed, "supervised_fallback": "corpus-only",
                                                              "supervised_shrink": "validated", **params})
        est.fit(C, np.stack([qvec[q] for q in fit_q]), {q: fit_qrels[q] for q in fit_q}, corpus_ids=cid,
                query_ids=fit_q, query_groups=groups)
        trainer, val_q = box["trainer"], box["trainer"].labelled_split()[1]
        held_groups = trainer.groups_of(val_q)
        rec = dict(dataset=args.dataset, embeddings=args.embeddings, labels=args.labels or "all", seed=seed,
                   article_groups=groups is not None, params=args.params, held_out=int(len(val_q)),
                   held_groups=None if held_groups is None else [str(g) for g in held_groups],
                   fit_s=round(time.perf_counter() - t), held={}, dev={})
        candidates = {lam: training.interpolate_weights(box["stage1"], box["stage2"], float(lam)) for lam in GRID}
        for name, state in candidates.items():
            use_net_weights(est, trainer.net, state)
            if len(val_q):
                trainer.query_ndcg(val_q)
                rec["held"][name] = trainer.last_val_by_dim_and_query.tolist()
            rec["dev"][name] = score(est)
        if len(fits) > 1:
            if len(val_q):
                trainer.query_ndcg_of_weights(fits[1].weights, val_q)
                rec["held"]["corpus-only"] = trainer.last_val_by_dim_and_query.tolist()
            est.weights_, est._numpy = fits[1].weights, None
            rec["dev"]["corpus-only"] = score(est)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.dataset} labels={rec['labels']} seed={seed} held-out={len(val_q)} fit {rec['fit_s']} s: "
              + "; ".join(f"{k} " + " ".join(f"{x:.4f}" for x in v) for k, v in rec["dev"].items()), flush=True)


def mean_score(held: dict, name: str) -> float:
    return float(np.mean(held[name]))


def gain_vs_corpus_only(held: dict, name: str) -> np.ndarray:
    return np.asarray(held[name]) - np.asarray(held["corpus-only"])  # (dims, held-out queries)


def half_or_whole(held: dict) -> str:
    """supervised_shrink="auto" with held-out queries: 1 only on a gain beyond noise over 0.5."""
    gain = np.asarray(held["1.0"]).mean(axis=0) - np.asarray(held["0.5"]).mean(axis=0)
    return "1.0" if paired_evidence(gain, Z)["beyond_noise"] else "0.5"


def best_shrink(held: dict) -> str:
    """supervised_shrink="validated": the grid value with the best mean (ties: the larger)."""
    return max(GRID, key=lambda lam: (mean_score(held, lam), float(lam)))


def fall_back(held: dict, lam: str, *, per_dim: bool, groups: list[str] | None = None) -> str:
    """The library's fallback rule (``per_dim``; with the held-out queries' ``groups``, counting groups) or
    session 19's, which weighed the mean over the dims only."""
    choice = fitting.fallback_choice(gain_vs_corpus_only(held, lam), DIMS, Z,
                                     None if groups is None else np.asarray(groups))
    keep = choice["mean_gain_beyond_noise"] and not (per_dim and choice["losing_dims"])
    return lam if keep else "corpus-only"


# Each rule sees one record: its held-out scores and (records made since session 21) the held-out queries' groups.
RULES = {
    "session 19: half-or-whole shrink, mean rule": lambda r: fall_back(r["held"], half_or_whole(r["held"]), per_dim=False),
    "half-or-whole shrink, mean rule + no dim lost": lambda r: fall_back(r["held"], half_or_whole(r["held"]), per_dim=True),
    "best shrink, mean rule": lambda r: fall_back(r["held"], best_shrink(r["held"]), per_dim=False),
    "session 20: best shrink, mean rule + no dim lost, queries as units":
        lambda r: fall_back(r["held"], best_shrink(r["held"]), per_dim=True),
    "session 21: the same, query groups as units":
        lambda r: fall_back(r["held"], best_shrink(r["held"]), per_dim=True, groups=r.get("held_groups")),
    "best shrink, never fall back": lambda r: best_shrink(r["held"]),
    "half-or-whole shrink, never fall back": lambda r: half_or_whole(r["held"]),
}


def compare(args) -> None:
    recs = [json.loads(line) for path in args.files for line in open(path)]
    recs = [r for r in recs if r["held"]]
    print(f"{len(recs)} fits with held-out queries; dev nDCG@10 of each rule's pick minus the corpus-only "
          f"adaptor's, at {' / '.join(map(str, DIMS))} dims")
    for name, rule in RULES.items():
        picks = [rule(r) for r in recs]
        diff = np.array([np.asarray(r["dev"][p]) - np.asarray(r["dev"]["corpus-only"]) for r, p in zip(recs, picks)])
        print(f"\n{name}\n  mean  " + " ".join(f"{x:+.4f}" for x in diff.mean(axis=0))
              + "\n  worst " + " ".join(f"{x:+.4f}" for x in diff.min(axis=0)))
        print("  picks " + ", ".join(f"{tag(r)}: {p}" for r, p in zip(recs, picks)))
    if args.verbose:
        for r in recs:
            print(f"\n{tag(r)}, {r['held_out']} held-out queries; dev nDCG@10 | held-out gain over corpus-only "
                  "per dim (standard errors)")
            for name in GRID + ("corpus-only",):
                ev = [paired_evidence(g, Z) for g in gain_vs_corpus_only(r["held"], name)]
                print(f"  {name:>11} " + " ".join(f"{x:.4f}" for x in r["dev"][name]) + " | "
                      + " ".join(f"{e['gain']:+.3f} ({e['gain'] / max(e['standard_error'], 1e-12):+.1f})" for e in ev))


def tag(r: dict) -> str:
    model = f" ({'/'.join(Path(r['embeddings']).parts[-2:])})" if r["embeddings"] else ""
    return f"{r['dataset']}{model} labels={r['labels']} s{r['seed']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="fit on a dev split and record every candidate's scores")
    add_dev_set_arguments(rec)
    rec.add_argument("--article-groups", action="store_true", help="XQuAD-R: hold out whole articles")
    rec.add_argument("--embeddings", default=None, help="another model's vectors of the set (corpus.npy, "
                     "queries.npy, ids.json)")
    rec.add_argument("--params", default="", help="more MatryoshkaAdaptor keywords, e.g. 'gamma=2.0'")
    rec.add_argument("--out", required=True)
    cmp = sub.add_parser("compare", help="replay the selection rules on recorded fits")
    cmp.add_argument("files", nargs="+")
    cmp.add_argument("-v", "--verbose", action="store_true", help="also every candidate of every fit")
    args = ap.parse_args()
    record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    main()
