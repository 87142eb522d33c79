"""Do k-means clusters of XQuAD-R train questions recover their articles? (Can a holdout by cluster stand
for unseen articles?)

    python benchmarks/xquad_question_clusters.py --data-dir ../shared/data --langs el,th

For each language, the 632 train questions are clustered (scikit-learn ``KMeans``, 4 restarts, seed 0)
on their query vectors and on the mean of their positives' vectors, for several cluster counts.
``leak`` is the share of questions that have a question about the same article in another cluster:
a held-out cluster with leak near 1 is not an unseen article. Needs scikit-learn (installed with the
``sentence-transformers`` extra). Reads the train split only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from matryoshka_adaptor.eval.datasets import load_beir

from dev_splits import shared_vectors, xquad_article


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--langs", default="el,th")
    ap.add_argument("--clusters", default="4,8,16,25")
    args = ap.parse_args()
    for lang in args.langs.split(","):
        folder = Path(args.data_dir) / "xquad-r" / lang
        ds, pre = load_beir(folder), shared_vectors(folder)
        train = ds.qrels["train"]
        row = {c: i for i, c in enumerate(pre.corpus_ids)}
        qrow = {q: i for i, q in enumerate(pre.query_ids)}
        questions = [q for q in pre.query_ids if q in train]
        article = np.array([xquad_article(train[q]) for q in questions])
        by_query = pre.queries[[qrow[q] for q in questions]]
        by_positive = np.stack([pre.corpus[[row[d] for d in train[q]]].mean(0) for q in questions])
        by_positive /= np.linalg.norm(by_positive, axis=1, keepdims=True)
        for name, x in (("query vectors", by_query), ("positives' mean", by_positive)):
            cells = []
            for k in (int(c) for c in args.clusters.split(",")):
                label = KMeans(k, n_init=4, random_state=0).fit_predict(x.astype(np.float64))
                leak = np.mean([np.isin(article[label != label[i]], article[i]).any() for i in range(len(questions))])
                cells.append(f"k={k}: leak {leak:.2f}")
            print(f"{lang} {name}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
