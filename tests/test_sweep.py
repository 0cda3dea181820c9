"""sweep.py, through the command a user types: the job file a grid makes, its mistakes as one
line each, and a grid's rows run in the strict sandbox."""
import csv
import os
import subprocess
import sys

from conftest import ROOT, write
from test_operate import until
from test_pool import FAST, rows_of


def sweep(*argv, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py")] + list(argv), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def job_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_a_grid_of_files_ranges_and_types_makes_one_row_per_combination(tmp_path):
    for name in ("instances/a.mps", "instances/b c.mps", "instances/deep/d.mps", "instances/notes.txt"):
        write(tmp_path / "src" / name, "x")
    made = sweep("solve --file {file} --seed {seed} > output/{seed}.txt", "file=instances/**/*.mps", "seed=08..10",
                 "--type", "{type}", "type=c5.large,m5.large", "--code", "src", "-o", "awsjobs/grid.csv", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stderr == "wrote 18 rows to awsjobs/grid.csv\n"
    rows = job_rows(tmp_path / "awsjobs" / "grid.csv")
    assert rows[0] == ["instance_type", "command"]
    assert rows[1:4] == [["c5.large", "solve --file instances/a.mps --seed 08 > output/08.txt"],
                         ["m5.large", "solve --file instances/a.mps --seed 08 > output/08.txt"],
                         ["c5.large", "solve --file instances/a.mps --seed 09 > output/09.txt"]]
    assert rows[7] == ["c5.large", "solve --file 'instances/b c.mps' --seed 08 > output/08.txt"]
    assert rows[-1] == ["m5.large", "solve --file instances/deep/d.mps --seed 10 > output/10.txt"]


def test_values_from_a_file_and_a_descending_range_with_a_step_and_the_shells_own_braces(tmp_path):
    write(tmp_path / "solvers.txt", "cbc\n# not this one\n\nhigh s\n")
    made = sweep('run {solver} {n} "${HOME}" {n}', "solver=@solvers.txt", "n=10..1..4", "--type", "t3.micro",
                 cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    rows = list(csv.reader(made.stdout.splitlines()))
    assert rows[0] == ["instance_type", "command"] and {r[0] for r in rows[1:]} == {"t3.micro"}
    listed = sweep("run {n}", "n=1", "--type", "c5.large|c5a.large", cwd=tmp_path)  # tried in turn, as in a job file
    assert listed.stdout.splitlines()[1:] == ["c5.large|c5a.large,run 1"], listed.stderr
    assert [r[1] for r in rows[1:]] == ['run %s %d "${HOME}" %d' % (solver, n, n)
                                        for solver in ("cbc", "'high s'") for n in (10, 6, 2)]


def test_a_mistake_in_a_grid_is_one_line_and_writes_nothing(tmp_path):
    write(tmp_path / "src" / "a.mps", "x")
    cases = [
        (["x {a} {b}", "a=1", "--type", "t3.micro"], "the template names {b}, but no b=VALUES is given"),
        (["x {a}", "a=1", "b=2", "--type", "t3.micro"], "b= is not used: put {b} in the template or in --type"),
        (["x {a}", "a=", "--type", "t3.micro"], "a= has no values: give a,b,c, a range 1..20, @FILE or a glob"),
        (["x {a}", "a=1,,2", "--type", "t3.micro"], "a=1,,2 has an empty value: give a,b,c, a range 1..20, @FILE "
                                                    "or a glob"),
        (["x {a}", "a=@none.txt", "--type", "t3.micro"], "a=@none.txt: No such file or directory"),
        (["x {a}", "a=*.lp", "--code", "src", "--type", "t3.micro"],
         "a=*.lp: no file under %s matches it (--code sets the folder)" % (tmp_path / "src")),
        (["x {a}", "a=../*.mps", "--type", "t3.micro"], "a=../*.mps: a glob is of files under --code, relative to it"),
        (["x {a} {b}", "a=1..200", "b=1..100", "--type", "t3.micro"],
         "the grid has 20000 rows, more than --max-rows 10000: pass --max-rows 20000 if you mean it"),
        (["x {a}", "a=1,2", "--type", "{a}"], "--type {a} gives '1', which is not an instance type like t3.micro "
                                              "(or a list, c5.large|c5a.large)"),
        (["x {a}", "a=1", "a=2", "--type", "t3.micro"], "a= is given twice: list every value in one"),
        (["x", "seed", "--type", "t3.micro"], "'seed' is not NAME=VALUES (e.g. seed=1..5)"),
    ]
    for argv, said in cases:
        made = sweep(*argv, "-o", "jobs.csv", cwd=tmp_path)
        assert (made.returncode, made.stderr) == (2, "error: %s\n" % said), argv
    assert not (tmp_path / "jobs.csv").exists()
    confirmed = sweep("x {a} {b}", "a=1..200", "b=1..100", "--type", "t3.micro", "--max-rows", "20000",
                      "-o", "jobs.csv", cwd=tmp_path)
    assert confirmed.returncode == 0 and len(job_rows(tmp_path / "jobs.csv")) == 20001


def test_a_3_by_4_grid_runs_each_row_with_a_value_that_holds_a_space_as_one_word(box):
    job = "sweep-grid"
    folder = box.folder(job)
    write(folder / "greetings.txt", "hello world\nit's\nhi\n")
    made = sweep("printf '%s|%s\\n' {greeting} {n} > output/said.txt", "greeting=@greetings.txt", "n=1..4",
                 "--type", "t3.micro", "-o", "grid.csv", cwd=folder)
    assert made.returncode == 0, made.stderr
    run = box.run("dispatcher.py", "auto", job, str(folder / "grid.csv"), "-c", "-d", "--pool", "2", "--slots", "3",
                  env=FAST, timeout=240)
    assert run.returncode == 0, run.stderr
    tags = ["%s%d" % (job, i) for i in range(12)]
    until(lambda: {t: r["state"] for t, r in rows_of(box, job).items()} == dict.fromkeys(tags, "succeeded"),
          what="the grid's rows", timeout=180)
    said = [box.read(job, tag + "/output/said.txt") for tag in tags]
    assert said == ["%s|%d\n" % (g, n) for g in ("hello world", "it's", "hi") for n in range(1, 5)]
