"""``LD3Scheduler`` inside diffusers loops and pipelines.

References are independent of the code under test: diffusers' own DEISMultistepScheduler and
DPMSolverMultistepScheduler stepping the same tiny random UNet, and ld3's own ``solver.sample`` called
directly (not through the scheduler) on the same network. diffusers keeps its tables in float32 while ld3
computes its coefficients in float64, so agreement is to float32 rounding (measured ~2e-7 relative; the
bound is 1e-5).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _sd_fixtures import write_tiny_sd_pipeline  # noqa: E402
from diffusers import (  # noqa: E402
    DDPMPipeline,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)

from ld3.discretizations import get_discretization, get_timesteps  # noqa: E402
from ld3.discretizations import save as save_discretization  # noqa: E402
from ld3.integrations.diffusers import LD3Scheduler, spacing_train_steps  # noqa: E402
from ld3.models.wrapper import model_wrapper  # noqa: E402
from ld3.solvers import get_solver  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

RTOL = 1e-5


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def x_T(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def loop(sched, unet, x, steps):
    """The DDPM-pipeline loop, on raw states (no clamping)."""
    sched.set_timesteps(steps)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [6, 10])
def test_deis_logrho_matches_diffusers(unet, order, steps):
    theirs = loop(DEISMultistepScheduler(solver_order=order), unet, x_T(2), steps)
    ours_sched = LD3Scheduler(solver="deis", solver_options={"order": order, "variant": "logrho"})
    ours = loop(ours_sched, unet, x_T(2), steps)
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpm_solver_pp_2m_matches_diffusers(unet, spacing):
    cfg = dict(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    theirs_sched = DPMSolverMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min", **cfg)
    theirs = loop(theirs_sched, unet, x_T(2), 8)
    ours_sched = LD3Scheduler.from_config(
        theirs_sched.config, solver="dpm_solver++", solver_options={"order": 2, "lower_order_final_below": 15}
    )
    ours = loop(ours_sched, unet, x_T(2), 8)
    assert ours_sched.timesteps.tolist() == [float(k) for k in theirs_sched.timesteps]
    assert rel_err(ours, theirs) < RTOL


@pytest.mark.parametrize(
    "cfg",
    [
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": torch.linspace(2e-4, 3e-2, 500).tolist(), "num_train_timesteps": 500},
    ],
    ids=["v", "sample", "scaled_linear", "cosine", "trained_betas"],
)
def test_from_config_schedules_and_prediction_types(unet, cfg):
    """The same network read as v / x0 / eps under each beta schedule: diffusers' DEIS and ours agree."""
    theirs_sched = DEISMultistepScheduler(solver_order=2, **cfg)
    theirs = loop(theirs_sched, unet, x_T(2), 7)
    ours = loop(LD3Scheduler.from_config(theirs_sched.config, solver="deis",
                                         solver_options={"order": 2, "variant": "logrho"}), unet, x_T(2), 7)
    assert rel_err(ours, theirs) < RTOL


def test_ddpm_pipeline_images(unet):
    """The stock DDPMPipeline with LD3Scheduler gives the images of DEISMultistepScheduler's loop (DDPMPipeline
    itself cannot run DEISMultistepScheduler: it passes ``generator`` to ``step``)."""
    sched = LD3Scheduler(solver="deis", solver_options={"order": 3, "variant": "logrho"})
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    ours = pipe(batch_size=2, generator=gen, num_inference_steps=9, output_type="np").images
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # DDPMPipeline's initial noise
    x = loop(DEISMultistepScheduler(solver_order=3), unet, noise, 9)
    theirs = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, 8, 8, 3)
    assert abs(ours - theirs).max() < 1e-5
    assert 0 < theirs.std()  # not a constant image


def test_reuse_across_batch_sizes_and_set_timesteps(unet):
    """One scheduler object, runs of batch 2, 3, a new step count, and a rerun without set_timesteps: each
    equals a fresh scheduler's run and ld3's own sampler."""
    opts = {"solver": "uni_pc", "solver_options": {"order": 2}, "discretization": "logSNR"}
    sched = LD3Scheduler(**opts)
    runs = [(x_T(2, 0), 6), (x_T(3, 1), 6), (x_T(1, 2), 9)]
    for x, steps in runs:
        again = loop(sched, unet, x, steps)
        fresh = loop(LD3Scheduler(**opts), unet, x, steps)
        assert torch.equal(again, fresh)
    # a second run on the same grid without calling set_timesteps again
    x = x_T(2, 3)
    first = loop(LD3Scheduler(**opts), unet, x, 9)
    with torch.no_grad():
        y = x
        for t in sched.timesteps:
            y = sched.step(unet(y, t).sample, t, y).prev_sample
    assert torch.equal(y, first)
    # and the scheduler's result is ld3's own sampler on the same network
    ns = sched.noise_schedule
    model_fn = model_wrapper(lambda z, t: unet(z, t).sample, ns)
    ts = get_timesteps("logSNR", ns, 9, solver="uni_pc")
    with torch.no_grad():
        direct = get_solver("uni_pc", ns, order=2).sample(model_fn, x, ts)
    assert rel_err(first, direct) < 1e-6


def test_two_calls_per_step_solver_lists_every_network_time(unet):
    """heun (2 calls per step): timesteps lists each call's UNet time, the result is heun's own."""
    sched = LD3Scheduler(solver="heun", discretization="edm")
    sched.set_timesteps(7)
    assert len(sched.timesteps) == 7
    ns = sched.noise_schedule
    ts = get_timesteps("edm", ns, 7, solver="heun")
    x = x_T(2, 4)
    model_fn = model_wrapper(lambda z, t: unet(z, t).sample, ns)
    with torch.no_grad():
        direct = get_solver("heun", ns).sample(model_fn, x, ts)
    assert rel_err(loop(sched, unet, x, 7), direct) < 1e-6


def test_errors_are_early_and_clear(unet, tmp_path):
    with pytest.raises(ValueError, match="prediction_type"):
        LD3Scheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="timestep_spacing"):
        LD3Scheduler(timestep_spacing="karras")
    with pytest.raises(ValueError, match="unknown solver"):
        LD3Scheduler(solver="nope")
    sched = LD3Scheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(torch.zeros(1, 3, 8, 8), 999, torch.zeros(1, 3, 8, 8))
    sched.set_timesteps(4)
    x = x_T(1)
    with torch.no_grad():
        y = sched.step(unet(x, sched.timesteps[0]).sample, sched.timesteps[0], x).prev_sample
        with pytest.raises(ValueError, match="prev_sample"):
            sched.step(unet(y, sched.timesteps[1]).sample, sched.timesteps[1], y + 1)
    path = save_discretization(tmp_path / "d.json", torch.tensor([1.0, 0.5, 0.001]), solver="ddim", nfe=2)
    learned = LD3Scheduler.from_discretization(path)
    with pytest.raises(ValueError, match="exactly 2 network calls"):
        learned.set_timesteps(5)


def test_spacing_matches_diffusers_multistep_schedulers():
    for spacing, offset in (("linspace", 0), ("leading", 1), ("trailing", 0)):
        for n in (1, 5, 7, 20, 50):
            s = DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=offset)
            s.set_timesteps(n)
            assert spacing_train_steps(spacing, 1000, n, offset).tolist() == s.timesteps.tolist()
            if spacing == "leading":
                continue  # not a discretization kind (it does not start at t = T)
            ts = get_timesteps(spacing, LD3Scheduler().noise_schedule, n, solver="ddim")  # the discretization kind
            assert torch.round(ts[:-1] * 1000 - 1).tolist() == s.timesteps.tolist() and ts[-1] == 1 / 1000


# --------------------------------------------------------------------------------------------------------- SD
@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline directory (diffusers' save_pretrained layout)."""
    return write_tiny_sd_pipeline(tmp_path_factory.mktemp("weights") / "tiny-sd")


def test_learned_file_in_stable_diffusion_pipeline_matches_ld3_sampler(sd_dir, tmp_path):
    """A learned discretization with decoupled (fractional) network times, dropped into StableDiffusionPipeline,
    gives the latents of ld3's own sampler on the same model (ld3's zoo loader), prompt and guidance."""
    from diffusers import StableDiffusionPipeline

    from ld3.models.zoo import load_model

    m = load_model("stable_diffusion", checkpoint=sd_dir.name, weights_dir=sd_dir.parent, device="cpu")
    ns = m.noise_schedule
    t1 = get_timesteps("logSNR", ns, 5, solver="ipndm")
    t2 = t1.clone()
    t2[1:-1] = t1[1:-1] * 0.97 + 0.0013  # decoupled network times, off the integer training steps
    path = save_discretization(tmp_path / "discretization.json", t1, model_timesteps=t2, solver="ipndm", nfe=5,
                               source="learned:test")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model_fn = m.model_fn(guidance_scale=7.5, condition=["a cat"], unconditional_condition=[""])
        ours = get_solver("ipndm", ns).sample(model_fn, z, t1, model_timesteps=t2)

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LD3Scheduler.from_discretization(path, pipe.scheduler.config)
    assert pipe.scheduler.learned_nfe == 5
    out = pipe("a cat", num_inference_steps=5, guidance_scale=7.5, height=16, width=16, latents=z.clone(),
               output_type="latent").images
    unet_times = pipe.scheduler.timesteps
    assert (unet_times != unet_times.round()).any()  # fractional times reached the UNet
    torch.testing.assert_close(unet_times.double(), (t2[:-1] * 1000 - 1).float().double())
    assert rel_err(out, ours) < RTOL


def test_import_without_diffusers_names_the_extra(repo_root):
    """With diffusers unimportable, the import fails with one line naming the extra."""
    import subprocess
    import sys

    code = "import sys; sys.modules['diffusers'] = None; import ld3.integrations.diffusers"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ld3.integrations.diffusers needs") and ".[zoo]" in last


def test_round_model_timesteps_and_config_round_trip(unet, tmp_path):
    """round_model_timesteps: integer UNet times, and the result is ld3's solver on the rounded network times;
    save_config / from_pretrained keep the learned grid."""
    sched0 = LD3Scheduler()
    ns = sched0.noise_schedule
    t1 = get_timesteps("logSNR", ns, 4, solver="dpm_solver++")
    t2 = t1.clone()
    t2[1:-1] += 0.0017
    path = save_discretization(tmp_path / "d.json", t1, model_timesteps=t2, solver="dpm_solver++", nfe=4)
    sched = LD3Scheduler.from_discretization(path, sched0.config, round_model_timesteps=True)
    sched.save_config(tmp_path / "saved")
    sched = LD3Scheduler.from_pretrained(tmp_path / "saved")
    assert sched.config.learned_model_timesteps == t2.tolist() and sched.config.solver == "dpm_solver++"
    sched.set_timesteps(None)
    k = sched.timesteps.double()
    assert torch.equal(k, k.round()) and k.tolist() == torch.round(t2[:-1] * 1000 - 1).tolist()
    x = x_T(2, 6)
    model_fn = model_wrapper(lambda z, t: unet(z, t).sample, ns)
    t2_rounded = (torch.round(t2 * 1000 - 1) + 1) / 1000
    with torch.no_grad():
        direct = get_solver("dpm_solver++", ns).sample(model_fn, x, t1, model_timesteps=t2_rounded)
    assert rel_err(loop(sched, unet, x, 4), direct) < 1e-6


DEIS_NAMES = ("solver_order", "solver_type", "algorithm_type", "lower_order_final", "use_karras_sigmas",
              "thresholding", "dynamic_thresholding_ratio", "sample_max_value")


@pytest.mark.parametrize("cfg", [
    {"solver_order": 2},
    {"solver_order": 3, "lower_order_final": False},
    {"solver_order": 2, "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
], ids=["order2", "order3-no-lower-final", "thresholding"])
def test_deis_solver_takes_diffusers_option_names(unet, cfg):
    """The deis solver built from DEISMultistepScheduler's own config keys runs DEISMultistepScheduler."""
    theirs_sched = DEISMultistepScheduler(**cfg)
    opts = {k: theirs_sched.config[k] for k in DEIS_NAMES}
    assert opts["solver_type"] == "logrho" and opts["algorithm_type"] == "deis"
    theirs = loop(theirs_sched, unet, x_T(2, 7), 8)
    ours = loop(LD3Scheduler(solver="deis", solver_options=opts), unet, x_T(2, 7), 8)
    assert rel_err(ours, theirs) < RTOL
    # the same through from_config of the DEIS scheduler's own config
    assert torch.equal(loop(LD3Scheduler.from_config(theirs_sched.config, solver="deis"), unet, x_T(2, 7), 8), ours)
    if cfg.get("thresholding"):  # the thresholding is active on this network
        assert rel_err(loop(DEISMultistepScheduler(solver_order=2), unet, x_T(2, 7), 8), theirs) > 1e-3


def test_deis_diffusers_names_errors():
    ns = LD3Scheduler().noise_schedule
    assert get_solver("deis", ns, solver_order=2).order == 2 and get_solver("deis", ns).order == 3
    assert get_solver("deis", ns).variant == "tab" and get_solver("deis", ns, solver_type="logrho").variant == "logrho"
    with pytest.raises(ValueError, match="disagree"):
        get_solver("deis", ns, order=3, solver_order=2)
    with pytest.raises(ValueError, match="disagree"):
        get_solver("deis", ns, variant="tab", solver_type="logrho")
    with pytest.raises(ValueError, match="solver_type='bh2'"):
        get_solver("deis", ns, solver_type="bh2")
    with pytest.raises(ValueError, match="dpm_solver"):
        get_solver("deis", ns, algorithm_type="dpmsolver++")
    karras = get_solver("deis", ns, use_karras_sigmas=True)
    assert karras.use_karras_sigmas and karras.describe()["use_karras_sigmas"] is True
    with pytest.raises(ValueError, match="karras_sigmas"):  # a grid that is not Karras' is refused when sampling
        karras.sample(lambda x, t: torch.zeros_like(x), x_T(1), get_timesteps("logSNR", ns, 5))
    karras.sample(lambda x, t: torch.zeros_like(x), x_T(1), get_timesteps("edm", ns, 5))  # rho = 7: accepted


# ----------------------------------------------------------------------------------- use_karras_sigmas
def _float64_deis(**cfg) -> DEISMultistepScheduler:
    """DEISMultistepScheduler whose alphas_cumprod table holds ld3's float64 values of the same betas (its own
    float32 cumprod is off by ~1e-4 relative in sigma at k = 0), so grids can be compared to float32 rounding."""
    s = DEISMultistepScheduler(**cfg)
    s.alphas_cumprod = torch.exp(2.0 * LD3Scheduler(**{k: v for k, v in cfg.items() if k.startswith("beta")})
                                 .noise_schedule.log_alpha_array)
    return s


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_karras_sigmas_kind_is_diffusers_grid(beta_schedule):
    """The karras_sigmas kind: diffusers' Karras noise levels (integration grid) and its rounded integer steps
    (network times); diffusers' set_timesteps(n + 1) gives them plus a repeated last sigma."""
    cfg = {"beta_schedule": beta_schedule}
    ns = LD3Scheduler(**cfg).noise_schedule
    for n in (1, 4, 9, 25):
        theirs = _float64_deis(use_karras_sigmas=True, **cfg)
        theirs.set_timesteps(n + 1)
        d = get_discretization("karras_sigmas", ns, n, solver="deis")
        assert d.timesteps.numel() == n + 1 and float(d.timesteps[0]) == ns.T and float(d.timesteps[-1]) == ns.eps
        sig = ns.edm_sigma(d.timesteps).float()
        assert torch.allclose(sig, theirs.sigmas[:-1], rtol=1e-6, atol=0) and theirs.sigmas[-1] == theirs.sigmas[-2]
        assert torch.round(d.model_timesteps * 1000 - 1).long().tolist() == theirs.timesteps.tolist()
        assert not torch.equal(d.model_timesteps, d.timesteps) or n == 1
        plain = get_discretization("karras_sigmas", ns, n, round_model_timesteps=False)
        assert plain.model_timesteps is None and torch.equal(plain.timesteps, get_timesteps("edm", ns, n))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [6, 10])
def test_deis_karras_matches_diffusers(unet, order, steps):
    """DEISMultistepScheduler(use_karras_sigmas=True) with steps + 1 calls (its last one a zero-length step) ==
    LD3Scheduler built from its config with steps calls: same Karras grid, same rounded network times, same
    warm-down orders."""
    theirs_sched = DEISMultistepScheduler(solver_order=order, use_karras_sigmas=True)
    theirs = loop(theirs_sched, unet, x_T(2, 8), steps + 1)
    ours_sched = LD3Scheduler.from_config(theirs_sched.config, solver="deis")
    assert ours_sched.solver.use_karras_sigmas
    ours = loop(ours_sched, unet, x_T(2, 8), steps)
    assert ours_sched.timesteps.tolist() == theirs_sched.timesteps[:-1].tolist()
    assert rel_err(ours, theirs) < RTOL
    # not vacuous: the linspace grid, or the plain lower-order-final rule on the Karras grid, differ clearly
    linspace = loop(LD3Scheduler(solver="deis", solver_options={"solver_order": order, "solver_type": "logrho"}),
                    unet, x_T(2, 8), steps)
    assert rel_err(linspace, theirs) > 1e-3
    if order == 3 and steps == 6:
        plain_orders = LD3Scheduler(solver="deis", solver_options={"solver_order": 3, "solver_type": "logrho"},
                                    discretization="karras_sigmas")
        assert rel_err(loop(plain_orders, unet, x_T(2, 8), steps), theirs) > 5 * RTOL


def test_half_precision_states_are_integrated_in_float32():
    """float16 / bfloat16 latents (fp16 pipelines): the run is integrated in float32 and only the states handed
    back are rounded, as diffusers' multistep schedulers upcast in step. Exact Gaussian-mixture network, 20
    DPM-Solver++ steps; errors relative to a float64 run (measured 4.7e-4 / 3.7e-3; integrating in the half
    dtype itself gives 2.4e-3 / 1.7e-2)."""
    from ld3.models import AnalyticGMM

    sched = LD3Scheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver="dpm_solver++",
                         timestep_spacing="leading", steps_offset=1)
    gmm = AnalyticGMM.random(sched.noise_schedule, dim=64, n_components=3, seed=0)

    def run(dtype):
        x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
        sched.set_timesteps(20)
        for k in sched.timesteps:
            t = (k.double() + 1) / 1000
            x = sched.step(gmm.eps(x.double(), t.expand(4)).to(dtype), k, x).prev_sample
            assert x.dtype == dtype
        return x.double()

    exact = run(torch.float64)
    assert rel_err(run(torch.float32), exact) < 1e-6
    assert rel_err(run(torch.float16), exact) < 1e-3
    assert rel_err(run(torch.bfloat16), exact) < 8e-3


def test_learned_variance_output_keeps_the_prediction_channels():
    """A UNet with out_channels = 2 * in_channels (prediction + learned variance): LD3Scheduler uses the first
    half, as DPMSolverMultistepScheduler(variance_type='learned_range') does."""
    torch.manual_seed(1)
    net = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    theirs = loop(DPMSolverMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min",
                                              variance_type="learned_range"), net, x_T(2, 9), 6)
    ours = loop(LD3Scheduler(solver="dpm_solver++", solver_options={"order": 2, "lower_order_final_below": 15}),
                net, x_T(2, 9), 6)
    assert rel_err(ours, theirs) < RTOL


def test_custom_timesteps_and_sigmas_as_in_diffusers(unet):
    """set_timesteps(timesteps=...) (network steps; end point t = 1/N appended) runs the grid that
    DPMSolverMultistepScheduler(final_sigmas_type='sigma_min') runs for the same custom timesteps; sigmas=... (all
    points, EulerDiscrete's convention, a final 0 meaning the end point) gives the same grid."""
    ks = [999, 850, 610, 402, 211, 80, 19]

    def run(sched, **kw):
        sched.set_timesteps(**kw)
        x = x_T(2, 10)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    theirs = run(DPMSolverMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min"), timesteps=ks)
    ours_sched = LD3Scheduler(solver="dpm_solver++", solver_options={"order": 2, "lower_order_final_below": 15})
    ours = run(ours_sched, timesteps=ks)
    assert ours_sched.timesteps.tolist() == [float(k) for k in ks]
    assert rel_err(ours, theirs) < RTOL
    ns = ours_sched.noise_schedule
    grid = torch.tensor([(k + 1) / 1000 for k in ks] + [1 / 1000], dtype=torch.float64)
    sig = ns.edm_sigma(grid)
    assert rel_err(run(ours_sched, sigmas=sig.tolist()), ours) < 1e-6
    assert rel_err(run(ours_sched, sigmas=sig[:-1].tolist() + [0.0]), ours) < 1e-6
    with pytest.raises(ValueError, match="invalid grid"):
        ours_sched.set_timesteps(timesteps=[999, 500, 0])  # k = 0 is the end point
    with pytest.raises(ValueError, match="only one of"):
        ours_sched.set_timesteps(5, timesteps=ks)


def test_begin_index_and_add_noise_as_diffusers_img2img(unet):
    """img2img: set_begin_index(b) + add_noise at timesteps[b] + steps from b on, against
    DPMSolverMultistepScheduler doing the same (its multistep history also starts afresh at b), and against
    ld3's solver run directly on the grid's tail."""
    x0 = x_T(2, 11).clamp(-1, 1)
    noise = x_T(2, 12)

    def img2img(sched, b):
        sched.set_timesteps(10)
        sched.set_begin_index(b)
        ts = sched.timesteps[b:]
        x = sched.add_noise(x0, noise, ts[:1].repeat(2))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in ts:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    ours_sched = LD3Scheduler(solver="dpm_solver++", solver_options={"order": 2, "lower_order_final_below": 15})
    for b in (3, 6):
        theirs = img2img(DPMSolverMultistepScheduler(solver_order=2, final_sigmas_type="sigma_min"), b)
        ours = img2img(ours_sched, b)
        assert ours_sched.step_index == 10 and ours_sched.begin_index == b
        assert rel_err(ours, theirs) < RTOL
        ts, mts = ours_sched._grid
        ns = ours_sched.noise_schedule
        x_b = ns.marginal_alpha(ts[b]) * x0 + ns.marginal_std(ts[b]) * noise
        model_fn = model_wrapper(lambda z, t: unet(z, t).sample, ns)
        with torch.no_grad():
            direct = get_solver("dpm_solver++", ns, order=2, lower_order_final_below=15).sample(model_fn, x_b, ts[b:])
        assert rel_err(ours, direct) < 1e-6
    assert rel_err(img2img(ours_sched, 3), img2img(ours_sched, 6)) > 1e-2  # the start matters
    ours_sched.set_timesteps(10)
    assert ours_sched.begin_index is None  # set_timesteps resets it, as in diffusers
    with pytest.raises(ValueError, match="one network call per grid point"):
        heun = LD3Scheduler(solver="heun")
        heun.set_timesteps(7)
        heun.set_begin_index(2)


def test_stable_diffusion_img2img_pipeline(sd_dir):
    """StableDiffusionImg2ImgPipeline (get_timesteps -> set_begin_index, add_noise) with LD3Scheduler configured
    as DPM-Solver++ 2M gives the latents of DPMSolverMultistepScheduler(final_sigmas_type='sigma_min')."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pipe("a cat", image=image, strength=0.6, num_inference_steps=8, guidance_scale=7.5,
                        generator=torch.Generator().manual_seed(4), output_type="latent").images

    cfg = dict(pipe.scheduler.config)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(cfg, solver_order=2, final_sigmas_type="sigma_min")
    theirs = run()
    pipe.scheduler = LD3Scheduler.from_config(cfg, solver="dpm_solver++",
                                              solver_options={"order": 2, "lower_order_final_below": 15})
    ours = run()
    assert pipe.scheduler.begin_index == 4  # strength 0.6 of 8 steps: the last int(4.8) = 4 calls
    assert rel_err(ours, theirs) < RTOL


def test_any_config_with_karras_sigmas_selects_the_karras_grid():
    """from_config of a (non-DEIS) diffusers config with use_karras_sigmas=True runs diffusers' Karras grid."""
    theirs = DPMSolverMultistepScheduler(solver_order=2, use_karras_sigmas=True, final_sigmas_type="sigma_min")
    ours = LD3Scheduler.from_config(theirs.config, solver="dpm_solver++")
    assert ours.config.discretization == "karras_sigmas"
    theirs.set_timesteps(8)
    ours.set_timesteps(7)
    assert ours.timesteps.tolist() == theirs.timesteps[:-1].tolist()
    assert LD3Scheduler.from_config(theirs.config, discretization="logSNR").config.discretization == "logSNR"


def test_from_discretization_applies_the_recorded_x0_rule(tmp_path):
    """A file that records ``solver_options.convert_at`` (TimeTuner's files: grid_time) builds a scheduler whose
    solver uses it; an explicit ``solver_options`` wins; solvers without the option ignore it."""
    path = save_discretization(tmp_path / "tt.json", torch.tensor([1.0, 0.5, 0.001]),
                               model_timesteps=torch.tensor([1.0, 0.45, 0.001]), solver="uni_pc", nfe=2,
                               config={"solver_options": {"convert_at": "grid_time"}})
    assert LD3Scheduler.from_discretization(path).solver.convert_at == "grid_time"
    own = LD3Scheduler.from_discretization(path, solver_options={"convert_at": "network_time"})
    assert own.solver.convert_at == "network_time"
    assert not hasattr(LD3Scheduler.from_discretization(path, solver="ipndm").solver, "convert_at")
