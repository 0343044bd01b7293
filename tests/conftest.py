"""pytest set-up: run each session in a scratch directory, as trial does.

trial runs tests inside ``_trial_temp``; under pytest, ``TestCase.mktemp``
and servers started with the default data directory would otherwise
write into the source tree.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("chatd-tests"))
    try:
        yield
    finally:
        os.chdir(previous)
