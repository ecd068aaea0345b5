"""The ``edm`` zoo loader on a tiny network pickled the way NVIDIA's EDM training loop pickles its snapshots.

The network class lives in a fake EDM source tree (``dnnlib``, ``torch_utils``, ``training``) written into
tmp_path, so unpickling needs that tree on sys.path exactly as with the real pickles.
"""

from __future__ import annotations

import copy
import math
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ld3.models.zoo import load_model
from ld3.schedules import NoiseScheduleEDM

FAKE_MODULES = ("dnnlib", "torch_utils", "training")

NETWORKS_PY = '''
"""A tiny stand-in for EDM's training/networks.py: EDMPrecond around a 1x1 linear map."""
import numpy as np
import torch

import dnnlib
from torch_utils import persistence


@persistence.persistent_class
class TinyEDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_data=0.5, **model_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = False
        self.sigma_min = 0
        self.sigma_max = float("inf")
        self.sigma_data = sigma_data
        self.init_kwargs = dnnlib.EasyDict(img_resolution=img_resolution, img_channels=img_channels,
                                           label_dim=label_dim, **model_kwargs)
        self.weight = torch.nn.Parameter(torch.randn(img_channels, img_channels) / np.sqrt(img_channels))
        self.bias = torch.nn.Parameter(torch.randn(img_channels))
        self.noise_gain = torch.nn.Parameter(torch.randn(img_channels))
        self.label_emb = torch.nn.Parameter(torch.randn(max(label_dim, 1), img_channels))

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        class_labels = (None if self.label_dim == 0 else torch.zeros([1, self.label_dim], device=x.device)
                        if class_labels is None else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = torch.einsum("oc,bchw->bohw", self.weight, c_in * x)
        F_x = F_x + self.bias.reshape(1, -1, 1, 1) + c_noise * self.noise_gain.reshape(1, -1, 1, 1)
        if class_labels is not None:
            F_x = F_x + (class_labels @ self.label_emb).reshape(x.shape[0], -1, 1, 1)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x
'''


def _write_fake_edm_tree(root: Path) -> Path:
    for mod in FAKE_MODULES:
        (root / mod).mkdir(parents=True)
    (root / "dnnlib" / "util.py").write_text(
        "class EasyDict(dict):\n"
        "    def __getattr__(self, name):\n"
        "        try:\n"
        "            return self[name]\n"
        "        except KeyError:\n"
        "            raise AttributeError(name)\n"
    )
    (root / "dnnlib" / "__init__.py").write_text("from .util import EasyDict\n")
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text("def persistent_class(cls):\n    return cls\n")
    (root / "training" / "__init__.py").write_text("")
    (root / "training" / "networks.py").write_text(textwrap.dedent(NETWORKS_PY))
    return root


def _purge_fake_modules() -> None:
    for key in list(sys.modules):
        if key.split(".")[0] in FAKE_MODULES:
            del sys.modules[key]


@pytest.fixture
def isolated_imports(monkeypatch):
    """Restore sys.path and drop the fake EDM modules after the test (the loader edits sys.path)."""
    monkeypatch.delenv("EDM_REPO", raising=False)
    saved_path = list(sys.path)
    _purge_fake_modules()
    yield
    sys.path[:] = saved_path
    _purge_fake_modules()


def _make_pickle(tmp_path: Path, label_dim: int = 0, channels: int = 3, res: int = 4) -> tuple[Path, Path]:
    """Write a fake EDM tree and an EDM-style snapshot pickle; returns (edm_repo, weights_dir)."""
    repo = _write_fake_edm_tree(tmp_path / "edm_src")
    sys.path.insert(0, str(repo))
    try:
        import dnnlib
        from training.networks import TinyEDMPrecond

        torch.manual_seed(0)
        net = TinyEDMPrecond(img_resolution=res, img_channels=channels, label_dim=label_dim)
        # EDM's training loop: dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...), each module
        # deep-copied, put in eval mode with requires_grad off and moved to the CPU, then pickle.dump.
        data = dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs=dnnlib.EasyDict(resolution=res))
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        weights = tmp_path / "weights"
        weights.mkdir()
        with open(weights / "edm-tiny.pkl", "wb") as f:
            pickle.dump(data, f)
    finally:
        sys.path.remove(str(repo))
        _purge_fake_modules()
    return repo, weights


def _hand_denoiser(net, x: torch.Tensor, sigma: torch.Tensor, onehot=None) -> torch.Tensor:
    """D(x; sigma) of Karras et al. 2022, Table 1, with F = W (c_in x) + b + c_noise g (+ E^T y), in float64."""
    W, b, g, E = (p.detach().double() for p in (net.weight, net.bias, net.noise_gain, net.label_emb))
    sd = net.sigma_data
    out = []
    for i in range(x.shape[0]):
        s = float(sigma[i])
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / math.sqrt(s**2 + sd**2)
        c_in = 1.0 / math.sqrt(sd**2 + s**2)
        xi = x[i].double()
        f = torch.einsum("oc,chw->ohw", W, c_in * xi) + (b + math.log(s) / 4 * g)[:, None, None]
        if onehot is not None:
            f = f + (onehot[i].double() @ E)[:, None, None]
        out.append(c_skip * xi + c_out * f)
    return torch.stack(out)


def test_edm_pickle_loads_and_converts_denoiser_to_noise(tmp_path, isolated_imports):
    repo, weights = _make_pickle(tmp_path)
    assert "training" not in sys.modules  # the loader must make the fake tree importable itself
    m = load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), edm_repo=str(repo), device="cpu")
    assert m.model_type == "x_start"
    assert m.shape == (3, 4, 4)
    assert m.num_classes is None and m.decode is None
    assert isinstance(m.noise_schedule, NoiseScheduleEDM)
    assert (m.noise_schedule.eps, m.noise_schedule.T) == (0.002, 80.0)
    net = m.network.net
    assert type(net).__module__ == "training.networks" and not any(p.requires_grad for p in net.parameters())

    torch.manual_seed(1)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64) * 5
    t = torch.tensor([80.0, 1.3, 0.002], dtype=torch.float64)
    eps = m.model_fn()(x, t)
    expected = (x - _hand_denoiser(net, x, t)) / t[:, None, None, None]  # eps = (x - D(x)) / sigma, alpha = 1
    assert eps.dtype == torch.float64
    # the network computes in float32: relative error ~1e-7 of |x| / sigma
    torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-4 * float(x.abs().max()))
    # gradients reach x and t through the frozen network (LD3 differentiates w.r.t. timesteps)
    t_req = t.clone().requires_grad_(True)
    m.model_fn()(x, t_req).sum().backward()
    assert t_req.grad is not None and torch.isfinite(t_req.grad).all()


def test_edm_class_conditional_labels(tmp_path, isolated_imports):
    repo, weights = _make_pickle(tmp_path, label_dim=5)
    m = load_model("edm", path=str(weights / "edm-tiny.pkl"), edm_repo=str(repo), device="cpu", class_labels=2)
    assert m.num_classes == 5
    net = m.network.net
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([2.0, 0.5])
    onehot = torch.nn.functional.one_hot(torch.tensor([4, 1]), 5)
    eps = m.model_fn(condition=torch.tensor([4, 1]))(x, t)
    expected = (x.double() - _hand_denoiser(net, x, t, onehot)) / t.double()[:, None, None, None]
    torch.testing.assert_close(eps.double(), expected, rtol=1e-4, atol=1e-4)
    # without a condition the default label (2) is used for every sample
    eps_default = m.model_fn()(x, t)
    onehot = torch.nn.functional.one_hot(torch.tensor([2, 2]), 5)
    expected = (x.double() - _hand_denoiser(net, x, t, onehot)) / t.double()[:, None, None, None]
    torch.testing.assert_close(eps_default.double(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"class label values \[7\]"):
        m.model_fn(condition=[7, 0])(x, t)
    with pytest.raises(ValueError, match="class_labels"):
        load_model("edm", path=str(weights / "edm-tiny.pkl"), edm_repo=str(repo), device="cpu", class_labels=9)


def test_edm_missing_file_names_file_and_script(tmp_path, isolated_imports):
    with pytest.raises(FileNotFoundError) as err:
        load_model("edm", checkpoint="edm-cifar10-32x32-uncond-vp.pkl", weights_dir=tmp_path / "cache", device="cpu")
    msg = str(err.value)
    assert str(tmp_path / "cache" / "edm-cifar10-32x32-uncond-vp.pkl") in msg
    assert "scripts/download_model.sh edm" in msg
    with pytest.raises(ValueError, match="options.path .* or options.checkpoint"):
        load_model("edm", device="cpu")


def test_edm_missing_repo_error_names_edm_repo(tmp_path, isolated_imports):
    repo, weights = _make_pickle(tmp_path)
    with pytest.raises(ModuleNotFoundError) as err:
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), device="cpu")
    msg = str(err.value)
    assert "edm_repo" in msg and "EDM_REPO" in msg and "github.com/NVlabs/edm" in msg
    assert "'training'" in msg  # the module that could not be imported
    # a directory that is not an EDM tree is rejected before unpickling
    with pytest.raises(ValueError, match=r"missing the package\(s\) \['dnnlib', 'torch_utils', 'training'\]"):
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), edm_repo=str(tmp_path), device="cpu")
    with pytest.raises(FileNotFoundError, match="edm_repo"):
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=weights, edm_repo=tmp_path / "nope", device="cpu")


def test_edm_repo_from_environment(tmp_path, isolated_imports, monkeypatch):
    repo, weights = _make_pickle(tmp_path)
    monkeypatch.setenv("EDM_REPO", str(repo))
    m = load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), device="cpu")
    assert m.metadata["edm_repo"] == str(repo)


def test_edm_rejects_non_edm_pickle_and_bad_checksum(tmp_path, isolated_imports):
    bad = tmp_path / "not-edm.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": 1}, f)
    with pytest.raises(ValueError, match="expected a dict with key 'ema'"):
        load_model("edm", path=str(bad), device="cpu")
    with pytest.raises(ValueError, match="sha256"):
        load_model("edm", path=str(bad), device="cpu", sha256="0" * 64)
