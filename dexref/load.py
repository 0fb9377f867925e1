"""A model ready to run, from its settings (`ModelConfig`): weights from the cache in a dtype, the
tokenizer, the sampling rule, and exit sets checked against the exit heads. What every dexref
command and `python -m viz animate --model` start from."""
from __future__ import annotations

from dataclasses import dataclass

from dexsim.config import option, parse_seed
from dexsim.depths import parse_depths
from dexsim.errors import UserError

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ModelConfig:
    model: str = option("smollm2-135m", "model to run (see `fetch`)")
    dtype: str = option("float32", f"one of {', '.join(DTYPES)}")
    template: str = option("raw", "raw | chat (the model's chat template, one user turn)")
    sampling: str = option("greedy", "greedy | gumbel (seeded Gumbel-max)")
    seed: int = option(0, "gumbel: the noise seed", kind=parse_seed)
    temperature: float = option(1.0, "gumbel: temperature T")
    threads: int | None = option(None, "torch CPU threads (default: torch's)", kind=int)

    def sampling_rule(self):
        from .engine import Sampling

        return Sampling(self.sampling, self.seed, self.temperature)


def load_model(cfg: ModelConfig):
    """(model, tokenizer, cache config) of cfg.model in cfg.dtype, fetched into the cache if needed."""
    import torch

    from .assets.fetch import require_model
    from .model import load_cached
    from .assets.tokenizer import TEMPLATES, Tok

    if cfg.dtype not in DTYPES:
        raise UserError(f"--dtype {cfg.dtype!r}: must be one of {', '.join(DTYPES)}")
    if cfg.template not in TEMPLATES:
        raise UserError(f"--template {cfg.template!r}: must be one of {', '.join(TEMPLATES)}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UserError(f"--threads {cfg.threads}: must be >= 1")
        torch.set_num_threads(cfg.threads)
    folder = require_model(cfg.model)
    try:
        model, meta = load_cached(folder, getattr(torch, cfg.dtype))
        tok = Tok(folder)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: unreadable model cache ({e}); "
                        f"run `python -m dexref fetch {cfg.model} --force`") from None
    return model, tok, meta


def exit_set(spec: str, L: int, heads, flag: str):
    """An exit-depth spec on a model of L layers; with trained heads `all` means every trained depth
    and L, and any other depth is refused."""
    from .exits import check_exits, exit_depths

    depths = exit_depths(heads, L) if spec == "all" else parse_depths(spec, L, flag=flag)
    check_exits(heads, depths, L, flag=flag)
    return depths
