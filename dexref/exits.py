"""Trained exit heads: one small adapter per exit depth before the frozen final norm + shared LM head.

This is how the early-exit-trained case is made on a standard model (DESIGN.md section 7), the way
AdaDecode does it: the base weights stay frozen and each adapter is trained by self-distillation, KL
from the model's own final-layer distribution to the exit's, on hidden states of the model's own
greedy generations. Depth L never has an adapter: the final token is always the plain final norm +
head's, so the committed tokens (and losslessness) cannot change; adapters only change the guesses.

Adapter at exit depth d < L (kind `lowrank-residual`, rank r):

    h -> h + B_d (A_d h)        A_d [r, D], B_d [D, r], B_d = 0 at the start

B_d starting at zero makes training start from the logit lens, so an adapter begins no worse than the
lens. The map is linear, so RMSNorm(h + B A h) ignores the scale of h, as the lens does: the adapter
only has to rotate the residual stream towards what the head reads at depth L. The rank was chosen
by measurement (dexref/README.md: held-out match rate and mean EAD for several ranks).

Files: `NAME.safetensors` (tensors `A.<d>`, `B.<d>`, float32) and the manifest `NAME.json` (depths,
shapes, the model it belongs to and that model's fingerprint, training data and settings, losses,
the tensor file's sha256). `load` checks all of it; every mismatch is one UserError line.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dexsim.errors import UserError

from .assets.sources import sha256_file
from .model import Transformer, attn_scale, embed, finish, head, prefill, qkv, softmax, window

FORMAT = "dex-exits/1"
KIND = "lowrank-residual"
LENS = "lens"
TRAINED = "trained:"
MANIFEST_KEYS = ("format", "name", "kind", "model", "arch", "model_fingerprint", "rank", "depths", "tensors",
                 "params_per_exit", "params", "dtype", "file", "sha256", "training")


# ---------------------------------------------------------------------------- the adapters

@dataclass
class Adapters:
    """Trained exit heads of one model: `A[d]` [r, D] and `B[d]` [D, r] for every depth d in `depths`."""

    name: str
    depths: tuple[int, ...]
    A: dict[int, Tensor]
    B: dict[int, Tensor]
    manifest: dict

    @property
    def heads(self) -> str:
        """The trace meta `heads` value (DESIGN.md section 5)."""
        return f"{TRAINED}{self.name}"

    def to(self, dtype: torch.dtype, device=None) -> "Adapters":
        cast = ({d: t.to(device, dtype) for d, t in self.A.items()},
                {d: t.to(device, dtype) for d, t in self.B.items()})
        return Adapters(self.name, self.depths, *cast, self.manifest)

    def adapt(self, x: Tensor, depths: np.ndarray) -> Tensor:
        """The exit head's input for rows x [R, D] read at `depths` [R]: adapted where an adapter exists,
        the very same values elsewhere (depth L above all), so those rows' head output cannot change."""
        out = x
        for d in np.unique(depths).tolist():
            if d not in self.A:
                continue
            rows = torch.from_numpy(np.flatnonzero(depths == d)).to(x.device)
            xd = x.index_select(0, rows)  # [Rd, D]
            yd = xd + F.linear(F.linear(xd, self.A[d]), self.B[d])  # [Rd, D]
            out = x.clone() if out is x else out
            out.index_copy_(0, rows, yd)
        return out


def exit_depths(adapters: Adapters | None, L: int) -> np.ndarray:
    """The depths where an exit can be read: every depth under the lens, the trained ones + L otherwise."""
    if adapters is None:
        return np.arange(1, L + 1)
    return np.array(sorted(set(adapters.depths) | {L}))


def check_exits(adapters: Adapters | None, exits, L: int, flag: str = "--exits") -> None:
    """A trained exit head exists only where one was trained: any other exit depth (but L) is a UserError."""
    if adapters is None:
        return
    if L in adapters.A:  # loaded manifests never have one (`load` checks); code-built adapters must not
        raise ValueError(f"{adapters.name}: an adapter at depth L = {L} would change the committed tokens")
    missing = sorted(set(np.asarray(exits).tolist()) - set(exit_depths(adapters, L).tolist()))
    if missing:
        raise UserError(f"{flag}: depth {missing[0]} has no trained exit head in {adapters.name} "
                        f"(trained depths: {','.join(map(str, adapters.depths))}, and {L})")


def params_per_exit(rank: int, dim: int) -> int:
    return 2 * rank * dim


# ---------------------------------------------------------------------------- which model

def fingerprint(model: Transformer) -> str:
    """sha256 of what makes exit adapters belong to a model: its shape, the final norm and LM head, and
    every block's norms (float32 bytes, so a float64 copy of the same model has the same fingerprint)."""
    a = model.args
    h = hashlib.sha256(json.dumps([a.n_layer, a.dim, a.vocab]).encode())
    parts = [model.norm.weight, model.output.weight]
    parts += [w for blk in model.layers for w in (blk.attention_norm.weight, blk.ffn_norm.weight)]
    for w in parts:
        h.update(w.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _arch(model: Transformer) -> dict:
    a = model.args
    return {"layers": a.n_layer, "hidden": a.dim, "vocab": a.vocab}


# ---------------------------------------------------------------------------- training data

@torch.inference_mode()
def greedy_states(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                  eos: int | None) -> list[Tensor]:
    """Greedy generations of `prompts`, decoded together with a padded KV cache; per prompt the hidden
    states [n, L+1, D] (0 = the embedding) of the n positions whose next token the model generated.

    A plain batched decoder rather than the engine: training data needs many tokens fast, not the
    engine's bitwise AR states (a near-tie may round the other way here, which no training cares about)."""
    a, S, dev = model.args, len(prompts), model.device
    P = torch.tensor([len(p) for p in prompts], device=dev)  # [S]
    T = int(P.max()) + max_new_tokens
    dt = model.dtype
    K = torch.zeros(a.n_layer, S, a.n_kv_head, T, a.head_dim, dtype=dt, device=dev)  # [L, S, Hkv, T, hd]
    V = torch.zeros_like(K)
    for s, p in enumerate(prompts):  # the cache: every prompt token but the last
        if len(p) > 1:
            Ks, Vs = prefill(model, torch.tensor(p[:-1], device=dev))  # [L, Hkv, P-1, hd]
            K[:, s, :, : len(p) - 1], V[:, s, :, : len(p) - 1] = Ks, Vs
    tok = torch.tensor([p[-1] for p in prompts], device=dev)  # [S]
    pos = P - 1  # [S]
    live = torch.ones(S, dtype=torch.bool, device=dev)
    steps: list[Tensor] = []  # per step [S, L+1, D]
    lengths = torch.zeros(S, dtype=torch.int64, device=dev)
    rows, at = torch.arange(S, device=dev), torch.arange(T, device=dev)
    G = a.n_head // a.n_kv_head
    for _ in range(max_new_tokens):
        x = embed(model, tok)  # [S, D]
        states = [x]
        seen = at[None, :] <= pos[:, None]  # [S, T]
        for layer in range(a.n_layer):
            q, k, v = qkv(model, layer, x, pos)  # [S, H, hd], [S, Hkv, hd] x2
            K[layer, rows, :, pos] = k
            V[layer, rows, :, pos] = v
            qg = q.view(S, a.n_kv_head, G, a.head_dim)  # [S, Hkv, G, hd]
            sc = torch.matmul(qg, K[layer].transpose(2, 3))  # [S, Hkv, G, T]
            sc = sc / math.sqrt(a.head_dim) if not a.attn_scalar else sc * attn_scale(a)
            w = window(a, layer)
            ok = seen if not w else seen & (at[None, :] > (pos - w)[:, None])  # sliding window
            sc = sc.masked_fill(~ok[:, None, None, :], float("-inf"))
            att = torch.matmul(softmax(sc), V[layer]).reshape(S, -1)  # [S, H*hd]
            x = finish(model, layer, x, att)
            states.append(x)
        steps.append(torch.stack(states, 1))  # [S, L+1, D]
        lengths += live
        tok = head(model, x).argmax(-1)  # [S]
        if eos is not None:
            live &= tok != eos
        pos = pos + 1
        if not live.any():
            break
    H = torch.stack(steps, 1)  # [S, n_max, L+1, D]
    return [H[s, : int(lengths[s])] for s in range(S)]


def collect(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, eos: int | None,
            batch: int = 16, progress=None) -> tuple[Tensor, int]:
    """(states [N, L+1, D] float32, N) at the positions whose next token the model itself generated
    greedily: the teacher is the model on its own output, which is what the exits will see."""
    states = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        states += [h.to(torch.float32) for h in greedy_states(model, chunk, max_new_tokens, eos)]
        if progress:
            progress(len(chunk))
    X = torch.cat(states)
    return X, X.shape[0]


# ---------------------------------------------------------------------------- training

def _head32(model: Transformer):
    """The frozen final norm + LM head in float32, as a function of x [R, D] -> logits [R, V]."""
    w = model.norm.weight.detach().to(torch.float32)
    if model.norm.offset:  # Gemma: (1 + w)
        w = model.norm.offset + w
    W = model.output.weight.detach().to(torch.float32)
    eps = model.args.norm_eps

    def head(x: Tensor) -> Tensor:
        return F.linear(w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)), W)  # [R, V]
    return head


def init_adapters(depths, rank: int, dim: int, seed: int) -> tuple[dict, dict]:
    """A random (std 1/sqrt(D), seeded), B zero: the adapters start as the logit lens."""
    g = torch.Generator().manual_seed(seed)
    A = {d: torch.randn(rank, dim, generator=g) / math.sqrt(dim) for d in depths}  # [r, D]
    B = {d: torch.zeros(dim, rank) for d in depths}  # [D, r]
    return A, B


def train(model: Transformer, states: Tensor, depths, *, rank: int, steps: int, batch: int, lr: float,
          seed: int, progress=None) -> tuple[dict, dict, dict]:
    """Self-distil one adapter per depth on states [N, L+1, D]: KL(final || exit) on the frozen head.

    Every step draws one batch of positions (epochs of a seeded permutation) and updates every depth's
    adapter on it (the depths share nothing but the teacher, which is computed once per batch). Adam
    with a cosine learning-rate decay to a tenth. Returns (A, B, log): the log holds per-depth KL of
    the first step (the lens: B = 0) and the mean over the last tenth of the steps."""
    L, N, D = model.args.n_layer, states.shape[0], states.shape[2]
    head = _head32(model)
    A, B = init_adapters(depths, rank, D, seed)
    A, B = ({d: t.to(states.device) for d, t in A.items()}, {d: t.to(states.device) for d, t in B.items()})
    params = [t.requires_grad_() for d in depths for t in (A[d], B[d])]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed + 1)
    order, at = torch.randperm(N, generator=g), 0
    losses = np.zeros((steps, len(depths)))
    for step in range(steps):
        if at + batch > N:  # a new epoch
            order, at = torch.randperm(N, generator=g), 0
        idx = order[at: at + batch].to(states.device)
        at += batch
        with torch.no_grad():
            teacher = torch.log_softmax(head(states[idx, L]), -1)  # [b, V]
        for i, d in enumerate(depths):
            x = states[idx, d]  # [b, D]
            student = torch.log_softmax(head(x + F.linear(F.linear(x, A[d]), B[d])), -1)  # [b, V]
            loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            loss.backward()
            losses[step, i] = loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if progress:
            progress(1)
    tail = losses[-max(1, steps // 10):].mean(0)
    log = {"kl_lens": dict(zip(map(str, depths), np.round(losses[0], 4).tolist())),
           "kl_final": dict(zip(map(str, depths), np.round(tail, 4).tolist()))}
    return {d: A[d].detach() for d in depths}, {d: B[d].detach() for d in depths}, log


@torch.no_grad()
def evaluate(model: Transformer, states: Tensor, adapters: Adapters | None, chunk: int = 512,
             depths=None) -> dict:
    """Match rate of the exit token with the final one at every exit depth (or at `depths`, which
    must end with L), mean EAD and stable EAD over those depths, on states [N, L+1, D] (float32 head,
    as in training)."""
    L = model.args.n_layer
    depths = exit_depths(adapters, L) if depths is None else np.asarray(depths)
    head = _head32(model)
    ad = None if adapters is None else adapters.to(torch.float32)
    hits = []
    for i in range(0, states.shape[0], chunk):
        s = states[i: i + chunk]
        final = head(s[:, L]).argmax(-1)  # [n]
        cols = []
        for d in depths.tolist():
            x = s[:, d] if ad is None else ad.adapt(s[:, d], np.full(s.shape[0], d))
            cols.append(head(x).argmax(-1) == final)
        hits.append(torch.stack(cols, 1))  # [n, E]
    m = torch.cat(hits).cpu().numpy()  # [N, E]
    ead = depths[m.argmax(1)]
    tail = m[:, ::-1].cumprod(1)[:, ::-1]  # [N, E]: every depth from here on matches
    stable = depths[tail.argmax(1)]
    return {"depths": depths.tolist(), "match_rate": np.round(m.mean(0), 4).tolist(),
            "mean_ead": round(float(ead.mean()), 3), "mean_stable_ead": round(float(stable.mean()), 3),
            "ceiling_ead": round(L / float(ead.mean()), 4), "tokens": int(m.shape[0])}


# ---------------------------------------------------------------------------- files

def save(path: str | Path, model: Transformer, A: dict, B: dict, *, model_name: str, training: dict) -> dict:
    """Write NAME.safetensors and the manifest NAME.json (`path` names either); returns the manifest."""
    from safetensors.torch import save_file

    man_path = Path(path).with_suffix(".json")
    ten_path = man_path.with_suffix(".safetensors")
    depths = sorted(A)
    rank, dim = A[depths[0]].shape
    tensors = {}
    for d in depths:
        tensors[f"A.{d}"] = A[d].to("cpu", torch.float32).contiguous()
        tensors[f"B.{d}"] = B[d].to("cpu", torch.float32).contiguous()
    save_file(tensors, str(ten_path))
    manifest = {
        "format": FORMAT, "name": man_path.stem, "kind": KIND, "model": model_name, "arch": _arch(model),
        "model_fingerprint": fingerprint(model), "rank": int(rank), "depths": depths,
        "tensors": {k: list(t.shape) for k, t in tensors.items()},
        "params_per_exit": params_per_exit(int(rank), int(dim)),
        "params": params_per_exit(int(rank), int(dim)) * len(depths),
        "dtype": "float32", "file": ten_path.name, "sha256": sha256_file(ten_path), "training": training,
    }
    man_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the exit-head manifest ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON exit-head manifest ({e})") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: not a JSON exit-head manifest (expected an object)")
    missing = [k for k in MANIFEST_KEYS if k not in m]
    if missing:
        raise UserError(f"{path}: manifest field {missing[0]!r} missing")
    if m["format"] != FORMAT or m["kind"] != KIND:
        raise UserError(f"{path}: format {m['format']!r} kind {m['kind']!r}, expected {FORMAT!r} {KIND!r}")
    return m


def _check_model(path: Path, m: dict, model: Transformer) -> None:
    L = model.args.n_layer
    if m["arch"] != _arch(model):
        raise UserError(f"{path}: the adapters are for {m['model']} {m['arch']}, not this model {_arch(model)}")
    if m["model_fingerprint"] != fingerprint(model):
        raise UserError(f"{path}: the adapters were trained on other weights than this model's "
                        f"(model_fingerprint differs; manifest model {m['model']!r})")
    depths = m["depths"]
    if (not isinstance(depths, list) or not depths or any(not isinstance(d, int) or not 1 <= d < L for d in depths)
            or depths != sorted(set(depths))):
        raise UserError(f"{path}: depths {depths!r}: expected increasing depths in [1, {L - 1}] (depth L has no adapter)")


def load(path: str | Path, model: Transformer) -> Adapters:
    """The adapters of manifest `path`, checked against `model` and cast to its dtype. A missing or
    corrupt file, a manifest of another model or bad depths is a UserError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    m = _read_manifest(path)
    _check_model(path, m, model)
    ten_path = path.parent / m["file"]
    if not ten_path.is_file():
        raise UserError(f"{ten_path}: adapter file missing (named by {path})")
    if sha256_file(ten_path) != m["sha256"]:
        raise UserError(f"{ten_path}: sha256 does not match the manifest {path.name} (corrupt or replaced)")
    try:
        t = load_file(str(ten_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{ten_path}: unreadable adapter file ({e})") from None
    shapes = {"A": [m["rank"], model.args.dim], "B": [model.args.dim, m["rank"]]}
    for d in m["depths"]:
        for kind, shape in shapes.items():
            key = f"{kind}.{d}"
            if key not in t or list(t[key].shape) != shape or m["tensors"].get(key) != shape:
                raise UserError(f"{ten_path}: tensor {key} missing or not of shape {shape}")
            if not torch.isfinite(t[key]).all():
                raise UserError(f"{ten_path}: tensor {key} holds NaN or inf")
    dt, dev = model.dtype, model.device
    A = {d: t[f"A.{d}"].to(dev, dt) for d in m["depths"]}
    B = {d: t[f"B.{d}"].to(dev, dt) for d in m["depths"]}
    return Adapters(m["name"], tuple(m["depths"]), A, B, m)


def resolve(spec: str, model: Transformer) -> Adapters | None:
    """`--heads lens | trained:PATH` -> None (the logit lens) or the adapters of manifest PATH."""
    if spec == LENS:
        return None
    if spec.startswith(TRAINED) and spec != TRAINED:
        return load(spec.removeprefix(TRAINED), model)
    raise UserError(f"--heads {spec!r}: expected lens or trained:MANIFEST.json")


# ---------------------------------------------------------------------------- the whole command

def train_exits(model: Transformer, prompts: list[list[int]], depths, *, rank: int, steps: int, batch: int,
                lr: float, seed: int, max_new_tokens: int, eos: int | None, progress=None) -> tuple[dict, dict, dict]:
    """Collect states of the model's own greedy generations of `prompts`, then train; returns (A, B, log)
    with the token count and the wall time of each phase in the log. progress(phase, n) reports."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        states, n = collect(model, prompts, max_new_tokens=max_new_tokens, eos=eos,
                            progress=progress and (lambda k: progress("collect", k)))
    states = states.clone()  # an ordinary tensor (autograd may use it)
    t1 = time.perf_counter()
    A, B, log = train(model, states, list(depths), rank=rank, steps=steps, batch=batch, lr=lr, seed=seed,
                      progress=progress and (lambda k: progress("train", k)))
    log.update(tokens=n, collect_s=round(t1 - t0, 1), train_s=round(time.perf_counter() - t1, 1))
    return A, B, log
