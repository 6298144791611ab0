"""The `semalign` command line. Each subcommand is a thin call into the Python API.

User-fixable problems (`SemalignError`) print as one line on stderr with exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .core.errors import SemalignError, run_reporting_errors


def _cmd_info(args) -> None:
    import pandas as pd

    from .models.inspect import describe
    from .models.load import inspect_source, load_model
    from .models.pair import vocabulary_mismatch
    from .models.readiness import stage_readiness

    if args.system:
        from .system import system_info

        info = system_info()
        width = max(map(len, info))
        print("\n".join(f"{k:<{width}}  {v}" for k, v in info.items()))
        if not args.sources:
            return
        print()
    elif not args.sources:
        raise SemalignError("semalign info needs 1-2 model sources (zoo name, HF directory, .gguf), or --system")
    for source in args.sources:  # every source checked before the first one loads
        inspect_source(source)
    models = [load_model(s) for s in args.sources]
    table = pd.DataFrame([describe(m) for m in models]).set_index("model").T
    print(table.to_string())
    names = [*args.sources, "student"]
    stages = stage_readiness(models[0], models[1] if len(models) == 2 else None, names[0], names[1])
    width = max(map(len, stages))
    if len(models) == 2:
        ok = all(v is None for v in stages.values())
        print(f"\npairable: {'yes, every stage' if ok else 'only the stages marked yes'} (teacher {args.sources[0]}, "
              f"student {args.sources[1]})")
    else:
        print("\nas a teacher or student, per stage:")
    for stage, problem in stages.items():
        print(f"  {stage:<{width}}  {'yes' if problem is None else 'no — ' + problem}")
    if len(models) == 2 and vocabulary_mismatch(*models):
        from .data.vocab import held_out_coverage

        print(f"\nvocabulary coverage (tokens with the same string; bytes and positions on held-out "
              f"standard-library text):\n{held_out_coverage(*models, *args.sources).to_string(header=False)}")


def _cmd_zoo_list(args) -> None:
    from .models.zoo import ZOO_NAMES

    for name, text in sorted(ZOO_NAMES.items()):
        print(f"{name:16s} {text}")


def _cmd_pretrain(args) -> None:
    from .core.config import load_config
    from .training.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.set)
    print(json.dumps(pretrain(cfg, args.run_dir), indent=2))


def _cmd_train_tokenizer(args) -> None:
    from .training.bpe import train_corpus_bpe

    print(train_corpus_bpe(args.vocab_size, args.out, root=args.corpus))


def _cmd_card(args) -> None:
    from .reports.model_card import card_from_run

    print(card_from_run(args.run_dir, args.out, max_tokens=args.max_tokens))


def _cmd_export(args) -> None:
    from .training.pretrain import export_student

    print(export_student(args.run_dir, args.out))


def _cmd_demo(args) -> None:
    from .demo import run_demo

    overrides = {k: v for k, v in (("student", args.student), ("vocab", args.vocab)) if v is not None}
    result = run_demo(args.profile, out_dir=args.out, progress=not args.no_progress, **overrides)
    m = result.machine
    table = result.results.copy()
    gap = [c for c in table.columns if c.startswith("gap_closed")]
    table[gap] = table[gap].map(lambda v: f"{100 * v:+.1f} %")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{result.verdict}")
    print(f"\nprecision {m['resolved_precision']} ({m['precision']}; {m['cpu']}, {m['cpu_isa']}, native bf16 "
          f"{'yes' if m['native_bf16'] else 'no'}), {result.timings['total'] / 60:.1f} min")
    print(f"report: {result.report_path}")


def align_main(config_path: str | None, overrides: list[str] | dict | None = None,
               stop_after_steps: int | None = None):
    """What `semalign align --config run.toml [--set key=value ...]` runs (also under `accelerate launch -m
    semalign_lens align ...`): train, then, on the main process, draw the run's page and send its figures to the
    experiment trackers (`trackers`); prints a one-line summary."""
    from accelerate.state import PartialState

    from .reports.run import draw_run
    from .reports.tracking import track_figures
    from .training import align, load_align_config

    result = align(load_align_config(config_path, overrides), stop_after_steps=stop_after_steps)
    if PartialState().is_main_process:
        if result.finished:
            try:
                draw_run(result)
                track_figures(result)
            finally:
                result.end_trackers()
        done = "finished" if result.finished else f"stopped at step {result.final.get('step')}"
        print(f"semalign align: {done}; run directory {result.run_dir}"
              + (f", student {result.student_path}" if result.finished else ""))
    return result


def _cmd_align(args) -> None:
    align_main(args.config, args.set, stop_after_steps=args.stop_after_steps)


def _cmd_plan(args) -> None:
    from .training.plan import plan_main

    plan_main(args.teacher, args.student, args.config, args.set, gpu=args.gpu_memory, host=args.host_memory,
              disk=args.disk)


def _cmd_report_pairing(args) -> None:
    from .lens.attribution import METHODS
    from .reports.pairing import pairing_report

    methods = args.methods or METHODS
    ranker = args.attribution_method or ("grad_x_act" if "grad_x_act" in methods else methods[0])
    exports = {to: _export_path(Path(args.out), to) for to in args.export or ()}  # checked before the run
    measures = {"measures": args.measures} if args.measures else {}
    result = pairing_report(args.teacher, args.student, task=args.task, out_path=args.out, strategy=args.strategy,
                            n_prompts=args.prompts, methods=methods, attribution_method=ranker, png=args.png,
                            patching=args.patching_maps or (), progress=not args.no_progress, vocab=args.vocab,
                            permutations=args.permutations, knn_k=args.knn_k, stitching=args.stitching,
                            sublayers=args.sublayers, heads=not args.no_heads, **measures)
    for line in result.comparison.verdict:
        print(f"- {line}".replace("**", ""))
    print(result.pairing.to_frame().to_string(index=False))
    print(f"\nreport: {result.path}")
    for to, out in exports.items():
        _export(result.pairing, to, out, args.teacher, args.student)


def _cmd_similarity(args) -> None:
    from .lens.measures import compare_measures, measure_null, reading, require_measures
    from .lens.measures.states_file import load_states

    names = require_measures(args.measures)  # refused before any file is read
    xs, ys = load_states(args.teacher_states), load_states(args.student_states)
    if args.out:
        from .core.checks import check_output_file

        check_output_file(args.out, "cells file", (".csv",))
    options = {"mutual_knn": {"k": args.knn_k, "n_tokens": args.knn_tokens},
               "cknna": {"k": args.knn_k, "n_tokens": args.knn_tokens}, "rsa": {"n_tokens": args.knn_tokens}}
    nulls = {name: measure_null(name, xs, ys, n_permutations=args.permutations, seed=args.seed,
                                **options.get(name, {})) for name in names}
    for name, null in nulls.items():
        print(f"{name} (rows: teacher layers, columns: student layers)\n{null.frame().round(4).to_string()}\n")
    labels = [list(range(len(xs))), list(range(len(ys)))]
    for line in compare_measures([reading(n) for n in nulls.values()], *labels).verdict:
        print(f"- {line}".replace("**", ""))
    if args.out:
        import pandas as pd

        cells = pd.concat([null.long() for null in nulls.values()], ignore_index=True)
        cells.to_csv(args.out, index=False)
        print(f"\ncells: {args.out}")


def _export_path(base: Path, to: str) -> Path:
    """Where a pairing export goes beside `base` (a report or pairing file), checked writable."""
    from .core.checks import check_output_file

    suffix = {"semalign": ".pairing.json", "distillkit": ".distillkit.yaml", "modelopt": ".modelopt.json"}[to]
    return check_output_file(base.parent / (base.name.split(".")[0] + suffix), f"{to} export")


def _export(pairing, to: str, out: Path, teacher=None, student=None) -> None:
    """Write `pairing` (a LayerPairing, or a run's pairs) as `to`, naming blocks by the models' families."""
    from .lens.pairing_export import CAVEAT, block_path, export_pairing, rounded_pairs
    from .models.load import inspect_source

    if to == "semalign":
        print(f"pairing: {pairing.save(out)}")
        return
    blocks = {role: block_path(inspect_source(source) or {}) for role, source in (("teacher", teacher),
                                                                                 ("student", student))}
    path = export_pairing(pairing, to, out, student_blocks=blocks["student"], teacher_blocks=blocks["teacher"])
    print(f"{to}: {path}")
    for line in rounded_pairs(pairing):
        print(f"  rounded: {line}")
    print(f"  note: {CAVEAT}")


def _cmd_export_pairing(args) -> None:
    from .lens.pairing_export import load_pairs

    pairs = load_pairs(args.source)
    source = Path(args.source)
    out = Path(args.out) if args.out else _export_path(source / "pairing.json" if source.is_dir() else source, args.to)
    _export(pairs, args.to, out, args.teacher, args.student)


def _batch_size(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _cmd_eval(args) -> None:
    from .evaluation.harness import harness_eval, require_lm_eval
    from .training.config import DTYPES

    require_lm_eval()
    if args.out:
        from .core.checks import check_output_file

        check_output_file(args.out, "results file", (".json",))
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = harness_eval(args.models, args.tasks, include_path=args.include_path,
                           builtin_tasks=not args.local_tasks_only, limit=limit, num_fewshot=args.num_fewshot,
                           batch_size=args.batch_size, document_start=args.document_start,
                           confirm_run_unsafe_code=args.confirm_run_unsafe_code, device=args.device,
                           dtype=DTYPES[args.dtype])
    print(results.to_text())
    if args.out:
        print(f"\nresults: {results.save(args.out)}")


class _Parser(argparse.ArgumentParser):
    """An `epilog` may be a function, called only when help is shown: the align config reference imports the
    trainer (torch), which `semalign --help` and the other commands should not wait for."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    def error(self, message: str):
        """Usage errors on one line, `semalign: error: ...` with exit code 2, like every other user error."""
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        self.exit(2, f"semalign: error: {message}; usage: {usage}\n")


def _align_config_help() -> str:
    from .core.config import config_help
    from .training.config import AlignConfig

    return config_help(AlignConfig)


ALIGN_CONFIG = "the align config file, TOML or JSON (see configs/); omitted: the defaults"


def _config_options(p: argparse.ArgumentParser, config: str, example: str, default: str | None = None) -> None:
    """--config FILE and repeatable --set KEY=VALUE overrides: how every command that reads a config takes it."""
    p.add_argument("--config", default=default, help=config)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="semalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="layers, widths, heads, vocabulary and norm of 1-2 models; pairability")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="zoo name, HF directory, .gguf file or Hub name")
    p.add_argument("--system", action="store_true",
                   help="also (or only) this machine: CPU, ISA, native bf16, threads, versions, cache, teacher")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded pair, one HTML report (the main job)")
    p.add_argument("--profile", default="demo", help="demo (<= 10 min on 2 cores), quick (<= 2 min) or tiny")
    p.add_argument("--quick", dest="profile", action="store_const", const="quick", help="same as --profile quick")
    p.add_argument("--out", default="runs/demo", help="output directory (report.html, results.csv, runs/)")
    p.add_argument("--student", help="another student (zoo name or HF directory), e.g. stdlib-student-8k, which "
                                     "has its own tokenizer (trained through the shared token strings)")
    p.add_argument("--vocab", choices=("auto", "shared", "intersection"),
                   help="auto (default): intersection exactly when the student's vocabulary differs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("align", help="run a SemAlign alignment from a TOML/JSON config (see configs/)",
                       epilog=_align_config_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_options(p, f"{ALIGN_CONFIG} (teacher smollm2-135m, student stdlib-student)", "schedule.stage_steps=20")
    p.add_argument("--stop-after-steps", type=int, default=None, help="stop (with a checkpoint) after N steps")
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser("plan", help="GPU memory, host RAM, disk and steps an align run needs, from the configs "
                                    "alone; refuses a run that will not fit")
    p.add_argument("teacher", metavar="TEACHER", help="zoo name, HF directory, config.json, .gguf or Hub name")
    p.add_argument("student", metavar="STUDENT")
    _config_options(p, ALIGN_CONFIG, "schedule.adapter=lora")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="GPU budget (default: the CUDA device's free memory)")
    p.add_argument("--host-memory", type=float, metavar="GIB", help="host RAM budget (default: available RAM)")
    p.add_argument("--disk", type=float, metavar="GIB", help="disk budget (default: free at the cache or run dir)")
    p.set_defaults(func=_cmd_plan)

    report = sub.add_parser("report", help="HTML reports").add_subparsers(dest="report_command", required=True)
    p = report.add_parser("pairing", help="layer attribution, CKA and pairing of TEACHER and STUDENT, one HTML file")
    p.add_argument("teacher", metavar="TEACHER")
    p.add_argument("student", metavar="STUDENT")
    p.add_argument("--task", default="facts", help="facts, humaneval, or a .json/.jsonl task file")
    p.add_argument("--strategy", default="attribution",
                   help="proportional, attribution, cka, or stitch (needs --stitching)")
    p.add_argument("--prompts", type=int, default=24, help="prompt pairs for the attribution rankers")
    p.add_argument("--methods", nargs="+", metavar="RANKER", default=None,
                   help="attribution rankers to run (default: all nine; `seeking` costs a backward per prompt)")
    p.add_argument("--attribution-method", default=None, metavar="RANKER",
                   help="the ranker the attribution strategy pairs by (default grad_x_act, else the first of --methods)")
    p.add_argument("--patching-maps", nargs="+", metavar="MAP", choices=("position", "head"), default=None,
                   help="also the teacher's position- and/or head-resolved patching maps (layers x positions forwards)")
    p.add_argument("--measures", nargs="+", metavar="MEASURE", default=None,
                   help="similarity measures side by side, each against its null (default: cka cka_debiased "
                        "procrustes mutual_knn; also procrustes_cv, cknna, rsa); never CKA alone")
    p.add_argument("--permutations", type=int, default=10, help="token shuffles of each measure's null")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours of mutual kNN and CKNNA (fixed n = 1024 tokens)")
    p.add_argument("--stitching", action="store_true",
                   help="also model stitching (one student forward per teacher x student cell) and the stitch strategy")
    p.add_argument("--sublayers", action="store_true",
                   help="also the measures' maps of each block's attention write and MLP write (about 2x their cost)")
    p.add_argument("--no-heads", action="store_true", help="skip the head-by-head attention-pattern similarity")
    p.add_argument("--out", default="pairing_report.html")
    p.add_argument("--png", action="store_true", help="also export PNGs (needs kaleido and a Chromium)")
    p.add_argument("--vocab", choices=("shared", "intersection"), default="shared",
                   help="intersection: a teacher and a student with different tokenizers (aligned positions)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--export", nargs="+", metavar="FORMAT", choices=("semalign", "distillkit", "modelopt"),
                   help="also write the pairing beside the report: semalign (LayerPairing JSON), distillkit "
                        "(layer_mapping YAML), modelopt (criterion layer names); those tools train with their own losses")
    p.set_defaults(func=_cmd_report_pairing)

    p = sub.add_parser("similarity", help="similarity measures between two saved stacks of layer states, side by "
                                          "side, each against its shuffled-token null")
    p.add_argument("teacher_states", metavar="TEACHER_STATES",
                   help=".safetensors, .npy or .pt: one [layer, token, d] tensor or one [token, d] tensor per layer")
    p.add_argument("student_states", metavar="STUDENT_STATES", help="the same tokens, in the same order")
    p.add_argument("--measures", nargs="+", metavar="MEASURE", default=["cka_debiased", "procrustes", "mutual_knn"],
                   help="cka, cka_debiased, procrustes, procrustes_cv, mutual_knn, cknna, rsa")
    p.add_argument("--permutations", type=int, default=10, help="token shuffles of each measure's null")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours of mutual kNN and CKNNA")
    p.add_argument("--knn-tokens", type=int, default=1024, help="the fixed token sample of mutual kNN, CKNNA, RSA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="CSV", help="also write every cell: measure, layers, value, null mean, p-value")
    p.set_defaults(func=_cmd_similarity)

    p = sub.add_parser("export-pairing", help="a saved pairing (or an align run's) as DistillKit's layer_mapping or "
                                              "ModelOpt's criterion layers; those tools train with their own losses")
    p.add_argument("source", metavar="PAIRING", help="a LayerPairing JSON file, or a semalign align run directory")
    p.add_argument("--to", required=True, choices=("distillkit", "modelopt"))
    p.add_argument("--out", help="output file (default: beside PAIRING, <name>.distillkit.yaml / .modelopt.json)")
    p.add_argument("--teacher", metavar="SOURCE", help="the teacher, to name its blocks (default: model.layers)")
    p.add_argument("--student", metavar="SOURCE", help="the student, to name its blocks (default: model.layers)")
    p.set_defaults(func=_cmd_export_pairing)

    p = sub.add_parser("eval", help="lm-evaluation-harness tasks on 1-2 models side by side (needs the eval extra)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="zoo name, HF directory, .gguf, Hub name, or a semalign align run (its trained student); "
                        "give the teacher and the student for a side-by-side table")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                   help="lm-eval task or group names (space- or comma-separated), e.g. mmlu gsm8k")
    p.add_argument("--include-path", metavar="DIR", help="a folder of your own lm-eval task YAML files")
    p.add_argument("--local-tasks-only", action="store_true",
                   help="index only --include-path, not the harness's ~15k built-in tasks (~20 s faster)")
    p.add_argument("--limit", type=float, help="items per task (a fraction when < 1), for a quick look")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    p.add_argument("--batch-size", default=8, type=_batch_size, help="requests per forward, or auto")
    p.add_argument("--document-start", choices=("package", "harness"), default="package",
                   help="package: every request starts with the model's document start, as all of this package's "
                        "scores do; harness: the harness's own convention (as `lm_eval --model hf` runs)")
    p.add_argument("--device", help="where the weights go (default: CUDA where available, else the CPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that execute generated code (humaneval, mbpp; also set HF_ALLOW_CODE_EVAL=1)")
    p.add_argument("--out", metavar="FILE.json", help="also write the results (the harness's, per model) as JSON")
    p.set_defaults(func=_cmd_eval)

    zoo = sub.add_parser("zoo", help="the built-in model zoo").add_subparsers(dest="zoo_command", required=True)
    zoo.add_parser("list", help="list zoo names").set_defaults(func=_cmd_zoo_list)
    p = zoo.add_parser("pretrain-student", help="pretrain the embedded student (resumes if RUN_DIR has a checkpoint)")
    _config_options(p, "the pretraining config file (default: the embedded student's)", "total_tokens=1000000",
                    default=str(Path(__file__).parent / "models" / "zoo" / "configs" / "stdlib_student.json"))
    p.add_argument("--run-dir", default="runs/stdlib-student")
    p.set_defaults(func=_cmd_pretrain)
    p = zoo.add_parser("train-tokenizer", help="learn a byte-level BPE on the student corpus's training files")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", default="runs/stdlib-bpe-8k", help="tokenizer directory (the 8k config reads this one)")
    p.add_argument("--corpus", default=None, help="directory of .py files (default: this Python's standard library)")
    p.set_defaults(func=_cmd_train_tokenizer)
    p = zoo.add_parser("export-student", help="write a pretraining run's latest checkpoint as an HF directory")
    p.add_argument("--run-dir", default="runs/stdlib-student")
    p.add_argument("--out", default=str(Path(__file__).parent / "models" / "zoo" / "stdlib_student"))
    p.set_defaults(func=_cmd_export)
    p = zoo.add_parser("write-card", help="measure an exported student and write its MODEL_CARD.md, metrics.json")
    p.add_argument("--run-dir", default="runs/stdlib-student-8k")
    p.add_argument("--out", default=str(Path(__file__).parent / "models" / "zoo" / "stdlib_student_8k"))
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per evaluation set")
    p.set_defaults(func=_cmd_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not _cmd_zoo_list:  # `zoo list` stays free of heavy imports
        from .core.progress import quiet_libraries

        quiet_libraries()
    return run_reporting_errors(args.func, args)
