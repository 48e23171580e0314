"""Where pretrained weights come from, and fitting a weights file onto a backbone's state dict.

Sources (``BackboneSpec.weights``): an installed package (offline), a file on the server (safetensors or a
torch state dict), or the framework's own download into a cache dir, which only happens when the host
allows it (``WeightsAccess.allow_download``); without that a download source must already be cached (a
Docker image can bake it in). Nothing here reads environment variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model_core.config import BackboneSpec, WeightsAccess
from model_core.packaged_weights import PACKAGED, packaged_file


class BackboneError(ValueError):
    """A backbone spec that cannot be built: an unknown model name, a resolution it cannot take."""


class WeightsError(BackboneError):
    """Weights that cannot be obtained or do not fit: a missing file, wrong shapes, downloads off."""


def package_weights_file(name: str) -> Path:
    """The weights file an installed package ships for backbone ``name`` (see model_core.packaged_weights)."""
    entry = PACKAGED.get(name)
    if entry is None:
        raise WeightsError(f"no installed package ships weights for {name!r}")
    path = packaged_file(name)
    if path is None:
        raise WeightsError(
            f"weights 'package' for {name} need the package {entry.module.replace('_', '-')} (a dependency of engram); "
            "it is not installed, or lacks its weights file"
        )
    return path


def server_file(spec: BackboneSpec, access: WeightsAccess) -> Path:
    """The path of a "file" source. With ``access.files_dir`` it must resolve (symbolic links followed) inside that
    directory, and every refusal says the same about any path outside it, so nothing is learnt about other files.
    Without it (a library caller), a relative path is taken relative to the weights cache dir."""
    assert spec.file is not None
    if access.files_dir is not None:
        base = Path(access.files_dir).resolve()
        path = (base / spec.file).resolve()
        if base not in path.parents:
            raise WeightsError(f"weights file {spec.file!r} is not inside the server's weights directory; name a file "
                               "there by its path relative to it")  # fmt: skip
        if not path.is_file():
            raise WeightsError(f"the server's weights directory has no file {spec.file!r}")
        return path
    path = Path(spec.file).expanduser()
    if not path.is_absolute() and access.cache_dir:
        path = Path(access.cache_dir) / path
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist on the server (or is not a file)")
    return path


def download_file(spec: BackboneSpec, pretrained_cfg: Mapping[str, Any], access: WeightsAccess) -> Path:
    """The framework's weights for ``spec``, from the cache dir or, when allowed, downloaded into it."""
    cache_dir = spec.cache_dir or access.cache_dir
    off = not access.allow_download
    hint = "downloads are off on this host (set ENGRAM_ALLOW_DOWNLOADS=true, or bake the weights into the image)"
    hf_id = pretrained_cfg.get("hf_hub_id")
    url = pretrained_cfg.get("url")
    if hf_id:
        from huggingface_hub import hf_hub_download

        errors = []
        for filename in ("model.safetensors", "pytorch_model.bin"):
            try:
                return Path(hf_hub_download(hf_id, filename, cache_dir=cache_dir, local_files_only=off))
            except Exception as exc:  # not in the cache, no network, no such file: try the next name
                errors.append(f"{filename}: {type(exc).__name__}")
        where = f"in the cache dir {cache_dir!r}" if cache_dir else "in the default cache"
        raise WeightsError(
            f"weights of {spec.name!r} ({hf_id}) are not {where}" + (f" and {hint}" if off else f" and the download failed ({'; '.join(errors)})")
        )
    if url:
        cache = Path(cache_dir or Path(torch.hub.get_dir()) / "checkpoints")
        dest = cache / Path(str(url)).name
        if dest.is_file():
            return dest
        if off:
            raise WeightsError(f"weights of {spec.name!r} are not in the cache dir {str(cache)!r} and {hint}")
        cache.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(str(url), str(dest), progress=False)
        except Exception as exc:
            raise WeightsError(f"downloading the weights of {spec.name!r} from {url} failed: {exc}") from None
        return dest
    raise WeightsError(f"{spec.name!r} has no pretrained weights to download; give a file or weights 'none'")


def is_safetensors(path: Path) -> bool:
    """By name or by content: 8 bytes of header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a torch state dict (also one wrapped as {"state_dict": ...})."""
    try:
        if is_safetensors(path):
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the loaders' own text can quote the file's bytes: say it in our words
        raise WeightsError(f"weights file {path.name!r} is neither safetensors nor a torch state dict") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise WeightsError(f"weights file {path.name!r} holds no state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in data.items()}


def fit_state_dict(
    target: Mapping[str, Tensor], found: Mapping[str, Tensor], head_keys: tuple[str, ...] = (), ordered: bool = True
) -> dict[str, Tensor]:
    """Map the file's tensors onto the backbone's state dict ``target``, or say what does not fit.

    Names match when the file uses the backbone's names (the classifier's ``head_keys`` may be extra).
    Otherwise the tensors are mapped in order, one to one (how the efficientnet-lite0 package's 296
    tensors map onto timm's ``efficientnet_lite0``), the head's tensors being allowed at the end; only
    when the file keeps an order (``ordered``: a torch state dict does, a safetensors file does not).
    """
    extra = [k for k in found if k not in target]
    missing = [k for k in target if k not in found]
    if not missing and all(k in head_keys for k in extra):
        pairs = [(k, k, found[k]) for k in target]
    elif not ordered:
        raise WeightsError(
            f"the weights file lacks the backbone's tensor {missing[0]!r}" * bool(missing)
            + (" and " if missing and extra else "") + f"has {extra[0]!r}, which the backbone lacks" * bool(extra)
            + "; a safetensors file keeps no tensor order, so its names must be the backbone's"
        )
    else:
        values = [(k, v) for k, v in found.items()]
        n_extra = len(values) - len(target)
        if n_extra not in (0, len(head_keys)):
            raise WeightsError(
                f"the weights file has {len(values)} tensors and the backbone {len(target)}"
                + (f" (+{len(head_keys)} of the classifier head)" if head_keys else "")
                + f"; names differ too (e.g. the file's {extra[0]!r})" * bool(extra)
            )
        pairs = [(k, fk, v) for k, (fk, v) in zip(target, values, strict=False)]
    out: dict[str, Tensor] = {}
    for i, (key, file_key, value) in enumerate(pairs):
        want = target[key]
        if tuple(value.shape) != tuple(want.shape):
            at = f"tensor {file_key!r}" if file_key == key else f"tensor #{i} {file_key!r} (mapped in order onto {key!r})"
            raise WeightsError(
                f"the weights do not fit: {at} has shape {list(value.shape)}, the backbone needs {list(want.shape)}"
            )
        out[key] = value.to(want.dtype)
    return out
