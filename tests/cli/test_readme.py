import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    awk = ["awk", "/<!-- test-command -->/{f=1; next} f && /^```bash/{next} f && /^```/{exit} f", "README.md"]
    cmd = subprocess.run(awk, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert "pytest" in cmd and "pip install" in cmd
    assert cmd.splitlines()[0] in (ROOT / "README.md").read_text().split("<!-- test-command -->")[1]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_the_accuracy_recipe_is_train_and_predict_options_that_parse(tmp_path):
    """The README's accuracy recipe: `train` options that exist, and a `predict` of the model that `train` names."""
    import shlex

    import typer

    from shopee_fastai import config as C
    from shopee_fastai.artifacts import ModelFiles
    from shopee_fastai.cli import app

    block = (ROOT / "README.md").read_text().split("<!-- accuracy-recipe -->\n```bash\n", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line) for line in block.strip().splitlines()]
    assert lines[0][:2] == ["shopee-fastai", "train"] and len(lines) <= 2
    commands = typer.main.get_command(app).commands
    args = [str(tmp_path) if a == "DIR" else a for a in lines[0][2:]]
    cfg = C.TrainConfig(**commands["train"].make_context("train", args).params)
    if len(lines) == 2:
        assert lines[1][:3] == ["shopee-fastai", "predict", "PHOTOS"]
        params = commands["predict"].make_context("predict", [str(tmp_path)] + lines[1][3:]).params
        assert params["model"] == ModelFiles.of(cfg.models_dir, cfg.model_name).pkl
