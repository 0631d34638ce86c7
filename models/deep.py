"""A torch Wide & Deep binary classifier for streaming use.

Why this model looks the way it does:

* **Batched inference, once per micro-batch.** A worker scores a whole
  micro-batch of events with :meth:`DeepModel.predict_proba_many`: one forward
  pass under ``torch.inference_mode()``, so a GPU's kernel-launch and
  host-to-device costs are paid once per micro-batch, not once per event (on
  CUDA the inputs are staged in pinned host memory and copied with
  ``non_blocking=True``). Per-row Python work is limited to pulling the
  features out of the event dicts and one vectorised feature-hash call.
* **Mini-batch training from delayed labels.** Labels arrive one at a time,
  often long after the prediction. :meth:`DeepModel.learn_one` only buffers
  them; every ``batch_size`` labelled examples it takes exactly one Adam step
  (BCE with logits). The running mean/variance of the dense features is also
  updated on those steps only (never when predicting), so everything a
  prediction depends on changes only when ``steps`` does and ``version``
  (``name@steps``) names it exactly: a redelivered event scored at the same
  version gets the same answer. The weights are a deterministic function of
  the sequence of learned examples (not of how it was split into calls).
* **Checkpoints loadable with ``weights_only=True``.** :meth:`DeepModel.state`
  holds only tensors and plain ints/floats/strs/bools/lists/tuples/dicts, so
  ``torch.load(..., weights_only=True)`` restores it without unpickling
  arbitrary objects (no code runs on load). ``weights_only`` is not
  authentication: a checkpoint from an untrusted source can still carry
  arbitrary weights.

Network: ``logit = wide + deep``, ``P(y=1) = sigmoid(logit)``. The wide part
is a linear layer over the standardised dense features plus a 1-dim hashed
embedding per categorical field; the deep part is an MLP (ReLU) over the
standardised dense features concatenated with ``embed_dim``-dim hashed
embeddings of the categorical fields. Categorical values are hashed with
``ext.hash_strings([f"{field}={value}"], buckets)``; a missing value (absent,
``None`` or a float NaN) has its own bucket per field. A missing or
non-finite numeric value becomes 0 after standardisation (i.e. the mean).
The wide weights and the last deep layer start at zero, so an untrained model
predicts exactly 0.5.

Not thread-safe: call ``predict_*``, ``learn_*`` and ``load_weights_from``
from one thread (or serialise them). Bit-for-bit determinism holds on CPU; on
CUDA the embedding backward uses atomic adds, so training there is only
reproducible to float rounding unless the caller enables
``torch.use_deterministic_algorithms``.

>>> m = DeepModel("wd", numeric=["a"], categorical=["c"],
...               params=DeepParams(batch_size=2, device="cpu"))
>>> x = {"a": 1.0, "c": "x"}
>>> m.predict_proba_one(x), m.version
(0.5, 'wd@0')
>>> m.learn_one(x, 1); m.version, m.n_learned
('wd@0', 1)
>>> m.learn_many([{"a": -1.0}, {"a": 2.0, "c": "y"}], [0, 1]); m.version, m.n_learned
('wd@1', 3)
>>> 0.0 < m.predict_proba_one(x) < 1.0, m.predict_proba_many([])
(True, [])
>>> DeepModel.loads(m.dumps(), device="cpu").predict_proba_one(x) == m.predict_proba_one(x)
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import math
import operator
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ext import hash_strings
from models.base import Features

__all__ = ["FORMAT", "FORMAT_VERSION", "DeepModel", "DeepParams", "load_checkpoint", "numeric_matrix",
           "resolve_device"]

#: ``state()["format"]`` and ``state()["format_version"]`` of the checkpoints this module writes.
FORMAT = "streamscore.deep.wide_deep"
FORMAT_VERSION = 1

#: Params that shape the network: a checkpoint's weights fit a model only if these are equal.
ARCHITECTURE_FIELDS: tuple[str, ...] = ("hidden", "layers", "embed_dim", "buckets")


#: Standardised dense inputs are clipped to [-CLIP, CLIP] standard deviations.
CLIP = 5.0

#: Inference batches are padded to a multiple of this many rows. CPU matrix
#: kernels compute a row's result with different instructions for a 1-row or a
#: ragged last block than for full blocks, so the same row could differ in the
#: last bits with the batch size; padded, a row's score is the same bits in any
#: micro-batch (measured here for batches of 1 to 600; a replay or a restart
#: that cuts batches elsewhere reproduces every score).
ROW_BLOCK = 16

#: On CUDA every inference pass has exactly this many rows: a batch is padded
#: to a multiple of it and run in slices of it. CUDA picks its matrix kernels
#: by shape, and a row's score moved by up to 2.4e-7 with the rows beside it
#: when passes had other row counts (BENCHMARKS.md, 2026-11-28, H200); one
#: shape is one kernel, so a row's score is again the same bits in any batch.
#: 1,024 rows is where a pass on an H200 gave the most rows/s; a pass of 1 row
#: cost about as much (kernel launches and copies, not arithmetic).
CUDA_PASS_ROWS = 1024


@dataclass(frozen=True)
class DeepParams:
    hidden: int = 64          # width of each hidden layer
    layers: int = 2           # hidden layers in the deep tower
    embed_dim: int = 8        # per categorical field
    buckets: int = 1 << 14    # hash buckets per categorical field
    lr: float = 1e-3          # Adam
    batch_size: int = 128     # one optimizer step every batch_size labelled examples
    weight_decay: float = 0.0
    device: str = "auto"      # "auto" (cuda if available), "cpu" or "cuda"
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("hidden", "embed_dim", "buckets", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DeepParams.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ValueError(f"DeepParams.layers must be an int >= 0, got {self.layers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"DeepParams.seed must be an int, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"DeepParams.lr must be a finite float > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"DeepParams.weight_decay must be a finite float >= 0, got {self.weight_decay!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"DeepParams.device must be a str, got {self.device!r}")


def resolve_device(device: str) -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``"auto"`` is CUDA when ``torch.cuda.is_available()``, else the CPU. Asking
    for CUDA without a usable GPU raises :class:`RuntimeError`.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                "use device='auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


class _WideDeep(nn.Module):
    """``logit = bias + wide_dense(z) + sum(wide_embed(c)) + deep([z, deep_embed(c)])``."""

    def __init__(self, n_num: int, n_cat: int, p: DeepParams) -> None:
        super().__init__()
        rows = n_cat * (p.buckets + 1)   # per field: `buckets` hashed rows + 1 "missing" row
        # skip_init: build without touching the global RNG; _init() fills every tensor.
        self.bias = nn.Parameter(torch.zeros(1))
        self.wide_dense: nn.Linear | None = nn.utils.skip_init(nn.Linear, n_num, 1, bias=False) if n_num else None
        self.wide_embed: nn.Embedding | None = nn.utils.skip_init(nn.Embedding, rows, 1) if n_cat else None
        self.deep_embed: nn.Embedding | None = (
            nn.utils.skip_init(nn.Embedding, rows, p.embed_dim) if n_cat else None)
        dims = [n_num + n_cat * p.embed_dim] + [p.hidden] * p.layers
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [nn.utils.skip_init(nn.Linear, a, b), nn.ReLU()]
        mods.append(nn.utils.skip_init(nn.Linear, dims[-1], 1))
        self.deep = nn.Sequential(*mods)

    @torch.no_grad()
    def init(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from ``generator`` (CPU tensors)."""
        self.bias.zero_()
        if self.wide_dense is not None:
            self.wide_dense.weight.zero_()
        if self.wide_embed is not None:
            self.wide_embed.weight.zero_()
        if self.deep_embed is not None:
            nn.init.normal_(self.deep_embed.weight, 0.0, 0.1, generator=generator)
        linears = [m for m in self.deep if isinstance(m, nn.Linear)]
        for lin in linears[:-1]:
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu", generator=generator)
            lin.bias.zero_()
        linears[-1].weight.zero_()   # an untrained model predicts exactly 0.5
        linears[-1].bias.zero_()

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        # The layers' own operations (F.linear, F.relu, F.embedding), called directly rather than
        # through each submodule's __call__: the same results, bit for bit, and ~20 µs less per
        # call, which is most of a small micro-batch's forward pass on a CPU.
        parts = [dense]
        logit = self.bias.expand(dense.shape[0], 1)
        if self.wide_dense is not None:
            logit = logit + F.linear(dense, self.wide_dense.weight)
        if self.wide_embed is not None and self.deep_embed is not None:
            logit = logit + F.embedding(cat, self.wide_embed.weight).sum(dim=1)
            parts.append(F.embedding(cat, self.deep_embed.weight).flatten(1))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else dense
        for layer in self.deep:
            h = F.linear(h, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else F.relu(h)
        return (logit + h).squeeze(1)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def numeric_matrix(xs: Sequence[Features], fields: Sequence[str],
                   getter: Callable[[Features], Any] | None = None) -> np.ndarray:
    """The ``fields`` of the dicts ``xs`` as a float64 matrix (a row per dict): NaN where a value is
    missing or not a number, numeric strings parsed. ``getter``: ``operator.itemgetter(*fields)``,
    if the caller keeps one (a one-field getter gives a scalar, not a tuple)."""
    n_num = len(fields)
    if getter is None:
        getter = operator.itemgetter(*fields) if fields else (lambda x: ())
    num: np.ndarray | None = None
    try:   # every row has every field (the usual case): one C call per row
        rows = list(map(getter, xs))
    except KeyError:
        rows = [[x.get(f) for f in fields] for x in xs]
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        num = np.array(rows, dtype=np.float64)   # None -> NaN; numeric strings parsed
    if num is None or num.shape != ((len(xs), n_num) if n_num != 1 else (len(xs),)):
        # a value numpy cannot convert: go value by value
        num = np.array([_to_float(x.get(f)) for x in xs for f in fields], dtype=np.float64)
    return num.reshape(len(xs), n_num)


def _cpu_copy(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor detached, on the CPU and cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_copy(v) for v in obj)
    return obj


def _load_module(net: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    try:
        net.load_state_dict(dict(sd))
    except RuntimeError as exc:
        raise ValueError(f"checkpoint weights do not fit the network: {exc}") from exc


def _params_from_dict(d: Mapping[str, Any]) -> DeepParams:
    known = {f.name for f in dataclasses.fields(DeepParams)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"checkpoint params: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return DeepParams(**dict(d))


def _check_format(d: Mapping[str, Any]) -> None:
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint (format={d.get('format') if isinstance(d, Mapping) else d!r})")
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {FORMAT} checkpoint format_version {d.get('format_version')!r}; "
                         f"this code reads version {FORMAT_VERSION}")


class DeepModel:
    """A named Wide & Deep binary classifier: batched predictions, mini-batch Adam steps.

    ``numeric`` features are standardised with running statistics;
    ``categorical`` ones are feature-hashed into ``params.buckets`` buckets per
    field. See the module docstring for the contracts.
    """

    def __init__(self, name: str, numeric: Sequence[str], categorical: Sequence[str],
                 params: DeepParams = DeepParams()) -> None:
        numeric, categorical = tuple(numeric), tuple(categorical)
        for f in numeric + categorical:
            if not isinstance(f, str):
                raise TypeError(f"feature names must be str, got {f!r}")
        if not numeric and not categorical:
            raise ValueError("DeepModel needs at least one numeric or categorical feature")
        dup = sorted({f for f in numeric + categorical if (numeric + categorical).count(f) > 1})
        if dup:
            raise ValueError(f"feature(s) {dup} listed more than once across numeric/categorical")
        self.name = name
        self.numeric: tuple[str, ...] = numeric
        self.categorical: tuple[str, ...] = categorical
        self.params = params
        self.device: torch.device = resolve_device(params.device)
        self.n_learned = 0
        self.steps = 0

        n_num, n_cat = len(numeric), len(categorical)
        #: a row's numeric values, read by C: ``itemgetter`` (a one-field getter gives a scalar, not a tuple)
        self._getter = operator.itemgetter(*numeric) if numeric else (lambda x: ())
        self._missing_bucket = params.buckets
        self._offsets = np.arange(n_cat, dtype=np.int64) * (params.buckets + 1)
        net = _WideDeep(n_num, n_cat, params)
        net.init(torch.Generator().manual_seed(params.seed))
        self._net = net.to(self.device).eval()
        self._opt = self._new_optimizer()
        #: rows of every inference pass (see CUDA_PASS_ROWS); None: one pass, padded to ROW_BLOCK
        self._pass_rows: int | None = CUDA_PASS_ROWS if self.device.type == "cuda" else None

        # Running statistics of the dense features (Chan et al. merge, per feature).
        self._count = np.zeros(n_num, dtype=np.float64)
        self._mean = np.zeros(n_num, dtype=np.float64)
        self._m2 = np.zeros(n_num, dtype=np.float64)
        self._inv_std = np.ones(n_num, dtype=np.float64)

        # Labelled examples waiting for the next step (raw numeric, bucket indices, label);
        # numeric and indices as 2-D chunks, one per encode (rows in order), not row by row
        self._pending_num: list[np.ndarray] = []
        self._pending_cat: list[np.ndarray] = []
        self._pending_y: list[float] = []
        #: examples given to learn_one, not yet encoded (encoded together: one _encode per step)
        self._raw_x: list[Features] = []
        self._raw_num: list[np.ndarray | None] = []     # the rows' numeric features, where given
        self._raw_y: list[bool | int] = []
        self._dumped: tuple[tuple[Any, ...], bytes] | None = None    # see dumps
        self._scoring: tuple[tuple[Any, ...], bytes] | None = None   # see scoring_key

    # ------------------------------------------------------------------ properties

    @property
    def version(self) -> str:
        """``name@steps``: the weights and the standardisation change only on steps."""
        return f"{self.name}@{self.steps}"

    @property
    def n_pending(self) -> int:
        """Labelled examples buffered for the next optimizer step."""
        self._drain()
        return len(self._pending_y)

    @property
    def until_step(self) -> int:
        """Labelled examples still needed before the next optimizer step (at least 1)."""
        return self.params.batch_size - len(self._raw_y) - len(self._pending_y)

    def scoring_key(self) -> bytes:
        """A digest of everything a score depends on: two models with equal keys score a row alike, bit for bit.

        The network's weights, the feature statistics, the features, the
        hyper-parameters and the device. Why: a worker scores the new events of
        several partitions in one forward pass when their frozen models are the
        same (``streams.processor.score_together``); each partition holds its
        own copy, restored from its own snapshot or hot-swapped in. Computed
        again only when the network, the statistics or ``steps`` change (what
        a step, a load or a swap changes).
        """
        key = (self.steps, self._net, self._mean, self._inv_std)
        cached = self._scoring
        if cached is not None and cached[0][0] == key[0] and all(a is b for a, b in zip(cached[0][1:], key[1:])):
            return cached[1]
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.numeric, self.categorical, self.params, str(self.device))).encode())
        for k, v in self._net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(self._mean.tobytes())
        h.update(self._inv_std.tobytes())
        self._scoring = (key, h.digest())
        return self._scoring[1]

    @property
    def module(self) -> nn.Module:
        """The underlying ``nn.Module`` (read it; do not train it behind the model's back)."""
        return self._net

    def __repr__(self) -> str:
        return (f"DeepModel({self.version!r}, numeric={list(self.numeric)}, categorical={list(self.categorical)}, "
                f"device={str(self.device)!r}, n_learned={self.n_learned}, pending={self.n_pending})")

    # ------------------------------------------------------------------ encoding

    def _encode(self, xs: Sequence[Features], num: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw numeric values (float64, NaN if missing) and global bucket indices (int64).

        ``num``: the numeric values already as a matrix (rows of ``xs``, columns
        in ``numeric`` order, NaN if missing), as a worker has them from its
        window kernels; then only the categorical fields are read from ``xs``.
        """
        if num is None:
            num = numeric_matrix(xs, self.numeric, self._getter)
        n_cat = len(self.categorical)
        flat = np.full(len(xs) * n_cat, self._missing_bucket, dtype=np.int64)
        if n_cat:
            strings: list[str] = []
            where: list[int] = []
            for r, x in enumerate(xs):
                for j, f in enumerate(self.categorical):
                    v = x.get(f)
                    if v is None or (isinstance(v, float) and math.isnan(v)):
                        continue
                    strings.append(f"{f}={v}")
                    where.append(r * n_cat + j)
            if strings:
                flat[where] = hash_strings(strings, self.params.buckets)
        cat = flat.reshape(len(xs), n_cat) + self._offsets
        return num, cat

    @staticmethod
    def _standardise(num: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``(num - mean) * inv_std`` clipped to +-CLIP into float32 ``out``; missing/non-finite -> 0.

        Clipping: heavy-tailed fields (a 80,995-unit order among single items)
        would otherwise put one row's input at hundreds of standard deviations
        and swing the logits of everything it touches.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            z = (num - mean) * inv_std
        z[~np.isfinite(z)] = 0.0
        np.clip(z, -CLIP, CLIP, out=z)
        out[...] = z
        return out

    def _inputs(self, num: np.ndarray, cat: np.ndarray, mean: np.ndarray,
                inv_std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Device tensors for the network: pinned host staging + non_blocking copy on CUDA."""
        n = num.shape[0]
        if self.device.type == "cuda":
            dense = torch.empty((n, num.shape[1]), dtype=torch.float32, pin_memory=True)
            cat_t = torch.empty((n, cat.shape[1]), dtype=torch.int64, pin_memory=True)
            self._standardise(num, mean, inv_std, dense.numpy())
            cat_t.numpy()[...] = cat
            return dense.to(self.device, non_blocking=True), cat_t.to(self.device, non_blocking=True)
        dense_np = self._standardise(num, mean, inv_std, np.empty(num.shape, dtype=np.float32))
        return torch.from_numpy(dense_np), torch.from_numpy(np.ascontiguousarray(cat))

    # ------------------------------------------------------------------ predicting

    def predict_proba_many(self, xs: Sequence[Features], num: np.ndarray | None = None) -> list[float]:
        """P(y = 1 | x) for every row, in one forward pass; mutates neither ``xs`` nor the model.

        ``num``: the rows' numeric features as a matrix, if the caller has it
        (see :meth:`_encode`); the same scores, without reading them from ``xs``.
        """
        n = len(xs)
        if n == 0:
            return []
        num, cat = self._encode(xs, num)
        rows = self._pass_rows
        pad = -n % (rows or ROW_BLOCK)
        if pad:   # same row, same bits, whatever the batch size (see ROW_BLOCK, CUDA_PASS_ROWS)
            num = np.concatenate([num, np.repeat(num[:1], pad, axis=0)])
            cat = np.concatenate([cat, np.repeat(cat[:1], pad, axis=0)])
        with torch.inference_mode():
            dense, cat_t = self._inputs(num, cat, self._mean, self._inv_std)
            if rows is None or n + pad == rows:
                logits = self._net(dense, cat_t)
            else:
                logits = torch.cat([self._net(dense[i:i + rows], cat_t[i:i + rows]) for i in range(0, n + pad, rows)])
            return torch.sigmoid(logits.double()).cpu().tolist()[:n]

    def predict_proba_one(self, x: Features) -> float:
        """P(y = 1 | x); same as ``predict_proba_many([x])[0]``."""
        return self.predict_proba_many([x])[0]

    # ------------------------------------------------------------------ learning

    def learn_one(self, x: Features, y: bool | int, num: np.ndarray | None = None) -> None:
        """Buffer one labelled example; a full buffer triggers exactly one Adam step.

        The example is kept as given and encoded with the rest of its batch
        (one vectorised encode per step instead of one per example). ``num``:
        its numeric features as a row (see :meth:`_encode`), if the caller has it.
        """
        self._raw_x.append(x)
        self._raw_num.append(num)
        self._raw_y.append(y)
        self.n_learned += 1
        if len(self._raw_y) + len(self._pending_y) >= self.params.batch_size:
            self._drain()

    def _drain(self) -> None:
        """Encode the examples buffered by learn_one (stepping when a batch fills)."""
        if self._raw_y:
            xs, ys, rows = self._raw_x, self._raw_y, self._raw_num
            self._raw_x, self._raw_y, self._raw_num = [], [], []
            num = None
            if any(r is not None for r in rows):      # rows given for some: encode only the others
                missing = [i for i, r in enumerate(rows) if r is None]
                if missing:
                    for i, r in zip(missing, numeric_matrix([xs[i] for i in missing], self.numeric, self._getter)):
                        rows[i] = r
                num = np.array(rows, dtype=np.float64).reshape(len(rows), len(self.numeric))
            self._add(xs, ys, num)

    def learn_many(self, xs: Sequence[Features], ys: Sequence[bool | int]) -> None:
        """Same as ``learn_one`` on each pair, in order."""
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} examples but {len(ys)} labels")
        self._drain()
        self.n_learned += len(xs)
        self._add(xs, ys)

    def _add(self, xs: Sequence[Features], ys: Sequence[bool | int], num: np.ndarray | None = None) -> None:
        if len(xs) == 0:
            return
        num, cat = self._encode(xs, num)
        labels = [1.0 if y else 0.0 for y in ys]
        bs = self.params.batch_size
        i = 0
        while i < len(labels):
            take = min(bs - len(self._pending_y), len(labels) - i)
            self._pending_num.append(num[i:i + take])
            self._pending_cat.append(cat[i:i + take])
            self._pending_y.extend(labels[i:i + take])
            i += take
            if len(self._pending_y) >= bs:
                self._step()

    def _merged_stats(self, num: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Running (count, mean, m2, inv_std) merged with the finite values of ``num`` (Chan et al.)."""
        ok = np.isfinite(num)
        nb = ok.sum(axis=0).astype(np.float64)
        vals = np.where(ok, num, 0.0)
        mean_b = np.divide(vals.sum(axis=0), nb, out=np.zeros_like(nb), where=nb > 0)
        m2_b = (np.where(ok, num - mean_b, 0.0) ** 2).sum(axis=0)
        na = self._count
        n = na + nb
        delta = mean_b - self._mean
        frac = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)
        mean = self._mean + delta * frac
        m2 = self._m2 + m2_b + delta * delta * (na * frac)
        var = np.divide(m2, n, out=np.zeros_like(n), where=n > 0)
        inv_std = np.ones_like(var)
        np.divide(1.0, np.sqrt(var), out=inv_std, where=var > 0)
        return n, mean, m2, inv_std

    def _step(self) -> None:
        num = np.concatenate(self._pending_num)
        cat = np.concatenate(self._pending_cat)
        count, mean, m2, inv_std = self._merged_stats(num)
        dense, cat_t = self._inputs(num, cat, mean, inv_std)
        y = torch.tensor(self._pending_y, dtype=torch.float32).to(self.device, non_blocking=True)
        self._net.train()
        try:
            self._opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(self._net(dense, cat_t), y)
            loss.backward()
            self._opt.step()
        finally:
            self._net.eval()
        # Commit the statistics only once the step succeeded.
        self._count, self._mean, self._m2, self._inv_std = count, mean, m2, inv_std
        self._pending_num.clear()
        self._pending_cat.clear()
        self._pending_y.clear()
        self.steps += 1

    def _new_optimizer(self) -> torch.optim.Adam:
        # fused on the CPU: one kernel for all parameters instead of a loop of small ops per tensor
        # (0.55 -> 0.21 ms a step for the benchmark's model). Not bit-identical to the unfused
        # loop, but as deterministic; CUDA keeps torch's default (foreach) until measured there.
        return torch.optim.Adam(self._net.parameters(), lr=self.params.lr, weight_decay=self.params.weight_decay,
                                fused=True if self.device.type == "cpu" else None)

    def _load_optimizer(self, sd: Mapping[str, Any]) -> None:
        sd = dict(sd)
        # A non-fused Adam keeps `step` on the CPU whatever the device; map_location may have moved it.
        sd["state"] = {k: {n: (v.cpu() if n == "step" and isinstance(v, torch.Tensor) else v)
                           for n, v in per_param.items()}
                       for k, per_param in sd["state"].items()}
        opt = self._new_optimizer()
        opt.load_state_dict(sd)
        for group in opt.param_groups:   # this model's hyper-parameters win over the checkpoint's
            group["lr"] = self.params.lr
            group["weight_decay"] = self.params.weight_decay
            # and its implementation: a checkpoint saved by an unfused Adam (before fused was
            # chosen on the CPU, or on a GPU) would otherwise switch this one back to the loop
            group["fused"] = opt.defaults["fused"]
            group["foreach"] = opt.defaults["foreach"]
        self._opt = opt

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """A checkpoint: CPU tensors and plain containers only (``torch.load(weights_only=True)``)."""
        self._drain()
        n_num, n_cat = len(self.numeric), len(self.categorical)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "params": dataclasses.asdict(self.params),
            "model": _cpu_copy(dict(self._net.state_dict())),
            "optimizer": _cpu_copy(self._opt.state_dict()),
            "stats": {"count": torch.from_numpy(self._count.copy()),
                      "mean": torch.from_numpy(self._mean.copy()),
                      "m2": torch.from_numpy(self._m2.copy())},
            "pending": {
                "numeric": torch.from_numpy(np.concatenate(self._pending_num) if self._pending_num
                                            else np.zeros((0, n_num), dtype=np.float64)),
                "categorical": torch.from_numpy(np.concatenate(self._pending_cat) if self._pending_cat
                                                else np.zeros((0, n_cat), dtype=np.int64)),
                "labels": list(self._pending_y),
            },
            "n_learned": self.n_learned,
            "steps": self.steps,
        }

    def _set_stats(self, stats: Mapping[str, torch.Tensor]) -> None:
        n_num = len(self.numeric)
        arrays = []
        for key in ("count", "mean", "m2"):
            a = stats[key].detach().cpu().to(torch.float64).numpy().copy()
            if a.shape != (n_num,):
                raise ValueError(f"checkpoint stats[{key!r}] has shape {a.shape}, expected ({n_num},)")
            arrays.append(a)
        count, mean, m2 = arrays
        var = np.divide(m2, count, out=np.zeros_like(count), where=count > 0)
        inv_std = np.ones_like(var)
        np.divide(1.0, np.sqrt(var), out=inv_std, where=var > 0)
        self._count, self._mean, self._m2, self._inv_std = count, mean, m2, inv_std

    @classmethod
    def from_state(cls, d: Mapping[str, Any], device: str | None = None) -> DeepModel:
        """Rebuild a model from :meth:`state`; ``device`` overrides the checkpoint's ``params.device``."""
        _check_format(d)
        params_d = dict(d["params"])
        if device is not None:
            params_d["device"] = device
        m = cls(str(d["name"]), list(d["numeric"]), list(d["categorical"]), _params_from_dict(params_d))
        _load_module(m._net, d["model"])
        m._load_optimizer(d["optimizer"])
        m._set_stats(d["stats"])
        pending = d["pending"]
        p_num = pending["numeric"].detach().cpu().to(torch.float64).numpy()
        p_cat = pending["categorical"].detach().cpu().to(torch.int64).numpy()
        labels = [float(v) for v in pending["labels"]]
        if (p_num.ndim != 2 or p_cat.ndim != 2 or p_num.shape[1] != len(m.numeric)
                or p_cat.shape[1] != len(m.categorical)
                or not p_num.shape[0] == p_cat.shape[0] == len(labels) < m.params.batch_size):
            raise ValueError(f"checkpoint pending buffer is inconsistent: {p_num.shape[0]} rows, "
                             f"{p_cat.shape[0]} index rows, {len(labels)} labels, batch_size {m.params.batch_size}")
        m._pending_num = [p_num.copy()] if len(labels) else []
        m._pending_cat = [p_cat.copy()] if len(labels) else []
        m._pending_y = labels
        m.n_learned = int(d["n_learned"])
        m.steps = int(d["steps"])
        return m

    def dumps(self) -> bytes:
        """:meth:`state` as ``torch.save`` bytes.

        Kept while nothing it holds can have changed: a frozen model (``learn =
        false``) is snapshotted at every flush, and serialising unchanged weights
        each time cost a worker ~1 % of its CPU. Whatever changes the state
        changes the key: ``learn_one`` counts ``n_learned``, a step counts
        ``steps``, a hot swap brings a new network and optimizer (the key holds
        them, so their ids cannot be reused).
        """
        key = (self.n_learned, self.steps, self._net, self._opt)
        cached = self._dumped
        if cached is not None and cached[0] == key:
            return cached[1]
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        data = buf.getvalue()
        self._dumped = (key, data)
        return data

    @classmethod
    def loads(cls, data: bytes, device: str | None = "auto") -> DeepModel:
        """A model from :meth:`dumps` bytes, read with ``weights_only=True`` straight onto ``device``.

        ``device=None`` keeps the checkpoint's ``params.device``.
        """
        map_location = resolve_device(device) if device is not None else torch.device("cpu")
        d = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        return cls.from_state(d, device=device)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`dumps` to ``path`` atomically (temporary file, fsync, ``os.replace``).

        The file is created with mode 0600.
        """
        path = Path(path)
        data = self.dumps()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename durable where directories can be fsynced
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def load_weights_from(self, other: Mapping[str, Any] | DeepModel) -> None:
        """Hot-swap the weights of checkpoint ``other`` (a :meth:`state` dict) into this live model.

        Takes the network weights, the running feature statistics, the
        optimizer state and ``steps`` (so ``version`` names the checkpoint's
        weights); keeps this model's name, hyper-parameters (lr, weight decay,
        batch size, device), pending buffer and ``n_learned``. Raises
        :class:`ValueError` if the checkpoint's features or architecture
        (``hidden``, ``layers``, ``embed_dim``, ``buckets``) differ.
        """
        d = other.state() if isinstance(other, DeepModel) else other
        _check_format(d)
        problems = []
        if list(d["numeric"]) != list(self.numeric):
            problems.append(f"numeric features {list(d['numeric'])} != {list(self.numeric)}")
        if list(d["categorical"]) != list(self.categorical):
            problems.append(f"categorical features {list(d['categorical'])} != {list(self.categorical)}")
        for f in ARCHITECTURE_FIELDS:
            theirs, ours = d["params"].get(f), getattr(self.params, f)
            if theirs != ours:
                problems.append(f"params.{f} {theirs!r} != {ours!r}")
        if problems:
            raise ValueError(f"cannot load weights of checkpoint {d.get('name')!r}@{d.get('steps')} into "
                             f"{self.version!r}: checkpoint vs model: " + "; ".join(problems))
        # Build everything first, then swap, so a bad checkpoint leaves this model untouched.
        net = _WideDeep(len(self.numeric), len(self.categorical), self.params)
        _load_module(net, d["model"])
        net = net.to(self.device).eval()
        old_net, old_opt = self._net, self._opt
        self._net = net
        try:
            self._load_optimizer(d["optimizer"])
            self._set_stats(d["stats"])   # validates before it assigns
        except BaseException:
            self._net, self._opt = old_net, old_opt
            raise
        self.steps = int(d["steps"])


def load_checkpoint(path: str | os.PathLike[str], device: str | None = "auto") -> DeepModel:
    """A :class:`DeepModel` from a file written by :meth:`DeepModel.save` (read with ``weights_only=True``)."""
    return DeepModel.loads(Path(path).read_bytes(), device=device)
