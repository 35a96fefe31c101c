"""A pretrained / fresh student whose tokenizer is not the teacher's: it reads its
own token ids, and the teacher's logits come from the cache (keyed by URL)."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import save_tiny_classifier, student_overrides
from models.encoder import load_tokenizer
from kd.train.config import load_config
from kd.train.student import StudentConfig, StudentRunConfig, student_tokenizer


@pytest.fixture(scope="module")
def char_student_dir(tmp_path_factory):
    """A tiny BERT with a ~100-token character vocabulary (the teacher has 30,522 WordPieces)."""
    return save_tiny_classifier(tmp_path_factory.mktemp("char-student"), seed=3)


@pytest.mark.parametrize("init", ["pretrained", "fresh"])
def test_student_with_another_vocabulary_reads_its_own_token_ids(tiny_teacher_run, char_student_dir, init, monkeypatch):
    import train_student

    root = tiny_teacher_run
    name = f"student-own-vocab-{init}"
    seen = []
    train = train_student.train

    def recording_train(student, loss_fn, data, *args, **kwargs):
        seen.append(max(max(row) for row in data.input_ids))
        return train(student, loss_fn, data, *args, **kwargs)

    monkeypatch.setattr(train_student, "train", recording_train)
    cfg = load_config(StudentRunConfig, None, student_overrides(
        root, name, f"student.init={init}", f"student.name_or_path={char_student_dir}",
        "distill.objective=ce:0.5,fkl:0.5@T=2", "distill.cache_teacher_logits=false"))
    results = train_student.distill_encoder(cfg)

    own = load_tokenizer(str(char_student_dir))
    assert seen and seen[0] < len(own)  # the student's ids, not the teacher's WordPiece ids
    best = root / name / "best"
    assert AutoTokenizer.from_pretrained(best).get_vocab() == own.get_vocab()
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    urls = ["paypal.com.verify-account.tk/login", "github.com/pytorch/pytorch"]
    batch = own(urls, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
    assert 0 <= results["sets"]["test"]["f1"] <= 1
    # The teacher's logits were read from its cache, keyed by URL (a live teacher would need its own ids).
    assert list((root / "cache" / "teacher-logits").glob("*.safetensors"))


def test_live_teacher_terms_with_another_vocabulary_are_refused(tiny_teacher_run, char_student_dir):
    import train_student

    cfg = load_config(StudentRunConfig, None, student_overrides(
        tiny_teacher_run, "student-own-vocab-hidden", "student.init=pretrained",
        f"student.name_or_path={char_student_dir}", "distill.objective=fkl@T=2,hidden_mse@map=uniform"))
    with pytest.raises(ValueError, match="another vocabulary than the teacher"):
        train_student.distill_encoder(cfg)


def test_a_student_with_the_teachers_vocabulary_keeps_the_teachers_tokenizer(tiny_teacher_run):
    import train_student

    teacher_tokenizer = load_tokenizer(str(tiny_teacher_run / "teacher" / "best"))
    cfg = StudentConfig(init="pretrained", name_or_path=str(tiny_teacher_run / "teacher" / "best"))
    assert student_tokenizer(cfg, teacher_tokenizer) is teacher_tokenizer
