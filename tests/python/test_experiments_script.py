"""experiments/paper.py (the paper's tables, outside the package) imports from the package's
reusable evaluation pieces and offers every command scripts/results.sh runs."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_paper_script_offers_every_command_results_sh_runs():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "paper.py"), "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    script = (ROOT / "scripts" / "results.sh").read_text()
    commands = {v.split()[0] for v in re.findall(r'\]="([^"]+)"', script)}
    assert commands and all(c in out.stdout for c in commands), (commands, out.stdout)
    assert "experiments/paper.py" in script
