"""berth's Consul feed, read by python-consul (PyPI) the way service-discovery glue
reads Consul. Run by node/tests/consul.rs:

    python3 consul_client.py HOST PORT BERTH_URL

Checks the KV upstream keys, health and catalog of app `web` (2 instances, port
8080), then a blocking query woken by a scale to 3 through berth's API.
"""
import json
import sys
import threading
import time
import urllib.request

import consul

HOST, PORT, BERTH = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = consul.Consul(host=HOST, port=PORT)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def berth_ips():
    with urllib.request.urlopen(f"{BERTH}/v1/instances?app=web") as r:
        return sorted(i["ip"] for i in json.load(r) if i["state"] == "running")


def upstreams():
    index, data = c.kv.get("upstreams/web", recurse=True)
    return index, {d["Key"]: json.loads(d["Value"]) for d in (data or [])}


ips = berth_ips()
check(len(ips) == 2, f"2 running instances first: {ips}")
index, kv = upstreams()
want = {f"upstreams/web/{ip}:8080": {"weight": 1, "max_fails": 2, "fail_timeout": 10, "down": 0} for ip in ips}
check(kv == want, f"kv: {kv} != {want}")
check(int(index) > 0, f"index {index}")
again, _ = upstreams()
check(again == index, f"an unchanged view keeps its index: {index} then {again}")

keys_index, keys = c.kv.get("upstreams/web/", keys=True)
check(sorted(keys) == sorted(want), f"keys: {keys}")
one_index, one = c.kv.get(sorted(want)[0])
check(one is not None and one["Key"] == sorted(want)[0], f"one key: {one}")
check(c.kv.get("upstreams/nope", recurse=True)[1] is None, "an unknown app is a 404: (index, None)")

_, nodes = c.health.service("web", passing=True)
check(sorted(n["Service"]["Address"] for n in nodes) == ips, f"health: {nodes}")
check(all(n["Service"]["Port"] == 8080 and n["Checks"][0]["Status"] == "passing" for n in nodes), "passing")
_, services = c.catalog.service("web")
check(sorted(s["ServiceAddress"] for s in services) == ips, f"catalog: {services}")

# A blocking query at the current index returns once the view changes.
result = {}


def watch():
    started = time.time()
    result["index"], data = c.kv.get("upstreams/web", recurse=True, index=index, wait="60s")
    result["keys"] = {d["Key"] for d in data or []}
    result["took"] = time.time() - started


t = threading.Thread(target=watch)
t.start()
time.sleep(1.5)
check(t.is_alive(), "the blocking query returned before anything changed")
req = urllib.request.Request(
    f"{BERTH}/v1/apps/web/scale", data=json.dumps({"instances": 3}).encode(), method="POST",
    headers={"Content-Type": "application/json"},
)
urllib.request.urlopen(req).read()
t.join(70)
check(not t.is_alive(), "the blocking query never returned")
check(int(result["index"]) > int(index), f"a new index after the change: {result}")
check(result["took"] < 50, f"it returned on the change, not at the wait: {result}")
# The first change it sees may be the new instance still starting (down: 1) —
# nginx keeps it out of rotation. Then all 3 serve.
deadline = time.time() + 30
while time.time() < deadline:
    _, kv = upstreams()
    if len(kv) == 3 and all(v["down"] == 0 for v in kv.values()):
        break
    time.sleep(0.3)
check(len(kv) == 3 and all(v["down"] == 0 for v in kv.values()), f"3 upstreams up: {kv}")
print("consul client: all checks passed")
