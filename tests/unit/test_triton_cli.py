"""`triton start|status|stop` without a server: parsing, missing and stale state."""

import argparse
import json
from pathlib import Path

import pytest

from t2i_router.errors import RouterError, Unavailable
from t2i_router.triton.cli import (
    STATE_FILE,
    add_triton_parser,
    cmd_triton_start,
    cmd_triton_status,
    cmd_triton_stop,
    main,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_triton_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _stale_state(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    state = {
        "pid": 2**22 + 1,  # above pid_max on default kernels: never a live process
        "start_ticks": 1,
        "grpc_url": "127.0.0.1:8001",
        "http_url": "127.0.0.1:8000",
        "metrics_url": None,
        "model_repository": "/nowhere",
        "log_path": str(run_dir / "triton.log"),
        "stop_grace_s": 1.0,
    }
    path = run_dir / STATE_FILE
    path.write_text(json.dumps(state))
    return path


def test_parser_mounts_three_commands_with_defaults() -> None:
    args = _parse("triton", "start")
    assert args.func is cmd_triton_start
    assert (args.grpc_port, args.http_port, args.metrics_port) == (8001, 8000, 8002)
    assert args.model_repository == "triton_repo" and args.run_dir is None
    assert _parse("triton", "status", "--run-dir", "d").func is cmd_triton_status
    assert _parse("triton", "stop").func is cmd_triton_stop


def test_parser_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("triton", "start", "--grpc-port", "70000")
    assert "outside 0..65535" in capsys.readouterr().err


def test_run_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T2I_ROUTER_RUN_DIR", str(tmp_path))
    with pytest.raises(Unavailable, match=str(tmp_path / STATE_FILE)):
        cmd_triton_status(_parse("triton", "status"))


def test_stop_without_state_is_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmd_triton_stop(_parse("triton", "stop", "--run-dir", str(tmp_path)))
    assert "nothing to stop" in capsys.readouterr().out


def test_stale_state_is_reported_by_status_and_removed_by_stop(tmp_path: Path) -> None:
    path = _stale_state(tmp_path / "run")
    with pytest.raises(Unavailable, match="is not running"):
        cmd_triton_status(_parse("triton", "status", "--run-dir", str(path.parent)))
    cmd_triton_stop(_parse("triton", "stop", "--run-dir", str(path.parent)))
    assert not path.exists()


def test_start_with_missing_repository_fails_with_a_router_error(tmp_path: Path) -> None:
    args = _parse("triton", "start", "--run-dir", str(tmp_path), "--model-repository",
                  str(tmp_path / "absent"))  # fmt: skip
    with pytest.raises(RouterError, match="is not a folder"):
        cmd_triton_start(args)


def test_main_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["triton", "status", "--run-dir", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("t2i-router: error: no Triton started")


def test_committed_triton_repo_is_the_builders_output(tmp_path, monkeypatch):
    """triton_repo/ is generated; regenerate and compare so the two cannot drift."""
    import shutil
    from pathlib import Path

    from t2i_router.triton.repository import build_repository

    root = Path(__file__).resolve().parents[2]
    # Same relative layout as the checkout: triton_repo/ next to models/, with the files the
    # builder reads (the estimator's config, the engines' cards for its costs).
    monkeypatch.chdir(tmp_path)
    for path in (root / "models").glob("*/*.json"):
        target = tmp_path / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    has_estimator = (root / "models" / "quality_estimator" / "config.json").is_file()
    estimator_dir = "models/quality_estimator" if has_estimator else None
    build_repository("triton_repo", "models", estimator_dir=estimator_dir)

    def files(repo: Path) -> dict[str, str]:
        # Triton's Python backend leaves __pycache__ in a repository it served (ignored by git).
        return {
            str(p.relative_to(repo)): p.read_text()
            for p in repo.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    built, committed = files(tmp_path / "triton_repo"), files(root / "triton_repo")
    assert sorted(committed) == sorted(built)
    for rel, text in built.items():
        assert committed[rel] == text, rel
