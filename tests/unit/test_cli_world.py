"""`t2i-router world ...` and `t2i-router score` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from t2i_router.cli import main
from t2i_router.imageio import load_png, save_png
from t2i_router.world import parse_prompt, render


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_prints_n_parseable_prompts(capsys):
    code, out, _ = run(capsys, "world", "sample", "--n", "7", "--seed", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 7
    for line in lines:
        parse_prompt(line)
    assert run(capsys, "world", "sample", "--n", "7", "--seed", "3")[1] == out


def test_render_one_prompt_at_a_scale_and_score_it(capsys, tmp_path):
    path = tmp_path / "out.png"
    prompt = "Two big red circles to the left of a blue triangle, on grey."
    code, _, _ = run(capsys, "world", "render", prompt, "-o", str(path), "--scale", "4")
    assert code == 0
    assert Image.open(path).size == (128, 128)
    code, out, _ = run(capsys, "score", "--prompt", prompt, str(path))
    scores = json.loads(out)
    assert code == 0
    assert scores["relation"] == 1.0 and scores["mean_alignment"] == 1.0
    _, out, _ = run(capsys, "score", "--prompt", "a red circle on grey", str(path))
    assert json.loads(out)["relation"] is None
    assert json.loads(out)["count"] < 1.0


def test_render_prompts_file_writes_numbered_pngs(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\nthree small blue squares on black\n")
    code, _, _ = run(
        capsys, "world", "render", "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "d")
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["0000.png", "0001.png"]
    image = load_png(tmp_path / "d" / "0001.png")
    assert (image == 0).all(-1).mean() > 0.5  # black background


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--prompt", "a red dog", "IMAGE"], "unknown word 'dog'"),
        (["score", "--prompt", "a red circle", "MISSING"], "no such file"),
        (["score", "--prompt", "a red circle", "TEXTFILE"], "not a readable image"),
        (["score", "--prompt", "a red circle", "ODDSIZE"], "30x30"),
        (["world", "render", "five red circles", "-o", "X.png"], "'five'"),
        (["world", "render", "a red circle"], "-o/--output"),
        (["world", "render", "--prompts-file", "MISSING", "--out-dir", "D"], "cannot read"),
        (["world", "render", "--prompts-file", "BADPROMPTS", "--out-dir", "D"], "line 2"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, argv, message):
    save_png(render(parse_prompt("a red circle"), 0), tmp_path / "image.png")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "odd.png")
    (tmp_path / "bad.txt").write_text("a red circle\na red dog\n")
    paths = {
        "IMAGE": tmp_path / "image.png",
        "MISSING": tmp_path / "missing",
        "TEXTFILE": tmp_path / "text.png",
        "ODDSIZE": tmp_path / "odd.png",
        "BADPROMPTS": tmp_path / "bad.txt",
        "X.png": tmp_path / "x.png",
        "D": tmp_path / "d",
    }
    code, _, err = run(capsys, *[str(paths.get(a, a)) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_console_script_runs_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "t2i_router.cli", "score", "--prompt", "a red dog", "x.png"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "'dog'" in result.stderr


def test_load_png_accepts_smoothed_upscales(tmp_path):
    image = render(parse_prompt("a large red square on black"), 1)
    Image.fromarray(image).resize((96, 96), Image.NEAREST).save(tmp_path / "n.png")
    np.testing.assert_array_equal(load_png(tmp_path / "n.png"), image)


def test_demo_writes_a_grid(capsys, tmp_path):
    out = tmp_path / "grid.png"
    code, text, _ = run(capsys, "world", "demo", "--out", str(out), "--n", "8")
    assert code == 0 and out.exists()
    assert "color        1.000" in text
