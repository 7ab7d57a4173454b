"""What kubectl and helm users expect: --version, usage errors apart from invalid manifests, help on
every flag, shell completion from the parser, -o json on audit verify, no traceback for a bug."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from cli_manifests import job_dir, refusing_dir

from fedsec.cli import completion
from fedsec.cli import validate as cli_validate
from fedsec.cli.main import build_parser, main
from fedsec.runtime import exitcodes
from fedsec.telemetry.audit import AuditLog


def test_version_is_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedsec {version('fedsec')}"


@pytest.mark.parametrize("argv", [
    [], ["validate"], ["validate", "--bogus", "x"], ["validate", "-o", "xml", "x"], ["frobnicate"],
    ["rollback", "runs/x"], ["rollback", "runs/x", "--to-round", "five"], ["completion", "fish"], ["audit"],
])
def test_a_wrong_command_line_exits_64_not_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == exitcodes.USAGE
    err = capsys.readouterr().err
    assert "usage: fedsec" in err and "error:" in err


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    return [(" ".join(("fedsec", *path)), a) for path, p in completion.walk(parser) for a in p._actions
            if not isinstance(a, argparse._SubParsersAction)]


def test_every_flag_and_argument_of_every_command_has_help() -> None:
    missing = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in _actions(build_parser())
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, missing
    assert len(_actions(build_parser())) > 30  # the walk reached the subcommands


def _complete(script: str, words: list[str]) -> list[str]:
    """What bash offers for the last of ``words``, from the generated script, in a real bash."""
    line = " ".join(f"'{w}'" for w in words)
    program = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _fedsec; printf "%s\\n" "${{COMPREPLY[@]}}"'
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_what_the_parser_has(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert script.rstrip().endswith("complete -o filenames -F _fedsec fedsec")
    assert _complete(script, ["fedsec", "va"]) == ["validate"]
    assert set(_complete(script, ["fedsec", ""])) == set(completion._subparsers(build_parser()))
    assert _complete(script, ["fedsec", "audit", ""]) == ["verify"]
    assert _complete(script, ["fedsec", "validate", "-o", ""]) == ["text", "json", "yaml"]
    assert _complete(script, ["fedsec", "completion", ""]) == ["bash", "zsh"]
    assert set(_complete(script, ["fedsec", "run", "--"])) == {"--help", "--job", "--ledger-dir", "--quiet", "--run-dir"}
    assert _complete(script, ["fedsec", "rollback", "x", "--to-round", ""]) == []
    (tmp_path / "job.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _complete(script, ["fedsec", "validate", "jo"]) == ["job.yaml"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_loads_in_zsh(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    proc = subprocess.run(["zsh", "-f", "-c", f"{script}\nwhence -w _fedsec"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "_fedsec: function" in proc.stdout, proc.stderr


def test_zsh_completion_is_the_bash_function_through_bashcompinit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert main(["completion", "bash"]) == 0
    bash = capsys.readouterr().out
    assert zsh.startswith("#compdef fedsec\n") and "bashcompinit" in zsh and zsh.endswith(bash)


def test_audit_verify_of_a_missing_file_is_no_such_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "audit.jsonl"
    assert main(["audit", "verify", str(missing)]) == exitcodes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err and "BROKEN" not in err
    assert main(["audit", "verify", str(tmp_path)]) == exitcodes.CONFIG_ERROR
    assert f"{tmp_path} is a directory without audit.jsonl" in capsys.readouterr().err
    assert main(["audit", "verify", str(missing), "-o", "json"]) == exitcodes.CONFIG_ERROR
    assert json.loads(capsys.readouterr().out) == {"ok": False, "path": str(missing),
                                                   "error": f"{missing}: no such file", "exit_code": 2}


def test_audit_verify_json_for_a_good_and_a_broken_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append("round-committed", round=i)
    log.close()
    assert main(["audit", "verify", str(tmp_path), "-o", "json"]) == exitcodes.OK
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["entries"], doc["head"], doc["exit_code"]) == (True, 3, log.head, 0)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert main(["audit", "verify", str(path), "-o", "yaml"]) == exitcodes.JOB_FAILED
    out = capsys.readouterr().out
    assert "ok: false" in out and "first_bad_line: 2" in out and "reason: " in out


def test_a_bug_is_one_line_and_exit_70(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an injected bug\nover two lines")

    monkeypatch.setattr(cli_validate, "validate", broken)
    monkeypatch.delenv("FEDSEC_DEBUG", raising=False)
    assert main(["validate", str(tmp_path)]) == exitcodes.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.splitlines() == ["fedsec: internal error: RuntimeError: an injected bug over two lines; please report "
                                "it with the command you ran (FEDSEC_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("FEDSEC_DEBUG", "1")
    assert main(["validate", str(tmp_path)]) == exitcodes.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "fedsec: internal error: RuntimeError" in err


@pytest.mark.slow  # imports the runtime (torch): seconds
def test_run_refused_by_every_site_exits_3_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = refusing_dir(tmp_path / "m")
    run_dir = tmp_path / "run"
    code = main(["run", str(root), "--run-dir", str(run_dir), "--ledger-dir", str(tmp_path / "ledger"), "--quiet"])
    assert code == exitcodes.REFUSED
    err = capsys.readouterr().err
    assert err.startswith("1 problem(s) stop the job: the manifests are valid, but the sites refuse it:")
    assert f"  - {root / 'job.yaml'}: FederatedJob/bc: spec.clients.selector: every selected site refused the job" in err
    assert not run_dir.exists()


@pytest.mark.slow  # imports the runtime (torch): seconds
def test_run_plan_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_manifests import job

    root = job_dir(tmp_path / "m", job(quorum={"minClients": 5}))
    code = main(["run", str(root), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert code == exitcodes.CONFIG_ERROR
    assert f"  - {root / 'job.yaml'}: FederatedJob/bc: spec.quorum.minClients:" in capsys.readouterr().err


def _fedsec(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fedsec", *args], input=stdin, capture_output=True, timeout=120)


@pytest.mark.slow
def test_exit_codes_of_a_real_process(tmp_path: Path) -> None:
    good = job_dir(tmp_path / "good")
    refused = refusing_dir(tmp_path / "refused")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"[" * 2000 + b"]" * 2000)
    cases = {
        exitcodes.OK: _fedsec("validate", str(good)),
        exitcodes.CONFIG_ERROR: _fedsec("validate", str(bad)),
        exitcodes.REFUSED: _fedsec("validate", str(refused)),
        exitcodes.USAGE: _fedsec("validate", "--no-such-flag", str(good)),
    }
    for code, proc in cases.items():
        out = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == code, out
        assert "Traceback" not in out
    assert f"  - {bad}:1:65: nested deeper than 64 levels" in cases[exitcodes.CONFIG_ERROR].stderr.decode()
    piped = _fedsec("validate", "-", "-o", "json", stdin=(good / "job.yaml").read_bytes() + b"---\n" + b"".join(
        (good / f"site-{i}.yaml").read_bytes() + b"---\n" for i in range(3)))
    assert piped.returncode == exitcodes.OK, piped.stderr.decode()
    assert json.loads(piped.stdout)["jobs"][0]["admitted"] == ["site-0", "site-1", "site-2"]
