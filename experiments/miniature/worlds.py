"""The toy world a probe script runs on: one directory per set of `toy.*` overrides."""

from __future__ import annotations

import hashlib
import json

from seva_tasks.toy import ToyConfig


def toy_config(toy_kw: dict[str, str]) -> ToyConfig:
    """The world of these overrides, under /tmp/miniature/world-<hash of them> unless they set `root`.

    Two scripts with different overrides but the same `root` rebuild each other's world: give each its own.
    """
    tag = hashlib.sha256(json.dumps(toy_kw, sort_keys=True).encode()).hexdigest()[:8]
    return ToyConfig.model_validate({"root": f"/tmp/miniature/world-{tag}", **toy_kw})
