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


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """A test that changes torch's process-wide settings (threads, deterministic algorithms, default dtype) leaves
    them as it found them, so a test's result cannot depend on what ran before it in the same worker (a combined
    ``make test-slow`` once failed DE-Net's toy test that passed alone, issue 27)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    dtype = torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_default_dtype(dtype)
