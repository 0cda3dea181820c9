"""Tests of `make report` (report.py): a sandbox run with a row of each outcome drawn from the
bucket alone, the Price List API and spot prices through botocore's Stubber (moto has no Price
List API), and one clear line when there is nothing to report."""
import html.parser
import json
import os
import platform
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.stub import Stubber

import cloud_setup as cs
import cost
from testbed import sandbox_ec2
from conftest import ROOT, write
from test_collect import no_bucket_then_no_results, run_job, table
from test_operate import states, until, vanish, waits_for


class Page(html.parser.HTMLParser):
    """The report's bars {(tag, phase): (classes, title)}, lane labels and text."""

    def __init__(self, text):
        super().__init__()
        self.bars, self.lanes, self.text, self.open, self.in_lane = {}, [], [], None, False
        self.machine_bars = []  # a pool machine's own launch and install: [classes]
        self.feed(text)

    def handle_starttag(self, name, attrs):
        attrs = dict(attrs)
        if name == "rect" and "data-tag" in attrs:
            self.open = (attrs["data-tag"], attrs["data-phase"])
            self.bars[self.open] = (set(attrs["class"].split()), "")
        elif name == "rect" and "machine" in attrs.get("class", "").split():
            self.machine_bars.append(set(attrs["class"].split()))
        self.in_lane = name == "text" and attrs.get("class") == "lane"

    def handle_endtag(self, name):
        if name == "rect":
            self.open = None
        self.in_lane = False

    def handle_data(self, data):
        if self.open:
            classes, title = self.bars[self.open]
            self.bars[self.open] = (classes, title + data)
        elif self.in_lane:
            self.lanes.append(data)
        else:
            self.text.append(data)


def prices(box, **usd):
    """Give the sandbox's Price List API these on-demand prices (sandbox_ec2.price_answer)."""
    path = os.path.join(box.env["AWSRUN_SANDBOX"], "account.json")
    with open(path, "w") as f:
        json.dump({"prices": usd}, f)
    return path


def test_the_report_draws_each_outcome_from_the_bucket(box, tmp_path):
    job = "rep-all"
    # The row to be lost ignores the runtime limit's TERM (its KILL comes 60 s later), so that
    # it is still running when the test ends its machine, however loaded the CPU is.
    rows = ["echo fine", "echo broken >&2; exit 3", "echo slow; sleep 30",
            "trap '' TERM; " + waits_for(tmp_path, "never")]
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "".join('t3.micro,"%s"\n' % r for r in rows))
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d", "--max-runtime", "3s")
    assert run.returncode == 0, run.stderr
    until(lambda: states(box, job)[job + "3"] == "running", what="running")
    vanish(box, job, job + "3")
    until(lambda: sorted(states(box, job).values()) == ["failed (exit 124)", "failed (exit 3)", "lost", "succeeded"],
          what="every outcome")
    manifest = box.manifest(job, job + "0")
    assert manifest["launched"] <= manifest["install_started"] <= manifest["install_ended"] <= manifest["started"]
    prices(box)  # an account whose Price List API knows no price of these types
    bare = box.run("report.py", job, "--out", str(tmp_path / "bare.html"))
    assert bare.returncode == 0, bare.stderr
    assert "prices: no prices: none found for these instance types; pass --prices FILE" in bare.stdout

    prices(box, **{"t3.micro": 0.0125})
    out = tmp_path / "report.html"
    made = box.run("report.py", job, "--out", str(out))
    assert made.returncode == 0, made.stderr
    page = Page(out.read_text(encoding="utf-8"))
    bars = {key: classes for key, (classes, _) in page.bars.items()}
    every = ["launch", "install", "run", "upload"]
    expected = {0: ("succeeded", every), 1: ("failed", every), 2: ("timed-out", every),
                3: ("lost", ["launch", "install", "run"])}  # a lost row uploaded nothing
    assert bars == {(job + str(i), phase): {"bar", phase, outcome}
                    for i, (outcome, phases) in expected.items() for phase in phases}
    titles = {tag: title for (tag, phase), (_, title) in page.bars.items() if phase == "run"}
    assert titles[job + "0"].startswith("%s0: run (succeeded, exit 0)\necho fine\n" % job)
    assert titles[job + "1"].startswith("%s1: run (failed, exit 3)\necho broken >&2; exit 3\n" % job)
    assert titles[job + "2"].startswith("%s2: run (timed out, exit 124)\necho slow; sleep 30\n" % job)
    assert titles[job + "3"].startswith("%s3: run (lost)\n" % job)
    assert sorted(page.lanes) == sorted(job + str(i) for i in range(4))  # one machine per row
    text = " ".join(page.text)
    assert "broken" in text and "slow" in text  # the failed rows' log tails
    lines = made.stdout.splitlines()
    assert lines[0] == "job %s: 4 rows: 1 succeeded, 1 failed, 1 timed out, 1 lost; 4 machines" % job
    assert lines[-2] == "prices: on-demand prices from the AWS Price List API (%s)" % box.env["AWS_REGION"]
    billed = 4 * 60 / 3600 * 0.0125  # each machine ran under a minute: 60 s is billed
    assert lines[-3].startswith("cost: t3.micro: 4 machines, ") and lines[-3].endswith(", $%.6f" % billed)
    assert lines[-1] == "report: %s" % out
    assert "Prices: on-demand prices from the AWS Price List API" in text and "Estimated total: $" in text
    assert "0.0125" in text  # the price, per hour
    os.remove(os.path.join(box.env["AWSRUN_SANDBOX"], "account.json"))


def test_report_says_what_is_missing_in_one_line(box, tmp_path):
    job = "rep-none"
    no_bucket_then_no_results(box, job, "report.py")
    box.s3.put_object(Bucket=job, Key="_awsrun/%s0/exit=0,runtime=1" % job, Body=b"")   # marker, no manifest
    partial = box.run("report.py", job, "--out", str(tmp_path / "r.html"))
    assert partial.returncode == 0, partial.stderr
    assert partial.stderr == ("%s0: its outcome marker is in the bucket but not its manifest (its upload did not "
                              "finish): shown without its times\n" % job)
    assert partial.stdout.splitlines()[0] == "job %s: 1 row: 1 succeeded; 0 machines" % job
    bad = write(tmp_path / "prices.csv", "type,usd\nt3.micro,1\n")
    assert box.run("report.py", job, "--prices", bad).stderr == (
        "error: --prices %s must be a CSV with the columns instance_type,price_per_hour (US dollars per hour)\n" % bad)


# ---------------------------------------------------------------------------- prices

USED = {("t3.micro", False): {"start": 1_780_000_000, "end": 1_780_003_600},
        ("c5.large", True): {"start": 1_780_000_000, "end": 1_780_003_600}}


@pytest.fixture
def region(aws_env, monkeypatch):
    """Throwaway credentials and a region of their own (the shared session is made again)."""
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cs.session.cache_clear()
    cs.client.cache_clear()
    yield "eu-west-1"
    cs.session.cache_clear()
    cs.client.cache_clear()


def test_prices_come_from_the_price_list_api_and_the_spot_history(region):
    session = cs.session()
    pricing = session.client("pricing", region_name="us-east-1")
    ec2 = session.client("ec2", region_name=region)
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in (
        ("instanceType", "t3.micro"), ("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
        ("preInstalledSw", "NA"), ("capacitystatus", "Used"), ("licenseModel", "No License required"))]
    with Stubber(pricing) as p, Stubber(ec2) as e:
        p.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            json.dumps(sandbox_ec2.price_product("t3.micro", region, 0.0114))]},
            {"ServiceCode": "AmazonEC2", "Filters": filters, "MaxResults": 10})
        e.add_response("describe_spot_price_history", {"SpotPriceHistory": [
            {"AvailabilityZone": region + z, "InstanceType": "c5.large", "ProductDescription": "Linux/UNIX",
             "SpotPrice": usd, "Timestamp": "2026-05-28T20:00:00Z"}
            for z, usd in (("a", "0.0300"), ("b", "0.0400"), ("a", "0.0500"))] + [
            {"AvailabilityZone": region + "a", "InstanceType": "c5.large", "ProductDescription": "Windows",
             "SpotPrice": "9.0", "Timestamp": "2026-05-28T20:00:00Z"}]},
            {"InstanceTypes": ["c5.large"], "StartTime": 1_780_000_000, "EndTime": 1_780_003_600})
        found, source = cost.price_list(USED, pricing=pricing, ec2=ec2)
    assert found == {("t3.micro", False): 0.0114, ("c5.large", True): pytest.approx(0.04)}
    assert source == ("on-demand prices from the AWS Price List API (eu-west-1); spot prices of the run's hours "
                      "from DescribeSpotPriceHistory")


def test_without_the_price_list_api_a_prices_file_or_hours_only(region, tmp_path):
    pricing = cs.session().client("pricing", region_name="us-east-1")
    with Stubber(pricing) as p:
        p.add_client_error("get_products", "AccessDeniedException", "not authorized to perform: pricing:GetProducts",
                           400)
        found, source = cost.price_list({("t3.micro", False): USED[("t3.micro", False)]}, pricing=pricing)
    assert (found, source) == ({}, "no prices: the AWS Price List API could not be read (AccessDeniedException); "
                                   "pass --prices FILE (instance_type,price_per_hour) for dollars")
    table = write(tmp_path / "prices.csv", "\ufeffinstance_type,price_per_hour\nt3.micro,0.02\nc5.large,0.1\n")
    assert cost.price_list(USED, table) == ({("t3.micro", False): 0.02, ("c5.large", True): 0.1},
                                              "prices from %s" % table)


def test_a_report_reads_one_listing_and_one_manifest_per_row(box, tmp_path):
    job, count = "rep-many", 200
    box.s3.create_bucket(Bucket=job)

    def put(i):
        tag = "%s%d" % (job, i)
        manifest = {"job": job, "tag": tag, "instance_id": "i-%017d" % i, "instance_type": "t3.micro",
                    "command": "echo %d" % i, "exit_code": 0, "launched": "2026-11-29T10:00:00Z",
                    "install_started": "2026-11-29T10:00:30Z", "install_ended": "2026-11-29T10:01:00Z",
                    "started": "2026-11-29T10:01:05Z", "ended": "2026-11-29T10:0%d:05Z" % (2 + i % 3),
                    "uploaded": "2026-11-29T10:05:09Z", "files": [], "timed_out": False}
        box.s3.put_object(Bucket=job, Key=tag + "/manifest.json", Body=json.dumps(manifest).encode())
        box.s3.put_object(Bucket=job, Key="_awsrun/%s/exit=0,runtime=60" % tag, Body=b"")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    before = len(box.decisions())
    made = box.run("report.py", job, "--out", str(tmp_path / "r.html"))
    assert made.returncode == 0, made.stderr
    calls = Counter(d["action"] for d in box.decisions()[before:] if d.get("principal") == "user")
    # One GET per manifest, and one for the job's budget record (it has none)
    assert calls == {"s3:ListBucket": 1, "s3:GetObject": count + 1, "ec2:DescribeInstances": 1,
                     "pricing:GetProducts": 1}
    assert made.stdout.splitlines()[0] == "job %s: %d rows: %d succeeded; %d machines" % (job, count, count, count)
    running = sum(60 * (1 + i % 3) for i in range(count)) / 3600
    assert "cost: t3.micro: %d machines, %.3f h running a row" % (count, running) in made.stdout


def test_every_manifest_says_where_its_row_ran_and_collect_and_the_report_show_it(box, tmp_path):
    job = "collect-host"
    run_job(box, job, ["printf 'seed,t\\n1,0.5\\n' > output/r.csv"])
    instance = box.instances(job)[0]
    with open("/proc/cpuinfo") as f:  # the sandbox's nodes run on this machine
        cpu = next(line.partition(":")[2].strip() for line in f if line.startswith("model name"))
    with open("/proc/meminfo") as f:
        memory = next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal:"))
    version = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    host = {"instance_type": "t3.micro", "instance_id": instance["InstanceId"],
            "zone": instance["Placement"]["AvailabilityZone"], "lifecycle": "on-demand", "ami": instance["ImageId"],
            "kernel": platform.release(), "cpu_model": cpu, "cpus": os.cpu_count(), "memory_mb": memory,
            "attempt": 1, "awsrun": version}
    assert box.manifest(job, job + "0")["host"] == host
    out = tmp_path / "collected.csv"
    run = box.run("collect.py", job, "--with", "host", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert table(out) == [
        ["tag", "command", "exit_code", "file"] + list(host) + ["seed", "t"],
        [job + "0", "printf 'seed,t\\n1,0.5\\n' > output/r.csv", "0", "output/r.csv"] + [str(v) for v in host.values()]
        + ["1", "0.5"]]
    page = tmp_path / "report.html"
    assert box.run("report.py", job, "--out", str(page)).returncode == 0
    _, title = Page(page.read_text(encoding="utf-8")).bars[(job + "0", "run")]
    assert "t3.micro (%s) in %s, on-demand\n%s, %d vCPUs" % (host["instance_id"], host["zone"], cpu,
                                                            os.cpu_count()) in title
