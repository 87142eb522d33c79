import pytest

from matryoshka_adaptor.embed.texts import read_texts
from matryoshka_adaptor.validation import InputError


def test_beir_jsonl_joins_title_and_text(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": "a", "title": "T", "text": "body"}\n\n{"_id": "b", "text": "only body"}\n')
    assert read_texts(p) == (["a", "b"], ["T body", "only body"])
    assert read_texts(p, text_field="text") == (["a", "b"], ["body", "only body"])


def test_txt_one_text_per_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("first\n\n  second  \n")
    assert read_texts(p) == (["1", "3"], ["first", "second"])


@pytest.mark.parametrize("content, needle", [
    ('{"_id": "a", "text": "x"}\nnot json\n', ":2 is not valid JSON"),
    ('{"_id": "a", "title": "", "text": ""}\n', "has no text"),
    ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "repeats ids"),
    ("", "holds no texts"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, needle):
    p = tmp_path / "c.jsonl"
    p.write_text(content)
    with pytest.raises(InputError, match=needle):
        read_texts(p)


def test_unknown_suffix(tmp_path):
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=".jsonl"):
        read_texts(tmp_path / "c.csv")
