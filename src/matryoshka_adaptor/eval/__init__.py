"""Evaluation: BEIR datasets, exact retrieval, metrics (pytrec_eval), baselines, benchmark and reports."""
