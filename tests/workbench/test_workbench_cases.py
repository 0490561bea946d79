"""Golden-set loading: JSON lines and CSV, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.workbench.cases import Case, CasesError, load_cases


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_blank_lines_categories_and_label_spellings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "set.jsonl",
        '{"content": "buy an aimbot", "label": 1, "category": "CH1"}\n'
        "\n"
        '{"content": "hello", "label": 0, "note": "extra fields are ignored"}\n'
        '{"content": "wallhack", "label": true, "category": null}\n'
        '{"content": "ok", "label": "0", "category": ""}\n',
    )
    assert load_cases(path) == [
        Case(1, 1, "buy an aimbot", 1, "CH1"),
        Case(2, 3, "hello", 0, None),
        Case(3, 4, "wallhack", 1, None),
        Case(4, 5, "ok", 0, None),
    ]


def test_csv_any_column_order_quotes_multiline_and_bom(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "set.csv",
        "\ufeffLabel, Category ,content,id\n"
        '1,CH1,"aimbot, cheap",a\n'
        "\n"
        '0,,"line one\nline two",b\n'
        "0,,plain,c\n",
    )
    assert load_cases(path) == [
        Case(1, 2, "aimbot, cheap", 1, "CH1"),
        Case(2, 4, "line one\nline two", 0, None),
        Case(3, 6, "plain", 0, None),
    ]


def test_csv_without_category_column(tmp_path: Path) -> None:
    path = write(tmp_path, "set.csv", "content,label\nhi,0\naimbot,1\n")
    assert [(c.content, c.label, c.category) for c in load_cases(path)] == [
        ("hi", 0, None),
        ("aimbot", 1, None),
    ]


def test_format_is_sniffed_for_other_extensions(tmp_path: Path) -> None:
    jsonl = write(tmp_path, "set.txt", '{"content": "x", "label": 1}\n')
    csv = write(tmp_path, "set.data", "content,label\nx,1\n")
    assert load_cases(jsonl) == [Case(1, 1, "x", 1)]
    assert load_cases(csv) == [Case(1, 2, "x", 1)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"content": "a", "label": 1}\n{"content": "b", "label": 0\n',
            r"set\.jsonl:2: not valid JSON",
        ),
        ('{"content": "a", "label": 1}\n\n{"label": 0}\n', r"set\.jsonl:3: missing 'content'"),
        ('{"content": "a"}\n', r"set\.jsonl:1: missing 'label'"),
        ('{"content": "a", "label": 2}\n', r"set\.jsonl:1: label must be 0 or 1, got 2"),
        ('{"content": "  ", "label": 1}\n', r"set\.jsonl:1: content is empty"),
        ('{"content": 5, "label": 1}\n', r"set\.jsonl:1: content must be a string"),
        ('["a", 1]\n', r"set\.jsonl:1: a JSON array"),
        ('{"content": "a", "label": 1, "category": ["x"]}\n', r":1: category must be a string"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(CasesError, match=expected):
        load_cases(write(tmp_path, "set.jsonl", text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("text,label\nhi,0\n", r"set\.csv:1: the header must name the columns .*missing content"),
        ("content,label\nhi,0\nbye\n", r"set\.csv:3: expected 2 fields"),
        ('content,label\nhi,0\n"multi\nline",0,extra\n', r"set\.csv:3: expected 2 fields"),
        ("content,label\nhi,yes please\n", r"set\.csv:2: label must be 0 or 1"),
        ("content,label\n,1\n", r"set\.csv:2: content is empty"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(CasesError, match=expected):
        load_cases(write(tmp_path, "set.csv", text))


def test_empty_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(CasesError, match="no cases"):
        load_cases(write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(CasesError, match="no cases"):
        load_cases(write(tmp_path, "header-only.csv", "content,label\n"))
    with pytest.raises(CasesError, match="cannot read the cases file"):
        load_cases(tmp_path / "nope.jsonl")
    with pytest.raises(CasesError, match=r"bad\.jsonl:2: not UTF-8"):
        load_cases(write(tmp_path, "bad.jsonl", b'{"content": "a", "label": 1}\n\xff\xfe\n'))
