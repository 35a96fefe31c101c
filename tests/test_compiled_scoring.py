"""``kd.predict --compile``: scoring through ``scoring_model(compile=True)`` gives the eager scores (issue 15)."""
from __future__ import annotations

import torch
import torch._inductor.config as inductor_config
from conftest import read_csv_rows, save_tiny_classifier

import kd.predict
from models.fused_bert import FusedBertClassifier


def test_compiled_scoring_matches_eager(tmp_path, aot_eager_compile):
    model = save_tiny_classifier(tmp_path / "model")
    source = tmp_path / "urls.txt"
    source.write_text("".join(f"site{i}.example.com/{'ab/' * (i % 9)}\n" for i in range(40)))
    saved = inductor_config.freezing, inductor_config.cpp_wrapper  # not monkeypatched: its undo deletes the entries
    scores = {}
    try:
        inductor_config.freezing = inductor_config.cpp_wrapper = False
        for flags in ([], ["--compile"]):
            out = tmp_path / f"scores{len(flags)}.csv"
            assert kd.predict.main(["--model", str(model), "--input", str(source), "--output", str(out), *flags]) == 0
            scores[len(flags)] = [float(row["probability_phishing"]) for row in read_csv_rows(out)]
        assert [kwargs for _, kwargs in aot_eager_compile] == [{"dynamic": True, "mode": "max-autotune-no-cudagraphs"}]
        assert isinstance(aot_eager_compile[0][0], FusedBertClassifier)
        assert inductor_config.freezing is True and inductor_config.cpp_wrapper is True
    finally:
        inductor_config.freezing, inductor_config.cpp_wrapper = saved
    torch.testing.assert_close(torch.tensor(scores[1]), torch.tensor(scores[0]), rtol=1e-5, atol=1e-6)
