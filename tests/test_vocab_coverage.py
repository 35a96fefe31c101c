"""benchmarks/vocab_coverage.py: the share of URLs a vocabulary-pruned student
tokenizes differently from its teacher."""
from __future__ import annotations

import sys

import pytest
import yaml
from transformers import AutoTokenizer, BertForSequenceClassification

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from vocab_coverage import coverage  # noqa: E402


def test_counts_the_urls_whose_words_were_pruned(tiny_bert_dir, tmp_path):
    from models.vocabulary import prune_vocabulary, token_ids_in

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    run = tmp_path / "student"
    prune_vocabulary(BertForSequenceClassification.from_pretrained(tiny_bert_dir), tokenizer,
                     token_ids_in(["github.com/login"], tokenizer), run / "best")
    (run / "config.yaml").write_text(yaml.safe_dump({"teacher": str(tiny_bert_dir)}))
    urls = tmp_path / "urls.csv"
    urls.write_text("url,label\ngithub.com/login,0\nzanzibar-bank.example/verify,1\n")

    result = coverage(run, urls, max_urls=10)

    assert result["urls"] == 2 and result["kept_rows"] < result["teacher_rows"] == len(tokenizer)
    assert result["segmented_differently"] == pytest.approx(0.5)  # the training URL reads as the teacher reads it
    assert result["with_new_unk"] == pytest.approx(0.5)
    assert coverage(run, urls, max_urls=1)["urls"] == 1
