"""What kind of failure an exception is, as the harness records it: "oom" when the process
could not get memory (whichever framework said so, in whatever words), else "error".

Used by the worker (its answers carry {"kind": classify(e)}) and by in-process callers
(cli case run); nothing here imports a framework: exceptions are recognised by their class
names along the MRO and by the allocators' own messages."""
from __future__ import annotations

import re

# class names (anywhere in the MRO) that mean "out of memory"
_OOM_CLASSES = {
    "MemoryError",  # Python, NumPy ("Unable to allocate 29.1 TiB for an array")
    "OutOfMemoryError",  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError
    "ResourceExhaustedError",  # tensorflow.errors.ResourceExhaustedError
}

# messages that mean "out of memory" whatever the exception's class (RuntimeError, XlaRuntimeError)
_OOM_MESSAGES = re.compile(
    r"DefaultCPUAllocator: can't allocate memory"  # torch's CPU allocator
    r"|CUDA out of memory|CUDA error: out of memory|out of memory"  # torch/cuDNN/cuBLAS on a GPU
    r"|RESOURCE_EXHAUSTED"  # XLA (jax, tensorflow-xla) status code
    r"|\bOOM when allocating"  # tensorflow's allocator
    r"|Unable to allocate [0-9.]+ ?[KMGTPE]?i?B"  # NumPy, when re-raised under another class
    r"|failed to allocate memory|std::bad_alloc|Cannot allocate memory",
    re.IGNORECASE)


def classify(exc: BaseException) -> str:
    """"oom" if `exc` (or an exception it was raised from) is an allocation failure, else "error"."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # follow `raise ... from` chains, once each
        seen.add(id(e))
        if any(k.__name__ in _OOM_CLASSES for k in type(e).__mro__):
            return "oom"
        if classify_message(str(e)) == "oom":
            return "oom"
        e = e.__cause__ or e.__context__
    return "error"


def classify_message(message: str) -> str:
    """The same judgement from an error's text alone ("TypeName: message" as a worker reports it)."""
    head = message.split(":", 1)[0].strip()
    if head in _OOM_CLASSES or head.rpartition(".")[2] in _OOM_CLASSES:
        return "oom"
    return "oom" if _OOM_MESSAGES.search(message) else "error"
