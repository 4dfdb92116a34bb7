"""The conformance report: report.json (machine-readable, REPORT_FORMAT) and report.md, and the terminal summary."""
from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Optional

from dsa.conformance.plugin import NOT_REGISTERED


def _num(value: Optional[float]) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    return "inf" if value == float("inf") else f"{value:.2e}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        f"# dsa conformance: {report['result'].upper()}",
        "",
        f"- machine: {m['name']} ({m['platform']}/{m['arch']}) x{m['device_count']}; torch {m['torch']}, "
        f"python {m['python']}, dsa-runtime {m['dsa_runtime']}; op inputs on {report['tensors_on']}",
        f"- profile: {report['profile'] or '(none)'}; providers: {', '.join(report['providers']) or '(none installed)'}"
        + (f"; not installed here: {', '.join(report['not_installed'])}" if report["not_installed"] else ""),
        f"- command: `{report['command']}`"
        + (f" (cases matching -k `{report['keyword']}`)" if report["keyword"] else ""),
        f"- {report['created']}, {report['duration_s']} s",
        *(f"- note: {n}" for n in report["notes"]),
        "",
        "Errors are against the fp64 oracle (dsa/conformance/reference/): worst over every case and every compared "
        "tensor. `worst/tol` is the largest |error| / max(atol, rtol*|expected|) (<= 1 passes); `cos` is "
        "1 - 2<a,e>/(|a|^2+|e|^2). Blank: the cases compare exactly (bits, index sets), not within a tolerance.",
        "",
        "| op | provider | result | cases | passed | failed | skipped | worst abs | worst rel | worst cos | worst/tol "
        "| notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    absent: dict[str, list[str]] = {}  # provider -> ops it does not provide here (rows left out of the table)
    for r in report["rows"]:
        if r["status"] == "skipped" and all(NOT_REGISTERED in s["reason"] for s in r["skip_reasons"]):
            absent.setdefault(r["provider"], []).append(r["op"])
            continue
        w = {k: v["value"] for k, v in r["worst"].items()}
        notes = list(r["notes"])
        if r["topk"]:
            notes.append(f"top-k rows {r['topk']['rows']}, {r['topk']['bad_rows']} wrong")
        if r["nonfinite_mismatches"]:
            notes.append(f"inf/NaN positions differ in {r['nonfinite_mismatches']} comparison(s)")
        if r["skipped"]:
            notes += [f"skipped {s['count']}: {s['reason']}" for s in r["skip_reasons"]]
        out.append("| " + " | ".join([
            r["op"], r["provider"], r["status"].upper() if r["status"] == "fail" else r["status"], str(r["cases"]),
            str(r["passed"]), str(r["failed"]), str(r["skipped"]),
            _num(w.get("abs")), _num(w.get("rel")), _num(w.get("cos")), _num(w.get("tol_ratio")),
            _cell("; ".join(notes)),
        ]) + " |")
    if absent:
        out += ["", "Not provided here (the provider has not registered the op, so it has no cases): "
                + "; ".join(f"{p}: {', '.join(ops)}" for p, ops in absent.items()) + "."]
    failing = [r for r in report["rows"] if r["failures"]]
    if failing or report["errors"]:
        out += ["", "## Failures", ""]
        for e in report["errors"]:
            out += [f"- collection `{e['case']}`:", "", "  ```", *("  " + ln for ln in e["message"].splitlines()),
                    "  ```"]
        for r in failing:
            out += [f"### {r['op']} x {r['provider']}", ""]
            by_message: dict[str, list[str]] = {}
            for f in r["failures"]:
                by_message.setdefault(f["message"], []).append(f["case"])
            for message, cases in by_message.items():
                shown = ", ".join(f"`{c}`" for c in cases[:3])
                shown += f" and {len(cases) - 3} more" if len(cases) > 3 else ""
                out += [f"- {len(cases)} case(s): {shown}", "", "  ```", *("  " + ln for ln in message.splitlines()),
                        "  ```"]
            out.append("")
    located = [r for r in report["rows"] if r["worst"].get("tol_ratio")]
    if located:
        out += ["", "## Where the worst errors are", ""]
        for r in located:
            out.append(f"- {r['op']} x {r['provider']}: worst/tol {_num(r['worst']['tol_ratio']['value'])} in "
                       f"`{r['worst']['tol_ratio']['case']}`")
    return "\n".join(out).rstrip() + "\n"


def _finite(obj):
    """Strict JSON: a non-finite error (an inf where the oracle is finite) is written as "inf" / "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_report(report: dict, report_dir: Path) -> None:
    report_dir = Path(report_dir)
    (report_dir / "report.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    (report_dir / "report.md").write_text(render_markdown(report))


def summary(report: dict) -> str:
    """A few lines for the terminal, after pytest's own output."""
    rows = report["rows"]
    count = collections.Counter(r["status"] for r in rows)
    lines = [f"dsa conformance: {report['result'].upper()} - {len(rows)} op x provider rows: "
             + ", ".join(f"{n} {s}" for s, n in sorted(count.items()))]
    for r in rows:
        if r["status"] == "fail":
            lines.append(f"  FAIL {r['op']} x {r['provider']}: {r['failed']} of {r['cases']} cases")
    for e in report["errors"]:
        lines.append(f"  ERROR {e['case']}: {e['message'].splitlines()[0] if e['message'] else ''}")
    return "\n".join(lines)
