"""The GPU check's results, gathered: ``check.json`` (every part's status, time and document) and ``summary.md``
(one table per part). Run by ``bench/gpu/check.sh`` after each part, so what has run is written even if the call
is stopped; standard library only, so it costs no import of torch.

    python bench/gpu/summary.py WORK OUT
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

FORMAT = "vedit-gpu-check/1"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_results(path: Path) -> dict[str, Any] | None:
    """Counts and failures of a pytest JUnit XML report."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        counts[{"failure": "failed", "error": "errors", "skipped": "skipped"}[outcome.tag]] += 1
        if outcome.tag != "skipped":
            failures.append({"test": name, "message": (outcome.get("message") or "").splitlines()[0][:300]})
    return {**counts, "failures": failures}


def _last_line(log: Path) -> str | None:
    """What a part printed last (its error, where it failed), shortened for a table cell."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:200].replace("|", "/") if lines else None


def parts(work: Path) -> list[dict[str, Any]]:
    """Each part that has run, in order: its status line from check.sh and what it wrote."""
    found = []
    status = work / "status.tsv"
    lines = status.read_text().splitlines() if status.exists() else []
    for line in lines:
        name, budget, seconds, code = line.split("\t")
        rc = int(code)
        state = "ok" if rc == 0 else "timed out" if rc in (124, 137) else "failed"
        part: dict[str, Any] = {"name": name, "status": state, "exit_code": rc, "seconds": float(seconds),
                                "budget_s": int(budget)}  # fmt: skip
        if name == "tests":
            part["tests"] = test_results(work / "parts" / "tests.xml")
        else:
            part["document"] = _read_json(work / "parts" / f"{name}.json")
        if state != "ok":
            part["last_line"] = _last_line(work / "parts" / f"{name}.log")
        found.append(part)
    return found


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _edit(doc: dict[str, Any]) -> list[str]:
    s = doc["header"]["settings"]
    memory = doc.get("device_memory_mb") or {}
    lines = [
        f"{s['model']} {s['size']}, {s['frames']} frames, {s['steps']} + {s['inversion_steps']} steps, "
        f"{doc['header'].get('dtype')}, engines: {', '.join(f'{k} {v}' for k, v in doc.get('engines', {}).items())}; "
        f"matmul peak {_cell(doc['header'].get('matmul_peak_tflops'))} TFLOP/s; "
        f"device memory peak {_cell(memory.get('peak'))} MiB ({_cell(memory.get('before'))} MiB before)",
        "",
    ]
    rows = [[r["stage"], r["median_s"], _percent(r["share"]), r["forwards"], r["forwards_per_s"], r["tflops"],
             _percent(r["of_peak"])] for r in doc["rows"]]  # fmt: skip
    return lines + _table(["stage", "s", "share", "UNet fwd", "fwd/s", "TFLOP/s", "of peak"], rows)


def _unet(doc: dict[str, Any]) -> list[str]:
    rows = [[r["pass"], r["engine"], r["batch"], r["ms"], r["vs_eager"], r["tflops"], _percent(r["of_peak"]),
             r["build_s"]] for r in doc["rows"]]  # fmt: skip
    lines = _table(["pass", "engine", "batch", "ms", "× eager", "TFLOP/s", "of peak", "build s"], rows)
    if doc.get("not_run"):
        lines += [f"not run: {json.dumps(doc['not_run'])}", ""]
    return lines


def _nn(doc: dict[str, Any]) -> list[str]:
    rows = [[r["seq"], r["dim"], r["backend"], r["median_ms"], r.get("x_torch"), r.get("same_as_torch")]
            for r in doc["rows"]]  # fmt: skip
    lines = _table(["seq", "dim", "backend", "ms", "÷ torch", "same as torch"], rows)
    if doc.get("per_propagation_pass_ms"):
        lines += [f"per propagation pass, ms: {json.dumps(doc['per_propagation_pass_ms'])}", ""]
    return lines


def _calls(doc: dict[str, Any]) -> list[str]:
    rows = [[r["allocator"], r["path"], r["median_ms"], r["vs_plain"], r["same_output"]] for r in doc["rows"]]
    return _table(["VEDIT_ALLOCATOR", "path", "median ms", "vedit / plain diffusers", "same output"], rows)


def _memory(doc: dict[str, Any]) -> list[str]:
    rows = [[r["frames"], r.get("cuda_peak_mb"), r.get("cuda_weights_mb"), r["peak_rss_mb"], r["seconds"],
             r["ms_per_frame"], r["forwards_per_frame_step"]] for r in doc["rows"]]  # fmt: skip
    columns = ["frames", "device peak MiB", "device MiB after load", "peak RSS MB", "s", "ms/frame", "fwd/frame/step"]
    return _table(columns, rows)


RENDER = {"edit": _edit, "unet": _unet, "nn": _nn, "calls": _calls, "memory": _memory}


def _headline(found: list[dict[str, Any]]) -> list[str]:
    """The whole edit's median seconds, eager and compiled, and their ratio: the figure the project is for."""
    totals = {}
    for part in found:
        doc = part.get("document")
        if isinstance(doc, dict) and doc.get("suite") == "edit" and doc.get("rows"):
            totals[part["name"]] = next(r["median_s"] for r in doc["rows"] if r["stage"] == "total")
    if not totals:
        return []
    line = "whole edit, median s: " + ", ".join(f"{name} {_cell(seconds)}" for name, seconds in totals.items())
    if totals.get("edit-40") and totals.get("edit-40-compile"):
        line += f"; edit-40-compile ÷ edit-40 {_cell(totals['edit-40-compile'] / totals['edit-40'])}"
    return [line, ""]


def markdown(check: dict[str, Any]) -> str:
    env = check.get("environment") or {}
    lines = [
        f"# vedit GPU check ({check['device']})",
        "",
        f"{env.get('gpu') or env.get('device') or '–'}; torch {env.get('torch', '–')}, CUDA {env.get('cuda', '–')}, "
        f"diffusers {env.get('diffusers', '–')}, faiss {env.get('faiss') or 'none'}, onnxruntime "
        f"{env.get('onnxruntime', '–')} ({', '.join(env.get('onnxruntime_providers', [])) or '–'}); "
        f"{check['seconds']:.0f} s of {check['budget_s']} s budgeted",
        "",
    ]
    overview = []
    for part in check["parts"]:
        tests = part.get("tests")
        what = (
            f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped"
            if tests
            else ""
        )
        if part.get("last_line"):
            what = f"{what}; {part['last_line']}" if what else part["last_line"]
        overview.append([part["name"], part["status"], f"{part['seconds']:.0f}", part["budget_s"], what])
    lines += _table(["part", "status", "s", "budget s", "result"], overview)
    lines += _headline(check["parts"])
    for part in check["parts"]:
        tests, doc = part.get("tests"), part.get("document")
        if tests and (tests["failures"]):
            lines += [f"## {part['name']}: failures", ""]
            lines += [f"- `{f['test']}`: {f['message']}" for f in tests["failures"]] + [""]
        if isinstance(doc, dict) and doc.get("suite") in RENDER and doc.get("rows"):
            lines += [f"## {part['name']}", ""] + RENDER[doc["suite"]](doc)
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    work, out = Path(argv[0]), Path(argv[1])
    settings = _read_json(work / "settings.json") or {}
    found = parts(work)
    check = {
        "format": FORMAT, **settings, "seconds": round(sum(p["seconds"] for p in found), 1),
        "environment": _read_json(work / "parts" / "environment.json"), "parts": found,
    }  # fmt: skip
    (out / "check.json").write_text(json.dumps(check, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(check) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
