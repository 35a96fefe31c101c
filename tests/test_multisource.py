"""Multi-source reading, the cross-source domain split and the caps, on small generated files."""
import time

import pytest

from conftest import write_csv
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
