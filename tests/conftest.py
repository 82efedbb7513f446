import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker gets one thread: two workers x two OpenMP threads on two cores spin against each
# other and run the toy fits ~3x slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def toy_imagenet(tmp_path_factory):
    """A small toy ImageNet (4 shape classes, 32 px) written once per test session."""
    from datamodules.toy import ensure_written
    from datamodules.toy.shapes import write_shapes_imagefolder

    root = tmp_path_factory.mktemp("toy") / "shapes"
    options = dict(num_classes=4, train_per_class=12, eval_per_class=4, img_size=32, seed=0)
    ensure_written(root, write_shapes_imagefolder, **options)
    return root
