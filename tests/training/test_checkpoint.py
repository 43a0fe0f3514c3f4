import json
from dataclasses import replace
from pathlib import Path
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shopee_fastai.config import OFFLINE_ARCH, TrainConfig
from shopee_fastai.errors import ShopeeError
from shopee_fastai.training import train

from ..conftest import SIZE

EPOCHS = 30
# The default recipe on colour blobs, which an ImageNet body sees alike: at lr 1e-2 its top part parts them in 16
# epochs (test accuracy 1.0 on 3 of 3 seeds; 40 epochs at the default 2e-3 did the same at 2.5x the time).
HEAD_EPOCHS = 16
HEAD_LR = 1e-2


def cli(data, models, *extra):
    return [sys.executable, "-m", "shopee_fastai", "train", "--data", str(data), "--arch", "cnn", "--split", "random",
            "--epochs", str(EPOCHS), "--size", str(SIZE), "--bs", "8", "--aug", "none", "--workers", "0", "--lr", "3e-3",
            "--models-dir", str(models), "--name", "r", "--checkpoint-every", "1", "--ensemble", "1", *extra]


def cnn_config(data, models, **extra) -> TrainConfig:
    """What `cli` runs, for the steps that need no process of their own (only the kill does)."""
    return TrainConfig(**{**dict(data=data, arch="cnn", split="random", epochs=EPOCHS, size=SIZE, bs=8, aug="none", workers=0,
                                 lr=3e-3, models_dir=models, name="r", checkpoint_every=1), **extra})


def valid_losses(history: list[dict]) -> list[float]:
    return [h["valid_loss"] for h in history]


def kill_after_three_epochs(cmd, models) -> dict:
    """Start `cmd`, hard-kill it (no cleanup runs) once its checkpoint has 3 epochs done, return the saved progress."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = models / "r.ckpt.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 3:  # written atomically: never half a file
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (models / "r.ckpt.pth").is_file() and not (models / "r.pkl").exists()
    assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]
    return json.loads(state.read_text())


def test_killed_training_resumes_to_a_model_as_good(synthetic, tmp_path):
    models = tmp_path / "m"
    state = models / "r.ckpt.json"
    assert 3 <= kill_after_three_epochs(cli(synthetic, models), models)["epochs_done"] < EPOCHS
    saved = state.read_bytes()
    with pytest.raises(ShopeeError, match="--lr was 0.003, now 0.01"):
        train(replace(cnn_config(synthetic, models, resume=True), lr=1e-2))
    assert state.read_bytes() == saved  # a refused resume changes nothing
    # Early stopping and keep-best may join on resume; they must ignore the epochs the resumed phase skips.
    train(cnn_config(synthetic, models, resume=True, keep_best=True, early_stop=EPOCHS))
    card = json.loads((models / "r.json").read_text())
    assert [h["epoch"] for h in card["history"]] == list(range(EPOCHS))  # one schedule, no epoch twice
    assert card["test_accuracy"] >= 0.8
    assert not state.exists()  # checkpoint removed once the model is exported
    fresh = train(cnn_config(synthetic, tmp_path / "fresh", checkpoint_every=0))
    assert abs(card["test_accuracy"] - fresh.test_accuracy) <= 0.25  # as good as uninterrupted, within noise


def test_resume_without_checkpoint_says_how(synthetic, tmp_path):
    with pytest.raises(ShopeeError, match="no checkpoint to resume from"):
        train(TrainConfig(data=synthetic, arch="cnn", split="random", size=SIZE, workers=0, models_dir=tmp_path,
                          resume=True))


def test_early_stop_and_keep_best(synthetic, tmp_path):
    cfg = TrainConfig(data=synthetic, arch="cnn", split="random", epochs=40, size=SIZE, bs=8, aug="none", workers=0,
                      lr=3e-2, models_dir=tmp_path, name="es", early_stop=2, keep_best=True)
    card = train(cfg)
    losses = [h["valid_loss"] for h in card.history]
    assert len(losses) < 40  # stopped early
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) - 1 - best == 2  # two epochs without improvement, then stop
    assert not (tmp_path / "es.best.pth").exists()  # keep-best's scratch file is gone after export


def test_full_disk_is_one_clear_error_and_no_partial_model(synthetic, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(ShopeeError, match="writing failed \\(No space left on device"):
            train(TrainConfig(data=synthetic, arch="cnn", split="random", epochs=1, size=64, workers=0, models_dir=tiny,
                              name="full"))
        left = sorted(p.name for p in tiny.iterdir())
        assert "full.pkl" not in left and "full.json" not in left  # the card is written last: no card, no model
        assert not [n for n in left if n.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(tiny)])


def default_recipe_cli(data, models, *extra):
    """The default recipe as one model (an ensemble's members resume in their own test)."""
    return [sys.executable, "-m", "shopee_fastai", "train", "--data", str(data), "--arch", OFFLINE_ARCH, "--pretrained",
            "--split", "random", "--head-epochs", str(HEAD_EPOCHS), "--size", str(SIZE), "--workers", "0",
            "--lr", str(HEAD_LR), "--models-dir", str(models), "--name", "r", "--checkpoint-every", "1", *extra]


def default_recipe_config(data, models, **extra) -> TrainConfig:
    """What `default_recipe_cli` runs."""
    return TrainConfig(**{**dict(data=data, arch=OFFLINE_ARCH, pretrained=True, split="random", head_epochs=HEAD_EPOCHS,
                                 size=SIZE, workers=0, lr=HEAD_LR, models_dir=models, name="r", checkpoint_every=1, ensemble=1),
                          **extra})


def interrupt_after_three_epochs(cfg: TrainConfig) -> dict:
    """Run `cfg` in this process and press Ctrl-C (SIGINT) as soon as its checkpoint has 3 epochs done; the saved
    progress. The signal is sent from the training thread right after that checkpoint is written, so a loaded
    machine cannot let the run finish first."""
    from shopee_fastai.training.callbacks import Checkpoint

    state = Path(cfg.models_dir) / f"{cfg.model_name}.ckpt.json"
    saved = Checkpoint.after_epoch

    def after_epoch(self):
        saved(self)
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 3:
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, also where this process was started with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    Checkpoint.after_epoch = after_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    finally:
        Checkpoint.after_epoch = saved
        signal.signal(signal.SIGINT, previous)
    left = [p.name for p in Path(cfg.models_dir).iterdir()]
    assert f"{cfg.model_name}.pkl" not in left and not [n for n in left if n.endswith(".tmp")]
    return json.loads(state.read_text())


def test_interrupted_head_phase_resumes_exactly(synthetic, tmp_path):
    """The default pretrained recipe's cached-features phase checkpoints too: after Ctrl-C, --resume goes on from the
    last epoch saved as the uninterrupted run would have (a kill -9: the ensemble's test)."""
    models = tmp_path / "m"
    state = models / "r.ckpt.json"
    saved = interrupt_after_three_epochs(default_recipe_config(synthetic, models))
    assert saved["phase"] == "head" and 3 <= saved["epochs_done"] < HEAD_EPOCHS

    train(default_recipe_config(synthetic, models, resume=True))
    card = json.loads((models / "r.json").read_text())
    assert [(h["phase"], h["epoch"]) for h in card["history"]] == [("head", e) for e in range(HEAD_EPOCHS)]  # one schedule
    assert not state.exists()  # the checkpoint goes once the model is exported

    fresh = train(default_recipe_config(synthetic, tmp_path / "fresh", checkpoint_every=0))
    assert card["test_accuracy"] > 1 / len(card["classes"])  # beats chance; 3 test photos, so one miss is 0.667
    # the checkpoint holds every random state (shuffle, dropout), so it goes on exactly as the uninterrupted run
    assert np.allclose(valid_losses(card["history"]), valid_losses(fresh.history), atol=1e-4)
    assert card["test_accuracy"] == fresh.test_accuracy
