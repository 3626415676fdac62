import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: OpenMP threads spinning against other processes (a notebook kernel, a
    second run) cost up to 10x, and one thread is as fast as two for width-4 networks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    # slow: a test that takes more than ~20 s of single-threaded CPU (whole runs through ./run_all.sh, real
    # trainings); ./run_tests.sh (and CI) runs them too, `-m "not slow"` leaves them out while iterating
    config.addinivalue_line("markers", "slow: more than ~20 s of CPU single-threaded; deselect with -m 'not slow'")
