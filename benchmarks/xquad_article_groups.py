"""Write each XQuAD-R question's article as a query-groups TSV, one file per language folder and the pool.

    python benchmarks/xquad_article_groups.py --data-dir ../shared/data --out results/xquad-groups
    matryoshka-adaptor benchmark --dataset '../shared/data/xquad-r/*' ... --query-groups 'results/xquad-groups/{dataset}.tsv'

The article comes from a question's relevant sentence id (``<lang>-p<paragraph>s<sentence>``, five
paragraphs per article); the supervised fits then hold out whole articles, the test split's situation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from matryoshka_adaptor.eval.datasets import load_beir

from dev_splits import xquad_article


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MA_DATA_DIR", "../shared/data"))
    ap.add_argument("--out", required=True, help="folder for <dataset>.tsv files")
    args = ap.parse_args()
    root = Path(args.data_dir) / "xquad-r"
    if not root.is_dir():
        raise SystemExit(f"no XQuAD-R folder at {root}; pass --data-dir (the folder holding xquad-r/).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in root.iterdir() if (p / "queries.jsonl").is_file()):
        qrels = load_beir(folder).qrels
        article = {q: xquad_article(docs) for split in qrels.values() for q, docs in split.items() if docs}
        (out / f"{folder.name}.tsv").write_text("query-id\tgroup\n" + "".join(
            f"{q}\tarticle-{a}\n" for q, a in sorted(article.items())), encoding="utf-8")
        print(f"{out / folder.name}.tsv: {len(article)} questions, {len(set(article.values()))} articles")


if __name__ == "__main__":
    main()
