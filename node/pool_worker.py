"""Runs ON a pool machine: takes rows from the job's SQS queue and runs them, SLOTS at a time,
until the queue has been empty for a while; then ends the machine. Started by run.sh.

    python3 .awsrun/pool_worker.py      # from the machine's work directory (run.sh does this)

Runs on the node image's own boto3 (Ubuntu 24.04's 1.34.46 or later) and the standard library.

For each row it gets (a message {tag, line, command}, long-polled):
- marks the start in the bucket, _awsrun/TAG/start=INSTANCE,attempt=K, beside the command;
- runs the command as one-machine-per-row mode does: bash, with TAG set, stopped at
  MAX_RUNTIME, in .awsrun/rows/TAG: a copy of the prepared work directory (copy-on-write
  where the file system can), so rows that run at once never share output/; the copy is made
  ahead, beside the rows, so that a row takes one that is ready (renamed) rather than wait for
  it (no row is received ahead, though: a row waiting on a machine that is lost would count
  an attempt toward --max-attempts without having run);
- keeps the message invisible to other machines while the row runs (a heartbeat of
  ChangeMessageVisibility every LEASE/3 seconds), so that a lost machine's row comes back
  to the queue within LEASE seconds;
- frees its slot as soon as the command ends: the next row starts while this one's results
  upload beside it (at most SLOTS uploads at once; no new row is taken while a finished row
  waits for one of them);
- uploads the results with save_results.py's code, and deletes the message only once the
  manifest and the outcome marker are in the bucket; then removes the row's folder.

A row whose upload failed is handed back to the queue and its files are kept: the worker takes
no new row, and exits UPLOAD_FAILED (run.sh then keeps the machine up for the upload hold). On a spot
machine, the interruption notice hands every row whose command runs back at once (their results
here are not uploaded: another machine runs them again); rows whose commands have ended still
upload, their messages kept, and the machine ends only when every upload in flight has ended.
Settings come from .awsrun/node.json, written by the dispatcher: queue_url, slots (0: one per
CPU), lease, idle.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

import cloud_setup as cs
import job_state
import save_results

HERE = os.path.dirname(os.path.abspath(__file__))  # the machine's .awsrun/, with row.sh beside this file
ROWS = os.path.join(".awsrun", "rows")
TICK = 5.0  # seconds between looks at the spot interruption notice
REARM = 600  # seconds between moves of a busy machine's OS shutdown


class Worker:
    def __init__(self, node):
        self.node = node
        self.slots = int(node.get("slots") or 0) or os.cpu_count() or 1
        self.lease, self.idle = int(node.get("lease") or 120), int(node.get("idle") or 180)
        session = cs.node_session(node["region"])
        self.sqs = session.client("sqs", config=cs.retries(10, max_pool_connections=max(10, self.slots + 4)))
        self.s3, self.ec2 = save_results.clients(node)
        self.uploads = self.slots  # uploads at once; no new row while more finished rows than this wait
        self.lock = threading.Condition()
        self.running = {}         # message id -> [tag, receipt handle, phase]: "run", "upload" or "handed back"
        self.in_flight = threading.BoundedSemaphore(self.uploads)
        self.markers = ThreadPoolExecutor(self.slots)  # start markers, written beside the commands
        self.copier = ThreadPoolExecutor(1)  # the spare copy of the work directory, made beside the rows
        self.spares_made = 0
        self.spare = self.copier.submit(self.copy_work_directory)
        self.done = []            # (command start, end) of every row, by time.time(): the summary
        self.unused = list(range(self.slots))  # the slots free for a row, and when each was freed
        self.freed = [time.time()] * self.slots
        self.gaps = []            # each row's slot: (free without a row, taking it until its command starts), s
        self.stopping = threading.Event()  # take no more rows
        self.finished = threading.Event()  # no row runs any more: the heartbeat stops
        self.upload_failed = False
        self.interrupted = False  # the spot notice came: the rows then running were handed back
        self.armed = None         # the shutdown that guard.sh last scheduled: busy or idle
        self.armed_at = 0.0
        self.budget_end = cs.parse_time(node.get("budget_end") or "")  # under --budget: the machine's end
        self.margin = int(node.get("upload_margin") or 300)

    # -- the loop

    def work(self):
        """Take rows while there are any; returns the exit status for run.sh."""
        threading.Thread(target=self.heartbeat, daemon=True).start()
        threads, idle_since = [], time.monotonic()
        while not self.stopping.is_set():
            with self.lock:
                while self.free() <= 0 and not self.stopping.is_set():
                    self.lock.wait(1.0)
                free = self.free()
            if self.stopping.is_set():
                break
            if self.out_of_budget():
                print("the budget's end is too near for another row: taking no more", flush=True)
                break
            asked = time.perf_counter()
            messages = self.receive(min(10, free))
            if messages:
                print("received %d rows in %.0f ms" % (len(messages), (time.perf_counter() - asked) * 1000), flush=True)
            threads = [t for t in threads if t.is_alive()]
            for message in messages:
                with self.lock:  # in its slot before the next receive
                    self.running[message["MessageId"]] = [message.get("Body", "")[:80], message["ReceiptHandle"],
                                                          "run"]
                    slot = self.unused.pop()
                thread = threading.Thread(target=self.run_row, args=(message, slot, time.time()))
                thread.start()
                threads.append(thread)
            with self.lock:
                busy = bool(self.running)
            if messages or busy:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle:
                break
            else:
                self.arm(busy=False)
        for thread in threads:  # every row, and every upload in flight, ends before the machine does
            thread.join()
        self.finished.set()
        self.markers.shutdown()
        self.copier.shutdown()
        if self.spare.exception() is None:
            shutil.rmtree(self.spare.result(), ignore_errors=True)
        self.summary()
        return save_results.UPLOAD_FAILED if self.upload_failed else 0

    def free(self):
        """Slots free for new rows (call with the lock held): none while a finished row waits
        for one of the `uploads` in flight, so that finished rows do not pile up."""
        if [r[2] for r in self.running.values()].count("upload") > self.uploads:
            return 0
        return len(self.unused)

    def summary(self):
        """One line for the machine's log: when its rows' commands ran, its slots' time per row
        beyond them (what awsrun costs a row), and the median time a slot went from one command
        to the next: free without a row (receiving it, or waiting for an upload to end) and
        taking it (its folder, its start). make bench reads it."""
        if not self.done:
            return
        first, last = min(s for s, _ in self.done), max(e for _, e in self.done)
        commands = sum(e - s for s, e in self.done) / len(self.done)
        print("%d rows on %d slots, their commands from %.3f to %.3f (%.1f s): %.0f ms of slot time per row beyond "
              "its command (%.0f ms); between commands a slot was free without a row %.0f ms and took the next one "
              "%.0f ms (medians)" % (
                  len(self.done), self.slots, first, last, last - first,
                  (self.slots * (last - first) / len(self.done) - commands) * 1000, commands * 1000,
                  statistics.median(w for w, _ in self.gaps) * 1000, statistics.median(t for _, t in self.gaps) * 1000),
              flush=True)

    def arm(self, busy):
        """Move the machine's OS shutdown (node/guard.sh): while rows run, to the row runtime's
        limit and an hour for the upload; while idle, to the idle period and 10 minutes, so that
        a worker that hangs still ends its machine. While busy it is moved on at most every
        REARM seconds (a row started since then still has most of that hour): each move costs
        a shell and two `shutdown` calls, half a second per row in the sandbox."""
        with self.lock:
            if self.armed == ("busy" if busy else "idle") and (not busy or time.monotonic() < self.armed_at + REARM):
                return
            self.armed, self.armed_at = "busy" if busy else "idle", time.monotonic()
        if busy:
            self.guard("runtime", self.node.get("max_runtime") or 0)
        else:
            self.guard("hold", self.idle + 600)

    def receive(self, count):
        """Up to `count` messages, long-polled (at most 20 s, SQS's longest wait)."""
        try:
            return self.sqs.receive_message(
                QueueUrl=self.node["queue_url"], MaxNumberOfMessages=count, WaitTimeSeconds=min(20, self.idle),
                VisibilityTimeout=self.lease, AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        except (BotoCoreError, ClientError) as e:
            print("could not read the queue, trying again: %s" % e, file=sys.stderr)
            self.stopping.wait(5)
            return []

    def heartbeat(self):
        """Keep the message of every row held here (running or uploading) invisible; on a spot
        interruption notice, hand back at once the rows whose commands run, and take no more."""
        last = time.monotonic()
        while not self.finished.wait(min(TICK, self.lease / 3)):
            if self.node.get("spot") and not self.interrupted and spot_interrupted():
                print("spot interruption notice: handing back every running row", file=sys.stderr)
                self.interrupted = True
                self.stopping.set()
                self.hand_back_running()
            if time.monotonic() - last >= self.lease / 3:
                last = time.monotonic()
                self.change_all(self.lease)

    def hand_back_running(self):
        """The rows whose commands run go back to the queue at once; uploads go on."""
        with self.lock:
            back = [r for r in self.running.values() if r[2] == "run"]
            for r in back:
                r[2] = "handed back"
        for _, handle, _ in back:
            self.release(handle)

    def change_all(self, seconds):
        with self.lock:
            handles = [r[:2] for r in self.running.values() if r[2] != "handed back"]
        for tag, handle in handles:
            try:
                self.sqs.change_message_visibility(QueueUrl=self.node["queue_url"], ReceiptHandle=handle,
                                                   VisibilityTimeout=seconds)
            except (BotoCoreError, ClientError) as e:
                print("%s: could not keep its row: %s" % (tag, e), file=sys.stderr)

    # -- one row

    def run_row(self, message, slot, received):
        handle, held = message["ReceiptHandle"], True
        attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        tag, times, last = message.get("MessageId"), [], time.perf_counter()

        def lap(what):
            nonlocal last
            now = time.perf_counter()
            times.append("%s %.0f" % (what, (now - last) * 1000))
            last = now
        try:
            row = json.loads(message["Body"])
            tag = row["tag"]
            with self.lock:
                self.running[message["MessageId"]][0] = tag
            marked = self.markers.submit(self.s3.put_object, Bucket=self.node["bucket"], Body=b"",
                                         Key=job_state.start_key(tag, self.node["instance_id"], attempt))
            self.arm(busy=True)
            info = dict(self.node, tag=tag, command=row["command"], attempt=attempt, machine=self.node["tag"],
                        slots=self.slots)
            root = self.make_folder(info)
            lap("copy")
            began = time.time()
            self.run_command(root)
            ended = time.time()
            lap("run")
            with self.lock:  # the slot is free; the results upload beside the next row
                self.gaps.append((received - self.freed[slot], began - received))
                self.free_slot(slot, ended)
                held = False
                entry = self.running[message["MessageId"]]
                if entry[2] == "handed back":  # another machine runs it now; this one is about to end
                    return
                entry[2] = "upload"
            with self.in_flight:
                lap("wait")
                marked.result()
                lap("mark")
                code = save_results.save(info, root, (self.s3, self.ec2), end_node=False)
                lap("upload")
            if code == 0:
                self.sqs.delete_message(QueueUrl=self.node["queue_url"], ReceiptHandle=handle)
                shutil.rmtree(root, ignore_errors=True)
                lap("delete")
                with self.lock:
                    self.done.append((began, ended))
                print("%s attempt %d: %s (ms)" % (tag, attempt, ", ".join(times)), flush=True)
            else:
                self.upload_failed = True
                self.stopping.set()
                self.release(handle)
        except Exception as e:  # this row's failure never stops the others: it goes back to the queue
            print("%s: %s: %s" % (tag, type(e).__name__, e), file=sys.stderr)
            with self.lock:
                handed_back = self.running[message["MessageId"]][2] == "handed back"
            if not handed_back:
                self.release(handle)
        finally:
            with self.lock:
                if held:
                    self.free_slot(slot, time.time())
                self.running.pop(message["MessageId"], None)
                self.lock.notify_all()

    def free_slot(self, slot, when):
        """The row's command has ended (or never started): its slot takes the next row. With
        the lock held."""
        self.unused.append(slot)
        self.freed[slot] = when
        self.lock.notify_all()

    def release(self, handle):
        try:
            self.sqs.change_message_visibility(QueueUrl=self.node["queue_url"], ReceiptHandle=handle,
                                               VisibilityTimeout=0)
        except (BotoCoreError, ClientError) as e:
            print("could not hand a row back (it comes back by itself): %s" % e, file=sys.stderr)

    def make_folder(self, info):
        """.awsrun/rows/TAG: a copy of the prepared work directory, its .awsrun/ holding the
        row's settings (`info`) and command and the machine's install logs and times. The spare
        copy is taken if it is ready (and the next one started), else one made now."""
        root = os.path.join(ROWS, info["tag"])
        shutil.rmtree(root, ignore_errors=True)
        with self.lock:
            spare = self.spare if self.spare.done() and self.spare.exception() is None else None
            if spare is not None:
                self.spare = self.copier.submit(self.copy_work_directory)
        if spare is not None:
            os.rename(spare.result(), root)
        else:
            self.copy_work_directory(root)
        with open(os.path.join(root, ".awsrun", "node.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, ensure_ascii=False)
        with open(os.path.join(root, ".awsrun", "command.sh"), "w", encoding="utf-8") as f:
            f.write(info["command"] + "\n")
        return root

    def copy_work_directory(self, root=None):
        """A copy of the work directory for a row, at `root` or at a new spare name: its files
        but for its own .awsrun/ and output/, an .awsrun/ with the machine's install logs and
        times (install.N.log, install_started, install_ended) and cloud_setup.py (update_tags.py's),
        and an empty output/. Returns its path."""
        if root is None:
            self.spares_made += 1
            root = os.path.join(ROWS, ".spare-%d" % self.spares_made)
            shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, ".awsrun"))
        entries = [e for e in sorted(os.listdir(".")) if e not in (".awsrun", "output", "screen_output.txt")]
        if entries:
            subprocess.run(["cp", "-a", "--reflink=auto", "-t", root] + entries, check=True)
        for name in os.listdir(".awsrun"):
            if name.startswith("install"):
                shutil.copy(os.path.join(".awsrun", name), os.path.join(root, ".awsrun", name))
        shutil.copy(os.path.join(".awsrun", "cloud_setup.py"), os.path.join(root, ".awsrun"))
        os.makedirs(os.path.join(root, "output"), exist_ok=True)
        return root

    def run_command(self, root):
        """The row's command, by the one row runner (row.sh, beside this file, as run.sh runs it);
        its exit code and times in .awsrun/."""
        subprocess.call(["bash", os.path.join(HERE, "row.sh")], cwd=root, stdin=subprocess.DEVNULL,
                        env=dict(os.environ, TAG=os.path.basename(root),
                                 MAX_RUNTIME=str(int(self.node.get("max_runtime") or 0)),
                                 BUDGET_END=str(self.budget_end or ""), UPLOAD_MARGIN=str(self.margin)))

    def out_of_budget(self):
        """Under a budget: whether a row started now could not end, and upload, before the
        machine must end; such a row is left in the queue."""
        expected = self.node.get("row_expected") or self.node.get("max_runtime") or 0
        return bool(self.budget_end) and time.time() + expected + self.margin + 60 > self.budget_end  # as row.sh

    def guard(self, what, seconds):
        """node/guard.sh: the machine's OS shutdown, moved as rows start and the worker idles."""
        subprocess.call(["bash", ".awsrun/guard.sh", what, str(int(seconds))], stdin=subprocess.DEVNULL)

    def end(self):
        """The queue is done with: tag the machine ended and terminate it (run.sh's OS shutdown
        backs this)."""
        save_results.mark(self.ec2, self.node, "ended")
        save_results.end(self.ec2, self.node)


def spot_interrupted():
    """Whether EC2 has scheduled this spot instance's interruption (IMDSv2)."""
    return "spot/instance-action" in cs.instance_metadata("spot/instance-action")


def main():
    with open(os.path.join(".awsrun", "node.json"), encoding="utf-8") as f:
        node = json.load(f)
    worker = Worker(node)
    code = worker.work()
    if code == 0:
        worker.end()
    return code


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
