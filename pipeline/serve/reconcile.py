"""The sweep for events that never came: list a spec's sources (as `bale run` expands it) and
queue every image the archive has no record of. `bale reconcile` runs it once; `bale serve
--reconcile 1h` every hour."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.archive.bucket import ArchiveBucket
from pipeline.batch.plan import expand_spec, registry_options
from pipeline.batch.spec import Spec
from pipeline.copy.session import RegistryOptions, Session
from pipeline.serve.config import normalise_host
from pipeline.serve.intake import Push
from pipeline.serve.queue import JobQueue, Target

log = logging.getLogger("bale.serve")


@dataclass
class Sweep:
    listed: int = 0
    present: int = 0
    queued: list[str] = field(default_factory=list)
    """Keys newly queued (or woken: a done or parked job for an image now missing)."""
    collapsed: int = 0
    """Missing, but already waiting or running in the queue."""
    failures: list[str] = field(default_factory=list)
    """Repositories whose tags could not be listed."""


def spec_registries(spec: Spec, defaults: RegistryOptions) -> dict[str, RegistryOptions]:
    """Per registry host, the options a spec gives it (credentials, TLS), for the workers."""
    return {normalise_host(e.name): registry_options(e, defaults) for e in spec.registries}


def reconcile(
    spec: Spec,
    session: Session,
    defaults: RegistryOptions,
    bucket: ArchiveBucket,
    queue: JobQueue,
) -> Sweep:
    plan = expand_spec(spec, session, defaults)
    sweep = Sweep(listed=len(plan.images))
    sweep.failures = [f"{f.source}: {f.error}" for f in plan.failures]
    for ref, _options in plan.images:
        if bucket.read_record(ref) is not None:
            sweep.present += 1
            continue
        push = Push(ref.registry, ref.repository, ref.tag, ref.digest)
        submitted = queue.submit(Target(push.key, push.digest, "reconcile"))
        if submitted.queued:
            sweep.queued.append(push.key)
        else:
            sweep.collapsed += 1
    log.info(
        "reconcile %s: %d listed, %d archived, %d queued, %d already queued, %d not listed",
        spec.source,
        sweep.listed,
        sweep.present,
        len(sweep.queued),
        sweep.collapsed,
        len(sweep.failures),
    )
    return sweep
