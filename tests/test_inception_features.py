"""The Inception feature path of FID, run for real on a randomly initialised network of the same
architecture (the released weights cannot be downloaded here): the weights file is written in the
released file's format (a torch state dict of torch-fidelity's ``FeatureExtractorInceptionV3``),
loaded by the production code, and fed the uint8 images FID is defined on."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchmetrics")  # the optional FID extra
fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

from ld3.metrics.fid import INCEPTION_WEIGHTS, get_feature_extractor  # noqa: E402


def random_weights_file(directory, seed: int, monkeypatch) -> None:
    """Build the architecture without any weights (loading disabled), randomise, save its state dict."""
    cls = fidelity.FeatureExtractorInceptionV3
    with monkeypatch.context() as m:
        m.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(cls, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(seed)
        net = cls("inception-v3-compat", ["2048"])
    sd = net.state_dict()
    for k, v in sd.items():  # keep BN statistics sane so activations stay finite and informative
        if k.endswith("running_var"):
            v.fill_(1.0)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(sd, directory / INCEPTION_WEIGHTS)


def test_inception_path_runs_uint8_conversion_and_network(tmp_path, monkeypatch):
    from torchmetrics.image.fid import NoTrainInceptionV3

    random_weights_file(tmp_path / "a", 0, monkeypatch)
    random_weights_file(tmp_path / "b", 1, monkeypatch)
    fn = get_feature_extractor("inception", cache_dir=str(tmp_path / "a"))

    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (3, 1, 16, 16), generator=g)
    images = k.double() / 127.5 - 1.0  # exactly representable pixel levels k in [0, 255]
    feats = fn(images)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    assert feats.std(0).abs().sum() > 0  # different images give different features

    # independent path: the torchmetrics network built from the same file, fed the known uint8 levels
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(tmp_path / "a" / INCEPTION_WEIGHTS)).eval()
    with torch.no_grad():
        direct = net(k.to(torch.uint8).repeat(1, 3, 1, 1)).reshape(3, -1).double()
    assert torch.allclose(feats, direct, rtol=1e-5, atol=1e-6)
    # out-of-range values clamp to the ends; values within half a level round to the same uint8 image
    assert torch.allclose(fn(torch.where(images.abs() == 1, 1.5 * images, images)), feats)
    assert torch.allclose(fn(images + 0.3 / 127.5), feats)
    # the production code loaded the file it was given (another file, other features)
    other = get_feature_extractor("inception", weights_path=str(tmp_path / "b" / INCEPTION_WEIGHTS))(images)
    assert not torch.allclose(other, feats)
