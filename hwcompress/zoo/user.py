"""Load a user's own model: ``package.module:factory`` or ``path/to/file.py:factory`` + a checkpoint."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwcompress.errors import ModelError

if TYPE_CHECKING:
    from torch import nn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def is_user_spec(spec: str) -> bool:
    """True for ``module:factory`` / ``file.py:factory`` specs (a zoo name has no colon)."""
    return ":" in spec


def split_spec(spec: str) -> tuple[str, str]:
    """(module or file, factory name); raises ModelError on a malformed spec."""
    where, sep, factory = spec.rpartition(":")
    if not sep or not where or not factory.isidentifier():
        raise ModelError(
            f"model spec {spec!r} is not 'package.module:factory' or 'path/to/file.py:factory'; "
            "name a function or class that returns an nn.Module"
        )
    return where, factory


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; check the path in the model spec")
    name = "hwcompress_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path} as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"importing {path} failed: {_first_line(exc)}") from exc
    return module


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the current working directory is importable, as with `python -m`
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"cannot import module {name!r} ({_first_line(exc)}); run from the folder that holds it or install it"
        ) from exc
    except Exception as exc:
        raise ModelError(f"importing {name!r} failed: {_first_line(exc)}") from exc


def portable_spec(spec: str) -> str:
    """``spec`` with a ``file.py`` part made absolute, so another process in another folder finds it."""
    if not is_user_spec(spec):
        return spec
    where, factory = split_spec(spec)
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{factory}"
    return spec


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable that ``spec`` names (not called)."""
    where, factory = split_spec(spec)
    module = _import_file(Path(where).expanduser()) if where.endswith(".py") else _import_module(where)
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise ModelError(f"{where} has no callable {factory!r}; name a function or class that returns an nn.Module")
    return fn


def build_user_model(spec: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Call the factory that ``spec`` names, passing in_channels/num_classes if it accepts them."""
    from torch import nn

    fn = resolve_factory(spec)
    kwargs: dict[str, int] = {}
    try:
        params = inspect.signature(fn).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if key in params or takes_kwargs:
                kwargs[key] = value
    except (TypeError, ValueError):  # builtins without a signature: call without arguments
        pass
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ModelError(f"model factory {spec} failed: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict(model: nn.Module, checkpoint: str | os.PathLike[str]) -> None:
    """Load weights from ``checkpoint`` (a state_dict, or a dict holding one under "state_dict"/"model")."""
    import torch

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; pass the .pt file saved with torch.save(model.state_dict())")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot load checkpoint {path} ({_first_line(exc)}); save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"checkpoint {path} holds no state_dict (a dict of tensors, or one under 'state_dict'/'model'); "
            "save it with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel checkpoints
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelError(f"checkpoint {path} does not fit {type(model).__name__}: {'; '.join(parts)}")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"checkpoint {path} does not fit {type(model).__name__}: {k} is {tuple(state[k].shape)} in the "
            f"checkpoint but {tuple(own[k].shape)} in the model ({len(wrong)} mismatching tensor(s)); "
            "check in_channels/num_classes and the model spec"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"loading {path} into {type(model).__name__} failed: {_first_line(exc)}") from exc


def load_user_model(spec: str, checkpoint: str | None, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build the model that ``spec`` names and, when given, load ``checkpoint`` into it (eval mode)."""
    model = build_user_model(spec, in_channels=in_channels, num_classes=num_classes)
    if checkpoint is not None:
        load_state_dict(model, checkpoint)
    model.eval()
    return model


__all__ = [
    "build_user_model", "is_user_spec", "load_state_dict", "load_user_model", "portable_spec", "resolve_factory",
    "split_spec",
]
