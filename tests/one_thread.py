"""The torch test modules' autouse fixture: `from one_thread import one_thread`."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread (two OpenMP threads on a busy 2-core machine wait on each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
