"""The `openai` package, unchanged, against a real `dlm serve --http`: it lists the model,
completes a left context and an infill template (dlm's controls as extra body fields), with and
without `stream=True`, and gets OpenAI's exceptions with dlm's codes for bad requests and a wrong
key."""
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the openai package is not installed (export/requirements.txt)")

ROOT = Path(__file__).resolve().parents[2]
DLM = ROOT / "target" / "release" / "dlm"
KEY = "test-key-0123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if not DLM.is_file():
        pytest.skip(f"{DLM} is not built: run `cargo build --release` first")
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: the server never blocks on it
    cmd = [str(DLM), "serve", "--model", str(ROOT / "models" / "e2e"), "--http", f"127.0.0.1:{port}", "--api-key", KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)

    def died():
        log.seek(0)
        return f"dlm serve exited with {proc.returncode}: {log.read()[-2000:]}"

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, died()
            assert time.monotonic() < deadline, "dlm serve did not become healthy"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, died()
        log.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


def test_lists_the_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["e2e"]
    assert models.data[0].owned_by == "dlm"
    assert client.models.retrieve("e2e").id == "e2e"


def test_completes_a_left_context_and_a_template(client):
    done = client.completions.create(model="e2e", prompt="The Eagle is", max_tokens=6, n=2, seed=4,
                                     extra_body={"steps": 10})
    assert done.object == "text_completion" and len(done.choices) == 2
    for choice in done.choices:
        assert choice.text.startswith(" ") and len(choice.text.split()) == 6
        assert choice.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (3, 12, 15)
    again = client.completions.create(model="e2e", prompt="The Eagle is", max_tokens=6, n=2, seed=4,
                                      extra_body={"steps": 10})
    assert [c.text for c in again.choices] == [c.text for c in done.choices], "a seed replays"
    filled = client.completions.create(model="e2e", prompt="The Eagle is a _ _ near _ .",
                                       extra_body={"steps": 10, "content": "food=Italian"})
    words = filled.choices[0].text.split()
    assert len(words) == 9 and words[:4] == ["The", "Eagle", "is", "a"] and words[8] == "."
    assert filled.usage.completion_tokens == 3


def test_streams_chunks_that_add_up_to_the_completion(client):
    fields = dict(model="e2e", prompt="The Eagle is", max_tokens=5, n=2, seed=8)
    whole = client.completions.create(**fields, extra_body={"steps": 8})
    chunks = list(client.completions.create(**fields, stream=True, extra_body={"steps": 8, "every": 4}))
    assert len(chunks) == 3, "steps 4 and 8, then the texts"
    assert [c.model_extra["dlm_step"]["step"] for c in chunks[:2]] == [4, 8]
    for index in range(2):
        assert "".join(c.choices[index].text for c in chunks) == whole.choices[index].text
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10


def test_bad_requests_raise_openai_errors_with_dlms_codes(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="e2e", prompt="The Eagle", temperature=0.7)
    assert e.value.code == "bad_request" and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="e2e", prompt="The Eagle", extra_body={"colour": "red"})
    assert e.value.param == "colour"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="The Eagle")
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model="e2e", prompt="The Eagle", max_tokens=100)
    assert e.value.code == "invalid_argument" and e.value.param == "max_tokens"
    wrong = openai.OpenAI(base_url=server, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.code == "unauthorized"
