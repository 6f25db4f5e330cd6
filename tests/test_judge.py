"""The judge client and protocols against a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seva_tasks.benchmarks import judge as J
from seva_tasks.benchmarks import Answer, mmbench, score_answers, score_file
from seva_tasks.errors import ConfigError


class FakeJudge:
    """A chat-completions server whose reply is `script(request_body, call_number)`.

    The script returns a reply string, an int (HTTP status), ("sleep", seconds, reply) or ("raw", bytes).
    """

    def __init__(self, script: Callable[[dict, int], object]):
        self.script, self.requests, self.lock = script, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    n = len(outer.requests)
                reply = outer.script(body, n)
                if isinstance(reply, tuple) and reply[0] == "sleep":
                    time.sleep(reply[1])
                    reply = reply[2]
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    return
                data = reply[1] if isinstance(reply, tuple) else json.dumps(
                    {"model": "fake-judge-v1", "choices": [{"message": {"role": "assistant", "content": reply}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(script):
        servers.append(FakeJudge(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def make_judge(url: str, **kw) -> J.Judge:
    cfg = J.JudgeConfig(base_url=url, model="fake", retries=2, backoff_s=0.0, timeout_s=5, concurrency=2, **kw)
    return J.Judge(cfg)


# ---------------------------------------------------------------------------- transport

def test_500s_then_success_is_retried(serve):
    srv = serve(lambda body, n: 500 if n < 3 else "0.7")
    judge = make_judge(srv.url)
    assert J.mmvet_grade(judge, "Q?", "A", "A", run=0) == 0.7
    assert len(srv.requests) == 3 and srv.requests[0]["path"] == "/v1/chat/completions"
    assert judge.identity()["served_model"] == ["fake-judge-v1"]


def test_timeout_after_retries_is_a_judge_failure_not_zero(serve):
    srv = serve(lambda body, n: ("sleep", 1.0, "1.0"))
    judge = J.Judge(J.JudgeConfig(base_url=srv.url, retries=1, backoff_s=0.0, timeout_s=0.2))
    assert J.mmvet_grade(judge, "Q?", "A", "A", run=0) is None
    assert len(srv.requests) == 2  # first try + one retry


def test_client_errors_are_not_retried(serve):
    srv = serve(lambda body, n: 400)
    with pytest.raises(J.JudgeCallFailed, match="HTTP 400"):
        make_judge(srv.url).chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)
    assert len(srv.requests) == 1


def test_malformed_body_is_retried_then_fails(serve):
    srv = serve(lambda body, n: ("raw", b"<html>oops</html>"))
    with pytest.raises(J.JudgeCallFailed, match="malformed response"):
        make_judge(srv.url).chat([{"role": "user", "content": "x"}], temperature=0, max_tokens=3)
    assert len(srv.requests) == 3


def test_api_key_comes_from_the_named_env_var(serve, monkeypatch):
    srv = serve(lambda body, n: "1.0")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    make_judge(srv.url, api_key_env="MY_JUDGE_KEY").chat([{"role": "user", "content": "x"}], temperature=0,
                                                         max_tokens=3, run=2)
    assert srv.requests[0]["auth"] == "Bearer sk-test"
    assert srv.requests[0]["body"]["seed"] == 2 and srv.requests[0]["body"]["model"] == "fake"
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(ConfigError, match="MY_JUDGE_KEY"):
        make_judge(srv.url, api_key_env="MY_JUDGE_KEY")


# ---------------------------------------------------------------------------- MM-Vet

def test_mmvet_query_is_the_official_table_row():
    q = J.mmvet_query("What is x?", "-1<AND>-5", "x = 3")
    assert q.startswith("Compare the ground truth and prediction from AI models")
    assert q.endswith("| 1.0\n\nWhat is x? | -1 <AND> -5 | x = 3 | ")


@pytest.mark.parametrize("content, expected", [("0.5", 0.5), ("1.0 because", 1.0), ("0", 0.0), ("1.5", None),
                                                ("great", None), ("", None), (" 0.3", None)])
def test_mmvet_score_parsing(content, expected):
    assert J.parse_mmvet(content) == expected


def test_mmvet_garbage_scores_are_reasked_then_counted_as_failures(serve):
    srv = serve(lambda body, n: "great answer")
    judge = make_judge(srv.url)
    assert J.mmvet_grade(judge, "Q?", "A", "B", run=0) is None
    temps = [r["body"]["temperature"] for r in srv.requests]
    assert temps == [0.0, 0.0, 0.5, 1.0, 1.5]  # mm-vet_evaluator.py: a re-ask is sent, then +0.5; 5 replies read
    assert srv.requests[1]["body"]["messages"][0]["content"].endswith(J.MMVET_REASK)
    assert all(r["body"]["max_tokens"] == 3 for r in srv.requests)


def test_mmvet_summary_by_hand():
    caps = [["rec"], ["rec", "ocr"], ["ocr"]]
    grades = [[1.0, 0.0], [0.5, 0.5], [None, 1.0]]  # item x run; None = judge failure
    m = J.mmvet_summary(caps, grades)
    # run 0: items 0,1 judged -> total 75, rec 75, ocr 50; run 1: total 50, rec 25, ocr 75
    assert m["score"] == pytest.approx(62.5) and m["score_std"] == pytest.approx(12.5)
    assert m["cap/rec"] == pytest.approx(50.0) and m["cap/ocr"] == pytest.approx(62.5)
    assert (m["judge_failures"], m["runs"]) == (1, 2)


def _mmvet_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mm-vet"
    d.mkdir()
    items = {f"v1_{i}": {"imagename": f"v1_{i}.png", "question": f"Q{i}?", "answer": a, "capability": c}
             for i, (a, c) in enumerate([("cat", ["rec"]), ("7", ["ocr", "math"]), ("dog", ["rec"])])}
    (d / "mm-vet.json").write_text(json.dumps(items))
    return d


def test_mmvet_score_file_with_failures_and_missing(serve, tmp_path):
    def grade(body, n):
        lines = body["messages"][0]["content"].split("\n")
        row = next(x for x in lines if x[:2] in ("Q0", "Q1", "Q2"))  # this item's row: "Qi? | truth | prediction | "
        q, truth, pred, _ = row.split(" | ")
        return "garbage" if q == "Q1?" else ("1.0" if truth == pred else "0.0")

    srv = serve(grade)
    f = tmp_path / "a.jsonl"
    f.write_text('{"question_id": 0, "text": "cat"}\n{"question_id": 1, "text": "7"}\n')
    cfg = J.JudgeConfig(base_url=srv.url, model="fake", model_version="rev-1", runs=2, retries=0, backoff_s=0)
    out = score_file("mmvet", _mmvet_dir(tmp_path), f, judge=cfg)
    m = out["metrics"]
    # item 0 right (1.0), item 1 judge failure in both runs (5 re-asks each), item 2 missing (0, no call)
    assert m["score"] == pytest.approx(50.0) and m["score_std"] == 0.0
    assert m["cap/rec"] == pytest.approx(50.0) and m["cap/ocr"] is None  # only item 1 has ocr: never judged
    assert (m["judge_failures"], m["missing"], m["runs"]) == (2, 1, 2)
    assert out["judge"]["model"] == "fake" and out["judge"]["model_version"] == "rev-1"
    assert out["judge"]["served_model"] == ["fake-judge-v1"]
    assert len(srv.requests) == 2 * (1 + 5)


# ---------------------------------------------------------------------------- LLaVA-Bench

@pytest.mark.parametrize("review, expected", [("8 7\nAssistant 1 is better.", (8.0, 7.0)), ("8,7\nx", (8.0, 7.0)),
                                               ("9.5 6", (9.5, 6.0)), ("Assistant 1: 8\n", None), ("8  7", None),
                                               ("eight seven", None)])
def test_llava_bench_pair_parsing(review, expected):
    assert J.parse_pair(review) == expected


def test_llava_bench_content_follows_the_official_layout():
    c = J.llava_bench_content("A cat.", "What is it?", "A cat.", "A dog.", "conv")
    assert c.startswith("[Context]\nA cat.\n\n[Question]\nWhat is it?\n\n[Assistant 1]\nA cat.\n\n[End of Assistant 1]")
    assert "[Assistant 2]\nA dog.\n\n[End of Assistant 2]\n\n[System]\nWe would like to request" in c
    assert c.endswith("does not affect your judgment.\n\n")


def test_llava_bench_summary_by_hand():
    cats = ["conv", "conv", "detail"]
    reviews = [[(8, 6)], [(6, 6)], [None]]
    m = J.llava_bench_summary(cats, reviews)
    assert m["relative"] == pytest.approx(100 * 6 / 7)  # mean model 6 / mean reference 7 (failure left out)
    assert m["conv/relative"] == pytest.approx(100 * 6 / 7) and m["detail/relative"] is None  # nothing judged
    assert m["reference_score"] == pytest.approx(70.0) and m["model_score"] == pytest.approx(60.0)
    assert m["judge_failures"] == 1


def test_llava_bench_score_with_a_judge(serve, tmp_path):
    d = tmp_path / "llava-bench-in-the-wild"
    d.mkdir()
    qs = [{"image": "001.jpg", "text": "What?", "category": "conv", "question_id": 0},
          {"image": "001.jpg", "text": "Describe.", "category": "detail", "question_id": 1}]
    (d / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    (d / "context.jsonl").write_text(json.dumps({"image": "001.jpg", "caption": ["A cat.", "On a mat."]}) + "\n")
    (d / "answers_gpt4.jsonl").write_text("".join(json.dumps({"question_id": i, "text": "ref"}) + "\n" for i in (0, 1)))
    srv = serve(lambda body, n: "8 4\nok" if "[Assistant 2]\n\n" in body["messages"][1]["content"] else "8 6\nok")
    judge = make_judge(srv.url, runs=3)
    s = score_answers("llava_bench", d, [Answer(0, "A cat.")], judge)
    assert s.metrics["conv/relative"] == pytest.approx(75.0) and s.metrics["detail/relative"] == pytest.approx(50.0)
    assert s.metrics["relative"] == pytest.approx(100 * 5 / 8) and s.metrics["missing"] == 1
    body = srv.requests[0]["body"]
    assert body["messages"][0]["content"] == J.LLAVA_BENCH_SYSTEM and body["temperature"] == 0.2
    assert "[Context]\nA cat.\nOn a mat.\n\n" in body["messages"][1]["content"]
    assert sorted({r["body"]["seed"] for r in srv.requests}) == [0, 1, 2]  # one seed per run


# ---------------------------------------------------------------------------- MMBench fallback extractor

def test_mmbench_judge_extracts_what_rules_cannot(serve, tmp_path):
    import base64
    import csv

    d = tmp_path / "mmbench"
    d.mkdir()
    with (d / mmbench.TSV).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=mmbench.COLUMNS, delimiter="\t")
        w.writeheader()
        for idx, (a, b, ans) in {0: ("dog", "cat", "B"), 1_000_000: ("cat", "dog", "A")}.items():
            w.writerow({"index": idx, "question": "Which pet?", "hint": "", "A": a, "B": b, "answer": ans,
                        "category": "x", "image": base64.b64encode(b"x").decode()})
    srv = serve(lambda body, n: "B" if "A. dog" in body["messages"][0]["content"] else "Z")
    judge = make_judge(srv.url)
    given = [Answer(0, "a purring feline"), Answer(1_000_000, "a purring feline")]
    m = score_answers("mmbench", d, given, judge).metrics
    assert m["accuracy"] == 0.0  # variant 2's judge says Z: one wrong variant fails the question
    assert srv.requests[0]["body"]["messages"][0]["content"].startswith("You are an AI assistant who will help")
    failing = serve(lambda body, n: 503)
    m = score_answers("mmbench", d, given, make_judge(failing.url)).metrics
    assert m["judge_failures"] == 2 and m["accuracy"] == 0.0 and "category/x" not in m  # left out, not wrong


# ---------------------------------------------------------------------------- a real vLLM judge

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_judge_against_a_real_vllm_server(tmp_path):
    """The tiny toy LLaVA served by `vllm serve` from .venv-vllm answers the judge's requests; its
    random replies are counted as judge failures, never as scores of 0."""
    python, model = ROOT / ".venv-vllm" / "bin" / "python", ROOT / "data" / "toy" / "model"
    if not python.exists() or not (model / "config.json").exists():
        pytest.skip("needs .venv-vllm and the toy model (make setup; python -m seva_tasks.toy)")
    with J.local_vllm(model, python, tmp_path / "judge.log") as url:
        judge = J.Judge(J.JudgeConfig(base_url=url, model="judge", runs=1, retries=1, backoff_s=0.5))
        reply = judge.chat([{"role": "user", "content": "Hello"}], temperature=0.0, max_tokens=8)
        assert isinstance(reply, str)
        grade = J.mmvet_grade(judge, "What is x?", "-1<AND>-5", "x = -1 or x = -5", run=0)
        assert grade is None or 0.0 <= grade <= 1.0
        m = J.mmvet_summary([["math"]], [[grade]])
        assert m["judge_failures"] == (grade is None) and (m["score"] is None) == (grade is None)
        assert judge.identity()["served_model"] == ["judge"]
