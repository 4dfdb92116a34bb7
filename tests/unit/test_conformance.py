"""`dsa conformance`: provider choice, user errors (exit 2), and one small real run in-process with a
deliberately wrong provider (exit 1, report rows, worst errors, failure messages)."""
from __future__ import annotations

import json

import pytest

from dsa.cli import main
from dsa.conformance import runner as conformance
from dsa.hal import registry


@pytest.fixture
def broken_fp8_linear():
    """A provider whose fp8_linear is 1% too large: just over the bf16 tolerance (rtol 2/128)."""
    registry.load_backends()
    torch_fn = registry.get("fp8_linear", "torch").fn
    registry.register("fp8_linear", "test-broken", lambda *a: torch_fn(*a) * 1.01, backend="test")
    registry.register("fp8_linear", "test-declines", torch_fn, backend="test", supports_args=lambda *a: "not here")
    yield "test-broken"
    registry.unregister("fp8_linear", "test-broken")
    registry.unregister("fp8_linear", "test-declines")


@pytest.fixture
def absent_npu():
    """Provider "npu" as on a machine without its backend (whatever the backend does here)."""
    registry.load_backends()
    saved = {op: registry.providers(op)["npu"] for op in registry.OPS if "npu" in registry.providers(op)}
    for op in saved:
        registry.unregister(op, "npu")
    yield "npu"
    for op, p in saved.items():
        registry.register(op, "npu", p.fn, backend=p.backend, supported=p.supported, supports_args=p.supports_args)


def test_providers_default_to_installed_and_follow_a_profile():
    from dsa.planning.device_profile import load_profile

    assert "torch" in conformance.choose_providers()
    h200 = conformance.choose_providers(profile=load_profile("h200"))
    assert h200[0] == "deepgemm" and sorted(h200) == ["deepgemm", "flashmla", "tilelang", "torch", "triton"]
    assert conformance.choose_providers(["torch", "flashmla", "torch"]) == ["torch", "flashmla"]


@pytest.mark.parametrize("argv,message", [
    (["--provider", "nosuch"], "unknown provider 'nosuch'"),
    (["--device", "nosuch-gpu"], "nosuch-gpu"),
])
def test_user_errors_exit_2(argv, message, tmp_path, capsys):
    assert main(["conformance", "--report", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_report_path_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["conformance", "--provider", "torch", "--report", str(tmp_path / "f")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_missing_cases_say_to_reinstall(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(conformance, "CASES_DIR", tmp_path)
    assert main(["conformance", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "conformance cases missing" in err and "reinstall" in err


def test_run_reports_pass_fail_worst_errors_and_exits_1(broken_fp8_linear, absent_npu, tmp_path, capsys, monkeypatch):
    """In-process run on a few cases: torch passes, the broken provider fails its fp8_linear cases, the
    tiny-model row of each provider runs (the broken one never reaches its only op there: skipped), and a
    provider that declines every case or is not installed is reported as skipped with the reason. For
    speed, only one op file and one model file are collected (the real lists are checked by case_files
    on every run)."""
    monkeypatch.setattr(conformance, "OP_TESTS", ("test_fp8_linear.py",))
    monkeypatch.setattr(conformance, "MODEL_TESTS", ("test_oracle.py",))
    out = tmp_path / "report"
    code = main(["conformance", "--provider", "torch", broken_fp8_linear, "test-declines", absent_npu,
                 "--report", str(out), "-k", "bf16_T7 or test_topk_at_least_length_equals_sparse_and_dense_reference"])
    printed = capsys.readouterr().out
    assert code == 1 and "FAIL fp8_linear x test-broken: 2 of 2 cases" in printed
    report = json.loads((out / "report.json").read_text())
    rows = {(r["op"], r["provider"]): r for r in report["rows"]}
    assert report["result"] == "fail" and report["providers"] == ["torch", "test-broken", "test-declines", "npu"]

    ok = rows[("fp8_linear", "torch")]
    assert (ok["status"], ok["cases"], ok["passed"]) == ("pass", 2, 2)
    assert 0 < ok["worst"]["tol_ratio"]["value"] <= 1 and ok["worst"]["abs"]["value"] > 0

    bad = rows[("fp8_linear", broken_fp8_linear)]
    assert (bad["status"], bad["failed"]) == ("fail", 2)
    assert bad["worst"]["tol_ratio"]["value"] > 1 and "test-broken-bf16_T7_partial" in bad["worst"]["tol_ratio"]["case"]
    assert "exceed atol" in bad["failures"][0]["message"]

    skipped = rows[("fp8_linear", "npu")]
    assert skipped["status"] == "skipped"
    assert "has not registered op 'fp8_linear'" in skipped["skip_reasons"][0]["reason"]
    assert report["not_installed"] == {"npu": "dsa.backends.npu"}

    declines = rows[("fp8_linear", "test-declines")]
    assert declines["status"] == "skipped"
    assert declines["skip_reasons"] == [{"reason": "test-declines declines: not here", "count": 2}]
    assert "ran no op-level case" in rows[("model", "test-declines")]["skip_reasons"][0]["reason"]

    model = rows[("model", "torch")]
    assert (model["status"], model["passed"]) == ("pass", 2) and model["worst"]["tol_ratio"]["value"] < 1
    assert model["ops_run"]["sparse_mla_prefill"] == {"torch": model["ops_run"]["sparse_mla_prefill"]["torch"]}
    assert rows[("model", broken_fp8_linear)]["status"] == "skipped"
    assert "not installed" in rows[("model", "npu")]["skip_reasons"][0]["reason"]

    md = (out / "report.md").read_text()
    assert md.startswith("# dsa conformance: FAIL")
    assert "| fp8_linear | test-broken | FAIL | 2 | 0 | 2 | 0 |" in md
    assert "### fp8_linear x test-broken" in md and "exceed atol" in md


def test_call_op_moves_inputs_to_the_test_device_and_outputs_back(monkeypatch):
    """$DSA_TEST_DEVICE (set by `dsa conformance` on GPU / NPU hosts): inputs go there, outputs come back.
    Here "cpu:0" stands in for an accelerator; the result must equal a plain call."""
    import torch

    from dsa.conformance.calling import DEVICE_ENV, call_op

    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    plain = call_op("act_quant", "torch", x, 128, False)
    monkeypatch.setenv(DEVICE_ENV, "cpu:0")
    moved = call_op("act_quant", "torch", x, 128, False)
    assert all(torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                           b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b) for a, b in zip(plain, moved))
