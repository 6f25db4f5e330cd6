"""Loaded at interpreter start-up by generation workers only (their PYTHONPATH starts with this dir).

vLLM 0.32's LLaVA module imports `_num_image_tokens` from
`transformers.models.pixtral.image_processing_pixtral`, which imports torchvision at its top. The CPU
engine env has no torchvision (PyPI's builds fail to import beside torch+cpu, DESIGN §4), so without
this, `vllm.LLM(<a LLaVA>)` fails while inspecting the architecture (in a subprocess, hence a
start-up hook rather than an import in the worker). When torchvision is missing, this serves that one
module with that one pure function (copied from transformers 5.19); any other attribute raises.
Nothing happens when torchvision is installed (GPU engine env).
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

_NAME = "transformers.models.pixtral.image_processing_pixtral"


def _num_image_tokens(image_size, patch_size):
    height, width = image_size
    ph, pw = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    return (height - 1) // ph + 1, (width - 1) // pw + 1


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module._num_image_tokens = _num_image_tokens

        def __getattr__(name):
            raise AttributeError(f"{_NAME}.{name} needs torchvision, which this engine env lacks (seva's shim serves only _num_image_tokens)")

        module.__getattr__ = __getattr__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, _Loader()) if fullname == _NAME else None


try:
    _missing = importlib.util.find_spec("torchvision") is None
except (ImportError, ValueError):
    _missing = True
if _missing:
    sys.meta_path.insert(0, _Finder())
