"""A model ready to run, from its settings (`ModelConfig`): weights from the cache in a dtype, the
tokenizer, the sampling rule, and exit sets checked against the exit heads. What every dexref
command and `python -m viz animate --model` start from."""
from __future__ import annotations

from dataclasses import dataclass

from dexsim.config import option, parse_seed
from dexsim.depths import parse_depths
from dexsim.errors import UserError

DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelConfig:
    model: str = option("smollm2-135m", "model to run: a cached model (see `fetch`), a Hugging Face "
                                        "checkpoint folder (PATH), or random:NAME (random weights of a "
                                        "dexsim catalog shape, e.g. random:llama2-7b)")
    dtype: str = option("float32", f"one of {', '.join(DTYPES)}")
    device: str | None = option(None, "cpu | cuda | cuda:N (default: a GPU when one is present)")
    template: str = option("raw", "raw | chat (the model's chat template, one user turn)")
    sampling: str = option("greedy", "greedy | gumbel (seeded Gumbel-max)")
    seed: int = option(0, "gumbel: the noise seed", kind=parse_seed)
    temperature: float = option(1.0, "gumbel: temperature T")
    threads: int | None = option(None, "torch CPU threads (default: torch's)", kind=int)

    def sampling_rule(self):
        from .engine import Sampling

        return Sampling(self.sampling, self.seed, self.temperature)


def resolve_device(spec: str | None):
    """The torch device of --device: cpu, cuda or cuda:N (None: the first GPU if there is one). A GPU
    that is not there is a UserError, never a silent fall back to the CPU."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, colon, index = spec.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise UserError(f"--device {spec!r}: must be cpu, cuda or cuda:N")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: no CUDA GPU is available on this machine (torch {torch.__version__}, "
                        f"built {'with' if torch.version.cuda else 'without'} CUDA)")
    n = torch.cuda.device_count()
    if colon and int(index) >= n:
        raise UserError(f"--device {spec}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1})")
    return torch.device(spec)


def resolve_dtype(name: str, device):
    """The torch dtype of --dtype, checked to work on `device` (one line where it does not)."""
    import torch

    if name not in DTYPES:
        raise UserError(f"--dtype {name!r}: must be one of {', '.join(DTYPES)}")
    dt = getattr(torch, name)
    if device.type == "cuda" and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    try:
        (torch.ones(2, 2, dtype=dt, device=device) @ torch.ones(2, 2, dtype=dt, device=device)).sum().item()
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--dtype {name}: not supported on {device} ({str(e).splitlines()[0]})") from None
    return dt


def load_model(cfg: ModelConfig):
    """(model, tokenizer, provenance) of cfg.model in cfg.dtype on cfg.device: a cached model (fetched
    into the cache if needed), a Hugging Face checkpoint folder, or random weights of a catalog shape."""
    import torch

    from .assets.fetch import require_model
    from .assets.tokenizer import TEMPLATES, ByteTok, Tok
    from .checkpoint import RANDOM, is_checkpoint, load_checkpoint, random_args, random_model
    from .model import load_cached

    if cfg.template not in TEMPLATES:
        raise UserError(f"--template {cfg.template!r}: must be one of {', '.join(TEMPLATES)}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UserError(f"--threads {cfg.threads}: must be >= 1")
        torch.set_num_threads(cfg.threads)
    if cfg.model.startswith(RANDOM):
        a = random_args(cfg.model[len(RANDOM):])
        return random_model(a, dtype, device, seed=cfg.seed), ByteTok(), {
            "name": cfg.model, "source": cfg.model, "args": a.to_dict()}
    if is_checkpoint(cfg.model):
        model, meta = load_checkpoint(cfg.model, dtype, device)
        tok = Tok(cfg.model, hf=True)
        # of several EOS ids the core stops at one: the tokenizer's eos token where it is one of them
        # (Llama 3 Instruct: <|eot_id|>, which ends a chat turn), else the first
        eos = tok.tk.token_to_id(tok.specials.get("eos_token") or "")
        if eos is not None and eos in meta["eos_ids"]:
            model.args.eos = eos
        return model, tok, meta
    folder = require_model(cfg.model)
    try:
        model, meta = load_cached(folder, dtype, device)
        tok = Tok(folder)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: unreadable model cache ({e}); "
                        f"run `python -m dexref fetch {cfg.model} --force`") from None
    return model, tok, meta


def load_shape(args, positions: int = 0):
    """(model, shape) of --shape NAME (random weights of a catalog shape, its context raised to
    `positions` where needed) or --model (a cached model or a checkpoint folder): exactly one."""
    import torch

    from .checkpoint import RANDOM, random_args, random_model

    if (args.shape is None) == (args.model is None):
        raise UserError("--shape NAME or --model PATH: exactly one is required")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    if args.shape is not None:
        device = resolve_device(args.device)
        a = random_args(args.shape)
        a.max_len = max(a.max_len, positions)
        model, name = random_model(a, resolve_dtype(args.dtype, device), device), f"{RANDOM}{args.shape}"
    else:
        model, _, meta = load_model(ModelConfig(model=args.model, dtype=args.dtype, device=args.device))
        name = args.model
    a = model.args
    arch = {"layers": a.n_layer, "hidden": a.dim, "intermediate": a.intermediate, "heads": a.n_head,
            "kv_heads": a.n_kv_head, "head_dim": a.head_dim, "vocab": a.vocab}
    return model, {"name": name, "arch": arch}


def exit_set(spec: str, L: int, heads, flag: str):
    """An exit-depth spec on a model of L layers; with trained heads `all` means every trained depth
    and L, and any other depth is refused."""
    from .exits import check_exits, exit_depths

    depths = exit_depths(heads, L) if spec == "all" else parse_depths(spec, L, flag=flag)
    check_exits(heads, depths, L, flag=flag)
    return depths
