"""``vedit bench compare``: two results documents matched row by row."""

from __future__ import annotations

import json

import pytest

from helpers.cli import vedit
from vedit.errors import InputError
from vedit_bench.compare import compare_documents


def _doc(suite, rows, keys=("stage",)):
    return {
        "format": "vedit-bench/1",
        "suite": suite,
        "header": {"settings": {"engine": "eager"}, "versions": {"torch": "1"}},
        "key_fields": list(keys),
        "value_field": "median_s",
        "rows": rows,
    }


def test_compare_matches_rows_by_key_and_flags_the_rest(tmp_path):
    a = _doc(
        "edit",
        [{"stage": "invert", "median_s": 2.0}, {"stage": "write", "median_s": 1.0}, {"stage": "nn", "median_s": 0.5}],
    )
    b = _doc(
        "edit",
        [
            {"stage": "write", "median_s": 0.25},
            {"stage": "invert", "median_s": 3.0},
            {"stage": "decode", "median_s": 1.0},
        ],
    )
    b["header"]["settings"]["engine"] = "compile"
    result = compare_documents(a, b)
    rows = {r["stage"]: r for r in result["rows"]}
    assert rows["invert"]["ratio"] == 1.5 and rows["write"]["ratio"] == 0.25
    assert (rows["invert"]["a"], rows["invert"]["b"]) == (2.0, 3.0)
    assert rows["nn"]["only_in"] == "A" and rows["nn"]["ratio"] is None
    assert rows["decode"]["only_in"] == "B" and rows["decode"]["a"] is None
    assert "settings.engine: eager → compile" in result["differences"]

    files = []
    for name, doc in (("a.json", a), ("b.json", b)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(doc))
    shown = vedit("bench", "compare", *files)
    assert shown.exit_code == 0, shown.output
    assert "1.5" in shown.stdout and "only in A" in shown.stdout and "only in B" in shown.stdout
    as_json = vedit("bench", "compare", *files, "--json")
    assert {r["stage"]: r["ratio"] for r in json.loads(as_json.stdout)["rows"]}["write"] == 0.25


def test_compare_refuses_other_suites_and_missing_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc("edit", [])))
    b.write_text(json.dumps(_doc("unet", [], keys=("pass", "engine", "batch"))))
    with pytest.raises(InputError, match="different suites"):
        compare_documents(json.loads(a.read_text()), json.loads(b.read_text()))
    missing = vedit("bench", "compare", a, tmp_path / "none.json")
    assert missing.exit_code == 2
    assert "no such results file" in missing.stderr
