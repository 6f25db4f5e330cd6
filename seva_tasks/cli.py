"""`seva` command line.

    seva run [PRESET] [--until STAGE] [--refresh STAGE]... [key=value ...]
    seva status [PRESET] [key=value ...] [-q]
    seva doctor [PRESET] [key=value ...] [--no-smoke] [--json]   # run first on a new machine
    seva serve [--port 4200]
    seva score BENCHMARK --data DIR --answers FILE [judge.key=value ...]
    seva inspect pairs [PRESET] [key=value ...]
    seva inspect train-example [PRESET] [key=value ...] [--index N]
    seva experiment [SPEC]            # configs/experiments/toy-seva.yaml by default
    seva stop
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seva_tasks.errors import SevaError


def _split(args: list[str]) -> tuple[str, list[str]]:
    """Positional args: at most one preset name/path, the rest `key=value` overrides."""
    presets = [a for a in args if "=" not in a]
    if len(presets) > 1:
        raise SevaError(f"Expected at most one preset, got {presets}. Overrides look like key=value.")
    return (presets[0] if presets else "toy"), [a for a in args if "=" in a]


def _use_prefect() -> None:
    """Before Prefect is imported: project-local state, and a `seva serve` server if one answers,
    else a temporary one (seva_tasks/serve.py decides, for every entry point alike)."""
    from seva_tasks import serve

    url = serve.use_prefect()
    if url:  # (a temporary server announces itself)
        print(f"Prefect: runs go to the server at {url}", file=sys.stderr)


def cmd_run(ns: argparse.Namespace) -> int:
    _use_prefect()
    from flows.seva import seva
    from seva_tasks import serve
    from seva_tasks.config import parse_overrides

    preset, overrides = _split(ns.args)
    with serve.prefect_errors():
        refs = seva(config=preset, overrides=parse_overrides(overrides), until=ns.until, refresh=ns.refresh)
    print(json.dumps(refs, indent=2))
    return 0


def cmd_experiment(ns: argparse.Namespace) -> int:
    _use_prefect()
    from flows.experiment import run_experiment
    from seva_tasks import serve

    with serve.prefect_errors():
        print(run_experiment(spec=ns.spec))
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from seva_tasks import pipeline
    from seva_tasks.config import load_config

    preset, overrides = _split(ns.args)
    rows = pipeline.status(load_config(preset, overrides), ns.until)
    if not ns.quiet:
        for row in rows:
            key = row["key"] or "-"
            print(f"{row['stage']:<13} {row['state']:<8} {key:<22} {row['why']}")
        if all(r["state"] == "fresh" for r in rows):
            print("Data and pipelines are up to date.")
        else:
            print("Use `seva run` to bring the stale and missing stages up to date.")
    return 0 if all(r["state"] == "fresh" for r in rows) else 1


def cmd_doctor(ns: argparse.Namespace) -> int:
    from seva_tasks import doctor

    preset, overrides = _split(ns.args)
    checks = doctor.run(preset, overrides, with_smoke=not ns.no_smoke)
    print(doctor.as_json(checks) if ns.json else doctor.report(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from seva_tasks import serve

    port = serve.default_port() if ns.port is None else ns.port
    pids = serve.start(port)
    print(f"Prefect UI: http://127.0.0.1:{port}   (server + worker pids: {pids})")
    found = "" if port == serve.default_port() else f" with SEVA_PREFECT_PORT={port} set"
    print(f"`seva run` and `seva experiment` use this server{found}. Deployments:")
    print(f"     PREFECT_API_URL={serve.api_url(port)} .venv/bin/prefect deployment run seva/full --watch")
    if ns.background:
        return 0
    try:
        while True:
            import time

            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.stop()
    return 0


def cmd_score(ns: argparse.Namespace) -> int:
    from seva_tasks.benchmarks import score_file
    from seva_tasks.config import parse_overrides
    from seva_tasks.benchmarks.judge import JudgeConfig

    judge = parse_overrides(ns.judge)
    unknown = [k for k in judge if not k.startswith("judge.")]
    if unknown:
        raise SevaError(f"Judge settings look like judge.key=value (e.g. judge.base_url=...); got {unknown}.")
    cfg = JudgeConfig(**{k.removeprefix("judge."): v for k, v in judge.items()}) if judge else None
    print(json.dumps(score_file(ns.benchmark, ns.data, ns.answers, cfg), indent=1))
    return 0


def cmd_inspect(ns: argparse.Namespace) -> int:
    from seva_tasks import pipeline
    from seva_tasks.artifacts import PAIRS
    from seva_tasks.config import load_config

    preset, overrides = _split(ns.args)
    cfg = load_config(preset, overrides)
    rows = {r["stage"]: r for r in pipeline.status(cfg, "filter")}
    if rows["filter"]["state"] != "fresh":
        raise SevaError("No pairs for this config yet (filter is not fresh). Run `seva run --until filter` first.")
    store = pipeline.store_for(cfg)
    pairs_dir = store.dir("filter", rows["filter"]["key"])
    if ns.what == "pairs":
        from seva_tasks.stages.filter import inspect_pairs

        print(inspect_pairs(pairs_dir))
        return 0
    from seva_tasks.stages.train import show_example

    made = {s: {"path": str(store.dir(s, rows[s]["key"]))} for s in pipeline.MAKERS if s in rows}
    print(show_example(cfg.train, pipeline.model_input(cfg, "train", made), pairs_dir / PAIRS, ns.index))
    return 0


def cmd_stop(ns: argparse.Namespace) -> int:
    from seva_tasks import serve

    serve.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seva", description="SeVa as cached Prefect stages.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the seva flow (sample → … ) for a preset + overrides")
    run.add_argument("args", nargs="*", help="[PRESET] key=value ...")
    run.add_argument("--until", help="last stage to run")
    run.add_argument("--refresh", action="append", default=[], help="force this stage (repeatable)")
    run.set_defaults(fn=cmd_run)

    ex = sub.add_parser("experiment", help="base vs aligned over seeds and settings -> table + plots (cached runs)")
    ex.add_argument("spec", nargs="?", default="configs/experiments/toy-seva.yaml", help="experiment YAML")
    ex.set_defaults(fn=cmd_experiment)

    st = sub.add_parser("status", help="show each stage as fresh / stale / missing (runs nothing)")
    st.add_argument("args", nargs="*", help="[PRESET] key=value ...")
    st.add_argument("--until", help="last stage to check")
    st.add_argument("-q", "--quiet", action="store_true", help="no output; exit 0 if up to date, 1 if not")
    st.set_defaults(fn=cmd_status)

    dr = sub.add_parser("doctor", help="check the machine, model, data and judge for a preset, then a 4-row smoke run")
    dr.add_argument("args", nargs="*", help="[PRESET] key=value ...")
    dr.add_argument("--no-smoke", action="store_true", help="only the checks, no smoke run")
    dr.add_argument("--json", action="store_true", help="print the results as JSON")
    dr.set_defaults(fn=cmd_doctor)

    sv = sub.add_parser("serve", help="start a local Prefect server + worker serving prefect.yaml's deployments")
    sv.add_argument("--port", type=int, default=None, help="default: $SEVA_PREFECT_PORT, else 4200")
    sv.add_argument("--background", action="store_true", help="return once ready (stop with `seva stop`)")
    sv.set_defaults(fn=cmd_serve)

    sc = sub.add_parser("score", help="score a LLaVA answer JSONL against a benchmark folder; prints JSON")
    sc.add_argument("benchmark", help="pope mme gqa textvqa sqa seed mmbench vizwiz mmvet llava_bench")
    sc.add_argument("--data", required=True, type=Path, help="the benchmark's folder (LLaVA's playground/data/eval layout)")
    sc.add_argument("--answers", required=True, type=Path, help="answer JSONL: question_id, text[, prompt]")
    sc.add_argument("judge", nargs="*", help="judge.key=value (MM-Vet, LLaVA-Bench, MMBench fallback)")
    sc.set_defaults(overrides_dest="judge")
    sc.set_defaults(fn=cmd_score)

    ins = sub.add_parser("inspect", help="preview an artifact: `pairs` (polars preview + filter counts), or "
                         "`train-example` (one pair's tokens as DPO trains on them, the loss marked)")
    ins.add_argument("what", choices=["pairs", "train-example"])
    ins.add_argument("args", nargs="*", help="[PRESET] key=value ...")
    ins.add_argument("--index", type=int, default=0, help="train-example: which pair (default: the first)")
    ins.set_defaults(fn=cmd_inspect)

    sp = sub.add_parser("stop", help="stop what `seva serve --background` started")
    sp.set_defaults(fn=cmd_stop)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `key=value` overrides may also follow an option (`seva run toy --until x a.b=1`,
    `seva score pope --data D --answers A judge.runs=3`), which argparse alone would reject: it ends the
    positionals at the option."""
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    dest = getattr(ns, "overrides_dest", "args")  # the subcommand's trailing key=value positional
    if rest and isinstance(getattr(ns, dest, None), list) and not any(r.startswith("-") for r in rest):
        getattr(ns, dest).extend(rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    try:
        return ns.fn(ns)
    except SevaError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # pydantic's ValidationError (e.g. judge settings) is a ValueError
        print(f"ERROR: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
