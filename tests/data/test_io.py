import pytest

from shopee_fastai.errors import ShopeeError
from shopee_fastai.io import atomic_path, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "model.json"
    dest.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert dest.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_unwritable_output_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(ShopeeError, match="cannot write here") as e:
        write_text(blocker / "m.json", "{}")
    assert "\n" not in str(e.value)


def test_new_files_get_normal_permissions(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_atomic_files_get_the_usual_mode_whoever_writes_them(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    from shopee_fastai.io import _umask, atomic_path

    dest = tmp_path / "w.safetensors"
    with atomic_path(dest) as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))  # recreates the file itself
    assert os.stat(dest).st_mode & 0o777 == 0o666 & ~_umask()
