"""Distillation: teacher-logit cache alignment, the student recipe end to end, ablation resume."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_url_rows, student_overrides
from kd.data.batching import TokenizedSet, collate, length_bucketed_batches, tokenize
from kd.data.splits import Examples
from kd.train.loss_fns import distillation_loss
from kd.train.teacher_cache import cached_teacher_logits, example_keys, teacher_logits_file, teacher_scorer
from kd.eval.inference import predict_tokenized
from kd.train.loop import forward_backward
from kd.train.student import StudentRunConfig, transfer_examples
from losses import build_objective


@pytest.fixture(scope="module")
def teacher_and_data(tiny_bert_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    urls = [u.split("//")[1] for u, _ in make_url_rows(48)]
    examples = Examples(urls, [i % 2 for i in range(48)])
    return teacher, tokenizer, examples, tokenize(examples, tokenizer, 64)


def test_example_keys_are_stable_and_distinct():
    keys = example_keys(["a.com", "b.com", "a.com"])
    assert keys[0] == keys[2] != keys[1] and keys.dtype == np.int64 and (keys >= 0).all()


def test_cache_is_keyed_by_example_not_position(teacher_and_data, tmp_path):
    teacher, tokenizer, examples, data = teacher_and_data
    cache = tmp_path / "cache.safetensors"
    first = cached_teacher_logits(examples.urls, cache, teacher_scorer(teacher, data))
    torch.testing.assert_close(first, predict_tokenized(teacher, data))
    # A shuffled subset plus unseen URLs: cached rows are looked up by URL, new ones computed and appended.
    order = np.random.default_rng(0).permutation(len(examples))[:30]
    new_urls = ["fresh-domain.org/x", "other.net/login"]
    shuffled = Examples([examples.urls[i] for i in order] + new_urls, [0] * 32)
    shuffled_data = tokenize(shuffled, tokenizer, 64)
    computed = []

    def score(missing):
        computed.append(missing.tolist())
        return teacher_scorer(teacher, shuffled_data)(missing)

    again = cached_teacher_logits(shuffled.urls, cache, score)
    assert computed == [[30, 31]]  # only the unseen URLs go through the teacher
    torch.testing.assert_close(again[:30], first[torch.from_numpy(order)])
    torch.testing.assert_close(again[30:], predict_tokenized(teacher, shuffled_data)[30:])
    # A complete cache never calls the teacher (the QLoRA recipe then does not even load it).
    torch.testing.assert_close(cached_teacher_logits(shuffled.urls, cache, compute=None), again)


def test_cached_and_live_teacher_give_the_same_gradients_under_shuffling_and_accumulation(teacher_and_data, tmp_path, tiny_bert_dir):
    teacher, tokenizer, examples, data = teacher_and_data
    logits = cached_teacher_logits(examples.urls, tmp_path / "c.safetensors", teacher_scorer(teacher, data))
    objective = build_objective("ce:0.5,fkl:0.5@T=2")
    batches = length_bucketed_batches(data.lengths, 6, seed=3, epoch=1)[:4]  # shuffled, unequal lengths
    grads = []
    for loss_fn in (distillation_loss(objective, teacher_logits=logits), distillation_loss(objective, teacher=teacher)):
        torch.manual_seed(0)
        student = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        forward_backward(student, loss_fn, [collate(data, b) for b in batches])
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    # A cache looked up by batch position instead of example index would differ:
    wrong = logits.roll(1, 0)
    student = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    forward_backward(student, distillation_loss(objective, teacher_logits=wrong), [collate(data, b) for b in batches])
    assert not torch.allclose(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]), grads[0], rtol=1e-3)


def test_transfer_examples_count_for_soft_terms_only(teacher_and_data, tmp_path):
    teacher, tokenizer, examples, data = teacher_and_data
    logits = cached_teacher_logits(examples.urls, tmp_path / "c.safetensors", teacher_scorer(teacher, data))
    unlabelled = TokenizedSet(data.input_ids, np.full(len(data), -100), data.pad_token_id)
    batch = collate(unlabelled, np.arange(8))
    student = AutoModelForSequenceClassification.from_pretrained(teacher.name_or_path)
    with torch.no_grad():  # a student equal to its teacher has zero KL
        student.classifier.weight.add_(torch.randn_like(student.classifier.weight))
    soft = distillation_loss(build_objective("fkl@T=2"), teacher_logits=logits)(student, batch)
    hard = distillation_loss(build_objective("ce"), teacher_logits=logits)(student, batch)
    assert soft > 0 and hard == 0


@pytest.mark.parametrize("objective", ["ce:0.5,fkl:0.5@T=2", "rkl@T=2,hidden_mse@map=uniform"])
def test_student_recipe_with_pruned_vocabulary(tiny_teacher_run, objective):
    import train_student
    from kd.train.config import load_config

    root = tiny_teacher_run
    name = "student-" + objective.split(",")[-1].split("@")[0]
    cfg = load_config(StudentRunConfig, None, student_overrides(root, name, f"distill.objective={objective}", "student.prune_vocab=true"))
    results = train_student.distill_encoder(cfg)
    comparison = results["comparison"]
    assert comparison["student_parameters"] < comparison["teacher_parameters"] / 4  # 1 of 2 layers, pruned vocabulary
    assert comparison["percent_smaller"] > 50
    best = root / name / "best"
    model = AutoModelForSequenceClassification.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert model.config.vocab_size == len(tokenizer) < 30522 and model.config.num_hidden_layers == 1
    info = json.loads((best / "run_info.json").read_text())
    assert info["objective"].startswith(objective.split(":")[0].split("@")[0]) and info["vocabulary_pruning"]
    teacher_split = (root / "teacher" / "splits.csv").read_text()
    assert (root / name / "splits.csv").read_text() == teacher_split  # the teacher's split, exactly


def test_a_teacher_fpr_student_keeps_the_teachers_validation_false_alarm_rate(tiny_teacher_run):
    import train_student
    from kd.eval.metrics import false_positive_rate
    from kd.eval.scoring import saved_validation_fpr
    from kd.train.config import load_config

    root = tiny_teacher_run
    cfg = load_config(StudentRunConfig, None, student_overrides(root, "student-teacher-fpr", "distill.threshold=teacher-fpr"))
    results = train_student.distill_encoder(cfg)
    teacher_fpr = saved_validation_fpr(root / "teacher" / "best", "test")
    assert false_positive_rate(results["sets"]["validation"]["confusion_matrix"]) == pytest.approx(teacher_fpr)
    assert results["threshold_rule"] == f"validation FPR {teacher_fpr:.6g}"
    saved = json.loads((root / "student-teacher-fpr" / "best" / "metrics.json").read_text())
    assert saved["threshold"] == results["threshold"]
    with pytest.raises(ValueError, match="'f1' or 'teacher-fpr'"):
        load_config(StudentRunConfig, None, student_overrides(root, "s", "distill.threshold=fpr"))


def test_a_teacher_fpr_student_needs_the_teachers_validation_scores_before_training(tiny_teacher_run, tmp_path):
    import shutil

    import train_student
    from kd.errors import UsageError
    from kd.train.config import load_config

    teacher = shutil.copytree(tiny_teacher_run / "teacher" / "best", tmp_path / "teacher")
    (teacher / "metrics.json").unlink()
    cfg = load_config(StudentRunConfig, None, student_overrides(tiny_teacher_run, "s-none", "distill.threshold=teacher-fpr",
                                                                f"teacher={teacher}", f"out_dir={tmp_path / 'run'}"))
    with pytest.raises(UsageError, match=r"distill.threshold=teacher-fpr"):
        train_student.distill_encoder(cfg)
    assert not (tmp_path / "run").exists()


def test_the_teacher_comparison_uses_a_named_test_set_when_the_split_has_no_test_part(tiny_teacher_run, tmp_path):
    import shutil

    from kd.train.student import compare_with_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_run / "teacher" / "best", teacher)
    (teacher / "metrics.json").write_text(json.dumps({"sets": {"validation": {"f1": 0.9}, "esdaung": {"f1": 0.8}}}))
    comparison = compare_with_teacher(teacher, teacher, {"sets": {"validation": {"f1": 0.95}, "esdaung": {"f1": 0.6}}})
    assert comparison["test_set"] == "esdaung" and comparison["f1_retained_percent"] == pytest.approx(75.0)


def test_ablation_shards_then_tabulates_without_rerunning_finished_cells(tiny_teacher_run, monkeypatch):
    from kd import ablation

    root = tiny_teacher_run
    grid = {
        "set": student_overrides(root, "unused"),
        "out_dir": str(root / "ablation"),
        "grid": {"objectives": ["ce", "fkl@T={T}"], "temperatures": [2], "seeds": [0, 1], "students": {"L1": {"student.num_layers": 1}}},
    }
    grid_file = root / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    out = root / "ablation"
    assert ablation.main([str(grid_file), "--shard", "0/2"]) == []
    assert sorted(p.parent.name for p in out.glob("cells/*/results.json")) == ["ce_L1_seed=0", "fkl_T=2_L1_seed=0"]
    assert not (out / "summary.md").exists()
    ablation.main([str(grid_file), "--shard", "1/2"])

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(ablation, "run_student", must_not_run)
    summary = ablation.main([str(grid_file)])
    assert [s["group"] for s in summary] == ["ce|L1", "fkl|T=2|L1"] and all(s["seeds"] == 2 for s in summary)
    for name in ("cells.csv", "summary.csv", "summary.md", "summary.png"):
        assert (out / name).is_file()
    assert "±" in (out / "summary.md").read_text() and "val ROC-AUC" in (out / "summary.md").read_text()
    assert all(0 <= s["val_f1_mean"] <= 1 for s in summary)
    assert all(s["f1_ci95"] >= 0 for s in summary)
    paired = (out / "paired.csv").read_text().splitlines()
    assert paired[0].startswith("group,set,metric") and len(paired) == 1 + 2  # fkl against ce: ROC-AUC and F1 on test
    assert "Paired against `ce|L1`" in (out / "summary.md").read_text()
    assert ablation.main([str(grid_file)]) == summary


def test_named_cells_are_override_sets_and_exclude_the_objective_grid():
    from kd.ablation import expand_grid

    cells = expand_grid({"cells": {"a": {"distill.objective": "ce", "distill.generative_teacher": None}}, "seeds": [0, 1]})
    assert [(c.name, c.overrides) for c in cells] == [
        (f"a_seed={seed}", (f"train.seed={seed}", "distill.objective=ce", "distill.generative_teacher=null")) for seed in (0, 1)]
    with pytest.raises(ValueError, match="not both"):
        expand_grid({"cells": {"a": {}}, "objectives": ["ce"]})


def test_seeds_option_parses_a_comma_separated_list_and_refuses_anything_else():
    import argparse

    from kd.ablation import parse_seeds

    assert parse_seeds("0") == [0] and parse_seeds("2,0") == [2, 0]
    for bad in ("", "0,", "a", "-1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            parse_seeds(bad)


def test_augmented_transfer_set_is_unlabelled_and_holds_no_url_of_the_splits():
    import train_student
    from kd.train.config import load_config
    from kd.data.splits import DataReport, DataSplits

    train = Examples(["a.com/x/y", "b.org/p?q=1&r=2", "c.net", "d.io/login/verify"], [0, 1, 0, 1])
    held_out = Examples(["a.com/y", "c.net/p?q=1&r=2"], [0, 1])  # copies the augmentation would make
    splits = DataSplits(train, held_out, Examples([], []), {}, DataReport())
    cfg = load_config(StudentRunConfig, None, ["distill.augment_copies=20"])
    transfer = transfer_examples(cfg, splits, log=lambda *a: None)
    assert transfer.urls and set(transfer.labels) == {-100}
    assert not set(transfer.urls) & set(train.urls + held_out.urls)
    with pytest.raises(ValueError, match="augment_copies"):
        load_config(StudentRunConfig, None, ["distill.augment_copies=-1"])


def test_teacher_logit_caches_are_separate_per_teacher_precision(tiny_teacher_run):
    import train_student
    from kd.train.config import load_config

    cfg = load_config(StudentRunConfig, None, student_overrides(tiny_teacher_run, "unused"))
    fp32, bf16 = (teacher_logits_file(Path(cfg.teacher), cfg.model.max_length, amp, cfg.distill.cache_dir) for amp in (None, torch.bfloat16))
    assert fp32 != bf16 and fp32.parent == bf16.parent == tiny_teacher_run / "cache" / "teacher-logits"
    assert fp32.name.endswith("-float32.safetensors") and bf16.name.endswith("-bfloat16.safetensors")


def test_pruned_student_gets_the_same_loss_from_a_live_and_a_cached_teacher(teacher_and_data, tmp_path):
    """A vocabulary-pruned student's ids are renumbered: a live teacher must see them mapped back."""
    from models.vocabulary import prune_vocabulary, token_ids_in

    teacher, tokenizer, examples, data = teacher_and_data
    keep = token_ids_in(examples.urls, tokenizer, 64)
    student, student_tokenizer = prune_vocabulary(
        AutoModelForSequenceClassification.from_pretrained(teacher.name_or_path, hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0), tokenizer, keep)
    student_data = tokenize(examples, student_tokenizer, 64)
    assert student_data.input_ids != data.input_ids  # renumbered ids
    # The cache scores the student's own tokenised set, its ids mapped back to the teacher's.
    logits = cached_teacher_logits(examples.urls, tmp_path / "c.safetensors",
                                   teacher_scorer(teacher, student_data, teacher_input_ids=torch.tensor(keep)))
    torch.testing.assert_close(logits, predict_tokenized(teacher, data))
    objective = build_objective("ce:0.5,fkl:0.5@T=2")
    batches = [collate(student_data, b) for b in length_bucketed_batches(student_data.lengths, 8, seed=0, epoch=0)[:2]]
    results = []
    for loss_fn in (distillation_loss(objective, teacher_logits=logits),
                    distillation_loss(objective, teacher=teacher, teacher_input_ids=torch.tensor(keep))):
        student.zero_grad()
        loss = forward_backward(student, loss_fn, batches)
        results.append((loss, torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)
