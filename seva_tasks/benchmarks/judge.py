"""The LLM judge: MM-Vet's grader, LLaVA-Bench's reviewer and MMBench's choice extractor, asked
through any OpenAI-compatible chat-completions endpoint (a `vllm serve` on 127.0.0.1, or a hosted
API). No GPT-4 is assumed anywhere: the judge is whatever `judge.model` names, and its identity goes
into every result, since scores from different judges are not comparable.

    seva score mmvet --data playground/data/eval/mm-vet --answers answers.jsonl \
        judge.base_url=http://127.0.0.1:8000/v1 judge.model=judge

Calls run in a thread pool, retry timeouts, connection errors, 429s and 5xx with exponential
backoff, and give up after `retries`. A call that still fails, or whose reply cannot be parsed into
a score, is a *judge failure*: counted and reported, left out of the means, never scored 0 (MM-Vet's
own grader writes 0.0 after five unparsable replies).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from seva_tasks.base import StageConfig
from seva_tasks.errors import ConfigError, StageError

# ---------------------------------------------------------------------------- prompts (data, verbatim)

# yuweihao/MM-Vet @acde843 mm-vet_evaluator.py `prompt` (gpt-4-0613, temperature 0, max_tokens 3).
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
# mm-vet_evaluator.py appends this when a reply is not a number. It sends each re-ask at the current
# temperature and only then raises it by 0.5: the first re-ask is still at 0, then 0.5, 1.0, 1.5.
MMVET_REASK = "\nPredict the correctness of the answer (digit): "
MMVET_TRIES = 5  # replies it parses: the ask and 4 re-asks (its 5th re-ask is sent but never read; we skip
# it), then it writes 0.0; we record a judge failure instead

# haotian-liu/LLaVA @c121f04 llava/eval/eval_gpt_review_bench.py (gpt-4-0314, temperature 0.2,
# max_tokens 1024) and llava/eval/table/rule.json (the three llava_bench_* rules are identical).
LLAVA_BENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
_LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \nPlease rate the helpfulness, "
    "relevance, accuracy, level of details of their responses. Each assistant receives an overall score on a scale "
    "of 1 to 10, where a higher score indicates better overall performance.\nPlease first output a single line "
    "containing only two values indicating the scores for Assistant 1 and 2, respectively. The two scores are "
    "separated by a space.\nIn the subsequent line, please provide a comprehensive explanation of your evaluation, "
    "avoiding any potential bias and ensuring that the order in which the responses were presented does not affect "
    "your judgment."
)
LLAVA_BENCH_RULES = {f"llava_bench_{c}": {"role": "Assistant", "prompt": _LLAVA_BENCH_RULE}
                     for c in ("conv", "detail", "complex")}

# open-compass/VLMEvalKit vlmeval/dataset/utils/multiple_choice.py build_prompt / build_option_str.
MMBENCH_EXTRACT = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)


class JudgeConfig(StageConfig):
    """Where the judge is served and how hard to try.

    Args:
        base_url: OpenAI-compatible API root; requests go to `<base_url>/chat/completions`.
        model: the served model name. model_version: free text recorded with results.
        api_key_env: name of the environment variable holding the key ("" = send none).
        runs: repeated judgings per item (mean ± std). concurrency: parallel requests.
        timeout_s, retries, backoff_s: per-request limit, retries after transient errors, first delay.
        seed: sent as `seed` (run r sends seed + r); None leaves it out.
        review_max_tokens: max_tokens of a LLaVA-Bench review.
    """

    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible API root (…/v1).")
    model: str = Field("judge", description="Model name as the server serves it (vLLM: --served-model-name).")
    model_version: str = Field("", description="Recorded with results: checkpoint revision, 'gpt-4-0613', ...")
    api_key_env: str = Field("", description="Env var that holds the API key; empty sends no Authorization header.")
    runs: int = Field(3, ge=1, description="Judgings per item; LLaVA ran 3 GPT-4 reviews, MM-Vet's paper 5.")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    retries: int = Field(3, ge=0, description="Retries after a timeout, connection error, HTTP 429 or 5xx.")
    backoff_s: float = Field(1.0, ge=0, description="Delay before the first retry; doubles on each retry.")
    seed: int | None = Field(0, description="Request seed (run r uses seed + r), so sampled reviews repeat.")
    review_max_tokens: int = Field(1024, ge=1, description="LLaVA-Bench review length (official 1024); only its "
                                   "first line is scored, so a small value speeds up weak local judges.")


class JudgeCallFailed(Exception):
    """A judge request that failed after all retries (or with a non-retryable status)."""


class Judge:
    """A thread-safe client for one judge endpoint; records which model actually answered."""

    def __init__(self, cfg: JudgeConfig, *, client=None):
        import httpx

        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"judge.api_key_env names {cfg.api_key_env!r}, which is not set. Export it, or "
                                  "set judge.api_key_env='' for a server without a key.")
            headers["Authorization"] = f"Bearer {key}"
        self.cfg = cfg
        self._client = client or httpx.Client(base_url=cfg.base_url.rstrip("/") + "/", headers=headers,
                                              timeout=cfg.timeout_s)
        self._served: Counter = Counter()
        self._lock = threading.Lock()
        self.calls = 0

    def chat(self, messages: list[dict], *, temperature: float, max_tokens: int, run: int = 0) -> str:
        """One chat completion's text; raises JudgeCallFailed once retries are used up."""
        import httpx

        payload: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "temperature": temperature,
                                   "max_tokens": max_tokens}
        if self.cfg.seed is not None:
            payload["seed"] = self.cfg.seed + run
        error = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self.calls += 1
            try:
                r = self._client.post("chat/completions", json=payload)
            except httpx.TransportError as e:  # timeouts, refused connections, resets
                error = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                error = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:  # 4xx: the request itself is wrong, retrying won't help
                raise JudgeCallFailed(f"HTTP {r.status_code}: {r.text[:200]}")
            try:
                body = r.json()
                content = body["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                error = f"malformed response: {r.text[:200]!r}"
                continue
            with self._lock:
                self._served[body.get("model", "?")] += 1
            return content
        raise JudgeCallFailed(f"{self.cfg.base_url}: {error} (after {self.cfg.retries + 1} attempts)")

    def map(self, fn: Callable, items: Iterable) -> list:
        """fn over items with `concurrency` threads, results in order."""
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(fn, items))

    def identity(self) -> dict:
        """Who judged: configured name/version, endpoint, and the model names the server reported."""
        return {"model": self.cfg.model, "model_version": self.cfg.model_version, "base_url": self.cfg.base_url,
                "served_model": sorted(self._served), "runs": self.cfg.runs, "calls": self.calls}

    def close(self) -> None:
        self._client.close()


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and population std (numpy's default, as mm-vet_evaluator.py uses) of the defined values;
    (None, None) when nothing could be judged, so an all-failure run never reads as a score of 0."""
    vals = [v for v in values if v is not None]
    return (statistics.fmean(vals), statistics.pstdev(vals)) if vals else (None, None)


# ---------------------------------------------------------------------------- MM-Vet

def mmvet_query(question: str, truth: str, prediction: str) -> str:
    """mm-vet_evaluator.py: the few-shot table plus this item's row, correctness left blank."""
    truth = truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + " | ".join([question, truth, prediction, ""])


def parse_mmvet(content: str) -> float | None:
    """mm-vet_evaluator.py: the first space-separated token as a float in [0, 1]; None otherwise."""
    try:
        score = float(content.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def mmvet_grade(judge: Judge, question: str, truth: str, prediction: str, run: int) -> float | None:
    """One MM-Vet grading: ask at temperature 0, re-ask with the digit hint at 0, 0.5, 1.0, 1.5; None = judge failure."""
    query = mmvet_query(question, truth, prediction)
    for attempt in range(MMVET_TRIES):
        try:
            content = judge.chat([{"role": "user", "content": query}], temperature=0.5 * max(attempt - 1, 0),
                                 max_tokens=3, run=run)
        except JudgeCallFailed:
            return None
        score = parse_mmvet(content)
        if score is not None:
            return score
        query = mmvet_query(question, truth, prediction) + MMVET_REASK
    return None


def mmvet_summary(capabilities: list[list[str]], grades: list[list[float | None]]) -> dict[str, float | None]:
    """MM-Vet totals (percent) per run, then mean ± std over runs; per capability the mean over runs.

    `grades[i][r]` is item i's score in run r (None = judge failure, left out of that run's means;
    a metric nothing could be judged for is None).
    """
    runs = len(grades[0]) if grades else 0
    totals, caps = [], {c: [] for c in sorted({c for cs in capabilities for c in cs})}
    for r in range(runs):
        judged = [(cs, g[r]) for cs, g in zip(capabilities, grades) if g[r] is not None]
        totals.append(100 * sum(s for _, s in judged) / len(judged) if judged else None)
        for c in caps:
            mine = [s for cs, s in judged if c in cs]
            caps[c].append(100 * sum(mine) / len(mine) if mine else None)
    mean, std = _mean_std(totals)
    out = {"score": mean, "score_std": std, "runs": runs}
    out |= {f"cap/{c}": _mean_std(v)[0] for c, v in caps.items()}
    out["judge_failures"] = sum(g is None for gs in grades for g in gs)
    return out


# ---------------------------------------------------------------------------- LLaVA-Bench

def llava_bench_content(caption: str, question: str, reference: str, answer: str, category: str) -> str:
    """eval_gpt_review_bench.py's user message: context, question, both answers, the category's rule."""
    rule = LLAVA_BENCH_RULES[f"llava_bench_{category}"]
    role, prompt = rule["role"], rule["prompt"]
    return (f"[Context]\n{caption}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
            f"[System]\n{prompt}\n\n")


def parse_pair(review: str) -> tuple[float, float] | None:
    """eval_gpt_review_bench.py parse_score: first line, ',' -> ' ', exactly two floats (None, not [-1, -1])."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def llava_bench_review(judge: Judge, content: str, run: int) -> tuple[float, float] | None:
    """One review: (reference score, model score), or None for a judge failure."""
    messages = [{"role": "system", "content": LLAVA_BENCH_SYSTEM}, {"role": "user", "content": content}]
    try:
        return parse_pair(judge.chat(messages, temperature=0.2, max_tokens=judge.cfg.review_max_tokens, run=run))
    except JudgeCallFailed:
        return None


def llava_bench_summary(categories: list[str], reviews: list[list[tuple[float, float] | None]]) -> dict:
    """summarize_gpt_review.py per run: relative = mean(model)/mean(reference)*100 per category and all;
    then mean ± std over runs. Also the absolute means on LLaVA's x10 scale. None: nothing judged."""
    runs = len(reviews[0]) if reviews else 0
    per: dict[str, list[float]] = {}
    ref10, model10 = [], []
    for r in range(runs):
        for cat in ["all", *sorted(set(categories))]:
            pairs = [rv[r] for c, rv in zip(categories, reviews) if rv[r] is not None and cat in ("all", c)]
            ref = statistics.fmean(p[0] for p in pairs) if pairs else None
            mod = statistics.fmean(p[1] for p in pairs) if pairs else None
            per.setdefault(cat, []).append(100 * mod / ref if ref else None)
            if cat == "all":
                ref10.append(None if ref is None else 10 * ref)
                model10.append(None if mod is None else 10 * mod)
    mean, std = _mean_std(per.get("all", []))
    out = {"relative": mean, "relative_std": std, "runs": runs,
           "reference_score": _mean_std(ref10)[0], "model_score": _mean_std(model10)[0]}
    out |= {f"{c}/relative": _mean_std(v)[0] for c, v in per.items() if c != "all"}
    out["judge_failures"] = sum(rv is None for rvs in reviews for rv in rvs)
    return out


# ---------------------------------------------------------------------------- MMBench choice extraction

def mmbench_extract_prompt(question: str, choices: dict[str, str], prediction: str) -> str:
    """VLMEvalKit's matching prompt for an answer no rule could map to an option."""
    options = "There are several options: \n" + "".join(f"{k}. {v}\n" for k, v in choices.items())
    return MMBENCH_EXTRACT.format(question, options, prediction)


# ---------------------------------------------------------------------------- a local vLLM judge

@contextlib.contextmanager
def local_vllm(model: Path, python: Path, log_path: Path, *, served_name: str = "judge", max_model_len: int = 2048,
               kv_cache_memory_bytes: int = 1 << 28, startup_timeout_s: float = 600) -> Iterator[str]:
    """`vllm serve` of a local model on 127.0.0.1 for the length of a with-block; yields the base URL.

    Runs under the engine env's interpreter with the generation worker's environment (offline hub,
    in-process engine on CPU, torchvision shim). The server and its children are stopped on exit.
    """
    import httpx

    from seva_tasks.engines import EngineConfig
    from seva_tasks.engines.vllm_worker import worker_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", served_name, "--max-model-len", str(max_model_len),
           "--kv-cache-memory-bytes", str(kv_cache_memory_bytes), "--seed", "0", "--runner", "generate"]
    config = json.loads((Path(model) / "config.json").read_text())
    if "architectures" not in config and config.get("model_type") == "llava":
        # without it vLLM guesses `LlavaModel` and serves embeddings only (no chat route)
        cmd += ["--hf-overrides", json.dumps({"architectures": ["LlavaForConditionalGeneration"]})]
    env = worker_env(dict(os.environ), EngineConfig(kind="vllm"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise StageError(f"The judge server exited with code {proc.returncode} while starting; see {log_path}.")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise StageError(f"The judge server did not answer within {startup_timeout_s:.0f} s; see {log_path}.")
            time.sleep(2)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
