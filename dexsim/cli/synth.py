"""`python -m dexsim synth`: write a synthetic trace (dexsim/traces/synth.py)."""
from __future__ import annotations

from dexsim import config
from dexsim.traces.format import save_trace
from dexsim.traces.synth import EAD_FORMS, synth_trace


def run(args) -> int:
    config.check_writable("--out", args.out)
    trace = synth_trace(args.model, args.seqs, args.tokens, depths=args.depths, ead=args.ead,
                        flicker=args.flicker, change_rate=args.change_rate, prompt_len=args.prompt_len,
                        seed=args.seed, heads=args.heads)
    save_trace(trace, args.out)
    print(f"wrote {args.out}: {trace.n_seqs} sequences, {trace.n_tokens} tokens, {len(trace.depths)} depths")
    return 0


def register(subparsers):
    p = subparsers.add_parser("synth", help="write a synthetic trace from a parametric EAD distribution")
    p.add_argument("--model", required=True, help="catalog model name (sets L and the vocabulary)")
    p.add_argument("--seqs", type=int, required=True, help="number of sequences")
    p.add_argument("--tokens", type=int, required=True, help="tokens per sequence")
    p.add_argument("--depths", default="all", help="recorded exit depths: all, every:N or d1,d2,... (L always added)")
    p.add_argument("--ead", default="beta:2,1.2", help=f"EAD distribution: {EAD_FORMS}")
    p.add_argument("--flicker", type=float, default=0.1, help="probability that a token flickers wrong above its EAD")
    p.add_argument("--change-rate", type=float, default=0.3, help="per-layer change rate of wrong exit tokens")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt length recorded for every sequence")
    p.add_argument("--heads", default="lens", help='exit-head kind recorded in meta ("lens" or "trained:NAME")')
    p.add_argument("--seed", type=config.parse_seed, default=0, help="seed of the random draws")
    p.add_argument("--out", required=True, help="output .npz path")
    p.set_defaults(func=run)
