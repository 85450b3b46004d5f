"""``vedit bench compare A.json B.json``: two results files side by side.

Rows are matched by the fields that identify them (the document's ``key_fields``, e.g. ``stage``
for ``edit``, ``pass``/``engine``/``batch`` for ``unet``); for each, both medians of the measured
figure (``value_field``, seconds for the timed suites) and the ratio B/A. Rows found in one file
only are flagged. Settings, versions and device fields that differ between the two headers are
listed under the table. Files written before these fields existed are read too: their key fields
are guessed from the rows' text fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.text import Text

from ._common import FORMAT, console, dumps, fmt, show

_VALUE_GUESSES = ("median_s", "median_ms", "ms", "seconds", "peak_rss_mb", "per_frame_step", "warp_error")


def _key_fields(doc: dict[str, Any]) -> list[str]:
    if doc.get("key_fields"):
        return list(doc["key_fields"])
    rows = doc.get("rows") or [{}]
    return [
        k
        for k, v in rows[0].items()
        if isinstance(v, (str, bool)) or (k in ("frames", "batch", "seed", "seq") and isinstance(v, int))
    ]


def _value_field(doc: dict[str, Any]) -> str | None:
    if doc.get("value_field"):
        return doc["value_field"]
    rows = doc.get("rows") or [{}]
    return next((k for k in _VALUE_GUESSES if k in rows[0]), None)


def load_document(path: str | os.PathLike) -> dict[str, Any]:
    from vedit.errors import InputError

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such results file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a results file ({error})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise InputError(f"{path}: not a vedit bench results file (no rows)")
    return doc


def compare_documents(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows of ``a`` and ``b`` matched by their key fields: both medians and the ratio B/A, and
    the rows found in one file only."""
    from vedit.errors import InputError

    if a.get("suite") and b.get("suite") and a["suite"] != b["suite"]:
        raise InputError(
            f"these files hold different suites (A: {a['suite']}, B: {b['suite']}); compare results of one suite"
        )
    if _value_field(a) != _value_field(b):
        raise InputError(
            f"A measures {_value_field(a)} and B {_value_field(b)} (one is a --vs run): "
            "compare results made the same way"
        )
    keys = _key_fields(a)
    if _key_fields(b) != keys:
        keys = [k for k in keys if k in _key_fields(b)] or keys
    field_a, field_b = _value_field(a), _value_field(b)
    index_b: dict[tuple, dict[str, Any]] = {}
    for row in b["rows"]:
        index_b.setdefault(tuple(row.get(k) for k in keys), row)
    seen: set[tuple] = set()
    rows = []
    for row in a["rows"]:
        key = tuple(row.get(k) for k in keys)
        if key in seen:
            continue
        seen.add(key)
        other = index_b.get(key)
        va = row.get(field_a) if field_a else None
        vb = other.get(field_b) if other is not None and field_b else None
        ratio = vb / va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        rows.append({**dict(zip(keys, key)), "a": va, "b": vb, "ratio": round(ratio, 4) if ratio is not None else None,
                     "only_in": "A" if other is None else None})  # fmt: skip
    for key, row in index_b.items():
        if key not in seen:
            rows.append(
                {
                    **dict(zip(keys, key)),
                    "a": None,
                    "b": row.get(field_b) if field_b else None,
                    "ratio": None,
                    "only_in": "B",
                }
            )
    differences = []
    head_a, head_b = a.get("header", {}), b.get("header", {})
    for section in ("settings", "versions", "device"):
        sa, sb = head_a.get(section, {}) or {}, head_b.get(section, {}) or {}
        for k in sorted(set(sa) | set(sb)):
            if sa.get(k) != sb.get(k) and k not in ("vedit_revision",):
                differences.append(f"{section}.{k}: {sa.get(k, '-')} → {sb.get(k, '-')}")
    return {"format": FORMAT, "suite": "compare", "a_suite": a.get("suite"), "b_suite": b.get("suite"),
            "key_fields": keys, "value_field": field_a, "rows": rows, "differences": differences}  # fmt: skip


def show_comparison(result: dict[str, Any], name_a: str, name_b: str) -> None:
    keys = result["key_fields"]
    field = result.get("value_field") or "value"
    show(
        f"{name_a} (A) vs {name_b} (B): {field}, B/A (below 1: B is lower)",
        [*keys, f"A {field}", f"B {field}", "B/A", ""],
        [[*(r.get(k) for k in keys), fmt(r["a"], 4), fmt(r["b"], 4), fmt(r["ratio"], 4),
          f"only in {r['only_in']}" if r["only_in"] else ""] for r in result["rows"]],
    )  # fmt: skip
    for line in result["differences"]:
        console.print(Text(f"differs: {line}"))


def run_compare(a: str | os.PathLike, b: str | os.PathLike, *, json_out: bool = False) -> dict[str, Any]:
    result = compare_documents(load_document(a), load_document(b))
    result["a_file"], result["b_file"] = str(a), str(b)
    if json_out:
        print(dumps(result), end="")
    else:
        show_comparison(result, str(a), str(b))
    return result
