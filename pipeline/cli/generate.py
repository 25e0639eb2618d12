"""`python -m pipeline generate`: text from a decoder's verified artifacts, through the one generation loop."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli.options import model_options, positive, settings_from
from pipeline.generation.engines import ENGINES
from pipeline.generation.loop import Options
from pipeline.generation.sampling import Sampling
from pipeline.runtimes.session import SessionConfig
from pipeline.spec import Generation


def add_parsers(commands) -> None:
    p = commands.add_parser(
        "generate",
        help="generate text from a decoder's verified ONNX graph (or eager torch), greedy or sampled",
        description="Generate text with the model's key/value cache, from the ONNX graph that passed parity (or the "
        "verified checkpoint on eager torch). Greedy unless --temperature is above 0 (or the checkpoint's "
        "generation_config.json samples). One prompt streams its text as it comes; --json prints a list with "
        'one {"text", "tokens", "finish_reason"} per prompt.',
    )
    model_options(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch (left-padded, one run)")
    p.add_argument("--max-new-tokens", type=positive, default=32, help="new tokens at most per prompt (default: %(default)s)")
    p.add_argument(
        "--temperature", type=float, help="0: greedy; above 0: sample (default: the checkpoint's generation_config.json, else greedy)"
    )
    p.add_argument(
        "--top-p", type=float, help="sample from the most likely tokens whose probability reaches this (default: the checkpoint's, else 1)"
    )
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens, 0 for all (default: the checkpoint's, else 0)")
    p.add_argument("--seed", type=int, help="the sampler's seed: the same seed gives the same text")
    p.add_argument("--stop", action="append", default=[], help="stop a prompt's text before this string (repeatable)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="onnxruntime",
        help="the ONNX graph on ONNX Runtime, or eager torch (default: %(default)s)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime's device (default: %(default)s)")
    p.add_argument("--threads", type=positive, help="ONNX Runtime intra-op threads (default: its own choice)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per prompt")


def sampling(args: argparse.Namespace, gen: Generation) -> Sampling:
    """The flags, else the checkpoint's generation_config.json; temperature 0 is greedy, as the OpenAI API has it."""
    temperature = args.temperature if args.temperature is not None else (gen.temperature if gen.do_sample else 0.0)
    if temperature == 0:
        return Sampling(greedy=True, seed=args.seed)
    top_p = args.top_p if args.top_p is not None else gen.top_p
    top_k = args.top_k if args.top_k is not None else gen.top_k
    return Sampling(greedy=False, temperature=temperature, top_p=top_p, top_k=top_k, seed=args.seed)


def command(args: argparse.Namespace) -> int:
    from pipeline.generation import load  # the verified artifacts: torch and the stages, only when it runs

    settings = settings_from(args)
    generator = load.load(settings, args.engine, SessionConfig(args.device, threads=args.threads))
    options = Options(max_new_tokens=args.max_new_tokens, sampling=sampling(args, generator.gen), stop=tuple(args.stop))
    run = generator.run(args.prompt, options)
    stream = len(args.prompt) == 1 and not args.json
    if stream:
        print(args.prompt[0], end="", flush=True)
    for deltas in run:
        if stream:
            print("".join(d.text for d in deltas), end="", flush=True)
    if stream:
        print()
    elif args.json:
        json.dump([{"text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason} for c in run.completions], sys.stdout)
        print()
    else:
        for prompt, completion in zip(args.prompt, run.completions):
            print(f"{prompt}{completion.text}\n")
    return 0
