"""Pool mode on the user's machine: the job's SQS queues, how many pool machines to launch,
putting rows in the queues, and the placement (Pool) that dispatcher.py chooses with --pool in
place of one machine per row. The machines' side is node/pool_worker.py.

One queue per job and instance type, awsrun-JOB--TYPE (dots as hyphens), each with a
dead-letter queue awsrun-JOB--TYPE-dlq that takes a row once it has been received
--max-attempts times without being deleted: a row whose machine was lost that often. Both
keep a message 14 days (SQS's longest), so a long sweep never loses a queued row. Every queue
is tagged awsrun:job and deleted by `clean`.
"""
from __future__ import annotations

import functools
import json
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

import cloud_setup as cs
import cost
import launch
import job_state
from cloud_setup import UserError, log

RETENTION = 14 * 24 * 3600
# A queue made a moment ago answers "does not exist" for about a second (SQS Developer Guide);
# the JSON protocol names that error QueueDoesNotExist, the query protocol by its old name.
NO_QUEUE = ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue")
NAME_TAKEN = ("QueueNameExists", "QueueAlreadyExists")
DELETED_RECENTLY = ("QueueDeletedRecently", "AWS.SimpleQueueService.QueueDeletedRecently")
PURGING = ("PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress")
BODY_LIMIT = 200_000  # bytes of message bodies per SendMessageBatch call (SQS allows 256 KiB)
# SQS keeps a received message from other consumers for 12 hours at most (ChangeMessageVisibility
# is refused beyond that), so a pool row, with its copy and upload, must end well within it.
MAX_RUNTIME = 11 * 3600


def lease():
    """Seconds a pool row's message stays invisible without a heartbeat: a lost machine's row
    is back in the queue this long after the loss."""
    return int(cs.awsrun_env("POOL_LEASE", 120))


def idle():
    """Seconds a pool machine waits on an empty queue before it ends itself: longer than the
    lease, so that a row lost near the end still finds a machine."""
    return int(cs.awsrun_env("POOL_IDLE", lease() + 60))


def queue_name(job, instance_type):
    name = cs.queue_prefix(job) + instance_type.replace(".", "-")
    if len(name) + 4 > 80:  # SQS names: at most 80 characters, with "-dlq" for the dead letters
        raise UserError("job name %r is too long for pool mode with %s (queue names are at most 80 "
                        "characters): use a job name of at most %d characters"
                        % (job, instance_type, len(job) - (len(name) + 4 - 80)), code=2)
    return name


def ensure_queues(job, types, attempts):
    """The queue of every instance type, with its dead-letter queue after `attempts`
    receives; made if missing, and set to `attempts` if it exists. Returns {type: URL}."""
    sqs, urls = cs.client("sqs"), {}
    for itype in sorted(types):
        name = queue_name(job, itype)
        dead = make_queue(sqs, name + "-dlq", job, {"MessageRetentionPeriod": str(RETENTION)})
        arn = cs.retrying(functools.partial(sqs.get_queue_attributes, QueueUrl=dead, AttributeNames=["QueueArn"]),
                          cs.error_code_in(*NO_QUEUE), 30)["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(attempts)})
        urls[itype] = make_queue(sqs, name, job, {"MessageRetentionPeriod": str(RETENTION), "RedrivePolicy": redrive})
    return urls


def make_queue(sqs, name, job, attributes):
    """CreateQueue, tagged with the job; a queue of that name with other settings gets these."""
    try:
        return sqs.create_queue(QueueName=name, Attributes=attributes, tags={cs.JOB_TAG: job})["QueueUrl"]
    except ClientError as e:
        if cs.error_code(e) in NAME_TAKEN:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            return url
        if cs.error_code(e) not in DELETED_RECENTLY:
            raise
        raise UserError("queue %s was deleted less than a minute ago (by `make clean`), and SQS does not take "
                        "the name again before then: run create again in a minute" % name) from None


def job_queues(job):
    """{instance type with dots as hyphens: (URL, dead-letter URL)} of the job's queues: one
    ListQueues call."""
    prefix = cs.queue_prefix(job)
    urls = cs.client("sqs").list_queues(QueueNamePrefix=prefix, MaxResults=1000).get("QueueUrls", [])
    names = {u.rsplit("/", 1)[1][len(prefix):]: u for u in urls}
    return {kind: (url, names.get(kind + "-dlq")) for kind, url in names.items() if not kind.endswith("-dlq")}


def queue_urls(job, types):
    """{instance type: URL} of the job's queues for these types; UserError if one is missing."""
    found = job_queues(job)
    missing = sorted(t for t in types if t.replace(".", "-") not in found)
    if missing:
        raise UserError("job %s has no queue for %s: run create with --pool first" % (job, " ".join(missing)))
    return {t: found[t.replace(".", "-")][0] for t in types}


def delete_queues(job):
    """Delete every queue of the job (clean). Returns how many."""
    sqs, count = cs.client("sqs"), 0
    for url, dead in job_queues(job).values():
        for u in filter(None, (url, dead)):
            try:
                sqs.delete_queue(QueueUrl=u)
                count += 1
            except ClientError as e:
                if cs.error_code(e) not in NO_QUEUE:
                    raise
    return count


def purge_dead_letters(job, types):
    """Empty the dead-letter queues of these types before their rows are queued again (retry).
    SQS takes one purge per queue a minute: a second one is skipped, its old messages harmless."""
    sqs = cs.client("sqs")
    for kind, (_, dead) in job_queues(job).items():
        if dead and kind in {t.replace(".", "-") for t in types}:
            try:
                sqs.purge_queue(QueueUrl=dead)
            except ClientError as e:
                if cs.error_code(e) not in PURGING + NO_QUEUE:
                    raise


def pool_size(spec, types, vcpus, spot=False):
    """{instance type: machines} for --pool N or auto. `types` is {type: its row count}: never
    more machines than rows. auto: as many as the vCPU quota of each quota group allows, shared
    out among the group's types in proportion to their rows."""
    if spec != "auto":
        return {t: min(int(spec), n) for t, n in types.items()}
    sizes, groups = {}, {}
    for t in types:
        groups.setdefault(launch.quota_family(t), []).append(t)
    for family, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        allowed = launch.vcpu_quota(family, spot) if family else None
        if allowed is None:
            raise UserError("--pool auto could not read the vCPU quota of %s: give the number of machines, "
                            "e.g. POOL=4 (--pool 4)" % " ".join(sorted(members)), code=2)
        rows = sum(types[t] for t in members)
        for t in sorted(members):
            sizes[t] = min(types[t], max(1, allowed * types[t] // rows // vcpus[t]))
        if sum(sizes[t] * vcpus[t] for t in members) > allowed:
            raise UserError("--pool auto: the vCPU quota of %s (%d) does not fit one machine of each type: "
                            "run the types as separate jobs" % (" ".join(sorted(members)), allowed))
    return sizes


def machine_plan(job, wanted, spec, vcpus, spot=False):
    """tag -> (0, instance type, None) of the pool machines for these rows (`wanted`)."""
    rows = {}
    for _line, itype, _command in wanted.values():
        rows[itype] = rows.get(itype, 0) + 1
    sizes = pool_size(spec, rows, vcpus, spot)
    return {cs.pool_tag(job, t, k): (0, t, None) for t, n in sorted(sizes.items()) for k in range(n)}


def enqueue(job, bucket, wanted, urls, attempts, times=None):
    """Put rows in their type's queue, one message each, 10 a call: first the queued markers
    (so a row's start can never seem older than its queueing), then the messages. In the job
    file's order; with `times` ({command: seconds}, an earlier job's), longest first, the rows
    of commands it does not know before them (they may be the longest)."""
    s3, sqs = cs.client("s3"), cs.client("sqs")
    order = sorted(wanted.items(), key=lambda kv: kv[1][0])
    if times:
        order.sort(key=lambda kv: -times.get(kv[1][2], float("inf")))  # stable: the unknown in file order
        commands = {c for _, _, c in wanted.values()}
        log("queued longest first, by the times of %d of their %d commands in the earlier job"
            % (len(commands & set(times)), len(commands)))
    by_type = {}
    for tag, (line, itype, command) in order:
        by_type.setdefault(itype, []).append((cs.number_of(job, tag), tag, line, command))
    for itype, rows in sorted(by_type.items()):
        for numbers in job_state.launch_batches(sorted(n for n, _, _, _ in rows), limit=700):
            s3.put_object(Bucket=bucket, Key=job_state.queued_key(itype, attempts, numbers), Body=b"")
    calls = []
    for itype, rows in sorted(by_type.items()):
        batch, size = [], 0
        for number, tag, line, command in rows:
            body = json.dumps({"tag": tag, "line": line, "command": command}, ensure_ascii=False)
            if len(batch) == 10 or size + len(body.encode()) > BODY_LIMIT:
                calls.append((urls[itype], batch))
                batch, size = [], 0
            batch.append({"Id": str(number), "MessageBody": body})
            size += len(body.encode())
        calls.append((urls[itype], batch))

    def send(call):
        url, entries = call
        for _ in range(5):  # entries SQS could not take this time are sent again
            failed = cs.retrying(functools.partial(sqs.send_message_batch, QueueUrl=url, Entries=entries),
                                 cs.error_code_in(*NO_QUEUE), 30).get("Failed", [])
            if not failed:
                return
            if any(f.get("SenderFault") for f in failed):
                raise UserError("SQS refused a row: %s" % failed[0].get("Message", failed[0]))
            again = {f["Id"] for f in failed}
            entries = [e for e in entries if e["Id"] in again]
        raise UserError("SQS did not take %d rows after 5 tries: run dispatch again" % len(entries))
    with ThreadPoolExecutor(8) as sending:
        list(sending.map(send, calls))
    log("queued %d rows: %s" % (len(wanted), ", ".join("%d for %s" % (len(r), t) for t, r in sorted(by_type.items()))))


class Pool:
    """Pool mode as a placement, with the shape of dispatcher.OnePerRow (whose docstring lists
    it): at most --pool machines per instance type, each taking rows from its type's queue."""
    pooled, started = True, "worker started"

    def __init__(self, args):
        self.args, self.job = args, args.job

    def runtime_limit(self, asked):
        if (asked or 0) > MAX_RUNTIME:
            raise UserError("--max-runtime %s: in pool mode a row runs at most 11h, as SQS keeps its message from "
                            "other machines for 12 hours at most; run longer rows one machine per row (without "
                            "--pool)" % job_state.elapsed(asked), code=2)
        return asked or MAX_RUNTIME

    def machines(self, wanted, vcpus, spot):
        for itype in {itype for _, itype, _ in wanted.values()}:
            queue_name(self.job, itype)  # fits SQS's limit, before anything is made
        return machine_plan(self.job, wanted, self.args.pool, vcpus, spot)

    def machine_tag(self, itype, number):
        return cs.pool_tag(self.job, itype, number)

    def slots(self, vcpus):
        return vcpus if self.args.slots == "auto" else int(self.args.slots)

    @property
    def idle(self):
        return idle()

    def resources(self, types):
        return ([functools.partial(ensure_queues, self.job, types, self.args.max_attempts)],
                ", queues " + " ".join(queue_name(self.job, t) for t in sorted(types)))

    def checks(self, types):
        return [("queues", functools.partial(self.queues_readable, types))]

    def queues_readable(self, types):
        """How many of the queues exist already; UserError if the caller may not ask."""
        sqs, found = cs.client("sqs"), []
        for itype in types:
            try:
                sqs.get_queue_url(QueueName=queue_name(self.job, itype))
                found.append(itype)
            except ClientError as e:
                launch.raise_if_denied(e, "sqs:GetQueueUrl")
                if cs.error_code(e) not in NO_QUEUE:
                    raise
        return "%d of %d queues exist already" % (len(found), len(types))

    def to_start(self, found, wanted, requeue):
        """Queue the rows never queued before (with requeue, every one given); then the prepared
        pool machines that run no worker yet, each to start one."""
        machines = {t: n for t, n in job_state.newest_per_tag(found).items() if n["pool"]}
        bucket = job_state.job_bucket(self.job, found)
        if not requeue:
            queued = job_state.queued(job_state.list_markers(bucket), self.job)
            again = sorted(t for t in wanted if t in queued)
            if again:
                log("already queued: %d rows (`make retry` queues again those that failed or were lost)" % len(again))
            wanted = {t: r for t, r in wanted.items() if t not in queued}
        urls = queue_urls(self.job, {itype for _, itype, _ in wanted.values()} |
                          {n["pool"] for n in machines.values()})  # one ListQueues
        if wanted:
            enqueue(self.job, bucket, wanted, urls, self.args.max_attempts,
                    self.args.like and cost.command_times(self.args.like))
        if not machines:
            raise UserError("job %s has no running pool machine: `make retry` launches the pool" % self.job)
        nodes = [dict(n, queue_url=urls[n["pool"]]) for t, n in sorted(machines.items())
                 if n["status"] not in job_state.STARTED]
        if len(nodes) < len(machines):
            log("workers running already: " + " ".join(sorted(t for t, n in machines.items()
                                                               if n["status"] in job_state.STARTED)))
        return nodes, {n["tag"]: (0, n["pool"], None) for n in nodes}, wanted, None, []

    def states(self, wanted):
        rows = job_state.job_status(self.job)
        return {r["tag"]: r["state"] for r in rows if r["kind"] == "row"}, job_state.stranded_rows(rows)

    def before_retry(self, rows):
        purge_dead_letters(self.job, {itype for _, itype, _ in rows.values()})

    def launched(self, wanted, missing):
        return wanted  # the machines that did launch take every row

    def left_out(self, missing):
        if missing:
            log("%d pool machines could not be launched; the others take every row" % len(missing))
