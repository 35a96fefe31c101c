"""ONNX export (kd.export, models.onnx) and ONNX Runtime scoring through kd.predict
and the one scoring path, on a tiny randomly initialised BERT classifier."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the optional ONNX packages (pip install '.[onnx]')")

import kd.export  # noqa: E402
import kd.predict  # noqa: E402
from conftest import make_url_rows, read_csv_rows, save_tiny_classifier  # noqa: E402
from kd.errors import run_cli  # noqa: E402

THRESHOLD = 0.4242


def export(*args) -> int:
    return run_cli(kd.export.main, list(map(str, args)), prog="python -m kd.export")


def predict(model_dir, *args) -> int:
    return run_cli(kd.predict.main, ["--model", str(model_dir), *map(str, args)], prog="python -m kd.predict")


def urls(n=120):
    """URLs of 1 to about 60 tokens, so batches differ in batch size and sequence length."""
    return [url for url, _ in make_url_rows(n, seed=3)] + ["a.io", "x" * 300 + ".com/" + "/".join(["login"] * 20)]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """A tiny classifier folder with a model card and a scoring record (threshold, run info)."""
    folder = save_tiny_classifier(tmp_path_factory.mktemp("onnx") / "model")
    from kd.eval.metrics import binary_metrics

    test = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), THRESHOLD)
    (folder / "metrics.json").write_text(json.dumps({"threshold": THRESHOLD, "scoring_precision": "fp32", "sets": {"test": test}}))
    (folder / "run_info.json").write_text(json.dumps({"seed": 0}))
    (folder / "README.md").write_text("# tiny model card\n")
    return folder


@pytest.fixture(scope="module")
def fp32_dir(source_dir):
    out = source_dir.parent / "onnx-fp32"
    assert export("--model", source_dir, "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def int8_dir(source_dir):
    out = source_dir.parent / "onnx-int8"
    assert export("--model", source_dir, "--out", out, "--int8") == 0
    return out


def torch_and_onnx_probabilities(source_dir, onnx_dir, texts, batch_size):
    from kd.eval.inference import predict_proba
    from models.onnx import load_onnx_classifier
    from models.quantized import load_classifier

    model, tokenizer = load_classifier(source_dir, "fp32", "cpu")
    session, onnx_tokenizer = load_onnx_classifier(onnx_dir, threads=1)
    return (predict_proba(model, tokenizer, texts, batch_size=batch_size),
            predict_proba(session, onnx_tokenizer, texts, batch_size=batch_size))


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_fp32_export_gives_the_torch_probabilities_at_every_batch_and_length(source_dir, fp32_dir, batch_size):
    reference, exported = torch_and_onnx_probabilities(source_dir, fp32_dir, urls(), batch_size)
    assert reference.std() > 0.01  # the tiny model does not give every URL the same score
    np.testing.assert_allclose(exported, reference, atol=1e-4, rtol=0)


def test_both_input_axes_are_dynamic_in_the_graph(fp32_dir, int8_dir):
    import onnx

    for folder in (fp32_dir, int8_dir):
        graph = onnx.load(str(folder / "model.onnx")).graph
        for value in graph.input:
            dims = value.type.tensor_type.shape.dim
            assert [d.dim_value for d in dims] == [0, 0], (folder, value.name)  # 0: no fixed size
            assert all(d.dim_param for d in dims)


def test_int8_export_agrees_with_fp32_on_the_verdicts(source_dir, int8_dir):
    reference, exported = torch_and_onnx_probabilities(source_dir, int8_dir, urls(400), 256)
    assert np.abs(exported - reference).max() < 0.05
    assert np.mean((exported >= THRESHOLD) == (reference >= THRESHOLD)) >= 0.995


def test_int8_export_stores_the_matmul_weights_as_int8(int8_dir):
    import onnx

    graph = onnx.load(str(int8_dir / "model.onnx")).graph
    int8_matrices = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_matrices) >= 2 * 6  # 2 layers: query, key, value, output, intermediate, output


def test_export_carries_config_tokenizer_card_and_scoring_record(source_dir, fp32_dir, int8_dir):
    for folder, precision in ((fp32_dir, "fp32"), (int8_dir, "int8")):
        for name in ("metrics.json", "run_info.json"):
            assert (folder / name).read_bytes() == (source_dir / name).read_bytes()
        config = json.loads((folder / "config.json").read_text())
        fields = ("phishing_threshold", "scoring_precision")
        source_config = json.loads((source_dir / "config.json").read_text())
        assert {k: v for k, v in config.items() if k not in fields} == {k: v for k, v in source_config.items() if k not in fields}
        assert config["phishing_threshold"] == THRESHOLD and config["scoring_precision"] == "fp32"
        card = (folder / "README.md").read_text()  # generated for the export, not the source's card copied
        assert "tiny model card" not in card and "onnxruntime.InferenceSession" in card and "pipeline(" not in card
        assert f"ONNX export (`model.onnx`, {precision}, opset" in card and f"{THRESHOLD:.6g}" in card
        assert json.loads((folder / "onnx_export.json").read_text())["precision"] == precision
        assert not (folder / "fp32.onnx").exists()
        assert not list(folder.glob("*.safetensors"))


def test_predict_scores_an_export_as_the_torch_folder_with_the_saved_threshold(source_dir, fp32_dir, tmp_path,
                                                                                capsys):
    source = tmp_path / "urls.txt"
    source.write_text("\n".join(urls(60) + ["", "bad\x00url"]) + "\n")
    for folder in (source_dir, fp32_dir):
        assert predict(folder, "--input", source, "--output", tmp_path / f"{folder.name}.csv") == 0
        assert f"threshold {THRESHOLD:g}" in capsys.readouterr().err
    torch_rows = read_csv_rows(tmp_path / f"{source_dir.name}.csv")
    onnx_rows = read_csv_rows(tmp_path / f"{fp32_dir.name}.csv")
    assert [(r["line"], r["url"], r["label"]) for r in onnx_rows] == [(r["line"], r["url"], r["label"]) for r in torch_rows]
    np.testing.assert_allclose([float(r["probability_phishing"]) for r in onnx_rows],
                               [float(r["probability_phishing"]) for r in torch_rows], atol=1e-4)
    assert (read_csv_rows(tmp_path / f"{fp32_dir.name}.rejects.csv")
            == read_csv_rows(tmp_path / f"{source_dir.name}.rejects.csv"))


def test_predict_notes_that_the_threshold_was_chosen_before_int8(int8_dir, capsys):
    assert predict(int8_dir, "paypal.com.verify.xyz/login") == 0
    err = capsys.readouterr().err
    assert "scoring in ONNX Runtime int8" in err and "this is its ONNX int8 export" in err


@pytest.mark.parametrize("option", [["--precision", "nf4"], ["--compile"], ["--device", "cuda"]])
def test_predict_refuses_options_an_export_cannot_honour(fp32_dir, option, capsys):
    assert predict(fp32_dir, *option, "a.com") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ONNX export" in err and option[0] in err


def test_export_inside_the_source_is_refused_and_writes_nothing(source_dir, capsys):
    before = sorted(p.name for p in source_dir.iterdir())
    assert export("--model", source_dir, "--out", source_dir / "onnx") == 2
    assert "overlap" in capsys.readouterr().err
    assert sorted(p.name for p in source_dir.iterdir()) == before


def test_export_of_a_quantized_folder_is_refused(source_dir, tmp_path, capsys):
    from models.quantized import DYNAMIC_INT8_MARKER

    quantized = tmp_path / "quantized"
    shutil.copytree(source_dir, quantized)
    (quantized / DYNAMIC_INT8_MARKER).write_text("{}")
    assert export("--model", quantized, "--out", tmp_path / "out") == 2
    assert "export the fp32 checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_the_previous_folder(source_dir, fp32_dir, tmp_path, monkeypatch):
    import models.onnx

    out = tmp_path / "out"
    shutil.copytree(fp32_dir, out)
    before = (out / "model.onnx").read_bytes()

    def fail(model, path):
        path.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(models.onnx, "export_onnx", fail)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export("--model", source_dir, "--out", out)
    assert (out / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_latency_and_throughput_measures_take_an_onnx_session(int8_dir):
    from kd.eval.measure import measure_latency, measure_throughput
    from models.onnx import load_onnx_classifier

    session, tokenizer = load_onnx_classifier(int8_dir, threads=1)
    assert measure_latency(session, tokenizer, urls(8), warmup=1, repeats=2) > 0
    assert measure_throughput(session, tokenizer, urls(8), batch_size=4) > 0


def test_evaluate_rebuilds_the_split_of_an_export_and_scores_it_as_the_torch_folder(tiny_teacher_run, tmp_path):
    from kd.evaluate import main as evaluate

    best = tiny_teacher_run / "teacher" / "best"
    assert export("--model", best, "--out", tmp_path / "onnx") == 0
    torch_result = evaluate(["--model", str(best), "--out", str(tmp_path / "eval-torch")])
    onnx_result = evaluate(["--model", str(tmp_path / "onnx"), "--out", str(tmp_path / "eval-onnx")])
    assert onnx_result["scoring_precision"] == "onnx-fp32"
    assert onnx_result["threshold"] == pytest.approx(torch_result["threshold"], abs=1e-4)
    for name in ("validation", "test"):
        assert onnx_result["sets"][name]["roc_auc"] == pytest.approx(torch_result["sets"][name]["roc_auc"], abs=1e-4)
        assert onnx_result["sets"][name]["n"] == torch_result["sets"][name]["n"]


def test_an_export_without_its_record_is_one_line_and_status_2(fp32_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(fp32_dir, broken)
    (broken / "onnx_export.json").unlink()
    assert predict(broken, "a.com") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable onnx_export.json" in err and "kd.export" in err


def test_export_without_the_onnx_packages_names_the_extra(source_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    assert export("--model", source_dir, "--out", tmp_path / "out") == 2
    assert "pip install '.[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
