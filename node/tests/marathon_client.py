"""berth's Marathon /v2 adapter, driven by the `marathon` client from PyPI (0.13.0),
the way deploy jobs drive Marathon. Run by node/tests/marathon.rs:

    python3 marathon_client.py POOL URL [URL...]

Exits non-zero, saying what failed, at the first surprise.
"""
import collections
import collections.abc
import sys
import time

# marathon 0.13.0 still uses collections.Iterable, gone since Python 3.10: the shim
# every user of the client on a current Python carries.
collections.Iterable = collections.abc.Iterable

from marathon import MarathonClient  # noqa: E402
from marathon.exceptions import ConflictError, MarathonHttpError, NotFoundError  # noqa: E402
from marathon.models import MarathonApp, MarathonConstraint, MarathonHealthCheck  # noqa: E402
from marathon.models.app import MarathonUpgradeStrategy  # noqa: E402

POOL, URLS = sys.argv[1], sys.argv[2:]
APP = "/team/shop"
LOOP = "trap 'exit 0' TERM; while true; do sleep 0.5 & wait $!; done"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wait(what, f, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = f()
            if last:
                return last
        except (MarathonHttpError, KeyError) as e:
            last = e
        time.sleep(0.3)
    import requests

    berth = requests.get(f"{URLS[0]}/v1/apps/{APP.strip('/').replace('/', '-')}").text
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r}; tasks: {SEEN.get('tasks')}; berth: {berth})")


SEEN = {}


def running(client, n):
    """The app's tasks once n run, healthy, each with an IP of the pool."""
    tasks = client.list_tasks(APP)
    SEEN["tasks"] = [(t.id, t.state, t.host, t.slave_id, t.ip_addresses) for t in tasks]
    ok = len(tasks) == n and all(
        t.state == "TASK_RUNNING" and t.ip_addresses and t.health_check_results and t.health_check_results[0].alive
        for t in tasks
    )
    return tasks if ok else None


def ips(tasks):
    return {t.id: t.ip_addresses[0].ip_address for t in tasks}


def no_deployment(client):
    return not [d for d in client.list_deployments() if APP in (d.affected_apps or [])]


# Any node serves; the client tries the next one on a connection error.
c = MarathonClient(URLS)
other = MarathonClient(URLS[-1])

check(c.ping() == b"pong", "ping")
info = c.get_info()
check(info.name == "berth" and info.elected, f"info: {info}")
check(c.get_leader()["leader"] == info.leader, "leader agrees with info")

spec = MarathonApp(
    cmd=LOOP,
    instances=2,
    cpus=0.01,
    mem=16,
    env={"MODE": "one"},
    labels={"team": "shop"},
    constraints=[MarathonConstraint("hostname", "UNIQUE")],
    health_checks=[
        MarathonHealthCheck(
            protocol="COMMAND",
            command="true",
            grace_period_seconds=1,
            interval_seconds=1,
            timeout_seconds=1,
            max_consecutive_failures=3,
        )
    ],
    upgrade_strategy=MarathonUpgradeStrategy(minimum_health_capacity=0.5, maximum_over_capacity=0.0),
    networks=[{"mode": "container", "name": POOL}],
    task_kill_grace_period_seconds=1,
)
created = c.create_app(APP, spec)
check(created.id == APP and created.instances == 2 and created.cmd == LOOP, f"created: {created}")
check(created.constraints[0].operator == "UNIQUE", "constraints come back")
try:
    c.create_app(APP, spec)
    raise AssertionError("a second create of the same id was accepted")
except ConflictError:
    pass

first = wait("2 healthy tasks", lambda: running(c, 2))
check(len({t.host for t in first}) == 2 or len({t.slave_id for t in first}) == 2, "UNIQUE: one task per host")
addresses = ips(first)
app = other.get_app(APP, embed_tasks=True)
check(app.tasks_running == 2 and app.tasks_healthy == 2 and len(app.tasks) == 2, f"another node: {app}")
check(app.labels == {"team": "shop"} and app.env == {"MODE": "one"}, "labels and env")
check(APP in [a.id for a in c.list_apps()], "listed")

# A config change: a rolling update in place, same task ids and IPs.
v1 = app.version
c.update_app(APP, MarathonApp(env={"MODE": "two"}))
wait("the update rolled out", lambda: no_deployment(c) and c.get_app(APP).version != v1 and running(c, 2))
updated = c.get_app(APP)
check(updated.env == {"MODE": "two"} and updated.cmd == LOOP, f"partial update kept the rest: {updated}")
check(ips(running(c, 2)) == addresses, "the update kept every task's IP")

# Scale up and down (a PUT of instances only, as scale_app sends).
c.scale_app(APP, instances=3)
three = wait("3 tasks", lambda: running(c, 3))
check(all(addresses[t] == ip for t, ip in ips(three).items() if t in addresses), "scale kept the IPs")
c.scale_app(APP, delta=-1)
wait("back to 2", lambda: running(c, 2))

# Restart: every task replaced, in a new version, IPs kept.
v2 = c.get_app(APP).version
answer = c.restart_app(APP)
check("deploymentId" in answer and answer["version"] != v2, f"restart: {answer}")
wait("the restart rolled out", lambda: no_deployment(c) and running(c, 2))
check(ips(running(c, 2)) == addresses, "the restart kept every task's IP")

# Versions, newest first; each can be read; a rollback to the first.
versions = c.list_versions(APP)
check(len(versions) >= 3 and versions[0] == c.get_app(APP).version, f"versions: {versions}")
oldest = c.get_version(APP, versions[-1])
check(oldest.env == {"MODE": "one"}, f"the first version: {oldest}")
c.rollback_app(APP, versions[-1])
wait("rolled back", lambda: no_deployment(c) and c.get_app(APP).env == {"MODE": "one"} and running(c, 2))

# A rollout that cannot go on (3 hosts, UNIQUE, 3 tasks, min 100% healthy, one
# surge that finds no host): it is listed, locks the app (409 without force), and
# cancelling it rolls back.
c.scale_app(APP, instances=3)
wait("3 tasks", lambda: running(c, 3) and no_deployment(c))
strict = MarathonUpgradeStrategy(minimum_health_capacity=1.0, maximum_over_capacity=0.33)
c.update_app(APP, MarathonApp(env={"MODE": "three"}, upgrade_strategy=strict))
stuck = wait("a deployment", lambda: [d for d in c.list_deployments() if APP in d.affected_apps])
try:
    c.update_app(APP, MarathonApp(env={"MODE": "four"}))
    raise AssertionError("an update during a deployment was accepted without force")
except ConflictError:
    pass
c.delete_deployment(stuck[0].id)
wait("cancelled", lambda: no_deployment(c) and c.get_app(APP).env == {"MODE": "one"})
check(len(running(c, 3) or []) == 3, "the cancel left the tasks running")

# What berth cannot honour is a 422 naming the field; unknown apps are 404s.
try:
    c.create_app("/bad", MarathonApp(cmd="x", container={"docker": {"image": "i", "forcePullImage": True}}))
    raise AssertionError("forcePullImage was accepted")
except MarathonHttpError as e:
    check(e.status_code == 422 and "forcePullImage" in e.error_message, f"422: {e}")
try:
    c.get_app("/nope")
    raise AssertionError("an unknown app was found")
except NotFoundError:
    pass

# A scale is never a new version, though Marathon says maxOverCapacity as a fraction
# of the instances (defaults: 1.0 and 1.0).
c.create_app("/team/echo", MarathonApp(cmd=LOOP, instances=1, cpus=0.01, mem=16))
v = c.get_app("/team/echo").version
c.scale_app("/team/echo", instances=2)
wait("echo scaled", lambda: c.get_app("/team/echo").tasks_running == 2)
check(c.get_app("/team/echo").version == v, "a scale kept the version (nothing restarted)")
c.delete_app("/team/echo")

c.delete_app(APP)
wait("deleted", lambda: APP not in [a.id for a in c.list_apps()] and not c.list_tasks())
print("marathon client: all checks passed")
