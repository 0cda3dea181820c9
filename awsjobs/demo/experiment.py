"""A stand-in experiment for the demo: a small random walk, written under output/."""
import argparse
import os
import random
import time

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, required=True)
parser.add_argument("--plots", action="store_true", help="also write a subfolder of per-step files")
args = parser.parse_args()

random.seed(args.seed)
time.sleep(args.seed)  # a stand-in for real work: rows of different lengths, for the report's timeline
walk = [0]
for _ in range(1000):
    walk.append(walk[-1] + random.choice((-1, 1)))

print("node %s: seed %d, final position %d" % (os.environ.get("TAG"), args.seed, walk[-1]))
with open("output/summary.txt", "w") as f:
    f.write("tag=%s seed=%d final=%d max=%d\n" % (os.environ.get("TAG"), args.seed, walk[-1], max(walk)))
with open("output/result.csv", "w") as f:  # one line of numbers per row: `make collect` merges them
    f.write("seed,final,max,min\n%d,%d,%d,%d\n" % (args.seed, walk[-1], max(walk), min(walk)))
if args.plots:
    os.makedirs("output/plots", exist_ok=True)
    with open("output/plots/walk.csv", "w") as f:
        f.write("step,position\n")
        f.writelines("%d,%d\n" % (i, x) for i, x in enumerate(walk))
