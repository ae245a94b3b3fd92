"""The README's end-to-end example runs as written and finds what it claims."""
import os
import re
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "quickstart.py")


def test_quickstart_runs_as_written(tmp_path):
    proc = subprocess.run([sys.executable, os.path.abspath(EXAMPLE)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("helped most by training examples") == 3
    same = int(re.search(r"(\d+)% of the top-5 helpful examples share", out).group(1))
    found = int(re.search(r"(\d+)% of the 100 training examples with the highest", out).group(1))
    # Chance levels are 25% (4 classes) and 5% (the flipped fraction).
    assert same >= 50, out
    assert found >= 50, out
    assert os.path.isfile(tmp_path / "runs" / "quickstart" / "train" / "manifest.json")


def _code_without_docstring(text):
    body = text.split('"""', 2)[2] if text.startswith('"""') else text
    return body.strip()


def test_readme_shows_the_quickstart_verbatim():
    """The README's end-to-end block (a ```python block starting with the line
    ``# examples/quickstart.py``) must be the example's code, so the README runs as written."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    readme = os.path.join(root, "README.md")
    if not os.path.isfile(readme):
        import pytest
        pytest.skip("no README.md in this checkout")
    blocks = re.findall(r"```python\n(# examples/quickstart\.py\n.*?)```", open(readme).read(), re.S)
    if not blocks:
        import pytest
        pytest.skip("the README has no end-to-end block marked '# examples/quickstart.py' yet")
    shown = blocks[0].split("\n", 1)[1].strip()
    assert shown == _code_without_docstring(open(EXAMPLE).read())
