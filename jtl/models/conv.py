"""Convolution for flax `nn.Conv(conv_general_dilated=...)`: XLA's, except the CPU weight gradient.

Why: XLA's CPU backend computes the weight gradient of a convolution (the backward "filter"
convolution) far below its matmul speed; measured here for ResNet-18 at batch 64, 32x32x64 3x3:
~1.7 s at ~3 GFLOP/s, against ~70 ms for the forward conv of the same size (docs/speed.md).
The same gradient written as one matmul per kernel tap,

    dW[i, j] = sum_{n, h, w} x_pad[n, h*s + i, w*s + j, :]^T  dy[n, h, w, :],

runs at matmul speed. On CPU, plain convolutions (NHWC/HWIO, no groups, no dilation) therefore
get a `custom_vjp` whose forward pass and input gradient are XLA's own and whose weight gradient
is those matmuls: the same sums in a different order (float32 agreement ~1e-6 relative). Every
other backend, and every other kind of convolution, is `lax.conv_general_dilated` unchanged.

Depthwise convolutions (`feature_group_count` = input channels = output channels, as in
MobileNet/EfficientNet) are even further off on XLA's CPU backend: measured here, a 3x3 depthwise
conv at batch 128, 32x32x96 takes ~300 ms forward and ~3.2 s forward+backward. Written as a sum
over kernel taps of shifted slices times a per-channel weight, XLA fuses it into one elementwise
loop and autodiff yields elementwise gradients: ~32 ms and ~190 ms (docs/speed.md). On CPU,
depthwise convolutions take that form; the sums are the same, in a different order.

Which weight gradient is faster depends on the CPU, so it is measured, not assumed. On an AVX2
EPYC (docs/speed.md, 2026-11) XLA's filter convolutions ran at ~3 GFLOP/s and the matmuls won
2.1x on ResNet-18; on an AVX-512 EPYC (Zen 5) XLA's own ran ResNet-18 2.2x and ResNet-20 3.5x
*faster* than the matmuls. `JTL_CPU_CONV` (read when a step is traced) picks the path:

- `auto` (default): the depthwise shift-sums, plus the matmul weight gradients only where a
  one-time probe on this machine (`probe_matmul_wgrad`, ~1 s, cached per CPU model and jaxlib
  in `$JTL_DATA_DIR/cpu_conv_probe.json`) measured them faster than XLA's;
- `matmul`: both CPU paths, unconditionally;
- `xla`: neither (XLA's convolutions everywhere), for comparisons.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)
Pads = tuple[tuple[int, int], tuple[int, int]]


_MODES = ("auto", "matmul", "xla")
_PROBE_FILE = "cpu_conv_probe.json"
# (spatial size, channels in, channels out) at batch 32: a wide early ResNet layer, where XLA's
# filter convolution was slowest on the AVX2 machine, and a narrow one as in cnn_small/ResNet-20.
_PROBE_SHAPES = ((32, 64, 64), (14, 32, 48))
_probe_memo: dict[str, bool] = {}


def cpu_conv_mode() -> str:
    """`JTL_CPU_CONV` (auto, matmul or xla); anything else is an error naming the choices."""
    mode = os.environ.get("JTL_CPU_CONV", "auto") or "auto"
    if mode not in _MODES:
        raise ValueError(f"JTL_CPU_CONV={mode!r}: use one of {', '.join(_MODES)}")
    return mode


def cpu_paths_enabled() -> bool:
    """jtl's CPU convolutions apply at all: CPU backend and not switched off (JTL_CPU_CONV=xla)."""
    return jax.default_backend() == "cpu" and cpu_conv_mode() != "xla"


def cpu_matmul_wgrad_enabled() -> bool:
    """Plain convs take the matmul weight gradient: forced (`matmul`) or measured faster."""
    if not cpu_paths_enabled():
        return False
    return cpu_conv_mode() == "matmul" or probe_matmul_wgrad()


def _machine_key() -> str:
    """CPU model + ISA flags + jaxlib + XLA flags: what decides which weight gradient is faster."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = " ".join(sorted(f for f in line.split()[2:] if f.startswith("avx")))
                break
    except OSError:
        pass
    return f"{model} | {flags} | jaxlib {jax.lib.__version__} | {os.environ.get('XLA_FLAGS', '')}"


def _time_wgrads(reps: int = 5) -> tuple[float, float]:
    """Median seconds of XLA's and the matmul weight gradients over `_PROBE_SHAPES`, interleaved."""
    rng = np.random.default_rng(0)
    fns = []
    pads = ((1, 1), (1, 1))
    for hw, ci, co in _PROBE_SHAPES:
        x = jnp.asarray(rng.normal(size=(32, hw, hw, ci)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(32, hw, hw, co)), jnp.float32)

        def xla(x: jax.Array, dy: jax.Array, ci: int = ci, co: int = co) -> jax.Array:
            w = jnp.zeros((3, 3, ci, co), x.dtype)
            return jax.vjp(lambda w_: _conv(x, w_, (1, 1), pads), w)[1](dy)[0]

        def mm(x: jax.Array, dy: jax.Array) -> jax.Array:
            return weight_grad(x, dy, (3, 3), (1, 1), pads)

        fns.append((jax.jit(xla), jax.jit(mm), x, dy))
    totals: dict[str, list[float]] = {"xla": [], "matmul": []}
    for rep in range(reps + 1):
        t_x = t_m = 0.0
        for f_x, f_m, x, dy in fns:
            for name, f in (("xla", f_x), ("matmul", f_m)):
                t = time.perf_counter()
                f(x, dy).block_until_ready()
                if name == "xla":
                    t_x += time.perf_counter() - t
                else:
                    t_m += time.perf_counter() - t
        if rep:  # the first round compiles
            totals["xla"].append(t_x)
            totals["matmul"].append(t_m)
    return float(np.median(totals["xla"])), float(np.median(totals["matmul"]))


def probe_matmul_wgrad(cache: Path | None = None) -> bool:
    """True when the matmul weight gradient beat XLA's on this machine (measured once, cached)."""
    key = _machine_key()
    if key in _probe_memo:
        return _probe_memo[key]
    from jtl.runtime.paths import cache_dir, write_text_atomic

    path = cache or cache_dir() / _PROBE_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key not in known:
        # Usually called while a step is being traced: measure on concrete arrays, outside it.
        with jax.ensure_compile_time_eval():
            t_xla, t_mm = _time_wgrads()
        known[key] = {"xla_s": t_xla, "matmul_s": t_mm, "matmul_wgrad": t_mm < t_xla}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(known, indent=1) + "\n")
        except OSError:  # a read-only cache only costs a re-probe in the next process
            pass
    _probe_memo[key] = bool(known[key]["matmul_wgrad"])
    return _probe_memo[key]


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if ndim != 4:
        return False
    if dimension_numbers is None:  # lax's default is NCHW/OIHW
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, _NHWC))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def weight_grad(
    x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], pads: Pads
) -> jax.Array:
    """d(conv(x, w))/dw contracted with `dy`, as one (Cin x NHW) @ (NHW x Cout) matmul per tap."""
    kh, kw = kernel_hw
    sh, sw = strides
    n, _, _, ci = x.shape
    ho, wo, co = dy.shape[1:]
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    dyf = dy.reshape(-1, co)
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, ci),
                (1, sh, sw, 1),
            )
            taps.append(
                lax.dot_general(
                    xs.reshape(-1, ci),
                    dyf,
                    (((0,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32,
                )
            )
    return jnp.stack(taps).reshape(kh, kw, ci, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_wgrad(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads
) -> jax.Array:
    """NHWC/HWIO convolution whose weight gradient is `weight_grad` (see the module docstring)."""
    return _conv(x, w, strides, pads)


def _fwd(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> Any:
    return _conv(x, w, strides, pads), (x, w)


def _bwd(strides: tuple[int, int], pads: Pads, res: Any, g: jax.Array) -> tuple[Any, Any]:
    x, w = res
    # XLA's own input gradient: the transpose of the (linear in x) convolution.
    (dx,) = jax.linear_transpose(lambda x_: _conv(x_, w, strides, pads), x)(g)
    dw = weight_grad(x, g, w.shape[:2], strides, pads).astype(w.dtype)
    return dx, dw


conv_matmul_wgrad.defvjp(_fwd, _bwd)


def depthwise_shift_sum(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads
) -> jax.Array:
    """NHWC depthwise conv (w: [kh, kw, 1, C]) as sum_{i,j} x_pad[:, i::s, j::s, :] * w[i, j]."""
    kh, kw, _, c = w.shape
    sh, sw = strides
    n, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (h + sum(pads[0]) - kh) // sh + 1
    wo = (wd + sum(pads[1]) - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            end = (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c)
            xs = lax.slice(xp, (0, i, j, 0), end, (1, sh, sw, 1))
            tap = xs * w[i, j, 0]
            out = tap if out is None else out + tap
    return out


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (see the module docstring for when it differs)."""
    simple = (
        _is_nhwc(dimension_numbers, lhs.ndim)
        and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
    )
    depthwise = (
        feature_group_count > 1
        and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
        and rhs.shape[2] == 1
    )
    wanted = (depthwise and cpu_paths_enabled()) or (
        feature_group_count == 1 and cpu_matmul_wgrad_enabled()
    )
    if simple and wanted:
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):
            pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        else:
            pads = padding
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        if depthwise:
            return depthwise_shift_sum(lhs, rhs, strides, pads)
        return conv_matmul_wgrad(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
