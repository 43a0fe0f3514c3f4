import os

import numpy as np
import pytest

from shopee_fastai.inference.embed import embed_paths, learner_embed


def test_embeddings_are_unit_vectors_and_identical_images_match(synthetic):
    paths = sorted(str(p) for p in (synthetic / "train_images").glob("*.jpg"))[:3]
    emb = embed_paths([paths[0], paths[0], paths[1]], progress=False)
    assert emb.shape == (3, 1280)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] == pytest.approx(1, abs=1e-5) and emb[0] @ emb[2] < 0.999


def test_unreadable_image_embeds_as_zeros(synthetic, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    good = str(sorted((synthetic / "train_images").glob("*.jpg"))[0])
    emb = embed_paths([good, str(bad)], progress=False)
    assert np.linalg.norm(emb[0]) == pytest.approx(1, abs=1e-5) and not emb[1].any()


def test_trained_learner_body_embeds_with_training_preprocessing(trained_cnn, synthetic, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    images = synthetic / "train_images"
    paths = [str(images / f"{g}_{i:03d}.jpg") for g in ("1001", "3003") for i in range(3)] + [str(bad)]
    emb = learner_embed(trained_cnn.learn, paths, progress=False)
    assert emb.shape == (7, 64 * 4 * 4)  # HandCNN's flattened features at 32 px
    assert np.allclose(np.linalg.norm(emb[:6], axis=1), 1, atol=1e-5) and not emb[6].any()
    sim = emb[:6] @ emb[:6].T
    within = (sim[:3, :3].sum() - 3 + sim[3:, 3:].sum() - 3) / 12
    assert within > sim[:3, 3:].mean()  # the trained body puts a group's photos closer together


def test_embed_under_torchrun_shards_and_gathers_in_order(synthetic, tmp_path):
    """Two processes (gloo on CPU) each embed half the photos; rank 0 writes them all, in CSV order."""
    import subprocess
    import sys

    import numpy as np

    from shopee_fastai.inference.embed import embed_images

    out = tmp_path / "dp.npy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "shopee_fastai", "embed",
           "--data", str(synthetic), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's logs: not /tmp
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("embeddings of") == 1  # one writer
    from shopee_fastai.data.table import PATH, read_table

    one = embed_images(list(read_table(synthetic)[PATH]), progress=False)
    assert np.allclose(np.load(out), one, atol=1e-4)
