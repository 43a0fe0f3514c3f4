import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    awk = ["awk", "/<!-- test-command -->/{f=1; next} f && /^```bash/{next} f && /^```/{exit} f", "README.md"]
    cmd = subprocess.run(awk, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert "pytest" in cmd and "pip install" in cmd
    assert cmd.splitlines()[0] in (ROOT / "README.md").read_text().split("<!-- test-command -->")[1]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
