"""Zoo loader ``edm``: NVIDIA EDM network pickles (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"; github NVlabs/edm).

The published pickles (``edm-{cifar10-32x32,afhqv2-64x64,ffhq-64x64}-uncond-{vp,ve}.pkl``,
``edm-cifar10-32x32-cond-{vp,ve}.pkl``, ``edm-imagenet-64x64-cond-adm.pkl``) are dicts whose ``'ema'`` entry is
an ``EDMPrecond`` module called as ``net(x, sigma, class_labels)``; it returns the denoiser
D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), an x_0 prediction with t = sigma (alpha = 1).
Hence ``model_type='x_start'`` and, through :func:`ld3.model_wrapper`, eps = (x - D(x)) / sigma.
The noise schedule is :class:`~ld3.schedules.NoiseScheduleEDM` with sigma in [0.002, 80] (the range
used by EDM's sampler and by LD3, github vinhsuhi/LD3 ``models/edm_uncond.py``).

Loading is safe by default: :mod:`ld3.models.zoo.edm_pickle` reads the pickle with an allow-list unpickler
that recovers each stored class name, ``init_kwargs`` and tensor as data (the module source that EDM's
``torch_utils.persistence`` embeds is never executed, and no NVIDIA code is needed); the network is then
rebuilt from the project's own modules (:mod:`ld3.models.zoo.edm_networks`: ``SongUNet`` DDPM++/NCSN++,
``DhariwalUNet`` ADM; ``EDMPrecond``, ``VPPrecond``, ``VEPrecond``) and its state dict loaded strictly.
``edm_repo`` (a checkout of NVlabs/edm) is an explicit opt-in for trusted files of other variants: it
unpickles with NVIDIA's code, which runs code from the file.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any, List, Sequence, Union

import torch
import torch.nn.functional as F

from ld3.models.zoo import LoadedModel, register_model
from ld3.models.zoo._checkpoint import check_weights_file
from ld3.models.zoo._weights import DOWNLOAD_SCRIPT, PathLike, resolve_weights_path
from ld3.models.zoo.edm_networks import NETWORK_CLASSES, build_network
from ld3.models.zoo.edm_pickle import (
    PersistentRecord,
    UnsafePickleError,
    iter_records,
    record_state_dict,
    safe_load_edm_pickle,
)
from ld3.schedules import NoiseScheduleEDM
from ld3.utils import resolve_device

#: the modules of NVIDIA's EDM repository that its pickles refer to
EDM_MODULES = ("dnnlib", "torch_utils", "training")
EDM_REPO_URL = "https://github.com/NVlabs/edm"

#: the published pickles (what ``scripts/download_model.sh edm`` fetches)
EDM_CHECKPOINTS = {
    "cifar10": "edm-cifar10-32x32-uncond-vp.pkl",
    "cifar10_cond": "edm-cifar10-32x32-cond-vp.pkl",
    "afhqv2": "edm-afhqv2-64x64-uncond-vp.pkl",
    "ffhq": "edm-ffhq-64x64-uncond-vp.pkl",
    "imagenet64": "edm-imagenet-64x64-cond-adm.pkl",
    "cifar10_ve": "edm-cifar10-32x32-uncond-ve.pkl",
    "cifar10_cond_ve": "edm-cifar10-32x32-cond-ve.pkl",
    "afhqv2_ve": "edm-afhqv2-64x64-uncond-ve.pkl",
    "ffhq_ve": "edm-ffhq-64x64-uncond-ve.pkl",
}

#: persistent classes besides the networks' that EDM snapshots hold (``loss_fn``, ``augment_pipe``); their
#: records are kept as inert data and never instantiated
AUXILIARY_CLASSES = ("EDMLoss", "VPLoss", "VELoss", "AugmentPipe")

_REQUIRED_ATTRS = ("img_resolution", "img_channels", "label_dim")

ClassLabels = Union[None, int, Sequence[int]]


class EDMDenoiser(torch.nn.Module):
    """Adapter ``network(x, t_input, cond=None) -> D(x)`` around an EDM ``net(x, sigma, class_labels)``.

    ``t_input`` is sigma (one per sample). For class-conditional networks (``label_dim > 0``) ``cond``
    is a batch of integer labels or of one-hot rows (B, label_dim); without one the fixed
    ``default_labels`` are used. Inputs are cast to the network's parameter dtype (EDMPrecond itself
    computes in float32) and the output back to the dtype of ``x``.
    """

    def __init__(self, net: torch.nn.Module, default_labels: ClassLabels = None) -> None:
        super().__init__()
        self.net = net
        self.label_dim = int(net.label_dim)
        if default_labels is not None and self.label_dim == 0:
            raise ValueError(
                f"class_labels={default_labels!r} was given but the EDM network is unconditional (label_dim=0)"
            )
        if default_labels is not None:
            _check_label_values(default_labels, self.label_dim, "class_labels")
        self.default_labels = default_labels
        params = list(net.parameters())
        self._dtype = params[0].dtype if params else torch.float32

    @property
    def device(self) -> torch.device:
        params = list(self.net.parameters())
        return params[0].device if params else torch.device("cpu")

    def one_hot(self, labels: Any, device: torch.device | None = None) -> torch.Tensor:
        """Integer labels (int, list or long tensor) or one-hot rows -> float one-hot (B, label_dim).

        The result is on ``device`` (default: the network's current device).
        """
        device = self.device if device is None else device
        if isinstance(labels, int):
            labels = [labels]
        if not isinstance(labels, torch.Tensor):
            _check_label_values(labels, self.label_dim, "class label")
            labels = torch.as_tensor(list(labels), dtype=torch.long)
        labels = labels.to(device)
        if labels.is_floating_point():
            if labels.dim() != 2 or labels.shape[1] != self.label_dim:
                raise ValueError(
                    f"float class labels must be one-hot rows of shape (B, {self.label_dim}), got {tuple(labels.shape)}"
                )
            return labels
        if labels.dim() != 1:
            raise ValueError(f"integer class labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        return F.one_hot(labels, self.label_dim).to(self._dtype)

    def _labels(self, cond: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.label_dim == 0:
            if cond is not None:
                raise ValueError("the EDM network is unconditional (label_dim=0) but a condition was given")
            return None
        if cond is None:
            if self.default_labels is None:
                raise ValueError(
                    f"the EDM network is class-conditional (label_dim={self.label_dim}): pass condition=<labels> "
                    f"to model_fn, or set options.class_labels"
                )
            cond = self.default_labels
            if isinstance(cond, int):
                cond = [cond] * batch
        onehot = self.one_hot(cond, device)
        if onehot.shape[0] != batch:
            raise ValueError(f"got {onehot.shape[0]} class labels for a batch of {batch} samples")
        return onehot.to(self._dtype)

    def forward(self, x: torch.Tensor, t_input: torch.Tensor, cond: Any = None) -> torch.Tensor:
        sigma = torch.as_tensor(t_input, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        labels = self._labels(cond, x.shape[0], x.device)
        out = self.net(x.to(self._dtype), sigma.to(self._dtype), labels)
        return out.to(x.dtype)


def _check_label_values(labels: Any, label_dim: int, what: str) -> None:
    if isinstance(labels, torch.Tensor):
        return
    values: List[Any] = [labels] if isinstance(labels, int) else list(labels)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < label_dim]
    if bad:
        raise ValueError(f"{what} values {bad[:4]} are invalid; allowed: integers in [0, {label_dim})")


def _fetch_hint(file: Path) -> str:
    group = "edm-ve" if file.name.endswith("-ve.pkl") else "edm"
    return f"fetch it again with `bash {DOWNLOAD_SCRIPT} {group}` (or point options.path at a good copy of {file.name})"


def _prepare_edm_repo(edm_repo: PathLike) -> Path:
    """Check ``edm_repo`` and put it first on ``sys.path`` (it stays there: pickled classes may import lazily)."""
    repo = Path(edm_repo).expanduser().resolve()
    if not repo.is_dir():
        raise FileNotFoundError(
            f"options.edm_repo={str(edm_repo)!r} is not a directory; clone NVIDIA's EDM source tree "
            f"({EDM_REPO_URL}) and point edm_repo at it, or leave edm_repo unset to use the safe loader"
        )
    missing = [m for m in EDM_MODULES if not (repo / m).is_dir()]
    if missing:
        raise ValueError(
            f"options.edm_repo={str(repo)!r} does not look like NVIDIA's EDM source tree ({EDM_REPO_URL}): "
            f"missing the package(s) {missing}; it needs {list(EDM_MODULES)}"
        )
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return repo


def _check_snapshot(data: Any, file: Path) -> None:
    if not isinstance(data, dict) or "ema" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{str(file)!r} is not an EDM network pickle: expected a dict with key 'ema', found {found}")


def unpickle_edm_trusted(path: PathLike, edm_repo: PathLike) -> dict:
    """Unpickle with NVIDIA's own code from ``edm_repo`` (runs code from the file: trusted files only)."""
    repo = _prepare_edm_repo(edm_repo)
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"unpickling the EDM network {str(path)!r} needs NVIDIA's EDM source tree (modules "
            f"{', '.join(EDM_MODULES)}), but module {e.name!r} cannot be imported from "
            f"options.edm_repo={str(repo)!r}. Clone {EDM_REPO_URL} and set options.edm_repo=/path/to/edm.",
            name=e.name,
        ) from e
    _check_snapshot(data, Path(path))
    return data


def unpickle_edm_safe(path: PathLike) -> dict:
    """Read an EDM snapshot as data (see :mod:`ld3.models.zoo.edm_pickle`); entries stay records."""
    file = Path(path)
    try:
        with open(file, "rb") as f:
            data = safe_load_edm_pickle(f)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{str(file)!r}: {e}") from None
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(
            f"{str(file)!r} is truncated or not an EDM network pickle ({type(e).__name__}: {e}); {_fetch_hint(file)}"
        ) from e
    _check_snapshot(data, file)
    allowed = set(NETWORK_CLASSES) | set(AUXILIARY_CLASSES)
    for key, value in data.items():
        for where, rec in iter_records(value, str(key)):
            if isinstance(rec, PersistentRecord) and rec.class_name not in allowed:
                raise UnsafePickleError(
                    f"{str(file)!r}: persistent class {rec.class_name!r} at {where!r} is not on the EDM safe loader's "
                    f"allow-list {sorted(allowed)}; nothing from the file was run. For a trusted file of another "
                    f"variant pass edm_repo=<NVlabs/edm checkout>"
                )
    return data


def network_from_record(rec: Any, file: PathLike = "<pickle>") -> torch.nn.Module:
    """Rebuild the project's own module from the ``ema`` record and load its tensors strictly."""
    if not isinstance(rec, PersistentRecord):
        raise ValueError(f"{str(file)!r}: data['ema'] is a {type(rec).__name__}, expected an EDM persistent network")
    kwargs = rec.init_kwargs
    if not isinstance(kwargs, dict) or rec.init_args not in (None, (), []):
        raise ValueError(
            f"{str(file)!r}: the {rec.class_name} record has init_args={rec.init_args!r}, init_kwargs of type "
            f"{type(kwargs).__name__}; expected keyword arguments only"
        )
    with torch.device("meta"):
        net = build_network(str(rec.class_name), dict(kwargs))
    ours = {p: type(m).__name__ for p, m in net.named_modules() if type(m).__name__ in NETWORK_CLASSES}
    stored = {p: r.class_name for p, r in iter_records(rec) if isinstance(r, PersistentRecord)}
    if ours != stored:
        diff = sorted(set(ours.items()) ^ set(stored.items()))[:6]
        raise ValueError(f"{str(file)!r}: the stored module tree differs from {rec.class_name}(**init_kwargs): {diff}")
    state = record_state_dict(rec)
    net.load_state_dict(state, strict=True, assign=True)
    return net


@register_model("edm")
def load_edm(
    path: PathLike | None = None,
    checkpoint: str | None = None,
    weights_dir: PathLike | None = None,
    edm_repo: PathLike | None = None,
    device: str = "auto",
    class_labels: ClassLabels = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sha256: str | None = None,
    **unknown: Any,
) -> LoadedModel:
    """Load an EDM pickle as a :class:`LoadedModel` (x_start prediction, t = sigma).

    Args:
        path: the ``.pkl`` file; or ``checkpoint``: its file name inside ``weights_dir``
            (default ``$LD3_CACHE/weights``; the configs pass ``${paths.weights}``).
        edm_repo: opt-in for trusted files the safe loader does not know: NVIDIA's EDM source tree, whose
            code unpickles the file (running code from it). Default None: the safe loader.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        class_labels: default label(s) of a class-conditional network (an int for every sample, or one
            per sample), used when ``model_fn`` gets no condition.
        sigma_min, sigma_max: the time range of the :class:`NoiseScheduleEDM` (EDM: 0.002, 80).
        sha256: if given, the file's checksum (hex digest, or a prefix of at least 8 digits) must match; checked
            before anything is read.
    """
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for model 'edm'; allowed: {sorted(_LOAD_EDM_OPTIONS)}"
        )
    requested = Path(str(path if path is not None else checkpoint or "")).name
    group = "edm-ve" if requested.endswith("-ve.pkl") else "edm"
    file = resolve_weights_path(path, checkpoint, weights_dir, "EDM network pickle", group, want_dir=False)
    check_weights_file(file, "EDM network pickle", group, sha256)  # before anything is read from the file
    dev = resolve_device(device)
    if edm_repo is not None:
        net = unpickle_edm_trusted(file, edm_repo)["ema"]
        if not isinstance(net, torch.nn.Module):
            raise ValueError(f"{str(file)!r}: data['ema'] is a {type(net).__name__}, expected a torch.nn.Module")
    else:
        net = network_from_record(unpickle_edm_safe(file)["ema"], file)
    missing = [a for a in _REQUIRED_ATTRS if not hasattr(net, a)]
    if missing:
        raise ValueError(
            f"{str(file)!r}: the network {type(net).__name__} lacks EDMPrecond attributes {missing} "
            f"(expected {list(_REQUIRED_ATTRS)})"
        )
    net = net.to(dev).eval().requires_grad_(False)
    denoiser = EDMDenoiser(net, default_labels=class_labels)
    label_dim = denoiser.label_dim
    res, ch = int(net.img_resolution), int(net.img_channels)

    def cond_process_fn(labels: Any) -> Any:
        """Integer labels -> one-hot rows on the network's current device (what EDMPrecond takes)."""
        return denoiser.one_hot(labels)

    return LoadedModel(
        name="edm",
        noise_schedule=NoiseScheduleEDM(sigma_min, sigma_max),
        network=denoiser,
        model_type="x_start",
        shape=(ch, res, res),
        num_classes=label_dim or None,
        null_class=None,
        decode=None,
        cond_process_fn=cond_process_fn if label_dim else None,
        default_guidance="uncond",
        default_guidance_scale=1.0,
        metadata={
            "path": str(file),
            "loader": "safe" if edm_repo is None else "edm_repo",
            "edm_repo": None if edm_repo is None else str(edm_repo),
            "network_class": type(net).__name__,
            "img_resolution": res,
            "img_channels": ch,
            "label_dim": label_dim,
            "sigma_data": float(getattr(net, "sigma_data", 0.5)),
            "device": str(dev),
            "num_parameters": sum(p.numel() for p in net.parameters()),
        },
    )


_LOAD_EDM_OPTIONS = [
    n for n in load_edm.__code__.co_varnames[: load_edm.__code__.co_argcount + load_edm.__code__.co_kwonlyargcount]
]
