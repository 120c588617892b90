"""Structured channel pruning on Torch-Pruning's dependency graph.

A *prune group* is a set of channels that must be removed together: the output channels of
one or more conv/linear layers (coupled through residual adds, or a depthwise conv and its
producer), with every batch norm and consumer input channel that reads them.  A group is
named after its leading layer (the first of its layers in ``model.named_modules()`` order,
e.g. ``"features.0.0"``); that name is the key of :attr:`CompressionPolicy.keep`.

The classifier (the last conv/linear whose output width equals the model's output width)
and anything else feeding the model output directly never lose output channels.  Groups
through a grouped (not depthwise) convolution are left unpruned.

Before pruning, every group is checked once per model structure: a trial prune must give the
same output as the original model with those channels masked out of their consumers.  A group
that fails (a custom layer reshaping channels, a functional conv with its own weight, ...)
raises :class:`UnsupportedLayerError` naming the layer, when a policy asks to prune it.

Saved pruned models (:func:`save_pruned`) are pickled whole, because their shapes differ from
what the factory builds: :func:`load_pruned` unpickles them, which can run code from the file.
Load only files that hwcompress wrote on a machine you trust.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwcompress.errors import ModelError, PolicyError, UnsupportedLayerError
from hwcompress.records import CompressionPolicy, LayerInfo, Record

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

log = logging.getLogger(__name__)

IMPORTANCES: tuple[str, ...] = ("l1", "l2", "bn", "taylor")
SAVE_FORMAT = "hwcompress-pruned-model"
SAVE_VERSION = 2  # 2: state_dict + how to rebuild the architecture; 1: the whole module pickled
SAVE_VERSIONS = (1, 2)



@dataclass(frozen=True)
class PruneGroup(Record):
    """Channels pruned together.

    ``layers``: conv/linear layers whose output channels are the group's channels (a depthwise
    conv counts here); ``consumers``: conv/linear layers whose input channels are removed with
    them.  ``macs``/``params``: MACs (one forward of the analysed input shape) and parameter
    elements of all those layers.
    """

    index: int
    name: str
    channels: int
    layers: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    macs: int = 0
    params: int = 0
    depthwise: bool = False


# --------------------------------------------------------------------------- tracing
@dataclass
class _Entry:
    info: PruneGroup
    root: Any  # nn.Module: the Torch-Pruning root of the group
    root_fn: Callable[..., Any]
    group: Any  # tp.Group with full indices
    op_nodes: list[Any] = field(default_factory=list)  # non-module nodes (ops, unwrapped params)


@dataclass
class _Traced:
    model: nn.Module
    dg: Any  # tp.DependencyGraph
    entries: list[_Entry]
    classifier: str | None
    layer_macs: dict[str, int]
    gradfn_owner: dict[Any, str]
    skipped: dict[str, str]  # leading layer -> why the group is not prunable


def _input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ModelError(f"input shape {shape} is not (N, C, H, W) with positive sizes")
    return shape


def _is_depthwise(m: Any) -> bool:
    from torch import nn

    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.out_channels == m.in_channels


def _is_grouped(m: Any) -> bool:
    from torch import nn

    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not _is_depthwise(m)


def _layer_types() -> tuple[type[nn.Module], ...]:
    from torch import nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def _device(model: nn.Module) -> torch.device:
    import torch

    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _pop(stack: list[str]) -> None:
    if stack:
        stack.pop()


def find_classifier(model: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Name of the last conv/linear run whose output width equals the model output's width.

    Returns ``None`` when the output is not a tensor of rank >= 2 or no layer matches.
    """
    import torch

    shape = _input_shape(input_shape)
    order: list[tuple[str, int]] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _layer_types()):
            handles.append(
                m.register_forward_hook(
                    lambda mod, i, o, name=name: order.append((name, o.shape[1] if o.dim() > 1 else -1))
                )
            )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(*shape, device=_device(model)))
    except Exception as exc:
        raise ModelError(f"{type(model).__name__} does not run on an input of shape {shape}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return None
    for name, width in reversed(order):
        if width == out.shape[1]:
            return name
    return None


def _trace(model: nn.Module, shape: tuple[int, ...]) -> _Traced:
    """Build the dependency graph of ``model`` (which is modified by later pruning) and its groups."""
    import torch
    import torch_pruning as tp
    from torch.overrides import TorchFunctionMode

    from hwcompress.macs import layer_macs

    classifier = find_classifier(model, shape)
    macs = layer_macs(model, shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    param_owner = {p: n.rpartition(".")[0] for n, p in model.named_parameters()}

    # Record which module each autograd op was created in, to name unsupported layers.
    stack: list[str] = []
    owner: dict[Any, str] = {}

    class _Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            items = out if isinstance(out, (tuple, list)) else (out,)
            for t in items:
                if isinstance(t, torch.Tensor) and t.grad_fn is not None and stack:
                    owner.setdefault(t.grad_fn, stack[-1])
            return out

    hooks = []
    for m, n in names.items():
        hooks.append(m.register_forward_pre_hook(lambda mod, i, n=n: stack.append(n)))
        hooks.append(m.register_forward_hook(lambda mod, i, o: _pop(stack)))

    def forward_fn(mod: nn.Module, x: torch.Tensor) -> Any:
        with _Recorder():
            return mod(x)

    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(_device(model))
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example, forward_fn=forward_fn, verbose=False)
    except Exception as exc:
        raise UnsupportedLayerError(
            f"Torch-Pruning cannot trace {type(model).__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    finally:
        for h in hooks:
            h.remove()

    ignored = [model.get_submodule(classifier)] if classifier is not None else []
    entries: list[_Entry] = []
    skipped: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=_layer_types()))
    for g in groups:
        layers: list[str] = []
        consumers: list[str] = []
        op_nodes: list[Any] = []
        reaches_output = False
        grouped = ""
        for dep, _idxs in g:
            node = dep.target
            mod = node.module
            if node.type == tp.ops.OPTYPE.OUTPUT:
                reaches_output = True
            if isinstance(mod, _layer_types()):
                name = names[mod]
                if _is_grouped(mod):
                    grouped = name
                if _is_depthwise(mod) or dg.is_out_channel_pruning_fn(dep.handler):
                    if name not in layers:
                        layers.append(name)
                elif name not in consumers:
                    consumers.append(name)
            elif not isinstance(mod, torch.nn.Module) or mod not in names:
                op_nodes.append(node)
        consumers = [c for c in consumers if c not in layers]
        if not layers:
            continue
        layers.sort(key=order.__getitem__)
        consumers.sort(key=order.__getitem__)
        lead = layers[0]
        if reaches_output:
            skipped[lead] = "its channels are model outputs"
            continue
        if grouped:
            skipped[lead] = f"it runs through the grouped convolution {grouped}"
            continue
        root = g[0].dep.target.module
        members = layers + consumers
        info = PruneGroup(
            index=-1,
            name=lead,
            channels=len(g[0].idxs),
            layers=tuple(layers),
            consumers=tuple(consumers),
            macs=sum(macs.get(n, 0) for n in members),
            params=sum(p.numel() for n in members for p in model.get_submodule(n).parameters()),
            depthwise=any(_is_depthwise(model.get_submodule(n)) for n in layers),
        )
        for node in op_nodes:
            if isinstance(node.module, torch.nn.Parameter) and node.module in param_owner:
                owner.setdefault(node.grad_fn, param_owner[node.module])
        entries.append(_Entry(info, root, g[0].dep.handler, g, op_nodes))
    entries.sort(key=lambda e: order[e.info.name])
    for i, e in enumerate(entries):
        e.info = PruneGroup(**{**e.info.__dict__, "index": i})
    for lead, why in skipped.items():
        log.debug("group %s is not prunable: %s", lead, why)
    return _Traced(model, dg, entries, classifier, macs, owner, skipped)


# --------------------------------------------------------------------------- verification
_VERIFIED: dict[tuple[Any, ...], dict[str, str]] = {}


def _signature(model: nn.Module, shape: tuple[int, ...]) -> tuple[Any, ...]:
    return (
        type(model).__module__,
        type(model).__qualname__,
        shape,
        tuple((n, type(m).__qualname__) for n, m in model.named_modules()),
        tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
    )


def _trial_idxs(channels: int) -> list[int]:
    return [i for i in range(channels) if i % 3 == 1]


def _trial(model: nn.Module, shape: tuple[int, ...], names: Sequence[str]) -> str:
    """Prune ``names`` groups of a copy and compare it with masking; '' when they agree."""
    import torch

    pruned = copy.deepcopy(model)
    masked = copy.deepcopy(model)
    traced = _trace(pruned, shape)
    by_name = {e.info.name: e for e in traced.entries}
    plan: list[tuple[_Entry, list[int]]] = []
    with torch.no_grad():
        for name in names:
            entry = by_name[name]
            idxs = _trial_idxs(entry.info.channels)
            if not idxs:
                continue
            plan.append((entry, idxs))
            sub = traced.dg.get_pruning_group(entry.root, entry.root_fn, idxs)
            for dep, item_idxs in sub:
                mod = dep.target.module
                if not isinstance(mod, _layer_types()) or not traced.dg.is_in_channel_pruning_fn(dep.handler):
                    continue
                if getattr(mod, "groups", 1) != 1:  # depthwise: its outputs are masked downstream
                    continue
                target = masked.get_submodule(_name_of(pruned, mod))
                weight = target.weight
                assert isinstance(weight, torch.Tensor)
                if getattr(target, "transposed", False):
                    weight[list(item_idxs)] = 0.0
                else:
                    weight[:, list(item_idxs)] = 0.0
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    if shape[0] == 1:
        x = torch.cat([x, torch.randn(*shape, generator=torch.Generator().manual_seed(2))])
    x = x.to(_device(model))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for entry, idxs in plan:
                traced.dg.get_pruning_group(entry.root, entry.root_fn, idxs).prune(record_history=False)
        pruned.eval()
        masked.eval()
        with torch.no_grad():
            out_p = pruned(x)
            out_m = masked(x)
    except Exception as exc:  # any failure of the pruned model is the answer
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"the pruned model fails: {text}"
    if not isinstance(out_p, torch.Tensor) or out_p.shape != out_m.shape:
        return "the pruned model's output has a different shape"
    scale = float(out_m.abs().max()) or 1.0
    err = float((out_p - out_m).abs().max())
    if err > 1e-4 * max(scale, 1.0):
        return f"the pruned model's output differs from the masked original by {err:.3g}"
    return ""


def _name_of(model: nn.Module, module: Any) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ModelError(f"module {module!r} is not part of {type(model).__name__}")


def _culprit(traced: _Traced, entry: _Entry) -> str:
    """Best guess at the layer responsible for a failing group, as 'name (Type)'."""
    model = traced.model
    found: list[str] = []
    for node in entry.op_nodes:
        name = traced.gradfn_owner.get(node.grad_fn)
        if name is not None and name not in found:
            found.append(name)

    def rank(n: str) -> tuple[int, int]:  # custom modules first, then the innermost
        mod = model.get_submodule(n) if n else model
        return (1 if type(mod).__module__.startswith("torch.") else 0, -n.count(".") - (1 if n else 0))

    if found:
        n = min(found, key=rank)
        mod = model.get_submodule(n) if n else model
        return f"'{n}' ({type(mod).__name__})" if n else f"{type(model).__name__}.forward"
    ops = sorted({getattr(n.grad_fn, "name", lambda: "?")() for n in entry.op_nodes})
    return f"{entry.info.name} (ops {', '.join(ops) or 'unknown'})"


def unsupported_groups(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str]:
    """Groups that Torch-Pruning cannot prune correctly: leading layer name -> reason (with the culprit layer).

    Checked once per model structure and input shape (cached); the model is not modified.
    """
    shape = _input_shape(input_shape)
    key = _signature(model, shape)
    if key in _VERIFIED:
        return _VERIFIED[key]
    traced = _trace(copy.deepcopy(model), shape)
    names = [e.info.name for e in traced.entries]
    bad: dict[str, str] = {}
    if names and _trial(model, shape, names):
        for e in traced.entries:
            why = _trial(model, shape, [e.info.name])
            if why:
                bad[e.info.name] = f"layer {_culprit(traced, e)} cannot be channel-pruned ({why} when prune group '{e.info.name}' is pruned)"
    _VERIFIED[key] = bad
    for name, why in bad.items():
        log.info("group %s: %s", name, why)
    return bad


# --------------------------------------------------------------------------- analysis
def prunable_groups(model: nn.Module, input_shape: Sequence[int], *, strict: bool = True) -> list[PruneGroup]:
    """The model's prunable channel groups in layer order (``index`` = position in this list).

    ``strict``: raise :class:`UnsupportedLayerError` when any group cannot be pruned correctly;
    otherwise such groups are left out.  The model is not modified.
    """
    shape = _input_shape(input_shape)
    traced = _trace(copy.deepcopy(model), shape)
    bad = unsupported_groups(model, shape)
    if bad and strict:
        raise UnsupportedLayerError(next(iter(bad.values())) + "; replace that layer with standard modules (Conv2d, BatchNorm2d, Linear, ...), or keep it out of pruning by running only the precision stage (--stages quant)")
    kept = [e.info for e in traced.entries if e.info.name not in bad]
    return [PruneGroup(**{**g.__dict__, "index": i}) for i, g in enumerate(kept)]


def layer_table(model: nn.Module, input_shape: Sequence[int], *, strict: bool = True) -> list[LayerInfo]:
    """One row per conv/linear layer in ``named_modules()`` order.

    ``group`` is the index in :func:`prunable_groups` of the group owning the layer's output
    channels (-1 and ``prunable=False`` for the classifier and other unprunable layers);
    ``macs`` for one forward of ``input_shape``; ``params`` counts the layer's own parameters.
    """
    from torch import nn

    from hwcompress.macs import layer_macs

    shape = _input_shape(input_shape)
    groups = prunable_groups(model, shape, strict=strict)
    owner = {layer: g.index for g in groups for layer in g.layers}
    macs = layer_macs(model, shape)
    rows: list[LayerInfo] = []
    for name, m in model.named_modules():
        kernel: tuple[int, ...] = ()
        stride: tuple[int, ...] = ()
        if isinstance(m, nn.Linear):
            kind, cin, cout, groups_n = "linear", m.in_features, m.out_features, 1
        elif isinstance(m, nn.modules.conv._ConvNd):
            kind = "dwconv" if _is_depthwise(m) else ("gconv" if _is_grouped(m) else "conv")
            cin, cout, groups_n = m.in_channels, m.out_channels, m.groups
            kernel, stride = tuple(m.kernel_size), tuple(m.stride)
        else:
            continue
        rows.append(
            LayerInfo(
                name=name,
                kind=kind,
                in_channels=int(cin),
                out_channels=int(cout),
                kernel=tuple(int(k) for k in kernel),
                stride=tuple(int(s) for s in stride),
                groups=int(groups_n),
                macs=macs.get(name, 0),
                params=sum(p.numel() for p in m.parameters()),
                group=owner.get(name, -1),
                prunable=name in owner,
            )
        )
    return rows


# --------------------------------------------------------------------------- pruning
def keep_count(channels: int, ratio: float, multiple: int = 1) -> int:
    """Channels to keep: ``channels x ratio`` rounded to the nearest ``multiple``, at least one
    multiple and at most ``channels`` (a group narrower than ``multiple`` is kept whole)."""
    if not 0.0 < ratio <= 1.0:
        raise PolicyError(f"keep ratio {ratio} is outside (0, 1]")
    if multiple < 1:
        raise PolicyError(f"channel multiple {multiple} must be >= 1")
    if ratio >= 1.0 or channels <= multiple:
        return channels
    k = math.floor(channels * ratio / multiple + 0.5) * multiple
    return min(channels, max(multiple, k))


def _scorer(importance: str) -> Any:
    import torch_pruning as tp

    if importance == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if importance == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if importance == "bn":
        return tp.importance.BNScaleImportance()
    if importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise PolicyError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")


def _to_tensor(a: Any) -> torch.Tensor:
    import torch

    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a)


def _accumulate_gradients(model: nn.Module, batches: Iterable[Any]) -> int:
    """Sum cross-entropy gradients over ``batches`` (x or (x, y); without y the model's own
    top-1 predictions are the labels).  Returns the number of batches."""
    import torch
    import torch.nn.functional as F

    model.eval()
    model.zero_grad(set_to_none=True)
    n = 0
    with torch.enable_grad():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                x, y = _to_tensor(batch[0]).float(), _to_tensor(batch[1]).long()
            else:
                x, y = _to_tensor(batch).float(), None
            logits = model(x)
            if y is None:
                y = logits.detach().argmax(1)
            F.cross_entropy(logits, y).backward()
            n += 1
    return n


def taylor_importance(model: nn.Module, input_shape: Sequence[int], example_batches: Iterable[Any]) -> dict[str, np.ndarray]:
    """First-order Taylor importance of every output channel of every prunable group, comparable across groups.

    For each group (by name, as :func:`prunable_groups` names them) and each of its channels, summed
    over the batches of ``example_batches`` (x or (x, y); without y the model's own top-1
    predictions): ``sum |w * dL/dw|`` over every weight the channel couples in the group's dependency
    graph (its layers' output filters and its consumers' input slices), as Torch-Pruning's
    ``GroupTaylorImportance`` sums it (``group_reduction="sum"``, no per-group normalisation, so that
    one group's channels compare with another's), plus ``|g * dL/dg| + |b * dL/db|`` of every batch
    norm in the group (Torch-Pruning 1.6's scorer leaves batch norms out; HALP scores them).  ``L``:
    the batch's cross-entropy; each batch is scored on its own gradient (Molchanov et al. 2019: at a
    trained model's minimum the gradients of many batches summed first would largely cancel).  The
    model is not modified.  Raises PolicyError when no batch is given.
    """
    import torch
    import torch_pruning as tp

    shape = _input_shape(input_shape)
    work = copy.deepcopy(model)
    traced = _trace(work, shape)
    scorer = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    totals = {e.info.name: torch.zeros(e.info.channels, dtype=torch.float64) for e in traced.entries}
    batches = 0
    for batch in example_batches:
        batches += _accumulate_gradients(work, [batch])
        with torch.no_grad():
            for entry in traced.entries:
                total = totals[entry.info.name]
                imp = scorer(entry.group)
                if imp is not None:
                    total += imp.detach().double().cpu()
                for item in entry.group:
                    bn = item.dep.target.module
                    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or not bn.affine:
                        continue
                    idxs = list(item.idxs)
                    for p in (bn.weight, bn.bias):
                        if p is not None and p.grad is not None:
                            local = (p.data[idxs] * p.grad.data[idxs]).abs().double().cpu()
                            total.scatter_add_(0, torch.as_tensor(list(item.root_idxs)), local)
    if batches == 0:
        raise PolicyError("example_batches is empty; Taylor importance needs at least one batch")
    return {name: t.numpy().copy() for name, t in totals.items()}


def apply_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    input_shape: Sequence[int],
    *,
    channel_multiple: int = 1,
    importance: str = "l1",
    example_batches: Iterable[Any] | None = None,
    counts: Mapping[str, int] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
) -> nn.Module:
    """A pruned copy of ``model`` (the original is untouched).

    ``policy.keep`` maps group names (see :func:`prunable_groups`) to keep ratios; unnamed
    groups keep every channel.  Keep counts follow :func:`keep_count` with ``channel_multiple``;
    ``counts`` (group name -> channels to keep) gives them directly instead.
    Channels with the lowest group importance go: ``l1``/``l2`` weight magnitude over the
    whole group, ``bn`` batch-norm scale, ``taylor`` first-order Taylor (needs
    ``example_batches``: a few batches of x or (x, y), numpy or torch).  ``scores`` (group name
    -> one score per channel of the group, e.g. :func:`taylor_importance`) ranks a named group's
    channels instead of ``importance``.
    """
    import torch

    shape = _input_shape(input_shape)
    if importance not in IMPORTANCES:
        raise PolicyError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
    if importance == "taylor" and example_batches is None:
        raise PolicyError("importance 'taylor' needs example_batches (a few batches of input data)")
    pruned = copy.deepcopy(model)
    traced = _trace(pruned, shape)
    by_name = {e.info.name: e for e in traced.entries}
    unknown = sorted((set(policy.keep) | set(counts or {}) | set(scores or {})) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        extra = ""
        member = {layer: e.info.name for e in traced.entries for layer in e.info.layers}
        u = unknown[0]
        if u == traced.classifier:
            extra = f" ({u} is not prunable: it is the classifier)"
        elif u in traced.skipped:
            extra = f" ({u} is not prunable: {traced.skipped[u]})"
        elif u in member:
            extra = f" ({u} is pruned with group {member[u]}: name the group)"
        raise PolicyError(f"policy names unknown prune group(s) {', '.join(unknown)}{extra}; groups are: {known}")
    for name, values in (scores or {}).items():
        if name in by_name and len(values) != by_name[name].info.channels:
            raise PolicyError(f"group {name} has {by_name[name].info.channels} channels; {len(values)} scores given")
    plan: list[tuple[_Entry, int]] = []
    for entry in traced.entries:
        if counts is not None and entry.info.name in counts:
            k = int(counts[entry.info.name])
            if not 1 <= k <= entry.info.channels:
                raise PolicyError(f"group {entry.info.name} has {entry.info.channels} channels; cannot keep {k}")
        else:
            k = keep_count(entry.info.channels, policy.keep.get(entry.info.name, 1.0), channel_multiple)
        if k < entry.info.channels:
            plan.append((entry, k))
    if plan:
        bad = unsupported_groups(model, shape)
        for entry, _ in plan:
            if entry.info.name in bad:
                raise UnsupportedLayerError(bad[entry.info.name])
        if importance == "taylor" and any(e.info.name not in (scores or {}) for e, _ in plan):
            assert example_batches is not None
            if _accumulate_gradients(pruned, example_batches) == 0:
                raise PolicyError("example_batches is empty; importance 'taylor' needs at least one batch")
        scorer = _scorer(importance)
        fallback = _scorer("l2")
        drops: list[tuple[_Entry, list[int]]] = []
        with torch.no_grad():
            for entry, k in plan:
                given = (scores or {}).get(entry.info.name)
                imp = torch.as_tensor([float(v) for v in given]) if given is not None else scorer(entry.group)
                if imp is None:  # e.g. no batch norm in the group for "bn"
                    imp = fallback(entry.group)
                order = torch.argsort(imp.detach().float().cpu(), stable=True)
                drops.append((entry, sorted(int(i) for i in order[: entry.info.channels - k])))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            for entry, idxs in drops:
                traced.dg.get_pruning_group(entry.root, entry.root_fn, idxs).prune(record_history=False)
                log.debug("group %s: %d -> %d channels", entry.info.name, entry.info.channels, entry.info.channels - len(idxs))
    pruned.zero_grad(set_to_none=True)
    pruned.train(model.training)
    return pruned


def uniform_prune(
    model: nn.Module,
    keep_ratio: float,
    input_shape: Sequence[int],
    channel_multiple: int = 1,
    *,
    importance: str = "l1",
) -> nn.Module:
    """Every prunable group keeps ``keep_ratio`` of its channels (rounded to ``channel_multiple``)."""
    groups = prunable_groups(model, input_shape)
    policy = CompressionPolicy(keep={g.name: keep_ratio for g in groups})
    return apply_policy(model, policy, input_shape, channel_multiple=channel_multiple, importance=importance)


def global_magnitude_prune(
    model: nn.Module,
    macs_ratio: float,
    input_shape: Sequence[int],
    channel_multiple: int = 1,
    *,
    steps: int = 40,
    max_channel_ratio: float = 0.9,
) -> nn.Module:
    """Torch-Pruning global L1-magnitude pruning of a copy until MACs <= ``macs_ratio`` x original.

    Channels are ranked across all groups (normalised group importance) and removed in up to
    ``steps`` equal steps of at most ``max_channel_ratio`` of all channels; no layer loses more
    than ``max_channel_ratio`` of its channels.  Raises :class:`PolicyError` when the target
    cannot be reached.
    """
    import torch
    import torch_pruning as tp

    from hwcompress.macs import count_macs

    if not 0.0 < macs_ratio <= 1.0:
        raise PolicyError(f"MACs ratio {macs_ratio} is outside (0, 1]")
    shape = _input_shape(input_shape)
    bad = unsupported_groups(model, shape)
    if bad:
        raise UnsupportedLayerError(next(iter(bad.values())))
    pruned = copy.deepcopy(model)
    base, _ = count_macs(pruned, shape)
    target = macs_ratio * base
    if base <= target:
        return pruned
    classifier = find_classifier(pruned, shape)
    ignored = [pruned.get_submodule(classifier)] if classifier is not None else []
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(_device(pruned))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            pruned,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=True,
            pruning_ratio=max_channel_ratio,
            max_pruning_ratio=max_channel_ratio,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=channel_multiple if channel_multiple > 1 else None,
        )
        macs = base
        for step in range(steps):
            pruner.step()
            macs, _ = count_macs(pruned, shape)
            log.debug("global pruning step %d: MACs ratio %.3f", step + 1, macs / base)
            if macs <= target:
                break
    if macs > target:
        raise PolicyError(
            f"global magnitude pruning reached a MACs ratio of {macs / base:.3f}, above the target "
            f"{macs_ratio:.3f}; raise max_channel_ratio or the target"
        )
    pruned.zero_grad(set_to_none=True)
    pruned.train(model.training)
    return pruned


def group_channels(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Current channel count of each prunable group, by group name (no verification run)."""
    traced = _trace(copy.deepcopy(model), _input_shape(input_shape))
    return {e.info.name: e.info.channels for e in traced.entries}


# --------------------------------------------------------------------------- save / load
def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pruned ``model`` atomically to ``path``.

    With ``source`` — ``{"spec": model spec, "in_channels": C, "num_classes": K, "input_shape":
    [N, C, H, W]}`` — the file holds the weights (a state_dict) and each group's channel count:
    :func:`load_pruned` rebuilds the architecture from the spec in any process, no pickled
    classes needed (a ``file.py:factory`` spec is stored with the file's absolute path).  Without
    it the whole module is pickled (format 1), readable only where its classes can be imported.
    ``meta``: JSON-like extras stored beside it (policy, accuracy, ...).
    """
    import io

    import torch

    from hwcompress.fsutil import atomic_write_bytes

    payload: dict[str, Any] = {"format": SAVE_FORMAT, "meta": dict(meta or {})}
    if source is not None:
        from hwcompress.zoo.user import portable_spec

        shape = tuple(int(d) for d in source["input_shape"])
        payload.update(version=2, state_dict=model.state_dict(), build={
            "spec": portable_spec(str(source["spec"])), "in_channels": int(source["in_channels"]),
            "num_classes": int(source["num_classes"]), "input_shape": list(shape),
            "channels": group_channels(model, shape),
        })
    else:
        payload.update(version=1, model=model)
    buf = io.BytesIO()
    try:
        torch.save(payload, buf)
    except Exception as exc:
        raise ModelError(f"cannot save {type(model).__name__}: {exc}") from exc
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def load_pruned(path: str | os.PathLike[str], *, with_meta: bool = False) -> Any:
    """Load a model written by :func:`save_pruned` (in eval mode); with ``with_meta`` also its meta dict.

    Format 2 is read with ``weights_only=True`` and rebuilt from its spec (the factory's module or
    file must still be there).  Format 1 unpickles the file (``weights_only=False``), which can
    execute code: load only files written by hwcompress on a machine you trust.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        from hwcompress.errors import FileMissingError

        raise FileMissingError(f"pruned model file {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        try:
            payload = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{p} is not a readable pruned-model file ({first})") from exc
    if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
        raise ModelError(f"{p} was not written by hwcompress.prune.save_pruned")
    version = payload.get("version")
    if version not in SAVE_VERSIONS:
        raise ModelError(f"{p} has pruned-model format version {version}; this hwcompress reads "
                         f"{', '.join(map(str, SAVE_VERSIONS))}")
    model = payload["model"] if version == 1 else _rebuild(p, payload["build"], payload["state_dict"])
    model.eval()
    return (model, payload.get("meta", {})) if with_meta else model


def _rebuild(path: Path, build: Mapping[str, Any], state: Mapping[str, Any]) -> nn.Module:
    """The architecture ``build`` describes (spec, then each group pruned to its count), with ``state`` loaded."""
    from hwcompress.zoo import build_model, is_zoo_name
    from hwcompress.zoo.user import build_user_model

    spec = str(build["spec"])
    c, k = int(build["in_channels"]), int(build["num_classes"])
    try:
        net = (build_model(spec, in_channels=c, num_classes=k) if is_zoo_name(spec)
               else build_user_model(spec, in_channels=c, num_classes=k))
    except ModelError as exc:
        raise ModelError(f"{path}: its model {spec} cannot be rebuilt ({exc}); the factory's file or module must "
                         "be where it was when the search ran") from None
    pruned = apply_policy(net, CompressionPolicy(), tuple(build["input_shape"]), counts=dict(build["channels"]))
    try:
        pruned.load_state_dict(dict(state), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: the weights do not fit {spec} pruned as recorded ({first}); "
                         "the factory has changed since the search") from None
    return pruned
