"""The ``edm`` zoo loader.

* Real format: tiny snapshots written byte-for-byte in the layout of NVIDIA's EDM pickles (tests/_edm_fixtures.py
  explains how tests/data/edm was derived by running NVlabs' ORIGINAL networks.py once, outside the repository)
  load through the safe loader and reproduce the original implementation's outputs.
* Full size: our modules instantiate with exactly the state-dict keys and shapes of the nine released files.
* Safety: planted payloads (``__reduce__`` to os.system / exec, persistence records whose module source would
  run code, unknown classes) are refused or inert, and never run.
* The ``edm_repo`` opt-in still unpickles with a (here: fake) NVIDIA source tree written into tmp_path.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ld3.models.zoo import load_model
from ld3.models.zoo.edm import EDM_CHECKPOINTS, network_from_record, unpickle_edm_safe
from ld3.models.zoo.edm_networks import build_network
from ld3.models.zoo.edm_pickle import UnsafePickleError
from ld3.schedules import NoiseScheduleEDM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _edm_fixtures import CASES, DATA, decode, load_case, write_snapshot  # noqa: E402

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


# ------------------------------------------------------------------------------------------ real format
@pytest.mark.parametrize("case", CASES)
def test_real_format_snapshot_reproduces_original_outputs(case, tmp_path, monkeypatch):
    monkeypatch.delenv("EDM_REPO", raising=False)
    meta, t = load_case(case)
    pkl = write_snapshot(case, tmp_path / f"network-snapshot-{case}.pkl")
    before = set(sys.modules)
    m = load_model("edm", path=str(pkl), device="cpu")
    # no NVIDIA module was imported (nor any module created by executing embedded source)
    new = {k for k in set(sys.modules) - before if k.split(".")[0] in ("torch_utils", "dnnlib", "training")}
    assert not new and not any(k.startswith("_imported_module_") for k in sys.modules)
    net = m.network.net
    assert type(net).__module__ == "ld3.models.zoo.edm_networks" and type(net).__name__ == meta["class_name"]
    assert m.metadata["loader"] == "safe" and not any(p.requires_grad for p in net.parameters())
    labels = t.get("labels")
    assert m.num_classes == (None if labels is None else labels.shape[1])
    assert m.shape == (3, t["x"].shape[-1], t["x"].shape[-1])
    with torch.no_grad():
        out = net(t["x"], t["sigma"], labels)
    # same float32 operations as the original up to summation order
    torch.testing.assert_close(out, t["out"], rtol=1e-5, atol=1e-5)
    # through the zoo API: eps = (x - D(x; sigma)) / sigma with the original D
    cond = None if labels is None else labels.argmax(1)
    eps = m.model_fn(condition=cond)(t["x"].double(), t["sigma"].double())
    expected = (t["x"].double() - t["out"].double()) / t["sigma"].double()[:, None, None, None]
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_real_format_gradients_reach_time_and_default_labels(tmp_path):
    _, t = load_case("ncsnpp_edm_cond")
    pkl = write_snapshot("ncsnpp_edm_cond", tmp_path / "net.pkl")
    m = load_model("edm", path=pkl, device="cpu", class_labels=[3, 0, 9])
    sig = t["sigma"].double().clone().requires_grad_(True)
    eps = m.model_fn()(t["x"].double(), sig)  # default labels = the fixture's labels
    expected = (t["x"].double() - t["out"].double()) / t["sigma"].double()[:, None, None, None]
    torch.testing.assert_close(eps.detach(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    eps.sum().backward()
    assert sig.grad is not None and torch.isfinite(sig.grad).all() and sig.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"class label values \[10\]"):
        m.model_fn(condition=[10, 0, 1])(t["x"], t["sigma"])


# ------------------------------------------------------------------------------------------ full size
MANIFESTS = json.loads((DATA / "released_manifests.json").read_text())


def test_manifests_cover_every_released_file():
    assert set(MANIFESTS) == {Path(f).stem for f in EDM_CHECKPOINTS.values()}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_names_and_shapes_match_release(name):
    man = MANIFESTS[name]
    with torch.device("meta"):
        net = build_network(man["class_name"], man["init_kwargs"])
    ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert ours == man["state"]  # same keys, same order, same shapes
    assert sum(p.numel() for p in net.parameters()) == man["num_parameters"]


# ------------------------------------------------------------------------------------------ safety
class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _side_effect_code(side: Path) -> str:
    return f"open({str(side)!r}, 'w').write('pwned')"


def test_planted_reduce_payloads_are_refused_and_never_run(tmp_path):
    side = tmp_path / "side_effect.txt"
    exec_pkl = tmp_path / "exec.pkl"
    with open(exec_pkl, "wb") as f:
        pickle.dump({"ema": _Payload(exec, _side_effect_code(side))}, f)
    system_pkl = tmp_path / "system.pkl"
    with open(system_pkl, "wb") as f:
        pickle.dump({"ema": _Payload(os.system, f"touch {side}")}, f)
    for pkl, name in ((exec_pkl, "builtins.exec"), (system_pkl, f"{os.system.__module__}.system")):
        with pytest.raises(UnsafePickleError, match=f"refusing to load {name}") as err:
            load_model("edm", path=str(pkl), device="cpu")
        assert str(pkl) in str(err.value)
        assert not side.exists()
    # control: the payload is live (a plain pickle.load runs it)
    with open(exec_pkl, "rb") as f:
        pickle.load(f)
    assert side.read_text() == "pwned"


def test_embedded_module_source_is_never_executed(tmp_path):
    side = tmp_path / "side_effect.txt"
    src = _side_effect_code(side) + "\n"
    exec(compile(src, "control", "exec"), {})  # control: this source does write the file when run
    assert side.exists()
    side.unlink()
    _, t = load_case("ddpmpp_edm_uncond")
    pkl = write_snapshot("ddpmpp_edm_uncond", tmp_path / "net.pkl", module_src=src)
    m = load_model("edm", path=pkl, device="cpu")
    assert not side.exists()
    with torch.no_grad():
        torch.testing.assert_close(m.network.net(t["x"], t["sigma"]), t["out"], rtol=1e-5, atol=1e-5)


def test_unknown_persistent_class_and_nested_payload_are_refused(tmp_path):
    side = tmp_path / "side_effect.txt"
    evil = write_snapshot("ddpmpp_edm_uncond", tmp_path / "evil.pkl", module_src=_side_effect_code(side),
                          overrides={"model.enc.8x8_conv": {"class_name": "EvilConv"}})
    with pytest.raises(UnsafePickleError, match=r"persistent class 'EvilConv' at 'ema\.model\.enc\.8x8_conv'"):
        load_model("edm", path=evil, device="cpu")
    top = write_snapshot("ddpmpp_edm_uncond", tmp_path / "top.pkl", overrides={"": {"class_name": "iDDPMPrecond"}})
    with pytest.raises(UnsafePickleError, match="'iDDPMPrecond'"):
        load_model("edm", path=top, device="cpu")
    nested = write_snapshot("ddpmpp_edm_uncond", tmp_path / "nested.pkl",
                            extra={"augment_pipe": _Payload(exec, _side_effect_code(side))})
    with pytest.raises(UnsafePickleError, match="builtins.exec"):
        load_model("edm", path=nested, device="cpu")
    assert not side.exists()


def test_inconsistent_record_is_rejected(tmp_path):
    meta, _ = load_case("ddpmpp_edm_uncond")
    kw = decode(meta["init_kwargs"])
    bad = write_snapshot("ddpmpp_edm_uncond", tmp_path / "bad.pkl",
                         overrides={"": {"state": None}})  # a record without init_kwargs or tensors
    with pytest.raises(ValueError, match="init_kwargs"):
        load_model("edm", path=bad, device="cpu")
    rec = unpickle_edm_safe(write_snapshot("ddpmpp_edm_uncond", tmp_path / "ok.pkl"))["ema"]
    rec.state["_init_kwargs"] = dict(kw, model_channels=16)  # tree no longer matches the tensors
    with pytest.raises(RuntimeError, match="size mismatch"):
        network_from_record(rec)
    rec.state["_init_kwargs"] = dict(kw, frobnicate=1)
    with pytest.raises(ValueError, match=r"init_kwargs \['frobnicate'\] are not supported"):
        network_from_record(rec)


# ------------------------------------------------------------------------------------------ files and options
def test_missing_truncated_and_wrong_checksum_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_model("edm", checkpoint="edm-cifar10-32x32-uncond-vp.pkl", weights_dir=tmp_path / "cache", device="cpu")
    msg = str(err.value)
    assert str(tmp_path / "cache" / "edm-cifar10-32x32-uncond-vp.pkl") in msg
    assert "scripts/download_model.sh edm" in msg
    with pytest.raises(ValueError, match="options.path .* or options.checkpoint"):
        load_model("edm", device="cpu")

    good = write_snapshot("ddpmpp_edm_uncond", tmp_path / "good.pkl").read_bytes()
    for name, data in (("trunc.pkl", good[: len(good) // 2]), ("tail.pkl", good[:-3]), ("empty.pkl", b"")):
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(ValueError) as err:
            load_model("edm", path=f, device="cpu")
        assert str(f) in str(err.value) and "scripts/download_model.sh edm" in str(err.value)

    import ld3.models.zoo.edm as edm_mod

    def boom(*a, **k):
        raise AssertionError("unpickling started before the checksum was checked")

    monkeypatch.setattr(edm_mod, "safe_load_edm_pickle", boom)
    f = tmp_path / "good.pkl"
    with pytest.raises(ValueError) as err:
        load_model("edm", path=f, device="cpu", sha256="0" * 64)
    msg = str(err.value)
    assert "sha256" in msg and str(f) in msg and "scripts/download_model.sh edm" in msg


def test_unknown_options_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour', 'edm_rep'\] for model 'edm'"):
        load_model("edm", path=tmp_path / "x.pkl", edm_rep="x", colour=1)


def test_non_edm_pickle_is_rejected(tmp_path):
    bad = tmp_path / "not-edm.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": 1}, f)
    with pytest.raises(ValueError, match="expected a dict with key 'ema'"):
        load_model("edm", path=str(bad), device="cpu")


# ------------------------------------------------------------------------------------------ edm_repo opt-in
def test_edm_repo_opt_in_unpickles_with_the_given_tree(tmp_path, isolated_imports):
    repo, weights = _make_pickle(tmp_path)
    assert "training" not in sys.modules  # the loader must make the fake tree importable itself
    m = load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), edm_repo=str(repo), device="cpu")
    assert m.model_type == "x_start" and m.shape == (3, 4, 4) and m.metadata["loader"] == "edm_repo"
    assert isinstance(m.noise_schedule, NoiseScheduleEDM)
    assert (m.noise_schedule.eps, m.noise_schedule.T) == (0.002, 80.0)
    net = m.network.net
    assert type(net).__module__ == "training.networks"
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64) * 5
    t = torch.tensor([80.0, 1.3, 0.002], dtype=torch.float64)
    expected = (x - _hand_denoiser(net, x, t)) / t[:, None, None, None]
    torch.testing.assert_close(m.model_fn()(x, t), expected, rtol=1e-5, atol=1e-4 * float(x.abs().max()))


def test_edm_repo_is_explicit_only(tmp_path, isolated_imports, monkeypatch):
    """Without edm_repo (the EDM_REPO variable is ignored) a pickle of foreign classes is refused by name."""
    repo, weights = _make_pickle(tmp_path)
    monkeypatch.setenv("EDM_REPO", str(repo))
    with pytest.raises(UnsafePickleError, match=r"refusing to load training\.networks\.TinyEDMPrecond"):
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), device="cpu")
    assert "training" not in sys.modules
    with pytest.raises(ValueError, match=r"missing the package\(s\) \['dnnlib', 'torch_utils', 'training'\]"):
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=str(weights), edm_repo=str(tmp_path), device="cpu")
    with pytest.raises(FileNotFoundError, match="edm_repo"):
        load_model("edm", checkpoint="edm-tiny.pkl", weights_dir=weights, edm_repo=tmp_path / "nope", device="cpu")
