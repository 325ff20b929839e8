"""The registered tiny concept behind MLflow's real scoring server, and the batch pipeline.

The server is started the way ``make serve`` starts it (MLflow's scoring app behind
``serving/guard.py`` on 127.0.0.1 with the venv's bin on PATH) and stopped by the fixture,
process group and all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from test_registry import tiny_concept_in

from conftest import PROJECT_ROOT, run_kedro_here
from magicapture_pipeline.config.generation import GenerationConfig
from magicapture_pipeline.config.serving import ServingConfig, ServingLimits
from magicapture_pipeline.config.tracking import RegistryConfig
from magicapture_pipeline.core.generation.postprocess import read_provenance
from magicapture_pipeline.pipelines.register.nodes import register_concept
from magicapture_pipeline.serving.concept_model import decode_image
from magicapture_pipeline.serving.promotion import promote
from magicapture_pipeline.tracking.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scoring_server")]  # one registry

MODEL = "magicapture-demo"
PROMPT = "a photo of a [V1] person in the [V2] style"
SAMPLING = GenerationConfig(resolution=32, num_inference_steps=3, seed=0, concept_name="demo")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Path, str]:
    """A project folder holding the tiny SD, a registry with the concept as @champion."""
    root = tmp_path_factory.mktemp("served")
    base, concept = tiny_concept_in(root, tmp_path_factory)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(root / "art").as_uri())
    run = client.create_run(experiment)
    config = RegistryConfig(model_name=MODEL)
    record = register_concept(
        concept,
        {"path": str(base)},
        {"unavailable": {}},
        {"run_id": run.info.run_id, "tracking_uri": uri, "project_path": str(root)},
        config,
        SAMPLING,
        ServingConfig(limits=ServingLimits(max_rows=2)),
    )
    client.set_terminated(run.info.run_id)
    # a random tiny concept: no CSIM and no identity loss (Eq. 7) to gate on
    lenient = {"required_metrics": [], "min_metrics": {}, "allow_without_identity_loss": True}
    config = config.model_copy(update={"gates": config.gates.model_copy(update=lenient)})
    promote(client, MODEL, record["version"], config)
    return root, uri


def serve_env(root: Path, uri: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": uri,
        "MAGICAPTURE_PROJECT_ROOT": str(root),
    }


@pytest.fixture(scope="module")
def server(registry):
    root, uri = registry
    port = free_port()
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "magicapture_pipeline.serving.guard",
            "-m",
            f"models:/{MODEL}@champion",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        env=serve_env(root, uri),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise AssertionError((root / "serve.log").read_text()[-4000:])
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (root / "serve.log").read_text()[-4000:]
            time.sleep(1)
        yield url
    finally:
        stop_group(process)
        log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` s; assert none remains."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        if not _group_alive(process.pid):
            break
        time.sleep(0.5)
    if _group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        time.sleep(1)
    process.poll()
    assert not _group_alive(process.pid), "a server process outlived the test"


def post(url: str, records: list[dict]) -> tuple[int, dict, float]:
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            status, payload = answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        status, payload = error.code, json.loads(error.read() or b"{}")
    return status, payload, time.perf_counter() - start


BAD_REQUESTS = [
    ([{"prompt": PROMPT, "steps": -5}], "'steps' is -5; it must be an integer in [1, 150]"),
    ([{"prompt": PROMPT, "steps": 100_000_000}], "'steps' is 100000000"),
    ([{"prompt": PROMPT, "guidance_scale": 31.0}], "'guidance_scale' is 31"),
    ([{"prompt": PROMPT, "seed": -1}], "'seed' is -1"),
    ([{"prompt": "word " * 90}], "tokens; the limit is 77"),
    ([{"prompt": PROMPT}] * 3, "3 rows in one request; at most 2"),
    ([{"seed": 1}], "prompt"),
]


@pytest.mark.service
def test_concurrent_load_and_bad_requests(server):
    def good(index: int) -> tuple[int, dict, float]:
        return post(server, [{"prompt": PROMPT, "seed": index}])

    def bad(index: int) -> tuple[int, dict, float]:
        return post(server, BAD_REQUESTS[index % len(BAD_REQUESTS)][0])

    with ThreadPoolExecutor(max_workers=4) as pool:
        good_futures = [pool.submit(good, i) for i in range(20)]
        bad_futures = [pool.submit(bad, i) for i in range(len(BAD_REQUESTS))]
        answers = [f.result() for f in good_futures]
        refusals = [f.result() for f in bad_futures]
    latencies = sorted(seconds for _, _, seconds in answers)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    print(  # noqa: T201 - the load figures are the point of this test
        f"\n20 requests over 4 threads: p50 {quantiles[49]:.2f} s, p90 {quantiles[89]:.2f} s, "
        f"p99 {quantiles[98]:.2f} s, max {latencies[-1]:.2f} s"
    )
    for index, (status, payload, _) in enumerate(answers):
        # MLflow's error answer carries the server's stack trace: show it whole
        assert status == 200, f"{payload.get('message')}\n{payload.get('stack_trace', '')[-4000:]}"
        [row] = payload["predictions"]
        assert row["seed"] == index and row["steps"] == 3 and row["scheduler"] == "euler_ancestral"
        image = decode_image(row["image"], keep_metadata=True)
        assert image.format == "PNG" and image.size == (32, 32)
        provenance = read_provenance(image)
        assert provenance["seed"] == index and provenance["ai_generated"] is True
    for (status, payload, _), (_, expected) in zip(refusals, BAD_REQUESTS, strict=True):
        assert status == 400, payload
        assert expected in payload["message"], payload["message"][:500]
    status, payload, _ = post(server, [{"prompt": PROMPT, "seed": 5}])  # still serving
    assert status == 200 and payload["predictions"][0]["seed"] == 5
    assert answers[5][1]["predictions"][0]["image"] == payload["predictions"][0]["image"]


def post_raw(url: str, body: bytes, content_type: str | None) -> tuple[int, dict, float]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"{url}/invocations", data=body, headers=headers)
    if content_type is None:  # urllib adds a form Content-Type unless told there is none
        request.remove_header("Content-type")
        request.unredirected_hdrs.pop("Content-type", None)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    except (ConnectionError, urllib.error.URLError) as error:  # a server that closes early
        raise AssertionError(f"no answer: {error!r}") from error
    return status, json.loads(text or b"{}"), time.perf_counter() - start


def records(*rows: dict) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


HOSTILE = [
    ("50 MB prompt", records({"prompt": "a" * 50_000_000}), 413, "max_body_bytes"),
    ("900 kB prompt", records({"prompt": "a " * 450_000}), 400, "max_prompt_chars"),
    ("no content type", records({"prompt": PROMPT}), 415, "Content-Type"),
    ("csv", b"prompt\nx\n", 415, "application/json"),
    ("100k-deep JSON", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("steps 10.5", records({"prompt": PROMPT, "steps": 10.5}), 400, "'steps' must be a JSON int"),
    ("seed true", records({"prompt": PROMPT, "seed": True}), 400, "'seed' must be a JSON integer"),
    ("seed '7'", records({"prompt": PROMPT, "seed": "7"}), 400, "'seed' must be a JSON integer"),
    ("seed 1e30", records({"prompt": PROMPT, "seed": 1e30}), 400, "'seed' must be a JSON integer"),
    ("seed 2**64", records({"prompt": PROMPT, "seed": 2**64}), 400, "'seed' is 1844674407"),
    ("unknown column", records({"prompt": PROMPT, "width": 4096}), 400, "unknown column(s) ['wid"),
    ("guidance NaN", b'{"dataframe_records": [{"prompt": "x", "guidance_scale": NaN}]}', 400,
     "'guidance_scale' must be a finite"),
    ("not UTF-8", b'{"dataframe_records": [{"prompt": "\xff"}]}', 400, "not UTF-8"),
    ("other shape", json.dumps({"instances": [PROMPT]}).encode(), 400, "dataframe_records"),
]


def _body_complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def post_expecting_continue(url: str, size: int) -> tuple[int, str, float]:
    """What curl does with a large body: headers with ``Expect: 100-continue``, then wait."""
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received or not _body_complete(received):
            chunk = sock.recv(65536)  # headers and body may arrive in separate packets
            if not chunk:
                break
            received += chunk
        answer = received.decode("latin-1")
    status = int(answer.split(" ", 2)[1])
    return status, answer, time.perf_counter() - start


@pytest.mark.service
def test_hostile_requests_are_refused_early_and_exactly(server):
    """Each refusal is a 4xx naming the field or limit, in well under a second (real server)."""
    content = {"no content type": None, "csv": "text/csv"}
    for name, body, status, expected in HOSTILE:
        got, payload, seconds = post_raw(server, body, content.get(name, "application/json"))
        assert (got, name) == (status, name), payload
        assert expected in payload["message"], (name, payload["message"][:300])
        assert seconds < 1.0, f"{name}: {seconds:.2f} s"
    status, answer, seconds = post_expecting_continue(server, 10 * 1024**3)  # 10 GB announced
    assert (status, "max_body_bytes" in answer) == (413, True), answer[:300]
    assert seconds < 1.0
    # refused bodies left the server able to answer, with the request's own values
    status, payload, _ = post(server, [{"prompt": PROMPT, "seed": 7, "steps": 2}])
    [row] = payload["predictions"] if status == 200 else [{}]
    assert (status, row.get("seed"), row.get("steps")) == (200, 7, 2)


def test_make_serve_binds_loopback_with_the_venv_on_path():
    done = subprocess.run(
        ["make", "-n", "serve", "CONCEPT=alice", "ALIAS=candidate", "PORT=5123"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '-m magicapture_pipeline.serving.guard \\\n' in done
    assert '-m "models:/magicapture-alice@candidate" --host 127.0.0.1 --port 5123' in done
    assert f'PATH="{PROJECT_ROOT}/.venv/bin:' in done


@pytest.mark.integration
def test_batch_pipeline_writes_images_and_records(registry, project_copy):
    root, uri = registry
    prompts = project_copy / "prompts.csv"
    pd.DataFrame(
        {"prompt": [PROMPT, "[V1] smiling", "[V2] landscape"], "seed": [7, None, None]}
    ).to_csv(prompts, index=False)
    params = f"--params=prompts_file={prompts},serving.model_uri=models:/{MODEL}@champion"
    env_before = dict(os.environ)
    os.environ.update(MLFLOW_TRACKING_URI=uri, MAGICAPTURE_PROJECT_ROOT=str(root))
    try:
        # Kedro's command line in this process (``run_kedro_here``): the images and records are
        # under test, not the process (real ``kedro`` processes: the demo chain, the DVC stages)
        done = run_kedro_here(project_copy, "run", "--pipelines=batch_generate", params)
        assert done.returncode == 0, done.stderr[-4000:]
        records = pd.read_csv(project_copy / "data/07_model_output/my-concept/batch_records.csv")
        assert list(records["key"]) == ["b0000", "b0001", "b0002"]
        assert list(records["seed"]) == [7, 1, 2]  # sampling seed 0 + row, as generate numbers
        assert set(records["model_version"]) == {1}
        assert records.loc[1, "prompt"] == "<v1> smiling"
        for key, seed in zip(records["key"], records["seed"], strict=True):
            png = project_copy / "data/07_model_output/my-concept/batch" / f"{key}.png"
            assert read_provenance(png)["seed"] == seed
        bad = project_copy / "bad.csv"
        pd.DataFrame({"prompt": [PROMPT, PROMPT], "steps": [3, 500]}).to_csv(bad, index=False)
        (project_copy / "data/07_model_output/my-concept/batch").rename(
            project_copy / "first_batch"
        )
        # the refusal: the same session, hooks and nodes, its error raised here
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        bootstrap_project(project_copy)
        params = {"prompts_file": str(bad), "serving": {"model_uri": f"models:/{MODEL}@champion"}}
        with KedroSession.create(project_path=project_copy, runtime_params=params) as session:
            with pytest.raises(Exception) as refused:  # noqa: PT011 - the message is checked
                session.run(pipeline_names=["batch_generate"])
        said = " ".join(str(refused.value).split())
        assert "row 1: 'steps' is 500; it must be an integer in [1, 150]" in said, said
        assert not (
            project_copy / "data/07_model_output/my-concept/batch"
        ).exists()  # refused before work
    finally:
        os.environ.clear()
        os.environ.update(env_before)
