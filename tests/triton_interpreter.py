"""Run Triton kernels on the CPU: TRITON_INTERPRET=1 where there is no CUDA, and fixes for two gaps
of Triton 3.6's interpreter. Import this before any kernel module (conftest.py does, first)."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


def _patch_interpreter() -> None:
    """Two gaps of Triton 3.6's interpreter that the compiled kernels do not have.

    - A loop bound loaded from memory is a 1-element array, and NumPy >= 2.4 refuses int() of it
      (triton-lang/triton#9171, fixed after 3.6): index through a 0-d view instead.
    - tl.dot on bfloat16 multiplies the raw uint16 bit patterns (triton-lang/triton#11584):
      widen bfloat16 operands to float32 first, as the GPU's tensor cores effectively do.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    create_dot = getattr(getattr(interpreter, "InterpreterBuilder", None), "create_dot", None)
    if patch_tensor is None or create_dot is None or getattr(patch_tensor, "pagedchat_fixed", False):
        return  # another Triton version: its interpreter is taken as it is

    def patched_tensor(tensor: type, scope: object) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    def widen(h: interpreter.TensorHandle) -> interpreter.TensorHandle:
        if h.dtype.scalar != tl.bfloat16:
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    patched_tensor.pagedchat_fixed = True
    interpreter._patch_lang_tensor = patched_tensor
    interpreter.InterpreterBuilder.create_dot = patched_dot


def _interpret_triton_library() -> None:
    """Triton's own library (tl.max, tl.sum, tl.zeros, ...) is @triton.jit code too, wrapped when triton
    is first imported. In a whole-suite run transformers imports triton (via torch._dynamo) before
    this module sets TRITON_INTERPRET, leaving compiled-mode functions that the interpreter refuses
    to call; wrap them again as interpreted ones. (Setting TRITON_INTERPRET in conftest.py, before
    anything imports triton, would make this a no-op.)"""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for name, fn in list(vars(tl.standard).items()):
        if isinstance(fn, JITFunction):
            wrapped = InterpretedFunction(fn.fn)
            setattr(tl.standard, name, wrapped)
            if getattr(tl, name, None) is fn:
                setattr(tl, name, wrapped)


def enable() -> None:
    """Apply the interpreter fixes (once; a no-op with CUDA or without triton)."""
    if not INTERPRET:
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    _patch_interpreter()
    _interpret_triton_library()


enable()
