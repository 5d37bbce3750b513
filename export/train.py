"""train: the e2e-simple Diffusion-LM objective, AdamW, EMA, resumable checkpoints; one process
or torchrun's N (DistributedDataParallel: global batch = N x train.batch_size)."""
import copy
import json
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import data, distributed, progress
from .atomic import atomic_save
from .errors import ExportError
from .model import DiffusionLM, count_parameters, token_nll
from .schedule import Diffusion

CHECKPOINT = "checkpoint.pt"


class Objective(nn.Module):
    """e2e-simple: x0 MSE (vs EMB(w) at t=0) + prior ||mean q(x_T|x0)||^2 + rounding NLL, as one
    module so that DistributedDataParallel sees the whole forward (embedding, self-conditioning
    pass, denoiser, rounding head).

    Self-conditioned models see, for half the sequences, their own (detached) x0_hat of the
    same x_t as a second input, and zeros for the rest, as they will when sampling."""

    def __init__(self, model, diffusion, anchor=0.0):
        super().__init__()
        self.model, self.diffusion, self.anchor = model, diffusion, anchor

    def forward(self, ids, x0_noise, t, eps, keep):
        diff, T = self.diffusion, self.diffusion.num_steps
        x0_mean = self.model.word_emb(ids)
        x0 = x0_mean + float(diff.sqrt_one_minus_alpha_bar[0]) * x0_noise
        x_t = diff.q_sample(x0, t, eps)
        x0_hat_prev = None
        if keep is not None:
            with torch.no_grad():
                x0_hat_prev = self.model(x_t, t) * keep.to(x_t.dtype)[:, None, None]
        x0_hat = self.model(x_t, t, x0_hat_prev)
        mse = ((x0_hat - x0) ** 2).mean(dim=(1, 2))
        mse = torch.where(t == 0, ((x0_hat - x0_mean) ** 2).mean(dim=(1, 2)), mse)
        prior = ((float(diff.sqrt_alpha_bar[T - 1]) * x0) ** 2).mean(dim=(1, 2))
        nll = token_nll(self.model, x0, ids)
        loss = mse + prior + nll
        terms = {"mse": mse.mean(), "prior": prior.mean(), "nll": nll.mean()}
        if self.anchor:  # anchor loss: x0_hat itself must round to w, at every t
            anchor = token_nll(self.model, x0_hat, ids)
            loss = loss + self.anchor * anchor
            terms["anchor"] = anchor.mean()
        return {**terms, "loss": loss.mean()}


class Trainer:
    def __init__(self, cfg, data_dir, process):
        self.cfg = cfg
        self.process = process
        self.tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
        words = training_words(data_dir, cfg.train.corpus)
        self.ids = torch.tensor([data.encode_ids(self.tok, w, cfg.model.seq_len) for w in words], dtype=torch.long)
        torch.manual_seed(cfg.train.seed)  # the same initial weights in every process
        self.model = DiffusionLM(cfg.model, self.tok.get_vocab_size())
        if cfg.train.init:
            self.model.load_state_dict(initial_weights(cfg.train.init))
        self.model = self.model.to(self.process.device)
        if self.process.world > 1:
            torch.manual_seed(cfg.train.seed + 7919 * self.process.rank)  # each process its own dropout masks
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.diffusion = Diffusion.full(cfg.diffusion.schedule, cfg.diffusion.T)
        self.objective = Objective(self.model, self.diffusion, cfg.train.anchor)
        if self.process.world > 1:
            ids = [self.process.device.index] if self.process.device.type == "cuda" else None
            self.objective = DistributedDataParallel(self.objective, device_ids=ids)
        self.step = 0
        self.elapsed = 0.0

    def lr_at(self, step):
        t = self.cfg.train
        if step < t.warmup:
            return t.lr * (step + 1) / t.warmup
        return t.lr * max(0.0, 1.0 - (step - t.warmup) / max(1, t.steps - t.warmup))

    def draws(self):
        """The global batch's sentences and noise, drawn alike in every process (one generator,
        on the CPU), and this process's rows of it: N processes train as one would on
        the global batch."""
        b, world, cfg = self.cfg.train.batch_size, self.process.world, self.cfg
        g, shape = b * world, (b * world, cfg.model.seq_len, cfg.model.d)
        idx = torch.randint(0, len(self.ids), (g,), generator=self.gen)
        x0_noise = torch.randn(shape, generator=self.gen)
        t = torch.randint(0, cfg.diffusion.T, (g,), generator=self.gen)
        eps = torch.randn(shape, generator=self.gen)
        keep = (torch.rand(g, generator=self.gen) < 0.5) if cfg.model.self_condition else None
        rows = slice(self.process.rank * b, (self.process.rank + 1) * b)
        dev = self.process.device
        return [None if x is None else x[rows].to(dev) for x in (self.ids[idx], x0_noise, t, eps, keep)]

    def train_step(self):
        batch = self.draws()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.model.train()
        terms = self.objective(*batch)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()  # DistributedDataParallel averages the gradients over the processes
        self.opt.step()
        with torch.no_grad():
            rate = self.cfg.train.ema_rate
            for p_ema, p in zip(self.ema.parameters(), self.model.parameters()):
                p_ema.mul_(rate).add_(p.detach(), alpha=1.0 - rate)
        self.step += 1
        return self.process.mean({k: float(v.detach()) for k, v in terms.items()})

    def state(self):
        return {
            "config": self.cfg.to_dict(), "step": self.step, "elapsed_s": self.elapsed,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "world_size": self.process.world,
        }

    def save(self, path):
        atomic_save(self.state(), path)

    def load(self, path):
        # on the CPU: the generator's state must stay a CPU tensor; load_state_dict copies the
        # weights (and the optimizer its moments) to the parameters' device
        state = torch.load(path, weights_only=False, map_location="cpu")
        if state.get("world_size", 1) != self.process.world:
            raise ExportError(f"{path}: checkpoint was trained by {state.get('world_size', 1)} process(es) (global batch "
                              f"{state.get('world_size', 1)} x train.batch_size); resume with that many "
                              f"(torchrun --nproc_per_node), not {self.process.world}")
        if _resumable(state["config"]) != _resumable(self.cfg.to_dict()):
            raise ExportError(f"{path}: checkpoint was trained with another config (only train.steps, train.threads and "
                              "train.checkpoint_every may change on resume); refusing to resume")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.step, self.elapsed = state["step"], state["elapsed_s"]


def training_words(data_dir, corpus):
    """The word lists the denoiser trains on: the training split, the distilled corpus, or both."""
    real = [r["words"] for r in data.load_split(data_dir, "train")] if corpus in ("real", "mixed") else []
    distilled = [r["words"] for r in data.load_split(data_dir, "distilled")] if corpus in ("distilled", "mixed") else []
    return real + distilled


def initial_weights(path):
    """The EMA weights of a checkpoint.pt or a model directory's reference.pt, to start training from."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"train.init: {path} not found (a checkpoint.pt or a model's reference.pt)")
    state = torch.load(path, weights_only=False, map_location="cpu")
    if not isinstance(state, dict) or "ema" not in state:
        raise ExportError(f"train.init: {path} holds no EMA weights (expected a checkpoint.pt or a reference.pt)")
    return state["ema"]


def _resumable(cfg_dict):
    """The config a checkpoint must match to resume: all of it but the step targets, threads, the controls and
    the teacher."""
    train_part = {k: v for k, v in cfg_dict["train"].items() if k not in ("steps", "checkpoint_every", "threads")}
    data_part = {**cfg_dict["data"], "files": list(cfg_dict["data"]["files"])}
    rest = {k: v for k, v in cfg_dict.items() if k not in ("controls", "teacher")}
    return {**rest, "train": train_part, "data": data_part}


def train(cfg, data_dir, out_dir, resume=False, device="auto"):
    """Train to cfg.train.steps, checkpointing into out_dir; returns the final log record. Under
    torchrun every process trains its share of each global batch; rank 0 writes the checkpoint
    and the log, and every process resumes from the same checkpoint file."""
    out_dir = Path(out_dir)
    process = distributed.start(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        trainer = Trainer(cfg, data_dir, process)
        ckpt = out_dir / CHECKPOINT
        if resume and ckpt.exists():
            trainer.load(ckpt)
        elif ckpt.exists():
            raise ExportError(f"{ckpt} exists: pass --resume to continue it, or remove it to start over")
        process.same("step", trainer.step, f"resumed from {ckpt}: the work directory must be one every machine sees")
        process.barrier()  # nobody writes the checkpoint before everybody has read it
        record = _loop(trainer, out_dir, ckpt)
        process.barrier()
        return record
    finally:
        distributed.stop(process)


def _loop(trainer, out_dir, ckpt):
    cfg, main = trainer.cfg, trainer.process.main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    record = {}
    log = (out_dir / "train_log.jsonl").open("a") if main else None
    with progress.bar(total=cfg.train.steps, initial=trainer.step, desc="train", unit="step", mininterval=2.0,
                      hide=not main) as bar:
        if trainer.step == 0 and main:
            log.write(json.dumps({"event": "start", "parameters": count_parameters(trainer.model),
                                  "processes": trainer.process.world,
                                  "global_batch": trainer.process.world * cfg.train.batch_size}) + "\n")
        running = None
        while trainer.step < cfg.train.steps:
            t0 = time.perf_counter()
            terms = trainer.train_step()
            trainer.elapsed += time.perf_counter() - t0
            running = terms["loss"] if running is None else 0.98 * running + 0.02 * terms["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", mse=f"{terms['mse']:.4f}", nll=f"{terms['nll']:.3f}")
            if trainer.step % cfg.train.checkpoint_every == 0 or trainer.step == cfg.train.steps:
                record = {"step": trainer.step, "loss_ema": running, **terms, "elapsed_s": round(trainer.elapsed, 1)}
                if main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    trainer.save(ckpt)
    if log:
        log.close()
    return record if record else {"step": trainer.step, "elapsed_s": trainer.elapsed}


def load_ema(ckpt_path, vocab_size):
    """The EMA weights of a checkpoint and its config (what gets exported)."""
    from .config import from_dict

    state = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    cfg = from_dict(state["config"])
    model = DiffusionLM(cfg.model, vocab_size)
    model.load_state_dict(state["ema"])
    return model.eval(), cfg, state
