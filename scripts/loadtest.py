"""Load a running `dlm serve` over TCP: C clients, each sending R requests one after another.

    python3 scripts/loadtest.py --addr 127.0.0.1:7878 --clients 8 --requests 25 --steps 50

Prints the count of answers by code, latency percentiles (client-side, request written to
response read) and throughput. Every request must get exactly one answer.
"""
import argparse
import collections
import json
import socket
import statistics
import threading
import time


def client(addr, index, args, results):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        reader = sock.makefile("r", encoding="utf-8")
        for k in range(args.requests):
            request = {"id": index * args.requests + k, "steps": args.steps, "seed": k}
            if args.content:
                request["content"] = args.content
            start = time.perf_counter()
            sock.sendall((json.dumps(request) + "\n").encode())
            line = reader.readline()
            elapsed = time.perf_counter() - start
            response = json.loads(line)
            assert response["id"] == request["id"], (response, request)
            code = "ok" if response["ok"] else response["error"]["code"]
            results.append((code, elapsed, response.get("timings", {})))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:7878")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--content", help="a field=value control for every request")
    args = p.parse_args()
    results = []
    threads = [threading.Thread(target=client, args=(args.addr, i, args, results)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    sent = args.clients * args.requests
    codes = collections.Counter(code for code, _, _ in results)
    ok = [(e, t) for code, e, t in results if code == "ok"]
    print(f"{sent} requests, {args.clients} clients, {args.steps} steps, {len(results)} answers in {wall:.1f} s")
    print("answers by code: " + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
    if ok:
        lat = [e * 1e3 for e, _ in ok]
        run = [t["run_ms"] for _, t in ok]
        queue = [t["queue_ms"] for _, t in ok]
        print(f"latency ms (client): p50 {percentile(lat, 50):.1f}  p95 {percentile(lat, 95):.1f}  "
              f"max {max(lat):.1f}  mean {statistics.mean(lat):.1f}")
        print(f"server run ms: p50 {percentile(run, 50):.1f}  p95 {percentile(run, 95):.1f};  "
              f"queue wait ms: p50 {percentile(queue, 50):.1f}  p95 {percentile(queue, 95):.1f}")
        print(f"throughput: {len(ok) / wall:.1f} requests/s")
    if len(results) != sent:
        raise SystemExit(f"{sent - len(results)} requests got no answer")


if __name__ == "__main__":
    main()
