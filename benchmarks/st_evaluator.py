"""sentence-transformers' own InformationRetrievalEvaluator on an exported adaptor (BEIR test split).

Fits the default supervised adaptor (train-split qrels and train queries only, as the
`benchmark` command's adaptor-supervised; or --method adaptor-queries), exports it with the base model as a
sentence-transformers folder, and scores that folder with sentence-transformers'
InformationRetrievalEvaluator at --dims (it encodes the corpus again for each dim). For
comparison it prints this package's own nDCG@10 (pytrec_eval, exact cosine search) of the
same adaptor applied to the precomputed vectors.

    python benchmarks/st_evaluator.py --dataset ../shared/data/scifact \
        --embeddings ../shared/data/scifact/embeddings/all-MiniLM-L6-v2 --dims 64 --out results/st-eval
    (--max-queries N --max-other-docs M: a slice, for a quick check)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--dims", default="64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=("adaptor-supervised", "adaptor-queries"), default="adaptor-supervised",
                    help="as in the benchmark command: train qrels, or the train queries unlabeled")
    ap.add_argument("--max-queries", type=int, default=None, help="a slice: the first N test queries")
    ap.add_argument("--max-other-docs", type=int, default=None, help="a slice: their relevant docs + N others")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from matryoshka_adaptor import MatryoshkaAdaptor
    from matryoshka_adaptor.embed.sources import load_precomputed
    from matryoshka_adaptor.eval.benchmark import machine_description
    from matryoshka_adaptor.eval.datasets import load_beir
    from matryoshka_adaptor.eval.metrics import evaluate_run
    from matryoshka_adaptor.eval.retrieval import retrieve
    from matryoshka_adaptor.integrations.sentence_transformers import beir_ir_evaluator, export_sentence_transformer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dims = [int(d) for d in args.dims.split(",")]
    ds = load_beir(args.dataset)
    pre = load_precomputed(args.embeddings)
    q_row = {q: i for i, q in enumerate(pre.query_ids)}
    train = [q for q in ds.split_queries("train") if q in q_row]
    started = time.perf_counter()
    adaptor = MatryoshkaAdaptor(dims=(16, 32, 64, 128, 256), seed=args.seed, base_model=args.model)
    train_vectors = pre.queries[[q_row[q] for q in train]]
    if args.method == "adaptor-supervised":
        adaptor.fit(pre.corpus, train_vectors, {q: ds.qrels["train"][q] for q in train},
                    corpus_ids=pre.corpus_ids, query_ids=train)
    else:
        adaptor.fit(pre.corpus, train_vectors)
    fit_s = time.perf_counter() - started
    adaptor.save(out / "adaptor")
    folder = out / "model"
    shutil.rmtree(folder, ignore_errors=True)  # this script's own output of an earlier run
    export_sentence_transformer(adaptor, args.model, folder)
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)

    rows = []
    for dim in dims:
        evaluator = beir_ir_evaluator(args.dataset, "test", truncate_dim=dim, batch_size=64, show_progress_bar=True,
                                      max_queries=args.max_queries, max_other_docs=args.max_other_docs)
        t0 = time.perf_counter()
        scores = model.evaluate(evaluator)
        eval_s = time.perf_counter() - t0
        st_ndcg = scores[f"{evaluator.name}_cosine_ndcg@10"]
        test, cids = evaluator.queries_ids, evaluator.corpus_ids  # the same queries and corpus (or slice)
        c_row = {c: i for i, c in enumerate(pre.corpus_ids)}
        q = adaptor.transform(pre.queries[[q_row[x] for x in test]], dim=dim)
        c = adaptor.transform(pre.corpus[[c_row[x] for x in cids]], dim=dim)
        ours = evaluate_run({x: ds.qrels["test"][x] for x in test}, retrieve(q, c, test, cids, top_k=100))
        row = {"dim": dim, "st_evaluator_ndcg@10": st_ndcg, "matryoshka_adaptor_ndcg@10": ours["ndcg@10"],
               "st_evaluator_seconds": round(eval_s, 1)}
        rows.append(row)
        print(json.dumps(row))
    result = {"dataset": ds.name, "model": args.model, "method": args.method, "seed": args.seed, "fit_seconds": round(fit_s, 1),
              "n_queries": len(test), "n_corpus": len(cids), "rows": rows, "machine": machine_description()}
    (out / "st_evaluator.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
