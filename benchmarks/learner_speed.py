"""Learner speed: our LD3 trainer against the reference LD3 trainer (github vinhsuhi/LD3) on the same problem.

Both trainers run in this process on one problem: the embedded digits model (classifier-free guidance 2.0),
teacher UniPC 20 steps on the logSNR grid (computed once here with ld3's solver), UniPC order 2 (bh1)
students, time mode, L2 loss, the reference's hyper-parameters (lr_time_2 = 0.1 / NFE, shift_lr = 12 / NFE,
prior bound 0.001 C H W / NFE^2, patience 5, rounds 2 + 5), the same network function and the same teacher
pairs. The reference's ``trainer.py`` is imported at run time from a checkout given with ``--reference``
(nothing of it is copied here); without one, only our trainer runs and the reference columns say so.

Measured for each NFE x batch size:

* seconds per training iteration: the median gap between consecutive training steps inside a round
  (one step = the training solve, its backward pass and optimizer steps, the validation after it, the
  latent move), from a one-round run;
* time to convergence: wall time of ``train()`` until the reference's stopping rules end it (all rounds
  done, or the lr2 floor hit ``lr2_patient`` times), with its iterations and best validation loss.

Adjustments needed to run the reference on a CPU-only machine, none of which changes its arithmetic:
``torch.Tensor.cuda`` is the identity while it runs (its parameters are created with ``.cuda()``); its
per-improvement schedule plot and GIF (``_visual_times``, ``save_gif``) are switched off unless
``--reference-plots`` (the GIF needs ``imageio``, not a dependency here: a stub module stands in for
the import); its ``logging.info`` lines and ours are silenced. Our trainer writes its resumable checkpoint
every step (its default), the reference its snapshot and pickled datasets on every improvement.

    OMP_NUM_THREADS=1 python benchmarks/learner_speed.py --reference /tmp/LD3ref
    python benchmarks/learner_speed.py --reference /tmp/LD3ref --nfe 4 --batch 1 --no-convergence
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GUIDANCE = {"guidance_type": "classifier-free", "guidance_scale": 2.0}
#: print every validation loss of both trainers (``--trace``): where the two runs part
TRACE = False


# ------------------------------------------------------------------------------------------------ problem
def build_problem(n: int, seed: int = 0) -> Dict[str, Any]:
    """Digits teacher pairs: unit-normal latents, UniPC 20-step logSNR outputs, labels 0..9 and the null class."""
    from ld3.discretizations import get_timesteps
    from ld3.models.zoo import load_model
    from ld3.solvers import get_solver

    loaded = load_model("digits")
    ns = loaded.noise_schedule
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((n, *loaded.shape), generator=g)
    labels = torch.arange(n) % 10
    null = torch.full((n,), int(loaded.null_class))
    teacher = get_solver("uni_pc", ns)
    grid = get_timesteps("logSNR", ns, 20, solver=teacher)
    with torch.no_grad():
        fn = loaded.model_fn(condition=labels, unconditional_condition=null, **GUIDANCE)
        targets = teacher.sample(fn, latents * ns.prior_scale, grid).float()
    return {"loaded": loaded, "latents": latents, "targets": targets, "labels": labels, "null": null}


def hyper(nfe: int, shape) -> Dict[str, float]:
    """The reference's derived values (its utils.adjust_hyper): lr_time_2 / NFE, 12 / NFE, 0.001 CHW / NFE^2."""
    c, h, w = shape
    return {"lr_time_2": round(0.1 / nfe, 8), "shift_lr": round(12.0 / nfe, 8),
            "prior_bound": round(0.001 * h * w * c / nfe ** 2, 8)}


# ------------------------------------------------------------------------------------------------ ours
def run_ours(p: Dict[str, Any], nfe: int, batch: int, n_train: int, n_valid: int, rounds: tuple,
             seed: int = 0) -> Dict[str, Any]:
    from ld3.learners import LD3Config, LD3Data, LD3Trainer, get_loss
    from ld3.learners.pipeline import model_fn_factory
    from ld3.solvers import get_solver

    loaded = p["loaded"]
    hp = hyper(nfe, loaded.shape)
    cfg = LD3Config(time_mode="time", window_from="steps", num_train=n_train, num_valid=n_valid,
                    main_train_batch_size=batch, main_valid_batch_size=n_valid, training_rounds_v1=rounds[0],
                    training_rounds_v2=rounds[1], lr_time_2=0.1, shift_lr=hp["shift_lr"],
                    prior_bound=hp["prior_bound"], fix_bound=True)
    n = n_train + n_valid
    data = [LD3Data(p["latents"][a:b], p["targets"][a:b], p["labels"][a:b], p["null"][a:b])
            for a, b in ((0, n_train), (n_train, n))]
    stamps: List[float] = []
    first: List[float] = []

    def on_metrics(row: Dict[str, Any]) -> None:
        if row.get("kind") == "valid":
            if TRACE:
                print(f"trace ours      iter {row.get('iter')} valid {float(row['valid_loss']):.9g}", flush=True)
            if not first:
                first.append(float(row["valid_loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        tr = LD3Trainer(cfg, get_solver("uni_pc", loaded.noise_schedule, order=2, variant="bh1"), nfe,
                        model_fn_factory(loaded, GUIDANCE), get_loss("l2"), data[0], data[1], run_dir=Path(tmp),
                        seed=seed,
                        on_step=lambda t: stamps.append((time.perf_counter(), t.state["round"])),
                        metrics_fn=on_metrics)
        assert abs(tr.opt2.param_groups[0]["lr"] - hp["lr_time_2"]) < 1e-12, "lr_time_2 / NFE as the reference"
        t0 = time.perf_counter()
        st = tr.train()
        wall = time.perf_counter() - t0
    return {"wall": wall, "iters": int(st["iter"]), "best": float(st["best_loss"]), "first": first[0],
            "per_iter": _median_gap(stamps)}


def _median_gap(stamps: List[tuple]) -> float:
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False) if a[1] == b[1]]  # same round only
    return statistics.median(gaps) if gaps else float("nan")


# ------------------------------------------------------------------------------------------------ reference
def import_reference(path: Path) -> types.ModuleType:
    """The reference's trainer module from its checkout (imported, not copied)."""
    if "imageio" not in sys.modules:
        try:
            import imageio  # noqa: F401
        except ImportError:  # only its GIF writer uses it
            stub = types.ModuleType("imageio")
            stub.imread = lambda *a, **k: None
            stub.mimsave = lambda *a, **k: None
            sys.modules["imageio"] = stub
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module("trainer")
    finally:
        sys.path.remove(str(path))


@contextlib.contextmanager
def cuda_is_identity():
    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = saved  # type: ignore[method-assign]


def run_reference(mod: types.ModuleType, p: Dict[str, Any], nfe: int, batch: int, n_train: int, n_valid: int,
                  rounds: tuple, plots: bool, seed: int = 0) -> Dict[str, Any]:
    from noise_schedulers import NoiseScheduleVP  # the reference's, importable once its trainer is
    from samplers.uni_pc import UniPC

    loaded = p["loaded"]
    c, h, w = loaded.shape
    assert h == w, "the reference reshapes latents to (C, R, R)"
    hp = hyper(nfe, loaded.shape)
    # its VP discrete schedule from the model's alphas_cumprod, as its latent-diffusion loader builds one
    ns = NoiseScheduleVP("discrete", alphas_cumprod=_alphas_cumprod(loaded.noise_schedule))
    ns.lambda_min = ns.marginal_lambda(ns.T).item()
    ns.lambda_max = ns.marginal_lambda(1.0 / ns.total_N).item()
    net = loaded.model_fn(**GUIDANCE)  # (x, t, condition, unconditional_condition) -> eps, its net's signature

    def dataset(a: int, b: int):
        lat = [x.clone() for x in p["latents"][a:b]]
        return mod.LD3Dataset([x.clone() for x in lat], lat, list(p["targets"][a:b]), list(p["labels"][a:b]),
                              list(p["null"][a:b]))

    stamps: List[tuple] = []
    first: List[float] = []

    class Timed(mod.LD3Trainer):
        def _examine_checkpoint(self, it):
            super()._examine_checkpoint(it)
            if it > 0:
                stamps.append((time.perf_counter(), self.cur_round))

        def _run_validation(self):
            out = super()._run_validation()
            if TRACE:
                print(f"trace reference iter {self.cur_iter} valid {float(out[0]):.9g}", flush=True)
            if not first:
                first.append(float(out[0]))
            return out

        if not plots:
            def _visual_times(self):
                return None

    saved_gif = mod.save_gif
    if not plots or getattr(sys.modules.get("imageio"), "__file__", None) is None:  # off, or imageio stubbed
        mod.save_gif = lambda *a, **k: None
    try:
        with tempfile.TemporaryDirectory() as tmp, cuda_is_identity():
            tcfg = mod.TrainingConfig(
                train_data=dataset(0, n_train), valid_data=dataset(n_train, n_train + n_valid),
                train_batch_size=batch, valid_batch_size=n_valid, lr_time_1=0.005, lr_time_2=hp["lr_time_2"],
                shift_lr=hp["shift_lr"], loss_type="L2", visualize=False)
            mcfg = mod.ModelConfig(net=net, decoding_fn=lambda x: x, noise_schedule=ns,
                                   solver=UniPC(ns, variant="bh1"), solver_name="uni_pc", order=2, steps=nfe,
                                   prior_bound=hp["prior_bound"], resolution=h, channels=c, time_mode="time",
                                   solver_extra_params={}, snapshot_path=tmp, device=torch.device("cpu"))
            torch.manual_seed(seed)  # its DataLoader shuffles with torch's global generator
            tr = Timed(mcfg, tcfg)
            t0 = time.perf_counter()
            tr.train(rounds[0], rounds[1])
            wall = time.perf_counter() - t0
    finally:
        mod.save_gif = saved_gif
    return {"wall": wall, "iters": int(tr.cur_iter), "best": float(tr.best_loss), "first": first[0],
            "per_iter": _median_gap(stamps)}


def _alphas_cumprod(ns) -> torch.Tensor:
    t = torch.arange(1, ns.total_N + 1, dtype=torch.float64) / ns.total_N
    return ns.marginal_alpha(t).pow(2).float()


# ------------------------------------------------------------------------------------------------ main
def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, default=None, help="checkout of github vinhsuhi/LD3 (its trainer.py)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--num-train", type=int, default=8)
    ap.add_argument("--num-valid", type=int, default=8)
    ap.add_argument("--speed-iters", type=int, default=5, help="training steps of the one-round speed run")
    ap.add_argument("--rounds", type=int, nargs=2, default=[2, 5], help="rounds v1 v2 of the convergence run")
    ap.add_argument("--no-convergence", action="store_true", help="only the seconds per iteration")
    ap.add_argument("--reference-plots", action="store_true", help="keep the reference's per-improvement plot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trace", action="store_true", help="print every validation loss of both trainers")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed of both trainers (the problem stays the same)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "learner_speed.md")
    args = ap.parse_args(argv)
    global TRACE
    TRACE = args.trace

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # the reference's uni_pc.py warns on every step
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ld3").setLevel(logging.WARNING)
    mod = None
    ref_note = ""
    if args.reference is None or not (args.reference / "trainer.py").is_file():
        ref_note = (f"reference skipped: no LD3 checkout at {args.reference} (pass --reference /path/to/vinhsuhi/LD3)"
                    if args.reference else "reference skipped: pass --reference /path/to/vinhsuhi/LD3")
        print(ref_note)
    else:
        mod = import_reference(args.reference)
    p = build_problem(max(args.num_train, max(args.batch) * args.speed_iters) + args.num_valid)

    rows = []
    for nfe in args.nfe:
        for b in args.batch:
            n_speed = b * args.speed_iters  # one round of speed_iters steps
            o = run_ours(p, nfe, b, n_speed, args.num_valid, (1, 0), args.seed)
            r = (run_reference(mod, p, nfe, b, n_speed, args.num_valid, (1, 0), args.reference_plots, args.seed)
                 if mod else None)
            oc = rc = None
            if not args.no_convergence:
                oc = run_ours(p, nfe, b, args.num_train, args.num_valid, tuple(args.rounds), args.seed)
                if mod:
                    rc = run_reference(mod, p, nfe, b, args.num_train, args.num_valid, tuple(args.rounds),
                                       args.reference_plots, args.seed)
            rows.append((nfe, b, o, r, oc, rc))
            print(_row(rows[-1]), flush=True)

    text = _table(rows, args, ref_note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print("\n" + text)
    return 0


def _conv(c) -> str:
    return "" if c is None else f"{c['wall']:.1f} s ({c['iters']} it, {c['best']:.4g})"


def _row(row) -> str:
    nfe, b, o, r, oc, rc = row
    ref_iter = f"{r['per_iter']:.3f}" if r else "n/a"
    ratio = f"{o['per_iter'] / r['per_iter']:.2f}" if r else "n/a"
    first = f"{o['first']:.6g} / " + (f"{r['first']:.6g}" if r else "n/a")
    ref_conv = _conv(rc) or ("n/a" if r is None else "")
    return f"| {nfe} | {b} | {o['per_iter']:.3f} | {ref_iter} | {ratio} | {_conv(oc)} | {ref_conv} | {first} |"


def _table(rows, args, note: str) -> str:
    import platform

    head = (f"Digits model (CFG 2.0), UniPC order 2 bh1 students, teacher UniPC 20 steps logSNR, L2, time mode; "
            f"{args.threads} thread(s), {platform.machine()}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Speed: median s per training step over a "
            f"one-round run of {args.speed_iters} steps. Convergence: {args.num_train} train / {args.num_valid} valid "
            f"pairs, rounds {args.rounds[0]} + {args.rounds[1]}, until the reference's stopping rules "
            f"(wall, iterations, best validation L2). Shuffle seed {args.seed}. Reference plots: "
            f"{'on' if args.reference_plots else 'off'}.\n\n")
    if note:
        head += note + "\n\n"
    lines = ["| NFE | batch | ours s/iter | reference s/iter | ours / reference | ours: to convergence "
             "| reference: to convergence | first valid loss (ours / reference) |",
             "|---:|---:|---:|---:|---:|---|---|---|"]
    lines += [_row(r) for r in rows]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
