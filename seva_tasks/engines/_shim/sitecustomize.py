"""Loaded at interpreter start-up by generation workers only (their PYTHONPATH starts with this dir).

vLLM 0.32's LLaVA module imports `_num_image_tokens` from
`transformers.models.pixtral.image_processing_pixtral`, which imports torchvision at its top. The CPU
engine env has no torchvision (PyPI's builds fail to import beside torch+cpu, DESIGN §4), so without
this, `vllm.LLM(<a LLaVA>)` fails while inspecting the architecture (in a subprocess, hence a
start-up hook rather than an import in the worker). When torchvision is missing, this serves that one
module with that one pure function (copied from transformers 5.19); any other attribute raises.
Nothing happens when torchvision is installed (GPU engine env).

vLLM 0.32's Qwen2-VL needs transformers' Qwen2-VL image processor, which is torchvision code, so a CPU
engine env that runs Qwen2-VL has PyPI's `torchvision==0.28.0` (the build for torch 2.13). Its CUDA
extension does not load beside torch+cpu, and `torchvision._meta_registrations` then fails on
`register_fake("torchvision::nms")`. So, when `torchvision` is first imported and its extension does
not load, this defines the two op schemas (`nms`, `qnms`) that module registers fakes for (DESIGN §4,
measured): the Python transforms work, the C ops (nms, roi_align) stay unusable and unused.
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


class _TorchvisionOps(importlib.abc.MetaPathFinder):
    """On the first `import torchvision`: load its extension, or define the op schemas it would have."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)  # once; the regular finders then import torchvision itself
            _define_missing_ops()
        return None


_LIBS = []  # a torch.library.Library deregisters its ops when collected


def _define_missing_ops():
    import pathlib

    import torch

    spec = importlib.util.find_spec("torchvision")
    for ext in pathlib.Path(spec.origin).parent.glob("_C*.so"):
        try:
            torch.ops.load_library(str(ext))
            return  # a working build: its ops are real
        except OSError:
            break
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


try:
    _missing = importlib.util.find_spec("torchvision") is None
except (ImportError, ValueError):
    _missing = True
if _missing:
    sys.meta_path.insert(0, _Finder())
else:
    sys.meta_path.insert(0, _TorchvisionOps())
