"""Count the operations a decoding search dispatches per frame (the CPU proxy for GPU launches).

On a GPU a search frame costs about one kernel launch (5-10 us eager) per operation that does
device work, whatever the batch size, so the number of such operations per frame bounds how
fast a search can run there. :func:`kernel_ops` runs a function under the torch profiler on the
CPU and counts them with this rule:

* an event counts when it is an ``aten::`` operation that is not in :data:`NO_KERNEL` (views,
  metadata, allocation and dtype/device no-ops, which launch nothing) and none of whose
  ``aten::`` descendants counts: a composite operation counts as the kernels it is made of
  (``masked_fill`` = ``clone``'s ``copy_`` + ``masked_fill_``), a plain one as itself;
* an operation in :data:`ONE_KERNEL` (sorts, reductions, lookups, matrix products,
  convolutions) counts once, whatever it calls inside (the CPU reductions' output ``fill_``, a
  sort's ``copy_`` of its input, ``addmm``'s copy of the bias);
* a Python number given to an operation is wrapped as a 0-dim CPU tensor and converted to the
  operation's dtype on the host (``aten::scalar_tensor``, and an ``aten::to`` of a 0-dim tensor
  inside another operation): TensorIterator passes such scalars to the kernel as arguments,
  so no kernel and no copy happen on a GPU, and these subtrees are skipped.

:func:`ops_per_frame` runs a search at two lengths and divides the difference by the difference
in frames: what the frame loop costs, without the set-up and read-back around it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from torch.profiler import ProfilerActivity, profile

#: operations that launch no device kernel: views, metadata, allocation, no-op conversions
NO_KERNEL = frozenset(
    "aten::" + name
    for name in (
        "empty", "empty_strided", "empty_like", "as_strided", "view", "_reshape_alias", "reshape",
        "expand", "expand_as", "unsqueeze", "squeeze", "select", "slice", "narrow", "transpose",
        "permute", "t", "alias", "detach", "detach_", "lift_fresh", "resolve_conj", "resolve_neg",
        "_unsafe_view", "unfold", "resize_", "to", "_to_copy", "contiguous", "clone", "result_type",
        "split", "chunk", "unbind", "view_as", "flatten", "movedim", "diagonal", "set_", "numpy_T",
        "split_with_sizes", "is_nonzero", "_has_compatible_shallow_copy_type", "lift_fresh_copy",
        "as_strided_", "squeeze_", "unsqueeze_", "real", "imag",
    )
)

#: operations counted as one kernel, without looking inside
ONE_KERNEL = frozenset(
    "aten::" + name
    for name in (
        "sort", "topk", "amax", "amin", "max", "min", "any", "all", "sum", "argmax", "argmin",
        "searchsorted", "cumsum", "scatter_reduce_", "kthvalue", "median",
        "addmm", "mm", "bmm", "baddbmm", "addmv", "mv", "matmul", "mkldnn_convolution", "convolution",
    )
)

#: a Python number made a 0-dim CPU tensor for an operation (no device work on a GPU)
HOST_SCALARS = frozenset({"aten::scalar_tensor", "aten::wrapped_scalar_tensor"})


def _host_scalar(event) -> bool:
    if event.name in HOST_SCALARS:
        return True
    nested = event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::")
    shapes = getattr(event, "input_shapes", None) or []
    return nested and event.name == "aten::to" and bool(shapes) and list(shapes[0]) == []


def _kernel_events(events) -> Counter:
    counted: Counter = Counter()

    def visit(event, under_host_scalar: bool) -> bool:
        """Counts ``event``'s subtree; True when something in it counted."""
        is_aten = event.name.startswith("aten::")
        host = under_host_scalar or _host_scalar(event)
        if not host and event.name in ONE_KERNEL:
            counted[event.name] += 1
            return True
        inner = False
        for child in event.cpu_children:
            inner = visit(child, host) or inner
        if host or not is_aten or event.name in NO_KERNEL or inner:
            return inner
        counted[event.name] += 1
        return True

    for event in events:
        if event.cpu_parent is None:
            visit(event, False)
    return counted


def kernel_ops(fn: Callable[[], object]) -> Counter:
    """The kernel-launching operations ``fn()`` dispatches, by name (the module's rule)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return _kernel_events(prof.events())


def ops_per_frame(run: Callable[[int], object], short: int, long: int) -> tuple[float, Counter]:
    """Kernel operations per frame of ``run(frames)``: the difference between ``run(long)`` and
    ``run(short)`` divided by ``long - short``; also that difference by operation name."""
    if long <= short:
        raise ValueError(f"long ({long}) must exceed short ({short})")
    run(short)  # warm caches (first-call allocations, lazy imports)
    a, b = kernel_ops(lambda: run(short)), kernel_ops(lambda: run(long))
    diff = Counter(b)
    diff.subtract(a)
    diff = Counter({k: v for k, v in diff.items() if v})
    return sum(diff.values()) / (long - short), diff
