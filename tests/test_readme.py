"""Every ```python block of README.md runs, as written, on its own.

Each block is written to a file in a fresh temporary directory (so the files it writes, such
as gru.npz or gru.onnx, land there) and run by a new interpreter, which imports the same
grufast as this test run. A block that needs what CI cannot have (a real cluster address,
say) may be opted out by the line right above its fence:

    <!-- readme-test: skip (the reason) -->

The reason is required and shows in pytest's summary of skipped tests (``-ra``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import grufast

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_INFO = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"<!--\s*readme-test:(?P<body>.*?)-->")
SKIP = re.compile(r"^\s*skip\s*\((?P<reason>.*\S.*)\)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the opt-out reason, if any


def _marker_above(lines: list[str], i: int) -> str | None:
    """The skip reason of a readme-test marker on the nearest non-blank line above line i."""
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    marker = MARKER.search(lines[k]) if k >= 0 else None
    if marker is None:
        return None
    skip = SKIP.match(marker["body"])
    if skip is None:
        raise ValueError(f"README.md line {k + 1}: a readme-test marker must read "
                         f"'<!-- readme-test: skip (reason) -->', got {lines[k].strip()!r}")
    return skip["reason"].strip()


def python_blocks(text: str) -> list[Block]:
    """The Python code blocks of a Markdown text, fenced with ``` or ~~~ (CommonMark rules:
    the closing fence uses the same character, at least as many, and nothing after it)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"README.md line {i + 1}: code fence {fence!r} is never closed")
        words = opening["info"].strip().lower().split()
        language = words[0].strip("{}.") if words else ""
        if language in PYTHON_INFO:
            body = [ln[indent:] if ln[:indent].isspace() else ln for ln in lines[i + 1:j]]
            blocks.append(Block(i + 1, textwrap.dedent("\n".join(body)) + "\n",
                                _marker_above(lines, i)))
        i = j + 1
    return blocks


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The block must set up what it needs itself (KERAS_BACKEND above all).
    env.pop("KERAS_BACKEND", None)
    env["MPLBACKEND"] = "Agg"  # no display in CI
    # The same grufast as this test run, whether installed or from the source tree.
    package_root = str(Path(grufast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    script = cwd / "readme_block.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_its_python_blocks():
    # Guards the extraction itself: the quickstart, the layer, ONNX and Keras at least.
    assert len(BLOCKS) >= 4, [b.line for b in BLOCKS]
    assert any("from grufast import gru_forward" in b.code for b in BLOCKS)
    assert any("KERAS_BACKEND" in b.code and "import keras" in b.code for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    if block.skip is not None:
        pytest.skip(f"README.md line {block.line}: {block.skip}")
    done = _run(block.code, tmp_path)
    assert done.returncode == 0, (
        f"README.md block at line {block.line} failed (exit {done.returncode}):\n"
        f"{block.code}\n--- stdout ---\n{done.stdout[-3000:]}\n"
        f"--- stderr ---\n{done.stderr[-6000:]}")


# -- the extraction, on small documents -------------------------------------------------
def test_extraction_handles_fences_markers_and_indentation():
    doc = "\n".join([
        "text", "```python", "a = 1", "```",
        "```bash", "echo no", "```",
        "<!-- readme-test: skip (needs a real cluster address) -->", "",
        "```py", "b = 2", "```",
        "1. a list item:", "", "   ```python", "   if True:", "       c = 3", "   ```",
        "~~~~ python", "d = '```'", "~~~~",
    ])
    blocks = python_blocks(doc)
    assert [b.line for b in blocks] == [2, 10, 15, 19]
    assert blocks[0] == Block(2, "a = 1\n", None)
    assert blocks[1].skip == "needs a real cluster address"
    assert blocks[2].code == "if True:\n    c = 3\n"
    assert blocks[3].code == "d = '```'\n"


def test_extraction_refuses_unclosed_fences_and_bad_markers():
    with pytest.raises(ValueError, match="line 2: code fence '```' is never closed"):
        python_blocks("x\n```python\nprint(1)\n")
    with pytest.raises(ValueError, match="must read '<!-- readme-test: skip"):
        python_blocks("<!-- readme-test: skip -->\n```python\npass\n```\n")


def test_a_failing_block_fails(tmp_path):
    assert _run("raise SystemExit(3)\n", tmp_path).returncode == 3
    done = _run("import os\nassert 'KERAS_BACKEND' not in os.environ\n", tmp_path)
    assert done.returncode == 0, done.stderr
