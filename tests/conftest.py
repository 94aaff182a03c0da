import os
import resource

import pytest

# A broken sandbox must not be able to harm the machine running the tests: cap this process
# (and so everything it starts) before any sandbox exists.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NPROC)
if os.geteuid() != 0 and _hard == resource.RLIM_INFINITY:
    resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))

# Visible to the test process only; the sandbox must never show it to model code.
os.environ.setdefault("SANDBOX_TEST_SECRET_TOKEN", "hunter2-do-not-leak")


@pytest.fixture(scope="session")
def sandbox():
    from aimo_lib.sandbox import Sandbox

    with Sandbox(timeout_s=3.0, workers=2, max_output_chars=400) as sb:
        yield sb


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M (about 15 s to load): one per test session."""
    pytest.importorskip("transformers")
    from aimo_lib.engines import HFEngine

    return HFEngine(batch_size=8)
