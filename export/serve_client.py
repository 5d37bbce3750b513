"""A `dlm serve --stdio` process as a batch client: many requests in flight, answers by id.

The evaluator sends its ~1,000 requests through one server instead of one `dlm generate`
process each: the model loads once, and requests in flight share the server's batches
(a seeded request's sentences do not depend on what it was batched with).
"""
import json
import subprocess
import tempfile
from pathlib import Path

from .errors import ExportError

# an hour for a request and between requests (scoring a control's outputs takes a while: the
# stdio transport otherwise closes after --idle-timeout-ms, 60 s, without input)
SERVE_FLAGS = ("--queue", "64", "--timeout-ms", "3600000", "--idle-timeout-ms", "3600000")


class DlmServer:
    def __init__(self, dlm, model_dir, in_flight=16, flags=()):
        if not Path(dlm).is_file():
            raise ExportError(f"{dlm}: dlm binary not found; run `cargo build --release` first")
        self.cmd = [str(dlm), "serve", "--stdio", "--model", str(model_dir), *SERVE_FLAGS, *flags]
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)
        self.in_flight = in_flight

    def run(self, requests, progress=None):
        """The answer of each request (a dict of generate fields), in order; ExportError naming the
        first request the server refused, or the server's stderr if it died."""
        answers, sent = {}, 0
        while len(answers) < len(requests):
            while sent < len(requests) and sent - len(answers) < self.in_flight:
                self._write({"id": sent, **requests[sent]})
                sent += 1
            line = self.proc.stdout.readline()
            if not line:
                raise ExportError(self._died())
            answer = json.loads(line)
            if not answer.get("ok"):
                raise ExportError(f"dlm serve refused {json.dumps(requests[answer.get('id', 0)])}: {answer.get('error')}")
            answers[answer["id"]] = answer
            if progress is not None:
                progress.update(1)
        return [answers[i] for i in range(len(requests))]

    def _write(self, request):
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ExportError(self._died()) from None

    def _died(self):
        code = self.proc.wait(timeout=60)
        self.log.seek(0)
        return f"{' '.join(self.cmd)} exited with status {code}: {self.log.read().strip() or '(nothing on stderr)'}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
