"""If/else inside a CUDA graph being captured: a conditional node that a device int32 picks at replay.

Why: a CUDA graph captured once must serve both precisions, and until now that meant launching
only kernels that read the mode tensor themselves (each mode paid an idle launch, and FP8 mode
could not use cuBLASLt). A conditional IF node with an ELSE body (CUDA driver >= 12.8) holds
each mode's eager launches and runs one of them per replay. torch 2.11 (the H200 box) has no
Python API for conditional nodes, so this goes to the CUDA driver through ctypes:

    cuStreamGetCaptureInfo -> the graph being captured and its current dependencies
    cuGraphConditionalHandleCreate, then a one-thread kernel that copies the flag into the handle
      (``cudaGraphSetConditional``, linked from libcudadevrt by the driver's JIT linker)
    cuGraphAddNode(conditional IF, 2 bodies); the capture continues after it
    each body: captured on a side stream with cuStreamBeginCaptureToGraph while torch's current
      stream is that side stream, so torch, Triton and cuBLASLt launches land in the body

Bodies must not allocate with torch's caching allocator (their memory would not belong to the
graph's pool): callers allocate outputs and scratch before ``if_else``.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading
from collections.abc import Callable

import torch

_SET_CONDITION_PTX = r"""
.version 7.8
.target sm_{arch}
.address_size 64
.extern .func cudaGraphSetConditional(.param .b64 handle, .param .b32 value);
.visible .entry nestedfp_set_condition(.param .u64 flag_ptr, .param .u64 handle)
{{
    .reg .b32 %r<2>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [flag_ptr];
    ld.param.u64 %rd2, [handle];
    cvta.to.global.u64 %rd3, %rd1;
    ld.global.u32 %r1, [%rd3];
    {{
    .param .b64 p0;
    st.param.b64 [p0], %rd2;
    .param .b32 p1;
    st.param.b32 [p1], %r1;
    call.uni cudaGraphSetConditional, (p0, p1);
    }}
    ret;
}}
"""

_CAPTURE_ACTIVE = 1
_NODE_TYPE_CONDITIONAL = 13
_COND_TYPE_IF = 0
_SET_CAPTURE_DEPENDENCIES = 1
_CAPTURE_MODE_RELAXED = 2
_JIT_INPUT_PTX = 1
_JIT_INPUT_LIBRARY = 4
_JIT_ERROR_LOG_BUFFER = 5
_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6


class _ConditionalParams(ctypes.Structure):
    _fields_ = [("handle", ctypes.c_uint64), ("type", ctypes.c_int), ("size", ctypes.c_uint),
                ("phGraph_out", ctypes.POINTER(ctypes.c_void_p)), ("ctx", ctypes.c_void_p)]


class _NodeParams(ctypes.Structure):
    """CUgraphNodeParams: type, 3 reserved ints, a 232-byte union, 8 reserved bytes (256 in all)."""

    class _U(ctypes.Union):
        _fields_ = [("reserved1", ctypes.c_longlong * 29), ("conditional", _ConditionalParams)]

    _anonymous_ = ("u",)
    _fields_ = [("type", ctypes.c_int), ("reserved0", ctypes.c_int * 3), ("u", _U), ("reserved2", ctypes.c_longlong)]


class ConditionalUnavailable(RuntimeError):
    pass


@functools.cache
def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def _check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: CUDA driver error {result} ({(name.value or b'?').decode()})")


def _devrt_library() -> str | None:
    """libcudadevrt.a: from torch's NVIDIA wheels, else a CUDA toolkit. None if neither is installed."""
    nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    patterns = [os.path.join(nvidia, "*", "lib", "libcudadevrt.a")]
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            patterns += [os.path.join(root, "lib64", "libcudadevrt.a"),
                         os.path.join(root, "targets", "*", "lib", "libcudadevrt.a")]
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


class _Device:
    """Per device: the context, the linked set-condition kernel, and the side stream bodies are captured on."""

    def __init__(self, index: int) -> None:
        cu = _driver()
        torch.cuda.init()
        with torch.cuda.device(index):
            torch.cuda.current_stream(index).synchronize()  # makes the primary context current here
            self.ctx = ctypes.c_void_p()
            _check(cu.cuCtxGetCurrent(ctypes.byref(self.ctx)), "cuCtxGetCurrent")
            self.function = _link_set_condition(torch.cuda.get_device_capability(index))
            self.body_stream = torch.cuda.Stream(index)


def _link_set_condition(capability: tuple[int, int]) -> ctypes.c_void_p:
    cu = _driver()
    lib = _devrt_library()
    if lib is None:
        raise ConditionalUnavailable("libcudadevrt.a not found (it ships in torch's nvidia-cuda-runtime wheel)")
    log = ctypes.create_string_buffer(8192)
    opts = (ctypes.c_int * 2)(_JIT_ERROR_LOG_BUFFER, _JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
    vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(len(log)))
    state = ctypes.c_void_p()
    _check(cu.cuLinkCreate_v2(2, opts, vals, ctypes.byref(state)), "cuLinkCreate")
    try:
        ptx = _SET_CONDITION_PTX.format(arch=f"{capability[0]}{capability[1]}").encode() + b"\0"
        r = cu.cuLinkAddData_v2(state, _JIT_INPUT_PTX, ptx, ctypes.c_size_t(len(ptx)), b"set_condition.ptx", 0,
                                None, None)
        if r == 0:
            r = cu.cuLinkAddFile_v2(state, _JIT_INPUT_LIBRARY, lib.encode(), 0, None, None)
        cubin, size = ctypes.c_void_p(), ctypes.c_size_t()
        if r == 0:
            r = cu.cuLinkComplete(state, ctypes.byref(cubin), ctypes.byref(size))
        if r != 0:
            raise ConditionalUnavailable(f"linking the set-condition kernel failed ({r}): {log.value.decode()[:500]}")
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        _check(cu.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")  # copies the image
    finally:
        cu.cuLinkDestroy(state)
    _check(cu.cuModuleGetFunction(ctypes.byref(function), module, b"nestedfp_set_condition"), "cuModuleGetFunction")
    return function


_devices: dict[int, _Device] = {}
_lock = threading.Lock()


def _device(index: int) -> _Device:
    with _lock:
        dev = _devices.get(index)
        if dev is None:
            dev = _devices[index] = _Device(index)
        return dev


@functools.cache
def available(index: int) -> bool:
    """Conditional IF/ELSE nodes work here: an NVIDIA driver >= 12.8 and the set-condition kernel links."""
    if torch.version.hip is not None:
        return False
    try:
        version = ctypes.c_int()
        _check(_driver().cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
        if version.value < 12080:
            return False
        _device(index)
    except (OSError, RuntimeError):
        return False
    return True


def _capture_info(stream: ctypes.c_void_p):
    status, cid, graph = ctypes.c_int(), ctypes.c_uint64(), ctypes.c_void_p()
    deps, edges, n = ctypes.POINTER(ctypes.c_void_p)(), ctypes.c_void_p(), ctypes.c_size_t()
    _check(_driver().cuStreamGetCaptureInfo_v3(stream, ctypes.byref(status), ctypes.byref(cid), ctypes.byref(graph),
                                               ctypes.byref(deps), ctypes.byref(edges), ctypes.byref(n)),
           "cuStreamGetCaptureInfo")
    return status.value, graph, deps, edges, n


def if_else(flag: torch.Tensor, then_fn: Callable[[], None], else_fn: Callable[[], None]) -> None:
    """Capture ``then_fn``'s launches to run at replay if ``flag`` (an int32 on the device) is nonzero,
    else ``else_fn``'s. Call while the current stream is being captured; the functions must not allocate."""
    if flag.dtype != torch.int32 or not flag.is_cuda:
        raise ValueError("the flag must be an int32 CUDA tensor")
    cu = _driver()
    dev = _device(flag.device.index or 0)
    stream = ctypes.c_void_p(torch.cuda.current_stream(flag.device).cuda_stream)
    status, graph, _, _, _ = _capture_info(stream)
    if status != _CAPTURE_ACTIVE:
        raise RuntimeError("if_else needs the current stream to be capturing a CUDA graph")
    handle = ctypes.c_uint64()
    _check(cu.cuGraphConditionalHandleCreate(ctypes.byref(handle), graph, dev.ctx, 0, 0),
           "cuGraphConditionalHandleCreate")
    flag_ptr = ctypes.c_uint64(flag.data_ptr())
    args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(flag_ptr), ctypes.c_void_p),
                                 ctypes.cast(ctypes.byref(handle), ctypes.c_void_p))
    _check(cu.cuLaunchKernel(dev.function, 1, 1, 1, 1, 1, 1, 0, stream, args, None), "cuLaunchKernel")
    _, graph, deps, edges, n = _capture_info(stream)
    params = _NodeParams(type=_NODE_TYPE_CONDITIONAL)
    params.conditional.handle = handle.value
    params.conditional.type = _COND_TYPE_IF
    params.conditional.size = 2
    params.conditional.ctx = dev.ctx
    node = ctypes.c_void_p()
    _check(cu.cuGraphAddNode_v2(ctypes.byref(node), graph, deps, edges, n, ctypes.byref(params)), "cuGraphAddNode")
    bodies = [params.conditional.phGraph_out[0], params.conditional.phGraph_out[1]]
    _check(cu.cuStreamUpdateCaptureDependencies_v2(stream, ctypes.byref(node), None, ctypes.c_size_t(1),
                                                   _SET_CAPTURE_DEPENDENCIES), "cuStreamUpdateCaptureDependencies")
    side = dev.body_stream
    side_raw = ctypes.c_void_p(side.cuda_stream)
    for body, fn in zip(bodies, (then_fn, else_fn)):
        _check(cu.cuStreamBeginCaptureToGraph(side_raw, ctypes.c_void_p(body), None, None, ctypes.c_size_t(0),
                                              _CAPTURE_MODE_RELAXED), "cuStreamBeginCaptureToGraph")
        try:
            with torch.cuda.stream(side):
                fn()
        finally:
            captured = ctypes.c_void_p()
            _check(cu.cuStreamEndCapture(side_raw, ctypes.byref(captured)), "cuStreamEndCapture")
