"""Inception Score: per-split sums against independent computations (scipy's entropy on contiguous splits,
torchmetrics' InceptionScore with one split), through the Inception path on a randomly initialised network of
the released architecture, and through eval_fid's sharded, resumable engine (crash + rerun, 2 processes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from ld3.metrics.inception_score import InceptionScoreSums, inception_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def oracle_is(logits: np.ndarray, splits: int):
    """IS with scipy: KL(p_i || mean p) per sample, contiguous splits s*N//S (StyleGAN2-ADA / ADM rule)."""
    n = logits.shape[0]
    p = softmax(logits.astype(np.float64), axis=1)
    scores = []
    for s in range(splits):
        part = p[s * n // splits : (s + 1) * n // splits]
        q = part.mean(0)
        scores.append(np.exp(np.mean([entropy(row, q) for row in part])))
    return float(np.mean(scores)), float(np.std(scores)), scores


def test_sums_match_scipy_in_any_batch_order():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 7, generator=g, dtype=torch.float64) * 3  # 103 / 10: uneven splits
    mean, std, per_split = oracle_is(logits.numpy(), 10)
    assert std > 0.01  # the splits differ: the per-split bookkeeping is tested
    assert inception_score(logits, 10) == pytest.approx((mean, std), rel=1e-12)
    sums = InceptionScoreSums(103, 10, 7)
    perm = torch.randperm(103, generator=g)
    for chunk in perm.split(17):  # batches that straddle split boundaries, in shuffled order
        sums.update(logits[chunk], chunk)
    assert np.allclose(sums.per_split(), per_split, rtol=1e-12)
    # sums add over processes / resumed runs
    a, b = InceptionScoreSums(103, 10, 7), InceptionScoreSums(103, 10, 7)
    a.update(logits[:50], torch.arange(50))
    b.update(logits[50:], torch.arange(50, 103))
    merged = {k: a.state()[k] + b.state()[k] for k in a.state()}
    assert InceptionScoreSums(103, 10, 7).load_state(merged).score() == pytest.approx((mean, std), rel=1e-12)


def test_one_split_matches_torchmetrics():
    InceptionScore = pytest.importorskip("torchmetrics.image.inception").InceptionScore
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 12, generator=g, dtype=torch.float64) * 2
    tm = InceptionScore(feature=torch.nn.Identity(), splits=1)  # the "images" are the logits themselves
    tm.update(logits)
    mean, _ = tm.compute()
    assert inception_score(logits, 1)[0] == pytest.approx(float(mean), rel=1e-10)
    assert inception_score(logits, 1)[1] == 0.0


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="splits must be an integer >= 1"):
        InceptionScoreSums(10, 0, 3)
    with pytest.raises(ValueError, match="needs at least 10 samples, got 5"):
        InceptionScoreSums(5, 10, 3)
    sums = InceptionScoreSums(10, 2, 3)
    with pytest.raises(ValueError, match="expected 3 classes"):
        sums.update(torch.zeros(2, 4), torch.arange(2))
    with pytest.raises(ValueError, match=r"indices must lie in 0..9"):
        sums.update(torch.zeros(1, 3), torch.tensor([10]))
    sums.update(torch.zeros(3, 3), torch.arange(3))
    with pytest.raises(ValueError, match="splits are incomplete"):
        sums.score()
    from ld3.metrics.evaluate import parse_metrics

    assert parse_metrics(["is"]) == ("fid", "is") and parse_metrics(None) == ("fid",)
    with pytest.raises(ValueError, match="unknown metric 'kid'.*allowed"):
        parse_metrics(["fid", "kid"])
    with pytest.raises(ValueError, match="twice"):
        parse_metrics(["is", "is"])
    with pytest.raises(ValueError, match="must be a list"):
        parse_metrics("is")


def test_inception_logits_path_matches_torchmetrics(tmp_path, monkeypatch):
    """Our IS from the Inception extractor's 1008 logits = torchmetrics' InceptionScore on the same network
    (same weights file, TF1 resizing, 'logits_unbiased'), one split; the logits are pool3 @ fc.weight.T."""
    pytest.importorskip("torchmetrics")
    pytest.importorskip("torch_fidelity")
    from test_inception_features import random_weights_file
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore

    from ld3.metrics.fid import INCEPTION_WEIGHTS, get_feature_extractor

    random_weights_file(tmp_path, 0, monkeypatch)
    weights = str(tmp_path / INCEPTION_WEIGHTS)
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (6, 3, 16, 16), generator=g)
    images = k.double() / 127.5 - 1.0
    # a random head sees mostly the features' common component (every image in one class, IS = 1): give the
    # randomly initialised network a random head orthogonal to the mean feature, scaled to logits of O(1)
    f = get_feature_extractor("inception", weights_path=weights)(images).float()
    m = f.mean(0) / f.mean(0).norm()
    w = torch.randn(1008, 2048, generator=g)
    w = w - (w @ m)[:, None] * m[None, :]
    w = w / (f @ w.T).std()
    sd = torch.load(weights, weights_only=True)
    sd["fc.weight"] = w
    torch.save(sd, weights)
    ext = get_feature_extractor("inception", weights_path=weights)
    assert ext.num_classes == 1008 and "logits_unbiased" in ext.info["logits"]
    out = ext.outputs(images)
    assert out["features"].shape == (6, 2048) and out["logits"].shape == (6, 1008)
    assert torch.equal(out["features"], ext(images))
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"],
                             feature_extractor_weights_path=weights, antialias=False)
    tm = InceptionScore(feature=net, splits=1)
    tm.update(k.to(torch.uint8))
    ours = inception_score(out["logits"], 1)[0]
    assert ours > 1.01  # not a degenerate 1.0
    assert ours == pytest.approx(float(tm.compute()[0]), rel=1e-4)


def _eval(model, solver, ts, **kw):
    from ld3.metrics.evaluate import evaluate_fid

    kw.setdefault("metrics", ["fid", "is"])
    return evaluate_fid(model, solver, ts, num_samples=40, batch_size=16, reference_images="digits",
                        progress=False, device="cpu", run_info={"test": "is"}, is_splits=3, **kw)


def test_eval_is_resumes_and_matches_oracle(tmp_path):
    """IS with the digits classifier's logits through evaluate_fid: crash + rerun = uninterrupted = oracle."""
    from test_fid_scale import CountingSolver, _grid

    from ld3.data.latents import latents_and_labels
    from ld3.metrics.evaluate import quantize_8bit
    from ld3.models.zoo import load_model

    model = load_model("digits", device="cpu")
    inner, ts = _grid(model)
    ref = _eval(model, inner, ts)
    with pytest.raises(RuntimeError, match="injected failure"):
        _eval(model, CountingSolver(inner, fail_on=2), ts, checkpoint_dir=tmp_path / "ck")
    rerun = CountingSolver(inner)
    out = _eval(model, rerun, ts, checkpoint_dir=tmp_path / "ck")
    assert rerun.calls == 2  # batch 0 kept (3 batches of 16, 16, 8)
    assert out["inception_score"] == pytest.approx(ref["inception_score"], rel=1e-12)
    assert out["fid"] == pytest.approx(ref["fid"], rel=1e-10)
    assert out["inception_score_splits"] == 3 and out["metrics"] == ["fid", "is"]
    assert "classifier head" in out["feature_extractor"]["logits"]
    # an FID-only run may not reuse the directory of an IS run (its fingerprint differs)
    with pytest.raises(ValueError, match="another configuration"):
        _eval(model, inner, ts, checkpoint_dir=tmp_path / "ck", metrics=["fid"])
    lat, lab = latents_and_labels(range(40), model.shape, model.num_classes)
    fn = model.model_fn(condition=lab, unconditional_condition=torch.full_like(lab, model.null_class))
    with torch.no_grad():
        x0 = quantize_8bit(model.to_pixels(inner.sample(fn, lat, ts)).clamp(-1, 1))
        logits = model.feature_fn.logits(x0).double()
    mean, std, _ = oracle_is(logits.numpy(), 3)
    assert out["inception_score"] == pytest.approx(mean, rel=1e-5)
    assert out["inception_score_std"] == pytest.approx(std, rel=1e-3, abs=1e-6)


def test_eval_is_needs_logits_and_sample_mode(tmp_path):
    from test_fid_scale import _compose

    from ld3.metrics.evaluate import build_batch_metrics, run_from_config
    from ld3.metrics.fid import FeatureExtractor

    plain = FeatureExtractor(lambda x: x.reshape(x.shape[0], -1), {"name": "plain"})
    with pytest.raises(ValueError, match="needs class logits.*'plain' has none"):
        build_batch_metrics(["is"], plain, 10, 5)
    with pytest.raises(ValueError, match="mode=sample only"):
        run_from_config(_compose(["mode=ref", "images=digits", "metrics=[fid,is]", "device=cpu",
                                  f"ref_out={tmp_path / 'r.npz'}"]))


@pytest.mark.slow
def test_torchrun_two_processes_same_is(tmp_path):
    from test_fid_scale import _compose, _free_port

    from ld3.metrics.evaluate import run_from_config

    common = ["steps=3", "solver=ddim", "num_samples=96", "batch_size=32", "progress=false", "logger=disabled",
              "device=cpu", "save_grid=false", f"paths.fid_refs={tmp_path / 'refs'}", "metrics=[fid,is]",
              "is_splits=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")

    def launch(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "eval_fid.py", *common, *extra]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        return res.stdout

    launch(f"out_dir={tmp_path / 'two'}")
    two = json.loads((tmp_path / "two" / "fid.json").read_text())
    one = run_from_config(_compose(common + [f"out_dir={tmp_path / 'one'}"]))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["inception_score"] == pytest.approx(one["inception_score"], rel=1e-12)
    assert two["inception_score_per_split"] == pytest.approx(one["inception_score_per_split"], rel=1e-12)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-10)
    # interrupted with 2 processes (one batch each), finished by one process (it carries their shards)
    assert "partial: 2/3 batches" in launch(f"out_dir={tmp_path / 'mixed'}", "max_batches=1")
    mixed = run_from_config(_compose(common + [f"out_dir={tmp_path / 'mixed'}"]))
    assert mixed["batches_computed"] == 1
    assert mixed["inception_score_per_split"] == pytest.approx(one["inception_score_per_split"], rel=1e-12)


def test_config_check_names_bad_metric_options():
    from test_fid_scale import _compose

    from ld3.config_validation import ConfigError, validate_config

    assert validate_config(_compose(["metrics=[fid,is]"]), "eval_fid")["metrics"] == ["fid", "is"]
    with pytest.raises(ConfigError, match="unknown metric 'kid'"):
        validate_config(_compose(["metrics=[fid,kid]"]), "eval_fid")
    with pytest.raises(ConfigError, match="splits must be an integer >= 1, got 0"):
        validate_config(_compose(["metrics=[is]", "is_splits=0"]), "eval_fid")
    with pytest.raises(ConfigError, match="needs at least 10 samples, got 4"):
        validate_config(_compose(["metrics=[is]", "num_samples=4"]), "eval_fid")
