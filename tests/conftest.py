"""Fixtures shared by the tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from seva_tasks import serve


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real local Prefect server + worker (seva serve) on a free port with its own home: (port, home)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    serve.start(port, home)
    yield port, home
    serve.stop(home)


# A toy run in a few minutes: few pairs, a short pretraining, two DPO steps, three benchmarks (SQA among them).
# 200 pretraining steps (~40 s) make answers depend on the image (at 40 the model says "A" to everything, so
# every pair ties); noise step 999 destroys the image, so ~14 of 36 pairs differ and survive the filter.
SMALL_RUN = {"sample.subsets": {"ocr_vqa": {"images": 12, "questions_per_image": 2},
                                "textvqa": {"images": 12, "questions_per_image": 1}},
             "pretrain.steps": 200, "pretrain.logging_steps": 20, "pretrain.heldout": 8, "pretrain.extra": {},
             "augment.noise_step": 999, "filter.mode": "seva", "train.max_steps": 2,
             "evaluate.benchmarks": ["pope", "mme", "sqa"]}


@pytest.fixture(scope="session")
def small_run() -> dict:
    """Overrides for a toy run of `seva/full` in a few minutes (UI and reliability tests)."""
    return SMALL_RUN
