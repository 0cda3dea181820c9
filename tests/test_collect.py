"""End-to-end tests of `make collect` (collect.py) in the sandbox: every row's CSV files in one
table, from the bucket and from a fetched folder, and one clear line when there is nothing to
collect."""
import csv

from conftest import write
from test_operate import states, until


def run_job(box, job, rows):
    jobs = write(box.folder(job) / "jobs.csv", "instance_type,command\n" + "".join(
        't3.micro,"%s"\n' % r.replace('"', '""') for r in rows))
    run = box.run("dispatcher.py", "auto", job, jobs, "-c", "-d")
    assert run.returncode == 0, run.stderr
    until(lambda: all(s.startswith(("succeeded", "failed")) and "ending" not in s for s in states(box, job).values())
          and len(states(box, job)) == len(rows), what="every row")


def table(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_collect_merges_headers_that_differ_a_bom_and_quoted_commas(box, tmp_path):
    job = "collect-mix"
    run_job(box, job, [
        r"printf '\xef\xbb\xbfseed,loss\n1,0.5\n2,0.25\n' > output/r.csv",          # Excel's BOM
        "printf 'loss,note\\n0.75,\"a, b\"\\n' > output/r.csv; exit 3",               # other columns, a comma
        "echo no table here > output/notes.txt",                                     # no CSV at all
        "printf '' > output/empty.csv; printf 'seed\\n9\\n' > output/z.csv"])         # an empty file
    out = tmp_path / "collected.csv"
    run = box.run("collect.py", job, "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert table(out) == [
        ["tag", "command", "exit_code", "file", "seed", "loss", "note"],
        [job + "0", r"printf '\xef\xbb\xbfseed,loss\n1,0.5\n2,0.25\n' > output/r.csv", "0", "output/r.csv",
         "1", "0.5", ""],
        [job + "0", r"printf '\xef\xbb\xbfseed,loss\n1,0.5\n2,0.25\n' > output/r.csv", "0", "output/r.csv",
         "2", "0.25", ""],
        [job + "1", "printf 'loss,note\\n0.75,\"a, b\"\\n' > output/r.csv; exit 3", "3", "output/r.csv",
         "", "0.75", "a, b"],
        [job + "3", "printf '' > output/empty.csv; printf 'seed\\n9\\n' > output/z.csv", "0", "output/z.csv",
         "9", "", ""]]
    assert "%s3/output/empty.csv: its header could not be read (the file is empty): left out" % job in run.stderr
    assert "1 rows had no file matching 'output/*.csv': %s2" % job in run.stderr
    assert "collected 4 rows from 3 files of 4 results into %s" % out in run.stderr

    fetched = tmp_path / "fetched"
    assert box.run("get_s3_files.py", job, str(fetched)).returncode == 0
    again = box.run("collect.py", job, "--from", str(fetched), "--out", str(tmp_path / "again.csv"))
    assert again.returncode == 0, again.stderr
    assert table(tmp_path / "again.csv") == table(out)


def no_bucket_then_no_results(box, job, script):
    """`script JOB` on a bucket that does not exist, then on an empty one (made here): one
    line each, exit 1."""
    gone = box.run(script, job)
    assert (gone.returncode, gone.stderr) == (1, "error: bucket %s does not exist: check BUCKET= (it is the job "
                                                 "name unless you gave --bucket)\n" % job)
    box.s3.create_bucket(Bucket=job)
    empty = box.run(script, job)
    assert (empty.returncode, empty.stderr) == (1, "error: job %s has no results in s3://%s yet: see `make status "
                                                   "JOB=%s`\n" % (job, job, job))


def test_collect_says_what_is_missing_in_one_line(box, tmp_path):
    job = "collect-none"
    no_bucket_then_no_results(box, job, "collect.py")
    box.s3.put_object(Bucket=job, Key="_awsrun/%s0/exit=0,runtime=1" % job, Body=b"")   # marker, no manifest
    box.s3.put_object(Bucket=job, Key="%s0/output/r.csv" % job, Body=b"a\n1\n")
    partial = box.run("collect.py", job)
    assert partial.returncode == 1
    assert partial.stderr.splitlines() == [
        "%s0: its outcome marker is in the bucket but not its manifest (its upload did not finish): left out" % job,
        "error: job %s has no results in s3://%s yet: see `make status JOB=%s`" % (job, job, job)]
    nothing = box.run("collect.py", job, "--from", str(tmp_path / "nowhere"))
    assert (nothing.returncode, nothing.stderr) == (2, "error: --from %s is not a folder: fetch the job first "
                                                       "(make fetch)\n" % (tmp_path / "nowhere"))

