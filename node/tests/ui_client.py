"""Drives berth's web UI (/ui) in headless Chromium through Selenium, the way a person
would: reads apps, instances, hosts, pools, deployments and events, and deploys,
scales, restarts, rolls back, cancels a stuck rollout, drains a host, and sees
berth's error messages. Every check compares the page against the API.

usage: ui_client.py URL POOL SCREENSHOT_DIR
"""

import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL, POOL, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
WAIT = 40


def api(path):
    with urllib.request.urlopen(URL + path, timeout=10) as r:
        return json.loads(r.read())


def api_post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def scale_in_dialog(app, n):
    click_action("app", app, "scale", confirm=False)
    count = driver.find_element(By.ID, "scale-count")
    count.clear()
    count.send_keys(str(n))
    driver.find_element(By.ID, "scale-ok").click()


def eventually(what, f, within=WAIT):
    deadline = time.time() + within
    last = None
    while time.time() < deadline:
        try:
            v = f()
            if v:
                return v
        except Exception as e:  # the page may be re-rendering under us
            last = e
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last error: {last}; banner: {banner()!r})")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def shot(name):
    path = os.path.join(SHOTS, name)
    driver.save_screenshot(path)
    print("screenshot:", path, flush=True)


def tab(name):
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-tab="{name}"]').click()
    eventually(f"tab {name}", lambda: driver.find_element(By.ID, name).is_displayed())


# The page re-renders a table when its data changes: rows are read in one script call
# (never element by element) and a click is retried if its row was just replaced.
ROWS_JS = "return Array.from(document.querySelectorAll(arguments[0])).map(r => Array.from(r.children).map(td => td.innerText))"


def rows(selector):
    return driver.execute_script(ROWS_JS, selector)


def cells(kind, key):
    found = rows(f'tr[data-{kind}="{key}"]')
    return found[0] if found else None


def row_text(kind, key):
    return " ".join(cells(kind, key) or [])


def click_action(kind, key, action, confirm=True):
    sel = f'tr[data-{kind}="{key}"] button[data-action="{action}"]'

    def click():
        b = driver.find_element(By.CSS_SELECTOR, sel)
        if not b.is_enabled():
            return False
        b.click()
        return True

    def attempt():
        try:
            return click()
        except StaleElementReferenceException:
            return False
    eventually(f"{action} on {kind} {key}", attempt)
    if confirm:
        WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert).accept()


def shown_ips(app):
    return sorted(r[6] for r in rows("#instances-table tbody tr") if r[1] == app)


def api_ips(app):
    return sorted(i["ip"] or "—" for i in api(f"/v1/instances?app={app}&stale=true"))


def deploy(spec_text):
    tab("deploy")
    area = driver.find_element(By.ID, "spec")
    area.clear()
    driver.execute_script("arguments[0].value = arguments[1];", area, spec_text)
    driver.find_element(By.ID, "deploy-button").click()


def banner():
    b = driver.find_element(By.ID, "banner")
    return b.text if b.is_displayed() else ""


opts = webdriver.ChromeOptions()
opts.binary_location = os.environ.get("BERTH_CHROMIUM", "/usr/bin/chromium")
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,900",
          "--force-device-scale-factor=1"]:
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service(os.environ.get("BERTH_CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
try:
    driver.get(URL + "/ui")
    eventually("the page loaded", lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    check(driver.current_url.endswith("/ui/"), "/ui redirects to /ui/")

    # Apps and instances: what the API says, with every instance's IP.
    eventually("web is listed", lambda: cells("app", "web"))
    web = api("/v1/apps/web")
    c = cells("app", "web")
    check(c[1] == f"v{web['version']}" and c[2] == str(web["instances"]), f"web's row shows v{web['version']} x{web['instances']}: {c}")
    eventually("web's instances with their IPs", lambda: shown_ips("web") == api_ips("web") and "—" not in shown_ips("web"))
    prefix = next(p for p in api("/v1/ipam/pools") if p["name"] == POOL)["subnet"].rsplit(".", 1)[0] + "."
    check(all(ip.startswith(prefix) for ip in shown_ips("web")), f"instance IPs shown, from {POOL}: {shown_ips('web')}")
    cluster = driver.find_element(By.ID, "cluster").text
    check("leader" in cluster and "no leader" not in cluster, f"the cluster line: {cluster}")

    # Scale through the dialog.
    scale_in_dialog("web", 3)
    eventually("web scaled to 3 (API)", lambda: api("/v1/apps/web")["instances"] == 3)
    eventually("3 running instances of web shown with IPs",
               lambda: len(shown_ips("web")) == 3 and shown_ips("web") == api_ips("web") and "—" not in shown_ips("web"))
    check(True, "scale from the UI")

    # Deploy a new app from the Deploy tab.
    spec = json.loads(os.environ["BERTH_UI_SPEC"])
    spec["id"] = "api"
    deploy(json.dumps(spec, indent=2))
    eventually("api deployed", lambda: "api is at v1" in driver.find_element(By.ID, "deploy-result").text)
    check(api("/v1/apps/api")["version"] == 1, "the API has the app the UI deployed")
    shot("deploy.png")

    # berth's own error messages reach the user.
    deploy("{not json")
    eventually("a JSON error", lambda: "not valid JSON" in banner())
    bad = dict(spec, colour="blue")
    deploy(json.dumps(bad))
    eventually("the API's error", lambda: "unknown field `colour`" in banner())
    check(True, f"errors are shown: {banner()!r}")

    # A rollout that cannot move (every instance must stay healthy, and the new
    # version's surge instance fits on no host) shows in Deployments with its progress
    # and why it is blocked; cancelling it from there rolls it back.
    before = api("/v1/apps/web")["version"]
    stuck = json.loads(json.dumps(api("/v1/apps/web")["spec"]))
    stuck["env"] = dict(stuck.get("env") or {}, STUCK="1")
    stuck["cpus"] = 512
    stuck["upgrade"] = {"min_healthy": 1.0, "max_surge": 1}
    deploy(json.dumps(stuck))
    eventually("the rollout started", lambda: api("/v1/apps/web")["version"] == before + 1)
    tab("deployments")
    dep = eventually("the rollout listed", lambda: api("/v1/deployments?stale=true"))[0]
    eventually("the deployment row", lambda: cells("deployment", dep["id"]))
    eventually("the rollout says why it is blocked",
               lambda: api("/v1/deployments?stale=true")[0]["blocked"] and "stuck" in cells("deployment", dep["id"])[5])
    check("0 / 3 updated" in row_text("deployment", dep["id"]), f"progress and reason shown: {cells('deployment', dep['id'])}")
    shot("deployments.png")
    click_action("deployment", dep["id"], "cancel")
    eventually("cancelled: rolled back", lambda: not api("/v1/deployments") and api("/v1/apps/web")["version"] == before + 2)
    eventually("no rollout shown", lambda: driver.find_element(By.ID, "deployments-empty").is_displayed())
    check("STUCK" not in api("/v1/apps/web")["spec"]["env"], "the spec is the one before the stuck version")

    # A release from the Deploy tab, rolled back from the app row, then a restart.
    v = api("/v1/apps/web")["version"]
    release = json.loads(json.dumps(api("/v1/apps/web")["spec"]))
    release["env"] = dict(release.get("env") or {}, RELEASE="2")
    deploy(json.dumps(release))
    settled = lambda want: lambda: (api("/v1/apps/web")["version"] == want and not api("/v1/deployments")
                                    and api("/v1/apps/web")["healthy"] == 3)
    eventually("release 2 rolled out", settled(v + 1))
    tab("apps")
    click_action("app", "web", "rollback")
    eventually("rolled back: a new version without RELEASE", settled(v + 2))
    check("RELEASE" not in api("/v1/apps/web")["spec"]["env"], "rollback from the UI")
    ips = eventually("three instances after the rollback", lambda: len(api_ips("web")) == 3 and api_ips("web"))
    click_action("app", "web", "restart")
    eventually("restarted: a new version, rolled out", settled(v + 3))
    # The rollout's surge instance (its own IP) is stopped once the rollout is done;
    # then the three are the ones from before, with their IPs.
    eventually("the surge instance gone, the instances with their IPs", lambda: api_ips("web") == ips)
    check(True, f"restart from the UI; the instances kept their IPs {ips}")
    eventually("the page shows the restart", lambda: cells("app", "web")[1] == f"v{v + 3}" and shown_ips("web") == ips)
    shot("apps.png")

    # Hosts: bars and drain / make eligible.
    tab("hosts")
    hosts = api("/v1/hosts")
    eventually("every host listed", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#hosts-table tbody tr")) == len(hosts))
    h = hosts[-1]["id"]
    check(len(driver.find_elements(By.CSS_SELECTOR, f'tr[data-host="{h}"] .bar')) == 2, "CPU and memory bars")
    click_action("host", h, "drain")
    eventually(f"host {h} draining", lambda: next(x for x in api("/v1/hosts") if x["id"] == h)["state"] == "draining")
    eventually("the UI shows it", lambda: "draining" in row_text("host", h))
    shot("hosts.png")
    click_action("host", h, "eligible", confirm=False)
    eventually(f"host {h} up again", lambda: next(x for x in api("/v1/hosts") if x["id"] == h)["state"] == "up")
    check(True, "drain and make eligible from the UI")

    # Pools with their usage.
    tab("pools")
    pool = next(p for p in api("/v1/ipam/pools") if p["name"] == POOL)
    def usage_matches():
        used = next(p for p in api("/v1/ipam/pools") if p["name"] == POOL)["used"]
        return f"{used} / {pool['size']} addresses" in row_text("pool", POOL)
    eventually("the pool's usage as the API has it", usage_matches)
    shot("pools.png")

    # The live events.
    tab("events")
    for t in ["app_created", "app_scaled", "deployment_started", "deployment_cancelled", "host_changed"]:
        eventually(f"a {t} event", lambda: driver.find_elements(By.CSS_SELECTOR, f'#events-list li[data-type="{t}"]'))
    check(True, "live events listed")
    shot("events.png")

    # Tokens: once the cluster has one, a write without it is refused and says so (the
    # page keeps reading: reads stay open); the token form fixes that and names it.
    admin = api_post("/v1/tokens", {"role": "admin", "name": "ui-test"})["token"]
    tab("apps")
    scale_in_dialog("web", 2)
    eventually("the refusal shown", lambda: "unauthenticated" in banner())
    check(api("/v1/apps/web")["instances"] == 3, "a write without the token changed nothing")
    check("needed" in driver.find_element(By.ID, "token-form").get_attribute("class"), "the token form is marked")
    driver.find_element(By.ID, "token").send_keys(admin)
    driver.find_element(By.ID, "token-save").click()
    eventually("the token named", lambda: driver.find_element(By.ID, "token-who").text == "ui-test (admin)")
    check(driver.find_element(By.ID, "token").get_attribute("value") == "", "the token is not left in the field")
    scale_in_dialog("web", 2)
    eventually("web scaled to 2 with the token", lambda: api("/v1/apps/web")["instances"] == 2)
    tab("events")
    eventually("events still follow, with the token",
               lambda: len(driver.find_elements(By.CSS_SELECTOR, '#events-list li[data-type="app_scaled"]')) >= 2)
    check(True, "writes with an API token from the UI")
    shot("token.png")

    # The only failed requests are the deploy meant to fail and the write without a
    # token; no script error.
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    expected = lambda m: ("/v1/apps/" in m and "400" in m) or ("/scale" in m and "401" in m)
    check(all(e["source"] == "network" and expected(e["message"]) for e in logs),
          f"no script errors, no failed request but the bad deploy and the tokenless write: {logs}")
    print("all checks passed")
finally:
    driver.quit()
