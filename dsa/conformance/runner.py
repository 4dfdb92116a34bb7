"""`dsa conformance`: certify providers on this machine against the fp64 oracle.

It runs the shipped cases in-process with pytest - the op-level cases of dsa/conformance/cases/ (every
op x provider, against the fp64 oracle in dsa/conformance/reference/) and the model cases (the
random tiny model against the oracle, the trained mini's greedy tokens: cases/test_trained_model.py) once
per provider - and turns the outcome into a report:

    report = run_conformance(providers=["triton"], profile=None, report_dir=Path("out"))
    report["result"]     # "pass" | "fail"; out/report.json and out/report.md are written

One row per (op, provider): cases, passed / failed / skipped (with the reasons), and the worst errors
that dsa/conformance/reference/compare.py measured (max abs, max rel, global cosine difference, and the
worst ratio of an element's error to its allowance, <= 1 passes). The "model" row runs the model
oracle cases with the provider's ops first and torch for the ops it lacks ($DSA_MODEL_PROVIDER, read by
dsa/conformance/model_helpers.py); its notes say which provider actually ran each op.

The cases, the oracle and the tolerances are part of the wheel; the runner needs pytest
(`pip install 'dsa-runtime[conformance]'`).
"""
from __future__ import annotations

import collections
import datetime as _dt
import os
import platform as _platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from dsa.conformance.report import summary, write_report  # noqa: F401  (summary: re-exported for the CLI)
from dsa.errors import DsaError, InputError, OutputDirError
from dsa.hal import registry

CASES_DIR = Path(__file__).resolve().parent / "cases"
MODEL_PROVIDER_ENV = "DSA_MODEL_PROVIDER"  # read by dsa/conformance/model_helpers.py
TEST_DEVICE_ENV = "DSA_TEST_DEVICE"  # read by dsa/conformance/calling.py
OP_TESTS = ("test_act_quant.py", "test_dispatch.py", "test_fp8_linear.py", "test_grouped_gemm.py",
            "test_indexer_topk.py", "test_kv_format.py", "test_sparse_mla.py")
MODEL_TESTS = ("test_oracle.py", "test_transformers_oracle.py", "test_trained_model.py")
MODEL_ROW = "model"  # the random tiny model against the fp64 oracle and transformers; the trained mini's tokens
HARNESS_ROW = "oracle self-checks"  # tests of the oracle / dispatch themselves (no provider)
REPORT_FORMAT = "dsa-conformance/1"
_METRICS = ("abs", "rel", "cos", "tol_ratio")
_MESSAGE_CHARS = 1500


# ---------------------------------------------------------------- the cases and the providers

def case_files(names: Sequence[str]) -> list[Path]:
    """The shipped case modules (dsa/conformance/cases/), checked, not assumed."""
    paths = [CASES_DIR / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DsaError(f"conformance cases missing from {CASES_DIR}: {', '.join(missing)}; reinstall dsa-runtime")
    return paths


def installed_providers() -> list[str]:
    """Every provider that registered at least one op here (known names first, in their order)."""
    registry.load_backends()
    names = {n for op in registry.OPS for n in registry.providers(op)}
    return [n for n in registry.KNOWN_PROVIDERS if n in names] + sorted(names - set(registry.KNOWN_PROVIDERS))


def check_keyword(keyword: Optional[str]) -> None:
    """A malformed -k expression is a usage error, found before anything runs (pytest's own parser)."""
    if keyword is None:
        return
    if not keyword.strip():
        raise InputError("-k: the expression is empty")
    from _pytest.mark import expression

    errors = tuple(e for e in (getattr(expression, "ParseError", None), SyntaxError) if e is not None)
    try:
        expression.Expression.compile(keyword)
    except errors as err:
        raise InputError(f"-k {keyword!r} is not a valid expression: {getattr(err, 'msg', None) or err}") from None


def choose_providers(names: Sequence[str] = (), profile=None) -> list[str]:
    """--provider names (validated), else the profile's preference lists in order, else all installed."""
    installed = installed_providers()
    if names:
        known = set(registry.KNOWN_PROVIDERS) | set(installed)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(
                f"unknown provider {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        return list(dict.fromkeys(names))
    if profile is not None:
        return list(dict.fromkeys(n for op in registry.OPS for n in profile.providers[op]))
    return installed


# ---------------------------------------------------------------- the rows and the pytest plugin

@dataclass
class Row:
    op: str
    provider: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    skip_reasons: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)  # {"case", "message"}
    worst: dict = field(default_factory=dict)  # metric -> {"value", "case"}
    topk_rows: int = 0
    topk_bad_rows: int = 0
    nonfinite_mismatches: int = 0  # comparisons whose inf / NaN positions differed from the oracle's
    notes: list = field(default_factory=list)
    ops_run: dict = field(default_factory=dict)  # model row: "op" -> {"provider": calls}

    @property
    def cases(self) -> int:
        return self.passed + self.failed + self.skipped

    @property
    def status(self) -> str:
        if self.failed:
            return "fail"
        if self.passed:
            return "pass"
        return "skipped" if self.skipped else "no cases"

    def to_json(self) -> dict:
        return {
            "op": self.op, "provider": self.provider, "status": self.status, "cases": self.cases,
            "passed": self.passed, "failed": self.failed, "skipped": self.skipped,
            "skip_reasons": [{"reason": r, "count": c} for r, c in self.skip_reasons.most_common()],
            "worst": self.worst,
            "topk": {"rows": self.topk_rows, "bad_rows": self.topk_bad_rows} if self.topk_rows else None,
            "nonfinite_mismatches": self.nonfinite_mismatches,
            "failures": self.failures, "ops_run": self.ops_run or None, "notes": self.notes,
        }


def _case(nodeid: str) -> str:
    """dsa/conformance/cases/test_x.py::test_x[torch-a-b] -> test_x.py::test_x[torch-a-b]"""
    return nodeid.rsplit("/", 1)[-1]


class Collector:
    """pytest plugin: sorts every test into its (op, provider) row and keeps outcomes and worst errors."""

    def __init__(self, rows: dict, model_provider: Optional[str] = None):
        self.rows = rows
        self.model_provider = model_provider
        self.keys: dict[str, tuple[str, str]] = {}
        self.errors: list[dict] = []  # collection errors (a broken test file fails the run)
        self.outcomes: dict[str, tuple[str, str]] = {}  # nodeid -> (passed | failed | skipped, reason / message)
        self.selected = 0  # cases collected and not deselected by -k

    def row(self, key: tuple[str, str]) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(*key)
        return self.rows[key]

    def key_of(self, item) -> tuple[str, str]:
        if self.model_provider is not None:
            return (MODEL_ROW, self.model_provider)
        provider = getattr(getattr(item, "callspec", None), "params", {}).get("provider")
        marker = item.get_closest_marker("op")
        if provider is not None and marker is not None:
            return (marker.args[0], provider)
        return (HARNESS_ROW, "-")

    def pytest_collection_finish(self, session):  # after -k deselection
        self.selected += len(session.items)
        for item in session.items:
            self.keys[item.nodeid] = self.key_of(item)

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append({"case": report.nodeid or "<collection>", "message": _message(report)})

    def pytest_runtest_setup(self, item):
        from dsa.conformance.reference import compare  # the module the cases record their errors through

        row, case = self.row(self.keys.get(item.nodeid) or self.key_of(item)), _case(item.nodeid)

        def record(name: str, stats: dict) -> None:
            if "topk_rows" in stats:
                row.topk_rows += stats["topk_rows"]
                row.topk_bad_rows += stats["topk_bad_rows"]
                return
            row.nonfinite_mismatches += bool(stats["nonfinite_mismatch"])
            for metric in _METRICS:
                value = stats[metric]
                if metric not in row.worst or value > row.worst[metric]["value"]:
                    row.worst[metric] = {"value": value, "case": f"{case} ({name})"}

        compare.recorder = record

    def pytest_runtest_teardown(self, item):
        from dsa.conformance.reference import compare

        compare.recorder = None

    def pytest_runtest_logreport(self, report):
        """One outcome per case: a skip or failure in setup, the call's result, a teardown error."""
        if report.when == "teardown" and not report.failed:
            return
        prior = self.outcomes.get(report.nodeid)
        if report.skipped:
            self.outcomes[report.nodeid] = ("skipped", _skip_reason(report))
        elif report.failed and (prior is None or prior[0] != "failed"):
            prefix = "" if report.when == "call" else f"{report.when}: "
            self.outcomes[report.nodeid] = ("failed", prefix + _message(report))
        elif report.passed and report.when == "call":
            self.outcomes[report.nodeid] = ("passed", "")

    def pytest_sessionfinish(self):
        for nodeid, (outcome, text) in self.outcomes.items():
            row = self.row(self.keys.get(nodeid, (HARNESS_ROW, "-")))
            if outcome == "passed":
                row.passed += 1
            elif outcome == "skipped":
                row.skipped += 1
                row.skip_reasons[text] += 1
            else:
                row.failed += 1
                row.failures.append({"case": _case(nodeid), "message": text})


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    # "X declines this <op> case: R" (op tests) and "X declines the small <op> case: R" (dispatch test): one reason
    return re.sub(r"^(\S+) declines (?:this|the small) \S+ case: ", r"\1 declines: ", reason)


def _message(report) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + " ..."


# ---------------------------------------------------------------- running

def _pytest_args(paths: list[Path], providers: Sequence[str], keyword: Optional[str]) -> list[str]:
    # the plugin parametrizes `provider`; --rootdir and an empty ini keep a project's pytest settings out
    args = [str(p) for p in paths] + ["-q", "--tb=short", "-p", "no:cacheprovider", "-p", "dsa.conformance.plugin",
                                      "--rootdir", str(CASES_DIR), "-c", str(CASES_DIR / "pytest.ini"),
                                      "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    for name in providers:
        args += ["--provider", name]
    if keyword:
        args += ["-k", keyword]
    return args


def _run_pytest(args: list[str], collector: Collector, env: Optional[dict] = None) -> int:
    import pytest

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        code = int(pytest.main(args, plugins=[collector]))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if code == pytest.ExitCode.INTERRUPTED and not collector.errors:
        raise KeyboardInterrupt
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        collector.errors.append({"case": "<pytest>", "message": f"pytest exited with {pytest.ExitCode(code).name}"})
    return code


def _prepare_environment() -> str:
    """Before any backend is imported, as the conformance plugin does for a plain pytest run: without a GPU,
    Triton kernels run in its CPU interpreter. Returns where the op tests put their inputs
    ($DSA_TEST_DEVICE, read by dsa/conformance/calling.py; default: the accelerator found here)."""
    import torch

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if TEST_DEVICE_ENV not in os.environ:
        from dsa.planning.hardware import detect

        os.environ[TEST_DEVICE_ENV] = {"cuda": "cuda", "rocm": "cuda", "npu": "npu"}.get(detect().platform, "cpu")
    return os.environ[TEST_DEVICE_ENV]


def _machine() -> dict:
    import torch

    from dsa.planning.hardware import detect

    hw = detect()
    try:
        from importlib import metadata

        version = metadata.version("dsa-runtime")
    except Exception:  # running from a checkout that is not installed
        version = "not installed"
    return {"platform": hw.platform, "arch": hw.arch, "name": hw.name, "device_count": hw.device_count,
            "torch": torch.__version__, "python": _platform.python_version(), "dsa_runtime": version}


def run_conformance(
    providers: Sequence[str] = (),
    profile: Optional[str] = None,
    report_dir: Path = Path("conformance-report"),
    keyword: Optional[str] = None,
    model: bool = True,
    command: Optional[str] = None,
) -> dict:
    """Run op-level and model conformance; write report.json + report.md; return the report."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise DsaError("`dsa conformance` needs pytest: pip install 'dsa-runtime[conformance]'") from None
    check_keyword(keyword)
    device = _prepare_environment()
    loaded = None
    if profile is not None:
        from dsa.planning.device_profile import load_profile

        loaded = load_profile(profile)
    names = choose_providers(providers, loaded)
    report_dir = Path(report_dir)
    _check_writable(report_dir)

    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.monotonic()
    machine = _machine()
    installed = set(installed_providers())
    rows: dict[tuple[str, str], Row] = {}
    errors: list[dict] = []
    selected = 0

    collector = Collector(rows)
    if names:
        _run_pytest(_pytest_args(case_files(OP_TESTS), names, keyword), collector)
    errors += collector.errors
    selected += collector.selected

    if model:
        from dsa.conformance import model_helpers as helpers

        for name in names:
            row = rows.setdefault((MODEL_ROW, name), Row(MODEL_ROW, name))
            if name not in installed:
                row.skipped += 1
                row.skip_reasons[_not_installed(name)] += 1
                continue
            op_rows = [r for (op, p), r in rows.items() if p == name and op != MODEL_ROW]
            if op_rows and all(r.passed + r.failed == 0 for r in op_rows):  # it would only exercise torch
                row.skipped += 1
                row.skip_reasons[f"{name} ran no op-level case here (see its op rows for why)"] += 1
                continue
            helpers.PROVIDER_CALLS.clear()
            collector = Collector(rows, model_provider=name)
            _run_pytest(_pytest_args(case_files(MODEL_TESTS), (), keyword), collector,
                        env={MODEL_PROVIDER_ENV: name})
            errors += collector.errors
            selected += collector.selected
            ops_run: dict = {}
            for (op, ran), calls in sorted(helpers.PROVIDER_CALLS.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
                ops_run.setdefault(op, {})[str(ran)] = calls
            row.ops_run = ops_run
            own = [op for op, by in ops_run.items() if name in by]
            fallback = [op for op, by in ops_run.items() if any(p != name for p in by)]
            if name != "torch" and own:
                row.notes.append(f"ops run by {name}: {', '.join(own)}"
                                 + (f"; torch for: {', '.join(fallback)}" if fallback else ""))
            elif name != "torch" and row.passed:  # nothing of this provider was exercised: certifies nothing
                reason = f"the model cases called none of {name}'s ops (torch ran {', '.join(fallback) or 'them'})"
                row.skip_reasons[reason] += row.passed
                row.skipped, row.passed, row.worst = row.skipped + row.passed, 0, {}
                row.topk_rows, row.topk_bad_rows = 0, 0

    if not selected and not errors:  # a run that checked nothing certifies nothing: not a pass
        if keyword:
            raise InputError(f"-k {keyword!r} matches no conformance case")
        raise InputError("no conformance case ran (no provider to check, and --no-model); pass --provider NAME")

    notes = []
    if loaded is not None and (loaded.platform, loaded.arch) != (machine["platform"], machine["arch"]):
        notes.append(f"profile {loaded.name} is for {loaded.platform}/{loaded.arch}, but this machine is "
                     f"{machine['platform']}/{machine['arch']}: this run does not certify that hardware")
    if "triton" in names and os.environ.get("TRITON_INTERPRET") == "1":
        notes.append("Triton kernels ran in Triton's CPU interpreter (TRITON_INTERPRET=1, no GPU here): this checks "
                     "their logic, not their execution on a GPU")
    if device != "cpu":
        notes.append(f"the model rows run on the CPU (only providers that take CPU tensors are exercised there); "
                     f"the op rows run on {device}")
    failed = any(r.status == "fail" for r in rows.values()) or bool(errors)
    report = {
        "format": REPORT_FORMAT,
        "result": "fail" if failed else "pass",
        "created": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - t0, 1),
        "command": command or "dsa conformance",
        "machine": machine,
        "tensors_on": device,
        "profile": loaded.name if loaded is not None else None,
        "providers": names,
        "not_installed": {n: registry.KNOWN_PROVIDERS.get(n, "unknown backend") for n in names if n not in installed},
        "keyword": keyword,
        "notes": notes,
        "rows": [r.to_json() for r in _ordered(rows.values(), names)],
        "errors": errors,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    write_report(report, report_dir)
    return report


def _not_installed(name: str) -> str:
    where = registry.KNOWN_PROVIDERS.get(name, "no known backend package")
    return f"provider {name!r} is not installed here (backend: {where}; absent or failed to import)"


def _ordered(rows, names: Sequence[str]) -> list[Row]:
    op_rank = {op: i for i, op in enumerate((*registry.OPS, MODEL_ROW))}
    prov_rank = {n: i for i, n in enumerate(names)}
    return sorted(rows, key=lambda r: (op_rank.get(r.op, len(op_rank)), r.op,
                                       prov_rank.get(r.provider, len(prov_rank)), r.provider))


def _check_writable(report_dir: Path) -> None:
    """Before anything runs, and without creating anything: report_dir is (or can be made) a writable
    directory. It is created when the report is written."""
    if report_dir.exists() and not report_dir.is_dir():
        raise OutputDirError(f"--report {report_dir}: exists and is not a directory")
    existing = report_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"--report {report_dir}: cannot create the directory: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "directory is not writable" if existing == report_dir.absolute() else f"{existing} is not writable"
        raise OutputDirError(f"--report {report_dir}: {what}")
