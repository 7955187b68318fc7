"""A bounds-checked, order-permuting mode of the Triton interpreter, for the tests.

While a :class:`Checker` is active (``with Checker(): ...``, or the ``bounds_checker`` fixture
of ``tests/conftest.py``), every launch the interpreter runs is watched:

* **Bounds.** Every load and store, on the lanes where its mask is true, must fall inside one of
  the tensor arguments of that launch, each taken as the view it is (its storage offset, sizes
  and strides: the byte ranges its elements cover, not its whole storage). The standardisation
  reads views 1..3 of a call at offsets from view 0, so the input views of the call are allowed
  ranges of that launch too. An access outside raises :class:`BoundsViolation` before it is
  carried out, naming the kernel, the program id, the argument nearest to the address and the
  offset from it. Which argument a pointer was computed from is not followed: an access that
  lands in another argument of the launch passes here (the order check sees it when another
  program touches the same bytes).
* **Order.** The programs of a launch run in the natural order of the interpreter, reversed, or
  in a fixed random permutation (``Checker.order``). After each launch, a byte that one program
  writes and another program of the same launch reads or writes is reported as
  :class:`OrderDependence`: the GPU runs the programs in no promised order.
* **Counters.** Masked-in loads and stores checked, launches, programs and the kernels (and their
  constexpr variants) run, for the summary line of the test session.

The hooks are the interpreter's own entry points, patched in one place (:func:`_install`):
``InterpreterBuilder.create_masked_load`` / ``create_masked_store`` (which ``create_load``,
``create_store``, the tensor-pointer and descriptor loads and the atomic loads and stores all go
through), ``create_atomic_rmw`` / ``create_atomic_cas``, ``set_grid_dim`` / ``set_grid_idx``
(the grid loop of ``GridExecutor.__call__`` announces each program there: the permutation maps
the loop's index to the program that runs), ``GridExecutor._init_args_hst`` (the arguments as
the kernel sees them) and ``GridExecutor.__call__`` (one launch). Checked on triton 3.9.0 and
3.5.1 (with numpy 2.3.5); :data:`SUPPORTED` is False (with :data:`UNSUPPORTED_REASON`) where
those entry points are missing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
    import triton.runtime.interpreter as interp
except ImportError:  # pragma: no cover - the Triton path's tests skip without triton
    triton = tl = interp = None

ORDERS = ("natural", "reversed", "permuted")
#: the seed of the fixed random permutation of each launch (with the grid size)
PERMUTATION_SEED = 20240521

_BUILDER_HOOKS = (
    "create_masked_load",
    "create_masked_store",
    "create_atomic_rmw",
    "create_atomic_cas",
    "set_grid_dim",
    "set_grid_idx",
)
_EXECUTOR_HOOKS = ("__call__", "_init_args_hst")


def _support() -> tuple[bool, str]:
    if interp is None:
        return False, "triton does not import"
    builder = getattr(interp, "InterpreterBuilder", None)
    executor = getattr(interp, "GridExecutor", None)
    if builder is None or executor is None or not hasattr(interp, "interpreter_builder"):
        return False, f"triton {triton.__version__}: no InterpreterBuilder / GridExecutor"
    missing = [n for n in _BUILDER_HOOKS if not hasattr(builder, n)]
    missing += [f"GridExecutor.{n}" for n in _EXECUTOR_HOOKS if not hasattr(executor, n)]
    if missing:
        return False, f"triton {triton.__version__}: the interpreter lacks {', '.join(missing)}"
    return True, ""


SUPPORTED, UNSUPPORTED_REASON = _support()


class BoundsViolation(AssertionError):
    """A masked-in load or store outside every tensor argument of its launch."""


class OrderDependence(AssertionError):
    """A byte that one program of a launch writes and another program of it reads or writes."""


# ---------------------------------------------------------------- the extent of an argument


@dataclass
class Region:
    """One tensor argument (or input view) of a launch: the byte ranges its elements cover."""

    name: str
    start: int  # data_ptr
    itemsize: int
    dtype: str
    numel: int
    lo: np.ndarray  # sorted starts of its runs of contiguous elements (bytes, uint64)
    hi: np.ndarray  # their ends (exclusive)

    @property
    def end(self) -> int:
        return int(self.hi[-1]) if len(self.hi) else self.start

    def distance(self, address: int, size: int) -> int:
        """How far [address, address + size) reaches outside the nearest run (0: inside one)."""
        if not len(self.lo):
            return abs(address - self.start)
        lo = self.lo.astype(np.int64)
        hi = self.hi.astype(np.int64)
        return int(np.maximum(np.maximum(lo - address, address + size - hi), 0).min())

    def describe(self) -> str:
        """``name (dtype, elements, extent)``, the extent in bytes from its start."""
        extent = f"[0, {self.end - self.start}) B"
        if len(self.lo) > 1:
            extent = f"{len(self.lo)} runs in {extent}"
        return f"{self.name} ({self.dtype}, {self.numel} elements, {extent})"


def region_of(name: str, tensor: torch.Tensor) -> Region | None:
    """The bytes a tensor view covers: one interval when its elements are dense, else the runs of
    contiguous elements its sizes and strides address (gaps between rows are outside it)."""
    numel = tensor.numel()
    if numel == 0:
        return None
    itemsize = tensor.element_size()
    start = tensor.data_ptr()
    sizes, strides = list(tensor.shape), list(tensor.stride())
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(sizes, strides, strict=True))
    dtype = str(tensor.dtype).replace("torch.", "")
    if span == numel and all(st >= 0 for st in strides):
        lo = np.array([start], dtype=np.uint64)
        hi = np.array([start + numel * itemsize], dtype=np.uint64)
        return Region(name, start, itemsize, dtype, numel, lo, hi)
    offsets = np.zeros((1,), dtype=np.int64)
    for size, stride in zip(sizes, strides, strict=True):
        offsets = (offsets[:, None] + np.arange(size, dtype=np.int64)[None, :] * stride).ravel()
    offsets = np.unique(offsets)
    breaks = np.flatnonzero(np.diff(offsets) != 1) + 1
    first = offsets[np.r_[0, breaks]]
    last = offsets[np.r_[breaks - 1, len(offsets) - 1]]
    lo = (start + first * itemsize).astype(np.uint64)
    hi = (start + (last + 1) * itemsize).astype(np.uint64)
    return Region(name, start, itemsize, dtype, numel, lo, hi)


def _tensors(name: str, value) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one kernel argument (tuples and tensor descriptors opened)."""
    if isinstance(value, tuple):
        for k, item in enumerate(value):
            yield from _tensors(f"{name}[{k}]", item)
        return
    if hasattr(value, "base") and hasattr(value, "block_shape"):  # a TensorDescriptor
        yield from _tensors(f"{name}.base", value.base)
        return
    if triton is not None and isinstance(value, triton.runtime.jit.TensorWrapper):
        value = value.base
    if isinstance(value, torch.Tensor):
        yield name, value


def _union(regions: Sequence[Region]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint byte intervals covered by the regions (only overlapping runs merge: an
    access that straddles two adjacent arguments is outside both)."""
    if not regions:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    lo = np.concatenate([r.lo for r in regions])
    hi = np.concatenate([r.hi for r in regions])
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    out_lo, out_hi = [int(lo[0])], [int(hi[0])]
    for a, b in zip(lo[1:].tolist(), hi[1:].tolist(), strict=True):
        if a < out_hi[-1]:
            out_hi[-1] = max(out_hi[-1], b)
        else:
            out_lo.append(a)
            out_hi.append(b)
    return np.array(out_lo, dtype=np.uint64), np.array(out_hi, dtype=np.uint64)


# ---------------------------------------------------------------- one launch


@dataclass
class Launch:
    """What the checker knows of the launch being run."""

    kernel: str
    arg_names: list[str]
    constexprs: list[str]
    regions: list[Region] = field(default_factory=list)
    lo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    hi: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    grid: tuple[int, int, int] = (1, 1, 1)
    permutation: np.ndarray | None = None
    program: tuple[int, int, int] = (0, 0, 0)
    variant: tuple = ()
    # accesses of the launch: (byte addresses, element size, linear program id)
    reads: list[tuple[np.ndarray, int, int]] = field(default_factory=list)
    writes: list[tuple[np.ndarray, int, int]] = field(default_factory=list)

    def linear(self, program: tuple[int, int, int]) -> int:
        _, ny, nz = self.grid
        return (program[0] * ny + program[1]) * nz + program[2]

    def unravel(self, k: int) -> tuple[int, int, int]:
        _, ny, nz = self.grid
        return (k // (ny * nz), (k // nz) % ny, k % nz)

    def locate(self, address: int) -> str:
        """``name + offset`` of the argument an address lies in (for the order messages)."""
        for region in self.regions:
            if region.distance(address, 1) == 0:
                return f"{region.name} + {address - region.start} B"
        return hex(address)


# ---------------------------------------------------------------- the checker


@dataclass
class Totals:
    """Counters of everything checked (summed over the checkers of a session and its workers)."""

    loads: int = 0
    stores: int = 0
    atomics: int = 0
    launches: int = 0
    programs: int = 0
    kernels: Counter = field(default_factory=Counter)
    variants: Counter = field(default_factory=Counter)
    orders: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def add(self, other: Totals) -> None:
        self.loads += other.loads
        self.stores += other.stores
        self.atomics += other.atomics
        self.launches += other.launches
        self.programs += other.programs
        self.kernels.update(other.kernels)
        self.variants.update(other.variants)
        self.orders.update(other.orders)
        self.violations.extend(other.violations)

    def as_dict(self) -> dict:
        return {
            "loads": self.loads, "stores": self.stores, "atomics": self.atomics,
            "launches": self.launches, "programs": self.programs,
            "kernels": dict(self.kernels), "variants": dict(self.variants),
            "orders": dict(self.orders), "violations": list(self.violations),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Totals:
        return cls(
            data["loads"], data["stores"], data["atomics"], data["launches"], data["programs"],
            Counter(data["kernels"]), Counter(data["variants"]), Counter(data["orders"]),
            list(data["violations"]),
        )  # fmt: skip

    def summary(self) -> str:
        kernels = ", ".join(f"{k} x{n}" for k, n in sorted(self.kernels.items()))
        return (
            f"{self.loads + self.stores + self.atomics} masked-in accesses checked "
            f"({self.loads} loaded, {self.stores} stored, {self.atomics} atomic elements) in "
            f"{self.launches} launches, {self.programs} programs "
            f"(orders: {dict(sorted(self.orders.items()))}); {len(self.kernels)} kernels, "
            f"{len(self.variants)} constexpr variants: {kernels}; "
            f"{len(self.violations)} violations"
        )


#: everything checked in this process (the session summary reads it)
SESSION = Totals()


class Checker:
    """The bounds-checked, order-permuting interpreter mode, while active (``with``)."""

    def __init__(self, order: str = "natural", seed: int = PERMUTATION_SEED, races: bool = True,
                 report: bool = True, collect: bool = False) -> None:  # fmt: skip
        """``races``: look for order-dependent accesses after each launch; ``report``: add the
        counters to the session's summary (off for the checker's own tests of planted faults);
        ``collect``: record violations and go on (the lanes outside are masked off, not carried
        out) instead of raising, so that ranks of a process group reach their collectives."""
        if not SUPPORTED:
            raise RuntimeError(f"the bounds checker does not support this triton: "
                               f"{UNSUPPORTED_REASON}")  # fmt: skip
        self.order = order
        self.seed = seed
        self.races = races
        self.report = report
        self.collect = collect
        self.totals = Totals()
        self._launch: Launch | None = None
        self._views: list[Region] = []

    # -- activation

    def __enter__(self) -> Checker:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("a bounds checker is already active")
        _install()
        _ACTIVE = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        _ACTIVE = None
        if self.report:
            SESSION.add(self.totals)

    @contextlib.contextmanager
    def ordered(self, order: str) -> Iterator[None]:
        """Run the launches of the block in ``order`` ("natural", "reversed", "permuted")."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        before, self.order = self.order, order
        try:
            yield
        finally:
            self.order = before

    @contextlib.contextmanager
    def input_views(self, views: Sequence[torch.Tensor]) -> Iterator[None]:
        """The input views of a call: allowed ranges of the launches in the block."""
        before = self._views
        self._views = [r for u, v in enumerate(views)
                       if (r := region_of(f"input view {u}", v)) is not None]  # fmt: skip
        try:
            yield
        finally:
            self._views = before

    # -- one launch

    def begin(self, executor) -> None:
        if self._launch is not None:
            raise RuntimeError("a launch inside a launch")
        name = getattr(executor.fn, "__name__", "kernel")
        self._launch = Launch(name, list(executor.arg_names), list(executor.constexprs))

    def arguments(self, args_hst, kwargs_hst) -> None:
        launch = self._launch
        if launch is None:
            return
        values = dict(zip(launch.arg_names, args_hst, strict=False))
        values.update(kwargs_hst)
        regions = [r for name, value in values.items() for tname, t in _tensors(name, value)
                   if (r := region_of(tname, t)) is not None]  # fmt: skip
        regions += self._views
        launch.regions = regions
        launch.lo, launch.hi = _union(regions)
        variant = tuple(sorted((k, repr(values[k])) for k in launch.constexprs if k in values))
        launch.variant = variant

    def grid(self, nx: int, ny: int, nz: int) -> None:
        launch = self._launch
        if launch is None:
            return
        launch.grid = (nx, ny, nz)
        total = nx * ny * nz
        if self.order == "reversed":
            launch.permutation = np.arange(total)[::-1]
        elif self.order == "permuted":
            launch.permutation = np.random.default_rng([self.seed, total]).permutation(total)
        else:
            launch.permutation = None

    def program(self, x: int, y: int, z: int) -> tuple[int, int, int]:
        launch = self._launch
        if launch is None:
            return (x, y, z)
        if launch.permutation is not None:
            k = int(launch.permutation[launch.linear((x, y, z))])
            x, y, z = launch.unravel(k)
        launch.program = (x, y, z)
        self.totals.programs += 1
        return (x, y, z)

    def end(self, ok: bool) -> None:
        launch, self._launch = self._launch, None
        if launch is None or not ok:
            return
        self.totals.launches += 1
        self.totals.kernels[launch.kernel] += 1
        self.totals.variants[f"{launch.kernel}{dict(launch.variant)}"] += 1
        self.totals.orders[self.order] += 1
        if self.races:
            self._check_order(launch)

    # -- accesses

    def access(self, kind: str, ptrs, mask, size: int) -> np.ndarray | None:
        """Check the masked-in lanes of one access (``kind``: "load", "store", "atomic"). Returns
        None, or (``collect``, a violation) the mask with the lanes outside turned off."""
        launch = self._launch
        if launch is None:
            return None
        every = np.asarray(ptrs.data)
        selected = np.ones(every.shape, dtype=bool)
        if mask is not None:
            selected = np.broadcast_to(np.asarray(mask.data, dtype=bool), every.shape)
        addresses = every[selected].astype(np.uint64, copy=False).ravel()
        count = addresses.size
        if kind == "load":
            self.totals.loads += count
        elif kind == "store":
            self.totals.stores += count
        else:
            self.totals.atomics += count
        if not count:
            return None
        index = np.searchsorted(launch.lo, addresses, side="right").astype(np.int64) - 1
        inside = index >= 0
        inside &= addresses + np.uint64(size) <= launch.hi[np.maximum(index, 0)]
        corrected = None
        if not inside.all():
            bad = addresses[~inside]
            self._violation(launch, kind, int(bad[0]), size, int(bad.size), count)
            corrected = selected.copy()
            corrected[selected] = inside.reshape(-1)
            addresses = addresses[inside]
        if self.races:
            pid = launch.linear(launch.program)
            if kind in ("load", "atomic"):
                launch.reads.append((addresses, size, pid))
            if kind in ("store", "atomic"):
                launch.writes.append((addresses, size, pid))
        return corrected

    def _violation(self, launch: Launch, kind: str, address: int, size: int, bad: int,
                   count: int) -> None:  # fmt: skip
        regions = launch.regions
        if regions:
            nearest = min(regions, key=lambda r: r.distance(address, size))
            offset = address - nearest.start
            where = f"{nearest.name} + {offset} B"
            if offset % nearest.itemsize == 0:
                where += f" (element {offset // nearest.itemsize})"
            if address < nearest.start:
                how = "before its start"
            elif address + size > nearest.end:
                how = "past its end"
            else:
                how = "in a gap between its elements"
            detail = f"{how}; the nearest argument is {nearest.describe()}"
        else:
            where, detail = hex(address), "the launch has no tensor argument"
        message = (
            f"out-of-bounds {kind} in {launch.kernel}, program {launch.program}: {size} B at "
            f"{where}; {detail}; {bad} of {count} masked-in lanes outside every argument"
        )
        self.totals.violations.append(message)
        if not self.collect:
            raise BoundsViolation(message)

    def _check_order(self, launch: Launch) -> None:
        """A byte written by one program and read or written by another of the same launch."""
        if not launch.writes:
            return
        w_addr, w_pid = _bytes(launch.writes)
        order = np.argsort(w_addr, kind="stable")
        w_addr, w_pid = w_addr[order], w_pid[order]
        starts = np.flatnonzero(np.r_[True, w_addr[1:] != w_addr[:-1]])
        unique = w_addr[starts]
        first = np.minimum.reduceat(w_pid, starts)
        last = np.maximum.reduceat(w_pid, starts)
        clash = np.flatnonzero(first != last)
        if clash.size:
            k = clash[0]
            self._order_violation(launch, int(unique[k]), "writes", int(first[k]),
                                  int(last[k]), int(clash.size))  # fmt: skip
        if not launch.reads:
            return
        r_addr, r_pid = _bytes(launch.reads)
        j = np.searchsorted(unique, r_addr)
        found = j < unique.size
        found[found] = unique[j[found]] == r_addr[found]
        j = np.where(found, j, 0)
        other = np.flatnonzero(found & ((first[j] != r_pid) | (last[j] != r_pid)))
        if other.size:
            # the lowest such byte, and its lowest reader: the same report in every order
            k = other[np.lexsort((r_pid[other], r_addr[other]))[0]]
            writer = int(first[j[k]]) if first[j[k]] != r_pid[k] else int(last[j[k]])
            bytes_ = int(np.unique(r_addr[other]).size)
            self._order_violation(launch, int(r_addr[k]), "reads", int(r_pid[k]), writer, bytes_)

    def _order_violation(self, launch: Launch, address: int, verb: str, reader: int,
                         writer: int, count: int) -> None:  # fmt: skip
        message = (
            f"order-dependent access in {launch.kernel}: program {launch.unravel(reader)} "
            f"{verb} {launch.locate(address)}, which program {launch.unravel(writer)} of the "
            f"same launch writes ({count} such bytes)"
        )
        self.totals.violations.append(message)
        if not self.collect:
            raise OrderDependence(message)


def _bytes(accesses: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every byte address of a list of accesses, with the program of each."""
    addresses, programs = [], []
    for a, size, pid in accesses:
        expanded = (a[:, None] + np.arange(size, dtype=np.uint64)[None, :]).ravel()
        addresses.append(expanded)
        programs.append(np.full(expanded.size, pid, dtype=np.int64))
    return np.concatenate(addresses), np.concatenate(programs)


# ---------------------------------------------------------------- the hooks

_ACTIVE: Checker | None = None
_ORIGINALS: dict[tuple[type, str], object] = {}


def _element_size(ptrs) -> int:
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


def _install() -> None:
    """Patch the interpreter's entry points once per process (they do nothing while no checker
    is active)."""
    if _ORIGINALS:
        return
    builder, executor = interp.InterpreterBuilder, interp.GridExecutor
    hooks = [(builder, n) for n in _BUILDER_HOOKS] + [(executor, n) for n in _EXECUTOR_HOOKS]
    for cls, name in hooks:
        _ORIGINALS[(cls, name)] = getattr(cls, name)
    orig = {name: _ORIGINALS[(cls, name)] for (cls, name) in _ORIGINALS}

    def checked(kind, ptrs, mask):
        """The mask to carry the access out with (``mask``, unless lanes outside were cut)."""
        corrected = _ACTIVE.access(kind, ptrs, mask, _element_size(ptrs))
        return mask if corrected is None else interp.TensorHandle(corrected, tl.int1)

    @functools.wraps(orig["create_masked_load"])
    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        if _ACTIVE is not None:
            mask = checked("load", ptrs, mask)
        return orig["create_masked_load"](self, ptrs, mask, *args, **kwargs)

    @functools.wraps(orig["create_masked_store"])
    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        if _ACTIVE is not None:
            mask = checked("store", ptrs, mask)
        return orig["create_masked_store"](self, ptrs, value, mask, *args, **kwargs)

    @functools.wraps(orig["create_atomic_rmw"])
    def create_atomic_rmw(self, op, ptr, val, mask, *args, **kwargs):
        if _ACTIVE is not None:
            mask = checked("atomic", ptr, mask)
        return orig["create_atomic_rmw"](self, op, ptr, val, mask, *args, **kwargs)

    @functools.wraps(orig["create_atomic_cas"])
    def create_atomic_cas(self, ptr, cmp, val, *args, **kwargs):
        size = _element_size(ptr)
        if _ACTIVE is not None and _ACTIVE.access("atomic", ptr, None, size) is not None:
            raise BoundsViolation(_ACTIVE.totals.violations[-1])  # no mask to cut lanes with
        return orig["create_atomic_cas"](self, ptr, cmp, val, *args, **kwargs)

    @functools.wraps(orig["set_grid_dim"])
    def set_grid_dim(self, nx, ny, nz):
        if _ACTIVE is not None:
            _ACTIVE.grid(nx, ny, nz)
        return orig["set_grid_dim"](self, nx, ny, nz)

    @functools.wraps(orig["set_grid_idx"])
    def set_grid_idx(self, x, y, z):
        if _ACTIVE is not None:
            x, y, z = _ACTIVE.program(x, y, z)
        return orig["set_grid_idx"](self, x, y, z)

    @functools.wraps(orig["_init_args_hst"])
    def _init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = orig["_init_args_hst"](self, args_dev, kwargs)
        if _ACTIVE is not None:
            _ACTIVE.arguments(args_hst, kwargs_hst)
        return args_hst, kwargs_hst

    @functools.wraps(orig["__call__"])
    def __call__(self, *args, **kwargs):
        checker = _ACTIVE
        if checker is None:
            return orig["__call__"](self, *args, **kwargs)
        checker.begin(self)
        ok = False
        try:
            result = orig["__call__"](self, *args, **kwargs)
            ok = True
        finally:
            checker.end(ok)
        return result

    for name, fn in [("create_masked_load", create_masked_load),
                     ("create_masked_store", create_masked_store),
                     ("create_atomic_rmw", create_atomic_rmw),
                     ("create_atomic_cas", create_atomic_cas),
                     ("set_grid_dim", set_grid_dim), ("set_grid_idx", set_grid_idx)]:  # fmt: skip
        setattr(builder, name, fn)
    executor._init_args_hst = _init_args_hst
    executor.__call__ = __call__
    _patch_standardize()


def _patch_standardize() -> None:
    """The standardisation reads the views of the call where they lie: they are allowed ranges
    of that launch (``op.launch_standardize`` is where the op hands them over)."""
    try:
        from smi_kernels._triton import op
    except ImportError:  # pragma: no cover
        return
    original = op.launch_standardize
    params = list(inspect.signature(original).parameters)
    position = params.index("views")

    @functools.wraps(original)
    def launch_standardize(*args, **kwargs):
        views = kwargs["views"] if "views" in kwargs else args[position]
        if _ACTIVE is None:
            return original(*args, **kwargs)
        with _ACTIVE.input_views(list(views)):
            return original(*args, **kwargs)

    op.launch_standardize = launch_standardize
