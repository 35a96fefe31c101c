"""Multi-source reading, the cross-source domain split, the caps and the kd.benchmark command, on small generated files."""
import time
from pathlib import Path

import pytest

from conftest import read_csv_rows, write_csv
from kd.data.multisource import cap_indices, read_multisource, split_multisource
from kd.data.splits import DataConfig, DataReport


def write_sources(tmp_path):
    """Three files in the new schemas: ESDAUNG / PhishStorm (``url,label``, ``&amp;``
    residue) and JPCERT (``date,url,brand,label``, phishing only); domains shared
    across sources and subdomains of one domain in several of them."""
    esdaung = [(f"https://www.site{i}.com/page{i}", "legitimate") for i in range(60)]
    esdaung += [(f"http://login{i}.evil{i % 7}.xyz/a?x=1&amp;y=2", "phishing") for i in range(30)]
    esdaung += [("https://www.site0.com/page0", "legitimate"), ("", "phishing")]  # a duplicate, an empty URL
    storm = [(f"http://m.site{i}.com/other{i}", "legitimate") for i in range(40)]  # same domains as ESDAUNG
    storm += [(f"http://pay.evil{i % 5}.xyz/p{i}?a=1&amp;b=2", "phishing") for i in range(40)]
    storm += [("http://site1.com/page1", "phishing")]  # ESDAUNG has it as legitimate: dropped from both
    jpcert = [(f"2023/{1 + i % 12:02d}/0{1 + i % 9} 10:00:00", f"https://x{i}.duckdns.org/", "Bank", "phishing") for i in range(30)]
    jpcert += [(f"2024/0{1 + i % 9}/15 09:00:00", f"http://aeon{i}.evil{i % 3}.xyz/login", "AEON", "phishing") for i in range(30)]
    jpcert += [("2025/01/01 00:00:00", "https://x0.duckdns.org", "Later", "phishing")]  # reported again: keeps 2023
    write_csv(tmp_path / "esdaung.csv", esdaung)
    write_csv(tmp_path / "storm.csv", storm)
    write_csv(tmp_path / "jpcert.csv", jpcert, header=("date", "url", "brand", "label"))
    return {"esdaung": ["esdaung.csv"], "phishstorm": ["storm.csv"], "jpcert": ["jpcert.csv"]}


def read(tmp_path):
    report = DataReport()
    data = read_multisource(write_sources(tmp_path), DataConfig(data_dir=str(tmp_path)), report, dated={"jpcert": "jpcert.csv"})
    return data, report


def test_the_new_schemas_read_with_a_cleaning_report_and_jpcert_keeps_date_and_brand(tmp_path):
    data, report = read(tmp_path)
    reads = {r.source: r for r in report.reads}
    assert reads["esdaung/esdaung"].skipped["empty_url"] == 1
    assert report.dropped["esdaung: duplicate"] == 1
    assert report.dropped["jpcert: duplicate"] == 1
    assert report.dropped["phishstorm: both_labels_across_sources"] == 1
    assert report.dropped["esdaung: both_labels_across_sources"] == 1
    assert "site1.com/page1" not in data.urls
    assert all("&amp;" not in u for u in data.urls)
    jp = {u: (d, b) for u, s, d, b in zip(data.urls, data.sources, data.dates, data.brands) if s == "jpcert"}
    assert jp["x0.duckdns.org"][0].startswith("2023-") and jp["x0.duckdns.org"][1] == "Bank"
    assert sum(d >= "2024-01-01" for d, _ in jp.values()) == 30
    assert data.sizes() == {
        "esdaung": {"legitimate": 59, "phishing": 30}, "phishstorm": {"legitimate": 40, "phishing": 40},
        "jpcert": {"legitimate": 0, "phishing": 60},
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_registrable_domain_is_in_two_splits_across_sources_and_subdomains(tmp_path, seed):
    data, _ = read(tmp_path)
    splits = split_multisource(data, [0.5, 0.2, 0.3], seed, caps={})
    seen = {}
    for name, part in splits.items():
        for domain in part.domains():
            assert seen.setdefault(domain, name) == name, f"{domain} in {seen[domain]} and {name}"
    assert sum(len(p) for p in splits.values()) == len(data)
    # site{i}.com appears in two sources (www. and m. hosts) and always lands with itself.
    assert any(len({s for u, s in zip(p.urls, p.sources) if "site3.com" in u}) == 2 for p in splits.values())


def test_caps_bound_each_source_and_class_with_a_seeded_sample(tmp_path):
    data, _ = read(tmp_path)
    keep = cap_indices(data, 10, seed=0)
    capped = data.subset(keep)
    assert capped.sizes() == {
        "esdaung": {"legitimate": 10, "phishing": 10}, "phishstorm": {"legitimate": 10, "phishing": 10},
        "jpcert": {"legitimate": 0, "phishing": 10},
    }
    assert keep == cap_indices(data, 10, seed=0) != cap_indices(data, 10, seed=1)
    # One source's sample does not move when another source is left out.
    without = data.where(lambda i: data.sources[i] != "phishstorm")
    esd = lambda d, k: [d.urls[i] for i in k if d.sources[i] == "esdaung"]  # noqa: E731
    assert esd(data, keep) == esd(without, cap_indices(without, 10, seed=0))
    assert cap_indices(data, None, 0) == list(range(len(data)))


def test_split_caps_apply_per_split(tmp_path):
    data, _ = read(tmp_path)
    splits = split_multisource(data, [0.6, 0.1, 0.3], 0, caps={"train": 5})
    assert all(n <= 5 for sizes in splits["train"].sizes().values() for n in sizes.values())
    whole = split_multisource(data, [0.6, 0.1, 0.3], 0, caps={})
    assert splits["test"].urls == whole["test"].urls


@pytest.mark.slow
def test_the_real_new_sources_read(data_dir):
    report = DataReport()
    start = time.perf_counter()
    data = read_multisource(
        {"esdaung": ["esdaung2021/urls.csv"], "phishstorm": ["phishstorm/urls.csv"],
         "jpcert": ["jpcert_phishurl/phishurl-2019-2025.csv"]},
        DataConfig(data_dir=str(data_dir)), report, dated={"jpcert": "jpcert_phishurl/phishurl-2019-2025.csv"},
    )
    sizes = data.sizes()
    assert sizes["esdaung"]["legitimate"] > 45_000 and sizes["esdaung"]["phishing"] > 9_000
    assert sizes["phishstorm"]["legitimate"] > 40_000 and sizes["phishstorm"]["phishing"] > 25_000
    assert sizes["jpcert"]["phishing"] > 150_000 and sizes["jpcert"]["legitimate"] == 0
    jp_dates = [d for d, s in zip(data.dates, data.sources) if s == "jpcert"]
    assert sum(d[:4] in {str(y) for y in range(2019, 2026)} for d in jp_dates) > len(jp_dates) - 100
    assert all(d == "" or d[:4] in {str(y) for y in range(2019, 2026)} for d in jp_dates)  # a few rows have no date
    print(f"read in {time.perf_counter() - start:.1f} s\n{report.summary()}\n{sizes}")


def write_benchmark_config(tmp_path) -> Path:
    import random

    import yaml

    rng = random.Random(0)
    sources = {}
    for s, (good, bad) in enumerate([("blog", "login"), ("news", "verify"), ("shop", "account")]):
        rows = [(f"http://{good}{rng.randint(0, 99)}.s{s}site{i}.com/{good}/{i}", "legitimate") for i in range(80)]
        rows += [(f"http://{bad}.s{s}evil{i}.xyz/{bad}?id={i}", "phishing") for i in range(80)]
        write_csv(tmp_path / f"src{s}.csv", rows)
        sources[f"src{s}"] = [f"src{s}.csv"]
    jp = [(f"20{22 + i % 4}/0{1 + i % 9}/01 10:00:00", f"https://secure{i}.jpevil{i}.top/", "Bank", "phishing") for i in range(120)]
    write_csv(tmp_path / "jp.csv", jp, header=("date", "url", "brand", "label"))
    config = {"sources": sources, "data_dir": str(tmp_path), "n_boot": 20,
              "temporal": {"source": "jpcert", "specs": ["jp.csv"], "since": "2024-01-01", "legitimate": "src0"}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_benchmark_command_writes_the_matrix_folds_and_a_model_row(tmp_path, tiny_classifier_dir):
    import json

    from kd.benchmark import main

    config = write_benchmark_config(tmp_path)
    result = main([str(config), "--model", str(tiny_classifier_dir), "--fold-model", f"src2={tiny_classifier_dir}",
                   "--fold-model", f"student:src1={tiny_classifier_dir}", "--fold-model", f"student:src2={tiny_classifier_dir}",
                   "--out", str(tmp_path / "out"), "--smoke"])
    out = tmp_path / "out"
    assert {"benchmark.md", "benchmark.json", "benchmark.png"} <= {p.name for p in out.iterdir()}
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    model_row = f"{tiny_classifier_dir.name} (union)"
    assert set(rows) == {model_row, "model (leave-one-source-out)", "student (leave-one-source-out)", "tfidf (union)",
                         "tfidf (leave-one-source-out)"}
    assert set(rows["model (leave-one-source-out)"]) == {"src2"} and set(rows["student (leave-one-source-out)"]) == {"src1", "src2"}
    assert rows["student (leave-one-source-out)"]["src2"] == rows["model (leave-one-source-out)"]["src2"]  # the same folder
    assert set(rows["tfidf (union)"]) == {"src0", "src1", "src2", "pooled", "temporal"}
    assert set(rows["tfidf (leave-one-source-out)"]) == {"src0", "src1", "src2"}
    cell = rows["tfidf (union)"]["src1"]
    assert cell["roc_auc"]["low"] <= cell["roc_auc"]["value"] <= cell["roc_auc"]["high"]
    assert cell["f1_at_threshold"]["low"] <= cell["f1_at_threshold"]["value"] <= cell["f1_at_threshold"]["high"]
    assert cell["roc_auc"]["value"] > 0.9  # the class words separate the sources' classes
    pooled = rows["tfidf (union)"]["pooled"]
    assert pooled["n_phishing"] == sum(rows["tfidf (union)"][s]["n_phishing"] for s in ("src0", "src1", "src2"))
    temporal = rows[model_row]["temporal"]
    assert temporal["n_legitimate"] == rows[model_row]["src0"]["n_legitimate"] and temporal["n_phishing"] > 0
    # No URL dated from 2024 on, nor any test URL, is in a training set; each fold leaves its source out.
    union = read_csv_rows(out / "folds" / "union" / "train.csv")
    assert all(r["date"] < "2024" for r in union if r["source"] == "jpcert")
    tested = {r["url"] for r in read_csv_rows(out / "folds" / "union" / "test-temporal.csv")}
    assert not tested & {r["url"] for r in union}
    assert {r["source"] for r in read_csv_rows(out / "folds" / "loso-src1" / "train.csv")} == {"src0", "src2", "jpcert"}
    assert "python train_teacher.py --config" in (out / "benchmark.md").read_text()
    assert result["split_sizes"]["train"]["src0"]["phishing"] <= 300


def test_the_held_out_set_is_the_whole_source_less_the_folds_training_domains():
    from kd.benchmark import held_out_set
    from kd.data.multisource import SourceSet

    def part(rows):
        return SourceSet([u for u, _, _ in rows], [y for _, y, _ in rows], [s for _, _, s in rows])

    whole = {
        # a.com is shared with source "b" (trained on); c.org's subdomains are "a"'s alone
        "train": part([("http://a.com/1", 0, "a"), ("http://x.c.org/", 1, "a"), ("http://www.a.com/", 0, "b"), ("http://d.net/", 1, "b")]),
        "validation": part([("http://y.c.org/q", 1, "a"), ("http://e.io/", 0, "b")]),
        "test": part([("http://t.org/", 0, "a"), ("http://u.org/", 1, "b")]),
    }
    capped = {"train": part([("http://x.c.org/", 1, "a"), ("http://www.a.com/", 0, "b"), ("http://d.net/", 1, "b")]),
              "validation": whole["validation"]}
    held = held_out_set(whole, capped, "a")
    # a.com's URL goes (b trains on www.a.com); the c.org subdomains and the test URL stay
    assert held.urls == ["http://x.c.org/", "http://y.c.org/q", "http://t.org/"] and set(held.sources) == {"a"}
    # b's fold trains on a's capped parts only (c.org): a.com/1 was capped away, so www.a.com stays
    assert held_out_set(whole, capped, "b").urls == ["http://www.a.com/", "http://d.net/", "http://e.io/", "http://u.org/"]


def test_fold_rows_are_scored_on_held_out_sets_and_paired_with_the_first_fold_row(tmp_path, tiny_classifier_dir):
    import json

    from kd.benchmark import main

    config = write_benchmark_config(tmp_path)
    main([str(config), "--fold-model", f"teacher:src1={tiny_classifier_dir}", "--fold-model", f"student:src1={tiny_classifier_dir}",
          "--model", f"teacher:{tiny_classifier_dir}", "--out", str(tmp_path / "out"), "--smoke"])
    out = tmp_path / "out"
    result = json.loads((out / "benchmark.json").read_text())
    held = read_csv_rows(out / "folds" / "loso-src1" / "test-src1.csv")
    test_part = read_csv_rows(out / "folds" / "union" / "test-src1.csv")
    assert {r["url"] for r in test_part} < {r["url"] for r in held}  # the test part and more
    from kd.data.urls import registrable_domain
    trained = {registrable_domain(r["url"]) for r in read_csv_rows(out / "folds" / "loso-src1" / "train.csv")}
    assert not trained & {registrable_domain(r["url"]) for r in held}
    cell = result["rows"]["student (leave-one-source-out)"]["src1"]
    assert cell["n_legitimate"] + cell["n_phishing"] == len(held)
    assert result["rows"]["tfidf (leave-one-source-out)"]["src1"]["n_phishing"] == cell["n_phishing"]
    # The same folder twice: a paired difference of exactly 0, not significant; each kind's TF-IDF row
    # against its first row on the same URLs
    paired = result["paired"]
    assert {(r["row"], r["against"], r["column"]) for r in paired} == {
        ("student (leave-one-source-out)", "teacher (leave-one-source-out)", "src1"),
        ("tfidf (leave-one-source-out)", "teacher (leave-one-source-out)", "src1"),
        *{("tfidf (union)", "teacher (union)", c) for c in ("src0", "src1", "src2", "pooled", "temporal")}}
    same = [r for r in paired if r["row"].startswith("student")]
    assert all(r["difference"] == 0 and not r["significant"] for r in same) and {r["metric"] for r in same} == {"roc_auc", "f1"}
    baseline = next(r for r in paired if r["row"] == "tfidf (leave-one-source-out)" and r["metric"] == "roc_auc")
    held_cell = result["rows"]["tfidf (leave-one-source-out)"]["src1"]["roc_auc"]["value"]
    assert baseline["value"] == pytest.approx(held_cell) and baseline["n_urls"] == len(held)
    report = (out / "benchmark.md").read_text()
    assert "## Paired against the first row of its kind" in report and "| src1, held out |" in report
    main([str(config), "--fold-model", f"teacher:src1={tiny_classifier_dir}", "--out", str(tmp_path / "loso"), "--smoke"])
    # a first row with one column still gives the matrix every column
    assert "| trained / scored | src1 | src0 | src2 | pooled | temporal |" in (tmp_path / "loso" / "benchmark.md").read_text()


def test_a_fold_config_loads_as_a_teacher_config(tmp_path):
    from kd.benchmark import BenchmarkConfig, run_benchmark
    from kd.data.splits import build_splits
    from kd.train.config import RunConfig, load_config

    cfg = BenchmarkConfig.load(str(write_benchmark_config(tmp_path)))
    cfg.n_boot = 5
    run_benchmark(cfg, tmp_path / "out")
    run = load_config(RunConfig, tmp_path / "out" / "folds" / "loso-src0" / "teacher.yaml")
    splits = build_splits(run.data)
    assert set(splits.test_sets) == {"src0"} and len(splits.train) > 100


def test_a_bad_benchmark_config_is_one_line_and_status_2(tmp_path, capsys):
    from kd.benchmark import main
    from kd.errors import run_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {a: [x.csv]}\n")
    assert run_cli(main, [str(bad)], prog="python -m kd.benchmark") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least two" in err[0]
    good = write_benchmark_config(tmp_path)
    assert run_cli(main, [str(good), "--fold-model", "nosuch=x"], prog="python -m kd.benchmark") == 2
    assert "--fold-model takes [ROW:]SOURCE=FOLDER" in capsys.readouterr().err


def test_an_output_folder_inside_a_model_folder_is_refused_before_anything_is_written(tmp_path, capsys, tiny_classifier_dir):
    from kd.benchmark import main
    from kd.errors import run_cli

    before = sorted(p.name for p in tiny_classifier_dir.iterdir())
    args = [str(write_benchmark_config(tmp_path)), "--fold-model", f"teacher:src1={tiny_classifier_dir}", "--smoke"]
    assert run_cli(main, [*args, "--out", str(tiny_classifier_dir / "bench")], prog="python -m kd.benchmark") == 2
    assert "--out" in capsys.readouterr().err and sorted(p.name for p in tiny_classifier_dir.iterdir()) == before


def test_folds_only_writes_the_training_sets_and_scores_nothing(tmp_path):
    from kd.benchmark import main

    result = main([str(write_benchmark_config(tmp_path)), "--folds-only", "--out", str(tmp_path / "out"), "--smoke"])
    assert "rows" not in result and set(result["folds"]) == {"union", "loso-src0", "loso-src1", "loso-src2"}
    assert (tmp_path / "out" / "folds" / "loso-src1" / "teacher.yaml").is_file()
    assert not (tmp_path / "out" / "benchmark.json").exists()


def test_row_names_are_split_off_only_when_plain():
    from kd.benchmark import row_and_rest

    assert row_and_rest("teacher:runs/x/best", None) == ("teacher", "runs/x/best")
    assert row_and_rest("student nf4:esdaung=runs/q/student-nf4", "model") == ("student nf4", "esdaung=runs/q/student-nf4")
    assert row_and_rest("esdaung=runs/x", "model") == ("model", "esdaung=runs/x")
    assert row_and_rest("/abs/with:colon", None) == (None, "/abs/with:colon")
