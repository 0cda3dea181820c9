"""Write a job file from a grid of values: one row per combination. Runs on the user's machine.

    python sweep.py 'python solve.py --solver {solver} --seed {seed}' solver=cbc,highs,scip \\
        seed=1..5 --type c5.large -o awsjobs/grid.csv
    python sweep.py 'python solve.py {solver} {file}' solver=@solvers.txt file='instances/*.mps' \\
        --code ~/src/x --type {type} type=c5.large,c5.xlarge

Each {NAME} in the template (and in --type) is replaced by one of NAME's values; `${NAME}`, the
shell's, is left alone. A value is shell-quoted where it needs quoting (a space, a quote, a
`$`), so the row's command runs with it as one word: write {NAME} bare, not in quotes.

VALUES is one of:
    a,b,c             these values
    1..20  0..100..10 integers from the first to the last, inclusive (by the step); 01..20 keeps
                      the width
    @FILE             one value a line (blank lines and lines starting with # are skipped)
    instances/*.mps   files matching the glob (*, ?, [...], ** for any depth) under --code, as
                      paths relative to it, which is each row's work directory on its machine

The rows come in a stable order: the first NAME changes slowest, each NAME's values in the
order given (a glob's sorted). A grid of more than --max-rows rows (10,000) is refused unless
--max-rows says it is meant.
"""
from __future__ import annotations

import argparse
import csv
import glob
import itertools
import os
import re
import shlex
import sys

from cloud_setup import UserError, alternatives, leave, log, run_cli
from dispatcher import HEADER, INSTANCE_TYPE

PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?")
GLOB = re.compile(r"[*?[]")
MAX_ROWS = 10000


def values(name, spec, code):
    """The list of values that VALUES `spec` stands for; UserError (exit 2) if it is empty."""
    if spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as f:
                found = [line.rstrip("\r\n") for line in f]
        except OSError as e:
            raise UserError("%s=%s: %s" % (name, spec, e.strerror), code=2) from None
        found = [v for v in found if v.strip() and not v.startswith("#")]
    elif RANGE.fullmatch(spec):
        first, last, step = RANGE.fullmatch(spec).groups()
        step = int(step or 1)
        if step < 1:
            raise UserError("%s=%s: the step must be 1 or more" % (name, spec), code=2)
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        ahead = 1 if int(last) >= int(first) else -1
        found = [str(n).zfill(width) for n in range(int(first), int(last) + ahead, ahead * step)]
    elif GLOB.search(spec):
        found = files(name, spec, code)
    else:
        found = spec.split(",") if spec else []
    if not found or any(v == "" for v in found):
        raise UserError("%s=%s has %s: give a,b,c, a range 1..20, @FILE or a glob"
                        % (name, spec, "an empty value" if found else "no values"), code=2)
    return found


def files(name, pattern, code):
    """The files under `code` that match `pattern`, sorted, as paths relative to `code`."""
    if os.path.isabs(pattern) or ".." in pattern.split("/"):
        raise UserError("%s=%s: a glob is of files under --code, relative to it" % (name, pattern), code=2)
    found = sorted(p for p in glob.glob(pattern, root_dir=code, recursive=True)
                   if os.path.isfile(os.path.join(code, p)))
    if not found:
        raise UserError("%s=%s: no file under %s matches it (--code sets the folder)"
                        % (name, pattern, os.path.abspath(code)), code=2)
    return found


def parse_grid(specs, code):
    """NAME=VALUES arguments -> [(name, values)], in the order given."""
    grid = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserError("%r is not NAME=VALUES (e.g. seed=1..5)" % spec, code=2)
        if name in dict(grid):
            raise UserError("%s= is given twice: list every value in one" % name, code=2)
        grid.append((name, values(name, rest, code)))
    return grid


def fill(text, combination, quote):
    return PLACEHOLDER.sub(lambda m: quote(combination[m.group(1)]), text)


def rows(template, itype, grid, max_rows=MAX_ROWS):
    """(instance_type, command) for every combination of the grid's values."""
    names = [name for name, _ in grid]
    used = set(PLACEHOLDER.findall(template)) | set(PLACEHOLDER.findall(itype))
    for name in sorted(used - set(names)):
        raise UserError("the template names {%s}, but no %s=VALUES is given" % (name, name), code=2)
    for name in names:
        if name not in used:
            raise UserError("%s= is not used: put {%s} in the template or in --type" % (name, name), code=2)
    count = 1
    for _, found in grid:
        count *= len(found)
    if count > max_rows:
        raise UserError("the grid has %d rows, more than --max-rows %d: pass --max-rows %d if you mean it"
                        % (count, max_rows, count), code=2)
    made = []
    for combination in itertools.product(*(found for _, found in grid)):
        chosen = dict(zip(names, combination))
        row_type = fill(itype, chosen, str)
        if not all(INSTANCE_TYPE.fullmatch(t) for t in alternatives(row_type)):
            raise UserError("--type %s gives %r, which is not an instance type like t3.micro (or a list, "
                            "c5.large|c5a.large)" % (itype, row_type), code=2)
        made.append((row_type, fill(template, chosen, shlex.quote)))
    return made


def write(made, out):
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(made)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("template", help="the command, with a {NAME} for each NAME=VALUES")
    p.add_argument("grid", nargs="+", metavar="NAME=VALUES")
    p.add_argument("--type", required=True, help="the rows' instance type, or {NAME} for one from the grid")
    p.add_argument("-o", "--out", help="the job file to write (default: standard output)")
    p.add_argument("--code", default=".", help="the folder a glob's files are under (create's --code)")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS, help="the most rows written (%(default)s)")
    args = p.parse_intermixed_args(argv)  # the grid may come after --type

    def run():
        if not os.path.isdir(args.code):
            raise UserError("--code %s is not a folder" % args.code, code=2)
        made = rows(args.template, args.type, parse_grid(args.grid, args.code), args.max_rows)
        if not args.out:
            write(made, sys.stdout)
            return 0
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            write(made, f)
        log("wrote %d rows to %s" % (len(made), args.out))
        return 0
    return run_cli(run)


if __name__ == "__main__":
    leave(main())
